//! `tombola-bench domain`: the `Raffle` aggregate in memory, with no I/O.
//!
//! Builds a sold-out raffle of `--tickets` numbers by calling `decide` + `apply_event`
//! directly: create, open sales, then orders of `--per-order` random numbers (the last order
//! takes what is left), each paid at once with a unique payment id. It then measures the
//! aggregate's resident memory (counting allocator: bytes live after the build minus before),
//! decision throughput, and the snapshot (size, encode, decode, memory after reload), checks
//! the result, and builds a naive model of the same raffle in the same run as the baseline
//! the ratios are taken against (see [`naive`]).

mod breakdown;
mod naive;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::TimeZone as _;
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tombola_domain::{
    Buyer, CreateRaffle, Currency, FixedClock, ProviderPayment, Raffle, RaffleCommand,
    RaffleError, RaffleEvent, RaffleServices, RaffleStatus, Reserve, Selection, TicketState,
};
use uuid::Uuid;

use crate::alloc;
use crate::report::{self, ms, per_sec, ratio, round3, BenchResult, Report};

/// The goals this benchmark reports against (stated for a 10M-ticket raffle).
const GOAL_BYTES_PER_TICKET: f64 = 32.0;
const GOAL_SNAPSHOT_DECODE_MS: f64 = 1_000.0;
/// Orders decided per timed batch: commands are built outside the timed loop.
const BATCH: usize = 1_024;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Tickets in the raffle (the domain accepts at most 10,000,000).
    #[arg(long, default_value_t = 10_000_000)]
    tickets: u32,
    /// Random numbers per order; the last order takes what is left.
    #[arg(long, default_value_t = 3)]
    per_order: u32,
    /// Distinct buyer e-mails, used in turn.
    #[arg(long, default_value_t = 100_000)]
    buyers: u32,
    /// Per-buyer ticket limit for the raffle (default: none, as 100k buyers sharing 10M
    /// tickets would otherwise need a limit of at least 100 each).
    #[arg(long)]
    max_tickets_per_buyer: Option<u32>,
    /// Seed for the raffle's random source and for generated ids.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Skip the naive baseline (the ratios are then null).
    #[arg(long)]
    no_baseline: bool,
}

/// What a successful reservation tells the payer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reserved {
    pub amount_minor: i64,
    pub currency: Currency,
}

/// A raffle model the workload can drive: the aggregate, or the naive baseline.
pub(crate) trait Model {
    fn reserve(&mut self, reserve: Reserve) -> Result<Reserved, String>;
    fn pay(&mut self, payment: ProviderPayment) -> Result<(), String>;
}

/// The aggregate as the engine drives it: decide, then apply every event.
struct Aggregate<'a> {
    raffle: Raffle,
    services: &'a RaffleServices,
}

impl Aggregate<'_> {
    fn execute(&mut self, command: RaffleCommand) -> Result<Vec<RaffleEvent>, RaffleError> {
        let events = self.raffle.decide(command, self.services)?;
        for event in &events {
            self.raffle.apply_event(event);
        }
        Ok(events)
    }
}

impl Model for Aggregate<'_> {
    fn reserve(&mut self, reserve: Reserve) -> Result<Reserved, String> {
        let wanted = match reserve.selection {
            Selection::Random(quantity) => quantity as usize,
            Selection::Numbers(ref numbers) => numbers.len(),
        };
        let events = self
            .execute(RaffleCommand::Reserve(reserve))
            .map_err(|e| e.to_string())?;
        match events.as_slice() {
            [RaffleEvent::TicketsReserved {
                amount_minor,
                currency,
                numbers,
                ..
            }] if numbers.len() == wanted => Ok(Reserved {
                amount_minor: *amount_minor,
                currency: *currency,
            }),
            other => Err(format!("reserve gave unexpected events: {other:?}")),
        }
    }

    fn pay(&mut self, payment: ProviderPayment) -> Result<(), String> {
        let events = self
            .execute(RaffleCommand::RecordPayment(payment))
            .map_err(|e| e.to_string())?;
        match events.as_slice() {
            [RaffleEvent::PaymentRecorded { .. }, RaffleEvent::TicketsIssued {
                late: false,
                replaced_numbers,
                ..
            }] if replaced_numbers.is_empty() => Ok(()),
            other => Err(format!("payment gave unexpected events: {other:?}")),
        }
    }
}

/// The command stream both models get: the same order ids, buyers and payment ids.
struct Workload<'a> {
    tickets: u32,
    per_order: u32,
    buyers: &'a [Buyer],
    seed: u64,
}

struct BuildTimes {
    orders: u64,
    reserve: Duration,
    pay: Duration,
    total: Duration,
    first_order: Uuid,
    last_payment: Option<ProviderPayment>,
}

