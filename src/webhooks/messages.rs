//! What organizers receive: the message types, their payloads, and which events make them.
//! Payloads stay small — ids, status, amounts and numbers, never a buyer's personal data —
//! and a large order lists its first [`MAX_NUMBERS`] numbers only (the rest are in the API),
//! so no body comes near 20 kB. Each struct here is also the payload's documented schema
//! (OpenAPI `webhooks` and `GET /v1/webhook-event-types`), so the two cannot drift.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tombola_domain::RaffleEvent;
use utoipa::ToSchema;
use uuid::Uuid;

/// Numbers listed in one message at most.
pub const MAX_NUMBERS: usize = 1_000;

/// Every message type, with what it announces.
pub const TYPES: &[(&str, &str)] = &[
    (
        "order.reserved",
        "Numbers were reserved for an order; it waits for payment until `expires_at`.",
    ),
    (
        "order.paid",
        "A payment was recorded for an order (by a provider, or confirmed by hand).",
    ),
    (
        "tickets.issued",
        "An order's tickets were issued: the numbers are the buyer's. At most once per order.",
    ),
    (
        "order.expired",
        "An order's hold ended unpaid; its numbers are available again.",
    ),
    (
        "order.released",
        "An order's reservation was released before it expired.",
    ),
    ("order.refunded", "An order was refunded."),
    (
        "payment.refund_required",
        "Money was received that must go back to the buyer (e.g. the numbers were sold meanwhile).",
    ),
    ("raffle.opened", "Sales opened."),
    ("raffle.closed", "Sales closed."),
    ("raffle.drawn", "The winners were drawn."),
];

pub fn is_type(name: &str) -> bool {
    TYPES.iter().any(|(t, _)| *t == name)
}

/// A message made from one event: its stable id, type, the order it is about, and body.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub msg_id: String,
    pub event_type: &'static str,
    pub order_id: Option<Uuid>,
    pub payload: String,
}

/// The body of every message (the Standard Webhooks convention: type, timestamp, data).
#[derive(Debug, Serialize)]
struct Envelope<'a> {
    r#type: &'a str,
    /// When the event was committed.
    timestamp: DateTime<Utc>,
    data: Value,
}

/// An order's numbers, the first [`MAX_NUMBERS`] of them.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Numbers {
    pub numbers: Vec<u32>,
    pub numbers_count: usize,
    /// True when `numbers` lists only the first 1,000: read the order for all of them.
    pub numbers_truncated: bool,
}

impl Numbers {
    fn of(all: &[u32]) -> Self {
        Self {
            numbers: all.iter().copied().take(MAX_NUMBERS).collect(),
            numbers_count: all.len(),
            numbers_truncated: all.len() > MAX_NUMBERS,
        }
    }
}

/// `order.reserved`
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderReserved {
    pub raffle_id: Uuid,
    pub order_id: Uuid,
    #[serde(flatten)]
    pub numbers: Numbers,
    pub amount_minor: i64,
    pub currency: String,
    pub expires_at: DateTime<Utc>,
}

/// `order.paid`
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderPaid {
    pub raffle_id: Uuid,
    pub order_id: Uuid,
    pub amount_minor: i64,
    pub currency: String,
    /// The payment provider (`stripe`, …), or `manual` for a payment confirmed by hand.
    pub provider: String,
    pub method: String,
    /// The provider's payment id (none for manual payments).
    pub payment_id: Option<String>,
}

/// `tickets.issued`
#[derive(Debug, Serialize, ToSchema)]
pub struct TicketsIssued {
    pub raffle_id: Uuid,
    pub order_id: Uuid,
    #[serde(flatten)]
    pub numbers: Numbers,
    /// Paid after the hold had ended.
    pub late: bool,
    /// The original numbers, when they had been resold and others were issued instead.
    pub replaced_numbers: Vec<u32>,
}

/// `order.expired` and `order.released`
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderEnded {
    pub raffle_id: Uuid,
    pub order_id: Uuid,
    #[serde(flatten)]
    pub numbers: Numbers,
}

/// `order.refunded`
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderRefunded {
    pub raffle_id: Uuid,
    pub order_id: Uuid,
    #[serde(flatten)]
    pub numbers: Numbers,
    pub amount_minor: i64,
    /// The numbers can be sold again.
    pub returned_to_pool: bool,
    pub refund_id: Option<String>,
}

