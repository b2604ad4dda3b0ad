//! Composition root: reads the configuration, opens the store, picks the role, binds the
//! listener, handles signals, and maps failures to Cyrus-style exit codes.

#[cfg(feature = "ha")]
mod ha;

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, Command};
use crate::config::{self, MailboxesDb, MupdateConfig, Settings};
use crate::cyrus_master::{self, Launch};
use crate::cyrusdb::mboxlist::Naming;
use crate::exit::fatal;
use crate::exit::{EXIT_CANTCREAT, EXIT_CONFIG, EXIT_OS, EXIT_SOFTWARE, EXIT_TEMPFAIL, Fatal};
use crate::observability::metrics::Metrics;
use crate::observability::sidecar::{self, Readiness, SidecarLimits};
use crate::projection::{Mapping, Projection, ProjectionOptions, TransactionLimits};
use crate::replication::barrier::{self, BarrierRequests};
use crate::replication::kick::{self, KickSocket};
use crate::replication::slave::SlaveSettings;
use crate::server::{self, Role, ServerContext};
use crate::store::{ConflictPolicy, Store, StoreError, StoreOptions};

/// Runs the command line; returns the process exit status.
pub fn main(cli: Cli) -> i32 {
    let tool = match &cli.command {
        Some(Command::HashPassword { user, scheme }) => return hash_password(user, *scheme),
        Some(Command::Config { config, set }) => Some(print_config(config, set)),
        Some(Command::Dump {
            config,
            server,
            output,
        }) => Some(crate::tools::dump(config, server.clone(), output.as_deref()).map(|()| 0)),
        Some(Command::Restore { config, file }) => {
            Some(crate::tools::restore(config, file).map(|()| 0))
        }
        Some(Command::Check {
            config,
            master,
            slave,
        }) => Some(
            crate::tools::check(config, master.clone(), slave.clone())
                .map(|same| if same { 0 } else { 1 }),
        ),
        None => None,
    };
    if let Some(result) = tool {
        return match result {
            Ok(code) => code,
            Err(Fatal { code, message }) => {
                eprintln!("mupdate: {message}");
                code
            }
        };
    }
    let result = (|| {
        // First, since under master(8) this may re-execute the program.
        let launch = cyrus_master::detect()?;
        let environment: config::Environment = std::env::vars().collect();
        let settings = config::load_with(&cli.config, &environment, &cli.set)
            .map_err(|e| fatal(EXIT_CONFIG, e.to_string()))?;
        let telemetry = crate::observability::init(settings.log_json);
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(async_workers(settings.worker_threads));
        let runtime = builder
            .enable_all()
            .build()
            .map_err(|e| fatal(EXIT_OS, format!("cannot start the runtime: {e}")))?;
        let served = runtime.block_on(serve(&cli, settings, launch));
        drop(runtime);
        telemetry.shutdown();
        served
    })();
    match result {
        Ok(()) => 0,
        Err(Fatal { code, message }) => {
            tracing::error!("{message}");
            eprintln!("mupdate: {message}");
            code
        }
    }
}

/// Async worker threads: as configured, else one. The protocol work is light (one thread
/// serves over 100,000 FIND/s), and every extra worker adds cross-CPU wake-ups that cost
/// more than they give; commits block their thread for one fsync either way.
fn async_workers(configured: usize) -> usize {
    configured.max(1)
}

fn print_config(path: &std::path::Path, overrides: &[String]) -> Result<i32, Fatal> {
    let environment: config::Environment = std::env::vars().collect();
    let options = config::effective(path, &environment, overrides)
        .map_err(|e| fatal(EXIT_CONFIG, e.to_string()))?;
    // Typed parsing too, so that a bad value is reported as the server would report it.
    config::load_with(path, &environment, overrides)
        .map_err(|e| fatal(EXIT_CONFIG, e.to_string()))?;
    for (key, value, origin) in options {
        println!("{key}: {value}\t# {origin}");
    }
    Ok(0)
}

