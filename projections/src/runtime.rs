//! The projection runtime: follows every raffle's stream for every projection.
//!
//! A (projection, raffle) advances in transactions on the read database. Each one takes a
//! transaction-scoped advisory lock on the pair (so one node at a time applies it; a node
//! that dies loses its connection and with it the lock, mid-transaction or not), reads the
//! checkpoint, reads the next events from the log, applies them and moves the checkpoint,
//! and commits. Streams are gapless (an append conflicts on the stream's next sequence), so
//! "the events after my checkpoint, in order" is the whole of what to do: no global
//! position, no gaps to wait for.
//!
//! Wake-ups (in-process, from the engine; NOTIFY, from other nodes) name raffles to look at
//! now; a poll compares every stream's head with the checkpoints, so a lost wake-up only
//! delays. A failure stops that (projection, raffle) alone: it is recorded with the failing
//! event's sequence and retried with backoff, while every other pair keeps going.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use sqlx::PgPool;
use tokio::sync::{watch, Notify};
use tombola_domain::backoff::Backoff;
use uuid::Uuid;

use crate::envelope::{decode, EventSource, RawEvent};
use crate::projection::{ApplyError, Batch, Projection, Slot, Tables};
use crate::timings::Phase;

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Most events applied in one transaction.
    pub batch_size: usize,
    /// How often every stream is compared with the checkpoints, whatever the wake-ups.
    pub poll_interval: Duration,
    /// Raffles caught up at once.
    pub concurrency: usize,
    /// First retry delay after a failure; doubles per attempt up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Live batches: apply each projection in a transaction of its own, all at once on
    /// separate connections, from one read and decode of the log, instead of all of them in
    /// one transaction one after the other (decision 0029: an experiment, off by default).
    pub parallel: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            batch_size: 1_000,
            poll_interval: Duration::from_secs(1),
            concurrency: 4,
            retry_base: Duration::from_millis(200),
            retry_max: Duration::from_secs(60),
            parallel: false,
        }
    }
}

/// Drives the projections. Clone the [`RuntimeHandle`] to wake it and ask where it is.
pub struct Runtime {
    inner: Arc<Inner>,
}

#[derive(Clone)]
pub struct RuntimeHandle {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) source: EventSource,
    pub(crate) read: PgPool,
    pub(crate) projections: Vec<Arc<dyn Projection>>,
    config: RuntimeConfig,
    dirty: Mutex<HashSet<Uuid>>,
    wake: Notify,
    /// Bumped after every committed batch: readers waiting for a position re-check.
    progress: watch::Sender<u64>,
    retries: Mutex<HashMap<(&'static str, Uuid), Retry>>,
    /// Projections whose live tables were built by another version: they are rebuilt, and
    /// their live tables wait, frozen, for the swap.
    stale: Mutex<HashSet<&'static str>>,
    /// Events applied to shadow tables (a rebuild's progress).
    pub(crate) rebuilt: std::sync::atomic::AtomicU64,
    /// Where rebuilds spent their time.
    pub(crate) clock: crate::timings::Clock,
    /// Where the live loop's joint batches spent their time (decision 0029: whether the live
    /// lag is a throughput or a latency problem).
    pub(crate) live_clock: crate::timings::Clock,
}

#[derive(Debug, Clone, Copy)]
struct Retry {
    attempts: u32,
    not_before: Instant,
}

/// How far one catch-up got.
pub(crate) enum Outcome {
    CaughtUp,
    /// Another node holds the pair right now.
    Busy,
}

/// How one projection's share of a parallel batch ended.
enum Alone {
    Applied,
    /// Its checkpoint was already past the batch.
    Skipped,
    /// Another node holds the pair (or its checkpoint did not meet the batch).
    Busy,
    /// `apply` failed: rolled back.
    Failed,
}

pub(crate) struct Failure {
    pub(crate) sequence: u64,
    pub(crate) error: String,
}

