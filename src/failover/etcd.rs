//! The campaign through etcd v3: a lease of `mupdate_ha_lease_ttl`, one transaction that
//! takes the leader key (if nobody holds it) and the next term together, renewals that keep
//! the [`Fence`] open, and a watch on the leader key while following.

use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, PutOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Fence, HaRole, Keys, SyncSet, fence_margin, leader_value, parse_leader_value};
use crate::config::HaSettings;

/// The shortest keep-alive ping interval etcd tolerates by default.
const ETCD_MIN_PING_INTERVAL: Duration = Duration::from_secs(5);

/// What can go wrong talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum HaError {
    /// etcd refused or could not be reached.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// A key holds something no instance of ours writes.
    #[error("etcd key {key}: unexpected value {value:?}")]
    Malformed {
        /// The key.
        key: String,
        /// What it holds.
        value: String,
    },
}

/// The outcome of one campaign.
enum Campaign {
    /// This instance took the leader key for `term`.
    Won { term: u64 },
    /// Another holds it; watch it from `revision` on.
    Lost {
        term: u64,
        leader: String,
        revision: i64,
    },
    /// Nobody holds it, but the term moved meanwhile: campaign again.
    Raced,
    /// Nobody holds it, and the last master's sync set does not name this instance: it may
    /// lack acknowledged writes, so it waits for one that holds them all.
    Ineligible,
}

/// Records a master's synchronous replicas in etcd, while it is master.
#[derive(Clone)]
pub struct SyncRecorder {
    client: Client,
    keys: Keys,
    advertise: String,
}

impl SyncRecorder {
    /// Writes `replicas` as the sync set of the master of `term` (this instance), if the
    /// leader key is still its own; whether it did.
    pub async fn record(&self, term: u64, replicas: &[String]) -> Result<bool, HaError> {
        let set = SyncSet {
            term,
            master: self.advertise.clone(),
            replicas: replicas.to_vec(),
        };
        let txn = Txn::new()
            .when([Compare::value(
                self.keys.leader.as_str(),
                CompareOp::Equal,
                leader_value(term, &self.advertise),
            )])
            .and_then([TxnOp::put(self.keys.sync.as_str(), set.encode(), None)]);
        let mut client = self.client.clone();
        Ok(client.txn(txn).await?.succeeded())
    }

    /// Removes the sync set, if the leader key is still this master's of `term`: with
    /// `mupdate_sync_replicas: 0` any instance may succeed it (availability chosen over
    /// the writes a successor may lack). Whether it did.
    pub async fn clear(&self, term: u64) -> Result<bool, HaError> {
        let txn = Txn::new()
            .when([Compare::value(
                self.keys.leader.as_str(),
                CompareOp::Equal,
                leader_value(term, &self.advertise),
            )])
            .and_then([TxnOp::delete(self.keys.sync.as_str(), None)]);
        let mut client = self.client.clone();
        Ok(client.txn(txn).await?.succeeded())
    }
}

/// Campaigns for the master's role of one cluster and tells who this instance is.
pub struct Elector {
    client: Client,
    keys: Keys,
    advertise: String,
    ttl: Duration,
    fence: Fence,
    role: watch::Sender<HaRole>,
}

impl Elector {
    /// Connects to etcd (without campaigning yet).
    pub async fn connect(settings: &HaSettings) -> Result<Elector, HaError> {
        Elector::connect_with(settings, Fence::default()).await
    }

    /// Connects to etcd, keeping `fence` (which others may already hold) open while master.
    pub async fn connect_with(settings: &HaSettings, fence: Fence) -> Result<Elector, HaError> {
        fence.close();
        let options = ConnectOptions::new()
            .with_connect_timeout(settings.lease_ttl / 3)
            .with_timeout(settings.lease_ttl / 3)
            // etcd closes a connection pinged more often than every 5 s (its
            // --grpc-keepalive-min-time); the fence needs no ping, its renewals time out.
            .with_keep_alive(ETCD_MIN_PING_INTERVAL, settings.lease_ttl / 3);
        let client = Client::connect(&settings.etcd_endpoints, Some(options)).await?;
        Ok(Elector {
            client,
            keys: Keys::of(&settings.cluster),
            advertise: settings.advertise.clone(),
            ttl: settings.lease_ttl,
            fence,
            role: watch::Sender::new(HaRole::Candidate),
        })
    }

    /// Who this instance is, as it changes.
    pub fn role(&self) -> watch::Receiver<HaRole> {
        self.role.subscribe()
    }

