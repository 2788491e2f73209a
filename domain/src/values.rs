//! Value objects parsed at the edge, so the aggregate never sees malformed input.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;

use crate::text::{parse_text, refusal, refused_class, TextKind};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidValue {
    pub field: &'static str,
    pub reason: Cow<'static, str>,
}

impl InvalidValue {
    pub(crate) fn new(field: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// ISO 4217 code, always upper case (Stripe writes it lower case; both parse).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    pub fn parse(code: &str) -> Result<Self, InvalidValue> {
        let bytes = code.trim().as_bytes();
        if bytes.len() != 3 || !bytes.iter().all(u8::is_ascii_alphabetic) {
            return Err(InvalidValue::new(
                "currency",
                "must be a 3-letter ISO 4217 code",
            ));
        }
        let mut code = [0u8; 3];
        for (slot, byte) in code.iter_mut().zip(bytes) {
            *slot = byte.to_ascii_uppercase();
        }
        Ok(Self(code))
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII letters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }
}

impl TryFrom<String> for Currency {
    type Error = InvalidValue;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Currency> for String {
    fn from(value: Currency) -> Self {
        value.as_str().to_owned()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A buyer's e-mail, trimmed and lower-cased; control and format characters are refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl Email {
    /// At most [`Self::MAX_CHARS`] characters as given (the schema's `maxLength` counts the
    /// raw string), trimmed, then one `@` between a non-empty local part and a domain with
    /// an inner dot; no whitespace, control or format characters.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let email = raw.trim().to_lowercase();
        if let Some(reason) = email.chars().find_map(|c| refusal(TextKind::Name, c)) {
            return Err(InvalidValue::new("buyer.email", reason));
        }
        let valid = raw.chars().count() <= Self::MAX_CHARS
            && !email.chars().any(char::is_whitespace)
            && matches!(email.split_once('@'), Some((local, domain))
                if !local.is_empty() && domain.contains('.') && !domain.starts_with('.')
                    && !domain.ends_with('.') && !domain.contains('@'));
        if valid {
            Ok(Self(email))
        } else {
            Err(InvalidValue::new(
                "buyer.email",
                "must be a valid e-mail address",
            ))
        }
    }

    pub const MAX_CHARS: usize = 254;

    /// The JSON Schema `pattern` that says what [`Self::parse`] accepts (within the Basic
    /// Multilingual Plane), built from the same text policy so the two cannot drift.
    pub fn json_schema_pattern() -> String {
        // Rust's `trim` and `char::is_whitespace`: Unicode White_Space, spelled out because
        // `\s` differs between ECMA-262, Python and Rust.
        let space = "\\u0009-\\u000D\\u0020\\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000";
        let refused = refused_class(TextKind::Name);
        let part = format!("[^{refused}{space}@]");
        let label = format!("[^{refused}{space}@.]");
        format!("^[{space}]*{part}+@{label}{part}*\\.{part}*{label}[{space}]*$")
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Who this address counts as for a per-buyer limit: compatibility-normalised (NFKC, so
    /// `ａna` is `ana`), lower-cased again after it, with every non-ASCII character that is
    /// confusable with ASCII replaced by its Unicode TS #39 skeleton (Cyrillic `а` → `a`), and
    /// with `+tag` dropped from the local part when the raffle counts plus-addresses as one
    /// buyer. ASCII stays as typed, so `rn` and `m` remain two buyers.
    pub fn identity(&self, plus: PlusAddressing) -> String {
        use unicode_normalization::UnicodeNormalization;
        let normalised = self.0.nfkc().collect::<String>().to_lowercase();
        let mut identity = String::with_capacity(normalised.len());
        for c in normalised.chars() {
            if c.is_ascii() {
                identity.push(c);
                continue;
            }
            let skeleton: String = unicode_security::skeleton(&c.to_string()).collect();
            if skeleton.is_ascii() {
                identity.push_str(&skeleton.to_lowercase());
            } else {
                identity.push(c);
            }
        }
        match (plus, identity.split_once('@')) {
            (PlusAddressing::SameBuyer, Some((local, domain))) => {
                let local = local.split_once('+').map_or(local, |(base, _)| base);
                format!("{local}@{domain}")
            }
            _ => identity,
        }
    }
}

/// Whether `ana+raffle@example.com` is the same buyer as `ana@example.com` for a per-buyer
/// limit: a per-raffle setting, since some mail providers deliver plus-addresses to one
/// mailbox and others do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlusAddressing {
    /// Each plus-address is its own buyer (the default, as before the setting existed).
    #[default]
    SeparateBuyers,
    /// The `+tag` is ignored: every plus-address of a mailbox is one buyer.
    SameBuyer,
}

impl PlusAddressing {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SeparateBuyers => "separate_buyers",
            Self::SameBuyer => "same_buyer",
        }
    }
}

