//! The engine against a real Postgres: concurrency on one raffle, several nodes, crashes,
//! idempotency, postgres-es compatibility, the hash chain, back-pressure, hold expiry (also
//! under sustained load), snapshots, eviction, and a writer whose append and reload both
//! fail. Each test runs on its own fresh database, dropped when the test passes (set
//! `DATABASE_URL` to choose the server).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::EventStore;
use postgres_es::PostgresEventRepository;
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::Barrier;
use tokio::task::JoinSet;
use tombola::clock::ManualClock;
use tombola::engine::{Applied, Engine, EngineConfig, EngineError};
use tombola::store::{Source, Store, RAFFLE_STREAM};
use tombola::testing::Faults;
use tombola_domain::{
    Buyer, OrderStatus, Raffle, RaffleCommand, RaffleEvent, RefundReason, Selection,
};
use uuid::Uuid;

use tombola_testkit::engine::*;

/// Reservations whose numbers were not free: the only refusals a crowd of buyers may get.
const SOLD_OUT_CODES: [&str; 2] = ["tickets_unavailable", "not_enough_tickets"];

/// `count` distinct numbers in `1..=range`.
fn distinct_numbers(rng: &mut ChaCha8Rng, range: u32, count: usize) -> Vec<u32> {
    sample(rng, range as usize, count)
        .into_iter()
        .map(|i| i as u32 + 1)
        .collect()
}

/// Order id → numbers, of every `TicketsReserved` in `events`.
fn reservations<'a>(events: impl IntoIterator<Item = &'a RaffleEvent>) -> BTreeMap<Uuid, Vec<u32>> {
    let mut found = BTreeMap::new();
    for event in events {
        if let RaffleEvent::TicketsReserved {
            order_id, numbers, ..
        } = event
        {
            assert!(
                found.insert(*order_id, numbers.clone()).is_none(),
                "order {order_id} reserved twice"
            );
        }
    }
    found
}

/// Panics if a number belongs to two of `orders`.
fn assert_disjoint<'a>(orders: impl IntoIterator<Item = (&'a Uuid, &'a Vec<u32>)>) {
    let mut owner: HashMap<u32, Uuid> = HashMap::new();
    for (order_id, numbers) in orders {
        for number in numbers {
            if let Some(other) = owner.insert(*number, *order_id) {
                panic!("number {number} belongs to orders {other} and {order_id}");
            }
        }
    }
}

// ----- 1. a crowd on one raffle -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_reservations_are_logged_and_never_overlap() {
    const TASKS: u64 = 1_000;
    const TICKETS: u32 = 2_000;
    let (engine, db) = start_engine(EngineConfig::default()).await;
    let raffle_id = open_raffle(&engine, TICKETS, |_| {}).await;

    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let barrier = Arc::new(Barrier::new(TASKS as usize));
    let mut tasks = JoinSet::new();
    for i in 0..TASKS {
        // Half ask for 1–3 given numbers among the first 400 (plenty of overlap), half for
        // 1–5 random ones: together they ask for about as many tickets as there are.
        let selection = if i % 2 == 0 {
            let count = rng.random_range(1..=3);
            Selection::Numbers(distinct_numbers(&mut rng, 400, count))
        } else {
            Selection::Random(rng.random_range(1..=5))
        };
        let (engine, barrier) = (engine.clone(), barrier.clone());
        tasks.spawn(async move {
            let order_id = Uuid::new_v4();
            barrier.wait().await;
            let command = reserve(order_id, buyer(i), selection.clone());
            let result = engine.execute(raffle_id, command, meta()).await;
            (order_id, selection, result)
        });
    }
    let results = tasks.join_all().await;

    let log = log(engine.store(), raffle_id).await;
    let mut acknowledged = BTreeMap::new();
    let (mut explicit_ok, mut random_ok, mut refused) = (0, 0, 0);
    for (order_id, selection, result) in &results {
        match result {
            Ok(applied) => {
                assert_in_log(&log, applied);
                assert!(!applied.replayed);
                let numbers = reserved_numbers(applied).expect("a TicketsReserved event");
                match selection {
                    Selection::Numbers(asked) => {
                        let mut asked = asked.clone();
                        asked.sort_unstable();
                        assert_eq!(numbers, asked, "order {order_id} got other numbers");
                        explicit_ok += 1;
                    }
                    Selection::Random(quantity) => {
                        assert_eq!(numbers.len(), *quantity as usize);
                        assert!(numbers.iter().all(|n| (1..=TICKETS).contains(n)));
                        random_ok += 1;
                    }
                }
                acknowledged.insert(*order_id, numbers);
            }
            Err(error) => {
                let code = rejection_code(error);
                assert!(
                    code.is_some_and(|code| SOLD_OUT_CODES.contains(&code)),
                    "unexpected refusal for order {order_id}: {error:?}"
                );
                refused += 1;
            }
        }
    }
    assert!(
        explicit_ok > 0 && random_ok > 0,
        "both kinds of reservation succeed"
    );
    assert!(refused > 0, "overlapping numbers must have been refused");

    // The log holds exactly the acknowledged reservations (every caller got an answer), and
    // no number is held by two of them.
    let logged = reservations(log.iter().map(|s| &s.event));
    assert_eq!(logged, acknowledged);
    assert_disjoint(&logged);

    let held: u64 = logged.values().map(|n| n.len() as u64).sum();
    let orders: Vec<Uuid> = logged.keys().copied().collect();
    let (views, reserved_count, available) = engine
        .read(raffle_id, move |raffle| {
            let views: Vec<_> = orders.iter().map(|id| raffle.order(*id)).collect();
            (views, raffle.reserved_count(), raffle.available_count())
        })
        .await
        .unwrap();
    for view in views {
        let view = view.expect("every logged order is known");
        assert_eq!(view.status, OrderStatus::Reserved);
        assert_eq!(view.numbers, logged[&view.order_id]);
    }
    assert_eq!(reserved_count, held);
    assert_eq!(available, u64::from(TICKETS) - held);

    let state = engine_state(&engine, raffle_id).await;
    assert_eq!(
        state,
        engine.store().load_raffle(raffle_id).await.unwrap().raffle
    );
    assert_eq!(state, fold(log.iter().map(|s| &s.event)));
    assert_eq!(
        verify_chain(db.pool(), raffle_id).await,
        Ok(log.len() as u64)
    );

    engine.shutdown().await;
    db.drop_database().await;
}

// ----- 2. two nodes on one raffle -----