fn hash_password(user: &str, scheme: crate::auth::passwd_file::Scheme) -> i32 {
    let mut password = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut password) {
        eprintln!("mupdate: cannot read the password from stdin: {e}");
        return EXIT_OS;
    }
    let password = password.strip_suffix('\n').unwrap_or(&password);
    let password = password.strip_suffix('\r').unwrap_or(password);
    match crate::auth::passwd_file::hash(scheme, password.as_bytes()) {
        Ok(hash) => {
            println!("{user}:{hash}");
            0
        }
        Err(e) => {
            eprintln!("mupdate: {e}");
            EXIT_SOFTWARE
        }
    }
}

/// The role from `-m`, or from `-a` and whether `mupdate_server` names `listening`, the
/// address this instance accepts clients on.
fn choose_role(cli: &Cli, settings: &Settings, listening: SocketAddr) -> Result<Role, Fatal> {
    if settings.ha.is_some() {
        if cli.master || cli.autoselect {
            return Err(fatal(
                EXIT_CONFIG,
                "with mupdate_ha_etcd_endpoints set the master is elected: start without -m and -a",
            ));
        }
        return elected(settings);
    }
    let master = cli.master
        || (cli.autoselect
            && settings
                .mupdate_server
                .as_deref()
                .is_some_and(|server| names_this_server(server, listening)));
    if master {
        if settings.mupdate_server.is_some() && settings.mupdate_config == MupdateConfig::Unified {
            return Err(fatal(
                EXIT_CONFIG,
                "cannot run mupdate master on a unified server (mupdate_config: unified with mupdate_server set)",
            ));
        }
        return Ok(Role::Master);
    }
    match &settings.mupdate_server {
        None => Err(fatal(
            EXIT_CONFIG,
            "slave mode needs mupdate_server (or run the master with -m)",
        )),
        Some(master) => {
            if settings.mupdate_authname.is_none() || settings.mupdate_password.is_none() {
                return Err(fatal(
                    EXIT_CONFIG,
                    "slave mode needs mupdate_authname and mupdate_password to log in to the master",
                ));
            }
            Ok(Role::Slave {
                master: master.clone(),
            })
        }
    }
}

/// The elected role, if this build can campaign and `settings` can follow and forward.
fn elected(settings: &Settings) -> Result<Role, Fatal> {
    #[cfg(feature = "ha")]
    {
        ha::check(settings)?;
        Ok(Role::Elected)
    }
    #[cfg(not(feature = "ha"))]
    {
        let _ = settings;
        Err(fatal(
            EXIT_CONFIG,
            "mupdate_ha_etcd_endpoints: this build has no failover (build with --features ha)",
        ))
    }
}

/// Whether `mupdate_server` (`host` or `host:port`, port 3905 when absent: where slaves
/// connect) is the address this instance listens on. A wildcard listener (`0.0.0.0`, `::`)
/// is this machine's host name and every address of its interfaces. Cyrus compares the
/// host alone; the port and the exact listening address matter too so that several
/// instances on one machine (pods sharing a node's loopback in a test, or a master and a
/// slave side by side) choose different roles from one configuration.
fn names_this_server(server: &str, listening: SocketAddr) -> bool {
    let target = crate::replication::client::with_default_port(server);
    let Some(port) = target
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse::<u16>().ok())
    else {
        return false;
    };
    if port != listening.port() {
        return false;
    }
    let host = crate::tls::host_of(server);
    let resolved: Vec<std::net::IpAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map(|addrs| addrs.map(|a| a.ip()).collect())
        .unwrap_or_default();
    if !listening.ip().is_unspecified() {
        return resolved.contains(&listening.ip());
    }
    let own_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    if host.eq_ignore_ascii_case(own_name.trim()) {
        return true;
    }
    let local = local_addresses();
    resolved.iter().any(|ip| local.contains(ip))
}

/// Addresses of this machine's interfaces.
fn local_addresses() -> Vec<std::net::IpAddr> {
    let Ok(interfaces) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    interfaces
        .filter_map(|interface| interface.address)
        .filter_map(|address| {
            if let Some(v4) = address.as_sockaddr_in() {
                Some(std::net::IpAddr::V4(v4.ip()))
            } else {
                address
                    .as_sockaddr_in6()
                    .map(|v6| std::net::IpAddr::V6(v6.ip()))
            }
        })
        .collect()
}

