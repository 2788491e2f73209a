//! Money out: full and partial refunds, replays of provider refund notices.

use tombola_domain::{
    OrderStatus, RaffleCommand, RaffleConfig, RaffleError, RaffleEvent, RefundOrder, RefundReason,
    TicketState,
};

use crate::common::*;

/// Order 1 paid 3 and 4 ($10) at 60.
fn paid_once(cfg: &RaffleConfig) -> Vec<RaffleEvent> {
    let mut events = on_sale(cfg);
    events.push(reserved(cfg, order(1), &ana(), &[3, 4], 0));
    events.extend(paid(order(1), &[3, 4], "pi_1", 60));
    events
}

fn refund_cmd(amount: Option<i64>) -> RaffleCommand {
    RaffleCommand::Refund(RefundOrder {
        order_id: order(1),
        amount_refunded_minor: amount,
        reason: "requested_by_customer".into(),
        refund_id: Some("re_1".into()),
    })
}

fn refunded(returned_to_pool: bool, secs: i64) -> RaffleEvent {
    RaffleEvent::OrderRefunded {
        order_id: order(1),
        numbers: vec![3, 4],
        amount_minor: 1_000,
        returned_to_pool,
        reason: "requested_by_customer".into(),
        refund_id: Some("re_1".into()),
        at: at(secs),
    }
}

fn partially(amount: i64, secs: i64) -> RaffleEvent {
    RaffleEvent::PaymentPartiallyRefunded {
        order_id: order(1),
        amount_refunded_minor: amount,
        refund_id: Some("re_1".into()),
        at: at(secs),
    }
}

#[test]
fn a_full_refund_while_on_sale_returns_the_numbers_to_the_pool() {
    let cfg = config(10);
    for amount in [None, Some(1_000), Some(1_500)] {
        framework_at(100)
            .given(paid_once(&cfg))
            .when(refund_cmd(amount))
            .then_expect_events(vec![refunded(true, 100)]);
    }
    let mut events = paid_once(&cfg);
    events.push(refunded(true, 100));
    let raffle = replay(&events);
    let view = raffle.order(order(1)).unwrap();
    assert_eq!((view.status, view.issued_at), (OrderStatus::Refunded, None));
    assert_eq!(raffle.ticket_state(3), Some(TicketState::Available));
    assert_eq!((raffle.available_count(), raffle.sold_count()), (10, 0));
    framework_at(110)
        .given(events)
        .when(reserve_cmd(order(2), &bob(), &[3, 4]))
        .then_expect_events(vec![reserved(&cfg, order(2), &bob(), &[3, 4], 110)]);
}

#[test]
fn a_refund_after_sales_close_does_not_return_numbers_for_sale() {
    let cfg = config(10);
    let mut given = paid_once(&cfg);
    given.push(closed(80));
    framework_at(100)
        .given(given.clone())
        .when(refund_cmd(None))
        .then_expect_events(vec![refunded(false, 100)]);
    given.push(refunded(false, 100));
    let raffle = replay(&given);
    assert_eq!(
        raffle.sold_count(),
        0,
        "a refunded ticket cannot win the draw"
    );
    assert_ne!(raffle.ticket_state(3), Some(TicketState::Sold));
}

#[test]
fn refunding_twice_is_a_duplicate() {
    let mut given = paid_once(&config(10));
    given.push(refunded(true, 100));
    for amount in [None, Some(1_000), Some(400), Some(0)] {
        framework_at(200)
            .given(given.clone())
            .when(refund_cmd(amount))
            .then_expect_events(vec![]);
    }
}

#[test]
fn a_partial_refund_keeps_the_tickets_issued() {
    let cfg = config(10);
    framework_at(100)
        .given(paid_once(&cfg))
        .when(refund_cmd(Some(300)))
        .then_expect_events(vec![partially(300, 100)]);
    let mut events = paid_once(&cfg);
    events.push(partially(300, 100));
    let raffle = replay(&events);
    assert_eq!(raffle.order(order(1)).unwrap().status, OrderStatus::Paid);
    assert_eq!(raffle.sold_count(), 2);
}

