//! Random clients against random nodes: raffles created, numbers reserved (explicit, from a
//! small hot range so that buyers collide, or random), released, paid by hand or through
//! signed Stripe deliveries (duplicates, concurrent duplicates, out of order, late, failures
//! then successes, two payments for one order, refunds), refunded, closed and drawn; holds
//! left to expire. Every request goes into the record with its outcome.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::time::Instant;
use tombola::payments::stripe::{Stripe, SIGNATURE_HEADER};
use uuid::Uuid;

use super::nodes::SECRET;
use super::record::{now_ms, Attempt, Kind, Outcome, Recorder};

/// Ticket price of every raffle, in cents.
const PRICE: i64 = 500;
/// Explicit picks come from the first numbers of a raffle, so that buyers collide.
const HOT_NUMBERS: u32 = 30;
/// Attempts of one operation (the first and its retries).
const MAX_ATTEMPTS: u32 = 4;

#[derive(Clone)]
pub struct WorkloadConfig {
    /// Raffles on sale at once.
    pub raffles: usize,
    /// A raffle is closed and drawn after about this long on sale.
    pub raffle_life: Duration,
    /// Share of requests the client abandons mid-flight (a disconnect).
    pub disconnect_rate: f64,
    /// Longest delay of a late delivery.
    pub late_max: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Paid {
    No,
    /// Seen paid; by this acknowledged Stripe payment, if any.
    Yes,
}

#[derive(Debug, Clone)]
struct OrderInfo {
    id: Uuid,
    amount: i64,
    reserved: bool,
    paid: Paid,
    /// An acknowledged `payment_intent.succeeded`'s payment id.
    stripe_payment: Option<String>,
    /// A Stripe payment is under way: check later whether it issued.
    paying: bool,
    gone: bool,
}

#[derive(Debug, Clone)]
struct RaffleInfo {
    id: Uuid,
    ticket_count: u32,
    on_sale: bool,
    opened: Instant,
    seed: String,
    orders: Vec<OrderInfo>,
}

/// A reservation answered with an Idempotency-Key: replayed later, it must answer the same.
#[derive(Debug, Clone)]
struct Replayable {
    raffle: Uuid,
    key: String,
    body: Value,
    order: Uuid,
}

#[derive(Debug, Clone)]
struct Delivery {
    kind: Kind,
    event_id: String,
    payment_id: String,
    raffle: Uuid,
    order: Uuid,
    body: Vec<u8>,
}

#[derive(Default)]
struct State {
    raffles: Vec<RaffleInfo>,
    late: Vec<(Instant, Delivery)>,
    replayable: Vec<Replayable>,
}

pub struct World {
    pub nodes: Vec<String>,
    pub admin_key: String,
    pub http: reqwest::Client,
    pub recorder: Arc<Recorder>,
    pub stop: AtomicBool,
    config: WorkloadConfig,
    state: Mutex<State>,
    buyers: AtomicU64,
}

/// What one request came back with.
struct Answer {
    outcome: Outcome,
    status: Option<u16>,
    body: Option<Value>,
    /// Worth another attempt: no answer, `outcome_unknown`, or a refusal that asks for one.
    retryable: bool,
}

impl World {
    pub fn new(
        nodes: Vec<String>,
        admin_key: String,
        recorder: Arc<Recorder>,
        config: WorkloadConfig,
    ) -> Self {
        Self {
            nodes,
            admin_key,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(8)
                .build()
                .expect("an HTTP client"),
            recorder,
            stop: AtomicBool::new(false),
            config,
            state: Mutex::new(State::default()),
            buyers: AtomicU64::new(0),
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// One client: random operations until the run stops.
    pub async fn client(self: Arc<Self>, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        while !self.stopped() {
            self.send_due_late(&mut rng).await;
            let open = self.open_raffles();
            if open < self.config.raffles {
                self.create_raffle(&mut rng).await;
                continue;
            }
            let roll = rng.random_range(0..100);
            match roll {
                0..=29 => self.reserve(&mut rng, true).await,
                30..=44 => self.reserve(&mut rng, false).await,
                45..=51 => self.release(&mut rng).await,
                52..=73 => self.stripe_flow(&mut rng).await,
                74..=79 => self.manual_payment(&mut rng).await,
                80..=85 => self.observe_paid(&mut rng).await,
                86..=91 => self.refund(&mut rng).await,
                92..=95 => self.replay(&mut rng).await,
                _ => self.close_and_draw(&mut rng).await,
            }
        }
    }

    fn open_raffles(&self) -> usize {
        let state = self.state.lock().expect("state");
        state.raffles.iter().filter(|r| r.on_sale).count()
    }

    fn node(&self, rng: &mut StdRng) -> usize {
        rng.random_range(0..self.nodes.len())
    }

    /// Sends one request and records it.
    #[allow(clippy::too_many_arguments)]
    async fn request(
        &self,
        rng: &mut StdRng,
        attempt: &mut Attempt,
        method: Method,
        path: &str,
        body: Option<&Value>,
        raw: Option<&[u8]>,
    ) -> Answer {
        let disconnect = rng.random_bool(self.config.disconnect_rate);
        attempt.node = self.node(rng);
        attempt.request_id = Uuid::new_v4().to_string();
        attempt.at_ms = now_ms();
        attempt.disconnected = disconnect;
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.nodes[attempt.node]))
            .header("x-request-id", &attempt.request_id);
        if let Some(raw) = raw {
            let signature = Stripe::sign(SECRET, chrono::Utc::now().timestamp(), raw);
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(SIGNATURE_HEADER, signature)
                .body(raw.to_vec());
        } else {
            request = request.bearer_auth(&self.admin_key);
            if let Some(body) = body {
                request = request.json(body);
            }
        }
        if let Some(key) = &attempt.idempotency_key {
            request = request.header("idempotency-key", key);
        }
        if disconnect {
            request = request.timeout(Duration::from_millis(rng.random_range(1..40)));
        }
        let answer = match request.send().await {
            Err(e) if e.is_connect() => Answer {
                outcome: Outcome::Refused,
                status: None,
                body: None,
                retryable: true,
            },
            Err(_) => Answer {
                outcome: Outcome::Unknown,
                status: None,
                body: None,
                retryable: true,
            },
            Ok(response) => {
                let status = response.status();
                let body: Option<Value> = match response.bytes().await {
                    Ok(bytes) => serde_json::from_slice(&bytes).ok(),
                    Err(_) => None,
                };
                let code = body
                    .as_ref()
                    .and_then(|b| b.get("code"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                attempt.problem = code.clone();
                let (outcome, retryable) = if status.is_success() {
                    if body.is_some() {
                        (Outcome::Ok, false)
                    } else {
                        // Acknowledged, but the answer (the order id) was cut off.
                        (Outcome::Unknown, true)
                    }
                } else if status.as_u16() == 429 {
                    (Outcome::Refused, true)
                } else if status.is_client_error() {
                    (Outcome::Refused, false)
                } else if status.as_u16() == 503
                    && matches!(code.as_deref(), Some("overloaded" | "unavailable"))
                {
                    (Outcome::Refused, true)
                } else {
                    (Outcome::Unknown, true)
                };
                Answer {
                    outcome,
                    status: Some(status.as_u16()),
                    body,
                    retryable,
                }
            }
        };
        attempt.status = answer.status;
        attempt.outcome = answer.outcome;
        answer
    }

    /// An operation: its first attempt and, while the answer asks for it and a retry is
    /// safe, more with the same Idempotency-Key (or the same delivery). Returns the last
    /// answer's outcome and body; `on_ok` fills the record line of an acknowledged attempt.
    #[allow(clippy::too_many_arguments)]
    async fn operation(
        &self,
        rng: &mut StdRng,
        kind: Kind,
        raffle: Option<Uuid>,
        order: Option<Uuid>,
        method: Method,
        path: &str,
        body: Option<&Value>,
        key: Option<String>,
    ) -> (Outcome, Option<Value>) {
        let op = self.recorder.next_op();
        let retry_safe = key.is_some();
        let mut delay = Duration::from_millis(100);
        for attempt_no in 1..=MAX_ATTEMPTS {
            let mut attempt = blank(op, kind, raffle, order, key.clone());
            let answer = self
                .request(rng, &mut attempt, method.clone(), path, body, None)
                .await;
            if answer.outcome == Outcome::Ok {
                if let Some(body) = &answer.body {
                    fill_from_answer(&mut attempt, body);
                }
            }
            self.recorder.attempt(attempt);
            // A refusal changed nothing: retrying it is safe even without a key.
            let may_retry = answer.retryable
                && (retry_safe || answer.outcome == Outcome::Refused)
                && attempt_no < MAX_ATTEMPTS
                && !self.stopped();
            if !may_retry {
                return (answer.outcome, answer.body);
            }
            tokio::time::sleep(jitter(rng, delay)).await;
            delay *= 2;
        }
        unreachable!("the last attempt returns")
    }

    /// A delivery as Stripe sends it: retried (same event, signed again) until acknowledged.
    async fn deliver(&self, rng: &mut StdRng, delivery: &Delivery) -> Outcome {
        let op = self.recorder.next_op();
        let mut delay = Duration::from_millis(100);
        for attempt_no in 1..=MAX_ATTEMPTS {
            let mut attempt = blank(
                op,
                delivery.kind,
                Some(delivery.raffle),
                Some(delivery.order),
                None,
            );
            attempt.event_id = Some(delivery.event_id.clone());
            attempt.payment_id = Some(delivery.payment_id.clone());
            let answer = self
                .request(
                    rng,
                    &mut attempt,
                    Method::POST,
                    "/v1/webhooks/stripe",
                    None,
                    Some(&delivery.body),
                )
                .await;
            self.recorder.attempt(attempt);
            if !answer.retryable || attempt_no == MAX_ATTEMPTS || self.stopped() {
                return answer.outcome;
            }
            tokio::time::sleep(jitter(rng, delay)).await;
            delay *= 2;
        }
        unreachable!("the last attempt returns")
    }

    async fn create_raffle(&self, rng: &mut StdRng) {
        let seed = format!("chaos-seed-{}", Uuid::new_v4());
        let ticket_count = rng.random_range(60..=400);
        let body = json!({
            "title": "Chaos raffle",
            "ticket_count": ticket_count,
            "price_minor": PRICE,
            "currency": "USD",
            "organizer_id": "org-chaos",
            "draw_commitment": tombola_domain::draw::commitment_of(&seed),
            "prizes": [{"name": "A bicycle"}, {"name": "A book"}],
            "hold_minutes": 1,
            "max_hold_minutes": 2,
            "max_tickets_per_order": 10,
        });
        let key = Some(Uuid::new_v4().to_string());
        let (outcome, answer) = self
            .operation(
                rng,
                Kind::Create,
                None,
                None,
                Method::POST,
                "/v1/raffles",
                Some(&body),
                key,
            )
            .await;
        let Some(id) = answer
            .filter(|_| outcome == Outcome::Ok)
            .and_then(|b| b["id"].as_str().and_then(|s| s.parse::<Uuid>().ok()))
        else {
            return;
        };
        let (outcome, _) = self
            .operation(
                rng,
                Kind::Open,
                Some(id),
                None,
                Method::POST,
                &format!("/v1/raffles/{id}/open"),
                None,
                Some(Uuid::new_v4().to_string()),
            )
            .await;
        if outcome == Outcome::Ok {
            self.state.lock().expect("state").raffles.push(RaffleInfo {
                id,
                ticket_count,
                on_sale: true,
                opened: Instant::now(),
                seed,
                orders: Vec::new(),
            });
        }
    }

    fn pick_raffle(&self, rng: &mut StdRng) -> Option<(Uuid, u32)> {
        let state = self.state.lock().expect("state");
        let open: Vec<_> = state.raffles.iter().filter(|r| r.on_sale).collect();
        if open.is_empty() {
            return None;
        }
        let r = open[rng.random_range(0..open.len())];
        Some((r.id, r.ticket_count))
    }

    /// An order of a raffle on sale matching `filter`.
    fn pick_order(
        &self,
        rng: &mut StdRng,
        filter: impl Fn(&OrderInfo) -> bool,
    ) -> Option<(Uuid, OrderInfo)> {
        let state = self.state.lock().expect("state");
        let candidates: Vec<(Uuid, &OrderInfo)> = state
            .raffles
            .iter()
            .filter(|r| r.on_sale)
            .flat_map(|r| r.orders.iter().map(move |o| (r.id, o)))
            .filter(|(_, o)| !o.gone && filter(o))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let (raffle, order) = candidates[rng.random_range(0..candidates.len())];
        Some((raffle, order.clone()))
    }

    fn update_order(&self, raffle: Uuid, order: Uuid, change: impl FnOnce(&mut OrderInfo)) {
        let mut state = self.state.lock().expect("state");
        if let Some(o) = state
            .raffles
            .iter_mut()
            .find(|r| r.id == raffle)
            .and_then(|r| r.orders.iter_mut().find(|o| o.id == order))
        {
            change(o);
        }
    }

    async fn reserve(&self, rng: &mut StdRng, explicit: bool) {
        let Some((raffle, count)) = self.pick_raffle(rng) else {
            return;
        };
        let buyer = self.buyers.fetch_add(1, Ordering::Relaxed);
        let buyer =
            json!({"name": format!("Buyer {buyer}"), "email": format!("buyer{buyer}@example.com")});
        let body = if explicit {
            let hot = HOT_NUMBERS.min(count);
            let mut numbers: Vec<u32> = (0..rng.random_range(1..=3))
                .map(|_| rng.random_range(1..=hot))
                .collect();
            numbers.sort_unstable();
            numbers.dedup();
            json!({"buyer": buyer, "numbers": numbers})
        } else {
            json!({"buyer": buyer, "quantity": rng.random_range(1..=3)})
        };
        let key = rng.random_bool(0.6).then(|| Uuid::new_v4().to_string());
        let (outcome, answer) = self
            .operation(
                rng,
                Kind::Reserve,
                Some(raffle),
                None,
                Method::POST,
                &format!("/v1/raffles/{raffle}/reservations"),
                Some(&body),
                key.clone(),
            )
            .await;
        let Some(answer) = answer.filter(|_| outcome == Outcome::Ok) else {
            return;
        };
        let Some(order) = answer["order_id"].as_str().and_then(|s| s.parse().ok()) else {
            return;
        };
        let mut state = self.state.lock().expect("state");
        if let Some(key) = key {
            state.replayable.push(Replayable {
                raffle,
                key,
                body,
                order,
            });
            if state.replayable.len() > 200 {
                state.replayable.remove(0);
            }
        }
        // Some buyers walk away: nobody pays or releases their hold, so it must expire.
        if rng.random_bool(0.3) {
            return;
        }
        if let Some(r) = state.raffles.iter_mut().find(|r| r.id == raffle) {
            r.orders.push(OrderInfo {
                id: order,
                amount: answer["amount"].as_i64().unwrap_or(PRICE),
                reserved: true,
                paid: Paid::No,
                stripe_payment: None,
                paying: false,
                gone: false,
            });
        }
    }

    async fn replay(&self, rng: &mut StdRng) {
        let replay = {
            let state = self.state.lock().expect("state");
            if state.replayable.is_empty() {
                return;
            }
            state.replayable[rng.random_range(0..state.replayable.len())].clone()
        };
        let (outcome, answer) = self
            .operation(
                rng,
                Kind::Reserve,
                Some(replay.raffle),
                None,
                Method::POST,
                &format!("/v1/raffles/{}/reservations", replay.raffle),
                Some(&replay.body),
                Some(replay.key.clone()),
            )
            .await;
        if outcome == Outcome::Ok {
            let got = answer
                .as_ref()
                .and_then(|b| b["order_id"].as_str())
                .and_then(|s| s.parse::<Uuid>().ok());
            if got != Some(replay.order) {
                self.recorder.client_violation(format!(
                    "Idempotency-Key {} first answered order {}, replayed answered {got:?}",
                    replay.key, replay.order
                ));
            }
        } else if answer
            .as_ref()
            .and_then(|b| b["code"].as_str())
            .is_some_and(|c| c.contains("idempotency"))
        {
            self.recorder.client_violation(format!(
                "Idempotency-Key {} replayed with the same request was refused: {answer:?}",
                replay.key
            ));
        }
    }

    async fn release(&self, rng: &mut StdRng) {
        let Some((raffle, order)) = self.pick_order(rng, |o| o.reserved && o.paid == Paid::No)
        else {
            return;
        };
        let key = rng.random_bool(0.5).then(|| Uuid::new_v4().to_string());
        let (outcome, _) = self
            .operation(
                rng,
                Kind::Release,
                Some(raffle),
                Some(order.id),
                Method::DELETE,
                &format!("/v1/raffles/{raffle}/orders/{}", order.id),
                None,
                key,
            )
            .await;
        if outcome == Outcome::Ok {
            self.update_order(raffle, order.id, |o| o.gone = true);
        }
    }

    async fn manual_payment(&self, rng: &mut StdRng) {
        let Some((raffle, order)) = self.pick_order(rng, |o| o.reserved && o.paid == Paid::No)
        else {
            return;
        };
        let body =
            json!({"method": "cash", "reference": format!("chaos-{}", Uuid::new_v4().simple())});
        let key = rng.random_bool(0.5).then(|| Uuid::new_v4().to_string());
        let (outcome, answer) = self
            .operation(
                rng,
                Kind::ManualPayment,
                Some(raffle),
                Some(order.id),
                Method::POST,
                &format!("/v1/raffles/{raffle}/orders/{}/manual-payment", order.id),
                Some(&body),
                key,
            )
            .await;
        if outcome == Outcome::Ok && answer.as_ref().is_some_and(|b| b["status"] == "paid") {
            self.update_order(raffle, order.id, |o| o.paid = Paid::Yes);
        }
    }

    /// Reads an order being paid through Stripe: once it is paid, it can be refunded.
    async fn observe_paid(&self, rng: &mut StdRng) {
        let Some((raffle, order)) = self.pick_order(rng, |o| o.paying && o.paid == Paid::No) else {
            return;
        };
        let node = self.node(rng);
        let response = self
            .http
            .get(format!(
                "{}/v1/raffles/{raffle}/orders/{}",
                self.nodes[node], order.id
            ))
            .bearer_auth(&self.admin_key)
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        let Ok(response) = response else { return };
        let Ok(body) = response.json::<Value>().await else {
            return;
        };
        match body["status"].as_str() {
            Some("paid") => self.update_order(raffle, order.id, |o| o.paid = Paid::Yes),
            Some("reserved") | None => {}
            Some(_) => self.update_order(raffle, order.id, |o| o.paying = false),
        }
    }

    async fn refund(&self, rng: &mut StdRng) {
        let Some((raffle, order)) = self.pick_order(rng, |o| o.paid == Paid::Yes) else {
            return;
        };
        if let (Some(payment), true) = (&order.stripe_payment, rng.random_bool(0.5)) {
            let delivery = refunded(raffle, order.id, payment, order.amount);
            if self.deliver(rng, &delivery).await == Outcome::Ok {
                self.update_order(raffle, order.id, |o| o.gone = true);
            }
            return;
        }
        let key = rng.random_bool(0.5).then(|| Uuid::new_v4().to_string());
        let (outcome, _) = self
            .operation(
                rng,
                Kind::Refund,
                Some(raffle),
                Some(order.id),
                Method::POST,
                &format!("/v1/raffles/{raffle}/orders/{}/refund", order.id),
                Some(&json!({"reason": "chaos"})),
                key,
            )
            .await;
        if outcome == Outcome::Ok {
            self.update_order(raffle, order.id, |o| o.gone = true);
        }
    }

    async fn close_and_draw(&self, rng: &mut StdRng) {
        let chosen = {
            let mut state = self.state.lock().expect("state");
            let life = self.config.raffle_life;
            let found = state
                .raffles
                .iter_mut()
                .find(|r| r.on_sale && r.opened.elapsed() >= life);
            found.map(|r| {
                // No other client starts new work on it while it closes.
                r.on_sale = false;
                (r.id, r.seed.clone())
            })
        };
        let Some((raffle, seed)) = chosen else {
            return;
        };
        let (outcome, _) = self
            .operation(
                rng,
                Kind::Close,
                Some(raffle),
                None,
                Method::POST,
                &format!("/v1/raffles/{raffle}/close"),
                None,
                Some(Uuid::new_v4().to_string()),
            )
            .await;
        if outcome != Outcome::Ok {
            return;
        }
        let body =
            json!({"seed": seed, "public_entropy": format!("chaos-entropy-{}", Uuid::new_v4())});
        self.operation(
            rng,
            Kind::Draw,
            Some(raffle),
            None,
            Method::POST,
            &format!("/v1/raffles/{raffle}/draw"),
            Some(&body),
            Some(Uuid::new_v4().to_string()),
        )
        .await;
        // Forget its orders: the checker has them in the record and the log.
        let mut state = self.state.lock().expect("state");
        state.raffles.retain(|r| r.id != raffle);
        state.replayable.retain(|r| r.raffle != raffle);
    }

    /// Sends late deliveries whose time has come.
    async fn send_due_late(&self, rng: &mut StdRng) {
        let due: Vec<Delivery> = {
            let mut state = self.state.lock().expect("state");
            let now = Instant::now();
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut state.late)
                .into_iter()
                .partition(|(at, _)| *at <= now);
            state.late = later;
            due.into_iter().map(|(_, d)| d).collect()
        };
        for delivery in due {
            let outcome = self.deliver(rng, &delivery).await;
            self.after_delivery(&delivery, outcome);
        }
    }

    fn later(&self, rng: &mut StdRng, delivery: Delivery, max: Duration) {
        let delay = Duration::from_millis(rng.random_range(200..=max.as_millis().max(201) as u64));
        self.state
            .lock()
            .expect("state")
            .late
            .push((Instant::now() + delay, delivery));
    }

    fn after_delivery(&self, delivery: &Delivery, outcome: Outcome) {
        if delivery.kind == Kind::StripeSucceeded && outcome == Outcome::Ok {
            let payment = delivery.payment_id.clone();
            self.update_order(delivery.raffle, delivery.order, |o| {
                o.paying = true;
                o.stripe_payment.get_or_insert(payment);
            });
        }
    }

    /// One payment story about a reserved order.
    async fn stripe_flow(&self, rng: &mut StdRng) {
        let Some((raffle, order)) = self.pick_order(rng, |o| o.reserved && o.paid == Paid::No)
        else {
            return;
        };
        let payment = format!("pi_{}", Uuid::new_v4().simple());
        let succeeded = intent_event(Kind::StripeSucceeded, raffle, &order, &payment);
        match rng.random_range(0..8) {
            // Once.
            0 => {
                let outcome = self.deliver(rng, &succeeded).await;
                self.after_delivery(&succeeded, outcome);
            }
            // An exact duplicate, one after the other (to any node).
            1 => {
                for _ in 0..2 {
                    let outcome = self.deliver(rng, &succeeded).await;
                    self.after_delivery(&succeeded, outcome);
                }
            }
            // Concurrent duplicates, as many as there are nodes.
            2 => {
                let copies = self.nodes.len().max(2);
                let mut rngs: Vec<StdRng> = (0..copies)
                    .map(|_| StdRng::seed_from_u64(rng.random()))
                    .collect();
                let outcomes = futures_join(
                    rngs.iter_mut()
                        .map(|r| self.deliver(r, &succeeded))
                        .collect(),
                )
                .await;
                for outcome in outcomes {
                    self.after_delivery(&succeeded, outcome);
                }
            }
            // A failure, then the buyer tries again and it succeeds.
            3 => {
                let failed = intent_event(Kind::StripeFailed, raffle, &order, &payment);
                let outcome = self.deliver(rng, &failed).await;
                if rng.random_bool(0.3) {
                    // Stripe retries the failure notice as well.
                    self.deliver(rng, &failed).await;
                }
                if outcome == Outcome::Ok {
                    let outcome = self.deliver(rng, &succeeded).await;
                    self.after_delivery(&succeeded, outcome);
                }
            }
            // Out of order: the success, then a stale "processing" notice.
            4 => {
                let outcome = self.deliver(rng, &succeeded).await;
                self.after_delivery(&succeeded, outcome);
                let processing = intent_event(Kind::StripeProcessing, raffle, &order, &payment);
                self.later(rng, processing, Duration::from_secs(3));
            }
            // Late: after a delay that may outlast the hold.
            5 => {
                let max = self.config.late_max;
                self.later(rng, succeeded, max);
            }
            // A pending payment extends the hold; the money arrives later.
            6 => {
                let processing = intent_event(Kind::StripeProcessing, raffle, &order, &payment);
                self.deliver(rng, &processing).await;
                self.later(rng, succeeded, Duration::from_secs(20));
            }
            // Two different payments for one order, at once: one issues, one is refunded.
            _ => {
                let other = format!("pi_{}", Uuid::new_v4().simple());
                let second = intent_event(Kind::StripeSucceeded, raffle, &order, &other);
                let mut r1 = StdRng::seed_from_u64(rng.random());
                let mut r2 = StdRng::seed_from_u64(rng.random());
                let (a, b) = tokio::join!(
                    self.deliver(&mut r1, &succeeded),
                    self.deliver(&mut r2, &second)
                );
                self.after_delivery(&succeeded, a);
                self.after_delivery(&second, b);
            }
        }
    }
}

async fn futures_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let handles: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs = Vec::with_capacity(handles.len());
    // Polled together: every copy is in flight before any is answered.
    let joined = futures_util_join_all(handles).await;
    outputs.extend(joined);
    outputs
}

/// `join_all` without a dependency: a small select-free loop over pinned futures.
async fn futures_util_join_all<F: std::future::Future + Unpin>(
    mut futures: Vec<F>,
) -> Vec<F::Output> {
    use std::task::Poll;
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match std::pin::Pin::new(&mut *future).poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("ready")).collect()
}

