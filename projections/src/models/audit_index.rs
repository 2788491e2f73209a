//! `audit_index`: order id, ticket number, payment id and actor → the events that touched
//! them (raffle, sequence, type, time). The audit trail's queries look keys up here, then
//! read those events from the log.

use sqlx::PgConnection;
use tombola_domain::RaffleEvent;

use crate::envelope::Envelope;
use crate::projection::{ApplyError, Batch, BoxFuture, Projection, Tables};

pub const TABLE: &str = "read_audit_index";

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

/// Writes the batch's entries with one `COPY … FROM STDIN` (text format): several rows per
/// event make this the largest model by rows, and COPY is PostgreSQL's cheapest way in for
/// rows that only ever get inserted (measured in decision 0026).
async fn apply(conn: &mut PgConnection, batch: Batch<'_>) -> Result<(), ApplyError> {
    use std::io::Write as _;
    let table = batch.tables.name(TABLE);
    let raffle_id = batch.raffle_id.to_string();
    let mut rows: Vec<u8> = Vec::with_capacity(batch.events.len() * 6 * 96);
    for envelope in batch.events {
        // Microseconds, with the offset: what PostgreSQL stores, read without guessing a zone.
        let at = envelope.recorded_at.format("%Y-%m-%d %H:%M:%S%.6f+00");
        for entry in entries(envelope) {
            rows.extend_from_slice(raffle_id.as_bytes());
            rows.push(b'\t');
            rows.extend_from_slice(entry.kind.as_bytes());
            rows.push(b'\t');
            escape_into(&mut rows, &entry.key);
            let _ = writeln!(rows, "\t{}\t{}\t{at}", entry.sequence, entry.event_type);
        }
    }
    if rows.is_empty() {
        return Ok(());
    }
    let mut copy = conn
        .copy_in_raw(&format!(
            "COPY {table} (raffle_id, kind, key, sequence, event_type, recorded_at) FROM STDIN"
        ))
        .await?;
    for chunk in rows.chunks(SEND_BYTES) {
        copy.send(chunk).await?;
    }
    copy.finish().await?;
    Ok(())
}

/// Bytes of rows sent to the server at a time.
const SEND_BYTES: usize = 1 << 20;

/// COPY's text format: a backslash, tab, newline or carriage return inside a value is escaped
/// (actors and payment ids come from outside).
fn escape_into(out: &mut Vec<u8>, text: &str) {
    for byte in text.bytes() {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            other => out.push(other),
        }
    }
}
