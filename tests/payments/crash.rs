//! A worker that dies after the raffle committed the command but before the inbox row was
//! marked done. `PaymentsIn::process_due_then_crash` is `process_due` cut at exactly that
//! point: the command reaches the raffle, then the transaction locking the inbox rows is
//! dropped unsettled. The next pass must find the command already applied.

use chrono::Utc;
use serde_json::json;
use tombola::payments::intake::{Delivery, LEASE};
use tombola::payments::stripe::Stripe;
use tombola::payments::PaymentProvider;

use crate::stripe_events::{event_id, Payment};
use crate::support::{eventually, spawn_app, TestApp, SECRET};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_commit_and_settle_is_repaired_without_a_second_issue() {
    let server = spawn_app().await;
    let raffle = server.open_raffle(json!({})).await;
    let order = server.reserve_order(raffle, &[11, 12], 1).await;
    let payment = Payment::for_order(&order);
    let id = event_id();
    server.deliver_new(&payment.succeeded(&id)).await;

    assert_eq!(server.payments().process_due_then_crash().await.unwrap(), 1);
    // The command committed…
    assert_eq!(server.count_events(&order, "TicketsIssued").await, 1);
    assert_eq!(server.order_status(&order).await, "paid");
    // …but the row never learnt it.
    let row = server.inbox_row(&id).await;
    assert_eq!(
        (row.status.as_str(), row.attempts, row.outcome.as_deref()),
        ("pending", 0, None)
    );

    assert_eq!(server.payments().process_due().await.unwrap(), 1);
    let row = server.inbox_row(&id).await;
    assert_eq!(row.status, "done");
    assert_eq!(row.outcome.as_deref(), Some("duplicate"));
    assert_eq!(row.attempts, 1);
    assert_eq!(row.last_error, None);
    assert_eq!(server.count_events(&order, "TicketsIssued").await, 1);
    assert_eq!(server.count_events(&order, "PaymentRecorded").await, 1);
    assert_eq!(server.order_status(&order).await, "paid");
    assert_eq!(server.payments().process_due().await.unwrap(), 0);
    server.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_a_refund_committed_refunds_once() {
    let server = spawn_app().await;
    let raffle = server.open_raffle(json!({})).await;
    let order = server.reserve_order(raffle, &[21], 1).await;
    let payment = Payment::for_order(&order);
    server.deliver_new(&payment.succeeded(&event_id())).await;
    server.process_all().await;
    let refund = event_id();
    server
        .deliver_new(&payment.refunded(&refund, payment.amount))
        .await;

    assert_eq!(server.payments().process_due_then_crash().await.unwrap(), 1);
    assert_eq!(server.count_events(&order, "OrderRefunded").await, 1);
    assert_eq!(server.inbox_row(&refund).await.status, "pending");

    assert_eq!(server.process_all().await, 1);
    let row = server.inbox_row(&refund).await;
    assert_eq!(row.status, "done");
    assert_eq!(row.outcome.as_deref(), Some("duplicate"));
    assert_eq!(server.count_events(&order, "OrderRefunded").await, 1);
    assert_eq!(server.order_status(&order).await, "refunded");
    server.teardown().await;
}

/// A node stores a delivery, acknowledges it and hands it to its own workers in memory, then
/// dies before they apply it. Its row is leased to that node, so pollers leave it alone at
/// first (no double work while the node is alive); once the lease runs out, a poller
/// applies it, and the tickets are issued once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_handed_to_workers_that_died_is_applied_once_its_lease_runs_out() {
    let server = spawn_app().await;
    let raffle = server.open_raffle(json!({})).await;
    let order = server.reserve_order(raffle, &[31, 32], 1).await;
    let payment = Payment::for_order(&order);
    let id = event_id();

    let (handoff, mut workers) = tokio::sync::mpsc::channel(8);
    server.payments().intake.hand_off_to(handoff);
    let stored_at = Utc::now();
    assert!(store_through_intake(&server, payment.succeeded(&id)).await);
    let handed = workers.recv().await.expect("handed to the workers");
    assert_eq!(handed.event.event_id, id);
    // The node dies here: its workers never apply what they were handed.
    drop((handed, workers));

    let row = server.inbox_row(&id).await;
    assert_eq!((row.status.as_str(), row.attempts), ("pending", 0));
    let lease = row.next_attempt_at - stored_at;
    assert!(
        lease > chrono::Duration::from_std(LEASE).unwrap() - chrono::Duration::seconds(5),
        "leased for {lease}"
    );
    assert_eq!(
        server.payments().process_due().await.unwrap(),
        0,
        "a leased row is not due"
    );
    assert_eq!(server.count_events(&order, "TicketsIssued").await, 0);

    server.make_due(&id).await; // the lease runs out
    assert_eq!(server.payments().process_due().await.unwrap(), 1);
    let row = server.inbox_row(&id).await;
    assert_eq!(
        (row.status.as_str(), row.outcome.as_deref()),
        ("done", Some("tickets_issued"))
    );
    assert_eq!(server.count_events(&order, "TicketsIssued").await, 1);
    assert_eq!(server.order_status(&order).await, "paid");

    // With the workers gone, new deliveries are no longer leased: pollers take them at once.
    let refund = event_id();
    assert!(store_through_intake(&server, payment.refunded(&refund, payment.amount)).await);
    assert_eq!(server.payments().process_due().await.unwrap(), 1);
    assert_eq!(server.inbox_row(&refund).await.status, "done");
    server.teardown().await;
}

