//! An elected instance (issue 16): campaigns through etcd and follows the election, one
//! replication link at a time to whichever instance is master, so that its clients (and
//! Cyrus slaves streaming from it) keep their connections while masters change.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::slave_settings;
use crate::config::{HaSettings, Settings};
use crate::exit::{EXIT_CONFIG, Fatal, fatal};
use crate::failover::etcd::{Elector, SyncRecorder};
use crate::failover::{Fence, HaRole};
use crate::observability::metrics::Metrics;
use crate::observability::sidecar::Readiness;
use crate::replication::barrier::{self, BarrierRequests};
use crate::replication::client::Credentials;
use crate::replication::forward::Forwarder;
use crate::server::{Election, ServerContext};

/// What [`prepare`] sets up and [`start`] runs once the context is shared.
pub(super) struct Campaign {
    ha: HaSettings,
    fence: Fence,
    published: watch::Sender<HaRole>,
    requests: BarrierRequests,
    serving: watch::Sender<bool>,
}

/// Gives `ctx` its election (published role, fence, forwarder) and upstream barrier, and
/// `readiness` its per-role condition; returns what [`start`] runs and a receiver that turns
/// true once this instance may serve clients (master, or follower after its first sync).
pub(super) fn prepare(
    ctx: &mut ServerContext,
    readiness: &mut Readiness,
) -> Result<(Campaign, watch::Receiver<bool>), Fatal> {
    let settings = &ctx.settings;
    let Some(ha) = settings.ha.clone() else {
        return Err(fatal(EXIT_CONFIG, "an elected role needs mupdate_ha_*"));
    };
    let fence = Fence::default();
    let (published, role) = watch::channel(HaRole::Candidate);
    let forwarder = Forwarder::new(
        Credentials {
            server: String::new(),
            authname: settings.mupdate_authname.clone().unwrap_or_default(),
            username: settings.mupdate_username.clone().unwrap_or_default(),
            password: settings.mupdate_password.clone().unwrap_or_default(),
            timeout: settings.client_timeout,
            tls: None,
        },
        {
            let settings = settings.clone();
            Box::new(move |master| {
                crate::tls::client_for(&settings, master).map_err(|error| error.to_string())
            })
        },
        // The master may wait for its synchronous replicas before it answers.
        settings.sync_timeout + settings.client_timeout,
    );
    let (upstream, requests) = barrier::barrier(settings.retry_delay);
    let max_lag = settings.ready_max_lag;
    readiness.also_require("elected role", {
        let role = role.clone();
        let fence = fence.clone();
        let upstream = upstream.clone();
        Arc::new(move || match &*role.borrow() {
            HaRole::Leader { .. } => fence.is_open(),
            HaRole::Follower { .. } => {
                upstream.connected() && upstream.status().lag().is_some_and(|lag| lag <= max_lag)
            }
            HaRole::Candidate => false,
        })
    });
    ctx.set_upstream(upstream);
    ctx.set_election(Election {
        role,
        fence: fence.clone(),
        forwarder: Arc::new(forwarder),
    });
    let (serving, may_serve) = watch::channel(false);
    Ok((
        Campaign {
            ha,
            fence,
            published,
            requests,
            serving,
        },
        may_serve,
    ))
}

/// Campaigns and follows the election until `ctx.shutdown`.
pub(super) fn start(ctx: &Arc<ServerContext>, campaign: Campaign) {
    tokio::spawn(supervise(ctx.clone(), campaign));
}

/// The replication link to one master.
struct Link {
    master: String,
    term: u64,
    stop: CancellationToken,
    task: JoinHandle<BarrierRequests>,
    synced: watch::Receiver<bool>,
}

