//! Money in: provider payments, payment failures, manual confirmations. Exactly-once
//! issuance: a payment seen twice issues nothing, and money is never silently dropped.

use tombola_domain::{
    ConfirmManualPayment, Currency, LatePaymentPolicy, OrderStatus, RaffleCommand, RaffleConfig,
    RaffleError, RaffleEvent, RaffleStatus, RecordPaymentFailure, RefundReason, TicketState,
};
use uuid::Uuid;

use crate::common::*;

/// Order 1 holds 3 and 4 for Ana from t0.
fn held(cfg: &RaffleConfig) -> Vec<RaffleEvent> {
    let mut events = on_sale(cfg);
    events.push(reserved(cfg, order(1), &ana(), &[3, 4], 0));
    events
}

fn paid_once(cfg: &RaffleConfig) -> Vec<RaffleEvent> {
    let mut events = held(cfg);
    events.extend(paid(order(1), &[3, 4], "pi_1", 60));
    events
}

/// Order 1's hold on 3 and 4 expired and order 2 (Bob) holds 3 to 10 now.
fn resold(cfg: &RaffleConfig) -> Vec<RaffleEvent> {
    let mut events = held(cfg);
    events.push(expired(&[(order(1), &[3, 4])], HOLD));
    events.push(reserved(
        cfg,
        order(2),
        &bob(),
        &[3, 4, 5, 6, 7, 8, 9, 10],
        HOLD + 10,
    ));
    events
}

fn refund_required(
    payment_id: Option<&str>,
    amount_minor: i64,
    reason: RefundReason,
    secs: i64,
) -> RaffleEvent {
    RaffleEvent::RefundRequired {
        order_id: order(1),
        payment_id: payment_id.map(str::to_owned),
        amount_minor,
        currency: usd(),
        reason,
        at: at(secs),
    }
}

fn flagged(
    order_id: Uuid,
    payment_id: &str,
    reason: &str,
    expected: i64,
    secs: i64,
) -> RaffleEvent {
    RaffleEvent::PaymentFlagged {
        order_id,
        payment_id: payment_id.into(),
        reason: reason.into(),
        expected_amount_minor: expected,
        expected_currency: usd(),
        at: at(secs),
    }
}

fn late_issued(numbers: &[u32], replaced: &[u32], secs: i64) -> RaffleEvent {
    RaffleEvent::TicketsIssued {
        order_id: order(1),
        numbers: numbers.to_vec(),
        late: true,
        replaced_numbers: replaced.to_vec(),
        at: at(secs),
    }
}

fn manual_cmd(order_id: Uuid) -> RaffleCommand {
    RaffleCommand::ConfirmManualPayment(ConfirmManualPayment {
        order_id,
        method: "cash".into(),
        reference: "receipt 17".into(),
        confirmed_by: "organizer@example.com".into(),
    })
}

fn manual_confirmed(amount_minor: i64, secs: i64) -> RaffleEvent {
    RaffleEvent::ManualPaymentConfirmed {
        order_id: order(1),
        method: "cash".into(),
        reference: "receipt 17".into(),
        confirmed_by: "organizer@example.com".into(),
        amount_minor,
        currency: usd(),
        at: at(secs),
    }
}

// ----- RecordPayment -----

#[test]
fn a_payment_of_the_right_amount_issues_the_held_numbers() {
    let cfg = config(10);
    let p = payment(order(1), "pi_1", 1_000);
    framework_at(60)
        .given(held(&cfg))
        .when(RaffleCommand::RecordPayment(p.clone()))
        .then_expect_events(vec![recorded(&p, 60), issued(order(1), &[3, 4], 60)]);

    let raffle = replay(&paid_once(&cfg));
    let view = raffle.order(order(1)).unwrap();
    assert_eq!(view.status, OrderStatus::Paid);
    assert_eq!(view.issued_at, Some(at(60)));
    assert_eq!(raffle.ticket_state(3), Some(TicketState::Sold));
    assert_eq!((raffle.sold_count(), raffle.reserved_count()), (2, 0));
    assert_eq!(raffle.next_expiry(), None, "a paid order never expires");
}

