//! Logging setup shared by every command (I/O: writes to stderr).

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt};

/// Output format of the log lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Installs the global tracing subscriber. The filter comes from `RUST_LOG` when set,
/// otherwise from `default_filter` (for example `"info"`).
///
/// Calling it twice is harmless: the second call keeps the first subscriber.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Colours only on a terminal: escape codes in a file or a pod's log are noise.
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
