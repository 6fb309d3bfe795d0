//! Errors as people read them: an error and its whole `source()` chain on one line (pure).
//! Logs and command-line messages use it; HTTP clients never see it (they get codes).

use std::error::Error;

/// Formats an error and its `source()` chain as `outer: cause: root cause`.
pub fn error_chain(err: &(dyn Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors repeat their source in their own message; print each part once.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn error_chain_prints_every_cause_once() {
        let err = Outer(std::io::Error::other("disk full"));
        assert_eq!(error_chain(&err), "outer: disk full");
    }
}
