//! Scenarios of a murder's load on any MUPDATE server: slave-like listeners streaming,
//! writers with a mix of RESERVE/ACTIVATE/DEACTIVATE/DELETE, readers doing FIND/LIST, and
//! the events that hurt (a burst, a new slave's initial sync, a master restart with every
//! slave reconnecting, listeners that stop reading). Each run measures throughput, latency
//! (HDR histograms), propagation writer → every listener, catch-up, and the server's CPU
//! and memory, and checks that every listener ends with the server's view of every mailbox.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::conn::{Conn, Target};
use crate::ledger::{Ledger, WriteKind};
use crate::listener::{Listener, ListenerOptions, ListenerState, histogram, slow_listener};
use crate::procstat::{self, PeakRss};

/// The scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Writers at a steady rate with the mix, readers alongside, listeners following.
    Steady,
    /// Writers as fast as they can, listeners following; then a FIND-only read phase.
    Burst,
    /// A list of `mailboxes` is loaded, then new slaves take it whole, one after another.
    InitialSync,
    /// Listeners following; the master restarts (`restart` hook) and every one reconnects
    /// at once and resumes; more writes follow.
    Restart,
    /// A burst while `slow_listeners` listeners ask for the stream and never read.
    SlowListeners,
}

impl Scenario {
    /// The scenario's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::Burst => "burst",
            Scenario::InitialSync => "initial-sync",
            Scenario::Restart => "restart",
            Scenario::SlowListeners => "slow-listeners",
        }
    }
}

/// Relative weights of the four writes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mix {
    /// RESERVE of a new mailbox.
    pub reserve: u32,
    /// ACTIVATE of a reserved mailbox, or of a new one.
    pub activate: u32,
    /// DEACTIVATE of an active mailbox.
    pub deactivate: u32,
    /// DELETE of an existing mailbox.
    pub delete: u32,
}

impl Mix {
    /// ACTIVATEs of new mailboxes only.
    pub const CREATE: Mix = Mix {
        reserve: 0,
        activate: 1,
        deactivate: 0,
        delete: 0,
    };

    /// Parses `reserve=1,activate=4,deactivate=1,delete=1` (absent kinds weigh 0).
    pub fn parse(text: &str) -> Result<Mix> {
        let mut mix = Mix {
            reserve: 0,
            activate: 0,
            deactivate: 0,
            delete: 0,
        };
        for part in text.split(',').filter(|p| !p.trim().is_empty()) {
            let Some((kind, weight)) = part.split_once('=') else {
                bail!("mix entry {part:?} is not kind=weight");
            };
            let weight: u32 = weight.trim().parse()?;
            match kind.trim().to_ascii_lowercase().as_str() {
                "reserve" => mix.reserve = weight,
                "activate" => mix.activate = weight,
                "deactivate" => mix.deactivate = weight,
                "delete" => mix.delete = weight,
                other => bail!("unknown write {other:?} in the mix"),
            }
        }
        if mix.reserve + mix.activate + mix.deactivate + mix.delete == 0 {
            bail!("the mix weighs nothing");
        }
        Ok(mix)
    }

    fn pick(&self, rng: &mut impl Rng) -> WriteKind {
        let total = self.reserve + self.activate + self.deactivate + self.delete;
        let mut roll = rng.random_range(0..total);
        for (kind, weight) in WriteKind::ALL.into_iter().zip([
            self.reserve,
            self.activate,
            self.deactivate,
            self.delete,
        ]) {
            if roll < weight {
                return kind;
            }
            roll -= weight;
        }
        WriteKind::Activate
    }
}

/// Restarts the server and returns once it was told to (it may still be starting), with
/// the new process's pid if known.
pub type RestartHook =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = Result<Option<u32>>> + Send>> + Send + Sync>;

/// A scenario's parameters.
pub struct Plan {
    /// Which scenario.
    pub scenario: Scenario,
    /// Slave-like UPDATE streams.
    pub listeners: usize,
    /// Listeners that never read (slow-listeners).
    pub slow_listeners: usize,
    /// Writer connections.
    pub writers: usize,
    /// Writes in the (first) write phase.
    pub writes: usize,
    /// Writes after the restart (restart).
    pub writes_after: usize,
    /// The writes' mix.
    pub mix: Mix,
    /// Writes per second over all writers; `None`: as fast as answers come.
    pub rate: Option<f64>,
    /// Reader connections.
    pub readers: usize,
    /// Reads after the writes (FIND-only phase); with `steady`, readers run during writes.
    pub reads: usize,
    /// Percentage of reads that are `LIST "lt"` instead of FIND.
    pub list_percent: f64,
    /// Mailboxes loaded before the scenario (initial-sync).
    pub mailboxes: usize,
    /// New slaves' initial syncs taken (initial-sync).
    pub syncs: usize,
    /// Mailbox names start with this.
    pub prefix: String,
    /// The server's pid, for CPU and memory.
    pub pid: Option<u32>,
    /// Progress on stderr every second.
    pub progress: bool,
    /// How long listeners may take to receive everything.
    pub drain_timeout: Duration,
    /// Longest random wait of a listener before it reconnects.
    pub reconnect_jitter: Duration,
}

