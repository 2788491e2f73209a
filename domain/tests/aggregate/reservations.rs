//! Holds: reserve, release, expire, extend; per-order and per-buyer limits.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use cqrs_es::test::TestFramework;
use tombola_domain::{
    Bundle, FixedClock, LimitKind, OrderStatus, Raffle, RaffleCommand, RaffleConfig, RaffleError,
    RaffleEvent, RaffleServices, RaffleStatus, Reserve, Selection, TicketState, MAX_EXPIRY_BATCH,
};
use uuid::Uuid;

use crate::common::*;

fn random_cmd(order_id: Uuid, buyer: &tombola_domain::Buyer, quantity: u32) -> RaffleCommand {
    RaffleCommand::Reserve(Reserve {
        order_id,
        buyer: buyer.clone(),
        selection: Selection::Random(quantity),
    })
}

fn extend_cmd(order_id: Uuid, until: i64) -> RaffleCommand {
    RaffleCommand::ExtendHold {
        order_id,
        until: at(until),
    }
}

fn reserved_numbers(events: &[RaffleEvent]) -> Vec<u32> {
    match events {
        [RaffleEvent::TicketsReserved { numbers, .. }] => numbers.clone(),
        other => panic!("expected one TicketsReserved, got {other:?}"),
    }
}

// ----- Reserve -----

#[test]
fn specific_numbers_are_held_sorted_and_priced() {
    framework_at(30)
        .given(on_sale(&config(10)))
        .when(reserve_cmd(order(1), &ana(), &[7, 3, 5]))
        .then_expect_events(vec![RaffleEvent::TicketsReserved {
            order_id: order(1),
            buyer: ana(),
            numbers: vec![3, 5, 7],
            amount_minor: 1_500,
            currency: usd(),
            at: at(30),
            expires_at: at(30 + 900),
        }]);
}

#[test]
fn the_amount_uses_the_cheapest_bundles() {
    let mut cfg = config(20);
    cfg.bundles = vec![Bundle {
        quantity: 3,
        price_minor: 1_200,
    }];
    let events = framework_at(0)
        .given(on_sale(&cfg))
        .when(reserve_cmd(order(1), &ana(), &[1, 2, 3, 4, 5, 6, 7]))
        .inspect_result()
        .unwrap();
    let [RaffleEvent::TicketsReserved { amount_minor, .. }] = &events[..] else {
        panic!("expected TicketsReserved, got {events:?}");
    };
    assert_eq!(*amount_minor, 2 * 1_200 + 500);
}

#[test]
fn random_numbers_come_from_the_free_ones() {
    let cfg = config(10);
    let mut given = on_sale(&cfg);
    given.push(reserved(&cfg, order(1), &bob(), &[1, 2, 3, 4], 0));
    given.push(reserved(&cfg, order(2), &bob(), &[6, 7, 9], 0));
    let events = framework_at(10)
        .given(given)
        .when(random_cmd(order(3), &ana(), 3))
        .inspect_result()
        .unwrap();
    assert_eq!(reserved_numbers(&events), vec![5, 8, 10]);
}

#[test]
fn random_numbers_are_distinct_sorted_free_and_reproducible() {
    let cfg = config(100);
    let held: Vec<u32> = (1..=100).filter(|n| n % 3 == 0).collect();
    let mut given = on_sale(&cfg);
    given.push(reserved(&cfg, order(1), &bob(), &held[..10], 0));
    given.push(reserved(&cfg, order(2), &bob(), &held[10..20], 0));
    given.push(reserved(&cfg, order(3), &bob(), &held[20..], 0));
    let pick = || {
        framework_at(10)
            .given(given.clone())
            .when(random_cmd(order(4), &ana(), 8))
            .inspect_result()
            .unwrap()
    };
    let events = pick();
    let numbers = reserved_numbers(&events);
    assert_eq!(numbers.len(), 8);
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
    assert!(numbers.iter().all(|n| (1..=100).contains(n) && n % 3 != 0));
    let [RaffleEvent::TicketsReserved { amount_minor, .. }] = &events[..] else {
        unreachable!()
    };
    assert_eq!(*amount_minor, 8 * PRICE);
    assert_eq!(events, pick(), "same seed, same state: same numbers");
}

