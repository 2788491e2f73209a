//! `audit_index`: order id, ticket number, payment id and actor → the events that touched
//! them (raffle, sequence, type, time). The audit trail's queries look keys up here, then
//! read those events from the log.

use sqlx::PgConnection;
use tombola_domain::RaffleEvent;

use crate::envelope::Envelope;
use crate::projection::{ApplyError, Batch, BoxFuture, Projection, Tables};

pub const TABLE: &str = "read_audit_index";
const CHUNK: usize = 50_000;

pub struct AuditIndex;

/// One index entry: `kind` is `order`, `ticket`, `payment` or `actor`.
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
    fn version(&self) -> u32 {
        3
    }

    fn tables(&self) -> &'static [&'static str] {
        &[TABLE]
    }

    fn schema(&self, tables: Tables) -> String {
        let t = tables.name(TABLE);
        format!(
            "CREATE TABLE {t} ( \
               raffle_id uuid NOT NULL, kind text COLLATE \"C\" NOT NULL, \
               key text COLLATE \"C\" NOT NULL, \
               sequence bigint NOT NULL, event_type text NOT NULL, \
               recorded_at timestamptz NOT NULL);"
        )
    }

    /// The primary key waits for a rebuild's end: it is written to, never read, by `apply`
    /// (the runtime applies each event once, so the key cannot repeat). It is also the only
    /// index the trail's queries use (each names its raffle): version 3 dropped the
    /// `(kind, key, recorded_at)` index, which no query read and which cost as much to
    /// build as the table took to fill (decision 0026).
    fn indexes(&self, tables: Tables) -> String {
        let t = tables.name(TABLE);
        format!("ALTER TABLE {t} ADD PRIMARY KEY (raffle_id, kind, key, sequence);")
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        batch: Batch<'a>,
    ) -> BoxFuture<'a, Result<(), ApplyError>> {
        Box::pin(apply(conn, batch))
    }
}

/// The keys one event is indexed under.
pub fn entries(envelope: &Envelope) -> Vec<Entry> {
    let event = &envelope.event;
    let mut out = Vec::new();
    let mut add = |kind: &'static str, key: String| {
        out.push(Entry {
            kind,
            key,
            sequence: envelope.sequence as i64,
            event_type: event.name(),
        })
    };
    add("actor", envelope.actor.clone());
    if let Some(order_id) = event.order_id() {
        add("order", order_id.to_string());
    }
    let numbers: &[u32] = match event {
        RaffleEvent::TicketsReserved { numbers, .. }
        | RaffleEvent::ReservationReleased { numbers, .. }
        | RaffleEvent::TicketsIssued { numbers, .. }
        | RaffleEvent::OrderRefunded { numbers, .. } => numbers,
        _ => &[],
    };
    for n in numbers {
        add("ticket", n.to_string());
    }
    match event {
        RaffleEvent::HoldsExpired { holds, .. } => {
            for hold in holds {
                add("order", hold.order_id.to_string());
                for n in &hold.numbers {
                    add("ticket", n.to_string());
                }
            }
        }
        RaffleEvent::PaymentRecorded { payment, .. } => add("payment", payment.payment_id.clone()),
        RaffleEvent::PaymentFlagged { payment_id, .. }
        | RaffleEvent::PaymentFailed { payment_id, .. } => add("payment", payment_id.clone()),
        RaffleEvent::RefundRequired {
            payment_id: Some(payment_id),
            ..
        } => add("payment", payment_id.clone()),
        RaffleEvent::ManualPaymentConfirmed { reference, .. } => add("payment", reference.clone()),
        // A ticket's history ends with its prize, if it won one.
        RaffleEvent::WinnersDrawn { winners, .. } => {
            for winner in winners {
                add("ticket", winner.number.to_string());
            }
        }
        _ => {}
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Writes the batch's entries with multi-row `INSERT … SELECT FROM UNNEST` statements. Not
/// `COPY`: sqlx 0.8.6 does not track a COPY's replies, so a COPY whose future is dropped
/// half-way (a runtime stopped, a task aborted) returns its connection to the pool out of
/// step with the server, and the next transaction on it fails to begin (decision 0026:
/// `a_crash_mid_batch_neither_skips_nor_applies_twice` caught it).
async fn apply(conn: &mut PgConnection, batch: Batch<'_>) -> Result<(), ApplyError> {
    let table = batch.tables.name(TABLE);
    let mut rows: Vec<(Entry, chrono::DateTime<chrono::Utc>)> = Vec::new();
    for envelope in batch.events {
        rows.extend(
            entries(envelope)
                .into_iter()
                .map(|e| (e, envelope.recorded_at)),
        );
    }
    for chunk in rows.chunks(CHUNK) {
        sqlx::query(&format!(
            "INSERT INTO {table} (raffle_id, kind, key, sequence, event_type, recorded_at) \
             SELECT $1, a.* FROM UNNEST($2::text[], $3::text[], $4::bigint[], $5::text[], \
                                        $6::timestamptz[]) \
               AS a(kind, key, sequence, event_type, recorded_at)"
        ))
        .bind(batch.raffle_id)
        .bind(chunk.iter().map(|(e, _)| e.kind).collect::<Vec<_>>())
        .bind(chunk.iter().map(|(e, _)| e.key.clone()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|(e, _)| e.sequence).collect::<Vec<_>>())
        .bind(chunk.iter().map(|(e, _)| e.event_type).collect::<Vec<_>>())
        .bind(chunk.iter().map(|(_, at)| *at).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