impl Workload<'_> {
    fn orders(&self) -> u64 {
        u64::from(self.tickets).div_ceil(u64::from(self.per_order))
    }

    /// Reserves and pays every ticket, `BATCH` orders at a time: the batch's commands are
    /// built first, then decided and applied under the timer (reserves, then payments).
    /// The clock moves one second per batch.
    fn run(&self, model: &mut impl Model, clock: &FixedClock, what: &str) -> BenchResult<BuildTimes> {
        let mut ids = ChaCha8Rng::seed_from_u64(self.seed ^ 0x0bad_5eed);
        let bar = report::progress(u64::from(self.tickets), what);
        let mut reserves = Vec::with_capacity(BATCH);
        let mut reserved = Vec::with_capacity(BATCH);
        let mut payments = Vec::with_capacity(BATCH);
        let mut paid = Vec::with_capacity(BATCH);
        let mut order_ids = Vec::with_capacity(BATCH);
        let mut times = BuildTimes {
            orders: 0,
            reserve: Duration::ZERO,
            pay: Duration::ZERO,
            total: Duration::ZERO,
            first_order: Uuid::nil(),
            last_payment: None,
        };
        let started = Instant::now();
        let mut assigned = 0u32;
        while assigned < self.tickets {
            let mut batch_tickets = 0u32;
            while reserves.len() < BATCH && assigned < self.tickets {
                let quantity = self.per_order.min(self.tickets - assigned);
                assigned += quantity;
                batch_tickets += quantity;
                let order_id = uuid::Builder::from_random_bytes(ids.random()).into_uuid();
                let buyer = self.buyers[(times.orders as usize) % self.buyers.len()].clone();
                if times.orders == 0 {
                    times.first_order = order_id;
                }
                times.orders += 1;
                order_ids.push(order_id);
                reserves.push(Reserve {
                    order_id,
                    buyer,
                    selection: Selection::Random(quantity),
                });
            }

            let t = Instant::now();
            for reserve in reserves.drain(..) {
                reserved.push(model.reserve(reserve));
            }
            times.reserve += t.elapsed();

            let first_in_batch = times.orders - order_ids.len() as u64;
            for (k, (order_id, outcome)) in order_ids.drain(..).zip(reserved.drain(..)).enumerate() {
                let Reserved {
                    amount_minor,
                    currency,
                } = outcome.map_err(|e| format!("{what}: reserving order {order_id}: {e}"))?;
                let n = first_in_batch + k as u64;
                payments.push(ProviderPayment {
                    order_id,
                    provider: "stripe".into(),
                    payment_id: format!("pi_{:016x}{n:010}", self.seed),
                    provider_event_id: format!("evt_{:016x}{n:010}", self.seed),
                    amount_minor,
                    currency,
                    method: "card".into(),
                });
            }
            if assigned == self.tickets {
                times.last_payment = payments.last().cloned();
            }

            let t = Instant::now();
            for payment in payments.drain(..) {
                paid.push(model.pay(payment));
            }
            times.pay += t.elapsed();
            for outcome in paid.drain(..) {
                outcome.map_err(|e| format!("{what}: paying: {e}"))?;
            }

            clock.advance(chrono::Duration::seconds(1));
            bar.inc(u64::from(batch_tickets));
        }
        times.total = started.elapsed();
        bar.finish_and_clear();
        Ok(times)
    }
}

/// One structure's share of the aggregate's memory.
#[derive(Debug, Serialize)]
pub(crate) struct Component {
    pub component: &'static str,
    pub bytes: i64,
    pub bytes_per_ticket: f64,
    pub how: &'static str,
}

#[derive(Debug, Serialize)]
struct Figures {
    bench: &'static str,
    profile: &'static str,
    cores: usize,
    tickets: u32,
    orders: u64,
    per_order: u32,
    buyers: u32,
    max_tickets_per_buyer: Option<u32>,
    seed: u64,

    bytes_per_ticket: f64,
    resident_bytes: i64,
    bytes_per_ticket_after_reload: f64,
    resident_bytes_after_reload: i64,
    decode_peak_extra_bytes: i64,
    rss_build_delta_bytes: Option<i64>,
    snapshot_bytes: usize,
    snapshot_bytes_per_ticket: f64,
    snapshot_encode_ms: f64,
    snapshot_decode_ms: f64,
    reserve_decisions_per_sec: f64,
    pay_decisions_per_sec: f64,
    reserve_us_per_decision: f64,
    pay_us_per_decision: f64,
    build_ms: f64,

    goal_bytes_per_ticket: f64,
    goal_bytes_per_ticket_met: bool,
    goal_snapshot_decode_ms: f64,
    goal_snapshot_decode_met: bool,

    memory_breakdown: Vec<Component>,
    live_bytes_by_size_class: Vec<(usize, i64)>,

