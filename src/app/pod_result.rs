//! What the short steps of a Build's pods that run the Kiln image (`kiln index push`,
//! `kiln sign`) report back to the controller: the termination message it reads the
//! pushed digest from (I/O: writing that file), and the image flag they share.

use std::path::Path;

use crate::controller::podstate::DIGEST_KEY;
use crate::oci::digest::Digest;
use crate::oci::name::ImageName;
use crate::report::error_chain;

/// Where Kubernetes reads a container's termination message by default.
pub const DEFAULT_TERMINATION_LOG: &str = "/dev/termination-log";

/// The termination message of a successful step: the BuildKit metadata key the controller
/// reads a pushed digest from, with `digest`.
pub fn termination_message(digest: &Digest) -> String {
    serde_json::json!({ DIGEST_KEY: digest.to_string() }).to_string()
}

/// Writes [`termination_message`] of `digest` to `path`; `done` says what was done with
/// it, for the error ("the index … was pushed").
pub fn write_termination_log(path: &Path, digest: &Digest, done: &str) -> Result<(), String> {
    std::fs::write(path, termination_message(digest)).map_err(|err| {
        format!(
            "{done}, but the termination log {} could not be written: {err}",
            path.display()
        )
    })
}

/// Parses an `--image` flag.
pub fn parse_image(text: &str) -> Result<ImageName, String> {
    ImageName::parse(text).map_err(|err| error_chain(&err))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::podstate::pushed_digest;

    #[test]
    fn the_termination_message_is_what_the_controller_reads() {
        let digest = Digest::of(b"index");
        let message = termination_message(&digest);
        assert_eq!(
            message,
            format!("{{\"containerimage.digest\":\"{digest}\"}}")
        );
        assert_eq!(pushed_digest(Some(&message)), Ok(digest));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("termination-log");
        write_termination_log(&path, &digest, "pushed").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), message);
        let err =
            write_termination_log(&dir.path().join("no/such/dir"), &digest, "pushed").unwrap_err();
        assert!(err.starts_with("pushed, but the termination log"), "{err}");
    }
}
