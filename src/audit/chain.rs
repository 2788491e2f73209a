//! `audit verify`: recomputes a raffle's hash chain from the stored text and reports the
//! first broken link, or the head when all is intact.
//!
//! The chain alone proves that no event was edited or removed *inside* the log; it cannot
//! see a tail that was cut off or rewritten with fresh hashes. An anchor — a head
//! `(sequence, hash)` printed earlier, or a buyer's receipt for their `TicketsIssued` event —
//! given back closes that gap: the log must still hold that exact event, and since every
//! later hash covers it, everything before it too.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use super::log::{LogReader, RawEvent};
use crate::store::chain::{event_hash, ChainInput, GENESIS};
use crate::store::{EventMetadata, RAFFLE_STREAM};

/// An event's position and chain hash: a head printed earlier, or a receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Anchor {
    pub sequence: u64,
    pub hash: String,
}

impl FromStr for Anchor {
    type Err = &'static str;

    /// `SEQ:HASH`, the form `audit verify` prints.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        const FORM: &str = "expected SEQUENCE:HASH (a positive sequence and 64 hex digits)";
        let (sequence, hash) = text.trim().split_once(':').ok_or(FORM)?;
        let sequence: u64 = sequence.parse().map_err(|_| FORM)?;
        let valid_hash = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
        if sequence == 0 || !valid_hash {
            return Err(FORM);
        }
        Ok(Self {
            sequence,
            hash: hash.to_ascii_lowercase(),
        })
    }
}

impl fmt::Display for Anchor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.sequence, self.hash)
    }
}

/// What the verification must also find in the log.
#[derive(Debug, Clone, Default)]
pub struct Expectations {
    /// Heads recorded earlier: the log must still hold each, unchanged.
    pub heads: Vec<Anchor>,
    /// Receipts of paid orders: like heads, and each must be a `TicketsIssued` event.
    pub receipts: Vec<Anchor>,
}

/// The first place where the log is not what it claims to be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChainBreak {
    /// Sequences run 1, 2, 3, … without holes: an event was removed (or the first is gone).
    Gap { expected: u64, found: u64 },
    /// The event's `prev_hash` is not the hash of the event before it.
    BrokenLink { sequence: u64 },
    /// The stored hash is not the hash of what is stored: the event was edited.
    HashMismatch { sequence: u64 },
    /// The metadata cannot be read at all.
    Unreadable { sequence: u64, reason: String },
    /// An anchor given back lies beyond the end of the log: the tail was cut off.
    AnchorMissing { sequence: u64 },
    /// The event at an anchor's sequence has another hash: the tail was rewritten.
    AnchorMismatch {
        sequence: u64,
        expected: String,
        found: String,
    },
    /// A receipt that does not point at a `TicketsIssued` event.
    NotAReceipt { sequence: u64, event_type: String },
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Gap { expected, found } => {
                write!(f, "event {expected} is missing (the next stored is {found})")
            }
            Self::BrokenLink { sequence } => {
                write!(f, "event {sequence} does not link to the event before it")
            }
            Self::HashMismatch { sequence } => {
                write!(f, "event {sequence} was changed after it was written")
            }
            Self::Unreadable { sequence, reason } => {
                write!(f, "event {sequence} has unreadable metadata: {reason}")
            }
            Self::AnchorMissing { sequence } => write!(
                f,
                "event {sequence} was recorded earlier but the log now ends before it"
            ),
            Self::AnchorMismatch {
                sequence,
                expected,
                found,
            } => write!(
                f,
                "event {sequence} was recorded earlier with hash {expected}, the log now has {found}"
            ),
            Self::NotAReceipt {
                sequence,
                event_type,
            } => write!(
                f,
                "event {sequence} is {event_type}, not the TicketsIssued of a receipt"
            ),
        }
    }
}

/// The outcome of verifying one raffle's stream.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChainReport {
    pub raffle_id: Uuid,
    /// The whole log (from `resume`, if given) was checked and every check held.
    pub intact: bool,
    /// Whether the verification reached the end of the log. `false`: its time budget ran out
    /// first; nothing is broken so far, and giving `head` back as `resume` goes on from it.
    pub complete: bool,
    /// Events whose link and hash were checked before the first break (all, if intact).
    pub events_verified: u64,
    /// The last event verified: record it, and give it back later to prove nothing after
    /// it was cut off or rewritten.
    pub head: Option<Anchor>,
    #[serde(rename = "break", skip_serializing_if = "Option::is_none")]
    pub broken: Option<ChainBreak>,
}

/// Checks the chain one event at a time, in sequence order.
pub(crate) struct ChainCheck<'a> {
    aggregate_id: String,
    expectations: &'a Expectations,
    prev: String,
    expected: u64,
    /// Resumed from an anchor: the first event's link was checked by the earlier run.
    link_checked: bool,
    checked: u64,
}

impl<'a> ChainCheck<'a> {
    pub(crate) fn new(raffle_id: Uuid, expectations: &'a Expectations) -> Self {
        Self {
            aggregate_id: raffle_id.to_string(),
            expectations,
            prev: GENESIS.to_owned(),
            expected: 1,
            link_checked: false,
            checked: 0,
        }
    }

    /// Goes on from `anchor`, a head an earlier (partial) verification printed: the event
    /// there must still have that hash (it is one of `expectations`' heads), and the chain
    /// is checked from it on.
    pub(crate) fn resume(raffle_id: Uuid, expectations: &'a Expectations, anchor: &Anchor) -> Self {
        Self {
            expected: anchor.sequence,
            link_checked: true,
            ..Self::new(raffle_id, expectations)
        }
    }

