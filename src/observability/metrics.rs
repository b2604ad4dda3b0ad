//! Every metric the server exports, in one app-owned registry. Label values come only from
//! closed sets (command names, results, roles): never a mailbox, user or peer address.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// The server's metrics.
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Connections accepted.
    pub connections_accepted: IntCounter,
    /// Connections refused at `mupdate_connections_max`.
    pub connections_refused: IntCounter,
    /// Connections open now.
    pub connections_open: IntGauge,
    /// Commands by command and result (`ok`, `no`, `bad`).
    pub commands: IntCounterVec,
    /// Failed logins.
    pub auth_failures: IntCounter,
    /// UPDATE listeners streaming now.
    pub listeners: IntGauge,
    /// Store commits.
    pub commits: IntCounter,
    /// Writes committed.
    pub writes: IntCounter,
    /// Sequence number of the last committed change.
    pub last_seq: IntGauge,
    /// Command latency by command.
    pub command_seconds: HistogramVec,
    /// A slave's resynchronisations with its master, by kind (`full`, `delta`).
    pub resyncs: IntCounterVec,
    /// A slave's lost links to its master.
    pub reconnects: IntCounter,
    /// A slave's position in its master's history.
    pub applied_seq: IntGauge,
}

impl Default for Metrics {
    /// Metrics in a registry of their own (tests, tools).
    fn default() -> Metrics {
        // Registration only fails on duplicate names, which a fresh registry cannot have.
        Metrics::new()
            .unwrap_or_else(|error| panic!("metric definitions are inconsistent: {error}"))
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::with_opts(Opts::new(name, help))?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::with_opts(Opts::new(name, help))?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let commands = IntCounterVec::new(
            Opts::new(
                "mupdate_commands_total",
                "MUPDATE commands by command and result",
            ),
            &["command", "result"],
        )?;
        registry.register(Box::new(commands.clone()))?;
        let command_seconds = HistogramVec::new(
            HistogramOpts::new(
                "mupdate_command_duration_seconds",
                "Time from a command's last byte to its answer",
            )
            .buckets(vec![
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                0.1, 0.25, 1.0,
            ]),
            &["command"],
        )?;
        registry.register(Box::new(command_seconds.clone()))?;
        let resyncs = IntCounterVec::new(
            Opts::new(
                "mupdate_replication_resyncs_total",
                "Resynchronisations of a slave with its master, by kind",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(resyncs.clone()))?;
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Metrics {
            connections_accepted: counter(
                "mupdate_connections_accepted_total",
                "Client connections accepted",
            )?,
            connections_refused: counter(
                "mupdate_connections_refused_total",
                "Client connections refused at mupdate_connections_max",
            )?,
            connections_open: gauge("mupdate_connections_open", "Client connections open")?,
            auth_failures: counter(
                "mupdate_auth_failures_total",
                "Failed AUTHENTICATE commands",
            )?,
            listeners: gauge(
                "mupdate_update_listeners",
                "Connections streaming UPDATE changes",
            )?,
            commits: counter("mupdate_store_commits_total", "Durable store commits")?,
            writes: counter(
                "mupdate_store_writes_total",
                "Writes committed to the store",
            )?,
            last_seq: gauge(
                "mupdate_store_last_sequence",
                "Sequence number of the last committed change",
            )?,
            reconnects: counter(
                "mupdate_replication_reconnects_total",
                "Links of a slave to its master that were lost",
            )?,
            applied_seq: gauge(
                "mupdate_replication_applied_sequence",
                "The master's sequence number this slave has applied (resumable masters)",
            )?,
            commands,
            command_seconds,
            resyncs,
            registry,
        })
    }

    /// The result label of the last response line in `out` (`ok`, `no`, `bad`, `other`).
    pub fn result_of(out: &[u8]) -> &'static str {
        let body = out.strip_suffix(b"\r\n").unwrap_or(out);
        let line = match body.iter().rposition(|&b| b == b'\n') {
            Some(at) => &body[at + 1..],
            None => body,
        };
        let mut words = line.split(|&b| b == b' ').skip(1);
        match words.next() {
            Some(b"OK") => "ok",
            Some(b"NO") => "no",
            Some(b"BAD") => "bad",
            _ => "other",
        }
    }

    /// Brings a counter kept elsewhere (the store's) up to `total`.
    pub fn catch_up(counter: &IntCounter, total: u64) {
        counter.inc_by(total.saturating_sub(counter.get()));
    }

    /// Counts one command.
    pub fn command(&self, name: &str, result: &str) {
        self.commands.with_label_values(&[name, result]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(error) = encoder.encode_utf8(&self.registry.gather(), &mut out) {
            tracing::warn!(%error, "cannot render metrics");
        }
        out
    }
}
