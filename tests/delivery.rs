//! Delivery artefacts (issue 7): the Dockerfile lints clean, and the image's entrypoint
//! with its default configuration serves a master.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `tool args…`; `None` when the tool is not installed (a failure under CI).
fn run_tool(tool: &str, args: &[&str]) -> Option<std::process::Output> {
    match Command::new(tool)
        .args(args)
        .current_dir(repository())
        .output()
    {
        Ok(out) => Some(out),
        Err(_) => {
            assert!(
                std::env::var("CI").is_err(),
                "{tool} is missing: scripts/install-test-deps.sh installs it"
            );
            skipped(&format!(
                "{tool} not installed (run scripts/install-test-deps.sh)"
            ));
            None
        }
    }
}

#[test]
fn the_dockerfile_lints_clean() {
    let Some(out) = run_tool("hadolint", &["Dockerfile"]) else {
        return;
    };
    assert!(
        out.status.success(),
        "hadolint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Dockerfile's ENTRYPOINT and CMD, as the image runs them.
fn image_command_line() -> Vec<String> {
    let dockerfile = std::fs::read_to_string(repository().join("Dockerfile")).expect("Dockerfile");
    let json_array = |instruction: &str| -> Vec<String> {
        let line = dockerfile
            .lines()
            .find(|l| l.starts_with(instruction))
            .unwrap_or_else(|| panic!("no {instruction} in the Dockerfile"));
        serde_json::from_str(line[instruction.len()..].trim()).expect("an exec-form array")
    };
    let mut command = json_array("ENTRYPOINT");
    command.extend(json_array("CMD"));
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_command_line_and_default_config_serve_a_master() {
    let command = image_command_line();
    assert_eq!(command[0], "/usr/local/bin/mupdate");
    assert_eq!(&command[1..], ["-C", "/etc/mupdate/imapd.conf", "-m"]);
    // The image copies docker/imapd.conf to /etc/mupdate/imapd.conf; paths that only exist
    // in the image are redirected the way a deployment overrides options.
    let dir = tempfile::tempdir().unwrap();
    write_passwd(dir.path());
    let configdirectory = dir.path().display().to_string();
    let passwd = dir.path().join("passwd").display().to_string();
    let server = ServerProcess::start(
        &repository().join("docker/imapd.conf"),
        &command[3..].iter().map(String::as_str).collect::<Vec<_>>(),
        &[
            ("IMAPD_CONFIGDIRECTORY", configdirectory.as_str()),
            ("IMAPD_MUPDATE_PASSWD_FILE", passwd.as_str()),
            ("IMAPD_MUPDATE_LISTEN", "127.0.0.1:0"),
            ("IMAPD_MUPDATE_HTTP_LISTEN", "127.0.0.1:0"),
        ],
    );
    let mut client = logged_in(server.addr).await;
    client
        .exchange(
            b"A1 ACTIVATE \"user.image\" \"be1!default\" \"\"\r\n",
            b"A1 OK \"done\"\r\n",
        )
        .await;
    let log = server.stderr.lock().map(|l| l.clone()).unwrap_or_default();
    assert!(log.lines().all(|l| l.starts_with('{')), "JSON logs: {log}");
}

#[test]
fn the_helm_chart_lints_renders_and_validates() {
    let importable = Command::new("python3")
        .args(["-c", "import helm_python"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !importable {
        assert!(
            std::env::var("CI").is_err(),
            "helm-python-sdk is missing: scripts/install-test-deps.sh installs it"
        );
        skipped(
            "Helm chart check: helm-python-sdk not installed (run scripts/install-test-deps.sh)",
        );
        return;
    }
    let Some(out) = run_tool("python3", &["scripts/check-chart.py"]) else {
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok default values"), "{stdout}");
    assert!(stdout.contains("ok tls-servicemonitor-3.yaml"), "{stdout}");
}
