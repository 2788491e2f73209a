//! Rate limits shared by every node (issue 17): two nodes on one database hold one key's
//! limit together within the stated bound, a restart of both forgets nothing, the client IP
//! comes from forwarding headers only through a trusted proxy, and with PostgreSQL gone each
//! node fails open on its local limit. Time is the injected clock's: frozen, a bucket does
//! not refill, so every count below is decided by the limiter alone.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use tombola::clock::{Clock, ManualClock};
use tombola::config::Settings;

use crate::helpers::*;

/// 600 requests a minute per key (10/s), 100 at once, for the general class; nodes lease
/// a second's worth (10 tokens) at a time: the stated error is one lease per node.
const BURST: u32 = 100;
const RATE_PER_SEC: u32 = 10;
const LEASE: u32 = 10;

fn shared_key_limit(settings: &mut Settings) {
    settings.rate_limits = vec!["general.key=600/min:100".parse().expect("a rule")];
    settings.rate_limit_lease = Duration::from_secs(1);
}

/// Sends `count` authenticated GETs, spread over `nodes` and 8 at a time; returns how many
/// were accepted, and the headers of one refusal.
async fn hammer(nodes: &[&TestApp], count: usize) -> (u32, Option<HeaderMap>) {
    let mut requests = tokio::task::JoinSet::new();
    let mut accepted = 0;
    let mut refusal = None;
    for i in 0..count {
        let node = nodes[i % nodes.len()];
        let request = node.request(Method::GET, "/v1/raffles", &node.client_key);
        requests.spawn(async move { request.send().await.expect("request sent") });
        if requests.len() >= 8 {
            tally(&mut requests, &mut accepted, &mut refusal).await;
        }
    }
    while !requests.is_empty() {
        tally(&mut requests, &mut accepted, &mut refusal).await;
    }
    (accepted, refusal)
}

async fn tally(
    requests: &mut tokio::task::JoinSet<reqwest::Response>,
    accepted: &mut u32,
    refusal: &mut Option<HeaderMap>,
) {
    let response = requests
        .join_next()
        .await
        .expect("a request")
        .expect("no panic");
    match response.status() {
        StatusCode::OK => *accepted += 1,
        StatusCode::TOO_MANY_REQUESTS => {
            let (_, headers) =
                expect_problem(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
            refusal.get_or_insert(headers);
        }
        other => panic!("unexpected {other}: {}", response.text().await.unwrap()),
    }
}

fn header(headers: &HeaderMap, name: &str) -> u64 {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("a {name} header"))
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_hold_one_keys_limit_together_and_a_restart_forgets_nothing() {
    let clock = Arc::new(ManualClock::at_system_time());
    let mut a = TestApp::start(clock.clone(), shared_key_limit).await;
    let b = a.another_node(clock.clone(), shared_key_limit).await;

    // A full bucket, time frozen: the two nodes together get the burst, never more. A
    // per-process limiter would accept 100 on each.
    let (first, refusal) = hammer(&[&a, &b], 300).await;
    assert!(
        first <= BURST,
        "{first} accepted: more than the shared burst of {BURST}"
    );
    assert!(
        first >= BURST - 2 * LEASE,
        "{first} accepted: leases lost more than one per node"
    );
    let refusal = refusal.expect("a 429");
    assert_eq!(header(&refusal, "ratelimit-limit"), u64::from(BURST));
    assert_eq!(header(&refusal, "ratelimit-remaining"), 0);
    let wait = retry_after(&refusal);
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    assert!(header(&refusal, "ratelimit-reset") >= wait);

    // Ten seconds later: ten seconds' worth more (the stated bound over this 10 s window is
    // burst + 10 s × rate + one lease per node).
    clock.advance(chrono::Duration::seconds(10));
    let (second, _) = hammer(&[&a, &b], 300).await;
    let total = first + second;
    let window = BURST + 10 * RATE_PER_SEC;
    assert!(
        total <= window + 2 * LEASE,
        "{total} accepted over 10 s: beyond the stated bound"
    );
    // Frozen between the bursts, no lease outlives its window: the sum is exact or less.
    assert!(total <= window, "{total} accepted over 10 s");
    assert!(total >= window - 2 * LEASE, "{total} accepted over 10 s");

    // Both nodes restart: the budget they used is still used.
    a.stop().await;
    b.teardown().await;
    let c = a.another_node(clock.clone(), shared_key_limit).await;
    let d = a.another_node(clock.clone(), shared_key_limit).await;
    let (after_restart, refusal) = hammer(&[&c, &d], 20).await;
    assert_eq!(after_restart, 0, "a restart gave the budget back");
    assert!(retry_after(&refusal.expect("a 429")) >= 1);

    // And it refills at the limit's rate, not before.
    clock.advance(chrono::Duration::seconds(3));
    let (refilled, _) = hammer(&[&c, &d], 100).await;
    assert!(
        (1..=3 * RATE_PER_SEC).contains(&refilled),
        "{refilled} accepted after 3 s"
    );
    c.teardown().await;
    d.teardown().await;
    a.teardown().await;
}

/// A key's routes fall into classes with budgets of their own: a key that used up its
/// general budget may still reserve, and the answers say which budget they count against.
#[tokio::test]
async fn route_classes_have_budgets_of_their_own_and_answers_carry_the_headers() {
    let clock = Arc::new(ManualClock::at_system_time());
    let app = TestApp::start(clock.clone(), |settings| {
        settings.rate_limits = vec![
            "general.key=2/min".parse().unwrap(),
            "reserve.key=60/min:5".parse().unwrap(),
        ];
    })
    .await;
    let raffle = {
        let response = app
            .post(
                "/v1/raffles",
                &app.admin_key,
                &raffle_request(serde_json::json!({"organizer_id": ORGANIZER})),
            )
            .await;
        let id: uuid::Uuid = expect_json(response, StatusCode::CREATED).await["id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        expect_json(
            app.post_empty(&format!("/v1/raffles/{id}/open"), &app.admin_key)
                .await,
            StatusCode::OK,
        )
        .await;
        id
    };
    let path = format!("/v1/raffles/{raffle}");
    let read = || app.get(&path, &app.client_key);
    let ok = read().await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(header(ok.headers(), "ratelimit-limit"), 2);
    assert_eq!(header(ok.headers(), "ratelimit-remaining"), 1);
    assert_eq!(read().await.status(), StatusCode::OK);
    let refused = read().await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);

    // The served document describes this answer's headers, and they are all there.
    let doc = expect_json(app.get("/openapi.json", "").await, StatusCode::OK).await;
    let documented = doc["paths"]["/v1/raffles/{id}"]["get"]["responses"]["429"]["headers"]
        .as_object()
        .expect("the 429's headers are documented")
        .clone();
    assert_eq!(documented["Retry-After"]["required"], true);
    for name in [
        "Retry-After",
        "RateLimit-Limit",
        "RateLimit-Remaining",
        "RateLimit-Reset",
    ] {
        assert!(documented.contains_key(name), "{name} undocumented");
        header(refused.headers(), &name.to_lowercase());
    }

    let reserved = app
        .reserve(raffle, &app.client_key, &quantity("ada@example.com", 1))
        .await;
    assert_eq!(reserved.status(), StatusCode::CREATED);
    assert_eq!(header(reserved.headers(), "ratelimit-limit"), 5);
    app.teardown().await;
}

