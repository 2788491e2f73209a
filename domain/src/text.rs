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

/// A JSON Schema `pattern` (ECMA-262 and Python `re` alike) for text of `kind`: at least
/// one visible character, none that the policy refuses. Built by asking the policy about
/// every character of the Basic Multilingual Plane, so the published schema and the parser
/// cannot disagree there; the few refused characters beyond it (astral format characters)
/// a pattern without the `u` flag cannot name.
pub fn json_schema_pattern(kind: TextKind) -> String {
    let refused = refused_class(kind);
    format!("^[^{refused}]*[^{refused}\\s][^{refused}]*$")
}

/// The characters of the Basic Multilingual Plane that `kind` refuses, as the inside of a
/// regular expression's character class (`\uXXXX` ranges).
pub(crate) fn refused_class(kind: TextKind) -> String {
    let mut ranges = String::new();
    let mut start: Option<u32> = None;
    let flush = |ranges: &mut String, from: u32, to: u32| {
        ranges.push_str(&format!("\\u{from:04X}"));
        if to > from {
            ranges.push_str(&format!("-\\u{to:04X}"));
        }
    };
    for code in 0..=0x1_0000u32 {
        let refused = char::from_u32(code)
            .filter(|_| code < 0x1_0000)
            .is_some_and(|c| refusal(kind, c).is_some());
        match (refused, start) {
            (true, None) => start = Some(code),
            (false, Some(from)) => {
                flush(&mut ranges, from, code - 1);
                start = None;
            }
            _ => {}
        }
    }
    ranges
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
    fn the_published_pattern_names_what_the_policy_refuses() {
        let name = json_schema_pattern(TextKind::Name);
        assert!(
            name.starts_with("^[^\\u0000-\\u001F\\u007F-\\u009F\\u00AD"),
            "{name}"
        );
        assert!(name.contains("\\u200B-\\u200F"), "{name}");
        let note = json_schema_pattern(TextKind::Note);
        assert!(
            note.starts_with("^[^\\u0000-\\u0008\\u000B-\\u000C\\u000E-\\u001F"),
            "{note}"
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
