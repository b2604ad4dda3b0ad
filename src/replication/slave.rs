//! The slave's link to its master (spec §8.2-§8.4): connect, log in with PLAIN, `UPDATE`,
//! reconcile the dump into the local store, then apply the stream as it comes, with a
//! keep-alive NOOP every `mupdate_retry_delay` and a reconnect (after `d + rand(d/2)`)
//! whenever the link fails. Every change the slave applies, the dump's included, reaches
//! the slave's own UPDATE listeners (D-9).

use std::collections::{HashSet, VecDeque};

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::barrier::{BarrierRequests, LinkStatus};
use super::client::{self, Credentials, Link, LinkError};
use crate::mailbox::MailboxWrite;
use crate::observability::metrics::Metrics;
use crate::protocol::CommandKind;
use crate::protocol::reply::Reply;
use crate::protocol::xupdate::{DumpKind, Position, Rewind};
use crate::store::{
    Checkpoint, Keeping, MailboxState, Mutation, Outcome, ReplicaRecord, Store, StoreError,
};

/// How soon an elected follower tries its master again.
const ELECTED_RETRY_DELAY: Duration = Duration::from_millis(250);

/// Changes applied per commit while reconciling a dump.
const APPLY_CHUNK: usize = 4096;

/// How to reach and log in to the master.
#[derive(Debug, Clone)]
pub struct SlaveSettings {
    /// `host[:port]` (port 3905 when absent).
    pub master: String,
    /// Authentication identity.
    pub authname: String,
    /// Authorisation identity (empty: the same).
    pub username: String,
    /// Password.
    pub password: String,
    /// Keep-alive interval, NOOP timeout and reconnect base delay.
    pub retry_delay: Duration,
    /// Time to connect, read the banner and log in.
    pub client_timeout: Duration,
    /// STARTTLS to the master, required, when set (`mupdate_tls`).
    pub tls: Option<crate::tls::ClientTls>,
    /// An elected instance's advertised address: it names itself in XACK, and after being
    /// master resumes from its own history.
    pub identity: Option<String>,
    /// Under failover, the term of the master to follow: streamed only by it, while master.
    pub term: Option<u64>,
}

/// The delay before reconnecting: `d + rand() % (d/2)`, with d of 0 or 1 treated as 1 s
/// and no jitter (D-5).
pub fn reconnect_delay(retry_delay: Duration) -> Duration {
    let d = retry_delay.as_secs();
    if d <= 1 {
        return Duration::from_secs(1);
    }
    Duration::from_secs(d + rand::random_range(0..d / 2))
}

