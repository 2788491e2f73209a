//! What the read models must hold, computed without the projections: the aggregate's own
//! state where it has the answer (order status and numbers, who holds which ticket), and a
//! plain event-by-event fold over the log for the rest.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use sqlx::types::Json;
use sqlx::PgPool;
use tombola_domain::{OrderStatus, RaffleEvent, RaffleStatus};
use tombola_projections::models::audit_index::entries;
use tombola_projections::models::orders::OrderRow;
use tombola_projections::models::tally::{OrdersByStatus, Tally};
use tombola_projections::{csv, models, Envelope};
use uuid::Uuid;

use super::history::History;

/// The orders, folded one event at a time, checked against the aggregate.
pub fn expected_orders(history: &History) -> BTreeMap<Uuid, OrderRow> {
    let orders = fold_orders(&history.events);
    // The aggregate decides status and numbers: the fold must agree with it.
    for (id, row) in &orders {
        let view = history
            .raffle
            .order(*id)
            .expect("the aggregate knows every order");
        assert_eq!(
            row.status,
            view.status.as_str(),
            "order {id}: fold vs aggregate"
        );
        let mut numbers: Vec<i32> = view.numbers.iter().map(|&n| n as i32).collect();
        let mut mine = row.numbers.clone();
        numbers.sort_unstable();
        mine.sort_unstable();
        assert_eq!(mine, numbers, "order {id}: numbers, fold vs aggregate");
    }
    orders
}

/// The orders after `events` (a prefix of a log, or all of it), one event at a time.
pub fn fold_orders(events: &[super::history::Recorded]) -> BTreeMap<Uuid, OrderRow> {
    let mut orders: BTreeMap<Uuid, OrderRow> = BTreeMap::new();
    for recorded in events {
        let seq = recorded.sequence as i64;
        let mut set = |id: &Uuid, f: &mut dyn FnMut(&mut OrderRow)| {
            if let Some(o) = orders.get_mut(id) {
                f(o);
                o.last_sequence = seq;
            }
        };
        match &recorded.event {
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
                        buyer_email: buyer.email().as_str().into(),
                        buyer_phone: buyer.phone().map(str::to_owned),
                        numbers: numbers.iter().map(|&n| n as i32).collect(),
                        amount_minor: *amount_minor,
                        currency: currency.to_string(),
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
                        last_sequence: seq,
                    },
                );
            }
            RaffleEvent::ReservationReleased { order_id, at, .. } => set(order_id, &mut |o| {
                o.status = "released".into();
                o.released_at = Some(*at);
            }),
            RaffleEvent::HoldsExpired { holds, at } => {
                for h in holds {
                    set(&h.order_id, &mut |o| {
                        o.status = "expired".into();
                        o.expired_at = Some(*at);
                    });
                }
            }
            RaffleEvent::HoldExtended {
                order_id,
                expires_at,
                ..
            } => set(order_id, &mut |o| o.expires_at = *expires_at),
            RaffleEvent::PaymentRecorded {
                order_id, payment, ..
            } => set(order_id, &mut |o| {
                if o.status != "paid" && o.status != "refunded" {
                    o.payment_method = Some(payment.method.clone());
                    o.payment_reference = Some(payment.payment_id.clone());
                }
            }),
            RaffleEvent::ManualPaymentConfirmed {
                order_id,
                method,
                reference,
                ..
            } => set(order_id, &mut |o| {
                if o.status != "paid" && o.status != "refunded" {
                    o.payment_method = Some(method.clone());
                    o.payment_reference = Some(reference.clone());
                }
            }),
            RaffleEvent::TicketsIssued {
                order_id,
                numbers,
                late,
                at,
                ..
            } => set(order_id, &mut |o| {
                o.status = "paid".into();
                o.paid_at = Some(*at);
                o.numbers = numbers.iter().map(|&n| n as i32).collect();
                o.late_payment = *late;
                o.receipt = Some(format!(
                    "{}:{}",
                    recorded.sequence,
                    super::history::stored_hash(recorded.sequence)
                ));
            }),
            RaffleEvent::RefundRequired { order_id, .. } => set(order_id, &mut |o| {
                o.refund_required = true;
                if ["reserved", "expired", "released"].contains(&o.status.as_str()) {
                    o.status = "refund_required".into();
                }
            }),
            RaffleEvent::PaymentPartiallyRefunded {
                order_id,
                amount_refunded_minor,
                ..
            } => set(order_id, &mut |o| {
                o.amount_refunded_minor = *amount_refunded_minor
            }),
            RaffleEvent::OrderRefunded {
                order_id,
                amount_minor,
                at,
                ..
            } => set(order_id, &mut |o| {
                o.status = "refunded".into();
                o.refunded_at = Some(*at);
                o.amount_refunded_minor = *amount_minor;
            }),
            RaffleEvent::RaffleCancelled { at, .. } => {
                for o in orders.values_mut() {
                    if o.status == "reserved" {
                        o.status = "released".into();
                        o.released_at = Some(*at);
                        o.last_sequence = seq;
                    } else if o.status == "paid" {
                        o.status = "refund_required".into();
                        o.refund_required = true;
                        o.last_sequence = seq;
                    }
                }
            }
            _ => {}
        }
    }
    orders
}