#[derive(Debug)]
enum Sent {
    Reserve(Uuid),
    Pay(Uuid),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_never_issue_twice_and_converge() {
    const BUYERS: u64 = 240;
    let db = TestDb::new(8).await;
    // Each node has its own pool, configuration (node id) and writer for the raffle, with
    // the default conflict retries.
    let nodes = [
        Engine::new(db.store.clone(), EngineConfig::default()),
        Engine::new(db.connect(8).await, EngineConfig::default()),
    ];
    let raffle_id = open_raffle(&nodes[0], 600, |_| {}).await;
    // The second node starts from what the first wrote.
    assert_eq!(
        engine_state(&nodes[1], raffle_id).await.available_count(),
        600
    );

    let results = Arc::new(Mutex::new(Vec::new()));
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let barrier = Arc::new(Barrier::new(BUYERS as usize));
    let mut tasks = JoinSet::new();
    for i in 0..BUYERS {
        let selection = if i % 2 == 0 {
            let count = rng.random_range(1..=2);
            Selection::Numbers(distinct_numbers(&mut rng, 300, count))
        } else {
            Selection::Random(rng.random_range(1..=2))
        };
        let home = nodes[(i % 2) as usize].clone();
        let nodes = nodes.clone();
        let (results, barrier) = (results.clone(), barrier.clone());
        tasks.spawn(async move {
            let record = |sent: Sent, result: Result<Applied, EngineError>| {
                results.lock().unwrap().push((sent, result));
            };
            let order_id = Uuid::new_v4();
            barrier.wait().await;
            let reserved = home
                .execute(raffle_id, reserve(order_id, buyer(i), selection), meta())
                .await;
            let amount = match &reserved {
                Ok(applied) => {
                    reserved_numbers(applied).map_or(0, |n| n.len() as i64) * PRICE_MINOR
                }
                Err(_) => PRICE_MINOR,
            };
            let reserved_ok = reserved.is_ok();
            record(Sent::Reserve(order_id), reserved);
            if !reserved_ok && i % 5 != 0 {
                return;
            }
            // The provider delivers the same payment to both nodes at once; for some orders
            // a second, different payment arrives as well.
            let payment_id = format!("pi_{i}");
            let [a, b] = &nodes;
            let (first, second) = tokio::join!(
                a.execute(
                    raffle_id,
                    payment(order_id, &payment_id, amount),
                    webhook_meta()
                ),
                b.execute(
                    raffle_id,
                    payment(order_id, &payment_id, amount),
                    webhook_meta()
                ),
            );
            record(Sent::Pay(order_id), first);
            record(Sent::Pay(order_id), second);
            if i % 3 == 0 {
                let other = format!("pi_{i}_again");
                let result = nodes[(i % 4 / 2) as usize]
                    .execute(raffle_id, payment(order_id, &other, amount), webhook_meta())
                    .await;
                record(Sent::Pay(order_id), result);
            }
        });
    }
    tasks.join_all().await;

    let log = log(&db.store, raffle_id).await;
    let results = std::mem::take(&mut *results.lock().unwrap());
    let mut unavailable = Vec::new();
    let mut reserved_orders = BTreeSet::new();
    let mut paid_acknowledged = BTreeSet::new();
    let mut duplicates = 0;
    for (sent, result) in &results {
        match (sent, result) {
            (_, Ok(applied)) => {
                assert_in_log(&log, applied);
                match sent {
                    Sent::Reserve(order_id) => {
                        reserved_orders.insert(*order_id);
                    }
                    Sent::Pay(order_id) => {
                        paid_acknowledged.insert(*order_id);
                        duplicates += usize::from(applied.is_duplicate());
                    }
                }
            }
            (_, Err(EngineError::Unavailable { reason })) => unavailable.push(reason.clone()),
            (Sent::Reserve(_), Err(error)) => assert!(
                rejection_code(error).is_some_and(|code| SOLD_OUT_CODES.contains(&code)),
                "unexpected refusal of a reservation: {error:?}"
            ),
            (Sent::Pay(_), Err(error)) => panic!("a payment report was refused: {error:?}"),
        }
    }
    assert!(
        unavailable.is_empty(),
        "{} of {} commands failed with Unavailable: {:?}",
        unavailable.len(),
        results.len(),
        unavailable.first()
    );

    // Exactly once: one PaymentRecorded per payment id, at most one TicketsIssued per order,
    // no number issued to two orders.
    let mut recorded: HashMap<String, usize> = HashMap::new();
    let mut issued: BTreeMap<Uuid, Vec<u32>> = BTreeMap::new();
    for stored in &log {
        match &stored.event {
            RaffleEvent::PaymentRecorded { payment, .. } => {
                *recorded.entry(payment.payment_id.clone()).or_default() += 1;
            }
            RaffleEvent::TicketsIssued {
                order_id, numbers, ..
            } => {
                assert!(
                    issued.insert(*order_id, numbers.clone()).is_none(),
                    "order {order_id} was issued twice"
                );
            }
            _ => {}
        }
    }
    for (payment_id, count) in &recorded {
        assert_eq!(*count, 1, "payment {payment_id} recorded {count} times");
    }
    // Of each pair of deliveries, one was answered as the duplicate it was.
    assert_eq!(duplicates, paid_acknowledged.len());
    assert_disjoint(&issued);
    let logged = reservations(log.iter().map(|s| &s.event));
    assert_eq!(
        logged.keys().copied().collect::<BTreeSet<_>>(),
        reserved_orders
    );
    // Every reserved order was paid on both nodes: it is issued, with its own numbers.
    assert!(!reserved_orders.is_empty());
    for order_id in &reserved_orders {
        assert!(paid_acknowledged.contains(order_id));
        assert_eq!(
            issued.get(order_id),
            Some(&logged[order_id]),
            "order {order_id}"
        );
    }
    assert_eq!(issued.len(), reserved_orders.len());

    // Both nodes catch up with the log and hold exactly a fresh reload.
    let last = log.last().expect("events").sequence;
    let reloaded = db.store.load_raffle(raffle_id).await.unwrap();
    assert_eq!(reloaded.last_sequence, last);
    for node in &nodes {
        node.notify_remote_commit(raffle_id, last);
        assert_eq!(engine_state(node, raffle_id).await, reloaded.raffle);
    }
    assert_eq!(verify_chain(db.pool(), raffle_id).await, Ok(last));

    for node in &nodes {
        node.shutdown().await;
    }
    db.drop_database().await;
}

// ----- 3. a crash mid-load -----

#[test]
fn a_crash_mid_load_keeps_every_acknowledged_command() {
    let acknowledged: Arc<Mutex<Vec<Applied>>> = Arc::default();
    let started = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));

    let node = {
        let (acknowledged, started, finished) =
            (acknowledged.clone(), started.clone(), finished.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let (database, raffle_id) = runtime.block_on(async {
                let db = TestDb::new(10).await;
                let engine = Engine::new(db.store.clone(), EngineConfig::default());
                let raffle_id = open_raffle(&engine, 100_000, |_| {}).await;
                for worker in 0..40u64 {
                    let (engine, acknowledged) = (engine.clone(), acknowledged.clone());
                    let (started, finished) = (started.clone(), finished.clone());
                    tokio::spawn(async move {
                        for n in 0u64.. {
                            let order_id = Uuid::new_v4();
                            let command = if n % 3 == 2 {
                                // Pays for an order this worker reserved before.
                                let last = acknowledged.lock().unwrap().iter().rev().find_map(
                                    |applied: &Applied| match &applied.events[0].event {
                                        RaffleEvent::TicketsReserved {
                                            order_id,
                                            amount_minor,
                                            ..
                                        } => Some((*order_id, *amount_minor)),
                                        _ => None,
                                    },
                                );
                                match last {
                                    Some((order, amount)) => {
                                        payment(order, &format!("pi_{order}"), amount)
                                    }
                                    None => continue,
                                }
                            } else {
                                reserve_random(order_id, buyer(worker), 2)
                            };
                            started.fetch_add(1, Ordering::SeqCst);
                            let result = engine.execute(raffle_id, command, meta()).await;
                            finished.fetch_add(1, Ordering::SeqCst);
                            match result {
                                Ok(applied) if !applied.events.is_empty() => {
                                    acknowledged.lock().unwrap().push(applied);
                                }
                                Ok(_) | Err(EngineError::Rejected(_)) => {}
                                // The node is going down (answers come at once then): a
                                // client looping without a pause would keep this worker
                                // thread from ever stopping.
                                Err(_) => break,
                            }
                        }
                    });
                }
                (db.into_guard(), raffle_id)
            });
            // Let the load run, then pull the plug: no shutdown, no snapshot, the runtime and
            // every task in it (writer, callers, pooled connections) just go.
            runtime.block_on(eventually(Duration::from_secs(20), "load", || {
                let acknowledged = acknowledged.lock().unwrap().len();
                async move { (acknowledged >= 300).then_some(()) }
            }));
            drop(runtime);
            (database, raffle_id)
        })
    };
    let (database, raffle_id) = node.join().expect("the crashed node's thread");
    let url = database.url().to_owned();
    let acknowledged = std::mem::take(&mut *acknowledged.lock().unwrap());
    let in_flight = started.load(Ordering::SeqCst) - finished.load(Ordering::SeqCst);
    assert!(in_flight > 0, "commands were in flight when the node died");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // The dead node's sessions go away (the server rolls back what they had not
        // committed); only then is the log final.
        let watcher = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .unwrap();
        eventually(
            Duration::from_secs(10),
            "the dead node's sessions to go",
            || {
                let watcher = watcher.clone();
                async move {
                    let others: i64 = sqlx::query_scalar(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                     AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
                    )
                    .fetch_one(&watcher)
                    .await
                    .unwrap();
                    (others == 0).then_some(())
                }
            },
        )
        .await;
        watcher.close().await;
        let store = Store::connect(&url, 5).await.unwrap();

        let log = log(&store, raffle_id).await;
        for applied in &acknowledged {
            assert_in_log(&log, applied);
        }
        assert_eq!(
            verify_chain(store.pool(), raffle_id).await,
            Ok(log.len() as u64)
        );

        let engine = Engine::new(store.clone(), EngineConfig::default());
        let state = engine_state(&engine, raffle_id).await;
        assert_eq!(state, fold(log.iter().map(|s| &s.event)));

        // The stream goes on where the committed log ends.
        let last = log.last().unwrap().sequence;
        let applied = engine
            .execute(
                raffle_id,
                reserve_random(Uuid::new_v4(), buyer(0), 1),
                meta(),
            )
            .await
            .unwrap();
        assert_eq!(applied.events[0].sequence, last + 1);
        assert_eq!(verify_chain(store.pool(), raffle_id).await, Ok(last + 1));

        engine.shutdown().await;
        store.pool().close().await;
        database.drop_database().await;
    });
}

