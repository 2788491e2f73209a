//! The raffle's own life: create, open sales, close sales, draw, cancel.

use tombola_domain::{
    draw, Bundle, CreateRaffle, LatePaymentPolicy, OrderStatus, Prize, RaffleCommand, RaffleConfig,
    RaffleError, RaffleEvent, RaffleStatus, TicketState, Winner,
};

use crate::common::*;

fn create_cmd() -> CreateRaffle {
    CreateRaffle::example(raffle_id(), 100)
}

fn draw_cmd(seed: &str, entropy: &str) -> RaffleCommand {
    RaffleCommand::Draw {
        seed: seed.into(),
        public_entropy: entropy.into(),
    }
}

// ----- Create -----

#[test]
fn create_records_the_parsed_config() {
    let mut cmd = create_cmd();
    cmd.title = "  Spring raffle  ".into();
    cmd.organizer_id = " org-7 ".into();
    cmd.draw_commitment = draw::commitment_of(SEED).to_uppercase();
    cmd.bundles = vec![Bundle {
        quantity: 5,
        price_minor: 2_000,
    }];
    framework_at(0)
        .given_no_previous_events()
        .when(RaffleCommand::Create(cmd))
        .then_expect_events(vec![RaffleEvent::RaffleCreated {
            config: RaffleConfig {
                raffle_id: raffle_id(),
                title: "Spring raffle".into(),
                organizer_id: "org-7".into(),
                ticket_count: 100,
                first_number: 1,
                number_width: 3,
                price_minor: 500,
                currency: usd(),
                bundles: vec![Bundle {
                    quantity: 5,
                    price_minor: 2_000,
                }],
                hold_seconds: 15 * 60,
                max_hold_seconds: 72 * 3600,
                max_tickets_per_order: 100,
                max_tickets_per_buyer: None,
                prizes: vec![prize("First prize")],
                draw_commitment: draw::commitment_of(SEED),
                late_payment_policy: LatePaymentPolicy::Refund,
                plus_addressing: Default::default(),
                time_zone: None,
            },
            at: at(0),
        }]);
}

#[test]
fn the_default_max_hold_is_never_shorter_than_the_hold() {
    let mut cmd = create_cmd();
    cmd.hold_seconds = Some(4 * 24 * 3600);
    let events = framework_at(0)
        .given_no_previous_events()
        .when(RaffleCommand::Create(cmd))
        .inspect_result()
        .unwrap();
    let [RaffleEvent::RaffleCreated { config, .. }] = &events[..] else {
        panic!("expected RaffleCreated, got {events:?}");
    };
    assert_eq!(config.hold_seconds, 4 * 24 * 3600);
    assert_eq!(config.max_hold_seconds, 4 * 24 * 3600);
}

#[test]
fn a_raffle_is_created_once() {
    framework_at(0)
        .given(vec![created(config(10))])
        .when(RaffleCommand::Create(create_cmd()))
        .then_expect_error(RaffleError::RaffleAlreadyExists);
}

