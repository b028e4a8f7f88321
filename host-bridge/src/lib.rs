//! The parts of the Chorus host that tests and benchmarks use directly: the
//! data service and its storage backends. The `chorus` binary (main.rs) uses
//! them from here.

pub mod store;
