//! `Stripe-Signature` verification against vectors made by Stripe's official library
//! (tests/fixtures/stripe/signature_vectors.json, written by tools/stripe_vectors.py), and
//! what the HTTP endpoint does with a delivery that fails it.

use axum::http::HeaderMap;
use chrono::{DateTime, TimeZone, Utc};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::json;
use tombola::payments::stripe::{Stripe, SIGNATURE_HEADER};
use tombola::payments::{PaymentProvider, VerifyError};

use crate::stripe_events::{event_id, Payment};
use crate::support::{spawn_app, SECRET};

#[derive(Debug, Deserialize)]
struct Vectors {
    generator: String,
    tolerance_seconds: i64,
    vectors: Vec<Vector>,
}

#[derive(Debug, Deserialize)]
struct Vector {
    name: String,
    payload: String,
    secrets: Vec<String>,
    timestamp: i64,
    header: String,
}

fn vectors() -> Vectors {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/stripe/signature_vectors.json"
    );
    let text = std::fs::read_to_string(path).expect("signature_vectors.json is checked in");
    let vectors: Vectors = serde_json::from_str(&text).expect("vectors parse");
    assert!(
        vectors.generator.starts_with("stripe-python"),
        "vectors must come from Stripe's library"
    );
    assert_eq!(vectors.tolerance_seconds, 300);
    assert!(vectors.vectors.len() >= 5, "too few vectors");
    assert!(
        vectors.vectors.iter().any(|v| v.secrets.len() == 2),
        "a rotation vector is needed"
    );
    vectors
}

fn headers(signature: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(SIGNATURE_HEADER, signature.parse().expect("header value"));
    headers
}

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(seconds, 0).single().expect("instant")
}

fn verifier(secrets: &[String]) -> Stripe {
    Stripe::new(secrets.to_vec(), 300)
}

#[test]
fn every_official_vector_verifies_at_its_timestamp_under_each_of_its_secrets() {
    for v in vectors().vectors {
        let body = v.payload.as_bytes();
        let all = verifier(&v.secrets);
        assert_eq!(
            all.verify(&headers(&v.header), body, at(v.timestamp)),
            Ok(()),
            "{}",
            v.name
        );
        for secret in &v.secrets {
            // Alone, and after an unrelated secret (rotation: any configured secret may match).
            for configured in [
                vec![secret.clone()],
                vec!["whsec_unrelated".to_owned(), secret.clone()],
            ] {
                assert_eq!(
                    verifier(&configured).verify(&headers(&v.header), body, at(v.timestamp)),
                    Ok(()),
                    "{} with {configured:?}",
                    v.name
                );
            }
        }
        if let [secret] = v.secrets.as_slice() {
            // Our signer (used by the other tests and the benchmarks) agrees byte for byte.
            assert_eq!(
                Stripe::sign(secret, v.timestamp, body),
                v.header,
                "{}",
                v.name
            );
        }
    }
}

#[test]
fn a_rotation_header_carries_one_v1_per_secret() {
    let vectors = vectors();
    let rotation = vectors
        .vectors
        .iter()
        .find(|v| v.secrets.len() == 2)
        .expect("rotation vector");
    assert_eq!(rotation.header.matches("v1=").count(), 2);
    for (secret, entry) in rotation
        .secrets
        .iter()
        .zip(rotation.header.split(",v1=").skip(1))
    {
        let single = Stripe::sign(secret, rotation.timestamp, rotation.payload.as_bytes());
        assert_eq!(single, format!("t={},v1={entry}", rotation.timestamp));
    }
}

#[test]
fn the_readme_vector_holds() {
    const HEADER: &str =
        "t=1700000000,v1=0c8670ed117751cc551a20e35839447075c42800ea3cf3e8a2fbda99cd1e6edd";
    let body = br#"{"id":"evt_1","object":"event"}"#;
    let readme = include_str!("../fixtures/stripe/README.md");
    assert!(readme.contains(HEADER), "README vector changed");
    let official = vectors()
        .vectors
        .into_iter()
        .find(|v| v.name == "readme_vector")
        .expect("readme vector among the official ones");
    assert_eq!(
        official.header, HEADER,
        "Stripe's library disagrees with the README"
    );
    assert_eq!(
        Stripe::sign("whsec_test_secret", 1_700_000_000, body),
        HEADER
    );
    assert_eq!(
        verifier(&["whsec_test_secret".into()]).verify(&headers(HEADER), body, at(1_700_000_000)),
        Ok(())
    );
}

