//! Interoperability with a real Cyrus 3.6.1 murder (issue 3), each scenario a story on the
//! shared Cyrus fixture (`tests/common/cyrus.rs`). Skipped with a message where Cyrus is not
//! installed or the test is not root; under `CI=true` that is a failure.

mod common;

use std::time::{Duration, Instant};

use common::cyrus::{self, Cyrus, Service};
use common::*;

/// Sends every command in one go and waits for the answer of the last one.
async fn pipeline(client: &mut Client, commands: &[String]) -> Vec<u8> {
    let mut wire = Vec::new();
    for command in commands {
        wire.extend_from_slice(command.as_bytes());
    }
    client.send(&wire).await;
    let last_tag = commands
        .last()
        .and_then(|c| c.split(' ').next())
        .expect("a command");
    let mut answers = Vec::new();
    loop {
        let line = client.read_until(b"\r\n").await;
        let done = line.starts_with(format!("{last_tag} OK ").as_bytes())
            || line.starts_with(format!("{last_tag} NO ").as_bytes())
            || line.starts_with(format!("{last_tag} BAD ").as_bytes());
        answers.extend_from_slice(&line);
        if done {
            return answers;
        }
    }
}

/// The LIST answer of a server, with its tag.
async fn list(client: &mut Client) -> Vec<u8> {
    client.send(b"L LIST\r\n").await;
    client.read_until(b"L OK \"list complete\"\r\n").await
}

/// Mailbox names of the kinds a murder holds: hierarchy, `-`, `_`, domains, shared.
fn murder_names(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| match i % 6 {
            0 => format!("user.u{i}"),
            1 => format!("user.u{}.Sent", i - 1),
            2 => format!("user.u-{i}"),
            3 => format!("user.u_{i}.Trash"),
            4 => format!("example.com!user.d{i}"),
            _ => format!("shared.folder-{i}.sub_{}", i % 7),
        })
        .collect()
}

fn writes(names: &[String], round: usize) -> Vec<String> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let backend = format!("be{}", i % 3 + 1);
            match (i + round) % 10 {
                0 => format!("R{i} RESERVE \"{name}\" \"{backend}!default\"\r\n"),
                1 => format!("D{i} DEACTIVATE \"{name}\" \"{backend}!moving\"\r\n"),
                2 if round > 0 => format!("X{i} DELETE \"{name}\"\r\n"),
                _ => format!(
                    "A{i} ACTIVATE \"{name}\" \"{backend}!default\" \"u{i}\tlrswipkxtecdan\tanyone\tlrs\t\"\r\n"
                ),
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario1_cyrus_slave_follows_our_master() {
    if !cyrus::available("scenario1_cyrus_slave_follows_our_master") {
        return;
    }
    let master = TestServer::start("").await;
    let mut writer = master.admin().await;
    let names = murder_names(3_000);
    // Everything active first, then a second pass that reserves and deactivates some.
    let all_active: Vec<String> = writes(&names, 2);
    pipeline(&mut writer, &all_active).await;
    pipeline(&mut writer, &writes(&names, 1)).await;
    let ours = list(&mut writer).await;

    let started = Instant::now();
    let master_addr = master.addr.to_string();
    let slave = tokio::task::spawn_blocking(move || {
        Cyrus::start(
            Service::MupdateSlave {
                master: &master_addr,
                retry_delay: 2,
            },
            "mupdate-slave",
            "",
        )
    })
    .await
    .expect("start the Cyrus slave");
    eprintln!("Cyrus slave synchronised in {:?}", started.elapsed());

    let mut reader = Client::connect(slave.addr).await;
    reader.read_banner().await;
    reader.exchange(AUTH, b"A0 OK \"Authenticated\"\r\n").await;
    let theirs = list(&mut reader).await;
    assert_eq!(
        theirs.len(),
        ours.len(),
        "the Cyrus slave's LIST differs in size from ours"
    );
    assert!(theirs == ours, "the Cyrus slave's LIST differs from ours");

    // Its mailboxes.db holds exactly our records, as Cyrus stores them.
    let dump = slave.tool("ctl_mboxlist", &["-d"]);
    let dumped: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&dump.stdout).expect("ctl_mboxlist -d prints JSON");
    let records = parse_records(&ours);
    assert_eq!(
        dumped.len(),
        records.len(),
        "ctl_mboxlist -d on the Cyrus slave"
    );
    for record in &records {
        let entry = &dumped[&record.name];
        let (server, partition) = record.location.split_once('!').expect("server!partition");
        assert_eq!(
            entry["mbtype"],
            if record.active { "er" } else { "erz" },
            "{record:?}"
        );
        assert_eq!(entry["server"], server, "{record:?}");
        assert_eq!(entry["partition"], partition, "{record:?}");
        let mut theirs: Vec<(String, String)> = entry["acl"]
            .as_object()
            .expect("acl")
            .iter()
            .map(|(id, rights)| (id.clone(), rights.as_str().unwrap_or_default().to_owned()))
            .collect();
        let mut ours = acl_pairs(&record.acl);
        theirs.sort();
        ours.sort();
        assert_eq!(theirs, ours, "{record:?}");
    }

    // Changes made while the slave is connected reach it too, including deletes.
    pipeline(&mut writer, &writes(&names, 3)).await;
    let ours = list(&mut writer).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // A NOOP on the slave makes it check with its master first (a barrier).
        reader
            .exchange(b"N NOOP\r\n", b"N OK \"Noop done\"\r\n")
            .await;
        let theirs = list(&mut reader).await;
        if theirs == ours {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the Cyrus slave did not converge: {} bytes vs our {}",
            theirs.len(),
            ours.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for name in [
        "user.u0",
        "example.com!user.d4",
        "user.u-2",
        "shared.folder-5.sub_5",
    ] {
        let request = format!("F FIND \"{name}\"\r\n");
        writer.send(request.as_bytes()).await;
        let expected = writer.read_until(b"F OK \"Search completed\"\r\n").await;
        reader.exchange(request.as_bytes(), &expected).await;
    }
}

/// `id TAB rights TAB` pairs of a Cyrus ACL.
fn acl_pairs(acl: &str) -> Vec<(String, String)> {
    let fields: Vec<&str> = acl.split('\t').collect();
    fields
        .chunks(2)
        .filter(|pair| pair.len() == 2)
        .map(|pair| (pair[0].to_owned(), pair[1].to_owned()))
        .collect()
}