async fn supervise(ctx: Arc<ServerContext>, campaign: Campaign) {
    let Campaign {
        ha,
        fence,
        published,
        requests,
        serving,
    } = campaign;
    let Some(elector) = connect(&ha, &fence, &ctx.shutdown).await else {
        return;
    };
    let mut elected = elector.role();
    let recorder = elector.sync_recorder();
    tokio::spawn(elector.run(ctx.shutdown.clone()));
    // The term whose synchronous replicas are being kept, and what stops that.
    let mut keeping_members: Option<(u64, CancellationToken)> = None;
    // The term whose master cleared the sync set (mupdate_sync_replicas 0).
    let mut cleared = None;
    let mut requests = Some(requests);
    let mut link: Option<Link> = None;
    loop {
        let role = elected.borrow_and_update().clone();
        // Another term (a watch may skip the candidate in between) keeps its own.
        if keeping_members
            .as_ref()
            .is_some_and(|(term, _)| role != HaRole::Leader { term: *term })
            && let Some((_, keeping)) = keeping_members.take()
        {
            keeping.cancel();
        }
        match &role {
            HaRole::Leader { term } => {
                // No change from an old master may land after this one's own writes.
                if let Some(old) = link.take() {
                    requests = stop(old).await;
                }
                if ctx.settings.sync_replicas == 0 && cleared != Some(*term) {
                    cleared = Some(*term);
                    // No synchronous replicas: a sync set left by an earlier configuration
                    // must not keep any instance from taking over.
                    let (recorder, term) = (recorder.clone(), *term);
                    tokio::spawn(async move {
                        if let Err(error) = recorder.clear(term).await {
                            tracing::warn!(%error, "failover: cannot clear the sync set");
                        }
                    });
                }
                if keeping_members.is_none() && ctx.settings.sync_replicas > 0 {
                    ctx.sync_replicas.begin_term(ctx.store.last_seq());
                    ctx.metrics.ha_sync_members.set(0);
                    let keeping = ctx.shutdown.child_token();
                    tokio::spawn(keep_members(
                        ctx.clone(),
                        recorder.clone(),
                        *term,
                        keeping.clone(),
                    ));
                    keeping_members = Some((*term, keeping));
                }
            }
            HaRole::Follower { leader, term } => {
                if link
                    .as_ref()
                    .is_none_or(|l| &l.master != leader || l.term != *term)
                {
                    if let Some(old) = link.take() {
                        requests = stop(old).await;
                    }
                    let settings = slave_settings(&ctx.settings, leader.clone());
                    match (requests.take(), settings) {
                        (Some(barrier), Ok(mut settings)) => {
                            settings.term = Some(*term);
                            link = Some(follow(&ctx, settings, barrier));
                        }
                        (barrier, Err(error)) => {
                            requests = barrier;
                            tracing::error!(%leader, message = %error.message, "failover: cannot follow the master");
                        }
                        (None, Ok(_)) => {
                            tracing::error!(%leader, "failover: the replication link is gone; cannot follow the master");
                        }
                    }
                }
            }
            // Keeps following the last master meanwhile: it may still be streaming.
            HaRole::Candidate => {}
        }
        publish(&ctx.metrics, &published, role);
        let may_serve = match &*published.borrow() {
            HaRole::Leader { .. } => true,
            HaRole::Follower { .. } => link.as_ref().is_some_and(|l| *l.synced.borrow()),
            HaRole::Candidate => false,
        };
        if may_serve {
            serving.send_if_modified(|serving| !std::mem::replace(serving, true));
        }
        let synced = async {
            match link.as_mut() {
                Some(link) if !*link.synced.borrow() => {
                    if link.synced.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            changed = elected.changed() => if changed.is_err() { break },
            _ = synced => {}
        }
    }
    if let Some(old) = link.take() {
        stop(old).await;
    }
}

/// How often a master looks again at its synchronous replicas, besides on each change.
const MEMBERS_RECHECK: std::time::Duration = std::time::Duration::from_millis(500);

/// While master in `term`: keeps `mupdate_sync_replicas` replicas that hold every
/// acknowledged write recorded in etcd as the ones that may succeed it, replacing one
/// that is gone by one that has caught up.
async fn keep_members(
    ctx: Arc<ServerContext>,
    recorder: SyncRecorder,
    term: u64,
    stop: CancellationToken,
) {
    let wanted = ctx.settings.sync_replicas;
    let sync = &ctx.sync_replicas;
    loop {
        if let Some(proposed) = sync.proposal(wanted) {
            let record = async {
                match recorder.record(term, &proposed).await {
                    Ok(recorded) => recorded,
                    Err(error) => {
                        tracing::warn!(%error, "failover: cannot record the synchronous replicas");
                        false
                    }
                }
            };
            if sync.change_members(proposed.clone(), record).await {
                ctx.metrics.ha_sync_members.set(proposed.len() as i64);
                tracing::info!(term, replicas = ?proposed, "failover: synchronous replicas recorded");
            } else {
                // Not on the next acknowledgement: etcd may be struggling.
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(MEMBERS_RECHECK) => {}
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = sync.changed() => {}
            _ = tokio::time::sleep(MEMBERS_RECHECK) => {}
        }
    }
}

/// Connects to etcd, retrying every few seconds until it answers or `shutdown`.
async fn connect(ha: &HaSettings, fence: &Fence, shutdown: &CancellationToken) -> Option<Elector> {
    loop {
        match Elector::connect_with(ha, fence.clone()).await {
            Ok(elector) => return Some(elector),
            Err(error) => {
                let retry = ha.lease_ttl / 3;
                tracing::warn!(%error, retry_secs = retry.as_secs_f64(), "failover: cannot reach etcd");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(retry) => {}
                }
            }
        }
    }
}

fn publish(metrics: &Metrics, published: &watch::Sender<HaRole>, role: HaRole) {
    metrics
        .ha_term
        .set(i64::try_from(role.term()).unwrap_or(i64::MAX));
    metrics
        .ha_leader
        .set(i64::from(matches!(role, HaRole::Leader { .. })));
    let changed = published.send_if_modified(|current| {
        let changed = *current != role;
        *current = role.clone();
        changed
    });
    if changed {
        metrics.ha_role_changes.inc();
        tracing::info!(role = ?role, "failover: serving as {role:?}");
    }
}

fn follow(
    ctx: &Arc<ServerContext>,
    settings: crate::replication::slave::SlaveSettings,
    requests: BarrierRequests,
) -> Link {
    let (synced_tx, synced) = watch::channel(false);
    let stop = ctx.shutdown.child_token();
    let master = settings.master.clone();
    let term = settings.term.unwrap_or_default();
    let task = tokio::spawn(crate::replication::slave::run(
        ctx.store.clone(),
        settings,
        synced_tx,
        requests,
        ctx.metrics.clone(),
        stop.clone(),
    ));
    Link {
        master,
        term,
        stop,
        task,
        synced,
    }
}

/// Stops `link` and waits until it has let go of the store; returns the barrier's end
/// (none if the link's task failed, which is a bug: no later link can answer the barrier).
async fn stop(link: Link) -> Option<BarrierRequests> {
    link.stop.cancel();
    match link.task.await {
        Ok(requests) => Some(requests),
        Err(error) => {
            tracing::error!(master = %link.master, %error, "failover: the replication link failed");
            None
        }
    }
}

/// Whether `settings` can run an elected instance: it follows and forwards as
/// `mupdate_authname`.
pub(super) fn check(settings: &Settings) -> Result<(), Fatal> {
    if settings.mupdate_authname.is_none() || settings.mupdate_password.is_none() {
        return Err(fatal(
            EXIT_CONFIG,
            "failover needs mupdate_authname and mupdate_password: a follower logs in to the master with them",
        ));
    }
    Ok(())
}
