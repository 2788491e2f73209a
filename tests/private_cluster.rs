//! The private PostgreSQL cluster (`tombola serve` without `DATABASE_URL`), started for real:
//! from a checkout in a private (0700) directory, as root in a container clones into one, and
//! from a checkout deep enough that a socket beside the data would pass the Unix limit.
//!
//! CI always sets `DATABASE_URL`, so only these tests exercise this path. Each cluster is
//! stopped and its directories removed, even when the test fails.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sqlx::Connection;
use tombola::pgcluster::PrivateCluster;

/// The longest Unix socket path the kernel takes (`sun_path` holds 108 bytes with the NUL).
const SOCKET_PATH_MAX: usize = 107;

/// A directory like `mktemp -d` makes (mode 0700), holding a checkout, and the clusters
/// started under it: stopped and removed on drop, wherever they ended up.
struct Sandbox {
    root: PathBuf,
    clusters: Vec<PrivateCluster>,
}

impl Sandbox {
    fn new(mode: u32) -> Self {
        let root = std::env::temp_dir().join(format!("tombola-cluster-{}", uuid::Uuid::new_v4()));
        std::fs::DirBuilder::new()
            .mode(mode)
            .create(&root)
            .expect("create the sandbox");
        // The umask may have taken bits away; the mode is the point of the test.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(mode))
            .expect("set the sandbox's mode");
        Self {
            root,
            clusters: Vec::new(),
        }
    }

    /// Starts (or joins) the private cluster of the data directory `base`, as `tombola
    /// serve` does, and checks that it answers a query.
    async fn cluster(&mut self, base: &Path) -> String {
        let dir = base.to_owned();
        let cluster = tokio::task::spawn_blocking(move || PrivateCluster::ensure(&dir))
            .await
            .expect("ensure ran")
            .unwrap_or_else(|e| panic!("the private cluster for {}: {e}", base.display()));
        let url = cluster.url();
        self.clusters.push(cluster);
        let mut connection = sqlx::PgConnection::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut connection)
            .await
            .expect("the cluster answers");
        assert_eq!(one, 1);
        connection.close().await.expect("close");
        url
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for mut cluster in self.clusters.drain(..) {
            cluster.stop();
            for dir in [cluster.data_dir(), cluster.socket_dir()] {
                if !dir.starts_with(&self.root) {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
            // Where root keeps relocated clusters, if this made it and nothing else is there.
            if !cluster.data_dir().starts_with(&self.root) {
                if let Some(parent) = cluster.data_dir().parent() {
                    let _ = std::fs::remove_dir(parent);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[tokio::test]
async fn a_checkout_in_a_private_directory_gets_a_running_cluster() {
    let mut sandbox = Sandbox::new(0o700);
    let base = sandbox.root.join("tombola").join(".tombola");

    let url = sandbox.cluster(&base).await;

    // A second process (another `tombola` command, the next test run) finds the same one.
    let again = sandbox.cluster(&base).await;
    assert_eq!(again, url);
}

#[tokio::test]
async fn a_deep_checkout_keeps_its_socket_under_the_unix_limit() {
    let mut sandbox = Sandbox::new(0o755);
    let deep = "a-directory-name-that-is-long".repeat(2);
    let base = sandbox.root.join(&deep).join(&deep).join(".tombola");
    assert!(base.join("pgdata/.s.PGSQL.5432").as_os_str().len() > SOCKET_PATH_MAX);

    sandbox.cluster(&base).await;

    let cluster = sandbox.clusters.last().expect("a cluster");
    let socket = cluster.socket_dir().join(".s.PGSQL.5432");
    assert!(
        socket.as_os_str().len() <= SOCKET_PATH_MAX,
        "{} is longer than {SOCKET_PATH_MAX} bytes",
        socket.display()
    );
}