impl TryFrom<String> for Email {
    type Error = InvalidValue;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Email> for String {
    fn from(value: Email) -> Self {
        value.0
    }
}

/// Who holds an order. Only the e-mail's hash stays in the aggregate; the rest travels in
/// events for the read models.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buyer {
    name: String,
    email: Email,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    phone: Option<String>,
}

impl Buyer {
    pub fn parse(name: &str, email: &str, phone: Option<&str>) -> Result<Self, InvalidValue> {
        let name = parse_text("buyer.name", name, TextKind::Name, 200)?;
        let phone = match phone.map(str::trim).filter(|p| !p.is_empty()) {
            None => None,
            Some(p)
                if p.len() <= 32
                    && p.chars()
                        .all(|c| c.is_ascii_digit() || " +-().".contains(c)) =>
            {
                Some(p.to_owned())
            }
            Some(_) => return Err(InvalidValue::new("buyer.phone", "must be a phone number")),
        };
        Ok(Self {
            name,
            email: Email::parse(email)?,
            phone,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn email(&self) -> &Email {
        &self.email
    }

    pub fn phone(&self) -> Option<&str> {
        self.phone.as_deref()
    }
}

/// Stable 64-bit digest used for compact in-memory keys (buyer e-mails, payment ids).
/// SHA-256 truncated, so snapshots stay valid across releases and platforms.
pub(crate) fn digest64(value: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest(value.as_bytes());
    u64::from_le_bytes(hash[..8].try_into().expect("sha256 has 32 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_is_normalized_to_upper_case() {
        assert_eq!(Currency::parse("usd").unwrap().as_str(), "USD");
        assert!(Currency::parse("us").is_err());
        assert!(Currency::parse("u$d").is_err());
    }

    #[test]
    fn email_is_trimmed_and_lower_cased() {
        assert_eq!(
            Email::parse(" Ana@Example.COM ").unwrap().as_str(),
            "ana@example.com"
        );
        for bad in [
            "",
            "ana",
            "ana@",
            "@x.com",
            "a b@x.com",
            "a@x",
            "a@@x.com",
            "a@x.",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn buyer_rejects_blank_names_and_bad_phones() {
        assert!(Buyer::parse(" ", "a@x.com", None).is_err());
        assert!(Buyer::parse("Ana", "a@x.com", Some("call me")).is_err());
        let buyer = Buyer::parse("Ana", "a@x.com", Some(" +52 55 1234 5678 ")).unwrap();
        assert_eq!(buyer.phone(), Some("+52 55 1234 5678"));
    }

    #[test]
    fn confusable_addresses_are_one_buyer() {
        let identity = |raw: &str| {
            Email::parse(raw)
                .unwrap()
                .identity(PlusAddressing::SeparateBuyers)
        };
        let ana = identity("ana@example.com");
        assert_eq!(ana, "ana@example.com");
        for same in [
            "ANA@example.com",
            "\u{430}na@example.com",
            "\u{ff41}na@example.com",
            "ana@ex\u{430}mple.com",
        ] {
            assert_eq!(identity(same), ana, "{same} should count as ana");
        }
        assert_ne!(identity("ana+1@example.com"), ana);
        assert_eq!(
            Email::parse("ana+1@example.com")
                .unwrap()
                .identity(PlusAddressing::SameBuyer),
            ana
        );
        assert_eq!(identity("m@example.com"), "m@example.com");
    }

    /// The published pattern and the parser agree: on every character of the Basic
    /// Multilingual Plane in each position, and on random strings built from the characters
    /// that matter (schemathesis finds any disagreement as a valid request refused).
    #[test]
    fn the_email_pattern_accepts_exactly_what_the_parser_accepts() {
        // The schema is the pattern and `maxLength`.
        let pattern = regex::Regex::new(&Email::json_schema_pattern()).unwrap();
        let agree = |raw: &str| {
            assert_eq!(
                pattern.is_match(raw) && raw.chars().count() <= Email::MAX_CHARS,
                Email::parse(raw).is_ok(),
                "{raw:?}: pattern and parser disagree"
            );
        };
        for code in 0..0x1_0000u32 {
            let Some(c) = char::from_u32(code) else {
                continue;
            };
            for raw in [
                format!("{c}a@x.mx"),
                format!("a{c}@x.mx"),
                format!("a@{c}x.mx"),
                format!("a@x{c}mx"),
                format!("a@x.{c}"),
                format!("a@x.mx{c}"),
            ] {
                agree(&raw);
            }
        }
        proptest::proptest!(|(raw in "[ab.@ \\t\\x{85}\\x{a0}\\x{200b}\\x{2028}\\x{0}\\x{1c}éＡİ]{0,10}")| {
            agree(&raw);
        });
        agree(&format!("{}@x.mx", "a".repeat(Email::MAX_CHARS - 5)));
        agree(&format!("{}@x.mx", "a".repeat(Email::MAX_CHARS - 4)));
    }

    #[test]
    fn emails_refuse_nul_and_zero_width_characters() {
        for bad in ["a\u{0}na@example.com", "a\u{200b}na@example.com"] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
