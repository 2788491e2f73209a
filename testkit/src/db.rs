use sqlx::PgPool;
use tombola::store::Store;

/// A fresh migrated database, and the URL to connect more nodes to it. The database is
/// dropped with this value, whether the test passed or panicked.
pub struct TestDb {
    pub store: Store,
    pub url: String,
    guard: DatabaseGuard,
}

impl TestDb {
    pub async fn new(max_connections: u32) -> Self {
        crate::init_logging();
        let (store, url) = tombola::testing::fresh_database(max_connections)
            .await
            .expect("a fresh test database (is PostgreSQL running? see DATABASE_URL)");
        Self {
            store,
            guard: DatabaseGuard {
                url: url.clone(),
                armed: true,
            },
            url,
        }
    }

    /// Another connection pool on the same database: another "node".
    pub async fn connect(&self, max_connections: u32) -> Store {
        Store::connect(&self.url, max_connections)
            .await
            .expect("connect to the test database")
    }

    pub fn pool(&self) -> &PgPool {
        self.store.pool()
    }

    /// Closes this handle's pool and drops the database (other pools are cut off).
    pub async fn drop_database(self) {
        self.store.pool().close().await;
        self.guard.drop_database().await;
    }

    /// Makes the database unreachable, as a PostgreSQL restart does: every connection to it
    /// is cut and new ones are refused until [`Self::end_outage`]. Other tests' databases
    /// on the same server are untouched.
    pub async fn start_outage(&self) {
        self.admin(&format!(
            "ALTER DATABASE {name} ALLOW_CONNECTIONS false; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'",
            name = self.name()
        ))
        .await;
    }

    /// Lets connections in again after [`Self::start_outage`].
    pub async fn end_outage(&self) {
        self.admin(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS true",
            self.name()
        ))
        .await;
    }

    fn name(&self) -> String {
        use std::str::FromStr;
        sqlx::postgres::PgConnectOptions::from_str(&self.url)
            .ok()
            .and_then(|options| options.get_database().map(str::to_owned))
            .expect("the test database's url names it")
    }

    /// Runs `sql` on the server's maintenance database (not this one: it may be unreachable).
    async fn admin(&self, sql: &str) {
        use sqlx::{ConnectOptions, Executor};
        use std::str::FromStr;
        let mut admin = sqlx::postgres::PgConnectOptions::from_str(&self.url)
            .expect("a valid url")
            .database("postgres")
            .connect()
            .await
            .expect("connect to the maintenance database");
        admin.execute(sql).await.expect("the admin statement runs");
    }

    /// Lets this handle's pool go and keeps only the database's guard: for a test that
    /// outlives the runtime the pool was made on (a node that crashes with its runtime).
    pub fn into_guard(self) -> DatabaseGuard {
        self.guard
    }
}

/// Drops its database when dropped (or when told to).
pub struct DatabaseGuard {
    url: String,
    armed: bool,
}

impl DatabaseGuard {
    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn drop_database(mut self) {
        self.armed = false;
        drop_database(&self.url).await;
    }
}

impl Drop for DatabaseGuard {
    /// A test that panicked (or returned early) still drops its database. Drop cannot await
    /// and the test's runtime may be going down: a thread with a runtime of its own does it.
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let url = self.url.clone();
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to drop the test database")
                .block_on(tombola::testing::drop_database(&url))
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) && !std::thread::panicking() {
            panic!("could not drop the test database {}", self.url);
        }
    }
}

/// Drops the database `url` names, terminating whatever is still connected to it.
pub async fn drop_database(url: &str) {
    tombola::testing::drop_database(url)
        .await
        .expect("drop the test database");
}
