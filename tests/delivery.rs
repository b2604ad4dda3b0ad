//! Delivery artefacts (issue 7): the Dockerfile lints clean, the image's entrypoint with
//! its default configuration serves a master, the Helm chart lints and validates, and the
//! StatefulSet it renders, run as local processes, forms a master and its slaves.

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
        .done(b"A1 ACTIVATE \"user.image\" \"be1!default\" \"\"\r\n")
        .await;
    let log = server.stderr.lock().map(|l| l.clone()).unwrap_or_default();
    assert!(log.lines().all(|l| l.starts_with('{')), "JSON logs: {log}");
}

/// Whether scripts/check-chart.py can run (helm-python-sdk installed); a failure under CI.
fn chart_tools_available() -> bool {
    let importable = Command::new("python3")
        .args(["-c", "import helm_python, yaml"])
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
    }
    importable
}

#[test]
fn the_helm_chart_lints_renders_and_validates() {
    if !chart_tools_available() {
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
    assert_contains(&stdout, "ok default values");
    // The ServiceMonitor and the PrometheusRule (its rules through promtool).
    assert_contains(
        &stdout,
        "ok tls-servicemonitor-3.yaml: lint clean, 6 manifests valid, 2 custom",
    );
}

/// The manifests the chart renders with `values` (JSON), for release `mupdate` in
/// namespace `mail`.
fn render_chart(values: &str) -> Option<Vec<serde_json::Value>> {
    if !chart_tools_available() {
        return None;
    }
    let out = run_tool("python3", &["scripts/check-chart.py", "render", values])?;
    assert!(
        out.status.success(),
        "render: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("rendered manifests as JSON"))
}

fn text(value: &serde_json::Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("a string: {value}"))
}

fn items(value: &serde_json::Value) -> &[serde_json::Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// The Secrets the chart expects to exist (`auth.existingSecret`, `tls.secretName`), as an
/// operator would create them: secret name → key → contents.
type Secrets = std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>;

fn secrets(tls: &Pki) -> Secrets {
    let secret = |entries: &[(&str, &str)]| {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    Secrets::from([
        (
            "mupdate-auth".to_owned(),
            secret(&[
                ("passwd", "mupdate:{PLAIN}mupdatepass\n"),
                ("mupdate-password", "mupdatepass"),
            ]),
        ),
        (
            "mupdate-tls".to_owned(),
            secret(&[
                ("tls.crt", &tls.cert_pem),
                ("tls.key", &tls.key_pem),
                ("ca.crt", &tls.ca_pem),
            ]),
        ),
    ])
}

fn secret_value<'a>(secrets: &'a Secrets, name: &str, key: &str) -> &'a str {
    secrets
        .get(name)
        .and_then(|secret| secret.get(key))
        .unwrap_or_else(|| panic!("the chart asks for secret {name} key {key}"))
}

/// Runs pod `ordinal` of the rendered `statefulset` as a local process: its volumes are
/// directories under `root` holding what Kubernetes would mount, its address is
/// 127.0.0.<ordinal+1>, and `renames` (pod DNS names and container ports to loopback
/// equivalents) apply to its command line, environment and imapd.conf. The command line and
/// environment are otherwise the chart's own.
fn run_pod(
    statefulset: &serde_json::Value,
    configmap: &serde_json::Value,
    ordinal: u64,
    renames: &[(String, String)],
    secrets: &Secrets,
    root: &Path,
) -> ServerProcess {
    let pod = &statefulset["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let mut rewrites = renames.to_vec();
    rewrites.push(("0.0.0.0".into(), format!("127.0.0.{}", ordinal + 1)));
    for mount in items(&container["volumeMounts"]) {
        let path = text(&mount["mountPath"]);
        rewrites.push((path.into(), format!("{}{path}", root.display())));
    }
    let local = |value: &str| {
        rewrites.iter().fold(value.to_owned(), |value, (from, to)| {
            value.replace(from, to)
        })
    };
    for mount in items(&container["volumeMounts"]) {
        let target = root.join(text(&mount["mountPath"]).trim_start_matches('/'));
        let name = &mount["name"];
        let volume = items(&pod["volumes"]).iter().find(|v| &v["name"] == name);
        match volume {
            None => {
                assert!(
                    items(&statefulset["spec"]["volumeClaimTemplates"])
                        .iter()
                        .any(|claim| &claim["metadata"]["name"] == name),
                    "volume {name} is neither in the pod nor claimed"
                );
                std::fs::create_dir_all(&target).unwrap();
            }
            Some(volume) if volume["configMap"].is_object() => {
                let key = text(&mount["subPath"]);
                std::fs::create_dir_all(target.parent().unwrap()).unwrap();
                std::fs::write(&target, local(text(&configmap["data"][key]))).unwrap();
            }
            Some(volume) if volume["secret"].is_object() => {
                std::fs::create_dir_all(&target).unwrap();
                let name = text(&volume["secret"]["secretName"]);
                let listed = items(&volume["secret"]["items"]);
                let files: Vec<(&str, &str)> = if listed.is_empty() {
                    let secret = secrets.get(name).expect("a secret the test knows");
                    secret
                        .keys()
                        .map(|key| (key.as_str(), key.as_str()))
                        .collect()
                } else {
                    listed
                        .iter()
                        .map(|item| (text(&item["key"]), text(&item["path"])))
                        .collect()
                };
                for (key, path) in files {
                    std::fs::write(target.join(path), secret_value(secrets, name, key)).unwrap();
                }
            }
            Some(other) => panic!("a volume this test cannot lay out: {other}"),
        }
    }
    let pod_name = format!("{}-{ordinal}", text(&statefulset["metadata"]["name"]));
    let mut env: Vec<(String, String)> = Vec::new();
    for variable in items(&container["env"]) {
        let value = match variable["value"].as_str() {
            // Kubernetes expands $(NAME) of variables defined before this one.
            Some(value) => local(&env.iter().fold(value.to_owned(), |value, (name, set)| {
                value.replace(&format!("$({name})"), set)
            })),
            None if variable["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name" => {
                pod_name.clone()
            }
            None => {
                let reference = &variable["valueFrom"]["secretKeyRef"];
                secret_value(secrets, text(&reference["name"]), text(&reference["key"])).into()
            }
        };
        env.push((text(&variable["name"]).to_owned(), value));
    }
    let command: Vec<String> = items(&container["command"])
        .iter()
        .chain(items(&container["args"]))
        .map(|word| local(text(word)))
        .collect();
    assert_eq!(command[0], "/usr/local/bin/mupdate", "the image's binary");
    ServerProcess::start_with(&command[1..], &env)
}

/// The chart's failover mode, on a real etcd: the three pods elect one master, the master
/// Service selects every pod, and a write sent to a follower (forwarded) reaches all three.
#[cfg(feature = "ha")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendered_statefulset_with_failover_elects_a_master_and_takes_writes_anywhere() {
    let Some(etcd) = common::etcd::Etcd::start() else {
        return;
    };
    let values = r#"{"replicaCount": 3, "ha": {"enabled": true, "etcdEndpoints": ["etcd.infra:2379"], "leaseTTL": 3}}"#;
    let Some(manifests) = render_chart(values) else {
        return;
    };
    let one = |kind: &str| {
        manifests
            .iter()
            .find(|m| m["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} rendered"))
    };
    let (statefulset, configmap) = (one("StatefulSet"), one("ConfigMap"));
    let name = text(&statefulset["metadata"]["name"]);
    let master_service = manifests
        .iter()
        .find(|m| m["kind"] == "Service" && m["metadata"]["name"] == format!("{name}-master"))
        .expect("the master Service");
    assert!(
        master_service["spec"]["selector"]["statefulset.kubernetes.io/pod-name"].is_null(),
        "with failover every pod takes writes: {master_service}"
    );
    let renames = [("etcd.infra:2379".to_owned(), etcd.endpoint.clone())];
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets(&Pki::new(&["127.0.0.1"]));
    let pods = run_pods(statefulset, configmap, &renames, &secrets, dir.path());
    // The first pod started is elected; the others name it.
    let master = pods[0].addr;
    for (ordinal, pod) in pods.iter().enumerate() {
        let mut client = Client::connect(pod.addr).await;
        let banner = String::from_utf8_lossy(&client.read_banner().await).into_owned();
        let role = match ordinal {
            0 => "\"(master)\"".to_owned(),
            _ => format!("\"mupdate://{master}\""),
        };
        assert!(
            banner.ends_with(&format!("{role}\r\n")),
            "pod {ordinal}: {banner}"
        );
    }
    let mut follower = logged_in(pods[2].addr).await;
    follower
        .done(b"A1 ACTIVATE \"user.chart\" \"be1!default\" \"chart\tlrs\t\"\r\n")
        .await;
    for pod in &pods {
        let mut client = logged_in(pod.addr).await;
        client
            .exchange(
                b"F1 FIND \"user.chart\"\r\n",
                b"F1 MAILBOX {10+}\r\nuser.chart {11+}\r\nbe1!default {10+}\r\nchart\tlrs\t\r\nF1 OK \"Search completed\"\r\n",
            )
            .await;
        let (status, body) = http_get(&sidecar_of(pod), "/readyz");
        assert_eq!(status, 200, "ready: {body}");
    }
}

/// Runs the rendered StatefulSet's pods in order (pod 0 first: a slave started before its
/// master would wait out mupdate_retry_delay) as local processes under `dir`: pod j's stable
/// DNS name becomes 127.0.0.<j+1>, each container port one port free here (the same on
/// every pod's address, as in a cluster), and `renames` apply besides.
fn run_pods(
    statefulset: &serde_json::Value,
    configmap: &serde_json::Value,
    renames: &[(String, String)],
    secrets: &Secrets,
    dir: &Path,
) -> Vec<ServerProcess> {
    let name = text(&statefulset["metadata"]["name"]);
    let service = text(&statefulset["spec"]["serviceName"]);
    let replicas = statefulset["spec"]["replicas"].as_u64().expect("replicas");
    let mut renames: Vec<(String, String)> = (0..replicas)
        .map(|j| {
            (
                format!("{name}-{j}.{service}.mail.svc.cluster.local"),
                format!("127.0.0.{}", j + 1),
            )
        })
        .chain(renames.iter().cloned())
        .collect();
    for port in items(&statefulset["spec"]["template"]["spec"]["containers"][0]["ports"]) {
        renames.push((
            format!(":{}", port["containerPort"]),
            format!(":{}", free_port()),
        ));
    }
    (0..replicas)
        .map(|ordinal| {
            let root = dir.join(format!("{name}-{ordinal}"));
            run_pod(statefulset, configmap, ordinal, &renames, secrets, &root)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendered_statefulset_forms_a_master_and_two_slaves() {
    rendered_statefulset_replicates(r#"{"replicaCount": 3}"#, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendered_statefulset_with_tls_replicates_over_verified_starttls() {
    rendered_statefulset_replicates(r#"{"replicaCount": 3, "tls": {"enabled": true}}"#, true).await;
}

/// Renders the chart with `values`, runs its three pods as local processes, and shows pod 0
/// a master whose writes reach the two others, its slaves (linked over STARTTLS if `tls`).
async fn rendered_statefulset_replicates(values: &str, tls: bool) {
    let Some(manifests) = render_chart(values) else {
        return;
    };
    let one = |kind: &str| -> &serde_json::Value {
        let mut found = manifests.iter().filter(|m| m["kind"] == kind);
        let first = found.next().unwrap_or_else(|| panic!("no {kind} rendered"));
        assert!(found.next().is_none(), "one {kind}");
        first
    };
    let statefulset = one("StatefulSet");
    let configmap = one("ConfigMap");
    let name = text(&statefulset["metadata"]["name"]);
    let replicas = statefulset["spec"]["replicas"].as_u64().expect("replicas");
    assert_eq!(replicas, 3);
    let master_service = manifests
        .iter()
        .find(|m| m["kind"] == "Service" && m["metadata"]["name"] == format!("{name}-master"))
        .expect("the master Service");
    assert_eq!(
        master_service["spec"]["selector"]["statefulset.kubernetes.io/pod-name"],
        format!("{name}-0"),
        "the master Service must send writes to the pod that -a makes master"
    );

    // The certificate names what pods' DNS names become here.
    let secrets = secrets(&Pki::new(&["127.0.0.1", "127.0.0.2", "127.0.0.3"]));
    let dir = tempfile::tempdir().unwrap();
    let pods = run_pods(statefulset, configmap, &[], &secrets, dir.path());

    let master_address = pods[0].addr;
    for (ordinal, pod) in pods.iter().enumerate() {
        assert_eq!(
            pod.addr.ip().to_string(),
            format!("127.0.0.{}", ordinal + 1)
        );
        let mut client = Client::connect(pod.addr).await;
        let banner = String::from_utf8_lossy(&client.read_banner().await).into_owned();
        let role = if ordinal == 0 {
            "\"(master)\"".to_owned()
        } else {
            format!("\"mupdate://{master_address}\"")
        };
        assert!(
            banner.ends_with(&format!("{role}\r\n")),
            "pod {ordinal}: {banner}"
        );
        let (status, body) = http_get(&sidecar_of(pod), "/readyz");
        assert_eq!(status, 200, "pod {ordinal} ready: {body}");
        if ordinal > 0 {
            let log = pod.stderr.lock().map(|l| l.clone()).unwrap_or_default();
            let linked = log
                .lines()
                .find(|l| l.contains("successful mupdate connection to the master"))
                .unwrap_or_else(|| panic!("pod {ordinal} linked: {log}"));
            assert!(linked.contains(&format!("\"tls\":{tls}")), "{linked}");
        }
    }

    let mut master = logged_in(master_address).await;
    master
        .done(b"A1 ACTIVATE \"user.chart\" \"be1!default\" \"chart\tlrs\t\"\r\n")
        .await;
    for pod in &pods[1..] {
        let mut slave = logged_in(pod.addr).await;
        converge(&mut slave, &mut master).await;
        slave
            .exchange(
                b"F1 FIND \"user.chart\"\r\n",
                b"F1 MAILBOX {10+}\r\nuser.chart {11+}\r\nbe1!default {10+}\r\nchart\tlrs\t\r\nF1 OK \"Search completed\"\r\n",
            )
            .await;
    }
}
