//! Running Debian's `skopeo` against the plain-HTTP registries of the tests.
//!
//! These functions block until skopeo exits: a test whose server runs on the same tokio
//! runtime calls them through `tokio::task::spawn_blocking` (or uses a multi-threaded
//! runtime), so that the server can answer meanwhile.

use std::process::Command;

/// Runs `skopeo --insecure-policy <args>`, returning stdout; panics with stderr on failure.
pub fn skopeo(args: &[&str]) -> Vec<u8> {
    try_skopeo(args).unwrap_or_else(|err| panic!("{err}"))
}

/// Runs `skopeo --insecure-policy <args>`: stdout, or the failure with stderr.
pub fn try_skopeo(args: &[&str]) -> Result<Vec<u8>, String> {
    let binary = super::tool("KILN_SKOPEO", "/usr/bin/skopeo");
    // An empty auth file instead of the user's: every test says what credentials it uses.
    let auth = tempfile::NamedTempFile::new().expect("temp auth file");
    std::fs::write(auth.path(), b"{}").expect("write temp auth file");
    let output = Command::new(binary)
        .arg("--insecure-policy")
        .args(args)
        .env("REGISTRY_AUTH_FILE", auth.path())
        .output()
        .expect("run skopeo");
    if output.status.success() {
        Ok(output.stdout)
    } else {
        Err(format!(
            "skopeo {} failed ({}):\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// `skopeo copy` with TLS verification off on both sides and digests preserved (the copy
/// fails rather than rewrite a manifest). `extra` adds flags such as `--dest-creds`.
pub fn copy(src: &str, dst: &str, extra: &[&str]) {
    try_copy(src, dst, extra).unwrap_or_else(|err| panic!("{err}"));
}

/// [`copy`], returning the failure instead of panicking.
pub fn try_copy(src: &str, dst: &str, extra: &[&str]) -> Result<(), String> {
    let mut args = vec![
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--preserve-digests",
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[src, dst]);
    try_skopeo(&args).map(drop)
}

/// `skopeo inspect --raw`: the manifest bytes exactly as the registry serves them.
pub fn inspect_raw(reference: &str, extra: &[&str]) -> Vec<u8> {
    let mut args = vec!["inspect", "--raw", "--tls-verify=false"];
    args.extend_from_slice(extra);
    args.push(reference);
    skopeo(&args)
}

/// `skopeo inspect`'s `Digest` field: the manifest digest the registry reports.
pub fn inspect_digest(reference: &str, extra: &[&str]) -> String {
    let mut args = vec!["inspect", "--tls-verify=false"];
    args.extend_from_slice(extra);
    args.push(reference);
    let json: serde_json::Value =
        serde_json::from_slice(&skopeo(&args)).expect("skopeo inspect prints JSON");
    json["Digest"]
        .as_str()
        .expect("skopeo inspect has a Digest")
        .to_owned()
}

/// `skopeo delete` of a reference.
pub fn delete(reference: &str, extra: &[&str]) {
    let mut args = vec!["delete", "--tls-verify=false"];
    args.extend_from_slice(extra);
    args.push(reference);
    skopeo(&args);
}