#[test]
fn the_same_payment_id_twice_is_a_duplicate() {
    let cfg = config(10);
    // Redelivered as is, or as another event of the same payment (charge vs intent).
    let mut other_event = payment(order(1), "pi_1", 1_000);
    other_event.provider_event_id = "evt_other".into();
    for command in [
        pay_cmd(order(1), "pi_1", 1_000),
        RaffleCommand::RecordPayment(other_event),
        pay_cmd(order(1), "pi_1", 999),
    ] {
        framework_at(120)
            .given(paid_once(&cfg))
            .when(command)
            .then_expect_events(vec![]);
    }
}

#[test]
fn a_second_payment_for_a_paid_order_must_be_refunded() {
    let cfg = config(10);
    for amount in [1_000, 1] {
        let p = payment(order(1), "pi_2", amount);
        framework_at(120)
            .given(paid_once(&cfg))
            .when(RaffleCommand::RecordPayment(p.clone()))
            .then_expect_events(vec![
                recorded(&p, 120),
                refund_required(Some("pi_2"), amount, RefundReason::AlreadyPaid, 120),
            ]);
    }
    let p = payment(order(1), "pi_2", 1_000);
    let mut events = paid_once(&cfg);
    events.push(recorded(&p, 120));
    events.push(refund_required(
        Some("pi_2"),
        1_000,
        RefundReason::AlreadyPaid,
        120,
    ));
    let raffle = replay(&events);
    assert_eq!(raffle.order(order(1)).unwrap().status, OrderStatus::Paid);
    assert_eq!(raffle.sold_count(), 2);
    // And that second payment, redelivered, is a duplicate too.
    framework_at(130)
        .given(events)
        .when(RaffleCommand::RecordPayment(p))
        .then_expect_events(vec![]);
}

#[test]
fn a_wrong_amount_or_currency_is_flagged_and_issues_nothing() {
    let cfg = config(10);
    let mut in_euros = payment(order(1), "pi_1", 1_000);
    in_euros.currency = eur();
    for p in [payment(order(1), "pi_1", 999), in_euros] {
        framework_at(60)
            .given(held(&cfg))
            .when(RaffleCommand::RecordPayment(p.clone()))
            .then_expect_events(vec![
                recorded(&p, 60),
                flagged(order(1), "pi_1", "amount_mismatch", 1_000, 60),
            ]);
    }
    let p = payment(order(1), "pi_1", 999);
    let mut events = held(&cfg);
    events.push(recorded(&p, 60));
    events.push(flagged(order(1), "pi_1", "amount_mismatch", 1_000, 60));
    let raffle = replay(&events);
    assert_eq!(
        raffle.order(order(1)).unwrap().status,
        OrderStatus::Reserved
    );
    assert_eq!(raffle.sold_count(), 0);
    // The flagged payment redelivered stays a duplicate; a correct one still issues.
    framework_at(70)
        .given(events.clone())
        .when(pay_cmd(order(1), "pi_1", 1_000))
        .then_expect_events(vec![]);
    let good = payment(order(1), "pi_2", 1_000);
    framework_at(70)
        .given(events)
        .when(RaffleCommand::RecordPayment(good.clone()))
        .then_expect_events(vec![recorded(&good, 70), issued(order(1), &[3, 4], 70)]);
}

#[test]
fn a_late_payment_issues_the_numbers_while_they_are_still_free() {
    let cfg = config(10);
    let mut expired_hold = held(&cfg);
    expired_hold.push(expired(&[(order(1), &[3, 4])], HOLD));
    let mut released_hold = held(&cfg);
    released_hold.push(released(order(1), &[3, 4], 100));
    for given in [expired_hold, released_hold] {
        let p = payment(order(1), "pi_1", 1_000);
        framework_at(2_000)
            .given(given.clone())
            .when(RaffleCommand::RecordPayment(p.clone()))
            .then_expect_events(vec![recorded(&p, 2_000), late_issued(&[3, 4], &[], 2_000)]);
        let mut events = given;
        events.push(recorded(&p, 2_000));
        events.push(late_issued(&[3, 4], &[], 2_000));
        let raffle = replay(&events);
        assert_eq!(raffle.order(order(1)).unwrap().status, OrderStatus::Paid);
        assert_eq!(raffle.ticket_state(4), Some(TicketState::Sold));
        assert_eq!((raffle.available_count(), raffle.sold_count()), (8, 2));
    }
}