impl Plan {
    /// The scenario's defaults (the figures of the targets).
    pub fn preset(scenario: Scenario) -> Plan {
        let base = Plan {
            scenario,
            listeners: 100,
            slow_listeners: 0,
            writers: 8,
            writes: 20_000,
            writes_after: 0,
            mix: Mix::CREATE,
            rate: None,
            readers: 0,
            reads: 0,
            list_percent: 0.0,
            mailboxes: 0,
            syncs: 0,
            prefix: "user.lt".into(),
            pid: None,
            progress: true,
            drain_timeout: Duration::from_secs(120),
            reconnect_jitter: Duration::from_millis(500),
        };
        match scenario {
            Scenario::Steady => Plan {
                writers: 4,
                writes: 10_000,
                rate: Some(1_000.0),
                mix: Mix {
                    reserve: 1,
                    activate: 4,
                    deactivate: 1,
                    delete: 1,
                },
                readers: 4,
                list_percent: 0.1,
                ..base
            },
            Scenario::Burst => Plan {
                readers: 8,
                reads: 200_000,
                ..base
            },
            Scenario::InitialSync => Plan {
                listeners: 0,
                writes: 0,
                mailboxes: 100_000,
                syncs: 3,
                ..base
            },
            Scenario::Restart => Plan {
                listeners: 1_000,
                writes: 2_000,
                writes_after: 2_000,
                ..base
            },
            Scenario::SlowListeners => Plan {
                slow_listeners: 100,
                ..base
            },
        }
    }
}

/// A scenario's outcome: the JSON result, its latency histograms, and whether every
/// listener ended with the server's view.
pub struct Outcome {
    /// Everything measured.
    pub result: Value,
    /// Latency distributions (µs) by label, for plots.
    pub histograms: Vec<(String, Histogram<u64>)>,
    /// Listeners whose view differs from the server's at the end (0: correct).
    pub incomplete_listeners: usize,
    /// Writes the server refused.
    pub failed_writes: u64,
}

fn quantiles(h: &Histogram<u64>) -> Value {
    let ms = |v: u64| (v as f64 / 1000.0 * 1000.0).round() / 1000.0;
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.5)),
        "p90_ms": ms(h.value_at_quantile(0.9)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}

/// Latency histograms of one kind of client, merged at the end.
#[derive(Default)]
struct Latencies {
    by_command: Mutex<Vec<(&'static str, Histogram<u64>)>>,
}

impl Latencies {
    fn merge(&self, command: &'static str, h: &Histogram<u64>) {
        if let Ok(mut all) = self.by_command.lock() {
            match all.iter_mut().find(|(c, _)| *c == command) {
                Some((_, mine)) => {
                    let _ = mine.add(h);
                }
                None => all.push((command, h.clone())),
            }
        }
    }

    fn take(&self) -> Vec<(&'static str, Histogram<u64>)> {
        self.by_command
            .lock()
            .map(|mut all| std::mem::take(&mut *all))
            .unwrap_or_default()
    }
}

/// Counters the progress line shows.
#[derive(Default)]
struct Progress {
    writes: AtomicU64,
    reads: AtomicU64,
    failed: AtomicU64,
}

/// The server's CPU seconds between two points.
struct CpuMark(Option<f64>);

impl CpuMark {
    fn now(pid: Option<u32>) -> CpuMark {
        CpuMark(pid.and_then(procstat::cpu_seconds))
    }