/// Follows the master until `shutdown`. `synced` turns true after the first complete sync.
/// Returns the barrier's link end, said to be cut off, for a link to another master.
pub async fn run(
    store: Store,
    settings: SlaveSettings,
    synced: watch::Sender<bool>,
    mut barriers: BarrierRequests,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> BarrierRequests {
    loop {
        let result = tokio::select! {
            _ = shutdown.cancelled() => break,
            result = follow(&store, &settings, &synced, &mut barriers, &metrics) => result,
        };
        let was_linked = barriers.connected.send_replace(false);
        metrics.link_up.set(0);
        metrics.reconnects.inc();
        // An elected follower's master may be taking office this very moment (refusing
        // the term until it has): it tries again at once, not after a Cyrus-style delay.
        let delay = match settings.term {
            Some(_) => ELECTED_RETRY_DELAY,
            None => reconnect_delay(settings.retry_delay),
        };
        let retry_in_secs = delay.as_secs();
        match result {
            Err(error) if was_linked => tracing::warn!(
                master = %settings.master, %error, retry_in_secs,
                "lost the connection to the master; retrying in {retry_in_secs} seconds"
            ),
            Err(error) => tracing::warn!(
                master = %settings.master, %error, retry_in_secs,
                "connection to master failed; retrying in {retry_in_secs} seconds"
            ),
            Ok(()) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    barriers.connected.send_replace(false);
    metrics.link_up.set(0);
    barriers
}

/// The store mutation that copies a master's MAILBOX, RESERVE or DELETE response: the
/// record the line describes (a master sends no DEACTIVATE; were one to come, its
/// mailbox is reserved at that location).
pub fn replicate(reply: Reply) -> Option<Mutation> {
    match reply {
        Reply::Record(MailboxWrite::Activate {
            name,
            location,
            acl,
        }) => Some(Mutation::Replicate {
            name,
            record: Some(ReplicaRecord {
                state: MailboxState::Active,
                location,
                acl,
            }),
        }),
        Reply::Record(
            MailboxWrite::Reserve { name, location } | MailboxWrite::Deactivate { name, location },
        ) => Some(Mutation::Replicate {
            name,
            record: Some(ReplicaRecord {
                state: MailboxState::Reserved,
                location,
                acl: Vec::new(),
            }),
        }),
        Reply::Record(MailboxWrite::Delete { name }) => {
            Some(Mutation::Replicate { name, record: None })
        }
        Reply::Line { .. } => None,
    }
}

/// One connection's life: log in, dump and reconcile, then stream until the link fails.
async fn follow(
    store: &Store,
    settings: &SlaveSettings,
    synced: &watch::Sender<bool>,
    barriers: &mut BarrierRequests,
    metrics: &Metrics,
) -> Result<(), LinkError> {
    let mut link = client::connect(&Credentials {
        server: settings.master.clone(),
        authname: settings.authname.clone(),
        username: settings.username.clone(),
        password: settings.password.clone(),
        timeout: settings.client_timeout,
        tls: settings.tls.clone(),
    })
    .await?;
    tracing::info!(
        master = %settings.master,
        mechanism = link.mechanism,
        tls = settings.tls.is_some(),
        "successful mupdate connection to the master ({})",
        link.mechanism
    );
    let sync_span = tracing::debug_span!(
        target: crate::observability::traces::SPAN_TARGET,
        "sync",
        otel.name = "mupdate.slave.sync",
        otel.kind = "client",
        server.address = %settings.master,
        mupdate.sync.kind = tracing::field::Empty,
        mupdate.sync.records = tracing::field::Empty,
    );
    // Before its first sync a slave serves nobody, so nothing can have seen (or passed on
    // a position of) a chunk that a crash then loses: its chunks need not wait for the disk.
    let unseen = !*synced.borrow();
    let position = synchronise(store, settings, &mut link, unseen, metrics)
        .instrument(sync_span)
        .await?;
    synced.send_replace(true);
    // Kicks are answered from now on, until the link ends (Cyrus: refused while cut off).
    barriers.connected.send_replace(true);
    barriers.handle.status.confirm();
    metrics.link_up.set(1);
    if let Some((_, seq)) = position {
        metrics.applied_seq.set(seq as i64);
        acknowledge(&mut link, seq, settings).await?;
    }
    let status = barriers.handle.status.clone();
    stream(
        store,
        settings,
        &mut link,
        &mut barriers.receiver,
        &status,
        metrics,
    )
    .await
}

/// Asks for the master's list (XUPDATE, else UPDATE) and applies it: a delta from the change
/// log, or a full dump reconciled with the replica. Returns the master's position, if sent.
async fn synchronise(
    store: &Store,
    settings: &SlaveSettings,
    link: &mut Link,
    unseen: bool,
    metrics: &Metrics,
) -> Result<Option<(u64, u64)>, LinkError> {
    tracing::info!(master = %settings.master, "synchronizing mailbox list with master mupdate server");
    // XUPDATE resumes from where this replica stands; a Cyrus master does not know it
    // (BAD), and then a plain UPDATE does.
    let resume = store.resume_point(settings.identity.is_some())?;
    // A term goes after a position: with none, (0, 0), which no master knows.
    let resume = resume.or(settings.term.map(|_| (0, 0)));
    xupdate(link, resume, settings.term).await?;
    let patience = settings.retry_delay.max(Duration::from_secs(1));
    let mut tag: &[u8] = b"U01";
    let mut kind = DumpKind::Full;
    let mut position = None;
    let mut rewind_to = None;
    let mut rewound = false;
    // Records are committed while the rest of the list arrives.
    let mut resync = Resync::start(store, unseen)?;
    loop {
        // D-13: a master that stops sending in the middle of its dump is given up on.
        match link.next(patience).await? {
            Reply::Line { tag: t, word, rest } if t == b"*" && word == b"XREWIND" => {
                rewind_to = Rewind::parse(&rest);
            }
            Reply::Line { tag: t, word, .. }
                if t == b"U01" && word == b"NO" && !rewound && rewind_to.is_some() =>
            {
                let through = rewind_to.take().unwrap_or_default();
                rewound = true;
                // `through` is in the history asked from: this store's own, or the one
                // it last followed (a master before this one, whose changes this replica
                // received further than its successor did).
                let from = match resume {
                    Some((epoch, _)) if epoch == store.epoch() => Some((epoch, through, through)),
                    Some((epoch, _)) => store
                        .snapshot()?
                        .checkpoint_at_or_before(epoch, through)?
                        .map(|(seq, local)| (epoch, seq, local)),
                    None => None,
                };
                let rewound_from = match from {
                    Some((epoch, seq, local)) => rewind(store, link, local, &mut resync, patience)
                        .await?
                        .then_some((epoch, seq)),
                    None => None,
                };
                if let Some(position) = rewound_from {
                    xupdate(link, Some(position), settings.term).await?;
                } else {
                    // Too much to rewind, or the change log no longer reaches back: the
                    // whole list.
                    xupdate(link, Some((0, 0)), settings.term).await?;
                }
            }
            Reply::Line { tag: t, word, .. } if t == b"U01" && word == b"BAD" && tag == b"U01" => {
                link.request(b"U02", CommandKind::Update { hosts: Vec::new() })
                    .await?;
                tag = b"U02";
            }
            Reply::Line { tag: t, word, .. } if t == tag && word == b"OK" => break,
            Reply::Line { tag: t, word, rest } if t == b"*" && word == b"XDUMP" => {
                kind = DumpKind::parse(&rest);
            }
            Reply::Line { tag: t, word, rest } if t == b"*" && word == b"XSEQ" => {
                position = Position::parse(&rest).map(|at| (at.epoch, at.seq));
            }
            Reply::Line { tag: t, word, rest } if t == b"*" || word != b"OK" => {
                return Err(LinkError::Protocol(format!(
                    "{} {} {} during the dump",
                    String::from_utf8_lossy(&t),
                    String::from_utf8_lossy(&word),
                    String::from_utf8_lossy(&rest)
                )));
            }
            reply => {
                if let Some(mutation) = replicate(reply) {
                    resync.push(mutation).await?;
                }
            }
        }
    }
    let checkpoint = position.map(|(epoch, seq)| Checkpoint { epoch, seq });
    let delta = kind == DumpKind::Delta;
    let kind = kind.name();
    let records = resync.received();
    let span = tracing::Span::current();
    span.record("mupdate.sync.kind", kind);
    span.record("mupdate.sync.records", records);
    metrics.lag_sequences.set(records as i64);
    resync.finish(!delta, checkpoint, OnEmpty::Keep).await?;
    metrics.lag_sequences.set(0);
    metrics.resyncs.with_label_values(&[kind]).inc();
    tracing::info!(master = %settings.master, kind, records, "mailbox list synchronization complete ({kind} resync)");
    Ok(position)
}

/// The span context of the traced command behind a change: an `XSEQ` line's third field.
fn traced_write(position: &Position) -> Option<opentelemetry::trace::SpanContext> {
    crate::observability::traces::parse_traceparent(position.traceparent.as_deref()?)
}

/// What to do with a non-empty store when the new list is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnEmpty {
    /// Keep the store (a slave: an empty master is more likely wiped than right).
    Keep,
    /// Empty the store too (an operator's restore).
    Follow,
}

/// Makes the store equal to `dump` (replicate mutations): every record of it, and nothing
/// else, in bounded commits, `checkpoint` last.
pub async fn reconcile(
    store: &Store,
    dump: Vec<Mutation>,
    checkpoint: Option<Checkpoint>,
    on_empty: OnEmpty,
) -> Result<(), StoreError> {
    let mut resync = Resync::start(store, false)?;
    for mutation in dump {
        resync.push(mutation).await?;
    }
    resync.finish(true, checkpoint, on_empty).await
}

/// A master's list applied while it is still arriving: its records are committed in
/// chunks, each while the next is read, in the order sent. A full list removes the names
/// it did not carry only once it is complete ([`Resync::finish`], after the master's
/// tagged OK), so a link cut mid-list never deletes anything.
pub struct Resync {
    store: Store,
    /// Whether nobody reads the store while the list arrives: then only every
    /// [`SYNCED_EVERY`]th chunk and the end wait for the disk; a crash loses the rest,
    /// which the next sync brings again.
    unseen: bool,
    /// Whether the list's changes go into the change log one by one: not for a new
    /// replica's first list, which nobody can have followed (its listeners, when there
    /// are some, are sent the whole list).
    logged: bool,
    /// Names received, kept only when the store held records they may have to displace.
    received_names: Option<HashSet<Vec<u8>>>,
    received: usize,
    chunk: Vec<Mutation>,
    chunks: usize,
    committing: Option<tokio::task::JoinHandle<Result<Vec<Outcome>, StoreError>>>,
}

/// While nobody reads the store, one chunk in this many is synced to disk (bounding what
/// a crash loses, and the pages redb cannot free before a durable commit).
const SYNCED_EVERY: usize = 16;

impl Resync {
    /// Starts taking in a list for `store`; `unseen`: nobody reads it meanwhile.
    pub fn start(store: &Store, unseen: bool) -> Result<Resync, StoreError> {
        let mut empty = true;
        store.snapshot()?.walk(|_| {
            empty = false;
            false
        })?;
        Ok(Resync {
            store: store.clone(),
            unseen,
            logged: !(unseen && empty),
            // A new replica has nothing to remove: no index of perhaps a million names.
            received_names: (!empty).then(HashSet::new),
            received: 0,
            chunk: Vec::with_capacity(APPLY_CHUNK),
            chunks: 0,
            committing: None,
        })
    }

    /// Takes the next record of the list. A full chunk is committed when the record after
    /// it arrives (so the last one is left for [`Resync::finish`], which syncs it), once
    /// the previous chunk is committed, without waiting for it.
    pub async fn push(&mut self, mutation: Mutation) -> Result<(), StoreError> {
        if self.chunk.len() >= APPLY_CHUNK {
            self.commit_chunk().await?;
        }
        if let Some(names) = &mut self.received_names {
            names.insert(mutation.name().to_vec());
        }
        self.received += 1;
        self.chunk.push(mutation);
        Ok(())
    }

    /// Records received so far.
    pub fn received(&self) -> usize {
        self.received
    }

    async fn commit_chunk(&mut self) -> Result<(), StoreError> {
        self.committed().await?;
        let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(APPLY_CHUNK));
        self.chunks += 1;
        let keeping = Keeping {
            durable: !self.unseen || self.chunks.is_multiple_of(SYNCED_EVERY),
            logged: self.logged,
        };
        let store = self.store.clone();
        // A task of its own: the worker meanwhile reads the next part of the list.
        self.committing = Some(tokio::spawn(async move {
            store.apply_replicated(chunk, None, keeping).await
        }));
        Ok(())
    }

    /// Waits for the chunk being committed, if any.
    async fn committed(&mut self) -> Result<(), StoreError> {
        if let Some(committing) = self.committing.take() {
            committing.await.map_err(|_| StoreError::Closed)??;
        }
        Ok(())
    }

    /// Ends a complete list: for a `full` list (not a delta) removes every name the store
    /// held and the list did not carry, unless the list was empty and `on_empty` says
    /// keep; then commits, synced to disk, the last chunk, those removals and
    /// `checkpoint`, last, so that a crash in between never records a position the store
    /// has not reached.
    pub async fn finish(
        mut self,
        full: bool,
        checkpoint: Option<Checkpoint>,
        on_empty: OnEmpty,
    ) -> Result<(), StoreError> {
        self.committed().await?;
        let mut stale = Vec::new();
        if full && let Some(names) = &self.received_names {
            self.store.snapshot()?.walk(|record| {
                if !names.contains(record.name) {
                    stale.push(Mutation::Replicate {
                        name: record.name.to_vec(),
                        record: None,
                    });
                }
                true
            })?;
        }
        // An empty list from a master that used to hold mailboxes is far more likely a
        // wiped or wrong master than a murder that deleted everything: keep the replica.
        if self.received == 0 && !stale.is_empty() && on_empty == OnEmpty::Keep {
            tracing::error!(
                kept = stale.len(),
                "the master sent an empty list; keeping this replica's mailboxes"
            );
            stale.clear();
        }
        let last = std::mem::take(&mut self.chunk);
        let keeping = Keeping {
            durable: true,
            logged: self.logged,
        };
        let mut rest = last.into_iter().chain(stale).peekable();
        loop {
            let chunk: Vec<Mutation> = rest.by_ref().take(APPLY_CHUNK).collect();
            if rest.peek().is_some() {
                self.store.apply_replicated(chunk, None, keeping).await?;
                continue;
            }
            // The last commit, even with nothing else in it, carries the checkpoint.
            if !chunk.is_empty() || checkpoint.is_some() {
                self.store
                    .apply_replicated(chunk, checkpoint, keeping)
                    .await?;
            }
            return Ok(());
        }
    }
}

/// Most kicks answered by one NOOP round trip (Cyrus's batch size).
const KICKS_PER_NOOP: usize = 5;

/// Most NOOPs on their way to the master at once: enough for the writers of one group
/// commit (forwarded writes wait for one each), few enough that kicks cannot flood it.
const NOOPS_IN_FLIGHT: usize = 8;

/// Barrier requests taken off their queue before a NOOP answers them; the rest wait in
/// the bounded queue, their senders with them.
const WAITING_MAX: usize = 1024;

async fn stream(
    store: &Store,
    settings: &SlaveSettings,
    link: &mut Link,
    barriers: &mut mpsc::Receiver<oneshot::Sender<()>>,
    status: &LinkStatus,
    metrics: &Metrics,
) -> Result<(), LinkError> {
    let d = settings.retry_delay.max(Duration::from_secs(1));
    let mut noop = 0u64;
    // NOOPs sent and not yet answered, oldest first, each with the callers its OK answers.
    // A caller needs a NOOP sent after it asked, so each gets one at once (up to
    // NOOPS_IN_FLIGHT) rather than queueing behind one already on its way.
    let mut outstanding: VecDeque<(Vec<u8>, Vec<oneshot::Sender<()>>)> = VecDeque::new();
    // Callers waiting for a NOOP to be sent.
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    let mut quiet_since = Instant::now();
    loop {
        while outstanding.len() < NOOPS_IN_FLIGHT && !waiting.is_empty() {
            let take = waiting.len().min(KICKS_PER_NOOP);
            let answering = waiting.drain(..take).collect();
            outstanding.push_back((send_noop(link, &mut noop).await?, answering));
        }
        let wait = d.saturating_sub(quiet_since.elapsed());
        let reply = tokio::select! {
            Some(waiter) = barriers.recv(), if waiting.len() < WAITING_MAX => {
                waiting.push(waiter);
                continue;
            }
            reply = link.next(wait) => reply,
        };
        let reply = match reply {
            Ok(reply) => reply,
            Err(LinkError::Timeout) => {
                // D-13: d seconds of silence with a NOOP outstanding end the link, kicks or not.
                if !outstanding.is_empty() {
                    let _ = link.request(b"Q01", CommandKind::Logout).await;
                    return Err(LinkError::Timeout);
                }
                outstanding.push_back((send_noop(link, &mut noop).await?, Vec::new()));
                quiet_since = Instant::now();
                continue;
            }
            Err(other) => return Err(other),
        };
        quiet_since = Instant::now();
        // Apply what arrived together in one commit.
        let mut batch = Vec::new();
        let mut checkpoint = None;
        let mut traced_writes = Vec::new();
        // Callers whose NOOP the master answered: released once this batch is applied.
        let mut passed: Vec<oneshot::Sender<()>> = Vec::new();
        let mut next = Some(reply);
        while let Some(reply) = next {
            match reply {
                Reply::Line { tag, word, rest } => {
                    // NOOPs are answered in order: one answered, every earlier one was too.
                    if let Some(at) = outstanding.iter().position(|(sent, _)| *sent == tag) {
                        if word != b"OK" {
                            let _ = link.request(b"Q01", CommandKind::Logout).await;
                            return Err(LinkError::Protocol(format!(
                                "NOOP answered {} {}",
                                String::from_utf8_lossy(&word),
                                String::from_utf8_lossy(&rest)
                            )));
                        }
                        for (_, callers) in outstanding.drain(..=at) {
                            passed.extend(callers);
                        }
                    } else if tag == b"*" && word == b"XSEQ" {
                        if let Some(at) = Position::parse(&rest) {
                            checkpoint = Some(Checkpoint {
                                epoch: at.epoch,
                                seq: at.seq,
                            });
                            traced_writes.extend(traced_write(&at));
                        }
                    } else if tag == b"*" && word == b"BYE" {
                        return Err(LinkError::Protocol(format!(
                            "* BYE {}",
                            String::from_utf8_lossy(&rest)
                        )));
                    }
                }
                change => batch.extend(replicate(change)),
            }
            next = link.buffered()?;
        }
        if !batch.is_empty() || checkpoint.is_some() {
            metrics.lag_sequences.set(batch.len() as i64);
            let span = crate::observability::traces::apply_span(batch.len(), &traced_writes);
            apply_and_acknowledge(store, link, settings, batch, checkpoint, span).await?;
            metrics.lag_sequences.set(0);
        }
        if let Some(Checkpoint { seq, .. }) = checkpoint {
            metrics.applied_seq.set(seq as i64);
        }
        status.confirm();
        // The master answered each NOOP after everything it had committed before it, and
        // all of that is now applied here.
        for waiter in passed {
            let _ = waiter.send(());
        }
    }
}

/// Applies a batch of the master's stream, acknowledging `checkpoint` as soon as the
/// batch is durable, while redb still takes it in: the master's writers wait for this.
async fn apply_and_acknowledge(
    store: &Store,
    link: &mut Link,
    settings: &SlaveSettings,
    batch: Vec<Mutation>,
    checkpoint: Option<Checkpoint>,
    span: tracing::Span,
) -> Result<(), LinkError> {
    let batch = match apply_here(store, link, settings, batch, checkpoint, &span) {
        Ok(applied) => return applied,
        Err(batch) => batch,
    };
    // The store tells `durable` before it answers, and drops it untold when the commit
    // fails.
    let (durable, made_durable) = oneshot::channel();
    let applying = store
        .apply_replicated_telling(batch, checkpoint, Keeping::DURABLE, durable)
        .instrument(span);
    let acknowledging = async {
        match (made_durable.await, checkpoint) {
            (Ok(()), Some(Checkpoint { seq, .. })) => acknowledge(link, seq, settings).await,
            _ => Ok(()),
        }
    };
    let (applied, acknowledged) = tokio::join!(applying, acknowledging);
    applied?;
    acknowledged
}

/// [`apply_and_acknowledge`] on this thread, the batch committed and XACK sent without
/// handing either to another thread and back (each a wake-up across CPUs, on the master's
/// writers' path), while the runtime's other tasks move to another thread. The batch back
/// when that cannot be: a single-threaded runtime, or a commit under way.
fn apply_here(
    store: &Store,
    link: &mut Link,
    settings: &SlaveSettings,
    batch: Vec<Mutation>,
    checkpoint: Option<Checkpoint>,
    span: &tracing::Span,
) -> Result<Result<(), LinkError>, Vec<Mutation>> {
    let runtime = tokio::runtime::Handle::current();
    if runtime.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
        return Err(batch);
    }
    let mut acknowledged = Ok(());
    let mut tell_master = || {
        if let Some(Checkpoint { seq, .. }) = checkpoint {
            acknowledged = runtime.block_on(acknowledge(link, seq, settings));
        }
    };
    let applied = tokio::task::block_in_place(|| {
        span.in_scope(|| {
            store.apply_replicated_here(batch, checkpoint, Keeping::DURABLE, &mut tell_master)
        })
    })?;
    Ok(applied.map_err(LinkError::from).and(acknowledged))
}