#[test]
fn invalid_terms_are_refused_with_the_offending_field() {
    type Tweak = fn(&mut CreateRaffle);
    let cases: Vec<(&str, Tweak)> = vec![
        ("title", |c| c.title = "   ".into()),
        ("title", |c| c.title = "x".repeat(201)),
        ("organizer_id", |c| c.organizer_id = " ".into()),
        ("ticket_count", |c| c.ticket_count = 0),
        ("ticket_count", |c| c.ticket_count = 10_000_001),
        ("first_number", |c| c.first_number = 2),
        ("number_width", |c| c.number_width = Some(2)),
        ("number_width", |c| c.number_width = Some(11)),
        ("price_minor", |c| c.price_minor = 0),
        ("bundles", |c| {
            c.bundles = vec![Bundle {
                quantity: 1,
                price_minor: 400,
            }]
        }),
        ("bundles", |c| {
            c.bundles = vec![Bundle {
                quantity: 3,
                price_minor: 0,
            }]
        }),
        ("hold_minutes", |c| c.hold_seconds = Some(59)),
        ("max_hold_minutes", |c| {
            c.hold_seconds = Some(600);
            c.max_hold_seconds = Some(599);
        }),
        ("max_tickets_per_order", |c| c.max_tickets_per_order = 0),
        ("max_tickets_per_order", |c| {
            c.max_tickets_per_order = 100_001
        }),
        ("max_tickets_per_buyer", |c| {
            c.max_tickets_per_buyer = Some(0)
        }),
        ("prizes", |c| c.prizes = vec![prize(" ")]),
        ("draw_commitment", |c| c.draw_commitment = "abc".into()),
        ("draw_commitment", |c| c.draw_commitment = "z".repeat(64)),
    ];
    for (field, tweak) in cases {
        let mut cmd = create_cmd();
        tweak(&mut cmd);
        let result = framework_at(0)
            .given_no_previous_events()
            .when(RaffleCommand::Create(cmd))
            .inspect_result();
        match result {
            Err(RaffleError::InvalidRaffle { field: got, .. }) => assert_eq!(got, field),
            other => panic!("{field}: expected InvalidRaffle, got {other:?}"),
        }
    }
}

#[test]
fn every_other_command_needs_the_raffle_to_exist() {
    let id = order(1);
    let commands = vec![
        RaffleCommand::OpenSales,
        reserve_cmd(id, &ana(), &[1]),
        RaffleCommand::Release { order_id: id },
        RaffleCommand::ExpireDueHolds,
        RaffleCommand::ExtendHold {
            order_id: id,
            until: at(60),
        },
        pay_cmd(id, "pi_1", PRICE),
        RaffleCommand::CloseSales,
        draw_cmd(SEED, "e"),
        RaffleCommand::Cancel { reason: "x".into() },
    ];
    for command in commands {
        framework_at(0)
            .given_no_previous_events()
            .when(command)
            .then_expect_error(RaffleError::RaffleNotFound);
    }
}

// ----- OpenSales -----

#[test]
fn sales_open_from_draft() {
    framework_at(5)
        .given(vec![created(config(10))])
        .when(RaffleCommand::OpenSales)
        .then_expect_events(vec![RaffleEvent::SalesOpened { at: at(5) }]);
}

#[test]
fn opening_sales_twice_is_a_duplicate() {
    framework_at(5)
        .given(on_sale(&config(10)))
        .when(RaffleCommand::OpenSales)
        .then_expect_events(vec![]);
}

#[test]
fn sales_never_reopen() {
    let cfg = config(10);
    let mut drawn = on_sale(&cfg);
    drawn.extend([
        closed(10),
        RaffleEvent::WinnersDrawn {
            seed: SEED.into(),
            public_entropy: "e".into(),
            winners: vec![],
            at: at(20),
        },
    ]);
    let cases = [
        (
            vec![created(cfg.clone()), opened(), closed(10)],
            RaffleStatus::Closed,
        ),
        (drawn, RaffleStatus::Drawn),
        (
            vec![created(cfg.clone()), cancelled("x", 1)],
            RaffleStatus::Cancelled,
        ),
    ];
    for (given, status) in cases {
        framework_at(30)
            .given(given)
            .when(RaffleCommand::OpenSales)
            .then_expect_error(RaffleError::InvalidRaffleState {
                status,
                expected: "draft".into(),
            });
    }
}

// ----- CloseSales -----

#[test]
fn sales_close_while_on_sale() {
    framework_at(7)
        .given(on_sale(&config(10)))
        .when(RaffleCommand::CloseSales)
        .then_expect_events(vec![closed(7)]);
}

#[test]
fn closing_twice_is_a_duplicate() {
    let mut given = on_sale(&config(10));
    given.push(closed(7));
    framework_at(9)
        .given(given)
        .when(RaffleCommand::CloseSales)
        .then_expect_events(vec![]);
}