    pub(crate) fn push(&mut self, event: &RawEvent) -> Result<(), ChainBreak> {
        let sequence = event.sequence;
        if sequence != self.expected {
            return Err(ChainBreak::Gap {
                expected: self.expected,
                found: sequence,
            });
        }
        let metadata = EventMetadata::from_json(&event.metadata)
            .map_err(|reason| ChainBreak::Unreadable { sequence, reason })?;
        if !std::mem::take(&mut self.link_checked) && metadata.prev_hash != self.prev {
            return Err(ChainBreak::BrokenLink { sequence });
        }
        let input = ChainInput {
            aggregate_type: RAFFLE_STREAM,
            aggregate_id: &self.aggregate_id,
            sequence,
            event_type: &event.event_type,
            event_version: &event.event_version,
            payload: &event.payload,
        };
        if event_hash(&input, &metadata) != metadata.hash {
            return Err(ChainBreak::HashMismatch { sequence });
        }
        let anchored = self.expectations.heads.iter().map(|a| (a, false));
        let receipts = self.expectations.receipts.iter().map(|a| (a, true));
        for (anchor, receipt) in anchored.chain(receipts) {
            if anchor.sequence != sequence {
                continue;
            }
            if anchor.hash != metadata.hash {
                return Err(ChainBreak::AnchorMismatch {
                    sequence,
                    expected: anchor.hash.clone(),
                    found: metadata.hash,
                });
            }
            if receipt && event.event_type != "TicketsIssued" {
                return Err(ChainBreak::NotAReceipt {
                    sequence,
                    event_type: event.event_type.clone(),
                });
            }
        }
        self.prev = metadata.hash;
        self.expected += 1;
        self.checked += 1;
        Ok(())
    }

    /// After the last event: every anchor must have been met.
    pub(crate) fn finish(&self) -> Result<(), ChainBreak> {
        let last = self.expected - 1;
        let beyond = (self.expectations.heads.iter())
            .chain(&self.expectations.receipts)
            .map(|anchor| anchor.sequence)
            .filter(|&sequence| sequence > last)
            .min();
        match beyond {
            Some(sequence) => Err(ChainBreak::AnchorMissing { sequence }),
            None => Ok(()),
        }
    }

    fn head(&self) -> Option<Anchor> {
        (self.checked > 0).then(|| Anchor {
            sequence: self.expected - 1,
            hash: self.prev.clone(),
        })
    }
}

/// A paid order's receipt: the position and hash of its `TicketsIssued` event.
pub async fn receipt_of(
    pool: &PgPool,
    raffle_id: Uuid,
    order_id: Uuid,
) -> Result<Option<Anchor>, sqlx::Error> {
    let row: Option<(i64, String)> = sqlx::query_as(
        "SELECT sequence, metadata->>'hash' FROM events WHERE order_id = $1 \
         AND aggregate_type = $2 AND aggregate_id = $3 AND event_type = 'TicketsIssued'",
    )
    .bind(order_id)
    .bind(RAFFLE_STREAM)
    .bind(raffle_id.to_string())
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(sequence, hash)| Anchor {
        sequence: sequence as u64,
        hash,
    }))
}

/// Verifies one raffle's whole stream, a page at a time (memory stays flat however long
/// the log is). `on_event` sees the count so far, for progress reports.
pub async fn verify_raffle(
    pool: &PgPool,
    raffle_id: Uuid,
    expectations: &Expectations,
    on_event: impl FnMut(u64),
) -> Result<ChainReport, sqlx::Error> {
    verify_raffle_within(pool, raffle_id, expectations, None, None, on_event).await
}

/// Like [`verify_raffle`], from `resume` (a head printed by an earlier verification) when
/// given, and stopping at the first page boundary after `deadline` (at least one page is
/// always verified, so a client that resumes always moves on). A stop before the end is
/// reported `complete: false`, never `intact`.
pub async fn verify_raffle_within(
    pool: &PgPool,
    raffle_id: Uuid,
    expectations: &Expectations,
    resume: Option<&Anchor>,
    deadline: Option<std::time::Instant>,
    mut on_event: impl FnMut(u64),
) -> Result<ChainReport, sqlx::Error> {
    let mut expectations = expectations.clone();
    expectations.heads.extend(resume.cloned());
    let (mut check, mut reader) = match resume {
        Some(anchor) => (
            ChainCheck::resume(raffle_id, &expectations, anchor),
            LogReader::after(pool.clone(), raffle_id, anchor.sequence - 1),
        ),
        None => (
            ChainCheck::new(raffle_id, &expectations),
            LogReader::new(pool.clone(), raffle_id),
        ),
    };
    let mut broken = None;
    let mut complete = true;
    while let Some(event) = reader.next().await? {
        if let Err(error) = check.push(&event) {
            broken = Some(error);
            break;
        }
        on_event(event.sequence);
        let out_of_time = deadline.is_some_and(|d| std::time::Instant::now() >= d);
        if out_of_time && reader.between_pages() {
            complete = false;
            break;
        }
    }
    if broken.is_none() && complete {
        broken = check.finish().err();
    }
    Ok(ChainReport {
        raffle_id,
        intact: complete && broken.is_none(),
        complete: complete || broken.is_some(),
        events_verified: check.checked,
        head: check.head(),
        broken,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_parse_as_printed() {
        let hash = "ab".repeat(32);
        let anchor: Anchor = format!("42:{}", hash.to_uppercase()).parse().unwrap();
        assert_eq!(anchor, Anchor { sequence: 42, hash });
        assert_eq!(anchor.to_string().parse::<Anchor>().unwrap(), anchor);
        let zero = format!("0:{}", "a".repeat(64));
        for bad in ["", "42", zero.as_str(), "x:ab", "7:abc"] {
            assert!(bad.parse::<Anchor>().is_err(), "{bad:?} parsed");
        }
    }
}