/// What a reader of the orders model sees of an order: status, numbers, last change, refund.
pub type OrderGist = (String, Vec<i32>, i64, i64);

pub fn gist(orders: &BTreeMap<Uuid, OrderRow>) -> BTreeMap<Uuid, OrderGist> {
    orders
        .iter()
        .map(|(id, o)| {
            (
                *id,
                (
                    o.status.clone(),
                    o.numbers.clone(),
                    o.last_sequence,
                    o.amount_refunded_minor,
                ),
            )
        })
        .collect()
}

/// Reads one raffle's orders and the orders checkpoint in ONE statement, as the API reads a
/// model. (Two statements, even in one REPEATABLE READ snapshot, may straddle a swap: table
/// names resolve from the latest catalog, rows from the old snapshot; PostgreSQL documents
/// renames and drops as not MVCC-safe.)
pub async fn orders_at_checkpoint(
    pool: &PgPool,
    raffle_id: Uuid,
) -> (u64, BTreeMap<Uuid, OrderGist>) {
    type Row = (
        i64,
        Option<Uuid>,
        Option<String>,
        Option<Vec<i32>>,
        Option<i64>,
        Option<i64>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT c.sequence, o.order_id, o.status, o.numbers, o.last_sequence, \
                o.amount_refunded_minor \
         FROM (SELECT coalesce((SELECT sequence FROM projection_checkpoints \
                                WHERE projection = 'orders' AND slot = 'live' \
                                  AND raffle_id = $1), 0) AS sequence) c \
         LEFT JOIN read_orders o ON o.raffle_id = $1",
    )
    .bind(raffle_id)
    .fetch_all(pool)
    .await
    .unwrap();
    let checkpoint = rows.first().map_or(0, |r| r.0) as u64;
    let orders = rows
        .into_iter()
        .filter_map(|(_, id, status, numbers, last, refunded)| {
            Some((id?, (status?, numbers?, last?, refunded?)))
        })
        .collect();
    (checkpoint, orders)
}

/// number → (order, sold, since), from the aggregate's orders.
pub fn expected_tickets(history: &History) -> BTreeMap<i32, (Uuid, bool, DateTime<Utc>)> {
    let mut tickets = BTreeMap::new();
    for id in &history.order_ids {
        let view = history.raffle.order(*id).unwrap();
        let (sold, since) = match view.status {
            OrderStatus::Reserved => (false, view.reserved_at),
            OrderStatus::Paid => (true, view.issued_at.unwrap()),
            _ => continue,
        };
        for n in &view.numbers {
            assert!(
                tickets.insert(*n as i32, (*id, sold, since)).is_none(),
                "number {n} twice"
            );
        }
    }
    tickets
}