// ----- 4. idempotency -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_replay_the_first_answer() {
    let (engine, db) = start_engine(EngineConfig::default()).await;
    let raffle_id = open_raffle(&engine, 100, |_| {}).await;
    let pool = db.pool().clone();

    // Same key, same request: the first response again, nothing appended.
    let order = Uuid::new_v4();
    let command = reserve_numbers(order, buyer(1), &[7, 8]);
    let first = engine
        .execute(raffle_id, command.clone(), keyed_meta("k-1", b"hash-1"))
        .await
        .unwrap();
    assert!(!first.replayed);
    assert_eq!(reserved_numbers(&first), Some(vec![7, 8]));
    let count = event_count(&pool, raffle_id).await;
    let again = engine
        .execute(raffle_id, command.clone(), keyed_meta("k-1", b"hash-1"))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.events, first.events);
    assert_eq!(event_count(&pool, raffle_id).await, count);

    // Same key, another request.
    let other = reserve_numbers(Uuid::new_v4(), buyer(1), &[9]);
    let conflict = engine
        .execute(raffle_id, other, keyed_meta("k-1", b"hash-2"))
        .await;
    assert_eq!(conflict, Err(EngineError::IdempotencyConflict));
    assert_eq!(event_count(&pool, raffle_id).await, count);

    // Twenty concurrent deliveries of one keyed request: one effect, one answer for all.
    // First while the writer is busy, so that all twenty are decided in one batch, then
    // free-running, so that they spread over several.
    let mut count = count;
    let mut keyed_reservations = Vec::new();
    for (round, one_batch) in [true, false].into_iter().enumerate() {
        let order = Uuid::new_v4();
        let command = reserve_random(order, buyer(2), 3);
        let key = format!("k-batch-{round}");
        let busy = if one_batch {
            Some(hold_writer(&engine, raffle_id, Duration::from_millis(300)).await)
        } else {
            None
        };
        let barrier = Arc::new(Barrier::new(20));
        let mut tasks = JoinSet::new();
        for _ in 0..20 {
            let (engine, command, barrier) = (engine.clone(), command.clone(), barrier.clone());
            let meta = keyed_meta(&key, b"hash-3");
            tasks.spawn(async move {
                barrier.wait().await;
                engine.execute(raffle_id, command, meta).await
            });
        }
        let answers: Vec<Applied> = tasks
            .join_all()
            .await
            .into_iter()
            .map(|r| r.expect("every delivery gets the first answer"))
            .collect();
        if let Some(busy) = busy {
            busy.await.unwrap();
        }
        assert_eq!(answers.iter().filter(|a| !a.replayed).count(), 1);
        assert!(answers.iter().all(|a| a.events == answers[0].events));
        let log = log(&db.store, raffle_id).await;
        let reserved = reservations(log.iter().map(|s| &s.event));
        assert_eq!(reserved[&order].len(), 3);
        assert_eq!(
            reserved_numbers(&answers[0]).as_ref(),
            Some(&reserved[&order])
        );
        count += 1;
        assert_eq!(event_count(&pool, raffle_id).await, count);
        keyed_reservations.push((command, key, answers[0].clone()));
    }

    // A refusal is an answer too: replayed even once the command would now succeed.
    let taken = reserve_numbers(Uuid::new_v4(), buyer(3), &[8]);
    let refused = engine
        .execute(raffle_id, taken.clone(), keyed_meta("k-3", b"hash-4"))
        .await
        .unwrap_err();
    assert_eq!(rejection_code(&refused), Some("tickets_unavailable"));
    engine
        .execute(
            raffle_id,
            RaffleCommand::Release {
                order_id: order_of(&first),
            },
            meta(),
        )
        .await
        .unwrap();
    let replayed = engine
        .execute(raffle_id, taken.clone(), keyed_meta("k-3", b"hash-4"))
        .await
        .unwrap_err();
    assert_eq!(replayed, refused);
    // Without the key the same request now succeeds: the refusal above was a replay.
    engine.execute(raffle_id, taken, meta()).await.unwrap();

    // Records are durable: another engine (a restarted node) answers from them too.
    let restarted = Engine::new(db.connect(2).await, EngineConfig::default());
    let (command, key, answer) = &keyed_reservations[0];
    let after_restart = restarted
        .execute(raffle_id, command.clone(), keyed_meta(key, b"hash-3"))
        .await
        .unwrap();
    assert!(after_restart.replayed);
    assert_eq!(after_restart.events, answer.events);

    restarted.shutdown().await;
    engine.shutdown().await;
    db.drop_database().await;
}

fn order_of(applied: &Applied) -> Uuid {
    applied.events[0].event.order_id().expect("an order event")
}

// ----- 5. postgres-es reads the engine's streams -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_es_reads_the_streams_the_engine_wrote() {
    let (engine, db) = start_engine(EngineConfig::default()).await;
    let raffle_id = open_raffle(&engine, 50, |_| {}).await;
    let mut committed = Vec::new();
    for i in 0..6u64 {
        let applied = engine
            .execute(
                raffle_id,
                reserve_random(Uuid::new_v4(), buyer(i), 2),
                meta(),
            )
            .await
            .unwrap();
        committed.push(applied);
    }
    let paid = order_of(&committed[0]);
    committed.push(
        engine
            .execute(
                raffle_id,
                payment(paid, "pi_1", 2 * PRICE_MINOR),
                webhook_meta(),
            )
            .await
            .unwrap(),
    );
    let released = order_of(&committed[1]);
    committed.push(
        engine
            .execute(
                raffle_id,
                RaffleCommand::Release { order_id: released },
                meta(),
            )
            .await
            .unwrap(),
    );
    let log = log(&db.store, raffle_id).await;

    let repository = PostgresEventRepository::new(db.pool().clone());
    let event_store: PersistedEventStore<PostgresEventRepository, Raffle> =
        PersistedEventStore::new_event_store(repository);
    let envelopes = event_store
        .load_events(&raffle_id.to_string())
        .await
        .expect("postgres-es loads the stream");
    assert_eq!(envelopes.len(), log.len());
    for (envelope, stored) in envelopes.iter().zip(&log) {
        assert_eq!(envelope.aggregate_id, raffle_id.to_string());
        assert_eq!(envelope.sequence as u64, stored.sequence);
        assert_eq!(envelope.payload, stored.event);
        let metadata: HashMap<String, String> =
            serde_json::from_str(&stored.metadata.to_json()).unwrap();
        assert_eq!(envelope.metadata, metadata);
    }
    // What the engine answered is what postgres-es reads.
    for applied in &committed {
        for sequenced in &applied.events {
            assert_eq!(
                envelopes[sequenced.sequence as usize - 1].payload,
                sequenced.event
            );
        }
    }
    assert!(envelopes
        .iter()
        .any(|e| matches!(e.payload, RaffleEvent::TicketsIssued { .. })));

    let context = event_store
        .load_aggregate(&raffle_id.to_string())
        .await
        .expect("postgres-es folds the stream");
    assert_eq!(context.current_sequence as u64, log.len() as u64);
    assert_eq!(context.aggregate, engine_state(&engine, raffle_id).await);

    engine.shutdown().await;
    db.drop_database().await;
}

