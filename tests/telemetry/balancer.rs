//! `deploy/nginx.conf`, live: three nodes on one database behind the example balancer, as
//! docs/OPERATIONS.md (Behind the balancer) tells operators to run them. The file is used as
//! written; only what a test machine must change is rewritten (addresses, the listen port,
//! paths nginx writes to) plus one header that names the node that answered.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tombola::clock::SystemClock;
use tombola_testkit::requests::{expect_json, expect_problem, numbers, raffle_request};
use tombola_testkit::spawn_app_with;
use tombola_testkit::TestApp;
use uuid::Uuid;

/// The header the test adds to see which node answered (`$upstream_addr`).
const UPSTREAM: &str = "x-tombola-upstream";

/// nginx running the example in front of `nodes`; stopped (SIGQUIT) when dropped.
struct Balancer {
    child: Child,
    prefix: PathBuf,
    address: String,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.prefix);
    }
}

fn nginx_installed() -> bool {
    match Command::new("nginx").arg("-v").output() {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // CI installs it (.ci/run): there its absence is a failure, not a skip.
            assert!(
                std::env::var_os("CI").is_none(),
                "nginx is not installed, and CI must run the balancer example"
            );
            eprintln!("nginx is not installed: skipped (.ci/run installs nginx-light)");
            false
        }
        Err(e) => panic!("nginx: {e}"),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// Replaces exactly `count` occurrences of `from`, so that a change to the example that
/// this test no longer matches fails here instead of testing something else.
fn replace(text: &str, from: &str, to: &str, count: usize) -> String {
    assert_eq!(
        text.matches(from).count(),
        count,
        "deploy/nginx.conf no longer contains {from:?} {count} time(s)"
    );
    text.replace(from, to)
}

/// The example with its three upstream servers pointed at `nodes`, listening on `port`,
/// writing only under `prefix`, and naming the answering node in [`UPSTREAM`].
fn configuration(example: &str, port: u16, nodes: &[String], prefix: &Path) -> String {
    let mut text = replace(
        example,
        "listen 80;",
        &format!("listen 127.0.0.1:{port};"),
        1,
    );
    for (i, node) in nodes.iter().enumerate() {
        let placeholder = format!("server 10.0.0.1{}:8080", i + 1);
        let address = node.trim_start_matches("http://");
        text = replace(&text, &placeholder, &format!("server {address}"), 1);
    }
    let p = prefix.display();
    let writable = format!(
        "http {{\n    access_log {p}/access.log;\n    client_body_temp_path {p}/body;\n    \
         proxy_temp_path {p}/proxy;\n    add_header X-Tombola-Upstream $upstream_addr always;\n"
    );
    replace(&text, "http {\n", &writable, 1)
}

async fn start_balancer(nodes: &[String]) -> Balancer {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("deploy/nginx.conf")).expect("the example");
    let prefix = std::env::temp_dir().join(format!("tombola-balancer-{}", Uuid::new_v4()));
    std::fs::create_dir_all(prefix.join("logs")).expect("a prefix directory");
    let port = free_port();
    let config = prefix.join("nginx.conf");
    std::fs::write(&config, configuration(&example, port, nodes, &prefix)).expect("write");
    // As root, nginx's workers would run as `nobody` and could not write under a private
    // prefix; the user directive is ignored (with a notice) when not root.
    let globals = format!(
        "daemon off; master_process off; pid {0}/nginx.pid; error_log {0}/error.log; user root;",
        prefix.display()
    );
    let child = Command::new("nginx")
        .args(["-p", prefix.to_str().expect("UTF-8")])
        .args(["-c", config.to_str().expect("UTF-8")])
        .args(["-g", &globals])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let balancer = Balancer {
        child,
        prefix,
        address: format!("http://127.0.0.1:{port}"),
    };
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if let Ok(response) = http
            .get(format!("{}/healthz", balancer.address))
            .send()
            .await
        {
            if response.status() == StatusCode::OK {
                return balancer;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(balancer.prefix.join("error.log")).unwrap_or_default();
    panic!("nginx did not answer /healthz within 10 s: {log}");
}

/// Three nodes on one database, trusting the balancer's address for `X-Forwarded-For`.
async fn three_nodes() -> Vec<TestApp> {
    let trust = |settings: &mut tombola::config::Settings| {
        settings.trusted_proxies = vec!["127.0.0.1/32".parse().expect("a CIDR")];
    };
    let first = spawn_app_with(trust).await;
    let second = first.another_node(Arc::new(SystemClock), trust).await;
    let third = first.another_node(Arc::new(SystemClock), trust).await;
    vec![first, second, third]
}

/// A request through the balancer: the answer and the node that gave it (the last address
/// of `$upstream_addr`, which lists every node tried).
async fn send(
    app: &TestApp,
    balancer: &Balancer,
    path: &str,
    key: &str,
    body: Option<&Value>,
) -> (reqwest::Response, String) {
    let url = format!("{}{path}", balancer.address);
    let request = match body {
        Some(body) => app.http.post(url).json(body),
        None => app.http.get(url),
    };
    let response = request.bearer_auth(key).send().await.expect("sent");
    let node = response
        .headers()
        .get(UPSTREAM)
        .and_then(|value| value.to_str().ok())
        .and_then(|tried| tried.rsplit(", ").next())
        .unwrap_or_default()
        .to_owned();
    (response, node)
}

/// Reserves `number` through the balancer as `org-a`'s sales front end.
async fn reserve(
    app: &TestApp,
    balancer: &Balancer,
    raffle: Uuid,
    number: u32,
) -> (reqwest::Response, String) {
    let path = format!("/v1/raffles/{raffle}/reservations");
    let body = numbers(&format!("buyer{number}@example.com"), &[number]);
    send(app, balancer, &path, &app.client_key, Some(&body)).await
}

async fn raffle_view(app: &TestApp, balancer: &Balancer, raffle: Uuid) -> (Value, String) {
    let path = format!("/v1/raffles/{raffle}");
    let (response, node) = send(app, balancer, &path, &app.client_key, None).await;
    (expect_json(response, StatusCode::OK).await, node)
}

#[tokio::test]
async fn three_nodes_behind_the_example_balancer_serve_each_raffle_from_one_node_and_survive_one_leaving(
) {
    if !nginx_installed() {
        return;
    }
    let mut nodes = three_nodes().await;
    let addresses: Vec<String> = nodes.iter().map(|node| node.address.clone()).collect();
    let balancer = start_balancer(&addresses).await;
    let app = &nodes[0];

    // Twelve raffles, each created, opened, sold from and read through the balancer.
    let mut served_by: BTreeMap<Uuid, BTreeSet<String>> = BTreeMap::new();
    for _ in 0..12 {
        let body = raffle_request(json!({}));
        let (response, _) = send(
            app,
            &balancer,
            "/v1/raffles",
            &app.organizer_key,
            Some(&body),
        )
        .await;
        let raffle: Uuid = expect_json(response, StatusCode::CREATED).await["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .expect("a raffle id");
        let open = format!("/v1/raffles/{raffle}/open");
        let (response, node) =
            send(app, &balancer, &open, &app.organizer_key, Some(&json!({}))).await;
        expect_json(response, StatusCode::OK).await;
        let mut seen = BTreeSet::from([node]);
        for n in 1..=4 {
            let (response, node) = reserve(app, &balancer, raffle, n).await;
            expect_json(response, StatusCode::CREATED).await;
            seen.insert(node);
        }
        let (view, node) = raffle_view(app, &balancer, raffle).await;
        assert_eq!(view["reserved"], 4, "{view}");
        seen.insert(node);
        served_by.insert(raffle, seen);
    }
    for (raffle, seen) in &served_by {
        assert_eq!(seen.len(), 1, "raffle {raffle} was served by {seen:?}");
        assert!(
            !seen.iter().any(String::is_empty),
            "no upstream named: {seen:?}"
        );
    }
    let used: BTreeSet<&String> = served_by.values().flatten().collect();
    assert!(
        used.len() >= 2,
        "12 raffles hashed onto one node of three ({used:?}): the hash does not spread them"
    );

    // One node leaves. Its raffles move to the others (nginx passes a refused connection on
    // to the next server, even for a POST, since nothing was sent), which catch up from
    // the log: the numbers it held stay held, and sales go on.
    let leaving = served_by
        .values()
        .flatten()
        .next()
        .cloned()
        .expect("a node");
    let index = addresses
        .iter()
        .position(|address| address.ends_with(leaving.as_str()))
        .expect("the node is one of the three");
    nodes[index].stop().await;
    let app = nodes
        .iter()
        .find(|node| node.is_running())
        .expect("a running node");
    let moved: Vec<Uuid> = served_by
        .iter()
        .filter(|(_, seen)| seen.contains(&leaving))
        .map(|(raffle, _)| *raffle)
        .collect();
    for raffle in moved {
        for n in 1..=4 {
            let (response, node) = reserve(app, &balancer, raffle, n).await;
            assert_ne!(node, leaving, "a stopped node answered");
            expect_problem(response, StatusCode::CONFLICT, "tickets_unavailable").await;
        }
        let (response, node) = reserve(app, &balancer, raffle, 5).await;
        expect_json(response, StatusCode::CREATED).await;
        assert_ne!(node, leaving, "a stopped node answered");
        let (view, _) = raffle_view(app, &balancer, raffle).await;
        assert_eq!(view["reserved"], 5, "{view}");
    }
    // The raffles of the nodes that stayed did not move (consistent hashing).
    for (raffle, seen) in served_by
        .iter()
        .filter(|(_, seen)| !seen.contains(&leaving))
    {
        let (_, node) = raffle_view(app, &balancer, *raffle).await;
        assert!(
            seen.contains(&node),
            "raffle {raffle} moved from {seen:?} to {node}"
        );
    }
    drop(balancer);
    for node in nodes.into_iter().rev() {
        node.teardown().await;
    }
}
