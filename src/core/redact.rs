//! The redaction guard: every text that leaves the process (log lines, journal fields,
//! errors) passes through `redact`, which masks anything shaped like a token.

use std::borrow::Cow;

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '=')
}

/// Does this word look like a secret? JWTs (`eyJ…` with dots) and long opaque strings
/// mixing upper case, lower case and digits. Hex hashes and fingerprints, paths and
/// account names (lower case) pass.
fn looks_secret(word: &str) -> bool {
    if word.starts_with("eyJ") && word.matches('.').count() >= 2 {
        return true;
    }
    word.len() >= 24
        && word.chars().any(|c| c.is_ascii_uppercase())
        && word.chars().any(|c| c.is_ascii_lowercase())
        && word.chars().any(|c| c.is_ascii_digit())
}

/// Mask every secret-looking word.
pub fn redact(text: &str) -> Cow<'_, str> {
    let mut out = String::new();
    let mut last = 0;
    let mut start = None;
    for (i, c) in text.char_indices().chain(std::iter::once((text.len(), ' '))) {
        match (is_token_char(c), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                if looks_secret(&text[s..i]) {
                    out.push_str(&text[last..s]);
                    out.push_str("[REDACTED]");
                    last = i;
                }
                start = None;
            }
            _ => {}
        }
    }
    if last == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[last..]);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_jwts_and_opaque_tokens_only() {
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjF9.c2ln";
        let rt = "CANARY-rt_7_3_9f8e7d6c5b4a39281706";
        let text = format!(
            "token {jwt} and {rt}, fp ba7816bf8f01 hash {} path /home/alice-2/.codex acct team-prod-1",
            "a".repeat(64)
        );
        let out = redact(&text);
        assert!(!out.contains(jwt) && !out.contains(rt), "{out}");
        assert!(
            out.contains("ba7816bf8f01") && out.contains("/home/alice-2/.codex") && out.contains("team-prod-1"),
            "{out}"
        );
        assert!(out.contains(&"a".repeat(64)));
        assert!(matches!(redact("nothing here"), Cow::Borrowed(_)));
    }
}
