//! Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=…][,v0=…]`, where each `v1` is
//! HMAC-SHA256 over `"{t}.{raw body}"` keyed with the endpoint secret's bytes (the whole
//! `whsec_…` string). As Stripe's own libraries do: any `v1` matching any configured secret
//! passes (secret rotation), other schemes are ignored, timestamps older — or further in the
//! future — than the tolerance are refused, comparisons are constant-time.

use axum::http::HeaderMap;
use chrono::{DateTime, Duration, TimeZone, Utc};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tombola_domain::{parse_text, text_allows, Currency, TextKind};
use uuid::Uuid;

use super::provider::{PaymentAction, PaymentProvider, ProviderEvent, VerifyError};

pub const SIGNATURE_HEADER: &str = "stripe-signature";

pub struct Stripe {
    secrets: Vec<String>,
    tolerance: Duration,
}

impl Stripe {
    pub fn new(secrets: Vec<String>, tolerance_seconds: i64) -> Self {
        Self {
            secrets,
            tolerance: Duration::seconds(tolerance_seconds),
        }
    }

    /// The header Stripe would send for `body` at `timestamp` (tests, benchmarks).
    pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = mac(secret);
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!(
            "t={timestamp},v1={}",
            hex::encode(mac.finalize().into_bytes())
        )
    }
}

fn mac(secret: &str) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length")
}

impl PaymentProvider for Stripe {
    fn name(&self) -> &'static str {
        "stripe"
    }

    fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<(), VerifyError> {
        let header = headers
            .get(SIGNATURE_HEADER)
            .ok_or(VerifyError::MissingSignature)?
            .to_str()
            .map_err(|_| VerifyError::MalformedSignature)?;
        let mut timestamp = None;
        let mut signatures = Vec::new();
        for part in header.split(',') {
            match part.trim().split_once('=') {
                Some(("t", value)) => timestamp = value.parse::<i64>().ok(),
                Some(("v1", value)) => {
                    if let Ok(bytes) = hex::decode(value) {
                        signatures.push(bytes);
                    }
                }
                _ => {}
            }
        }
        let timestamp = timestamp.ok_or(VerifyError::MalformedSignature)?;
        if signatures.is_empty() {
            return Err(VerifyError::NoMatchingSignature);
        }
        let signed_at = Utc
            .timestamp_opt(timestamp, 0)
            .single()
            .ok_or(VerifyError::MalformedSignature)?;
        if (now - signed_at).abs() > self.tolerance {
            return Err(VerifyError::TimestampOutOfTolerance);
        }
        let matches = self.secrets.iter().any(|secret| {
            let mut mac = mac(secret);
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            let expected = mac.finalize().into_bytes();
            signatures
                .iter()
                .any(|candidate| bool::from(expected.as_slice().ct_eq(candidate)))
        });
        if matches {
            Ok(())
        } else {
            Err(VerifyError::NoMatchingSignature)
        }
    }

    fn parse(&self, body: &[u8]) -> Result<ProviderEvent, VerifyError> {
        let event: Event =
            serde_json::from_slice(body).map_err(|e| VerifyError::InvalidBody(e.to_string()))?;
        let object = &event.data.object;
        let metadata_id = |key: &str| {
            object
                .get("metadata")
                .and_then(|m| m.get(key))
                .and_then(Value::as_str)
                .and_then(|s| Uuid::try_parse(s).ok())
        };
        // Ids become keys and columns: one with a control character is not Stripe's, and is
        // refused rather than stored (and retried) forever.
        let text = |key: &str| -> Result<Option<String>, VerifyError> {
            object
                .get(key)
                .and_then(Value::as_str)
                .map(|id| id_text(key, id))
                .transpose()
        };
        let int = |key: &str| object.get(key).and_then(Value::as_i64);
        let created = Utc
            .timestamp_opt(event.created, 0)
            .single()
            .unwrap_or_default();
        let invalid =
            |what: &str| VerifyError::InvalidBody(format!("{} lacks {what}", event.event_type));
        let action = match event.event_type.as_str() {
            "payment_intent.succeeded" => {
                let currency = text("currency")?.ok_or_else(|| invalid("currency"))?;
                PaymentAction::Succeeded {
                    payment_id: text("id")?.ok_or_else(|| invalid("id"))?,
                    amount_minor: int("amount_received")
                        .or_else(|| int("amount"))
                        .ok_or_else(|| invalid("amount"))?,
                    currency: Currency::parse(&currency)
                        .map_err(|e| VerifyError::InvalidBody(e.to_string()))?,
                    method: readable(
                        object
                            .get("payment_method_types")
                            .and_then(|t| t.get(0))
                            .and_then(Value::as_str),
                        "card",
                    ),
                }
            }
            "payment_intent.payment_failed" => PaymentAction::Failed {
                payment_id: text("id")?.ok_or_else(|| invalid("id"))?,
                reason: readable(
                    object
                        .get("last_payment_error")
                        .and_then(|e| e.get("message").or_else(|| e.get("code")))
                        .and_then(Value::as_str),
                    "payment failed",
                ),
            },
            "payment_intent.processing" | "payment_intent.requires_action" => {
                PaymentAction::Pending {
                    payment_id: text("id")?.ok_or_else(|| invalid("id"))?,
                    // Vouchers say when they lapse; otherwise ask for the longest hold allowed
                    // (the raffle caps it at its maximum).
                    until: voucher_expiry(object).unwrap_or(created + Duration::days(30)),
                }
            }
            "charge.refunded" => PaymentAction::Refunded {
                payment_id: text("payment_intent")?.ok_or_else(|| invalid("payment_intent"))?,
                refund_id: text("id")?.ok_or_else(|| invalid("id"))?,
                amount_refunded_minor: int("amount_refunded")
                    .ok_or_else(|| invalid("amount_refunded"))?,
            },
            _ => PaymentAction::Ignored,
        };
        Ok(ProviderEvent {
            event_id: id_text("event id", &event.id)?,
            event_type: event.event_type,
            created,
            raffle_id: metadata_id("raffle_id"),
            order_id: metadata_id("order_id"),
            action,
        })
    }
}

