//! OpenTelemetry traces. With an OTLP endpoint in the environment
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), spans go to it
//! over http/protobuf through the SDK's batch processor (its own thread, the blocking HTTP
//! client); without one, no exporter runs and the spans below are never even created.
//! The SDK reads the standard variables itself: `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_*`.
//! `OTEL_SDK_DISABLED=true` turns tracing off.
//!
//! Sampling is decided here, at the head, from `OTEL_TRACES_SAMPLER(_ARG)`: a command that
//! is not sampled gets no span at all. Left to the SDK, an unsampled command would still pay
//! for a whole tracing span (fields, registry, enter/exit on every poll): on a FIND that is
//! a third of its cost. Our spans have no remote parent, so the `parentbased_` samplers
//! behave as their root samplers. Without `OTEL_TRACES_SAMPLER`, one command in a hundred
//! is traced ([`DEFAULT_RATIO`]): a traced FIND costs about twice an untraced one, export
//! included. A command that fails (NO, BAD, or a line that is not a command) is traced
//! whenever any command is, sampled or not: its span is made after the answer, with the
//! command's start time, so successes pay nothing for it.

use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use tracing::Span;
use tracing::field::Empty;

/// Target of the spans exported as traces; the log filter (`RUST_LOG`) leaves them out by
/// default since they are at DEBUG level.
pub const SPAN_TARGET: &str = "mupdate::trace";

/// The share of commands traced when `OTEL_TRACES_SAMPLER` is not set.
pub const DEFAULT_RATIO: f64 = 0.01;

/// The tracer failed commands that were not sampled are recorded with.
static TRACER: std::sync::OnceLock<opentelemetry_sdk::trace::SdkTracer> =
    std::sync::OnceLock::new();

/// The share of commands traced, as `f64` bits; 0 (nothing) until an exporter runs.
static RATIO: AtomicU64 = AtomicU64::new(0);

/// The share of commands to trace for a sampler and its argument (the standard variables'
/// values); an unknown sampler or a bad argument is an error.
pub fn ratio_of(sampler: Option<&str>, argument: Option<&str>) -> Result<f64, String> {
    let argument = || -> Result<f64, String> {
        match argument.map(str::trim) {
            None | Some("") => Ok(1.0),
            Some(raw) => raw
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| format!("OTEL_TRACES_SAMPLER_ARG {raw:?} is not a ratio in [0, 1]")),
        }
    };
    match sampler.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") => Ok(DEFAULT_RATIO),
        Some("always_on" | "parentbased_always_on") => Ok(1.0),
        Some("always_off" | "parentbased_always_off") => Ok(0.0),
        Some("traceidratio" | "parentbased_traceidratio") => argument(),
        Some(other) => Err(format!(
            "OTEL_TRACES_SAMPLER {other:?} is not one of always_on, always_off, traceidratio, \
             parentbased_always_on, parentbased_always_off, parentbased_traceidratio"
        )),
    }
}

/// Sets the share of commands traced (the exporter's start-up does).
pub fn set_ratio(ratio: f64) {
    RATIO.store(ratio.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
}

/// The share of commands traced.
pub fn ratio() -> f64 {
    f64::from_bits(RATIO.load(Ordering::Relaxed))
}

/// Whether to trace the next command (or slave apply batch).
pub fn sampled() -> bool {
    let ratio = ratio();
    ratio >= 1.0 || (ratio > 0.0 && rand::random::<f64>() < ratio)
}

/// A span for work done under the current one (a store commit), or none when the work is
/// not part of a traced command: children are never sampled on their own.
pub fn child_only(make: impl FnOnce() -> Span) -> Span {
    if Span::current().is_none() {
        Span::none()
    } else {
        make()
    }
}

/// Why no exporter could be built.
#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    /// The exporter could not be built.
    #[error("OTLP trace exporter: {0}")]
    Build(#[from] opentelemetry_otlp::ExporterBuildError),
    /// The sampler variables are wrong.
    #[error("{0}")]
    Sampler(String),
}

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
    let env = |name| std::env::var(name).ok();
    let ratio = ratio_of(
        env("OTEL_TRACES_SAMPLER").as_deref(),
        env("OTEL_TRACES_SAMPLER_ARG").as_deref(),
    )
    .map_err(ExporterError::Sampler)?;
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_resource(resource())
        // What reaches the SDK was sampled already.
        .with_sampler(Sampler::AlwaysOn)
        .with_span_processor(
            BatchSpanProcessor::builder(exporter)
                .with_batch_config(batch_config())
                .build(),
        )
        .build();
    set_ratio(ratio);
    if ratio > 0.0 {
        let _ = TRACER.set(opentelemetry::trace::TracerProvider::tracer(
            &provider, "mupdate",
        ));
    }
    Ok(Some(provider))
}

