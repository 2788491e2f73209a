//! `tombola-bench webhooks`: signed Stripe deliveries over HTTP against a real server.
//!
//! Starts a server on a fresh database (or targets `--url`, with `--api-key`, `--secret`
//! and `DATABASE_URL` naming its database), creates raffles and reserved orders through the
//! API, then sends `payment_intent.succeeded` deliveries at `--rate` per second from up to
//! `--concurrency` connections, 10% of them exact re-sends of an earlier delivery. It
//! reports the acknowledgement latency, and — from the log — how long after its first
//! delivery each order's tickets were issued, and whether any order was issued twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};

use chrono::{DateTime, Utc};
use clap::Args as ClapArgs;
use serde_json::json;
use tokio::sync::Mutex;
use tombola::api::auth::{Keys, Role};
use tombola::clock::SystemClock;
use tombola::config::Settings;
use tombola::payments::stripe::Stripe;
use tombola::startup::Application;
use uuid::Uuid;

use crate::api_client::post;
use crate::report::{BenchResult, Report};

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Concurrent connections sending deliveries.
    #[arg(long, default_value_t = 256, value_parser = at_least_one())]
    concurrency: usize,
    /// Seconds of sending, measured.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// Seconds sent at the same rate before the measured ones, and not counted: sender
    /// connections, database connections and caches warm up (a cold start slowed the first
    /// 100–400 ms of a run, 1–4% of its deliveries: the whole p99).
    #[arg(long, default_value_t = 1)]
    warmup_seconds: u64,
    /// Deliveries per second offered (open loop: latency is measured at this load).
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u32).range(1..))]
    rate: u32,
    /// Raffles the orders are spread over.
    #[arg(long, default_value_t = 16, value_parser = at_least_one())]
    raffles: usize,
    /// Inbox workers of the server the bench starts. 0 measures the acknowledgement path
    /// alone: nothing is issued, and the issue figures stay 0.
    #[arg(long, default_value_t = 2)]
    payment_workers: usize,
    /// Target a running server instead of starting one.
    #[arg(long, requires_all = ["api_key", "secret"])]
    url: Option<String>,
    /// Admin API key for --url.
    #[arg(long)]
    api_key: Option<String>,
    /// The server's Stripe webhook secret, for --url.
    #[arg(long)]
    secret: Option<String>,
}

fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

const SECRET: &str = "whsec_bench_secret";
const DUPLICATE_PERCENT: u64 = 10;

pub fn run(args: &Args) -> BenchResult<Report> {
    crate::alloc::stop_counting();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let figures = runtime.block_on(crate::database::discarding_leftovers(run_async(args)))?;
    let mut failures = Vec::new();
    if figures["duplicates_issued"] != 0 {
        failures.push(format!(
            "{} orders issued twice",
            figures["duplicates_issued"]
        ));
    }
    if figures["orders_paid"] != figures["orders_expected"] {
        failures.push("not every paid order was issued".to_owned());
    }
    Report::new(&figures, failures)
}

struct Order {
    raffle_id: Uuid,
    order_id: Uuid,
    amount: i64,
}

