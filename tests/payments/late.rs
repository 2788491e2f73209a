//! Payments that arrive after their hold expired. The server runs on a `ManualClock`: the
//! test moves time past the one-minute hold and has the raffle expire due holds, with no
//! sleeping.

use std::sync::Arc;

use chrono::{Duration, Utc};
use serde_json::json;
use tombola::clock::ManualClock;
use tombola::engine::CommandMeta;
use tombola_domain::{RaffleCommand, RaffleEvent, RefundReason};
use uuid::Uuid;

use crate::stripe_events::{event_id, Payment};
use crate::support::{Order, TestApp};

async fn server_with_clock() -> (TestApp, Arc<ManualClock>, Uuid) {
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let server = TestApp::start(clock.clone(), |_| {}).await;
    let raffle = server.open_raffle(json!({"hold_minutes": 1})).await;
    (server, clock, raffle)
}

async fn expire_holds(server: &TestApp, clock: &ManualClock, order: &Order) {
    clock.advance(Duration::minutes(2));
    server
        .engine
        .execute(
            order.raffle,
            RaffleCommand::ExpireDueHolds,
            CommandMeta::system("test-expiry"),
        )
        .await
        .expect("expire due holds");
    assert_eq!(server.order_status(order).await, "expired");
}

fn issued(events: &[RaffleEvent]) -> Vec<&RaffleEvent> {
    events
        .iter()
        .filter(|e| matches!(e, RaffleEvent::TicketsIssued { .. }))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_payment_whose_numbers_are_still_free_issues_them_marked_late() {
    let (server, clock, raffle) = server_with_clock().await;
    let order = server.reserve_order(raffle, &[3, 4], 1).await;
    expire_holds(&server, &clock, &order).await;

    let id = event_id();
    server
        .deliver_new(&Payment::for_order(&order).succeeded(&id))
        .await;
    assert_eq!(server.process_all().await, 1);

    let row = server.inbox_row(&id).await;
    assert_eq!(row.status, "done");
    assert_eq!(row.outcome.as_deref(), Some("tickets_issued_late"));
    let events = server.order_events(&order).await;
    match issued(&events).as_slice() {
        [RaffleEvent::TicketsIssued {
            numbers,
            late,
            replaced_numbers,
            ..
        }] => {
            assert_eq!(numbers, &[3, 4]);
            assert!(late, "issued after the hold ended");
            assert!(replaced_numbers.is_empty());
        }
        other => panic!("expected one TicketsIssued, got {other:?}"),
    }
    assert_eq!(server.count_events(&order, "TicketsIssued").await, 1);
    let read = server.order_view(&order).await;
    assert_eq!(read["status"], "paid");
    assert_eq!(read["numbers"], json!([3, 4]));
    server.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_payment_whose_numbers_were_resold_requires_a_refund_and_issues_nothing() {
    let (server, clock, raffle) = server_with_clock().await;
    let first = server.reserve_order(raffle, &[5, 6], 1).await;
    expire_holds(&server, &clock, &first).await;
    // Meanwhile another buyer takes the same numbers, and pays.
    let second = server.reserve_order(raffle, &[5, 6], 2).await;
    let second_payment = Payment::for_order(&second);
    server
        .deliver_new(&second_payment.succeeded(&event_id()))
        .await;
    server.process_all().await;
    assert_eq!(server.order_status(&second).await, "paid");

    let late_payment = Payment::for_order(&first);
    let id = event_id();
    server.deliver_new(&late_payment.succeeded(&id)).await;
    assert_eq!(server.process_all().await, 1);

    let row = server.inbox_row(&id).await;
    assert_eq!(row.status, "done");
    assert_eq!(row.outcome.as_deref(), Some("refund_required"));
    let events = server.order_events(&first).await;
    assert!(issued(&events).is_empty(), "{events:?}");
    let refunds: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            RaffleEvent::RefundRequired {
                payment_id,
                amount_minor,
                reason,
                ..
            } => Some((payment_id.clone(), *amount_minor, *reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        refunds,
        vec![(
            Some(late_payment.intent_id.clone()),
            first.amount,
            RefundReason::TicketsTaken
        )]
    );
    assert_eq!(server.order_status(&first).await, "refund_required");

    // Stripe sends another event about the same payment: nothing more happens.
    let again = event_id();
    server.deliver_new(&late_payment.succeeded(&again)).await;
    server.process_all().await;
    assert_eq!(
        server.inbox_row(&again).await.outcome.as_deref(),
        Some("duplicate")
    );
    assert_eq!(server.count_events(&first, "RefundRequired").await, 1);
    assert_eq!(server.count_events(&first, "PaymentRecorded").await, 1);
    assert_eq!(server.count_events(&first, "TicketsIssued").await, 0);

    // The numbers belong to the second buyer alone, issued once.
    assert_eq!(server.count_events(&second, "TicketsIssued").await, 1);
    let read = server.order_view(&second).await;
    assert_eq!(read["status"], "paid");
    assert_eq!(read["numbers"], json!([5, 6]));
    let issued_rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_id = $1 AND event_type = 'TicketsIssued'",
    )
    .bind(raffle.to_string())
    .fetch_one(server.pool())
    .await
    .expect("count");
    assert_eq!(issued_rows, 1);
    server.teardown().await;
}