#[test]
fn a_replayed_or_older_partial_refund_is_a_duplicate() {
    let mut given = paid_once(&config(10));
    given.push(partially(300, 100));
    for amount in [300, 200] {
        framework_at(200)
            .given(given.clone())
            .when(refund_cmd(Some(amount)))
            .then_expect_events(vec![]);
    }
    // The cumulative total grows: a new partial refund, then the rest refunds all.
    framework_at(200)
        .given(given.clone())
        .when(refund_cmd(Some(700)))
        .then_expect_events(vec![partially(700, 200)]);
    given.push(partially(700, 200));
    framework_at(300)
        .given(given)
        .when(refund_cmd(Some(1_000)))
        .then_expect_events(vec![refunded(true, 300)]);
}

#[test]
fn a_refund_amount_must_be_positive() {
    for amount in [0, -1] {
        framework_at(100)
            .given(paid_once(&config(10)))
            .when(refund_cmd(Some(amount)))
            .then_expect_error(RaffleError::InvalidRefundAmount);
    }
}

#[test]
fn unpaid_orders_cannot_be_refunded() {
    let cfg = config(10);
    let mut held = on_sale(&cfg);
    held.push(reserved(&cfg, order(1), &ana(), &[3, 4], 0));
    let mut released_order = held.clone();
    released_order.push(released(order(1), &[3, 4], 10));
    let mut expired_order = held.clone();
    expired_order.push(expired(&[(order(1), &[3, 4])], HOLD));
    for (given, status) in [
        (held, OrderStatus::Reserved),
        (released_order, OrderStatus::Released),
        (expired_order, OrderStatus::Expired),
    ] {
        framework_at(2_000)
            .given(given)
            .when(refund_cmd(None))
            .then_expect_error(RaffleError::InvalidOrderState {
                order_id: order(1),
                status,
            });
    }
    framework_at(100)
        .given(on_sale(&cfg))
        .when(refund_cmd(None))
        .then_expect_error(RaffleError::OrderNotFound { order_id: order(1) });
}

#[test]
fn an_order_owed_a_refund_after_cancellation_is_refunded() {
    let cfg = config(10);
    let mut given = paid_once(&cfg);
    given.push(cancelled("rain", 80));
    framework_at(100)
        .given(given.clone())
        .when(refund_cmd(None))
        .then_expect_events(vec![refunded(false, 100)]);
    given.push(refunded(false, 100));
    let raffle = replay(&given);
    assert_eq!(
        raffle.order(order(1)).unwrap().status,
        OrderStatus::Refunded
    );
    assert_eq!((raffle.available_count(), raffle.sold_count()), (10, 0));
}

#[test]
fn refunding_a_late_payment_leaves_the_new_owner_of_the_numbers_alone() {
    let cfg = config(10);
    let mut given = on_sale(&cfg);
    given.push(reserved(&cfg, order(1), &ana(), &[3, 4], 0));
    given.push(expired(&[(order(1), &[3, 4])], HOLD));
    given.push(reserved(&cfg, order(2), &bob(), &[3, 4], HOLD + 1));
    given.extend(paid(order(2), &[3, 4], "pi_2", HOLD + 2));
    let late = payment(order(1), "pi_1", 1_000);
    given.push(recorded(&late, HOLD + 3));
    given.push(RaffleEvent::RefundRequired {
        order_id: order(1),
        payment_id: Some("pi_1".into()),
        amount_minor: 1_000,
        currency: usd(),
        reason: RefundReason::TicketsTaken,
        at: at(HOLD + 3),
    });
    framework_at(HOLD + 10)
        .given(given.clone())
        .when(refund_cmd(None))
        .then_expect_events(vec![refunded(false, HOLD + 10)]);
    given.push(refunded(false, HOLD + 10));
    let raffle = replay(&given);
    assert_eq!(
        raffle.order(order(1)).unwrap().status,
        OrderStatus::Refunded
    );
    assert_eq!(raffle.order(order(2)).unwrap().status, OrderStatus::Paid);
    assert_eq!(raffle.ticket_state(3), Some(TicketState::Sold));
    assert_eq!(raffle.sold_count(), 2);
}