#[test]
fn only_a_raffle_on_sale_can_close() {
    let cfg = config(10);
    let cases = [
        (vec![created(cfg.clone())], RaffleStatus::Draft),
        (
            vec![created(cfg.clone()), cancelled("x", 1)],
            RaffleStatus::Cancelled,
        ),
    ];
    for (given, status) in cases {
        framework_at(9)
            .given(given)
            .when(RaffleCommand::CloseSales)
            .then_expect_error(RaffleError::InvalidRaffleState {
                status,
                expected: "on_sale".into(),
            });
    }
}

// ----- Draw -----

/// Three paid orders (numbers 2, 5+6, 9), a reserved one (3) and a closed raffle.
fn sold_and_closed(cfg: &RaffleConfig) -> Vec<RaffleEvent> {
    let mut events = on_sale(cfg);
    events.push(reserved(cfg, order(1), &ana(), &[2], 0));
    events.extend(paid(order(1), &[2], "pi_1", 10));
    events.push(reserved(cfg, order(2), &bob(), &[5, 6], 20));
    events.extend(paid(order(2), &[5, 6], "pi_2", 30));
    events.push(reserved(cfg, order(3), &ana(), &[9], 40));
    events.extend(paid(order(3), &[9], "pi_3", 50));
    events.push(reserved(cfg, order(4), &bob(), &[3], 60));
    events.push(closed(100));
    events
}

#[test]
fn the_draw_picks_distinct_issued_tickets_and_names_their_orders() {
    let mut cfg = config(10);
    cfg.prizes = ["Car", "TV", "Bike", "Mug", "Pen", "Hat"]
        .map(prize)
        .to_vec();
    let events = framework_at(200)
        .given(sold_and_closed(&cfg))
        .when(draw_cmd(SEED, "lottery 2024-03-02"))
        .inspect_result()
        .unwrap();
    let [RaffleEvent::WinnersDrawn {
        seed,
        public_entropy,
        winners,
        at: drawn_at,
    }] = &events[..]
    else {
        panic!("expected WinnersDrawn, got {events:?}");
    };
    assert_eq!(
        (seed.as_str(), public_entropy.as_str()),
        (SEED, "lottery 2024-03-02")
    );
    assert_eq!(*drawn_at, at(200));
    // Four issued tickets for six prizes: each ticket wins exactly once, the held 3 never.
    let mut numbers: Vec<u32> = winners.iter().map(|w| w.number).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, vec![2, 5, 6, 9]);
    let owner = |n| match n {
        2 => order(1),
        5 | 6 => order(2),
        9 => order(3),
        _ => unreachable!(),
    };
    for (i, w) in winners.iter().enumerate() {
        assert_eq!(w.order_id, owner(w.number), "{w:?}");
        assert_eq!(w.prize, cfg.prizes[w.prize_index as usize].name);
        assert_eq!(w.prize_index, i as u32, "the first four prizes are awarded");
    }
}

#[test]
fn the_draw_is_the_published_algorithm_over_the_issued_set() {
    let mut cfg = config(10);
    cfg.prizes = vec![prize("Car"), prize("TV")];
    let issued = [(2, at(10)), (5, at(30)), (6, at(30)), (9, at(50))];
    let expected: Vec<Winner> = draw::draw_winners(SEED, "entropy", &cfg.prizes, &issued)
        .into_iter()
        .enumerate()
        .map(|(i, number)| {
            let number = number.expect("two prizes, four tickets");
            Winner {
                prize_index: i as u32,
                prize: cfg.prizes[i].name.clone(),
                number,
                order_id: match number {
                    2 => order(1),
                    5 | 6 => order(2),
                    _ => order(3),
                },
            }
        })
        .collect();
    framework_at(200)
        .given(sold_and_closed(&cfg))
        .when(draw_cmd(SEED, "entropy"))
        .then_expect_events(vec![RaffleEvent::WinnersDrawn {
            seed: SEED.into(),
            public_entropy: "entropy".into(),
            winners: expected,
            at: at(200),
        }]);
}

