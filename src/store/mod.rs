//! The mailbox list on redb: one table of records in Cyrus order, a bounded change log with
//! a sequence number per committed change, and a feed that publishes each change after its
//! commit. Writes are group-committed (see [`Store::apply`]); reads run on MVCC snapshots
//! and never wait for a commit.

mod key;
mod record;
pub mod wal;
mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, oneshot};

use crate::mailbox::MailboxWrite;

pub use key::{name_of, row_key};
pub use record::{MailboxRecord, MailboxState, normalize_acl, server_of};

const MAILBOXES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("mailboxes");
const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// A replica's checkpoints in its masters' histories, (upstream epoch, upstream seq), each
/// with the local seq its store was at once that checkpoint was applied: what lets a replica
/// of the same master resume from this one by delta when this one takes the master's place.
const UPSTREAM_POSITIONS: TableDefinition<(u64, u64), u64> =
    TableDefinition::new("upstream_positions");
const META_EPOCH: &str = "epoch";
const META_SCHEMA: &str = "schema_version";
const META_UPSTREAM_EPOCH: &str = "upstream_epoch";
const META_UPSTREAM_SEQ: &str = "upstream_seq";
/// The lsn of the last commit (see the write-ahead log, [`wal`]).
const META_WAL_LSN: &str = "wal_lsn";
/// The database's write-ahead log id, made with it and never changed.
const META_WAL_ID: &str = "wal_id";
/// The end of the last run of sequence numbers skipped at open ([`SEQ_GAP`]), once any was.
const META_SEQ_FLOOR: &str = "seq_floor";
/// The runs of sequence numbers skipped at open, each keyed by its last number and holding
/// the last change before it: a replica holding one of them received it from this store
/// before a crash lost it.
const SEQ_GAPS: TableDefinition<u64, u64> = TableDefinition::new("seq_gaps");
/// How many sequence numbers a store that publishes commits before they are durable skips
/// at open: a crash may have lost changes that replicas already hold, and their numbers
/// must never be given to other changes. More than any commit publishes early.
pub const SEQ_GAP: u64 = 1 << 32;
const SCHEMA_VERSION: u64 = 2;

/// Errors of the store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// redb reported an error.
    #[error("database error: {0}")]
    Database(Arc<redb::Error>),
    /// Another process holds the database file.
    #[error("the database is in use by another process")]
    InUse,
    /// A row could not be decoded.
    #[error("corrupt record for mailbox {0:?}")]
    Corrupt(String),
    /// The database was written by an incompatible version.
    #[error("unsupported schema version {0} (this build reads {SCHEMA_VERSION})")]
    Schema(u64),
    /// The request was dropped before it was committed.
    #[error("the store is shut down")]
    Closed,
    /// A commit durable in the write-ahead log could not be taken into redb, or redb cannot
    /// be written until it is opened again; a restart replays the log.
    #[error("the store stopped taking writes after a failed commit; restart to replay it")]
    Halted,
    /// The write-ahead log could not be read or written.
    #[error("write-ahead log: {0}")]
    Wal(Arc<std::io::Error>),
}

impl StoreError {
    fn from_redb(error: impl Into<redb::Error>) -> Self {
        match error.into() {
            redb::Error::DatabaseAlreadyOpen => StoreError::InUse,
            other => StoreError::Database(Arc::new(other)),
        }
    }

    /// Whether the database file failed to be written: redb then refuses everything,
    /// reads too, until the database is opened again.
    fn needs_reopen(&self) -> bool {
        matches!(self, StoreError::Database(error)
            if matches!(**error, redb::Error::Io(_) | redb::Error::PreviousIo))
    }

    fn wal(error: std::io::Error) -> Self {
        StoreError::Wal(Arc::new(error))
    }
}

/// How conflicting writes are resolved (spec §5.3, §5.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConflictPolicy {
    /// RESERVE elsewhere is refused; DELETE of an unknown name is refused.
    #[default]
    Standard,
    /// `mupdate_config: replicated` or `unified` with `mupdate_server` set: RESERVE
    /// overwrites, DELETE of an unknown name succeeds.
    Replicated,
}

/// Seconds since the Unix epoch.
fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A write request (spec §5.2-§5.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    /// A backend's write (or a tool's).
    Write(MailboxWrite),
    /// A slave copying its master: make the record exactly this (`None`: remove it).
    /// Commits (and announces) nothing when the record is already so.
    Replicate {
        /// Mailbox name.
        name: Vec<u8>,
        /// The master's record.
        record: Option<ReplicaRecord>,
    },
}

/// A slave's position in its master's history, committed with the changes that bring the
/// replica there (in the same transaction, after them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// The master's epoch.
    pub epoch: u64,
    /// The master's sequence number of the last change applied.
    pub seq: u64,
}

/// A record as a master sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRecord {
    /// Active or reserved.
    pub state: MailboxState,
    /// Location.
    pub location: Vec<u8>,
    /// ACL as sent (empty for reserved).
    pub acl: Vec<u8>,
}

