//! Canary needles for the secret-hygiene sweep: every token the mock issued, plus
//! fragments of each (a 12-character piece of its secret part, the JWT payload and
//! signature segments) and its base64 forms, so a partial or re-encoded leak shows too.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use mock_openai::Credentials;

/// The mock's token prefix (MockConfig::default().canary_prefix).
pub const PREFIX: &str = "CANARY-";

#[derive(Default)]
pub struct Canaries {
    needles: Vec<(String, String)>,
}

impl Canaries {
    pub fn new() -> Canaries {
        Canaries { needles: vec![("the canary prefix".into(), PREFIX.into())] }
    }

    pub fn add_creds(&mut self, c: &Credentials) {
        for (what, t) in
            [("id_token", &c.id_token), ("access_token", &c.access_token), ("refresh_token", &c.refresh_token)]
        {
            self.add_token(what, t);
        }
    }

    pub fn add_token(&mut self, what: &str, token: &str) {
        let mut add = |kind: &str, n: String| {
            if !self.needles.iter().any(|(_, x)| *x == n) {
                self.needles.push((format!("{what} ({kind})"), n));
            }
        };
        add("whole", token.to_string());
        add("base64", STANDARD.encode(token));
        add("base64url", URL_SAFE_NO_PAD.encode(token));
        let parts: Vec<&str> = token.split('.').collect();
        // The secret part: a JWT's payload and signature; an opaque token's random tail.
        let secret: Vec<&str> = if parts.len() == 3 { parts[1..].to_vec() } else { vec![token] };
        for s in secret {
            add("segment", s.to_string());
            if s.len() >= 12 {
                add("12-char fragment", s[s.len() - 12..].to_string());
            }
        }
    }

    /// Which needles `text` holds (labels only: never print the needle itself).
    pub fn found(&self, text: &[u8]) -> Vec<String> {
        let text = String::from_utf8_lossy(text);
        self.needles.iter().filter(|(_, n)| text.contains(n.as_str())).map(|(l, _)| l.clone()).collect()
    }

    /// Fails naming every (place, needle kind) that leaked.
    pub fn assert_absent<'a>(&self, places: impl IntoIterator<Item = (String, &'a [u8])>) {
        let mut leaks = Vec::new();
        let mut n = 0;
        for (place, text) in places {
            n += 1;
            for l in self.found(text) {
                leaks.push(format!("{l} in {place}"));
            }
        }
        assert!(n > 0, "nothing was checked");
        assert!(leaks.is_empty(), "token material leaked:\n{}", leaks.join("\n"));
    }
}
