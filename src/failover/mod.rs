//! Master failover, Patroni's way: a leader key with a lease in etcd names the master, a
//! term counter in the same store numbers each master, and a master stops acknowledging
//! writes before etcd can have expired its lease (the fence), so that a frozen or
//! partitioned old master never acknowledges a write once its successor may be elected.
//!
//! This module holds what needs no etcd (roles, the fence, the keys' text); [`etcd`], built
//! with the `ha` feature, campaigns through a real etcd v3.

#[cfg(feature = "ha")]
pub mod etcd;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Who this instance is in its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HaRole {
    /// Neither master nor following one: connecting to etcd, or campaigning.
    Candidate,
    /// The master, elected in `term`.
    Leader {
        /// Its term.
        term: u64,
    },
    /// Following the master reached at `leader` (its advertised `host:port`), elected in
    /// `term`.
    Follower {
        /// The master's term.
        term: u64,
        /// The master's advertised address.
        leader: String,
    },
}

impl HaRole {
    /// The term of the master this role knows of (0: none yet).
    pub fn term(&self) -> u64 {
        match self {
            HaRole::Candidate => 0,
            HaRole::Leader { term } | HaRole::Follower { term, .. } => *term,
        }
    }
}

/// Whether a master may still acknowledge a write: open only until a deadline that each
/// confirmed lease renewal moves forward, so that it closes before etcd can have expired
/// the lease, on this machine's monotonic clock (which runs on while the process is
/// stopped, so a resumed process finds it closed).
#[derive(Debug, Clone)]
pub struct Fence {
    origin: Instant,
    /// Nanoseconds after `origin` until which writes may be acknowledged; 0: closed.
    open_until: Arc<AtomicU64>,
}

impl Default for Fence {
    fn default() -> Self {
        Fence {
            origin: Instant::now(),
            open_until: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Fence {
    /// Keeps the fence open until `deadline`, unless it already is for longer.
    pub fn open_until(&self, deadline: Instant) {
        let nanos = deadline.saturating_duration_since(self.origin).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX);
        self.open_until.fetch_max(nanos, Ordering::AcqRel);
    }

    /// Closes the fence at once (leadership lost or given up).
    pub fn close(&self) {
        self.open_until.store(0, Ordering::Release);
    }

    /// Whether a write may be acknowledged now.
    pub fn is_open(&self) -> bool {
        let now = self.origin.elapsed().as_nanos();
        u128::from(self.open_until.load(Ordering::Acquire)) > now
    }
}

/// How long before a lease can expire the fence closes: a tenth of the lease, at least a
/// quarter of a second, for clocks that do not run at quite the same rate as etcd's.
pub fn fence_margin(lease_ttl: Duration) -> Duration {
    (lease_ttl / 10).max(Duration::from_millis(250))
}

/// The keys of one cluster in etcd, under `/mupdate/<cluster>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// The master's key, bound to its lease: `"<term> <advertised address>"`.
    pub leader: String,
    /// The last term granted: `"<term>"`, only ever increased.
    pub term: String,
}

impl Keys {
    /// The keys of `cluster`.
    pub fn of(cluster: &str) -> Keys {
        Keys {
            leader: format!("/mupdate/{cluster}/leader"),
            term: format!("/mupdate/{cluster}/term"),
        }
    }
}

/// The leader key's value: `"<term> <advertised address>"`.
pub fn leader_value(term: u64, address: &str) -> String {
    format!("{term} {address}")
}

/// The term and address in a leader key's value, or `None` for anything else.
pub fn parse_leader_value(value: &[u8]) -> Option<(u64, String)> {
    let text = std::str::from_utf8(value).ok()?;
    let (term, address) = text.split_once(' ')?;
    let term = term.parse().ok()?;
    (!address.is_empty() && !address.contains(' ')).then(|| (term, address.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_opens_until_its_deadline_and_closes_at_once() {
        let fence = Fence::default();
        assert!(!fence.is_open(), "closed until a renewal opens it");
        fence.open_until(Instant::now() + Duration::from_secs(60));
        assert!(fence.is_open());
        // An earlier deadline (a late answer to an older renewal) does not shorten it.
        fence.open_until(Instant::now());
        assert!(fence.is_open());
        fence.close();
        assert!(!fence.is_open());
        fence.open_until(Instant::now() - Duration::from_millis(1));
        assert!(!fence.is_open(), "a deadline in the past keeps it closed");
    }

    #[test]
    fn leader_values_round_trip_and_garbage_is_none() {
        let value = leader_value(7, "10.0.0.3:3905");
        assert_eq!(value, "7 10.0.0.3:3905");
        assert_eq!(
            parse_leader_value(value.as_bytes()),
            Some((7, "10.0.0.3:3905".to_owned()))
        );
        let garbage: [&[u8]; 6] = [b"", b"7", b"x 1.2.3.4:1", b"7 ", b"7 a b", b"\xff 1"];
        assert_eq!(
            garbage.map(parse_leader_value),
            [None, None, None, None, None, None]
        );
    }

    #[test]
    fn the_margin_is_a_tenth_of_the_lease_or_a_quarter_second() {
        let leases = [10, 2].map(Duration::from_secs);
        let margins = [Duration::from_secs(1), Duration::from_millis(250)];
        assert_eq!(leases.map(fence_margin), margins);
    }

    #[test]
    fn keys_live_under_the_cluster() {
        let keys = Keys::of("murder1");
        assert_eq!(keys.leader, "/mupdate/murder1/leader");
        assert_eq!(keys.term, "/mupdate/murder1/term");
    }
}
