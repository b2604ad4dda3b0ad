//! One client connection: reads bytes, feeds the parser, runs commands in order and writes
//! the answers, and, once it streams, forwards every committed change as it happens.

use std::sync::Arc;

use tokio::sync::broadcast;
use tokio::time::Instant;

use tracing::Instrument;

use super::ServerContext;
use super::connection::{ClientStream, Connection, ReadError};

use crate::auth::Identity;
use crate::observability::metrics::{Metrics, NOT_A_COMMAND};
use crate::observability::traces;
use crate::protocol::response::{self, Status, Text};
use crate::protocol::{Event, ParseContext, Parser};
use crate::store::Change;

/// What the session does after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    /// Go on with the next input.
    Continue,
    /// Close the connection after flushing.
    Close,
    /// Drop whatever input is buffered (STARTTLS, spec §5.10).
    DiscardInput,
    /// Switch both directions to DEFLATE from the next byte.
    StartCompression,
    /// Drop buffered input, run the TLS handshake, greet again (STARTTLS, spec §5.10).
    StartTls,
}

/// An AUTHENTICATE waiting for the client's next response line.
pub(super) struct SaslExchange {
    pub(super) tag: Vec<u8>,
    pub(super) step: SaslStep,
}

/// What the next response line of an exchange is.
pub(super) enum SaslStep {
    /// PLAIN's only message.
    Plain,
    /// SCRAM-SHA-256's client-first message.
    ScramFirst,
    /// SCRAM-SHA-256's client-final message.
    ScramFinal(Box<crate::auth::scram::Pending>),
    /// The client's empty answer to the server's final message, then OK.
    ScramAck(Identity),
}

/// A registered UPDATE stream.
pub(super) struct Stream {
    pub(super) tag: Vec<u8>,
    pub(super) hosts: Vec<Vec<u8>>,
    pub(super) feed: broadcast::Receiver<Arc<Change>>,
    /// Changes up to this sequence number were in the initial dump.
    pub(super) dumped_through: u64,
    /// XUPDATE: follow each change with its sequence number (and catch up from the
    /// change log instead of being dropped when it falls behind).
    pub(super) report_seq: bool,
    /// The last change this stream has accounted for.
    pub(super) last_seq: u64,
    /// Counts this stream among the connected slaves while it lives.
    pub(super) _counted: crate::observability::metrics::GaugeSlot,
    /// Under failover, the term this stream serves and the role it ends with (XUPDATE
    /// naming a term): a replica never follows a master past its term.
    pub(super) term: Option<(u64, tokio::sync::watch::Receiver<crate::failover::HaRole>)>,
    /// Once the replica acknowledges (XACK): counted among the synchronous replicas.
    pub(super) acknowledging: Option<(
        crate::replication::sync::ReplicaSlot,
        crate::observability::metrics::GaugeSlot,
    )>,
}

/// The state of one connection, over any [`ClientStream`] (a TCP socket when served).
pub(super) struct Session<IO = tokio::net::TcpStream> {
    pub(super) ctx: Arc<ServerContext>,
    pub(super) conn: Connection<IO>,
    pub(super) parser: Parser,
    input: Vec<u8>,
    pub(super) out: Vec<u8>,
    pub(super) identity: Option<Identity>,
    pub(super) sasl: Option<SaslExchange>,
    pub(super) stream: Option<Stream>,
    /// The client's address, for traces and logs.
    pub(super) peer: Option<std::net::SocketAddr>,
    /// Held until the client logs in (`mupdate_unauthenticated_max`).
    pub(super) login_slot: Option<super::LoginSlot>,
    /// Set when the connection is closed on an over-limit input: the client may still be
    /// sending, and closing with unread input would reset the connection before it reads
    /// our last answer.
    linger: bool,
}

/// How long a command already running at shutdown has to finish (below the drain deadline).
const COMMAND_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a closing connection's unread input is drained after an over-limit input.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// How a turn of command processing ended.
enum Processed {
    Done(Flow),
    /// Shutdown began while it ran; it finished within the grace.
    DoneAtShutdown(Flow),
    /// Still running when the grace ran out.
    Abandoned,
}

enum Wake {
    Shutdown,
    Read(Result<bool, ReadError>),
    Change(Result<Arc<Change>, broadcast::error::RecvError>),
    Idle,
    LoginDeadline,
    TermOver(u64),
}

/// Returns once the master's `term` is over here (never, for a stream serving no term).
async fn term_over(
    term: Option<(u64, tokio::sync::watch::Receiver<crate::failover::HaRole>)>,
) -> u64 {
    match term {
        Some((term, mut role)) => {
            let leading = crate::failover::HaRole::Leader { term };
            let _ = role.wait_for(|now| *now != leading).await;
            term
        }
        None => std::future::pending().await,
    }
}

