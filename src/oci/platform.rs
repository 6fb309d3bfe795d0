//! Image platforms (`os/arch[/variant]`, as in `spec.platforms` and an image index's
//! `platform` objects): parsing, the text form, and a slug for names, labels and tags
//! (pure).

use std::fmt;
use std::str::FromStr;

/// A platform an image runs on: `linux/amd64`, `linux/arm64/v8`, `linux/arm/v7`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Platform {
    /// The operating system (`linux`).
    pub os: String,
    /// The CPU architecture, in Go's names (`amd64`, `arm64`, `arm`, `s390x`).
    pub architecture: String,
    /// The CPU variant (`v7`, `v8`), when one is given.
    pub variant: Option<String>,
}

/// Why a text is not a platform.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "platform {0:?} is not os/arch or os/arch/variant (lowercase letters, digits, '_' and '.'), for example linux/amd64 or linux/arm64/v8"
)]
pub struct PlatformError(pub String);

impl Platform {
    /// Parses `os/arch` or `os/arch/variant`; each part is lowercase letters, digits, `_`
    /// or `.` (what `spec.platforms`' schema rule accepts).
    pub fn parse(text: &str) -> Result<Self, PlatformError> {
        let error = || PlatformError(text.to_owned());
        let part_ok = |part: &str| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
        };
        let mut parts = text.split('/');
        let (Some(os), Some(architecture)) = (parts.next(), parts.next()) else {
            return Err(error());
        };
        let variant = parts.next();
        if parts.next().is_some()
            || !part_ok(os)
            || !part_ok(architecture)
            || variant.is_some_and(|v| !part_ok(v))
        {
            return Err(error());
        }
        Ok(Self {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.map(str::to_owned),
        })
    }

    /// `os-arch[-variant]` with `_` and `.` as `-` and no `-` at either end: a form that
    /// fits in object names, label values and tags (`linux-arm64-v8`).
    pub fn slug(&self) -> String {
        let mut slug = format!("{}-{}", self.os, self.architecture);
        if let Some(variant) = &self.variant {
            slug.push('-');
            slug.push_str(variant);
        }
        // Names and label values must start and end with a letter or digit.
        slug.replace(['_', '.'], "-").trim_matches('-').to_owned()
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = PlatformError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_platforms() {
        for (text, slug) in [
            ("linux/amd64", "linux-amd64"),
            ("linux/arm64/v8", "linux-arm64-v8"),
            ("linux/arm/v7", "linux-arm-v7"),
            ("windows/amd64/10.0", "windows-amd64-10-0"),
            ("linux/x86_64", "linux-x86-64"),
            ("linux/arm/v7.", "linux-arm-v7"),
        ] {
            let platform = Platform::parse(text).unwrap();
            assert_eq!(platform.to_string(), text);
            assert_eq!(platform.slug(), slug);
        }
    }

    #[test]
    fn refuses_what_is_not_a_platform() {
        for text in [
            "",
            "linux",
            "linux/",
            "/amd64",
            "linux/amd64/",
            "linux/amd64/v8/x",
            "Linux/amd64",
            "linux/amd-64",
            "linux amd64",
        ] {
            assert_eq!(
                Platform::parse(text),
                Err(PlatformError(text.to_owned())),
                "{text:?}"
            );
        }
    }
}
