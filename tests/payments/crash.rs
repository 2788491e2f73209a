//! A worker that dies after the raffle committed the command but before the inbox row was
//! marked done. `PaymentsIn::process_due_then_crash` is `process_due` cut at exactly that
//! point: the command reaches the raffle, then the transaction locking the inbox rows is
//! dropped unsettled. The next pass must find the command already applied.

use serde_json::json;

use crate::stripe_events::{event_id, Payment};
use crate::support::{Options, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_commit_and_settle_is_repaired_without_a_second_issue() {
    let server = TestServer::start(Options::default()).await;
    let raffle = server.open_raffle(json!({})).await;
    let order = server.reserve(raffle, &[11, 12], 1).await;
    let payment = Payment::for_order(&order);
    let id = event_id();
    server.deliver_new(&payment.succeeded(&id)).await;

    assert_eq!(server.payments.process_due_then_crash().await.unwrap(), 1);
    // The command committed…
    assert_eq!(server.count_events(&order, "TicketsIssued").await, 1);
    assert_eq!(server.order_status(&order).await, "paid");
    // …but the row never learnt it.
    let row = server.inbox_row(&id).await;
    assert_eq!(
        (row.status.as_str(), row.attempts, row.outcome.as_deref()),
        ("pending", 0, None)
    );

    assert_eq!(server.payments.process_due().await.unwrap(), 1);
    let row = server.inbox_row(&id).await;
    assert_eq!(row.status, "done");
    assert_eq!(row.outcome.as_deref(), Some("duplicate"));
    assert_eq!(row.attempts, 1);
    assert_eq!(row.last_error, None);
    assert_eq!(server.count_events(&order, "TicketsIssued").await, 1);
    assert_eq!(server.count_events(&order, "PaymentRecorded").await, 1);
    assert_eq!(server.order_status(&order).await, "paid");
    assert_eq!(server.payments.process_due().await.unwrap(), 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_a_refund_committed_refunds_once() {
    let server = TestServer::start(Options::default()).await;
    let raffle = server.open_raffle(json!({})).await;
    let order = server.reserve(raffle, &[21], 1).await;
    let payment = Payment::for_order(&order);
    server.deliver_new(&payment.succeeded(&event_id())).await;
    server.process_all().await;
    let refund = event_id();
    server
        .deliver_new(&payment.refunded(&refund, payment.amount))
        .await;

    assert_eq!(server.payments.process_due_then_crash().await.unwrap(), 1);
    assert_eq!(server.count_events(&order, "OrderRefunded").await, 1);
    assert_eq!(server.inbox_row(&refund).await.status, "pending");

    assert_eq!(server.process_all().await, 1);
    let row = server.inbox_row(&refund).await;
    assert_eq!(row.status, "done");
    assert_eq!(row.outcome.as_deref(), Some("duplicate"));
    assert_eq!(server.count_events(&order, "OrderRefunded").await, 1);
    assert_eq!(server.order_status(&order).await, "refunded");
    server.stop().await;
}
