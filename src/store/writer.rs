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
use super::wal::{Frame, Payload, Wal, decode_payload};
use super::{
    CHANGES, Change, Checkpoint, ConflictPolicy, Keeping, MAILBOXES, META, META_UPSTREAM_EPOCH,
    META_UPSTREAM_SEQ, META_WAL_LSN, Mutation, Outcome, StoreError, UPSTREAM_POSITIONS,
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
    /// Told once the request is durable, which may be before redb has taken it in and
    /// readers see it (a replica acknowledges its master then).
    pub(crate) durable: Option<oneshot::Sender<()>>,
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
    /// The write-ahead log.
    pub(crate) wal: std::sync::Mutex<WalState>,
    /// Set when a logged (durable) commit could not be taken into redb, or redb lost its
    /// file after an I/O error: no more writes until a restart (which replays the log).
    pub(crate) halted: tokio::sync::watch::Sender<bool>,
    /// Whether a commit is published (streamed) while its frame syncs rather than after:
    /// a master's synchronous replicas then sync along with it. What a crash loses was
    /// maybe streamed; the sequence numbers skipped at open keep them from being reused.
    pub(crate) stream_before_sync: bool,
    /// Sequence numbers at or below this are never given to a change (see
    /// [`super::SEQ_GAP`]); the next change takes the one after it or after `last_seq`.
    pub(crate) seq_floor: AtomicU64,
}

impl Committer {
    /// Commits `batch` durably and publishes its changes; returns the answers, for the
    /// caller to send.
    /// `also_durable` is called along with the requests' own `durable` senders.
    pub(crate) fn commit_batch(
        &self,
        mut batch: Vec<WriteRequest>,
        also_durable: &mut dyn FnMut(),
    ) -> Answers {
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
        match self.commit(&mut batch, also_durable) {
            Ok((outcomes, unpublished)) => {
                self.metrics.record_commit(writes, started.elapsed());
                self.publish(unpublished);
                Answers(
                    batch
                        .into_iter()
                        .zip(outcomes)
                        .map(|(request, outcome)| (request.reply, Ok(outcome)))
                        .collect(),
                )
            }
            Err(error) => {
                if error.needs_reopen() {
                    tracing::error!(%error, "the database cannot be written until it is opened again: no more writes until a restart");
                    self.halt();
                }
                if !matches!(error, StoreError::Halted) {
                    tracing::error!(%error, batch = writes, "commit failed; no change of this batch was made");
                }
                Answers(
                    batch
                        .into_iter()
                        .map(|request| (request.reply, Err(error.clone())))
                        .collect(),
                )
            }
        }
    }

    /// Sends `changes` to the feed's listeners. Only once readers see them (a listener's
    /// snapshot holds what the feed sent before it), and before answering, so that a
    /// client that saw OK and then asks a streaming connection for a NOOP barrier finds
    /// them queued.
    fn publish(&self, changes: Vec<Change>) {
        if self.feed.receiver_count() > 0 {
            for change in changes {
                let _ = self.feed.send(Arc::new(change));
            }
        }
    }

    /// The sequence number the next commit's changes count on from.
    fn seq_base(&self) -> u64 {
        self.last_seq
            .load(Ordering::Acquire)
            .max(self.seq_floor.load(Ordering::Acquire))
    }

    /// Applies `batch` in one transaction, telling the requests that ask once it is
    /// durable; returns each request's outcomes and the changes made that are not
    /// published yet.
    fn commit(
        &self,
        batch: &mut [WriteRequest],
        also_durable: &mut dyn FnMut(),
    ) -> Result<(Vec<Vec<Outcome>>, Vec<Change>), StoreError> {
        if *self.halted.borrow() {
            return Err(StoreError::Halted);
        }
        let mut telling: Vec<_> = batch
            .iter_mut()
            .filter_map(|request| request.durable.take())
            .collect();
        let mut made_durable = || {
            also_durable();
            for durable in telling.drain(..) {
                let _ = durable.send(());
            }
        };
        if let Some(lsn) = self.log_replicated_first(batch, &mut made_durable) {
            return self.take_in_logged(batch, lsn);
        }
        let first_seq = self.seq_base();
        let lsn = self.log().next_lsn;
        let Built {
            txn,
            book,
            outcomes,
            changes,
        } = self.build(batch, lsn, true)?;
        let durable = batch.iter().any(|request| request.keeping.durable);
        let seq = book.seq;
        let early = self.stream_before_sync && durable && changes.len() as u64 <= super::SEQ_GAP;
        let mut unpublished = Some(changes);
        let mut publish = || self.publish(unpublished.take().unwrap_or_default());
        let sealing = match (durable, early) {
            (false, _) => Sealing::Unsynced,
            (true, false) => Sealing::Synced,
            (true, true) => Sealing::SyncedAfterPublishing(&mut publish),
        };
        self.seal(txn, book, sealing, &mut made_durable)?;
        self.advance(first_seq, seq);
        Ok((outcomes, unpublished.unwrap_or_default()))
    }

