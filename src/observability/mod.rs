//! Logging set-up (human-readable lines on stderr, filtered by `RUST_LOG`, default `info`),
//! the metrics registry and the HTTP sidecar.

pub mod metrics;
pub mod sidecar;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber (JSON lines when `json`); harmless if one is installed.
pub fn init_logging(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init()
    };
}
