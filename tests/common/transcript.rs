//! MUPDATE conversations written as data: `tests/transcripts/<file>.txt`, one section per test,
//! played against a fresh in-process master over real TCP.
//!
//! A section starts with `## <test name>`. Its lines:
//! - `config <imapd.conf line>`: added to the server's configuration (before any connection);
//! - `client <c>` / `admin <c>`: a new connection named `c`, its banner read (and, for `admin`,
//!   logged in); a name used again replaces the connection it had;
//! - `<c>> bytes`: sent; `<c>< bytes`: the next bytes the server sends on it, exactly;
//! - `<c> ok <request>`: sent, answered `<tag> OK "done"`;
//! - `<c> quiet`: nothing more was sent before a NOOP's answer;
//! - `<c> eof`: the server closes after the bytes expected so far;
//! - `<c> closes`: like `eof`, for a server that drops the connection with input unread (D-6);
//! - `<c> drop`: the client hangs up (after the bytes expected so far);
//! - `restart`: every connection dropped, the server stopped and started again on its files.
//!
//! One space after `>` or `<` separates; the bytes end with CRLF unless they end in `\z`;
//! escapes are `\r \n \t \0 \\ \xHH` and `\{N*c}` (the byte `c`, N times); `${B64_ADMIN}`,
//! `${B64_BOB}` and `${B64_BAD}` stand for the fixture's credentials.
//! Lines starting with `#` (one) are comments.

use std::collections::HashMap;
use std::path::Path;

use super::{B64_ADMIN, B64_BAD, B64_BOB, Client, TestServer};

/// The test names of `file`'s sections, in order.
pub fn sections(file: &str) -> Vec<String> {
    read(file)
        .lines()
        .filter_map(|line| line.strip_prefix("## "))
        .map(|name| name.trim().to_owned())
        .collect()
}

/// Plays the section `name` of `tests/transcripts/<file>.txt`.
pub async fn play(file: &str, name: &str) {
    let text = read(file);
    let body = section(&text, name).unwrap_or_else(|| panic!("no section {name} in {file}"));
    let mut config = String::new();
    let mut server: Option<TestServer> = None;
    let mut clients: HashMap<String, Client> = HashMap::new();
    // Consecutive `<` lines of one connection are awaited together, when its next step comes.
    let mut awaited: Option<(String, Vec<u8>)> = None;
    for (number, line) in body {
        let at = format!("{file}.txt line {number}: {line}");
        if let Some(extra) = line.strip_prefix("config ") {
            assert!(server.is_none(), "{at}: config after a connection");
            config.push_str(extra);
            config.push('\n');
            continue;
        }
        if line == "restart" {
            let running = server
                .take()
                .unwrap_or_else(|| panic!("{at}: no server yet"));
            if let Some((owner, expected)) = awaited.take() {
                connection(&mut clients, &owner).expect(&expected).await;
            }
            clients.clear();
            server = Some(TestServer::start_in(running.stop().await, &config).await);
            continue;
        }
        let (who, action) = split_action(line).unwrap_or_else(|| panic!("{at}: not understood"));
        let expected = match awaited.take() {
            Some((owner, expected)) if owner == who => expected,
            Some((owner, expected)) => {
                connection(&mut clients, &owner).expect(&expected).await;
                Vec::new()
            }
            None => Vec::new(),
        };
        if let Some(more) = action.strip_prefix('<') {
            let mut expected = expected;
            expected.extend(bytes(more.strip_prefix(' ').unwrap_or(more)));
            awaited = Some((who.to_owned(), expected));
            continue;
        }
        if who == "client" || who == "admin" {
            let server = match &server {
                Some(server) => server,
                None => server.insert(TestServer::start(&config).await),
            };
            let client = if who == "admin" {
                server.admin().await
            } else {
                server.client().await
            };
            clients.insert(action.trim().to_owned(), client);
            continue;
        }
        let client = connection(&mut clients, who);
        match action {
            "eof" => client.expect_eof(&expected).await,
            "closes" => client.expect_close_after(&expected).await,
            _ => client.expect(&expected).await,
        }
        if action == "drop" {
            clients.remove(who);
            continue;
        }
        match action {
            "eof" | "closes" => {}
            "quiet" => client.expect_quiet().await,
            _ if action.starts_with('>') => {
                let sent = &action[1..];
                client
                    .send(&bytes(sent.strip_prefix(' ').unwrap_or(sent)))
                    .await
            }
            _ if action.starts_with(" ok ") => client.done(&bytes(&action[4..])).await,
            _ => panic!("{at}: not understood"),
        }
    }
    if let Some((owner, expected)) = awaited {
        connection(&mut clients, &owner).expect(&expected).await;
    }
}