/// A Stripe id, refused unless it is one line of visible text.
fn id_text(what: &str, id: &str) -> Result<String, VerifyError> {
    parse_text("id", id, TextKind::Name, 255)
        .map_err(|e| VerifyError::InvalidBody(format!("{what}: {}", e.reason)))
}

/// Free text Stripe wrote for people (a failure message, a method name): kept for the
/// record with what the text policy refuses dropped, since the payment it describes is real.
fn readable(text: Option<&str>, default: &str) -> String {
    let kept: String = text
        .unwrap_or_default()
        .chars()
        .filter(|c| text_allows(TextKind::Name, *c))
        .take(500)
        .collect();
    match kept.trim() {
        "" => default.to_owned(),
        kept => kept.to_owned(),
    }
}

/// `next_action.*_display_details.expires_at` of voucher methods (OXXO, Boleto, Konbini…).
fn voucher_expiry(object: &Value) -> Option<DateTime<Utc>> {
    object
        .get("next_action")?
        .as_object()?
        .values()
        .find_map(|details| {
            let at = details
                .get("expires_at")
                .or_else(|| details.get("expires_after"))?
                .as_i64()?;
            Utc.timestamp_opt(at, 0).single()
        })
}

#[derive(Deserialize)]
struct Event {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    created: i64,
    data: EventData,
}