    fn since(&self, pid: Option<u32>) -> Option<f64> {
        Some(CpuMark::now(pid).0? - self.0?)
    }
}

fn per_op_micros(cpu: Option<f64>, ops: u64) -> Value {
    match cpu {
        Some(seconds) if ops > 0 => json!((seconds * 1e6 / ops as f64 * 100.0).round() / 100.0),
        _ => Value::Null,
    }
}

struct Run {
    target: Target,
    plan: Plan,
    ledger: Arc<Ledger>,
    progress: Arc<Progress>,
    write_latency: Arc<Latencies>,
    read_latency: Arc<Latencies>,
}

/// Runs `plan` against `target`; `restart` is required by the restart scenario.
pub async fn run(target: Target, plan: Plan, restart: Option<RestartHook>) -> Result<Outcome> {
    raise_file_limit();
    if plan.scenario == Scenario::Restart && restart.is_none() {
        bail!("the restart scenario needs a restart hook (--restart-command)");
    }
    let capacity = (plan.mailboxes + plan.writes + plan.writes_after).max(1);
    let ledger = Arc::new(Ledger::new(&plan.prefix, capacity));
    let run = Run {
        target,
        plan,
        ledger,
        progress: Arc::default(),
        write_latency: Arc::default(),
        read_latency: Arc::default(),
    };
    let stop = CancellationToken::new();
    let _stop_guard = stop.clone().drop_guard();
    if run.plan.progress {
        spawn_progress(&run, stop.clone());
    }
    let mut pid = run.plan.pid;
    let mut peak = pid.map(|pid| PeakRss::start(pid, stop.clone()));
    let mut result = json!({
        "scenario": run.plan.scenario.name(),
        "server": run.target.addr,
        "plan": run.plan.describe(),
    });
    let mut histograms = Vec::new();
    if run.plan.mailboxes > 0 {
        result["load"] = load(&run).await?;
    }
    let (listeners, slow, connected) = start_listeners(&run, pid, &stop).await?;
    if let Some(connected) = connected {
        result["listeners"] = connected;
    }
    if run.plan.writes > 0 {
        result["writes"] = writes(&run, &listeners, pid, &mut histograms).await?;
    }
    if let Some(hook) = &restart
        && run.plan.scenario == Scenario::Restart
    {
        let (phase, new_pid) = restart_and_resume(&run, hook, &listeners).await?;
        if let Some(new_pid) = new_pid {
            pid = Some(new_pid);
            peak = Some(PeakRss::start(new_pid, stop.clone()));
        }
        result["restart"] = phase;
    }
    if run.plan.syncs > 0 {
        result["initial_sync"] = initial_syncs(&run).await?;
    }
    if run.plan.reads > 0 && run.plan.scenario != Scenario::Steady {
        result["reads"] = reads(&run, pid, &mut histograms).await?;
    }

    let issued = run.ledger.issued();
    let incomplete = listeners
        .iter()
        .filter(|l| l.state.mismatches(&run.ledger, issued) > 0)
        .count();
    let failed_writes = run.progress.failed.load(Ordering::Relaxed);
    result["check"] = json!({
        "listeners": listeners.len(),
        "incomplete_listeners": incomplete,
        "failed_writes": failed_writes,
        "slow_listeners_still_connected": slow.iter().filter(|t| !t.is_finished()).count(),
    });
    if let Some(errors) = listener_errors(&listeners) {
        result["check"]["listener_errors"] = errors;
    }
    if let Some(pid) = pid {
        result["server"] = json!({
            "address": run.target.addr,
            "pid": pid,
            "rss_kib_end": procstat::rss_kib(pid),
            "rss_kib_peak": peak.as_ref().map(PeakRss::kib),
        });
    }
    stop.cancel();
    for listener in listeners {
        listener.join().await;
    }
    Ok(Outcome {
        result,
        histograms,
        incomplete_listeners: incomplete,
        failed_writes,
    })
}

impl Plan {
    /// The parameters, for the JSON result.
    fn describe(&self) -> Value {
        let mix = &self.mix;
        json!({
            "listeners": self.listeners,
            "slow_listeners": self.slow_listeners,
            "writers": self.writers,
            "writes": self.writes,
            "writes_after_restart": self.writes_after,
            "mix": format!(
                "reserve={},activate={},deactivate={},delete={}",
                mix.reserve, mix.activate, mix.deactivate, mix.delete
            ),
            "rate": self.rate,
            "readers": self.readers,
            "reads": self.reads,
            "mailboxes": self.mailboxes,
        })
    }

