//! What the writers did, indexed by operation: when each write was sent and answered, and
//! the latest acknowledged write of every mailbox. Listeners read it, without locks, to time
//! each change they receive and, at the end, to check that their view is the server's.
//!
//! Every write gets an operation number. A mailbox is named after the operation that created
//! it (`<prefix><op>`), and every write that gives it a location writes `lt!o<op>` there, so
//! a listener knows which write a notice shows from the notice alone. A DELETE has no
//! location: the mailbox's `delete_op` slot says which operation deleted it.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The kinds of write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteKind {
    /// `RESERVE name location`
    Reserve = 1,
    /// `ACTIVATE name location acl`
    Activate = 2,
    /// `DEACTIVATE name location`
    Deactivate = 3,
    /// `DELETE name`
    Delete = 4,
}

impl WriteKind {
    /// All kinds, in the order of the mix.
    pub const ALL: [WriteKind; 4] = [
        WriteKind::Reserve,
        WriteKind::Activate,
        WriteKind::Deactivate,
        WriteKind::Delete,
    ];

    /// The MUPDATE command word.
    pub fn command(self) -> &'static str {
        match self {
            WriteKind::Reserve => "RESERVE",
            WriteKind::Activate => "ACTIVATE",
            WriteKind::Deactivate => "DEACTIVATE",
            WriteKind::Delete => "DELETE",
        }
    }

    fn from_code(code: u8) -> Option<WriteKind> {
        WriteKind::ALL.into_iter().find(|k| *k as u8 == code)
    }
}

/// The server host every written location names.
pub const HOST: &str = "lt";

/// The writers' record of every operation.
pub struct Ledger {
    /// Mailbox names are `<prefix><op:09>`.
    pub prefix: String,
    started: Instant,
    next: AtomicUsize,
    capacity: usize,
    sent: Vec<AtomicU64>,
    acked: Vec<AtomicU64>,
    kinds: Vec<AtomicU8>,
    /// By mailbox (its creating operation): the latest acknowledged operation + 1.
    latest: Vec<AtomicU32>,
    /// By mailbox: the operation that deletes it + 1.
    delete_op: Vec<AtomicU32>,
}

fn slots32(n: usize) -> Vec<AtomicU32> {
    (0..n).map(|_| AtomicU32::new(0)).collect()
}