pub fn expected_tally(history: &History) -> Tally {
    let raffle = &history.raffle;
    let config = raffle.config().unwrap();
    let mut tally = Tally {
        organizer_id: history.organizer_id.clone(),
        currency: config.currency.to_string(),
        status: match raffle.status() {
            RaffleStatus::Draft => "draft",
            RaffleStatus::OnSale => "on_sale",
            RaffleStatus::Closed => "closed",
            RaffleStatus::Drawn => "drawn",
            RaffleStatus::Cancelled => "cancelled",
        }
        .into(),
        ticket_count: config.ticket_count as i64,
        orders: OrdersByStatus::default(),
        ..Tally::default()
    };
    let mut partial: BTreeMap<Uuid, i64> = BTreeMap::new();
    for recorded in &history.events {
        match &recorded.event {
            RaffleEvent::TicketsReserved { .. } => tally.reservations += 1,
            RaffleEvent::HoldsExpired { holds, .. } => tally.expirations += holds.len() as i64,
            RaffleEvent::TicketsIssued { late, .. } => {
                tally.payments += 1;
                tally.late_payments += i64::from(*late);
            }
            RaffleEvent::RefundRequired { .. } => tally.refunds_required += 1,
            RaffleEvent::PaymentPartiallyRefunded {
                order_id,
                amount_refunded_minor,
                ..
            } => {
                partial.insert(*order_id, *amount_refunded_minor);
            }
            _ => {}
        }
    }
    for id in &history.order_ids {
        let view = raffle.order(*id).unwrap();
        let n = view.numbers.len() as i64;
        let o = &mut tally.orders;
        match view.status {
            OrderStatus::Reserved => {
                o.reserved += 1;
                tally.reserved += n;
            }
            OrderStatus::Paid => {
                o.paid += 1;
                tally.sold += n;
                tally.revenue_minor += view.amount_minor - partial.get(id).copied().unwrap_or(0);
            }
            OrderStatus::Expired => o.expired += 1,
            OrderStatus::Released => o.released += 1,
            OrderStatus::RefundRequired => o.refund_required += 1,
            OrderStatus::Refunded => o.refunded += 1,
        }
    }
    assert_eq!(
        tally.available(),
        raffle.free_numbers().len() as i64,
        "tally vs the aggregate's free numbers"
    );
    tally
}

pub fn expected_hourly(history: &History) -> BTreeMap<DateTime<Utc>, (i64, i64, i64)> {
    let mut amounts = BTreeMap::new();
    let mut hourly: BTreeMap<DateTime<Utc>, (i64, i64, i64)> = BTreeMap::new();
    for recorded in &history.events {
        match &recorded.event {
            RaffleEvent::TicketsReserved {
                order_id,
                amount_minor,
                ..
            } => {
                amounts.insert(*order_id, *amount_minor);
            }
            RaffleEvent::TicketsIssued {
                order_id,
                numbers,
                at,
                ..
            } => {
                let hour = at.duration_trunc(TimeDelta::hours(1)).unwrap();
                let entry = hourly.entry(hour).or_default();
                entry.0 += numbers.len() as i64;
                entry.1 += 1;
                entry.2 += amounts[order_id];
            }
            _ => {}
        }
    }
    hourly
}

pub fn expected_audit(history: &History) -> BTreeSet<(String, String, i64, String)> {
    history
        .events
        .iter()
        .flat_map(|r| {
            entries(&Envelope {
                raffle_id: history.raffle_id,
                sequence: r.sequence,
                event: r.event.clone(),
                actor: r.actor.clone(),
                recorded_at: r.recorded_at,
                hash: Some(super::history::stored_hash(r.sequence)),
            })
        })
        .map(|e| {
            (
                e.kind.to_owned(),
                e.key,
                e.sequence,
                e.event_type.to_owned(),
            )
        })
        .collect()
}