impl Runtime {
    /// `source` reads the log (the write database); `read` holds the read models and their
    /// checkpoints (the same database or another one).
    pub fn new(
        source: EventSource,
        read: PgPool,
        projections: Vec<Arc<dyn Projection>>,
        config: RuntimeConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                source,
                read,
                projections,
                config,
                dirty: Mutex::new(HashSet::new()),
                wake: Notify::new(),
                progress: watch::channel(0).0,
                retries: Mutex::new(HashMap::new()),
                stale: Mutex::new(HashSet::new()),
                rebuilt: std::sync::atomic::AtomicU64::new(0),
                clock: crate::timings::Clock::default(),
                live_clock: crate::timings::Clock::default(),
            }),
        }
    }

    pub fn handle(&self) -> RuntimeHandle {
        RuntimeHandle {
            inner: self.inner.clone(),
        }
    }

    /// Runs until `shutdown` resolves. A batch in flight then is rolled back (its
    /// transaction is dropped), and done again by whoever runs next.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let listener = tokio::spawn(listen(self.handle()));
        tokio::pin!(shutdown);
        let mut next_poll = Instant::now();
        loop {
            let raffles = if Instant::now() >= next_poll {
                next_poll = Instant::now() + self.inner.config.poll_interval;
                match self.inner.behind().await {
                    Ok(mut behind) => {
                        behind.extend(self.inner.take_dirty());
                        behind
                    }
                    Err(error) => {
                        tracing::warn!(%error, "projection poll failed");
                        self.inner.take_dirty()
                    }
                }
            } else {
                self.inner.take_dirty()
            };
            let inner = &self.inner;
            let work = futures::stream::iter(raffles)
                .for_each_concurrent(inner.config.concurrency.max(1), |raffle_id| async move {
                    inner.catch_up_raffle(raffle_id).await
                });
            tokio::select! {
                () = work => {}
                () = &mut shutdown => break,
            }
            let wait = next_poll.saturating_duration_since(Instant::now());
            tokio::select! {
                () = self.inner.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
                () = &mut shutdown => break,
            }
        }
        listener.abort();
    }
}

/// Other nodes' commits, announced as `raffle:sequence` on the events channel.
async fn listen(handle: RuntimeHandle) {
    let mut attempt = 0;
    loop {
        if let Ok(mut listener) =
            sqlx::postgres::PgListener::connect_with(handle.inner.source.pool()).await
        {
            if listener.listen(crate::EVENTS_CHANNEL).await.is_ok() {
                attempt = 0;
                // A reconnect may have missed notices: look at everything.
                handle.inner.wake.notify_one();
                while let Ok(notice) = listener.recv().await {
                    if let Some(Ok(raffle_id)) =
                        notice.payload().split_once(':').map(|(r, _)| r.parse())
                    {
                        handle.wake(raffle_id);
                    }
                }
            }
        }
        attempt += 1;
        let delay =
            Backoff::new(Duration::from_millis(100), Duration::from_secs(30)).delay(attempt);
        tokio::time::sleep(delay).await;
    }
}

impl RuntimeHandle {
    /// A raffle's stream grew: look at it soon.
    pub fn wake(&self, raffle_id: Uuid) {
        self.inner
            .dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(raffle_id);
        self.inner.wake.notify_one();
    }

    /// Changes after every committed batch: for subscribers that act on what a batch
    /// wrote (the webhook worker), which must not look before the commit.
    pub fn progress(&self) -> watch::Receiver<u64> {
        self.inner.progress.subscribe()
    }

    pub fn projections(&self) -> &[Arc<dyn Projection>] {
        &self.inner.projections
    }

    pub fn read_pool(&self) -> &PgPool {
        &self.inner.read
    }

    pub fn source(&self) -> &EventSource {
        &self.inner.source
    }

    /// The live checkpoint of (projection, raffle): the last sequence its tables reflect.
    pub async fn position(&self, projection: &str, raffle_id: Uuid) -> Result<u64, sqlx::Error> {
        checkpoint(&self.inner.read, projection, Slot::Live, raffle_id).await
    }

    /// Waits until every one of `projections` has applied `raffle_id`'s stream up to
    /// `sequence`, at most `timeout`. False if it had not by then.
    pub async fn wait_for(
        &self,
        projections: &[&str],
        raffle_id: Uuid,
        sequence: u64,
        timeout: Duration,
    ) -> Result<bool, sqlx::Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut progress = self.inner.progress.subscribe();
        let mut woken = false;
        loop {
            progress.mark_unchanged();
            let mut reached = true;
            for projection in projections {
                if self.position(projection, raffle_id).await? < sequence {
                    reached = false;
                    break;
                }
            }
            if reached {
                return Ok(true);
            }
            if !woken {
                // The commit's wake-up may not have arrived yet (another node's NOTIFY).
                self.wake(raffle_id);
                woken = true;
            }
            // Progress on this node wakes us at once; another node's only shows on re-reading,
            // hence the bounded sleep.
            let nap = tokio::time::Instant::now() + Duration::from_millis(50);
            tokio::select! {
                _ = progress.changed() => {}
                () = tokio::time::sleep_until(nap.min(deadline)) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
        }
    }

