//! `raffle_stats` and `platform_stats`: one [`Tally`] per raffle, folded by the same code.
//!
//! `raffle_stats` keeps each raffle's tally and its sales per hour; `platform_stats` keeps
//! its own copy of each raffle's tally (so it can be rebuilt alone) and adds each batch's
//! change of it to its organizer's totals per currency: the platform figures are one row
//! per (organizer, currency), whatever the number of raffles.

use std::collections::HashMap;

use sqlx::types::Json;
use sqlx::PgConnection;
use uuid::Uuid;

use super::tally::{touched_orders, Fold, OrderState, Tally};
use crate::projection::{ApplyError, Batch, BoxFuture, Projection, Tables};

pub const RAFFLE_STATS: &str = "read_raffle_stats";
pub const RAFFLE_STATS_ORDERS: &str = "read_raffle_stats_orders";
pub const SALES_HOURLY: &str = "read_raffle_sales_hourly";
pub const PLATFORM_RAFFLES: &str = "read_platform_raffles";
pub const PLATFORM_ORDERS: &str = "read_platform_orders";
pub const PLATFORM_STATS: &str = "read_platform_stats";

pub struct RaffleStats;
pub struct PlatformStats;

/// Where a stats projection keeps its tallies and order states.
struct Layout {
    tallies: &'static str,
    orders: &'static str,
    /// `raffle_stats` only.
    hourly: Option<&'static str>,
    /// `platform_stats` only.
    totals: Option<&'static str>,
}

const RAFFLE_LAYOUT: Layout = Layout {
    tallies: RAFFLE_STATS,
    orders: RAFFLE_STATS_ORDERS,
    hourly: Some(SALES_HOURLY),
    totals: None,
};

const PLATFORM_LAYOUT: Layout = Layout {
    tallies: PLATFORM_RAFFLES,
    orders: PLATFORM_ORDERS,
    hourly: None,
    totals: Some(PLATFORM_STATS),
};

/// The tallies and the order states. An order's state row is written when it is reserved
/// and rewritten when it is paid, released, expires or is refunded, none of which changes
/// its key: with half of each page left free (`fillfactor = 50`, room for one more version
/// of every row) the rewrite is a HOT update, a new row version on the same page and no new
/// primary-key entry, where full pages made every rewrite insert into the index at a random
/// place (decision 0029: 0 of 99,567 rewrites HOT at the default, all of them at 50).
fn common_schema(layout: &Layout, tables: Tables) -> String {
    let tallies = tables.name(layout.tallies);
    let orders = tables.name(layout.orders);
    format!(
        "CREATE TABLE {tallies} ( \
           raffle_id uuid PRIMARY KEY, organizer_id text NOT NULL, tally jsonb NOT NULL, \
           last_sequence bigint NOT NULL); \
         CREATE INDEX ON {tallies} (organizer_id); \
         CREATE TABLE {orders} ( \
           raffle_id uuid NOT NULL, order_id uuid NOT NULL, status text NOT NULL, \
           tickets integer NOT NULL, amount_minor bigint NOT NULL, \
           refunded_minor bigint NOT NULL, \
           PRIMARY KEY (raffle_id, order_id)) WITH (fillfactor = 50); "
    )
}

impl Projection for RaffleStats {
    fn name(&self) -> &'static str {
        "raffle_stats"
    }

    /// 2: the order states' table leaves room on its pages (see [`common_schema`]).
    fn version(&self) -> u32 {
        2
    }

    fn tables(&self) -> &'static [&'static str] {
        &[RAFFLE_STATS, RAFFLE_STATS_ORDERS, SALES_HOURLY]
    }

    fn schema(&self, tables: Tables) -> String {
        let hourly = tables.name(SALES_HOURLY);
        common_schema(&RAFFLE_LAYOUT, tables)
            + &format!(
                "CREATE TABLE {hourly} ( \
                   raffle_id uuid NOT NULL, hour timestamptz NOT NULL, tickets bigint NOT NULL, \
                   orders bigint NOT NULL, revenue_minor bigint NOT NULL, \
                   PRIMARY KEY (raffle_id, hour));"
            )
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        batch: Batch<'a>,
    ) -> BoxFuture<'a, Result<(), ApplyError>> {
        Box::pin(apply(conn, batch, &RAFFLE_LAYOUT))
    }
}

