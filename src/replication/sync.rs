//! A master's synchronous replicas (`mupdate_sync_replicas`): what each replica streaming
//! by XUPDATE has said (XACK) it holds durably, and a write's wait until enough of them hold
//! it. Under failover only the replicas recorded in etcd count ([`SyncReplicas::members`]),
//! so that whichever of them succeeds the master holds every write it acknowledged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, RwLock};

/// One replica connection's acknowledgements.
#[derive(Debug, Default)]
struct Acknowledged {
    /// Its advertised address, when it gives one (elected replicas do).
    name: Option<String>,
    /// The last seq it holds.
    seq: u64,
}

/// The acknowledgements of the replicas streaming from this master now.
#[derive(Debug, Default)]
pub struct SyncReplicas {
    /// Per replica connection.
    acknowledged: Mutex<HashMap<u64, Acknowledged>>,
    /// Under failover, the replicas recorded in etcd: only they count. `None`: any does.
    members: Mutex<Option<Vec<String>>>,
    /// Read while a write's acknowledgement is decided, written while the members change:
    /// a replica joins them only holding every write acknowledged before.
    gate: RwLock<()>,
    /// The last seq acknowledged to a client (under failover: from the promotion on,
    /// everything committed before it).
    acknowledged_through: AtomicU64,
    /// Woken on each acknowledgement and each replica gone.
    changed: Notify,
    next_id: AtomicU64,
}

impl SyncReplicas {
    /// A replica connection that acknowledges, counted until the slot is dropped.
    pub fn join(self: &Arc<Self>) -> ReplicaSlot {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.table().insert(id, Acknowledged::default());
        ReplicaSlot {
            id,
            replicas: self.clone(),
        }
    }

    /// Replicas streaming and acknowledging now.
    pub fn connected(&self) -> usize {
        self.table().len()
    }

    /// Whether a write may be tried: `replicas` can confirm it (connected ones, or under
    /// failover as many recorded members).
    pub fn enough(&self, replicas: usize) -> bool {
        // The members' lock is let go first: `holding` takes the two the other way round.
        let members = self.member_list().as_ref().map(Vec::len);
        match members {
            Some(members) => members >= replicas,
            None => self.connected() >= replicas,
        }
    }

    /// How many replicas that count hold `seq`.
    pub fn holding(&self, seq: u64) -> usize {
        let table = self.table();
        match &*self.member_list() {
            Some(members) => members
                .iter()
                .filter(|member| {
                    table
                        .values()
                        .any(|r| r.seq >= seq && r.name.as_ref() == Some(*member))
                })
                .count(),
            None => table.values().filter(|r| r.seq >= seq).count(),
        }
    }

