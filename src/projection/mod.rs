//! Cyrus's own `mailboxes.db`, kept as a projection of the store, as Cyrus's mupdate keeps
//! it on every host it runs on: a frontend's imapd, lmtpd and pop3d read it to route, and
//! never speak MUPDATE. redb stays the truth; the file follows every committed change in
//! commit order, in short transactions, and is reconciled with the store at start and
//! whenever the change log no longer reaches back to what the file holds.

mod decide;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cyrusdb::twoskip::{RandomLevels, TwoskipError, TwoskipFile};
use crate::observability::metrics::Metrics;
use crate::store::{Store, StoreError};

pub use decide::{Desired, Mapping};
pub use writer::TransactionLimits;
use writer::Writer;

/// Why the projection could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// Reading the store failed.
    #[error("mailboxes.db projection: {0}")]
    Store(#[from] StoreError),
    /// Reading or writing the file failed.
    #[error("mailboxes.db projection: {0}")]
    Twoskip(#[from] TwoskipError),
    /// The reconciliation's merge of file and store lost its place (a bug).
    #[error("mailboxes.db projection: reconciliation lost its place")]
    Lost,
    /// A thread of a reconciliation ended without an answer.
    #[error("mailboxes.db projection: a reconciliation thread failed")]
    Worker,
}

/// Where and how to keep mailboxes.db.
pub struct ProjectionOptions {
    /// `mboxlist_db_path`.
    pub path: PathBuf,
    /// How store names and hosts map onto the file's records.
    pub mapping: Mapping,
    /// Bounds of one write transaction.
    pub limits: TransactionLimits,
    /// Turns true when the store is worth projecting (a slave: after its first sync, so a
    /// fresh replica does not empty a file its predecessor filled); `None`: at once.
    pub start_after: Option<watch::Receiver<bool>>,
}

/// The running projection, as the rest of the server sees it; cheap to clone.
#[derive(Clone)]
pub struct Projection {
    store: Store,
    applied: watch::Receiver<Option<u64>>,
    healthy: Arc<AtomicBool>,
}

/// Longest pause between attempts after a failed write.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);

impl Projection {
    /// Opens (creating if need be) the file and starts following the store until
    /// `shutdown`. The file is written from a blocking thread, never an async worker.
    pub fn start(
        store: Store,
        options: ProjectionOptions,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Projection, ProjectionError> {
        let file = TwoskipFile::open(&options.path, Box::new(RandomLevels))?;
        let writer = Writer::new(file, options.mapping, options.limits, metrics.clone());
        let (published, applied) = watch::channel(None);
        let projection = Projection {
            store: store.clone(),
            applied,
            healthy: Arc::new(AtomicBool::new(false)),
        };
        tokio::spawn(follow(
            writer,
            store,
            published,
            projection.healthy.clone(),
            options.start_after,
            metrics,
            shutdown,
        ));
        Ok(projection)
    }

    /// Waits, at most `timeout`, until every change committed to the store before the call
    /// is in the file; returns whether it is.
    pub async fn wait_visible(&self, timeout: Duration) -> bool {
        let target = self.store.last_seq();
        let mut applied = self.applied.clone();
        let caught_up = applied.wait_for(|seq| seq.is_some_and(|seq| seq >= target));
        matches!(tokio::time::timeout(timeout, caught_up).await, Ok(Ok(_)))
    }

    /// Whether the file has been reconciled and the last attempt to write it succeeded:
    /// a frontend cannot route by it otherwise.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }
}

/// The projection's loop: catch up on a blocking thread, then sleep until the next commit.
async fn follow(
    mut writer: Writer,
    store: Store,
    published: watch::Sender<Option<u64>>,
    healthy: Arc<AtomicBool>,
    start_after: Option<watch::Receiver<bool>>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut committed = store.committed();
    if let Some(mut ready) = start_after {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            started = ready.wait_for(|started| *started) => if started.is_err() { return },
        }
    }
    let mut retry_delay = Duration::from_millis(100);
    loop {
        committed.mark_unchanged();
        let step_store = store.clone();
        let step_published = published.clone();
        let step = tokio::task::spawn_blocking(move || {
            let result = writer.catch_up(&step_store, &mut |seq| {
                step_published.send_if_modified(|applied| {
                    let newer = applied.is_none_or(|applied| applied < seq);
                    if newer {
                        *applied = Some(seq);
                    }
                    newer
                });
            });
            (writer, result)
        });
        let result;
        (writer, result) = match step.await {
            Ok(done) => done,
            Err(error) => {
                tracing::error!(%error, "mailboxes.db writer stopped");
                healthy.store(false, Ordering::Release);
                metrics.mailboxes_db_up.set(0);
                return;
            }
        };
        match result {
            Ok(_) => {
                retry_delay = Duration::from_millis(100);
                healthy.store(true, Ordering::Release);
                metrics.mailboxes_db_up.set(1);
            }
            Err(error) => {
                healthy.store(false, Ordering::Release);
                metrics.mailboxes_db_up.set(0);
                metrics.mailboxes_db_errors.inc();
                tracing::error!(%error, retry_in_secs = retry_delay.as_secs_f64(), "mailboxes.db not brought up to date");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(retry_delay) => {}
                }
                retry_delay = (retry_delay * 2).min(MAX_RETRY_DELAY);
                continue;
            }
        }
        let caught_up = published.borrow().unwrap_or(0);
        if store.last_seq() > caught_up {
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = committed.changed() => if changed.is_err() { return },
        }
    }
}