impl Projection for PlatformStats {
    fn name(&self) -> &'static str {
        "platform_stats"
    }

    /// 2: the order states' table leaves room on its pages (see [`common_schema`]).
    fn version(&self) -> u32 {
        2
    }

    fn tables(&self) -> &'static [&'static str] {
        &[PLATFORM_RAFFLES, PLATFORM_ORDERS, PLATFORM_STATS]
    }

    fn raffle_scoped(&self) -> bool {
        false
    }

    fn schema(&self, tables: Tables) -> String {
        let totals = tables.name(PLATFORM_STATS);
        common_schema(&PLATFORM_LAYOUT, tables)
            + &format!(
                "CREATE TABLE {totals} ( \
                   organizer_id text NOT NULL, currency text NOT NULL, \
                   raffles bigint NOT NULL, raffles_on_sale bigint NOT NULL, \
                   tickets_sold bigint NOT NULL, tickets_reserved bigint NOT NULL, \
                   orders_paid bigint NOT NULL, reservations bigint NOT NULL, \
                   revenue_minor bigint NOT NULL, \
                   PRIMARY KEY (organizer_id, currency));"
            )
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        batch: Batch<'a>,
    ) -> BoxFuture<'a, Result<(), ApplyError>> {
        Box::pin(apply(conn, batch, &PLATFORM_LAYOUT))
    }
}

/// A raffle's share of its organizer's platform totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Contribution {
    raffles: i64,
    raffles_on_sale: i64,
    tickets_sold: i64,
    tickets_reserved: i64,
    orders_paid: i64,
    reservations: i64,
    revenue_minor: i64,
}

impl Contribution {
    fn of(tally: Option<&Tally>) -> Self {
        let Some(t) = tally else {
            return Self::default();
        };
        Self {
            raffles: 1,
            raffles_on_sale: i64::from(t.status == "on_sale"),
            tickets_sold: t.sold,
            tickets_reserved: t.reserved,
            orders_paid: t.orders.paid,
            reservations: t.reservations,
            revenue_minor: t.revenue_minor,
        }
    }
}

async fn apply(
    conn: &mut PgConnection,
    batch: Batch<'_>,
    layout: &Layout,
) -> Result<(), ApplyError> {
    let tallies = batch.tables.name(layout.tallies);
    let orders_table = batch.tables.name(layout.orders);
    let before: Option<Json<Tally>> =
        sqlx::query_scalar(&format!("SELECT tally FROM {tallies} WHERE raffle_id = $1"))
            .bind(batch.raffle_id)
            .fetch_optional(&mut *conn)
            .await?;
    let before = before.map(|Json(t)| t);
    let (touched, cancelled) = touched_orders(batch.events);
    // Two index-friendly statements rather than one with an OR (see `orders::apply`).
    let mut orders: Vec<OrderState> = Vec::new();
    if !touched.is_empty() {
        orders = sqlx::query_as(&format!(
            "SELECT order_id, status, tickets, amount_minor, refunded_minor FROM {orders_table} \
             WHERE raffle_id = $1 AND order_id = ANY($2)"
        ))
        .bind(batch.raffle_id)
        .bind(&touched)
        .fetch_all(&mut *conn)
        .await?;
    }
    if cancelled {
        orders.extend(
            sqlx::query_as::<_, OrderState>(&format!(
                "SELECT order_id, status, tickets, amount_minor, refunded_minor \
                 FROM {orders_table} WHERE raffle_id = $1 AND status IN ('reserved', 'paid')"
            ))
            .bind(batch.raffle_id)
            .fetch_all(&mut *conn)
            .await?,
        );
    }
    let mut fold = Fold {
        tally: before.clone().unwrap_or_default(),
        orders: orders.into_iter().map(|o| (o.order_id, o)).collect(),
        dirty: Vec::new(),
        hourly: HashMap::new(),
    };
    for envelope in batch.events {
        fold.apply(envelope);
    }
    if before.is_none() && fold.tally.organizer_id.is_empty() {
        return Err(ApplyError::Invalid(
            "events before the raffle was created".into(),
        ));
    }
    let last = batch.events.last().map_or(0, |e| e.sequence as i64);
    sqlx::query(&format!(
        "INSERT INTO {tallies} (raffle_id, organizer_id, tally, last_sequence) \
         VALUES ($1, $2, $3, $4) \
         ON CONFLICT (raffle_id) DO UPDATE SET tally = EXCLUDED.tally, \
           last_sequence = EXCLUDED.last_sequence"
    ))
    .bind(batch.raffle_id)
    .bind(&fold.tally.organizer_id)
    .bind(Json(&fold.tally))
    .bind(last)
    .execute(&mut *conn)
    .await?;
    write_orders(conn, &orders_table, batch.raffle_id, &fold).await?;
    if let Some(hourly) = layout.hourly {
        write_hourly(conn, &batch.tables.name(hourly), batch.raffle_id, &fold).await?;
    }
    if let Some(totals) = layout.totals {
        let old = Contribution::of(before.as_ref());
        let new = Contribution::of(Some(&fold.tally));
        if old != new {
            add_to_totals(conn, &batch.tables.name(totals), &fold.tally, old, new).await?;
        }
    }
    Ok(())
}

