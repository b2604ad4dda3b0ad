//! Every metric the server exports, in one app-owned registry. Label values come only from
//! closed sets (command names, results, roles): never a mailbox, user or peer address.

use crate::protocol::command::COMMAND_NAMES;
use crate::protocol::response::Status;
use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
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
    /// Changes published but not yet taken by the slowest listener.
    pub listener_queue_depth: IntGauge,
    /// Streaming connections by protocol (`update`: Cyrus slaves, `xupdate`: ours).
    pub slaves_connected: IntGaugeVec,
    /// Streaming replicas that acknowledge what they hold (XACK): candidates for
    /// `mupdate_sync_replicas`.
    pub sync_replicas: IntGauge,
    /// Under failover: 1 while this instance is the elected master.
    pub ha_leader: IntGauge,
    /// Under failover: the term of the master this instance knows of.
    pub ha_term: IntGauge,
    /// Under failover: changes of this instance's role (elected, demoted, new master).
    pub ha_role_changes: IntCounter,
    /// Under failover: the synchronous replicas a master has recorded in etcd.
    pub ha_sync_members: IntGauge,
    /// Under failover: writes a follower forwarded to the master, by outcome.
    pub forwarded_writes: IntCounterVec,
    /// Mailboxes by state (`active`, `reserved`).
    pub mailboxes: IntGaugeVec,
    /// Size of the database file.
    pub store_size: IntGauge,
    /// Store commits.
    pub commits: IntCounter,
    /// Writes committed.
    pub writes: IntCounter,
    /// Writes per commit (group commit).
    pub commit_batch: Histogram,
    /// Time of one durable commit.
    pub commit_seconds: Histogram,
    /// Sequence number of the last committed change.
    pub last_seq: IntGauge,
    /// Command latency by command.
    pub command_seconds: HistogramVec,
    /// Catch-ups sent to streaming clients, by kind (`full`: UPDATE's dump, or XUPDATE
    /// that could not resume; `delta`: XUPDATE resumed from the change log).
    pub dumps_sent: IntCounterVec,
    /// A slave's resynchronisations with its master, by kind (`full`, `delta`).
    pub resyncs: IntCounterVec,
    /// A slave's lost links to its master.
    pub reconnects: IntCounter,
    /// A slave's position in its master's history.
    pub applied_seq: IntGauge,
    /// Changes a slave has received but not yet applied.
    pub lag_sequences: IntGauge,
    /// Seconds since a slave last heard from its master with everything applied.
    pub lag_seconds: Gauge,
    /// 1 while a slave's link to its master is up.
    pub link_up: IntGauge,
    /// Records written to per-user telemetry logs.
    pub telemetry_writes: IntCounter,
    /// Telemetry log writes that failed.
    pub telemetry_errors: IntCounter,
    /// Records in the frontend's mailboxes.db after our last transaction.
    pub mailboxes_db_records: IntGauge,
    /// The store sequence number mailboxes.db holds everything up to.
    pub mailboxes_db_applied_seq: IntGauge,
    /// mailboxes.db records written, by kind (`set`, `delete`).
    pub mailboxes_db_writes: IntCounterVec,
    /// Time our mailboxes.db write lock was held, per transaction.
    pub mailboxes_db_hold_seconds: Histogram,
    /// Time spent waiting for the mailboxes.db write lock, per transaction.
    pub mailboxes_db_lock_wait_seconds: Histogram,
    /// Reconciliations of mailboxes.db with the store.
    pub mailboxes_db_reconciles: IntCounter,
    /// Records looked at by reconciliations, by outcome.
    pub mailboxes_db_reconciled: IntCounterVec,
    /// Records left alone because they are not mupdate's (local mailboxes).
    pub mailboxes_db_kept_local: IntCounter,
    /// Failed mailboxes.db transactions.
    pub mailboxes_db_errors: IntCounter,
    /// Repacks of mailboxes.db we did.
    pub mailboxes_db_repacks: IntCounter,
    /// Reconciliations written as a whole new file renamed in.
    pub mailboxes_db_rewrites: IntCounter,
    /// 1 while mailboxes.db is being kept current.
    pub mailboxes_db_up: IntGauge,
}

/// Command results, the `result` label values a command is counted with.
pub const COMMAND_RESULTS: [&str; 3] = ["ok", "no", "bad"];

