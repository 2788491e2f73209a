//! The checker: reads what the run left in PostgreSQL and the client's record, and lists
//! every promise that does not hold. Pure over its inputs ([`Observed`] is gathered by
//! `observe.rs`), so tests feed it doctored logs and records.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Duration, TimeZone, Utc};
use tombola_domain::RaffleEvent;
use uuid::Uuid;

use super::record::{Kind, Outcome, Record};

/// One event as the log holds it, with the metadata the checks need.
#[derive(Debug, Clone)]
pub struct Logged {
    pub sequence: u64,
    pub event: RaffleEvent,
    pub request_id: String,
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone)]
pub struct InboxRow {
    pub status: String,
    pub outcome: Option<String>,
    pub last_error: Option<String>,
}

/// A read model's view of one order: status and numbers (sorted).
pub type OrderGist = (String, Vec<u32>);

/// Everything the checker reads from the database after the run.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    /// Each raffle's stream, in sequence order.
    pub streams: BTreeMap<Uuid, Vec<Logged>>,
    /// The payment inbox by provider event id.
    pub inbox: BTreeMap<String, InboxRow>,
    /// Raffles whose hash chain does not verify, with the verifier's reason.
    pub broken_chains: Vec<(Uuid, String)>,
    /// Drawn raffles whose winners do not recompute from the log (`tombola draw verify`).
    pub unverified_draws: Vec<(Uuid, String)>,
    /// Projections whose checkpoints must be at each stream's head.
    pub projections: Vec<String>,
    /// (raffle, projection) → checkpoint sequence.
    pub checkpoints: BTreeMap<(Uuid, String), u64>,
    /// raffle → order → what `read_orders` holds.
    pub read_orders: BTreeMap<Uuid, BTreeMap<Uuid, OrderGist>>,
    /// raffle → number → (order, `held`/`sold`), as `read_tickets` holds it.
    pub read_tickets: BTreeMap<Uuid, BTreeMap<u32, (Uuid, String)>>,
    /// When the nodes were stopped: a hold still live then ended no earlier.
    pub observed_at: DateTime<Utc>,
    /// What the running nodes had not done when the settling gave up (deliveries left
    /// pending, projections behind), or None: the harness applies events appended after
    /// the settling itself, so only this says whether the nodes kept up.
    pub unsettled: Option<String>,
}

/// The bounds the checks allow.
#[derive(Debug, Clone)]
pub struct Bounds {
    /// How long past its expiry a hold may stay live, outside fault windows.
    pub hold_grace: Duration,
}

/// An order as the checker folds it from the log, independently of the aggregate.
#[derive(Debug, Clone)]
struct FoldedOrder {
    status: &'static str,
    numbers: Vec<u32>,
    expires_at: DateTime<Utc>,
    hold_ended: Option<DateTime<Utc>>,
    issued: u32,
    refunded: bool,
}

/// Every violation found, one line each; empty means the run kept every promise.
pub fn check(record: &Record, observed: &Observed, bounds: &Bounds) -> Vec<String> {
    let mut violations: Vec<String> = record
        .client_violations
        .iter()
        .map(|v| format!("client: {v}"))
        .collect();
    let mut folds = BTreeMap::new();
    for (raffle, stream) in &observed.streams {
        folds.insert(*raffle, fold_stream(*raffle, stream, &mut violations));
    }
    check_commands(record, observed, &folds, &mut violations);
    check_payments(record, observed, &folds, &mut violations);
    check_holds(record, observed, &folds, bounds, &mut violations);
    check_read_models(observed, &folds, &mut violations);
    for (raffle, why) in &observed.unverified_draws {
        violations.push(format!(
            "raffle {raffle}: the draw does not recompute from the log: {why}"
        ));
    }
    if let Some(left) = &observed.unsettled {
        violations.push(format!("the running nodes did not settle: {left}"));
    }
    for (raffle, why) in &observed.broken_chains {
        violations.push(format!(
            "raffle {raffle}: hash chain does not verify: {why}"
        ));
    }
    violations
}

