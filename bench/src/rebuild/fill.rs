//! The log a rebuild replays: raffles decided by the real aggregate from a realistic mix of
//! commands, written straight into `events` with `COPY` (the engine's appends would take
//! hours for millions of events on this machine, and the rebuild reads only the log).
//!
//! One raffle holds `--big-tickets` numbers (orders of 3), the others `--small-tickets`
//! (orders of 1–5). Per reservation: 70 % paid (a provider payment: `PaymentRecorded` +
//! `TicketsIssued`), 8 % released by the buyer, the rest left to expire (the clock moves on
//! and `ExpireDueHolds` expires them in groups); 4 % of the paid orders are refunded later. A
//! raffle that sells out is closed.

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sqlx::PgPool;
use tombola_domain::{
    Buyer, CreateRaffle, Currency, FixedClock, ProviderPayment, Raffle, RaffleCommand, RaffleEvent,
    RaffleServices, RefundOrder, Reserve, Selection,
};
use uuid::Uuid;

/// What was written.
#[derive(Debug, Default, Clone)]
pub struct Filled {
    pub raffles: Vec<Uuid>,
    pub events: u64,
    pub orders: u64,
    /// The big raffle and its aggregate's counts, for the checks.
    pub big: Option<(Uuid, u64, u64)>,
    /// Sum over raffles of (reserved + sold) numbers: rows `read_tickets` must hold.
    pub held_or_sold: u64,
}

pub struct Plan {
    pub events: u64,
    pub big_tickets: u32,
    pub small_tickets: u32,
    pub seed: u64,
}

/// Rows ready for `COPY events FROM STDIN` (text format), one raffle at a time.
type Chunk = Vec<u8>;

/// Generates the log on a blocking thread and streams it into the database.
pub async fn fill(pool: &PgPool, plan: Plan) -> Result<Filled, String> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Uuid, String, Chunk)>(4);
    let generator = tokio::task::spawn_blocking(move || generate(&plan, &tx));
    let mut conn = pool.acquire().await.map_err(|e| e.to_string())?;
    let mut copy = conn
        .copy_in_raw(
            "COPY events (aggregate_type, aggregate_id, sequence, event_type, event_version, \
                          payload, metadata, order_id) FROM STDIN",
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut raffles: Vec<(Uuid, String)> = Vec::new();
    while let Some((raffle_id, organizer, chunk)) = rx.recv().await {
        copy.send(chunk).await.map_err(|e| e.to_string())?;
        raffles.push((raffle_id, organizer));
    }
    copy.finish().await.map_err(|e| e.to_string())?;
    drop(conn);
    let filled = generator.await.map_err(|e| e.to_string())?;
    sqlx::query(
        "INSERT INTO raffles (raffle_id, organizer_id, title, status, status_sequence, \
                              created_at, updated_at) \
         SELECT r, o, 'Bench', 'on_sale', 2, now(), now() FROM UNNEST($1::uuid[], $2::text[]) AS t(r, o)",
    )
    .bind(raffles.iter().map(|(r, _)| *r).collect::<Vec<_>>())
    .bind(raffles.iter().map(|(_, o)| o.clone()).collect::<Vec<_>>())
    .execute(pool)
    .await
    .map_err(|e| e.to_string())?;
    sqlx::query("ANALYZE events")
        .execute(pool)
        .await
        .map_err(|e| e.to_string())?;
    Ok(filled)
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 1, 9, 0, 0).unwrap()
}

fn generate(plan: &Plan, out: &tokio::sync::mpsc::Sender<(Uuid, String, Chunk)>) -> Filled {
    let mut rng = ChaCha8Rng::seed_from_u64(plan.seed);
    let mut filled = Filled::default();
    // The big raffle takes about a quarter of the log (more if it needs it to sell out).
    let big_budget = (plan.events / 4).max(1);
    let mut index = 0u64;
    while filled.events < plan.events {
        let big = index == 0;
        let budget = if big {
            big_budget
        } else {
            // Small raffles of a few thousand events each, the last one what is left.
            (plan.events - filled.events).min(rng.random_range(2_000..8_000))
        };
        let tickets = if big {
            plan.big_tickets
        } else {
            plan.small_tickets
        };
        let raffle = RaffleLog::generate(index, tickets, budget, big, &mut rng);
        filled.events += raffle.events;
        filled.orders += raffle.orders;
        filled.held_or_sold += raffle.raffle.reserved_count() + raffle.raffle.sold_count();
        filled.raffles.push(raffle.raffle_id);
        if big {
            filled.big = Some((
                raffle.raffle_id,
                raffle.raffle.sold_count(),
                raffle.raffle.reserved_count(),
            ));
        }
        if out
            .blocking_send((raffle.raffle_id, raffle.organizer, raffle.rows))
            .is_err()
        {
            break;
        }
        index += 1;
    }
    filled
}

struct RaffleLog {
    raffle_id: Uuid,
    organizer: String,
    raffle: Raffle,
    rows: Chunk,
    events: u64,
    orders: u64,
}