    /// Where the live loop's joint batches spent their time, phase by phase, and how many
    /// batches and events they committed (`fill`, `index` and `swap` stay empty).
    pub fn live_timings(&self) -> crate::RebuildTimings {
        self.inner.live_clock.snapshot()
    }

    /// Catches one (projection, raffle) up now, outside the loop: for tests and tools.
    /// While someone else holds the pair (another node, or a dropped transaction whose
    /// rollback the pool has not sent yet) it waits, up to 10 s: "done" must mean caught up.
    pub async fn catch_up(&self, projection: &str, raffle_id: Uuid) -> Result<(), String> {
        let projection = self
            .inner
            .projections
            .iter()
            .find(|p| p.name() == projection)
            .ok_or_else(|| format!("no projection {projection}"))?
            .clone();
        let backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(500));
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut attempt = 0;
        loop {
            match self
                .inner
                .catch_up(projection.as_ref(), raffle_id, Slot::Live)
                .await
            {
                Ok(Outcome::CaughtUp) => return Ok(()),
                Ok(Outcome::Busy) if Instant::now() < deadline => {
                    tokio::time::sleep(backoff.delay(attempt)).await;
                    attempt += 1;
                }
                Ok(Outcome::Busy) => return Err("another holder kept it for 10 s".into()),
                Err(f) => return Err(format!("at {}: {}", f.sequence, f.error)),
            }
        }
    }
}

pub(crate) async fn checkpoint(
    pool: &PgPool,
    projection: &str,
    slot: Slot,
    raffle_id: Uuid,
) -> Result<u64, sqlx::Error> {
    let sequence: Option<i64> = sqlx::query_scalar(
        "SELECT sequence FROM projection_checkpoints \
         WHERE projection = $1 AND slot = $2 AND raffle_id = $3",
    )
    .bind(projection)
    .bind(slot.as_str())
    .bind(raffle_id)
    .fetch_optional(pool)
    .await?;
    Ok(sequence.unwrap_or(0) as u64)
}

/// The projection-wide lock: shared by every batch, exclusive for a rebuild's swap.
pub(crate) fn swap_lock_key(projection: &str) -> (i32, i32) {
    lock_key(&format!("{projection}:swap"), Uuid::nil())
}

/// The advisory lock key of a (projection, raffle) pair in `slot`: a rebuild's shadow has its own.
fn pair_lock_key(projection: &str, raffle_id: Uuid, slot: Slot) -> (i32, i32) {
    match slot {
        Slot::Live => lock_key(projection, raffle_id),
        Slot::Shadow => lock_key(&format!("{projection}:shadow"), raffle_id),
    }
}

/// Takes, for the transaction, the pair's own lock and a share of the projection's: a
/// rebuild's swap takes that one exclusively, so no batch is ever half-way through tables
/// being swapped. False when another runtime holds either.
async fn try_lock_pair(
    tx: &mut sqlx::PgConnection,
    projection: &str,
    raffle_id: Uuid,
    slot: Slot,
) -> Result<bool, sqlx::Error> {
    let (class, object) = pair_lock_key(projection, raffle_id, slot);
    let (swap_class, swap_object) = swap_lock_key(projection);
    sqlx::query_scalar(
        "SELECT pg_try_advisory_xact_lock($1, $2) \
            AND pg_try_advisory_xact_lock_shared($3, $4)",
    )
    .bind(class)
    .bind(object)
    .bind(swap_class)
    .bind(swap_object)
    .fetch_one(tx)
    .await
}

/// The advisory lock key of a (projection, raffle): two 32-bit halves, so it never meets the
/// single 64-bit keys sqlx's migrator takes. FNV-1a: the same on every node and release.
pub(crate) fn lock_key(projection: &str, raffle_id: Uuid) -> (i32, i32) {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in projection.bytes() {
        hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
    }
    let id = raffle_id.as_u128();
    let folded = (id as u32) ^ ((id >> 32) as u32) ^ ((id >> 64) as u32) ^ ((id >> 96) as u32);
    (hash as i32, folded as i32)
}

