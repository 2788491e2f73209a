//! `orders`: one row per order with its buyer, numbers, money and the times it changed.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use tombola_domain::RaffleEvent;
use uuid::Uuid;

use crate::csv;
use crate::envelope::Envelope;
use crate::projection::{ApplyError, Batch, BoxFuture, Projection, Tables};

pub const TABLE: &str = "read_orders";
/// Each raffle's time zone (from `RaffleCreated`), in which `csv_paid_at` is written; only
/// zones PostgreSQL knows are kept (a raffle without a row has no `csv_paid_at`).
pub const TIME_ZONES: &str = "read_orders_time_zones";

pub struct Orders;

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct OrderRow {
    pub order_id: Uuid,
    pub status: String,
    pub buyer_name: String,
    pub buyer_email: String,
    pub buyer_phone: Option<String>,
    pub numbers: Vec<i32>,
    pub amount_minor: i64,
    pub currency: String,
    pub payment_method: Option<String>,
    pub payment_reference: Option<String>,
    pub reserved_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
    pub expired_at: Option<DateTime<Utc>>,
    pub released_at: Option<DateTime<Utc>>,
    pub refunded_at: Option<DateTime<Utc>>,
    pub late_payment: bool,
    pub refund_required: bool,
    pub amount_refunded_minor: i64,
    /// `SEQUENCE:HASH` of the `TicketsIssued` that paid the order: the buyer's receipt,
    /// which `tombola audit verify --receipt` proves against the log.
    pub receipt: Option<String>,
    pub last_sequence: i64,
}