fn blank(
    op: u64,
    kind: Kind,
    raffle: Option<Uuid>,
    order: Option<Uuid>,
    key: Option<String>,
) -> Attempt {
    Attempt {
        op,
        kind,
        node: 0,
        raffle,
        order,
        numbers: Vec::new(),
        request_id: String::new(),
        idempotency_key: key,
        status: None,
        problem: None,
        outcome: Outcome::Unknown,
        at_ms: 0,
        event_id: None,
        payment_id: None,
        disconnected: false,
    }
}

fn fill_from_answer(attempt: &mut Attempt, body: &Value) {
    if attempt.kind == Kind::Reserve {
        attempt.order = body["order_id"].as_str().and_then(|s| s.parse().ok());
        attempt.numbers = serde_json::from_value(body["numbers"].clone()).unwrap_or_default();
    }
    if attempt.kind == Kind::Create {
        attempt.raffle = body["id"].as_str().and_then(|s| s.parse().ok());
    }
}

/// 50–150% of `delay`, as every retry loop in Tombola does.
fn jitter(rng: &mut StdRng, delay: Duration) -> Duration {
    delay.mul_f64(rng.random_range(0.5..1.5))
}

fn stripe_event(id: &str, event_type: &str, object: Value) -> Vec<u8> {
    serde_json::to_vec_pretty(&json!({
        "id": id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": chrono::Utc::now().timestamp(),
        "livemode": false,
        "pending_webhooks": 1,
        "type": event_type,
        "data": {"object": object},
    }))
    .expect("event serializes")
}

