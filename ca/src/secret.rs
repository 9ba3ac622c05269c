//! Secrets (HSM PINs, bootstrap tokens) in a wrapper whose `Debug` and `Display` never print them.

use std::fmt;

/// A secret string: printable only through [`Secret::expose`], whose callers are few and reviewed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret, dropping a trailing newline (PIN files usually end with one).
    pub fn new(value: impl Into<String>) -> Self {
        let mut value = value.into();
        while value.ends_with('\n') || value.ends_with('\r') {
            value.pop();
        }
        Self(value)
    }

    /// The secret itself, for the one call that needs it (a PKCS#11 login, a hash).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is empty (an empty PIN file is a configuration error).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let pin = Secret::new("123456\n");
        assert_eq!(pin.expose(), "123456");
        assert!(!format!("{pin:?}").contains("123456"));
        assert!(!format!("{pin}").contains("123456"));
    }
}
