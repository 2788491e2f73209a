//! Value objects parsed at the edge, so the aggregate never sees malformed input.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidValue {
    pub field: &'static str,
    pub reason: &'static str,
}

impl InvalidValue {
    pub(crate) fn new(field: &'static str, reason: &'static str) -> Self {
        Self { field, reason }
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

/// A buyer's e-mail, trimmed and lower-cased so per-buyer limits cannot be dodged by case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let email = raw.trim().to_lowercase();
        let valid = email.len() <= 254
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

    pub fn as_str(&self) -> &str {
        &self.0
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
    pub name: String,
    pub email: Email,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
}

impl Buyer {
    pub fn parse(name: &str, email: &str, phone: Option<&str>) -> Result<Self, InvalidValue> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(InvalidValue::new(
                "buyer.name",
                "must be 1 to 200 characters",
            ));
        }
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
            name: name.to_owned(),
            email: Email::parse(email)?,
            phone,
        })
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
        assert_eq!(buyer.phone.as_deref(), Some("+52 55 1234 5678"));
    }
}