/// Holds `<configdirectory>/mupdate.lock` for the life of the process, so that a second
/// instance (such as master(8)'s second address family) stops at once with exit 78.
fn lock_instance(settings: &Settings) -> Result<std::fs::File, Fatal> {
    for dir in [
        Some(settings.config_directory.as_path()),
        settings.db_path.parent(),
    ]
    .into_iter()
    .flatten()
    .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| fatal(EXIT_OS, format!("cannot create {}: {e}", dir.display())))?;
    }
    let path = settings.config_directory.join("mupdate.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| fatal(EXIT_OS, format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(fatal(
            EXIT_CONFIG,
            format!(
                "{} is held: another mupdate serves this configdirectory (database in use)",
                path.display()
            ),
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(fatal(
            EXIT_OS,
            format!("cannot lock {}: {e}", path.display()),
        )),
    }
}

/// Raises the soft limit of open files to the hard one: every client is a descriptor, and
/// the soft default (often 1,024) is far below what a murder's listeners need.
fn raise_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "raised the open-file limit"),
            Err(error) => tracing::warn!(%error, soft, "cannot raise the open-file limit"),
        },
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot read the open-file limit"),
    }
}

async fn serve(cli: &Cli, mut settings: Settings, launch: Launch) -> Result<(), Fatal> {
    let under_master = matches!(launch, Launch::UnderMaster(_));
    // `auto` keeps mailboxes.db where Cyrus's mupdate would: under master(8).
    settings.mailboxes_db = match settings.mailboxes_db_path(under_master) {
        Ok(Some(_)) => MailboxesDb::On,
        Ok(None) => MailboxesDb::Off,
        Err(message) => return Err(fatal(EXIT_CONFIG, message)),
    };
    let _lock = lock_instance(&settings)?;
    raise_file_limit();
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone())?;
    let listener = match launch {
        Launch::Standalone => TcpListener::bind(&settings.listen).await.map_err(|e| {
            fatal(
                EXIT_OS,
                format!("cannot listen on {}: {e}", settings.listen),
            )
        })?,
        Launch::UnderMaster(cyrus_master::MasterLink { listener, parent }) => {
            tokio::spawn(watch_master(parent, shutdown.clone()));
            TcpListener::from_std(listener)
                .map_err(|e| fatal(EXIT_OS, format!("master's listening socket: {e}")))?
        }
    };
    let listening = listener
        .local_addr()
        .map_err(|e| fatal(EXIT_OS, format!("the listening socket: {e}")))?;
    let role = choose_role(cli, &settings, listening)?;
    run(settings, role, listener, shutdown).await
}

/// The store's options from the settings.
pub fn store_options(settings: &Settings) -> StoreOptions {
    StoreOptions {
        policy: if settings.replicated_writes() {
            ConflictPolicy::Replicated
        } else {
            ConflictPolicy::Standard
        },
        changelog_max: settings.changelog_max,
        changelog_max_age: Some(settings.changelog_max_age).filter(|a| !a.is_zero()),
        feed_capacity: settings.listener_queue,
        // Only where writes wait for synchronous replicas, which then sync along with the
        // master; and only where an elected master's replicas can rewind what a crash of
        // its own lost.
        stream_before_sync: settings.ha.is_some() && settings.sync_replicas > 0,
        ..StoreOptions::default()
    }
}

/// Serves `role` on a bound `listener` until `stop` (then drains: not ready at once, still
/// serving for `mupdate_shutdown_delay`, then goodbye): opens the store, starts the
/// replication link and kick socket, and (a slave after its first sync) accepts clients.
/// A store that halts drains it the same way, and then it fails with `EX_TEMPFAIL`.
/// Tests run masters and slaves in-process through this.
pub async fn run(
    settings: Settings,
    role: Role,
    listener: TcpListener,
    stop: CancellationToken,
) -> Result<(), Fatal> {
    let store = Store::open(&settings.db_path, store_options(&settings)).map_err(|e| match e {
        StoreError::InUse => fatal(
            EXIT_CONFIG,
            format!(
                "{} is in use by another mupdate process",
                settings.db_path.display()
            ),
        ),
        other => fatal(
            EXIT_SOFTWARE,
            format!("{}: {other}", settings.db_path.display()),
        ),
    })?;
    let halted = store.halted();
    let stop = stop_on_halt(stop, halted.clone());
    let shutdown = CancellationToken::new();
    tokio::spawn(shut_down_after_delay(
        stop.clone(),
        settings.shutdown_delay,
        shutdown.clone(),
    ));
    let served = serve_store(settings, store, role, listener, stop, shutdown).await;
    if *halted.borrow() {
        return Err(fatal(
            EXIT_TEMPFAIL,
            "stopped: the database took no more writes after a failed commit (see the log); \
             a restart replays its write-ahead log",
        ));
    }
    served
}