/// `payment.refund_required`
#[derive(Debug, Serialize, ToSchema)]
pub struct RefundRequired {
    pub raffle_id: Uuid,
    pub order_id: Uuid,
    pub payment_id: Option<String>,
    pub amount_minor: i64,
    pub currency: String,
    /// `tickets_taken`, `sales_closed`, `already_paid`, `order_not_payable`,
    /// `unknown_order` or `raffle_cancelled`.
    pub reason: String,
}

/// `raffle.opened` and `raffle.closed`
#[derive(Debug, Serialize, ToSchema)]
pub struct RaffleChanged {
    pub raffle_id: Uuid,
}

/// `raffle.drawn`
#[derive(Debug, Serialize, ToSchema)]
pub struct RaffleDrawn {
    pub raffle_id: Uuid,
    pub winners: Vec<DrawnWinner>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DrawnWinner {
    pub prize_index: u32,
    pub prize: String,
    pub number: u32,
    pub order_id: Uuid,
}

/// The data schema of each type, by name (for the OpenAPI document).
pub fn schema_name(event_type: &str) -> &'static str {
    match event_type {
        "order.reserved" => "OrderReserved",
        "order.paid" => "OrderPaid",
        "tickets.issued" => "TicketsIssued",
        "order.expired" | "order.released" => "OrderEnded",
        "order.refunded" => "OrderRefunded",
        "payment.refund_required" => "RefundRequired",
        "raffle.drawn" => "RaffleDrawn",
        _ => "RaffleChanged",
    }
}

/// The stable id of the message of `event_type` made from the event at `sequence` of
/// `raffle_id` (and `order_id`, for events about several orders): a receiver dedups on it
/// across retries, redeliveries and crashes.
pub fn message_id(
    raffle_id: Uuid,
    sequence: u64,
    event_type: &str,
    order_id: Option<Uuid>,
) -> String {
    let mut hash = Sha256::new();
    hash.update(format!("{raffle_id}:{sequence}:{event_type}:"));
    if let Some(order_id) = order_id {
        hash.update(order_id.to_string());
    }
    format!("msg_{}", hex::encode(&hash.finalize()[..16]))
}

fn to_value(data: impl Serialize) -> Value {
    serde_json::to_value(data).expect("message data serializes")
}

