//! Slave-like UPDATE streams: each logs in, asks for the whole list (XUPDATE where the server
//! knows it, else UPDATE, as our slave does), keeps a view of every mailbox of the ledger,
//! times every change it is sent, and reconnects and resumes when the server goes away.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use hdrhistogram::Histogram;
use mupdate::mailbox::MailboxWrite;
use mupdate::protocol::reply::{Reply, parse_reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::conn::Target;
use crate::ledger::Ledger;

/// Microsecond latencies from 1 µs to 10 minutes, 3 significant figures.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| Histogram::new(3).unwrap())
}

/// What one listener has seen, shared with the scenario that checks it.
pub struct ListenerState {
    /// By mailbox: the operation whose record was last received + 1 (0: absent).
    view: Vec<AtomicU32>,
    /// Writer's OK → this listener, per change (0 when the change came first).
    pub since_ok: Mutex<Histogram<u64>>,
    /// Writer's send → this listener, per change.
    pub since_send: Mutex<Histogram<u64>>,
    /// When the last notice arrived (`Ledger::now()`).
    pub last_notice: AtomicU64,
    /// Streams begun (the first, then one per resume).
    pub streams: AtomicU32,
    /// Resumes the server answered with only the missed changes (`* XDUMP "delta"`).
    pub delta_resumes: AtomicU32,
    /// Resumes that got the whole list again.
    pub full_resumes: AtomicU32,
    /// Records received in catch-ups (dumps and deltas).
    pub catchup_records: AtomicU64,
    /// Whether the stream is live now (after `OK "streaming starts"`).
    pub streaming: AtomicBool,
    /// The last error that broke the stream.
    pub error: Mutex<Option<String>>,
}

impl ListenerState {
    fn new(capacity: usize) -> ListenerState {
        ListenerState {
            view: (0..capacity).map(|_| AtomicU32::new(0)).collect(),
            since_ok: Mutex::new(histogram()),
            since_send: Mutex::new(histogram()),
            last_notice: AtomicU64::new(0),
            streams: AtomicU32::new(0),
            delta_resumes: AtomicU32::new(0),
            full_resumes: AtomicU32::new(0),
            catchup_records: AtomicU64::new(0),
            streaming: AtomicBool::new(false),
            error: Mutex::new(None),
        }
    }

    /// Mailboxes whose record here differs from the server's, by the ledger (the first
    /// `issued` operations' mailboxes).
    pub fn mismatches(&self, ledger: &Ledger, issued: usize) -> usize {
        (0..issued as u32)
            .filter(|&base| {
                let seen = self.view[base as usize].load(Ordering::Acquire);
                let seen = (seen > 0)
                    .then(|| seen - 1)
                    .filter(|&op| !ledger.is_delete(op));
                seen != ledger.truth(base)
            })
            .count()
    }

    fn forget_all(&self) {
        for slot in &self.view {
            slot.store(0, Ordering::Relaxed);
        }
    }
}

/// How a listener behaves.
#[derive(Clone)]
pub struct ListenerOptions {
    /// Longest random wait before reconnecting after a lost stream.
    pub reconnect_jitter: Duration,
}

/// A running listener.
pub struct Listener {
    /// What it has seen.
    pub state: Arc<ListenerState>,
    task: tokio::task::JoinHandle<()>,
}

impl Listener {
    /// Starts a listener that streams until `stop`.
    pub fn start(
        target: Target,
        ledger: Arc<Ledger>,
        options: ListenerOptions,
        stop: CancellationToken,
    ) -> Listener {
        let state = Arc::new(ListenerState::new(ledger.capacity()));
        let task = tokio::spawn(run(target, ledger, state.clone(), options, stop));
        Listener { state, task }
    }

    /// Waits for the task to end (after `stop`).
    pub async fn join(self) -> Arc<ListenerState> {
        let _ = self.task.await;
        self.state
    }
}

/// Where an XUPDATE stream stands, to resume from.
type Position = Option<(String, String)>;

