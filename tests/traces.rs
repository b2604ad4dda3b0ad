//! OpenTelemetry traces over OTLP/HTTP: a receiver built on the opentelemetry protobuf
//! types takes the spans a running server exports.

mod common;

use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, span, status};
use prost::Message;

/// An OTLP/HTTP receiver (hyper) on a free loopback port, keeping every export request.
struct Receiver {
    endpoint: String,
    requests: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    paths: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let (kept, seen) = (requests.clone(), paths.clone());
        // The task ends with the test's runtime.
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (kept, seen) = (kept.clone(), seen.clone());
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let (kept, seen) = (kept.clone(), seen.clone());
                    async move {
                        seen.lock()
                            .expect("paths")
                            .push(request.uri().path().to_owned());
                        let body = request.into_body().collect().await?.to_bytes();
                        let decoded = ExportTraceServiceRequest::decode(body)
                            .expect("an OTLP ExportTraceServiceRequest");
                        kept.lock().expect("requests").push(decoded);
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::new())))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        Receiver {
            endpoint,
            requests,
            paths,
        }
    }

    /// Every span received, with its resource's attributes.
    fn spans(&self) -> Vec<(Vec<KeyValue>, Span)> {
        let requests = self.requests.lock().expect("requests");
        let mut spans = Vec::new();
        for request in requests.iter() {
            for resource_spans in &request.resource_spans {
                let resource = resource_spans
                    .resource
                    .as_ref()
                    .map(|r| r.attributes.clone())
                    .unwrap_or_default();
                for scope in &resource_spans.scope_spans {
                    for span in &scope.spans {
                        spans.push((resource.clone(), span.clone()));
                    }
                }
            }
        }
        spans
    }
}

fn string_value(value: &Option<AnyValue>) -> Option<String> {
    match value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        _ => None,
    }
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| string_value(&kv.value))
}

fn span_named<'a>(spans: &'a [(Vec<KeyValue>, Span)], name: &str) -> Vec<&'a Span> {
    spans
        .iter()
        .map(|(_, span)| span)
        .filter(|span| span.name == name)
        .collect()
}

