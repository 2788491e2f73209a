//! The one policy for text that crosses the edge. Every text field is parsed by one of these
//! kinds before it reaches a command, so an event never carries what a terminal, a database
//! or a reader would misread: NUL and other control characters are refused everywhere (a NUL
//! cannot even be stored in PostgreSQL's `jsonb`), and names shown to people also refuse
//! format characters (bidi overrides, zero-width joiners and spaces) and line separators.

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

use crate::values::InvalidValue;

/// How a text field is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKind {
    /// Shown to people as a name or label (buyer, title, prize, organizer, payment method, a
    /// provider's id): trimmed, one line, no control or format characters.
    Name,
    /// Free text kept for the record (reasons, references): trimmed; tabs and line breaks
    /// allowed, other control characters not.
    Note,
    /// An exact secret or entropy string (the draw seed): not trimmed, since its bytes are
    /// hashed; tabs and line breaks allowed, other control characters not.
    Exact,
}

/// Parses `raw` as `kind`, at most `max_chars` characters and never empty.
pub fn parse_text(
    field: &'static str,
    raw: &str,
    kind: TextKind,
    max_chars: usize,
) -> Result<String, InvalidValue> {
    let text = match kind {
        TextKind::Name | TextKind::Note => raw.trim(),
        TextKind::Exact => raw,
    };
    if text.is_empty() {
        return Err(InvalidValue::new(field, "must not be empty"));
    }
    if text.chars().count() > max_chars {
        return Err(InvalidValue::new(
            field,
            format!("must be at most {max_chars} characters"),
        ));
    }
    if let Some(reason) = text.chars().find_map(|c| refusal(kind, c)) {
        return Err(InvalidValue::new(field, reason));
    }
    Ok(text.to_owned())
}

/// Whether `c` may appear in a field of `kind` (to drop what may not from text that must
/// be kept, such as a provider's message).
pub fn text_allows(kind: TextKind, c: char) -> bool {
    refusal(kind, c).is_none()
}

/// Why `c` may not appear in a field of `kind`, if it may not.
pub(crate) fn refusal(kind: TextKind, c: char) -> Option<&'static str> {
    let multiline = matches!(kind, TextKind::Note | TextKind::Exact);
    if c.is_control() && !(multiline && matches!(c, '\n' | '\r' | '\t')) {
        return Some("must not contain control characters");
    }
    if kind == TextKind::Name {
        match c.general_category() {
            GeneralCategory::Format => {
                return Some("must not contain format characters (bidi controls, zero-width)")
            }
            GeneralCategory::LineSeparator | GeneralCategory::ParagraphSeparator => {
                return Some("must be one line")
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_refuse_control_bidi_and_zero_width_characters() {
        for bad in [
            "A\u{0}na",
            "A\u{1b}[31mna",
            "A\u{7}na",
            "A\r\nna",
            "A\u{202e}na",
            "A\u{200b}na",
            "A\u{2028}na",
        ] {
            assert!(
                parse_text("buyer.name", bad, TextKind::Name, 200).is_err(),
                "{bad:?} should be refused"
            );
        }
        assert_eq!(
            parse_text("buyer.name", "  José Núñez 李 ", TextKind::Name, 200).unwrap(),
            "José Núñez 李"
        );
    }

    #[test]
    fn notes_keep_line_breaks_but_refuse_nul() {
        assert!(parse_text("reason", "line 1\nline 2", TextKind::Note, 500).is_ok());
        assert!(parse_text("reason", "a\u{0}b", TextKind::Note, 500).is_err());
        assert!(parse_text("reason", " ", TextKind::Note, 500).is_err());
    }

    #[test]
    fn exact_text_is_not_trimmed_and_lengths_are_bounded() {
        assert_eq!(
            parse_text("seed", " seed\n", TextKind::Exact, 1000).unwrap(),
            " seed\n"
        );
        let long = "x".repeat(201);
        let error = parse_text("title", &long, TextKind::Name, 200).unwrap_err();
        assert_eq!(error.reason, "must be at most 200 characters");
    }
}