// ----- 6. the hash chain -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hash_chain_verifies_and_catches_tampering() {
    let (engine, db) = start_engine(EngineConfig::default()).await;
    let raffle_id = open_raffle(&engine, 50, |_| {}).await;
    let mut reserved = None;
    for i in 0..5u64 {
        let applied = engine
            .execute(
                raffle_id,
                reserve_numbers(Uuid::new_v4(), buyer(i), &[i as u32 + 1]),
                meta(),
            )
            .await
            .unwrap();
        reserved.get_or_insert(applied.events[0].sequence);
    }
    let target = reserved.unwrap();
    let pool = db.pool().clone();
    let total = event_count(&pool, raffle_id).await as u64;
    assert_eq!(total, 7);
    assert_eq!(verify_chain(&pool, raffle_id).await, Ok(total));

    let aggregate_id = raffle_id.to_string();
    let column = |column: &'static str| {
        let (pool, aggregate_id) = (pool.clone(), aggregate_id.clone());
        async move {
            sqlx::query_scalar::<_, String>(&format!(
                "SELECT {column}::text FROM events \
                 WHERE aggregate_type = 'raffle' AND aggregate_id = $1 AND sequence = $2"
            ))
            .bind(&aggregate_id)
            .bind(target as i64)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let set = |column: &'static str, text: String| {
        let (pool, aggregate_id) = (pool.clone(), aggregate_id.clone());
        async move {
            let updated = sqlx::query(&format!(
                "UPDATE events SET {column} = $3::json \
                 WHERE aggregate_type = 'raffle' AND aggregate_id = $1 AND sequence = $2"
            ))
            .bind(&aggregate_id)
            .bind(target as i64)
            .bind(text)
            .execute(&pool)
            .await
            .unwrap();
            assert_eq!(updated.rows_affected(), 1);
        }
    };

    // Someone gives the ticket to another buyer in the stored payload.
    let payload = column("payload").await;
    assert!(payload.contains("Buyer 0"));
    set("payload", payload.replace("Buyer 0", "Mallory")).await;
    assert_eq!(
        verify_chain(&pool, raffle_id).await,
        Err(ChainBreak::HashMismatch { sequence: target })
    );
    // Even a change that keeps the same JSON value (only the spacing) is caught: the chain
    // covers the exact text.
    set("payload", payload.replacen(':', ": ", 1)).await;
    assert_eq!(
        verify_chain(&pool, raffle_id).await,
        Err(ChainBreak::HashMismatch { sequence: target })
    );
    set("payload", payload).await;
    assert_eq!(verify_chain(&pool, raffle_id).await, Ok(total));

    // …or the actor in the metadata.
    let metadata = column("metadata").await;
    set("metadata", metadata.replace("key_test", "key_other")).await;
    assert_eq!(
        verify_chain(&pool, raffle_id).await,
        Err(ChainBreak::HashMismatch { sequence: target })
    );
    set("metadata", metadata).await;
    assert_eq!(verify_chain(&pool, raffle_id).await, Ok(total));

    // …or deletes an event and renumbers the rest to hide the hole.
    sqlx::query("DELETE FROM events WHERE aggregate_id = $1 AND sequence = $2")
        .bind(&aggregate_id)
        .bind(target as i64)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        verify_chain(&pool, raffle_id).await,
        Err(ChainBreak::Gap {
            expected: target,
            found: target + 1
        })
    );
    // In two steps, so no intermediate row collides with the primary key.
    for shift in ["sequence + 1000", "sequence - 1001"] {
        sqlx::query(&format!(
            "UPDATE events SET sequence = {shift} WHERE aggregate_id = $1 AND sequence > $2"
        ))
        .bind(&aggregate_id)
        .bind(target as i64)
        .execute(&pool)
        .await
        .unwrap();
    }
    assert_eq!(
        verify_chain(&pool, raffle_id).await,
        Err(ChainBreak::BrokenLink { sequence: target })
    );

    engine.shutdown().await;
    db.drop_database().await;
}

// ----- 7. back-pressure -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_overloaded_and_commits_every_ok() {
    let config = EngineConfig {
        queue_capacity: 1,
        ..EngineConfig::default()
    };
    let (engine, db) = start_engine(config).await;
    let raffle_id = open_raffle(&engine, 1_000, |_| {}).await;

    let barrier = Arc::new(Barrier::new(200));
    let mut tasks = JoinSet::new();
    for i in 0..200u64 {
        let (engine, barrier) = (engine.clone(), barrier.clone());
        tasks.spawn(async move {
            let order_id = Uuid::new_v4();
            barrier.wait().await;
            let result = engine
                .execute(raffle_id, reserve_random(order_id, buyer(i), 1), meta())
                .await;
            (order_id, result)
        });
    }
    let results = tasks.join_all().await;
    let log = log(&db.store, raffle_id).await;
    let mut acknowledged = BTreeSet::new();
    let mut overloaded = 0;
    for (order_id, result) in &results {
        match result {
            Ok(applied) => {
                assert_in_log(&log, applied);
                acknowledged.insert(*order_id);
            }
            Err(EngineError::Overloaded { retry_after }) => {
                assert!(*retry_after > Duration::ZERO);
                overloaded += 1;
            }
            Err(error) => panic!("unexpected error: {error:?}"),
        }
    }
    assert!(
        overloaded > 0,
        "a queue of one must overflow under 200 callers"
    );
    assert!(!acknowledged.is_empty());
    // A command told to back off changed nothing.
    let logged: BTreeSet<Uuid> = reservations(log.iter().map(|s| &s.event))
        .into_keys()
        .collect();
    assert_eq!(logged, acknowledged);
    assert_eq!(
        engine_state(&engine, raffle_id).await,
        db.store.load_raffle(raffle_id).await.unwrap().raffle
    );

    engine.shutdown().await;
    db.drop_database().await;
}

// ----- 8. hold expiry by the writer's timer -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_expires_due_holds_on_its_own() {
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap(),
    ));
    let config = EngineConfig {
        clock: clock.clone(),
        ..EngineConfig::default()
    };
    let (engine, db) = start_engine(config).await;
    let raffle_id = open_raffle(&engine, 100, |create| create.hold_seconds = Some(60)).await;
    let applied = engine
        .execute(
            raffle_id,
            reserve_numbers(Uuid::new_v4(), buyer(1), &[5, 6]),
            meta(),
        )
        .await
        .unwrap();
    let order_id = order_of(&applied);
    let status = |engine: &Engine| {
        let engine = engine.clone();
        async move {
            engine
                .read(raffle_id, move |r| r.order(order_id).map(|o| o.status))
                .await
                .unwrap()
        }
    };
    let expiries = |db_store: Store| async move {
        log(&db_store, raffle_id)
            .await
            .into_iter()
            .filter(|s| matches!(s.event, RaffleEvent::HoldsExpired { .. }))
            .collect::<Vec<_>>()
    };

    // Not before its time. The writer looks at its timer before each message it takes, so
    // by the time it answers this read it has seen the clock at 59 s.
    clock.advance(chrono::Duration::seconds(59));
    assert_eq!(status(&engine).await, Some(OrderStatus::Reserved));
    assert!(expiries(db.store.clone()).await.is_empty());

    // Past the hold: moving the clock fires the timer, with nothing else to wake the writer.
    clock.advance(chrono::Duration::seconds(2));
    eventually(Duration::from_secs(5), "the hold to expire", || {
        let engine = engine.clone();
        async move { (status(&engine).await == Some(OrderStatus::Expired)).then_some(()) }
    })
    .await;

    let expired = expiries(db.store.clone()).await;
    assert_eq!(expired.len(), 1);
    let RaffleEvent::HoldsExpired { holds, .. } = &expired[0].event else {
        unreachable!()
    };
    assert_eq!(holds.len(), 1);
    assert_eq!(holds[0].order_id, order_id);
    assert_eq!(holds[0].numbers, vec![5, 6]);
    assert_eq!(expired[0].metadata.source, Source::System);
    assert_eq!(expired[0].metadata.actor, "system");
    let state = engine_state(&engine, raffle_id).await;
    assert_eq!(state.available_count(), 100);
    assert_eq!(state, db.store.load_raffle(raffle_id).await.unwrap().raffle);

    engine.shutdown().await;
    db.drop_database().await;
}