async fn run_async(args: &Args) -> Result<serde_json::Value, String> {
    let (base, api_key, secret, store, server) = match &args.url {
        Some(url) => {
            let database = std::env::var("DATABASE_URL")
                .map_err(|_| "--url needs DATABASE_URL for the server's database".to_owned())?;
            let store = tombola::store::Store::connect(&database, 4)
                .await
                .map_err(|e| e.to_string())?;
            (
                url.trim_end_matches('/').to_owned(),
                args.api_key.clone().unwrap_or_default(),
                args.secret.clone().unwrap_or_default(),
                store,
                None,
            )
        }
        None => {
            let (store, url) = crate::database::fresh(32).await?;
            let settings = Settings {
                listen: "127.0.0.1:0".parse().expect("address"),
                rate_limit_per_key: 1_000_000,
                rate_limit_per_ip: 1_000_000,
                request_timeout: Duration::from_secs(30),
                queue_capacity: 65_536,
                stripe_webhook_secrets: vec![SECRET.to_owned()],
                payment_workers: args.payment_workers,
                ..Settings::default()
            };
            let app = Application::build(&settings, store.clone(), Arc::new(SystemClock))
                .await
                .map_err(|e| e.to_string())?;
            let base = format!("http://127.0.0.1:{}", app.port());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let handle = tokio::spawn(app.run_until_stopped(async move {
                let _ = stopped.await;
            }));
            let key = Keys::create(&store, Role::Admin, None, Some("bench"))
                .await
                .map_err(|e| e.to_string())?;
            (
                base,
                key,
                SECRET.to_owned(),
                store,
                Some((stop, handle, url)),
            )
        }
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()
        .map_err(|e| e.to_string())?;

    let warmup = (u64::from(args.rate) * args.warmup_seconds) as usize;
    let deliveries = warmup + (u64::from(args.rate) * args.seconds) as usize;
    let unique = deliveries * (100 - DUPLICATE_PERCENT as usize) / 100 + 1;
    eprintln!(
        "webhooks bench: setting up {unique} reserved orders over {} raffles",
        args.raffles
    );
    let orders = Arc::new(setup_orders(&client, &base, &api_key, args.raffles, unique).await?);
    // The set-up just wrote a few hundred MB. Sustained runs (`--seconds 60`) still reach the
    // writeback of their own.
    crate::database::checkpoint(&store, "webhooks").await;

    eprintln!(
        "webhooks bench: sending {deliveries} deliveries at {}/s ({DUPLICATE_PERCENT}% duplicates), the first {warmup} to warm up",
        args.rate
    );
    // Every delivery is prepared (and signed) before the clock starts, so the senders only
    // send; a duplicate is an exact copy (same body, same signature) of an earlier one.
    let now = Utc::now().timestamp();
    let mut plans: Vec<(Bytes, HeaderValue, Option<Uuid>)> = Vec::with_capacity(deliveries);
    let mut next_unique = 0;
    for i in 0..deliveries {
        if i % 10 == 9 {
            let (body, header, _) = plans[i - 5].clone();
            plans.push((body, header, None));
        } else {
            let order = &orders[next_unique % orders.len()];
            next_unique += 1;
            let body = delivery_body(order);
            let header = Stripe::sign(&secret, now, body.as_bytes());
            let header = HeaderValue::from_str(&header).map_err(|e| e.to_string())?;
            plans.push((Bytes::from(body), header, Some(order.order_id)));
        }
    }
    let plans = Arc::new(plans);
    let target = Target::parse(&base)?;
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // The load generator's own warm-up: every sender's connection is open before the clock
    // starts (opening 256 at once took the first 100–200 ms of a run, and 1.7% of its
    // deliveries waited for it: the whole p99).
    let mut connections = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        connections.push(target.connect().await?);
    }
    let started = Instant::now();
    let measured_from = started + interval * warmup as u32;
    let probe = CommitProbe::start(&store, measured_from).await?;
    let mut senders = Vec::with_capacity(args.concurrency);
    for connection in connections {
        let (target, plans, next) = (target.clone(), plans.clone(), next.clone());
        senders.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut first_sent = Vec::new();
            let mut failed = 0u64;
            let mut connection = Some(connection);
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((body, header, order_id)) = plans.get(i) else {
                    break;
                };
                // Latency counts from when the delivery was due, not from when a busy
                // sender got to it: an open loop must not hide its own queueing.
                let due = started + interval * i as u32;
                tokio::time::sleep_until(due.into()).await;
                let measured = i >= warmup;
                if let Some(order_id) = order_id {
                    let late = chrono::Duration::from_std(due.elapsed()).unwrap_or_default();
                    first_sent.push((*order_id, Utc::now() - late, measured));
                }
                match target.deliver(&mut connection, body, header).await {
                    Ok(true) if measured => latencies.push(due.elapsed().as_micros() as u64),
                    Ok(true) => {}
                    Ok(false) => failed += 1,
                    Err(error) => {
                        failed += 1;
                        connection = None;
                        eprintln!("webhooks bench: delivery failed: {error}");
                    }
                }
            }
            (latencies, first_sent, failed)
        }));
    }
    let mut latencies = Vec::with_capacity(deliveries);
    // Per order: its first delivery, and whether that one was measured.
    let mut first_sent: HashMap<Uuid, (DateTime<Utc>, bool)> = HashMap::new();
    let mut failed = 0u64;
    for sender in senders {
        let (l, sent, f) = sender.await.map_err(|e| e.to_string())?;
        latencies.extend(l);
        for (order, at, measured) in sent {
            first_sent.entry(order).or_insert((at, measured));
        }
        failed += f;
    }
    let elapsed = measured_from.elapsed();
    let commits = probe.stop().await?;
    let (commit_p50, commit_p99, commit_max) = (
        ms(percentile(&commits, 0.50)),
        ms(percentile(&commits, 0.99)),
        ms(commits.last().copied()),
    );
    eprintln!(
        "webhooks bench: baseline, {} single-row commits meanwhile: p50 {commit_p50:.1} ms, p99 {commit_p99:.1} ms, max {commit_max:.1} ms",
        commits.len(),
    );
    latencies.sort_unstable();
    let acks = latencies.len();
    let ack_ms = |p: f64| ms(percentile(&latencies, p));
    eprintln!(
        "webhooks bench: {acks} acks in {:.1} s ({:.0}/s), p50 {:.1} ms, p99 {:.1} ms, {failed} failed",
        elapsed.as_secs_f64(),
        acks as f64 / elapsed.as_secs_f64(),
        ack_ms(0.50),
        ack_ms(0.99)
    );

    let issuing = args.url.is_some() || args.payment_workers > 0;
    let expected: Vec<Uuid> = if issuing {
        first_sent.keys().copied().collect()
    } else {
        Vec::new()
    };
    eprintln!(
        "webhooks bench: waiting for {} orders to be issued",
        expected.len()
    );
    let issued = wait_for_issuance(&store, &expected).await?;
    let mut lags: Vec<i64> = issued
        .iter()
        .filter_map(|(order, (_, at))| {
            let (sent, measured) = first_sent.get(order)?;
            measured.then(|| (*at - *sent).num_milliseconds().max(0))
        })
        .collect();
    lags.sort_unstable();
    let duplicates_issued = issued.values().filter(|(count, _)| *count > 1).count();

    let postgres = crate::database::settings(&store).await?;
    if let Some((stop, handle, url)) = server {
        let _ = stop.send(());
        let _ = handle.await;
        crate::database::discard(store, &url).await?;
    }
    Ok(json!({
        "bench": "webhooks",
        "deliveries": deliveries - warmup,
        "warmup_deliveries": warmup,
        "offered_rate": args.rate,
        "concurrency": args.concurrency,
        "acks": acks,
        "failed": failed,
        "acks_per_sec": (acks as f64 / elapsed.as_secs_f64()).round(),
        "ack_p50_ms": ack_ms(0.50),
        "ack_p99_ms": ack_ms(0.99),
        "orders_paid": issued.len(),
        "orders_expected": expected.len(),
        "issue_lag_p50_ms": percentile(&lags, 0.50).unwrap_or(0),
        "issue_lag_p99_ms": percentile(&lags, 0.99).unwrap_or(0),
        "duplicates_issued": duplicates_issued,
        "commit_probe_p50_ms": commit_p50,
        "commit_probe_p99_ms": commit_p99,
        "commit_probe_max_ms": commit_max,
        "postgres": postgres,
        "ack_p99_over_commit_p99": ((percentile(&latencies, 0.99).unwrap_or(0) as f64
            / percentile(&commits, 0.99).unwrap_or(1).max(1) as f64) * 10.0).round() / 10.0,
    }))
}

