//! mupdate-load: drives any MUPDATE server (ours or Cyrus's) over TCP and prints one JSON
//! line per run: throughput and latency of ACTIVATE or FIND, the time of a full UPDATE dump,
//! or a process's resident memory.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use clap::{Parser, Subcommand};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

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

#[derive(Subcommand)]
enum Run {
    /// Durable writes: ACTIVATE `count` new mailboxes over `conns` connections.
    Activate {
        #[arg(long, default_value_t = 1)]
        conns: usize,
        #[arg(long, default_value_t = 20_000)]
        count: usize,
        /// Name prefix; names are `<prefix><n>`.
        #[arg(long)]
        prefix: String,
        /// First n.
        #[arg(long, default_value_t = 0)]
        start: usize,
    },
    /// FIND random existing mailboxes `<prefix><n>` with n below `existing`.
    Find {
        #[arg(long, default_value_t = 1)]
        conns: usize,
        #[arg(long, default_value_t = 20_000)]
        count: usize,
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        existing: usize,
    },
    /// Full UPDATE dump to a new client, until `OK "streaming starts"`.
    Dump {
        #[arg(long, default_value_t = 3)]
        repeat: usize,
    },
    /// Resident memory of a process (and its children) in KiB.
    Rss {
        #[arg(long)]
        pid: u32,
    },
}

struct Conn {
    read: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
    line: Vec<u8>,
}

impl Conn {
    async fn open(cli: &Cli) -> Result<Conn> {
        let stream = TcpStream::connect(&cli.addr)
            .await
            .with_context(|| format!("connect {}", cli.addr))?;
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        let mut conn = Conn {
            read: BufReader::with_capacity(256 * 1024, read),
            write,
            line: Vec::with_capacity(256),
        };
        loop {
            let line = conn.next_line().await?;
            if line.starts_with(b"* OK") {
                break;
            }
        }
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("\0{}\0{}", cli.user, cli.password));
        conn.write
            .write_all(
                format!(
                    "A01 AUTHENTICATE \"PLAIN\" {{{}+}}\r\n{token}\r\n",
                    token.len()
                )
                .as_bytes(),
            )
            .await?;
        let answer = conn.next_line().await?.to_vec();
        if !answer.starts_with(b"A01 OK") {
            bail!("login failed: {}", String::from_utf8_lossy(&answer));
        }
        Ok(conn)
    }

    async fn next_line(&mut self) -> Result<&[u8]> {
        self.line.clear();
        let n = self.read.read_until(b'\n', &mut self.line).await?;
        if n == 0 {
            bail!("server closed the connection");
        }
        Ok(&self.line)
    }

    /// Sends `request` and reads until the completion line of `tag`; returns whether OK.
    async fn command(&mut self, tag: &str, request: &[u8]) -> Result<bool> {
        self.write.write_all(request).await?;
        let ok = format!("{tag} OK ");
        let no = format!("{tag} NO ");
        let bad = format!("{tag} BAD ");
        loop {
            let line = self.next_line().await?;
            if line.starts_with(ok.as_bytes()) {
                return Ok(true);
            }
            if line.starts_with(no.as_bytes()) || line.starts_with(bad.as_bytes()) {
                return Ok(false);
            }
        }
    }
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
    make: impl Fn(usize, usize) -> (String, Vec<u8>) + Clone + Send + 'static,
) -> Result<()> {
    let mut connections = Vec::new();
    for _ in 0..conns {
        connections.push(Conn::open(cli).await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (c, mut conn) in connections.into_iter().enumerate() {
        let make = make.clone();
        let share: Vec<usize> = (0..count).filter(|i| i % conns == c).collect();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(share.len());
            let mut failures = 0usize;
            for i in share {
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
    let mut latencies = Vec::with_capacity(count);
    let mut failures = 0;
    for task in tasks {
        let (l, f) = task.await??;
        latencies.extend(l);
        failures += f;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    println!(
        "{{\"ops\":{count},\"conns\":{conns},\"seconds\":{elapsed:.3},\"ops_per_s\":{:.0},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"failures\":{failures}}}",
        count as f64 / elapsed,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
    );
    Ok(())
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let own = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    Ok(own)
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match &cli.run {
        Run::Activate {
            conns,
            count,
            prefix,
            start,
        } => {
            let (prefix, start) = (prefix.clone(), *start);
            closed_loop(&cli, *conns, *count, move |_, i| {
                let tag = format!("X{i}");
                let request = format!(
                    "{tag} ACTIVATE \"{prefix}{:09}\" \"backend1!default\" \"owner\tlrswipkxtecda\t\"\r\n",
                    start + i
                );
                (tag, request.into_bytes())
            })
            .await
        }
        Run::Find {
            conns,
            count,
            prefix,
            existing,
        } => {
            let (prefix, existing) = (prefix.clone(), (*existing).max(1));
            closed_loop(&cli, *conns, *count, move |c, i| {
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
                let mut conn = Conn::open(&cli).await?;
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
        Run::Rss { pid } => {
            println!("{{\"rss_kib\":{}}}", rss_kib(*pid)?);
            Ok(())
        }
    }
}