    /// What records this master's synchronous replicas.
    pub fn sync_recorder(&self) -> SyncRecorder {
        SyncRecorder {
            client: self.client.clone(),
            keys: self.keys.clone(),
            advertise: self.advertise.clone(),
        }
    }

    /// Open while this instance is master and its lease certainly held.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// Campaigns, leads or follows until `shutdown`. A master that stops resigns at once
    /// (its lease revoked), so that a successor need not wait for the lease to run out.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let retry = self.ttl / 3;
        while !shutdown.is_cancelled() {
            // Not raced against `shutdown`: a round ends on it by itself, after resigning.
            if let Err(error) = self.round(&shutdown).await {
                self.fence.close();
                self.role.send_replace(HaRole::Candidate);
                tracing::warn!(%error, retry_secs = retry.as_secs_f64(), "failover: etcd round failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(retry) => {}
                }
            }
        }
        self.fence.close();
    }

    /// One campaign, and then leading or following until that ends.
    async fn round(&mut self, shutdown: &CancellationToken) -> Result<(), HaError> {
        let ttl_secs = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
        let granted_at = Instant::now();
        let lease = self.client.lease_grant(ttl_secs, None).await?.id();
        let outcome = self.campaign(lease).await;
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(error) => {
                let _ = self.client.lease_revoke(lease).await;
                return Err(error);
            }
        };
        match outcome {
            Campaign::Won { term } => {
                self.fence
                    .open_until(granted_at + self.ttl - fence_margin(self.ttl));
                self.role.send_replace(HaRole::Leader { term });
                tracing::info!(term, address = %self.advertise, "failover: elected master");
                let led = self.lead(lease, shutdown).await;
                self.fence.close();
                self.role.send_replace(HaRole::Candidate);
                // Resigning lets a successor campaign at once; if etcd cannot be reached,
                // the lease runs out on its own.
                let _ = self.client.lease_revoke(lease).await;
                tracing::warn!(term, "failover: no longer master");
                led
            }
            Campaign::Lost {
                term,
                leader,
                revision,
            } => {
                let _ = self.client.lease_revoke(lease).await;
                self.follow(term, leader, revision, shutdown).await
            }
            Campaign::Raced => {
                let _ = self.client.lease_revoke(lease).await;
                Ok(())
            }
            Campaign::Ineligible => {
                let _ = self.client.lease_revoke(lease).await;
                tracing::info!(address = %self.advertise, "failover: not a synchronous replica of the last master; waiting for one to take over");
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(self.ttl / 3) => {}
                }
                Ok(())
            }
        }
    }

    /// Takes the leader key and the next term in one transaction, if nobody holds the key
    /// and the term is still the one read.
    async fn campaign(&mut self, lease: i64) -> Result<Campaign, HaError> {
        let current = self.client.get(self.keys.term.as_str(), None).await?;
        let (term, term_revision) = match current.kvs().first() {
            None => (0, 0),
            Some(kv) => {
                let term = std::str::from_utf8(kv.value())
                    .ok()
                    .and_then(|text| text.parse::<u64>().ok())
                    .ok_or_else(|| HaError::Malformed {
                        key: self.keys.term.clone(),
                        value: String::from_utf8_lossy(kv.value()).into_owned(),
                    })?;
                (term, kv.mod_revision())
            }
        };
        let synced = self.client.get(self.keys.sync.as_str(), None).await?;
        let (sync, sync_revision) = match synced.kvs().first() {
            None => (None, 0),
            Some(kv) => (SyncSet::parse(kv.value()), kv.mod_revision()),
        };
        let eligible = sync
            .as_ref()
            .is_none_or(|set| set.may_succeed(&self.advertise));
        if !eligible {
            let holder = self.client.get(self.keys.leader.as_str(), None).await?;
            let revision = holder.header().map_or(0, |header| header.revision());
            return match holder.kvs().first() {
                None => Ok(Campaign::Ineligible),
                Some(kv) => self.lost_to(kv.value(), revision),
            };
        }
        let next = term + 1;
        let txn = Txn::new()
            .when([
                Compare::create_revision(self.keys.leader.as_str(), CompareOp::Equal, 0),
                Compare::mod_revision(self.keys.term.as_str(), CompareOp::Equal, term_revision),
                // The sync set read is the one in force when the key is taken.
                Compare::mod_revision(self.keys.sync.as_str(), CompareOp::Equal, sync_revision),
            ])
            .and_then([
                TxnOp::put(
                    self.keys.leader.as_str(),
                    leader_value(next, &self.advertise),
                    Some(PutOptions::new().with_lease(lease)),
                ),
                TxnOp::put(self.keys.term.as_str(), next.to_string(), None),
            ])
            .or_else([TxnOp::get(self.keys.leader.as_str(), None)]);
        let answer = self.client.txn(txn).await?;
        if answer.succeeded() {
            return Ok(Campaign::Won { term: next });
        }
        let revision = answer.header().map_or(0, |header| header.revision());
        let holder = answer.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(got) => got.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        });
        match holder {
            None => Ok(Campaign::Raced),
            Some(value) => self.lost_to(&value, revision),
        }
    }

    /// Another instance holds the leader key, whose value is `value` at `revision`.
    fn lost_to(&self, value: &[u8], revision: i64) -> Result<Campaign, HaError> {
        match parse_leader_value(value) {
            Some((term, leader)) => Ok(Campaign::Lost {
                term,
                leader,
                revision,
            }),
            None => Err(HaError::Malformed {
                key: self.keys.leader.clone(),
                value: String::from_utf8_lossy(value).into_owned(),
            }),
        }
    }

    /// Renews the lease every third of its time, moving the fence on with each confirmed
    /// renewal, until a renewal cannot be confirmed before the fence closes, the leader key
    /// is no longer ours, or `shutdown`.
    async fn lead(&mut self, lease: i64, shutdown: &CancellationToken) -> Result<(), HaError> {
        let period = self.ttl / 3;
        let margin = fence_margin(self.ttl);
        let (mut keeper, mut renewals) = self.client.lease_keep_alive(lease).await?;
        let mut watched = self.client.watch(self.keys.leader.as_str(), None).await?;
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                event = watched.message() => {
                    let Some(answer) = event? else { return Ok(()) };
                    if answer.events().iter().any(|e| e.event_type() == EventType::Delete) {
                        tracing::warn!("failover: the leader key is gone");
                        return Ok(());
                    }
                }
                _ = tick.tick() => {
                    let sent = Instant::now();
                    keeper.keep_alive().await?;
                    let answer = tokio::time::timeout(period, renewals.message()).await;
                    match answer {
                        Ok(Ok(Some(renewed))) if renewed.ttl() > 0 => {
                            let ttl = Duration::from_secs(u64::try_from(renewed.ttl()).unwrap_or(0));
                            self.fence.open_until(sent + ttl - margin);
                        }
                        Ok(Ok(Some(_))) => {
                            tracing::warn!("failover: the lease has expired");
                            return Ok(());
                        }
                        Ok(Ok(None)) => return Ok(()),
                        Ok(Err(error)) => return Err(error.into()),
                        Err(_) => tracing::warn!("failover: a lease renewal went unanswered"),
                    }
                    if !self.fence.is_open() {
                        tracing::warn!("failover: the lease could not be renewed in time");
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Follows the master named in the leader key until the key is deleted (then this
    /// instance campaigns) or `shutdown`.
    async fn follow(
        &mut self,
        mut term: u64,
        mut leader: String,
        revision: i64,
        shutdown: &CancellationToken,
    ) -> Result<(), HaError> {
        self.role.send_replace(HaRole::Follower {
            term,
            leader: leader.clone(),
        });
        tracing::info!(term, %leader, "failover: following");
        let options = WatchOptions::new().with_start_revision(revision + 1);
        let mut watched = self
            .client
            .watch(self.keys.leader.as_str(), Some(options))
            .await?;
        loop {
            let answer = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                answer = watched.message() => answer?,
            };
            let Some(answer) = answer else {
                return Ok(());
            };
            if answer.canceled() {
                return Ok(());
            }
            for event in answer.events() {
                match (event.event_type(), event.kv()) {
                    (EventType::Delete, _) => {
                        tracing::info!(term, %leader, "failover: the master's key is gone");
                        self.role.send_replace(HaRole::Candidate);
                        return Ok(());
                    }
                    (EventType::Put, Some(kv)) => {
                        if let Some((new_term, new_leader)) = parse_leader_value(kv.value()) {
                            term = new_term;
                            leader = new_leader;
                            self.role.send_replace(HaRole::Follower {
                                term,
                                leader: leader.clone(),
                            });
                        }
                    }
                    (EventType::Put, None) => {}
                }
            }
        }
    }
}