    fn listener_options(&self) -> ListenerOptions {
        ListenerOptions {
            reconnect_jitter: self.reconnect_jitter,
        }
    }
}

/// Loads the list of `mailboxes` (initial-sync): ACTIVATEs of new mailboxes over 8
/// connections.
async fn load(run: &Run) -> Result<Value> {
    let started = Instant::now();
    write_phase(run, run.plan.mailboxes, Mix::CREATE, None, 8).await?;
    run.write_latency.take();
    Ok(json!({
        "mailboxes": run.plan.mailboxes,
        "seconds": round3(started.elapsed().as_secs_f64()),
    }))
}

/// Starts the listeners, all streaming before any write, and the slow ones; reports the
/// server's memory before and with them.
async fn start_listeners(
    run: &Run,
    pid: Option<u32>,
    stop: &CancellationToken,
) -> Result<(Vec<Listener>, Vec<JoinHandle<Result<()>>>, Option<Value>)> {
    let rss_before = pid.and_then(procstat::rss_kib);
    let started = Instant::now();
    let listeners: Vec<Listener> = (0..run.plan.listeners)
        .map(|_| {
            Listener::start(
                run.target.clone(),
                run.ledger.clone(),
                run.plan.listener_options(),
                stop.clone(),
            )
        })
        .collect();
    wait_streaming(&listeners, None, Duration::from_secs(300)).await?;
    let slow: Vec<_> = (0..run.plan.slow_listeners)
        .map(|_| tokio::spawn(slow_listener(run.target.clone(), stop.clone())))
        .collect();
    if listeners.is_empty() && slow.is_empty() {
        return Ok((listeners, slow, None));
    }
    // Let the server settle what the new connections cost it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_with = pid.and_then(procstat::rss_kib);
    let per_listener = match (rss_before, rss_with) {
        (Some(before), Some(with)) => json!(round3(
            with.saturating_sub(before) as f64 / (listeners.len() + slow.len()) as f64
        )),
        _ => Value::Null,
    };
    let report = json!({
        "connected": listeners.len(),
        "slow": slow.len(),
        "connect_seconds": round3(started.elapsed().as_secs_f64()),
        "rss_kib_before": rss_before,
        "rss_kib_with": rss_with,
        "kib_per_listener": per_listener,
    });
    Ok((listeners, slow, Some(report)))
}

/// The write phase (readers alongside in steady), then the wait for every listener.
async fn writes(
    run: &Run,
    listeners: &[Listener],
    pid: Option<u32>,
    histograms: &mut Vec<(String, Histogram<u64>)>,
) -> Result<Value> {
    let concurrent_reads = run.plan.scenario == Scenario::Steady && run.plan.readers > 0;
    let reading = CancellationToken::new();
    let readers =
        concurrent_reads.then(|| spawn_readers(run, run.plan.readers, None, reading.clone()));
    let cpu = CpuMark::now(pid);
    let started = Instant::now();
    let plan = &run.plan;
    let last_ok = write_phase(run, plan.writes, plan.mix, plan.rate, plan.writers).await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu.since(pid);
    reading.cancel();
    let reads = match readers {
        Some(task) => task.await??,
        None => 0,
    };
    let mut phase = throughput(("writes", "write"), plan.writes as u64, seconds, cpu);
    add_latencies(&mut phase, &run.write_latency, "writer", histograms);
    if concurrent_reads {
        phase["reads_alongside"] = json!(reads);
        add_latencies(&mut phase, &run.read_latency, "reader", histograms);
    }
    let drained = drain(run, listeners, last_ok).await;
    phase["propagation"] = propagation(listeners, histograms);
    phase["catchup"] = drained;
    Ok(phase)
}

/// Restarts the server through `hook`, waits until every listener has reconnected and
/// resumed, then writes again; returns the report and the new pid, if the hook said.
async fn restart_and_resume(
    run: &Run,
    hook: &RestartHook,
    listeners: &[Listener],
) -> Result<(Value, Option<u32>)> {
    let streams_before: Vec<u32> = listeners
        .iter()
        .map(|l| l.state.streams.load(Ordering::Relaxed))
        .collect();
    let started = Instant::now();
    let new_pid = hook().await?;
    let hook_seconds = started.elapsed().as_secs_f64();
    wait_streaming(listeners, Some(&streams_before), Duration::from_secs(300)).await?;
    let resumed_seconds = started.elapsed().as_secs_f64();
    let sum = |counter: fn(&ListenerState) -> &AtomicU32| -> u32 {
        listeners
            .iter()
            .map(|l| counter(&l.state).load(Ordering::Relaxed))
            .sum()
    };
    let mut phase = json!({
        "hook_seconds": round3(hook_seconds),
        "all_resumed_seconds": round3(resumed_seconds),
        "delta_resumes": sum(|s| &s.delta_resumes),
        "full_resumes": sum(|s| &s.full_resumes),
    });
    let plan = &run.plan;
    if plan.writes_after > 0 {
        let limit = plan.writes + plan.writes_after;
        let started = Instant::now();
        let last_ok = write_phase(run, limit, plan.mix, plan.rate, plan.writers).await?;
        let seconds = started.elapsed().as_secs_f64();
        phase["writes_after"] =
            throughput(("writes", "write"), plan.writes_after as u64, seconds, None);
        add_latencies(
            &mut phase["writes_after"],
            &run.write_latency,
            "writer",
            &mut Vec::new(),
        );
        phase["catchup"] = drain(run, listeners, last_ok).await;
        phase["propagation"] = propagation(listeners, &mut Vec::new());
    }
    Ok((phase, new_pid))
}

/// New slaves' whole-list syncs, one after another; each must hold every mailbox.
async fn initial_syncs(run: &Run) -> Result<Value> {
    let mut times = Vec::new();
    let mut records = 0;
    let mut all_complete = true;
    for _ in 0..run.plan.syncs {
        let sync_stop = CancellationToken::new();
        let started = Instant::now();
        let slave = Listener::start(
            run.target.clone(),
            run.ledger.clone(),
            run.plan.listener_options(),
            sync_stop.clone(),
        );
        wait_streaming(std::slice::from_ref(&slave), None, Duration::from_secs(600)).await?;
        times.push(started.elapsed().as_secs_f64());
        records = slave.state.catchup_records.load(Ordering::Relaxed);
        all_complete &= slave.state.mismatches(&run.ledger, run.ledger.issued()) == 0;
        sync_stop.cancel();
        slave.join().await;
    }
    if !all_complete {
        bail!("a new slave's initial sync lacked mailboxes");
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(json!({
        "mailboxes": run.plan.mailboxes,
        "records": records,
        "seconds": times.iter().map(|t| round3(*t)).collect::<Vec<_>>(),
        "median_seconds": sorted.get(sorted.len() / 2).copied().map(round3),
        "complete": all_complete,
    }))
}

/// The FIND-only read phase.
async fn reads(
    run: &Run,
    pid: Option<u32>,
    histograms: &mut Vec<(String, Histogram<u64>)>,
) -> Result<Value> {
    let readers = run.plan.readers.max(1);
    let cpu = CpuMark::now(pid);
    let started = Instant::now();
    let done =
        spawn_readers(run, readers, Some(run.plan.reads), CancellationToken::new()).await??;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu.since(pid);
    let mut phase = throughput(("reads", "read"), done, seconds, cpu);
    phase["readers"] = json!(readers);
    add_latencies(&mut phase, &run.read_latency, "read phase", histograms);
    Ok(phase)
}

/// A phase's `<ops>`, seconds, `<ops>_per_s` and server CPU per `<op>`, with an empty
/// `latency` map.
fn throughput(
    (ops_name, op_name): (&str, &str),
    ops: u64,
    seconds: f64,
    cpu: Option<f64>,
) -> Value {
    let mut phase = json!({
        "seconds": round3(seconds),
        "server_cpu_seconds": cpu,
        "latency": {},
    });
    phase[ops_name] = json!(ops);
    phase[format!("{ops_name}_per_s")] = json!((ops as f64 / seconds).round());
    phase[format!("server_cpu_us_per_{op_name}")] = per_op_micros(cpu, ops);
    phase
}

/// Moves `latencies` into `phase["latency"]` and into the plotted `histograms`.
fn add_latencies(
    phase: &mut Value,
    latencies: &Latencies,
    who: &str,
    histograms: &mut Vec<(String, Histogram<u64>)>,
) {
    for (command, h) in latencies.take() {
        phase["latency"][command] = quantiles(&h);
        histograms.push((format!("{command} ({who})"), h));
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn listener_errors(listeners: &[Listener]) -> Option<Value> {
    let mut errors: Vec<String> = listeners
        .iter()
        .filter_map(|l| l.state.error.lock().ok().and_then(|e| e.clone()))
        .collect();
    errors.sort();
    errors.dedup();
    (!errors.is_empty()).then(|| json!(errors.into_iter().take(5).collect::<Vec<_>>()))
}

/// Raises our soft open-file limit to the hard one: thousands of listeners are as many fds.
fn raise_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn spawn_progress(run: &Run, stop: CancellationToken) {
    let (progress, ledger, name) = (
        run.progress.clone(),
        run.ledger.clone(),
        run.plan.scenario.name(),
    );
    tokio::spawn(async move {
        let started = Instant::now();
        let mut last = (0, 0);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let writes = progress.writes.load(Ordering::Relaxed);
            let reads = progress.reads.load(Ordering::Relaxed);
            eprintln!(
                "[{name} {:>5.1}s] writes {writes} (+{}/s, {} refused), reads {reads} (+{}/s), ops issued {}",
                started.elapsed().as_secs_f64(),
                writes - last.0,
                progress.failed.load(Ordering::Relaxed),
                reads - last.1,
                ledger.issued(),
            );
            last = (writes, reads);
        }
    });
}

/// Waits until every listener streams, having begun more streams than `before` says it
/// had (none: at least one).
async fn wait_streaming(
    listeners: &[Listener],
    before: Option<&[u32]>,
    patience: Duration,
) -> Result<()> {
    let deadline = Instant::now() + patience;
    loop {
        let behind = listeners
            .iter()
            .enumerate()
            .filter(|(i, l)| {
                let had = before.and_then(|b| b.get(*i).copied()).unwrap_or(0);
                l.state.streams.load(Ordering::Relaxed) <= had
                    || !l.state.streaming.load(Ordering::Acquire)
            })
            .count();
        if behind == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{behind} of {} listeners are not streaming: {:?}",
                listeners.len(),
                listener_errors(listeners)
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until every listener's view is the server's; reports when the last change
/// arrived, counted from the last writer's OK.
async fn drain(run: &Run, listeners: &[Listener], last_ok: Option<Instant>) -> Value {
    let deadline = Instant::now() + run.plan.drain_timeout;
    let issued = run.ledger.issued();
    let mut pending: Vec<&Listener> = listeners.iter().collect();
    let mut pause = Duration::from_millis(2);
    while !pending.is_empty() && Instant::now() < deadline {
        pending.retain(|l| l.state.mismatches(&run.ledger, issued) > 0);
        if !pending.is_empty() {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }
    let last_notice = listeners
        .iter()
        .map(|l| l.state.last_notice.load(Ordering::Relaxed))
        .max()
        .filter(|&t| t > 0)
        .map(|t| run.ledger.instant(t));
    // Our listeners often have the last change before its writer has the OK: then 0.
    let ms = match (last_ok, last_notice) {
        (Some(ok), Some(notice)) => Some(round3(
            notice.saturating_duration_since(ok).as_secs_f64() * 1000.0,
        )),
        _ => None,
    };
    json!({
        "complete": pending.is_empty(),
        "incomplete_listeners": pending.len(),
        "last_write_ok_to_last_listener_ms": ms,
    })
}

/// Merges the listeners' propagation histograms.
fn propagation(listeners: &[Listener], histograms: &mut Vec<(String, Histogram<u64>)>) -> Value {
    let mut since_ok = histogram();
    let mut since_send = histogram();
    // Per change, the last listener to get it is what a murder waits for: the p99 over
    // all (listener, change) pairs, and the worst.
    for l in listeners {
        if let Ok(h) = l.state.since_ok.lock() {
            let _ = since_ok.add(&*h);
        }
        if let Ok(h) = l.state.since_send.lock() {
            let _ = since_send.add(&*h);
        }
        if let Ok(mut h) = l.state.since_ok.lock() {
            h.reset();
        }
        if let Ok(mut h) = l.state.since_send.lock() {
            h.reset();
        }
    }
    let value = json!({
        "writer_ok_to_listener": quantiles(&since_ok),
        "writer_send_to_listener": quantiles(&since_send),
    });
    if !since_ok.is_empty() {
        histograms.push(("propagation from writer OK".into(), since_ok));
        histograms.push(("propagation from writer send".into(), since_send));
    }
    value
}

/// Writers claim operations until `limit` are issued; returns when the last OK came.
async fn write_phase(
    run: &Run,
    limit: usize,
    mix: Mix,
    rate: Option<f64>,
    writers: usize,
) -> Result<Option<Instant>> {
    let writers = writers.max(1);
    let last_ok = Arc::new(Mutex::new(None::<Instant>));
    let mut tasks = Vec::new();
    let started = Instant::now();
    for w in 0..writers {
        let (target, ledger, progress, latency, last_ok) = (
            run.target.clone(),
            run.ledger.clone(),
            run.progress.clone(),
            run.write_latency.clone(),
            last_ok.clone(),
        );
        // Each writer paces itself at its share of the rate, offset from the others.
        let interval = rate.map(|r| Duration::from_secs_f64(writers as f64 / r.max(0.001)));
        let offset = interval.map(|i| i.mul_f64(w as f64 / writers as f64));
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&target).await?;
            let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed + w as u64);
            let mut reserved: Vec<u32> = Vec::new();
            let mut active: Vec<u32> = Vec::new();
            let mut hists: Vec<(WriteKind, Histogram<u64>)> = Vec::new();
            let mut next_at = started + offset.unwrap_or_default();
            while let Some(op) = ledger.claim(limit) {
                if let Some(interval) = interval {
                    tokio::time::sleep_until(next_at.into()).await;
                    next_at += interval;
                }
                let (kind, base) = choose(&mix, &mut rng, op, &mut reserved, &mut active);
                let name = ledger.name(base);
                let tag = format!("W{op}");
                let request = match kind {
                    WriteKind::Reserve | WriteKind::Deactivate => format!(
                        "{tag} {} \"{name}\" \"{}\"\r\n",
                        kind.command(),
                        Ledger::location(op)
                    ),
                    WriteKind::Activate => format!(
                        "{tag} ACTIVATE \"{name}\" \"{}\" \"owner\tlrswipkxtecda\t\"\r\n",
                        Ledger::location(op)
                    ),
                    WriteKind::Delete => format!("{tag} DELETE \"{name}\"\r\n"),
                };
                ledger.sending(op, kind, base);
                let sent = Instant::now();
                let ok = conn.command(&tag, request.as_bytes()).await?;
                let micros = sent.elapsed().as_micros() as u64;
                if ok {
                    ledger.acknowledged(op, base);
                    match kind {
                        WriteKind::Reserve | WriteKind::Deactivate => reserved.push(base),
                        WriteKind::Activate => active.push(base),
                        WriteKind::Delete => {}
                    }
                    progress.writes.fetch_add(1, Ordering::Relaxed);
                } else {
                    progress.failed.fetch_add(1, Ordering::Relaxed);
                }
                match hists.iter_mut().find(|(k, _)| *k == kind) {
                    Some((_, h)) => {
                        let _ = h.record(micros.max(1));
                    }
                    None => {
                        let mut h = histogram();
                        let _ = h.record(micros.max(1));
                        hists.push((kind, h));
                    }
                }
            }
            for (kind, h) in &hists {
                latency.merge(kind.command(), h);
            }
            if let Ok(mut last) = last_ok.lock() {
                let now = Instant::now();
                *last = Some(last.map_or(now, |l| l.max(now)));
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let last = last_ok.lock().ok().and_then(|l| *l);
    Ok(last)
}

/// Picks the write and its mailbox: new mailboxes are named after `op`; a kind with no
/// mailbox in the state it needs becomes one that has.
fn choose(
    mix: &Mix,
    rng: &mut impl Rng,
    op: u32,
    reserved: &mut Vec<u32>,
    active: &mut Vec<u32>,
) -> (WriteKind, u32) {
    let take = |pool: &mut Vec<u32>, rng: &mut dyn rand::RngCore| -> Option<u32> {
        (!pool.is_empty()).then(|| {
            let i = rng.next_u32() as usize % pool.len();
            pool.swap_remove(i)
        })
    };
    match mix.pick(rng) {
        WriteKind::Reserve => (WriteKind::Reserve, op),
        WriteKind::Activate => (WriteKind::Activate, take(reserved, rng).unwrap_or(op)),
        WriteKind::Deactivate => match take(active, rng) {
            Some(base) => (WriteKind::Deactivate, base),
            None => (WriteKind::Activate, take(reserved, rng).unwrap_or(op)),
        },
        WriteKind::Delete => {
            let from_active = rng.random_bool(0.5);
            let pick = if from_active {
                take(active, rng).or_else(|| take(reserved, rng))
            } else {
                take(reserved, rng).or_else(|| take(active, rng))
            };
            match pick {
                Some(base) => (WriteKind::Delete, base),
                None => (WriteKind::Reserve, op),
            }
        }
    }
}

/// Readers: FIND of random mailboxes of the ledger (some may not exist, as in a murder),
/// and `LIST "lt"` for `list_percent` of reads; `count` reads in all, or until `stop`.
fn spawn_readers(
    run: &Run,
    readers: usize,
    count: Option<usize>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Result<u64>> {
    let claimed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for r in 0..readers {
        let (target, ledger, progress, latency, claimed, stop) = (
            run.target.clone(),
            run.ledger.clone(),
            run.progress.clone(),
            run.read_latency.clone(),
            claimed.clone(),
            stop.clone(),
        );
        let list_percent = run.plan.list_percent;
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&target).await?;
            let mut rng = rand::rngs::StdRng::seed_from_u64(0xfeed + r as u64);
            let mut find = histogram();
            let mut list = histogram();
            let mut done = 0u64;
            while !stop.is_cancelled() {
                if let Some(count) = count
                    && claimed.fetch_add(1, Ordering::Relaxed) >= count as u64
                {
                    break;
                }
                let issued = ledger.issued().max(1) as u32;
                let listing =
                    list_percent > 0.0 && rng.random_bool((list_percent / 100.0).min(1.0));
                let (request, hist) = if listing {
                    (
                        format!("R{done} LIST \"{}\"\r\n", crate::ledger::HOST),
                        &mut list,
                    )
                } else {
                    let name = ledger.name(rng.random_range(0..issued));
                    (format!("R{done} FIND \"{name}\"\r\n"), &mut find)
                };
                let sent = Instant::now();
                if !conn
                    .command(&format!("R{done}"), request.as_bytes())
                    .await?
                {
                    bail!("the server refused a read: {}", request.trim_end());
                }
                let _ = hist.record((sent.elapsed().as_micros() as u64).max(1));
                done += 1;
                progress.reads.fetch_add(1, Ordering::Relaxed);
            }
            latency.merge("FIND", &find);
            if !list.is_empty() {
                latency.merge("LIST", &list);
            }
            anyhow::Ok(done)
        }));
    }
    tokio::spawn(async move {
        let mut total = 0;
        for task in tasks {
            total += task.await??;
        }
        Ok(total)
    })
}

/// A one-paragraph summary of a result for people.
pub fn summary(result: &Value) -> String {
    let mut lines = vec![format!(
        "scenario {} against {}",
        result["scenario"].as_str().unwrap_or("?"),
        result["server"]["address"]
            .as_str()
            .or(result["server"].as_str())
            .unwrap_or("?")
    )];
    let sections = [
        ("load", "  loaded {mailboxes} mailboxes in {seconds} s"),
        (
            "listeners",
            "  listeners: {connected} streaming (+{slow} slow) in {connect_seconds} s; server RSS \
             {rss_kib_before} -> {rss_kib_with} KiB ({kib_per_listener} KiB each)",
        ),
        (
            "writes",
            "  writes: {writes} in {seconds} s = {writes_per_s}/s; server CPU \
             {server_cpu_us_per_write} us/write\n  propagation writer OK -> listener: p50 \
             {propagation.writer_ok_to_listener.p50_ms} ms, p99 \
             {propagation.writer_ok_to_listener.p99_ms} ms, max \
             {propagation.writer_ok_to_listener.max_ms} ms; last change to last listener \
             {catchup.last_write_ok_to_last_listener_ms} ms after the last OK; complete: \
             {catchup.complete}",
        ),
        (
            "restart",
            "  restart: all listeners streaming again {all_resumed_seconds} s after the restart \
             began; {delta_resumes} delta resumes, {full_resumes} full",
        ),
        (
            "initial_sync",
            "  initial sync of {mailboxes} mailboxes: {median_seconds} s (median of {seconds}); \
             complete: {complete}",
        ),
        (
            "reads",
            "  reads: {reads} over {readers} connections = {reads_per_s}/s; server CPU \
             {server_cpu_us_per_read} us/read; FIND p99 {latency.FIND.p99_ms} ms",
        ),
    ];
    for (section, template) in sections {
        if let Some(values) = result.get(section) {
            lines.push(fill(template, values));
        }
        if let Some(map) = result[section]["latency"].as_object() {
            for (command, _) in map {
                lines.push(fill(
                    &format!(
                        "    {command}: p50 {{latency.{command}.p50_ms}} ms, p99 \
                         {{latency.{command}.p99_ms}} ms, max {{latency.{command}.max_ms}} ms \
                         ({{latency.{command}.count}} ops)"
                    ),
                    &result[section],
                ));
            }
        }
    }
    lines.push(fill(
        "  check: {incomplete_listeners} of {listeners} listeners incomplete, {failed_writes} \
         writes refused",
        &result["check"],
    ));
    lines.join("\n")
}

/// `template` with every `{a.b}` replaced by the JSON value at that path in `values`.
fn fill(template: &str, values: &Value) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let path = &rest[open + 1..open + close];
        let value = path.split('.').fold(values, |v, key| &v[key]);
        out.push_str(&value.to_string());
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}
