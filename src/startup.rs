//! Building and running the server: `Application::build` binds (port 0 in tests), wires the
//! store, engine and router; `run_until_stopped` serves until the shutdown signal, then lets
//! in-flight requests and queued commands finish.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::client_ip::TrustedProxies;
use crate::api::rate_limit::RateLimits;
use crate::api::{self, AppState};
use crate::clock::Clock;
use crate::config::Settings;
use crate::engine::{Engine, EngineConfig};
use crate::limits::LimitsConfig;
use crate::payments::stripe::Stripe;
use crate::payments::worker::PaymentsIn;
use crate::store::Store;
use tombola_projections::{EventSource, Runtime, RuntimeConfig, RuntimeHandle};

/// How often a node looks for raffles off sale whose holds nobody here expires (a node that
/// held them died for good): a hold of such a raffle ends at most this late.
const CLOSED_HOLDS_SWEEP: Duration = Duration::from_secs(30);

/// How long shutdown waits for a pool to close its connections politely.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    engine: Engine,
    payments: Option<PaymentsIn>,
    payment_workers: usize,
    listener_task: tokio::task::AbortHandle,
    read_side: ReadSide,
    webhooks: crate::webhooks::Webhooks,
    webhooks_running: crate::webhooks::Running,
    /// Stops the retention passes at shutdown.
    retention: CancellationToken,
}

/// The projection runtime and what feeds it wake-ups.
struct ReadSide {
    handle: RuntimeHandle,
    stop: CancellationToken,
    runtime: tokio::task::JoinHandle<()>,
    wakeups: tokio::task::AbortHandle,
    /// The read database's own pool, when it is not the write database.
    own_pool: Option<sqlx::PgPool>,
}