async fn next_change(
    stream: &mut Option<Stream>,
) -> Result<Arc<Change>, broadcast::error::RecvError> {
    match stream {
        Some(stream) => stream.feed.recv().await,
        None => std::future::pending().await,
    }
}

impl<IO: ClientStream> Session<IO> {
    pub(super) fn new(
        ctx: Arc<ServerContext>,
        conn: Connection<IO>,
        peer: Option<std::net::SocketAddr>,
        login_slot: super::LoginSlot,
    ) -> Session<IO> {
        let parser = Parser::new(ctx.settings.limits);
        Session {
            ctx,
            conn,
            parser,
            input: Vec::new(),
            out: Vec::with_capacity(1024),
            identity: None,
            sasl: None,
            stream: None,
            peer,
            login_slot: Some(login_slot),
            linger: false,
        }
    }

    /// Serves the connection until the client leaves, the session ends or the server stops.
    pub(super) async fn run(mut self) {
        if let Err(error) = self.serve().await {
            tracing::debug!(%error, "connection ended");
        }
        self.conn.shutdown().await;
        if self.linger {
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(LINGER, async {
                while let Ok(true) = self.conn.read(&mut sink).await {
                    sink.clear();
                }
            })
            .await;
        }
    }

    async fn serve(&mut self) -> std::io::Result<()> {
        let banner = self.ctx.banner(false);
        self.out.extend_from_slice(&banner);
        self.flush().await?;
        let idle_timeout = self.ctx.settings.idle_timeout;
        // Both futures live across iterations: re-creating a timer and a cancellation
        // waiter for every command costs more than the command itself.
        let cancelled = self.ctx.shutdown.clone().cancelled_owned();
        tokio::pin!(cancelled);
        let idle = tokio::time::sleep(idle_timeout);
        tokio::pin!(idle);
        let login_deadline = tokio::time::sleep(self.ctx.settings.login_timeout);
        tokio::pin!(login_deadline);
        let mut last_read = Instant::now();
        loop {
            let processed = {
                let processing = self.process_input();
                tokio::pin!(processing);
                tokio::select! {
                    biased;
                    flow = &mut processing => Processed::Done(flow?),
                    // A command under way gets a little longer to answer.
                    _ = &mut cancelled => match tokio::time::timeout(COMMAND_GRACE, &mut processing).await {
                        Ok(flow) => Processed::DoneAtShutdown(flow?),
                        Err(_) => Processed::Abandoned,
                    },
                }
            };
            let flow = match processed {
                Processed::Done(flow) => flow,
                Processed::DoneAtShutdown(flow) => {
                    if flow == Flow::Continue {
                        response::bye(&mut self.out, "server shutting down");
                    }
                    return self.flush().await;
                }
                Processed::Abandoned => {
                    // It may have stopped mid-line: close without a BYE rather than hold
                    // up the drain.
                    tracing::info!(peer = ?self.peer, "command still running at shutdown; closing");
                    return Ok(());
                }
            };
            if flow == Flow::Close {
                return self.flush().await;
            }
            self.flush().await?;
            let serving_term = self.stream.as_ref().and_then(|s| s.term.clone());
            let wake = {
                let Session {
                    conn,
                    input,
                    stream,
                    login_slot,
                    ..
                } = self;
                tokio::select! {
                    biased;
                    _ = &mut cancelled => Wake::Shutdown,
                    change = next_change(stream) => Wake::Change(change),
                    read = conn.read(input) => Wake::Read(read),
                    _ = &mut idle => Wake::Idle,
                    _ = &mut login_deadline, if login_slot.is_some() => Wake::LoginDeadline,
                    term = term_over(serving_term) => Wake::TermOver(term),
                }
            };
            match wake {
                Wake::Read(Ok(true)) => last_read = Instant::now(),
                Wake::Read(Ok(false)) => return Ok(()),
                Wake::Read(Err(ReadError::Inflate(_))) => {
                    response::bye(&mut self.out, "Error decompressing data");
                    return self.flush().await;
                }
                Wake::Read(Err(ReadError::Io(error))) => return Err(error),
                Wake::Change(change) => {
                    if self.deliver(change) == Flow::Close
                        || self.drain_ready_changes() == Flow::Close
                    {
                        return self.flush().await;
                    }
                }
                Wake::Idle if last_read.elapsed() < idle_timeout => {
                    // The timer is only re-armed when it fires, not on every read.
                    idle.as_mut().reset(last_read + idle_timeout);
                }
                Wake::Idle => {
                    self.answer_interrupted_command("idle for too long");
                    response::bye(&mut self.out, "idle for too long");
                    return self.flush().await;
                }
                Wake::TermOver(term) => {
                    tracing::info!(peer = ?self.peer, term, "no longer the master of this stream's term; closing it");
                    response::bye(&mut self.out, "no longer the master of this term");
                    return self.flush().await;
                }
                Wake::LoginDeadline => {
                    tracing::info!(peer = ?self.peer, "no login in time; closing this connection");
                    self.answer_interrupted_command("login timed out");
                    response::bye(&mut self.out, "login timed out");
                    return self.flush().await;
                }
                Wake::Shutdown => {
                    response::bye(&mut self.out, "server shutting down");
                    return self.flush().await;
                }
            }
        }
    }