    baseline: &'static str,
    baseline_bytes_per_ticket: Option<f64>,
    baseline_resident_bytes: Option<i64>,
    baseline_bytes_per_ticket_after_reload: Option<f64>,
    baseline_snapshot_bytes: Option<usize>,
    baseline_snapshot_encode_ms: Option<f64>,
    baseline_snapshot_decode_ms: Option<f64>,
    baseline_reserve_ops_per_sec: Option<f64>,
    baseline_pay_ops_per_sec: Option<f64>,
    ratio_definition: &'static str,
    bytes_per_ticket_ratio: Option<f64>,
    bytes_per_ticket_after_reload_ratio: Option<f64>,
    snapshot_bytes_ratio: Option<f64>,
    snapshot_encode_ratio: Option<f64>,
    snapshot_decode_ratio: Option<f64>,
    reserve_throughput_ratio: Option<f64>,
    pay_throughput_ratio: Option<f64>,

    verified: bool,
    failures: Vec<String>,
}

fn buyers(count: u32) -> BenchResult<Vec<Buyer>> {
    (0..count)
        .map(|i| {
            let phone = format!("+52 55 {:04} {:04}", i / 10_000 % 10_000, i % 10_000);
            Buyer::parse(
                &format!("Buyer {i}"),
                &format!("buyer{i:06}@example.com"),
                (i % 2 == 0).then_some(phone.as_str()),
            )
            .map_err(Into::into)
        })
        .collect()
}

fn per_ticket(bytes: i64, tickets: u32) -> f64 {
    round3(bytes as f64 / f64::from(tickets))
}

