//! The row-lock approach behind an axum handler as thin as Tombola's: parse the JSON, one
//! call of a PL/pgSQL function (`bench/sql/rowlock.sql`) on a pool of as many connections as
//! Tombola's default (16), answer JSON. No authentication, rate limit or request ids: what
//! it is compared with pays for those, so the comparison flatters the row-lock side.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use sqlx::PgPool;
use tombola::store::Store;
use uuid::Uuid;

pub const SQL: &str = include_str!("../../sql/rowlock.sql");
const PRICE: i64 = 500;
const HOLD: &str = "60 minutes";

pub struct RowlockServer {
    pub authority: String,
    pub store: Store,
    database_url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    sweeper: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Shared {
    pool: PgPool,
    tickets: i32,
}

impl RowlockServer {
    /// A fresh database with `raffles` × `tickets` rows, and the server on a port of the
    /// bench's range.
    pub async fn start(raffles: u32, tickets: u32) -> Result<Self, String> {
        let (store, database_url) = crate::database::fresh(16).await?;
        let pool = store.pool().clone();
        sqlx::raw_sql(SQL)
            .execute(&pool)
            .await
            .map_err(|e| format!("rowlock schema: {e}"))?;
        crate::report::phase(format!(
            "row-lock: filling {raffles} × {tickets} ticket rows"
        ));
        let t = std::time::Instant::now();
        sqlx::query(
            "INSERT INTO rowlock_tickets (raffle_id, number) \
             SELECT r, n FROM generate_series(0, $1 - 1) r, generate_series(1, $2) n",
        )
        .bind(raffles as i32)
        .bind(tickets as i32)
        .execute(&pool)
        .await
        .map_err(|e| format!("rowlock fill: {e}"))?;
        sqlx::query("SELECT rowlock_indexes()")
            .execute(&pool)
            .await
            .map_err(|e| format!("rowlock indexes: {e}"))?;
        sqlx::raw_sql("VACUUM ANALYZE rowlock_tickets")
            .execute(&pool)
            .await
            .map_err(|e| format!("rowlock vacuum: {e}"))?;
        crate::report::phase(format!(
            "row-lock: filled in {:.1} s",
            t.elapsed().as_secs_f64()
        ));
        let shared = Shared {
            pool: pool.clone(),
            tickets: tickets as i32,
        };
        let app = Router::new()
            .route("/raffles/{raffle}/reservations", post(reserve))
            .route("/raffles/{raffle}/orders/{order}/pay", post(pay))
            .route(
                "/raffles/{raffle}/orders/{order}",
                axum::routing::delete(release),
            )
            .with_state(shared);
        let port = super::free_port()?;
        let authority = format!("127.0.0.1:{port}");
        let listener = tokio::net::TcpListener::bind(&authority)
            .await
            .map_err(|e| e.to_string())?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        // Expired holds are freed every second, as Tombola's writer does on its timer.
        let sweeper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let _ = sqlx::query("SELECT rowlock_expire_holds()")
                    .execute(&pool)
                    .await;
            }
        });
        Ok(Self {
            authority,
            store,
            database_url,
            stop,
            task,
            sweeper,
        })
    }

    pub async fn stop(self) -> Result<(), String> {
        self.sweeper.abort();
        let _ = self.stop.send(());
        let _ = self.task.await;
        crate::database::discard(self.store, &self.database_url).await
    }
}

#[derive(Deserialize)]
struct ReserveBody {
    buyer: Option<BuyerBody>,
    quantity: Option<i32>,
    numbers: Option<Vec<i32>>,
}

#[derive(Deserialize)]
struct BuyerBody {
    email: String,
}

async fn reserve(
    State(shared): State<Shared>,
    Path(raffle): Path<i32>,
    Json(body): Json<ReserveBody>,
) -> (StatusCode, Json<serde_json::Value>) {
    let order_id = Uuid::now_v7();
    let quantity = body
        .numbers
        .as_ref()
        .map_or(body.quantity.unwrap_or(1), |n| n.len() as i32);
    let email = body.buyer.map(|b| b.email).unwrap_or_default();
    let picked: Result<Vec<i32>, sqlx::Error> =
        sqlx::query_scalar("SELECT rowlock_reserve($1, $2, $3, $4, $5, $6, $7, $8::interval)")
            .bind(raffle)
            .bind(order_id)
            .bind(email)
            .bind(PRICE)
            .bind(shared.tickets)
            .bind(quantity)
            .bind(body.numbers)
            .bind(HOLD)
            .fetch_one(&shared.pool)
            .await;
    match picked {
        Ok(numbers) if !numbers.is_empty() => (
            StatusCode::CREATED,
            Json(json!({
                "order_id": order_id,
                "numbers": numbers,
                "amount": PRICE * numbers.len() as i64,
            })),
        ),
        Ok(_) => (
            StatusCode::CONFLICT,
            Json(json!({"type": "tickets_unavailable"})),
        ),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": error.to_string()})),
        ),
    }
}

async fn pay(
    State(shared): State<Shared>,
    Path((_raffle, order)): Path<(i32, Uuid)>,
) -> StatusCode {
    order_update(&shared.pool, "SELECT rowlock_pay($1)", order).await
}

async fn release(
    State(shared): State<Shared>,
    Path((_raffle, order)): Path<(i32, Uuid)>,
) -> StatusCode {
    order_update(&shared.pool, "SELECT rowlock_release($1)", order).await
}

async fn order_update(pool: &PgPool, sql: &'static str, order: Uuid) -> StatusCode {
    match sqlx::query_scalar::<_, i32>(sql)
        .bind(order)
        .fetch_one(pool)
        .await
    {
        Ok(0) => StatusCode::CONFLICT,
        Ok(_) => StatusCode::OK,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