    /// Makes `seq` the last change's number if the commit from `first_seq` made any.
    fn advance(&self, first_seq: u64, seq: u64) {
        if seq != first_seq {
            self.last_seq.store(seq, Ordering::Release);
            self.committed.send_replace(seq);
        }
    }

    /// The transaction applying `batch`, not committed, recording `lsn` as its frame's;
    /// the frame is built too if `framed`.
    fn build(&self, batch: &[WriteRequest], lsn: u64, framed: bool) -> Result<Built, StoreError> {
        let txn = self.db.begin_write().map_err(StoreError::from_redb)?;
        let mut book = Book::new(self.seq_base(), framed);
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut changes = Vec::new();
        {
            let mut tables = Tables::open(&txn)?;
            for request in batch {
                book.begin_request(request.keeping, request.checkpoint);
                let mut answers = Vec::with_capacity(request.mutations.len());
                for mutation in &request.mutations {
                    let (outcome, change) = apply(&mut tables.mailboxes, mutation, self.policy)?;
                    answers.push(outcome);
                    let Some(mut change) = change else { continue };
                    change.trace = request.trace.clone();
                    change.seq = book.log(&mut tables, change.encode_log_entry())?;
                    changes.push(change);
                }
                book.end_request(&mut tables)?;
                outcomes.push(answers);
            }
            book.finish(self, &mut tables)?;
            tables
                .meta
                .insert(META_WAL_LSN, lsn)
                .map_err(StoreError::from_redb)?;
        }
        Ok(Built {
            txn,
            book,
            outcomes,
            changes,
        })
    }

    /// A replica's batch (every request durable, every mutation a record as its master
    /// sent it) is logged as received, and synced, before it is applied: the replica may
    /// acknowledge it without waiting for the transaction to be built, and a replay
    /// applies it the same way. Returns the frame's lsn, `made_durable` told; `None` (the
    /// batch to be committed the usual way) for any other batch, or when the frame does
    /// not fit in the log or cannot be written.
    fn log_replicated_first(
        &self,
        batch: &[WriteRequest],
        made_durable: &mut dyn FnMut(),
    ) -> Option<u64> {
        let replicated = batch.iter().all(|request| {
            request.keeping.durable
                && request
                    .mutations
                    .iter()
                    .all(|mutation| matches!(mutation, Mutation::Replicate { .. }))
        });
        // A master's commits (every write its clients make) are not: nothing is built.
        if !replicated {
            return None;
        }
        let mut payload = Payload::default();
        for request in batch {
            payload.begin_request(request.keeping, request.checkpoint, true);
            for mutation in &request.mutations {
                payload.entry(&mutation.replicated_entry()?);
            }
            payload.end_request();
        }
        let payload = payload.into_bytes();
        let mut wal = self.log();
        if !wal.takes(payload.len()) {
            return None;
        }
        let lsn = wal.next_lsn;
        if !wal.append(lsn, &payload, true) {
            return None;
        }
        wal.next_lsn = lsn.saturating_add(1);
        drop(wal);
        made_durable();
        Some(lsn)
    }

    /// Applies `batch`, whose frame `lsn` is durable (and acknowledged): if that fails,
    /// no more writes until a restart replays the frame.
    fn take_in_logged(
        &self,
        batch: &[WriteRequest],
        lsn: u64,
    ) -> Result<(Vec<Vec<Outcome>>, Vec<Change>), StoreError> {
        let first_seq = self.seq_base();
        let built = self.build(batch, lsn, false).and_then(|built| {
            commit(built.txn, false)?;
            Ok((built.book.seq, built.outcomes, built.changes))
        });
        match built {
            Ok((seq, outcomes, changes)) => {
                self.advance(first_seq, seq);
                Ok((outcomes, changes))
            }
            Err(error) => {
                tracing::error!(%error, lsn, "a logged replicated commit cannot be applied: no more writes until a restart");
                Err(self.halt())
            }
        }
    }

