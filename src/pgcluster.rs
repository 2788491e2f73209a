//! A private PostgreSQL cluster for when no `DATABASE_URL` is given: initialized under the
//! data directory with the PostgreSQL binaries installed on the machine, reachable only
//! through a Unix socket inside that directory (no port to collide with), and stopped on
//! exit by whoever started it.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "no DATABASE_URL is set and no PostgreSQL binaries were found (looked for pg_ctl on \
         PATH and under /usr/lib/postgresql/*/bin). Install PostgreSQL (Debian/Ubuntu: \
         `apt-get install postgresql`) or set DATABASE_URL=postgres://user@host:port/db"
    )]
    NoBinaries,
    #[error("running as root, the private cluster runs as the `postgres` system user, which does not exist; create it or set DATABASE_URL")]
    NoPostgresUser,
    #[error("{step} failed: {detail}")]
    Command { step: &'static str, detail: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What the private cluster changes from PostgreSQL's defaults, for an event store that
/// appends and acknowledges thousands of commits a second. Durability is untouched: every
/// commit still waits for its WAL flush. Written to `tombola.conf` in the data directory
/// (included from `postgresql.conf`) and reloaded into a running cluster, so a cluster an
/// older version started gets them too. For a server of your own: docs/OPERATIONS.md.
const SETTINGS: &[(&str, &str)] = &[
    // A checkpoint ends by fsyncing every file it wrote, and commits queue behind that for
    // 0.15–0.23 s on a shared disk. At 5,000 deliveries/s (~17 MB of WAL a second) the
    // default 1 GB started one every ~30 s; 4 GB, every ~2 minutes (longer crash recovery).
    ("max_wal_size", "4GB"),
    ("checkpoint_timeout", "15min"),
    // After a quiet spell PostgreSQL removes the segments it no longer expects to need; under
    // load again, each new one is zero-filled while commits wait (~40 ms per 16 MB of WAL).
    // This keeps up to 1 GB of them for reuse.
    ("min_wal_size", "1GB"),
];

/// The settings file, beside `postgresql.conf`.
const SETTINGS_FILE: &str = "tombola.conf";

/// Where root keeps clusters the `postgres` user could not reach beside the checkout.
const RELOCATED_ROOT: &str = "/var/lib/tombola";

/// Where sockets go whose path beside the data would be too long.
const SHORT_SOCKET_ROOT: &str = "/tmp";

/// The socket's file name at PostgreSQL's default port.
const SOCKET_FILE: &str = ".s.PGSQL.5432";

/// The longest Unix socket path the kernel takes (`sun_path` holds 108 bytes with the NUL).
const SOCKET_PATH_MAX: usize = 107;

pub struct PrivateCluster {
    data_dir: PathBuf,
    socket_dir: PathBuf,
    bin_dir: PathBuf,
    run_as: Option<String>,
    started_here: bool,
}

impl PrivateCluster {
    /// Initializes the cluster under `base/pgdata` if needed and starts it if it is not
    /// running. Several processes may call this at once: a lock file serializes them.
    ///
    /// As root, the cluster runs as `postgres`; when that user cannot reach `base` (a
    /// checkout under `/root` or a `mktemp -d` directory, both 0700), the data goes to
    /// [`RELOCATED_ROOT`] instead of opening the user's directories to it, and stderr says
    /// where. A socket whose path beside the data would pass the Unix limit (a deep
    /// checkout) goes to a private directory under [`SHORT_SOCKET_ROOT`].
    pub fn ensure(base: &Path) -> Result<Self, ClusterError> {
        let bin_dir = find_bin_dir().ok_or(ClusterError::NoBinaries)?;
        let run_as = if is_root() {
            if !command_ok(Command::new("id").arg("postgres")) {
                return Err(ClusterError::NoPostgresUser);
            }
            Some("postgres".to_owned())
        } else {
            None
        };
        std::fs::create_dir_all(base)?;
        let base = base.canonicalize()?;
        let lock = File::create(base.join("pgcluster.lock"))?;
        lock.lock()?;
        let data_dir = data_dir_for(&base, run_as.as_deref())?;
        let mut cluster = Self {
            socket_dir: socket_dir_for(&data_dir),
            data_dir,
            bin_dir,
            run_as,
            started_here: false,
        };
        if !cluster.data_dir.join("PG_VERSION").exists() {
            cluster.init()?;
        }
        cluster.prepare_socket_dir()?;
        let changed = cluster.write_settings()?;
        if !cluster.is_running() {
            cluster.start()?;
            cluster.started_here = true;
        } else if changed {
            run(
                "pg_ctl reload",
                cluster
                    .pg("pg_ctl")
                    .arg("-D")
                    .arg(&cluster.data_dir)
                    .arg("reload"),
            )?;
        }
        Ok(cluster)
    }

    /// Connection URL over the cluster's Unix socket.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@localhost/postgres?host={}",
            self.socket_dir.display()
        )
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Where the cluster's Unix socket lives.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// Leaves the cluster running after this process (tests share one across runs).
    pub fn keep_running(mut self) {
        self.started_here = false;
    }

    fn pg(&self, program: &str) -> Command {
        let binary = self.bin_dir.join(program);
        match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(binary);
                command
            }
            None => Command::new(binary),
        }
    }

    fn init(&self) -> Result<(), ClusterError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.data_dir)?;
        if let Some(user) = &self.run_as {
            run(
                "chown",
                Command::new("chown").args(["-R", user]).arg(&self.data_dir),
            )?;
        }
        run(
            "initdb",
            self.pg("initdb").arg("-D").arg(&self.data_dir).args([
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
            ]),
        )
    }

    /// Writes [`SETTINGS`] and includes them from `postgresql.conf`; returns whether anything
    /// changed on disk.
    fn write_settings(&self) -> Result<bool, ClusterError> {
        let mut wanted =
            String::from("# Written by tombola on every start; edits are overwritten.\n");
        for (name, value) in SETTINGS {
            wanted.push_str(&format!("{name} = '{value}'\n"));
        }
        let file = self.data_dir.join(SETTINGS_FILE);
        let mut changed = false;
        if std::fs::read_to_string(&file).ok().as_deref() != Some(wanted.as_str()) {
            std::fs::write(&file, wanted)?;
            if let Some(user) = &self.run_as {
                run("chown", Command::new("chown").arg(user).arg(&file))?;
            }
            changed = true;
        }
        let main = self.data_dir.join("postgresql.conf");
        let include = format!("include_if_exists = '{SETTINGS_FILE}'");
        let config = std::fs::read_to_string(&main)?;
        if !config.lines().any(|line| line.trim() == include) {
            let mut file = std::fs::OpenOptions::new().append(true).open(&main)?;
            std::io::Write::write_all(&mut file, format!("\n{include}\n").as_bytes())?;
            changed = true;
        }
        Ok(changed)
    }

    /// A socket directory apart from the data must belong to the cluster's user and be
    /// closed to everyone else: in a shared directory like `/tmp`, one that someone else
    /// made first is refused rather than used.
    fn prepare_socket_dir(&self) -> Result<(), ClusterError> {
        if self.socket_dir == self.data_dir {
            return Ok(());
        }
        let owner = std::fs::metadata(&self.data_dir)?;
        match std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&self.socket_dir)
        {
            Ok(()) => {
                std::os::unix::fs::chown(&self.socket_dir, Some(owner.uid()), Some(owner.gid()))?
            }
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(error.into()),
        }
        let found = std::fs::symlink_metadata(&self.socket_dir)?;
        if !found.is_dir() || found.uid() != owner.uid() || found.mode() & 0o077 != 0 {
            return Err(ClusterError::Command {
                step: "socket directory",
                detail: format!(
                    "{} exists but is not a private directory of the cluster's owner; \
                     remove it or use a shorter TOMBOLA_DATA_DIR",
                    self.socket_dir.display()
                ),
            });
        }
        Ok(())
    }

    fn is_running(&self) -> bool {
        command_ok(
            self.pg("pg_ctl")
                .arg("-D")
                .arg(&self.data_dir)
                .arg("status"),
        )
    }

    /// Socket only (no TCP port to collide with), room for several nodes' pools.
    fn server_options(&self) -> String {
        format!(
            "-c listen_addresses='' -c unix_socket_directories='{}' -c max_connections=200",
            self.socket_dir.display()
        )
    }

    fn start(&self) -> Result<(), ClusterError> {
        let options = self.server_options();
        run(
            "pg_ctl start",
            self.pg("pg_ctl")
                .arg("-D")
                .arg(&self.data_dir)
                .arg("-l")
                .arg(self.data_dir.join("server.log"))
                .args(["-w", "-t", "60", "-o", &options, "start"]),
        )
    }

    /// `pg_ctl restart -m immediate`: the server stops without a checkpoint, as after a
    /// crash, and starts again through crash recovery (the chaos harness's database fault).
    pub fn restart_immediate(&self) -> Result<(), ClusterError> {
        let options = self.server_options();
        run(
            "pg_ctl restart",
            self.pg("pg_ctl")
                .arg("-D")
                .arg(&self.data_dir)
                .arg("-l")
                .arg(self.data_dir.join("server.log"))
                .args([
                    "-m",
                    "immediate",
                    "-w",
                    "-t",
                    "120",
                    "-o",
                    &options,
                    "restart",
                ]),
        )
    }

    pub fn stop(&mut self) {
        if self.started_here {
            self.started_here = false;
            let _ = run(
                "pg_ctl stop",
                self.pg("pg_ctl")
                    .arg("-D")
                    .arg(&self.data_dir)
                    .args(["-m", "fast", "-w", "stop"]),
            );
        }
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `base/pgdata`, unless `user` (the one the cluster runs as) cannot reach `base` and has no
/// cluster there already: then a directory of its own under [`RELOCATED_ROOT`], named after
/// `base` so that every command run from the same checkout finds the same cluster.
fn data_dir_for(base: &Path, user: Option<&str>) -> Result<PathBuf, ClusterError> {
    let beside = base.join("pgdata");
    let Some(user) = user else {
        return Ok(beside);
    };
    let relocated = Path::new(RELOCATED_ROOT).join(format!("pgdata-{}", path_key(base)));
    if relocated.join("PG_VERSION").exists() {
        return Ok(relocated);
    }
    // access(2) as that user: X_OK on `base` needs search permission on every parent too.
    if command_ok(
        Command::new("runuser")
            .args(["-u", user, "--", "test", "-x"])
            .arg(base),
    ) {
        return Ok(beside);
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(RELOCATED_ROOT)?;
    eprintln!(
        "tombola: the `{user}` user cannot reach {}; the private cluster lives in {} instead",
        base.display(),
        relocated.display()
    );
    Ok(relocated)
}

/// The data directory itself, unless a socket there would pass the Unix limit: then a
/// private directory under [`SHORT_SOCKET_ROOT`], named after the data directory.
fn socket_dir_for(data_dir: &Path) -> PathBuf {
    if data_dir.join(SOCKET_FILE).as_os_str().len() <= SOCKET_PATH_MAX {
        data_dir.to_owned()
    } else {
        Path::new(SHORT_SOCKET_ROOT).join(format!("tombola-{}", path_key(data_dir)))
    }
}

/// A short, stable name for a path.
fn path_key(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(path.as_os_str().as_encoded_bytes());
    hex::encode(&digest[..8])
}

fn find_bin_dir() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("pg_ctl").is_file() && dir.join("initdb").is_file() {
                return Some(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("pg_ctl").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn command_ok(command: &mut Command) -> bool {
    command
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn run(step: &'static str, command: &mut Command) -> Result<(), ClusterError> {
    let output = command.output().map_err(|e| ClusterError::Command {
        step,
        detail: e.to_string(),
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(ClusterError::Command {
            step,
            detail: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        })
    }
}