impl Mutation {
    /// The mailbox the mutation is about.
    pub fn name(&self) -> &[u8] {
        match self {
            Mutation::Write(write) => write.name(),
            Mutation::Replicate { name, .. } => name,
        }
    }

    /// The location given in the command, if any.
    pub fn location(&self) -> Option<&[u8]> {
        match self {
            Mutation::Write(write) => write.location(),
            Mutation::Replicate { record, .. } => record.as_ref().map(|r| r.location.as_slice()),
        }
    }
}

impl From<MailboxWrite> for Mutation {
    fn from(write: MailboxWrite) -> Mutation {
        Mutation::Write(write)
    }
}

/// Result of a write, mapped to the wire by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `OK "done"`
    Done,
    /// `NO "mailbox already exists"`
    AlreadyExists,
    /// `NO "mailbox not currently active"`
    NotActive,
    /// `NO "mailbox doesn't exist"`
    DoesNotExist,
}

/// One committed change, as streamed to UPDATE listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Sequence number of the change (monotonic, never reused).
    pub seq: u64,
    /// The mailbox.
    pub name: Vec<u8>,
    /// The record after the change; `None` when it was deleted.
    pub record: Option<MailboxRecord>,
    /// Server part of the location before the change, if the record existed.
    pub old_server: Option<Vec<u8>>,
    /// Server part of the location the command gave, if any.
    pub given_server: Option<Vec<u8>>,
    /// The W3C `traceparent` of the traced command that made the change, if it was traced
    /// (in memory only: the live feed carries it to resumable slaves).
    pub trace: Option<std::sync::Arc<str>>,
}

impl Change {
    /// Whether a PARTIAL-UPDATE listener for `hosts` is told about this change (spec §7.3).
    pub fn concerns_any(&self, hosts: &[Vec<u8>]) -> bool {
        hosts.is_empty()
            || hosts.iter().any(|h| {
                self.old_server.as_deref() == Some(h.as_slice())
                    || self.given_server.as_deref() == Some(h.as_slice())
            })
    }

    /// When a change log entry was written (seconds since the epoch).
    fn logged_at(bytes: &[u8]) -> Option<u64> {
        Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
    }

    fn decode_log_entry(seq: u64, bytes: &[u8]) -> Option<Change> {
        let bytes = bytes.get(8..)?;
        let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        let name = bytes.get(4..4 + len)?.to_vec();
        let value = bytes.get(4 + len..)?;
        let record = if value.is_empty() {
            None
        } else {
            Some(MailboxRecord::decode(&name, value)?)
        };
        Some(Change {
            seq,
            name,
            record,
            old_server: None,
            given_server: None,
            trace: None,
        })
    }

    fn encode_log_entry(&self) -> Vec<u8> {
        let record = self
            .record
            .as_ref()
            .map(|r| (r.state, r.location.as_slice(), r.acl.as_slice()));
        encode_entry(&self.name, record)
    }
}

/// A change log entry (also a write-ahead frame's): when, the name, and the record after
/// the change (nothing when it was removed).
fn encode_entry(name: &[u8], record: Option<(MailboxState, &[u8], &[u8])>) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 72);
    out.extend_from_slice(&now_secs().to_be_bytes());
    out.extend_from_slice(&(name.len() as u32).to_be_bytes());
    out.extend_from_slice(name);
    if let Some((state, location, acl)) = record {
        record::encode_value(state, location, acl, &mut out);
    }
    out
}

impl Mutation {
    /// A replicated mutation as a change log entry, which [`Mutation::from_entry`] reads.
    fn replicated_entry(&self) -> Option<Vec<u8>> {
        let Mutation::Replicate { name, record } = self else {
            return None;
        };
        let record = record
            .as_ref()
            .map(|r| (r.state, r.location.as_slice(), r.acl.as_slice()));
        Some(encode_entry(name, record))
    }

    /// The replicated mutation a change log entry describes.
    fn from_entry(entry: &[u8]) -> Option<Mutation> {
        let change = Change::decode_log_entry(0, entry)?;
        Some(Mutation::Replicate {
            name: change.name,
            record: change.record.map(|r| ReplicaRecord {
                state: r.state,
                location: r.location,
                acl: r.acl,
            }),
        })
    }
}

/// Called after each durable commit with its batch size and duration.
pub type CommitObserver = Box<dyn Fn(usize, Duration) + Send + Sync>;

/// Commit counters, for observability.
#[derive(Default)]
pub struct CommitStats {
    commits: AtomicU64,
    writes: AtomicU64,
    commit_micros: AtomicU64,
    observer: std::sync::OnceLock<CommitObserver>,
}

impl CommitStats {
    fn record_commit(&self, batch: usize, took: Duration) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(batch as u64, Ordering::Relaxed);
        self.commit_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        if let Some(observe) = self.observer.get() {
            observe(batch, took);
        }
    }

    /// Installs the observer of every later commit; only the first one installed counts.
    pub fn observe(&self, observer: CommitObserver) {
        let _ = self.observer.set(observer);
    }

    /// (commits, writes, total commit time in µs) since start.
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.commits.load(Ordering::Relaxed),
            self.writes.load(Ordering::Relaxed),
            self.commit_micros.load(Ordering::Relaxed),
        )
    }
}