/// The batch processor's settings: `OTEL_BSP_*` where set, else batches four times the
/// SDK's default (2,048 spans in a queue of 8,192), as each export request wakes two threads
/// and costs a round trip, which on a small machine compete with the commands themselves.
fn batch_config() -> opentelemetry_sdk::trace::BatchConfig {
    let mut config = BatchConfigBuilder::default();
    if std::env::var_os("OTEL_BSP_MAX_QUEUE_SIZE").is_none() {
        config = config.with_max_queue_size(8192);
    }
    if std::env::var_os("OTEL_BSP_MAX_EXPORT_BATCH_SIZE").is_none() {
        config = config.with_max_export_batch_size(2048);
    }
    config.build()
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

/// The tracing of one command: its span when sampled; when not, what a failure's span
/// made after the answer needs.
pub struct CommandTrace {
    method: &'static str,
    span: Span,
    peer: Option<std::net::SocketAddr>,
    unsampled: Option<(std::time::SystemTime, Option<Vec<u8>>)>,
}

impl CommandTrace {
    /// Starts tracing a command as it begins to execute.
    pub fn start(
        method: &'static str,
        mailbox: Option<&[u8]>,
        peer: Option<std::net::SocketAddr>,
    ) -> CommandTrace {
        let span = command_span(method, mailbox, peer);
        let unsampled = if span.is_none() {
            failure_clock().map(|at| (at, mailbox.map(<[u8]>::to_vec)))
        } else {
            None
        };
        CommandTrace {
            method,
            span,
            peer,
            unsampled,
        }
    }

    /// The span to run the command in (none when not sampled).
    pub fn span(&self) -> Span {
        self.span.clone()
    }

    /// Records the answer (`ok`, `no`, `bad`): on the span, or as a span of its own when a
    /// command that was not sampled failed.
    pub fn finish(self, result: &str) {
        record_result(&self.span, result);
        if let Some((started, mailbox)) = self.unsampled
            && matches!(result, "no" | "bad")
        {
            failed_command(self.method, mailbox.as_deref(), self.peer, started, result);
        }
    }

    /// Traces a line refused before any command was known (always a failure).
    pub fn refused_line(peer: Option<std::net::SocketAddr>) {
        if let Some(now) = failure_clock() {
            failed_command("_OTHER", None, peer, now, "bad");
        }
    }
}

/// The server span of one sampled MUPDATE command (RPC semantic conventions), or none.
/// `mailbox` is recorded only for shared mailboxes: a personal mailbox's name carries the
/// user's name.
fn command_span(
    method: &'static str,
    mailbox: Option<&[u8]>,
    peer: Option<std::net::SocketAddr>,
) -> Span {
    if !sampled() {
        return Span::none();
    }
    let personal = mailbox.map(is_personal);
    let shared_name = mailbox
        .filter(|name| !is_personal(name))
        .map(String::from_utf8_lossy);
    tracing::debug_span!(
        target: SPAN_TARGET,
        "command",
        otel.name = span_name(method),
        otel.kind = "server",
        otel.status_code = Empty,
        otel.status_description = Empty,
        rpc.system.name = "mupdate",
        rpc.method = method,
        rpc.response.status_code = Empty,
        error.type = Empty,
        client.address = peer.map(|p| p.ip().to_string()),
        mupdate.mailbox = shared_name.as_deref(),
        mupdate.mailbox.kind = personal.map(|p| if p { "personal" } else { "shared" }),
    )
}

/// Records a command's outcome (`ok`, `no`, `bad`, as the metrics label it) on its span
/// as the response's status word; `NO` and `BAD` are errors. A success leaves the span's
/// status unset, as the OpenTelemetry specification asks of instrumentation.
fn record_result(span: &Span, result: &str) {
    if span.is_disabled() {
        return;
    }
    let status = status_word(result);
    span.record("rpc.response.status_code", status);
    if status != "OK" {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", status);
        span.record("otel.status_description", format!("answered {status}"));
    }
}

/// The W3C `traceparent` of the current span, when it is a sampled one.
pub fn current_traceparent() -> Option<std::sync::Arc<str>> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let span = Span::current();
    if span.is_none() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    (span_context.is_valid() && span_context.is_sampled()).then(|| {
        format!(
            "00-{}-{}-01",
            span_context.trace_id(),
            span_context.span_id()
        )
        .into()
    })
}

