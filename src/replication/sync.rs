//! A master's synchronous replicas (`mupdate_sync_replicas`): what each replica streaming
//! by XUPDATE has said (XACK) it holds durably, and a write's wait until enough of them hold
//! it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// The acknowledgements of the replicas streaming from this master now.
#[derive(Debug, Default)]
pub struct SyncReplicas {
    /// Per replica connection, the last seq it acknowledged.
    acknowledged: Mutex<HashMap<u64, u64>>,
    /// Woken on each acknowledgement and each replica gone.
    changed: Notify,
    next_id: AtomicU64,
}

impl SyncReplicas {
    /// A replica connection that acknowledges, counted until the slot is dropped.
    pub fn join(self: &Arc<Self>) -> ReplicaSlot {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.table().insert(id, 0);
        ReplicaSlot {
            id,
            replicas: self.clone(),
        }
    }

    /// Replicas streaming and acknowledging now.
    pub fn connected(&self) -> usize {
        self.table().len()
    }

    /// How many replicas hold `seq`.
    pub fn holding(&self, seq: u64) -> usize {
        self.table().values().filter(|&&acked| acked >= seq).count()
    }

    /// Waits until `replicas` replicas hold `seq`, `patience` at most; whether they did.
    pub async fn wait_until_held(&self, seq: u64, replicas: usize, patience: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            // Registered before the check, so that an acknowledgement in between wakes it.
            let changed = self.changed.notified();
            if self.holding(seq) >= replicas {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.holding(seq) >= replicas;
            }
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u64>> {
        // A panic while holding this lock cannot leave the map half-changed.
        self.acknowledged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One acknowledging replica connection.
#[derive(Debug)]
pub struct ReplicaSlot {
    id: u64,
    replicas: Arc<SyncReplicas>,
}

impl ReplicaSlot {
    /// The replica holds every change through `seq` durably.
    pub fn acknowledge(&self, seq: u64) {
        if let Some(acked) = self.replicas.table().get_mut(&self.id) {
            *acked = (*acked).max(seq);
        }
        self.replicas.changed.notify_waiters();
    }
}

impl Drop for ReplicaSlot {
    fn drop(&mut self) {
        self.replicas.table().remove(&self.id);
        self.replicas.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_waits_for_enough_replicas_to_hold_it() {
        let replicas = Arc::new(SyncReplicas::default());
        let patience = Duration::from_secs(5);
        let (first, second) = (replicas.join(), replicas.join());
        assert_eq!(replicas.connected(), 2);
        first.acknowledge(10);
        assert!(replicas.wait_until_held(10, 1, patience).await);
        let waiting = {
            let replicas = replicas.clone();
            tokio::spawn(async move { replicas.wait_until_held(12, 2, patience).await })
        };
        tokio::task::yield_now().await;
        first.acknowledge(12);
        second.acknowledge(11);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "one replica does not hold 12 yet");
        second.acknowledge(12);
        assert!(waiting.await.unwrap());
        // Older acknowledgements do not move a replica back.
        first.acknowledge(3);
        assert_eq!(replicas.holding(12), 2);
        drop(second);
        assert_eq!(replicas.connected(), 1);
    }

    #[tokio::test]
    async fn without_enough_replicas_the_wait_gives_up() {
        let replicas = Arc::new(SyncReplicas::default());
        let only = replicas.join();
        only.acknowledge(5);
        assert!(
            !replicas
                .wait_until_held(6, 1, Duration::from_millis(50))
                .await
        );
        assert!(
            !replicas
                .wait_until_held(5, 2, Duration::from_millis(50))
                .await
        );
    }
}