async fn run(
    target: Target,
    ledger: Arc<Ledger>,
    state: Arc<ListenerState>,
    options: ListenerOptions,
    stop: CancellationToken,
) {
    let mut position: Position = None;
    let mut xupdate = true;
    loop {
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            outcome = stream(&target, &ledger, &state, &mut position, &mut xupdate) => outcome,
        };
        state.streaming.store(false, Ordering::Release);
        if let Err(error) = outcome
            && let Ok(mut slot) = state.error.lock()
        {
            *slot = Some(error.to_string());
        }
        let wait = options
            .reconnect_jitter
            .mul_f64(rand::random::<f64>())
            .max(Duration::from_millis(5));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// The PLAIN login line of `target`.
pub fn login_line(target: &Target) -> Vec<u8> {
    format!("L0 AUTHENTICATE \"PLAIN\" \"{}\"\r\n", target.plain_token()).into_bytes()
}

struct Reader {
    stream: TcpStream,
    buffer: Vec<u8>,
    start: usize,
}

impl Reader {
    async fn next(&mut self) -> Result<Reply> {
        loop {
            if let Some((reply, used)) = parse_reply(&self.buffer[self.start..], 1 << 20)? {
                self.start += used;
                return Ok(reply);
            }
            if self.start > 0 {
                self.buffer.drain(..self.start);
                self.start = 0;
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("the server closed the stream");
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }
}

/// One connection: login, (X)UPDATE, catch-up, then live changes until it breaks.
async fn stream(
    target: &Target,
    ledger: &Ledger,
    state: &ListenerState,
    position: &mut Position,
    xupdate: &mut bool,
) -> Result<()> {
    let stream = TcpStream::connect(&target.addr).await?;
    stream.set_nodelay(true)?;
    let mut reader = Reader {
        stream,
        buffer: Vec::with_capacity(16 * 1024),
        start: 0,
    };
    reader.stream.write_all(&login_line(target)).await?;
    loop {
        match reader.next().await? {
            Reply::Line { tag, word, rest } if tag == b"L0" => {
                if word != b"OK" {
                    bail!("login refused: {}", String::from_utf8_lossy(&rest));
                }
                break;
            }
            _ => {}
        }
    }
    let resuming = state.streams.load(Ordering::Relaxed) > 0;
    let request = match (&*xupdate, &*position) {
        (true, Some((epoch, seq))) => format!("L1 XUPDATE \"{epoch}\" \"{seq}\"\r\n"),
        (true, None) => "L1 XUPDATE\r\n".to_owned(),
        (false, _) => "L1 UPDATE\r\n".to_owned(),
    };
    reader.stream.write_all(request.as_bytes()).await?;
    // Until the server says which, a catch-up is a whole list.
    let mut delta = false;
    let mut forgotten = false;
    let mut records = 0u64;
    loop {
        match reader.next().await? {
            Reply::Line { tag, word, .. } if tag == b"L1" && word == b"BAD" && *xupdate => {
                // A server without XUPDATE (Cyrus): plain UPDATE from now on.
                *xupdate = false;
                reader.stream.write_all(b"L1 UPDATE\r\n").await?;
            }
            Reply::Line { tag, word, rest } if tag == b"L1" => {
                if word != b"OK" {
                    bail!("UPDATE refused: {}", String::from_utf8_lossy(&rest));
                }
                break;
            }
            Reply::Line { tag, word, rest } if tag == b"*" && word == b"XDUMP" => {
                delta = rest.as_slice() == b"\"delta\"";
            }
            Reply::Line { tag, word, rest } if tag == b"*" && word == b"XSEQ" => {
                *position = parse_position(&rest);
            }
            Reply::Line { .. } => {}
            record => {
                if !delta && !forgotten {
                    // A whole list replaces the view: what it lacks is gone.
                    state.forget_all();
                    forgotten = true;
                }
                records += 1;
                apply(ledger, state, &record, false);
            }
        }
    }
    if !delta && !forgotten {
        state.forget_all();
    }
    state.catchup_records.fetch_add(records, Ordering::Relaxed);
    if resuming {
        if delta {
            state.delta_resumes.fetch_add(1, Ordering::Relaxed);
        } else {
            state.full_resumes.fetch_add(1, Ordering::Relaxed);
        }
    }
    state.streams.fetch_add(1, Ordering::Relaxed);
    state.streaming.store(true, Ordering::Release);
    loop {
        match reader.next().await? {
            Reply::Line { tag, word, rest } if tag == b"*" && word == b"XSEQ" => {
                *position = parse_position(&rest);
            }
            Reply::Line { tag, word, rest } if tag == b"*" && word == b"BYE" => {
                bail!("server said BYE {}", String::from_utf8_lossy(&rest));
            }
            Reply::Line { .. } => {}
            record => apply(ledger, state, &record, true),
        }
    }
}

/// `"epoch" "seq" ...` → the two numbers as sent.
fn parse_position(rest: &[u8]) -> Position {
    let text = String::from_utf8_lossy(rest);
    let mut fields = text.split('"').skip(1).step_by(2);
    Some((fields.next()?.to_owned(), fields.next()?.to_owned()))
}

/// Applies a record to the view; a live change (`timed`) seen for the first time is timed.
fn apply(ledger: &Ledger, state: &ListenerState, record: &Reply, timed: bool) {
    let (name, op) = match record {
        // A DELETE gives no location.
        Reply::Record(write) => (
            write.name(),
            write.location().and_then(|l| ledger.op_of_location(l)),
        ),
        Reply::Line { .. } => return,
    };
    let Some(base) = ledger.base_of_name(name) else {
        return;
    };
    let op = match (record, op) {
        (Reply::Record(MailboxWrite::Delete { .. }), _) => ledger.delete_of(base),
        (_, op) => op,
    };
    let Some(op) = op else {
        return;
    };
    let previous = state.view[base as usize].swap(op + 1, Ordering::AcqRel);
    if !timed || previous == op + 1 {
        return;
    }
    let now = ledger.now();
    state.last_notice.fetch_max(now, Ordering::Relaxed);
    let (sent, acked) = ledger.times(op);
    let micros = |from: u64| now.saturating_sub(from) / 1_000;
    if sent > 0
        && let Ok(mut h) = state.since_send.lock()
    {
        let _ = h.record(micros(sent).max(1));
    }
    // A change that arrives before its writer's OK took no time after it.
    let after_ok = if acked > 0 { micros(acked).max(1) } else { 1 };
    if let Ok(mut h) = state.since_ok.lock() {
        let _ = h.record(after_ok);
    }
}

/// A listener that asks for the stream and then never reads a byte: the server must not
/// let it slow anyone else down. Holds its connection until `stop`.
pub async fn slow_listener(target: Target, stop: CancellationToken) -> Result<()> {
    let mut stream = TcpStream::connect(&target.addr).await?;
    stream.write_all(&login_line(&target)).await?;
    stream.write_all(b"L1 UPDATE\r\n").await?;
    stop.cancelled().await;
    Ok(())
}
