//! The parts of the benchmarks other crates' tests call into: the chaos harness (the root
//! package's test suite runs a short configuration of it against the `tombola` binary).

pub mod chaos;