/// Stores `event` through the intake, as the webhook handler does (verified and parsed), on
/// the node whose intake the test holds.
async fn store_through_intake(server: &TestApp, event: serde_json::Value) -> bool {
    let body = event.to_string();
    let event = Stripe::new(vec![SECRET.to_owned()], 300)
        .parse(body.as_bytes())
        .expect("a valid event");
    server
        .payments()
        .intake
        .submit(Delivery::new("stripe", event, body))
        .await
        .expect("stored")
}

/// Whether the row is due now (its lease, if any, is over).
async fn is_due(server: &TestApp, event_id: &str) -> bool {
    server.inbox_row(event_id).await.next_attempt_at <= Utc::now()
}

/// Waits (up to 10 s) for the rows to be due: a release happens after the answers.
async fn wait_until_due(server: &TestApp, event_ids: &[&str]) {
    eventually(
        std::time::Duration::from_secs(10),
        "the release",
        || async {
            for event_id in event_ids {
                if !is_due(server, event_id).await {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
}

/// Waits (up to 10 s) until an append waits for a lock: the worker is stuck in it.
async fn wait_for_blocked_append(server: &TestApp) {
    eventually(
        std::time::Duration::from_secs(10),
        "an append stuck on the lock",
        || async {
            let blocked: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
             WHERE wait_event_type = 'Lock' AND query LIKE 'WITH appended%'",
            )
            .fetch_one(server.pool())
            .await
            .unwrap();
            (blocked > 0).then_some(())
        },
    )
    .await;
}

/// When the workers' channel is full, a new delivery is not left to wait out its lease:
/// it is due at once, and a poller applies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_the_workers_cannot_take_goes_to_the_pollers_at_once() {
    let server = spawn_app().await;
    let raffle = server.open_raffle(json!({})).await;
    let first = server.reserve_order(raffle, &[41], 1).await;
    let second = server.reserve_order(raffle, &[42], 1).await;
    // Room for one; the "workers" never read.
    let (handoff, _workers) = tokio::sync::mpsc::channel(1);
    server.payments().intake.hand_off_to(handoff);

    let (handed, overflow) = (event_id(), event_id());
    assert!(store_through_intake(&server, Payment::for_order(&first).succeeded(&handed)).await);
    assert!(store_through_intake(&server, Payment::for_order(&second).succeeded(&overflow)).await);

    wait_until_due(&server, &[&overflow]).await;
    assert!(
        !is_due(&server, &handed).await,
        "the handed delivery stays leased"
    );
    assert_eq!(server.payments().process_due().await.unwrap(), 1);
    assert_eq!(server.inbox_row(&overflow).await.status, "done");
    assert_eq!(server.count_events(&second, "TicketsIssued").await, 1);
    assert_eq!(server.count_events(&first, "TicketsIssued").await, 0);
    server.teardown().await;
}

/// Workers that stop with deliveries still waiting in their channel release those rows, so
/// that any node's pollers take them now rather than after the lease. The one being
/// applied when the stop came is finished and settled; everything is issued once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_workers_release_the_deliveries_they_had_not_started() {
    let server = spawn_app().await;
    let raffle = server.open_raffle(json!({})).await;
    let mut orders = Vec::new();
    for number in 51..54 {
        orders.push(server.reserve_order(raffle, &[number], 1).await);
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let workers = server.payments().spawn_workers(1, stop.clone());
    // Appends wait while the events table is locked: the one worker is stuck on the first
    // delivery, and the next two wait in the channel.
    let mut blocker = server.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE events IN SHARE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let ids: Vec<String> = orders.iter().map(|_| event_id()).collect();
    for (i, (order, id)) in orders.iter().zip(&ids).enumerate() {
        assert!(store_through_intake(&server, Payment::for_order(order).succeeded(id)).await);
        if i == 0 {
            wait_for_blocked_append(&server).await;
        }
    }
    assert!(!is_due(&server, &ids[0]).await);

    stop.cancel();
    wait_until_due(&server, &[&ids[1], &ids[2]]).await;
    assert!(
        !is_due(&server, &ids[0]).await,
        "the one in progress keeps its lease"
    );
    blocker.rollback().await.unwrap();
    workers.wait().await;

    assert_eq!(server.inbox_row(&ids[0]).await.status, "done");
    server.process_all().await;
    for (order, id) in orders.iter().zip(&ids) {
        assert_eq!(server.inbox_row(id).await.status, "done");
        assert_eq!(server.count_events(order, "TicketsIssued").await, 1);
    }
    server.teardown().await;
}
