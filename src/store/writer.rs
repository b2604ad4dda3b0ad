//! The write path: requests that queue up while a commit is in flight are applied together
//! and made durable by one commit (group commit); only then are their callers answered and
//! their changes published.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use std::time::Instant;

use redb::{Database, Durability, ReadableTable, WriteTransaction};

use tokio::sync::{broadcast, oneshot};

use super::key::row_key;
use super::record::{MailboxRecord, MailboxState, normalize_acl, server_of};
use super::{
    CHANGES, Change, Checkpoint, ConflictPolicy, Keeping, MAILBOXES, META, META_UPSTREAM_EPOCH,
    META_UPSTREAM_SEQ, Mutation, Outcome, StoreError, UPSTREAM_POSITIONS,
};
use crate::mailbox::MailboxWrite;

/// The change log may exceed its count bound by this much before it is trimmed.
const TRIM_STEP: u64 = 1024;

/// One caller's mutations, applied in order in one commit and answered together.
pub(crate) struct WriteRequest {
    pub(crate) mutations: Vec<Mutation>,
    /// Recorded after the mutations, in the same commit.
    pub(crate) checkpoint: Option<Checkpoint>,
    pub(crate) reply: Reply,
    /// The requesting command's `traceparent`, when it is traced.
    pub(crate) trace: Option<Arc<str>>,
    pub(crate) keeping: Keeping,
}

/// A committed batch's answers, not yet sent.
pub(crate) struct Answers(Vec<(Reply, Result<Vec<Outcome>, StoreError>)>);

/// Where one request's answer goes.
type Reply = oneshot::Sender<Result<Vec<Outcome>, StoreError>>;

impl Answers {
    /// Sends every answer (to callers still waiting).
    pub(crate) fn send(self) {
        for (reply, answer) in self.0 {
            let _ = reply.send(answer);
        }
    }
}

/// Owns the write path. Whoever holds leadership (see [`super::Store::apply`]) calls it; redb
/// allows one write transaction at a time and only the leader opens one.
pub(crate) struct Committer {
    pub(crate) db: Arc<Database>,
    pub(crate) feed: broadcast::Sender<Arc<Change>>,
    pub(crate) policy: ConflictPolicy,
    pub(crate) changelog_max: u64,
    pub(crate) changelog_max_age: Option<std::time::Duration>,
    pub(crate) last_seq: Arc<AtomicU64>,
    /// Follows `last_seq`, for tasks that wait for commits without taking the feed.
    pub(crate) committed: Arc<tokio::sync::watch::Sender<u64>>,
    pub(crate) metrics: Arc<super::CommitStats>,
}

impl Committer {
    /// Commits `batch` durably and publishes its changes; returns the answers, for the
    /// caller to send.
    pub(crate) fn commit_batch(&self, batch: Vec<WriteRequest>) -> Answers {
        let writes: usize = batch.iter().map(|request| request.mutations.len()).sum();
        // A child of the command whose task leads this group commit.
        let _span = crate::observability::traces::child_only(|| {
            tracing::debug_span!(
                target: crate::observability::traces::SPAN_TARGET,
                "store.commit",
                otel.name = "store commit",
                db.system.name = "redb",
                mupdate.commit.batch_size = writes,
            )
        })
        .entered();
        let started = Instant::now();
        match self.commit(&batch) {
            Ok((outcomes, changes)) => {
                self.metrics.record_commit(writes, started.elapsed());
                // Publish before answering, so a client that saw OK and then asks a
                // streaming connection for a NOOP barrier finds the change queued.
                if self.feed.receiver_count() > 0 {
                    for change in changes {
                        let _ = self.feed.send(Arc::new(change));
                    }
                }
                Answers(
                    batch
                        .into_iter()
                        .zip(outcomes)
                        .map(|(request, outcome)| (request.reply, Ok(outcome)))
                        .collect(),
                )
            }
            Err(error) => {
                tracing::error!(%error, batch = writes, "commit failed; no change of this batch was made");
                Answers(
                    batch
                        .into_iter()
                        .map(|request| (request.reply, Err(error.clone())))
                        .collect(),
                )
            }
        }
    }

