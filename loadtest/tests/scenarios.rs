//! Every scenario, small, against our master over real sockets: the load tool runs, and
//! every change reaches every listener (correctness, not speed; the figures come from
//! loadtest/bench-scenarios.sh).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use loadtest::conn::Target;
use loadtest::scenario::{self, Mix, Outcome, Plan, RestartHook, Scenario};
use mupdate::server::Role;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Our master, run in this process through the same entry point as the binary.
struct Master {
    addr: SocketAddr,
    conf: std::path::PathBuf,
    running: Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
}

impl Master {
    async fn start(dir: &Path) -> Arc<Master> {
        std::fs::write(dir.join("passwd"), "mupdate:{PLAIN}mupdatepass\n").unwrap();
        let conf = dir.join("imapd.conf");
        std::fs::write(
            &conf,
            format!(
                "configdirectory: {dir}\nadmins: mupdate\nallowplaintext: yes\nfailedloginpause: 0\n\
                 mupdate_passwd_file: {dir}/passwd\nmupdate_http_listen: off\n",
                dir = dir.display()
            ),
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let master = Arc::new(Master {
            addr: listener.local_addr().unwrap(),
            conf,
            running: Mutex::new(None),
        });
        master.serve(listener);
        master
    }

    fn serve(&self, listener: TcpListener) {
        let settings = mupdate::config::load(&self.conf, &mupdate::config::Environment::default())
            .expect("config");
        let stop = CancellationToken::new();
        let task = tokio::spawn(mupdate::app::run(
            settings,
            Role::Master,
            listener,
            stop.clone(),
        ));
        let task = tokio::spawn(async move {
            task.await.expect("server task").expect("server ran");
        });
        *self.running.lock().unwrap() = Some((stop, task));
    }

    /// Stops the master (its clients get BYE) and starts it again on the same address.
    async fn restart(&self) {
        let running = self.running.lock().unwrap().take();
        if let Some((stop, task)) = running {
            stop.cancel();
            task.await.unwrap();
        }
        let listener = TcpListener::bind(self.addr).await.expect("rebind");
        self.serve(listener);
    }

    fn target(&self) -> Target {
        Target {
            addr: self.addr.to_string(),
            user: "mupdate".into(),
            password: "mupdatepass".into(),
        }
    }
}

fn small(scenario: Scenario) -> Plan {
    Plan {
        listeners: 6,
        writers: 3,
        writes: 300,
        reads: 500,
        readers: 2,
        progress: false,
        drain_timeout: Duration::from_secs(30),
        reconnect_jitter: Duration::from_millis(50),
        ..Plan::preset(scenario)
    }
}

/// Runs `plan` against a fresh master (restarted in place by the hook if `restartable`)
/// and checks that no write was refused and every listener ended with the master's view.
async fn run(plan: Plan, restartable: bool) -> (Outcome, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(dir.path()).await;
    let hook = restartable.then(|| {
        let master = master.clone();
        let hook: RestartHook = Box::new(move || {
            let master = master.clone();
            Box::pin(async move {
                master.restart().await;
                Ok(None)
            })
        });
        hook
    });
    let outcome = scenario::run(master.target(), plan, hook)
        .await
        .expect("scenario");
    assert_eq!(outcome.failed_writes, 0, "{}", outcome.result);
    assert_eq!(outcome.incomplete_listeners, 0, "{}", outcome.result);
    (outcome, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_mixes_every_write_and_every_listener_ends_with_the_servers_view() {
    let plan = Plan {
        rate: Some(3_000.0),
        mix: Mix {
            reserve: 1,
            activate: 2,
            deactivate: 1,
            delete: 1,
        },
        list_percent: 5.0,
        ..small(Scenario::Steady)
    };
    let (outcome, _dir) = run(plan, false).await;
    let latency = &outcome.result["writes"]["latency"];
    for command in ["RESERVE", "ACTIVATE", "DEACTIVATE", "DELETE", "FIND"] {
        assert!(
            latency[command]["count"].as_u64().unwrap_or(0) > 0,
            "{command}: {latency}"
        );
    }
    let propagation = &outcome.result["writes"]["propagation"]["writer_ok_to_listener"];
    // Every listener saw changes (coalescing may skip some, never all).
    assert!(
        propagation["count"].as_u64().unwrap() >= 6 * 100,
        "{propagation}"
    );
    assert_eq!(outcome.result["writes"]["catchup"]["complete"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_then_reads() {
    let (outcome, _dir) = run(small(Scenario::Burst), false).await;
    assert_eq!(outcome.result["writes"]["writes"], 300);
    assert_eq!(outcome.result["reads"]["reads"], 500);
    // Each listener has each ACTIVATE of a new mailbox exactly once.
    assert_eq!(
        outcome.result["writes"]["propagation"]["writer_ok_to_listener"]["count"],
        6 * 300
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_sync_of_new_slaves_is_whole() {
    let plan = Plan {
        mailboxes: 2_000,
        syncs: 2,
        ..small(Scenario::InitialSync)
    };
    let (outcome, _dir) = run(plan, false).await;
    let sync = &outcome.result["initial_sync"];
    assert_eq!(sync["records"], 2_000, "{sync}");
    assert_eq!(sync["complete"], true);
    assert_eq!(sync["seconds"].as_array().map(Vec::len), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_every_listener_resumes_by_delta_and_misses_nothing() {
    let plan = Plan {
        listeners: 20,
        writes: 200,
        writes_after: 200,
        ..small(Scenario::Restart)
    };
    let (outcome, _dir) = run(plan, true).await;
    let restart = &outcome.result["restart"];
    assert_eq!(restart["delta_resumes"], 20, "{restart}");
    assert_eq!(restart["full_resumes"], 0, "{restart}");
    assert_eq!(restart["catchup"]["complete"], true, "{restart}");
    assert_eq!(restart["writes_after"]["writes"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_restart_scenario_needs_a_hook() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(dir.path()).await;
    let error = scenario::run(master.target(), small(Scenario::Restart), None)
        .await
        .err()
        .expect("no hook, no restart");
    assert!(error.to_string().contains("restart hook"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_listeners_do_not_hold_back_the_others() {
    let plan = Plan {
        slow_listeners: 4,
        ..small(Scenario::SlowListeners)
    };
    let (outcome, _dir) = run(plan, false).await;
    assert_eq!(outcome.result["listeners"]["slow"], 4);
    assert_eq!(outcome.result["writes"]["catchup"]["complete"], true);
}

#[test]
fn mixes_parse_and_refuse() {
    assert_eq!(
        Mix::parse("reserve=1,activate=4,deactivate=1,delete=1").unwrap(),
        Mix {
            reserve: 1,
            activate: 4,
            deactivate: 1,
            delete: 1
        }
    );
    assert!(Mix::parse("activate=0").is_err());
    assert!(Mix::parse("rename=1").is_err());
    assert!(Mix::parse("activate").is_err());
}
