//! The write-path defects of issue 19, each against a real PostgreSQL: a node that is behind
//! must not refuse for good, one bad command must not fail its batch, and a commit whose
//! outcome is unknown must say so.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tombola::engine::remote_commits;
use tombola::engine::{Engine, EngineConfig, EngineError};
use tombola::store::EVENTS_CHANNEL;
use tombola::testing::Faults;
use tombola_domain::{ConfirmManualPayment, RaffleCommand, RaffleEvent, RecordPaymentFailure};
use uuid::Uuid;

use tombola_testkit::engine::*;
use tombola_testkit::{eventually, TestDb};

/// Reservations in the log.
fn reservations<'a>(events: impl IntoIterator<Item = &'a RaffleEvent>) -> usize {
    events
        .into_iter()
        .filter(|e| matches!(e, RaffleEvent::TicketsReserved { .. }))
        .count()
}

/// Commands without an idempotency record (webhooks carry none), refused by a node that has
/// not seen the order another node created: each must be decided again on the current
/// stream, not refused with `order_not_found` for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_is_behind_decides_refusals_again_on_the_current_stream() {
    let db = TestDb::new(10).await;
    let behind = Engine::new(db.store.clone(), EngineConfig::default());
    let other = Engine::new(db.connect(4).await, EngineConfig::default());
    let raffle_id = open_raffle(&behind, 100, |_| {}).await;

    let extended = Uuid::new_v4();
    let released = Uuid::new_v4();
    for (order_id, number) in [(extended, 7), (released, 8)] {
        other
            .execute(
                raffle_id,
                reserve_numbers(order_id, buyer(1), &[number]),
                meta(),
            )
            .await
            .expect("the other node reserves");
    }
    let until = chrono::Utc::now() + chrono::Duration::minutes(20);
    let extension = behind
        .execute(
            raffle_id,
            RaffleCommand::ExtendHold {
                order_id: extended,
                until,
            },
            webhook_meta(),
        )
        .await
        .expect("the hold of an order created on another node is extended");
    assert!(
        matches!(
            extension.events.as_slice(),
            [e] if matches!(e.event, RaffleEvent::HoldExtended { order_id, .. } if order_id == extended)
        ),
        "{extension:?}"
    );
    // The node is current now; another order created meanwhile is again unknown to it.
    let late = Uuid::new_v4();
    other
        .execute(raffle_id, reserve_numbers(late, buyer(2), &[9]), meta())
        .await
        .unwrap();
    for order_id in [released, late] {
        let release = behind
            .execute(raffle_id, RaffleCommand::Release { order_id }, meta())
            .await
            .expect("an order created on another node is released");
        assert_eq!(release.events.len(), 1, "{release:?}");
    }
    // A payment failure (a webhook) and a manual payment (the organizer), each for an order
    // this node has not seen yet.
    let (failing, manual) = (Uuid::new_v4(), Uuid::new_v4());
    for (order_id, number) in [(failing, 10), (manual, 11)] {
        other
            .execute(
                raffle_id,
                reserve_numbers(order_id, buyer(3), &[number]),
                meta(),
            )
            .await
            .unwrap();
    }
    let failure = behind
        .execute(
            raffle_id,
            RaffleCommand::RecordPaymentFailure(RecordPaymentFailure {
                order_id: failing,
                provider: "stripe".into(),
                payment_id: "pi_1".into(),
                provider_event_id: "evt_1".into(),
                reason: "card_declined".into(),
            }),
            webhook_meta(),
        )
        .await
        .expect("a failure for an order created on another node is recorded");
    assert_eq!(failure.events.len(), 1, "{failure:?}");
    let paid = behind
        .execute(
            raffle_id,
            RaffleCommand::ConfirmManualPayment(ConfirmManualPayment {
                order_id: manual,
                method: "cash".into(),
                reference: "r-1".into(),
                confirmed_by: "organizer".into(),
            }),
            meta(),
        )
        .await
        .expect("an order created on another node is paid by hand");
    assert!(
        paid.events.iter().any(
            |e| matches!(e.event, RaffleEvent::TicketsIssued { order_id, .. } if order_id == manual)
        ),
        "{paid:?}"
    );
    let log = log(&db.store, raffle_id).await;
    let releases = log
        .iter()
        .filter(|s| matches!(s.event, RaffleEvent::ReservationReleased { .. }))
        .count();
    assert_eq!(releases, 2);
    assert_eq!(
        verify_chain(db.pool(), raffle_id).await,
        Ok(log.len() as u64)
    );

    behind.shutdown().await;
    other.shutdown().await;
    db.drop_database().await;
}