    /// Commits `txn`: through the write-ahead log when the batch fits in it, so that only
    /// its frame is synced; otherwise redb syncs its pages itself (unless
    /// [`Sealing::Unsynced`]), which makes everything before it durable too and lets the log
    /// start over. `made_durable` is called once the batch is durable: when the log holds
    /// it, before redb commits it (a replica need not wait for that to acknowledge it).
    fn seal(
        &self,
        txn: WriteTransaction,
        book: Book,
        sealing: Sealing<'_>,
        made_durable: &mut dyn FnMut(),
    ) -> Result<(), StoreError> {
        let payload = book.payload.map(Payload::into_bytes).unwrap_or_default();
        let mut wal = self.log();
        let lsn = wal.next_lsn;
        // A failed commit gives its lsn back: neither redb nor the log's chain of frames
        // holds it.
        self.seal_logged(&mut wal, txn, lsn, &payload, sealing, made_durable)?;
        wal.next_lsn = lsn.saturating_add(1);
        Ok(())
    }

    fn seal_logged(
        &self,
        wal: &mut WalState,
        txn: WriteTransaction,
        lsn: u64,
        payload: &[u8],
        sealing: Sealing<'_>,
        made_durable: &mut dyn FnMut(),
    ) -> Result<(), StoreError> {
        let durable = !matches!(sealing, Sealing::Unsynced);
        if !wal.takes(payload.len()) {
            if durable {
                self.commit_past_log(wal, txn)?;
            } else {
                // Not in the log: no later frame may be replayed without it, until redb
                // syncs.
                wal.chained = false;
                commit(txn, false)?;
            }
            made_durable();
            return Ok(());
        }
        // Published early, the frame is synced only once redb has the commit and it is
        // published, so that the replicas that receive it sync at the same time.
        if !wal.append(lsn, payload, matches!(sealing, Sealing::Synced)) {
            self.commit_past_log(wal, txn)?;
            made_durable();
            return Ok(());
        }
        let Sealing::SyncedAfterPublishing(publish) = sealing else {
            made_durable();
            return self.take_in(txn, lsn, payload);
        };
        self.take_in(txn, lsn, payload)?;
        publish();
        if let Err(error) = wal.log.sync() {
            // What was published may be lost unless redb's own sync makes it durable.
            tracing::error!(%error, "cannot sync the write-ahead log; syncing redb");
            wal.chained = false;
            let synced = self
                .db
                .begin_write()
                .map_err(StoreError::from_redb)
                .and_then(|txn| self.commit_past_log(wal, txn));
            if let Err(error) = synced {
                tracing::error!(%error, lsn, "a published commit cannot be made durable: no more writes until a restart");
                return Err(self.halt());
            }
        }
        made_durable();
        Ok(())
    }

    /// Commits `txn`, whose frame is in the log: redb must take it in (the frame may be
    /// durable and acknowledged as such), by replaying the frame if its commit fails, or
    /// the store takes no more writes until a restart replays it.
    fn take_in(&self, txn: WriteTransaction, lsn: u64, payload: &[u8]) -> Result<(), StoreError> {
        let Err(error) = commit(txn, false) else {
            return Ok(());
        };
        tracing::error!(%error, lsn, "commit failed after its frame was logged; replaying the frame");
        if let Err(error) = self.replay(lsn, payload) {
            tracing::error!(%error, lsn, "replaying the frame failed: no more writes until a restart");
            return Err(self.halt());
        }
        Ok(())
    }

    /// Refuses every write from now on, until a restart; returns the error that says so.
    fn halt(&self) -> StoreError {
        self.halted.send_replace(true);
        StoreError::Halted
    }

    /// Commits `txn` with redb's own sync: everything logged so far is durable in redb, and
    /// the log starts over.
    fn commit_past_log(&self, wal: &mut WalState, txn: WriteTransaction) -> Result<(), StoreError> {
        commit(txn, true)?;
        wal.log.restart();
        wal.chained = true;
        Ok(())
    }