/// Sends XUPDATE from `position` (none: the whole list), naming `term` under failover.
async fn xupdate(
    link: &mut Link,
    position: Option<(u64, u64)>,
    term: Option<u64>,
) -> Result<(), LinkError> {
    let text = |n: u64| n.to_string().into_bytes();
    let command = CommandKind::Xupdate {
        epoch: position.map(|(epoch, _)| text(epoch)),
        seq: position.map(|(_, seq)| text(seq)),
        term: term.map(text),
    };
    link.request(b"U01", command).await
}

/// Most names a rewind asks the master for; past it, the whole list is cheaper.
const REWIND_MAX: usize = 10_000;

/// Undoes this store's changes after `through` that the master never received (this store
/// was master, or followed one further than its successor did): takes the master's record
/// of every name they touched, by FIND, into `resync` (a name the master does not have is
/// deleted). Whether it could: `false` when the change log no longer reaches back or there
/// are too many.
async fn rewind(
    store: &Store,
    link: &mut Link,
    through: u64,
    resync: &mut Resync,
    patience: Duration,
) -> Result<bool, LinkError> {
    let Some(names) = store.snapshot()?.names_changed_after(through, REWIND_MAX)? else {
        return Ok(false);
    };
    tracing::info!(
        through,
        names = names.len(),
        "rewinding changes the master never received"
    );
    let mut requests = Vec::new();
    for (index, name) in names.iter().enumerate() {
        crate::protocol::Command {
            tag: format!("R{index}").into_bytes(),
            kind: CommandKind::Find { name: name.clone() },
        }
        .encode(&mut requests);
    }
    link.send(&requests).await?;
    let mut found = None;
    let mut answered = 0;
    while answered < names.len() {
        match link.next(patience).await? {
            Reply::Line { tag, word, rest } if tag.starts_with(b"R") => {
                if word != b"OK" {
                    return Err(LinkError::Protocol(format!(
                        "FIND answered {} {}",
                        String::from_utf8_lossy(&word),
                        String::from_utf8_lossy(&rest)
                    )));
                }
                let name = names[answered].clone();
                let mutation = found
                    .take()
                    .unwrap_or(Mutation::Replicate { name, record: None });
                resync.push(mutation).await?;
                answered += 1;
            }
            reply => found = replicate(reply),
        }
    }
    Ok(true)
}

/// Tells the master this replica holds its changes through `seq` durably (XACK, not
/// answered): a master with synchronous replicas answers a write once enough of them hold
/// it. Sent only after a position, which only our masters send.
async fn acknowledge(link: &mut Link, seq: u64, settings: &SlaveSettings) -> Result<(), LinkError> {
    let seq = seq.to_string().into_bytes();
    let replica = settings
        .identity
        .as_ref()
        .map(|name| name.clone().into_bytes());
    link.request(b"K", CommandKind::Xack { seq, replica }).await
}

async fn send_noop(link: &mut Link, counter: &mut u64) -> Result<Vec<u8>, LinkError> {
    let tag = format!("N{counter}");
    *counter += 1;
    link.request(tag.as_bytes(), CommandKind::Noop).await?;
    Ok(tag.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delays() {
        assert_eq!(reconnect_delay(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(
            reconnect_delay(Duration::from_secs(1)),
            Duration::from_secs(1)
        );
        assert_eq!(
            reconnect_delay(Duration::from_secs(2)),
            Duration::from_secs(2)
        );
        for _ in 0..50 {
            let d = reconnect_delay(Duration::from_secs(20));
            assert!(d >= Duration::from_secs(20) && d < Duration::from_secs(30));
        }
    }
}