/// Runs a master exporting to `receiver` with `env`, drives a session (two ACTIVATEs, a
/// failing DELETE, a line that is no command, then `finds` FINDs) against it, then stops
/// it with SIGTERM, whose shutdown flushes every span still buffered.
async fn run_master(receiver: &Receiver, env: &[(&str, &str)], finds: usize) {
    let dir = tempfile::tempdir().unwrap();
    let conf = write_process_config(dir.path(), "");
    let mut all_env = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str())];
    all_env.extend_from_slice(env);
    let mut server = ServerProcess::start(&conf, &["-m"], &all_env);
    let mut client = logged_in(server.addr).await;
    client
        .done(b"A1 ACTIVATE \"user.alice\" \"be1!default\" \"alice\tlrswipkxtecda\t\"\r\n")
        .await;
    client
        .done(b"A2 ACTIVATE \"shared.news\" \"be1!default\" \"anyone\tlrs\t\"\r\n")
        .await;
    client
        .exchange(
            b"D1 DELETE \"shared.nothing\"\r\n",
            b"D1 NO \"mailbox doesn't exist\"\r\n",
        )
        .await;
    client
        .exchange(b"B1 XYZZY\r\n", b"B1 BAD \"Unrecognized command\"\r\n")
        .await;
    for _ in 0..finds {
        client.send(b"F1 FIND \"shared.news\"\r\n").await;
        let found = client.read_until(b"F1 OK \"Search completed\"\r\n").await;
        assert!(find(&found, b"F1 MAILBOX").is_some());
    }
    drop(client);
    let status = server.signal_and_wait(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activate_is_a_server_span_and_a_failed_command_an_error() {
    let receiver = Receiver::start().await;
    run_master(
        &receiver,
        &[
            ("OTEL_SERVICE_NAME", "mupdate-under-test"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=ci"),
            ("OTEL_TRACES_SAMPLER", "always_on"),
        ],
        1,
    )
    .await;
    let spans = receiver.spans();
    assert!(
        receiver
            .paths
            .lock()
            .unwrap()
            .iter()
            .all(|p| p == "/v1/traces"),
        "exports go to <endpoint>/v1/traces"
    );

    let activates = span_named(&spans, "mupdate/ACTIVATE");
    assert_eq!(activates.len(), 2, "one span per ACTIVATE: {spans:#?}");
    for activate in &activates {
        assert_eq!(activate.kind, span::SpanKind::Server as i32);
        assert_eq!(
            attribute(&activate.attributes, "rpc.system.name").as_deref(),
            Some("mupdate")
        );
        assert_eq!(
            attribute(&activate.attributes, "rpc.method").as_deref(),
            Some("ACTIVATE")
        );
        assert_eq!(
            attribute(&activate.attributes, "rpc.response.status_code").as_deref(),
            Some("OK")
        );
        assert_eq!(
            attribute(&activate.attributes, "client.address").as_deref(),
            Some("127.0.0.1")
        );
        // Success leaves the status unset (instrumentation does not set Ok).
        let status = activate.status.clone().unwrap_or_default();
        assert_eq!(status.code, status::StatusCode::Unset as i32);
        assert!(activate.end_time_unix_nano >= activate.start_time_unix_nano);
    }
    // A personal mailbox's name stays out of traces; a shared one is recorded.
    let mailboxes: Vec<_> = activates
        .iter()
        .map(|s| {
            (
                attribute(&s.attributes, "mupdate.mailbox.kind"),
                attribute(&s.attributes, "mupdate.mailbox"),
            )
        })
        .collect();
    assert!(
        mailboxes.contains(&(Some("personal".into()), None)),
        "{mailboxes:?}"
    );
    assert!(
        mailboxes.contains(&(Some("shared".into()), Some("shared.news".into()))),
        "{mailboxes:?}"
    );
    for (_, span) in &spans {
        for kv in &span.attributes {
            assert!(
                !string_value(&kv.value)
                    .unwrap_or_default()
                    .contains("alice"),
                "a user's name leaked into {}: {kv:?}",
                span.name
            );
        }
    }

    // A durable commit is a child of the write command that led it.
    let writes: Vec<&Span> = span_named(&spans, "mupdate/ACTIVATE")
        .into_iter()
        .chain(span_named(&spans, "mupdate/DELETE"))
        .collect();
    let commits = span_named(&spans, "store commit");
    for commit in &commits {
        let parent = writes
            .iter()
            .find(|w| w.span_id == commit.parent_span_id)
            .expect("a commit span's parent is a write command's span");
        assert_eq!(parent.trace_id, commit.trace_id);
        assert_eq!(
            attribute(&commit.attributes, "mupdate.commit.batch_size").as_deref(),
            Some("1")
        );
    }
    for activate in &activates {
        assert!(
            commits.iter().any(|c| c.parent_span_id == activate.span_id),
            "no commit under {activate:#?}"
        );
    }

    let deletes = span_named(&spans, "mupdate/DELETE");
    assert_eq!(deletes.len(), 1);
    let status = deletes[0].status.as_ref().expect("a status");
    assert_eq!(
        status.code,
        status::StatusCode::Error as i32,
        "{deletes:#?}"
    );
    assert_eq!(
        attribute(&deletes[0].attributes, "error.type").as_deref(),
        Some("NO")
    );
    assert_eq!(
        attribute(&deletes[0].attributes, "rpc.response.status_code").as_deref(),
        Some("NO")
    );
    assert_eq!(span_named(&spans, "mupdate/FIND").len(), 1);
    assert_eq!(span_named(&spans, "mupdate/AUTHENTICATE").len(), 1);

    // The resource comes from the standard variables.
    let (resource, _) = &spans[0];
    assert_eq!(
        attribute(resource, "service.name").as_deref(),
        Some("mupdate-under-test")
    );
    assert_eq!(
        attribute(resource, "deployment.environment.name").as_deref(),
        Some("ci")
    );
    assert_eq!(
        attribute(resource, "service.version").as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sampler_variables_are_honoured() {
    let receiver = Receiver::start().await;
    // always_off: nothing, not even failures.
    run_master(&receiver, &[("OTEL_TRACES_SAMPLER", "always_off")], 20).await;
    let spans = receiver.spans();
    assert!(spans.is_empty(), "always_off exported {spans:#?}");

    // Without OTEL_TRACES_SAMPLER one command in a hundred is traced: of 1,000 FINDs, 10
    // expected (the bounds are over 4 standard deviations away), no commit without its
    // command, and every failure, sampled or not.
    let receiver = Receiver::start().await;
    run_master(&receiver, &[], 1000).await;
    let spans = receiver.spans();
    let finds = span_named(&spans, "mupdate/FIND").len();
    assert!((1..=30).contains(&finds), "{finds} of 1,000 FINDs traced");
    let deletes = span_named(&spans, "mupdate/DELETE");
    assert_eq!(deletes.len(), 1, "the failed DELETE is traced: {spans:#?}");
    assert_eq!(
        deletes[0].status.clone().unwrap_or_default().code,
        status::StatusCode::Error as i32
    );
    assert_eq!(deletes[0].kind, span::SpanKind::Server as i32);
    assert_eq!(
        attribute(&deletes[0].attributes, "mupdate.mailbox").as_deref(),
        Some("shared.nothing")
    );
    assert!(deletes[0].end_time_unix_nano >= deletes[0].start_time_unix_nano);
    let others = span_named(&spans, "mupdate/_OTHER");
    assert_eq!(others.len(), 1, "the unknown command is traced: {spans:#?}");
    assert_eq!(
        attribute(&others[0].attributes, "error.type").as_deref(),
        Some("BAD")
    );
    let commands: Vec<&Span> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.name.starts_with("mupdate/"))
        .collect();
    for commit in span_named(&spans, "store commit") {
        assert!(commands.iter().any(|c| c.span_id == commit.parent_span_id));
    }
    // Without OTEL_SERVICE_NAME the service is called mupdate.
    assert_eq!(
        attribute(&spans[0].0, "service.name").as_deref(),
        Some("mupdate")
    );

    // traceidratio takes its argument: a quarter of 400 is 100 expected.
    let receiver = Receiver::start().await;
    run_master(
        &receiver,
        &[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ],
        400,
    )
    .await;
    let finds = span_named(&receiver.spans(), "mupdate/FIND").len();
    assert!((55..=150).contains(&finds), "{finds} of 400 FINDs traced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_traces_its_sync() {
    let receiver = Receiver::start().await;
    let master = TestServer::start("").await;
    let mut writer = logged_in(master.addr).await;
    writer
        .done(b"A1 ACTIVATE \"shared.a\" \"be1!default\" \"anyone\tlrs\t\"\r\n")
        .await;
    let dir = tempfile::tempdir().unwrap();
    let conf = follow_config(dir.path(), master.addr);
    let mut slave = ServerProcess::start(
        &conf,
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
            ("OTEL_TRACES_SAMPLER", "always_on"),
        ],
    );
    let mut reader = logged_in(slave.addr).await;
    writer
        .done(b"A2 ACTIVATE \"shared.b\" \"be1!default\" \"anyone\tlrs\t\"\r\n")
        .await;
    converge(&mut reader, &mut writer).await;
    drop(reader);
    let status = slave.signal_and_wait(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success());
    let spans = receiver.spans();
    let syncs = span_named(&spans, "mupdate.slave.sync");
    assert_eq!(syncs.len(), 1, "{spans:#?}");
    assert_eq!(syncs[0].kind, span::SpanKind::Client as i32);
    assert_eq!(
        attribute(&syncs[0].attributes, "mupdate.sync.kind").as_deref(),
        Some("full")
    );
    assert_eq!(
        attribute(&syncs[0].attributes, "mupdate.sync.records").as_deref(),
        Some("1")
    );
    assert!(
        !span_named(&spans, "mupdate.slave.apply").is_empty(),
        "the live change was applied under a span: {spans:#?}"
    );
    let _ = master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_links_its_apply_to_the_masters_traced_write() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut master = ServerProcess::start(
        &write_process_config(dir.path(), ""),
        &["-m"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
            ("OTEL_SERVICE_NAME", "master"),
            ("OTEL_TRACES_SAMPLER", "always_on"),
        ],
    );
    let slave_dir = tempfile::tempdir().unwrap();
    // The slave traces at the default share: the master's traced write decides for it.
    let mut slave = ServerProcess::start(
        &follow_config(slave_dir.path(), master.addr),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
            ("OTEL_SERVICE_NAME", "slave"),
        ],
    );
    let mut writer = logged_in(master.addr).await;
    let mut reader = logged_in(slave.addr).await;
    writer
        .done(b"A1 ACTIVATE \"shared.linked\" \"be1!default\" \"anyone\tlrs\t\"\r\n")
        .await;
    converge(&mut reader, &mut writer).await;
    drop((reader, writer));
    assert!(
        slave
            .signal_and_wait(nix::sys::signal::Signal::SIGTERM)
            .success()
    );
    assert!(
        master
            .signal_and_wait(nix::sys::signal::Signal::SIGTERM)
            .success()
    );
    let spans = receiver.spans();
    let from = |service: &str| -> Vec<&Span> {
        spans
            .iter()
            .filter(|(resource, _)| attribute(resource, "service.name").as_deref() == Some(service))
            .map(|(_, span)| span)
            .collect()
    };
    let activate = from("master")
        .into_iter()
        .find(|s| s.name == "mupdate/ACTIVATE")
        .expect("the master traced its ACTIVATE");
    let applies: Vec<&Span> = from("slave")
        .into_iter()
        .filter(|s| s.name == "mupdate.slave.apply")
        .collect();
    assert!(
        applies.iter().any(|apply| apply
            .links
            .iter()
            .any(|link| link.trace_id == activate.trace_id && link.span_id == activate.span_id)),
        "no apply linked to {activate:#?} in {applies:#?}"
    );
}

/// Names of a process's threads.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(Result::ok)
                .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
                .map(|name| name.trim().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_no_exporter_runs() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let conf = write_process_config(dir.path(), "");
    // The sampler alone asks for nothing to be exported.
    let mut quiet = ServerProcess::start(&conf, &["-m"], &[("OTEL_TRACES_SAMPLER", "always_on")]);
    let exporting_dir = tempfile::tempdir().unwrap();
    let mut exporting = ServerProcess::start(
        &write_process_config(exporting_dir.path(), ""),
        &["-m"],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str())],
    );
    let exporter_thread = |names: Vec<String>| names.iter().any(|n| n.starts_with("OpenTelemetry"));
    assert!(
        !exporter_thread(thread_names(quiet.child.id())),
        "{:?}",
        thread_names(quiet.child.id())
    );
    assert!(
        exporter_thread(thread_names(exporting.child.id())),
        "{:?}",
        thread_names(exporting.child.id())
    );
    let log = |server: &ServerProcess| server.stderr.lock().map(|l| l.clone()).unwrap_or_default();
    assert!(!log(&quiet).contains("exporting traces"), "{}", log(&quiet));
    assert!(
        log(&exporting).contains("exporting traces over OTLP/HTTP, 1.0% of commands"),
        "{}",
        log(&exporting)
    );
    assert!(
        quiet
            .signal_and_wait(nix::sys::signal::Signal::SIGTERM)
            .success()
    );
    assert!(
        exporting
            .signal_and_wait(nix::sys::signal::Signal::SIGTERM)
            .success()
    );
}