/// A token cancelled with `stop`, or once the store has `halted`: a store that takes no
/// more writes until a restart stops the server (a master under failover resigns, so a
/// successor takes the writes), which exits for its supervisor to start it again.
fn stop_on_halt(
    stop: CancellationToken,
    mut halted: tokio::sync::watch::Receiver<bool>,
) -> CancellationToken {
    let stopping = stop.child_token();
    let cancel = stopping.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = cancel.cancelled() => {}
            seen = halted.wait_for(|halted| *halted) => if seen.is_ok() {
                tracing::error!("the database takes no more writes: stopping, to be restarted");
                cancel.cancel();
            }
        }
    });
    stopping
}

/// [`run`] once the store is open.
async fn serve_store(
    settings: Settings,
    store: Store,
    role: Role,
    listener: TcpListener,
    stop: CancellationToken,
    shutdown: CancellationToken,
) -> Result<(), Fatal> {
    let address = listener
        .local_addr()
        .map_err(|e| fatal(EXIT_OS, e.to_string()))?;
    let role_name = match role {
        Role::Master => "master",
        Role::Slave { .. } => "slave",
        Role::Elected => "elected",
    };
    let metrics = Arc::new(
        Metrics::new(role_name).map_err(|e| fatal(EXIT_SOFTWARE, format!("metrics: {e}")))?,
    );
    observe_commits(&store, &metrics);
    let acceptor = match (&settings.tls_server_cert, &settings.tls_server_key) {
        (Some(cert), Some(key)) => {
            Some(crate::tls::acceptor(cert, key).map_err(|e| fatal(EXIT_CONFIG, e.to_string()))?)
        }
        _ => None,
    };
    let mut ctx = ServerContext::with_metrics(settings, store, role, shutdown, metrics.clone());
    if let Some(acceptor) = acceptor {
        ctx.set_tls(acceptor);
    }
    let mut readiness = Readiness::default();
    let (synced_tx, synced) = tokio::sync::watch::channel(false);
    // An elected instance serves once it is master, or a follower after its first sync.
    #[cfg(feature = "ha")]
    let (campaign, may_serve) = if ctx.role == Role::Elected {
        let (campaign, serving) = ha::prepare(&mut ctx, &mut readiness)?;
        (Some(campaign), Some(serving))
    } else {
        (None, None)
    };
    #[cfg(not(feature = "ha"))]
    let may_serve: Option<tokio::sync::watch::Receiver<bool>> = None;
    let projection = match &ctx.role {
        Role::Master => start_projection(&ctx, None)?,
        Role::Slave { .. } => start_projection(&ctx, Some(synced.clone()))?,
        Role::Elected => start_projection(&ctx, may_serve.clone())?,
    };
    if let Some(projection) = projection.clone() {
        readiness.also_require("mailboxes.db", Arc::new(move || projection.healthy()));
    }
    let kick_socket = KickSocket::new(
        &ctx.settings.config_directory,
        projection,
        ctx.settings.kicks_max,
    );
    let mut link = None;
    if let Role::Slave { master } = &ctx.role {
        let settings = slave_settings(&ctx.settings, master.clone())?;
        let (barrier, requests) = barrier::barrier(settings.retry_delay);
        let linked = barrier.clone();
        let max_lag = ctx.settings.ready_max_lag;
        if max_lag <= settings.retry_delay {
            // A quiet link is confirmed only by the keep-alive NOOP every retry_delay.
            tracing::warn!(
                ready_max_lag_secs = max_lag.as_secs_f64(),
                retry_delay_secs = settings.retry_delay.as_secs_f64(),
                "mupdate_ready_max_lag is not above mupdate_retry_delay: this slave will turn unready on a quiet link"
            );
        }
        readiness.also_require(
            "master link",
            Arc::new(move || {
                linked.connected() && linked.status().lag().is_some_and(|lag| lag <= max_lag)
            }),
        );
        ctx.set_upstream(barrier);
        link = Some((settings, requests));
    }
    let ctx = Arc::new(ctx);
    #[cfg(feature = "ha")]
    if let Some(campaign) = campaign {
        ha::start(&ctx, campaign);
    }
    tokio::spawn(count_mailboxes(ctx.clone()));
    // The sidecar answers (503 on /readyz) until this function returns.
    let sidecar_stop = CancellationToken::new();
    let sidecar_guard = sidecar_stop.clone().drop_guard();
    start_sidecar(&ctx, metrics, readiness.clone(), &stop, sidecar_stop).await?;
    // A master answers kicks from start-up on, a slave while its link is synchronised
    // (either once mailboxes.db, if kept, has caught up).
    if let Err(error) = kick::serve(&kick_socket, ctx.upstream().cloned(), ctx.shutdown.clone()) {
        tracing::warn!(path = %kick_socket.path.display(), %error, "no kick socket");
    }
    if let Some((settings, requests)) = link {
        follow_master(&ctx, settings, requests, synced_tx);
        // Like Cyrus, a slave serves nobody before its first sync; clients wait in the
        // listen backlog meanwhile.
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ok(()),
            _ = wait_until_synced(synced) => {}
        }
    }
    if let Some(serving) = may_serve {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ok(()),
            _ = wait_until_synced(serving) => {}
        }
    }
    if !ctx.auth.has_password_source() {
        tracing::warn!(
            "no password source: set mupdate_passwd_file or sasl_pwcheck_method: saslauthd"
        );
    }
    readiness.set(true);
    tracing::info!(%address, role = ?ctx.role, db = %ctx.settings.db_path.display(), "listening on {address}");
    server::run(listener, ctx.clone()).await;
    drop(sidecar_guard);
    let_go_of_the_store(&ctx).await;
    let (commits, writes, commit_micros) = ctx.store.commit_stats().snapshot();
    tracing::info!(
        commits,
        writes,
        mean_commit_us = commit_micros.checked_div(commits).unwrap_or(0),
        "shut down"
    );
    Ok(())
}