/// The server the deliveries go to. The load generator shares the box with the server and
/// PostgreSQL, so it sends with bare HTTP/1.1 keep-alive connections (one per sender, no
/// pool): reqwest cost about 60 µs of CPU per delivery here, a fifth of the whole budget.
#[derive(Clone)]
struct Target {
    authority: Arc<str>,
    host: HeaderValue,
}

type Connection = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

impl Target {
    fn parse(base: &str) -> Result<Self, String> {
        let authority = base
            .strip_prefix("http://")
            .ok_or("the webhooks bench sends plain http:// only")?
            .trim_end_matches('/');
        Ok(Self {
            authority: authority.into(),
            host: HeaderValue::from_str(authority).map_err(|e| e.to_string())?,
        })
    }

    async fn connect(&self) -> Result<Connection, String> {
        let stream = tokio::net::TcpStream::connect(self.authority.as_ref())
            .await
            .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        Ok(sender)
    }

    /// Sends one delivery on the sender's connection (opened again after a failure); answers
    /// whether it was acknowledged with a 2xx.
    async fn deliver(
        &self,
        connection: &mut Option<Connection>,
        body: &Bytes,
        signature: &HeaderValue,
    ) -> Result<bool, String> {
        if connection.is_none() {
            *connection = Some(self.connect().await?);
        }
        let sender = connection.as_mut().expect("connected above");
        sender.ready().await.map_err(|e| e.to_string())?;
        let request = hyper::Request::post("/v1/webhooks/stripe")
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("stripe-signature", signature.clone())
            .body(Full::new(body.clone()))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let acknowledged = response.status().is_success();
        // Read the answer to the end, so the connection can carry the next request.
        response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(acknowledged)
    }
}