#[test]
fn a_late_payment_for_resold_numbers_must_be_refunded_under_the_refund_policy() {
    let cfg = config(10);
    let p = payment(order(1), "pi_1", 1_000);
    framework_at(2_000)
        .given(resold(&cfg))
        .when(RaffleCommand::RecordPayment(p.clone()))
        .then_expect_events(vec![
            recorded(&p, 2_000),
            refund_required(Some("pi_1"), 1_000, RefundReason::TicketsTaken, 2_000),
        ]);
    let mut events = resold(&cfg);
    events.push(recorded(&p, 2_000));
    events.push(refund_required(
        Some("pi_1"),
        1_000,
        RefundReason::TicketsTaken,
        2_000,
    ));
    let raffle = replay(&events);
    assert_eq!(
        raffle.order(order(1)).unwrap().status,
        OrderStatus::RefundRequired
    );
    assert_eq!(
        raffle.order(order(2)).unwrap().status,
        OrderStatus::Reserved
    );
    assert_eq!(raffle.ticket_state(3), Some(TicketState::Reserved));
    assert_eq!(raffle.reserved_count(), 8);
}

#[test]
fn one_resold_number_is_enough_to_refuse_the_late_issue() {
    let cfg = config(10);
    let mut given = held(&cfg);
    given.push(expired(&[(order(1), &[3, 4])], HOLD));
    given.push(reserved(&cfg, order(2), &bob(), &[4], HOLD + 10));
    let p = payment(order(1), "pi_1", 1_000);
    framework_at(2_000)
        .given(given)
        .when(RaffleCommand::RecordPayment(p.clone()))
        .then_expect_events(vec![
            recorded(&p, 2_000),
            refund_required(Some("pi_1"), 1_000, RefundReason::TicketsTaken, 2_000),
        ]);
}

#[test]
fn the_substitute_policy_issues_other_free_numbers() {
    let mut cfg = config(10);
    cfg.late_payment_policy = LatePaymentPolicy::Substitute;
    // Only 1 and 2 are still free.
    let p = payment(order(1), "pi_1", 1_000);
    framework_at(2_000)
        .given(resold(&cfg))
        .when(RaffleCommand::RecordPayment(p.clone()))
        .then_expect_events(vec![
            recorded(&p, 2_000),
            late_issued(&[1, 2], &[3, 4], 2_000),
        ]);

    let mut events = resold(&cfg);
    events.push(recorded(&p, 2_000));
    events.push(late_issued(&[1, 2], &[3, 4], 2_000));
    let raffle = replay(&events);
    let view = raffle.order(order(1)).unwrap();
    assert_eq!((view.status, view.numbers), (OrderStatus::Paid, vec![1, 2]));
    assert_eq!(
        raffle.order(order(2)).unwrap().numbers,
        (3..=10).collect::<Vec<_>>()
    );
    assert_eq!(raffle.ticket_state(1), Some(TicketState::Sold));
    assert_eq!(raffle.ticket_state(3), Some(TicketState::Reserved));
    assert_eq!((raffle.available_count(), raffle.sold_count()), (0, 2));
}

#[test]
fn substitutes_are_random_free_numbers_of_the_same_quantity() {
    let mut cfg = config(40);
    cfg.late_payment_policy = LatePaymentPolicy::Substitute;
    let mut given = held(&cfg);
    given.push(expired(&[(order(1), &[3, 4])], HOLD));
    given.push(reserved(
        &cfg,
        order(2),
        &bob(),
        &[3, 4, 5, 6, 7],
        HOLD + 10,
    ));
    let events = framework_at(2_000)
        .given(given)
        .when(pay_cmd(order(1), "pi_1", 1_000))
        .inspect_result()
        .unwrap();
    let [RaffleEvent::PaymentRecorded { .. }, RaffleEvent::TicketsIssued {
        numbers,
        late: true,
        replaced_numbers,
        ..
    }] = &events[..]
    else {
        panic!("expected PaymentRecorded + late TicketsIssued, got {events:?}");
    };
    assert_eq!(replaced_numbers, &vec![3, 4]);
    assert_eq!(numbers.len(), 2);
    assert!(numbers[0] < numbers[1]);
    assert!(numbers
        .iter()
        .all(|n| (1..=40).contains(n) && !(3..=7).contains(n)));
}

