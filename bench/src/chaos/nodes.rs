//! The `tombola serve` processes under test: started, killed, paused and resumed by pid.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The Stripe endpoint secret every node accepts.
pub const SECRET: &str = "whsec_tombola_chaos";

pub struct Node {
    pub index: usize,
    pub port: u16,
    bin: PathBuf,
    database_url: String,
    log: PathBuf,
    child: Option<Child>,
    pub paused: bool,
    request_timeout_secs: u64,
}

impl Node {
    pub fn new(
        index: usize,
        port: u16,
        bin: &Path,
        cluster_url: &str,
        dir: &Path,
        request_timeout_secs: u64,
    ) -> Self {
        Self {
            request_timeout_secs,
            index,
            port,
            bin: bin.to_owned(),
            // Its own application_name: the harness cuts exactly this node's connections.
            database_url: format!("{cluster_url}&application_name={}", application_name(index)),
            log: dir.join(format!("node-{index}.log")),
            child: None,
            paused: false,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the process and waits until it answers `/readyz`.
    pub async fn start(&mut self, http: &reqwest::Client) -> Result<(), String> {
        // Another process on the port would answer /readyz in this node's place (and refuse
        // the harness's key): refuse to run rather than check a stranger.
        if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", self.port)) {
            return Err(format!("port {} is not free: {e}", self.port));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("node log: {e}"))?;
        let child = Command::new(&self.bin)
            .arg("serve")
            .env("DATABASE_URL", &self.database_url)
            .env("TOMBOLA_LISTEN", format!("127.0.0.1:{}", self.port))
            .env("TOMBOLA_STRIPE_WEBHOOK_SECRETS", SECRET)
            .env("TOMBOLA_DB_CONNECTIONS", "8")
            .env("TOMBOLA_RATE_LIMIT_PER_KEY", "1000000")
            .env("TOMBOLA_RATE_LIMIT_PER_IP", "1000000")
            .env(
                "TOMBOLA_REQUEST_TIMEOUT_SECS",
                self.request_timeout_secs.to_string(),
            )
            .env("RUST_LOG", "warn")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("SENTRY_DSN")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        self.paused = false;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "node {} exited at start ({status}); see {}",
                        self.index,
                        self.log.display()
                    ));
                }
            }
            let ready = http
                .get(format!("{}/readyz", self.base_url()))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            let alive = self
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
            if ready && alive {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("node {} not ready after 120 s", self.index));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: no shutdown, no flush, whatever was in flight is lost.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        self.resume();
        if let Some(child) = self.child.as_mut() {
            signal(child.id(), "TERM");
            let deadline = tokio::time::Instant::now() + grace;
            while tokio::time::Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    self.child = None;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.kill();
    }

    pub fn pause(&mut self) {
        if let Some(child) = &self.child {
            signal(child.id(), "STOP");
            self.paused = true;
        }
    }

    pub fn resume(&mut self) {
        if let (Some(child), true) = (&self.child, self.paused) {
            signal(child.id(), "CONT");
        }
        self.paused = false;
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}

pub fn application_name(index: usize) -> String {
    format!("chaos-node-{index}")
}

fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}
