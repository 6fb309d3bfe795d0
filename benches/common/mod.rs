//! Shared by the store benchmarks: quick-run detection, sizes from the environment, and
//! peak memory (I/O: reads the environment and /proc).

#![allow(dead_code)]

/// Whether this is a real benchmark run (`cargo bench` passes `--bench`); under
/// `cargo test --all-targets` the binary runs without it, and does a tiny smoke run only.
pub fn full_run() -> bool {
    std::env::args().any(|arg| arg == "--bench")
}

/// A size from the environment, or `full` in a real run and `smoke` otherwise.
pub fn size(var: &str, full: u64, smoke: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full_run() { full } else { smoke })
}

/// Resets the peak that [`peak_rss`] reports to the current resident memory (Linux), so
/// that a phase's peak can be told from its setup's; false where that is not possible.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Peak resident memory of this process, from /proc (Linux), in bytes.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