/// Options of [`Store::open`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How conflicting writes are resolved.
    pub policy: ConflictPolicy,
    /// How many changes the log keeps.
    pub changelog_max: u64,
    /// How long the log keeps a change (`None`: no limit).
    pub changelog_max_age: Option<Duration>,
    /// How many changes a lagging listener may fall behind before it is dropped.
    pub feed_capacity: usize,
    /// redb page cache size in bytes.
    pub cache_bytes: usize,
    /// Size of the write-ahead log file: how much is written between redb's own syncs.
    pub wal_bytes: u64,
    /// Whether commits are published while their frame syncs (a master whose writes
    /// wait for synchronous replicas): see [`SEQ_GAP`].
    pub stream_before_sync: bool,
}

/// Changes the log keeps by default (`mupdate_changelog_max`).
pub const DEFAULT_CHANGELOG_MAX: u64 = 100_000;
/// How long the log keeps a change by default (`mupdate_changelog_max_age`).
pub const DEFAULT_CHANGELOG_MAX_AGE: Duration = Duration::from_secs(30 * 86_400);
/// Size of the write-ahead log by default: some ten thousand commits of a few writes.
pub const DEFAULT_WAL_BYTES: u64 = 8 << 20;
/// The smallest write-ahead log.
const MIN_WAL_BYTES: u64 = 4096;
/// Changes a listener may lag behind by default (`mupdate_listener_queue`).
pub const DEFAULT_FEED_CAPACITY: usize = 16_384;

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            policy: ConflictPolicy::Standard,
            changelog_max: DEFAULT_CHANGELOG_MAX,
            changelog_max_age: Some(DEFAULT_CHANGELOG_MAX_AGE),
            feed_capacity: DEFAULT_FEED_CAPACITY,
            cache_bytes: 16 << 20,
            wal_bytes: DEFAULT_WAL_BYTES,
            stream_before_sync: false,
        }
    }
}

/// Handle to the mailbox list; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    committer: Arc<Committer>,
    queue: Arc<Queue>,
    feed: broadcast::Sender<Arc<Change>>,
    last_seq: Arc<AtomicU64>,
    committed: Arc<tokio::sync::watch::Sender<u64>>,
    epoch: u64,
    stats: Arc<CommitStats>,
}

use writer::{Committer, WriteRequest};

/// How a write is kept, beyond being committed and visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keeping {
    /// On disk before it is answered. Otherwise on disk only with the next durable
    /// commit, and lost in a crash before it: for the parts of a list that is useful only
    /// whole (a slave's resync, which ends durably).
    pub durable: bool,
    /// Each change in the change log. Otherwise only the batch's last change is, and the
    /// log loses everything before it, so that every listener resuming from an older
    /// position is sent the whole list instead: for a new replica's first list, which
    /// nobody can have followed (about a third of its commit time spared).
    pub logged: bool,
}

impl Keeping {
    /// Durable and logged: every write a client or a stream makes.
    pub const DURABLE: Keeping = Keeping {
        durable: true,
        logged: true,
    };
}

/// Requests waiting for the next commit, and whether some caller is committing.
#[derive(Default)]
struct WriteQueue {
    pending: Vec<WriteRequest>,
    leader: bool,
    /// How many requests the commit loop waits for before its next commit: the callers it
    /// just answered and those that queued meanwhile, who are likely to come back together.
    expected: usize,
    /// Whether the commit loop sleeps until `expected` requests are queued.
    gathering: bool,
}

/// The write queue and the signal that wakes a commit loop gathering a batch.
#[derive(Default)]
struct Queue {
    state: Mutex<WriteQueue>,
    filled: Condvar,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, WriteQueue> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `request`; true if the caller is to start the commit loop.
    fn push(&self, request: WriteRequest) -> bool {
        let mut queue = self.lock();
        queue.pending.push(request);
        if queue.gathering && queue.pending.len() >= queue.expected {
            self.filled.notify_one();
        }
        !std::mem::replace(&mut queue.leader, true)
    }
}

/// Longest the commit loop waits for the writers of the previous batch to queue again.
/// Closed-loop clients (a backend's mailbox operations, one at a time per connection) come
/// back one round trip after their OK; one commit for all of them costs a fraction of one
/// commit each, in fsyncs and in CPU that readers would otherwise have.
const GATHER_WINDOW: Duration = Duration::from_micros(200);

/// The commit loop, owned by the blocking thread that runs it. If the runtime drops it
/// unrun (it is shutting down), the loop runs where it is dropped: queued callers are
/// answered either way.
struct CommitLoop {
    store: Option<Store>,
}

impl CommitLoop {
    fn run(mut self) {
        if let Some(store) = self.store.take() {
            store.lead();
        }
    }
}

impl Drop for CommitLoop {
    fn drop(&mut self) {
        if let Some(store) = self.store.take() {
            store.lead();
        }
    }
}

