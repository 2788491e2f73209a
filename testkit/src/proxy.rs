//! A proxy in front of PostgreSQL that loses a reply: the one fault a test cannot time with
//! the real server alone, the connection dying after a statement committed and before its
//! answer reached the client (a crash or a network cut at the wrong moment). The statement
//! runs and commits on the real server; the client only sees its connection close.
//!
//! It reads the wire protocol's messages (no TLS: the URL it hands out says
//! `sslmode=disable`). Armed with a piece of SQL text, it watches for the `Parse` message
//! that prepares a statement containing it, lets that statement's `Execute` through, drops
//! every message the server sends back until its `ReadyForQuery` (sent once the implicit
//! transaction committed), and then closes both sides.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use sqlx::postgres::PgConnectOptions;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::task::JoinHandle;

pub struct LosingProxy {
    /// The database's URL, through the proxy.
    pub url: String,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

#[derive(Default)]
struct Shared {
    /// SQL text whose next execution loses its reply.
    armed: Mutex<Option<String>>,
    lost: AtomicU32,
}

/// Where the real server listens.
#[derive(Clone)]
enum Upstream {
    Tcp(String),
    Unix(std::path::PathBuf),
}

impl LosingProxy {
    /// A proxy on a free local port for the database `url` names.
    pub async fn start(url: &str) -> Self {
        let options: PgConnectOptions = url.parse().expect("a PostgreSQL URL");
        let host = options.get_host().to_owned();
        let port = options.get_port();
        let upstream = match options.get_socket() {
            Some(dir) => Upstream::Unix(dir.join(format!(".s.PGSQL.{port}"))),
            None if host.starts_with('/') => {
                Upstream::Unix(std::path::Path::new(&host).join(format!(".s.PGSQL.{port}")))
            }
            None => Upstream::Tcp(format!("{host}:{port}")),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let local = listener.local_addr().expect("the proxy's address");
        // The same user, password and database, at the proxy, without TLS.
        let mut proxied = reqwest::Url::parse(url).expect("a URL");
        proxied.set_host(Some("127.0.0.1")).expect("a host");
        proxied.set_port(Some(local.port())).expect("a port");
        proxied.set_query(Some("sslmode=disable"));
        let url = proxied.to_string();
        let shared = Arc::new(Shared::default());
        let accepting = shared.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let shared = accepting.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let _ = client.set_nodelay(true);
                    match upstream {
                        Upstream::Tcp(address) => {
                            if let Ok(server) = TcpStream::connect(address).await {
                                relay(client, server, shared).await;
                            }
                        }
                        Upstream::Unix(path) => {
                            if let Ok(server) = UnixStream::connect(path).await {
                                relay(client, server, shared).await;
                            }
                        }
                    }
                });
            }
        });
        Self {
            url,
            shared,
            accept,
        }
    }

    /// The next statement prepared with `sql` in its text (on a connection that has not
    /// prepared it yet) runs and commits, and its connection closes before the reply.
    pub fn lose_reply_to(&self, sql: &str) {
        *self.shared.armed.lock().expect("armed") = Some(sql.to_owned());
    }

    /// How many replies were lost so far.
    pub fn replies_lost(&self) -> u32 {
        self.shared.lost.load(Ordering::Relaxed)
    }
}

impl Drop for LosingProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// One client connection: messages both ways until either side closes, or until a lost
/// reply closes both.
async fn relay<S>(client: TcpStream, server: S, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = tokio::io::split(server);
    let cut = Arc::new(AtomicBool::new(false));
    let upward = to_server(client_read, server_write, shared.clone(), cut.clone());
    let downward = to_client(server_read, client_write, shared, cut);
    // Whichever side ends first ends the connection: the halves are dropped, both sockets
    // close.
    tokio::select! {
        _ = upward => {}
        _ = downward => {}
    }
}

/// Client to server: the startup message, then typed messages. Marks the connection cut
/// when the armed statement is executed.
async fn to_server(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    shared: Arc<Shared>,
    cut: Arc<AtomicBool>,
) -> std::io::Result<()> {
    // The startup message has no type byte: a length (itself included), then the rest.
    let length = from.read_u32().await?;
    let mut startup = vec![0; (length as usize).saturating_sub(4)];
    from.read_exact(&mut startup).await?;
    to.write_u32(length).await?;
    to.write_all(&startup).await?;
    let mut watching = false;
    loop {
        let (kind, body) = read_message(&mut from).await?;
        if kind == b'P' {
            let mut armed = shared.armed.lock().expect("armed");
            if let Some(sql) = armed.as_deref() {
                if find(&body, sql.as_bytes()) {
                    *armed = None;
                    watching = true;
                }
            }
        }
        if kind == b'E' && watching {
            watching = false;
            cut.store(true, Ordering::SeqCst);
        }
        write_message(&mut to, kind, &body).await?;
    }
}

/// Server to client: typed messages, except after a cut, when they are dropped until the
/// `ReadyForQuery` that follows the commit; then the connection ends.
async fn to_client(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    shared: Arc<Shared>,
    cut: Arc<AtomicBool>,
) -> std::io::Result<()> {
    loop {
        let (kind, body) = read_message(&mut from).await?;
        if cut.load(Ordering::SeqCst) {
            if kind == b'Z' {
                shared.lost.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            continue;
        }
        write_message(&mut to, kind, &body).await?;
    }
}

async fn read_message(from: &mut (impl AsyncRead + Unpin)) -> std::io::Result<(u8, Vec<u8>)> {
    let kind = from.read_u8().await?;
    let length = from.read_u32().await?;
    let mut body = vec![0; (length as usize).saturating_sub(4)];
    from.read_exact(&mut body).await?;
    Ok((kind, body))
}

async fn write_message(
    to: &mut (impl AsyncWrite + Unpin),
    kind: u8,
    body: &[u8],
) -> std::io::Result<()> {
    to.write_u8(kind).await?;
    to.write_u32(body.len() as u32 + 4).await?;
    to.write_all(body).await?;
    to.flush().await
}

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