    /// Applies `batch` in one transaction; returns each request's outcomes and the changes
    /// made.
    fn commit(
        &self,
        batch: &[WriteRequest],
    ) -> Result<(Vec<Vec<Outcome>>, Vec<Change>), StoreError> {
        let txn = self.db.begin_write().map_err(StoreError::from_redb)?;
        let first_seq = self.last_seq.load(Ordering::Acquire);
        let mut seq = first_seq;
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut changes = Vec::new();
        // The last change not logged, if it is the batch's last change.
        let mut unlogged_last: Option<Vec<u8>> = None;
        let mut unlogged_any = false;
        {
            let mut mailboxes = txn.open_table(MAILBOXES).map_err(StoreError::from_redb)?;
            let mut log = txn.open_table(CHANGES).map_err(StoreError::from_redb)?;
            let mut positions = txn
                .open_table(UPSTREAM_POSITIONS)
                .map_err(StoreError::from_redb)?;
            for request in batch {
                let mut answers = Vec::with_capacity(request.mutations.len());
                for mutation in &request.mutations {
                    let (outcome, change) = apply(&mut mailboxes, mutation, self.policy)?;
                    answers.push(outcome);
                    let Some(mut change) = change else { continue };
                    change.trace = request.trace.clone();
                    seq += 1;
                    change.seq = seq;
                    let entry = change.encode_log_entry();
                    if request.keeping.logged {
                        log.insert(seq, entry.as_slice())
                            .map_err(StoreError::from_redb)?;
                        unlogged_last = None;
                    } else {
                        unlogged_any = true;
                        unlogged_last = Some(entry);
                    }
                    changes.push(change);
                }
                if let Some(Checkpoint {
                    epoch,
                    seq: upstream_seq,
                }) = request.checkpoint
                {
                    let mut meta = txn.open_table(META).map_err(StoreError::from_redb)?;
                    meta.insert(META_UPSTREAM_EPOCH, epoch)
                        .map_err(StoreError::from_redb)?;
                    meta.insert(META_UPSTREAM_SEQ, upstream_seq)
                        .map_err(StoreError::from_redb)?;
                    positions
                        .insert((epoch, upstream_seq), seq)
                        .map_err(StoreError::from_redb)?;
                }
                outcomes.push(answers);
            }
            if unlogged_any {
                // The log keeps its newest entry (the sequence is read from it at open),
                // and nothing older: a gap would pass for a complete history.
                if let Some(entry) = unlogged_last {
                    log.insert(seq, entry.as_slice())
                        .map_err(StoreError::from_redb)?;
                }
                log.retain_in(..seq, |_, _| false)
                    .map_err(StoreError::from_redb)?;
                forget_positions_before(&mut positions, seq)?;
            } else if let Some(kept_from) = self.trim(&mut log, seq)? {
                forget_positions_before(&mut positions, kept_from)?;
            }
        }
        // A batch is synced to disk unless none of its requests asked for that.
        let durable = batch.iter().any(|request| request.keeping.durable);
        commit(txn, durable)?;
        self.last_seq.store(seq, Ordering::Release);
        if seq != first_seq {
            self.committed.send_replace(seq);
        }
        Ok((outcomes, changes))
    }
}

impl Committer {
    /// Bounds the change log by count (trimming in steps of [`TRIM_STEP`], so that most
    /// commits touch no old pages) and by age; the newest entry always stays. Returns the
    /// oldest seq kept when it dropped any.
    fn trim(
        &self,
        log: &mut redb::Table<'_, u64, &'static [u8]>,
        seq: u64,
    ) -> Result<Option<u64>, StoreError> {
        let Some(first) = log
            .first()
            .map_err(StoreError::from_redb)?
            .map(|(k, _)| k.value())
        else {
            return Ok(None);
        };
        let mut keep_from = first;
        if seq + 1 - first > self.changelog_max + TRIM_STEP {
            keep_from = seq + 1 - self.changelog_max;
        }
        if let Some(max_age) = self.changelog_max_age {
            let cutoff = super::now_secs().saturating_sub(max_age.as_secs());
            for row in log.range(keep_from..seq).map_err(StoreError::from_redb)? {
                let (key, value) = row.map_err(StoreError::from_redb)?;
                if super::Change::logged_at(value.value()).is_some_and(|at| at < cutoff) {
                    keep_from = key.value() + 1;
                } else {
                    break;
                }
            }
        }
        if keep_from > first {
            log.retain_in(..keep_from, |_, _| false)
                .map_err(StoreError::from_redb)?;
            return Ok(Some(keep_from));
        }
        Ok(None)
    }
}

/// Drops the checkpoints from which no delta can be sent any more: those before the change
/// log's oldest entry `kept_from` (a delta from local seq `s` needs `s + 1` on).
fn forget_positions_before(
    positions: &mut redb::Table<'_, (u64, u64), u64>,
    kept_from: u64,
) -> Result<(), StoreError> {
    positions
        .retain(|_, local| local + 1 >= kept_from)
        .map_err(StoreError::from_redb)
}