fn intent_event(kind: Kind, raffle: Uuid, order: &OrderInfo, payment: &str) -> Delivery {
    let event_id = format!("evt_{}", Uuid::new_v4().simple());
    let (event_type, status) = match kind {
        Kind::StripeSucceeded => ("payment_intent.succeeded", "succeeded"),
        Kind::StripeFailed => ("payment_intent.payment_failed", "requires_payment_method"),
        _ => ("payment_intent.processing", "processing"),
    };
    let mut intent = json!({
        "id": payment,
        "object": "payment_intent",
        "amount": order.amount,
        "amount_received": if kind == Kind::StripeSucceeded { order.amount } else { 0 },
        "currency": "usd",
        "status": status,
        "payment_method_types": ["card"],
        "metadata": {"raffle_id": raffle.to_string(), "order_id": order.id.to_string()},
    });
    if kind == Kind::StripeFailed {
        intent["last_payment_error"] =
            json!({"code": "card_declined", "message": "Your card was declined."});
    }
    Delivery {
        kind,
        body: stripe_event(&event_id, event_type, intent),
        event_id,
        payment_id: payment.to_owned(),
        raffle,
        order: order.id,
    }
}

fn refunded(raffle: Uuid, order: Uuid, payment: &str, amount: i64) -> Delivery {
    let event_id = format!("evt_{}", Uuid::new_v4().simple());
    let charge = json!({
        "id": format!("ch_{}", Uuid::new_v4().simple()),
        "object": "charge",
        "amount": amount,
        "amount_captured": amount,
        "amount_refunded": amount,
        "captured": true,
        "refunded": true,
        "currency": "usd",
        "payment_intent": payment,
    });
    Delivery {
        kind: Kind::StripeRefunded,
        body: stripe_event(&event_id, "charge.refunded", charge),
        event_id,
        payment_id: payment.to_owned(),
        raffle,
        order,
    }
}
