//! The load generator's library: connections, scenarios and their measurements, shared by
//! the `mupdate-load` binary and the smoke tests that run every scenario in CI.

pub mod conn;
pub mod ledger;
pub mod listener;
pub mod plot;
pub mod procstat;
pub mod scenario;
