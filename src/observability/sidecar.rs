//! The HTTP sidecar (`mupdate_http_listen`): `/livez` (the process serves), `/readyz`
//! (ready to serve clients: a master once listening, a slave once synchronised and linked to
//! its master; never while shutting down) and `/metrics` (Prometheus text format).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;

/// A named condition of readiness.
type Gate = (&'static str, Arc<dyn Fn() -> bool + Send + Sync>);

/// Whether the server is ready for clients.
#[derive(Clone, Default)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
    gates: Vec<Gate>,
}

impl Readiness {
    /// Marks the server ready (or not).
    pub fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Adds a condition, named for `/readyz`, that must also hold (a slave's link to its
    /// master, mailboxes.db kept current).
    pub fn also_require(
        &mut self,
        name: &'static str,
        condition: Arc<dyn Fn() -> bool + Send + Sync>,
    ) {
        self.gates.push((name, condition));
    }

    /// Ready now?
    pub fn is_ready(&self) -> bool {
        self.unmet().is_ok()
    }

    /// `Ok` when ready, else what is missing.
    fn unmet(&self) -> Result<(), Vec<&'static str>> {
        let mut missing = Vec::new();
        if !self.ready.load(Ordering::Acquire) {
            missing.push("serving");
        }
        missing.extend(
            self.gates
                .iter()
                .filter(|(_, gate)| !gate())
                .map(|(name, _)| *name),
        );
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing)
        }
    }
}

fn respond(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

/// What the sidecar may spend on its clients, so that no number of them can take the
/// descriptors and memory the MUPDATE listener needs.
#[derive(Debug, Clone, Copy)]
pub struct SidecarLimits {
    /// Connections held at once; a new one beyond this closes the oldest.
    pub connections_max: usize,
    /// Time a request's headers may take to arrive, counted from the connection's start
    /// or the previous response: also how long a kept-alive connection may sit idle.
    pub header_timeout: Duration,
    /// Longest any connection lives, however it spends its time (a client that reads
    /// its response slowly, say); a request under way is still answered.
    pub lifetime: Duration,
}

/// The connections being served, oldest first, each with what closes it.
#[derive(Default)]
struct Open {
    next_id: u64,
    connections: BTreeMap<u64, CancellationToken>,
}

impl Open {
    /// Registers a new connection; closes the oldest ones beyond `max`.
    fn admit(&mut self, max: usize) -> (u64, CancellationToken) {
        while self.connections.len() >= max.max(1) {
            match self.connections.pop_first() {
                Some((_, oldest)) => oldest.cancel(),
                None => break,
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let close = CancellationToken::new();
        self.connections.insert(id, close.clone());
        (id, close)
    }
}

/// How long a connection past its lifetime has to finish the request under way.
const GRACE: Duration = Duration::from_secs(1);

/// Pause after a failed accept (out of descriptors, say), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// Serves the sidecar until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    refresh: Arc<dyn Fn() + Send + Sync>,
    limits: SidecarLimits,
    shutdown: CancellationToken,
) {
    let open = Arc::new(Mutex::new(Open::default()));
    // A descriptor per connection is held until its task has dropped the socket: closing the
    // oldest is asynchronous, and without this an accept loop that outruns the closing tasks
    // would hold more than the cap.
    let slots = Arc::new(Semaphore::new(limits.connections_max.max(1)));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "sidecar: cannot accept a connection");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let (id, close) = open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(limits.connections_max);
        // Beyond the cap, the oldest was just told to close: wait until it has.
        let slot = tokio::select! {
            _ = shutdown.cancelled() => return,
            slot = slots.clone().acquire_owned() => slot,
        };
        let Ok(slot) = slot else { return };
        let service = service(metrics.clone(), readiness.clone(), refresh.clone());
        let open = open.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            {
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_timeout)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(connection);
                let expired = tokio::select! {
                    _ = connection.as_mut() => false,
                    _ = close.cancelled() => false,
                    _ = shutdown.cancelled() => false,
                    _ = tokio::time::sleep(limits.lifetime) => true,
                };
                if expired {
                    // A request under way is answered; then the connection closes.
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(GRACE, connection).await;
                }
            }
            // The socket is closed (dropped with the connection above): free the slot.
            drop(slot);
            open.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .connections
                .remove(&id);
        });
    }
}

/// Answers `/livez`, `/readyz` and `/metrics`.
fn service(
    metrics: Arc<Metrics>,
    readiness: Readiness,
    refresh: Arc<dyn Fn() + Send + Sync>,
) -> impl hyper::service::Service<
    Request<hyper::body::Incoming>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
> + Send {
    service_fn(move |request: Request<hyper::body::Incoming>| {
        let response = match request.uri().path() {
            "/livez" => respond(StatusCode::OK, "ok\n".into()),
            "/readyz" => match readiness.unmet() {
                Ok(()) => respond(StatusCode::OK, "ready\n".into()),
                Err(missing) => respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {}\n", missing.join(", ")),
                ),
            },
            "/metrics" => {
                refresh();
                let mut response = respond(StatusCode::OK, metrics.render());
                response.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                response
            }
            _ => respond(StatusCode::NOT_FOUND, "not found\n".into()),
        };
        async move { Ok::<_, Infallible>(response) }
    })
}
