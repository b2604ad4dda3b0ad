//! mupdate-load: drives any MUPDATE server (ours or Cyrus's) over TCP and prints one JSON
//! line per run: throughput and latency of ACTIVATE or FIND, the time of a full UPDATE dump,
//! or a process's resident memory.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use loadtest::conn::{Conn, Target};

mod lockprobe;
mod soak;

#[derive(Parser)]
struct Cli {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:3905")]
    addr: String,
    /// Admin user.
    #[arg(long, default_value = "mupdate")]
    user: String,
    /// Admin password.
    #[arg(long, default_value = "mupdatepass")]
    password: String,
    #[command(subcommand)]
    run: Run,
}

#[derive(clap::Args)]
struct ScenarioArgs {
    #[arg(value_enum)]
    scenario: loadtest::scenario::Scenario,
    /// Slave-like UPDATE streams.
    #[arg(long)]
    listeners: Option<usize>,
    /// Listeners that ask for the stream and never read.
    #[arg(long)]
    slow_listeners: Option<usize>,
    /// Writer connections.
    #[arg(long)]
    writers: Option<usize>,
    /// Writes in the (first) write phase.
    #[arg(long)]
    writes: Option<usize>,
    /// Writes after the restart.
    #[arg(long)]
    writes_after: Option<usize>,
    /// Weights, e.g. `reserve=1,activate=4,deactivate=1,delete=1`.
    #[arg(long)]
    mix: Option<String>,
    /// Writes per second over all writers (0: as fast as answered).
    #[arg(long)]
    rate: Option<f64>,
    /// Reader connections.
    #[arg(long)]
    readers: Option<usize>,
    /// FINDs after the writes.
    #[arg(long)]
    reads: Option<usize>,
    /// Percent of reads that are LIST.
    #[arg(long)]
    list_percent: Option<f64>,
    /// Mailboxes loaded first (initial-sync).
    #[arg(long)]
    mailboxes: Option<usize>,
    /// New slaves' initial syncs (initial-sync).
    #[arg(long)]
    syncs: Option<usize>,
    /// Mailbox name prefix.
    #[arg(long)]
    prefix: Option<String>,
    /// The server's pid, for its CPU time and memory.
    #[arg(long)]
    pid: Option<u32>,
    /// Run by `sh -c` to restart the server (restart scenario); the server must come back
    /// on the same address. It may print the new pid as its last line of output.
    #[arg(long)]
    restart_command: Option<String>,
    /// Longest random wait of a listener before reconnecting, ms.
    #[arg(long)]
    reconnect_jitter_ms: Option<u64>,
    /// How long listeners may take to receive everything, s.
    #[arg(long)]
    drain_timeout: Option<u64>,
    /// Writes the JSON result here instead of stdout.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Writes an SVG of the latency distributions here.
    #[arg(long)]
    svg: Option<std::path::PathBuf>,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

impl ScenarioArgs {
    fn plan(&self) -> Result<loadtest::scenario::Plan> {
        let mut plan = loadtest::scenario::Plan::preset(self.scenario);
        macro_rules! set {
            ($($field:ident),*) => { $(if let Some(v) = self.$field.clone() { plan.$field = v; })* };
        }
        set!(
            listeners,
            slow_listeners,
            writers,
            writes,
            writes_after,
            readers,
            reads,
            list_percent,
            mailboxes,
            syncs,
            prefix
        );
        if let Some(mix) = &self.mix {
            plan.mix = loadtest::scenario::Mix::parse(mix)?;
        }
        if let Some(rate) = self.rate {
            plan.rate = (rate > 0.0).then_some(rate);
        }
        if let Some(ms) = self.reconnect_jitter_ms {
            plan.reconnect_jitter = Duration::from_millis(ms);
        }
        if let Some(s) = self.drain_timeout {
            plan.drain_timeout = Duration::from_secs(s);
        }
        plan.pid = self.pid;
        plan.progress = !self.quiet;
        Ok(plan)
    }
}

/// Runs a scenario from the command line; exit status 1 when the check fails.
async fn scenario(cli: &Cli, args: &ScenarioArgs) -> Result<()> {
    let plan = args.plan()?;
    let hook = args.restart_command.clone().map(|command| {
        let hook: loadtest::scenario::RestartHook = Box::new(move || {
            let command = command.clone();
            Box::pin(async move {
                let output = tokio::process::Command::new("sh")
                    .arg("-c")
                    .arg(&command)
                    .stderr(std::process::Stdio::inherit())
                    .output()
                    .await?;
                if !output.status.success() {
                    bail!("restart command failed: {}", output.status);
                }
                let printed = String::from_utf8_lossy(&output.stdout);
                Ok(printed
                    .lines()
                    .last()
                    .and_then(|l| l.trim().parse::<u32>().ok()))
            })
        });
        hook
    });
    let outcome = loadtest::scenario::run(cli.target(), plan, hook).await?;
    let text = serde_json::to_string(&outcome.result)?;
    match &args.json {
        Some(path) => std::fs::write(path, format!("{text}\n"))?,
        None => println!("{text}"),
    }
    eprintln!("{}", loadtest::scenario::summary(&outcome.result));
    if let Some(path) = &args.svg {
        let series: Vec<(String, &hdrhistogram::Histogram<u64>)> = outcome
            .histograms
            .iter()
            .map(|(l, h)| (l.clone(), h))
            .collect();
        loadtest::plot::percentile_spectrum(
            path,
            &format!("{} against {}", args.scenario.name(), cli.addr),
            &series,
        )?;
    }
    if outcome.incomplete_listeners > 0 || outcome.failed_writes > 0 {
        bail!(
            "check failed: {} listeners incomplete, {} writes refused",
            outcome.incomplete_listeners,
            outcome.failed_writes
        );
    }
    Ok(())
}

impl Cli {
    fn target(&self) -> Target {
        Target {
            addr: self.addr.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
        }
    }
}

/// A closed-loop run: `count` requests over `conns` connections, on names `<prefix><n>`.
#[derive(clap::Args)]
struct ClosedLoop {
    #[arg(long, default_value_t = 1)]
    conns: usize,
    #[arg(long, default_value_t = 20_000)]
    count: usize,
    /// Name prefix; names are `<prefix><n>`.
    #[arg(long)]
    prefix: String,
    /// Stop after this many seconds (or `count`, whichever comes first).
    #[arg(long)]
    seconds: Option<f64>,
}

#[derive(Subcommand)]
enum Run {
    /// Durable writes: ACTIVATE `count` new mailboxes over `conns` connections.
    Activate {
        #[command(flatten)]
        load: ClosedLoop,
        /// First n.
        #[arg(long, default_value_t = 0)]
        start: usize,
    },
    /// FIND random existing mailboxes `<prefix><n>` with n below `existing`.
    Find {
        #[command(flatten)]
        load: ClosedLoop,
        #[arg(long)]
        existing: usize,
    },
    /// Full UPDATE dump to a new client, until `OK "streaming starts"`.
    Dump {
        #[arg(long, default_value_t = 3)]
        repeat: usize,
    },
    /// Fan-out: `listeners` PARTIAL-UPDATE listeners on `fanhost`; each round a writer
    /// ACTIVATEs a new mailbox there and the time from its OK to each listener's arrival is
    /// taken.
    Fanout {
        #[arg(long, default_value_t = 100)]
        listeners: usize,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Process whose RSS is reported with the listeners connected.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Slave catch-up: ACTIVATE `count` new mailboxes on the master (`--addr`), then the
    /// time from the last OK until the slave answers FIND for the last one.
    Catchup {
        #[arg(long)]
        slave: String,
        #[arg(long, default_value_t = 8)]
        conns: usize,
        #[arg(long, default_value_t = 20_000)]
        count: usize,
        #[arg(long)]
        prefix: String,
    },
    /// Time until a (new) server answers FIND for `name`, polling every 5 ms.
    WaitFor {
        #[arg(long)]
        name: String,
    },
    /// A Cyrus reader's lock waits on a mailboxes.db (twoskip) while it fills: read-locks
    /// it in a loop until it holds `records` records; prints the time taken and the waits.
    LockProbe {
        #[arg(long)]
        db: std::path::PathBuf,
        #[arg(long)]
        records: u64,
        #[arg(long, default_value_t = 1800)]
        timeout_secs: u64,
    },
    /// Resident memory of a process (and its children) in KiB.
    Rss {
        #[arg(long)]
        pid: u32,
    },
    /// Crash-safety soak: our server (`--bin`) under a mixed write load from `writers`
    /// clients, stopped with `signal` at a random moment `rounds` times; after each restart
    /// every acknowledged write must be there and nothing half-applied. Works in `workdir`.
    Soak {
        #[arg(long)]
        bin: std::path::PathBuf,
        #[arg(long)]
        workdir: std::path::PathBuf,
        #[arg(long, default_value_t = 100)]
        rounds: usize,
        #[arg(long, default_value_t = 8)]
        writers: usize,
        #[arg(long, value_enum, default_value = "kill")]
        signal: soak::StopSignal,
        /// Earliest stop after the writers start, in ms.
        #[arg(long, default_value_t = 50)]
        min_ms: u64,
        /// Latest stop, in ms.
        #[arg(long, default_value_t = 400)]
        max_ms: u64,
    },
    /// Idle connections: holds `connections` logged-in connections that send nothing,
    /// reports the server's RSS (`pid`) before and with them, and times `probes` fresh
    /// clients' banner + login + FIND meanwhile.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        #[arg(long)]
        pid: u32,
        #[arg(long, default_value_t = 50)]
        probes: usize,
    },
    /// A scenario (see loadtest/README.md): its preset, with any parameter overridden; the
    /// JSON result goes to stdout (or `--json`), a summary and progress to stderr. Exits 1
    /// if a listener did not end with the server's view or a write was refused.
    Scenario(Box<ScenarioArgs>),
    /// A minimal OTLP/HTTP endpoint for trace-export benchmarks: prints its address, answers
    /// every POST with 200, and keeps `requests bytes` received in `stats`.
    OtlpSink {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        #[arg(long)]
        stats: std::path::PathBuf,
    },
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

/// A small deterministic generator, so every run asks for the same names.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

async fn closed_loop(
    cli: &Cli,
    conns: usize,
    count: usize,
    seconds: Option<f64>,
    make: impl Fn(usize, usize) -> (String, Vec<u8>) + Clone + Send + 'static,
) -> Result<()> {
    let mut connections = Vec::new();
    for _ in 0..conns {
        connections.push(Conn::open(&cli.target()).await?);
    }
    let started = Instant::now();
    let deadline = seconds.map(|s| started + Duration::from_secs_f64(s));
    let mut tasks = Vec::new();
    for (c, mut conn) in connections.into_iter().enumerate() {
        let make = make.clone();
        let share = (c..count).step_by(conns);
        // A timed run passes a huge count; reserve for what a run can plausibly do.
        let expected = share.len().min(1 << 20);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(expected);
            let mut failures = 0usize;
            for i in share {
                if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                    break;
                }
                let (tag, request) = make(c, i);
                let t = Instant::now();
                if !conn.command(&tag, &request).await? {
                    failures += 1;
                }
                latencies.push(t.elapsed());
            }
            anyhow::Ok((latencies, failures))
        }));
    }
    let mut latencies = Vec::new();
    let mut failures = 0;
    for task in tasks {
        let (l, f) = task.await??;
        latencies.extend(l);
        failures += f;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let count = latencies.len();
    latencies.sort();
    println!(
        "{{\"ops\":{count},\"conns\":{conns},\"seconds\":{elapsed:.3},\"ops_per_s\":{:.0},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"failures\":{failures}}}",
        count as f64 / elapsed,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
    );
    Ok(())
}