#[test]
fn refunded_and_unpaid_tickets_never_win() {
    let cfg = config(10);
    let mut given = on_sale(&cfg);
    given.push(reserved(&cfg, order(1), &ana(), &[1, 2, 3], 0));
    given.extend(paid(order(1), &[1, 2, 3], "pi_1", 10));
    given.push(RaffleEvent::OrderRefunded {
        order_id: order(1),
        numbers: vec![1, 2, 3],
        amount_minor: 3 * PRICE,
        returned_to_pool: true,
        reason: "asked".into(),
        refund_id: None,
        at: at(20),
    });
    given.push(reserved(&cfg, order(2), &bob(), &[7], 30));
    given.extend(paid(order(2), &[7], "pi_2", 40));
    given.push(reserved(&cfg, order(3), &bob(), &[8], 50));
    given.push(closed(60));
    framework_at(100)
        .given(given)
        .when(draw_cmd(SEED, "e"))
        .then_expect_events(vec![RaffleEvent::WinnersDrawn {
            seed: SEED.into(),
            public_entropy: "e".into(),
            winners: vec![Winner {
                prize_index: 0,
                prize: "Car".into(),
                number: 7,
                order_id: order(2),
            }],
            at: at(100),
        }]);
}

#[test]
fn an_early_bird_prize_only_draws_tickets_issued_before_its_cutoff() {
    let mut cfg = config(10);
    cfg.prizes = vec![
        Prize {
            name: "Early bird".into(),
            early_bird_cutoff: Some(at(100)),
        },
        prize("Car"),
    ];
    let mut given = on_sale(&cfg);
    given.push(reserved(&cfg, order(1), &ana(), &[4], 0));
    given.extend(paid(order(1), &[4], "pi_1", 99));
    given.push(reserved(&cfg, order(2), &bob(), &[8], 0));
    given.extend(paid(order(2), &[8], "pi_2", 100));
    given.push(closed(150));
    let winners = |entropy: &str| {
        let events = framework_at(200)
            .given(given.clone())
            .when(draw_cmd(SEED, entropy))
            .inspect_result()
            .unwrap();
        match &events[..] {
            [RaffleEvent::WinnersDrawn { winners, .. }] => winners
                .iter()
                .map(|w| (w.prize_index, w.number, w.order_id))
                .collect::<Vec<_>>(),
            other => panic!("expected WinnersDrawn, got {other:?}"),
        }
    };
    for entropy in ["a", "b", "c", "d"] {
        assert_eq!(
            winners(entropy),
            vec![(0, 4, order(1)), (1, 8, order(2))],
            "entropy {entropy}"
        );
    }
}

#[test]
fn a_raffle_without_sold_tickets_draws_no_winners() {
    let mut given = on_sale(&config(10));
    given.push(closed(10));
    framework_at(20)
        .given(given)
        .when(draw_cmd(SEED, "e"))
        .then_expect_events(vec![RaffleEvent::WinnersDrawn {
            seed: SEED.into(),
            public_entropy: "e".into(),
            winners: vec![],
            at: at(20),
        }]);
}

#[test]
fn a_seed_that_does_not_match_the_commitment_is_refused() {
    for seed in ["Seed", "seed ", "", "other"] {
        framework_at(200)
            .given(sold_and_closed(&config(10)))
            .when(draw_cmd(seed, "e"))
            .then_expect_error(RaffleError::DrawSeedMismatch);
    }
}