impl Inner {
    fn take_dirty(&self) -> HashSet<Uuid> {
        std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Raffles some projection has not caught up with (and which projections' live tables
    /// are of another version).
    async fn behind(&self) -> Result<HashSet<Uuid>, sqlx::Error> {
        let versions: Vec<(String, i32)> =
            sqlx::query_as("SELECT projection, version FROM projection_versions")
                .fetch_all(&self.read)
                .await?;
        let stale: HashSet<&'static str> = self
            .projections
            .iter()
            .filter(|p| {
                versions
                    .iter()
                    .any(|(name, v)| name == p.name() && *v as u32 != p.version())
            })
            .map(|p| p.name())
            .collect();
        *self.stale.lock().unwrap_or_else(|e| e.into_inner()) = stale;
        let heads = self.source.heads().await?;
        let rows: Vec<(String, Uuid, i64)> = sqlx::query_as(
            "SELECT projection, raffle_id, sequence FROM projection_checkpoints WHERE slot = 'live'",
        )
        .fetch_all(&self.read)
        .await?;
        let checkpoints: HashMap<(String, Uuid), u64> = rows
            .into_iter()
            .map(|(p, r, s)| ((p, r), s as u64))
            .collect();
        // The lag gauge, per projection, from what the poll read anyway.
        for p in &self.projections {
            let lag: u64 = heads
                .iter()
                .map(|(raffle_id, head)| {
                    let done = checkpoints
                        .get(&(p.name().to_owned(), *raffle_id))
                        .copied()
                        .unwrap_or(0);
                    head.saturating_sub(done)
                })
                .sum();
            metrics::gauge!("tombola_projection_lag_events", "projection" => p.name())
                .set(lag as f64);
        }
        Ok(heads
            .into_iter()
            .filter(|(raffle_id, head)| {
                self.projections.iter().any(|p| {
                    checkpoints
                        .get(&(p.name().to_owned(), *raffle_id))
                        .copied()
                        .unwrap_or(0)
                        < *head
                })
            })
            .map(|(raffle_id, _)| raffle_id)
            .collect())
    }

    /// Catches every projection up on `raffle_id`: those in good health together (one read,
    /// one decode and one transaction per batch for all of them), then, each alone, those
    /// waiting out a failure, and all of them alone if the joint batch failed or another node
    /// holds one of the pairs (the lone path finds and records a failing event, and skips a
    /// pair held elsewhere).
    async fn catch_up_raffle(&self, raffle_id: Uuid) {
        let stale = self.stale.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let retrying: HashSet<&'static str> = self
            .retries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .filter(|(_, r)| *r == raffle_id)
            .map(|(p, _)| *p)
            .collect();
        let (healthy, others): (Vec<&dyn Projection>, Vec<&dyn Projection>) = self
            .projections
            .iter()
            .map(|p| p.as_ref())
            .filter(|p| !stale.contains(p.name()))
            .partition(|p| !retrying.contains(p.name()));
        let alone = if healthy.len() > 1 {
            let caught_up = if self.config.parallel {
                self.catch_up_parallel(&healthy, raffle_id).await
            } else {
                self.catch_up_together(&healthy, raffle_id, Slot::Live)
                    .await
            };
            match caught_up {
                Ok(Some(Outcome::CaughtUp)) => others,
                Ok(_) => self.projections.iter().map(|p| p.as_ref()).collect(),
                Err(error) => {
                    tracing::warn!(%raffle_id, %error, "joint projection batch failed; one at a time");
                    self.projections.iter().map(|p| p.as_ref()).collect()
                }
            }
        } else {
            self.projections.iter().map(|p| p.as_ref()).collect()
        };
        for projection in alone {
            self.catch_up_logged(projection, raffle_id).await;
        }
    }

    async fn catch_up_logged(&self, projection: &dyn Projection, raffle_id: Uuid) {
        if self
            .stale
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(projection.name())
        {
            return;
        }
        let key = (projection.name(), raffle_id);
        let retry = self
            .retries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .copied();
        if matches!(retry, Some(r) if r.not_before > Instant::now()) {
            return;
        }
        match self.catch_up(projection, raffle_id, Slot::Live).await {
            Ok(Outcome::CaughtUp | Outcome::Busy) => {
                if retry.is_some() {
                    self.retries
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&key);
                    tracing::info!(projection = projection.name(), %raffle_id, "projection recovered");
                }
            }
            Err(failure) => {
                let attempts = retry.map_or(0, |r| r.attempts) + 1;
                let delay =
                    Backoff::new(self.config.retry_base, self.config.retry_max).delay(attempts - 1);
                self.retries
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(
                        key,
                        Retry {
                            attempts,
                            not_before: Instant::now() + delay,
                        },
                    );
                tracing::error!(
                    projection = projection.name(),
                    %raffle_id,
                    sequence = failure.sequence,
                    error = %failure.error,
                    attempts,
                    "projection failed; retrying later"
                );
                metrics::counter!("tombola_projection_failures_total", "projection" => projection.name())
                    .increment(1);
                if let Err(error) = self
                    .record_failure(projection.name(), raffle_id, &failure, attempts, delay)
                    .await
                {
                    tracing::warn!(%error, "could not record a projection failure");
                }
            }
        }
    }

    async fn record_failure(
        &self,
        projection: &str,
        raffle_id: Uuid,
        failure: &Failure,
        attempts: u32,
        delay: Duration,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO projection_failures \
               (projection, raffle_id, sequence, error, attempts, next_attempt_at) \
             VALUES ($1, $2, $3, $4, $5, now() + $6 * interval '1 millisecond') \
             ON CONFLICT (projection, raffle_id) DO UPDATE SET sequence = EXCLUDED.sequence, \
               error = EXCLUDED.error, attempts = EXCLUDED.attempts, \
               last_failed_at = now(), next_attempt_at = EXCLUDED.next_attempt_at",
        )
        .bind(projection)
        .bind(raffle_id)
        .bind(failure.sequence as i64)
        .bind(&failure.error)
        .bind(attempts as i32)
        .bind(delay.as_millis() as f64)
        .execute(&self.read)
        .await?;
        Ok(())
    }

