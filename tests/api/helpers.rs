//! The API tests' names for the one harness (`tombola-testkit`).

pub use tombola_testkit::requests::*;
pub use tombola_testkit::*;
