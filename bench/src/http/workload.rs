//! The buyers of the HTTP scenarios.
//!
//! A Tombola buyer reserves 1–3 numbers in a raffle (half of the reservations random, half
//! explicit numbers; a fifth of the explicit ones are "lucky" numbers everybody wants, so
//! they collide: 409), then pays 40% of its orders with a signed `payment_intent.succeeded`
//! delivery, releases 20% and leaves the rest to expire. The row-lock buyer sends the same
//! reservations to the row-lock server; the no-op buyer asks `GET /v1/whoami`.

use std::sync::Arc;

use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::Method;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::load::{Buyer, Conn, Tally};

/// "Lucky" numbers: the explicit picks that collide.
const POPULAR: u32 = 100;

/// The raffles buyers choose from, with how likely each is (Zipf for `many`).
pub struct Raffles {
    pub ids: Vec<Uuid>,
    pub tickets: u32,
    /// Cumulative weights, last = 1.0; empty: uniform.
    cumulative: Vec<f64>,
}

impl Raffles {
    pub fn uniform(ids: Vec<Uuid>, tickets: u32) -> Self {
        Self {
            ids,
            tickets,
            cumulative: Vec::new(),
        }
    }

    /// Raffle `k` (0-based) chosen with weight 1/(k+1)^`s`.
    pub fn zipf(ids: Vec<Uuid>, tickets: u32, s: f64) -> Self {
        let weights: Vec<f64> = (1..=ids.len()).map(|k| 1.0 / (k as f64).powf(s)).collect();
        let total: f64 = weights.iter().sum();
        let mut sum = 0.0;
        let cumulative = weights
            .iter()
            .map(|w| {
                sum += w / total;
                sum
            })
            .collect();
        Self {
            ids,
            tickets,
            cumulative,
        }
    }

    fn pick(&self, rng: &mut ChaCha8Rng) -> (usize, Uuid) {
        let index = if self.cumulative.is_empty() {
            rng.random_range(0..self.ids.len())
        } else {
            let x: f64 = rng.random();
            self.cumulative
                .partition_point(|c| *c < x)
                .min(self.ids.len() - 1)
        };
        (index, self.ids[index])
    }
}

/// A reservation's body: the buyer and either numbers or a quantity.
fn selection(rng: &mut ChaCha8Rng, tickets: u32) -> serde_json::Value {
    let count = rng.random_range(1..=3u32);
    if rng.random_bool(0.5) {
        return json!({ "quantity": count });
    }
    let popular = rng.random_bool(0.2);
    let mut numbers: Vec<u32> = (0..count)
        .map(|_| {
            if popular {
                rng.random_range(1..=POPULAR.min(tickets))
            } else {
                rng.random_range(1..=tickets)
            }
        })
        .collect();
    numbers.sort_unstable();
    numbers.dedup();
    json!({ "numbers": numbers })
}

#[derive(Deserialize)]
struct Reserved {
    order_id: Uuid,
    amount: i64,
}

pub struct TombolaBuyer {
    rng: ChaCha8Rng,
    raffles: Arc<Raffles>,
    index: usize,
    serial: u64,
    /// Fractions of successful reservations then paid and released.
    pay: f64,
    release: f64,
}

impl TombolaBuyer {
    pub fn new(raffles: Arc<Raffles>, index: usize, seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9E37_79B9)),
            raffles,
            index,
            serial: 0,
            pay: 0.4,
            release: 0.2,
        }
    }
}

