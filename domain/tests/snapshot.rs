//! The snapshot encoding: every piece of state survives `encode`/`decode` and the JSON
//! (base64) wrapper cqrs-es stores; damaged bytes give an error, never a panic.

mod common;

use std::sync::LazyLock;

use base64::Engine as _;
use proptest::prelude::*;
use tombola_domain::{
    Buyer, ConfirmManualPayment, CreateRaffle, LatePaymentPolicy, OrderStatus, Raffle,
    RaffleCommand, RaffleEvent, RaffleStatus, RefundOrder, Reserve, Selection, SnapshotError,
};
use uuid::Uuid;

use common::{order, pay_cmd, raffle_id, reserve_cmd, Sim, SEED};

fn person(n: u32) -> Buyer {
    Buyer::parse("Buyer", &format!("Buyer{n}@Example.com"), None).unwrap()
}

fn refund_cmd(order_id: Uuid, amount: Option<i64>) -> RaffleCommand {
    RaffleCommand::Refund(RefundOrder {
        order_id,
        amount_refunded_minor: amount,
        reason: "requested_by_customer".into(),
        refund_id: None,
    })
}

/// A closed raffle whose orders are in every status, with a substituted late payment, a
/// partial refund, a payment for an unknown order, a flagged payment and an extended hold.
fn every_status() -> Sim {
    every_status_with(Some(20))
}

fn every_status_with(max_tickets_per_buyer: Option<u32>) -> Sim {
    let mut sim = Sim::new(11);
    let mut create = CreateRaffle::example(raffle_id(), 30);
    create.hold_seconds = Some(60);
    create.max_hold_seconds = Some(600);
    create.max_tickets_per_buyer = max_tickets_per_buyer;
    create.late_payment_policy = LatePaymentPolicy::Substitute;
    sim.exec(RaffleCommand::Create(create));
    sim.exec(RaffleCommand::OpenSales);

    sim.exec(reserve_cmd(order(4), &person(4), &[6, 7]));
    sim.exec(reserve_cmd(order(6), &person(6), &[9]));
    sim.advance(61);
    sim.exec(RaffleCommand::ExpireDueHolds);
    sim.exec(reserve_cmd(order(7), &person(7), &[9]));
    sim.exec(pay_cmd(order(7), "pi_7", 500));
    let substituted = sim.exec(pay_cmd(order(6), "pi_6", 500));
    assert!(
        matches!(&substituted[1], RaffleEvent::TicketsIssued { replaced_numbers, .. } if replaced_numbers == &vec![9]),
        "{substituted:?}"
    );

    sim.exec(reserve_cmd(order(2), &person(2), &[3, 4]));
    sim.exec(pay_cmd(order(2), "pi_2", 1_000));
    sim.exec(refund_cmd(order(2), Some(300)));
    sim.exec(reserve_cmd(order(3), &person(3), &[5]));
    sim.exec(RaffleCommand::Release { order_id: order(3) });
    sim.exec(reserve_cmd(order(5), &person(5), &[8]));
    sim.exec(RaffleCommand::ConfirmManualPayment(ConfirmManualPayment {
        order_id: order(5),
        method: "cash".into(),
        reference: "r".into(),
        confirmed_by: "org".into(),
    }));
    sim.exec(refund_cmd(order(5), None));
    sim.exec(reserve_cmd(order(1), &person(1), &[1, 2]));
    sim.exec(RaffleCommand::ExtendHold {
        order_id: order(1),
        until: sim.services.now() + chrono::Duration::seconds(300),
    });
    sim.exec(pay_cmd(order(1), "pi_short", 999));
    // Whichever number the substitution above did not take.
    let free = (10..=30)
        .find(|n| sim.raffle.ticket_state(*n) == Some(tombola_domain::TicketState::Available))
        .expect("a free number");
    sim.exec(reserve_cmd(order(8), &person(1), &[free]));
    sim.exec(pay_cmd(order(99), "pi_unknown", 500));
    sim.exec(RaffleCommand::CloseSales);
    sim.exec(pay_cmd(order(8), "pi_8", 500));
    sim
}

fn statuses(raffle: &Raffle) -> Vec<OrderStatus> {
    (1..=8)
        .map(|n| raffle.order(order(n)).expect("order exists").status)
        .collect()
}