#[test]
fn nothing_is_reserved_outside_the_sales_window() {
    let cfg = config(10);
    let drawn = vec![
        created(cfg.clone()),
        opened(),
        closed(5),
        RaffleEvent::WinnersDrawn {
            seed: SEED.into(),
            public_entropy: "e".into(),
            winners: vec![],
            at: at(6),
        },
    ];
    let cases = [
        (vec![created(cfg.clone())], RaffleStatus::Draft),
        (
            vec![created(cfg.clone()), opened(), closed(5)],
            RaffleStatus::Closed,
        ),
        (drawn, RaffleStatus::Drawn),
        (
            vec![created(cfg.clone()), opened(), cancelled("x", 5)],
            RaffleStatus::Cancelled,
        ),
    ];
    for (given, status) in cases {
        for command in [
            reserve_cmd(order(1), &ana(), &[1]),
            random_cmd(order(1), &ana(), 1),
        ] {
            framework_at(10)
                .given(given.clone())
                .when(command)
                .then_expect_error(RaffleError::SalesClosed { status });
        }
    }
}

#[test]
fn an_order_id_is_used_once() {
    let cfg = config(10);
    let mut given = on_sale(&cfg);
    given.push(reserved(&cfg, order(1), &ana(), &[1], 0));
    given.push(released(order(1), &[1], 5));
    framework_at(10)
        .given(given)
        .when(reserve_cmd(order(1), &ana(), &[2]))
        .then_expect_error(RaffleError::OrderAlreadyExists { order_id: order(1) });
}

#[test]
fn a_reservation_needs_at_least_one_ticket() {
    for command in [
        reserve_cmd(order(1), &ana(), &[]),
        random_cmd(order(1), &ana(), 0),
    ] {
        framework_at(10)
            .given(on_sale(&config(10)))
            .when(command)
            .then_expect_error(RaffleError::InvalidQuantity);
    }
}

#[test]
fn the_per_order_limit_applies_to_both_selections() {
    let mut cfg = config(20);
    cfg.max_tickets_per_order = 4;
    let too_many: Vec<u32> = (1..=5).collect();
    for command in [
        reserve_cmd(order(1), &ana(), &too_many),
        random_cmd(order(1), &ana(), 5),
    ] {
        framework_at(10)
            .given(on_sale(&cfg))
            .when(command)
            .then_expect_error(RaffleError::LimitExceeded {
                kind: LimitKind::PerOrder,
                limit: 4,
                requested: 5,
                held: 0,
            });
    }
    framework_at(10)
        .given(on_sale(&cfg))
        .when(reserve_cmd(order(1), &ana(), &too_many[..4]))
        .then_expect_events(vec![reserved(&cfg, order(1), &ana(), &[1, 2, 3, 4], 10)]);
}

fn limited(limit: u32) -> RaffleConfig {
    let mut cfg = config(20);
    cfg.max_tickets_per_buyer = Some(limit);
    cfg
}

