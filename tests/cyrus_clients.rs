//! Real Cyrus programs against our master: Cyrus's own `mupdatetest` client, and logins
//! checked by Debian's saslauthd. Skipped with a message when Cyrus is not installed;
//! under `CI=true` a missing program is a failure.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const MUPDATETEST: &str = "/usr/lib/cyrus/bin/mupdatetest";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario6_mupdatetest_scripted_session() {
    if !cyrus_available("scenario6_mupdatetest_scripted_session", MUPDATETEST) {
        return;
    }
    let server = TestServer::start("").await;
    let mut seed = server.admin().await;
    seed.exchange(
        b"A1 ACTIVATE \"user.bob\" \"backend1!default\" \"bob\tlrswipkxtecda\t\"\r\nR1 RESERVE \"user.alice\" \"backend2!part2\"\r\n",
        b"A1 OK \"done\"\r\nR1 OK \"done\"\r\n",
    )
    .await;
    let cmds = server.path().join("cmds.txt");
    std::fs::write(
        &cmds,
        "T1 FIND \"user.bob\"\r\nT2 LIST \"backend2\"\r\nT3 ACTIVATE \"user.mt\" \"backend5!default\" \"mt\tlrs\t\"\r\nT4 NOOP\r\nT5 LOGOUT\r\n",
    )
    .unwrap();
    let port = server.addr.port().to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(MUPDATETEST)
            .args([
                "-p",
                &port,
                "-m",
                "PLAIN",
                "-a",
                "mupdate",
                "-w",
                "mupdatepass",
                "-f",
            ])
            .arg(&cmds)
            .arg("127.0.0.1")
            .stdin(Stdio::null())
            .output()
            .expect("run mupdatetest")
    })
    .await
    .unwrap();
    // mupdatetest prints its own closing `C: Q01 LOGOUT` whenever its writer gets there,
    // which may fall between our answers: leave it out before comparing.
    let stdout: String = String::from_utf8_lossy(&output.stdout)
        .replace("\r\n", "\n")
        .lines()
        .filter(|line| *line != "C: Q01 LOGOUT")
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(output.status.success(), "mupdatetest failed: {stdout}");
    let expected = "S: A01 OK \"Authenticated\"\nAuthenticated.\n";
    assert_contains(&stdout, expected);
    let answers = "T1 MAILBOX {8+}\nuser.bob {16+}\nbackend1!default {18+}\nbob\tlrswipkxtecda\t\nT1 OK \"Search completed\"\n\
                   T2 RESERVE {10+}\nuser.alice {14+}\nbackend2!part2\nT2 OK \"list complete\"\n\
                   T3 OK \"done\"\nT4 OK \"Noop done\"\nT5 OK \"bye-bye\"\n";
    assert_contains(&stdout, answers);
    let mut check = server.admin().await;
    check
        .exchange(
            b"F1 FIND \"user.mt\"\r\n",
            b"F1 MAILBOX {7+}\r\nuser.mt {16+}\r\nbackend5!default {7+}\r\nmt\tlrs\t\r\nF1 OK \"Search completed\"\r\n",
        )
        .await;
}

/// saslauthd with its sasldb mechanism reads the fixed path /etc/sasldb2; it runs in a
/// private mount namespace where our own sasldb is bound over that path.
struct Saslauthd {
    child: std::process::Child,
}

impl Drop for Saslauthd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_saslauthd(dir: &std::path::Path, realm: &str) -> Option<Saslauthd> {
    if !cyrus_available("saslauthd_login", "/usr/sbin/saslauthd")
        || !cyrus_available("saslauthd_login", "/usr/sbin/saslpasswd2")
        || !cyrus_available("saslauthd_login (mount point)", "/etc/sasldb2")
    {
        return None;
    }
    if !common::may_mount("saslauthd_login") {
        return None;
    }
    let db = dir.join("sasldb2");
    for (user, password) in [("mupdate", "mupdatepass"), ("bob", "bobpass")] {
        common::cyrus::saslpasswd(&db, realm, user, password);
    }
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    let script = format!(
        "mount --bind '{}' /etc/sasldb2 && exec /usr/sbin/saslauthd -a sasldb -m '{}' -n 0 -d",
        db.display(),
        run.display()
    );
    let child = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("unshare saslauthd");
    let daemon = Saslauthd { child };
    for _ in 0..200 {
        if run.join("mux").exists() {
            return Some(daemon);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("saslauthd did not create its socket");
}

#[tokio::test]
async fn saslauthd_login() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_daemon) = start_saslauthd(dir.path(), "mupdate-master") else {
        return;
    };
    let extra = format!(
        "sasl_pwcheck_method: saslauthd\nsasl_saslauthd_path: {}/run/mux\n",
        dir.path().display()
    );
    let server = TestServer::start_in(dir, &extra).await;
    // Without the fixture's passwd file, only saslauthd can say yes.
    std::fs::remove_file(server.path().join("passwd")).unwrap();
    let mut c = server.client().await;
    c.exchange(AUTH, b"A0 OK \"Authenticated\"\r\n").await;
    let mut bob = server.client().await;
    bob.login_refused("X1", B64_BOB).await;
    let mut wrong = server.client().await;
    wrong.login_refused("X2", B64_BAD).await;
}