pub fn run(args: &Args) -> BenchResult<Report> {
    if args.tickets == 0 || args.buyers == 0 || !(1..=100).contains(&args.per_order) {
        return Err("--tickets and --buyers must be positive, --per-order 1 to 100".into());
    }
    let tickets = args.tickets;
    let buyers = buyers(args.buyers)?;
    let workload = Workload {
        tickets,
        per_order: args.per_order,
        buyers: &buyers,
        seed: args.seed,
    };
    let start = chrono::Utc
        .with_ymd_and_hms(2026, 1, 1, 12, 0, 0)
        .single()
        .ok_or("start time")?;
    let clock = Arc::new(FixedClock::new(start));
    let services = RaffleServices::deterministic(args.seed, clock.clone());
    let raffle_id = Uuid::from_u64_pair(args.seed, 1);
    let mut create = CreateRaffle::example(raffle_id, tickets);
    create.title = format!("Benchmark raffle of {tickets} tickets");
    create.max_tickets_per_order = args.per_order.max(create.max_tickets_per_order);
    create.max_tickets_per_buyer = args.max_tickets_per_buyer;
    let mut failures = Vec::new();

    // ----- build the aggregate -----
    report::phase(format!(
        "domain: building a sold-out raffle of {tickets} tickets ({} orders of {})",
        workload.orders(),
        args.per_order
    ));
    let rss_before = alloc::rss_bytes();
    let before = alloc::snapshot();
    let mut aggregate = Aggregate {
        raffle: Raffle::default(),
        services: &services,
    };
    aggregate.execute(RaffleCommand::Create(create))?;
    aggregate.execute(RaffleCommand::OpenSales)?;
    let times = workload.run(&mut aggregate, &clock, "aggregate")?;
    let after = alloc::snapshot();
    let rss_after = alloc::rss_bytes();
    let raffle = aggregate.raffle;
    let resident = after.since(&before);
    let live_by_class: Vec<(usize, i64)> = after
        .grown_since(&before)
        .into_iter()
        .filter(|&(_, bytes)| bytes.unsigned_abs() >= 1024)
        .collect();
    report::phase(format!(
        "domain: built in {:.1} s; {} B resident ({:.2} B/ticket)",
        times.total.as_secs_f64(),
        resident,
        per_ticket(resident, tickets)
    ));

    // ----- snapshot -----
    report::phase("domain: encoding the snapshot");
    let t = Instant::now();
    let snapshot = raffle.encode_snapshot();
    let encode = t.elapsed();
    report::phase(format!(
        "domain: snapshot {} B in {:.1} ms; decoding",
        snapshot.len(),
        encode.as_secs_f64() * 1e3
    ));
    let before_decode = alloc::snapshot();
    alloc::reset_peak();
    let t = Instant::now();
    let decoded = Raffle::decode_snapshot(&snapshot)?;
    let decode = t.elapsed();
    let reload_resident = alloc::snapshot().since(&before_decode);
    let decode_peak_extra = alloc::peak() as i64 - before_decode.total as i64;
    report::phase(format!(
        "domain: decoded in {:.1} ms; {} B resident ({:.2} B/ticket)",
        decode.as_secs_f64() * 1e3,
        reload_resident,
        per_ticket(reload_resident, tickets)
    ));

    // ----- correctness -----
    report::phase("domain: verifying");
    verify(
        &raffle,
        &decoded,
        &workload,
        &times,
        &services,
        &mut failures,
    );
    drop(decoded);
    drop(snapshot);
    let orders = raffle.order_count();
    drop(raffle);

    // ----- what the memory is made of -----
    report::phase("domain: measuring the memory breakdown");
    let memory_breakdown = breakdown::measure(tickets, orders, resident);

    // ----- the naive baseline, same run -----
    let baseline = if args.no_baseline {
        None
    } else {
        report::phase("domain: building the naive baseline");
        let baseline = naive::measure(&workload, &clock, &mut failures)?;
        report::phase(format!(
            "domain: baseline {} B resident ({:.2} B/ticket), JSON {} B",
            baseline.resident,
            per_ticket(baseline.resident, tickets),
            baseline.snapshot_bytes
        ));
        Some(baseline)
    };

    let reserve_per_sec = per_sec(times.orders, times.reserve);
    let pay_per_sec = per_sec(times.orders, times.pay);
    let bytes_per_ticket = per_ticket(resident, tickets);
    let reload_per_ticket = per_ticket(reload_resident, tickets);
    let b = baseline.as_ref();
    let figures = Figures {
        bench: "domain",
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        tickets,
        orders: times.orders,
        per_order: args.per_order,
        buyers: args.buyers,
        max_tickets_per_buyer: args.max_tickets_per_buyer,
        seed: args.seed,

        bytes_per_ticket,
        resident_bytes: resident,
        bytes_per_ticket_after_reload: reload_per_ticket,
        resident_bytes_after_reload: reload_resident,
        decode_peak_extra_bytes: decode_peak_extra,
        rss_build_delta_bytes: rss_before
            .zip(rss_after)
            .map(|(before, after)| after as i64 - before as i64),
        snapshot_bytes: snapshot_len(&times, &services, tickets).unwrap_or_default(),
        snapshot_bytes_per_ticket: 0.0,
        snapshot_encode_ms: ms(encode),
        snapshot_decode_ms: ms(decode),
        reserve_decisions_per_sec: reserve_per_sec,
        pay_decisions_per_sec: pay_per_sec,
        reserve_us_per_decision: round3(times.reserve.as_secs_f64() * 1e6 / times.orders as f64),
        pay_us_per_decision: round3(times.pay.as_secs_f64() * 1e6 / times.orders as f64),
        build_ms: ms(times.total),

        goal_bytes_per_ticket: GOAL_BYTES_PER_TICKET,
        goal_bytes_per_ticket_met: bytes_per_ticket <= GOAL_BYTES_PER_TICKET,
        goal_snapshot_decode_ms: GOAL_SNAPSHOT_DECODE_MS,
        goal_snapshot_decode_met: decode.as_secs_f64() * 1e3 <= GOAL_SNAPSHOT_DECODE_MS,

        memory_breakdown,
        live_bytes_by_size_class: live_by_class,

        baseline: naive::DESCRIPTION,
        baseline_bytes_per_ticket: b.map(|b| per_ticket(b.resident, tickets)),
        baseline_resident_bytes: b.map(|b| b.resident),
        baseline_bytes_per_ticket_after_reload: b.map(|b| per_ticket(b.reload_resident, tickets)),
        baseline_snapshot_bytes: b.map(|b| b.snapshot_bytes),
        baseline_snapshot_encode_ms: b.map(|b| ms(b.encode)),
        baseline_snapshot_decode_ms: b.map(|b| ms(b.decode)),
        baseline_reserve_ops_per_sec: b.map(|b| per_sec(b.times.orders, b.times.reserve)),
        baseline_pay_ops_per_sec: b.map(|b| per_sec(b.times.orders, b.times.pay)),
        ratio_definition: "domain / baseline: below 1 is better for bytes and ms, above 1 is \
                           better for *_throughput_ratio",
        bytes_per_ticket_ratio: b.map(|b| ratio(resident as f64, b.resident as f64)),
        bytes_per_ticket_after_reload_ratio: b
            .map(|b| ratio(reload_resident as f64, b.reload_resident as f64)),
        snapshot_bytes_ratio: None,
        snapshot_encode_ratio: b.map(|b| ratio(encode.as_secs_f64(), b.encode.as_secs_f64())),
        snapshot_decode_ratio: b.map(|b| ratio(decode.as_secs_f64(), b.decode.as_secs_f64())),
        reserve_throughput_ratio: b
            .map(|b| ratio(reserve_per_sec, per_sec(b.times.orders, b.times.reserve))),
        pay_throughput_ratio: b.map(|b| ratio(pay_per_sec, per_sec(b.times.orders, b.times.pay))),

        verified: failures.is_empty(),
        failures: failures.clone(),
    };
    Report::new(&figures, failures)
}
