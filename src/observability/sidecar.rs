//! The HTTP sidecar (`mupdate_http_listen`): `/livez` (the process serves), `/readyz`
//! (ready to serve clients: a master once listening, a slave once synchronised and linked to
//! its master; never while shutting down) and `/metrics` (Prometheus text format).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
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

/// Serves the sidecar until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    refresh: Arc<dyn Fn() + Send + Sync>,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            continue;
        };
        let (metrics, readiness, refresh) = (metrics.clone(), readiness.clone(), refresh.clone());
        let service = service_fn(move |request: Request<hyper::body::Incoming>| {
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
        });
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
