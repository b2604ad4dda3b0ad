//! The blocking half of the projection: brings mailboxes.db up to a store snapshot, in
//! transactions short enough that a Cyrus lookup never waits long for the lock.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::ProjectionError;
use super::decide::{Decision, Desired, Mapping, decide};
use crate::cyrusdb::mboxlist::NAME_KEY_PREFIX;
use crate::cyrusdb::twoskip::{Transaction, TransactionReport, TwoskipFile};
use crate::observability::metrics::Metrics;
use crate::store::{Snapshot, Store};

/// How much one transaction may do before it commits and lets readers in.
#[derive(Debug, Clone, Copy)]
pub struct TransactionLimits {
    /// Records written per transaction, at most.
    pub max_records: usize,
    /// Time the lock is held before the transaction commits (fsyncs come on top).
    pub max_hold: Duration,
    /// Pause between transactions of one batch, for waiting readers to get in.
    pub pause: Duration,
}

impl Default for TransactionLimits {
    fn default() -> TransactionLimits {
        TransactionLimits {
            max_records: 512,
            max_hold: Duration::from_millis(3),
            pause: Duration::from_millis(1),
        }
    }
}

/// A lock hold worth a warning.
const LONG_HOLD: Duration = Duration::from_millis(50);

/// A reconciliation rewrites the whole file, rather than changing it in transactions,
/// when it changes more than one transaction's worth of records and at least one in this
/// many of the file's: building a file costs about a tenth of changing a record in place.
const REWRITE_FRACTION: usize = 8;

/// One record to bring in line: its key, what the store says, and (for a live change) the
/// store sequence number that is wholly in the file once this record is.
struct Item {
    key: Vec<u8>,
    desired: Option<Desired>,
    seq: Option<u64>,
}

/// Keeps one mailboxes.db in step with the store.
pub struct Writer {
    file: TwoskipFile,
    mapping: Mapping,
    limits: TransactionLimits,
    metrics: Arc<Metrics>,
    /// The store sequence number the file holds everything up to; `None` until the first
    /// reconciliation.
    applied: Option<u64>,
}

impl Writer {
    /// A writer for `file`; nothing is written before [`Writer::catch_up`].
    pub fn new(
        file: TwoskipFile,
        mapping: Mapping,
        limits: TransactionLimits,
        metrics: Arc<Metrics>,
    ) -> Writer {
        Writer {
            file,
            mapping,
            limits,
            metrics,
            applied: None,
        }
    }

    /// Brings the file up to the store as it is now: the changes since the last call, or a
    /// reconciliation the first time and whenever the change log no longer reaches back.
    /// `published` is told each sequence number the file is complete up to. Returns it.
    pub fn catch_up(
        &mut self,
        store: &Store,
        published: &mut dyn FnMut(u64),
    ) -> Result<u64, ProjectionError> {
        let snapshot = store.snapshot()?;
        let changes = match self.applied {
            Some(applied) if applied == snapshot.seq() => return Ok(applied),
            Some(applied) => snapshot.changes_after(applied)?,
            None => None,
        };
        match changes {
            Some(changes) => {
                let items = changes.into_iter().filter_map(|change| {
                    let (key, desired) = match &change.record {
                        Some(record) => {
                            let (key, desired) = self.mapping.desired(record.as_ref())?;
                            (key, Some(desired))
                        }
                        None => (self.mapping.naming.key(&change.name)?, None),
                    };
                    Some(Item {
                        key,
                        desired,
                        seq: Some(change.seq),
                    })
                });
                let items: Vec<Item> = items.collect();
                self.apply(items, published)?;
            }
            None => self.reconcile(&snapshot, published)?,
        }
        self.applied = Some(snapshot.seq());
        published(snapshot.seq());
        self.metrics
            .mailboxes_db_applied_seq
            .set(snapshot.seq() as i64);
        if self.file.repack_if_due()? {
            self.metrics.mailboxes_db_repacks.inc();
        }
        Ok(snapshot.seq())
    }

