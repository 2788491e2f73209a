//! Reads of the live read models, for the API and the CLI. The tables' shapes stay inside
//! this crate.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::models::orders::{OrderRow, TABLE as ORDERS};
use crate::models::stats::{PLATFORM_STATS, RAFFLE_STATS, SALES_HOURLY};
use crate::models::tally::Tally;
use crate::models::tickets::TABLE as TICKETS;

/// A raffle's tally and its sales per hour (oldest first).
pub async fn raffle_stats(
    pool: &PgPool,
    raffle_id: Uuid,
) -> Result<Option<(Tally, Vec<(DateTime<Utc>, i64, i64, i64)>)>, sqlx::Error> {
    // One statement, so that a rebuild's swap (which renames both tables in one
    // transaction) can never fall between reading the tally and reading the hours.
    type Hour = (DateTime<Utc>, i64, i64, i64);
    let row: Option<(Json<Tally>, Json<Vec<Hour>>)> = sqlx::query_as(&format!(
        "SELECT s.tally, \
                COALESCE((SELECT json_agg(json_build_array(h.hour, h.tickets, h.orders, \
                                                           h.revenue_minor) ORDER BY h.hour) \
                          FROM {SALES_HOURLY} h WHERE h.raffle_id = $1), '[]'::json) \
         FROM {RAFFLE_STATS} s WHERE s.raffle_id = $1"
    ))
    .bind(raffle_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(Json(tally), Json(hourly))| (tally, hourly)))
}

/// Totals per currency over every raffle, or one organizer's.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PlatformTotals {
    pub currency: String,
    pub raffles: i64,
    pub raffles_on_sale: i64,
    pub tickets_sold: i64,
    pub tickets_reserved: i64,
    pub orders_paid: i64,
    pub reservations: i64,
    pub revenue_minor: i64,
}

pub async fn platform_stats(
    pool: &PgPool,
    organizer_id: Option<&str>,
) -> Result<Vec<PlatformTotals>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT currency, sum(raffles)::bigint AS raffles, \
                sum(raffles_on_sale)::bigint AS raffles_on_sale, \
                sum(tickets_sold)::bigint AS tickets_sold, \
                sum(tickets_reserved)::bigint AS tickets_reserved, \
                sum(orders_paid)::bigint AS orders_paid, \
                sum(reservations)::bigint AS reservations, \
                sum(revenue_minor)::bigint AS revenue_minor \
         FROM {PLATFORM_STATS} WHERE ($1::text IS NULL OR organizer_id = $1) \
         GROUP BY currency ORDER BY currency"
    ))
    .bind(organizer_id)
    .fetch_all(pool)
    .await
}

pub struct OrderFilter<'a> {
    pub status: Option<&'a str>,
    /// Matches buyer name, e-mail, phone or payment reference, case-insensitively, as a
    /// substring (always a bound parameter; LIKE's wildcards in it are matched literally).
    pub q: Option<&'a str>,
    /// Keyset pagination: orders after this id.
    pub after: Option<Uuid>,
    pub limit: i64,
}

pub async fn orders(
    pool: &PgPool,
    raffle_id: Uuid,
    filter: &OrderFilter<'_>,
) -> Result<Vec<OrderRow>, sqlx::Error> {
    let pattern = filter.q.map(|q| {
        let escaped = q
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        format!("%{escaped}%")
    });
    sqlx::query_as(&format!(
        "SELECT order_id, status, buyer_name, buyer_email, buyer_phone, numbers, amount_minor, \
                currency, payment_method, payment_reference, reserved_at, expires_at, paid_at, \
                expired_at, released_at, refunded_at, late_payment, refund_required, \
                amount_refunded_minor, receipt, last_sequence \
         FROM {ORDERS} WHERE raffle_id = $1 \
           AND ($2::text IS NULL OR status = $2) \
           AND ($3::uuid IS NULL OR order_id > $3) \
           AND ($4::text IS NULL OR buyer_name ILIKE $4 OR buyer_email ILIKE $4 \
                OR buyer_phone ILIKE $4 OR payment_reference ILIKE $4) \
         ORDER BY order_id LIMIT $5"
    ))
    .bind(raffle_id)
    .bind(filter.status)
    .bind(filter.after)
    .bind(pattern)
    .bind(filter.limit)
    .fetch_all(pool)
    .await
}

/// Who holds or owns `number`: (order, `held` or `sold`, since). `None`: free.
pub async fn ticket(
    pool: &PgPool,
    raffle_id: Uuid,
    number: u32,
) -> Result<Option<(Uuid, String, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT order_id, status, since FROM {TICKETS} WHERE raffle_id = $1 AND number = $2"
    ))
    .bind(raffle_id)
    .bind(number as i32)
    .fetch_optional(pool)
    .await
}