/// Sends a reservation of one random number every `every`, without waiting for answers
/// (open-loop load, as independent clients make), until `stop` is set. Returns the calls.
fn open_loop_load(
    engine: &Engine,
    raffle_id: Uuid,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<tokio::task::JoinHandle<()>>> {
    let engine = engine.clone();
    tokio::spawn(async move {
        let mut calls = Vec::new();
        for i in 0u64.. {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let engine = engine.clone();
            calls.push(tokio::spawn(async move {
                let command = reserve_random(Uuid::new_v4(), buyer(i), 1);
                let _ = engine.execute(raffle_id, command, meta()).await;
            }));
            // Pacing, the point of an open-loop client: not a wait for anything.
            tokio::time::sleep(every).await;
        }
        calls
    })
}

/// Waits until more than `more_than` reservations of the raffle are committed (after its
/// first event of type `after`, if given).
async fn reservations_after(
    pool: &sqlx::PgPool,
    raffle_id: Uuid,
    after: Option<&str>,
    more_than: i64,
) {
    let what = format!("{more_than} reservations after {after:?}");
    eventually(Duration::from_secs(10), &what, || async move {
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events e WHERE aggregate_type = $1 AND aggregate_id = $2 \
             AND event_type = 'TicketsReserved' AND ($3::text IS NULL OR sequence > ( \
               SELECT min(sequence) FROM events WHERE aggregate_type = e.aggregate_type \
               AND aggregate_id = e.aggregate_id AND event_type = $3))",
        )
        .bind(RAFFLE_STREAM)
        .bind(raffle_id.to_string())
        .bind(after)
        .fetch_one(pool)
        .await
        .unwrap();
        (count > more_than).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_expire_while_commands_keep_coming() {
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap(),
    ));
    let config = EngineConfig {
        clock: clock.clone(),
        ..EngineConfig::default()
    };
    let (engine, db) = start_engine(config).await;
    let raffle_id = open_raffle(&engine, 1_000_000, |create| create.hold_seconds = Some(60)).await;
    let applied = engine
        .execute(
            raffle_id,
            reserve_numbers(Uuid::new_v4(), buyer(0), &[5]),
            meta(),
        )
        .await
        .unwrap();
    let order_id = order_of(&applied);

    // Two open-loop clients: the writer's queue is (almost) never empty.
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..2)
        .map(|_| open_loop_load(&engine, raffle_id, Duration::from_micros(300), stop.clone()))
        .collect();
    // The load is under way: more than 100 reservations committed before the hold is due.
    reservations_after(db.pool(), raffle_id, None, 100).await;
    clock.advance(chrono::Duration::seconds(61));
    eventually(
        Duration::from_secs(5),
        "the hold to expire under load",
        || {
            let engine = engine.clone();
            async move {
                let status = engine
                    .read(raffle_id, move |r| r.order(order_id).map(|o| o.status))
                    .await
                    .unwrap();
                (status == Some(OrderStatus::Expired)).then_some(())
            }
        },
    )
    .await;
    // And it goes on after the expiry.
    reservations_after(db.pool(), raffle_id, Some("HoldsExpired"), 10).await;
    stop.store(true, Ordering::Relaxed);
    for calls in load {
        for call in calls.await.unwrap() {
            call.await.unwrap();
        }
    }

    // The expiry happened amid the load: reservations were committed before and after it.
    let log = log(&db.store, raffle_id).await;
    let expiry = log
        .iter()
        .position(|s| match &s.event {
            RaffleEvent::HoldsExpired { holds, .. } => holds.iter().any(|h| h.order_id == order_id),
            _ => false,
        })
        .expect("a HoldsExpired event for the order");
    let reserved_before = log[..expiry]
        .iter()
        .filter(|s| matches!(s.event, RaffleEvent::TicketsReserved { .. }))
        .count();
    let reserved_after = log[expiry..]
        .iter()
        .filter(|s| matches!(s.event, RaffleEvent::TicketsReserved { .. }))
        .count();
    assert!(
        reserved_before > 100 && reserved_after > 10,
        "{reserved_before} {reserved_after}"
    );
    assert_eq!(
        engine_state(&engine, raffle_id).await,
        db.store.load_raffle(raffle_id).await.unwrap().raffle
    );

    engine.shutdown().await;
    db.drop_database().await;
}

// ----- 9. snapshots -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_plus_later_events_equals_a_full_replay() {
    let config = EngineConfig {
        snapshot_every: 10,
        ..EngineConfig::default()
    };
    let (engine, db) = start_engine(config).await;
    let raffle_id = open_raffle(&engine, 500, |_| {}).await;
    // 60 events of several kinds, one command at a time: created and opened, 20
    // reservations, 6 payments (2 events each), 4 releases, 22 more reservations. The last
    // snapshot (at 60) is the head of the stream and follows a reservation, which a load
    // must not apply twice.
    let reserve_one = |i: u64| {
        let engine = engine.clone();
        async move {
            let command = reserve_random(Uuid::new_v4(), buyer(i), 3);
            order_of(&engine.execute(raffle_id, command, meta()).await.unwrap())
        }
    };
    let mut orders = Vec::new();
    for i in 0..20u64 {
        orders.push(reserve_one(i).await);
    }
    for (i, order_id) in orders.iter().enumerate().take(6) {
        let command = payment(*order_id, &format!("pi_{i}"), 3 * PRICE_MINOR);
        engine
            .execute(raffle_id, command, webhook_meta())
            .await
            .unwrap();
    }
    for order_id in &orders[6..10] {
        let command = RaffleCommand::Release {
            order_id: *order_id,
        };
        engine.execute(raffle_id, command, meta()).await.unwrap();
    }
    for i in 20..42u64 {
        reserve_one(i).await;
    }
    engine.shutdown().await;
    let head = event_count(db.pool(), raffle_id).await;
    assert_eq!(head, 60);

    let pool = db.pool().clone();
    let snapshot_at: i64 = eventually(Duration::from_secs(5), "the last snapshot", || {
        let pool = pool.clone();
        async move {
            let at: Option<i64> = sqlx::query_scalar(
                "SELECT last_sequence FROM raffle_snapshots WHERE raffle_id = $1",
            )
            .bind(raffle_id)
            .fetch_optional(&pool)
            .await
            .unwrap();
            at.filter(|at| *at == head)
        }
    })
    .await;
    // A load from the snapshot alone: state and chain position of the head.
    let log_at_head = log(&db.store, raffle_id).await;
    let loaded = db.store.load_raffle(raffle_id).await.unwrap();
    assert_eq!(loaded.last_sequence, head as u64);
    assert_eq!(loaded.last_hash, log_at_head.last().unwrap().metadata.hash);
    assert_eq!(loaded.raffle, fold(log_at_head.iter().map(|s| &s.event)));

    // A node that takes no snapshots loads from it and appends a few more events.
    let no_snapshots = EngineConfig {
        snapshot_every: 0,
        ..EngineConfig::default()
    };
    let writer = Engine::new(db.connect(2).await, no_snapshots.clone());
    for i in 0..3u64 {
        writer
            .execute(
                raffle_id,
                reserve_random(Uuid::new_v4(), buyer(100 + i), 1),
                meta(),
            )
            .await
            .unwrap();
    }
    writer.shutdown().await;
    let log = log(&db.store, raffle_id).await;
    let last = log.last().unwrap().sequence;
    assert!(last as i64 > snapshot_at, "events after the snapshot");
    let unchanged: i64 =
        sqlx::query_scalar("SELECT last_sequence FROM raffle_snapshots WHERE raffle_id = $1")
            .bind(raffle_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(unchanged, snapshot_at);

    let replayed = fold(log.iter().map(|s| &s.event));
    let loaded = db.store.load_raffle(raffle_id).await.unwrap();
    assert_eq!(loaded.last_sequence, last);
    assert_eq!(loaded.last_hash, log.last().unwrap().metadata.hash);
    assert_eq!(loaded.raffle, replayed);
    let fresh = Engine::new(db.connect(2).await, no_snapshots);
    assert_eq!(engine_state(&fresh, raffle_id).await, replayed);
    // The chain continues across the snapshot.
    fresh
        .execute(
            raffle_id,
            reserve_random(Uuid::new_v4(), buyer(200), 1),
            meta(),
        )
        .await
        .unwrap();
    assert_eq!(verify_chain(&pool, raffle_id).await, Ok(last + 1));

    fresh.shutdown().await;
    db.drop_database().await;
}

// ----- 10. eviction -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_raffles_without_holds_leave_memory_and_come_back() {
    // Idleness is timed on the engine's clock: only moving it evicts anything.
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap(),
    ));
    let config = EngineConfig {
        evict_after: Duration::from_secs(60),
        clock: clock.clone(),
        ..EngineConfig::default()
    };
    let (engine, db) = start_engine(config).await;
    let idle = open_raffle(&engine, 100, |_| {}).await;
    let applied = engine
        .execute(
            idle,
            reserve_numbers(Uuid::new_v4(), buyer(1), &[1, 2]),
            meta(),
        )
        .await
        .unwrap();
    engine
        .execute(
            idle,
            payment(order_of(&applied), "pi_1", 2 * PRICE_MINOR),
            webhook_meta(),
        )
        .await
        .unwrap();
    // A raffle with a live hold keeps its writer (and timer).
    let holding = open_raffle(&engine, 100, |create| create.hold_seconds = Some(3600)).await;
    let held = engine
        .execute(holding, reserve_random(Uuid::new_v4(), buyer(2), 1), meta())
        .await
        .unwrap();
    assert_eq!(engine.active_raffles(), 2);

    clock.advance(chrono::Duration::seconds(61));
    eventually(Duration::from_secs(5), "the idle raffle's eviction", || {
        let active = engine.active_raffles();
        async move { (active == 1).then_some(()) }
    })
    .await;
    assert_eq!(
        engine.active_raffles(),
        1,
        "the raffle with a live hold stays"
    );

    // The next command reloads the evicted raffle from the log.
    let before = log(&db.store, idle).await;
    let taken = engine
        .execute(
            idle,
            reserve_numbers(Uuid::new_v4(), buyer(3), &[2, 3]),
            meta(),
        )
        .await
        .unwrap_err();
    assert_eq!(rejection_code(&taken), Some("tickets_unavailable"));
    let applied = engine
        .execute(
            idle,
            reserve_numbers(Uuid::new_v4(), buyer(3), &[3]),
            meta(),
        )
        .await
        .unwrap();
    assert_eq!(
        applied.events[0].sequence,
        before.last().unwrap().sequence + 1
    );
    assert_eq!(engine.active_raffles(), 2);
    let state = engine_state(&engine, idle).await;
    assert_eq!(state.sold_count(), 2);
    assert_eq!(state, db.store.load_raffle(idle).await.unwrap().raffle);
    assert_eq!(
        verify_chain(db.pool(), idle).await,
        Ok(before.len() as u64 + 1)
    );

    // The raffle with a hold kept its writer through the idle time: its timer is still
    // there, and expires the hold with nothing sent to the raffle (an evicted raffle has no
    // timer until something loads it again).
    clock.advance(chrono::Duration::seconds(3600));
    let held = order_of(&held);
    eventually(
        Duration::from_secs(5),
        "the kept raffle's hold to expire",
        || {
            let store = db.store.clone();
            async move {
                log(&store, holding)
                    .await
                    .iter()
                    .any(|s| match &s.event {
                        RaffleEvent::HoldsExpired { holds, .. } => {
                            holds.iter().any(|h| h.order_id == held)
                        }
                        _ => false,
                    })
                    .then_some(())
            }
        },
    )
    .await;

    engine.shutdown().await;
    db.drop_database().await;
}

