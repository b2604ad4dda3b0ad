//! Replication: a slave follows its master over MUPDATE (`UPDATE`), keeping its own store
//! a copy that its clients read. On the master a slave is an ordinary UPDATE listener, fed
//! live by the change feed; one that acknowledges what it holds (XACK) can be waited for
//! ([`sync`]). Under failover a follower forwards writes to the elected master ([`forward`]).

pub mod barrier;
pub mod client;
pub mod forward;
pub mod kick;
pub mod slave;
pub mod sync;