    /// Redoes one frame of the write-ahead log (at open): each request's changes as they
    /// were made, with the same sequence numbers, and its checkpoint. Not synced: the
    /// caller syncs once after the last frame.
    fn replay(&self, lsn: u64, payload: &[u8]) -> Result<(), StoreError> {
        let corrupt = || StoreError::Corrupt(format!("write-ahead log frame {lsn}"));
        let requests = decode_payload(payload).ok_or_else(corrupt)?;
        let txn = self.db.begin_write().map_err(StoreError::from_redb)?;
        let base = self.seq_base();
        let mut book = Book::new(base, false);
        {
            let mut tables = Tables::open(&txn)?;
            for request in requests {
                book.begin_request(request.keeping, request.checkpoint);
                if request.replicated {
                    for entry in request.entries {
                        let mutation = Mutation::from_entry(&entry).ok_or_else(corrupt)?;
                        let (_, change) = apply(&mut tables.mailboxes, &mutation, self.policy)?;
                        if let Some(change) = change {
                            book.log(&mut tables, change.encode_log_entry())?;
                        }
                    }
                    book.end_request(&mut tables)?;
                    continue;
                }
                for entry in request.entries {
                    let change = Change::decode_log_entry(0, &entry).ok_or_else(corrupt)?;
                    let key = row_key(&change.name);
                    match &change.record {
                        Some(record) => tables
                            .mailboxes
                            .insert(key.as_slice(), record.encode_value().as_slice())
                            .map(drop),
                        None => tables.mailboxes.remove(key.as_slice()).map(drop),
                    }
                    .map_err(StoreError::from_redb)?;
                    book.log(&mut tables, entry)?;
                }
                book.end_request(&mut tables)?;
            }
            book.finish(self, &mut tables)?;
            tables
                .meta
                .insert(META_WAL_LSN, lsn)
                .map_err(StoreError::from_redb)?;
        }
        commit(txn, false)?;
        if book.seq != base {
            self.last_seq.store(book.seq, Ordering::Release);
            self.committed.send_replace(book.seq);
        }
        Ok(())
    }
}

impl Committer {
    /// Replays the frames of the write-ahead log that redb's last synced commit (which
    /// holds commits through `synced_lsn`) does not hold, then syncs redb. Returns how
    /// many were replayed.
    pub(crate) fn recover(&self, synced_lsn: u64, frames: Vec<Frame>) -> Result<usize, StoreError> {
        let mut next = synced_lsn.checked_add(1);
        let mut replayed = 0;
        let mut gap = false;
        let id = self.log().id;
        let ours = frames
            .into_iter()
            .filter(|(of, lsn, _)| *of == id && *lsn > synced_lsn);
        for (_, lsn, payload) in ours {
            if Some(lsn) != next {
                gap = true;
                break;
            }
            self.replay(lsn, &payload)?;
            replayed += 1;
            next = lsn.checked_add(1);
        }
        if replayed > 0 {
            let txn = self.db.begin_write().map_err(StoreError::from_redb)?;
            commit(txn, true)?;
        }
        let mut wal = self.log();
        wal.next_lsn = wal.next_lsn.max(next.unwrap_or(u64::MAX));
        if gap {
            tracing::error!(
                synced_lsn,
                replayed,
                "the write-ahead log skips a commit; what follows the gap is not replayed"
            );
            wal.log.clear().map_err(StoreError::wal)?;
        }
        Ok(replayed)
    }

    /// The write-ahead log; only the commit loop (or the open) takes it.
    fn log(&self) -> std::sync::MutexGuard<'_, WalState> {
        // A panic while holding it leaves no half-made change behind: the fields are
        // set only after what they describe is done.
        self.wal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A batch's transaction, built and not committed, with what it did.
struct Built {
    txn: WriteTransaction,
    book: Book,
    outcomes: Vec<Vec<Outcome>>,
    changes: Vec<Change>,
}

/// How a commit is made durable.
enum Sealing<'p> {
    /// Not synced: on disk with the next commit that is (a replica's first list).
    Unsynced,
    /// Synced before readers see it and it is published.
    Synced,
    /// Seen by readers and published (by the function given) while it syncs, so that
    /// the replicas that receive it sync at the same time as this store.
    SyncedAfterPublishing(&'p mut dyn FnMut()),
}

/// The write-ahead log and where it stands.
pub(crate) struct WalState {
    pub(crate) log: Wal,
    /// The database's log id, which its frames carry.
    pub(crate) id: u64,
    /// The lsn of the next commit (each commit takes one, logged or not).
    pub(crate) next_lsn: u64,
    /// Whether every commit since redb last synced itself is in the log, so that a frame
    /// may be appended (and replayed).
    pub(crate) chained: bool,
}

impl WalState {
    /// Whether a frame of `payload` bytes may be appended (and later replayed).
    fn takes(&self, payload: usize) -> bool {
        self.chained && self.log.fits(payload)
    }

