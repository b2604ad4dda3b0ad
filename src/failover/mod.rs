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
    /// The synchronous replicas a master recorded ([`SyncSet`]): who may succeed it.
    pub sync: String,
}

impl Keys {
    /// The keys of `cluster`.
    pub fn of(cluster: &str) -> Keys {
        Keys {
            leader: format!("/mupdate/{cluster}/leader"),
            term: format!("/mupdate/{cluster}/term"),
            sync: format!("/mupdate/{cluster}/sync"),
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

/// The sync key's value, Patroni's synchronous mode: the master of `term` and the replicas
/// that held every write it acknowledged when it recorded them. Only these may succeed it,
/// so that no acknowledged write is lost: `"<term> <master> <replica>..."`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncSet {
    /// The term of the master that recorded it.
    pub term: u64,
    /// That master's advertised address.
    pub master: String,
    /// The synchronous replicas' advertised addresses.
    pub replicas: Vec<String>,
}

impl SyncSet {
    /// The key's value.
    pub fn encode(&self) -> String {
        let mut value = leader_value(self.term, &self.master);
        for replica in &self.replicas {
            value.push(' ');
            value.push_str(replica);
        }
        value
    }

    /// What a sync key's value says, or `None` for anything else.
    pub fn parse(value: &[u8]) -> Option<SyncSet> {
        let text = std::str::from_utf8(value).ok()?;
        let mut words = text.split(' ');
        let term = words.next()?.parse().ok()?;
        let master = words.next().filter(|w| !w.is_empty())?.to_owned();
        let replicas: Vec<String> = words.map(str::to_owned).collect();
        if replicas.iter().any(String::is_empty) {
            return None;
        }
        Some(SyncSet {
            term,
            master,
            replicas,
        })
    }

    /// Whether the instance at `address` holds every acknowledged write: the master that
    /// acknowledged them or one of its synchronous replicas.
    pub fn may_succeed(&self, address: &str) -> bool {
        self.master == address || self.replicas.iter().any(|r| r == address)
    }
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
        assert_eq!(keys.sync, "/mupdate/murder1/sync");
    }

    #[test]
    fn sync_sets_round_trip_and_name_who_may_succeed() {
        let set = SyncSet {
            term: 4,
            master: "10.0.0.1:3905".into(),
            replicas: vec!["10.0.0.2:3905".into()],
        };
        assert_eq!(set.encode(), "4 10.0.0.1:3905 10.0.0.2:3905");
        assert_eq!(SyncSet::parse(set.encode().as_bytes()), Some(set.clone()));
        assert!(set.may_succeed("10.0.0.1:3905") && set.may_succeed("10.0.0.2:3905"));
        assert!(!set.may_succeed("10.0.0.3:3905"));
        let alone = SyncSet::parse(b"5 10.0.0.2:3905").expect("a master with no replica yet");
        assert!(alone.replicas.is_empty());
        let garbage: [&[u8]; 5] = [b"", b"x a", b"5", b"5 a  b", b"5 a \xff"];
        assert_eq!(garbage.map(SyncSet::parse), [None, None, None, None, None]);
    }
}
