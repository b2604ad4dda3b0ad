//! The MUPDATE listener: accepts connections, enforces the connection limit and runs one
//! task per session. [`run`] takes a bound listener so tests can serve on port 0.

mod auth;
pub mod compress;
mod connection;
mod handlers;
mod layers;
mod notices;
mod session;
mod streams;
mod telemetry;
mod writes;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::config::Settings;
use crate::failover::{Fence, HaRole};
use crate::observability::metrics::Metrics;
use crate::protocol::response::{self, Banner, SERVER_UNABLE};
use crate::replication::barrier::UpstreamBarrier;
use crate::replication::forward::Forwarder;
use crate::store::Store;
use connection::{ClientStream, Connection};
use session::Session;
use tokio_rustls::TlsAcceptor;

/// Which side of replication this server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Holds the truth and accepts writes.
    Master,
    /// Serves a replica of `master` (the `mupdate_server` value) read-only.
    Slave {
        /// The master as configured.
        master: String,
    },
    /// Master or follower as elected through etcd ([`Election`]), changing while it runs.
    Elected,
}

/// What an elected instance's sessions follow: who it is now, whether as master it may
/// still acknowledge writes, and how as a follower it passes writes on.
#[derive(Clone)]
pub struct Election {
    /// Who this instance is, published once the replication link has caught up with it.
    pub role: tokio::sync::watch::Receiver<HaRole>,
    /// Open while this instance is master and its lease certainly held.
    pub fence: Fence,
    /// Sends a follower's writes to the master.
    pub forwarder: Arc<Forwarder>,
}

/// Everything the sessions share.
pub struct ServerContext {
    /// Settings.
    pub settings: Settings,
    /// The mailbox list.
    pub store: Store,
    /// Login checks.
    pub auth: Authenticator,
    /// Master or slave.
    pub role: Role,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    banner: Vec<u8>,
    /// The banner sent again after STARTTLS (spec §3.1).
    tls_banner: Vec<u8>,
    tls: Option<TlsAcceptor>,
    open_connections: AtomicUsize,
    /// Connections that have not logged in yet.
    unauthenticated: AtomicUsize,
    /// Failed logins per peer address.
    pub failed_logins: crate::auth::FailedLogins,
    upstream: Option<UpstreamBarrier>,
    /// What the replicas streaming from this master hold (`mupdate_sync_replicas`).
    pub sync_replicas: Arc<crate::replication::sync::SyncReplicas>,
    /// Exported metrics.
    pub metrics: Arc<Metrics>,
    /// Under failover: the election this instance follows.
    election: Option<Election>,
}

impl ServerContext {
    /// Builds the shared state.
    pub fn new(settings: Settings, store: Store, role: Role, shutdown: CancellationToken) -> Self {
        Self::with_metrics(
            settings,
            store,
            role,
            shutdown,
            Arc::new(Metrics::default()),
        )
    }

    /// Builds the shared state, counting into `metrics`.
    pub fn with_metrics(
        settings: Settings,
        store: Store,
        role: Role,
        shutdown: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Self {
        let auth = Authenticator::new(&settings);
        let banner = encode_banner(&settings, &auth, &role, false, false);
        let tls_banner = encode_banner(&settings, &auth, &role, false, true);
        let failed_logins = crate::auth::FailedLogins::new(
            settings.failed_logins_max,
            settings.failed_logins_window,
        );
        ServerContext {
            settings,
            store,
            auth,
            role,
            shutdown,
            banner,
            tls_banner,
            tls: None,
            open_connections: AtomicUsize::new(0),
            unauthenticated: AtomicUsize::new(0),
            failed_logins,
            upstream: None,
            sync_replicas: Arc::default(),
            metrics,
            election: None,
        }
    }

    /// Offers STARTTLS with `acceptor` (`tls_server_cert`/`tls_server_key`).
    pub fn set_tls(&mut self, acceptor: TlsAcceptor) {
        self.banner = encode_banner(&self.settings, &self.auth, &self.role, true, false);
        self.tls = Some(acceptor);
    }

    /// On a slave: how a streaming client's NOOP waits for the master (spec §5.8).
    pub fn set_upstream(&mut self, barrier: UpstreamBarrier) {
        self.upstream = Some(barrier);
    }

    /// On a slave: the link to its master.
    pub fn upstream(&self) -> Option<&UpstreamBarrier> {
        self.upstream.as_ref()
    }

    /// Under failover: follows `election` for the banner and for writes.
    pub fn set_election(&mut self, election: Election) {
        self.election = Some(election);
    }

    /// Under failover: the election this instance follows.
    pub fn election(&self) -> Option<&Election> {
        self.election.as_ref()
    }

    /// Writes are refused on a slave.
    pub fn read_only(&self) -> bool {
        matches!(self.role, Role::Slave { .. })
    }

    /// The capability banner, after STARTTLS if `tls_active`: an elected instance's names
    /// the master it follows now.
    pub(crate) fn banner(&self, tls_active: bool) -> std::borrow::Cow<'_, [u8]> {
        match &self.election {
            Some(election) => {
                let role = match &*election.role.borrow() {
                    HaRole::Leader { .. } => Role::Master,
                    HaRole::Follower { leader, .. } => Role::Slave {
                        master: leader.clone(),
                    },
                    HaRole::Candidate => Role::Elected,
                };
                let offered = self.tls.is_some() && !tls_active;
                encode_banner(&self.settings, &self.auth, &role, offered, tls_active).into()
            }
            None if tls_active => self.tls_banner.as_slice().into(),
            None => self.banner.as_slice().into(),
        }
    }

