//! `tickets`: number → order, status (`held` or `sold`) and since when, for every number that
//! is held or sold. Free numbers have no row. A sold-out 10M raffle is 10M rows, so a batch
//! is folded in memory into its net change per number and written with a few multi-row
//! statements.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use tombola_domain::RaffleEvent;
use uuid::Uuid;

use crate::projection::{ApplyError, Batch, BoxFuture, Projection, Tables};

pub const TABLE: &str = "read_tickets";
const CHUNK: usize = 50_000;

pub struct Tickets;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TicketRow {
    pub order_id: Uuid,
    pub sold: bool,
    pub since: DateTime<Utc>,
}

impl Projection for Tickets {
    fn name(&self) -> &'static str {
        "tickets"
    }

    fn version(&self) -> u32 {
        1
    }

    fn tables(&self) -> &'static [&'static str] {
        &[TABLE]
    }

    fn schema(&self, tables: Tables) -> String {
        let t = tables.name(TABLE);
        format!(
            "CREATE TABLE {t} ( \
               raffle_id uuid NOT NULL, number integer NOT NULL, order_id uuid NOT NULL, \
               status text NOT NULL CHECK (status IN ('held', 'sold')), \
               since timestamptz NOT NULL, \
               PRIMARY KEY (raffle_id, number)); \
             CREATE INDEX ON {t} (raffle_id, order_id);"
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

/// A batch's net effect: rows as they were for the orders it touches by order (not by
/// number), and what each changed number ends as (`None`: free).
#[derive(Default)]
struct Overlay {
    /// Rows before the batch of the orders released or refunded by order id.
    base: HashMap<u32, TicketRow>,
    changes: HashMap<u32, Option<TicketRow>>,
    /// The raffle was cancelled in this batch: every earlier row is gone.
    cleared: bool,
}

impl Overlay {
    fn current(&self, number: u32) -> Option<TicketRow> {
        match self.changes.get(&number) {
            Some(change) => *change,
            None if self.cleared => None,
            None => self.base.get(&number).copied(),
        }
    }

    /// The numbers `order_id` holds (`sold`: or owns) right now.
    fn numbers_of(&self, order_id: Uuid, sold: bool) -> Vec<u32> {
        let mut numbers: Vec<u32> = self
            .base
            .keys()
            .chain(self.changes.keys())
            .copied()
            .filter(|&n| matches!(self.current(n), Some(row) if row.order_id == order_id && row.sold == sold))
            .collect();
        numbers.sort_unstable();
        numbers.dedup();
        numbers
    }

    fn set(&mut self, numbers: impl IntoIterator<Item = u32>, row: Option<TicketRow>) {
        for n in numbers {
            self.changes.insert(n, row);
        }
    }
}

async fn apply(conn: &mut PgConnection, batch: Batch<'_>) -> Result<(), ApplyError> {
    let table = batch.tables.name(TABLE);
    // Orders whose numbers an event frees without naming them.
    let mut by_order: Vec<Uuid> = batch
        .events
        .iter()
        .filter_map(|e| match &e.event {
            RaffleEvent::RefundRequired { order_id, .. }
            | RaffleEvent::OrderRefunded { order_id, .. } => Some(*order_id),
            _ => None,
        })
        .collect();
    by_order.sort_unstable();
    by_order.dedup();
    let mut overlay = Overlay::default();
    if !by_order.is_empty() {
        let rows: Vec<(i32, Uuid, String, DateTime<Utc>)> = sqlx::query_as(&format!(
            "SELECT number, order_id, status, since FROM {table} \
             WHERE raffle_id = $1 AND order_id = ANY($2)"
        ))
        .bind(batch.raffle_id)
        .bind(&by_order)
        .fetch_all(&mut *conn)
        .await?;
        for (number, order_id, status, since) in rows {
            overlay.base.insert(
                number as u32,
                TicketRow {
                    order_id,
                    sold: status == "sold",
                    since,
                },
            );
        }
    }
    for envelope in batch.events {
        match &envelope.event {
            RaffleEvent::TicketsReserved {
                order_id,
                numbers,
                at,
                ..
            } => overlay.set(
                numbers.iter().copied(),
                Some(TicketRow {
                    order_id: *order_id,
                    sold: false,
                    since: *at,
                }),
            ),
            RaffleEvent::ReservationReleased { numbers, .. } => {
                overlay.set(numbers.iter().copied(), None)
            }
            RaffleEvent::HoldsExpired { holds, .. } => {
                for hold in holds {
                    overlay.set(hold.numbers.iter().copied(), None);
                }
            }
            RaffleEvent::TicketsIssued {
                order_id,
                numbers,
                at,
                ..
            } => overlay.set(
                numbers.iter().copied(),
                Some(TicketRow {
                    order_id: *order_id,
                    sold: true,
                    since: *at,
                }),
            ),
            // A refund owed on a live hold gives its numbers back.
            RaffleEvent::RefundRequired { order_id, .. } => {
                let held = overlay.numbers_of(*order_id, false);
                overlay.set(held, None);
            }
            // A refunded paid order's numbers are no longer sold.
            RaffleEvent::OrderRefunded { order_id, .. } => {
                let sold = overlay.numbers_of(*order_id, true);
                overlay.set(sold, None);
            }
            RaffleEvent::RaffleCancelled { .. } => {
                overlay.cleared = true;
                overlay.changes.clear();
            }
            _ => {}
        }
    }
    write(conn, &table, batch.raffle_id, overlay).await?;
    Ok(())
}

async fn write(
    conn: &mut PgConnection,
    table: &str,
    raffle_id: Uuid,
    overlay: Overlay,
) -> Result<(), sqlx::Error> {
    if overlay.cleared {
        sqlx::query(&format!("DELETE FROM {table} WHERE raffle_id = $1"))
            .bind(raffle_id)
            .execute(&mut *conn)
            .await?;
    }
    let mut freed: Vec<i32> = Vec::new();
    let mut set: Vec<(i32, TicketRow)> = Vec::new();
    for (number, change) in overlay.changes {
        match change {
            None => freed.push(number as i32),
            Some(row) => set.push((number as i32, row)),
        }
    }
    // Sorted, so that two batches never lock the same rows in opposite orders.
    freed.sort_unstable();
    set.sort_unstable_by_key(|(n, _)| *n);
    if !overlay.cleared {
        for chunk in freed.chunks(CHUNK) {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE raffle_id = $1 AND number = ANY($2)"
            ))
            .bind(raffle_id)
            .bind(chunk)
            .execute(&mut *conn)
            .await?;
        }
    }
    for chunk in set.chunks(CHUNK) {
        sqlx::query(&format!(
            "INSERT INTO {table} (raffle_id, number, order_id, status, since) \
             SELECT $1, t.number, t.order_id, CASE WHEN t.sold THEN 'sold' ELSE 'held' END, \
                    t.since \
             FROM UNNEST($2::integer[], $3::uuid[], $4::boolean[], $5::timestamptz[]) \
               AS t(number, order_id, sold, since) \
             ON CONFLICT (raffle_id, number) DO UPDATE SET \
               order_id = EXCLUDED.order_id, status = EXCLUDED.status, since = EXCLUDED.since"
        ))
        .bind(raffle_id)
        .bind(chunk.iter().map(|(n, _)| *n).collect::<Vec<_>>())
        .bind(chunk.iter().map(|(_, r)| r.order_id).collect::<Vec<_>>())
        .bind(chunk.iter().map(|(_, r)| r.sold).collect::<Vec<_>>())
        .bind(chunk.iter().map(|(_, r)| r.since).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