/// The messages one event makes (none for most of them).
pub fn from_event(
    raffle_id: Uuid,
    sequence: u64,
    recorded_at: DateTime<Utc>,
    event: &RaffleEvent,
) -> Vec<Message> {
    let mut out: Vec<(&'static str, Option<Uuid>, Value)> = Vec::new();
    match event {
        RaffleEvent::TicketsReserved {
            order_id,
            numbers,
            amount_minor,
            currency,
            expires_at,
            ..
        } => {
            out.push((
                "order.reserved",
                Some(*order_id),
                to_value(OrderReserved {
                    raffle_id,
                    order_id: *order_id,
                    numbers: Numbers::of(numbers),
                    amount_minor: *amount_minor,
                    currency: currency.as_str().to_owned(),
                    expires_at: *expires_at,
                }),
            ));
        }
        RaffleEvent::PaymentRecorded {
            order_id, payment, ..
        } => {
            out.push((
                "order.paid",
                Some(*order_id),
                to_value(OrderPaid {
                    raffle_id,
                    order_id: *order_id,
                    amount_minor: payment.amount_minor,
                    currency: payment.currency.as_str().to_owned(),
                    provider: payment.provider.clone(),
                    method: payment.method.clone(),
                    payment_id: Some(payment.payment_id.clone()),
                }),
            ));
        }
        RaffleEvent::ManualPaymentConfirmed {
            order_id,
            method,
            amount_minor,
            currency,
            ..
        } => {
            out.push((
                "order.paid",
                Some(*order_id),
                to_value(OrderPaid {
                    raffle_id,
                    order_id: *order_id,
                    amount_minor: *amount_minor,
                    currency: currency.as_str().to_owned(),
                    provider: "manual".into(),
                    method: method.clone(),
                    payment_id: None,
                }),
            ));
        }
        RaffleEvent::TicketsIssued {
            order_id,
            numbers,
            late,
            replaced_numbers,
            ..
        } => {
            out.push((
                "tickets.issued",
                Some(*order_id),
                to_value(TicketsIssued {
                    raffle_id,
                    order_id: *order_id,
                    numbers: Numbers::of(numbers),
                    late: *late,
                    replaced_numbers: replaced_numbers.iter().copied().take(MAX_NUMBERS).collect(),
                }),
            ));
        }
        RaffleEvent::HoldsExpired { holds, .. } => {
            for hold in holds {
                out.push((
                    "order.expired",
                    Some(hold.order_id),
                    to_value(OrderEnded {
                        raffle_id,
                        order_id: hold.order_id,
                        numbers: Numbers::of(&hold.numbers),
                    }),
                ));
            }
        }
        RaffleEvent::ReservationReleased {
            order_id, numbers, ..
        } => {
            out.push((
                "order.released",
                Some(*order_id),
                to_value(OrderEnded {
                    raffle_id,
                    order_id: *order_id,
                    numbers: Numbers::of(numbers),
                }),
            ));
        }
        RaffleEvent::OrderRefunded {
            order_id,
            numbers,
            amount_minor,
            returned_to_pool,
            refund_id,
            ..
        } => {
            out.push((
                "order.refunded",
                Some(*order_id),
                to_value(OrderRefunded {
                    raffle_id,
                    order_id: *order_id,
                    numbers: Numbers::of(numbers),
                    amount_minor: *amount_minor,
                    returned_to_pool: *returned_to_pool,
                    refund_id: refund_id.clone(),
                }),
            ));
        }
        RaffleEvent::RefundRequired {
            order_id,
            payment_id,
            amount_minor,
            currency,
            reason,
            ..
        } => {
            out.push((
                "payment.refund_required",
                Some(*order_id),
                to_value(RefundRequired {
                    raffle_id,
                    order_id: *order_id,
                    payment_id: payment_id.clone(),
                    amount_minor: *amount_minor,
                    currency: currency.as_str().to_owned(),
                    reason: reason.as_str().to_owned(),
                }),
            ));
        }
        RaffleEvent::SalesOpened { .. } => {
            out.push(("raffle.opened", None, to_value(RaffleChanged { raffle_id })));
        }
        RaffleEvent::SalesClosed { .. } => {
            out.push(("raffle.closed", None, to_value(RaffleChanged { raffle_id })));
        }
        RaffleEvent::WinnersDrawn { winners, .. } => {
            let winners = winners
                .iter()
                .map(|w| DrawnWinner {
                    prize_index: w.prize_index,
                    prize: w.prize.clone(),
                    number: w.number,
                    order_id: w.order_id,
                })
                .collect();
            out.push((
                "raffle.drawn",
                None,
                to_value(RaffleDrawn { raffle_id, winners }),
            ));
        }
        _ => {}
    }
    let several = out.len() > 1;
    out.into_iter()
        .map(|(event_type, order_id, data)| Message {
            msg_id: message_id(
                raffle_id,
                sequence,
                event_type,
                order_id.filter(|_| several),
            ),
            event_type,
            order_id,
            payload: serde_json::to_string(&Envelope {
                r#type: event_type,
                timestamp: recorded_at,
                data,
            })
            .expect("a message serializes"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tombola_domain::ExpiredHold;

    #[test]
    fn ids_are_stable_and_distinct_per_order_of_one_event() {
        let raffle = Uuid::now_v7();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let event = RaffleEvent::HoldsExpired {
            holds: vec![
                ExpiredHold {
                    order_id: a,
                    numbers: vec![1, 2],
                },
                ExpiredHold {
                    order_id: b,
                    numbers: vec![3],
                },
            ],
            at: Utc::now(),
        };
        let first = from_event(raffle, 7, Utc::now(), &event);
        let again = from_event(raffle, 7, Utc::now(), &event);
        assert_eq!(first.len(), 2);
        assert_ne!(first[0].msg_id, first[1].msg_id);
        assert_eq!(first[0].msg_id, again[0].msg_id);
        assert_ne!(
            first[0].msg_id,
            from_event(raffle, 8, Utc::now(), &event)[0].msg_id
        );
        assert!(first.iter().all(|m| m.event_type == "order.expired"));
    }

    #[test]
    fn a_huge_order_stays_small() {
        let numbers: Vec<u32> = (1_000_000..1_100_000).collect();
        let event = RaffleEvent::ReservationReleased {
            order_id: Uuid::now_v7(),
            numbers,
            at: Utc::now(),
        };
        let message = &from_event(Uuid::now_v7(), 1, Utc::now(), &event)[0];
        assert!(
            message.payload.len() < 20_000,
            "{} bytes",
            message.payload.len()
        );
        let body: Value = serde_json::from_str(&message.payload).unwrap();
        assert_eq!(body["type"], "order.released");
        assert_eq!(body["data"]["numbers_count"], 100_000);
        assert_eq!(body["data"]["numbers_truncated"], true);
    }

    #[test]
    fn every_type_is_listed() {
        for (name, _) in TYPES {
            assert!(is_type(name));
        }
        assert!(!is_type("order.nonsense"));
    }
}
