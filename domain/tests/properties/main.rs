//! Random command sequences against a plain reference model.
//!
//! The model keeps orders in a `HashMap` and tickets in three `BTreeSet`s and predicts, for
//! every command, the exact outcome (events or error). Where the aggregate picks random
//! numbers, the model checks that the picked numbers were free and takes them. After every
//! step the aggregate's observable state must match the model and the global invariants must
//! hold; at the end of a case the snapshot round-trips and the log replays to the same state.

#[path = "../common/mod.rs"]
mod common;

mod checks;
mod model;
mod predict;

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tombola_domain::{
    Bundle, Buyer, ConfirmManualPayment, CreateRaffle, FixedClock, LatePaymentPolicy, Prize,
    ProviderPayment, Raffle, RaffleCommand, RaffleConfig, RaffleError, RaffleEvent, RaffleServices,
    RecordPaymentFailure, RefundOrder, Reserve, Selection,
};
use uuid::Uuid;

use checks::{check_against_model, check_compact_twin, check_draw, check_invariants, IssueLedger};
use common::{at, clock_at, eur, SEED};
use model::{fail, Model};

type Outcome = Result<Vec<RaffleEvent>, RaffleError>;

const SLOTS: usize = 10;
const HOLD: i64 = 60;
const MAX_HOLD: i64 = 300;
const ENTROPY: &str = "lottery 2024-03-02";
/// Three people, each under several spellings of their e-mail.
const EMAILS: [&str; 6] = [
    "ana@example.com",
    "ANA@Example.com",
    "bob@example.com",
    " Bob@EXAMPLE.com",
    "cy@example.org",
    "Ana@example.COM",
];

fn slot(i: usize) -> Uuid {
    Uuid::from_u128(0x5100 + i as u128)
}

// ----- the generated scenario -----

#[derive(Debug, Clone)]
struct Setup {
    ticket_count: u32,
    first_number: u32,
    substitute: bool,
    per_buyer: Option<u32>,
    bundles: bool,
    open: bool,
    rng_seed: u64,
}

/// The order a reservation is for: the first unused slot, or a given one (maybe taken).
#[derive(Debug, Clone, Copy)]
enum NewOrder {
    Fresh,
    Slot(usize),
}

/// The order an op is about, resolved when it runs: usually one of the existing orders,
/// sometimes a raw slot that may not exist.
#[derive(Debug, Clone, Copy)]
struct Target(usize);

#[derive(Debug, Clone, Copy)]
enum PaymentId {
    /// Never used before.
    Fresh,
    /// From a small pool, so that ids collide across orders.
    Pool(u8),
}

#[derive(Debug, Clone, Copy)]
enum Amount {
    Exact,
    Short,
    OtherCurrency,
}

#[derive(Debug, Clone, Copy)]
enum RefundAmount {
    Full,
    Fixed(i64),
    JustBelow,
    Exact,
    Above,
}