    /// Makes the file say what `snapshot` says about every `N` record mupdate owns. The
    /// differences are found on a copy of the file, without the lock. Many of them (a new
    /// replica's first sync) make a whole new file, built aside and renamed in as a Cyrus
    /// repack is; a few, or a file someone else wrote meanwhile, are written in bounded
    /// transactions that decide each record again against the file as it is.
    fn reconcile(
        &mut self,
        snapshot: &Snapshot,
        published: &mut dyn FnMut(u64),
    ) -> Result<(), ProjectionError> {
        let (desired, unmapped) = desired_records(&self.mapping, snapshot)?;
        let current = self.file.read_image()?.entries()?;
        let Merged {
            whole,
            work,
            outcomes,
            kept_local,
        } = merge_in_halves(current, desired, now_secs())?;
        let seq = snapshot.seq();
        let worth_rewriting = work.len() > self.limits.max_records
            && work.len().saturating_mul(REWRITE_FRACTION) >= whole.len();
        let rewritten = match worth_rewriting {
            true => self.file.rewrite_if_unchanged(&whole, "reconcile")?,
            false => None,
        };
        match rewritten {
            Some(report) => {
                observe(&report, whole.len(), &self.metrics);
                self.metrics.mailboxes_db_rewrites.inc();
                for (kind, count) in [("set", outcomes[0] + outcomes[1]), ("delete", outcomes[2])] {
                    self.metrics
                        .mailboxes_db_writes
                        .with_label_values(&[kind])
                        .inc_by(count);
                }
            }
            None => self.apply(work, published)?,
        }
        self.metrics.mailboxes_db_reconciles.inc();
        for (outcome, count) in crate::observability::metrics::RECONCILE_OUTCOMES
            .iter()
            .zip(outcomes)
        {
            self.metrics
                .mailboxes_db_reconciled
                .with_label_values(&[outcome])
                .inc_by(count);
        }
        self.metrics.mailboxes_db_kept_local.inc_by(kept_local);
        tracing::info!(
            path = %self.file.path().display(),
            seq,
            added = outcomes[0],
            changed = outcomes[1],
            deleted = outcomes[2],
            unchanged = outcomes[3],
            kept_local,
            unmapped,
            rewritten = rewritten.is_some(),
            "mailboxes.db reconciled with the store"
        );
        Ok(())
    }

    /// Writes `items` in order, committing whenever a transaction reaches its limits; after
    /// each commit `published` hears the sequence number of the last live change it carried.
    fn apply(
        &mut self,
        items: Vec<Item>,
        published: &mut dyn FnMut(u64),
    ) -> Result<(), ProjectionError> {
        let Writer {
            file,
            limits,
            metrics,
            ..
        } = self;
        let now = now_secs();
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            let mut txn = file.begin()?;
            let mut written = 0usize;
            let mut last_seq = None;
            for item in items.by_ref() {
                let existing = txn.get(&item.key)?;
                match decide(existing, item.desired.as_ref(), now) {
                    Decision::Write(value) => {
                        txn.set(&item.key, &value)?;
                        metrics
                            .mailboxes_db_writes
                            .with_label_values(&["set"])
                            .inc();
                        written += 1;
                    }
                    Decision::Delete => {
                        txn.delete(&item.key)?;
                        metrics
                            .mailboxes_db_writes
                            .with_label_values(&["delete"])
                            .inc();
                        written += 1;
                    }
                    Decision::KeepLocal => {
                        metrics.mailboxes_db_kept_local.inc();
                        tracing::warn!(
                            key = %String::from_utf8_lossy(&item.key),
                            "mailboxes.db holds a local mailbox of this name: left as it is"
                        );
                    }
                    Decision::Unchanged => {}
                }
                last_seq = item.seq.or(last_seq);
                if written >= limits.max_records || txn.held() >= limits.max_hold {
                    break;
                }
            }
            let report = commit(txn, metrics)?;
            if report.recovered {
                tracing::warn!(path = %file.path().display(), "mailboxes.db was left mid-write by someone: recovered it first");
            }
            if let Some(seq) = last_seq {
                published(seq);
            }
            if items.peek().is_some() {
                // A reader woken by our unlock must get the lock before we take it again:
                // fcntl locks are not fair, and back-to-back transactions starve it.
                std::thread::sleep(limits.pause);
            }
        }
        Ok(())
    }
}

/// mailboxes.db keys with what the store wants each to say, in key order.
type DesiredRecords = Vec<(Vec<u8>, Desired)>;

/// Below this many records a reconciliation runs on one thread.
const PARALLEL_FROM: usize = 4096;