impl Store {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        let db = Database::builder()
            .set_cache_size(options.cache_bytes)
            .create(path)
            .map_err(StoreError::from_redb)?;
        let db = Arc::new(db);
        let Opened {
            last_seq,
            epoch,
            synced_lsn,
            wal_id,
            seq_floor,
        } = initialise(&db)?;
        let (wal, frames) =
            wal::Wal::open(path, options.wal_bytes.max(MIN_WAL_BYTES)).map_err(StoreError::wal)?;
        let (feed, _) = broadcast::channel(options.feed_capacity.max(1));
        let committed = Arc::new(tokio::sync::watch::Sender::new(last_seq));
        let last_seq = Arc::new(AtomicU64::new(last_seq));
        let stats = Arc::new(CommitStats::default());
        let committer = Arc::new(Committer {
            db: db.clone(),
            feed: feed.clone(),
            policy: options.policy,
            changelog_max: options.changelog_max.max(1),
            changelog_max_age: options.changelog_max_age,
            last_seq: last_seq.clone(),
            committed: committed.clone(),
            metrics: stats.clone(),
            wal: std::sync::Mutex::new(writer::WalState {
                log: wal,
                id: wal_id,
                next_lsn: synced_lsn.saturating_add(1),
                chained: true,
            }),
            halted: tokio::sync::watch::Sender::new(false),
            stream_before_sync: options.stream_before_sync,
            // The frames replayed took their numbers past it.
            seq_floor: AtomicU64::new(seq_floor.unwrap_or(0)),
        });
        let replayed = committer.recover(synced_lsn, frames)?;
        if replayed > 0 {
            tracing::info!(replayed, "replayed commits from the write-ahead log");
        }
        if options.stream_before_sync || seq_floor.is_some() {
            skip_seqs(&db, &committer)?;
        }
        Ok(Store {
            db,
            committer,
            queue: Arc::new(Queue::default()),
            feed,
            last_seq,
            committed,
            epoch,
            stats,
        })
    }

    /// Applies a mutation; returns once it is durable (or refused).
    ///
    /// Group commit: the first caller to find no commit under way hands the queue to a
    /// blocking thread, which commits everything queued, again and again until the queue
    /// is empty, and answers each caller once its write is durable. The async workers
    /// never wait for an fsync: a FIND queued behind one would wait for the disk.
    pub async fn apply(&self, mutation: Mutation) -> Result<Outcome, StoreError> {
        let trace = crate::observability::traces::current_traceparent();
        let mut outcomes = self
            .submit(vec![mutation], None, trace, Keeping::DURABLE, None)
            .await?;
        outcomes.pop().ok_or(StoreError::Closed)
    }

    /// Applies many mutations in as few commits as possible (a slave's dump or a burst of
    /// its master's stream); returns once all are durable.
    pub async fn apply_many(&self, mutations: Vec<Mutation>) -> Result<Vec<Outcome>, StoreError> {
        self.apply_replicated(mutations, None, Keeping::DURABLE)
            .await
    }

    /// [`Store::apply_many`] for a slave: kept as `keeping` says, and recording
    /// `checkpoint`, if given, in the same commit as the mutations.
    pub async fn apply_replicated(
        &self,
        mutations: Vec<Mutation>,
        checkpoint: Option<Checkpoint>,
        keeping: Keeping,
    ) -> Result<Vec<Outcome>, StoreError> {
        self.submit(mutations, checkpoint, None, keeping, None)
            .await
    }

    /// [`Store::apply_replicated`], telling `durable` as soon as the mutations are durable,
    /// which may be before readers see them.
    pub async fn apply_replicated_telling(
        &self,
        mutations: Vec<Mutation>,
        checkpoint: Option<Checkpoint>,
        keeping: Keeping,
        durable: oneshot::Sender<()>,
    ) -> Result<Vec<Outcome>, StoreError> {
        self.submit(mutations, checkpoint, None, keeping, Some(durable))
            .await
    }

    /// [`Store::apply_replicated`] committed on the calling thread, which blocks meanwhile,
    /// calling `on_durable` once the mutations are durable (before readers see them): no
    /// hand-off to the commit loop and back. When a commit loop runs or requests are
    /// queued it does nothing and gives the mutations back, for the caller to queue.
    pub fn apply_replicated_here(
        &self,
        mutations: Vec<Mutation>,
        checkpoint: Option<Checkpoint>,
        keeping: Keeping,
        on_durable: &mut dyn FnMut(),
    ) -> Result<Result<Vec<Outcome>, StoreError>, Vec<Mutation>> {
        {
            let mut queue = self.queue.lock();
            if queue.leader || !queue.pending.is_empty() {
                return Err(mutations);
            }
            queue.leader = true;
        }
        let (reply, mut answer) = oneshot::channel();
        let request = WriteRequest {
            mutations,
            checkpoint,
            reply,
            trace: None,
            keeping,
            durable: None,
        };
        let answers = self.committer.commit_batch(vec![request], on_durable);
        let queued_meanwhile = {
            let mut queue = self.queue.lock();
            let queued = !queue.pending.is_empty();
            queue.leader = queued;
            queued
        };
        if queued_meanwhile {
            self.hand_off();
        }
        answers.send();
        Ok(answer.try_recv().unwrap_or(Err(StoreError::Closed)))
    }

    /// Queues a write request, starting the commit loop if none runs, and waits for its
    /// answer.
    async fn submit(
        &self,
        mutations: Vec<Mutation>,
        checkpoint: Option<Checkpoint>,
        trace: Option<Arc<str>>,
        keeping: Keeping,
        durable: Option<oneshot::Sender<()>>,
    ) -> Result<Vec<Outcome>, StoreError> {
        let (reply, answer) = oneshot::channel();
        let lead = self.queue.push(WriteRequest {
            mutations,
            checkpoint,
            reply,
            trace,
            keeping,
            durable,
        });
        if lead {
            self.hand_off();
        }
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs the commit loop on a blocking thread (inline when there is no runtime), in
    /// the caller's span: the first batch is its command's.
    fn hand_off(&self) {
        let commits = CommitLoop {
            store: Some(self.clone()),
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let span = tracing::Span::current();
                runtime.spawn_blocking(move || span.in_scope(|| commits.run()));
            }
            Err(_) => commits.run(),
        }
    }

    /// Commits everything queued until the queue is empty. Before each commit it waits
    /// (at most [`GATHER_WINDOW`]) for as many requests as it expects. The loop lets go of
    /// the store before it sends the last answers: a caller that has its answer and drops
    /// its own handle closes the database (and may open it again at once).
    fn lead(self) {
        loop {
            let batch = {
                let mut queue = self.queue.lock();
                if queue.pending.is_empty() {
                    queue.leader = false;
                    return;
                }
                if queue.pending.len() < queue.expected {
                    queue.gathering = true;
                    queue = self
                        .queue
                        .filled
                        .wait_timeout_while(queue, GATHER_WINDOW, |queue| {
                            queue.pending.len() < queue.expected
                        })
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                    queue.gathering = false;
                }
                std::mem::take(&mut queue.pending)
            };
            let answered = batch.len();
            let answers = self.committer.commit_batch(batch, &mut || {});
            let last = {
                let mut queue = self.queue.lock();
                queue.expected = answered + queue.pending.len();
                let last = queue.pending.is_empty();
                if last {
                    queue.leader = false;
                }
                last
            };
            if last {
                drop(self);
                answers.send();
                return;
            }
            answers.send();
        }
    }

    /// The current record of `name`, if any.
    pub fn find(&self, name: &[u8]) -> Result<Option<MailboxRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(StoreError::from_redb)?;
        let table = txn.open_table(MAILBOXES).map_err(StoreError::from_redb)?;
        let value = table
            .get(row_key(name).as_slice())
            .map_err(StoreError::from_redb)?;
        value
            .map(|v| {
                MailboxRecord::decode(name, v.value())
                    .ok_or_else(|| StoreError::Corrupt(String::from_utf8_lossy(name).into()))
            })
            .transpose()
    }

    /// A consistent read-only view and the sequence number it reflects.
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let txn = self.db.begin_read().map_err(StoreError::from_redb)?;
        let seq = {
            let log = txn.open_table(CHANGES).map_err(StoreError::from_redb)?;
            last_logged_seq(&log)?
        };
        Ok(Snapshot { txn, seq })
    }

    /// Receives every change committed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.feed.subscribe()
    }

    /// Connections following the change feed.
    pub fn listener_count(&self) -> usize {
        self.feed.receiver_count()
    }

    /// Follows the sequence number of the last committed change: wakes a task after every
    /// commit that made changes, without holding changes back as a feed listener does.
    pub fn committed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.committed.subscribe()
    }

    /// Turns true once the store takes no more writes until a restart (see
    /// [`StoreError::Halted`]); the restart replays what it logged.
    pub fn halted(&self) -> tokio::sync::watch::Receiver<bool> {
        self.committer.halted.subscribe()
    }

    /// Sequence number of the last committed change.
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    /// Identity of this database's history (new when the database is created).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// First and last sequence numbers still in the change log (`None` when it is empty).
    pub fn changelog_range(&self) -> Result<Option<(u64, u64)>, StoreError> {
        let txn = self.db.begin_read().map_err(StoreError::from_redb)?;
        let log = txn.open_table(CHANGES).map_err(StoreError::from_redb)?;
        let first = log
            .first()
            .map_err(StoreError::from_redb)?
            .map(|(k, _)| k.value());
        let last = log
            .last()
            .map_err(StoreError::from_redb)?
            .map(|(k, _)| k.value());
        Ok(first.zip(last))
    }

    /// Gives the store a new epoch: its history is no longer comparable with what slaves
    /// remember (after a restore), so they resynchronise in full.
    pub fn renew_epoch(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(StoreError::from_redb)?;
        {
            let mut meta = txn.open_table(META).map_err(StoreError::from_redb)?;
            let epoch = rand::random::<u64>() | 1;
            meta.insert(META_EPOCH, epoch)
                .map_err(StoreError::from_redb)?;
        }
        txn.commit().map_err(StoreError::from_redb)
    }

    /// A slave's last checkpoint in its master's history: (epoch, seq).
    pub fn upstream_position(&self) -> Result<Option<(u64, u64)>, StoreError> {
        let txn = self.db.begin_read().map_err(StoreError::from_redb)?;
        let meta = txn.open_table(META).map_err(StoreError::from_redb)?;
        let read = |key| -> Result<Option<u64>, StoreError> {
            Ok(meta
                .get(key)
                .map_err(StoreError::from_redb)?
                .map(|v| v.value()))
        };
        Ok(read(META_UPSTREAM_EPOCH)?.zip(read(META_UPSTREAM_SEQ)?))
    }

    /// Where this replica asks a master to resume from: its last checkpoint in the history
    /// it followed, unless `own_history` (an elected instance) and it has written changes
    /// of its own since (it was master), then the end of its own history, which a
    /// successor that followed it knows.
    pub fn resume_point(&self, own_history: bool) -> Result<Option<(u64, u64)>, StoreError> {
        let upstream = self.upstream_position()?;
        if !own_history {
            return Ok(upstream);
        }
        let snapshot = self.snapshot()?;
        let own = (self.epoch, snapshot.seq());
        let Some((epoch, seq)) = upstream else {
            return Ok(Some(own).filter(|(_, seq)| *seq > 0));
        };
        let reached = snapshot
            .txn
            .open_table(UPSTREAM_POSITIONS)
            .map_err(StoreError::from_redb)?
            .get((epoch, seq))
            .map_err(StoreError::from_redb)?
            .map(|local| local.value());
        match reached {
            Some(local) if local < own.1 => Ok(Some(own)),
            _ => Ok(Some((epoch, seq))),
        }
    }

    /// The epoch as stored now.
    pub fn epoch_now(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(StoreError::from_redb)?;
        let meta = txn.open_table(META).map_err(StoreError::from_redb)?;
        Ok(meta
            .get(META_EPOCH)
            .map_err(StoreError::from_redb)?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    /// Changes published but not yet received by the slowest listener.
    pub fn feed_backlog(&self) -> usize {
        self.feed.len()
    }

    /// Commit counters.
    pub fn commit_stats(&self) -> &CommitStats {
        &self.stats
    }
}

/// What a database holds about itself, read (or first written) at open.
struct Opened {
    last_seq: u64,
    epoch: u64,
    /// The lsn of the last commit it holds.
    synced_lsn: u64,
    wal_id: u64,
    /// The end of the last run of skipped sequence numbers, if any was.
    seq_floor: Option<u64>,
}

fn initialise(db: &Database) -> Result<Opened, StoreError> {
    let txn = db.begin_write().map_err(StoreError::from_redb)?;
    let opened = {
        txn.open_table(MAILBOXES).map_err(StoreError::from_redb)?;
        txn.open_table(UPSTREAM_POSITIONS)
            .map_err(StoreError::from_redb)?;
        let last_seq = last_logged_seq(&txn.open_table(CHANGES).map_err(StoreError::from_redb)?)?;
        let mut meta = txn.open_table(META).map_err(StoreError::from_redb)?;
        let read = |meta: &redb::Table<&str, u64>, key| -> Result<Option<u64>, StoreError> {
            Ok(meta
                .get(key)
                .map_err(StoreError::from_redb)?
                .map(|v| v.value()))
        };
        match read(&meta, META_SCHEMA)? {
            Some(SCHEMA_VERSION) => {}
            Some(other) => return Err(StoreError::Schema(other)),
            None => {
                meta.insert(META_SCHEMA, SCHEMA_VERSION)
                    .map_err(StoreError::from_redb)?;
            }
        }
        let epoch = match read(&meta, META_EPOCH)? {
            Some(epoch) => epoch,
            None => {
                let epoch = rand::random::<u64>() | 1;
                meta.insert(META_EPOCH, epoch)
                    .map_err(StoreError::from_redb)?;
                epoch
            }
        };
        let synced_lsn = read(&meta, META_WAL_LSN)?.unwrap_or(0);
        let wal_id = match read(&meta, META_WAL_ID)? {
            Some(id) => id,
            None => {
                let id = rand::random::<u64>();
                meta.insert(META_WAL_ID, id)
                    .map_err(StoreError::from_redb)?;
                id
            }
        };
        Opened {
            last_seq,
            epoch,
            synced_lsn,
            wal_id,
            seq_floor: read(&meta, META_SEQ_FLOOR)?,
        }
    };
    txn.commit().map_err(StoreError::from_redb)?;
    Ok(opened)
}

/// Skips [`SEQ_GAP`] sequence numbers past the last change and past any skipped before:
/// for a store that publishes before commits are durable or ever did (a crash before this
/// open may have lost published changes, whatever it publishes now). Records the run
/// skipped and forgets runs older than the change log.
fn skip_seqs(db: &Database, committer: &writer::Committer) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(StoreError::from_redb)?;
    {
        let mut meta = txn.open_table(META).map_err(StoreError::from_redb)?;
        let last = committer.last_seq.load(Ordering::Acquire);
        let end = last
            .max(committer.seq_floor.load(Ordering::Acquire))
            .checked_add(SEQ_GAP)
            .ok_or_else(|| StoreError::Corrupt("sequence numbers exhausted".into()))?;
        meta.insert(META_SEQ_FLOOR, end)
            .map_err(StoreError::from_redb)?;
        let oldest = txn
            .open_table(CHANGES)
            .map_err(StoreError::from_redb)?
            .first()
            .map_err(StoreError::from_redb)?
            .map_or(last, |(seq, _)| seq.value());
        let mut gaps = txn.open_table(SEQ_GAPS).map_err(StoreError::from_redb)?;
        // A run skipped since the last change is part of this one; a run older than the
        // change log leaves a replica nothing to resume from anyway.
        gaps.retain(|gap_end, gap_last| gap_last < last && gap_end >= oldest.saturating_sub(1))
            .map_err(StoreError::from_redb)?;
        gaps.insert(end, last).map_err(StoreError::from_redb)?;
        committer.seq_floor.store(end, Ordering::Release);
    }
    txn.commit().map_err(StoreError::from_redb)
}

