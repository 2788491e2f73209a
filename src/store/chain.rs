//! The per-stream hash chain that lets `tombola audit verify` prove the log was not edited.
//!
//! Canonical encoding, version 1 (frozen: changing it would break every stored chain):
//!
//! ```text
//! hash = hex(SHA-256(
//!     "tombola-chain-v1" LF prev_hash LF aggregate_type LF aggregate_id LF sequence LF
//!     event_type LF event_version LF payload LF metadata))
//! ```
//!
//! where LF is one 0x0A byte, `sequence` is decimal ASCII, `payload` is the exact JSON text
//! stored in `events.payload` (a `json` column keeps it byte for byte), and `metadata` is the
//! compact JSON of every metadata field except `hash`, keys sorted (serde_json's escaping).
//! None of the parts can hold a raw LF (compact JSON escapes it). The first event's
//! `prev_hash` is [`GENESIS`].

use sha2::{Digest, Sha256};

use super::metadata::EventMetadata;

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

pub struct ChainInput<'a> {
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub sequence: u64,
    pub event_type: &'a str,
    pub event_version: &'a str,
    pub payload: &'a str,
}

pub fn event_hash(input: &ChainInput<'_>, metadata: &EventMetadata) -> String {
    let chained = metadata.chained_json();
    let mut hasher = Sha256::new();
    for part in [
        "tombola-chain-v1",
        &metadata.prev_hash,
        input.aggregate_type,
        input.aggregate_id,
        &input.sequence.to_string(),
        input.event_type,
        input.event_version,
        input.payload,
    ] {
        hasher.update(part.as_bytes());
        hasher.update(b"\n");
    }
    hasher.update(chained.as_bytes());
    hex::encode(hasher.finalize())
}
