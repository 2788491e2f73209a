//! The payment tests' names for the one harness (`tombola-testkit`).

pub use tombola_testkit::*;