#[test]
fn a_tampered_body_is_refused() {
    for v in vectors().vectors {
        let s = verifier(&v.secrets);
        let now = at(v.timestamp);
        let mut flipped = v.payload.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x01;
        let appended = format!("{} ", v.payload);
        let truncated = &v.payload.as_bytes()[..last];
        for body in [&flipped[..], appended.as_bytes(), truncated, b""] {
            assert_eq!(
                s.verify(&headers(&v.header), body, now),
                Err(VerifyError::NoMatchingSignature),
                "{}",
                v.name
            );
        }
    }
}

#[test]
fn a_wrong_secret_is_refused() {
    for v in vectors().vectors {
        let body = v.payload.as_bytes();
        let now = at(v.timestamp);
        let secret = &v.secrets[0];
        let wrong = [
            format!("{secret}x"),
            secret[..secret.len() - 1].to_owned(),
            secret.to_uppercase(),
            // The secret without its prefix is a different HMAC key.
            secret.trim_start_matches("whsec_").to_owned(),
            String::new(),
        ];
        for wrong in wrong {
            assert_eq!(
                verifier(std::slice::from_ref(&wrong)).verify(&headers(&v.header), body, now),
                Err(VerifyError::NoMatchingSignature),
                "{} with {wrong:?}",
                v.name
            );
        }
        assert_eq!(
            verifier(&[]).verify(&headers(&v.header), body, now),
            Err(VerifyError::NoMatchingSignature),
            "{} with no secret configured",
            v.name
        );
    }
}

#[test]
fn a_timestamp_older_than_the_tolerance_is_refused() {
    for v in vectors().vectors {
        let s = verifier(&v.secrets);
        let body = v.payload.as_bytes();
        assert_eq!(
            s.verify(&headers(&v.header), body, at(v.timestamp + 300)),
            Ok(()),
            "{}: exactly 300 s old is still fine",
            v.name
        );
        for age in [301, 3_600, 86_400 * 365] {
            assert_eq!(
                s.verify(&headers(&v.header), body, at(v.timestamp + age)),
                Err(VerifyError::TimestampOutOfTolerance),
                "{}: {age} s old",
                v.name
            );
        }
    }
}

#[test]
fn a_timestamp_far_in_the_future_is_refused() {
    for v in vectors().vectors {
        let s = verifier(&v.secrets);
        let body = v.payload.as_bytes();
        assert_eq!(
            s.verify(&headers(&v.header), body, at(v.timestamp - 300)),
            Ok(()),
            "{}: 300 s of clock skew is tolerated",
            v.name
        );
        for ahead in [301, 86_400] {
            assert_eq!(
                s.verify(&headers(&v.header), body, at(v.timestamp - ahead)),
                Err(VerifyError::TimestampOutOfTolerance),
                "{}: signed {ahead} s in the future",
                v.name
            );
        }
    }
}

#[test]
fn a_missing_or_mangled_header_is_refused() {
    for v in vectors().vectors {
        let s = verifier(&v.secrets);
        let body = v.payload.as_bytes();
        let now = at(v.timestamp);
        assert_eq!(
            s.verify(&HeaderMap::new(), body, now),
            Err(VerifyError::MissingSignature),
            "{}",
            v.name
        );
        let without_timestamp = v.header.split_once(',').expect("t=…,v1=…").1.to_owned();
        assert_eq!(
            s.verify(&headers(&without_timestamp), body, now),
            Err(VerifyError::MalformedSignature),
            "{}",
            v.name
        );
        // Only other schemes: Stripe's libraries accept nothing but v1.
        let only_v0 = v.header.replace("v1=", "v0=");
        assert_eq!(
            s.verify(&headers(&only_v0), body, now),
            Err(VerifyError::NoMatchingSignature),
            "{}",
            v.name
        );
        // The timestamp is signed: moving it breaks the signature even inside the window.
        let moved = v.header.replacen(
            &format!("t={}", v.timestamp),
            &format!("t={}", v.timestamp + 1),
            1,
        );
        assert_eq!(
            s.verify(&headers(&moved), body, now),
            Err(VerifyError::NoMatchingSignature),
            "{}",
            v.name
        );
    }
}