fn connection<'a>(clients: &'a mut HashMap<String, Client>, name: &str) -> &'a mut Client {
    clients
        .get_mut(name)
        .unwrap_or_else(|| panic!("no connection {name}"))
}

fn read(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/transcripts")
        .join(format!("{file}.txt"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The numbered lines of one section, without comments and blank lines.
fn section<'a>(text: &'a str, name: &str) -> Option<Vec<(usize, &'a str)>> {
    let mut lines = text.lines().enumerate();
    lines.find(|(_, line)| line.strip_prefix("## ").map(str::trim) == Some(name))?;
    Some(
        lines
            .take_while(|(_, line)| !line.starts_with("## "))
            .filter(|(_, line)| !line.trim().is_empty() && !line.starts_with('#'))
            .map(|(index, line)| (index + 1, line))
            .collect(),
    )
}

/// `client c` → ("client", " c"); `c> X` → ("c", "> X"); `c quiet` → ("c", "quiet").
fn split_action(line: &str) -> Option<(&str, &str)> {
    let end = line.find(|c: char| !c.is_ascii_alphanumeric() && c != '_')?;
    let (who, rest) = line.split_at(end);
    if who.is_empty() {
        return None;
    }
    Some(match rest.strip_prefix(' ') {
        Some(word) if !word.starts_with("ok ") && who != "client" && who != "admin" => (who, word),
        _ => (who, rest),
    })
}

/// The bytes a transcript line stands for.
pub fn bytes(text: &str) -> Vec<u8> {
    let text = text
        .replace("${B64_ADMIN}", B64_ADMIN)
        .replace("${B64_BOB}", B64_BOB)
        .replace("${B64_BAD}", B64_BAD);
    let (text, line_end) = match text.strip_suffix("\\z") {
        Some(open) => (open, false),
        None => (text.as_str(), true),
    };
    let mut out = Vec::with_capacity(text.len() + 2);
    let mut rest = text.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        rest = tail;
        if byte != b'\\' {
            out.push(byte);
            continue;
        }
        let (&escape, tail) = rest.split_first().expect("a backslash ends the line");
        rest = tail;
        out.push(match escape {
            b'r' => b'\r',
            b'n' => b'\n',
            b't' => b'\t',
            b'0' => 0,
            b'\\' => b'\\',
            b'{' => {
                // `\{N*c}`: the byte `c`, N times.
                let close = rest
                    .iter()
                    .position(|&b| b == b'}')
                    .expect("a closing brace");
                let spec = std::str::from_utf8(&rest[..close]).expect("a repetition");
                let (count, repeated) = spec.split_once('*').expect("`count*byte`");
                let count: usize = count.parse().expect("a count");
                out.extend(std::iter::repeat_n(repeated.as_bytes()[0], count));
                rest = &rest[close + 1..];
                continue;
            }
            b'x' => {
                let hex = std::str::from_utf8(&rest[..2]).expect("two hex digits");
                rest = &rest[2..];
                u8::from_str_radix(hex, 16).expect("two hex digits")
            }
            other => panic!("unknown escape \\{}", other as char),
        });
    }
    if line_end {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One `#[tokio::test]` per named section of `tests/transcripts/<file>.txt`, and one more
/// that checks every section of the file has its test.
#[macro_export]
macro_rules! transcripts {
    ($file:literal: $($name:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                common::transcript::play($file, stringify!($name)).await;
            }
        )+

        #[test]
        fn every_transcript_section_has_its_test() {
            let named: Vec<&str> = vec![$(stringify!($name)),+];
            assert_eq!(common::transcript::sections($file), named);
        }
    };
}
