//! The client-side record: every request the harness sent, with what it learned of its
//! outcome, and every fault it injected. One JSON object per line, written as the run goes,
//! read back by the checker.

use std::collections::BTreeMap;
use std::io::{BufRead, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What the client knows about a request once it has its answer (or none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A 2xx: the server acknowledged it.
    Ok,
    /// A final or retryable refusal the server promises changed nothing (4xx, 429, 503
    /// `overloaded`/`unavailable`), or a connection that was never established.
    Refused,
    /// No answer (time-out, reset, a node killed), `outcome_unknown`, or any other 5xx.
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Create,
    Open,
    Reserve,
    Release,
    ManualPayment,
    Refund,
    Close,
    Draw,
    /// A Stripe delivery: `payment_intent.succeeded`.
    StripeSucceeded,
    StripeFailed,
    StripeProcessing,
    StripeRefunded,
}

impl Kind {
    pub fn is_delivery(self) -> bool {
        matches!(
            self,
            Self::StripeSucceeded
                | Self::StripeFailed
                | Self::StripeProcessing
                | Self::StripeRefunded
        )
    }
}

/// One HTTP request. Retries of one logical operation share `op`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub op: u64,
    pub kind: Kind,
    pub node: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raffle: Option<Uuid>,
    /// The order named in the path, or the order a reservation answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<Uuid>,
    /// The numbers a reservation answered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub numbers: Vec<u32>,
    /// Sent as `X-Request-Id`; the events a command produces carry it in their metadata.
    pub request_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    pub outcome: Outcome,
    /// Unix milliseconds when the request was sent.
    pub at_ms: i64,
    /// Deliveries: the provider's event id and the payment it is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
    /// The client dropped this request on purpose before its answer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disconnected: bool,
}

/// A fault, from when it was injected until the system was whole again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fault {
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<usize>,
    pub start_ms: i64,
    pub end_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "line", rename_all = "snake_case")]
pub enum Line {
    Attempt(Attempt),
    Fault(Fault),
    /// Something the client saw that breaks a promise by itself (e.g. an idempotent replay
    /// answered with another order).
    ClientViolation {
        message: String,
    },
}

/// The record as the checker reads it.
#[derive(Debug, Default, Clone)]
pub struct Record {
    pub attempts: Vec<Attempt>,
    pub faults: Vec<Fault>,
    pub client_violations: Vec<String>,
}

impl Record {
    pub fn read(path: &Path) -> std::io::Result<Self> {
        let mut record = Self::default();
        let file = std::io::BufReader::new(std::fs::File::open(path)?);
        for line in file.lines() {
            let line = line?;
            match serde_json::from_str::<Line>(&line).map_err(std::io::Error::other)? {
                Line::Attempt(a) => record.attempts.push(a),
                Line::Fault(f) => record.faults.push(f),
                Line::ClientViolation { message } => record.client_violations.push(message),
            }
        }
        Ok(record)
    }
}

/// Appends lines to the record file and keeps the run's counters.
pub struct Recorder {
    out: Mutex<BufWriter<std::fs::File>>,
    pub operations: AtomicU64,
    pub acknowledged: AtomicU64,
    pub refused: AtomicU64,
    pub unknown: AtomicU64,
    faults: Mutex<BTreeMap<String, u64>>,
    next_op: AtomicU64,
}

impl Recorder {
    pub fn create(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            out: Mutex::new(BufWriter::new(std::fs::File::create(path)?)),
            operations: AtomicU64::new(0),
            acknowledged: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
            faults: Mutex::new(BTreeMap::new()),
            next_op: AtomicU64::new(1),
        })
    }

    pub fn next_op(&self) -> u64 {
        self.next_op.fetch_add(1, Ordering::Relaxed)
    }

    pub fn attempt(&self, attempt: Attempt) {
        self.operations.fetch_add(1, Ordering::Relaxed);
        match attempt.outcome {
            Outcome::Ok => &self.acknowledged,
            Outcome::Refused => &self.refused,
            Outcome::Unknown => &self.unknown,
        }
        .fetch_add(1, Ordering::Relaxed);
        if attempt.disconnected {
            self.count_fault("client_disconnect");
        }
        self.write(&Line::Attempt(attempt));
    }

    pub fn fault(&self, fault: Fault) {
        self.count_fault(&fault.kind);
        self.write(&Line::Fault(fault));
    }

    pub fn client_violation(&self, message: String) {
        eprintln!("chaos: client saw a violation: {message}");
        self.write(&Line::ClientViolation { message });
    }

    fn count_fault(&self, kind: &str) {
        *self
            .faults
            .lock()
            .expect("fault counters")
            .entry(kind.to_owned())
            .or_default() += 1;
    }

    pub fn faults(&self) -> BTreeMap<String, u64> {
        self.faults.lock().expect("fault counters").clone()
    }

    fn write(&self, line: &Line) {
        let mut out = self.out.lock().expect("record file");
        serde_json::to_writer(&mut *out, line).expect("record line serializes");
        out.write_all(b"\n").expect("record written");
    }

    pub fn flush(&self) -> std::io::Result<()> {
        self.out.lock().expect("record file").flush()
    }
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
