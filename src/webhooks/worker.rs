//! The delivery worker. It claims due deliveries with a lease (`FOR UPDATE SKIP LOCKED`, so
//! nodes share the work and never both hold one), sends each on its own task, and settles
//! it: success, a retry on the schedule, or the dead letter after the last attempt.
//!
//! What a claim skips: deliveries leased by someone else, endpoints that are disabled or
//! whose circuit is open, endpoints already at their in-flight limit (one probe while
//! half-open), and a delivery while an earlier message for the same (endpoint, order) is
//! still pending — so one order's messages arrive in order. A crash leaves a lease that
//! expires; the delivery is then sent again with the same `webhook-id`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tombola_domain::backoff::Backoff;
use tracing::Instrument;
use uuid::Uuid;

use super::journal::{self, kind, Entry};
use super::{signature, targets, Config};
use crate::clock::Clock;

/// Bytes of a response body kept with the attempt.
const EXCERPT: usize = 512;

/// One claimed delivery, with what sending it needs.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Claimed {
    endpoint_id: Uuid,
    msg_id: String,
    raffle_id: Uuid,
    event_type: String,
    attempts: i32,
    url: String,
    secret: String,
    previous_secret: Option<String>,
    previous_secret_expires_at: Option<DateTime<Utc>>,
    rate_limit_per_sec: Option<i32>,
    payload: String,
    order_id: Option<Uuid>,
    recorded_at: DateTime<Utc>,
}

/// How one attempt ended.
#[derive(Debug)]
struct Outcome {
    status: Option<u16>,
    error: Option<String>,
    excerpt: String,
    latency: Duration,
    retry_after: Option<Duration>,
}