#[derive(Deserialize)]
struct EventData {
    object: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"id":"evt_1","object":"event"}"#;
    const VECTOR: &str =
        "t=1700000000,v1=0c8670ed117751cc551a20e35839447075c42800ea3cf3e8a2fbda99cd1e6edd";

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 0).unwrap()
    }

    fn headers(signature: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(SIGNATURE_HEADER, signature.parse().unwrap());
        headers
    }

    fn stripe(secrets: &[&str]) -> Stripe {
        Stripe::new(secrets.iter().map(|s| s.to_string()).collect(), 300)
    }

    #[test]
    fn the_published_vector_verifies_and_signs_identically() {
        assert_eq!(
            Stripe::sign("whsec_test_secret", 1_700_000_000, BODY),
            VECTOR
        );
        assert_eq!(
            stripe(&["whsec_test_secret"]).verify(&headers(VECTOR), BODY, at(1_700_000_100)),
            Ok(())
        );
    }

    #[test]
    fn any_configured_secret_and_any_v1_may_match() {
        let rotated = stripe(&["whsec_new", "whsec_test_secret"]);
        let header = format!(
            "t=1700000000,v1={},v0=ignored,{}",
            "00".repeat(32),
            &VECTOR[13..]
        );
        assert_eq!(
            rotated.verify(&headers(&header), BODY, at(1_700_000_000)),
            Ok(())
        );
    }

    #[test]
    fn tampering_wrong_secrets_and_stale_or_future_timestamps_are_refused() {
        let s = stripe(&["whsec_test_secret"]);
        let now = at(1_700_000_000);
        assert_eq!(
            s.verify(&headers(VECTOR), br#"{"id":"evt_2","object":"event"}"#, now),
            Err(VerifyError::NoMatchingSignature)
        );
        assert_eq!(
            stripe(&["whsec_other"]).verify(&headers(VECTOR), BODY, now),
            Err(VerifyError::NoMatchingSignature)
        );
        assert_eq!(
            s.verify(&headers(VECTOR), BODY, at(1_700_000_301)),
            Err(VerifyError::TimestampOutOfTolerance)
        );
        assert_eq!(
            s.verify(&headers(VECTOR), BODY, at(1_699_999_699)),
            Err(VerifyError::TimestampOutOfTolerance)
        );
        assert_eq!(
            s.verify(&HeaderMap::new(), BODY, now),
            Err(VerifyError::MissingSignature)
        );
        assert_eq!(
            s.verify(&headers("v1=abc"), BODY, now),
            Err(VerifyError::MalformedSignature)
        );
        let only_v0 = VECTOR.replace("v1=", "v0=");
        assert_eq!(
            s.verify(&headers(&only_v0), BODY, now),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn a_succeeded_payment_intent_names_its_raffle_and_order() {
        let mut intent: Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/stripe/payment_intent.json"
        ))
        .unwrap();
        let raffle = Uuid::now_v7();
        let order = Uuid::now_v7();
        intent["status"] = "succeeded".into();
        intent["amount_received"] = intent["amount"].clone();
        intent["metadata"] =
            serde_json::json!({"raffle_id": raffle.to_string(), "order_id": order.to_string()});
        let mut event: Value =
            serde_json::from_str(include_str!("../../tests/fixtures/stripe/event.json")).unwrap();
        event["type"] = "payment_intent.succeeded".into();
        event["data"]["object"] = intent.clone();
        let parsed = stripe(&[]).parse(event.to_string().as_bytes()).unwrap();
        assert_eq!(parsed.raffle_id, Some(raffle));
        assert_eq!(parsed.order_id, Some(order));
        match parsed.action {
            PaymentAction::Succeeded {
                payment_id,
                amount_minor,
                currency,
                ..
            } => {
                assert_eq!(payment_id, intent["id"].as_str().unwrap());
                assert_eq!(amount_minor, intent["amount"].as_i64().unwrap());
                assert_eq!(
                    currency.as_str(),
                    intent["currency"].as_str().unwrap().to_uppercase()
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unknown_event_types_are_ignored_not_refused() {
        let event = include_str!("../../tests/fixtures/stripe/event.json");
        assert_eq!(
            stripe(&[]).parse(event.as_bytes()).unwrap().action,
            PaymentAction::Ignored
        );
    }

    #[test]
    fn ids_with_control_characters_are_refused_and_messages_cleaned() {
        let mut intent: Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/stripe/payment_intent.json"
        ))
        .unwrap();
        let mut event: Value =
            serde_json::from_str(include_str!("../../tests/fixtures/stripe/event.json")).unwrap();
        event["type"] = "payment_intent.payment_failed".into();
        intent["last_payment_error"] =
            serde_json::json!({"message": "card\u{0} declined\u{1b}[0m"});
        event["data"]["object"] = intent.clone();
        match stripe(&[])
            .parse(event.to_string().as_bytes())
            .unwrap()
            .action
        {
            PaymentAction::Failed { reason, .. } => assert_eq!(reason, "card declined[0m"),
            other => panic!("unexpected {other:?}"),
        }

        let mut nul_event = event.clone();
        nul_event["id"] = "evt_\u{0}1".into();
        let mut nul_payment = event.clone();
        nul_payment["data"]["object"]["id"] = "pi_\u{0}1".into();
        let mut newline_payment = event;
        newline_payment["data"]["object"]["id"] = "pi_1\n".into();
        for bad in [nul_event, nul_payment] {
            assert!(
                matches!(
                    stripe(&[]).parse(bad.to_string().as_bytes()),
                    Err(VerifyError::InvalidBody(_))
                ),
                "{bad}"
            );
        }
        // Surrounding whitespace is trimmed, as every id field's policy says.
        assert!(stripe(&[])
            .parse(newline_payment.to_string().as_bytes())
            .is_ok());
    }
}
