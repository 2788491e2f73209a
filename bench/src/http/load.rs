//! A closed-loop load generator: N buyers, each on its own HTTP/1.1 keep-alive connection,
//! each sending its next request as soon as the last one is answered, for a bounded time.
//!
//! Bare hyper connections rather than a pooled client: the generator shares two cores with
//! the server and PostgreSQL, and reqwest cost about 60 µs of CPU per request here (see the
//! webhooks bench). Latency is from just before the request is written to the end of the
//! answer's body.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::Method;

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// One buyer's connection to a server (reopened after a failure).
pub struct Conn {
    authority: Arc<str>,
    host: HeaderValue,
    auth: Option<HeaderValue>,
    sender: Option<Sender>,
}

impl Conn {
    pub async fn open(authority: &str, key: Option<&str>) -> Result<Self, String> {
        let mut conn = Self {
            authority: authority.into(),
            host: HeaderValue::from_str(authority).map_err(|e| e.to_string())?,
            auth: key
                .map(|k| HeaderValue::from_str(&format!("Bearer {k}")))
                .transpose()
                .map_err(|e| e.to_string())?,
            sender: None,
        };
        conn.connect().await?;
        Ok(conn)
    }

    async fn connect(&mut self) -> Result<(), String> {
        let stream = tokio::net::TcpStream::connect(self.authority.as_ref())
            .await
            .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        self.sender = Some(sender);
        Ok(())
    }

    /// Sends one request and reads the whole answer. A transport error is status 0.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        extra: Option<(&'static str, HeaderValue)>,
    ) -> (u16, Bytes) {
        match self.try_send(method, path, body, extra).await {
            Ok(answer) => answer,
            Err(_) => {
                self.sender = None;
                (0, Bytes::new())
            }
        }
    }

    async fn try_send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        extra: Option<(&'static str, HeaderValue)>,
    ) -> Result<(u16, Bytes), String> {
        if self.sender.is_none() {
            self.connect().await?;
        }
        let sender = self.sender.as_mut().expect("connected above");
        sender.ready().await.map_err(|e| e.to_string())?;
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.host.clone());
        if let Some(auth) = &self.auth {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        if let Some((name, value)) = extra {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }
}

/// What one buyer measured: latencies (µs) and answers by status, per kind of request.
/// Only requests started inside the measured window count.
#[derive(Default)]
pub struct Tally {
    measuring: bool,
    pub latencies: BTreeMap<&'static str, Vec<u32>>,
    pub statuses: BTreeMap<&'static str, BTreeMap<u16, u64>>,
    /// Every answer by kind and status, warm-up included: what is held against the log.
    pub all_statuses: BTreeMap<&'static str, BTreeMap<u16, u64>>,
}

impl Tally {
    /// Times `request` and records it under `kind` (when measuring); returns its answer.
    pub async fn time(
        &mut self,
        kind: &'static str,
        request: impl Future<Output = (u16, Bytes)>,
    ) -> (u16, Bytes) {
        let measuring = self.measuring;
        let started = Instant::now();
        let (status, body) = request.await;
        *self
            .all_statuses
            .entry(kind)
            .or_default()
            .entry(status)
            .or_default() += 1;
        if measuring {
            let micros = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
            self.latencies.entry(kind).or_default().push(micros);
            *self
                .statuses
                .entry(kind)
                .or_default()
                .entry(status)
                .or_default() += 1;
        }
        (status, body)
    }

    fn merge(&mut self, other: Tally) {
        for (kind, latencies) in other.latencies {
            self.latencies.entry(kind).or_default().extend(latencies);
        }
        for (mine, theirs) in [
            (&mut self.statuses, other.statuses),
            (&mut self.all_statuses, other.all_statuses),
        ] {
            for (kind, statuses) in theirs {
                let mine = mine.entry(kind).or_default();
                for (status, count) in statuses {
                    *mine.entry(status).or_default() += count;
                }
            }
        }
    }

    /// Answers of `kind` with `status`, warm-up included.
    pub fn all_with(&self, kind: &str, status: u16) -> u64 {
        self.all_statuses
            .get(kind)
            .and_then(|s| s.get(&status))
            .copied()
            .unwrap_or(0)
    }

    /// Answers of `kind` whose outcome the buyer cannot know (transport errors, 5xx),
    /// warm-up included.
    pub fn all_lost(&self, kind: &str) -> u64 {
        self.all_statuses.get(kind).map_or(0, |s| {
            s.iter()
                .filter(|(status, _)| **status == 0 || **status >= 500)
                .map(|(_, count)| count)
                .sum()
        })
    }

    /// Answers of `kind` with a 2xx status.
    pub fn ok(&self, kind: &str) -> u64 {
        self.statuses.get(kind).map_or(0, |s| {
            s.iter()
                .filter(|(status, _)| (200..300).contains(*status))
                .map(|(_, count)| count)
                .sum()
        })
    }

    /// Answers of `kind` that were not 2xx, by status ("0" = transport error).
    pub fn errors(&self, kind: &str) -> BTreeMap<String, u64> {
        self.statuses.get(kind).map_or_else(BTreeMap::new, |s| {
            s.iter()
                .filter(|(status, _)| !(200..300).contains(*status))
                .map(|(status, count)| (status.to_string(), *count))
                .collect()
        })
    }

    /// Latencies of `kind`, sorted (µs).
    pub fn sorted(&mut self, kind: &str) -> &[u32] {
        match self.latencies.get_mut(kind) {
            Some(latencies) => {
                latencies.sort_unstable();
                latencies
            }
            None => &[],
        }
    }
}

/// One simulated client: what it does next, on its connection.
pub trait Buyer: Send + 'static {
    fn step(&mut self, conn: &mut Conn, tally: &mut Tally) -> impl Future<Output = ()> + Send;
}

/// The figures of one window.
pub struct Outcome {
    pub tally: Tally,
    pub measured: Duration,
}

/// Runs every buyer on its own connection: `warmup` unmeasured, then `measured`; returns
/// when every buyer has finished the step it was in when time ran out.
pub async fn drive<B: Buyer>(
    authority: &str,
    key: Option<&str>,
    buyers: Vec<B>,
    warmup: Duration,
    measured: Duration,
) -> Result<Outcome, String> {
    let mut conns = Vec::with_capacity(buyers.len());
    for _ in 0..buyers.len() {
        conns.push(Conn::open(authority, key).await?);
    }
    let start = Instant::now();
    let measure_from = start + warmup;
    let stop_at = measure_from + measured;
    let mut tasks = Vec::with_capacity(buyers.len());
    for (mut buyer, mut conn) in buyers.into_iter().zip(conns) {
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            loop {
                let now = Instant::now();
                if now >= stop_at {
                    break;
                }
                tally.measuring = now >= measure_from;
                buyer.step(&mut conn, &mut tally).await;
            }
            tally
        }));
    }
    let mut total = Tally::default();
    for task in tasks {
        total.merge(task.await.map_err(|e| e.to_string())?);
    }
    // Requests started before the end count, so the window is until the last one answered.
    let measured = measure_from.elapsed().max(measured);
    Ok(Outcome {
        tally: total,
        measured,
    })
}