impl Outcome {
    fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// Successes settled together: one transaction (one commit, one lock of each delivery
/// stream) for every success that ended while the previous batch was being written.
const MAX_SETTLE_BATCH: usize = 256;

/// Claims closer together than this wait, so that one claim serves the attempts that
/// ended meanwhile instead of one claim per finished attempt.
const MIN_CLAIM_GAP: Duration = Duration::from_millis(5);

/// A success waiting for the settler, and who waits for its settlement.
struct Success {
    delivery: Claimed,
    status: u16,
    latency_ms: i64,
    settled: oneshot::Sender<Result<(), String>>,
}

#[derive(Clone)]
pub struct Worker {
    pool: PgPool,
    config: Arc<Config>,
    clock: Arc<dyn Clock>,
    client: reqwest::Client,
    node: Uuid,
    wake: Arc<Notify>,
    /// The settler's queue, while [`Worker::run`] runs.
    successes: Option<mpsc::Sender<Success>>,
}

impl Worker {
    pub fn new(
        pool: PgPool,
        config: Arc<Config>,
        clock: Arc<dyn Clock>,
        wake: Arc<Notify>,
    ) -> Self {
        let mut client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("Tombola-Webhooks/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(30));
        if !config.allow_private_targets {
            client = client.dns_resolver(Arc::new(targets::PublicOnly));
        }
        Self {
            pool,
            client: client.build().expect("the delivery client builds"),
            config,
            clock,
            node: Uuid::new_v4(),
            wake,
            successes: None,
        }
    }

    /// Claims and sends until `stop`. Attempts in flight then are dropped unsettled, like
    /// a crash: their leases expire and they are sent again, with the same id.
    pub async fn run(self, stop: CancellationToken) {
        let (successes, queue) = mpsc::channel(MAX_SETTLE_BATCH * 4);
        let settler = tokio::spawn(self.clone().settle_successes(queue));
        let worker = Worker {
            successes: Some(successes),
            ..self
        };
        let mut in_flight = JoinSet::new();
        let mut failures = 0u32;
        let mut last_claim: Option<Instant> = None;
        loop {
            let free = worker.config.concurrency.saturating_sub(in_flight.len());
            if free > 0 {
                if let Some(gap) = last_claim.and_then(|at| MIN_CLAIM_GAP.checked_sub(at.elapsed()))
                {
                    tokio::time::sleep(gap).await;
                }
                while in_flight.try_join_next().is_some() {}
                let free = worker.config.concurrency.saturating_sub(in_flight.len());
                last_claim = Some(Instant::now());
                match worker.claim(free).await {
                    Ok(claimed) => {
                        failures = 0;
                        for delivery in claimed {
                            let worker = worker.clone();
                            in_flight.spawn(async move { worker.attempt(delivery).await });
                        }
                    }
                    Err(error) => {
                        failures += 1;
                        tracing::warn!(%error, "webhook claim failed");
                    }
                }
            }
            let nap = if failures > 0 {
                Backoff::new(Duration::from_millis(100), Duration::from_secs(10)).delay(failures)
            } else {
                worker.config.poll_interval
            };
            tokio::select! {
                () = stop.cancelled() => break,
                () = worker.wake.notified() => {}
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                () = tokio::time::sleep(nap) => {}
            }
        }
        in_flight.abort_all();
        settler.abort();
    }

    /// Settles successes in batches: whatever arrived while the last batch was written.
    async fn settle_successes(self, mut queue: mpsc::Receiver<Success>) {
        while let Some(first) = queue.recv().await {
            let mut batch = vec![first];
            while batch.len() < MAX_SETTLE_BATCH {
                match queue.try_recv() {
                    Ok(success) => batch.push(success),
                    Err(_) => break,
                }
            }
            let settled = self
                .settle_batch(&batch)
                .await
                .map_err(|error| error.to_string());
            for success in batch {
                let _ = success.settled.send(settled.clone());
            }
        }
    }

    /// Every delivery of `batch` succeeded: their rows, their endpoints' health and their
    /// events on the delivery streams, in one transaction.
    async fn settle_batch(&self, batch: &[Success]) -> Result<(), sqlx::Error> {
        let now = self.clock.now();
        let endpoints: Vec<Uuid> = batch.iter().map(|s| s.delivery.endpoint_id).collect();
        let msg_ids: Vec<&str> = batch.iter().map(|s| s.delivery.msg_id.as_str()).collect();
        let statuses: Vec<i32> = batch.iter().map(|s| i32::from(s.status)).collect();
        let mut entries = Vec::with_capacity(batch.len() * 2);
        for success in batch {
            let d = &success.delivery;
            entries.push((d.raffle_id, d.order_id, attempted(d)));
            entries.push((
                d.raffle_id,
                d.order_id,
                Entry {
                    kind: kind::SUCCEEDED,
                    payload: json!({
                        "msg_id": d.msg_id,
                        "endpoint_id": d.endpoint_id,
                        "event_type": d.event_type,
                        "attempt": d.attempts,
                        "status": success.status,
                        "latency_ms": success.latency_ms,
                        "delivery_lag_ms": (now - d.recorded_at).num_milliseconds(),
                    }),
                },
            ));
        }
        let mut tx = tombola_projections::begin(&self.pool).await?;
        sqlx::query(
            "UPDATE webhook_deliveries d SET status = 'succeeded', lease_until = NULL, \
               last_status = u.status, last_error = NULL, updated_at = $4 \
             FROM UNNEST($1::uuid[], $2::text[], $3::int[]) AS u(endpoint_id, msg_id, status) \
             WHERE d.endpoint_id = u.endpoint_id AND d.msg_id = u.msg_id",
        )
        .bind(&endpoints)
        .bind(&msg_ids)
        .bind(&statuses)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE webhook_endpoints SET consecutive_failures = 0, failing_since = NULL, \
               circuit_open_until = NULL, circuit_opened = 0 \
             WHERE endpoint_id = ANY($1) \
               AND (consecutive_failures > 0 OR circuit_open_until IS NOT NULL)",
        )
        .bind(&endpoints)
        .execute(&mut *tx)
        .await?;
        journal::append_many(&mut tx, "system", now, &entries).await?;
        tx.commit().await
    }

