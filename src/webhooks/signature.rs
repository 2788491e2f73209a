//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256>` over
//! `{webhook-id}.{webhook-timestamp}.{body}`, keyed with the base64 bytes after `whsec_`.
//! A small implementation of our own (decision 0016: the `standardwebhooks` crate brings a
//! second base64 and the `time` crate for these few lines, and signs with one secret at a
//! time); `tests/api/webhooks_out.rs` checks it against the reference library.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

const PREFIX: &str = "whsec_";
/// Random bytes in a new secret (the spec allows 24 to 64).
const SECRET_BYTES: usize = 32;

/// A new endpoint secret: `whsec_` and the base64 of random bytes.
pub fn new_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    format!("{PREFIX}{}", STANDARD.encode(bytes))
}

/// The key bytes of a `whsec_…` secret.
fn key_of(secret: &str) -> Option<Vec<u8>> {
    STANDARD
        .decode(secret.strip_prefix(PREFIX).unwrap_or(secret))
        .ok()
}

/// `v1,<signature>` of one message under one secret.
pub fn sign(secret: &str, msg_id: &str, timestamp: i64, body: &str) -> String {
    // A secret we stored always decodes; a broken one signs with its raw text (and fails
    // verification at the receiver) rather than stopping the worker.
    let key = key_of(secret).unwrap_or_else(|| secret.as_bytes().to_vec());
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes keys of any length");
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` header: one space-separated `v1,` entry per secret (two during
/// a rotation's grace period, so receivers holding either secret verify).
pub fn header(secrets: &[&str], msg_id: &str, timestamp: i64, body: &str) -> String {
    secrets
        .iter()
        .map(|secret| sign(secret, msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks specification's own example (its README's test vector).
    #[test]
    fn signs_the_specifications_example() {
        let signature = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn a_rotation_signs_with_both_secrets() {
        let (a, b) = (new_secret(), new_secret());
        let both = header(&[&a, &b], "msg_1", 1, "{}");
        let entries: Vec<&str> = both.split(' ').collect();
        assert_eq!(
            entries,
            [sign(&a, "msg_1", 1, "{}"), sign(&b, "msg_1", 1, "{}")]
        );
        assert_ne!(entries[0], entries[1]);
    }

    #[test]
    fn new_secrets_are_whsec_and_32_random_bytes() {
        let secret = new_secret();
        assert_eq!(key_of(&secret).map(|k| k.len()), Some(32));
        assert_ne!(secret, new_secret());
    }
}
