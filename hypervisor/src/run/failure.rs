//! The text of a fault atoll took while handling a partition, kept without allocating: the
//! panic and exception handlers write it on the faulting core, where the heap may be the very
//! thing that failed.

use core::fmt;

/// Longest failure text kept, in bytes; longer texts are cut at a character boundary and end
/// with `…`.
pub const FAILURE_TEXT: usize = 240;

/// A failure's text in a fixed buffer.
#[derive(Clone)]
pub struct Failure {
    text: [u8; FAILURE_TEXT],
    len: usize,
    truncated: bool,
}

impl Failure {
    /// No text.
    pub const fn new() -> Self {
        Self {
            text: [0; FAILURE_TEXT],
            len: 0,
            truncated: false,
        }
    }

    /// Replaces the text with `args`, cut to [`FAILURE_TEXT`] bytes.
    pub fn set(&mut self, args: fmt::Arguments) {
        self.len = 0;
        self.truncated = false;
        let _ = fmt::write(self, args);
    }

    /// The text (ends with `…` when it was cut).
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.text[..self.len]).unwrap_or("?")
    }

    /// Whether the text was cut.
    pub fn truncated(&self) -> bool {
        self.truncated
    }
}

impl Default for Failure {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

const ELLIPSIS: &str = "…";

impl fmt::Write for Failure {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.truncated {
            return Ok(());
        }
        let room = FAILURE_TEXT - ELLIPSIS.len() - self.len;
        if s.len() <= room {
            self.text[self.len..self.len + s.len()].copy_from_slice(s.as_bytes());
            self.len += s.len();
            return Ok(());
        }
        let mut cut = room;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        self.text[self.len..self.len + cut].copy_from_slice(&s.as_bytes()[..cut]);
        self.len += cut;
        self.text[self.len..self.len + ELLIPSIS.len()].copy_from_slice(ELLIPSIS.as_bytes());
        self.len += ELLIPSIS.len();
        self.truncated = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_short_text_and_replaces_it() {
        let mut f = Failure::new();
        assert_eq!(f.as_str(), "");
        f.set(format_args!("panicked at {}:{}", "exits.rs", 42));
        assert_eq!(f.as_str(), "panicked at exits.rs:42");
        assert!(!f.truncated());
        f.set(format_args!("#PF"));
        assert_eq!(f.as_str(), "#PF");
    }

    #[test]
    fn cuts_long_text_at_a_character_boundary() {
        let mut f = Failure::new();
        let long = "é".repeat(400);
        f.set(format_args!("x{long}"));
        assert!(f.truncated());
        assert!(f.as_str().len() <= FAILURE_TEXT);
        assert!(f.as_str().ends_with('…'));
        assert!(f.as_str().starts_with("xé"));
        // Exactly fitting text is not cut.
        let fits = "a".repeat(FAILURE_TEXT - ELLIPSIS.len());
        f.set(format_args!("{fits}"));
        assert!(!f.truncated());
        assert_eq!(f.as_str(), fits);
        f.set(format_args!("{fits}b"));
        assert!(f.truncated());
        assert_eq!(f.as_str(), format!("{fits}…"));
    }
}