#[test]
fn the_substitute_policy_refunds_when_too_few_numbers_are_free() {
    let mut cfg = config(9);
    cfg.late_payment_policy = LatePaymentPolicy::Substitute;
    let mut given = held(&cfg);
    given.push(expired(&[(order(1), &[3, 4])], HOLD));
    given.push(reserved(
        &cfg,
        order(2),
        &bob(),
        &[2, 3, 4, 5, 6, 7, 8, 9],
        HOLD + 10,
    ));
    let p = payment(order(1), "pi_1", 1_000);
    framework_at(2_000)
        .given(given)
        .when(RaffleCommand::RecordPayment(p.clone()))
        .then_expect_events(vec![
            recorded(&p, 2_000),
            refund_required(Some("pi_1"), 1_000, RefundReason::TicketsTaken, 2_000),
        ]);
}

#[test]
fn a_payment_after_sales_closed_must_be_refunded() {
    let cfg = config(10);
    let mut given = held(&cfg);
    given.push(closed(30));
    let p = payment(order(1), "pi_1", 1_000);
    framework_at(60)
        .given(given.clone())
        .when(RaffleCommand::RecordPayment(p.clone()))
        .then_expect_events(vec![
            recorded(&p, 60),
            refund_required(Some("pi_1"), 1_000, RefundReason::SalesClosed, 60),
        ]);
    let mut events = given;
    events.push(recorded(&p, 60));
    events.push(refund_required(
        Some("pi_1"),
        1_000,
        RefundReason::SalesClosed,
        60,
    ));
    let raffle = replay(&events);
    assert_eq!(
        raffle.order(order(1)).unwrap().status,
        OrderStatus::RefundRequired
    );
    assert_eq!(raffle.ticket_state(3), Some(TicketState::Available));
    assert_eq!((raffle.sold_count(), raffle.reserved_count()), (0, 0));
    assert_eq!(raffle.next_expiry(), None);

    // Same after a cancellation, whose release left the order Released.
    let mut given = held(&cfg);
    given.push(cancelled("x", 30));
    framework_at(60)
        .given(given)
        .when(RaffleCommand::RecordPayment(p.clone()))
        .then_expect_events(vec![
            recorded(&p, 60),
            refund_required(Some("pi_1"), 1_000, RefundReason::SalesClosed, 60),
        ]);
}

#[test]
fn a_payment_for_an_unknown_order_must_be_refunded_once() {
    let cfg = config(10);
    let p = payment(order(9), "pi_9", 700);
    let expected = vec![
        recorded(&p, 60),
        RaffleEvent::RefundRequired {
            order_id: order(9),
            payment_id: Some("pi_9".into()),
            amount_minor: 700,
            currency: usd(),
            reason: RefundReason::UnknownOrder,
            at: at(60),
        },
    ];
    framework_at(60)
        .given(held(&cfg))
        .when(RaffleCommand::RecordPayment(p.clone()))
        .then_expect_events(expected.clone());
    let mut events = held(&cfg);
    events.extend(expected);
    framework_at(70)
        .given(events)
        .when(RaffleCommand::RecordPayment(p))
        .then_expect_events(vec![]);
}

#[test]
fn a_payment_id_already_used_by_another_order_is_flagged() {
    let cfg = config(10);
    let mut given = paid_once(&cfg);
    given.push(reserved(&cfg, order(2), &bob(), &[7], 100));
    let p = payment(order(2), "pi_1", 500);
    framework_at(120)
        .given(given.clone())
        .when(RaffleCommand::RecordPayment(p.clone()))
        .then_expect_events(vec![
            recorded(&p, 120),
            flagged(order(2), "pi_1", "payment_id_reused", 500, 120),
        ]);
    let mut events = given;
    events.push(recorded(&p, 120));
    events.push(flagged(order(2), "pi_1", "payment_id_reused", 500, 120));
    let raffle = replay(&events);
    assert_eq!(
        raffle.order(order(2)).unwrap().status,
        OrderStatus::Reserved
    );
    assert_eq!(raffle.order(order(1)).unwrap().status, OrderStatus::Paid);
}