#[test]
fn the_per_buyer_limit_ignores_the_case_of_the_email() {
    let cfg = limited(4);
    let mut given = on_sale(&cfg);
    given.push(reserved(&cfg, order(1), &ana(), &[1, 2, 3], 0));
    let shouting_ana = buyer("Ana B.", "  ANA@example.COM ");
    framework_at(10)
        .given(given.clone())
        .when(reserve_cmd(order(2), &shouting_ana, &[4, 5]))
        .then_expect_error(RaffleError::LimitExceeded {
            kind: LimitKind::PerBuyer,
            limit: 4,
            requested: 2,
            held: 3,
        });
    framework_at(10)
        .given(given.clone())
        .when(random_cmd(order(2), &shouting_ana, 2))
        .then_expect_error(RaffleError::LimitExceeded {
            kind: LimitKind::PerBuyer,
            limit: 4,
            requested: 2,
            held: 3,
        });
    framework_at(10)
        .given(given.clone())
        .when(reserve_cmd(order(2), &shouting_ana, &[4]))
        .then_expect_events(vec![reserved(&cfg, order(2), &shouting_ana, &[4], 10)]);
    // Another buyer has their own allowance.
    framework_at(10)
        .given(given)
        .when(reserve_cmd(order(2), &bob(), &[4, 5, 6, 7]))
        .then_expect_events(vec![reserved(&cfg, order(2), &bob(), &[4, 5, 6, 7], 10)]);
}

#[test]
fn released_expired_and_refunded_tickets_no_longer_count_for_the_buyer() {
    let cfg = limited(4);
    let mut given = on_sale(&cfg);
    given.push(reserved(&cfg, order(1), &ana(), &[1, 2], 0));
    given.push(released(order(1), &[1, 2], 10));
    given.push(reserved(&cfg, order(2), &ana(), &[3, 4], 20));
    given.push(expired(&[(order(2), &[3, 4])], 20 + HOLD));
    given.push(reserved(&cfg, order(3), &ana(), &[5], 1_000));
    given.extend(paid(order(3), &[5], "pi_3", 1_010));
    given.push(reserved(&cfg, order(4), &ana(), &[6], 1_020));
    given.extend(paid(order(4), &[6], "pi_4", 1_030));
    given.push(RaffleEvent::OrderRefunded {
        order_id: order(4),
        numbers: vec![6],
        amount_minor: PRICE,
        returned_to_pool: true,
        reason: "asked".into(),
        refund_id: None,
        at: at(1_040),
    });
    // Only the paid ticket 5 still counts.
    framework_at(1_100)
        .given(given.clone())
        .when(reserve_cmd(order(5), &ana(), &[7, 8, 9, 10]))
        .then_expect_error(RaffleError::LimitExceeded {
            kind: LimitKind::PerBuyer,
            limit: 4,
            requested: 4,
            held: 1,
        });
    framework_at(1_100)
        .given(given)
        .when(reserve_cmd(order(5), &ana(), &[7, 8, 9]))
        .then_expect_events(vec![reserved(&cfg, order(5), &ana(), &[7, 8, 9], 1_100)]);
}

#[test]
fn numbers_outside_the_raffle_are_refused() {
    framework_at(0)
        .given(on_sale(&config(10)))
        .when(reserve_cmd(order(1), &ana(), &[12, 5, 0, 11]))
        .then_expect_error(RaffleError::InvalidTicketNumber {
            numbers: vec![12, 0, 11],
        });
    let mut from_zero = config(10);
    from_zero.first_number = 0;
    framework_at(0)
        .given(on_sale(&from_zero))
        .when(reserve_cmd(order(1), &ana(), &[0, 9, 10]))
        .then_expect_error(RaffleError::InvalidTicketNumber { numbers: vec![10] });
    framework_at(0)
        .given(on_sale(&from_zero))
        .when(reserve_cmd(order(1), &ana(), &[9, 0]))
        .then_expect_events(vec![reserved(&from_zero, order(1), &ana(), &[0, 9], 0)]);
}

#[test]
fn a_number_requested_twice_is_refused() {
    framework_at(0)
        .given(on_sale(&config(10)))
        .when(reserve_cmd(order(1), &ana(), &[4, 2, 4, 7, 2]))
        .then_expect_error(RaffleError::DuplicateTicketNumber {
            numbers: vec![2, 4],
        });
}

