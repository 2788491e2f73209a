//! Stripe Event bodies built from the API fixtures in tests/fixtures/stripe (see its
//! README): the `event.json` envelope around a PaymentIntent or a Charge, changed only where
//! a real delivery about a Tombola order differs.

use chrono::Utc;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::Order;

const EVENT: &str = include_str!("../fixtures/stripe/event.json");
const PAYMENT_INTENT: &str = include_str!("../fixtures/stripe/payment_intent.json");
const CHARGE: &str = include_str!("../fixtures/stripe/charge.json");

fn fixture(text: &str) -> Value {
    serde_json::from_str(text).expect("fixture is JSON")
}

/// A new Stripe-looking event id.
pub fn event_id() -> String {
    format!("evt_{}", Uuid::new_v4().simple())
}

/// The `event.json` envelope with `id`, `type`, `created` (now) and `data.object` set.
pub fn event(id: &str, event_type: &str, object: Value) -> Value {
    let mut event = fixture(EVENT);
    event["id"] = id.into();
    event["type"] = event_type.into();
    event["created"] = Utc::now().timestamp().into();
    event["api_version"] = "2024-06-20".into();
    event["pending_webhooks"] = 1.into();
    event["data"] = json!({ "object": object });
    event
}

/// The unknown `plan.created` event of the fixture, under a fresh id.
pub fn unknown_event(id: &str) -> Value {
    let mut event = fixture(EVENT);
    event["id"] = id.into();
    event
}

/// One PaymentIntent paying for one order, and the events Stripe sends about it.
#[derive(Debug, Clone)]
pub struct Payment {
    pub intent_id: String,
    pub charge_id: String,
    pub raffle: Uuid,
    pub order: Uuid,
    pub amount: i64,
    pub currency: String,
}

impl Payment {
    /// A card payment of the order's amount, in USD.
    pub fn for_order(order: &Order) -> Self {
        let key = Uuid::new_v4().simple().to_string();
        Self {
            intent_id: format!("pi_{key}"),
            charge_id: format!("ch_{key}"),
            raffle: order.raffle,
            order: order.id,
            amount: order.amount,
            currency: "usd".into(),
        }
    }

    /// `payment_intent.json` for this payment, in `status`.
    pub fn intent(&self, status: &str) -> Value {
        let mut intent = fixture(PAYMENT_INTENT);
        intent["id"] = self.intent_id.clone().into();
        intent["client_secret"] = format!("{}_secret_test", self.intent_id).into();
        intent["amount"] = self.amount.into();
        intent["currency"] = self.currency.clone().into();
        intent["created"] = Utc::now().timestamp().into();
        intent["canceled_at"] = Value::Null;
        intent["status"] = status.into();
        intent["metadata"] = json!({
            "raffle_id": self.raffle.to_string(),
            "order_id": self.order.to_string(),
        });
        let settled = status == "succeeded";
        intent["amount_received"] = if settled { self.amount } else { 0 }.into();
        intent["latest_charge"] = if settled {
            self.charge_id.clone().into()
        } else {
            Value::Null
        };
        intent["last_payment_error"] = Value::Null;
        intent["next_action"] = Value::Null;
        intent
    }

    pub fn succeeded(&self, event_id: &str) -> Value {
        event(
            event_id,
            "payment_intent.succeeded",
            self.intent("succeeded"),
        )
    }

    pub fn failed(&self, event_id: &str) -> Value {
        let mut intent = self.intent("requires_payment_method");
        intent["last_payment_error"] = json!({
            "type": "card_error",
            "code": "card_declined",
            "decline_code": "insufficient_funds",
            "message": "Your card has insufficient funds.",
        });
        event(event_id, "payment_intent.payment_failed", intent)
    }

    /// A delayed card or bank debit under way: no date given.
    pub fn processing(&self, event_id: &str) -> Value {
        event(
            event_id,
            "payment_intent.processing",
            self.intent("processing"),
        )
    }

    /// An OXXO voucher handed to the buyer, payable until `expires_after` (unix seconds).
    pub fn voucher_issued(&self, event_id: &str, expires_after: i64) -> Value {
        let mut intent = self.intent("requires_action");
        intent["payment_method_types"] = json!(["oxxo"]);
        intent["next_action"] = json!({
            "type": "oxxo_display_details",
            "oxxo_display_details": {
                "expires_after": expires_after,
                "hosted_voucher_url": "https://payments.stripe.com/oxxo/voucher/test",
                "number": "12345678901234657890123456789012",
            },
        });
        event(event_id, "payment_intent.requires_action", intent)
    }

    /// `charge.refunded` with `amount_refunded` (cumulative) of the charge's amount gone back.
    /// Like Stripe's charges, it names the PaymentIntent but carries no order metadata.
    pub fn refunded(&self, event_id: &str, amount_refunded: i64) -> Value {
        let mut charge = fixture(CHARGE);
        charge["id"] = self.charge_id.clone().into();
        charge["amount"] = self.amount.into();
        charge["amount_captured"] = self.amount.into();
        charge["amount_refunded"] = amount_refunded.into();
        charge["captured"] = true.into();
        charge["refunded"] = (amount_refunded == self.amount).into();
        charge["currency"] = self.currency.clone().into();
        charge["payment_intent"] = self.intent_id.clone().into();
        charge["created"] = Utc::now().timestamp().into();
        event(event_id, "charge.refunded", charge)
    }
}