    /// Connections currently open.
    pub fn open_connections(&self) -> usize {
        self.open_connections.load(Ordering::Relaxed)
    }
}

/// The capability banner (spec §3.1): `starttls_offered` before TLS when configured;
/// `tls_active` after the handshake, where PLAIN is always allowed.
fn encode_banner(
    settings: &Settings,
    auth: &Authenticator,
    role: &Role,
    starttls_offered: bool,
    tls_active: bool,
) -> Vec<u8> {
    let mut banner = Vec::new();
    Banner {
        mechanisms: auth.mechanisms(tls_active),
        starttls: starttls_offered,
        compress: true,
        server_name: settings.server_name.clone(),
        implementation: settings.banner_implementation.clone(),
        version: settings.banner_version.clone(),
        role: match role {
            Role::Master => "(master)".into(),
            Role::Slave { master } => format!("mupdate://{master}"),
            // Between masters: no address to name yet.
            Role::Elected => "(electing)".into(),
        },
    }
    .encode(&mut banner);
    banner
}

/// Counts a connection among those not yet logged in until it logs in or ends.
pub(crate) struct LoginSlot(Arc<ServerContext>);

impl Drop for LoginSlot {
    fn drop(&mut self) {
        self.0.unauthenticated.fetch_sub(1, Ordering::Relaxed);
    }
}

struct ConnectionSlot(Arc<ServerContext>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.connections_open.dec();
    }
}

/// Takes one connection over any stream: counts it at once against the connection and
/// login limits, and returns what serves it: Cyrus's refusal beyond a limit, else a
/// session until it ends.
pub(crate) fn admit<IO: ClientStream>(
    ctx: &Arc<ServerContext>,
    stream: IO,
    peer: Option<std::net::SocketAddr>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut conn = Connection::new(stream, ctx.settings.write_timeout);
    let open = ctx.open_connections.fetch_add(1, Ordering::Relaxed);
    ctx.metrics.connections_open.inc();
    let slot = ConnectionSlot(ctx.clone());
    let admitted = if open >= ctx.settings.connections_max {
        ctx.metrics.connections_refused.inc();
        tracing::warn!(
            peer = peer.map(tracing::field::display),
            open,
            "connection limit reached; refusing"
        );
        Err((SERVER_UNABLE.to_vec(), None))
    } else {
        let waiting = ctx.unauthenticated.fetch_add(1, Ordering::Relaxed);
        let login_slot = LoginSlot(ctx.clone());
        if waiting >= ctx.settings.unauthenticated_max {
            ctx.metrics.connections_refused.inc();
            tracing::warn!(
                peer = peer.map(tracing::field::display),
                waiting,
                "too many connections awaiting login; refusing"
            );
            let mut bye = Vec::new();
            response::bye(&mut bye, "too many connections awaiting login");
            Err((bye, Some(login_slot)))
        } else {
            ctx.metrics.connections_accepted.inc();
            Ok(login_slot)
        }
    };
    let ctx = ctx.clone();
    async move {
        let _slot = slot;
        match admitted {
            Ok(login_slot) => {
                tracing::debug!(peer = peer.map(tracing::field::display), "connection");
                Session::new(ctx, conn, peer, login_slot).run().await;
            }
            Err((refusal, _login_slot)) => {
                let _ = conn.send_raw(&refusal).await;
                conn.shutdown().await;
            }
        }
    }
}

/// How long sessions get to finish after shutdown starts.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Accepts and serves connections until `ctx.shutdown` is cancelled, then waits (up to a
/// deadline) for the sessions to finish their current commands and say goodbye.
pub async fn run(listener: TcpListener, ctx: Arc<ServerContext>) {
    let sessions = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // Out of descriptors and similar: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        sessions.spawn(admit(&ctx, stream, Some(peer)));
    }
    drop(listener);
    sessions.close();
    if tokio::time::timeout(DRAIN_DEADLINE, sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!("sessions still busy after the drain deadline; exiting anyway");
    }
}
