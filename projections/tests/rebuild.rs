//! Rebuilds into shadow tables, swapped in while commands keep arriving.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tombola_projections::models;
use uuid::Uuid;

use support::history::{ops, History};
use support::oracle::{assert_read_models_match, fold_orders, gist, orders_at_checkpoint};
use support::{eager, eventually, TestDb};

#[test]
fn a_rebuild_while_commands_arrive_ends_equal_to_the_log_and_readers_never_see_it_half_built() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(TestDb::new());
    let mut runner = TestRunner::new(Config {
        cases: 4,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(
            &(
                prop::collection::vec((ops(60), any::<u64>()), 2..=3),
                1usize..=5,
            ),
            |(scripts, batch_size)| {
                rt.block_on(async {
                    let organizer = format!("org-{}", Uuid::new_v4().simple());
                    let mut histories: Vec<History> = scripts
                        .iter()
                        .map(|(ops, seed)| History::build(Uuid::new_v4(), &organizer, *seed, ops))
                        .collect();
                    for history in &mut histories {
                        let half = history.events.len() / 2;
                        history.write_next(&db.pool, half).await;
                    }
                    let runtime = db.runtime(eager(batch_size));
                    let handle = runtime.handle();
                    let (stop, mut stopped) = tokio::sync::watch::channel(false);
                    let live = tokio::spawn(runtime.run(async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    }));
                    // A reader: in one snapshot, the orders table always equals the fold of the
                    // log up to the orders checkpoint, before, during and after the swap.
                    let reading = Arc::new(AtomicBool::new(true));
                    let logs: Vec<(Uuid, Vec<_>)> = histories
                        .iter()
                        .map(|h| (h.raffle_id, h.events.clone()))
                        .collect();
                    let reader = {
                        let pool = db.pool.clone();
                        let reading = reading.clone();
                        tokio::spawn(async move {
                            let mut reads = 0u32;
                            while reading.load(Ordering::Relaxed) || reads == 0 {
                                for (raffle_id, events) in &logs {
                                    let (checkpoint, orders) =
                                        orders_at_checkpoint(&pool, *raffle_id).await;
                                    assert_eq!(
                                        orders,
                                        gist(&fold_orders(&events[..checkpoint as usize])),
                                        "the orders of {raffle_id} at checkpoint {checkpoint}"
                                    );
                                    reads += 1;
                                }
                            }
                            reads
                        })
                    };
                    // Commands keep arriving while every projection is rebuilt.
                    let writer = {
                        let pool = db.pool.clone();
                        let mut histories = std::mem::take(&mut histories);
                        let handle = handle.clone();
                        tokio::spawn(async move {
                            while histories.iter().any(|h| h.written < h.events.len()) {
                                for history in &mut histories {
                                    history.write_next(&pool, 2).await;
                                    handle.wake(history.raffle_id);
                                }
                                tokio::task::yield_now().await;
                            }
                            histories
                        })
                    };
                    // Half the cases one projection after the other, half all of them from
                    // one read of the log.
                    if batch_size % 2 == 0 {
                        for projection in models::all() {
                            handle
                                .rebuild(projection.name(), None, |_| {})
                                .await
                                .unwrap();
                        }
                    } else {
                        let names: Vec<&str> = models::all().iter().map(|p| p.name()).collect();
                        handle.rebuild_all(&names, |_| {}).await.unwrap();
                    }
                    let histories = writer.await.unwrap();
                    eventually(
                        "caught up after the rebuilds",
                        Duration::from_secs(30),
                        || {
                            let handle = handle.clone();
                            async move {
                                let status = handle.status().await.unwrap();
                                status
                                    .projections
                                    .iter()
                                    .all(|p| p.lag_events == 0 && p.state == "ok")
                            }
                        },
                    )
                    .await;
                    reading.store(false, Ordering::Relaxed);
                    assert!(reader.await.unwrap() > 0);
                    stop.send(true).unwrap();
                    live.await.unwrap();
                    assert_read_models_match(&db.pool, &histories).await;
                    let shadows: i64 = sqlx::query_scalar(
                        "SELECT count(*) FROM pg_tables WHERE tablename LIKE '%\\_\\_shadow'",
                    )
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
                    assert_eq!(shadows, 0, "no shadow table is left behind");
                });
                Ok(())
            },
        )
        .unwrap();
    rt.block_on(db.drop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_raffle_is_rebuilt_alone_and_a_damaged_model_is_repaired() {
    let db = TestDb::new().await;
    let script = vec![
        support::history::Op::ReserveRandom {
            quantity: 2,
            buyer: 0,
        },
        support::history::Op::ReserveRandom {
            quantity: 1,
            buyer: 1,
        },
        support::history::Op::Pay {
            target: 0,
            short: false,
            pool_id: None,
        },
    ];
    let mut damaged = History::build(Uuid::new_v4(), "org-rebuild", 1, &script);
    let mut intact = History::build(Uuid::new_v4(), "org-rebuild", 2, &script);
    damaged.write_all(&db.pool).await;
    intact.write_all(&db.pool).await;
    let runtime = db.runtime(eager(10));
    let handle = runtime.handle();
    for history in [&damaged, &intact] {
        for projection in models::all() {
            handle
                .catch_up(projection.name(), history.raffle_id)
                .await
                .unwrap();
        }
    }
    // Somebody edited the read model by hand.
    sqlx::query("UPDATE read_orders SET buyer_name = 'edited' WHERE raffle_id = $1")
        .bind(damaged.raffle_id)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM read_tickets WHERE raffle_id = $1")
        .bind(damaged.raffle_id)
        .execute(&db.pool)
        .await
        .unwrap();
    for name in ["orders", "tickets"] {
        handle
            .rebuild(name, Some(damaged.raffle_id), |_| {})
            .await
            .unwrap();
    }
    assert!(matches!(
        handle
            .rebuild("platform_stats", Some(damaged.raffle_id), |_| {})
            .await,
        Err(tombola_projections::RebuildError::NotPerRaffle(_))
    ));
    assert_read_models_match(&db.pool, &[damaged, intact]).await;
    db.drop().await;
}