impl Application {
    /// Everything the server runs with comes in here: `settings`, the database, and the
    /// clock its rules and hold timers read (`SystemClock` in production).
    pub async fn build(
        args: &Settings,
        store: Store,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        store.migrate().await?;
        let engine = Engine::new(
            store.clone(),
            EngineConfig {
                queue_capacity: args.queue_capacity,
                snapshot_every: args.snapshot_every,
                evict_after: args.evict_after,
                clock: clock.clone(),
                ..EngineConfig::default()
            },
        );
        let read_side = start_read_side(args, &store, &engine).await?;
        // Outbound webhooks on a small pool of their own: deliveries never take the
        // connections requests need, and a burst of them never fills the server's.
        let webhooks = crate::webhooks::Webhooks::new(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(args.webhooks.db_connections.max(2))
                .acquire_timeout(Duration::from_secs(10))
                .connect_lazy_with(
                    (*store.pool().connect_options())
                        .clone()
                        .application_name("tombola-webhooks"),
                ),
            args.webhooks.clone(),
            clock.clone(),
        );
        let webhooks_running = crate::webhooks::start(&webhooks, &engine).await?;
        let resumed = engine.resume_holds().await?;
        tracing::info!(resumed, "raffles with holds loaded");
        engine.sweep_closed_holds(CLOSED_HOLDS_SWEEP);
        let listener_task = crate::engine::remote_commits::listen(engine.clone(), store.clone());
        let secrets: Vec<String> = args
            .stripe_webhook_secrets
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        let payments = if secrets.is_empty() {
            None
        } else {
            let stripe = Stripe::new(secrets, args.stripe_tolerance_secs);
            Some(PaymentsIn::new(engine.clone(), vec![Arc::new(stripe)])?)
        };
        // Leases need no WAL flush wait: a PostgreSQL crash may forget the last fraction of a
        // second of them, once (decision 0017).
        let limits = LimitsConfig::new(
            args.rate_limit_per_key,
            args.rate_limit_per_ip,
            &args.rate_limits,
            args.rate_limit_lease,
        );
        let limits_pool = store
            .sibling_without_flush_wait("tombola-rate-limits")
            .pool()
            .clone();
        let retention = CancellationToken::new();
        if !args.retention_interval.is_zero() {
            args.retention.spawn(
                store.pool().clone(),
                clock.clone(),
                args.retention_interval,
                retention.clone(),
            );
        }
        let state = AppState::new(
            engine.clone(),
            RateLimits::new(limits, limits_pool, clock.clone()),
            crate::telemetry::init_metrics(),
            payments.clone(),
        )
        .with_read_side(read_side.handle.clone(), args.min_position_wait)
        .with_webhooks(webhooks.clone())
        .with_trusted_proxies(TrustedProxies::new(args.trusted_proxies.clone()))
        .with_heavy_read_limit(args.max_exports);
        let router = api::router(state, args.request_timeout, args.body_limit_bytes);
        let listener = TcpListener::bind(args.listen).await?;
        Ok(Self {
            listener,
            router,
            engine,
            payments,
            payment_workers: args.payment_workers,
            listener_task,
            read_side,
            webhooks,
            webhooks_running,
            retention,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Outbound webhooks: their pool, settings and clock.
    pub fn webhooks(&self) -> &crate::webhooks::Webhooks {
        &self.webhooks
    }

    /// The outbound webhooks' subscriber runtime, when this node runs it.
    pub fn webhooks_outbox(&self) -> Option<&RuntimeHandle> {
        self.webhooks_running.outbox()
    }

    /// The projection runtime's handle: status, positions, wake-ups.
    pub fn read_side(&self) -> &RuntimeHandle {
        &self.read_side.handle
    }

    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        tracing::info!(addr = %self.local_addr(), "listening");
        let stop_workers = CancellationToken::new();
        let workers = self
            .payments
            .as_ref()
            .map(|payments| payments.spawn_workers(self.payment_workers, stop_workers.clone()));
        let service = self
            .router
            .into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(self.listener, service)
            .with_graceful_shutdown(shutdown)
            .await?;
        // HTTP is drained; inbox workers finish their batch (what they have not settled stays
        // in the inbox); then every command already queued is decided and committed.
        stop_workers.cancel();
        self.retention.cancel();
        if let Some(workers) = workers {
            workers.wait().await;
        }
        if let Some(payments) = &self.payments {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, payments.close()).await;
        }
        self.engine.shutdown().await;
        self.listener_task.abort();
        // Deliveries in flight are left to their leases: sent again by whoever runs next.
        self.webhooks_running.stop().await;
        // Projections stop last: a batch in flight is rolled back and redone at next start.
        self.read_side.wakeups.abort();
        self.read_side.stop.cancel();
        let _ = self.read_side.runtime.await;
        if let Some(pool) = &self.read_side.own_pool {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, pool.close()).await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Creates the read side's tables (on TOMBOLA_READ_DATABASE_URL, or the write database)
/// and starts the projection runtime, woken by the engine after each commit; other nodes'
/// commits wake it through NOTIFY, and it polls besides.
async fn start_read_side(
    args: &Settings,
    store: &Store,
    engine: &Engine,
) -> anyhow::Result<ReadSide> {
    let own_pool = match &args.read_database_url {
        Some(url) => Some(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(
                    url.parse::<sqlx::postgres::PgConnectOptions>()?
                        .application_name("tombola-read"),
                )
                .await?,
        ),
        None => None,
    };
    let read_pool = own_pool.clone().unwrap_or_else(|| store.pool().clone());
    let projections = tombola_projections::models::all();
    tombola_projections::migrate(&read_pool, &projections).await?;
    let runtime = Runtime::new(
        EventSource::new(store.pool().clone()),
        read_pool,
        projections,
        RuntimeConfig::default(),
    );
    let handle = runtime.handle();
    // A projection whose live tables an older version built is rebuilt in the background;
    // its old tables keep serving (frozen) until the new ones are swapped in.
    for name in handle.outdated().await? {
        let handle = handle.clone();
        tokio::spawn(async move {
            tracing::info!(projection = name, "rebuilding for a new version");
            if let Err(error) = handle.rebuild(name, None, |_| {}).await {
                tracing::error!(projection = name, %error, "rebuild for a new version failed");
            }
        });
    }
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let runtime = tokio::spawn(runtime.run(async move { stopped.cancelled().await }));
    let mut commits = engine.subscribe();
    let woken = handle.clone();
    let wakeups = tokio::spawn(async move {
        loop {
            match commits.recv().await {
                Ok(committed) => woken.wake(committed.raffle_id),
                // Missed notices only delay: the poll finds those raffles.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    })
    .abort_handle();
    Ok(ReadSide {
        handle,
        stop,
        runtime,
        wakeups,
        own_pool,
    })
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received");
}
