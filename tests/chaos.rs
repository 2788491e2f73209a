//! The chaos harness's small configuration (docs/RELIABILITY.md): three `tombola serve`
//! processes of this build on a PostgreSQL cluster of the harness's own, random clients,
//! every kind of fault, then the checker over the log and the client's record. The long
//! soak is `cargo run --release -p tombola-bench -- chaos`.

use tombola_bench::chaos::{self, faults::KINDS};

/// About 75-80 s of a test run (70 s of traffic, settling, checking), at load averages of
/// 10-17 on two cores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_under_every_fault_keep_every_promise() {
    let args = chaos::Args {
        nodes: 3,
        // Long enough that holds of the first minute (the shortest hold a raffle takes)
        // expire under faults.
        seconds: 70,
        clients: 4,
        raffles: 3,
        raffle_life_secs: 40,
        fault_every_secs: 4.0,
        disconnect_rate: 0.03,
        // A loaded CI machine runs debug nodes: more grace than the soak's 10 s.
        hold_grace_secs: 20,
        request_timeout_secs: 3,
        port: 18460,
        seed: None,
        tombola_bin: Some(env!("CARGO_BIN_EXE_tombola").into()),
        scratch: std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
        keep: false,
    };
    let outcome = chaos::run(&args).await.expect("the chaos run completes");
    let summary = serde_json::to_string(&outcome.summary).expect("summary serializes");
    eprintln!("{summary}");
    assert!(
        outcome.violations.is_empty(),
        "{} violation(s):\n{}\n{summary}",
        outcome.violations.len(),
        outcome.violations.join("\n")
    );
    for kind in KINDS.iter().chain(&["client_disconnect"]) {
        assert!(
            outcome
                .summary
                .faults_injected
                .get(*kind)
                .copied()
                .unwrap_or(0)
                > 0,
            "no {kind} fault was injected: {summary}"
        );
    }
    for event in ["TicketsReserved", "TicketsIssued", "HoldsExpired"] {
        assert!(
            outcome.summary.events_by_type.contains_key(event),
            "the run never produced {event}: {summary}"
        );
    }
    assert!(outcome.summary.acknowledged > 100, "{summary}");
}

/// The flake of the test above (1 failure in 6 runs, then the first run of a loop):
/// "projection platform_stats at 253, the stream's head is 254". A hold reserved in the
/// last minute of traffic expires after the settling, while the nodes are being stopped,
/// and a stopping node leaves its projections where they are (they resume at the next
/// start). The harness now applies that tail itself, with the runtime's own catch-up,
/// before the checker compares the read models with the log.
#[tokio::test]
async fn events_no_node_projected_are_applied_before_the_check() {
    use tombola::engine::EngineConfig;
    use tombola_bench::chaos::{check, observe, record::Record};
    use tombola_testkit::engine::{buyer, meta, open_raffle, reserve_numbers, start_engine};

    // An engine without a read side: the events it commits stay unprojected, as those a
    // node commits while it stops.
    let (engine, db) = start_engine(EngineConfig::default()).await;
    let projections = tombola_projections::models::all();
    tombola_projections::migrate(db.pool(), &projections)
        .await
        .expect("read tables");
    let raffle = open_raffle(&engine, 50, |_| {}).await;
    let order = uuid::Uuid::now_v7();
    engine
        .execute(raffle, reserve_numbers(order, buyer(1), &[7, 9]), meta())
        .await
        .expect("reserved");
    engine.shutdown().await;

    let bounds = check::Bounds {
        hold_grace: chrono::Duration::seconds(10),
    };
    let before = observe::observe(db.pool()).await.expect("observed");
    let unprojected = check::check(&Record::default(), &before, &bounds);
    assert!(
        unprojected
            .iter()
            .any(|v| v.contains("the stream's head is 3")),
        "the checker sees projections behind: {unprojected:#?}"
    );

    let caught_up = observe::finish_projections(db.pool())
        .await
        .expect("projections caught up");
    assert_eq!(caught_up, projections.len(), "every projection was behind");
    let after = observe::observe(db.pool()).await.expect("observed");
    assert_eq!(
        check::check(&Record::default(), &after, &bounds),
        Vec::<String>::new()
    );
    assert_eq!(
        after.read_orders[&raffle][&order],
        ("reserved".to_owned(), vec![7, 9])
    );
    db.drop_database().await;
}
