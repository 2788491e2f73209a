//! `audit_index`: order id, ticket number, payment id and actor → the events that touched
//! them (raffle, sequence, type, time). The audit trail's queries look keys up here, then
//! read those events from the log.
//!
//! Version 4 (decision 0029): one narrow row per event (`read_audit_events`: sequence, type,
//! time, actor) and one narrow row per key, in a table per kind, typed (`integer` ticket
//! numbers, `uuid` order ids), carrying only (raffle, key, sequence): the type and time are
//! the event's, joined by sequence. Version 3 kept one wide text row per key *and* an
//! `actor` row per event (about 5.5 rows of ~110 bytes per event); its insert cost was most
//! of a live batch and of a rebuild.

use sqlx::PgConnection;
use tombola_domain::RaffleEvent;
use uuid::Uuid;

use crate::envelope::Envelope;
use crate::projection::{ApplyError, Batch, BoxFuture, Projection, Tables};

/// One row per event: `(raffle_id, sequence)`, its type, time and actor.
pub const EVENTS: &str = "read_audit_events";
/// `(raffle_id, number, sequence)`: the events that touched a ticket number.
pub const TICKETS: &str = "read_audit_tickets";
/// `(raffle_id, order_id, sequence)`: the events that touched an order.
pub const ORDERS: &str = "read_audit_orders";
/// `(raffle_id, payment_id, sequence)`: the events that named a payment.
pub const PAYMENTS: &str = "read_audit_payments";
const CHUNK: usize = 50_000;

pub struct AuditIndex;

/// One index entry, as the trail sees it: `kind` is `order`, `ticket`, `payment` or
/// `actor`. What the tables hold, spelled out one key per entry (the tests' oracle).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub kind: &'static str,
    pub key: String,
    pub sequence: i64,
    pub event_type: &'static str,
}

impl Projection for AuditIndex {
    fn name(&self) -> &'static str {
        "audit_index"
    }

    /// 2: the winning numbers of `WinnersDrawn` are indexed under their tickets.
    /// 3: `kind` and `key` compare bytewise (`COLLATE "C"`: the keys are identifiers and
    /// numbers that nobody sorts alphabetically), and one index instead of two (decision 0026).
    /// 4: a narrow row per event and per typed key, a table per kind (decision 0029).
    fn version(&self) -> u32 {
        4
    }

    fn tables(&self) -> &'static [&'static str] {
        &[EVENTS, TICKETS, ORDERS, PAYMENTS]
    }

    fn schema(&self, tables: Tables) -> String {
        let (events, tickets, orders, payments) = (
            tables.name(EVENTS),
            tables.name(TICKETS),
            tables.name(ORDERS),
            tables.name(PAYMENTS),
        );
        format!(
            "CREATE TABLE {events} ( \
               raffle_id uuid NOT NULL, sequence bigint NOT NULL, event_type text NOT NULL, \
               recorded_at timestamptz NOT NULL, actor text COLLATE \"C\" NOT NULL); \
             CREATE TABLE {tickets} ( \
               raffle_id uuid NOT NULL, number integer NOT NULL, sequence bigint NOT NULL); \
             CREATE TABLE {orders} ( \
               raffle_id uuid NOT NULL, order_id uuid NOT NULL, sequence bigint NOT NULL); \
             CREATE TABLE {payments} ( \
               raffle_id uuid NOT NULL, payment_id text COLLATE \"C\" NOT NULL, \
               sequence bigint NOT NULL);"
        )
    }

    /// Every key and index waits for a rebuild's end: `apply` only inserts (the runtime
    /// applies each event once, so no key can repeat) and never reads them. Each key table's
    /// primary key ends with the sequence, so a key's events come in order from one index
    /// range; the actor index serves the trail by actor.
    fn indexes(&self, tables: Tables) -> String {
        let (events, tickets, orders, payments) = (
            tables.name(EVENTS),
            tables.name(TICKETS),
            tables.name(ORDERS),
            tables.name(PAYMENTS),
        );
        format!(
            "ALTER TABLE {events} ADD PRIMARY KEY (raffle_id, sequence); \
             CREATE INDEX ON {events} (raffle_id, actor, sequence); \
             ALTER TABLE {tickets} ADD PRIMARY KEY (raffle_id, number, sequence); \
             ALTER TABLE {orders} ADD PRIMARY KEY (raffle_id, order_id, sequence); \
             ALTER TABLE {payments} ADD PRIMARY KEY (raffle_id, payment_id, sequence);"
        )
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        batch: Batch<'a>,
    ) -> BoxFuture<'a, Result<(), ApplyError>> {
        Box::pin(apply(conn, batch))
    }
}

/// The keys one event is indexed under, by kind, each once.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Keys {
    pub tickets: Vec<u32>,
    pub orders: Vec<Uuid>,
    pub payments: Vec<String>,
}