async fn write_orders(
    conn: &mut PgConnection,
    table: &str,
    raffle_id: Uuid,
    fold: &Fold,
) -> Result<(), sqlx::Error> {
    let mut dirty = fold.dirty.clone();
    dirty.sort_unstable();
    dirty.dedup();
    for chunk in dirty.chunks(20_000) {
        let rows: Vec<&OrderState> = chunk.iter().map(|id| &fold.orders[id]).collect();
        sqlx::query(&format!(
            "INSERT INTO {table} (raffle_id, order_id, status, tickets, amount_minor, \
                                  refunded_minor) \
             SELECT $1, o.* FROM UNNEST($2::uuid[], $3::text[], $4::integer[], $5::bigint[], \
                                        $6::bigint[]) \
               AS o(order_id, status, tickets, amount_minor, refunded_minor) \
             ON CONFLICT (raffle_id, order_id) DO UPDATE SET status = EXCLUDED.status, \
               tickets = EXCLUDED.tickets, refunded_minor = EXCLUDED.refunded_minor"
        ))
        .bind(raffle_id)
        .bind(rows.iter().map(|o| o.order_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|o| o.status.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|o| o.tickets).collect::<Vec<_>>())
        .bind(rows.iter().map(|o| o.amount_minor).collect::<Vec<_>>())
        .bind(rows.iter().map(|o| o.refunded_minor).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

async fn write_hourly(
    conn: &mut PgConnection,
    table: &str,
    raffle_id: Uuid,
    fold: &Fold,
) -> Result<(), sqlx::Error> {
    if fold.hourly.is_empty() {
        return Ok(());
    }
    let mut hours: Vec<_> = fold.hourly.iter().collect();
    hours.sort_unstable_by_key(|(hour, _)| **hour);
    sqlx::query(&format!(
        "INSERT INTO {table} (raffle_id, hour, tickets, orders, revenue_minor) \
         SELECT $1, h.* FROM UNNEST($2::timestamptz[], $3::bigint[], $4::bigint[], $5::bigint[]) \
           AS h(hour, tickets, orders, revenue_minor) \
         ON CONFLICT (raffle_id, hour) DO UPDATE SET \
           tickets = {table}.tickets + EXCLUDED.tickets, \
           orders = {table}.orders + EXCLUDED.orders, \
           revenue_minor = {table}.revenue_minor + EXCLUDED.revenue_minor"
    ))
    .bind(raffle_id)
    .bind(hours.iter().map(|(h, _)| **h).collect::<Vec<_>>())
    .bind(hours.iter().map(|(_, s)| s.tickets).collect::<Vec<_>>())
    .bind(hours.iter().map(|(_, s)| s.orders).collect::<Vec<_>>())
    .bind(
        hours
            .iter()
            .map(|(_, s)| s.revenue_minor)
            .collect::<Vec<_>>(),
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn add_to_totals(
    conn: &mut PgConnection,
    table: &str,
    tally: &Tally,
    old: Contribution,
    new: Contribution,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO {table} AS t (organizer_id, currency, raffles, raffles_on_sale, \
           tickets_sold, tickets_reserved, orders_paid, reservations, revenue_minor) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (organizer_id, currency) DO UPDATE SET \
           raffles = t.raffles + EXCLUDED.raffles, \
           raffles_on_sale = t.raffles_on_sale + EXCLUDED.raffles_on_sale, \
           tickets_sold = t.tickets_sold + EXCLUDED.tickets_sold, \
           tickets_reserved = t.tickets_reserved + EXCLUDED.tickets_reserved, \
           orders_paid = t.orders_paid + EXCLUDED.orders_paid, \
           reservations = t.reservations + EXCLUDED.reservations, \
           revenue_minor = t.revenue_minor + EXCLUDED.revenue_minor"
    ))
    .bind(&tally.organizer_id)
    .bind(&tally.currency)
    .bind(new.raffles - old.raffles)
    .bind(new.raffles_on_sale - old.raffles_on_sale)
    .bind(new.tickets_sold - old.tickets_sold)
    .bind(new.tickets_reserved - old.tickets_reserved)
    .bind(new.orders_paid - old.orders_paid)
    .bind(new.reservations - old.reservations)
    .bind(new.revenue_minor - old.revenue_minor)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
