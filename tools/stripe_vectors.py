#!/usr/bin/env python3
"""Stripe-Signature test vectors, produced and checked by Stripe's official Python library.

    python3 -m venv /tmp/stripe-venv && /tmp/stripe-venv/bin/pip install stripe
    /tmp/stripe-venv/bin/python tools/stripe_vectors.py > tests/fixtures/stripe/signature_vectors.json

Every header comes from `stripe.WebhookSignature.generate_signature_header` (rotation
headers join two of them, as Stripe does while an endpoint has two secrets). Before
writing anything, the script proves with `stripe.Webhook.construct_event` that Stripe's
library accepts each vector under each of its secrets, and with
`stripe.WebhookSignature.verify_header` that it refuses a tampered body and a wrong secret,
so the Rust verifier is compared with Stripe's behaviour, not with itself. Inputs are fixed
(no clock, no randomness): running it again reproduces the checked-in file byte for byte.
tests/payments/signatures.rs reads the result.
"""

import json
import sys

import stripe
from stripe import SignatureVerificationError, Webhook, WebhookSignature

TOLERANCE = 300  # Stripe's default, and Tombola's (`--stripe-tolerance-secs`).


def event_payload(event_id, event_type, obj, pretty):
    """A Stripe Event body. Stripe sends it pretty-printed with a trailing newline."""
    event = {
        "id": event_id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": 1700000000,
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }
    if pretty:
        return json.dumps(event, indent=2, ensure_ascii=False) + "\n"
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


INTENT = {
    "id": "pi_3VectorsTombola0001",
    "object": "payment_intent",
    "amount": 1500,
    "amount_received": 1500,
    "currency": "eur",
    # Non-ASCII text: the MAC covers the UTF-8 bytes of the body.
    "description": "Rifa solidaria — 3 números, Zoë & Renée ✓",
    "metadata": {
        "raffle_id": "0191d2a4-5b6c-7d8e-9f00-112233445566",
        "order_id": "0191d2a4-5b6c-7d8e-9f00-665544332211",
    },
    "payment_method_types": ["card"],
    "status": "succeeded",
}

CASES = [
    # name, payload, secrets, timestamp, rotation?
    ("readme_vector", '{"id":"evt_1","object":"event"}', ["whsec_test_secret"], 1700000000, False),
    ("succeeded_pretty_utf8",
     event_payload("evt_3VectorsTombola0001", "payment_intent.succeeded", INTENT, True),
     ["whsec_tombola_payments_test"], 1712345678, False),
    ("succeeded_compact",
     event_payload("evt_3VectorsTombola0002", "payment_intent.succeeded", INTENT, False),
     ["whsec_9fK2mQ7vX3pL8rT1wZ6yB4nH0cJ5dG2a"], 1712345679, False),
    ("short_secret", '{"id":"evt_short","object":"event","type":"ping"}', ["whsec_x"], 1600000000, False),
    ("long_secret_with_symbols",
     event_payload("evt_3VectorsTombola0003", "charge.refunded",
                   {"id": "ch_3VectorsTombola0001", "object": "charge", "amount": 1500,
                    "amount_refunded": 500, "currency": "eur",
                    "payment_intent": "pi_3VectorsTombola0001"}, True),
     ["whsec_" + "Ab0+/=_-" * 12], 1734567890, False),
    ("empty_object_body", "{}", ["whsec_tombola_payments_test"], 1700000300, False),
    # During secret rotation Stripe signs with both secrets: two v1 entries.
    ("rotation_two_v1",
     event_payload("evt_3VectorsTombola0004", "payment_intent.succeeded", INTENT, True),
     ["whsec_old_rotating_secret_AAAA", "whsec_new_rotating_secret_BBBB"], 1720000000, True),
]


def header_for(payload, secrets, timestamp, rotation):
    headers = [WebhookSignature.generate_signature_header(payload, s, timestamp) for s in secrets]
    if not rotation:
        assert len(headers) == 1
        return headers[0]
    # "t=…,v1=a" + "t=…,v1=b" → "t=…,v1=a,v1=b"
    prefix = f"t={timestamp},"
    return prefix + ",".join(h[len(prefix):] for h in headers)


def must_refuse(payload, header, secret):
    try:
        WebhookSignature.verify_header(payload, header, secret, None)
    except SignatureVerificationError:
        return
    raise AssertionError(f"stripe accepted {header!r} with {secret!r}")


def main():
    vectors = []
    for name, payload, secrets, timestamp, rotation in CASES:
        header = header_for(payload, secrets, timestamp, rotation)
        for secret in secrets:
            # Stripe's own verification (tolerance 0: the timestamp is fixed in the past).
            event = Webhook.construct_event(payload, header, secret, tolerance=0)
            assert event is not None
            must_refuse(payload + " ", header, secret)
            must_refuse(payload, header, secret + "x")
        vectors.append({
            "name": name,
            "payload": payload,
            "secrets": secrets,
            "timestamp": timestamp,
            "header": header,
        })
    json.dump({
        "generator": f"stripe-python {stripe.VERSION}: stripe.WebhookSignature.generate_signature_header, "
                     "accepted by stripe.Webhook.construct_event (tools/stripe_vectors.py)",
        "tolerance_seconds": TOLERANCE,
        "vectors": vectors,
    }, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