/// Microseconds in, milliseconds (to two decimals) out.
fn ms(micros: Option<u64>) -> f64 {
    (micros.unwrap_or(0) as f64 / 10.0).round() / 100.0
}

/// The baseline: while deliveries are sent, one durable single-row commit every 10 ms on a
/// connection of its own. No acknowledgement can be faster than the database's own commit,
/// and on a shared disk that commit has stalls of its own (fdatasync was seen taking 100 ms).
struct CommitProbe {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<Vec<u64>, String>>,
}

impl CommitProbe {
    /// Commits from `from` on (the measured window) until stopped.
    async fn start(store: &tombola::store::Store, from: Instant) -> Result<Self, String> {
        let mut connection = store.pool().acquire().await.map_err(|e| e.to_string())?;
        sqlx::query("CREATE TABLE IF NOT EXISTS tombola_bench_commit_probe (at timestamptz)")
            .execute(&mut *connection)
            .await
            .map_err(|e| e.to_string())?;
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut tick = tokio::time::interval_at(from.into(), Duration::from_millis(10));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut stopped => break,
                }
                let t0 = Instant::now();
                sqlx::query("INSERT INTO tombola_bench_commit_probe VALUES (now())")
                    .execute(&mut *connection)
                    .await
                    .map_err(|e| e.to_string())?;
                latencies.push(t0.elapsed().as_micros() as u64);
            }
            sqlx::query("DROP TABLE tombola_bench_commit_probe")
                .execute(&mut *connection)
                .await
                .map_err(|e| e.to_string())?;
            latencies.sort_unstable();
            Ok(latencies)
        });
        Ok(Self { stop, task })
    }

    /// Sorted commit latencies, in microseconds.
    async fn stop(self) -> Result<Vec<u64>, String> {
        let _ = self.stop.send(());
        self.task.await.map_err(|e| e.to_string())?
    }
}