#[test]
fn held_and_sold_numbers_are_unavailable() {
    let cfg = config(10);
    let mut given = on_sale(&cfg);
    given.push(reserved(&cfg, order(1), &bob(), &[3], 0));
    given.push(reserved(&cfg, order(2), &bob(), &[5], 0));
    given.extend(paid(order(2), &[5], "pi_2", 5));
    framework_at(10)
        .given(given)
        .when(reserve_cmd(order(3), &ana(), &[5, 1, 3]))
        .then_expect_error(RaffleError::TicketsUnavailable {
            numbers: vec![3, 5],
        });
}

#[test]
fn random_selection_needs_enough_free_numbers() {
    let cfg = config(10);
    let mut given = on_sale(&cfg);
    given.push(reserved(
        &cfg,
        order(1),
        &bob(),
        &[1, 2, 3, 4, 5, 6, 7, 8],
        0,
    ));
    framework_at(10)
        .given(given)
        .when(random_cmd(order(2), &ana(), 3))
        .then_expect_error(RaffleError::NotEnoughTickets {
            requested: 3,
            available: 2,
        });
}

// ----- Release -----

#[test]
fn a_release_frees_the_numbers() {
    let cfg = config(10);
    let mut events = on_sale(&cfg);
    events.push(reserved(&cfg, order(1), &ana(), &[2, 4], 0));
    framework_at(60)
        .given(events.clone())
        .when(RaffleCommand::Release { order_id: order(1) })
        .then_expect_events(vec![released(order(1), &[2, 4], 60)]);

    events.push(released(order(1), &[2, 4], 60));
    let raffle = replay(&events);
    assert_eq!(
        raffle.order(order(1)).unwrap().status,
        OrderStatus::Released
    );
    assert_eq!(raffle.ticket_state(4), Some(TicketState::Available));
    assert_eq!(raffle.available_count(), 10);
    assert_eq!(raffle.next_expiry(), None);
    // The numbers can be held again.
    framework_at(70)
        .given(events)
        .when(reserve_cmd(order(2), &bob(), &[2, 4]))
        .then_expect_events(vec![reserved(&cfg, order(2), &bob(), &[2, 4], 70)]);
}

#[test]
fn releasing_twice_is_a_duplicate() {
    let cfg = config(10);
    let mut given = on_sale(&cfg);
    given.push(reserved(&cfg, order(1), &ana(), &[2], 0));
    given.push(released(order(1), &[2], 60));
    framework_at(70)
        .given(given)
        .when(RaffleCommand::Release { order_id: order(1) })
        .then_expect_events(vec![]);
}

#[test]
fn only_a_held_order_can_be_released() {
    let cfg = config(10);
    let mut base = on_sale(&cfg);
    base.push(reserved(&cfg, order(1), &ana(), &[2], 0));
    let mut paid_order = base.clone();
    paid_order.extend(paid(order(1), &[2], "pi_1", 10));
    let mut expired_order = base.clone();
    expired_order.push(expired(&[(order(1), &[2])], HOLD));
    let mut refund_required = paid_order.clone();
    refund_required.push(cancelled("x", 20));
    let mut refunded = paid_order.clone();
    refunded.push(RaffleEvent::OrderRefunded {
        order_id: order(1),
        numbers: vec![2],
        amount_minor: PRICE,
        returned_to_pool: true,
        reason: "asked".into(),
        refund_id: None,
        at: at(20),
    });
    let cases = [
        (paid_order, OrderStatus::Paid),
        (expired_order, OrderStatus::Expired),
        (refund_required, OrderStatus::RefundRequired),
        (refunded, OrderStatus::Refunded),
    ];
    for (given, status) in cases {
        framework_at(2_000)
            .given(given)
            .when(RaffleCommand::Release { order_id: order(1) })
            .then_expect_error(RaffleError::InvalidOrderState {
                order_id: order(1),
                status,
            });
    }
    framework_at(10)
        .given(base)
        .when(RaffleCommand::Release { order_id: order(9) })
        .then_expect_error(RaffleError::OrderNotFound { order_id: order(9) });
}

// ----- ExpireDueHolds -----