    /// At an idle timeout Cyrus answers a half-received command as if its line had ended,
    /// and an exchange in progress with why reading stopped (`reason`).
    fn answer_interrupted_command(&mut self, reason: &str) {
        if let Some(SaslExchange { tag, .. }) = self.sasl.take() {
            response::tagged(
                &mut self.out,
                &tag,
                Status::No,
                Text::Bare(format!("Error reading client response: {reason}").as_bytes()),
            );
            return;
        }
        if let Some(Event::Error { tag, kind }) = self.parser.interrupt() {
            response::parse_error(&mut self.out, tag.as_deref(), kind);
        }
    }

    /// Parses and executes every complete command in the input buffer.
    async fn process_input(&mut self) -> std::io::Result<Flow> {
        let mut pos = 0;
        loop {
            let context = ParseContext {
                authenticated: self.identity.is_some(),
            };
            let (used, event) = self.parser.advance(&self.input[pos..], &context);
            pos += used;
            let Some(event) = event else { break };
            match self.handle(event).await? {
                Flow::Continue => {}
                Flow::Close => return Ok(Flow::Close),
                Flow::DiscardInput => pos = self.input.len(),
                Flow::StartTls => {
                    // The OK goes out in clear; the client's next bytes are its handshake.
                    self.flush().await?;
                    self.input.clear();
                    pos = 0;
                    let Some(acceptor) = self.ctx.tls.clone() else {
                        return Ok(Flow::Close);
                    };
                    if let Err(error) = self.conn.start_tls(&acceptor).await {
                        tracing::warn!(peer = ?self.peer, %error, "STARTTLS negotiation failed; closing this connection");
                        return Ok(Flow::Close);
                    }
                    let banner = self.ctx.banner(true);
                    self.out.extend_from_slice(&banner);
                }
                Flow::StartCompression => {
                    // The OK goes out in clear; everything after it is compressed.
                    self.flush().await?;
                    self.input.drain(..pos);
                    pos = 0;
                    if self.conn.start_compression(&mut self.input).is_err() {
                        response::bye(&mut self.out, "Error decompressing data");
                        return Ok(Flow::Close);
                    }
                }
            }
        }
        self.input.drain(..pos);
        Ok(Flow::Continue)
    }

    async fn handle(&mut self, event: Event) -> std::io::Result<Flow> {
        match event {
            Event::Continue => {
                self.out.extend_from_slice(response::GO_AHEAD);
                self.flush().await?;
                Ok(Flow::Continue)
            }
            Event::Error { tag, kind } => {
                response::parse_error(&mut self.out, tag.as_deref(), kind);
                self.ctx.metrics.command(NOT_A_COMMAND, "bad");
                traces::CommandTrace::refused_line(self.peer);
                Ok(Flow::Continue)
            }
            Event::Fatal { tag } => {
                if let Some(tag) = tag {
                    response::tagged(
                        &mut self.out,
                        &tag,
                        Status::Bad,
                        Text::Quoted("Extra arguments"),
                    );
                }
                tracing::info!("input over the configured limits; closing this connection");
                self.linger = true;
                Ok(Flow::Close)
            }
            Event::Sasl(answer) => self.finish_sasl(answer).await,
            Event::Command(command) => {
                let name = command.kind.name();
                let trace = traces::CommandTrace::start(name, command.kind.mailbox(), self.peer);
                let before = self.out.len();
                let started = std::time::Instant::now();
                let flow = self.execute(command).instrument(trace.span()).await;
                self.ctx
                    .metrics
                    .command_seconds
                    .with_label_values(&[name])
                    .observe(started.elapsed().as_secs_f64());
                if self.out.len() > before {
                    let result = Metrics::result_of(&self.out[before..]);
                    trace.finish(result);
                    // AUTHENTICATE counts itself: its answer may come in a later event.
                    if name != "AUTHENTICATE" {
                        self.ctx.metrics.command(name, result);
                    }
                }
                flow
            }
        }
    }

    /// Sends everything queued in `out`.
    pub(super) async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let result = self.conn.send(&self.out).await;
        self.out.clear();
        if self.out.capacity() > 1 << 20 {
            self.out.shrink_to(64 * 1024);
        }
        result
    }
}