/// The value below which a fraction `p` of `sorted` lies.
fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    let index = ((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(index).copied()
}

fn delivery_body(order: &Order) -> String {
    let payment_id = format!("pi_{}", order.order_id.simple());
    json!({
        "id": format!("evt_{}", Uuid::new_v4().simple()),
        "object": "event",
        "api_version": "2024-06-20",
        "created": Utc::now().timestamp(),
        "livemode": false,
        "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null},
        "type": "payment_intent.succeeded",
        "data": {"object": {
            "id": payment_id,
            "object": "payment_intent",
            "amount": order.amount,
            "amount_received": order.amount,
            "currency": "usd",
            "status": "succeeded",
            "payment_method_types": ["card"],
            "latest_charge": format!("ch_{}", order.order_id.simple()),
            "metadata": {"raffle_id": order.raffle_id.to_string(), "order_id": order.order_id.to_string()},
        }},
    })
    .to_string()
}

async fn setup_orders(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    raffles: usize,
    count: usize,
) -> Result<Vec<Order>, String> {
    let mut raffle_ids = Vec::new();
    for i in 0..raffles {
        let body = json!({
            "title": format!("Bench raffle {i}"),
            "ticket_count": 1_000_000,
            "price_minor": 500,
            "currency": "USD",
            "hold_minutes": 60,
            "prizes": [{"name": "Prize"}],
            "draw_commitment": "19b25856e1c150ca834cffc8b59b23adbd0ec0389e58eb22b3b64768098d002b",
            "organizer_id": "bench",
        });
        let raffle: serde_json::Value =
            post(client, &format!("{base}/v1/raffles"), key, &body).await?;
        let id = raffle["id"].as_str().ok_or("no raffle id")?.to_owned();
        post(
            client,
            &format!("{base}/v1/raffles/{id}/open"),
            key,
            &json!({}),
        )
        .await?;
        raffle_ids.push(Uuid::parse_str(&id).map_err(|e| e.to_string())?);
    }
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let orders = Arc::new(Mutex::new(Vec::with_capacity(count)));
    let mut workers = Vec::new();
    for _ in 0..64 {
        let (client, base, key, next, orders, raffle_ids) = (
            client.clone(),
            base.to_owned(),
            key.to_owned(),
            next.clone(),
            orders.clone(),
            raffle_ids.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count {
                    return Ok::<(), String>(());
                }
                let raffle_id = raffle_ids[i % raffle_ids.len()];
                let body = json!({"buyer": {"name": "Bench", "email": format!("b{i}@example.com")}, "quantity": 1});
                let order: serde_json::Value = post(&client, &format!("{base}/v1/raffles/{raffle_id}/reservations"), &key, &body).await?;
                let order_id = Uuid::parse_str(order["order_id"].as_str().ok_or("no order id")?).map_err(|e| e.to_string())?;
                let amount = order["amount"].as_i64().ok_or("no amount")?;
                orders.lock().await.push(Order { raffle_id, order_id, amount });
            }
        }));
    }
    for worker in workers {
        worker.await.map_err(|e| e.to_string())??;
    }
    Ok(Arc::try_unwrap(orders)
        .map_err(|_| "orders still shared")?
        .into_inner())
}

/// Per order: how many `TicketsIssued` events, and when the first was recorded. Waits (up to
/// two minutes) until every expected order has one.
async fn wait_for_issuance(
    store: &tombola::store::Store,
    expected: &[Uuid],
) -> Result<HashMap<Uuid, (i64, DateTime<Utc>)>, String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let rows: Vec<(Uuid, i64, String)> = sqlx::query_as(
            "SELECT order_id, count(*), min(metadata->>'recorded_at') FROM events \
             WHERE event_type = 'TicketsIssued' AND order_id = ANY($1) GROUP BY order_id",
        )
        .bind(expected)
        .fetch_all(store.pool())
        .await
        .map_err(|e| e.to_string())?;
        if rows.len() >= expected.len() || Instant::now() > deadline {
            return rows
                .into_iter()
                .map(|(order, count, at)| {
                    let at = DateTime::parse_from_rfc3339(&at)
                        .map_err(|e| e.to_string())?
                        .with_timezone(&Utc);
                    Ok((order, (count, at)))
                })
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