#[test]
fn a_payment_for_a_refunded_order_must_be_refunded() {
    let cfg = config(10);
    let mut refunded = paid_once(&cfg);
    refunded.push(RaffleEvent::OrderRefunded {
        order_id: order(1),
        numbers: vec![3, 4],
        amount_minor: 1_000,
        returned_to_pool: true,
        reason: "asked".into(),
        refund_id: None,
        at: at(100),
    });
    let mut owed = paid_once(&cfg);
    owed.push(cancelled("x", 100));
    for given in [refunded, owed] {
        let p = payment(order(1), "pi_2", 1_000);
        framework_at(200)
            .given(given)
            .when(RaffleCommand::RecordPayment(p.clone()))
            .then_expect_events(vec![
                recorded(&p, 200),
                refund_required(Some("pi_2"), 1_000, RefundReason::OrderNotPayable, 200),
            ]);
    }
}

// ----- RecordPaymentFailure -----

fn failure(order_id: Uuid) -> RecordPaymentFailure {
    RecordPaymentFailure {
        order_id,
        provider: "stripe".into(),
        payment_id: "pi_1".into(),
        provider_event_id: "evt_f".into(),
        reason: "card_declined".into(),
    }
}

/// Order 1's payment `pi_1` failed, as recorded from the provider's event `event_id`.
fn failed(event_id: &str, reason: &str, secs: i64) -> RaffleEvent {
    RaffleEvent::PaymentFailed {
        order_id: order(1),
        provider: "stripe".into(),
        payment_id: "pi_1".into(),
        provider_event_id: event_id.into(),
        reason: reason.into(),
        at: at(secs),
    }
}

#[test]
fn a_failed_payment_is_recorded_and_keeps_the_hold() {
    let cfg = config(10);
    framework_at(30)
        .given(held(&cfg))
        .when(RaffleCommand::RecordPaymentFailure(failure(order(1))))
        .then_expect_events(vec![failed("evt_f", "card_declined", 30)]);
    let before = replay(&held(&cfg));
    let mut events = held(&cfg);
    events.push(failed("evt_f", "card_declined", 30));
    // The failure is remembered (a redelivery of it is a duplicate); the hold is untouched.
    let after = replay(&events);
    assert_eq!(after.order(order(1)), before.order(order(1)));
    assert_eq!(after.free_numbers(), before.free_numbers());
    assert_eq!(
        (
            after.reserved_count(),
            after.sold_count(),
            after.order_count()
        ),
        (
            before.reserved_count(),
            before.sold_count(),
            before.order_count()
        )
    );
    assert_eq!(after.next_expiry(), before.next_expiry());
    assert_eq!(after.status(), before.status());
    // A failed attempt does not burn the payment id: the retry that succeeds issues.
    let p = payment(order(1), "pi_1", 1_000);
    framework_at(40)
        .given(events)
        .when(RaffleCommand::RecordPayment(p.clone()))
        .then_expect_events(vec![recorded(&p, 40), issued(order(1), &[3, 4], 40)]);
}

/// A provider retries a delivery it thinks was lost: the same failure event again.
#[test]
fn a_failure_delivered_twice_is_recorded_once_and_another_failure_still_is() {
    let cfg = config(10);
    let mut events = held(&cfg);
    events.push(failed("evt_f", "card_declined", 30));
    framework_at(35)
        .given(events.clone())
        .when(RaffleCommand::RecordPaymentFailure(failure(order(1))))
        .then_expect_events(vec![]);
    let second = RecordPaymentFailure {
        provider_event_id: "evt_g".into(),
        reason: "insufficient_funds".into(),
        ..failure(order(1))
    };
    framework_at(35)
        .given(events)
        .when(RaffleCommand::RecordPaymentFailure(second))
        .then_expect_events(vec![failed("evt_g", "insufficient_funds", 35)]);
}

#[test]
fn a_failure_for_an_unknown_order_is_refused() {
    framework_at(30)
        .given(held(&config(10)))
        .when(RaffleCommand::RecordPaymentFailure(failure(order(2))))
        .then_expect_error(RaffleError::OrderNotFound { order_id: order(2) });
}