/// The store's records as mailboxes.db should hold them, in key order, and how many
/// records map to no key. Two threads walk the two halves of the store.
fn desired_records(
    mapping: &Mapping,
    snapshot: &Snapshot,
) -> Result<(DesiredRecords, u64), ProjectionError> {
    let total = usize::try_from(snapshot.len()?).unwrap_or(usize::MAX);
    let middle = match total >= PARALLEL_FROM {
        true => snapshot.middle()?,
        false => None,
    };
    let collect = |from: Option<&[u8]>, to: Option<&[u8]>| {
        let mut desired = Vec::with_capacity(total / 2 + 1);
        let mut unmapped = 0u64;
        snapshot.walk_range(from, to, |record| {
            match mapping.desired(record) {
                Some(wanted) => desired.push(wanted),
                None => unmapped += 1,
            }
            true
        })?;
        Ok::<_, ProjectionError>((desired, unmapped))
    };
    let (first, second) = std::thread::scope(|scope| {
        let second = middle
            .as_deref()
            .map(|middle| scope.spawn(move || collect(Some(middle), None)));
        let first = collect(None, middle.as_deref());
        (first, second.map(|half| half.join()))
    });
    let (mut desired, mut unmapped) = first?;
    if let Some(second) = second {
        let (rest, rest_unmapped) = second.map_err(|_| ProjectionError::Worker)??;
        desired.extend(rest);
        unmapped += rest_unmapped;
    }
    // The store's order is the file's but for names Cyrus spells differently in keys
    // (`^`, deleted mailboxes). Of two names with one key, the later one wins.
    if !desired.is_sorted_by(|a, b| a.0 < b.0) {
        desired.sort_by(|a, b| a.0.cmp(&b.0));
        desired.dedup_by(|later, earlier| {
            let same = later.0 == earlier.0;
            if same {
                std::mem::swap(later, earlier);
            }
            same
        });
    }
    Ok((desired, unmapped))
}

/// What a reconciliation found.
#[derive(Default)]
struct Merged {
    /// The whole file as it should be, in key order, for a rewrite.
    whole: Vec<(Vec<u8>, Vec<u8>)>,
    /// The records to change, for transactions.
    work: Vec<Item>,
    /// Counts by [`crate::observability::metrics::RECONCILE_OUTCOMES`].
    outcomes: [u64; 4],
    /// Local mailboxes left alone.
    kept_local: u64,
}

/// [`merge`], the lower and upper halves of the keys on two threads.
fn merge_in_halves(
    mut current: Vec<(Vec<u8>, Vec<u8>)>,
    mut desired: DesiredRecords,
    now: u64,
) -> Result<Merged, ProjectionError> {
    if desired.len() < PARALLEL_FROM {
        return merge(current, desired, now);
    }
    let upper_desired = desired.split_off(desired.len() / 2);
    let boundary = upper_desired.first().map(|(key, _)| key.as_slice());
    let split = current.partition_point(|(key, _)| Some(key.as_slice()) < boundary);
    let upper_current = current.split_off(split);
    let (lower, upper) = std::thread::scope(|scope| {
        let upper = scope.spawn(move || merge(upper_current, upper_desired, now));
        let lower = merge(current, desired, now);
        (lower, upper.join())
    });
    let mut merged = lower?;
    let upper = upper.map_err(|_| ProjectionError::Worker)??;
    merged.whole.extend(upper.whole);
    merged.work.extend(upper.work);
    for (total, more) in merged.outcomes.iter_mut().zip(upper.outcomes) {
        *total += more;
    }
    merged.kept_local += upper.kept_local;
    Ok(merged)
}

/// Decides every key of `current` (the file's records) and `desired` (the store's), both
/// in key order.
fn merge(
    current: Vec<(Vec<u8>, Vec<u8>)>,
    desired: DesiredRecords,
    now: u64,
) -> Result<Merged, ProjectionError> {
    let mut merged = Merged {
        whole: Vec::with_capacity(current.len().max(desired.len())),
        ..Merged::default()
    };
    let mut current = current.into_iter().peekable();
    let mut wanted = desired.into_iter().peekable();
    loop {
        let (key, existing, want) = match (current.peek(), wanted.peek()) {
            (None, None) => break,
            (Some((have, _)), Some((want, _))) if have == want => {
                let (key, value) = current.next().ok_or(ProjectionError::Lost)?;
                let (_, want) = wanted.next().ok_or(ProjectionError::Lost)?;
                (key, Some(value), Some(want))
            }
            (Some((have, _)), Some((want, _))) if want < have => {
                let (key, want) = wanted.next().ok_or(ProjectionError::Lost)?;
                (key, None, Some(want))
            }
            (None, Some(_)) => {
                let (key, want) = wanted.next().ok_or(ProjectionError::Lost)?;
                (key, None, Some(want))
            }
            (Some(_), _) => {
                let (key, value) = current.next().ok_or(ProjectionError::Lost)?;
                if key.first() != Some(&NAME_KEY_PREFIX) {
                    // Not a mailbox name: some other part of Cyrus keeps it.
                    merged.whole.push((key, value));
                    continue;
                }
                (key, Some(value), None)
            }
        };
        let decision = decide(existing.as_deref(), want.as_ref(), now);
        // Index into RECONCILE_OUTCOMES; a local mailbox is not counted there.
        let outcome = match &decision {
            Decision::KeepLocal => None,
            Decision::Unchanged => Some(3),
            Decision::Delete => Some(2),
            Decision::Write(_) if existing.is_some() => Some(1),
            Decision::Write(_) => Some(0),
        };
        // What the file holds under this key afterwards.
        let after = match decision {
            Decision::Write(value) => Some(value),
            Decision::Delete => None,
            Decision::Unchanged | Decision::KeepLocal => existing,
        };
        let Some(outcome) = outcome else {
            merged.whole.extend(after.map(|value| (key, value)));
            merged.kept_local += 1;
            continue;
        };
        merged.outcomes[outcome] += 1;
        if outcome != 3 {
            merged.whole.extend(after.map(|value| (key.clone(), value)));
            merged.work.push(Item {
                key,
                desired: want,
                seq: None,
            });
        } else {
            merged.whole.extend(after.map(|value| (key, value)));
        }
    }
    Ok(merged)
}