/// A node that refused on a stale state reads only the events after its tip before it
/// decides again, instead of loading the whole raffle (issue 19: a conflict reloaded up to
/// ~1.7M events). Shown by an early event that no longer decodes: a full reload would stop
/// on it and answer `unavailable`; the catch-up never reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_refused_on_a_stale_state_reads_only_the_events_after_its_tip() {
    let db = TestDb::new(10).await;
    let behind = Engine::new(db.store.clone(), EngineConfig::default());
    let other = Engine::new(db.connect(4).await, EngineConfig::default());
    let raffle_id = open_raffle(&behind, 100, |_| {}).await;
    let order_id = Uuid::new_v4();
    other
        .execute(raffle_id, reserve_numbers(order_id, buyer(1), &[7]), meta())
        .await
        .expect("the other node reserves");
    // Everything up to `behind`'s tip becomes unreadable: only a full load reads it.
    let spoiled = sqlx::query(
        "UPDATE events SET payload = '{\"NoSuchEvent\": {}}' \
         WHERE aggregate_id = $1 AND sequence <= 2",
    )
    .bind(raffle_id.to_string())
    .execute(db.pool())
    .await
    .unwrap();
    assert_eq!(spoiled.rows_affected(), 2);
    assert!(db.store.load_raffle(raffle_id).await.is_err());

    let release = behind
        .execute(raffle_id, RaffleCommand::Release { order_id }, meta())
        .await
        .expect("decided again after reading only the events after the tip");
    assert!(
        matches!(
            release.events.as_slice(),
            [e] if matches!(e.event, RaffleEvent::ReservationReleased { order_id: o, .. } if o == order_id)
        ),
        "{release:?}"
    );

    behind.shutdown().await;
    other.shutdown().await;
    db.drop_database().await;
}

/// Notices sent while a node's LISTEN connection is down are lost. Once it listens again,
/// every resident raffle must catch up, or the node stays behind without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_connects_makes_resident_raffles_catch_up() {
    let db = TestDb::new(10).await;
    let node = Engine::new(db.store.clone(), EngineConfig::default());
    let other = Engine::new(db.connect(4).await, EngineConfig::default());
    let raffle_id = open_raffle(&node, 100, |_| {}).await;
    // Committed while `node` listens to nobody: its notice is lost for `node`. (A witness
    // hears it go by, so that the node's listener cannot connect in time to hear it too.)
    let mut witness = PgListener::connect_with(db.pool()).await.unwrap();
    witness.listen(EVENTS_CHANNEL).await.unwrap();
    let order_id = Uuid::new_v4();
    let reserved = other
        .execute(raffle_id, reserve_numbers(order_id, buyer(1), &[7]), meta())
        .await
        .unwrap();
    // The notice names the batch's tip, which may lie past this command's own events.
    let committed = reserved.events.last().unwrap().sequence;
    let heard = async {
        loop {
            let notice = witness.recv().await.unwrap();
            if let Some((raffle, tip)) = notice.payload().split_once(':') {
                if raffle == raffle_id.to_string() && tip.parse::<u64>().unwrap() >= committed {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), heard)
        .await
        .expect("the commit's notice went by");
    let listener = remote_commits::listen(node.clone(), db.store.clone());
    eventually(Duration::from_secs(10), "the node to catch up", || {
        let node = node.clone();
        async move {
            node.read(raffle_id, move |raffle| raffle.order(order_id).is_some())
                .await
                .ok()
                .filter(|known| *known)
        }
    })
    .await;

    listener.abort();
    node.shutdown().await;
    other.shutdown().await;
    db.drop_database().await;
}

/// A value the domain takes but PostgreSQL cannot store (U+0000 in `jsonb`, here in a
/// provider's failure reason kept in an idempotency record) must fail its own command only:
/// every reservation batched with it commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_the_database_refuses_fails_alone_not_its_batch() {
    let (engine, db) = start_engine(EngineConfig::default()).await;
    let raffle_id = open_raffle(&engine, 1_000, |_| {}).await;
    let held = Uuid::new_v4();
    engine
        .execute(raffle_id, reserve_numbers(held, buyer(0), &[1_000]), meta())
        .await
        .unwrap();
    let mut next = 1;
    for round in 0..5 {
        let bad = engine.execute(
            raffle_id,
            RaffleCommand::RecordPaymentFailure(RecordPaymentFailure {
                order_id: held,
                provider: "stripe".into(),
                payment_id: "pi_1".into(),
                provider_event_id: format!("evt_{round}"),
                reason: "card\0declined".into(),
            }),
            keyed_meta(&format!("bad-{round}"), b"bad"),
        );
        let first = next;
        let good = (0..20).map(|i| {
            let number = first + i;
            engine.execute(
                raffle_id,
                reserve_numbers(Uuid::new_v4(), buyer(u64::from(number)), &[number]),
                meta(),
            )
        });
        next += 20;
        let (bad, good) = tokio::join!(bad, futures::future::join_all(good));
        assert!(bad.is_err(), "the database cannot store it: {bad:?}");
        for result in good {
            let applied = result.expect("a command batched with the bad one commits");
            assert_eq!(applied.events.len(), 1);
        }
    }
    let log = log(&db.store, raffle_id).await;
    assert_eq!(reservations(log.iter().map(|s| &s.event)), 101);
    assert_eq!(
        verify_chain(db.pool(), raffle_id).await,
        Ok(log.len() as u64)
    );
    assert_eq!(
        engine_state(&engine, raffle_id).await,
        db.store.load_raffle(raffle_id).await.unwrap().raffle
    );

    engine.shutdown().await;
    db.drop_database().await;
}