/// Order 1 held from 0 (ends 900), order 2 from 100 (ends 1000), order 3 paid.
fn three_orders(cfg: &RaffleConfig) -> Vec<RaffleEvent> {
    let mut events = on_sale(cfg);
    events.push(reserved(cfg, order(1), &ana(), &[1, 2], 0));
    events.push(reserved(cfg, order(2), &bob(), &[5], 100));
    events.push(reserved(cfg, order(3), &bob(), &[7], 0));
    events.extend(paid(order(3), &[7], "pi_3", 50));
    events
}

#[test]
fn only_due_holds_expire() {
    let cfg = config(10);
    framework_at(HOLD - 1)
        .given(three_orders(&cfg))
        .when(RaffleCommand::ExpireDueHolds)
        .then_expect_events(vec![]);
    framework_at(HOLD)
        .given(three_orders(&cfg))
        .when(RaffleCommand::ExpireDueHolds)
        .then_expect_events(vec![expired(&[(order(1), &[1, 2])], HOLD)]);
    framework_at(50_000)
        .given(three_orders(&cfg))
        .when(RaffleCommand::ExpireDueHolds)
        .then_expect_events(vec![expired(
            &[(order(1), &[1, 2]), (order(2), &[5])],
            50_000,
        )]);
}

#[test]
fn expired_holds_free_their_numbers_and_leave_the_queue() {
    let cfg = config(10);
    let mut events = three_orders(&cfg);
    assert_eq!(replay(&events).next_expiry(), Some(at(HOLD)));
    events.push(expired(&[(order(1), &[1, 2])], HOLD));
    let raffle = replay(&events);
    assert_eq!(raffle.order(order(1)).unwrap().status, OrderStatus::Expired);
    assert_eq!(raffle.ticket_state(1), Some(TicketState::Available));
    assert_eq!(raffle.next_expiry(), Some(at(100 + HOLD)));
    assert_eq!(
        (
            raffle.available_count(),
            raffle.reserved_count(),
            raffle.sold_count()
        ),
        (8, 1, 1)
    );
    framework_at(HOLD + 50)
        .given(events)
        .when(RaffleCommand::ExpireDueHolds)
        .then_expect_events(vec![]);
}

#[test]
fn holds_expire_in_the_order_they_end_not_the_order_they_began() {
    let cfg = config(10);
    let mut given = three_orders(&cfg);
    given.push(RaffleEvent::HoldExtended {
        order_id: order(1),
        expires_at: at(1_500),
        at: at(200),
    });
    framework_at(1_200)
        .given(given.clone())
        .when(RaffleCommand::ExpireDueHolds)
        .then_expect_events(vec![expired(&[(order(2), &[5])], 1_200)]);
    framework_at(1_600)
        .given(given)
        .when(RaffleCommand::ExpireDueHolds)
        .then_expect_events(vec![expired(
            &[(order(2), &[5]), (order(1), &[1, 2])],
            1_600,
        )]);
}

#[test]
fn holds_still_end_after_sales_close() {
    let cfg = config(10);
    let mut given = three_orders(&cfg);
    given.push(closed(500));
    framework_at(HOLD)
        .given(given)
        .when(RaffleCommand::ExpireDueHolds)
        .then_expect_events(vec![expired(&[(order(1), &[1, 2])], HOLD)]);
}