/// Only a trusted proxy's word counts: through it, each forwarded client has its own
/// budget; from any other peer the headers are ignored, so made-up addresses buy nothing.
#[tokio::test]
async fn the_client_ip_is_forwarded_only_by_trusted_proxies() {
    let per_ip = |trusted: &'static str| {
        move |settings: &mut Settings| {
            settings.rate_limits = vec!["general.ip=3/min".parse().unwrap()];
            settings.trusted_proxies = vec![trusted.parse().unwrap()];
        }
    };
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::at_system_time());
    // The test's connections come from 127.0.0.1: the balancer.
    let behind = TestApp::start(clock.clone(), per_ip("127.0.0.0/8")).await;
    let health = |app: &TestApp, name: &'static str, value: &str| {
        app.http
            .get(app.url("/healthz"))
            .header(name, value.to_owned())
            .send()
    };
    for _ in 0..3 {
        let response = health(&behind, "x-forwarded-for", "203.0.113.1")
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    // That client is out of budget, also when it prepends a made-up hop.
    for spoofed in ["203.0.113.1", "198.51.100.99, 203.0.113.1"] {
        let response = health(&behind, "x-forwarded-for", spoofed).await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "{spoofed}"
        );
    }
    // Others behind the same balancer are not.
    let other = health(&behind, "x-forwarded-for", "203.0.113.2")
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::OK);
    let forwarded = health(&behind, "forwarded", "for=\"[2001:db8::7]:4711\"")
        .await
        .unwrap();
    assert_eq!(forwarded.status(), StatusCode::OK);

    // From a peer that is not a trusted proxy, every request is the peer's own, whatever
    // address it claims.
    let direct = behind
        .another_node(clock.clone(), per_ip("10.0.0.0/8"))
        .await;
    let mut statuses = Vec::new();
    for i in 0..5 {
        let claimed = format!("192.0.2.{i}");
        let name = if i % 2 == 0 {
            "x-forwarded-for"
        } else {
            "forwarded"
        };
        let value = if name == "forwarded" {
            format!("for={claimed}")
        } else {
            claimed
        };
        statuses.push(health(&direct, name, &value).await.unwrap().status());
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    direct.teardown().await;
    behind.teardown().await;
}

/// PostgreSQL gone: requests are still served, up to each node's local limit, and the node
/// says so (a warning, and `tombola_rate_limit_fail_open_total`).
#[tokio::test]
async fn without_the_database_the_limiter_fails_open_on_the_local_limit() {
    let clock = Arc::new(ManualClock::at_system_time());
    let mut app = TestApp::start(clock.clone(), |settings| {
        settings.rate_limits = vec!["general.ip=3/min".parse().unwrap()];
        settings.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    let metrics = tombola::telemetry::init_metrics().expect("the metrics recorder");
    let fail_open = || {
        metrics
            .render()
            .lines()
            .find_map(|line| line.strip_prefix("tombola_rate_limit_fail_open_total "))
            .map_or(0.0, |value| value.parse::<f64>().expect("a number"))
    };
    let before = fail_open();
    drop_database(&app.db_url).await;

    let health = || {
        app.http
            .get(app.url("/healthz"))
            .header("x-forwarded-for", "203.0.113.5")
            .send()
    };
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(health().await.unwrap().status());
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS
        ],
        "the local limit of 3 at once applies"
    );
    // Other tests of this binary may fail open too: at least these three were counted.
    assert!(
        fail_open() - before >= 3.0,
        "fail-open requests not counted"
    );

    // The local limit refills with time like the shared one.
    clock.advance(chrono::Duration::seconds(20));
    assert_eq!(health().await.unwrap().status(), StatusCode::OK);
    app.stop().await;
    app.teardown().await;
}
