//! Shared by the benchmarks: quick-run detection, sizes from the environment, peak memory
//! and a process's CPU time (I/O: reads the environment and /proc).

#![allow(dead_code)]

use std::time::Duration;

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

/// CPU time (user + system) a process has used so far, from /proc (Linux).
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |at: usize| {
        fields
            .get(at)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 11 and 12 after the ')'; Linux
    // reports them in USER_HZ, which is 100 on every mainstream architecture.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}