fn commit(txn: Transaction<'_>, metrics: &Metrics) -> Result<TransactionReport, ProjectionError> {
    let records = txn.len();
    let report = txn.commit()?;
    observe(&report, records as usize, metrics);
    Ok(report)
}

/// Accounts for one hold of the lock, after which the file holds `records` records.
fn observe(report: &TransactionReport, records: usize, metrics: &Metrics) {
    if report.held >= LONG_HOLD {
        // Cyrus's own mappedfile logs a "longlock" past a second; readers notice far sooner.
        tracing::warn!(
            held_ms = report.held.as_secs_f64() * 1e3,
            lock_wait_ms = report.lock_wait.as_secs_f64() * 1e3,
            reloaded = report.reloaded,
            records,
            "mailboxes.db lock held long"
        );
    }
    metrics
        .mailboxes_db_lock_wait_seconds
        .observe(report.lock_wait.as_secs_f64());
    metrics
        .mailboxes_db_hold_seconds
        .observe(report.held.as_secs_f64());
    metrics.mailboxes_db_records.set(records as i64);
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::cyrusdb::twoskip::{RandomLevels, entries};
    use crate::mailbox::MailboxWrite;
    use crate::store::{Mutation, StoreOptions};

    fn activate(name: &str, location: &str) -> Mutation {
        Mutation::Write(MailboxWrite::Activate {
            name: name.as_bytes().to_vec(),
            location: location.as_bytes().to_vec(),
            acl: b"admin\tlrs\t".to_vec(),
        })
    }

    fn remote(location: &str) -> Vec<u8> {
        Desired {
            reserved: false,
            location: location.as_bytes().to_vec(),
            acl: b"admin\tlrs\t".to_vec(),
        }
        .value(5)
    }

    /// A store of user.a (new), user.b (moved) and user.c (current), and a file that also
    /// holds a local mailbox, a key of another kind, a remote record the store no longer
    /// has, and `more_local` further local mailboxes.
    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
        path: std::path::PathBuf,
        local: Vec<u8>,
    }

    impl Fixture {
        async fn new(more_local: usize) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&dir.path().join("s.redb"), StoreOptions::default()).unwrap();
            for mutation in [
                activate("user.a", "be1!p"),
                activate("user.b", "be1!p"),
                activate("user.c", "be2!p"),
            ] {
                store.apply(mutation).await.unwrap();
            }
            let path = dir.path().join("mailboxes.db");
            let local = b"%(T e P p M 1 A %(bob lrs))".to_vec();
            let mut file = TwoskipFile::open(&path, Box::new(RandomLevels)).unwrap();
            let mut txn = file.begin().unwrap();
            txn.set(b"Nuser\x1flocal", &local).unwrap();
            txn.set(b"$RACL", b"other key").unwrap();
            txn.set(b"Nuser\x1fgone", &remote("be2!p")).unwrap();
            txn.set(b"Nuser\x1fb", &remote("be9!p")).unwrap();
            txn.set(b"Nuser\x1fc", &remote("be2!p")).unwrap();
            for i in 0..more_local {
                txn.set(format!("Nuser\x1fz{i}").as_bytes(), &local)
                    .unwrap();
            }
            txn.commit().unwrap();
            Fixture {
                _dir: dir,
                store,
                path,
                local,
            }
        }

        /// A writer of at most one record per transaction, after its first catch-up (a
        /// reconciliation, checked).
        fn reconcile(&self) -> (Writer, Arc<Metrics>) {
            let file = TwoskipFile::open(&self.path, Box::new(RandomLevels)).unwrap();
            let limits = TransactionLimits {
                max_records: 1,
                max_hold: Duration::from_secs(1),
                pause: Duration::ZERO,
            };
            let metrics = Arc::new(Metrics::default());
            let mut writer = Writer::new(file, Mapping::default(), limits, metrics.clone());
            let mut published = Vec::new();
            assert_eq!(
                writer
                    .catch_up(&self.store, &mut |s| published.push(s))
                    .unwrap(),
                3
            );
            assert_eq!(published, [3]);
            self.assert_reconciled();
            (writer, metrics)
        }

        fn file(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
            entries(&std::fs::read(&self.path).unwrap())
                .unwrap()
                .into_iter()
                .filter(|(key, _)| !key.starts_with(b"Nuser\x1fz"))
                .collect()
        }

        /// The file after reconciling: gone deleted, a added, b moved, c, the local
        /// mailbox and the other key untouched.
        fn assert_reconciled(&self) {
            let file = self.file();
            let want: BTreeMap<Vec<u8>, Vec<u8>> = [
                (b"$RACL".to_vec(), b"other key".to_vec()),
                (
                    b"Nuser\x1fa".to_vec(),
                    file[b"Nuser\x1fa".as_slice()].clone(),
                ),
                (
                    b"Nuser\x1fb".to_vec(),
                    file[b"Nuser\x1fb".as_slice()].clone(),
                ),
                (b"Nuser\x1fc".to_vec(), remote("be2!p")),
                (b"Nuser\x1flocal".to_vec(), self.local.clone()),
            ]
            .into();
            assert_eq!(file, want);
            assert!(String::from_utf8_lossy(&file[b"Nuser\x1fa".as_slice()]).contains(" S be1 "));
            assert!(String::from_utf8_lossy(&file[b"Nuser\x1fb".as_slice()]).contains(" S be1 "));
        }
    }

    fn generation(path: &std::path::Path) -> u64 {
        crate::cyrusdb::twoskip::Header::parse(&std::fs::read(path).unwrap())
            .unwrap()
            .generation
    }

    #[tokio::test]
    async fn reconciles_only_its_own_records_then_follows_changes_in_bounded_transactions() {
        // Three changes in a file of 44 records: written in place, not worth a new file.
        let fixture = Fixture::new(40).await;
        let (mut writer, metrics) = fixture.reconcile();
        // Three records written (a, b, gone), one per transaction, in the same file.
        assert_eq!(metrics.mailboxes_db_hold_seconds.get_sample_count(), 3);
        assert_eq!(metrics.mailboxes_db_rewrites.get(), 0);
        assert_eq!(generation(&fixture.path), 1);

        // Live changes: each committed transaction tells how far the file is complete.
        let store = &fixture.store;
        store
            .apply(Mutation::Write(MailboxWrite::Delete {
                name: b"user.a".to_vec(),
            }))
            .await
            .unwrap();
        store.apply(activate("user.d", "be3!p")).await.unwrap();
        let mut published = Vec::new();
        assert_eq!(
            writer.catch_up(store, &mut |s| published.push(s)).unwrap(),
            5
        );
        assert_eq!(published, [4, 5, 5]);
        let file = fixture.file();
        assert!(!file.contains_key(b"Nuser\x1fa".as_slice()));
        assert!(String::from_utf8_lossy(&file[b"Nuser\x1fd".as_slice()]).contains(" S be3 "));
        assert_eq!(file[b"Nuser\x1flocal".as_slice()], fixture.local);
    }

    #[tokio::test]
    async fn a_reconciliation_of_many_changes_renames_a_whole_new_file_in() {
        // Three changes in a file of 5 records, more than one transaction's worth.
        let fixture = Fixture::new(0).await;
        let (_, metrics) = fixture.reconcile();
        // One hold of the lock, for the rename; a new generation for Cyrus's readers.
        assert_eq!(metrics.mailboxes_db_hold_seconds.get_sample_count(), 1);
        assert_eq!(metrics.mailboxes_db_rewrites.get(), 1);
        assert_eq!(generation(&fixture.path), 2);
        assert_eq!(metrics.mailboxes_db_records.get(), 5);
    }
}
