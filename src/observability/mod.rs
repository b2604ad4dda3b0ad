//! Logging set-up (lines on stderr, text or JSON, filtered by `RUST_LOG`, default `info`),
//! OpenTelemetry traces, the metrics registry and the HTTP sidecar.

pub mod metrics;
pub mod sidecar;
pub mod traces;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Keeps the trace exporter alive; [`Telemetry::shutdown`] sends what is still buffered.
#[must_use = "dropping it without shutdown loses the last spans"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "trace exporter did not shut down cleanly");
        }
    }
}

/// Installs the global subscriber (JSON lines when `json`) and, when the environment names
/// an OTLP endpoint, the trace exporter. Harmless if a subscriber is already installed.
pub fn init(json: bool) -> Telemetry {
    let (provider, exporter_error) = match traces::provider() {
        Ok(provider) => (provider, None),
        Err(error) => (None, Some(error)),
    };
    let log_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let log_layer = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed()
    };
    // The trace layer sees our spans and, as span events, our events at INFO and above;
    // never the HTTP client's own (telemetry about telemetry).
    let trace_layer = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("mupdate"))
            // Each of these costs work on every poll of a traced future or per span, and
            // none answers an operator's question about a command.
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                meta.target().starts_with("mupdate")
                    && (meta.is_span() || *meta.level() <= tracing::Level::INFO)
            }))
    });
    let _ = tracing_subscriber::registry()
        .with(log_layer.with_filter(log_filter))
        .with(trace_layer)
        .try_init();
    if let Some(error) = exporter_error {
        tracing::warn!(%error, "traces are not exported");
    } else if provider.is_some() {
        let share = traces::ratio();
        tracing::info!(
            sampled_share = share,
            "exporting traces over OTLP/HTTP, {:.1}% of commands",
            share * 100.0
        );
    }
    Telemetry { provider }
}