#[test]
fn the_draw_happens_once_and_only_after_sales_close() {
    let cfg = config(10);
    let mut drawn = sold_and_closed(&cfg);
    drawn.push(RaffleEvent::WinnersDrawn {
        seed: SEED.into(),
        public_entropy: "e".into(),
        winners: vec![],
        at: at(150),
    });
    let cases = [
        (vec![created(cfg.clone())], RaffleStatus::Draft),
        (on_sale(&cfg), RaffleStatus::OnSale),
        (drawn, RaffleStatus::Drawn),
        (
            vec![created(cfg.clone()), cancelled("x", 1)],
            RaffleStatus::Cancelled,
        ),
    ];
    for (given, status) in cases {
        framework_at(200)
            .given(given)
            .when(draw_cmd(SEED, "e"))
            .then_expect_error(RaffleError::InvalidRaffleState {
                status,
                expected: "closed".into(),
            });
    }
}

#[test]
fn the_winners_are_kept_in_the_state() {
    let cfg = config(10);
    let mut events = sold_and_closed(&cfg);
    let drawn = framework_at(200)
        .given(events.clone())
        .when(draw_cmd(SEED, "e"))
        .inspect_result()
        .unwrap();
    events.extend(drawn.iter().cloned());
    let raffle = replay(&events);
    let [RaffleEvent::WinnersDrawn { winners, .. }] = &drawn[..] else {
        panic!("expected WinnersDrawn, got {drawn:?}");
    };
    assert_eq!(raffle.status(), RaffleStatus::Drawn);
    assert_eq!(raffle.winners(), &winners[..]);
    assert_eq!(winners.len(), 1);
}

// ----- Cancel -----

#[test]
fn cancelling_releases_holds_and_owes_refunds_for_paid_orders() {
    let cfg = config(10);
    let mut events = on_sale(&cfg);
    events.push(reserved(&cfg, order(1), &ana(), &[1, 2], 0));
    events.push(reserved(&cfg, order(2), &bob(), &[5], 0));
    events.extend(paid(order(2), &[5], "pi_2", 10));
    framework_at(30)
        .given(events.clone())
        .when(RaffleCommand::Cancel {
            reason: "venue closed".into(),
        })
        .then_expect_events(vec![cancelled("venue closed", 30)]);

    events.push(cancelled("venue closed", 30));
    let raffle = replay(&events);
    assert_eq!(raffle.status(), RaffleStatus::Cancelled);
    assert_eq!(
        raffle.order(order(1)).unwrap().status,
        OrderStatus::Released
    );
    assert_eq!(
        raffle.order(order(2)).unwrap().status,
        OrderStatus::RefundRequired
    );
    assert_eq!((raffle.available_count(), raffle.sold_count()), (10, 0));
    assert_eq!(raffle.reserved_count(), 0);
    assert_eq!(raffle.ticket_state(5), Some(TicketState::Available));
    assert_eq!(raffle.next_expiry(), None);
}

#[test]
fn a_raffle_can_be_cancelled_before_its_draw() {
    let cfg = config(10);
    let cases = [
        vec![created(cfg.clone())],
        on_sale(&cfg),
        vec![created(cfg.clone()), opened(), closed(10)],
    ];
    for given in cases {
        framework_at(30)
            .given(given)
            .when(RaffleCommand::Cancel { reason: "r".into() })
            .then_expect_events(vec![cancelled("r", 30)]);
    }
}

#[test]
fn cancelling_twice_is_a_duplicate() {
    framework_at(30)
        .given(vec![created(config(10)), opened(), cancelled("first", 10)])
        .when(RaffleCommand::Cancel {
            reason: "second".into(),
        })
        .then_expect_events(vec![]);
}

#[test]
fn a_drawn_raffle_cannot_be_cancelled() {
    let mut given = sold_and_closed(&config(10));
    given.push(RaffleEvent::WinnersDrawn {
        seed: SEED.into(),
        public_entropy: "e".into(),
        winners: vec![],
        at: at(150),
    });
    framework_at(200)
        .given(given)
        .when(RaffleCommand::Cancel { reason: "r".into() })
        .then_expect_error(RaffleError::InvalidRaffleState {
            status: RaffleStatus::Drawn,
            expected: "not yet drawn".into(),
        });
}