/// The `command` label of a line that was no command at all.
pub const NOT_A_COMMAND: &str = "_OTHER";

/// Streaming protocols, the `protocol` label values (Cyrus slaves, ours).
pub const STREAM_PROTOCOLS: [&str; 2] = ["update", "xupdate"];

/// Outcomes of a forwarded write, the `outcome` label values: the master's OK or NO, or
/// no answer from it.
pub const FORWARD_OUTCOMES: [&str; 3] = ["ok", "no", "failed"];

/// Mailbox states, the `state` label values.
pub const MAILBOX_STATES: [&str; 2] = ["active", "reserved"];

/// Kinds of resynchronisation, the `kind` label values.
pub const RESYNC_KINDS: [&str; 2] = ["full", "delta"];

/// Outcomes of a reconciled mailboxes.db record, the `outcome` label values.
pub const RECONCILE_OUTCOMES: [&str; 4] = ["added", "changed", "deleted", "unchanged"];

impl Default for Metrics {
    /// Metrics of a master in a registry of their own (tests, tools).
    fn default() -> Metrics {
        // Registration only fails on duplicate names, which a fresh registry cannot have.
        Metrics::new("master")
            .unwrap_or_else(|error| panic!("metric definitions are inconsistent: {error}"))
    }
}

/// Registers metrics of one registry; every constructor returns what it registered.
struct Registrar<'r> {
    registry: &'r Registry,
    role: &'static str,
}

impl Registrar<'_> {
    fn add<M: prometheus::core::Collector + Clone + 'static>(
        &self,
        metric: Result<M, prometheus::Error>,
    ) -> Result<M, prometheus::Error> {
        let metric = metric?;
        self.registry.register(Box::new(metric.clone()))?;
        Ok(metric)
    }

    fn counter(&self, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
        self.add(IntCounter::with_opts(Opts::new(name, help)))
    }

    fn gauge(&self, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
        self.add(IntGauge::with_opts(Opts::new(name, help)))
    }

    /// Labelled with this instance's role (`master`, `slave`).
    fn role_counter(&self, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
        self.add(IntCounter::with_opts(
            Opts::new(name, help).const_label("role", self.role),
        ))
    }

    fn role_gauge(&self, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
        self.add(IntGauge::with_opts(
            Opts::new(name, help).const_label("role", self.role),
        ))
    }

    fn histogram(
        &self,
        name: &str,
        help: &str,
        buckets: Vec<f64>,
    ) -> Result<Histogram, prometheus::Error> {
        self.add(Histogram::with_opts(
            HistogramOpts::new(name, help).buckets(buckets),
        ))
    }
}

/// Latency buckets from 50 µs to 1 s.
fn latency_buckets() -> Vec<f64> {
    vec![
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        1.0,
    ]
}

