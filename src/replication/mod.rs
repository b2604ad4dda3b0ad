//! Replication: a slave follows its master over MUPDATE (`UPDATE`), keeping its own store
//! a copy that its clients read. The master side needs nothing special: a slave is an
//! ordinary UPDATE listener, fed live by the change feed.

pub mod barrier;
pub mod client;
pub mod kick;
pub mod slave;