// ----- 11. a failed append whose reload fails too -----

/// Fault injection: an append holding an event that mentions "Poison" fails after
/// `seconds` (dropped with `DROP TRIGGER fail_poison ON events`).
/// Starts the reservation of `number` by buyer "Poison" for a new order: (order, answer).
fn reserve_as_poison(
    engine: &Engine,
    raffle_id: Uuid,
    number: u32,
) -> (Uuid, tokio::task::JoinHandle<Result<Applied, EngineError>>) {
    let order = Uuid::new_v4();
    let poison = Buyer::parse("Poison", "poison@example.com", None).unwrap();
    let command = reserve_numbers(order, poison, &[number]);
    let engine = engine.clone();
    let answer = tokio::spawn(async move { engine.execute(raffle_id, command, meta()).await });
    (order, answer)
}

async fn fail_appends_of_poison(pool: &sqlx::PgPool, seconds: f64) {
    sqlx::raw_sql(&format!(
        "CREATE FUNCTION fail_poison() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN \
           IF NEW.payload::text LIKE '%Poison%' THEN \
             PERFORM pg_sleep({seconds}); \
             RAISE EXCEPTION 'injected append failure'; \
           END IF; \
           RETURN NEW; \
         END $$; \
         CREATE TRIGGER fail_poison BEFORE INSERT ON events \
           FOR EACH ROW EXECUTE FUNCTION fail_poison();"
    ))
    .execute(pool)
    .await
    .unwrap();
}

/// Waits until an append of buyer "Poison" is in the database, sleeping in its trigger.
async fn poison_append_hangs(pool: &sqlx::PgPool) {
    eventually(
        Duration::from_secs(10),
        "the poisoned append",
        || async move {
            let sleeping: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event = 'PgSleep'",
            )
            .fetch_one(pool)
            .await
            .unwrap();
            (sleeping > 0).then_some(())
        },
    )
    .await;
}

/// Spawns `call` once its first poll has run: an engine call has then put its message in
/// the writer's queue, so whatever the test sends next queues behind it.
async fn queued<T: Send + 'static>(
    call: impl std::future::Future<Output = T> + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    let mut call = Box::pin(call);
    match futures::poll!(call.as_mut()) {
        std::task::Poll::Ready(answer) => tokio::spawn(async move { answer }),
        std::task::Poll::Pending => tokio::spawn(call),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_cannot_reload_never_decides_on_uncommitted_state() {
    let (engine, db) = start_engine(EngineConfig::default()).await;
    let raffle_id = open_raffle(&engine, 100, |_| {}).await;
    let pool = db.pool().clone();
    // Fault injection: appending the reservation of buyer "Poison" fails after a second, and
    // while the snapshot table is away, reloading a raffle fails too.
    fail_appends_of_poison(&pool, 1.0).await;
    sqlx::raw_sql("ALTER TABLE raffle_snapshots RENAME TO raffle_snapshots_away;")
        .execute(&pool)
        .await
        .unwrap();

    let (phantom, failing) = reserve_as_poison(&engine, raffle_id, 7);
    // While that append hangs, a payment for the same order queues up behind it.
    poison_append_hangs(&pool).await;
    let paying = {
        let engine = engine.clone();
        let command = payment(phantom, "pi_phantom", PRICE_MINOR);
        queued(async move { engine.execute(raffle_id, command, webhook_meta()).await }).await
    };
    // And a read after it, which must not see the reservation that is about to fail.
    let reading = {
        let engine = engine.clone();
        tokio::spawn(async move {
            engine
                .read(raffle_id, |raffle| raffle.available_count())
                .await
        })
    };
    let failed = failing.await.unwrap();
    assert!(
        matches!(failed, Err(EngineError::Unavailable { .. })),
        "{failed:?}"
    );
    let read = reading.await.unwrap();
    assert!(
        matches!(read, Ok(100) | Err(EngineError::Unavailable { .. })),
        "a read saw uncommitted state: {read:?}"
    );
    let paid = paying.await.unwrap();

    sqlx::raw_sql(
        "ALTER TABLE raffle_snapshots_away RENAME TO raffle_snapshots; \
         DROP TRIGGER fail_poison ON events;",
    )
    .execute(&pool)
    .await
    .unwrap();

    // The reservation never committed, so nothing may have been decided on top of it: no
    // tickets issued to an order the log never reserved.
    let log = log(&db.store, raffle_id).await;
    let mut reserved = BTreeSet::new();
    for stored in &log {
        match &stored.event {
            RaffleEvent::TicketsReserved { order_id, .. } => {
                reserved.insert(*order_id);
            }
            RaffleEvent::TicketsIssued { order_id, .. } => assert!(
                reserved.contains(order_id),
                "tickets issued to order {order_id}, which the log never reserved \
                 (the payment was answered {paid:?})"
            ),
            _ => {}
        }
    }
    assert!(!reserved.contains(&phantom));
    if let Ok(applied) = &paid {
        assert_in_log(&log, applied);
    }
    let state = engine_state(&engine, raffle_id).await;
    assert_eq!(state, db.store.load_raffle(raffle_id).await.unwrap().raffle);
    assert_eq!(state.available_count(), 100);
    assert_eq!(verify_chain(&pool, raffle_id).await, Ok(log.len() as u64));

    engine.shutdown().await;
    db.drop_database().await;
}

/// Commands decided on top of a batch whose append then fails are decided again on the
/// reloaded state: they neither commit on top of it nor fail with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_decided_behind_a_failed_append_are_decided_again() {
    let (engine, db) = start_engine(EngineConfig::default()).await;
    let raffle_id = open_raffle(&engine, 100, |_| {}).await;
    let pool = db.pool().clone();
    // Appending the reservation of buyer "Poison" fails, half a second in.
    fail_appends_of_poison(&pool, 0.5).await;

    let (phantom, failing) = reserve_as_poison(&engine, raffle_id, 7);
    // While that append runs, these are decided on top of it: number 7 looks taken and
    // the phantom order looks payable.
    poison_append_hangs(&pool).await;
    let rival = Uuid::new_v4();
    let buyer = Buyer::parse("Rival", "rival@example.com", None).unwrap();
    let (rivalling, paying) = {
        let (first, second) = (engine.clone(), engine.clone());
        let reserve = reserve_numbers(rival, buyer, &[7]);
        let pay = payment(phantom, "pi_phantom", PRICE_MINOR);
        (
            tokio::spawn(async move { first.execute(raffle_id, reserve, meta()).await }),
            tokio::spawn(async move { second.execute(raffle_id, pay, webhook_meta()).await }),
        )
    };
    let failed = failing.await.unwrap();
    assert!(
        matches!(failed, Err(EngineError::Unavailable { .. })),
        "{failed:?}"
    );
    // Decided again without the phantom reservation: 7 is free, and the payment is for an
    // unknown order (recorded, to be refunded; nothing issued).
    let reserved = rivalling.await.unwrap().expect("number 7 was never taken");
    let paid = paying.await.unwrap().expect("a payment is always recorded");
    let events: Vec<_> = paid.events.iter().map(|e| &e.event).collect();
    assert!(
        matches!(
            events.as_slice(),
            [
                RaffleEvent::PaymentRecorded { .. },
                RaffleEvent::RefundRequired {
                    reason: RefundReason::UnknownOrder,
                    ..
                }
            ]
        ),
        "{events:?}"
    );

    sqlx::raw_sql("DROP TRIGGER fail_poison ON events;")
        .execute(&pool)
        .await
        .unwrap();
    let log = log(&db.store, raffle_id).await;
    assert_in_log(&log, &reserved);
    assert_eq!(
        reservations(log.iter().map(|s| &s.event)).get(&rival),
        Some(&vec![7])
    );
    assert!(!reservations(log.iter().map(|s| &s.event)).contains_key(&phantom));
    let state = engine_state(&engine, raffle_id).await;
    assert_eq!(state, db.store.load_raffle(raffle_id).await.unwrap().raffle);
    assert_eq!(verify_chain(&pool, raffle_id).await, Ok(log.len() as u64));

    engine.shutdown().await;
    db.drop_database().await;
}