    /// Appends the frame of commit `lsn` (and syncs the log, if `sync`). Whether it did;
    /// if not, the log is unchained, for the commit to go through redb's own sync.
    fn append(&mut self, lsn: u64, payload: &[u8], sync: bool) -> bool {
        let appended = self
            .log
            .append(self.id, lsn, payload)
            .and_then(|()| if sync { self.log.sync() } else { Ok(()) });
        let Err(error) = appended else {
            return true;
        };
        tracing::error!(%error, "cannot write the write-ahead log; committing through redb");
        // The frame may be in the file, whole or in part: nothing may follow it there.
        self.chained = false;
        false
    }
}

/// The tables one commit writes.
struct Tables<'t> {
    mailboxes: MailboxTable<'t>,
    log: redb::Table<'t, u64, &'static [u8]>,
    positions: redb::Table<'t, (u64, u64), u64>,
    meta: redb::Table<'t, &'static str, u64>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Tables {
            mailboxes: txn.open_table(MAILBOXES).map_err(StoreError::from_redb)?,
            log: txn.open_table(CHANGES).map_err(StoreError::from_redb)?,
            positions: txn
                .open_table(UPSTREAM_POSITIONS)
                .map_err(StoreError::from_redb)?,
            meta: txn.open_table(META).map_err(StoreError::from_redb)?,
        })
    }
}

/// One commit's bookkeeping: the sequence numbers its changes take, what the change log
/// keeps of them, the requests' checkpoints, and the commit's write-ahead frame.
struct Book {
    seq: u64,
    /// The last change not logged, if it is the batch's last change.
    unlogged_last: Option<Vec<u8>>,
    unlogged_any: bool,
    keeping: Keeping,
    checkpoint: Option<Checkpoint>,
    /// The commit's write-ahead frame, when it is to be written (not a replay's, nor that
    /// of a batch logged before it was applied).
    payload: Option<Payload>,
}

impl Book {
    /// A commit's bookkeeping from `seq` on, building its frame if `framed`.
    fn new(seq: u64, framed: bool) -> Book {
        Book {
            seq,
            unlogged_last: None,
            unlogged_any: false,
            keeping: Keeping::DURABLE,
            checkpoint: None,
            payload: framed.then(Payload::default),
        }
    }

    fn begin_request(&mut self, keeping: Keeping, checkpoint: Option<Checkpoint>) {
        self.keeping = keeping;
        self.checkpoint = checkpoint;
        if let Some(payload) = &mut self.payload {
            payload.begin_request(keeping, checkpoint, false);
        }
    }

    /// Logs a change (its log entry): returns its sequence number.
    fn log(&mut self, tables: &mut Tables<'_>, entry: Vec<u8>) -> Result<u64, StoreError> {
        self.seq += 1;
        if let Some(payload) = &mut self.payload {
            payload.entry(&entry);
        }
        if self.keeping.logged {
            tables
                .log
                .insert(self.seq, entry.as_slice())
                .map_err(StoreError::from_redb)?;
            self.unlogged_last = None;
        } else {
            self.unlogged_any = true;
            self.unlogged_last = Some(entry);
        }
        Ok(self.seq)
    }

    /// Records the request's checkpoint, after its changes.
    fn end_request(&mut self, tables: &mut Tables<'_>) -> Result<(), StoreError> {
        if let Some(payload) = &mut self.payload {
            payload.end_request();
        }
        if let Some(Checkpoint {
            epoch,
            seq: upstream_seq,
        }) = self.checkpoint.take()
        {
            tables
                .meta
                .insert(META_UPSTREAM_EPOCH, epoch)
                .map_err(StoreError::from_redb)?;
            tables
                .meta
                .insert(META_UPSTREAM_SEQ, upstream_seq)
                .map_err(StoreError::from_redb)?;
            tables
                .positions
                .insert((epoch, upstream_seq), self.seq)
                .map_err(StoreError::from_redb)?;
        }
        Ok(())
    }

    /// Bounds the change log once the batch is in.
    fn finish(&mut self, committer: &Committer, tables: &mut Tables<'_>) -> Result<(), StoreError> {
        if self.unlogged_any {
            // The log keeps its newest entry (the sequence is read from it at open),
            // and nothing older: a gap would pass for a complete history.
            if let Some(entry) = self.unlogged_last.take() {
                tables
                    .log
                    .insert(self.seq, entry.as_slice())
                    .map_err(StoreError::from_redb)?;
            }
            tables
                .log
                .retain_in(..self.seq, |_, _| false)
                .map_err(StoreError::from_redb)?;
            forget_positions_before(&mut tables.positions, self.seq)?;
        } else if let Some(kept_from) = committer.trim(&mut tables.log, self.seq)? {
            forget_positions_before(&mut tables.positions, kept_from)?;
        }
        Ok(())
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