/// Replays a stream: who holds or owns each number, each order's status, and when holds
/// ended. Reports numbers reserved or issued while another order has them, and orders
/// issued twice.
fn fold_stream(
    raffle: Uuid,
    stream: &[Logged],
    violations: &mut Vec<String>,
) -> BTreeMap<Uuid, FoldedOrder> {
    let mut orders: BTreeMap<Uuid, FoldedOrder> = BTreeMap::new();
    // number → (order, sold)
    let mut owner: HashMap<u32, (Uuid, bool)> = HashMap::new();
    let free_held = |owner: &mut HashMap<u32, (Uuid, bool)>, order: Uuid, numbers: &[u32]| {
        for n in numbers {
            if owner.get(n) == Some(&(order, false)) {
                owner.remove(n);
            }
        }
    };
    for (index, logged) in stream.iter().enumerate() {
        if logged.sequence != index as u64 + 1 {
            violations.push(format!(
                "raffle {raffle}: sequence {} at position {} (the stream has a gap)",
                logged.sequence,
                index + 1
            ));
        }
        let seq = logged.sequence;
        match &logged.event {
            RaffleEvent::TicketsReserved {
                order_id,
                numbers,
                expires_at,
                ..
            } => {
                for n in numbers {
                    if let Some((other, sold)) = owner.get(n) {
                        violations.push(format!(
                            "raffle {raffle} seq {seq}: number {n} reserved for order {order_id} while {} by order {other}",
                            if *sold { "sold" } else { "held" }
                        ));
                    }
                    owner.insert(*n, (*order_id, false));
                }
                if orders.contains_key(order_id) {
                    violations.push(format!(
                        "raffle {raffle} seq {seq}: order {order_id} reserved twice"
                    ));
                }
                let mut sorted = numbers.clone();
                sorted.sort_unstable();
                orders.insert(
                    *order_id,
                    FoldedOrder {
                        status: "reserved",
                        numbers: sorted,
                        expires_at: *expires_at,
                        hold_ended: None,
                        issued: 0,
                        refunded: false,
                    },
                );
            }
            RaffleEvent::ReservationReleased { order_id, at, .. } => {
                if let Some(order) = orders.get_mut(order_id) {
                    free_held(&mut owner, *order_id, &order.numbers);
                    end_hold(order, *at);
                    order.status = "released";
                }
            }
            RaffleEvent::HoldsExpired { holds, at } => {
                for hold in holds {
                    if let Some(order) = orders.get_mut(&hold.order_id) {
                        free_held(&mut owner, hold.order_id, &order.numbers);
                        end_hold(order, *at);
                        order.status = "expired";
                    }
                }
            }
            RaffleEvent::HoldExtended {
                order_id,
                expires_at,
                ..
            } => {
                if let Some(order) = orders.get_mut(order_id) {
                    order.expires_at = *expires_at;
                }
            }
            RaffleEvent::TicketsIssued {
                order_id,
                numbers,
                at,
                ..
            } => {
                let Some(order) = orders.get_mut(order_id) else {
                    violations.push(format!(
                        "raffle {raffle} seq {seq}: tickets issued to order {order_id}, never reserved"
                    ));
                    continue;
                };
                order.issued += 1;
                if order.issued > 1 {
                    violations.push(format!(
                        "raffle {raffle} seq {seq}: order {order_id} issued a second time"
                    ));
                }
                for n in numbers {
                    match owner.get(n) {
                        Some((other, sold)) if other != order_id => violations.push(format!(
                            "raffle {raffle} seq {seq}: number {n} issued to order {order_id} while {} by order {other}",
                            if *sold { "sold" } else { "held" }
                        )),
                        _ => {}
                    }
                    owner.insert(*n, (*order_id, true));
                }
                let old = std::mem::take(&mut order.numbers);
                free_held(&mut owner, *order_id, &old);
                let mut sorted = numbers.clone();
                sorted.sort_unstable();
                order.numbers = sorted;
                end_hold(order, *at);
                order.status = "paid";
            }
            RaffleEvent::RefundRequired { order_id, at, .. } => {
                if let Some(order) = orders.get_mut(order_id) {
                    if matches!(order.status, "reserved" | "expired" | "released") {
                        free_held(&mut owner, *order_id, &order.numbers);
                        end_hold(order, *at);
                        order.status = "refund_required";
                    }
                }
            }
            RaffleEvent::OrderRefunded {
                order_id,
                returned_to_pool,
                ..
            } => {
                if let Some(order) = orders.get_mut(order_id) {
                    if *returned_to_pool {
                        for n in &order.numbers {
                            if owner.get(n) == Some(&(*order_id, true)) {
                                owner.remove(n);
                            }
                        }
                    }
                    order.status = "refunded";
                    order.refunded = true;
                }
            }
            RaffleEvent::RaffleCancelled { at, .. } => {
                for (id, order) in orders.iter_mut() {
                    match order.status {
                        "reserved" => {
                            free_held(&mut owner, *id, &order.numbers);
                            end_hold(order, *at);
                            order.status = "released";
                        }
                        "paid" => order.status = "refund_required",
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    orders
}

fn end_hold(order: &mut FoldedOrder, at: DateTime<Utc>) {
    if order.status == "reserved" && order.hold_ended.is_none() {
        order.hold_ended = Some(at);
    }
}

/// Where in which stream: (raffle, index).
type At = (Uuid, usize);

/// A `TicketsReserved`'s numbers (sorted) and the request that wrote it.
type Reserved<'a> = (Vec<u32>, &'a str);

/// What the log holds for each acknowledged command to be found in it, by raffle and order.
struct CommandIndex<'a> {
    /// (raffle, Create/Open/Close/Draw) of the lifecycle events present.
    lifecycle: BTreeSet<(Uuid, Kind)>,
    /// Each `TicketsReserved`: its numbers (sorted) and the request that wrote it.
    reserved: HashMap<(Uuid, Uuid), Vec<Reserved<'a>>>,
    released: BTreeSet<(Uuid, Uuid)>,
    /// Orders issued, or refund-required without a provider payment (a manual payment).
    settled_by_hand: BTreeSet<(Uuid, Uuid)>,
}

impl<'a> CommandIndex<'a> {
    fn new(observed: &'a Observed) -> Self {
        let mut index = Self {
            lifecycle: BTreeSet::new(),
            reserved: HashMap::new(),
            released: BTreeSet::new(),
            settled_by_hand: BTreeSet::new(),
        };
        for (raffle, stream) in &observed.streams {
            let raffle = *raffle;
            for logged in stream {
                match &logged.event {
                    RaffleEvent::RaffleCreated { .. } => {
                        index.lifecycle.insert((raffle, Kind::Create));
                    }
                    RaffleEvent::SalesOpened { .. } => {
                        index.lifecycle.insert((raffle, Kind::Open));
                    }
                    RaffleEvent::SalesClosed { .. } => {
                        index.lifecycle.insert((raffle, Kind::Close));
                    }
                    RaffleEvent::WinnersDrawn { .. } => {
                        index.lifecycle.insert((raffle, Kind::Draw));
                    }
                    RaffleEvent::TicketsReserved {
                        order_id, numbers, ..
                    } => {
                        let mut numbers = numbers.clone();
                        numbers.sort_unstable();
                        index
                            .reserved
                            .entry((raffle, *order_id))
                            .or_default()
                            .push((numbers, logged.request_id.as_str()));
                    }
                    RaffleEvent::ReservationReleased { order_id, .. } => {
                        index.released.insert((raffle, *order_id));
                    }
                    RaffleEvent::TicketsIssued { order_id, .. }
                    | RaffleEvent::RefundRequired {
                        order_id,
                        payment_id: None,
                        ..
                    } => {
                        index.settled_by_hand.insert((raffle, *order_id));
                    }
                    _ => {}
                }
            }
        }
        index
    }
}

fn check_commands(
    record: &Record,
    observed: &Observed,
    folds: &BTreeMap<Uuid, BTreeMap<Uuid, FoldedOrder>>,
    violations: &mut Vec<String>,
) {
    let mut by_request: HashMap<&str, Vec<At>> = HashMap::new();
    let mut by_key: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for (raffle, stream) in &observed.streams {
        for (i, logged) in stream.iter().enumerate() {
            by_request
                .entry(logged.request_id.as_str())
                .or_default()
                .push((*raffle, i));
            if let Some(key) = &logged.idempotency_key {
                by_key
                    .entry(key.as_str())
                    .or_default()
                    .insert(logged.request_id.as_str());
            }
        }
    }
    for (key, requests) in &by_key {
        if requests.len() > 1 {
            violations.push(format!(
                "Idempotency-Key {key}: applied by {} requests ({requests:?})",
                requests.len()
            ));
        }
    }
    // The requests that may have applied an operation: its own attempts, and every request
    // sent with its Idempotency-Key (a later replay answers what an earlier one applied).
    let mut op_requests: HashMap<u64, BTreeSet<&str>> = HashMap::new();
    let mut key_requests: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for a in &record.attempts {
        op_requests
            .entry(a.op)
            .or_default()
            .insert(a.request_id.as_str());
        if let Some(key) = &a.idempotency_key {
            key_requests
                .entry(key.as_str())
                .or_default()
                .insert(a.request_id.as_str());
        }
    }
    // Each stream read once: a long soak acknowledges hundreds of thousands of commands, and
    // scanning a raffle's stream for each of them took hours.
    let index = CommandIndex::new(observed);
    for a in &record.attempts {
        if a.kind.is_delivery() {
            continue;
        }
        let what = format!(
            "{:?} (op {}, request {}, node {}, status {:?})",
            a.kind, a.op, a.request_id, a.node, a.status
        );
        match a.outcome {
            Outcome::Refused => {
                if let Some(found) = by_request.get(a.request_id.as_str()) {
                    let (raffle, i) = found[0];
                    violations.push(format!(
                        "refused {what} has {} event(s) in the log, first {} at raffle {raffle} seq {}",
                        found.len(),
                        observed.streams[&raffle][i].event.name(),
                        observed.streams[&raffle][i].sequence
                    ));
                }
            }
            Outcome::Unknown => {}
            Outcome::Ok => {
                let Some(raffle) = a.raffle else {
                    violations.push(format!("acknowledged {what} names no raffle"));
                    continue;
                };
                let order = a.order.unwrap_or_default();
                let found = match a.kind {
                    Kind::Create | Kind::Open | Kind::Close | Kind::Draw => {
                        index.lifecycle.contains(&(raffle, a.kind))
                    }
                    Kind::Reserve => {
                        let mut requests = op_requests[&a.op].clone();
                        if let Some(key) = &a.idempotency_key {
                            requests.extend(key_requests[key.as_str()].iter().copied());
                        }
                        let mut numbers = a.numbers.clone();
                        numbers.sort_unstable();
                        index.reserved.get(&(raffle, order)).is_some_and(|found| {
                            found
                                .iter()
                                .any(|(got, request)| *got == numbers && requests.contains(request))
                        })
                    }
                    Kind::Release => index.released.contains(&(raffle, order)),
                    Kind::ManualPayment => index.settled_by_hand.contains(&(raffle, order)),
                    Kind::Refund => folds
                        .get(&raffle)
                        .and_then(|o| o.get(&order))
                        .is_some_and(|o| o.refunded),
                    _ => unreachable!("deliveries are checked apart"),
                };
                if !found {
                    violations.push(format!(
                        "acknowledged {what} on raffle {raffle} order {order}: its events are not in the log"
                    ));
                }
            }
        }
    }
}

fn check_payments(
    record: &Record,
    observed: &Observed,
    folds: &BTreeMap<Uuid, BTreeMap<Uuid, FoldedOrder>>,
    violations: &mut Vec<String>,
) {
    let mut recorded: HashMap<&str, Vec<At>> = HashMap::new();
    let mut failures: HashMap<&str, usize> = HashMap::new();
    for (raffle, stream) in &observed.streams {
        for (i, logged) in stream.iter().enumerate() {
            match &logged.event {
                RaffleEvent::PaymentRecorded { payment, .. } => recorded
                    .entry(payment.payment_id.as_str())
                    .or_default()
                    .push((*raffle, i)),
                RaffleEvent::PaymentFailed {
                    provider_event_id, ..
                } => *failures.entry(provider_event_id.as_str()).or_default() += 1,
                _ => {}
            }
        }
    }
    for (payment, at) in &recorded {
        if at.len() > 1 {
            violations.push(format!("payment {payment} recorded {} times", at.len()));
        }
    }
    for (event, count) in &failures {
        if *count > 1 {
            violations.push(format!("failure delivery {event} recorded {count} times"));
        }
    }
    // Deliveries by event id: their kind, and whether any attempt may have stored them.
    let mut deliveries: BTreeMap<&str, (Kind, bool, bool)> = BTreeMap::new();
    for a in record.attempts.iter().filter(|a| a.kind.is_delivery()) {
        let Some(event) = a.event_id.as_deref() else {
            continue;
        };
        let entry = deliveries.entry(event).or_insert((a.kind, false, false));
        entry.1 |= a.outcome == Outcome::Ok;
        entry.2 |= a.outcome != Outcome::Refused;
    }
    for (event, (kind, acknowledged, maybe_stored)) in &deliveries {
        let row = observed.inbox.get(*event);
        if *acknowledged && row.is_none() {
            violations.push(format!(
                "delivery {event} ({kind:?}) was acknowledged but is not in the inbox"
            ));
        }
        if !maybe_stored && row.is_some() {
            violations.push(format!(
                "delivery {event} ({kind:?}) was refused every time but is in the inbox"
            ));
        }
        if let Some(row) = row {
            if row.status == "rejected" && *kind != Kind::StripeProcessing {
                violations.push(format!(
                    "delivery {event} ({kind:?}) was rejected ({:?}); the harness sends it only for an order that can take it",
                    row.last_error
                ));
            }
        }
    }
    for (event, row) in &observed.inbox {
        if !matches!(row.status.as_str(), "done" | "ignored" | "rejected") {
            violations.push(format!(
                "delivery {event} left unapplied: status {}, last error {:?}",
                row.status, row.last_error
            ));
        }
    }
    let mut checked = BTreeSet::new();
    for a in &record.attempts {
        if a.outcome != Outcome::Ok {
            continue;
        }
        let (Some(raffle), Some(order)) = (a.raffle, a.order) else {
            continue;
        };
        match a.kind {
            Kind::StripeSucceeded => {
                let Some(payment) = a.payment_id.as_deref() else {
                    continue;
                };
                if !checked.insert(payment) {
                    continue;
                }
                let Some(at) = recorded.get(payment) else {
                    violations.push(format!(
                        "acknowledged payment {payment} for order {order} was never recorded"
                    ));
                    continue;
                };
                let (in_raffle, i) = at[0];
                let stream = &observed.streams[&in_raffle];
                let next = stream.get(i + 1).map(|l| &l.event);
                let settled = match next {
                    Some(RaffleEvent::TicketsIssued { order_id, .. }) => *order_id == order,
                    Some(RaffleEvent::RefundRequired { payment_id, .. }) => {
                        payment_id.as_deref() == Some(payment)
                    }
                    _ => false,
                };
                if in_raffle != raffle || !settled {
                    violations.push(format!(
                        "acknowledged payment {payment} for order {order}: recorded at raffle {in_raffle} seq {} followed by {:?}, neither its tickets issued nor a refund required",
                        stream[i].sequence,
                        next.map(|e| e.name())
                    ));
                }
            }
            Kind::StripeFailed => {
                let event = a.event_id.as_deref().unwrap_or_default();
                if failures.get(event).copied().unwrap_or(0) != 1 && checked.insert(event) {
                    violations.push(format!(
                        "acknowledged failure delivery {event} for order {order} is recorded {} times, not once",
                        failures.get(event).copied().unwrap_or(0)
                    ));
                }
            }
            Kind::StripeRefunded => {
                let refunded = folds
                    .get(&raffle)
                    .and_then(|o| o.get(&order))
                    .is_some_and(|o| o.refunded);
                if !refunded && checked.insert(a.event_id.as_deref().unwrap_or_default()) {
                    violations.push(format!(
                        "acknowledged refund delivery {:?} of paid order {order}: the order was never refunded",
                        a.event_id
                    ));
                }
            }
            _ => {}
        }
    }
}

/// A hold may outlive its expiry by `hold_grace`, plus the time faults overlapped that span
/// (a node stopped or paused, PostgreSQL restarting: nobody can record the expiry then).
fn check_holds(
    record: &Record,
    observed: &Observed,
    folds: &BTreeMap<Uuid, BTreeMap<Uuid, FoldedOrder>>,
    bounds: &Bounds,
    violations: &mut Vec<String>,
) {
    let ms = |t: i64| Utc.timestamp_millis_opt(t).single().unwrap_or_default();
    let stalls: Vec<(DateTime<Utc>, DateTime<Utc>)> = record
        .faults
        .iter()
        .map(|f| (ms(f.start_ms), ms(f.end_ms)))
        .collect();
    for (raffle, orders) in folds {
        for (id, order) in orders {
            let ended = match (order.hold_ended, order.status) {
                (Some(ended), _) => ended,
                (None, "reserved") => observed.observed_at,
                (None, _) => continue,
            };
            if ended <= order.expires_at {
                continue;
            }
            let stalled: Duration = stalls
                .iter()
                .map(|(start, end)| {
                    let from = (*start).max(order.expires_at);
                    let to = (*end).min(ended);
                    (to - from).max(Duration::zero())
                })
                .sum();
            let late = ended - order.expires_at;
            if late > bounds.hold_grace + stalled {
                violations.push(format!(
                    "raffle {raffle}: the hold of order {id} expired at {} and {} at {ended}: {:.1} s late, more than {} s + {:.1} s of faults",
                    order.expires_at,
                    if order.hold_ended.is_some() { "ended" } else { "was still live" },
                    late.num_milliseconds() as f64 / 1000.0,
                    bounds.hold_grace.num_seconds(),
                    stalled.num_milliseconds() as f64 / 1000.0,
                ));
            }
        }
    }
}

fn check_read_models(
    observed: &Observed,
    folds: &BTreeMap<Uuid, BTreeMap<Uuid, FoldedOrder>>,
    violations: &mut Vec<String>,
) {
    for (raffle, stream) in &observed.streams {
        let head = stream.last().map_or(0, |l| l.sequence);
        for projection in &observed.projections {
            let at = observed
                .checkpoints
                .get(&(*raffle, projection.clone()))
                .copied()
                .unwrap_or(0);
            if at != head {
                violations.push(format!(
                    "raffle {raffle}: projection {projection} at {at}, the stream's head is {head}"
                ));
            }
        }
        let folded = &folds[raffle];
        let empty = BTreeMap::new();
        let read = observed.read_orders.get(raffle).unwrap_or(&empty);
        for (id, order) in folded {
            let expected = (order.status.to_owned(), order.numbers.clone());
            match read.get(id) {
                Some(got) if *got == expected => {}
                got => violations.push(format!(
                    "raffle {raffle}: read model orders has order {id} as {got:?}, the log folds to {expected:?}"
                )),
            }
        }
        for id in read.keys().filter(|id| !folded.contains_key(id)) {
            violations.push(format!(
                "raffle {raffle}: read model orders has order {id}, which the log never reserved"
            ));
        }
        let mut expected: BTreeMap<u32, (Uuid, String)> = BTreeMap::new();
        for (id, order) in folded {
            let status = match order.status {
                "reserved" => "held",
                "paid" => "sold",
                _ => continue,
            };
            for n in &order.numbers {
                expected.insert(*n, (*id, status.to_owned()));
            }
        }
        let empty = BTreeMap::new();
        let read = observed.read_tickets.get(raffle).unwrap_or(&empty);
        if *read != expected {
            let wrong: Vec<_> = expected
                .iter()
                .filter(|(n, e)| read.get(n) != Some(e))
                .map(|(n, _)| *n)
                .chain(read.keys().filter(|n| !expected.contains_key(n)).copied())
                .take(10)
                .collect();
            violations.push(format!(
                "raffle {raffle}: read model tickets differs from the log's fold at numbers {wrong:?}"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    //! The checker fed doctored logs and records: each promise broken once, and seen.

    use super::*;
    use crate::chaos::record::{Attempt, Fault};
    use tombola_domain::{Buyer, Currency, ExpiredHold, Payment};

    const RAFFLE: Uuid = Uuid::from_u128(1);
    const A: Uuid = Uuid::from_u128(10);
    const B: Uuid = Uuid::from_u128(11);

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    fn reserved(order: Uuid, numbers: &[u32], at: i64) -> RaffleEvent {
        RaffleEvent::TicketsReserved {
            order_id: order,
            buyer: Buyer::parse("Ana", "ana@example.com", None).unwrap(),
            numbers: numbers.to_vec(),
            amount_minor: 500 * numbers.len() as i64,
            currency: usd(),
            at: t(at),
            expires_at: t(at + 60),
        }
    }

    fn usd() -> Currency {
        Currency::parse("USD").unwrap()
    }

    fn issued(order: Uuid, numbers: &[u32], at: i64) -> RaffleEvent {
        RaffleEvent::TicketsIssued {
            order_id: order,
            numbers: numbers.to_vec(),
            late: false,
            replaced_numbers: vec![],
            at: t(at),
        }
    }

    fn recorded(order: Uuid, payment: &str) -> RaffleEvent {
        RaffleEvent::PaymentRecorded {
            order_id: order,
            payment: Payment {
                provider: "stripe".into(),
                payment_id: payment.into(),
                provider_event_id: format!("evt_{payment}"),
                amount_minor: 500,
                currency: usd(),
                method: "card".into(),
            },
            at: t(5),
        }
    }

    /// A log of `events` (request ids `r1`, `r2`, …) with read models and checkpoints that
    /// agree with it, observed at t(30).
    fn observed(events: Vec<RaffleEvent>) -> Observed {
        let stream: Vec<Logged> = events
            .into_iter()
            .enumerate()
            .map(|(i, event)| Logged {
                sequence: i as u64 + 1,
                event,
                request_id: format!("r{}", i + 1),
                idempotency_key: None,
            })
            .collect();
        let mut observed = Observed {
            observed_at: t(30),
            projections: vec!["orders".into()],
            ..Observed::default()
        };
        observed
            .checkpoints
            .insert((RAFFLE, "orders".into()), stream.len() as u64);
        let folds = fold_stream(RAFFLE, &stream, &mut Vec::new());
        let mut orders = BTreeMap::new();
        let mut tickets = BTreeMap::new();
        for (id, o) in &folds {
            orders.insert(*id, (o.status.to_owned(), o.numbers.clone()));
            let status = match o.status {
                "reserved" => "held",
                "paid" => "sold",
                _ => continue,
            };
            for n in &o.numbers {
                tickets.insert(*n, (*id, status.to_owned()));
            }
        }
        observed.read_orders.insert(RAFFLE, orders);
        observed.read_tickets.insert(RAFFLE, tickets);
        observed.streams.insert(RAFFLE, stream);
        observed
    }

    fn attempt(kind: Kind, request: &str, outcome: Outcome) -> Attempt {
        Attempt {
            op: request.len() as u64 + request.bytes().map(u64::from).sum::<u64>(),
            kind,
            node: 0,
            raffle: Some(RAFFLE),
            order: Some(A),
            numbers: vec![],
            request_id: request.into(),
            idempotency_key: None,
            status: Some(200),
            problem: None,
            outcome,
            at_ms: 0,
            event_id: None,
            payment_id: None,
            disconnected: false,
        }
    }

    fn bounds() -> Bounds {
        Bounds {
            hold_grace: Duration::seconds(10),
        }
    }

    fn violations(record: &Record, observed: &Observed) -> Vec<String> {
        check(record, observed, &bounds())
    }

    fn assert_one(found: Vec<String>, needle: &str) {
        assert!(
            found.iter().any(|v| v.contains(needle)),
            "expected a violation containing {needle:?}, got {found:#?}"
        );
    }

    fn paid_history() -> Vec<RaffleEvent> {
        vec![
            reserved(A, &[1, 2], 0),
            recorded(A, "pi_1"),
            issued(A, &[1, 2], 5),
        ]
    }

    #[test]
    fn a_history_that_keeps_every_promise_passes() {
        let mut reserve = attempt(Kind::Reserve, "r1", Outcome::Ok);
        reserve.numbers = vec![2, 1];
        let mut pay = attempt(Kind::StripeSucceeded, "d1", Outcome::Ok);
        pay.event_id = Some("evt_1".into());
        pay.payment_id = Some("pi_1".into());
        let record = Record {
            attempts: vec![reserve, pay],
            ..Record::default()
        };
        let mut observed = observed(paid_history());
        observed.inbox.insert(
            "evt_1".into(),
            InboxRow {
                status: "done".into(),
                outcome: Some("tickets_issued".into()),
                last_error: None,
            },
        );
        assert_eq!(violations(&record, &observed), Vec::<String>::new());
    }

    #[test]
    fn a_number_issued_to_two_orders_is_caught() {
        let mut events = paid_history();
        events.push(reserved(B, &[3], 6));
        events.push(issued(B, &[2, 3], 7));
        assert_one(
            violations(&Record::default(), &observed(events)),
            "number 2 issued to order 00000000-0000-0000-0000-00000000000b while sold",
        );
    }

    #[test]
    fn a_number_reserved_while_held_is_caught() {
        let events = vec![reserved(A, &[1], 0), reserved(B, &[1], 1)];
        assert_one(
            violations(&Record::default(), &observed(events)),
            "number 1 reserved for order 00000000-0000-0000-0000-00000000000b while held",
        );
    }

    #[test]
    fn an_order_issued_twice_is_caught() {
        let mut events = paid_history();
        events.push(issued(A, &[1, 2], 8));
        assert_one(
            violations(&Record::default(), &observed(events)),
            "issued a second time",
        );
    }

    #[test]
    fn an_acknowledged_command_missing_from_the_log_is_caught() {
        let mut release = attempt(Kind::Release, "r9", Outcome::Ok);
        release.order = Some(A);
        let record = Record {
            attempts: vec![release],
            ..Record::default()
        };
        assert_one(
            violations(&record, &observed(vec![reserved(A, &[1], 0)])),
            "acknowledged Release",
        );
    }

    #[test]
    fn a_reservation_answered_with_other_numbers_is_caught() {
        let mut reserve = attempt(Kind::Reserve, "r1", Outcome::Ok);
        reserve.numbers = vec![1, 3];
        let record = Record {
            attempts: vec![reserve],
            ..Record::default()
        };
        assert_one(
            violations(&record, &observed(vec![reserved(A, &[1, 2], 0)])),
            "acknowledged Reserve",
        );
    }

    #[test]
    fn a_refused_command_with_events_is_caught() {
        let record = Record {
            attempts: vec![attempt(Kind::Reserve, "r1", Outcome::Refused)],
            ..Record::default()
        };
        assert_one(
            violations(&record, &observed(vec![reserved(A, &[1], 0)])),
            "refused Reserve",
        );
    }

    #[test]
    fn an_idempotency_key_applied_twice_is_caught() {
        let mut observed = observed(vec![reserved(A, &[1], 0), reserved(B, &[2], 1)]);
        for logged in observed.streams.get_mut(&RAFFLE).unwrap() {
            logged.idempotency_key = Some("k1".into());
        }
        assert_one(
            violations(&Record::default(), &observed),
            "Idempotency-Key k1: applied by 2 requests",
        );
    }

    #[test]
    fn acknowledged_payments_lost_or_doubled_are_caught() {
        let mut pay = attempt(Kind::StripeSucceeded, "d1", Outcome::Ok);
        pay.event_id = Some("evt_2".into());
        pay.payment_id = Some("pi_2".into());
        let record = Record {
            attempts: vec![pay],
            ..Record::default()
        };
        let lost = violations(&record, &observed(vec![reserved(A, &[1], 0)]));
        assert_one(lost.clone(), "acknowledged payment pi_2 for order");
        assert_one(lost, "was acknowledged but is not in the inbox");

        let doubled = vec![
            reserved(A, &[1], 0),
            recorded(A, "pi_2"),
            issued(A, &[1], 5),
            recorded(A, "pi_2"),
        ];
        assert_one(
            violations(&record, &observed(doubled)),
            "payment pi_2 recorded 2 times",
        );

        let neither = vec![reserved(A, &[1], 0), recorded(A, "pi_2")];
        assert_one(
            violations(&record, &observed(neither)),
            "neither its tickets issued nor a refund required",
        );
    }

    #[test]
    fn a_delivery_left_pending_or_wrongly_rejected_is_caught() {
        let mut observed = observed(paid_history());
        observed.inbox.insert(
            "evt_p".into(),
            InboxRow {
                status: "pending".into(),
                outcome: None,
                last_error: Some("unavailable".into()),
            },
        );
        observed.inbox.insert(
            "evt_r".into(),
            InboxRow {
                status: "rejected".into(),
                outcome: None,
                last_error: Some("order_not_found".into()),
            },
        );
        let mut failed = attempt(Kind::StripeFailed, "d1", Outcome::Ok);
        failed.event_id = Some("evt_r".into());
        let record = Record {
            attempts: vec![failed],
            ..Record::default()
        };
        let found = violations(&record, &observed);
        assert_one(found.clone(), "delivery evt_p left unapplied");
        assert_one(found.clone(), "delivery evt_r (StripeFailed) was rejected");
        assert_one(found, "acknowledged failure delivery evt_r for order");
    }

    #[test]
    fn a_hold_that_outlives_its_expiry_is_caught_unless_faults_explain_it() {
        // Reserved at 0, due at 60, expired at 75: 15 s late with 10 s of grace.
        let events = vec![
            reserved(A, &[1], 0),
            RaffleEvent::HoldsExpired {
                holds: vec![ExpiredHold {
                    order_id: A,
                    numbers: vec![1],
                }],
                at: t(75),
            },
        ];
        let mut observed = observed(events);
        observed.observed_at = t(100);
        assert_one(
            violations(&Record::default(), &observed),
            "15.0 s late, more than 10 s + 0.0 s of faults",
        );
        let paused = Record {
            faults: vec![Fault {
                kind: "pause".into(),
                node: Some(0),
                start_ms: t(58).timestamp_millis(),
                end_ms: t(66).timestamp_millis(),
            }],
            ..Record::default()
        };
        assert_eq!(violations(&paused, &observed), Vec::<String>::new());

        // Never expired at all, observed at 100.
        let live = self::observed(vec![reserved(A, &[1], 0)]);
        let mut live = live;
        live.observed_at = t(100);
        assert_one(violations(&Record::default(), &live), "was still live");
    }

    #[test]
    fn read_models_that_differ_from_the_fold_are_caught() {
        let mut observed = observed(paid_history());
        observed
            .read_orders
            .get_mut(&RAFFLE)
            .unwrap()
            .insert(A, ("reserved".into(), vec![1, 2]));
        observed.read_tickets.get_mut(&RAFFLE).unwrap().remove(&2);
        observed.checkpoints.insert((RAFFLE, "orders".into()), 2);
        let found = violations(&Record::default(), &observed);
        assert_one(found.clone(), "read model orders has order");
        assert_one(
            found.clone(),
            "read model tickets differs from the log's fold at numbers [2]",
        );
        assert_one(found, "projection orders at 2, the stream's head is 3");
    }

    #[test]
    fn nodes_that_did_not_settle_are_reported() {
        let mut observed = observed(paid_history());
        observed.unsettled = Some("1 deliveries pending".into());
        assert_one(
            violations(&Record::default(), &observed),
            "the running nodes did not settle: 1 deliveries pending",
        );
    }

    #[test]
    fn a_broken_chain_and_a_client_violation_are_reported() {
        let mut observed = observed(paid_history());
        observed
            .broken_chains
            .push((RAFFLE, "hash mismatch at 2".into()));
        observed
            .unverified_draws
            .push((RAFFLE, "winners differ".into()));
        let record = Record {
            client_violations: vec!["replay answered another order".into()],
            ..Record::default()
        };
        let found = violations(&record, &observed);
        assert_one(
            found.clone(),
            "hash chain does not verify: hash mismatch at 2",
        );
        assert_one(
            found.clone(),
            "the draw does not recompute from the log: winners differ",
        );
        assert_one(found, "client: replay answered another order");
    }
}