fn round_trip(raffle: &Raffle) -> Raffle {
    Raffle::decode_snapshot(&raffle.encode_snapshot()).expect("a fresh snapshot decodes")
}

#[test]
fn a_raffle_with_orders_in_every_status_round_trips() {
    let sim = every_status();
    let raffle = &sim.raffle;
    use OrderStatus::*;
    assert_eq!(
        statuses(raffle),
        vec![
            Reserved,
            Paid,
            Released,
            Expired,
            Refunded,
            Paid,
            Paid,
            RefundRequired
        ]
    );
    assert_eq!(raffle.status(), RaffleStatus::Closed);

    let decoded = round_trip(raffle);
    assert_eq!(&decoded, raffle);
    for n in 1..=8 {
        assert_eq!(decoded.order(order(n)), raffle.order(order(n)));
    }
    assert_eq!(decoded.order(order(6)).unwrap().numbers.len(), 1);
    assert_ne!(decoded.order(order(6)).unwrap().numbers, vec![9]);
    assert_eq!(decoded.next_expiry(), raffle.next_expiry());
    assert_eq!(decoded.free_numbers(), raffle.free_numbers());
    // The log replays to the same state too.
    assert_eq!(&common::replay(&sim.history), raffle);
}

#[test]
fn the_json_form_is_base64_of_the_snapshot() {
    let raffle = every_status().raffle;
    let json = serde_json::to_value(&raffle).unwrap();
    let text = json.as_str().expect("a JSON string");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("standard base64");
    assert_eq!(&bytes[..5], b"TMBS\x01");
    assert_eq!(Raffle::decode_snapshot(&bytes).unwrap(), raffle);
    let back: Raffle = serde_json::from_value(json).unwrap();
    assert_eq!(back, raffle);
}

#[test]
fn a_restored_raffle_decides_like_the_original() {
    let sim = every_status();
    let decoded = round_trip(&sim.raffle);
    let commands = vec![
        // Duplicates stay duplicates.
        pay_cmd(order(2), "pi_2", 1_000),
        pay_cmd(order(99), "pi_unknown", 500),
        pay_cmd(order(1), "pi_short", 999),
        refund_cmd(order(2), Some(300)),
        refund_cmd(order(5), None),
        // A payment id on another order is still recognised.
        pay_cmd(order(1), "pi_2", 1_000),
        refund_cmd(order(2), Some(400)),
        RaffleCommand::Release { order_id: order(1) },
        RaffleCommand::ExpireDueHolds,
    ];
    for command in commands {
        let original = sim.raffle.decide(command.clone(), &sim.services);
        let restored = decoded.decide(command.clone(), &sim.services);
        assert_eq!(restored, original, "{command:?}");
    }
    assert_eq!(
        decoded.decide(pay_cmd(order(2), "pi_2", 1_000), &sim.services),
        Ok(vec![])
    );
}

#[test]
fn per_buyer_counts_are_rebuilt_on_decode() {
    let mut sim = Sim::new(3);
    let mut create = CreateRaffle::example(raffle_id(), 20);
    create.max_tickets_per_buyer = Some(3);
    sim.exec(RaffleCommand::Create(create));
    sim.exec(RaffleCommand::OpenSales);
    sim.exec(reserve_cmd(order(1), &person(1), &[1, 2]));
    sim.exec(reserve_cmd(order(2), &person(1), &[3]));
    sim.exec(RaffleCommand::Release { order_id: order(2) });
    let decoded = round_trip(&sim.raffle);
    assert_eq!(decoded, sim.raffle);
    let shouting = Buyer::parse("B", "BUYER1@example.COM", None).unwrap();
    for raffle in [&sim.raffle, &decoded] {
        assert!(raffle
            .decide(reserve_cmd(order(3), &shouting, &[4]), &sim.services)
            .is_ok());
        assert!(raffle
            .decide(reserve_cmd(order(3), &shouting, &[4, 5]), &sim.services)
            .is_err());
    }
}