/// Every read model of every raffle in `histories` equals the fold over its log, and every
/// checkpoint is at the head.
pub async fn assert_read_models_match(pool: &PgPool, histories: &[History]) {
    for history in histories {
        let raffle_id = history.raffle_id;
        for projection in models::all() {
            let checkpoint: i64 = sqlx::query_scalar(
                "SELECT sequence FROM projection_checkpoints \
                 WHERE projection = $1 AND slot = 'live' AND raffle_id = $2",
            )
            .bind(projection.name())
            .bind(raffle_id)
            .fetch_one(pool)
            .await
            .unwrap();
            assert_eq!(
                checkpoint as u64,
                history.head(),
                "{} checkpoint",
                projection.name()
            );
        }
        let orders: Vec<OrderRow> = sqlx::query_as(
            "SELECT order_id, status, buyer_name, buyer_email, buyer_phone, numbers, amount_minor, \
                    currency, payment_method, payment_reference, reserved_at, expires_at, paid_at, \
                    expired_at, released_at, refunded_at, late_payment, refund_required, \
                    amount_refunded_minor, receipt, last_sequence \
             FROM read_orders WHERE raffle_id = $1 ORDER BY order_id",
        )
        .bind(raffle_id)
        .fetch_all(pool)
        .await
        .unwrap();
        let orders: BTreeMap<Uuid, OrderRow> =
            orders.into_iter().map(|o| (o.order_id, o)).collect();
        assert_eq!(orders, expected_orders(history), "orders of {raffle_id}");
        assert_csv_parts_match(pool, history).await;

        let tickets: Vec<(i32, Uuid, String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT number, order_id, status, since FROM read_tickets WHERE raffle_id = $1",
        )
        .bind(raffle_id)
        .fetch_all(pool)
        .await
        .unwrap();
        let tickets: BTreeMap<i32, (Uuid, bool, DateTime<Utc>)> = tickets
            .into_iter()
            .map(|(n, o, s, at)| (n, (o, s == "sold", at)))
            .collect();
        assert_eq!(tickets, expected_tickets(history), "tickets of {raffle_id}");

        let expected = expected_tally(history);
        for table in ["read_raffle_stats", "read_platform_raffles"] {
            let Json(tally): Json<Tally> =
                sqlx::query_scalar(&format!("SELECT tally FROM {table} WHERE raffle_id = $1"))
                    .bind(raffle_id)
                    .fetch_one(pool)
                    .await
                    .unwrap();
            assert_eq!(tally, expected, "{table} of {raffle_id}");
        }
        let hourly: Vec<(DateTime<Utc>, i64, i64, i64)> = sqlx::query_as(
            "SELECT hour, tickets, orders, revenue_minor FROM read_raffle_sales_hourly \
             WHERE raffle_id = $1",
        )
        .bind(raffle_id)
        .fetch_all(pool)
        .await
        .unwrap();
        let hourly: BTreeMap<_, _> = hourly
            .into_iter()
            .map(|(h, a, b, c)| (h, (a, b, c)))
            .collect();
        assert_eq!(
            hourly,
            expected_hourly(history),
            "sales per hour of {raffle_id}"
        );

        // Every key row spelled out as (kind, key, sequence, its event's type); a key row
        // without its event row shows as type `?`.
        let audit: Vec<(String, String, i64, String)> = sqlx::query_as(
            "SELECT 'actor', actor, sequence, event_type FROM read_audit_events \
             WHERE raffle_id = $1 \
             UNION ALL SELECT 'ticket', k.number::text, k.sequence, coalesce(e.event_type, '?') \
             FROM read_audit_tickets k LEFT JOIN read_audit_events e USING (raffle_id, sequence) \
             WHERE k.raffle_id = $1 \
             UNION ALL SELECT 'order', k.order_id::text, k.sequence, coalesce(e.event_type, '?') \
             FROM read_audit_orders k LEFT JOIN read_audit_events e USING (raffle_id, sequence) \
             WHERE k.raffle_id = $1 \
             UNION ALL SELECT 'payment', k.payment_id, k.sequence, coalesce(e.event_type, '?') \
             FROM read_audit_payments k LEFT JOIN read_audit_events e USING (raffle_id, sequence) \
             WHERE k.raffle_id = $1",
        )
        .bind(raffle_id)
        .fetch_all(pool)
        .await
        .unwrap();
        let rows = audit.len();
        let audit: BTreeSet<_> = audit.into_iter().collect();
        assert_eq!(rows, audit.len(), "audit index of {raffle_id}: a row twice");
        assert_eq!(audit, expected_audit(history), "audit index of {raffle_id}");
    }
    // Platform totals: the sum of each organizer's raffles.
    let mut expected: BTreeMap<(String, String), [i64; 7]> = BTreeMap::new();
    for history in histories {
        let t = expected_tally(history);
        let e = expected
            .entry((t.organizer_id.clone(), t.currency.clone()))
            .or_default();
        for (slot, value) in e.iter_mut().zip([
            1,
            i64::from(t.status == "on_sale"),
            t.sold,
            t.reserved,
            t.orders.paid,
            t.reservations,
            t.revenue_minor,
        ]) {
            *slot += value;
        }
    }
    let organizers: Vec<String> = histories.iter().map(|h| h.organizer_id.clone()).collect();
    type TotalsRow = (String, String, i64, i64, i64, i64, i64, i64, i64);
    let rows: Vec<TotalsRow> = sqlx::query_as(
        "SELECT organizer_id, currency, raffles, raffles_on_sale, tickets_sold, tickets_reserved, \
                orders_paid, reservations, revenue_minor FROM read_platform_stats \
         WHERE organizer_id = ANY($1)",
    )
    .bind(&organizers)
    .fetch_all(pool)
    .await
    .unwrap();
    let actual: BTreeMap<(String, String), [i64; 7]> = rows
        .into_iter()
        .map(|(o, c, a, b, d, e, f, g, h)| ((o, c), [a, b, d, e, f, g, h]))
        .collect();
    assert_eq!(actual, expected, "platform totals");
}

