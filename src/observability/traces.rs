//! OpenTelemetry traces. With an OTLP endpoint in the environment
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), spans go to it
//! over http/protobuf through the SDK's batch processor (its own thread, the blocking HTTP
//! client); without one, no exporter runs and the spans below are never even created.
//! The SDK reads the standard variables itself: `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)`, `OTEL_BSP_*`,
//! `OTEL_EXPORTER_OTLP_*`. `OTEL_SDK_DISABLED=true` turns tracing off.

use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing::field::Empty;

/// Target of the spans exported as traces; the log filter (`RUST_LOG`) leaves them out by
/// default since they are at DEBUG level.
pub const SPAN_TARGET: &str = "mupdate::trace";

/// Why no exporter could be built.
#[derive(Debug, thiserror::Error)]
#[error("OTLP trace exporter: {0}")]
pub struct ExporterError(#[from] opentelemetry_otlp::ExporterBuildError);

/// Whether the environment asks for trace export.
pub fn export_requested() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled =
        std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// The tracer provider exporting to the configured endpoint, or `None` when none is set.
pub fn provider() -> Result<Option<SdkTracerProvider>, ExporterError> {
    if !export_requested() {
        return Ok(None);
    }
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()?;
    Ok(Some(
        SdkTracerProvider::builder()
            .with_resource(resource())
            .with_batch_exporter(exporter)
            .build(),
    ))
}

/// The process's resource: the environment's attributes, with `service.name` defaulting to
/// `mupdate` (setting it in code would override `OTEL_SERVICE_NAME`, so only when unset).
fn resource() -> Resource {
    let named_by_env = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    let mut builder = Resource::builder();
    if !named_by_env {
        builder = builder.with_service_name("mupdate");
    }
    builder
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

/// The server span of one MUPDATE command (RPC semantic conventions). `mailbox` is recorded
/// only for shared mailboxes: a personal mailbox's name carries the user's name.
pub fn command_span(
    method: &'static str,
    mailbox: Option<&[u8]>,
    peer: Option<std::net::SocketAddr>,
) -> Span {
    let span = tracing::debug_span!(
        target: SPAN_TARGET,
        "command",
        otel.name = span_name(method),
        otel.kind = "server",
        otel.status_code = Empty,
        otel.status_description = Empty,
        rpc.system = "mupdate",
        rpc.system.name = "mupdate",
        rpc.method = method,
        rpc.response.status_code = Empty,
        error.type = Empty,
        client.address = peer.map(|p| p.ip().to_string()),
        client.port = peer.map(|p| p.port()),
        mupdate.mailbox = Empty,
        mupdate.mailbox.kind = Empty,
    );
    if let Some(name) = mailbox.filter(|_| !span.is_disabled()) {
        if is_personal(name) {
            span.record("mupdate.mailbox.kind", "personal");
        } else {
            span.record("mupdate.mailbox.kind", "shared");
            span.record("mupdate.mailbox", String::from_utf8_lossy(name).as_ref());
        }
    }
    span
}

/// Records a command's outcome (`OK`, `NO`, `BAD`) on its span; `NO` and `BAD` are errors.
pub fn record_result(span: &Span, status: &str) {
    if span.is_disabled() {
        return;
    }
    span.record("rpc.response.status_code", status);
    if status == "OK" {
        span.record("otel.status_code", "OK");
    } else {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", status);
        span.record("otel.status_description", format!("answered {status}"));
    }
}

/// `mupdate/<METHOD>`, as static text (the span name is read once per span).
fn span_name(method: &'static str) -> &'static str {
    match method {
        "AUTHENTICATE" => "mupdate/AUTHENTICATE",
        "ACTIVATE" => "mupdate/ACTIVATE",
        "RESERVE" => "mupdate/RESERVE",
        "DEACTIVATE" => "mupdate/DEACTIVATE",
        "DELETE" => "mupdate/DELETE",
        "FIND" => "mupdate/FIND",
        "LIST" => "mupdate/LIST",
        "UPDATE" => "mupdate/UPDATE",
        "XUPDATE" => "mupdate/XUPDATE",
        "NOOP" => "mupdate/NOOP",
        "LOGOUT" => "mupdate/LOGOUT",
        "STARTTLS" => "mupdate/STARTTLS",
        "COMPRESS" => "mupdate/COMPRESS",
        _ => "mupdate/_OTHER",
    }
}

/// A user's own mailbox (`user.x…` or `domain!user.x…`), whose name identifies a person.
pub fn is_personal(name: &[u8]) -> bool {
    let local = match name.iter().position(|&b| b == b'!') {
        Some(at) => &name[at + 1..],
        None => name,
    };
    local == b"user" || local.starts_with(b"user.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn personal_mailboxes() {
        assert!(is_personal(b"user.bob"));
        assert!(is_personal(b"user.bob.Sent"));
        assert!(is_personal(b"example.com!user.bob"));
        assert!(!is_personal(b"shared.news"));
        assert!(!is_personal(b"users.list"));
        assert!(!is_personal(b"example.com!shared"));
    }

    #[test]
    fn every_command_has_a_span_name() {
        for method in [
            "AUTHENTICATE",
            "ACTIVATE",
            "RESERVE",
            "DEACTIVATE",
            "DELETE",
            "FIND",
            "LIST",
            "UPDATE",
            "XUPDATE",
            "NOOP",
            "LOGOUT",
            "STARTTLS",
            "COMPRESS",
        ] {
            assert_eq!(span_name(method), format!("mupdate/{method}"));
        }
    }
}