/// Polls FIND until `name` exists (connecting as soon as the server greets).
async fn wait_for(cli: &Cli, name: &str) -> Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut conn = loop {
        match Conn::open(&cli.target()).await {
            Ok(conn) => break conn,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await
            }
            Err(e) => return Err(e),
        }
    };
    let request = format!("W FIND \"{name}\"\r\n");
    loop {
        conn.write.write_all(request.as_bytes()).await?;
        let mut found = false;
        loop {
            let line = conn.next_line().await?;
            if line.starts_with(b"W MAILBOX") || line.starts_with(b"W RESERVE") {
                found = true;
            }
            if line.starts_with(b"W OK") {
                break;
            }
        }
        if found {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("{name} never appeared");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn fanout(cli: &Cli, listeners: usize, rounds: usize, pid: Option<u32>) -> Result<()> {
    let (arrivals, mut arrived) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let rss_before = pid.map(rss_kib).transpose()?.unwrap_or(0);
    let mut tasks = Vec::new();
    for _ in 0..listeners {
        let mut conn = Conn::open(&cli.target()).await?;
        conn.write.write_all(b"U UPDATE \"fanhost\"\r\n").await?;
        loop {
            let line = conn.next_line().await?;
            if line.starts_with(b"U OK") {
                break;
            }
        }
        let arrivals = arrivals.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok(line) = conn.next_line().await {
                if let Some(rest) = line.strip_prefix(b"fan.r") {
                    let digits: String = rest
                        .iter()
                        .take_while(|b| b.is_ascii_digit())
                        .map(|&b| b as char)
                        .collect();
                    if let Ok(round) = digits.parse::<usize>() {
                        let _ = arrivals.send((round, Instant::now()));
                    }
                }
            }
        }));
    }
    let rss_with = pid.map(rss_kib).transpose()?.unwrap_or(0);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut writer = Conn::open(&cli.target()).await?;
    let mut all = Vec::new();
    let mut last_per_round = Vec::new();
    let mut since_send = Vec::new();
    for round in 0..rounds {
        let request =
            format!("F{round} ACTIVATE \"fan.r{round:04}.{stamp}\" \"fanhost!default\" \"\"\r\n");
        let sent_at = Instant::now();
        writer
            .command(&format!("F{round}"), request.as_bytes())
            .await?;
        let ok_at = Instant::now();
        let mut last_since_send = Duration::ZERO;
        let mut seen = 0;
        let mut last = Duration::ZERO;
        let deadline = ok_at + Duration::from_secs(15);
        while seen < listeners {
            let Ok(Some((r, at))) = tokio::time::timeout_at(deadline.into(), arrived.recv()).await
            else {
                bail!("round {round}: only {seen} of {listeners} listeners got the change");
            };
            if r != round {
                continue;
            }
            seen += 1;
            last_since_send = last_since_send.max(at.saturating_duration_since(sent_at));
            let latency = at.saturating_duration_since(ok_at);
            last = last.max(latency);
            all.push(latency);
        }
        last_per_round.push(last.as_secs_f64() * 1000.0);
        since_send.push(last_since_send.as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    all.sort();
    println!(
        "{{\"listeners\":{listeners},\"rounds\":{rounds},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"last_listener_ms\":{:?},\"last_listener_since_send_ms\":{:?},\"rss_kib_before\":{rss_before},\"rss_kib_with_listeners\":{rss_with}}}",
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        last_per_round
            .iter()
            .map(|v| (v * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>(),
        since_send
            .iter()
            .map(|v| (v * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>(),
    );
    for task in tasks {
        task.abort();
    }
    Ok(())
}

/// Resident memory of `pid` in KiB (0 if /proc gives none); an error if there is no such
/// process.
fn rss_kib(pid: u32) -> Result<u64> {
    std::fs::metadata(format!("/proc/{pid}/status"))
        .with_context(|| format!("no process {pid}"))?;
    Ok(loadtest::procstat::rss_kib(pid).unwrap_or(0))
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match &cli.run {
        Run::Activate { load, start } => {
            let (prefix, start) = (load.prefix.clone(), *start);
            closed_loop(&cli, load.conns, load.count, load.seconds, move |_, i| {
                let tag = format!("X{i}");
                let request = format!(
                    "{tag} ACTIVATE \"{prefix}{:09}\" \"backend1!default\" \"owner\tlrswipkxtecda\t\"\r\n",
                    start + i
                );
                (tag, request.into_bytes())
            })
            .await
        }
        Run::Find { load, existing } => {
            let (prefix, existing) = (load.prefix.clone(), (*existing).max(1));
            closed_loop(&cli, load.conns, load.count, load.seconds, move |c, i| {
                let mut state = 42 + (c as u64) * 7919 + i as u64 * 104_729;
                let n = next_random(&mut state) as usize % existing;
                let tag = format!("F{i}");
                (
                    tag.clone(),
                    format!("{tag} FIND \"{prefix}{n:09}\"\r\n").into_bytes(),
                )
            })
            .await
        }
        Run::Dump { repeat } => {
            let mut times = Vec::new();
            let mut bytes = 0usize;
            for _ in 0..*repeat {
                let mut conn = Conn::open(&cli.target()).await?;
                let started = Instant::now();
                conn.write.write_all(b"U01 UPDATE\r\n").await?;
                let marker = b"\r\nU01 OK \"streaming starts\"\r\n";
                let mut seen = Vec::with_capacity(16 << 20);
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = conn.read.read(&mut buf).await?;
                    if n == 0 {
                        bail!("EOF during dump");
                    }
                    seen.extend_from_slice(&buf[..n]);
                    if seen.ends_with(marker) || seen == marker[2..] {
                        break;
                    }
                }
                times.push(started.elapsed().as_secs_f64());
                bytes = seen.len();
            }
            times.sort_by(f64::total_cmp);
            let median = times[times.len() / 2];
            println!("{{\"dump_seconds\":{median:.4},\"bytes\":{bytes},\"runs\":{repeat}}}");
            Ok(())
        }
        Run::Fanout {
            listeners,
            rounds,
            pid,
        } => fanout(&cli, *listeners, *rounds, *pid).await,
        Run::Catchup {
            slave,
            conns,
            count,
            prefix,
        } => {
            let started = Instant::now();
            let name_prefix = prefix.clone();
            closed_loop(&cli, *conns, *count, None, move |_, i| {
                let tag = format!("X{i}");
                let request = format!(
                    "{tag} ACTIVATE \"{name_prefix}{i:09}\" \"backend1!default\" \"owner\tlrswipkxtecda\t\"\r\n"
                );
                (tag, request.into_bytes())
            })
            .await?;
            let written = Instant::now();
            let last = format!("{prefix}{:09}", count - 1);
            let slave_cli = Cli {
                addr: slave.clone(),
                user: cli.user.clone(),
                password: cli.password.clone(),
                run: Run::Rss { pid: 0 },
            };
            let waited = wait_for(&slave_cli, &last).await?;
            println!(
                "{{\"write_seconds\":{:.3},\"catchup_seconds\":{:.4}}}",
                (written - started).as_secs_f64(),
                (waited - written).as_secs_f64()
            );
            Ok(())
        }
        Run::WaitFor { name } => {
            let started = Instant::now();
            let found = wait_for(&cli, name).await?;
            println!("{{\"seconds\":{:.4}}}", (found - started).as_secs_f64());
            Ok(())
        }
        Run::LockProbe {
            db,
            records,
            timeout_secs,
        } => {
            let probed = lockprobe::probe(db, *records, Duration::from_secs(*timeout_secs))?;
            println!(
                "{{\"seconds\":{:.3},\"probes\":{},\"wait_p50_ms\":{:.3},\"wait_p99_ms\":{:.3},\"wait_max_ms\":{:.3}}}",
                probed.seconds,
                probed.probes,
                probed.waits.value_at_quantile(0.5) as f64 / 1000.0,
                probed.waits.value_at_quantile(0.99) as f64 / 1000.0,
                probed.waits.max() as f64 / 1000.0
            );
            Ok(())
        }
        Run::Rss { pid } => {
            println!("{{\"rss_kib\":{}}}", rss_kib(*pid)?);
            Ok(())
        }
        Run::Scenario(args) => scenario(&cli, args).await,
        Run::OtlpSink { listen, stats } => otlp_sink(listen, stats.clone()).await,
        Run::Idle {
            connections,
            pid,
            probes,
        } => idle(&cli, *connections, *pid, *probes).await,
        Run::Soak {
            bin,
            workdir,
            rounds,
            writers,
            signal,
            min_ms,
            max_ms,
        } => {
            soak::run(&soak::Soak {
                bin: bin.clone(),
                workdir: workdir.clone(),
                rounds: *rounds,
                writers: *writers,
                signal: *signal,
                min_ms: *min_ms,
                max_ms: *max_ms,
            })
            .await
        }
    }
}

/// Opens one connection, logs in (pipelined behind the banner) and returns it, idle.
async fn idle_login(addr: &str, login: &[u8]) -> Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(login).await?;
    let mut seen = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !seen.windows(6).any(|w| w == b"A01 OK") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            bail!("closed before login: {}", String::from_utf8_lossy(&seen));
        }
        seen.extend_from_slice(&buf[..n]);
    }
    Ok(stream)
}

async fn idle(cli: &Cli, connections: usize, pid: u32, probes: usize) -> Result<()> {
    let login = format!(
        "A01 AUTHENTICATE \"PLAIN\" \"{}\"\r\n",
        cli.target().plain_token()
    )
    .into_bytes();
    let rss_before = rss_kib(pid)?;
    let started = Instant::now();
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(256));
    let mut opening = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (gate, addr, login) = (gate.clone(), cli.addr.clone(), login.clone());
        opening.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            idle_login(&addr, &login).await
        }));
    }
    let mut held = Vec::with_capacity(connections);
    for task in opening {
        held.push(task.await??);
    }
    let open_seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_with = rss_kib(pid)?;
    let mut times = Vec::with_capacity(probes);
    for i in 0..probes {
        let probe_started = Instant::now();
        let mut conn = Conn::open(&cli.target()).await?;
        conn.command(
            &format!("F{i}"),
            format!("F{i} FIND \"user.nobody\"\r\n").as_bytes(),
        )
        .await?;
        times.push(probe_started.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{{\"connections\":{},\"open_seconds\":{open_seconds:.2},\"rss_before_kib\":{rss_before},\
         \"rss_with_kib\":{rss_with},\"kib_per_connection\":{:.2},\"probe_p50_ms\":{:.3},\
         \"probe_p99_ms\":{:.3},\"probe_max_ms\":{:.3}}}",
        held.len(),
        (rss_with.saturating_sub(rss_before)) as f64 / held.len().max(1) as f64,
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times.last().map(|d| ms(*d)).unwrap_or(0.0)
    );
    drop(held);
    Ok(())
}

/// Serves OTLP/HTTP exports until killed, counting requests and body bytes.
async fn otlp_sink(listen: &str, stats: std::path::PathBuf) -> Result<()> {
    use http_body_util::{BodyExt, Full};
    use hyper::body::{Bytes, Incoming};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("{}", listener.local_addr()?);
    let totals = Arc::new((AtomicU64::new(0), AtomicU64::new(0), stats));
    loop {
        let (stream, _) = listener.accept().await?;
        let totals = totals.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let totals = totals.clone();
            async move {
                let length = request.into_body().collect().await?.to_bytes().len() as u64;
                let requests = totals.0.fetch_add(1, Ordering::Relaxed) + 1;
                let bytes = totals.1.fetch_add(length, Ordering::Relaxed) + length;
                let _ = std::fs::write(&totals.2, format!("{requests} {bytes}\n"));
                Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::new())))
            }
        });
        tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
        );
    }
}