impl Buyer for TombolaBuyer {
    async fn step(&mut self, conn: &mut Conn, tally: &mut Tally) {
        let (_, raffle) = self.raffles.pick(&mut self.rng);
        self.serial += 1;
        let mut body = selection(&mut self.rng, self.raffles.tickets);
        body["buyer"] = json!({
            "name": "Bench Buyer",
            "email": format!("b{}x{}@example.com", self.index, self.serial),
        });
        let path = format!("/v1/raffles/{raffle}/reservations");
        let body = Bytes::from(body.to_string());
        let (status, answer) = tally
            .time("reserve", conn.send(Method::POST, &path, Some(body), None))
            .await;
        if status != 201 {
            return;
        }
        let Ok(order) = serde_json::from_slice::<Reserved>(&answer) else {
            return;
        };
        let roll: f64 = self.rng.random();
        if roll < self.pay {
            let delivery = delivery_body(raffle, order.order_id, order.amount);
            let signature = tombola::payments::stripe::Stripe::sign(
                super::server::WEBHOOK_SECRET,
                chrono::Utc::now().timestamp(),
                delivery.as_bytes(),
            );
            let Ok(signature) = HeaderValue::from_str(&signature) else {
                return;
            };
            tally
                .time(
                    "pay",
                    conn.send(
                        Method::POST,
                        "/v1/webhooks/stripe",
                        Some(Bytes::from(delivery)),
                        Some(("stripe-signature", signature)),
                    ),
                )
                .await;
        } else if roll < self.pay + self.release {
            let path = format!("/v1/raffles/{raffle}/orders/{}", order.order_id);
            tally
                .time("release", conn.send(Method::DELETE, &path, None, None))
                .await;
        }
    }
}

/// A signed-later `payment_intent.succeeded` for the whole amount of an order.
pub fn delivery_body(raffle_id: Uuid, order_id: Uuid, amount: i64) -> String {
    json!({
        "id": format!("evt_{}", Uuid::new_v4().simple()),
        "object": "event",
        "api_version": "2024-06-20",
        "created": chrono::Utc::now().timestamp(),
        "livemode": false,
        "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null},
        "type": "payment_intent.succeeded",
        "data": {"object": {
            "id": format!("pi_{}", order_id.simple()),
            "object": "payment_intent",
            "amount": amount,
            "amount_received": amount,
            "currency": "usd",
            "status": "succeeded",
            "payment_method_types": ["card"],
            "latest_charge": format!("ch_{}", order_id.simple()),
            "metadata": {"raffle_id": raffle_id.to_string(), "order_id": order_id.to_string()},
        }},
    })
    .to_string()
}

/// `GET /v1/whoami`: authentication, rate limit, JSON; no engine.
pub struct NoopBuyer;

impl Buyer for NoopBuyer {
    async fn step(&mut self, conn: &mut Conn, tally: &mut Tally) {
        tally
            .time("noop", conn.send(Method::GET, "/v1/whoami", None, None))
            .await;
    }
}

/// The same reservations, payments and releases against the row-lock server.
pub struct RowlockBuyer {
    rng: ChaCha8Rng,
    raffles: Arc<Raffles>,
}

impl RowlockBuyer {
    pub fn new(raffles: Arc<Raffles>, index: usize, seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9E37_79B9)),
            raffles,
        }
    }
}

impl Buyer for RowlockBuyer {
    async fn step(&mut self, conn: &mut Conn, tally: &mut Tally) {
        let (index, _) = self.raffles.pick(&mut self.rng);
        let mut body = selection(&mut self.rng, self.raffles.tickets);
        body["buyer"] = json!({ "name": "Bench Buyer", "email": "b@example.com" });
        let path = format!("/raffles/{index}/reservations");
        let (status, answer) = tally
            .time(
                "reserve",
                conn.send(
                    Method::POST,
                    &path,
                    Some(Bytes::from(body.to_string())),
                    None,
                ),
            )
            .await;
        if status != 201 {
            return;
        }
        let Ok(order) = serde_json::from_slice::<Reserved>(&answer) else {
            return;
        };
        // The same shares as Tombola's buyers: 40% paid, 20% released.
        let roll: f64 = self.rng.random();
        if roll < 0.4 {
            let path = format!("/raffles/{index}/orders/{}/pay", order.order_id);
            tally
                .time("pay", conn.send(Method::POST, &path, None, None))
                .await;
        } else if roll < 0.6 {
            let path = format!("/raffles/{index}/orders/{}", order.order_id);
            tally
                .time("release", conn.send(Method::DELETE, &path, None, None))
                .await;
        }
    }
}