    /// Waits until `replicas` replicas that count hold `seq`, `patience` at most; whether
    /// they did. A write so confirmed is acknowledged: later members must hold it.
    pub async fn confirm(&self, seq: u64, replicas: usize, patience: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            // Registered before the check, so that an acknowledgement in between wakes it.
            let changed = self.changed.notified();
            if self.holding(seq) >= replicas {
                let _deciding = self.gate.read().await;
                // Checked again: the members may have changed meanwhile.
                if self.holding(seq) >= replicas {
                    self.acknowledged_through.fetch_max(seq, Ordering::AcqRel);
                    return true;
                }
                continue;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return false;
            }
        }
    }

    /// A new master's term: no member yet, and everything committed so far (`last_seq`)
    /// counts as acknowledged, as the master before may have acknowledged it.
    pub fn begin_term(&self, last_seq: u64) {
        *self.member_list() = Some(Vec::new());
        self.acknowledged_through.store(last_seq, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// The recorded members (under failover).
    pub fn members(&self) -> Option<Vec<String>> {
        self.member_list().clone()
    }

    /// The members there should be, if not the ones recorded: those connected, then
    /// connected replicas holding every acknowledged write, up to `wanted`, then those
    /// gone (a member is only ever replaced, never dropped).
    pub fn proposal(&self, wanted: usize) -> Option<Vec<String>> {
        let members = self.members()?;
        let through = self.acknowledged_through.load(Ordering::Acquire);
        let table = self.table();
        let connected = |name: &String| table.values().any(|r| r.name.as_ref() == Some(name));
        let mut proposed: Vec<String> = members.iter().filter(|m| connected(m)).cloned().collect();
        for replica in table.values() {
            if proposed.len() >= wanted {
                break;
            }
            if let Some(name) = &replica.name
                && replica.seq >= through
                && !proposed.contains(name)
            {
                proposed.push(name.clone());
            }
        }
        for gone in members.iter().filter(|m| !connected(m)) {
            if proposed.len() >= wanted {
                break;
            }
            proposed.push(gone.clone());
        }
        let same = proposed.len() == members.len() && proposed.iter().all(|p| members.contains(p));
        (!same).then_some(proposed)
    }

    /// Makes `proposed` the members once `record` (writing them to etcd) succeeds, no write
    /// being acknowledged meanwhile; nothing changes if a newcomer no longer holds every
    /// acknowledged write. Whether they are the members now.
    pub async fn change_members(
        &self,
        proposed: Vec<String>,
        record: impl std::future::Future<Output = bool>,
    ) -> bool {
        let _changing = self.gate.write().await;
        let through = self.acknowledged_through.load(Ordering::Acquire);
        let current = self.members().unwrap_or_default();
        let holds_all = {
            let table = self.table();
            proposed.iter().filter(|p| !current.contains(p)).all(|p| {
                table
                    .values()
                    .any(|r| r.seq >= through && r.name.as_ref() == Some(p))
            })
        };
        if !holds_all || !record.await {
            return false;
        }
        *self.member_list() = Some(proposed);
        self.changed.notify_waiters();
        true
    }

    /// Woken on each acknowledgement and each replica gone.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Acknowledged>> {
        // A panic while holding this lock cannot leave the map half-changed.
        self.acknowledged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn member_list(&self) -> std::sync::MutexGuard<'_, Option<Vec<String>>> {
        self.members
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
    /// The replica (named `name`, if it says) holds every change through `seq` durably.
    pub fn acknowledge(&self, seq: u64, name: Option<&str>) {
        if let Some(acked) = self.replicas.table().get_mut(&self.id) {
            acked.seq = acked.seq.max(seq);
            if let (None, Some(name)) = (&acked.name, name) {
                acked.name = Some(name.to_owned());
            }
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
        first.acknowledge(10, None);
        assert!(replicas.confirm(10, 1, patience).await);
        let waiting = {
            let replicas = replicas.clone();
            tokio::spawn(async move { replicas.confirm(12, 2, patience).await })
        };
        tokio::task::yield_now().await;
        first.acknowledge(12, None);
        second.acknowledge(11, None);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "one replica does not hold 12 yet");
        second.acknowledge(12, None);
        assert!(waiting.await.unwrap());
        // Older acknowledgements do not move a replica back.
        first.acknowledge(3, None);
        assert_eq!(replicas.holding(12), 2);
        drop(second);
        assert_eq!(replicas.connected(), 1);
    }

    #[tokio::test]
    async fn without_enough_replicas_the_wait_gives_up() {
        let replicas = Arc::new(SyncReplicas::default());
        let only = replicas.join();
        only.acknowledge(5, None);
        let brief = Duration::from_millis(50);
        assert!(!replicas.confirm(6, 1, brief).await);
        assert!(!replicas.confirm(5, 2, brief).await);
    }

    #[tokio::test]
    async fn under_failover_only_recorded_members_count_and_newcomers_must_hold_everything() {
        let replicas = Arc::new(SyncReplicas::default());
        let brief = Duration::from_millis(50);
        let (b, c) = (replicas.join(), replicas.join());
        replicas.begin_term(10);
        assert!(!replicas.enough(1), "no member recorded yet");
        // B is behind what the master before acknowledged; C holds it all.
        b.acknowledge(9, Some("b"));
        c.acknowledge(10, Some("c"));
        assert_eq!(replicas.proposal(1), Some(vec!["c".to_owned()]));
        assert!(
            replicas
                .change_members(vec!["c".into()], async { true })
                .await
        );
        assert!(replicas.enough(1));
        assert_eq!(
            replicas.proposal(1),
            None,
            "C is connected: nothing to change"
        );
        // B acknowledging a write does not confirm it; C doing so does.
        b.acknowledge(11, Some("b"));
        assert!(!replicas.confirm(11, 1, brief).await);
        c.acknowledge(11, Some("c"));
        assert!(replicas.confirm(11, 1, brief).await);
        // C gone: B, which holds write 11 (acknowledged above), replaces it.
        drop(c);
        let proposed = replicas.proposal(1);
        assert_eq!(proposed, Some(vec!["b".to_owned()]));
        // A refused record leaves the members as they were.
        assert!(
            !replicas
                .change_members(vec!["b".into()], async { false })
                .await
        );
        assert_eq!(replicas.members(), Some(vec!["c".to_owned()]));
        assert!(
            replicas
                .change_members(vec!["b".into()], async { true })
                .await
        );
        assert_eq!(replicas.members(), Some(vec!["b".to_owned()]));
    }

    #[tokio::test]
    async fn a_newcomer_behind_the_acknowledged_writes_is_not_made_a_member() {
        let replicas = Arc::new(SyncReplicas::default());
        let behind = replicas.join();
        replicas.begin_term(10);
        behind.acknowledge(9, Some("b"));
        assert_eq!(replicas.proposal(1), None, "B lacks write 10");
        assert!(
            !replicas
                .change_members(vec!["b".into()], async { true })
                .await
        );
        assert_eq!(replicas.members(), Some(Vec::new()));
    }
}