/// The connection drops between an append's commit and its reply. The error alone cannot
/// tell whether it committed; the stream can. The callers get the answers the commit gave
/// (not "unavailable" for a reservation that holds), and the raffle goes on from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_reply_was_lost_is_answered_as_committed() {
    let faults = Arc::new(Faults::default());
    let db = TestDb::new(10).await;
    let engine = Engine::with_faults(db.store.clone(), EngineConfig::default(), faults.clone());
    let raffle_id = open_raffle(&engine, 100, |_| {}).await;
    faults.lose_commit_replies(1);
    let reserve = |i: u64, number: u32| {
        engine.execute(
            raffle_id,
            reserve_numbers(Uuid::new_v4(), buyer(i), &[number]),
            meta(),
        )
    };
    let held = reserve(1, 7)
        .await
        .expect("it committed, so it is answered as such");
    assert_eq!(faults.commit_replies_to_lose(), 0, "the reply was lost");
    assert_in_log(&log(&db.store, raffle_id).await, &held);
    // Once: 7 stays taken, and the raffle takes commands as before.
    let code = reserve(2, 7)
        .await
        .err()
        .as_ref()
        .and_then(|e| rejection_code(e).map(str::to_owned));
    assert!(
        code.as_deref()
            .is_some_and(|code| SOLD_OUT_CODES.contains(&code)),
        "{code:?}"
    );
    let next = reserve(3, 8).await.unwrap();
    let log = log(&db.store, raffle_id).await;
    assert_in_log(&log, &next);
    assert_eq!(
        reservations(log.iter().map(|s| &s.event)).len(),
        2,
        "two reservations, none twice"
    );
    assert_eq!(
        engine_state(&engine, raffle_id).await,
        db.store.load_raffle(raffle_id).await.unwrap().raffle
    );
    assert_eq!(
        verify_chain(db.pool(), raffle_id).await,
        Ok(log.len() as u64)
    );

    engine.shutdown().await;
    db.drop_database().await;
}

/// Waits until `count` appends wait to commit, one of them in a statement that waits on a
/// lock (the test's `LOCK TABLE events`): what comes next queues behind them.
async fn appends_waiting(engine: &Engine, pool: &sqlx::PgPool, count: usize) {
    let what = format!("{count} appends waiting, one on the lock");
    eventually(Duration::from_secs(10), &what, || async move {
        let on_lock: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        (on_lock > 0 && engine.appends_waiting() == count).then_some(())
    })
    .await;
}

/// Raffles whose appends wait at the same moment commit in one statement. One batch the
/// database refuses, and one raffle another node appended to first, must each fail on its
/// own: every other raffle's commands in the group commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_or_conflicting_batch_fails_alone_in_a_shared_commit() {
    let db = TestDb::new(10).await;
    let engine = Engine::new(db.store.clone(), EngineConfig::default());
    let other_node = Engine::new(db.connect(4).await, EngineConfig::default());
    let mut raffles = Vec::new();
    for _ in 0..8 {
        raffles.push(open_raffle(&engine, 100, |_| {}).await);
    }
    let (early, rest) = raffles.split_at(2);
    let (poisoned, stale, innocent) = (rest[0], rest[1], &rest[2..]);
    // The other node sells number 1 of `stale`: this node's view of it is now behind.
    let elsewhere = other_node
        .execute(
            stale,
            reserve_numbers(Uuid::new_v4(), buyer(0), &[1]),
            meta(),
        )
        .await
        .unwrap();
    fail_appends_of_poison(db.pool(), 0.0).await;

    // Hold every append back: the first ones occupy the groups in flight, and what comes
    // next queues up and commits as one group once the lock is gone.
    let mut blocker = db.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE events IN SHARE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let send = |raffle_id: Uuid, number: u32| {
        let engine = engine.clone();
        let command = reserve_numbers(Uuid::new_v4(), buyer(u64::from(number)), &[number]);
        tokio::spawn(async move { engine.execute(raffle_id, command, meta()).await })
    };
    let mut answers: Vec<_> = early
        .iter()
        .map(|&raffle| (raffle, send(raffle, 2)))
        .collect();
    appends_waiting(&engine, db.pool(), early.len()).await;
    let (_, refused) = reserve_as_poison(&engine, poisoned, 2);
    // Decided on the stale view (1 looks free): the append conflicts, and the command is
    // decided again on the stream as it is.
    answers.push((stale, send(stale, 1)));
    answers.extend(innocent.iter().map(|&raffle| (raffle, send(raffle, 2))));
    appends_waiting(&engine, db.pool(), raffles.len()).await;
    blocker.rollback().await.unwrap();

    let refused = refused.await.unwrap();
    assert!(
        matches!(refused, Err(EngineError::Unavailable { .. })),
        "{refused:?}"
    );
    for (raffle_id, answer) in answers {
        let answer = answer.await.unwrap();
        let log = log(&db.store, raffle_id).await;
        if raffle_id == stale {
            let code = answer.as_ref().err().and_then(rejection_code);
            assert!(
                code.is_some_and(|code| SOLD_OUT_CODES.contains(&code)),
                "number 1 of the stale raffle went elsewhere: {answer:?}"
            );
            assert_in_log(&log, &elsewhere);
        } else {
            assert_in_log(
                &log,
                &answer.expect("an innocent raffle's reservation commits"),
            );
        }
        assert_eq!(
            verify_chain(db.pool(), raffle_id).await,
            Ok(log.len() as u64)
        );
    }

    // The same moment with nothing wrong in it: the innocent raffles' reservations commit in
    // one statement, so in one transaction.
    let mut blocker = db.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE events IN SHARE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let first = send(early[0], 3);
    appends_waiting(&engine, db.pool(), 1).await;
    let together: Vec<_> = innocent.iter().map(|&raffle| send(raffle, 3)).collect();
    appends_waiting(&engine, db.pool(), 1 + innocent.len()).await;
    blocker.rollback().await.unwrap();
    first.await.unwrap().unwrap();
    let mut orders = Vec::new();
    for answer in together {
        orders.push(order_of(&answer.await.unwrap().unwrap()));
    }
    let transactions: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT xmin::text) FROM events WHERE order_id = ANY($1)",
    )
    .bind(&orders)
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(
        transactions,
        1,
        "{} raffles, one shared commit",
        orders.len()
    );

    engine.shutdown().await;
    other_node.shutdown().await;
    db.drop_database().await;
}

/// A node that is behind may refuse a command that the stream, further on, allows. Such a
/// refusal has no event to collide on; it must still not be stored as the key's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_is_behind_stores_no_stale_refusal() {
    let db = TestDb::new(8).await;
    let (ahead, behind) = (
        Engine::new(db.store.clone(), EngineConfig::default()),
        Engine::new(db.connect(4).await, EngineConfig::default()),
    );
    let raffle_id = open_raffle(&ahead, 100, |_| {}).await;
    // `behind` loads the raffle now and hears nothing of what `ahead` does next (bare
    // engines have no NOTIFY listener).
    assert_eq!(
        engine_state(&behind, raffle_id).await.available_count(),
        100
    );
    let order = Uuid::new_v4();
    ahead
        .execute(raffle_id, reserve_numbers(order, buyer(1), &[5]), meta())
        .await
        .unwrap();

    // To `behind` the order does not exist yet: a refusal decided there is stale.
    let release = RaffleCommand::Release { order_id: order };
    let answer = behind
        .execute(
            raffle_id,
            release.clone(),
            keyed_meta("k-release", b"release"),
        )
        .await;
    let released = answer.expect("decided again on the stream as it is");
    assert!(!released.replayed);
    assert!(
        matches!(released.events.as_slice(), [e] if matches!(e.event, RaffleEvent::ReservationReleased { .. })),
        "{released:?}"
    );
    // Both nodes now give the retry the same, stored answer.
    for node in [&ahead, &behind] {
        let retry = node
            .execute(
                raffle_id,
                release.clone(),
                keyed_meta("k-release", b"release"),
            )
            .await
            .unwrap();
        assert!(retry.replayed);
        assert_eq!(retry.events, released.events);
    }

    ahead.shutdown().await;
    behind.shutdown().await;
    db.drop_database().await;
}

