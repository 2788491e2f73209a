//! What each kind of Stripe event does to an order, including events that arrive out of
//! order. Deliveries go through HTTP; the test runs the inbox worker itself, so it knows
//! what has been applied at each step.

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::json;
use tombola_domain::{Currency, RaffleEvent};

use crate::stripe_events::{event, event_id, unknown_event, Payment};
use crate::support::{spawn_app, Order, TestApp, PRICE};

async fn server() -> TestApp {
    spawn_app().await
}

/// Delivers `event`, runs the worker, and returns the delivery's settled inbox row.
async fn apply(server: &TestApp, event: &serde_json::Value) -> crate::support::InboxRow {
    server.deliver_new(event).await;
    server.process_all().await;
    server
        .inbox_row(event["id"].as_str().expect("event id"))
        .await
}

fn done(row: &crate::support::InboxRow) -> Option<&str> {
    assert_eq!(row.status, "done", "{row:?}");
    row.outcome.as_deref()
}

async fn pay(server: &TestApp, payment: &Payment, order: &Order) {
    let row = apply(server, &payment.succeeded(&event_id())).await;
    assert_eq!(done(&row), Some("tickets_issued"));
    assert_eq!(server.order_status(order).await, "paid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_then_a_success_issues_and_a_late_failure_does_not_undo_it() {
    let server = server().await;
    let raffle = server.open_raffle(json!({})).await;
    let order = server.reserve_order(raffle, &[1, 2], 1).await;
    let payment = Payment::for_order(&order);

    // The first card is declined: recorded, the hold stays for another try.
    let row = apply(&server, &payment.failed(&event_id())).await;
    assert_eq!(done(&row), Some("failure_recorded"));
    assert_eq!(server.order_status(&order).await, "reserved");
    assert_eq!(server.count_events(&order, "PaymentFailed").await, 1);

    pay(&server, &payment, &order).await;

    // A failure notice about an earlier attempt, delivered after the success.
    let row = apply(&server, &payment.failed(&event_id())).await;
    assert_eq!(row.status, "done");
    let read = server.order_view(&order).await;
    assert_eq!(read["status"], "paid");
    assert_eq!(read["numbers"], json!([1, 2]));
    assert_eq!(server.count_events(&order, "TicketsIssued").await, 1);
    assert_eq!(server.count_events(&order, "OrderRefunded").await, 0);
    server.teardown().await;
}

fn hold_extensions(events: &[RaffleEvent]) -> Vec<DateTime<Utc>> {
    events
        .iter()
        .filter_map(|e| match e {
            RaffleEvent::HoldExtended { expires_at, .. } => Some(*expires_at),
            _ => None,
        })
        .collect()
}

fn expires_at(read: &serde_json::Value) -> DateTime<Utc> {
    serde_json::from_value(read["expires_at"].clone()).expect("expires_at")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_payment_extends_the_hold_up_to_the_raffles_maximum() {
    let server = server().await;
    let raffle = server
        .open_raffle(json!({"hold_minutes": 15, "max_hold_minutes": 60}))
        .await;

    // No date given (`processing`): as long as the raffle allows.
    let card = server.reserve_order(raffle, &[1], 1).await;
    // (Whole seconds: the start is rounded down, the end up.)
    let hold = card.expires_at - card.reserved_at;
    assert!(hold >= Duration::minutes(15) && hold <= Duration::seconds(901));
    let payment = Payment::for_order(&card);
    let row = apply(&server, &payment.processing(&event_id())).await;
    assert_eq!(done(&row), Some("hold_extended"));
    let cap = card.reserved_at + Duration::minutes(60);
    assert_eq!(hold_extensions(&server.order_events(&card).await), [cap]);
    let read = server.order_view(&card).await;
    assert_eq!(read["status"], "reserved");
    assert_eq!(expires_at(&read), cap);
    // The same news again changes nothing; then the money arrives, within the hold.
    let row = apply(&server, &payment.processing(&event_id())).await;
    assert_eq!(done(&row), Some("duplicate"));
    assert_eq!(server.count_events(&card, "HoldExtended").await, 1);
    pay(&server, &payment, &card).await;
    let issued_late = server
        .order_events(&card)
        .await
        .iter()
        .any(|e| matches!(e, RaffleEvent::TicketsIssued { late: true, .. }));
    assert!(!issued_late);

    // A voucher payable for 30 minutes: the hold follows it.
    let voucher = server.reserve_order(raffle, &[2], 2).await;
    let due = Utc::now().timestamp() + 30 * 60;
    let row = apply(
        &server,
        &Payment::for_order(&voucher).voucher_issued(&event_id(), due),
    )
    .await;
    assert_eq!(done(&row), Some("hold_extended"));
    let due = Utc.timestamp_opt(due, 0).single().expect("instant");
    assert_eq!(hold_extensions(&server.order_events(&voucher).await), [due]);
    assert_eq!(expires_at(&server.order_view(&voucher).await), due);

    // A voucher payable for 5 hours: capped at the raffle's maximum hold.
    let long = server.reserve_order(raffle, &[3], 3).await;
    let row = apply(
        &server,
        &Payment::for_order(&long).voucher_issued(&event_id(), Utc::now().timestamp() + 5 * 3600),
    )
    .await;
    assert_eq!(done(&row), Some("hold_extended"));
    let cap = long.reserved_at + Duration::minutes(60);
    assert_eq!(hold_extensions(&server.order_events(&long).await), [cap]);
    assert_eq!(expires_at(&server.order_view(&long).await), cap);
    server.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_refund_refunds_the_order_and_frees_its_numbers() {
    let server = server().await;
    let raffle = server.open_raffle(json!({})).await;
    let order = server.reserve_order(raffle, &[4, 5], 1).await;
    let payment = Payment::for_order(&order);
    pay(&server, &payment, &order).await;

    let row = apply(&server, &payment.refunded(&event_id(), payment.amount)).await;
    assert_eq!(done(&row), Some("refunded"));
    assert_eq!(server.order_status(&order).await, "refunded");
    let refunds: Vec<_> = server
        .order_events(&order)
        .await
        .into_iter()
        .filter_map(|e| match e {
            RaffleEvent::OrderRefunded {
                numbers,
                amount_minor,
                returned_to_pool,
                refund_id,
                ..
            } => Some((numbers, amount_minor, returned_to_pool, refund_id)),
            _ => None,
        })
        .collect();
    assert_eq!(
        refunds,
        vec![(vec![4, 5], 2 * PRICE, true, Some(payment.charge_id.clone()))]
    );
    // Sales are open, so the numbers are for sale again.
    server.reserve_order(raffle, &[4, 5], 2).await;
    server.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_refund_keeps_the_order_paid() {
    let server = server().await;
    let raffle = server.open_raffle(json!({})).await;
    let order = server.reserve_order(raffle, &[6, 7], 1).await;
    let payment = Payment::for_order(&order);
    pay(&server, &payment, &order).await;

    let row = apply(&server, &payment.refunded(&event_id(), 200)).await;
    assert_eq!(done(&row), Some("partially_refunded"));
    let partial: Vec<_> = server
        .order_events(&order)
        .await
        .into_iter()
        .filter_map(|e| match e {
            RaffleEvent::PaymentPartiallyRefunded {
                amount_refunded_minor,
                refund_id,
                ..
            } => Some((amount_refunded_minor, refund_id)),
            _ => None,
        })
        .collect();
    assert_eq!(partial, vec![(200, Some(payment.charge_id.clone()))]);
    let read = server.order_view(&order).await;
    assert_eq!(read["status"], "paid");
    assert_eq!(read["numbers"], json!([6, 7]));
    assert_eq!(server.count_events(&order, "OrderRefunded").await, 0);

    // The same cumulative amount reported again is no news.
    let row = apply(&server, &payment.refunded(&event_id(), 200)).await;
    assert_eq!(done(&row), Some("duplicate"));
    assert_eq!(
        server
            .count_events(&order, "PaymentPartiallyRefunded")
            .await,
        1
    );

    // The rest goes back later: `amount_refunded` reaches the amount.
    let row = apply(&server, &payment.refunded(&event_id(), payment.amount)).await;
    assert_eq!(done(&row), Some("refunded"));
    assert_eq!(server.order_status(&order).await, "refunded");
    server.teardown().await;
}

/// Asserts `event_id` is waiting for a later attempt, not settled.
async fn assert_retrying(server: &TestApp, event_id: &str) {
    let row = server.inbox_row(event_id).await;
    assert_eq!(row.status, "pending", "{row:?}");
    assert!(row.attempts > 0, "{row:?}");
    assert!(row.next_attempt_at > Utc::now(), "{row:?}");
    assert!(row.last_error.is_some(), "{row:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_before_its_payment_is_known_is_retried_not_lost() {
    let server = server().await;
    let raffle = server.open_raffle(json!({})).await;
    let order = server.reserve_order(raffle, &[8], 1).await;
    let payment = Payment::for_order(&order);

    // The refund's charge names only the PaymentIntent, which nothing has mentioned yet.
    let refund = event_id();
    server
        .deliver_new(&payment.refunded(&refund, payment.amount))
        .await;
    assert_eq!(server.process_all().await, 1);
    assert_retrying(&server, &refund).await;
    assert_eq!(server.order_status(&order).await, "reserved");
    server.postpone(&refund).await;

    pay(&server, &payment, &order).await;
    assert_retrying(&server, &refund).await;

    server.make_due(&refund).await;
    assert_eq!(server.process_all().await, 1);
    assert_eq!(done(&server.inbox_row(&refund).await), Some("refunded"));
    assert_eq!(server.order_status(&order).await, "refunded");
    assert_eq!(server.count_events(&order, "TicketsIssued").await, 1);
    assert_eq!(server.count_events(&order, "OrderRefunded").await, 1);
    server.teardown().await;
}

/// Both deliveries are in the inbox, and the worker reaches the refund first (it was
/// received first). The order is known through the stored payment, but not paid yet: the
/// refund must wait for it, not be rejected for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_processed_before_its_stored_payment_is_retried_not_lost() {
    let server = server().await;
    let raffle = server.open_raffle(json!({})).await;
    let order = server.reserve_order(raffle, &[9], 1).await;
    let payment = Payment::for_order(&order);
    let refund = event_id();
    server
        .deliver_new(&payment.refunded(&refund, payment.amount))
        .await;
    let succeeded = event_id();
    server.deliver_new(&payment.succeeded(&succeeded)).await;

    assert_eq!(server.process_all().await, 2);
    assert_retrying(&server, &refund).await;
    assert_eq!(
        done(&server.inbox_row(&succeeded).await),
        Some("tickets_issued")
    );
    assert_eq!(server.order_status(&order).await, "paid");

    server.make_due(&refund).await;
    assert_eq!(server.process_all().await, 1);
    assert_eq!(done(&server.inbox_row(&refund).await), Some("refunded"));
    assert_eq!(server.order_status(&order).await, "refunded");
    server.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_of_the_wrong_amount_or_currency_is_flagged_and_issues_nothing() {
    let server = server().await;
    let raffle = server.open_raffle(json!({})).await;
    let usd = Currency::parse("USD").expect("USD");
    for (number, amount, currency) in [(10, PRICE - 1, "usd"), (11, PRICE, "eur")] {
        let order = server.reserve_order(raffle, &[number], number).await;
        let mut payment = Payment::for_order(&order);
        payment.amount = amount;
        payment.currency = currency.into();
        let row = apply(&server, &payment.succeeded(&event_id())).await;
        assert_eq!(done(&row), Some("payment_flagged"), "{amount} {currency}");
        let flags: Vec<_> = server
            .order_events(&order)
            .await
            .into_iter()
            .filter_map(|e| match e {
                RaffleEvent::PaymentFlagged {
                    payment_id,
                    reason,
                    expected_amount_minor,
                    expected_currency,
                    ..
                } => Some((payment_id, reason, expected_amount_minor, expected_currency)),
                _ => None,
            })
            .collect();
        assert_eq!(
            flags,
            vec![(
                payment.intent_id.clone(),
                "amount_mismatch".to_owned(),
                PRICE,
                usd
            )]
        );
        assert_eq!(server.count_events(&order, "TicketsIssued").await, 0);
        assert_eq!(server.order_status(&order).await, "reserved");
    }
    server.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_event_type_is_acknowledged_and_ignored() {
    let server = server().await;
    let raffle = server.open_raffle(json!({})).await;
    let order = server.reserve_order(raffle, &[12], 1).await;
    let events_before = server.raffle_event_count(raffle).await;

    let plan = event_id();
    server.deliver_new(&unknown_event(&plan)).await;
    // A PaymentIntent event Tombola has no use for, about a real order.
    let created = event_id();
    let intent = Payment::for_order(&order).intent("requires_payment_method");
    server
        .deliver_new(&event(&created, "payment_intent.created", intent))
        .await;

    for id in [&plan, &created] {
        let row = server.inbox_row(id).await;
        assert_eq!(row.status, "ignored", "{row:?}");
        assert_eq!(row.attempts, 0);
        assert_eq!(row.payment_id, None);
    }
    assert_eq!(server.process_all().await, 0, "ignored rows are never due");
    let again = server.deliver(&unknown_event(&plan)).await;
    assert_eq!(again.body, json!({"received": true, "duplicate": true}));
    assert_eq!(server.inbox_count().await, 2);
    assert_eq!(server.raffle_event_count(raffle).await, events_before);
    assert_eq!(server.order_status(&order).await, "reserved");
    server.teardown().await;
}

/// Issue 18, item 7: a payment for an unknown order and one of the wrong amount are on the
/// operator's one list (the admin API's and the CLI's), and the order view shows its flag;
/// a payment that issued its tickets is not on the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_that_need_an_operator_are_listed_and_flagged_on_the_order() {
    let server = server().await;
    let raffle = server.open_raffle(json!({})).await;
    let fine = server.reserve_order(raffle, &[1], 1).await;
    pay(&server, &Payment::for_order(&fine), &fine).await;

    let short = server.reserve_order(raffle, &[2], 2).await;
    let mut underpaid = Payment::for_order(&short);
    underpaid.amount = PRICE - 1;
    let underpaid_event = underpaid.succeeded(&event_id());
    assert_eq!(
        done(&apply(&server, &underpaid_event).await),
        Some("payment_flagged")
    );

    let mut stray = Payment::for_order(&fine);
    stray.order = uuid::Uuid::now_v7();
    let stray_event = stray.succeeded(&event_id());
    assert_eq!(
        done(&apply(&server, &stray_event).await),
        Some("refund_required")
    );

    let list = server
        .call(reqwest::Method::GET, "/v1/payments/needs-action", None)
        .await;
    let listed: Vec<(&str, &str)> = list["payments"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|p| {
            (
                p["event_id"].as_str().unwrap(),
                p["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![
            (stray_event["id"].as_str().unwrap(), "refund_required"),
            (underpaid_event["id"].as_str().unwrap(), "payment_flagged"),
        ]
    );
    let cli = tombola::payments::inbox::list(
        &tombola::store::Store::new(server.pool().clone()),
        tombola::payments::inbox::InboxFilter::NeedsAction,
        10,
    )
    .await
    .expect("the CLI's list");
    assert_eq!(cli.len(), 2);

    let order = server.order_view(&short).await;
    assert_eq!(order["status"], "reserved");
    assert_eq!(order["flags"][0]["kind"], "payment_flagged");
    assert_eq!(order["flags"][0]["reason"], "amount_mismatch");
    assert_eq!(
        order["flags"][0]["payment_id"],
        underpaid.intent_id.as_str()
    );
    assert_eq!(server.order_view(&fine).await["flags"], json!([]));
    server.teardown().await;
}
