//! The read models. Each is a [`crate::Projection`] with tables of its own, so each can be
//! rebuilt, versioned and fail alone.

pub mod audit_index;
pub mod orders;
pub mod stats;
pub mod tally;
pub mod tickets;

use std::sync::Arc;

use crate::Projection;

/// Every read model, in the order the runtime applies them.
pub fn all() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(orders::Orders),
        Arc::new(tickets::Tickets),
        Arc::new(stats::RaffleStats),
        Arc::new(stats::PlatformStats),
        Arc::new(audit_index::AuditIndex),
    ]
}