#[test]
fn a_large_sweep_is_split_into_batches_oldest_first() {
    let total = MAX_EXPIRY_BATCH as u128 + 1;
    let mut cfg = config(total as u32);
    cfg.max_tickets_per_order = 1;
    let mut events = on_sale(&cfg);
    // Order k is reserved at (total - k) seconds: the last order's hold ends first.
    for k in 1..=total {
        events.push(reserved(
            &cfg,
            order(k),
            &bob(),
            &[k as u32],
            (total - k) as i64,
        ));
    }
    let now = total as i64 + HOLD;
    let first = framework_at(now)
        .given(events.clone())
        .when(RaffleCommand::ExpireDueHolds)
        .inspect_result()
        .unwrap();
    let [RaffleEvent::HoldsExpired { holds, .. }] = &first[..] else {
        panic!("expected one HoldsExpired");
    };
    assert_eq!(holds.len(), MAX_EXPIRY_BATCH);
    let ids: Vec<Uuid> = holds.iter().map(|h| h.order_id).collect();
    let oldest_first: Vec<Uuid> = (2..=total).rev().map(order).collect();
    assert_eq!(ids, oldest_first);
    assert!(holds
        .iter()
        .all(|h| h.numbers == vec![h.order_id.as_u128() as u32 - 0x100]));

    events.extend(first);
    framework_at(now)
        .given(events.clone())
        .when(RaffleCommand::ExpireDueHolds)
        .then_expect_events(vec![expired(&[(order(1), &[1])], now)]);
    events.push(expired(&[(order(1), &[1])], now));
    let raffle = replay(&events);
    assert_eq!(raffle.available_count(), total as u64);
    assert_eq!(raffle.next_expiry(), None);
}

fn framework_at_instant(now: DateTime<Utc>) -> TestFramework<Raffle> {
    TestFramework::with(RaffleServices::deterministic(
        7,
        Arc::new(FixedClock::new(now)),
    ))
}

#[test]
fn a_hold_never_ends_early_when_the_clock_has_fractions_of_a_second() {
    let cfg = config(10);
    let half = Duration::milliseconds(500);
    let event = RaffleEvent::TicketsReserved {
        order_id: order(1),
        buyer: ana(),
        numbers: vec![4],
        amount_minor: PRICE,
        currency: usd(),
        at: at(0) + half,
        expires_at: at(HOLD) + half,
    };
    framework_at_instant(at(0) + half)
        .given(on_sale(&cfg))
        .when(reserve_cmd(order(1), &ana(), &[4]))
        .then_expect_events(vec![event.clone()]);
    let mut events = on_sale(&cfg);
    events.push(event);
    // Stored in whole seconds, rounded towards a longer hold.
    let raffle = replay(&events);
    assert_eq!(raffle.order(order(1)).unwrap().expires_at, at(HOLD + 1));
    assert_eq!(raffle.next_expiry(), Some(at(HOLD + 1)));
    for now in [
        at(HOLD),
        at(HOLD) + half,
        at(HOLD + 1) - Duration::nanoseconds(1),
    ] {
        framework_at_instant(now)
            .given(events.clone())
            .when(RaffleCommand::ExpireDueHolds)
            .then_expect_events(vec![]);
    }
    framework_at_instant(at(HOLD + 1))
        .given(events)
        .when(RaffleCommand::ExpireDueHolds)
        .then_expect_events(vec![expired(&[(order(1), &[4])], HOLD + 1)]);
}

// ----- ExtendHold -----

fn one_hold(cfg: &RaffleConfig) -> Vec<RaffleEvent> {
    let mut events = on_sale(cfg);
    events.push(reserved(cfg, order(1), &ana(), &[3], 0));
    events
}

#[test]
fn a_hold_is_extended_while_a_payment_is_pending() {
    let cfg = config(10);
    framework_at(600)
        .given(one_hold(&cfg))
        .when(extend_cmd(order(1), 1_800))
        .then_expect_events(vec![RaffleEvent::HoldExtended {
            order_id: order(1),
            expires_at: at(1_800),
            at: at(600),
        }]);
    let mut events = one_hold(&cfg);
    events.push(RaffleEvent::HoldExtended {
        order_id: order(1),
        expires_at: at(1_800),
        at: at(600),
    });
    assert_eq!(replay(&events).next_expiry(), Some(at(1_800)));
    assert_eq!(
        replay(&events).order(order(1)).unwrap().expires_at,
        at(1_800)
    );
    framework_at(HOLD)
        .given(events)
        .when(RaffleCommand::ExpireDueHolds)
        .then_expect_events(vec![]);
}