/// An idempotency key the database cannot even look up (U+0000 in `text`) fails its own
/// command only, not the commands decided in the same turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_database_cannot_read_fails_alone_not_its_batch() {
    let (engine, db) = start_engine(EngineConfig::default()).await;
    let raffle_id = open_raffle(&engine, 1_000, |_| {}).await;
    for round in 0..5u32 {
        let bad = engine.execute(
            raffle_id,
            reserve_numbers(Uuid::new_v4(), buyer(0), &[900 + round]),
            keyed_meta(&format!("bad\0{round}"), b"bad"),
        );
        let good = (0..20).map(|i| {
            let number = round * 20 + i + 1;
            engine.execute(
                raffle_id,
                reserve_numbers(Uuid::new_v4(), buyer(u64::from(number)), &[number]),
                keyed_meta(&format!("good-{number}"), b"good"),
            )
        });
        let (bad, good) = tokio::join!(bad, futures::future::join_all(good));
        assert!(bad.is_err(), "the database cannot read it: {bad:?}");
        for result in good {
            result.expect("a command decided with the bad one commits");
        }
    }
    let log = log(&db.store, raffle_id).await;
    assert_eq!(reservations(log.iter().map(|s| &s.event)), 100);

    engine.shutdown().await;
    db.drop_database().await;
}

/// The append is sent and the connection is lost before any reply, and the stream does not
/// show the batch: the caller must hear "outcome unknown", never "unavailable" (which a
/// client takes to mean nothing happened, and retries without a key into a second hold).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_lost_without_a_trace_is_answered_outcome_unknown() {
    let faults = Arc::new(Faults::default());
    let db = TestDb::new(10).await;
    let engine = Engine::with_faults(db.store.clone(), EngineConfig::default(), faults.clone());
    let raffle_id = open_raffle(&engine, 100, |_| {}).await;
    faults.lose_appends(1);
    let lost = engine
        .execute(
            raffle_id,
            reserve_numbers(Uuid::new_v4(), buyer(1), &[7]),
            meta(),
        )
        .await;
    assert!(
        matches!(lost, Err(EngineError::OutcomeUnknown { .. })),
        "{lost:?}"
    );
    // It did not commit, and the raffle goes on from the stream as it is.
    let held = engine
        .execute(
            raffle_id,
            reserve_numbers(Uuid::new_v4(), buyer(2), &[7]),
            meta(),
        )
        .await
        .expect("7 is free");
    let log = log(&db.store, raffle_id).await;
    assert_in_log(&log, &held);
    assert_eq!(reservations(log.iter().map(|s| &s.event)), 1);

    engine.shutdown().await;
    db.drop_database().await;
}