// ----- ConfirmManualPayment -----

#[test]
fn a_manual_confirmation_issues_a_held_order() {
    framework_at(60)
        .given(held(&config(10)))
        .when(manual_cmd(order(1)))
        .then_expect_events(vec![
            manual_confirmed(1_000, 60),
            issued(order(1), &[3, 4], 60),
        ]);
}

#[test]
fn confirming_a_paid_order_is_a_duplicate() {
    let cfg = config(10);
    let mut by_hand = held(&cfg);
    by_hand.push(manual_confirmed(1_000, 60));
    by_hand.push(issued(order(1), &[3, 4], 60));
    for given in [paid_once(&cfg), by_hand.clone()] {
        framework_at(100)
            .given(given)
            .when(manual_cmd(order(1)))
            .then_expect_events(vec![]);
    }
    // The provider's report of the same money afterwards is a second payment.
    let p = payment(order(1), "pi_1", 1_000);
    framework_at(100)
        .given(by_hand)
        .when(RaffleCommand::RecordPayment(p.clone()))
        .then_expect_events(vec![
            recorded(&p, 100),
            refund_required(Some("pi_1"), 1_000, RefundReason::AlreadyPaid, 100),
        ]);
}

#[test]
fn a_late_manual_confirmation_follows_the_late_payment_rules() {
    let cfg = config(10);
    let mut still_free = held(&cfg);
    still_free.push(expired(&[(order(1), &[3, 4])], HOLD));
    framework_at(2_000)
        .given(still_free)
        .when(manual_cmd(order(1)))
        .then_expect_events(vec![
            manual_confirmed(1_000, 2_000),
            late_issued(&[3, 4], &[], 2_000),
        ]);
    framework_at(2_000)
        .given(resold(&cfg))
        .when(manual_cmd(order(1)))
        .then_expect_events(vec![
            manual_confirmed(1_000, 2_000),
            refund_required(None, 1_000, RefundReason::TicketsTaken, 2_000),
        ]);
}

#[test]
fn refunded_orders_cannot_be_confirmed() {
    let cfg = config(10);
    let mut refunded = paid_once(&cfg);
    refunded.push(RaffleEvent::OrderRefunded {
        order_id: order(1),
        numbers: vec![3, 4],
        amount_minor: 1_000,
        returned_to_pool: true,
        reason: "asked".into(),
        refund_id: None,
        at: at(100),
    });
    let mut owed = paid_once(&cfg);
    owed.push(cancelled("x", 100));
    for (given, status) in [
        (refunded, OrderStatus::Refunded),
        (owed, OrderStatus::RefundRequired),
    ] {
        framework_at(200)
            .given(given)
            .when(manual_cmd(order(1)))
            .then_expect_error(RaffleError::InvalidOrderState {
                order_id: order(1),
                status,
            });
    }
}

#[test]
fn manual_confirmations_need_sales_open() {
    let cfg = config(10);
    let mut closed_raffle = held(&cfg);
    closed_raffle.push(closed(30));
    let mut cancelled_raffle = held(&cfg);
    cancelled_raffle.push(cancelled("x", 30));
    for (given, status) in [
        (closed_raffle, RaffleStatus::Closed),
        (cancelled_raffle, RaffleStatus::Cancelled),
    ] {
        framework_at(60)
            .given(given)
            .when(manual_cmd(order(1)))
            .then_expect_error(RaffleError::SalesClosed { status });
    }
}

#[test]
fn a_manual_confirmation_for_an_unknown_order_is_refused() {
    framework_at(60)
        .given(held(&config(10)))
        .when(manual_cmd(order(5)))
        .then_expect_error(RaffleError::OrderNotFound { order_id: order(5) });
}

#[test]
fn currencies_compare_by_code_whatever_the_case() {
    // Stripe reports lower-case codes; they parse to the same currency.
    let cfg = config(10);
    let mut p = payment(order(1), "pi_1", 1_000);
    p.currency = Currency::parse("usd").unwrap();
    framework_at(60)
        .given(held(&cfg))
        .when(RaffleCommand::RecordPayment(p.clone()))
        .then_expect_events(vec![recorded(&p, 60), issued(order(1), &[3, 4], 60)]);
}