#[test]
fn drawn_cancelled_and_empty_raffles_round_trip() {
    let mut drawn = every_status();
    drawn.exec(RaffleCommand::Draw {
        seed: SEED.into(),
        public_entropy: "e".into(),
    });
    assert_eq!(drawn.raffle.winners().len(), 1);
    let decoded = round_trip(&drawn.raffle);
    assert_eq!(decoded, drawn.raffle);
    assert_eq!(decoded.winners(), drawn.raffle.winners());

    let mut cancelled = Sim::new(5);
    cancelled.exec(RaffleCommand::Create(CreateRaffle::example(
        raffle_id(),
        10,
    )));
    cancelled.exec(RaffleCommand::OpenSales);
    cancelled.exec(RaffleCommand::Reserve(Reserve {
        order_id: order(1),
        buyer: person(1),
        selection: Selection::Random(3),
    }));
    cancelled.exec(RaffleCommand::Cancel { reason: "r".into() });
    assert_eq!(round_trip(&cancelled.raffle), cancelled.raffle);

    let empty = Raffle::default();
    assert_eq!(round_trip(&empty), empty);
    assert!(round_trip(&empty).config().is_none());
}

// ----- damaged snapshots -----

/// Where each of the six length-prefixed sections starts (after its length).
fn sections(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut at = 5;
    let mut found = Vec::new();
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        found.push((at + 4, len));
        at += 4 + len;
    }
    let expected = if bytes[4] == 2 { 8 } else { 6 };
    assert_eq!(found.len(), expected, "the documented layout's sections");
    found
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = every_status().raffle.encode_snapshot();
    for len in 0..bytes.len() {
        assert!(
            Raffle::decode_snapshot(&bytes[..len]).is_err(),
            "a snapshot cut at {len} of {} bytes decoded",
            bytes.len()
        );
    }
}

#[test]
fn foreign_bytes_and_unknown_versions_are_refused() {
    let bytes = every_status().raffle.encode_snapshot();
    let mut other_version = bytes.clone();
    other_version[4] = 3;
    let mut other_magic = bytes.clone();
    other_magic[0] = b'X';
    for bad in [other_version, other_magic, b"{\"config\":null}".to_vec()] {
        assert!(matches!(
            Raffle::decode_snapshot(&bad),
            Err(SnapshotError::UnknownFormat)
        ));
    }
}

#[test]
fn corrupt_sections_are_refused() {
    let bytes = every_status().raffle.encode_snapshot();
    let s = sections(&bytes);

    let mut header = bytes.clone();
    header[s[0].0] = b'!';
    let mut bitmap = bytes.clone();
    bitmap[s[1].0..s[1].0 + 4].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    let mut status = bytes.clone();
    status[s[3].0 + 4 + 16] = 9;
    for bad in [header, bitmap, status] {
        assert!(matches!(
            Raffle::decode_snapshot(&bad),
            Err(SnapshotError::Corrupt(_))
        ));
    }
}

#[test]
fn counts_larger_than_their_section_are_refused() {
    let bytes = every_status().raffle.encode_snapshot();
    let s = sections(&bytes);
    for (section, count) in [(3, 9), (3, u32::MAX), (4, u32::MAX), (5, u32::MAX)] {
        let mut bad = bytes.clone();
        bad[s[section].0..s[section].0 + 4].copy_from_slice(&count.to_le_bytes());
        assert!(
            matches!(Raffle::decode_snapshot(&bad), Err(SnapshotError::Truncated)),
            "count {count} in section {section}"
        );
    }
}

#[test]
fn bad_json_is_an_error() {
    for json in ["\"!!not base64!!\"", "\"AAAA\"", "\"\"", "42", "{}", "null"] {
        assert!(serde_json::from_str::<Raffle>(json).is_err(), "{json}");
    }
}

static SNAPSHOT: LazyLock<Vec<u8>> = LazyLock::new(|| every_status().raffle.encode_snapshot());

// ----- compact raffles (decision 0022) -----

fn compacted(raffle: &Raffle) -> Raffle {
    let mut compact = raffle.clone();
    assert!(compact.compact());
    compact
}