/// The append committed, its reply was lost, and the writer stopped before it could confirm
/// (here a crash, as when its task panics or its reload fails with the database down): the
/// caller must hear "outcome unknown", never "unavailable", since the hold is in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_stops_with_an_append_in_doubt_answers_outcome_unknown() {
    let faults = Arc::new(Faults::default());
    let db = TestDb::new(10).await;
    let engine = Engine::with_faults(db.store.clone(), EngineConfig::default(), faults.clone());
    let raffle_id = open_raffle(&engine, 100, |_| {}).await;
    faults.lose_commit_replies(1);
    faults.crash_writers_in_doubt(1);
    let order_id = Uuid::new_v4();
    let in_doubt = engine
        .execute(raffle_id, reserve_numbers(order_id, buyer(1), &[7]), meta())
        .await;
    assert!(
        matches!(in_doubt, Err(EngineError::OutcomeUnknown { .. })),
        "{in_doubt:?}"
    );
    // It did commit.
    let log = log(&db.store, raffle_id).await;
    assert_eq!(reservations(log.iter().map(|s| &s.event)), 1);

    engine.shutdown().await;
    db.drop_database().await;
}

/// Errors the server raises as it shuts down or terminates a backend (SQLSTATE 57P01 and
/// its neighbours) can arrive after the statement's commit was durable: they must not
/// count as "certainly stored nothing", or the batch is decided again and stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_backend_leaves_the_append_in_doubt() {
    use tombola::store::{AppendError, StoreError};
    let db = TestDb::new(2).await;
    let raised = |code: &'static str| {
        let pool = db.store.pool().clone();
        async move {
            let error = sqlx::query(&format!(
                "DO $$ BEGIN RAISE EXCEPTION 'raised' USING ERRCODE = '{code}'; END $$"
            ))
            .execute(&pool)
            .await
            .expect_err("it raises");
            AppendError::Store(StoreError::Database(error))
        }
    };
    for code in ["57P01", "57P02", "08006", "XX000", "58030"] {
        assert!(!raised(code).await.stored_nothing(), "{code} is in doubt");
    }
    // A statement the server refused (bad data, a check) stored nothing.
    for code in ["22P02", "23514", "40001"] {
        assert!(raised(code).await.stored_nothing(), "{code} stored nothing");
    }
    db.drop_database().await;
}

/// Chaos finding A: holds came due while PostgreSQL restarted. The writer's expiry append
/// failed, its reload failed too, and it left memory; nothing loaded the raffle again until
/// a command came, so its holds never expired. A writer that cannot load its raffle must be
/// brought back once the database is, without waiting for anyone to ask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raffle_whose_writer_lost_the_database_comes_back_and_expires_its_holds() {
    use chrono::TimeZone;
    use tombola::clock::ManualClock;
    let clock = Arc::new(ManualClock::new(
        chrono::Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap(),
    ));
    let (engine, db) = start_engine(EngineConfig {
        clock: clock.clone(),
        ..EngineConfig::default()
    })
    .await;
    let raffle_id = open_raffle(&engine, 100, |create| create.hold_seconds = Some(60)).await;
    let order_id = Uuid::new_v4();
    engine
        .execute(raffle_id, reserve_numbers(order_id, buyer(1), &[7]), meta())
        .await
        .unwrap();
    let expired = |store: tombola::store::Store| async move {
        log(&store, raffle_id).await.iter().any(|stored| {
            matches!(&stored.event, RaffleEvent::HoldsExpired { holds, .. }
                if holds.iter().any(|hold| hold.order_id == order_id))
        })
    };

    // The hold comes due while the database is away: the expiry fails, and so does the
    // reload after it, so the writer leaves.
    db.start_outage().await;
    clock.advance(chrono::Duration::seconds(61));
    eventually(Duration::from_secs(20), "the writer to leave", || {
        let engine = engine.clone();
        async move { (engine.active_raffles() == 0).then_some(()) }
    })
    .await;
    db.end_outage().await;

    // Nothing is sent to the raffle: the engine must come back to it on its own.
    eventually(Duration::from_secs(60), "the hold to expire", || {
        let store = db.store.clone();
        async move { expired(store).await.then_some(()) }
    })
    .await;
    assert_eq!(
        verify_chain(db.pool(), raffle_id).await.map(|n| n > 0),
        Ok(true)
    );

    engine.shutdown().await;
    db.drop_database().await;
}