    /// Several projections caught up at once on `raffle_id`, in `slot`: each batch of events
    /// is read and decoded once and applied to every projection (from its own checkpoint on),
    /// their checkpoints moved, in one transaction holding every pair's lock and a share of
    /// every swap lock. A rebuild fills its shadows this way; the live loop too, for the
    /// projections not waiting out a failure (decision 0026: five reads, decodes and commits
    /// per batch were most of the live lag). `Ok(None)` when a batch failed: nothing of it
    /// stays, and the caller catches each projection up alone, which finds and names the
    /// failing event. Every early return rolls back first: a dropped transaction would keep
    /// its advisory locks until its connection is next used, and the caller's next step is to
    /// ask for them again.
    pub(crate) async fn catch_up_together(
        &self,
        projections: &[&dyn Projection],
        raffle_id: Uuid,
        slot: Slot,
    ) -> Result<Option<Outcome>, sqlx::Error> {
        let names: Vec<&str> = projections.iter().map(|p| p.name()).collect();
        let (mut classes, mut objects, mut swap_classes, mut swap_objects) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for name in &names {
            let (class, object) = pair_lock_key(name, raffle_id, slot);
            let (swap_class, swap_object) = swap_lock_key(name);
            classes.push(class);
            objects.push(object);
            swap_classes.push(swap_class);
            swap_objects.push(swap_object);
        }
        let limit = self.config.batch_size.max(1);
        // The next batch is read while this one is applied: the log and the read models are
        // on different connections (often different cores).
        let mut next: Option<tokio::task::JoinHandle<Result<Vec<RawEvent>, sqlx::Error>>> = None;
        let clock = match slot {
            Slot::Shadow => &self.clock,
            Slot::Live => &self.live_clock,
        };
        loop {
            let mut phase_start = Instant::now();
            let mut lap = |phase: Phase| {
                let now = Instant::now();
                clock.add(phase, now - phase_start);
                phase_start = now;
            };
            let mut tx = crate::tx::begin(&self.read).await?;
            let locked: Option<bool> = sqlx::query_scalar(
                "SELECT bool_and(pg_try_advisory_xact_lock(c, o) \
                                 AND pg_try_advisory_xact_lock_shared(sc, so)) \
                 FROM UNNEST($1::int4[], $2::int4[], $3::int4[], $4::int4[]) AS k(c, o, sc, so)",
            )
            .bind(&classes)
            .bind(&objects)
            .bind(&swap_classes)
            .bind(&swap_objects)
            .fetch_one(&mut *tx)
            .await?;
            if locked != Some(true) {
                tx.rollback().await?;
                return Ok(Some(Outcome::Busy));
            }
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT projection, sequence FROM projection_checkpoints \
                 WHERE projection = ANY($1) AND slot = $2 AND raffle_id = $3",
            )
            .bind(&names)
            .bind(slot.as_str())
            .bind(raffle_id)
            .fetch_all(&mut *tx)
            .await?;
            let done: Vec<u64> = names
                .iter()
                .map(|name| {
                    rows.iter()
                        .find(|(p, _)| p == name)
                        .map_or(0, |(_, s)| *s as u64)
                })
                .collect();
            let from = done.iter().copied().min().unwrap_or(0);
            lap(Phase::Commit);
            let raw = match next.take() {
                Some(prefetched) => match prefetched.await {
                    Ok(Ok(rows)) if rows.first().is_some_and(|r| r.0 as u64 == from + 1) => rows,
                    _ => self.source.read_after(raffle_id, from, limit).await?,
                },
                None => self.source.read_after(raffle_id, from, limit).await?,
            };
            lap(Phase::Read);
            if raw.is_empty() {
                tx.rollback().await?;
                return Ok(Some(Outcome::CaughtUp));
            }
            let full = raw.len() == limit;
            if full {
                let source = self.source.clone();
                let after = raw.last().map_or(from, |r| r.0 as u64);
                next = Some(tokio::spawn(async move {
                    source.read_after(raffle_id, after, limit).await
                }));
            }
            let (events, undecodable) = decode(raffle_id, &raw);
            drop(raw);
            lap(Phase::Decode);
            let Some(last) = events.last().filter(|_| undecodable.is_none()) else {
                tx.rollback().await?;
                return Ok(None);
            };
            let (last_sequence, last_at) = (last.sequence, last.recorded_at);
            // Only the checkpoints of projections this batch moved (a resumed rebuild may have
            // one projection further than the others: it must never go back).
            let mut moved: Vec<&str> = Vec::new();
            for (projection, done) in projections.iter().zip(&done) {
                let start = events.partition_point(|e| e.sequence <= *done);
                if start == events.len() {
                    continue;
                }
                moved.push(projection.name());
                let batch = Batch {
                    raffle_id,
                    events: &events[start..],
                    tables: Tables { slot },
                };
                if projection.apply(&mut tx, batch).await.is_err() {
                    tx.rollback().await?;
                    return Ok(None);
                }
                lap(Phase::Apply(projection.name()));
            }
            sqlx::query(
                "INSERT INTO projection_checkpoints \
                   (projection, slot, raffle_id, sequence, recorded_at) \
                 SELECT p, $5, $2, $3, $4 FROM UNNEST($1::text[]) AS p \
                 ON CONFLICT (projection, slot, raffle_id) DO UPDATE SET \
                   sequence = EXCLUDED.sequence, recorded_at = EXCLUDED.recorded_at, \
                   updated_at = now()",
            )
            .bind(&moved)
            .bind(raffle_id)
            .bind(last_sequence as i64)
            .bind(last_at)
            .bind(slot.as_str())
            .execute(&mut *tx)
            .await?;
            if slot == Slot::Live {
                // A failure recorded before a restart (the retry state is in memory) ends
                // with the first batch that passes.
                sqlx::query(
                    "DELETE FROM projection_failures WHERE projection = ANY($1) AND raffle_id = $2",
                )
                .bind(&moved)
                .bind(raffle_id)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            lap(Phase::Commit);
            clock.batch(events.len());
            match slot {
                Slot::Shadow => {
                    self.rebuilt
                        .fetch_add(events.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                Slot::Live => {
                    for name in &moved {
                        metrics::histogram!("tombola_projection_batch_events", "projection" => name.to_string())
                            .record(events.len() as f64);
                    }
                }
            }
            self.progress.send_modify(|n| *n = n.wrapping_add(1));
            if !full {
                return Ok(Some(Outcome::CaughtUp));
            }
        }
    }

    /// [`Self::catch_up_together`]'s live work with each projection in a transaction of its
    /// own, all at once: each batch of the log is read and decoded once (from the lowest
    /// checkpoint, read without a lock: checkpoints only move forward), then every
    /// projection, on a connection of its own, takes its pair's lock and a share of its swap
    /// lock, reads its checkpoint under them, applies the events after it and moves it, and
    /// commits. Each transaction holds its rows and its checkpoint, so a crash still neither
    /// skips nor applies twice, per projection. `Ok(None)` when a projection's batch failed
    /// (the others' batches stay), `Busy` when another node holds a pair: the caller then
    /// catches each projection up alone, as after a failed joint batch.
    async fn catch_up_parallel(
        &self,
        projections: &[&dyn Projection],
        raffle_id: Uuid,
    ) -> Result<Option<Outcome>, sqlx::Error> {
        let names: Vec<&str> = projections.iter().map(|p| p.name()).collect();
        let limit = self.config.batch_size.max(1);
        let clock = &self.live_clock;
        loop {
            let started = Instant::now();
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT projection, sequence FROM projection_checkpoints \
                 WHERE projection = ANY($1) AND slot = 'live' AND raffle_id = $2",
            )
            .bind(&names)
            .bind(raffle_id)
            .fetch_all(&self.read)
            .await?;
            let from = names
                .iter()
                .map(|name| {
                    rows.iter()
                        .find(|(p, _)| p == name)
                        .map_or(0, |(_, s)| *s as u64)
                })
                .min()
                .unwrap_or(0);
            clock.add(Phase::Commit, started.elapsed());
            let started = Instant::now();
            let raw = self.source.read_after(raffle_id, from, limit).await?;
            clock.add(Phase::Read, started.elapsed());
            if raw.is_empty() {
                return Ok(Some(Outcome::CaughtUp));
            }
            let full = raw.len() == limit;
            let started = Instant::now();
            let (events, undecodable) = decode(raffle_id, &raw);
            drop(raw);
            clock.add(Phase::Decode, started.elapsed());
            if events.is_empty() || undecodable.is_some() {
                return Ok(None);
            }
            let applied = futures::future::join_all(
                projections
                    .iter()
                    .map(|p| self.apply_alone(*p, raffle_id, &events)),
            )
            .await;
            clock.batch(events.len());
            self.progress.send_modify(|n| *n = n.wrapping_add(1));
            let mut busy = false;
            for result in applied {
                match result? {
                    Alone::Applied | Alone::Skipped => {}
                    Alone::Busy => busy = true,
                    Alone::Failed => return Ok(None),
                }
            }
            if busy {
                return Ok(Some(Outcome::Busy));
            }
            if !full {
                return Ok(Some(Outcome::CaughtUp));
            }
        }
    }

    /// One projection's share of [`Self::catch_up_parallel`]'s batch, in a transaction of
    /// its own.
    async fn apply_alone(
        &self,
        projection: &dyn Projection,
        raffle_id: Uuid,
        events: &[crate::envelope::Envelope],
    ) -> Result<Alone, sqlx::Error> {
        let started = Instant::now();
        let name = projection.name();
        let mut tx = crate::tx::begin(&self.read).await?;
        if !try_lock_pair(&mut tx, name, raffle_id, Slot::Live).await? {
            tx.rollback().await?;
            return Ok(Alone::Busy);
        }
        let done: Option<i64> = sqlx::query_scalar(
            "SELECT sequence FROM projection_checkpoints \
             WHERE projection = $1 AND slot = 'live' AND raffle_id = $2",
        )
        .bind(name)
        .bind(raffle_id)
        .fetch_optional(&mut *tx)
        .await?;
        let done = done.unwrap_or(0) as u64;
        let start = events.partition_point(|e| e.sequence <= done);
        let Some(first) = events.get(start) else {
            tx.rollback().await?;
            return Ok(Alone::Skipped);
        };
        if first.sequence != done + 1 {
            // Not the events after its checkpoint (cannot happen while checkpoints only move
            // forward): leave it to the careful path.
            tx.rollback().await?;
            return Ok(Alone::Busy);
        }
        let slice = &events[start..];
        let batch = Batch {
            raffle_id,
            events: slice,
            tables: Tables { slot: Slot::Live },
        };
        if projection.apply(&mut tx, batch).await.is_err() {
            tx.rollback().await?;
            return Ok(Alone::Failed);
        }
        let last = &slice[slice.len() - 1];
        sqlx::query(
            "INSERT INTO projection_checkpoints \
               (projection, slot, raffle_id, sequence, recorded_at) \
             VALUES ($1, 'live', $2, $3, $4) \
             ON CONFLICT (projection, slot, raffle_id) DO UPDATE SET \
               sequence = EXCLUDED.sequence, recorded_at = EXCLUDED.recorded_at, \
               updated_at = now()",
        )
        .bind(name)
        .bind(raffle_id)
        .bind(last.sequence as i64)
        .bind(last.recorded_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM projection_failures WHERE projection = $1 AND raffle_id = $2")
            .bind(name)
            .bind(raffle_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.live_clock.add(Phase::Apply(name), started.elapsed());
        metrics::histogram!("tombola_projection_batch_events", "projection" => name)
            .record(slice.len() as f64);
        Ok(Alone::Applied)
    }

    /// Applies `raffle_id`'s events to `projection`'s tables in `slot` until none are left,
    /// in batches of one transaction each. After a failed batch it goes on one event per
    /// transaction, so that everything before the failing event is applied and the failure
    /// names the event itself. Its span (a trace of its own) is `projection.batch`, with one
    /// `batch applied` event per transaction.
    #[tracing::instrument(
        name = "projection.batch",
        parent = None,
        skip_all,
        fields(projection = projection.name(), %raffle_id, slot = slot.as_str())
    )]
    pub(crate) async fn catch_up(
        &self,
        projection: &dyn Projection,
        raffle_id: Uuid,
        slot: Slot,
    ) -> Result<Outcome, Failure> {
        let tables = Tables { slot };
        let failure = |sequence: u64, error: String| Failure { sequence, error };
        // One event at a time up to this sequence, after a batch failed.
        let mut careful_until: Option<u64> = None;
        loop {
            let mut tx = crate::tx::begin(&self.read)
                .await
                .map_err(|e| failure(0, e.to_string()))?;
            let locked = try_lock_pair(&mut tx, projection.name(), raffle_id, slot)
                .await
                .map_err(|e| failure(0, e.to_string()))?;
            if !locked {
                return Ok(Outcome::Busy);
            }
            let from: Option<i64> = sqlx::query_scalar(
                "SELECT sequence FROM projection_checkpoints \
                 WHERE projection = $1 AND slot = $2 AND raffle_id = $3",
            )
            .bind(projection.name())
            .bind(slot.as_str())
            .bind(raffle_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| failure(0, e.to_string()))?;
            let from = from.unwrap_or(0) as u64;
            let limit = match careful_until {
                Some(until) if from < until => 1,
                _ => self.config.batch_size.max(1),
            };
            let rows = self
                .source
                .read_after(raffle_id, from, limit)
                .await
                .map_err(|e| failure(from + 1, e.to_string()))?;
            if rows.is_empty() {
                return Ok(Outcome::CaughtUp);
            }
            let full = rows.len() == limit;
            let (events, undecodable) = decode(raffle_id, &rows);
            drop(rows);
            let Some(last) = events.last() else {
                let e = undecodable.expect("rows without events failed to decode");
                return Err(failure(e.sequence, e.reason));
            };
            let (last_sequence, last_at) = (last.sequence, last.recorded_at);
            let first_sequence = events[0].sequence;
            let applied = projection
                .apply(
                    &mut tx,
                    Batch {
                        raffle_id,
                        events: &events,
                        tables,
                    },
                )
                .await;
            if let Err(error) = applied {
                // Awaited, not dropped: a dropped transaction only queues its ROLLBACK and
                // keeps its row locks until the connection is next used.
                let _ = tx.rollback().await;
                if events.len() > 1 {
                    careful_until = Some(last_sequence);
                    continue;
                }
                let error = match error {
                    ApplyError::Database(e) => e.to_string(),
                    ApplyError::Invalid(reason) => reason,
                };
                return Err(failure(first_sequence, error));
            }
            let moved = async {
                sqlx::query(
                    "INSERT INTO projection_checkpoints \
                       (projection, slot, raffle_id, sequence, recorded_at) \
                     VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (projection, slot, raffle_id) DO UPDATE SET \
                       sequence = EXCLUDED.sequence, recorded_at = EXCLUDED.recorded_at, \
                       updated_at = now()",
                )
                .bind(projection.name())
                .bind(slot.as_str())
                .bind(raffle_id)
                .bind(last_sequence as i64)
                .bind(last_at)
                .execute(&mut *tx)
                .await?;
                if slot == Slot::Live {
                    sqlx::query(
                        "DELETE FROM projection_failures WHERE projection = $1 AND raffle_id = $2",
                    )
                    .bind(projection.name())
                    .bind(raffle_id)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await
            }
            .await;
            moved.map_err(|e| failure(first_sequence, e.to_string()))?;
            tracing::debug!(
                from = first_sequence,
                to = last_sequence,
                events = events.len(),
                "batch applied"
            );
            metrics::histogram!("tombola_projection_batch_events", "projection" => projection.name())
                .record(events.len() as f64);
            if slot == Slot::Shadow {
                self.rebuilt
                    .fetch_add(events.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            self.progress.send_modify(|n| *n = n.wrapping_add(1));
            if undecodable.is_some() {
                continue;
            }
            if !full && careful_until.is_none_or(|until| last_sequence >= until) {
                return Ok(Outcome::CaughtUp);
            }
        }
    }
}