#[test]
fn a_compact_raffle_round_trips_and_shows_every_order_from_its_log() {
    let sim = every_status_with(None);
    let full = &sim.raffle;
    let compact = compacted(full);
    assert!(compact.is_compact());
    let bytes = compact.encode_snapshot();
    assert_eq!(bytes[4], 2, "version 2: compact");
    assert!(bytes.len() < full.encode_snapshot().len());
    let decoded = Raffle::decode_snapshot(&bytes).unwrap();
    assert_eq!(decoded, compact);
    // Only the live hold keeps a record; every other order is read from the log.
    assert!(decoded.order(order(1)).is_some());
    assert_eq!(decoded.order(order(2)), None);
    for n in 1..=8 {
        assert_eq!(
            decoded.order_from_log(order(n), &sim.history),
            full.order(order(n)),
            "order {n}"
        );
    }
    assert_eq!(decoded.order_from_log(order(99), &sim.history), None);
    assert_eq!(decoded.order_count(), full.order_count());
    assert_eq!(decoded.free_numbers(), full.free_numbers());
    assert_eq!(decoded.sold_count(), full.sold_count());
    assert_eq!(decoded.next_expiry(), full.next_expiry());
    // An old (version 1) snapshot still loads, and compacts to the same state.
    let old = Raffle::decode_snapshot(&full.encode_snapshot()).unwrap();
    assert!(!old.is_compact());
    assert_eq!(compacted(&old), compact);
    // The log replayed into a compact raffle reaches it too.
    let mut replayed = Raffle::default();
    for (i, event) in sim.history.iter().enumerate() {
        replayed.apply_event(event);
        if i == 1 {
            assert!(replayed.compact());
        }
    }
    assert_eq!(compacted(&replayed), compact);
}

#[test]
fn after_a_reload_a_compact_raffle_decides_settled_orders_from_its_log() {
    let sim = every_status_with(None);
    let full = &sim.raffle;
    let compact = round_trip(&compacted(full));
    let mut repeat = pay_cmd(order(7), "pi_7", 500);
    if let RaffleCommand::RecordPayment(payment) = &mut repeat {
        payment.provider_event_id = "evt_again".into();
    }
    let commands = [
        // A repeated webhook for a paid order: nothing.
        repeat,
        // A second, different payment for a paid order: refund required.
        pay_cmd(order(7), "pi_7_twice", 500),
        // The same payment id for another order: flagged.
        pay_cmd(order(2), "pi_7", 1_000),
        // A late payment for an expired hold, after sales closed.
        pay_cmd(order(4), "pi_4", 1_000),
        // Refunds: the rest of a partly refunded order, one already refunded, a paid one.
        refund_cmd(order(2), None),
        refund_cmd(order(5), None),
        refund_cmd(order(7), Some(100)),
        refund_cmd(order(8), None),
        RaffleCommand::Release { order_id: order(3) },
        RaffleCommand::Release { order_id: order(7) },
        RaffleCommand::ConfirmManualPayment(ConfirmManualPayment {
            order_id: order(7),
            method: "cash".into(),
            reference: "r".into(),
            confirmed_by: "org".into(),
        }),
        RaffleCommand::Draw {
            seed: SEED.into(),
            public_entropy: "block 1".into(),
        },
    ];
    for command in commands {
        let expected = full.decide(command.clone(), &sim.services);
        // Asked without its log, it names what it needs instead of guessing.
        let asked = compact.decide_with(command.clone(), &sim.services, &Default::default());
        assert!(
            asked.is_err(),
            "{command:?} decided without its log: {asked:?}"
        );
        let actual = compact.decide_from_log(command.clone(), &sim.services, &sim.history);
        assert_eq!(actual, expected, "{command:?}");
    }
}

#[test]
fn damaged_compact_snapshots_are_errors() {
    let bytes = compacted(&every_status_with(None).raffle).encode_snapshot();
    for len in 0..bytes.len() {
        assert!(
            Raffle::decode_snapshot(&bytes[..len]).is_err(),
            "cut at {len}"
        );
    }
    let s = sections(&bytes);
    // Order digests out of order.
    let mut unsorted = bytes.clone();
    let at = s[4].0 + 4;
    let (first, second) = (bytes[at..at + 8].to_vec(), bytes[at + 8..at + 16].to_vec());
    unsorted[at..at + 8].copy_from_slice(&second);
    unsorted[at + 8..at + 16].copy_from_slice(&first);
    assert!(matches!(
        Raffle::decode_snapshot(&unsorted),
        Err(SnapshotError::Corrupt(_))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_after_the_magic_are_an_error(tail in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut bytes = b"TMBS\x01".to_vec();
        bytes.extend(tail);
        prop_assert!(Raffle::decode_snapshot(&bytes).is_err());
    }

    #[test]
    fn damaged_snapshots_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = SNAPSHOT.clone();
        for (index, value) in edits {
            let i = index.index(bytes.len());
            bytes[i] = value;
        }
        // Ok or Err, as long as it returns.
        let _ = Raffle::decode_snapshot(&bytes);
    }
}