/// Longest the end of [`run`] waits for the tasks that share the server's context.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits (at most [`RELEASE_WAIT`]) until the sidecar, the mailbox counter and the other
/// tasks that hold the context have seen the shutdown and let go of it: the database
/// closes with its last holder, and a caller that runs the server again in this process
/// must find it free.
async fn let_go_of_the_store(ctx: &Arc<ServerContext>) {
    let deadline = tokio::time::Instant::now() + RELEASE_WAIT;
    while Arc::strong_count(ctx) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Longest a sidecar connection lives (a scraper reconnects; a slow reader is let go).
const SIDECAR_CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);

/// Starts the HTTP sidecar on `mupdate_http_listen`, unless it is `off`, serving until
/// `sidecar_stop`; readiness drops as soon as `stop` is asked for.
async fn start_sidecar(
    ctx: &Arc<ServerContext>,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    stop: &CancellationToken,
    sidecar_stop: CancellationToken,
) -> Result<(), Fatal> {
    let stop = stop.clone();
    let draining = readiness.clone();
    tokio::spawn(async move {
        stop.cancelled().await;
        draining.set(false);
    });
    let Some(address) = &ctx.settings.http_listen else {
        return Ok(());
    };
    let http = TcpListener::bind(address).await.map_err(|e| {
        fatal(
            EXIT_OS,
            format!("cannot listen on {address} (sidecar): {e}"),
        )
    })?;
    let bound = http
        .local_addr()
        .map_err(|e| fatal(EXIT_OS, e.to_string()))?;
    tracing::info!(%bound, "sidecar on http://{bound}");
    let refresh = {
        let ctx = ctx.clone();
        Arc::new(move || {
            let metrics = &ctx.metrics;
            let (commits, writes, _) = ctx.store.commit_stats().snapshot();
            Metrics::catch_up(&metrics.commits, commits);
            Metrics::catch_up(&metrics.writes, writes);
            metrics.last_seq.set(ctx.store.last_seq() as i64);
            metrics.listeners.set(ctx.store.listener_count() as i64);
            metrics
                .listener_queue_depth
                .set(ctx.store.feed_backlog() as i64);
            if let Ok(file) = std::fs::metadata(&ctx.settings.db_path) {
                metrics.store_size.set(file.len() as i64);
            }
            if let Some(lag) = ctx.upstream().and_then(|u| u.status().lag()) {
                metrics.lag_seconds.set(lag.as_secs_f64());
            }
        })
    };
    let limits = SidecarLimits {
        connections_max: ctx.settings.http_connections_max,
        header_timeout: ctx.settings.http_timeout,
        lifetime: SIDECAR_CONNECTION_LIFETIME,
    };
    tokio::spawn(sidecar::serve(
        http,
        metrics,
        readiness,
        refresh,
        limits,
        sidecar_stop,
    ));
    Ok(())
}

