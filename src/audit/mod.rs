//! The audit trail's proofs, read straight from the stored log: `chain` shows that no event
//! was edited, removed or cut off; `draw` that the winners follow from the published
//! commitment, the public entropy and the tickets issued. Both read the stored text a page
//! at a time (`log`), so they run in constant memory on the largest raffle, and neither
//! trusts the engine's in-memory state or the read models.

pub mod chain;
pub mod draw;
pub mod log;
pub mod trail;