/// Over HTTP: whatever fails verification is answered 400 problem+json and leaves no trace,
/// neither in the inbox nor on the raffle. The correctly signed delivery afterwards shows
/// the refusals were about the signature alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_signature_is_a_400_problem_and_stores_nothing() {
    let server = spawn_app().await;
    let raffle = server.open_raffle(json!({})).await;
    let order = server.reserve_order(raffle, &[1, 2], 1).await;
    let events_before = server.raffle_event_count(raffle).await;
    let event = Payment::for_order(&order).succeeded(&event_id());
    let body = serde_json::to_vec_pretty(&event).expect("serializes");
    let now = Utc::now().timestamp();

    let mut tampered = body.clone();
    let position = tampered
        .windows(5)
        .position(|w| w == b"\"usd\"")
        .expect("the body names its currency")
        + 1;
    tampered[position] = b'e'; // "usd" → "esd"
    let cases: Vec<(&str, Vec<u8>, Option<String>)> = vec![
        (
            "tampered body",
            tampered,
            Some(Stripe::sign(SECRET, now, &body)),
        ),
        (
            "wrong secret",
            body.clone(),
            Some(Stripe::sign("whsec_someone_else", now, &body)),
        ),
        (
            "stale timestamp",
            body.clone(),
            Some(Stripe::sign(SECRET, now - 301, &body)),
        ),
        (
            "future timestamp",
            body.clone(),
            Some(Stripe::sign(SECRET, now + 3_600, &body)),
        ),
        ("missing header", body.clone(), None),
        ("garbage header", body.clone(), Some("v1=zz,t=soon".into())),
    ];
    for (case, body, signature) in cases {
        let delivery = server.deliver_raw(body, signature).await;
        assert_eq!(delivery.status, StatusCode::BAD_REQUEST, "{case}");
        assert_eq!(delivery.content_type, "application/problem+json", "{case}");
        assert_eq!(delivery.body["type"], "/problems/invalid_webhook", "{case}");
        assert_eq!(delivery.body["code"], "invalid_webhook", "{case}");
        assert_eq!(delivery.body["status"], 400, "{case}");
        assert!(delivery.body["detail"].is_string(), "{case}");
    }
    assert_eq!(server.inbox_count().await, 0, "nothing was stored");
    assert_eq!(server.process_all().await, 0);
    assert_eq!(server.raffle_event_count(raffle).await, events_before);
    assert_eq!(server.order_status(&order).await, "reserved");

    server.deliver_new(&event).await;
    server.process_all().await;
    assert_eq!(server.order_status(&order).await, "paid");
    server.teardown().await;
}

/// A delivery that is Stripe's (the signature verifies) but that Tombola cannot read is
/// refused as before, and kept in the inbox as `rejected` with the reason, so that an
/// operator sees a payment that was never applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_delivery_that_cannot_be_read_is_kept_as_rejected() {
    let server = spawn_app().await;
    let raffle = server.open_raffle(json!({})).await;
    let order = server.reserve_order(raffle, &[1, 2], 1).await;
    let id = event_id();
    let mut event = Payment::for_order(&order).succeeded(&id);
    event["data"]["object"]["amount"] = json!("a thousand");
    event["data"]["object"]["amount_received"] = json!("a thousand");

    let delivery = server.deliver(&event).await;
    assert_eq!(
        delivery.status,
        StatusCode::BAD_REQUEST,
        "{}",
        delivery.body
    );
    assert_eq!(delivery.body["code"], "invalid_webhook");
    let row = server.inbox_row(&id).await;
    assert_eq!(row.status, "rejected");
    assert!(
        row.last_error
            .as_deref()
            .is_some_and(|e| e.contains("amount")),
        "{row:?}"
    );
    // Delivered again: still one row, and nothing is applied.
    let again = server.deliver(&event).await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
    assert_eq!(server.inbox_count().await, 1);
    assert_eq!(server.process_all().await, 0);
    assert_eq!(server.order_status(&order).await, "reserved");
    server.teardown().await;
}