/// Cancels `shutdown` once `stop` is asked for and `delay` has passed: load balancers see
/// the instance not ready and stop sending clients before it says goodbye to them.
async fn shut_down_after_delay(
    stop: CancellationToken,
    delay: std::time::Duration,
    shutdown: CancellationToken,
) {
    stop.cancelled().await;
    if !delay.is_zero() {
        tracing::info!(
            delay_secs = delay.as_secs_f64(),
            "shutting down: not ready, still serving for {delay:?}"
        );
        tokio::time::sleep(delay).await;
    }
    shutdown.cancel();
}

/// Feeds every commit's batch size and duration to the histograms.
fn observe_commits(store: &Store, metrics: &Arc<Metrics>) {
    let metrics = metrics.clone();
    store.commit_stats().observe(Box::new(move |batch, took| {
        metrics.commit_batch.observe(batch as f64);
        metrics.commit_seconds.observe(took.as_secs_f64());
    }));
}

/// How often the mailboxes-by-state gauges may be recounted (a walk of the whole list).
const MAILBOX_COUNT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Keeps the mailboxes-by-state gauges current: recounted when the list has changed, on a
/// snapshot off the async workers so that no client waits for the walk.
async fn count_mailboxes(ctx: Arc<ServerContext>) {
    let mut tick = tokio::time::interval(MAILBOX_COUNT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut counted_at = None;
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let seq = ctx.store.last_seq();
        if counted_at == Some(seq) {
            continue;
        }
        let store = ctx.store.clone();
        let counted = tokio::task::spawn_blocking(move || store.snapshot()?.count_by_state()).await;
        match counted {
            Ok(Ok((active, reserved))) => {
                let gauge = |state| ctx.metrics.mailboxes.with_label_values(&[state]);
                gauge("active").set(active as i64);
                gauge("reserved").set(reserved as i64);
                counted_at = Some(seq);
            }
            Ok(Err(error)) => tracing::warn!(%error, "cannot count the mailboxes"),
            Err(error) => tracing::warn!(%error, "mailbox count task failed"),
        }
    }
}

/// The replication link's settings, from imapd.conf.
fn slave_settings(settings: &Settings, master: String) -> Result<SlaveSettings, Fatal> {
    let tls =
        crate::tls::client_for(settings, &master).map_err(|e| fatal(EXIT_CONFIG, e.to_string()))?;
    Ok(SlaveSettings {
        tls,
        master,
        authname: settings.mupdate_authname.clone().unwrap_or_default(),
        username: settings.mupdate_username.clone().unwrap_or_default(),
        password: settings.mupdate_password.clone().unwrap_or_default(),
        retry_delay: settings.retry_delay,
        client_timeout: settings.client_timeout,
        identity: settings.ha.as_ref().map(|ha| ha.advertise.clone()),
        term: None,
    })
}

/// Starts the replication link; `synced` turns true after the first sync.
fn follow_master(
    ctx: &Arc<ServerContext>,
    link: SlaveSettings,
    requests: BarrierRequests,
    synced: tokio::sync::watch::Sender<bool>,
) {
    tokio::spawn(crate::replication::slave::run(
        ctx.store.clone(),
        link,
        synced,
        requests,
        ctx.metrics.clone(),
        ctx.shutdown.clone(),
    ));
}