#[derive(Debug, Clone)]
enum Op {
    /// A second `Create` for the same stream.
    Recreate,
    OpenSales,
    /// Picks mapped onto the raffle's numbers by [`number_for`]; a few fall outside it.
    ReserveNumbers {
        order: NewOrder,
        email: usize,
        picks: Vec<u32>,
    },
    ReserveRandom {
        order: NewOrder,
        email: usize,
        quantity: u32,
    },
    Release(Target),
    /// Moves the clock, then sweeps.
    Expire {
        advance: i64,
    },
    Extend {
        target: Target,
        secs: i64,
    },
    Pay {
        target: Target,
        id: PaymentId,
        amount: Amount,
    },
    /// The provider delivers an earlier payment again, verbatim.
    Redeliver {
        back: usize,
    },
    Manual(Target),
    Fail(Target),
    Refund {
        target: Target,
        amount: RefundAmount,
    },
    Close,
    Cancel,
    Draw {
        right_seed: bool,
    },
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        6u32..=20,
        0u32..=1,
        any::<bool>(),
        prop_oneof![Just(None), (3u32..=8).prop_map(Some)],
        any::<bool>(),
        prop::bool::weighted(0.9),
        any::<u64>(),
    )
        .prop_map(
            |(ticket_count, first_number, substitute, per_buyer, bundles, open, rng_seed)| Setup {
                ticket_count,
                first_number,
                substitute,
                per_buyer,
                bundles,
                open,
                rng_seed,
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    let new_order = prop_oneof![
        9 => Just(NewOrder::Fresh),
        1 => (0..SLOTS).prop_map(NewOrder::Slot),
    ];
    let target = (0usize..40).prop_map(Target);
    let email = 0..EMAILS.len();
    let id = prop_oneof![
        3 => Just(PaymentId::Fresh),
        1 => (0u8..3).prop_map(PaymentId::Pool),
    ];
    let amount = prop_oneof![
        8 => Just(Amount::Exact),
        1 => Just(Amount::Short),
        1 => Just(Amount::OtherCurrency),
    ];
    let refund = prop_oneof![
        Just(RefundAmount::Full),
        prop::sample::select(vec![-100i64, 0, 100, 250]).prop_map(RefundAmount::Fixed),
        Just(RefundAmount::JustBelow),
        Just(RefundAmount::Exact),
        Just(RefundAmount::Above),
    ];
    prop_oneof![
        1 => Just(Op::Recreate),
        2 => Just(Op::OpenSales),
        20 => (new_order.clone(), email.clone(), prop::collection::vec(0u32..100, 0..=6))
            .prop_map(|(order, email, picks)| Op::ReserveNumbers { order, email, picks }),
        16 => (new_order, email, 0u32..=6)
            .prop_map(|(order, email, quantity)| Op::ReserveRandom { order, email, quantity }),
        5 => target.clone().prop_map(Op::Release),
        12 => (0i64..=90).prop_map(|advance| Op::Expire { advance }),
        5 => (target.clone(), 0i64..=400).prop_map(|(target, secs)| Op::Extend { target, secs }),
        24 => (target.clone(), id, amount)
            .prop_map(|(target, id, amount)| Op::Pay { target, id, amount }),
        6 => (0usize..8).prop_map(|back| Op::Redeliver { back }),
        5 => target.clone().prop_map(Op::Manual),
        2 => target.clone().prop_map(Op::Fail),
        8 => (target, refund).prop_map(|(target, amount)| Op::Refund { target, amount }),
        1 => Just(Op::Close),
        1 => Just(Op::Cancel),
        1 => any::<bool>().prop_map(|right_seed| Op::Draw { right_seed }),
    ]
}

/// How scenarios tend to end: sales close, the draw, the last payments and refunds.
fn closing_op() -> impl Strategy<Value = Op> {
    let target = (0usize..40).prop_map(Target);
    prop_oneof![
        4 => Just(Op::Close),
        4 => prop::bool::weighted(0.8).prop_map(|right_seed| Op::Draw { right_seed }),
        1 => Just(Op::Cancel),
        2 => target.clone().prop_map(|target| Op::Pay {
            target,
            id: PaymentId::Fresh,
            amount: Amount::Exact,
        }),
        1 => (0usize..8).prop_map(|back| Op::Redeliver { back }),
        2 => target.clone().prop_map(|target| Op::Refund {
            target,
            amount: RefundAmount::Full,
        }),
        1 => target.prop_map(Op::Manual),
        1 => (0i64..=90).prop_map(|advance| Op::Expire { advance }),
    ]
}

/// At most 60 steps: the body, then a closing tail.
fn script() -> impl Strategy<Value = Vec<Op>> {
    (
        prop::collection::vec(op(), 1..=54),
        prop::collection::vec(closing_op(), 0..=6),
    )
        .prop_map(|(mut body, tail)| {
            body.extend(tail);
            body
        })
}

fn create_command(setup: &Setup) -> CreateRaffle {
    let mut cmd = CreateRaffle::example(Uuid::from_u128(0xFEED), setup.ticket_count);
    cmd.first_number = setup.first_number;
    cmd.hold_seconds = Some(HOLD as u32);
    cmd.max_hold_seconds = Some(MAX_HOLD as u32);
    cmd.max_tickets_per_order = 5;
    cmd.max_tickets_per_buyer = setup.per_buyer;
    if setup.bundles {
        cmd.bundles = vec![Bundle {
            quantity: 3,
            price_minor: 1_200,
        }];
    }
    let prize = |name: &str, early_bird_cutoff| Prize {
        name: name.into(),
        early_bird_cutoff,
    };
    cmd.prizes = vec![
        prize("Car", None),
        prize("Early bird", Some(at(120))),
        prize("TV", None),
    ];
    cmd.late_payment_policy = if setup.substitute {
        LatePaymentPolicy::Substitute
    } else {
        LatePaymentPolicy::Refund
    };
    cmd
}

// ----- commands from ops -----

/// One pick in twenty lands just outside the raffle, on either side.
fn number_for(pick: u32, cfg: &RaffleConfig) -> u32 {
    let last = cfg.first_number + cfg.ticket_count - 1;
    match pick {
        0..95 => cfg.first_number + pick % cfg.ticket_count,
        95..98 => last + 1 + (pick - 95),
        _ if cfg.first_number == 0 => last + 1,
        _ => 0,
    }
}

fn new_order_id(order: NewOrder, model: &Model) -> Uuid {
    match order {
        NewOrder::Fresh => (0..SLOTS)
            .map(slot)
            .find(|id| !model.orders.contains_key(id))
            .unwrap_or(slot(0)),
        NewOrder::Slot(i) => slot(i),
    }
}

fn target_id(target: Target, model: &Model) -> Uuid {
    match model.ids.len() {
        n if n > 0 && target.0 >= 4 => model.ids[target.0 % n],
        _ => slot(target.0 % SLOTS),
    }
}

/// The command an op stands for in the current state. `sent` holds the payments delivered so
/// far, for redeliveries.
fn command_for(
    op: &Op,
    model: &Model,
    sent: &[ProviderPayment],
    now: DateTime<Utc>,
    step: usize,
) -> RaffleCommand {
    let buyer = |email: usize| Buyer::parse("Buyer", EMAILS[email], None).expect("valid email");
    match op {
        Op::Recreate => RaffleCommand::Create(CreateRaffle::example(Uuid::from_u128(0xFEED), 10)),
        Op::OpenSales => RaffleCommand::OpenSales,
        Op::ReserveNumbers {
            order,
            email,
            picks,
        } => RaffleCommand::Reserve(Reserve {
            order_id: new_order_id(*order, model),
            buyer: buyer(*email),
            selection: Selection::Numbers(
                picks.iter().map(|p| number_for(*p, &model.cfg)).collect(),
            ),
        }),
        Op::ReserveRandom {
            order,
            email,
            quantity,
        } => RaffleCommand::Reserve(Reserve {
            order_id: new_order_id(*order, model),
            buyer: buyer(*email),
            selection: Selection::Random(*quantity),
        }),
        Op::Release(target) => RaffleCommand::Release {
            order_id: target_id(*target, model),
        },
        Op::Expire { .. } => RaffleCommand::ExpireDueHolds,
        Op::Extend { target, secs } => RaffleCommand::ExtendHold {
            order_id: target_id(*target, model),
            until: now + Duration::seconds(*secs),
        },
        Op::Pay { target, id, amount } => {
            let order_id = target_id(*target, model);
            let price = model.order_price(&order_id);
            let (amount_minor, currency) = match amount {
                Amount::Exact => (price, model.cfg.currency),
                Amount::Short => (price - 1, model.cfg.currency),
                Amount::OtherCurrency => (price, eur()),
            };
            RaffleCommand::RecordPayment(ProviderPayment {
                order_id,
                provider: "stripe".into(),
                payment_id: match id {
                    PaymentId::Fresh => format!("pi_step{step}"),
                    PaymentId::Pool(k) => format!("pi_pool{k}"),
                },
                provider_event_id: format!("evt_{step}"),
                amount_minor,
                currency,
                method: "card".into(),
            })
        }
        // Nothing delivered yet: the sweep stands in, harmlessly.
        Op::Redeliver { back } => match sent.len() {
            0 => RaffleCommand::ExpireDueHolds,
            n => RaffleCommand::RecordPayment(sent[n - 1 - back % n].clone()),
        },
        Op::Manual(target) => RaffleCommand::ConfirmManualPayment(ConfirmManualPayment {
            order_id: target_id(*target, model),
            method: "cash".into(),
            reference: format!("receipt {step}"),
            confirmed_by: "organizer".into(),
        }),
        Op::Fail(target) => RaffleCommand::RecordPaymentFailure(RecordPaymentFailure {
            order_id: target_id(*target, model),
            provider: "stripe".into(),
            payment_id: format!("pi_failed_{step}"),
            provider_event_id: format!("evt_{step}"),
            reason: "card_declined".into(),
        }),
        Op::Refund { target, amount } => {
            let order_id = target_id(*target, model);
            let price = model.order_price(&order_id);
            RaffleCommand::Refund(RefundOrder {
                order_id,
                amount_refunded_minor: match amount {
                    RefundAmount::Full => None,
                    RefundAmount::Fixed(x) => Some(*x),
                    RefundAmount::JustBelow => Some(price - 1),
                    RefundAmount::Exact => Some(price),
                    RefundAmount::Above => Some(price + 50),
                },
                reason: "requested_by_customer".into(),
                refund_id: Some(format!("re_{step}")),
            })
        }
        Op::Close => RaffleCommand::CloseSales,
        Op::Cancel => RaffleCommand::Cancel {
            reason: "organizer".into(),
        },
        Op::Draw { right_seed } => RaffleCommand::Draw {
            seed: if *right_seed { SEED } else { "guess" }.into(),
            public_entropy: ENTROPY.into(),
        },
    }
}

// ----- the property -----

fn run(setup: Setup, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let clock = clock_at(0);
    let services = RaffleServices::deterministic(setup.rng_seed, clock.clone());
    let mut raffle = Raffle::default();
    let mut history: Vec<RaffleEvent> = Vec::new();
    let created = raffle
        .decide(RaffleCommand::Create(create_command(&setup)), &services)
        .map_err(|e| fail(format!("create refused: {e}")))?;
    let [RaffleEvent::RaffleCreated { config, .. }] = &created[..] else {
        return Err(fail(format!("unexpected create outcome {created:?}")));
    };
    prop_assert_eq!(config.ticket_count, setup.ticket_count);
    prop_assert_eq!(config.max_tickets_per_buyer, setup.per_buyer);
    let mut model = Model::new(config.clone());
    for event in &created {
        raffle.apply_event(event);
    }
    // The same raffle kept compact (decision 0022), deciding with its log: it must decide
    // exactly as the full one, randomness and all (a raffle limiting buyers stays full).
    let twin_services = RaffleServices::deterministic(setup.rng_seed, clock.clone());
    let mut twin = raffle.clone();
    let compact = twin.compact();
    prop_assert_eq!(compact, setup.per_buyer.is_none());
    history.extend(created);

    let mut script = ops;
    if setup.open {
        script.insert(0, Op::OpenSales);
    }
    let mut ledger = IssueLedger::default();
    let mut sent: Vec<ProviderPayment> = Vec::new();
    for (step, op) in script.iter().enumerate() {
        if let Op::Expire { advance } = op {
            clock.advance(Duration::seconds(*advance));
        }
        let now = services.now();
        let command = command_for(op, &model, &sent, now, step);
        if let RaffleCommand::RecordPayment(payment) = &command {
            sent.push(payment.clone());
        }

        let before = raffle.clone();
        let actual = raffle.decide(command.clone(), &services);
        prop_assert_eq!(&raffle, &before, "decide changed the state: {:?}", command);

        let expected = model.predict(&command, now, &actual)?;
        prop_assert_eq!(&actual, &expected, "step {}: {:?}", step, command);
        let twin_actual = twin.decide_from_log(command.clone(), &twin_services, &history);
        prop_assert_eq!(
            &twin_actual,
            &actual,
            "compact twin, step {}: {:?}",
            step,
            command
        );

        if let Ok(events) = actual {
            ledger.record(&events)?;
            for event in &events {
                raffle.apply_event(event);
                twin.apply_event(event);
                model.evolve(event)?;
            }
            check_draw(&events, &model)?;
            history.extend(events);
        }
        check_against_model(&raffle, &model)?;
        check_invariants(&raffle, setup.ticket_count)?;
        if step % 4 == 3 {
            twin.compact();
            let decoded = Raffle::decode_snapshot(&twin.encode_snapshot())
                .map_err(|e| fail(format!("compact snapshot does not decode: {e}")))?;
            prop_assert_eq!(&decoded, &twin);
            twin = decoded;
        }
        check_compact_twin(&twin, &raffle, &history)?;
    }

    let decoded = Raffle::decode_snapshot(&raffle.encode_snapshot())
        .map_err(|e| fail(format!("snapshot does not decode: {e}")))?;
    prop_assert_eq!(&decoded, &raffle);
    let json = serde_json::to_string(&raffle).map_err(|e| fail(e.to_string()))?;
    let from_json: Raffle = serde_json::from_str(&json).map_err(|e| fail(e.to_string()))?;
    prop_assert_eq!(&from_json, &raffle);
    let mut replayed = Raffle::default();
    for event in &history {
        replayed.apply_event(event);
    }
    prop_assert_eq!(&replayed, &raffle);
    // The restored aggregate decides like the live one, randomness and all.
    let mut probes = vec![
        RaffleCommand::Reserve(Reserve {
            order_id: slot(SLOTS),
            buyer: Buyer::parse("Probe", EMAILS[0], None).unwrap(),
            selection: Selection::Random(2),
        }),
        RaffleCommand::ExpireDueHolds,
    ];
    probes.extend(sent.last().cloned().map(RaffleCommand::RecordPayment));
    let later = Arc::new(FixedClock::new(services.now() + Duration::seconds(HOLD)));
    for probe in probes {
        let live = raffle.decide(
            probe.clone(),
            &RaffleServices::deterministic(1, later.clone()),
        );
        let restored = decoded.decide(probe, &RaffleServices::deterministic(1, later.clone()));
        prop_assert_eq!(restored, live);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_command_sequences_match_the_reference_model(
        setup in setup(),
        ops in script(),
    ) {
        run(setup, ops)?;
    }
}
