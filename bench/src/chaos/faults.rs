//! Faults at random moments, one at a time: a node killed with SIGKILL and started again,
//! PostgreSQL restarted in immediate mode (a crash and its recovery), a node's database
//! connections terminated, a node paused with SIGSTOP so that it falls behind, then resumed.
//! (Client disconnects mid-request are injected by the clients themselves.)

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::Mutex;
use tombola::pgcluster::PrivateCluster;

use super::nodes::{application_name, Node};
use super::record::{now_ms, Fault, Recorder};

pub const KINDS: [&str; 4] = ["kill9", "pg_restart", "pg_terminate", "pause"];

pub struct Injector {
    pub nodes: Arc<Vec<Mutex<Node>>>,
    pub cluster: Arc<std::sync::Mutex<PrivateCluster>>,
    pub admin_pool: sqlx::PgPool,
    pub recorder: Arc<Recorder>,
    pub http: reqwest::Client,
    /// Mean time between two faults.
    pub every: Duration,
}

impl Injector {
    /// Injects faults until `until`; every kind comes round once in each shuffled cycle, so
    /// even a short run has them all.
    pub async fn run(&self, seed: u64, until: tokio::time::Instant) -> Result<(), String> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut cycle: Vec<&str> = Vec::new();
        loop {
            let wait = self.every.mul_f64(rng.random_range(0.5..1.5));
            if tokio::time::Instant::now() + wait >= until {
                return Ok(());
            }
            tokio::time::sleep(wait).await;
            if cycle.is_empty() {
                cycle = KINDS.to_vec();
                cycle.shuffle(&mut rng);
            }
            let kind = cycle.pop().expect("a kind");
            let node = rng.random_range(0..self.nodes.len());
            let start_ms = now_ms();
            eprintln!("chaos: fault {kind} (node {node})");
            match kind {
                "kill9" => {
                    let mut n = self.nodes[node].lock().await;
                    n.kill();
                    tokio::time::sleep(Duration::from_millis(rng.random_range(100..2000))).await;
                    n.start(&self.http).await?;
                }
                "pg_restart" => {
                    let cluster = self.cluster.clone();
                    tokio::task::spawn_blocking(move || {
                        cluster.lock().expect("cluster").restart_immediate()
                    })
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("pg_ctl restart: {e}"))?;
                }
                "pg_terminate" => {
                    // The admin pool's own connection may be one PostgreSQL just dropped.
                    for _ in 0..10 {
                        let done = sqlx::query(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                             WHERE application_name = $1",
                        )
                        .bind(application_name(node))
                        .execute(&self.admin_pool)
                        .await;
                        if done.is_ok() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                _ => {
                    self.nodes[node].lock().await.pause();
                    tokio::time::sleep(Duration::from_millis(rng.random_range(500..4000))).await;
                    self.nodes[node].lock().await.resume();
                }
            }
            self.recorder.fault(Fault {
                kind: kind.to_owned(),
                node: (kind != "pg_restart").then_some(node),
                start_ms,
                end_ms: now_ms(),
            });
        }
    }
}
