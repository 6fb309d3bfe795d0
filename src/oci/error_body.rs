//! A registry's error answer, shortened for a message (pure).
//!
//! The distribution spec's error envelope (`{"errors":[{"code","message"}]}`) gives codes
//! and messages worth showing; any other body (an HTML page of a proxy, say) is cut to its
//! first characters, so that a message stays one readable line.

/// How many characters of a body that is not an error envelope a message keeps.
pub const BODY_CHARS: usize = 300;

/// The error codes and messages of an error envelope, joined by `; `, else the body's
/// first [`BODY_CHARS`] characters.
pub fn summary(body: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Envelope {
        errors: Vec<EnvelopeError>,
    }
    #[derive(serde::Deserialize)]
    struct EnvelopeError {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_str::<Envelope>(body) {
        Ok(envelope) => envelope
            .errors
            .iter()
            .map(|e| format!("{} {}", e.code, e.message).trim().to_owned())
            .collect::<Vec<_>>()
            .join("; "),
        Err(_) => body.trim().chars().take(BODY_CHARS).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_gives_its_codes_and_messages_and_anything_else_its_start() {
        assert_eq!(
            summary(r#"{"errors":[{"code":"DENIED","message":"no"},{"code":"UNKNOWN"}]}"#),
            "DENIED no; UNKNOWN"
        );
        assert_eq!(
            summary("  <html>bad gateway</html>\n"),
            "<html>bad gateway</html>"
        );
        assert_eq!(summary(&"x".repeat(1000)).len(), BODY_CHARS);
    }
}