impl Metrics {
    /// Creates and registers every metric, for an instance in `role` (`master`, `slave`).
    pub fn new(role: &'static str) -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let r = Registrar {
            registry: &registry,
            role,
        };
        r.add(
            IntGauge::with_opts(
                Opts::new("mupdate_build_info", "Always 1; the labels say what runs")
                    .const_label("version", env!("CARGO_PKG_VERSION"))
                    .const_label("role", role),
            )
            .inspect(|g| g.set(1)),
        )?;
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Metrics {
            connections_accepted: r.role_counter(
                "mupdate_connections_accepted_total",
                "Client connections accepted",
            )?,
            connections_refused: r.role_counter(
                "mupdate_connections_refused_total",
                "Client connections refused at mupdate_connections_max",
            )?,
            connections_open: r
                .role_gauge("mupdate_connections_open", "Client connections open")?,
            commands: r.add(IntCounterVec::new(
                Opts::new(
                    "mupdate_commands_total",
                    "MUPDATE commands by command and result",
                ),
                &["command", "result"],
            ))
            .inspect(|v| {
                for command in COMMAND_NAMES {
                    for result in COMMAND_RESULTS {
                        v.with_label_values(&[command, result]);
                    }
                }
                v.with_label_values(&[NOT_A_COMMAND, "bad"]);
            })?,
            command_seconds: r.add(HistogramVec::new(
                HistogramOpts::new(
                    "mupdate_command_duration_seconds",
                    "Time from a command's last byte to its answer",
                )
                .buckets(latency_buckets()),
                &["command"],
            ))
            .inspect(|v| {
                for command in COMMAND_NAMES {
                    v.with_label_values(&[command]);
                }
            })?,
            auth_failures: r.counter(
                "mupdate_auth_failures_total",
                "Failed AUTHENTICATE commands",
            )?,
            listeners: r.gauge(
                "mupdate_update_listeners",
                "Connections streaming UPDATE changes",
            )?,
            listener_queue_depth: r.gauge(
                "mupdate_update_listener_queue_depth",
                "Changes published but not yet taken by the slowest UPDATE listener",
            )?,
            slaves_connected: r.add(IntGaugeVec::new(
                Opts::new(
                    "mupdate_replication_slaves_connected",
                    "Streaming connections by protocol: update (Cyrus slaves), xupdate (ours)",
                ),
                &["protocol"],
            ))
            .inspect(|v| {
                for protocol in STREAM_PROTOCOLS {
                    v.with_label_values(&[protocol]);
                }
            })?,
            sync_replicas: r.gauge(
                "mupdate_replication_sync_replicas",
                "Streaming replicas that acknowledge what they hold durably (XACK)",
            )?,
            ha_leader: r.gauge(
                "mupdate_ha_leader",
                "1 while this instance is the master elected through etcd",
            )?,
            ha_term: r.gauge(
                "mupdate_ha_term",
                "Term of the elected master this instance knows of (0: none)",
            )?,
            ha_role_changes: r.counter(
                "mupdate_ha_role_changes_total",
                "Changes of this instance's elected role or of the master it follows",
            )?,
            ha_sync_members: r.gauge(
                "mupdate_ha_sync_members",
                "Synchronous replicas this master has recorded in etcd: the ones that may succeed it",
            )?,
            forwarded_writes: r.add(IntCounterVec::new(
                Opts::new(
                    "mupdate_ha_forwarded_writes_total",
                    "Writes a follower forwarded to the elected master, by outcome",
                ),
                &["outcome"],
            ))
            .inspect(|v| {
                for outcome in FORWARD_OUTCOMES {
                    v.with_label_values(&[outcome]);
                }
            })?,
            mailboxes: r.add(IntGaugeVec::new(
                Opts::new("mupdate_mailboxes", "Mailboxes by state"),
                &["state"],
            ))
            .inspect(|v| {
                for state in MAILBOX_STATES {
                    v.with_label_values(&[state]);
                }
            })?,
            store_size: r.gauge("mupdate_store_size_bytes", "Size of the redb database file")?,
            commits: r.counter("mupdate_store_commits_total", "Durable store commits")?,
            writes: r.counter(
                "mupdate_store_writes_total",
                "Writes committed to the store",
            )?,
            commit_batch: r.histogram(
                "mupdate_store_commit_batch_size",
                "Writes carried by one durable commit (group commit)",
                prometheus::exponential_buckets(1.0, 2.0, 13)?,
            )?,
            commit_seconds: r.histogram(
                "mupdate_store_commit_duration_seconds",
                "Time of one durable commit, fsync included",
                latency_buckets(),
            )?,
            last_seq: r.gauge(
                "mupdate_store_last_sequence",
                "Sequence number of the last committed change",
            )?,
            dumps_sent: r.add(IntCounterVec::new(
                Opts::new(
                    "mupdate_dumps_sent_total",
                    "Catch-ups sent to streaming clients, by kind: full (UPDATE, or XUPDATE that could not resume), delta",
                ),
                &["kind"],
            ))
            .inspect(|v| {
                for kind in RESYNC_KINDS {
                    v.with_label_values(&[kind]);
                }
            })?,
            resyncs: r.add(IntCounterVec::new(
                Opts::new(
                    "mupdate_replication_resyncs_total",
                    "Resynchronisations of a slave with its master, by kind",
                ),
                &["kind"],
            ))
            .inspect(|v| {
                for kind in RESYNC_KINDS {
                    v.with_label_values(&[kind]);
                }
            })?,
            reconnects: r.counter(
                "mupdate_replication_reconnects_total",
                "Links of a slave to its master that were lost",
            )?,
            applied_seq: r.gauge(
                "mupdate_replication_applied_sequence",
                "The master's sequence number this slave has applied (resumable masters)",
            )?,
            lag_sequences: r.gauge(
                "mupdate_replication_lag_sequences",
                "Changes this slave has received from its master but not yet applied",
            )?,
            lag_seconds: r.add(Gauge::with_opts(Opts::new(
                "mupdate_replication_lag_seconds",
                "Seconds since this slave last heard from its master with everything applied",
            )))?,
            link_up: r.gauge(
                "mupdate_replication_link_up",
                "1 while this slave's link to its master is up",
            )?,
            telemetry_writes: r.counter(
                "mupdate_telemetry_log_writes_total",
                "Records written to per-user telemetry logs",
            )?,
            telemetry_errors: r.counter(
                "mupdate_telemetry_log_errors_total",
                "Telemetry log opens and writes that failed",
            )?,
            mailboxes_db_records: r.gauge(
                "mupdate_mailboxes_db_records",
                "Records in Cyrus's mailboxes.db after our last transaction",
            )?,
            mailboxes_db_applied_seq: r.gauge(
                "mupdate_mailboxes_db_applied_sequence",
                "Store sequence number that mailboxes.db holds every change up to",
            )?,
            mailboxes_db_writes: r.add(
                IntCounterVec::new(
                    Opts::new(
                        "mupdate_mailboxes_db_writes_total",
                        "mailboxes.db records written, by kind",
                    ),
                    &["kind"],
                )
                .inspect(|v| {
                    for kind in ["set", "delete"] {
                        v.with_label_values(&[kind]);
                    }
                }),
            )?,
            mailboxes_db_hold_seconds: r.histogram(
                "mupdate_mailboxes_db_lock_held_seconds",
                "Time our mailboxes.db write lock was held, per transaction (Cyrus readers wait this long at most)",
                latency_buckets(),
            )?,
            mailboxes_db_lock_wait_seconds: r.histogram(
                "mupdate_mailboxes_db_lock_wait_seconds",
                "Time spent waiting for the mailboxes.db write lock, per transaction",
                latency_buckets(),
            )?,
            mailboxes_db_reconciles: r.counter(
                "mupdate_mailboxes_db_reconciles_total",
                "Reconciliations of mailboxes.db with the store (start-up, change-log gaps)",
            )?,
            mailboxes_db_reconciled: r.add(
                IntCounterVec::new(
                    Opts::new(
                        "mupdate_mailboxes_db_reconciled_records_total",
                        "Records looked at by reconciliations, by outcome",
                    ),
                    &["outcome"],
                )
                .inspect(|v| {
                    for outcome in RECONCILE_OUTCOMES {
                        v.with_label_values(&[outcome]);
                    }
                }),
            )?,
            mailboxes_db_kept_local: r.counter(
                "mupdate_mailboxes_db_kept_local_total",
                "mailboxes.db records left alone because they are local mailboxes, not mupdate's",
            )?,
            mailboxes_db_errors: r.counter(
                "mupdate_mailboxes_db_errors_total",
                "mailboxes.db transactions that failed (retried)",
            )?,
            mailboxes_db_repacks: r.counter(
                "mupdate_mailboxes_db_repacks_total",
                "Repacks of mailboxes.db done by this server",
            )?,
            mailboxes_db_rewrites: r.counter(
                "mupdate_mailboxes_db_rewrites_total",
                "Reconciliations of mailboxes.db written as a whole new file, built aside and renamed in",
            )?,
            mailboxes_db_up: r.gauge(
                "mupdate_mailboxes_db_up",
                "1 while mailboxes.db is kept current (0: off, not yet reconciled, or failing)",
            )?,
            registry,
        })
    }

    /// The result label of the last response line in `out` (`ok`, `no`, `bad`, `other`).
    pub fn result_of(out: &[u8]) -> &'static str {
        match Status::of_last_line(out) {
            Some(Status::Ok) => "ok",
            Some(Status::No) => "no",
            Some(Status::Bad) => "bad",
            None => "other",
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

/// Holds one unit of a gauge for as long as it lives (a connection, a stream).
#[derive(Debug)]
pub struct GaugeSlot(IntGauge);

impl GaugeSlot {
    /// Adds one to `gauge` until dropped.
    pub fn hold(gauge: IntGauge) -> GaugeSlot {
        gauge.inc();
        GaugeSlot(gauge)
    }
}

impl Drop for GaugeSlot {
    fn drop(&mut self) {
        self.0.dec();
    }
}
