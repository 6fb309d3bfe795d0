//! Small helpers of the test harness (and of the benchmarks that start the same fixtures):
//! free loopback ports and the paths of external tools.

use std::net::TcpListener;

/// A loopback port that was free a moment ago. Another process may take it before the
/// caller binds it; callers that start servers retry on a bind failure.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    listener
        .local_addr()
        .expect("local address of a bound listener")
        .port()
}

/// The path of an external tool: `$<env>` if set, else `default`. Panics with the install
/// command when it is missing, so that a machine without it fails loudly, not silently.
pub fn tool(env: &str, default: &str) -> std::path::PathBuf {
    let path = std::env::var_os(env)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| default.into());
    assert!(
        path.is_file(),
        "{} not found (set {env} or run scripts/install-test-deps.sh)",
        path.display()
    );
    path
}