#[test]
fn an_extension_is_capped_at_the_maximum_hold_from_the_reservation() {
    let cfg = config(10);
    framework_at(600)
        .given(one_hold(&cfg))
        .when(extend_cmd(order(1), 100_000))
        .then_expect_events(vec![RaffleEvent::HoldExtended {
            order_id: order(1),
            expires_at: at(MAX_HOLD),
            at: at(600),
        }]);
    let mut given = one_hold(&cfg);
    given.push(RaffleEvent::HoldExtended {
        order_id: order(1),
        expires_at: at(3_000),
        at: at(600),
    });
    framework_at(2_900)
        .given(given.clone())
        .when(extend_cmd(order(1), 6_000))
        .then_expect_events(vec![RaffleEvent::HoldExtended {
            order_id: order(1),
            expires_at: at(MAX_HOLD),
            at: at(2_900),
        }]);
    given.push(RaffleEvent::HoldExtended {
        order_id: order(1),
        expires_at: at(MAX_HOLD),
        at: at(2_900),
    });
    framework_at(3_000)
        .given(given)
        .when(extend_cmd(order(1), 7_000))
        .then_expect_events(vec![]);
}

#[test]
fn an_extension_that_ends_no_later_is_a_duplicate() {
    let cfg = config(10);
    for until in [HOLD, HOLD - 1, 10] {
        framework_at(5)
            .given(one_hold(&cfg))
            .when(extend_cmd(order(1), until))
            .then_expect_events(vec![]);
    }
}

#[test]
fn extending_a_paid_order_changes_nothing() {
    let cfg = config(10);
    let mut given = one_hold(&cfg);
    given.extend(paid(order(1), &[3], "pi_1", 10));
    framework_at(20)
        .given(given)
        .when(extend_cmd(order(1), 1_800))
        .then_expect_events(vec![]);
}

#[test]
fn only_a_live_hold_can_be_extended() {
    let cfg = config(10);
    let mut released_order = one_hold(&cfg);
    released_order.push(released(order(1), &[3], 10));
    let mut expired_order = one_hold(&cfg);
    expired_order.push(expired(&[(order(1), &[3])], HOLD));
    let mut refund_required = one_hold(&cfg);
    refund_required.extend(paid(order(1), &[3], "pi_1", 10));
    refund_required.push(cancelled("x", 20));
    let cases = [
        (released_order, OrderStatus::Released),
        (expired_order, OrderStatus::Expired),
        (refund_required, OrderStatus::RefundRequired),
    ];
    for (given, status) in cases {
        framework_at(1_000)
            .given(given)
            .when(extend_cmd(order(1), 2_000))
            .then_expect_error(RaffleError::InvalidOrderState {
                order_id: order(1),
                status,
            });
    }
    framework_at(10)
        .given(one_hold(&cfg))
        .when(extend_cmd(order(2), 2_000))
        .then_expect_error(RaffleError::OrderNotFound { order_id: order(2) });
}

#[test]
fn holds_are_not_extended_after_sales_close() {
    let cfg = config(10);
    let mut given = one_hold(&cfg);
    given.push(closed(10));
    framework_at(20)
        .given(given)
        .when(extend_cmd(order(1), 2_000))
        .then_expect_error(RaffleError::SalesClosed {
            status: RaffleStatus::Closed,
        });
}

#[test]
fn a_random_selection_up_to_the_per_order_limit_is_accepted() {
    let mut cfg = config(10);
    cfg.max_tickets_per_order = 4;
    let events = framework_at(0)
        .given(on_sale(&cfg))
        .when(random_cmd(order(1), &ana(), 4))
        .inspect_result()
        .unwrap();
    let numbers: BTreeSet<u32> = reserved_numbers(&events).into_iter().collect();
    assert_eq!(numbers.len(), 4);
}