/// Each order's precomputed parts of `tickets.csv` lines are what the export would compute
/// from the order's columns, the purchase time as `to_char` prints it in the raffle's zone.
async fn assert_csv_parts_match(pool: &PgPool, history: &History) {
    let config = history.raffle.config().expect("a created raffle");
    let zone = config.time_zone();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT set_config('TimeZone', $1, true)")
        .bind(zone)
        .execute(&mut *tx)
        .await
        .unwrap();
    let digits = csv::minor_digits(config.currency.as_str()).to_string();
    type Parts = (Uuid, Option<String>, Option<String>, Option<String>);
    let differing: Vec<Parts> = sqlx::query_as(&format!(
        "SELECT order_id, csv_buyer, csv_paid_at, csv_payment FROM read_orders \
             WHERE raffle_id = $1 AND (csv_buyer IS DISTINCT FROM {buyer} \
               OR csv_payment IS DISTINCT FROM {payment} \
               OR csv_paid_at IS DISTINCT FROM \
                  CASE WHEN paid_at IS NOT NULL THEN {paid} END)",
        buyer = csv::buyer_part("order_id", "buyer_name", "buyer_phone", "buyer_email"),
        payment = csv::payment_part(
            "amount_minor",
            &digits,
            "currency",
            "payment_method",
            "payment_reference"
        ),
        paid = csv::session_time("paid_at"),
    ))
    .bind(history.raffle_id)
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    assert!(
        differing.is_empty(),
        "csv parts of {} ({zone}): {differing:?}",
        history.raffle_id
    );
}