    /// Leases up to `limit` due deliveries to this node.
    async fn claim(&self, limit: usize) -> Result<Vec<Claimed>, sqlx::Error> {
        let now = self.clock.now();
        let until = now + chrono::Duration::from_std(self.config.lease).unwrap_or_default();
        // Per endpoint, in random order (so a backlog at one never hides another's due
        // deliveries): its room (in-flight limit, one while half-open, minus its live
        // leases), then its oldest due deliveries that head their (endpoint, order) chain,
        // locked as they are found. Rows are then updated by `ctid` (locked, so stable):
        // every lookup names its index by its equalities, so plans stay right on tables
        // too new to have statistics.
        sqlx::query_as(
            "WITH room AS ( \
               SELECT e.endpoint_id, \
                 (CASE WHEN e.circuit_open_until IS NOT NULL THEN 1 ELSE $4 END) \
                   - (SELECT count(*) FROM webhook_deliveries q WHERE q.endpoint_id = e.endpoint_id \
                        AND q.lease_until IS NOT NULL AND q.lease_until > $1) AS room \
               FROM webhook_endpoints e \
               WHERE e.enabled AND (e.circuit_open_until IS NULL OR e.circuit_open_until <= $1) \
                 AND (e.rate_tat IS NULL OR e.rate_tat <= $1) \
               ORDER BY random()), \
             picked AS ( \
               SELECT c.row_id FROM room r, LATERAL ( \
                 SELECT d.ctid AS row_id FROM webhook_deliveries d \
                 WHERE d.endpoint_id = r.endpoint_id AND d.status = 'pending' \
                   AND d.next_attempt_at <= $1 AND (d.lease_until IS NULL OR d.lease_until <= $1) \
                   AND d.sequence = (SELECT min(p.sequence) FROM webhook_deliveries p \
                     WHERE p.endpoint_id = d.endpoint_id AND p.raffle_id = d.raffle_id \
                       AND p.order_key = d.order_key AND p.status = 'pending') \
                 ORDER BY d.next_attempt_at LIMIT greatest(r.room, 0) \
                 FOR UPDATE OF d SKIP LOCKED) c \
               LIMIT $5) \
             UPDATE webhook_deliveries d SET lease_until = $2, leased_by = $3, \
               attempts = d.attempts + 1, updated_at = $1 \
             FROM picked, webhook_endpoints e, webhook_messages m \
             WHERE d.ctid = picked.row_id \
               AND e.endpoint_id = d.endpoint_id AND m.msg_id = d.msg_id \
             RETURNING d.endpoint_id, d.msg_id, d.raffle_id, d.event_type, d.attempts, e.url, \
               e.secret, e.previous_secret, e.previous_secret_expires_at, e.rate_limit_per_sec, \
               m.payload, m.order_id, m.recorded_at",
        )
        .bind(now)
        .bind(until)
        .bind(self.node)
        .bind(self.config.per_endpoint as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
    }

    /// One attempt, start to settlement. Errors of our own (the database) leave the lease to
    /// expire: the delivery is tried again then.
    async fn attempt(&self, delivery: Claimed) {
        let span = tracing::info_span!(
            "webhook.attempt",
            endpoint_id = %delivery.endpoint_id,
            msg_id = %delivery.msg_id,
            raffle_id = %delivery.raffle_id,
            attempt = delivery.attempts,
            status = tracing::field::Empty,
        );
        let result = async {
            if !self.take_rate_slot(&delivery).await? {
                return Ok(());
            }
            let outcome = self.send(&delivery).await;
            if let Some(status) = outcome.status {
                tracing::Span::current().record("status", status);
            }
            {
                let labels = [
                    (
                        "outcome",
                        if outcome.succeeded() {
                            "succeeded"
                        } else {
                            "failed"
                        }
                        .to_owned(),
                    ),
                    ("endpoint_id", delivery.endpoint_id.to_string()),
                ];
                metrics::counter!("tombola_webhook_attempts_total", &labels).increment(1);
            }
            // A settlement lost to a passing database error is retried a few times: left
            // to the lease, the message would wait a minute and go out again.
            let mut tries = 0;
            loop {
                match self.settle(&delivery, &outcome).await {
                    Err(error) if tries < 3 => {
                        tries += 1;
                        tracing::debug!(%error, tries, "webhook settlement failed; retrying");
                        let backoff =
                            Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
                        tokio::time::sleep(backoff.delay(tries)).await;
                    }
                    settled => break settled,
                }
            }
        }
        .instrument(span)
        .await;
        if let Err(error) = result {
            tracing::warn!(%error, msg_id = %delivery.msg_id, "webhook attempt not settled; its lease will expire");
        }
    }

    /// The endpoint's rate limit, shared by every node (GCRA on its row): true if this
    /// attempt may go now; otherwise the delivery is handed back for when it may.
    async fn take_rate_slot(&self, delivery: &Claimed) -> Result<bool, sqlx::Error> {
        let Some(rate) = delivery.rate_limit_per_sec else {
            return Ok(true);
        };
        let now = self.clock.now();
        let interval_us = 1_000_000 / i64::from(rate.max(1));
        let taken: Option<DateTime<Utc>> = sqlx::query_scalar(
            "UPDATE webhook_endpoints \
             SET rate_tat = greatest(coalesce(rate_tat, $2), $2) + $3 * interval '1 microsecond' \
             WHERE endpoint_id = $1 AND coalesce(rate_tat, $2) <= $2 RETURNING rate_tat",
        )
        .bind(delivery.endpoint_id)
        .bind(now)
        .bind(interval_us as f64)
        .fetch_optional(&self.pool)
        .await?;
        if taken.is_some() {
            return Ok(true);
        }
        let retry_at: Option<DateTime<Utc>> = sqlx::query_scalar(
            "UPDATE webhook_deliveries d SET lease_until = NULL, attempts = d.attempts - 1, \
               next_attempt_at = greatest(d.next_attempt_at, e.rate_tat) \
             FROM webhook_endpoints e \
             WHERE d.endpoint_id = $1 AND d.msg_id = $2 AND e.endpoint_id = d.endpoint_id \
             RETURNING d.next_attempt_at",
        )
        .bind(delivery.endpoint_id)
        .bind(&delivery.msg_id)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(at) = retry_at {
            // Look again when the slot comes rather than at the next poll.
            let wake = self.wake.clone();
            let clock = self.clock.clone();
            tokio::spawn(async move {
                clock.sleep_until(at).await;
                wake.notify_one();
            });
        }
        Ok(false)
    }

    async fn send(&self, delivery: &Claimed) -> Outcome {
        let started = Instant::now();
        let failed = |error: String| Outcome {
            status: None,
            error: Some(error),
            excerpt: String::new(),
            latency: started.elapsed(),
            retry_after: None,
        };
        let url = match reqwest::Url::parse(&delivery.url) {
            Ok(url) => url,
            Err(e) => return failed(format!("invalid URL: {e}")),
        };
        if !self.config.allow_private_targets {
            if let Some(ip) = targets::literal_ip(&url) {
                if !targets::is_public(ip) {
                    return failed(format!("refused: {ip} is not a public address"));
                }
            }
        }
        let now = self.clock.now();
        let timestamp = now.timestamp();
        let mut secrets = vec![delivery.secret.as_str()];
        if let (Some(previous), Some(until)) = (
            &delivery.previous_secret,
            delivery.previous_secret_expires_at,
        ) {
            if until > now {
                secrets.push(previous);
            }
        }
        let signature = signature::header(&secrets, &delivery.msg_id, timestamp, &delivery.payload);
        let mut headers = axum::http::HeaderMap::new();
        crate::telemetry::inject_traceparent(&mut headers);
        let request = self
            .client
            .post(url)
            .headers(headers)
            .header("content-type", "application/json")
            .header("webhook-id", &delivery.msg_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(delivery.payload.clone());
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => return failed(describe(&e)),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let mut excerpt = Vec::new();
        let mut response = response;
        let mut error = None;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    excerpt.extend_from_slice(&chunk[..chunk.len().min(EXCERPT - excerpt.len())]);
                    if excerpt.len() >= EXCERPT {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    error = Some(describe(&e));
                    break;
                }
            }
        }
        Outcome {
            status: Some(status),
            error,
            excerpt: String::from_utf8_lossy(&excerpt).into_owned(),
            latency: started.elapsed(),
            retry_after,
        }
    }