/// Starts keeping Cyrus's mailboxes.db, if the settings ask for it (after `start_after`
/// turns true, if given).
fn start_projection(
    ctx: &ServerContext,
    start_after: Option<tokio::sync::watch::Receiver<bool>>,
) -> Result<Option<Projection>, Fatal> {
    let settings = &ctx.settings;
    let Some(path) = settings
        .mailboxes_db_path(false)
        .map_err(|message| fatal(EXIT_CONFIG, message))?
    else {
        return Ok(None);
    };
    let mapping = Mapping {
        naming: Naming {
            default_domain: settings
                .default_domain
                .as_ref()
                .map(|d| d.as_bytes().to_vec()),
            deleted_prefix: settings.deleted_prefix.as_bytes().to_vec(),
        },
        local_server: (settings.mupdate_config == MupdateConfig::Unified)
            .then(|| settings.server_name.as_bytes().to_vec()),
    };
    let options = ProjectionOptions {
        path: path.to_path_buf(),
        mapping,
        limits: TransactionLimits::default(),
        start_after,
    };
    let projection = Projection::start(
        ctx.store.clone(),
        options,
        ctx.metrics.clone(),
        ctx.shutdown.clone(),
    )
    .map_err(|e| fatal(EXIT_CANTCREAT, e.to_string()))?;
    tracing::info!(path = %path.display(), "keeping Cyrus's mailboxes.db current");
    Ok(Some(projection))
}

async fn wait_until_synced(mut synced: tokio::sync::watch::Receiver<bool>) {
    let _ = synced.wait_for(|done| *done).await;
}

/// Shuts down when master(8) dies without a shutdown (spec §16.3), as its socket and pipe
/// would otherwise keep an orphan serving and a restarted master could not bind.
async fn watch_master(parent: u32, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        if std::os::unix::process::parent_id() != parent {
            tracing::warn!("Cyrus master(8) is gone; shutting down");
            shutdown.cancel();
            return;
        }
    }
}

fn spawn_signal_handler(shutdown: CancellationToken) -> Result<(), Fatal> {
    use tokio::signal::unix::{SignalKind, signal};
    let listen =
        |kind| signal(kind).map_err(|e| fatal(EXIT_OS, format!("cannot handle signals: {e}")));
    let mut terminate = listen(SignalKind::terminate())?;
    let mut interrupt = listen(SignalKind::interrupt())?;
    // master(8) sends SIGHUP to recycle a child: exit cleanly so a fresh one starts.
    let mut hangup = listen(SignalKind::hangup())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
            _ = hangup.recv() => {}
        }
        tracing::info!("signal received; shutting down");
        shutdown.cancel();
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_parts() {
        assert_eq!(
            crate::tls::host_of("mupdate-0.mupdate:3905"),
            "mupdate-0.mupdate"
        );
        assert_eq!(crate::tls::host_of("master"), "master");
        assert_eq!(crate::tls::host_of("[::1]:3905"), "::1");
        assert_eq!(crate::tls::host_of("::1"), "::1");
    }

    #[test]
    fn mupdate_server_names_this_server_by_address_and_port() {
        let at = |address: &str| address.parse::<SocketAddr>().unwrap();
        assert!(names_this_server("127.0.0.1:3905", at("127.0.0.1:3905")));
        assert!(names_this_server("127.0.0.1", at("127.0.0.1:3905")));
        assert!(!names_this_server("127.0.0.1:3906", at("127.0.0.1:3905")));
        assert!(!names_this_server("127.0.0.1", at("127.0.0.1:4000")));
        // Another loopback address than the one listened on.
        assert!(!names_this_server("127.0.0.1:3905", at("127.0.0.2:3905")));
        // A wildcard listener: an interface address or the host name.
        assert!(names_this_server("127.0.0.1:3905", at("0.0.0.0:3905")));
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        assert!(names_this_server(hostname.trim(), at("0.0.0.0:3905")));
        // In 127/8 but not an interface address.
        assert!(!names_this_server("127.0.0.2:3905", at("0.0.0.0:3905")));
    }
}