fn slots64(n: usize) -> Vec<AtomicU64> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl Ledger {
    /// Room for `capacity` operations.
    pub fn new(prefix: &str, capacity: usize) -> Ledger {
        Ledger {
            prefix: prefix.to_owned(),
            started: Instant::now(),
            next: AtomicUsize::new(0),
            capacity,
            sent: slots64(capacity),
            acked: slots64(capacity),
            kinds: (0..capacity).map(|_| AtomicU8::new(0)).collect(),
            latest: slots32(capacity),
            delete_op: slots32(capacity),
        }
    }

    /// Operations room is kept for.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Operations handed out so far.
    pub fn issued(&self) -> usize {
        self.next.load(Ordering::Relaxed)
    }

    /// The next operation number, while fewer than `limit` are handed out.
    pub fn claim(&self, limit: usize) -> Option<u32> {
        let limit = limit.min(self.capacity);
        self.next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |op| {
                (op < limit).then_some(op + 1)
            })
            .ok()
            .map(|op| op as u32)
    }

    /// Nanoseconds since the ledger began (never 0, so 0 can mean "not yet").
    pub fn now(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64 + 1
    }

    /// The instant of a `now()` value.
    pub fn instant(&self, stamp: u64) -> Instant {
        self.started + Duration::from_nanos(stamp.saturating_sub(1))
    }

    /// The name of the mailbox created by operation `base`.
    pub fn name(&self, base: u32) -> String {
        format!("{}{base:09}", self.prefix)
    }

    /// The location written by operation `op`.
    pub fn location(op: u32) -> String {
        format!("{HOST}!o{op:09}")
    }

    /// Records that `op` (a `kind` on mailbox `base`) is being sent.
    pub fn sending(&self, op: u32, kind: WriteKind, base: u32) {
        let i = op as usize;
        self.kinds[i].store(kind as u8, Ordering::Relaxed);
        if kind == WriteKind::Delete {
            self.delete_op[base as usize].store(op + 1, Ordering::Release);
        }
        self.sent[i].store(self.now(), Ordering::Release);
    }

    /// Records that the server acknowledged `op` on mailbox `base`.
    pub fn acknowledged(&self, op: u32, base: u32) {
        self.acked[op as usize].store(self.now(), Ordering::Release);
        self.latest[base as usize].store(op + 1, Ordering::Release);
    }

    /// When `op` was sent and acknowledged (`now()` values, 0: not yet).
    pub fn times(&self, op: u32) -> (u64, u64) {
        let i = op as usize;
        if i >= self.capacity {
            return (0, 0);
        }
        (
            self.sent[i].load(Ordering::Acquire),
            self.acked[i].load(Ordering::Acquire),
        )
    }

    /// The mailbox a notice's name refers to, if it is one of ours.
    pub fn base_of_name(&self, name: &[u8]) -> Option<u32> {
        let digits = name.strip_prefix(self.prefix.as_bytes())?;
        let base: u32 = std::str::from_utf8(digits).ok()?.parse().ok()?;
        ((base as usize) < self.capacity).then_some(base)
    }

    /// The operation a notice's location names, if it is one of ours.
    pub fn op_of_location(&self, location: &[u8]) -> Option<u32> {
        let digits = location.strip_prefix(format!("{HOST}!o").as_bytes())?;
        let op: u32 = std::str::from_utf8(digits).ok()?.parse().ok()?;
        ((op as usize) < self.capacity).then_some(op)
    }

    /// The operation that deleted (or is deleting) mailbox `base`.
    pub fn delete_of(&self, base: u32) -> Option<u32> {
        self.delete_op
            .get(base as usize)
            .map(|slot| slot.load(Ordering::Acquire))
            .filter(|&v| v > 0)
            .map(|v| v - 1)
    }

    /// What the server holds for mailbox `base`: `None` if absent (never created, or
    /// deleted last), else the operation whose record it shows.
    pub fn truth(&self, base: u32) -> Option<u32> {
        let latest = self.latest[base as usize].load(Ordering::Acquire);
        if latest == 0 {
            return None;
        }
        let op = latest - 1;
        match WriteKind::from_code(self.kinds[op as usize].load(Ordering::Relaxed)) {
            Some(WriteKind::Delete) | None => None,
            Some(_) => Some(op),
        }
    }

    /// Whether operation `op` is a DELETE.
    pub fn is_delete(&self, op: u32) -> bool {
        WriteKind::from_code(self.kinds[op as usize].load(Ordering::Relaxed))
            == Some(WriteKind::Delete)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_locations_and_truth() {
        let ledger = Ledger::new("user.lt.", 10);
        assert_eq!(ledger.name(3), "user.lt.000000003");
        assert_eq!(ledger.base_of_name(b"user.lt.000000003"), Some(3));
        assert_eq!(ledger.base_of_name(b"user.other"), None);
        assert_eq!(ledger.base_of_name(b"user.lt.000000010"), None);
        assert_eq!(
            ledger.op_of_location(Ledger::location(7).as_bytes()),
            Some(7)
        );
        assert_eq!(ledger.truth(3), None);
        ledger.sending(3, WriteKind::Activate, 3);
        ledger.acknowledged(3, 3);
        assert_eq!(ledger.truth(3), Some(3));
        ledger.sending(5, WriteKind::Delete, 3);
        assert_eq!(ledger.delete_of(3), Some(5));
        assert_eq!(ledger.truth(3), Some(3), "not yet acknowledged");
        ledger.acknowledged(5, 3);
        assert_eq!(ledger.truth(3), None);
    }
}