    /// A success goes to the settler's next batch; the answer is that batch's.
    async fn settle_success(
        &self,
        delivery: &Claimed,
        outcome: &Outcome,
        latency_ms: i64,
    ) -> Result<(), sqlx::Error> {
        // Attempts run only inside `Worker::run`, which starts the settler.
        let stopped = || sqlx::Error::WorkerCrashed;
        let queue = self.successes.as_ref().ok_or_else(stopped)?;
        let (settled, answer) = oneshot::channel();
        let success = Success {
            delivery: delivery.clone(),
            status: outcome.status.unwrap_or_default(),
            latency_ms,
            settled,
        };
        queue.send(success).await.map_err(|_| stopped())?;
        answer
            .await
            .map_err(|_| stopped())?
            .map_err(sqlx::Error::Protocol)
    }

    /// Records the outcome: the delivery's state, the endpoint's health (circuit, the
    /// five-day rule, 410), and the events on the delivery stream, in one transaction.
    async fn settle(&self, delivery: &Claimed, outcome: &Outcome) -> Result<(), sqlx::Error> {
        let now = self.clock.now();
        let config = &self.config;
        let latency_ms = outcome.latency.as_millis() as i64;
        if outcome.succeeded() {
            return self.settle_success(delivery, outcome, latency_ms).await;
        }
        let base = json!({
            "msg_id": delivery.msg_id,
            "endpoint_id": delivery.endpoint_id,
            "event_type": delivery.event_type,
            "attempt": delivery.attempts,
            "status": outcome.status,
            "latency_ms": latency_ms,
        });
        let attempted = attempted(delivery);
        let mut tx = self.pool.begin().await?;
        let mut entries = vec![attempted];
        {
            let error = outcome
                .error
                .clone()
                .unwrap_or_else(|| format!("HTTP {}", outcome.status.unwrap_or(0)));
            let retry = (delivery.attempts as usize)
                .checked_sub(1)
                .and_then(|i| config.retry_schedule.get(i));
            let next_at = retry.map(|nominal| {
                let jittered = if nominal.is_zero() {
                    *nominal
                } else {
                    nominal.mul_f64(rand::Rng::random_range(&mut rand::rng(), 0.5..1.5))
                };
                // Retry-After on 429/503 pushes the retry later, never earlier, within bounds.
                let asked = outcome
                    .retry_after
                    .filter(|_| matches!(outcome.status, Some(429 | 503)))
                    .map(|d| d.min(config.retry_after_max))
                    .unwrap_or_default();
                now + chrono::Duration::from_std(jittered.max(asked)).unwrap_or_default()
            });
            sqlx::query(
                "UPDATE webhook_deliveries SET status = CASE WHEN $3::timestamptz IS NULL THEN 'dead' ELSE 'pending' END, \
                   next_attempt_at = coalesce($3, next_attempt_at), lease_until = NULL, \
                   last_status = $4, last_error = $5, updated_at = $6 \
                 WHERE endpoint_id = $1 AND msg_id = $2 AND status = 'pending'",
            )
            .bind(delivery.endpoint_id)
            .bind(&delivery.msg_id)
            .bind(next_at)
            .bind(outcome.status.map(i32::from))
            .bind(&error)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let health: Option<(i32, DateTime<Utc>, i32, bool)> = sqlx::query_as(
                "UPDATE webhook_endpoints SET consecutive_failures = consecutive_failures + 1, \
                   failing_since = coalesce(failing_since, $2) \
                 WHERE endpoint_id = $1 \
                 RETURNING consecutive_failures, failing_since, circuit_opened, enabled",
            )
            .bind(delivery.endpoint_id)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            let mut payload = base.clone();
            payload["error"] = json!(error);
            payload["response_excerpt"] = json!(outcome.excerpt);
            payload["next_attempt_at"] = json!(next_at);
            entries.push(Entry {
                kind: kind::FAILED,
                payload,
            });
            if next_at.is_none() {
                entries.push(Entry {
                    kind: kind::DEAD_LETTERED,
                    payload: base.clone(),
                });
            }
            if let Some((failures, since, opened, enabled)) = health {
                let disable = if outcome.status == Some(410) {
                    Some("gone")
                } else if (now - since).to_std().unwrap_or_default() >= config.disable_after {
                    Some("failing")
                } else {
                    None
                };
                if let (Some(reason), true) = (disable, enabled) {
                    sqlx::query(
                        "UPDATE webhook_endpoints SET enabled = false, disabled_reason = $2, updated_at = $3 \
                         WHERE endpoint_id = $1",
                    )
                    .bind(delivery.endpoint_id)
                    .bind(reason)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    tracing::warn!(endpoint_id = %delivery.endpoint_id, reason, "webhook endpoint disabled");
                    entries.push(Entry {
                        kind: kind::ENDPOINT_DISABLED,
                        payload: json!({
                            "msg_id": delivery.msg_id,
                            "endpoint_id": delivery.endpoint_id,
                            "reason": reason,
                            "failing_since": since,
                        }),
                    });
                } else if failures >= config.circuit_threshold {
                    let open =
                        Backoff::new(config.circuit_base, config.circuit_max).delay(opened as u32);
                    sqlx::query(
                        "UPDATE webhook_endpoints SET circuit_open_until = $2, circuit_opened = circuit_opened + 1 \
                         WHERE endpoint_id = $1",
                    )
                    .bind(delivery.endpoint_id)
                    .bind(now + chrono::Duration::from_std(open).unwrap_or_default())
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        journal::append(
            &mut tx,
            delivery.raffle_id,
            delivery.order_id,
            "system",
            now,
            &entries,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// The event that records an attempt; written with its outcome, once it ended (an attempt
/// cut off by a crash shows in the delivery's `attempts` count, not as an event).
fn attempted(delivery: &Claimed) -> Entry {
    Entry {
        kind: kind::ATTEMPTED,
        payload: json!({
            "msg_id": delivery.msg_id,
            "endpoint_id": delivery.endpoint_id,
            "event_type": delivery.event_type,
            "attempt": delivery.attempts,
        }),
    }
}

/// A transport error, without the URL (an organizer's URL may carry a token).
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else if error.is_redirect() {
        "redirect"
    } else if error.is_body() || error.is_decode() {
        "reading the response failed"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(error);
    let mut detail = String::new();
    while let Some(inner) = source {
        detail = inner.to_string();
        source = inner.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {detail}")
    }
}
