//! What a display name may be, for every resource identity names (tenants, users, roles, API
//! keys): 1 to 200 characters once trimmed, at least one of them visible, and no control
//! characters or bidirectional overrides. Names are shown where people decide things (consoles,
//! audit logs), so one must not be blank to the eye, nor hide or reorder the text around it
//! (`"\u{202e}gnp.exe"` reads as `exe.png`). Invisible joiners and marks are fine inside a name
//! (emoji sequences and some scripts need them), just not as all of it.
//!
//! Imports are not held to these rules: a restore brings back what was there.

/// The longest display name, in characters.
pub const MAX_CHARS: usize = 200;

/// `value` trimmed, or why it is refused (for a field violation).
pub fn check(value: &str) -> Result<String, &'static str> {
    let trimmed = value.trim();
    if trimmed
        .chars()
        .any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}'))
    {
        Err("must not contain control characters or line breaks")
    } else if trimmed.chars().any(reorders_text) {
        Err("must not contain bidirectional embedding, override or isolate characters")
    } else if trimmed.chars().all(is_invisible) {
        Err("must not be empty or invisible")
    } else if trimmed.chars().count() > MAX_CHARS {
        Err("must be at most 200 characters")
    } else {
        Ok(trimmed.to_owned())
    }
}

/// The bidirectional embeddings, overrides and isolates (U+202A–U+202E, U+2066–U+2069).
fn reorders_text(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Whitespace and the format characters that draw nothing: zero-width spaces and joiners,
/// direction marks, the byte-order mark, soft hyphens, variation selectors, fillers and tags.
fn is_invisible(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '\u{00ad}'
                | '\u{034f}'
                | '\u{061c}'
                | '\u{115f}'
                | '\u{1160}'
                | '\u{17b4}'
                | '\u{17b5}'
                | '\u{180b}'..='\u{180f}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2060}'..='\u{206f}'
                | '\u{3164}'
                | '\u{fe00}'..='\u{fe0f}'
                | '\u{feff}'
                | '\u{ffa0}'
                | '\u{1d173}'..='\u{1d17a}'
                | '\u{e0000}'..='\u{e0fff}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_may_hold_any_visible_script() {
        for (given, kept) in [
            ("  Ada Lovelace ", "Ada Lovelace"),
            ("Zoë Ørsted", "Zoë Ørsted"),
            ("مهدی\u{200c}زاده", "مهدی\u{200c}زاده"),
            ("👩\u{200d}💻 team", "👩\u{200d}💻 team"),
            ("日本語", "日本語"),
        ] {
            assert_eq!(check(given).as_deref(), Ok(kept), "{given:?}");
        }
        assert!(check(&"x".repeat(MAX_CHARS)).is_ok());
    }

    #[test]
    fn blank_hidden_and_reordering_names_are_refused() {
        for (given, why) in [
            ("", "must not be empty or invisible"),
            ("   ", "must not be empty or invisible"),
            ("\u{200b}\u{200b}", "must not be empty or invisible"),
            ("\u{feff}", "must not be empty or invisible"),
            ("\u{2060}\u{00ad} ", "must not be empty or invisible"),
            (
                "a\u{0}b",
                "must not contain control characters or line breaks",
            ),
            (
                "\u{7}bell",
                "must not contain control characters or line breaks",
            ),
            (
                "tab\there",
                "must not contain control characters or line breaks",
            ),
            (
                "line\nbreak",
                "must not contain control characters or line breaks",
            ),
            (
                "line\u{2028}separator",
                "must not contain control characters or line breaks",
            ),
            (
                "\u{202e}gnp.exe",
                "must not contain bidirectional embedding, override or isolate characters",
            ),
            (
                "a\u{2067}b",
                "must not contain bidirectional embedding, override or isolate characters",
            ),
        ] {
            assert_eq!(check(given), Err(why), "{given:?}");
        }
        assert_eq!(
            check(&"é".repeat(MAX_CHARS + 1)),
            Err("must be at most 200 characters")
        );
    }
}
