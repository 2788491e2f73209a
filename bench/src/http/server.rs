//! The real server: the `tombola` binary built next to this one (`cargo build --release -p
//! tombola --bin tombola` for measured runs), started as `tombola serve` on a fresh database
//! and a port of the bench's range, with rate limits raised so that they only cost their
//! bookkeeping, never refuse. Its logs go to a file under the temp directory.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tombola::api::auth::{Keys, Role};
use tombola::store::Store;

pub const WEBHOOK_SECRET: &str = "whsec_bench_secret";

pub struct Server {
    child: Child,
    pub base: String,
    pub authority: String,
    /// An admin key.
    pub key: String,
    pub store: Store,
    pub database_url: String,
    /// From spawning the process to `/readyz` answering 200.
    pub ready_after: Duration,
}

/// Extra settings for one run, as `tombola serve` environment variables.
pub type Env<'a> = &'a [(&'a str, String)];

impl Server {
    /// A fresh database and a server on it.
    pub async fn start(env: Env<'_>) -> Result<Self, String> {
        let (store, database_url) = crate::database::fresh(8).await?;
        Self::start_on(store, database_url, env).await
    }

    /// A server on an existing (migrated) database.
    pub async fn start_on(
        store: Store,
        database_url: String,
        env: Env<'_>,
    ) -> Result<Self, String> {
        // `TOMBOLA_BENCH_SERVER` names another build (e.g. a copy kept for an A/B run).
        let binary = match std::env::var_os("TOMBOLA_BENCH_SERVER") {
            Some(path) => std::path::PathBuf::from(path),
            None => std::env::current_exe()
                .map_err(|e| e.to_string())?
                .with_file_name("tombola"),
        };
        if !binary.exists() {
            return Err(format!(
                "{} is missing: build it with the bench (cargo build --release -p tombola --bin tombola -p tombola-bench)",
                binary.display()
            ));
        }
        let key = Keys::create(&store, Role::Admin, None, Some("bench"))
            .await
            .map_err(|e| e.to_string())?;
        let port = super::free_port()?;
        let authority = format!("127.0.0.1:{port}");
        let log_path = std::env::temp_dir().join(format!("tombola-bench-server-{port}.log"));
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let started = Instant::now();
        let mut command = Command::new(&binary);
        command
            .arg("serve")
            .env("DATABASE_URL", &database_url)
            .env("TOMBOLA_LISTEN", &authority)
            .env("TOMBOLA_RATE_LIMIT_PER_KEY", "100000000")
            .env("TOMBOLA_RATE_LIMIT_PER_IP", "100000000")
            .env("TOMBOLA_QUEUE_CAPACITY", "65536")
            .env("TOMBOLA_REQUEST_TIMEOUT_SECS", "30")
            .env("TOMBOLA_STRIPE_WEBHOOK_SECRETS", WEBHOOK_SECRET)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (name, value) in env {
            command.env(name, value);
        }
        let child = command
            .spawn()
            .map_err(|e| format!("starting {}: {e}", binary.display()))?;
        let mut server = Self {
            child,
            base: format!("http://{authority}"),
            authority,
            key,
            store,
            database_url,
            ready_after: Duration::ZERO,
        };
        let client = reqwest::Client::new();
        let deadline = started + Duration::from_secs(120);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "tombola serve exited ({status}); see {}",
                    log_path.display()
                ));
            }
            let ready = client
                .get(format!("{}/readyz", server.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "tombola serve not ready after 120 s; see {}",
                    log_path.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.ready_after = started.elapsed();
        crate::report::phase(format!(
            "tombola serve ready on {} after {:.0} ms (log {})",
            server.base,
            server.ready_after.as_secs_f64() * 1e3,
            log_path.display()
        ));
        Ok(server)
    }

    /// The server process's resident set size.
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// CPU time the server process has used so far (user + system), in seconds.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        let after_name = stat.get(stat.rfind(')')? + 2..)?;
        let mut fields = after_name.split_whitespace().skip(11);
        let user: f64 = fields.next()?.parse().ok()?;
        let system: f64 = fields.next()?.parse().ok()?;
        Some((user + system) / 100.0)
    }

    /// Stops the process (SIGTERM, then SIGKILL after 10 s); the database stays.
    pub async fn stop_process(&mut self) {
        // Stopped already (`stop` after `stop_process`): its pid may be another's by now.
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the server and drops its database.
    pub async fn stop(mut self) -> Result<(), String> {
        self.stop_process().await;
        crate::database::discard(self.store.clone(), &self.database_url).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A run that stopped on an error must not leave a server behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