impl Projection for Orders {
    fn name(&self) -> &'static str {
        "orders"
    }

    /// 2: the receipt column. 3: the order's parts of a `tickets.csv` line, precomputed
    /// (`csv_buyer`, `csv_paid_at`, `csv_payment`), and the raffle's time zone.
    fn version(&self) -> u32 {
        3
    }

    fn tables(&self) -> &'static [&'static str] {
        &[TABLE, TIME_ZONES]
    }

    fn schema(&self, tables: Tables) -> String {
        let t = tables.name(TABLE);
        format!(
            "CREATE TABLE {t} ( \
               raffle_id uuid NOT NULL, order_id uuid NOT NULL, status text NOT NULL, \
               buyer_name text NOT NULL, buyer_email text NOT NULL, buyer_phone text, \
               numbers integer[] NOT NULL, amount_minor bigint NOT NULL, currency text NOT NULL, \
               payment_method text, payment_reference text, \
               reserved_at timestamptz NOT NULL, expires_at timestamptz NOT NULL, \
               paid_at timestamptz, expired_at timestamptz, released_at timestamptz, \
               refunded_at timestamptz, late_payment boolean NOT NULL, \
               refund_required boolean NOT NULL, amount_refunded_minor bigint NOT NULL, \
               receipt text, last_sequence bigint NOT NULL, \
               csv_buyer text, csv_paid_at text, csv_payment text, \
               PRIMARY KEY (raffle_id, order_id)); \
             CREATE TABLE {z} (raffle_id uuid PRIMARY KEY, time_zone text NOT NULL);",
            z = tables.name(TIME_ZONES)
        )
    }

    fn indexes(&self, tables: Tables) -> String {
        format!(
            "CREATE INDEX ON {} (raffle_id, status, order_id);",
            tables.name(TABLE)
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

async fn apply(conn: &mut PgConnection, batch: Batch<'_>) -> Result<(), ApplyError> {
    let table = batch.tables.name(TABLE);
    let zones = batch.tables.name(TIME_ZONES);
    let mut touched: Vec<Uuid> = Vec::new();
    let mut cancelled = false;
    for envelope in batch.events {
        match &envelope.event {
            RaffleEvent::RaffleCreated { config, .. } => {
                record_time_zone(conn, &zones, batch.raffle_id, config.time_zone()).await?;
            }
            RaffleEvent::HoldsExpired { holds, .. } => {
                touched.extend(holds.iter().map(|h| h.order_id));
            }
            RaffleEvent::RaffleCancelled { .. } => cancelled = true,
            event => touched.extend(event.order_id()),
        }
    }
    if touched.is_empty() && !cancelled {
        return Ok(());
    }
    touched.sort_unstable();
    touched.dedup();
    // Two statements, not one with `order_id = ANY($2) OR ($3 AND status …)`: as a prepared
    // statement that one gets a generic plan which cannot leave the OR out, and read every
    // order of the raffle on every batch (a live raffle got slower as it grew).
    let columns = "order_id, status, buyer_name, buyer_email, buyer_phone, numbers, \
                   amount_minor, currency, payment_method, payment_reference, reserved_at, \
                   expires_at, paid_at, expired_at, released_at, refunded_at, late_payment, \
                   refund_required, amount_refunded_minor, receipt, last_sequence";
    let mut rows: Vec<OrderRow> = sqlx::query_as(&format!(
        "SELECT {columns} FROM {table} WHERE raffle_id = $1 AND order_id = ANY($2)"
    ))
    .bind(batch.raffle_id)
    .bind(&touched)
    .fetch_all(&mut *conn)
    .await?;
    if cancelled {
        // A cancellation touches every live order: once per raffle, a scan is fine.
        rows.extend(
            sqlx::query_as::<_, OrderRow>(&format!(
                "SELECT {columns} FROM {table} \
                 WHERE raffle_id = $1 AND status IN ('reserved', 'paid')"
            ))
            .bind(batch.raffle_id)
            .fetch_all(&mut *conn)
            .await?,
        );
    }
    let mut orders: HashMap<Uuid, OrderRow> =
        rows.into_iter().map(|row| (row.order_id, row)).collect();
    let mut dirty: Vec<Uuid> = Vec::new();
    for envelope in batch.events {
        fold(&mut orders, envelope, &mut dirty);
    }
    dirty.sort_unstable();
    dirty.dedup();
    write(
        conn,
        &table,
        &zones,
        batch.raffle_id,
        dirty.iter().map(|id| &orders[id]),
    )
    .await?;
    Ok(())
}

/// Keeps the raffle's time zone, if PostgreSQL knows it (the API refuses others, but a log
/// may outlive a zone database): tried in a savepoint, so that an unknown zone only leaves
/// the raffle without precomputed purchase times instead of failing the batch. (Looking it
/// up in `pg_timezone_names` reads the whole zone database: 50-200 ms per raffle.)
async fn record_time_zone(
    conn: &mut PgConnection,
    zones: &str,
    raffle_id: Uuid,
    zone: &str,
) -> Result<(), sqlx::Error> {
    use sqlx::Connection as _;
    let mut savepoint = conn.begin().await?;
    let known = sqlx::query("SELECT now() AT TIME ZONE $1")
        .bind(zone)
        .execute(&mut *savepoint)
        .await;
    match known {
        Ok(_) => savepoint.commit().await?,
        Err(_) => {
            savepoint.rollback().await?;
            return Ok(());
        }
    }
    sqlx::query(&format!(
        "INSERT INTO {zones} (raffle_id, time_zone) VALUES ($1, $2) \
         ON CONFLICT (raffle_id) DO UPDATE SET time_zone = EXCLUDED.time_zone"
    ))
    .bind(raffle_id)
    .bind(zone)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Folds one event into the orders it touches (those loaded), noting which changed.
pub fn fold(orders: &mut HashMap<Uuid, OrderRow>, envelope: &Envelope, dirty: &mut Vec<Uuid>) {
    let sequence = envelope.sequence as i64;
    let mut changed: Vec<Uuid> = Vec::new();
    let mut touch = |orders: &mut HashMap<Uuid, OrderRow>, id: &Uuid, f: &dyn Fn(&mut OrderRow)| {
        if let Some(row) = orders.get_mut(id) {
            f(row);
            row.last_sequence = sequence;
            changed.push(*id);
        }
    };
    match &envelope.event {
        RaffleEvent::TicketsReserved {
            order_id,
            buyer,
            numbers,
            amount_minor,
            currency,
            at,
            expires_at,
        } => {
            orders.insert(
                *order_id,
                OrderRow {
                    order_id: *order_id,
                    status: "reserved".into(),
                    buyer_name: buyer.name().to_owned(),
                    buyer_email: buyer.email().as_str().to_owned(),
                    buyer_phone: buyer.phone().map(str::to_owned),
                    numbers: numbers.iter().map(|&n| n as i32).collect(),
                    amount_minor: *amount_minor,
                    currency: currency.as_str().to_owned(),
                    payment_method: None,
                    payment_reference: None,
                    reserved_at: *at,
                    expires_at: *expires_at,
                    paid_at: None,
                    expired_at: None,
                    released_at: None,
                    refunded_at: None,
                    late_payment: false,
                    refund_required: false,
                    amount_refunded_minor: 0,
                    receipt: None,
                    last_sequence: sequence,
                },
            );
            changed.push(*order_id);
        }
        RaffleEvent::ReservationReleased { order_id, at, .. } => {
            touch(orders, order_id, &|row| {
                row.status = "released".into();
                row.released_at = Some(*at);
            });
        }
        RaffleEvent::HoldsExpired { holds, at } => {
            for hold in holds {
                touch(orders, &hold.order_id, &|row| {
                    row.status = "expired".into();
                    row.expired_at = Some(*at);
                });
            }
        }
        RaffleEvent::HoldExtended {
            order_id,
            expires_at,
            ..
        } => touch(orders, order_id, &|row| row.expires_at = *expires_at),
        RaffleEvent::PaymentRecorded {
            order_id, payment, ..
        } => touch(orders, order_id, &|row| {
            // The payment that pays the order is the one it shows; later ones (duplicates,
            // a second payment owed back) do not replace it.
            if row.status != "paid" && row.status != "refunded" {
                row.payment_method = Some(payment.method.clone());
                row.payment_reference = Some(payment.payment_id.clone());
            }
        }),
        RaffleEvent::ManualPaymentConfirmed {
            order_id,
            method,
            reference,
            ..
        } => touch(orders, order_id, &|row| {
            if row.status != "paid" && row.status != "refunded" {
                row.payment_method = Some(method.clone());
                row.payment_reference = Some(reference.clone());
            }
        }),
        RaffleEvent::TicketsIssued {
            order_id,
            numbers,
            late,
            at,
            ..
        } => {
            let receipt = envelope
                .hash
                .as_ref()
                .map(|hash| format!("{}:{hash}", envelope.sequence));
            touch(orders, order_id, &|row| {
                row.status = "paid".into();
                row.paid_at = Some(*at);
                row.numbers = numbers.iter().map(|&n| n as i32).collect();
                row.late_payment = *late;
                row.receipt = receipt.clone();
            })
        }
        RaffleEvent::RefundRequired { order_id, .. } => touch(orders, order_id, &|row| {
            row.refund_required = true;
            if matches!(row.status.as_str(), "reserved" | "expired" | "released") {
                row.status = "refund_required".into();
            }
        }),
        RaffleEvent::PaymentPartiallyRefunded {
            order_id,
            amount_refunded_minor,
            ..
        } => touch(orders, order_id, &|row| {
            row.amount_refunded_minor = *amount_refunded_minor;
        }),
        RaffleEvent::OrderRefunded {
            order_id,
            amount_minor,
            at,
            ..
        } => touch(orders, order_id, &|row| {
            row.status = "refunded".into();
            row.refunded_at = Some(*at);
            row.amount_refunded_minor = *amount_minor;
        }),
        RaffleEvent::RaffleCancelled { at, .. } => {
            let live: Vec<Uuid> = orders
                .values()
                .filter(|row| row.status == "reserved" || row.status == "paid")
                .map(|row| row.order_id)
                .collect();
            for id in live {
                touch(orders, &id, &|row| {
                    if row.status == "reserved" {
                        row.status = "released".into();
                        row.released_at = Some(*at);
                    } else {
                        row.status = "refund_required".into();
                        row.refund_required = true;
                    }
                });
            }
        }
        RaffleEvent::RaffleCreated { .. }
        | RaffleEvent::SalesOpened { .. }
        | RaffleEvent::PaymentFlagged { .. }
        | RaffleEvent::PaymentFailed { .. }
        | RaffleEvent::SalesClosed { .. }
        | RaffleEvent::WinnersDrawn { .. } => {}
    }
    dirty.extend(changed);
}

/// Postgres's array literal for `numbers`: ragged arrays cannot travel as a 2-D parameter,
/// so each row's numbers go as text and are cast back.
fn array_literal(numbers: &[i32]) -> String {
    let mut out = String::with_capacity(numbers.len() * 8 + 2);
    out.push('{');
    for (i, n) in numbers.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&n.to_string());
    }
    out.push('}');
    out
}

async fn write<'r>(
    conn: &mut PgConnection,
    table: &str,
    zones: &str,
    raffle_id: Uuid,
    rows: impl Iterator<Item = &'r OrderRow>,
) -> Result<(), sqlx::Error> {
    let rows: Vec<&OrderRow> = rows.collect();
    // The order's parts of its tickets' `tickets.csv` lines, written with the order so
    // that an export only joins them (decision 0027).
    let csv_buyer = csv::buyer_part(
        "o.order_id",
        "o.buyer_name",
        "o.buyer_phone",
        "o.buyer_email",
    );
    let csv_paid_at = format!(
        "CASE WHEN o.paid_at IS NOT NULL THEN {} END",
        csv::zoned_time("o.paid_at", "z.time_zone")
    );
    let csv_payment = csv::payment_part(
        "o.amount_minor",
        &csv::minor_digits_sql("o.currency"),
        "o.currency",
        "o.payment_method",
        "o.payment_reference",
    );
    for chunk in rows.chunks(5_000) {
        let col = |f: fn(&OrderRow) -> String| chunk.iter().map(|r| f(r)).collect::<Vec<_>>();
        sqlx::query(&format!(
            "INSERT INTO {table} (raffle_id, order_id, status, buyer_name, buyer_email, \
               buyer_phone, numbers, amount_minor, currency, payment_method, payment_reference, \
               reserved_at, expires_at, paid_at, expired_at, released_at, refunded_at, \
               late_payment, refund_required, amount_refunded_minor, receipt, last_sequence, \
               csv_buyer, csv_paid_at, csv_payment) \
             SELECT $1, o.order_id, o.status, o.buyer_name, o.buyer_email, o.buyer_phone, \
               o.numbers::integer[], o.amount_minor, o.currency, o.payment_method, \
               o.payment_reference, o.reserved_at, o.expires_at, o.paid_at, o.expired_at, \
               o.released_at, o.refunded_at, o.late_payment, o.refund_required, \
               o.amount_refunded_minor, o.receipt, o.last_sequence, \
               {csv_buyer}, {csv_paid_at}, {csv_payment} \
             FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], \
               $7::text[], $8::bigint[], $9::text[], $10::text[], $11::text[], \
               $12::timestamptz[], $13::timestamptz[], $14::timestamptz[], $15::timestamptz[], \
               $16::timestamptz[], $17::timestamptz[], $18::boolean[], $19::boolean[], \
               $20::bigint[], $21::text[], $22::bigint[]) \
               AS o(order_id, status, buyer_name, buyer_email, buyer_phone, numbers, \
                    amount_minor, currency, payment_method, payment_reference, reserved_at, \
                    expires_at, paid_at, expired_at, released_at, refunded_at, late_payment, \
                    refund_required, amount_refunded_minor, receipt, last_sequence) \
             LEFT JOIN {zones} z ON z.raffle_id = $1 \
             ON CONFLICT (raffle_id, order_id) DO UPDATE SET \
               status = EXCLUDED.status, numbers = EXCLUDED.numbers, \
               payment_method = EXCLUDED.payment_method, \
               payment_reference = EXCLUDED.payment_reference, \
               expires_at = EXCLUDED.expires_at, paid_at = EXCLUDED.paid_at, \
               expired_at = EXCLUDED.expired_at, released_at = EXCLUDED.released_at, \
               refunded_at = EXCLUDED.refunded_at, late_payment = EXCLUDED.late_payment, \
               refund_required = EXCLUDED.refund_required, \
               amount_refunded_minor = EXCLUDED.amount_refunded_minor, \
               receipt = EXCLUDED.receipt, last_sequence = EXCLUDED.last_sequence, \
               csv_buyer = EXCLUDED.csv_buyer, csv_paid_at = EXCLUDED.csv_paid_at, \
               csv_payment = EXCLUDED.csv_payment"
        ))
        .bind(raffle_id)
        .bind(chunk.iter().map(|r| r.order_id).collect::<Vec<_>>())
        .bind(col(|r| r.status.clone()))
        .bind(col(|r| r.buyer_name.clone()))
        .bind(col(|r| r.buyer_email.clone()))
        .bind(
            chunk
                .iter()
                .map(|r| r.buyer_phone.clone())
                .collect::<Vec<_>>(),
        )
        .bind(col(|r| array_literal(&r.numbers)))
        .bind(chunk.iter().map(|r| r.amount_minor).collect::<Vec<_>>())
        .bind(col(|r| r.currency.clone()))
        .bind(
            chunk
                .iter()
                .map(|r| r.payment_method.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            chunk
                .iter()
                .map(|r| r.payment_reference.clone())
                .collect::<Vec<_>>(),
        )
        .bind(chunk.iter().map(|r| r.reserved_at).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.expires_at).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.paid_at).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.expired_at).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.released_at).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.refunded_at).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.late_payment).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.refund_required).collect::<Vec<_>>())
        .bind(
            chunk
                .iter()
                .map(|r| r.amount_refunded_minor)
                .collect::<Vec<_>>(),
        )
        .bind(chunk.iter().map(|r| r.receipt.clone()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.last_sequence).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
