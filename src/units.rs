//! Human sizes (`2MB`, `512MiB`, `1.5GiB`) and durations (`90m`, `7d`, `1h30m`): parsing and
//! formatting for flags, CLI output and the API (pure).
//!
//! Sizes: a bare number is bytes; `kB`/`KB`, `MB`, `GB`, `TB` are powers of 1000 and
//! `KiB`, `MiB`, `GiB`, `TiB` (or Kubernetes' `Ki`, `Mi`, `Gi`, `Ti`) powers of 1024.
//! Durations: one or more `<number><unit>` parts with units `ms`, `s`, `m`, `h`, `d`
//! (`d` is 24 hours), as in Go's `time.ParseDuration` plus days.

use std::time::Duration;

/// Why a size or duration text was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitsError {
    /// The text is empty.
    #[error("empty value")]
    Empty,
    /// The text is not `<number>[unit]`.
    #[error("{0:?} is not a number followed by a unit")]
    Malformed(String),
    /// The unit is not one of the accepted ones.
    #[error("unknown unit {unit:?} in {text:?} (expected {expected})")]
    UnknownUnit {
        /// The whole text.
        text: String,
        /// The unit as written.
        unit: String,
        /// The accepted units.
        expected: &'static str,
    },
    /// The value does not fit in 64 bits.
    #[error("{0:?} is too large")]
    Overflow(String),
}

const SIZE_UNITS: &str = "B, kB, MB, GB, TB, KiB, MiB, GiB, TiB";
const DURATION_UNITS: &str = "ms, s, m, h, d";

/// Parses a human size into bytes. Fractions are allowed (`1.5GiB`) and round down to a
/// whole byte.
pub fn parse_size(text: &str) -> Result<u64, UnitsError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(UnitsError::Empty);
    }
    let (number, unit) = split_number(trimmed).ok_or_else(|| UnitsError::Malformed(text.into()))?;
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        _ => {
            return Err(UnitsError::UnknownUnit {
                text: text.into(),
                unit: unit.into(),
                expected: SIZE_UNITS,
            });
        }
    };
    scale(number, multiplier, 1).ok_or_else(|| UnitsError::Overflow(text.into()))
}

/// Parses a human duration such as `90m`, `7d`, `1h30m` or `1.5h`.
pub fn parse_duration(text: &str) -> Result<Duration, UnitsError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(UnitsError::Empty);
    }
    let mut rest = trimmed;
    let mut total_ms: u64 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| UnitsError::Malformed(text.into()))?;
        let after_number = &rest[number_len..];
        let unit_len = after_number
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after_number.len());
        let number = &rest[..number_len];
        let unit = &after_number[..unit_len];
        if !is_decimal(number) || unit.is_empty() {
            return Err(UnitsError::Malformed(text.into()));
        }
        let millis_per_unit: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => {
                return Err(UnitsError::UnknownUnit {
                    text: text.into(),
                    unit: unit.into(),
                    expected: DURATION_UNITS,
                });
            }
        };
        let part =
            scale(number, millis_per_unit, 1).ok_or_else(|| UnitsError::Overflow(text.into()))?;
        total_ms = total_ms
            .checked_add(part)
            .ok_or_else(|| UnitsError::Overflow(text.into()))?;
        rest = &after_number[unit_len..];
    }
    Ok(Duration::from_millis(total_ms))
}

/// Formats bytes the way `buildctl du` does: decimal units with two decimals (`2.16MB`,
/// `16.38kB`), plain bytes below 1 kB (`512B`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if bytes < 1_000 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1_000.0;
    let mut unit = 0;
    while value >= 1_000.0 && unit + 1 < UNITS.len() {
        value /= 1_000.0;
        unit += 1;
    }
    format!("{value:.2}{}", UNITS[unit])
}

/// Formats bytes in binary units with one decimal, as transfer progress reads best: `512 B`,
/// `1.5 KiB`, `45.6 MiB`, `2.0 GiB`.
pub fn format_binary_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Formats a duration in its two largest units, as kubectl shows ages: `45s`, `5m30s`,
/// `3h5m`, `2d3h`, `7d` (a zero second unit is left out); under a second in milliseconds
/// (`250ms`); `0s` for nothing. The one duration format of everything Kiln prints.
pub fn format_duration(duration: Duration) -> String {
    let total_ms = duration.as_millis();
    if total_ms > 0 && total_ms < 1_000 {
        return format!("{total_ms}ms");
    }
    let mut secs = duration.as_secs();
    let mut parts = Vec::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= size || !parts.is_empty() {
            parts.push(format!("{}{unit}", secs / size));
            secs %= size;
        }
        if parts.len() == 2 {
            break;
        }
    }
    // "5m0s" reads better as "5m".
    if parts.len() == 2 && parts[1].starts_with('0') {
        parts.pop();
    }
    if parts.is_empty() {
        "0s".to_owned()
    } else {
        parts.concat()
    }
}