// ----- 13. compact raffles: settled orders read from the log (decision 0022) -----

/// Every raffle compact, snapshots often: the rare paths run on every settled order.
fn compact_config() -> EngineConfig {
    EngineConfig {
        compact_after_orders: 0,
        snapshot_every: 4,
        ..EngineConfig::default()
    }
}

fn event_names(applied: &Applied) -> Vec<&'static str> {
    applied.events.iter().map(|e| e.event.name()).collect()
}

fn refund(order_id: Uuid) -> RaffleCommand {
    RaffleCommand::Refund(tombola_domain::RefundOrder {
        order_id,
        amount_refunded_minor: None,
        reason: "requested_by_customer".into(),
        refund_id: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compact_raffle_reloaded_from_its_snapshot_decides_settled_orders_from_its_log() {
    let (engine, db) = start_engine(compact_config()).await;
    let raffle_id = open_raffle(&engine, 50, |_| {}).await;
    let (paid, released) = (Uuid::new_v4(), Uuid::new_v4());
    for (i, order_id) in [paid, released].into_iter().enumerate() {
        let command = reserve_random(order_id, buyer(i as u64), 2);
        engine.execute(raffle_id, command, meta()).await.unwrap();
    }
    let first = payment(paid, "pi_first", 2 * PRICE_MINOR);
    engine
        .execute(raffle_id, first.clone(), webhook_meta())
        .await
        .unwrap();
    let release = RaffleCommand::Release { order_id: released };
    engine.execute(raffle_id, release, meta()).await.unwrap();
    let state = engine_state(&engine, raffle_id).await;
    assert!(state.is_compact());
    assert_eq!(state.order(paid), None, "a paid order keeps no record");
    engine.shutdown().await;

    // A new node loads the compact snapshot (taken after every 4 events).
    let pool = db.pool().clone();
    let format: i16 = sqlx::query_scalar(
        "SELECT get_byte(payload, 4)::smallint FROM raffle_snapshots WHERE raffle_id = $1",
    )
    .bind(raffle_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(format, 2, "the snapshot is the compact version");
    let engine = Engine::new(db.connect(4).await, compact_config());
    assert!(engine_state(&engine, raffle_id).await.is_compact());

    // The same payment again (a provider retry with a new event id): nothing.
    let mut again = first.clone();
    if let RaffleCommand::RecordPayment(payment) = &mut again {
        payment.provider_event_id = "evt_retry".into();
    }
    let repeated = engine
        .execute(raffle_id, again, webhook_meta())
        .await
        .unwrap();
    assert!(repeated.events.is_empty(), "{repeated:?}");
    // A second, different payment for the paid order: recorded, refund required.
    let twice = engine
        .execute(
            raffle_id,
            payment(paid, "pi_second", 2 * PRICE_MINOR),
            webhook_meta(),
        )
        .await
        .unwrap();
    assert!(matches!(
        &twice.events[1].event,
        RaffleEvent::RefundRequired {
            reason: RefundReason::AlreadyPaid,
            ..
        }
    ));
    // The first payment's id reported for the other order: flagged, nothing issued.
    let reused = engine
        .execute(
            raffle_id,
            payment(released, "pi_first", 2 * PRICE_MINOR),
            webhook_meta(),
        )
        .await
        .unwrap();
    assert_eq!(event_names(&reused), ["PaymentRecorded", "PaymentFlagged"]);
    // A late payment for the released order: its numbers are still free, so issued.
    let late = engine
        .execute(
            raffle_id,
            payment(released, "pi_late", 2 * PRICE_MINOR),
            webhook_meta(),
        )
        .await
        .unwrap();
    assert!(matches!(
        &late.events[1].event,
        RaffleEvent::TicketsIssued { late: true, .. }
    ));
    // A refund of the paid order returns its numbers.
    let refunded = engine
        .execute(raffle_id, refund(paid), meta())
        .await
        .unwrap();
    let RaffleEvent::OrderRefunded { numbers, .. } = &refunded.events[0].event else {
        panic!("{refunded:?}");
    };
    assert_eq!(numbers.len(), 2);
    assert!(engine
        .execute(raffle_id, refund(paid), meta())
        .await
        .unwrap()
        .events
        .is_empty());
    let view = |order_id| engine.order_view(raffle_id, order_id);
    assert_eq!(
        view(paid).await.unwrap().unwrap().status,
        OrderStatus::Refunded
    );
    assert_eq!(
        view(released).await.unwrap().unwrap().status,
        OrderStatus::Paid
    );
    assert_eq!(view(Uuid::new_v4()).await.unwrap(), None);

    // The draw needs every ticket's owner: the stream is folded in full, once.
    engine
        .execute(raffle_id, RaffleCommand::CloseSales, meta())
        .await
        .unwrap();
    let draw = RaffleCommand::Draw {
        seed: "seed".into(),
        public_entropy: "block 1".into(),
    };
    let drawn = engine.execute(raffle_id, draw, meta()).await.unwrap();
    let RaffleEvent::WinnersDrawn { winners, .. } = &drawn.events[0].event else {
        panic!("{drawn:?}");
    };
    assert_eq!(winners.len(), 1);
    assert_eq!(winners[0].order_id, released, "the only paid order wins");

    // The compact state is the log's: a full replay shows the same tickets.
    engine.shutdown().await;
    let full = fold(log(&db.store, raffle_id).await.iter().map(|s| &s.event));
    let fresh = Engine::new(db.connect(2).await, compact_config());
    let compact = engine_state(&fresh, raffle_id).await;
    assert_eq!(compact.free_numbers(), full.free_numbers());
    assert_eq!(compact.sold_count(), full.sold_count());
    assert_eq!(compact.order_count(), full.order_count());
    assert_eq!(
        verify_chain(&pool, raffle_id).await,
        Ok(full_len(&db, raffle_id).await)
    );
    fresh.shutdown().await;
    db.drop_database().await;
}

async fn full_len(db: &tombola_testkit::TestDb, raffle_id: Uuid) -> u64 {
    event_count(db.pool(), raffle_id).await as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compact_raffle_decides_a_settled_order_from_events_not_yet_committed() {
    let (engine, db) = start_engine(compact_config()).await;
    let raffle_id = open_raffle(&engine, 100, |_| {}).await;
    let orders: Vec<Uuid> = (0..10).map(|_| Uuid::new_v4()).collect();
    for (i, order_id) in orders.iter().enumerate() {
        let command = reserve_random(*order_id, buyer(i as u64), 1);
        engine.execute(raffle_id, command, meta()).await.unwrap();
    }
    // Each order's payment, its repeat and its refund queue up behind a busy writer and are
    // decided in one batch: the repeat and the refund need the order's events, which are
    // only in that batch (the writer's journal), not yet in the log.
    let held = hold_writer(&engine, raffle_id, Duration::from_millis(600)).await;
    let mut sent = JoinSet::new();
    for (i, order_id) in orders.iter().enumerate() {
        for (step, command) in [
            payment(*order_id, &format!("pi_{i}"), PRICE_MINOR),
            payment(*order_id, &format!("pi_{i}"), PRICE_MINOR),
            refund(*order_id),
        ]
        .into_iter()
        .enumerate()
        {
            let engine = engine.clone();
            sent.spawn(async move {
                (
                    i,
                    step,
                    engine.execute(raffle_id, command, webhook_meta()).await,
                )
            });
            // Queued in order: the next one is sent once this one is surely in the queue.
            tokio::time::sleep(Duration::from_millis(4)).await;
        }
    }
    let mut results = BTreeMap::new();
    while let Some(joined) = sent.join_next().await {
        let (i, step, result) = joined.unwrap();
        results.insert((i, step), result.unwrap());
    }
    held.await.unwrap();
    for i in 0..orders.len() {
        assert_eq!(
            event_names(&results[&(i, 0)]),
            ["PaymentRecorded", "TicketsIssued"]
        );
        assert!(results[&(i, 1)].events.is_empty(), "repeat {i}");
        assert_eq!(
            event_names(&results[&(i, 2)]),
            ["OrderRefunded"],
            "refund {i}"
        );
    }
    let full = fold(log(&db.store, raffle_id).await.iter().map(|s| &s.event));
    let compact = engine_state(&engine, raffle_id).await;
    assert_eq!(compact.free_numbers(), full.free_numbers());
    assert_eq!(full.sold_count(), 0);
    engine.shutdown().await;
    db.drop_database().await;
}
