//! The barrier between a slave's clients and its link: a kick or a streaming client's NOOP
//! waits for the next round trip with the master; the link answers and records how fresh
//! it is. Its own module, so that the kick socket, the server and the link share it
//! without depending on one another.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::timeout;

/// Lets clients of a slave wait until the slave holds everything its master had committed
/// (a kick, or a streaming client's NOOP). Passes at once while the master is unreachable.
#[derive(Clone)]
pub struct UpstreamBarrier {
    requests: mpsc::Sender<oneshot::Sender<()>>,
    connected: watch::Receiver<bool>,
    pub(super) status: Arc<LinkStatus>,
    patience: Duration,
}

impl UpstreamBarrier {
    /// Waits for the next NOOP round trip with the master (bounded by the link's timeout).
    pub async fn wait(&self) {
        if !self.connected() {
            return;
        }
        // Bounded as a whole: the queue to the link may be full too.
        let _ = timeout(self.patience, async {
            let (done, passed) = oneshot::channel();
            if self.requests.send(done).await.is_ok() {
                let _ = passed.await;
            }
        })
        .await;
    }

    /// Whether the slave is currently synchronised with its master.
    pub fn connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Follows whether the slave is synchronised with its master.
    pub fn connection(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    /// The link's freshness.
    pub fn status(&self) -> &LinkStatus {
        &self.status
    }
}

/// When the slave last heard from its master with everything received applied.
#[derive(Debug, Default)]
pub struct LinkStatus {
    /// Milliseconds since the Unix epoch; 0 before the first sync.
    confirmed_ms: std::sync::atomic::AtomicU64,
}

fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl LinkStatus {
    pub(super) fn confirm(&self) {
        self.confirmed_ms.store(unix_millis(), Ordering::Release);
    }

    /// How long ago the slave last knew it had everything its master had sent (`None`:
    /// never synchronised). Near zero while the link streams; grows while cut off.
    pub fn lag(&self) -> Option<Duration> {
        match self.confirmed_ms.load(Ordering::Acquire) {
            0 => None,
            confirmed => Some(Duration::from_millis(
                unix_millis().saturating_sub(confirmed),
            )),
        }
    }
}

/// The barrier's two ends: clients hold the [`UpstreamBarrier`], the link the receiver.
pub fn barrier(retry_delay: Duration) -> (UpstreamBarrier, BarrierRequests) {
    let (requests, receiver) = mpsc::channel(1024);
    let (connected, connection) = watch::channel(false);
    let handle = UpstreamBarrier {
        requests,
        connected: connection,
        status: Arc::new(LinkStatus::default()),
        patience: retry_delay.max(Duration::from_secs(1)) * 2,
    };
    (
        handle.clone(),
        BarrierRequests {
            receiver,
            connected,
            handle,
        },
    )
}

/// The link's end of the barrier: the requests it answers, and where it says whether it is
/// synchronised with its master.
pub struct BarrierRequests {
    pub(super) receiver: mpsc::Receiver<oneshot::Sender<()>>,
    pub(super) connected: watch::Sender<bool>,
    pub(super) handle: UpstreamBarrier,
}
