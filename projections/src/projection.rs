//! What a read model is to the runtime.

use std::future::Future;
use std::pin::Pin;

use sqlx::PgConnection;
use uuid::Uuid;

use crate::envelope::Envelope;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which copy of a projection's tables a batch goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    /// The tables readers query.
    Live,
    /// A rebuild's tables, swapped in when they have caught up.
    Shadow,
}

impl Slot {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Shadow => "shadow",
        }
    }
}

/// The physical names of a projection's tables in one slot: the live tables keep their
/// plain names, a rebuild's shadow tables carry a suffix until the swap renames them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tables {
    pub slot: Slot,
}

impl Tables {
    pub const LIVE: Tables = Tables { slot: Slot::Live };
    pub const SHADOW: Tables = Tables { slot: Slot::Shadow };

    /// The physical name of the logical table `name` (always an identifier of ours, never
    /// input, so formatting it into SQL is safe).
    pub fn name(&self, name: &str) -> String {
        match self.slot {
            Slot::Live => name.to_owned(),
            Slot::Shadow => format!("{name}__shadow"),
        }
    }
}

/// One raffle's events, in sequence order without gaps, for one projection's tables.
pub struct Batch<'a> {
    pub raffle_id: Uuid,
    pub events: &'a [Envelope],
    pub tables: Tables,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The events make no sense to this projection (a bug, or a log it cannot read).
    #[error("{0}")]
    Invalid(String),
}

/// A read model: tables it owns and how a batch of one raffle's events changes them.
///
/// `apply` runs inside the runtime's transaction, which also moves the checkpoint: it must
/// not commit, and it must be a pure function of (the tables' rows, the events), so that a
/// rebuild from the log ends where incremental processing did. Write with multi-row
/// statements: a batch may hold thousands of events and a million numbers.
pub trait Projection: Send + Sync + 'static {
    /// Stable identifier (status, checkpoints, the CLI's `rebuild NAME`).
    fn name(&self) -> &'static str;
    /// Raised whenever `apply` or `schema` changes what the tables hold: the server then
    /// rebuilds the projection into shadow tables while the old version keeps serving.
    fn version(&self) -> u32;
    /// Logical names of the tables it owns.
    fn tables(&self) -> &'static [&'static str];
    /// Whether every table it owns is keyed by raffle (then one raffle can be rebuilt
    /// alone). Projections keeping totals across raffles answer false.
    fn raffle_scoped(&self) -> bool {
        true
    }
    /// DDL creating its tables (and their indexes) under `tables`' names. Indexes are left
    /// unnamed so a shadow's indexes never collide with the live ones'.
    fn schema(&self, tables: Tables) -> String;
    /// DDL of the indexes (and constraints) `apply` does not need, only readers: created with
    /// the live tables, but on a rebuild's shadow tables only once they are full, just before
    /// the swap (one sort instead of an index insert per row). Unnamed, like `schema`'s.
    fn indexes(&self, tables: Tables) -> String {
        let _ = tables;
        String::new()
    }
    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        batch: Batch<'a>,
    ) -> BoxFuture<'a, Result<(), ApplyError>>;
}