/// The span context a W3C `traceparent` (version 00) names, if it is well formed.
pub fn parse_traceparent(traceparent: &str) -> Option<opentelemetry::trace::SpanContext> {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    let mut parts = traceparent.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() || trace.len() != 32 || span.len() != 16 {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let context = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

/// The span of a slave applying a batch of its master's changes: traced when any change
/// came from a traced command (linked to those), else as sampled.
pub fn apply_span(changes: usize, traced_writes: &[opentelemetry::trace::SpanContext]) -> Span {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if !(sampled() || (!traced_writes.is_empty() && ratio() > 0.0)) {
        return Span::none();
    }
    let span = tracing::debug_span!(
        target: SPAN_TARGET,
        "apply",
        otel.name = "mupdate.slave.apply",
        mupdate.apply.changes = changes,
    );
    for write in traced_writes {
        span.add_link(write.clone());
    }
    span
}

/// When a command started, if failures may need a span made for them later.
fn failure_clock() -> Option<std::time::SystemTime> {
    TRACER.get().map(|_| std::time::SystemTime::now())
}

/// Traces a failed command that was not sampled (`result`: `no`, `bad`), from `started`
/// (see [`failure_clock`]) to now, with the attributes a sampled one has.
fn failed_command(
    method: &'static str,
    mailbox: Option<&[u8]>,
    peer: Option<std::net::SocketAddr>,
    started: std::time::SystemTime,
    result: &str,
) {
    use opentelemetry::trace::{Span as _, SpanKind, Status, Tracer as _};
    let Some(tracer) = TRACER.get() else {
        return;
    };
    let status = status_word(result);
    let mut attributes = vec![
        KeyValue::new("rpc.system.name", "mupdate"),
        KeyValue::new("rpc.method", method),
        KeyValue::new("rpc.response.status_code", status),
        KeyValue::new("error.type", status),
        KeyValue::new("mupdate.trace.reason", "error"),
    ];
    if let Some(peer) = peer {
        attributes.push(KeyValue::new("client.address", peer.ip().to_string()));
    }
    if let Some(name) = mailbox {
        if is_personal(name) {
            attributes.push(KeyValue::new("mupdate.mailbox.kind", "personal"));
        } else {
            attributes.push(KeyValue::new("mupdate.mailbox.kind", "shared"));
            attributes.push(KeyValue::new(
                "mupdate.mailbox",
                String::from_utf8_lossy(name).into_owned(),
            ));
        }
    }
    let mut span = tracer
        .span_builder(span_name(method))
        .with_kind(SpanKind::Server)
        .with_start_time(started)
        .with_attributes(attributes)
        .start(tracer);
    span.set_status(Status::error(format!("answered {status}")));
    span.end();
}

/// The response's status word for a metrics result label.
fn status_word(result: &str) -> &'static str {
    match result {
        "ok" => "OK",
        "no" => "NO",
        "bad" => "BAD",
        _ => "OTHER",
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
        "XACK" => "mupdate/XACK",
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
    fn sampler_variables_give_the_share_of_commands_traced() {
        assert_eq!(ratio_of(None, None), Ok(DEFAULT_RATIO));
        assert_eq!(ratio_of(Some("always_on"), None), Ok(1.0));
        assert_eq!(ratio_of(Some("parentbased_always_on"), None), Ok(1.0));
        assert_eq!(ratio_of(Some("ALWAYS_OFF"), None), Ok(0.0));
        assert_eq!(ratio_of(Some("parentbased_always_off"), None), Ok(0.0));
        assert_eq!(ratio_of(Some("traceidratio"), Some("0.25")), Ok(0.25));
        assert_eq!(ratio_of(Some("parentbased_traceidratio"), None), Ok(1.0));
        assert!(ratio_of(Some("traceidratio"), Some("2")).is_err());
        assert!(ratio_of(Some("traceidratio"), Some("lots")).is_err());
        assert!(ratio_of(Some("jaeger_remote"), None).is_err());
    }

    #[test]
    fn traceparents_round_trip() {
        let text = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let context = parse_traceparent(text).expect("valid");
        assert_eq!(
            format!("00-{}-{}-01", context.trace_id(), context.span_id()),
            text
        );
        assert!(context.is_sampled() && context.is_remote());
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-xyz-b7ad6b7169203331-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }

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
        for method in crate::protocol::command::COMMAND_NAMES {
            assert_eq!(span_name(method), format!("mupdate/{method}"));
        }
    }
}