impl RaffleLog {
    fn generate(index: u64, tickets: u32, budget: u64, big: bool, rng: &mut ChaCha8Rng) -> Self {
        let raffle_id = Uuid::from_u128(rng.random::<u128>());
        let organizer = format!("org-{}", index % 50);
        let clock = Arc::new(FixedClock::new(t0() + Duration::minutes(index as i64)));
        let services = RaffleServices::deterministic(rng.random(), clock.clone());
        let api_key = format!("key:{}", Uuid::from_u128(rng.random::<u128>()));
        let mut log = Self {
            raffle_id,
            organizer: organizer.clone(),
            raffle: Raffle::default(),
            rows: Vec::with_capacity(budget as usize * 700),
            events: 0,
            orders: 0,
        };
        let mut create = CreateRaffle::example(raffle_id, tickets);
        create.organizer_id = organizer;
        create.title = format!("Bench raffle {index}");
        create.hold_seconds = Some(600);
        create.max_hold_seconds = Some(3_600);
        create.max_tickets_per_order = 10;
        log.run(RaffleCommand::Create(create), &services, &api_key);
        log.run(RaffleCommand::OpenSales, &services, &api_key);
        let usd = Currency::parse("USD").expect("valid");
        let mut paid: Vec<Uuid> = Vec::new();
        let mut step = 0u64;
        while log.events < budget {
            step += 1;
            // Time moves: a reservation every few seconds, holds expire after 10 minutes.
            clock.advance(Duration::seconds(rng.random_range(1..6)));
            if step.is_multiple_of(50) {
                log.run(RaffleCommand::ExpireDueHolds, &services, "system");
            }
            let order_id = Uuid::from_u128(rng.random::<u128>());
            let buyer = rng.random_range(0..100_000u32);
            let quantity = if big { 3 } else { rng.random_range(1..=5) };
            let reserve = RaffleCommand::Reserve(Reserve {
                order_id,
                buyer: Buyer::parse(
                    &format!("Buyer Number {buyer}"),
                    &format!("buyer{buyer}@example.com"),
                    buyer.is_multiple_of(2).then_some("+52 55 1234 5678"),
                )
                .expect("valid buyer"),
                selection: Selection::Random(quantity),
            });
            if log.run(reserve, &services, &api_key) == 0 {
                // Sold out (or nearly): expire what is due, and stop once nothing is held.
                clock.advance(Duration::seconds(700));
                log.run(RaffleCommand::ExpireDueHolds, &services, "system");
                if log.raffle.available_count() == 0 && log.raffle.reserved_count() == 0 {
                    log.run(RaffleCommand::CloseSales, &services, &api_key);
                    break;
                }
                continue;
            }
            log.orders += 1;
            let roll = rng.random_range(0..100);
            if roll < 70 {
                let amount = log.raffle.order(order_id).map_or(0, |o| o.amount_minor);
                let payment = RaffleCommand::RecordPayment(ProviderPayment {
                    order_id,
                    provider: "stripe".into(),
                    payment_id: format!("pi_{}", order_id.simple()),
                    provider_event_id: format!("evt_{}", order_id.simple()),
                    amount_minor: amount,
                    currency: usd,
                    method: "card".into(),
                });
                log.run(payment, &services, "webhook:stripe");
                paid.push(order_id);
            } else if roll < 78 {
                log.run(RaffleCommand::Release { order_id }, &services, &api_key);
            }
            if !paid.is_empty() && rng.random_range(0..100) < 3 {
                let victim = paid.swap_remove(rng.random_range(0..paid.len()));
                let refund = RaffleCommand::Refund(RefundOrder {
                    order_id: victim,
                    amount_refunded_minor: None,
                    reason: "requested by the buyer".into(),
                    refund_id: Some(format!("re_{}", victim.simple())),
                });
                log.run(refund, &services, &api_key);
            }
        }
        log
    }

    /// Decides and applies `command`, appending its events as COPY rows; the event count.
    fn run(&mut self, command: RaffleCommand, services: &RaffleServices, actor: &str) -> usize {
        let Ok(events) = self.raffle.decide(command, services) else {
            return 0;
        };
        let count = events.len();
        let at = services
            .now()
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        for event in events {
            self.raffle.apply_event(&event);
            self.events += 1;
            self.push_row(&event, actor, &at);
        }
        count
    }

    fn push_row(&mut self, event: &RaffleEvent, actor: &str, at: &str) {
        use std::io::Write as _;
        let payload = serde_json::to_string(event).expect("events serialize");
        // The store's metadata shape (request ids, the hash chain), so rows are as wide as
        // real ones; projections read only `actor` and `recorded_at`.
        let request = Uuid::from_u128(u128::from(self.events) << 64 ^ self.raffle_id.as_u128());
        let metadata = format!(
            "{{\"actor\":\"{actor}\",\"source\":\"api\",\"request_id\":\"{request}\",\
             \"correlation_id\":\"{request}\",\"causation_id\":\"{request}\",\
             \"recorded_at\":\"{at}\",\"prev_hash\":\"{:064x}\",\"hash\":\"{:064x}\"}}",
            self.events - 1,
            self.events
        );
        let order = event
            .order_id()
            .map_or_else(|| "\\N".to_owned(), |id| id.to_string());
        let rows = &mut self.rows;
        let _ = write!(
            rows,
            "raffle\t{}\t{}\t{}\t1\t",
            self.raffle_id,
            self.events,
            event.name()
        );
        escape_into(rows, &payload);
        rows.push(b'\t');
        escape_into(rows, &metadata);
        let _ = writeln!(rows, "\t{order}");
    }
}

/// COPY's text format: backslashes doubled (JSON escapes contain them); JSON text has no raw
/// tabs or newlines.
fn escape_into(out: &mut Vec<u8>, text: &str) {
    for byte in text.bytes() {
        if byte == b'\\' {
            out.push(b'\\');
        }
        out.push(byte);
    }
}