/// The ticket numbers, orders and payments `event` touched.
pub fn keys(event: &RaffleEvent) -> Keys {
    let mut k = Keys::default();
    k.orders.extend(event.order_id());
    match event {
        RaffleEvent::TicketsReserved { numbers, .. }
        | RaffleEvent::ReservationReleased { numbers, .. }
        | RaffleEvent::TicketsIssued { numbers, .. }
        | RaffleEvent::OrderRefunded { numbers, .. } => k.tickets.extend_from_slice(numbers),
        RaffleEvent::HoldsExpired { holds, .. } => {
            for hold in holds {
                k.orders.push(hold.order_id);
                k.tickets.extend_from_slice(&hold.numbers);
            }
        }
        RaffleEvent::PaymentRecorded { payment, .. } => k.payments.push(payment.payment_id.clone()),
        RaffleEvent::PaymentFlagged { payment_id, .. }
        | RaffleEvent::PaymentFailed { payment_id, .. } => k.payments.push(payment_id.clone()),
        RaffleEvent::RefundRequired {
            payment_id: Some(payment_id),
            ..
        } => k.payments.push(payment_id.clone()),
        RaffleEvent::ManualPaymentConfirmed { reference, .. } => k.payments.push(reference.clone()),
        // A ticket's history ends with its prize, if it won one.
        RaffleEvent::WinnersDrawn { winners, .. } => {
            k.tickets.extend(winners.iter().map(|w| w.number))
        }
        _ => {}
    }
    k.tickets.sort_unstable();
    k.tickets.dedup();
    k.orders.sort_unstable();
    k.orders.dedup();
    k.payments.sort_unstable();
    k.payments.dedup();
    k
}

/// The keys one event is indexed under, one entry each, its actor included.
pub fn entries(envelope: &Envelope) -> Vec<Entry> {
    let k = keys(&envelope.event);
    let (sequence, event_type) = (envelope.sequence as i64, envelope.event.name());
    let entry = |kind: &'static str, key: String| Entry {
        kind,
        key,
        sequence,
        event_type,
    };
    let mut out = vec![entry("actor", envelope.actor.clone())];
    out.extend(k.orders.iter().map(|o| entry("order", o.to_string())));
    out.extend(k.tickets.iter().map(|n| entry("ticket", n.to_string())));
    out.extend(k.payments.into_iter().map(|p| entry("payment", p)));
    out.sort_unstable();
    out
}

/// Writes the batch's rows with one multi-row `INSERT … SELECT FROM UNNEST` per table (and
/// chunk). Not `COPY`: sqlx 0.8.6 does not track a COPY's replies, so a COPY whose future is
/// dropped half-way returns its connection to the pool out of step with the server
/// (decision 0026).
async fn apply(conn: &mut PgConnection, batch: Batch<'_>) -> Result<(), ApplyError> {
    let raffle_id = batch.raffle_id;
    let mut sequences: Vec<i64> = Vec::with_capacity(batch.events.len());
    let mut types: Vec<&'static str> = Vec::with_capacity(batch.events.len());
    let mut times = Vec::with_capacity(batch.events.len());
    let mut actors: Vec<&str> = Vec::with_capacity(batch.events.len());
    let (mut tickets, mut ticket_seqs): (Vec<i32>, Vec<i64>) = Default::default();
    let (mut orders, mut order_seqs): (Vec<Uuid>, Vec<i64>) = Default::default();
    let (mut payments, mut payment_seqs): (Vec<String>, Vec<i64>) = Default::default();
    for envelope in batch.events {
        let sequence = envelope.sequence as i64;
        sequences.push(sequence);
        types.push(envelope.event.name());
        times.push(envelope.recorded_at);
        actors.push(&envelope.actor);
        let k = keys(&envelope.event);
        ticket_seqs.extend(std::iter::repeat_n(sequence, k.tickets.len()));
        tickets.extend(k.tickets.iter().map(|&n| n as i32));
        order_seqs.extend(std::iter::repeat_n(sequence, k.orders.len()));
        orders.extend(k.orders);
        payment_seqs.extend(std::iter::repeat_n(sequence, k.payments.len()));
        payments.extend(k.payments);
    }
    let events = batch.tables.name(EVENTS);
    for (start, end) in chunks(sequences.len()) {
        sqlx::query(&format!(
            "INSERT INTO {events} (raffle_id, sequence, event_type, recorded_at, actor) \
             SELECT $1, a.* FROM UNNEST($2::bigint[], $3::text[], $4::timestamptz[], $5::text[]) \
               AS a(sequence, event_type, recorded_at, actor)"
        ))
        .bind(raffle_id)
        .bind(&sequences[start..end])
        .bind(&types[start..end])
        .bind(&times[start..end])
        .bind(&actors[start..end])
        .execute(&mut *conn)
        .await?;
    }
    let table = batch.tables.name(TICKETS);
    for (start, end) in chunks(tickets.len()) {
        sqlx::query(&format!(
            "INSERT INTO {table} (raffle_id, number, sequence) \
             SELECT $1, a.* FROM UNNEST($2::integer[], $3::bigint[]) AS a(number, sequence)"
        ))
        .bind(raffle_id)
        .bind(&tickets[start..end])
        .bind(&ticket_seqs[start..end])
        .execute(&mut *conn)
        .await?;
    }
    let table = batch.tables.name(ORDERS);
    for (start, end) in chunks(orders.len()) {
        sqlx::query(&format!(
            "INSERT INTO {table} (raffle_id, order_id, sequence) \
             SELECT $1, a.* FROM UNNEST($2::uuid[], $3::bigint[]) AS a(order_id, sequence)"
        ))
        .bind(raffle_id)
        .bind(&orders[start..end])
        .bind(&order_seqs[start..end])
        .execute(&mut *conn)
        .await?;
    }
    let table = batch.tables.name(PAYMENTS);
    for (start, end) in chunks(payments.len()) {
        sqlx::query(&format!(
            "INSERT INTO {table} (raffle_id, payment_id, sequence) \
             SELECT $1, a.* FROM UNNEST($2::text[], $3::bigint[]) AS a(payment_id, sequence)"
        ))
        .bind(raffle_id)
        .bind(&payments[start..end])
        .bind(&payment_seqs[start..end])
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// `[start, end)` ranges of at most [`CHUNK`] rows covering `len`.
fn chunks(len: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..len)
        .step_by(CHUNK)
        .map(move |start| (start, (start + CHUNK).min(len)))
}