fn commit(mut txn: WriteTransaction, durable: bool) -> Result<(), StoreError> {
    // Durability::Immediate is redb's default: commit() returns after the fsync. A commit
    // with Durability::None is on disk with the next durable one, and lost in a crash
    // before it, with everything after it.
    if !durable {
        txn.set_durability(Durability::None)
            .map_err(StoreError::from_redb)?;
    }
    txn.commit().map_err(StoreError::from_redb)
}

type MailboxTable<'t> = redb::Table<'t, &'static [u8], &'static [u8]>;

/// The state machine of spec §6 for one mutation inside the batch's transaction.
fn apply(
    table: &mut MailboxTable<'_>,
    mutation: &Mutation,
    policy: ConflictPolicy,
) -> Result<(Outcome, Option<Change>), StoreError> {
    let name = mutation.name();
    let key = row_key(name);
    let existing = table
        .get(key.as_slice())
        .map_err(StoreError::from_redb)?
        .map(|value| MailboxRecord::decode(name, value.value()))
        .map(|decoded| decoded.ok_or_else(|| StoreError::Corrupt(lossy(name))))
        .transpose()?;
    let old_server = existing.as_ref().map(|r| server_of(&r.location).to_vec());
    let new_record = |state, location: &[u8], acl: Vec<u8>| MailboxRecord {
        name: name.to_vec(),
        state,
        location: location.to_vec(),
        acl,
    };
    let (outcome, next) = match (mutation, &existing) {
        (Mutation::Write(MailboxWrite::Activate { location, acl, .. }), _) => (
            Outcome::Done,
            Some(Some(new_record(
                MailboxState::Active,
                location,
                normalize_acl(acl),
            ))),
        ),
        (Mutation::Write(MailboxWrite::Reserve { location, .. }), Some(current))
            if current.location != *location && policy == ConflictPolicy::Standard =>
        {
            (Outcome::AlreadyExists, None)
        }
        (Mutation::Write(MailboxWrite::Reserve { location, .. }), _) => (
            Outcome::Done,
            Some(Some(new_record(
                MailboxState::Reserved,
                location,
                Vec::new(),
            ))),
        ),
        (Mutation::Write(MailboxWrite::Deactivate { .. }), None) => (Outcome::DoesNotExist, None),
        (Mutation::Write(MailboxWrite::Deactivate { .. }), Some(current))
            if current.state == MailboxState::Reserved =>
        {
            (Outcome::NotActive, None)
        }
        (Mutation::Write(MailboxWrite::Deactivate { location, .. }), Some(_)) => (
            Outcome::Done,
            Some(Some(new_record(
                MailboxState::Reserved,
                location,
                Vec::new(),
            ))),
        ),
        (Mutation::Write(MailboxWrite::Delete { .. }), None)
            if policy == ConflictPolicy::Standard =>
        {
            (Outcome::DoesNotExist, None)
        }
        (Mutation::Write(MailboxWrite::Delete { .. }), _) => (Outcome::Done, Some(None)),
        (Mutation::Replicate { record: None, .. }, None) => (Outcome::Done, None),
        (Mutation::Replicate { record: None, .. }, Some(_)) => (Outcome::Done, Some(None)),
        (
            Mutation::Replicate {
                record: Some(wanted),
                ..
            },
            current,
        ) => {
            let same = current.as_ref().is_some_and(|c| {
                c.state == wanted.state && c.location == wanted.location && c.acl == wanted.acl
            });
            if same {
                (Outcome::Done, None)
            } else {
                let acl = match wanted.state {
                    MailboxState::Active => wanted.acl.clone(),
                    MailboxState::Reserved => Vec::new(),
                };
                (
                    Outcome::Done,
                    Some(Some(new_record(wanted.state, &wanted.location, acl))),
                )
            }
        }
    };
    let Some(next) = next else {
        return Ok((outcome, None));
    };
    match &next {
        Some(record) => {
            table
                .insert(key.as_slice(), record.encode_value().as_slice())
                .map_err(StoreError::from_redb)?;
        }
        None => {
            table
                .remove(key.as_slice())
                .map_err(StoreError::from_redb)?;
        }
    }
    let change = Change {
        seq: 0,
        name: name.to_vec(),
        record: next,
        old_server,
        given_server: mutation.location().map(|l| server_of(l).to_vec()),
        trace: None,
    };
    Ok((outcome, Some(change)))
}

fn lossy(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}