/// The sequence number of the newest change: the log always keeps at least its last entry,
/// so the sequence needs no separate row (one page fewer written per commit).
fn last_logged_seq(log: &impl ReadableTable<u64, &'static [u8]>) -> Result<u64, StoreError> {
    Ok(log
        .last()
        .map_err(StoreError::from_redb)?
        .map(|(seq, _)| seq.value())
        .unwrap_or(0))
}

/// A consistent view of the mailbox list at one sequence number.
pub struct Snapshot {
    txn: ReadTransaction,
    seq: u64,
}

/// A borrowed view of one record during a walk.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    /// Mailbox name.
    pub name: &'a [u8],
    /// State.
    pub state: MailboxState,
    /// Location.
    pub location: &'a [u8],
    /// ACL (empty for reserved).
    pub acl: &'a [u8],
}

impl MailboxRecord {
    /// A borrowed view of this record.
    pub fn as_ref(&self) -> RecordRef<'_> {
        RecordRef {
            name: &self.name,
            state: self.state,
            location: &self.location,
            acl: &self.acl,
        }
    }
}

impl Snapshot {
    /// Sequence number of the last change this view contains.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Calls `visit` for every record in Cyrus order until it returns `false`.
    pub fn walk(&self, visit: impl FnMut(RecordRef<'_>) -> bool) -> Result<(), StoreError> {
        self.walk_range(None, None, visit)
    }

    /// [`Snapshot::walk`] over the rows from `from` (inclusive) up to `to` (exclusive),
    /// in [`row_key`] terms; `None` leaves that end open.
    pub fn walk_range(
        &self,
        from: Option<&[u8]>,
        to: Option<&[u8]>,
        mut visit: impl FnMut(RecordRef<'_>) -> bool,
    ) -> Result<(), StoreError> {
        use std::ops::Bound;
        let table = self
            .txn
            .open_table(MAILBOXES)
            .map_err(StoreError::from_redb)?;
        let bounds = (
            from.map_or(Bound::Unbounded, Bound::Included),
            to.map_or(Bound::Unbounded, Bound::Excluded),
        );
        for row in table
            .range::<&[u8]>(bounds)
            .map_err(StoreError::from_redb)?
        {
            let (key, value) = row.map_err(StoreError::from_redb)?;
            let key = key.value();
            let name = name_of(key);
            let (state, location, acl) = record::decode_value(value.value())
                .ok_or_else(|| StoreError::Corrupt(String::from_utf8_lossy(name).into()))?;
            if !visit(RecordRef {
                name,
                state,
                location,
                acl,
            }) {
                break;
            }
        }
        Ok(())
    }

    /// Number of records.
    pub fn len(&self) -> Result<u64, StoreError> {
        use redb::ReadableTableMetadata;
        let table = self
            .txn
            .open_table(MAILBOXES)
            .map_err(StoreError::from_redb)?;
        table.len().map_err(StoreError::from_redb)
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }

    /// A row key between the first and the last, halfway in byte terms: for walking two
    /// parts at once ([`Snapshot::walk_range`]). How evenly it splits the records depends on
    /// how evenly names spread; `None` when there are fewer than two records.
    pub fn middle(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let table = self
            .txn
            .open_table(MAILBOXES)
            .map_err(StoreError::from_redb)?;
        let first = table.first().map_err(StoreError::from_redb)?;
        let last = table.last().map_err(StoreError::from_redb)?;
        Ok(match (first, last) {
            (Some((first, _)), Some((last, _))) if first.value() < last.value() => {
                Some(key::midpoint(first.value(), last.value()))
            }
            _ => None,
        })
    }

    /// Where a replica that had applied `seq` of the history `epoch` stands in this store's
    /// own history: the local seq of this store's newest checkpoint in that history at or
    /// before `seq` (replaying this store's changes from there, each a whole record, brings
    /// that replica to this store's state), or `None` when this store never followed that
    /// history that far.
    pub fn local_position(&self, epoch: u64, seq: u64) -> Result<Option<u64>, StoreError> {
        // A replica that holds more of that history than this one does has changes this
        // one never saw: they must be undone first (a rewind, or a full list).
        if self.known_through(epoch)?.is_none_or(|newest| newest < seq) {
            return Ok(None);
        }
        Ok(self
            .checkpoint_at_or_before(epoch, seq)?
            .map(|(_, local)| local))
    }

    /// This store's newest checkpoint in the history `epoch` at or before `seq`: that
    /// history's seq there, and this store's own.
    pub fn checkpoint_at_or_before(
        &self,
        epoch: u64,
        seq: u64,
    ) -> Result<Option<(u64, u64)>, StoreError> {
        let positions = self
            .txn
            .open_table(UPSTREAM_POSITIONS)
            .map_err(StoreError::from_redb)?;
        let at_or_before = positions
            .range((epoch, 0)..=(epoch, seq))
            .map_err(StoreError::from_redb)?
            .next_back()
            .transpose()
            .map_err(StoreError::from_redb)?;
        Ok(at_or_before.map(|(position, local)| (position.value().1, local.value())))
    }

    /// The last change before the run of skipped sequence numbers (see [`SEQ_GAP`]) that
    /// holds `seq`, if one does.
    pub fn skipped_after(&self, seq: u64) -> Result<Option<u64>, StoreError> {
        let gaps = match self.txn.open_table(SEQ_GAPS) {
            Ok(gaps) => gaps,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(error) => return Err(StoreError::from_redb(error)),
        };
        let holding = gaps
            .range(seq..)
            .map_err(StoreError::from_redb)?
            .next()
            .transpose()
            .map_err(StoreError::from_redb)?;
        Ok(holding
            .map(|(_, last)| last.value())
            .filter(|&last| last < seq))
    }

    /// How far this store has applied the history `epoch` (that history's seq), if at all.
    pub fn known_through(&self, epoch: u64) -> Result<Option<u64>, StoreError> {
        let positions = self
            .txn
            .open_table(UPSTREAM_POSITIONS)
            .map_err(StoreError::from_redb)?;
        let newest = positions
            .range((epoch, 0)..=(epoch, u64::MAX))
            .map_err(StoreError::from_redb)?
            .next_back()
            .transpose()
            .map_err(StoreError::from_redb)?;
        Ok(newest.map(|(position, _)| position.value().1))
    }

    /// The names changed after `seq`, each once, if the change log still holds every
    /// change since and they are at most `limit`.
    pub fn names_changed_after(
        &self,
        seq: u64,
        limit: usize,
    ) -> Result<Option<Vec<Vec<u8>>>, StoreError> {
        let Some(changes) = self.changes_after(seq)? else {
            return Ok(None);
        };
        let mut names: Vec<Vec<u8>> = changes.into_iter().map(|change| change.name).collect();
        names.sort_unstable();
        names.dedup();
        Ok((names.len() <= limit).then_some(names))
    }

    /// The changes after `seq` up to this snapshot, in order, if the change log still
    /// holds all of them (`None`: too old, or from the future).
    pub fn changes_after(&self, seq: u64) -> Result<Option<Vec<Change>>, StoreError> {
        if seq > self.seq {
            return Ok(None);
        }
        let log = self
            .txn
            .open_table(CHANGES)
            .map_err(StoreError::from_redb)?;
        let oldest = log
            .first()
            .map_err(StoreError::from_redb)?
            .map(|(k, _)| k.value());
        // Numbers skipped right after `seq` leave nothing out.
        let reaches_back = |first: u64| {
            first <= seq + 1
                || self
                    .skipped_after(first - 1)
                    .is_ok_and(|skipped| skipped.is_some_and(|last| last <= seq))
        };
        if seq < self.seq && !oldest.is_some_and(reaches_back) {
            return Ok(None);
        }
        let mut changes = Vec::new();
        for row in log
            .range(seq + 1..=self.seq)
            .map_err(StoreError::from_redb)?
        {
            let (key, value) = row.map_err(StoreError::from_redb)?;
            let change = Change::decode_log_entry(key.value(), value.value())
                .ok_or_else(|| StoreError::Corrupt(format!("change {}", key.value())))?;
            changes.push(change);
        }
        Ok(Some(changes))
    }

    /// Number of (active, reserved) records.
    pub fn count_by_state(&self) -> Result<(u64, u64), StoreError> {
        let (mut active, mut reserved) = (0, 0);
        self.walk(|r| {
            match r.state {
                MailboxState::Active => active += 1,
                MailboxState::Reserved => reserved += 1,
            }
            true
        })?;
        Ok((active, reserved))
    }
}

#[cfg(test)]
mod tests;