/// Splits `1.5GiB` into (`1.5`, `GiB`).
fn split_number(text: &str) -> Option<(&str, &str)> {
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(end);
    is_decimal(number).then_some((number, unit.trim_start()))
}

/// Whether `text` is digits with at most one decimal point, and at least one digit.
fn is_decimal(text: &str) -> bool {
    text.bytes().any(|b| b.is_ascii_digit()) && text.bytes().filter(|&b| b == b'.').count() <= 1
}

/// `number × multiplier / divisor` in integers, with a fractional `number`; rounds down.
fn scale(number: &str, multiplier: u64, divisor: u64) -> Option<u64> {
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) if !f.contains('.') => (w, f),
        Some(_) => return None,
        None => (number, ""),
    };
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    // Fractions beyond 9 digits cannot matter for byte or millisecond counts.
    let fraction = &fraction[..fraction.len().min(9)];
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let frac_value: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().ok()?
    };
    let frac_scale = 10u128.pow(u32::try_from(fraction.len()).ok()?);
    let multiplier = u128::from(multiplier);
    let value = whole.checked_mul(multiplier)? + frac_value * multiplier / frac_scale;
    u64::try_from(value / u128::from(divisor)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes_in_every_accepted_form() {
        for (text, want) in [
            ("0", 0),
            ("100", 100),
            ("100B", 100),
            ("2MB", 2_000_000),
            ("2 MB", 2_000_000),
            ("2mb", 2_000_000),
            ("10kB", 10_000),
            ("512MiB", 512 << 20),
            ("512Mi", 512 << 20),
            ("1.5GiB", 3 << 29),
            ("2.12MB", 2_120_000),
            ("1TiB", 1 << 40),
            (".5KiB", 512),
        ] {
            assert_eq!(parse_size(text), Ok(want), "input {text:?}");
        }
    }

    #[test]
    fn sizes_rejected_with_a_reason() {
        assert_eq!(parse_size(""), Err(UnitsError::Empty));
        assert_eq!(parse_size("MB"), Err(UnitsError::Malformed("MB".into())));
        assert!(matches!(
            parse_size("5XB"),
            Err(UnitsError::UnknownUnit { .. })
        ));
        assert_eq!(
            parse_size("1.2.3MB"),
            Err(UnitsError::Malformed("1.2.3MB".into()))
        );
        assert_eq!(
            parse_duration("1.2.3h"),
            Err(UnitsError::Malformed("1.2.3h".into()))
        );
        assert_eq!(
            parse_size("99999999999TB"),
            Err(UnitsError::Overflow("99999999999TB".into()))
        );
    }

    #[test]
    fn durations_in_every_accepted_form() {
        for (text, want_secs) in [
            ("90m", 5_400),
            ("7d", 604_800),
            ("1h30m", 5_400),
            ("1.5h", 5_400),
            ("45s", 45),
            ("1d12h", 129_600),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(want_secs)),
                "input {text:?}"
            );
        }
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn durations_rejected_with_a_reason() {
        assert_eq!(parse_duration(""), Err(UnitsError::Empty));
        assert!(matches!(
            parse_duration("90"),
            Err(UnitsError::Malformed(_))
        ));
        assert!(matches!(parse_duration("m"), Err(UnitsError::Malformed(_))));
        assert!(matches!(
            parse_duration("5y"),
            Err(UnitsError::UnknownUnit { .. })
        ));
    }

    #[test]
    fn sizes_format_like_buildctl() {
        assert_eq!(format_size(512), "512B");
        assert_eq!(format_size(16_380), "16.38kB");
        assert_eq!(format_size(2_160_000), "2.16MB");
        assert_eq!(format_size(3_000_000_000), "3.00GB");
    }

    #[test]
    fn durations_format_with_two_units() {
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_secs(5_400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(604_800)), "7d");
        assert_eq!(format_duration(Duration::from_secs(90_061)), "1d1h");
        for (secs, text) in [
            (0, "0s"),
            (45, "45s"),
            (60, "1m"),
            (330, "5m30s"),
            (3_600 * 3 + 5 * 60 + 7, "3h5m"),
            (3_600 * 3 + 7, "3h"),
            (86_400 * 2 + 3_600 * 3, "2d3h"),
            (86_400 * 40, "40d"),
            (3_601, "1h"),
        ] {
            assert_eq!(format_duration(Duration::from_secs(secs)), text, "{secs}");
        }
    }

    proptest! {
        #[test]
        fn formatted_durations_parse_back(secs in 1u64..10_000_000) {
            // Two units are exact for any whole number of minutes below a day.
            let d = Duration::from_secs(secs - secs % 60 % 86_400);
            if d.as_secs() > 0 && d.as_secs() < 86_400 {
                prop_assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
            }
        }

        #[test]
        fn whole_byte_counts_parse_exactly(n: u64) {
            prop_assert_eq!(parse_size(&n.to_string()).unwrap(), n);
        }
    }
}
