//! The byte pipe of one client: socket (TLS after STARTTLS), optional COMPRESS layer and
//! telemetry log. Everything above it sees plain MUPDATE bytes.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::tls::Transport;

use super::compress::{Deflate, InflateError};
use super::telemetry::TelemetryLog;

/// Bytes a read asks for at a time.
const READ_CHUNK: usize = 4096;

/// Most plain bytes one read yields from a COMPRESS stream, however much they inflate.
const INFLATE_PER_READ: usize = 64 * 1024;

/// Why reading from the client stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A COMPRESS stream could not be inflated.
    #[error(transparent)]
    Inflate(#[from] InflateError),
}

/// How long a STARTTLS handshake may take (Cyrus: 180 s).
const HANDSHAKE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(180);

/// What a client connection runs over: a TCP socket, or an in-memory pipe in tests.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> ClientStream for T {}

/// One client connection.
#[derive(Debug)]
pub struct Connection<IO = TcpStream> {
    stream: Transport<IO, TlsStream<IO>>,
    raw: Vec<u8>,
    deflate: Option<Deflate>,
    telemetry: Option<TelemetryLog>,
    /// A client that takes none of our output for this long is dropped.
    write_timeout: std::time::Duration,
}

impl<IO: ClientStream> Connection<IO> {
    /// Wraps an accepted stream.
    pub fn new(stream: IO, write_timeout: std::time::Duration) -> Connection<IO> {
        Connection {
            stream: Transport::Plain(stream),
            // Only COMPRESS sessions use it.
            raw: Vec::new(),
            deflate: None,
            telemetry: None,
            write_timeout,
        }
    }

    /// Reads what the client sent next and appends it, decompressed, to `input` (at most
    /// [`INFLATE_PER_READ`] bytes of a COMPRESS stream at a time; the rest follows with
    /// the next reads). Returns `Ok(false)` at EOF. Cancel-safe: nothing is lost if the
    /// future is dropped.
    pub async fn read(&mut self, input: &mut Vec<u8>) -> Result<bool, ReadError> {
        let start = input.len();
        match &mut self.deflate {
            None => {
                // Idle listeners are most connections: keep their buffers small.
                input.reserve(READ_CHUNK);
                let n = self.stream.read_buf(input).await?;
                if n == 0 {
                    return Ok(false);
                }
            }
            Some(deflate) => {
                // Input left over from the last read, or output zlib still holds, comes
                // first: the socket is read only once both are used up.
                if self.raw.is_empty() && !deflate.has_pending_output() {
                    self.raw.reserve(READ_CHUNK);
                    let n = self.stream.read_buf(&mut self.raw).await?;
                    if n == 0 {
                        return Ok(false);
                    }
                }
                let taken = deflate.inflate(&self.raw, input, INFLATE_PER_READ)?;
                if taken == 0 && input.len() == start && !deflate.has_pending_output() {
                    // zlib took nothing and gave nothing: the stream is stuck.
                    return Err(ReadError::Inflate(InflateError));
                }
                self.raw.drain(..taken);
            }
        }
        if let Some(log) = &mut self.telemetry {
            log.record_read(&input[start..]);
        }
        Ok(true)
    }

    /// Sends `bytes` (compressed if COMPRESS is on) and logs them.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        if let Some(log) = &mut self.telemetry {
            log.record_write(bytes);
        }
        let written = match &mut self.deflate {
            None => tokio::time::timeout(self.write_timeout, self.stream.write_all(bytes)).await,
            Some(deflate) => {
                let wire = deflate.deflate(bytes);
                tokio::time::timeout(self.write_timeout, self.stream.write_all(&wire)).await
            }
        };
        written.unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client takes no output",
            ))
        })
    }

    /// From the next byte on, both directions are raw deflate; `pending` holds bytes the
    /// client already sent after its COMPRESS command and is inflated in place.
    pub fn start_compression(&mut self, pending: &mut Vec<u8>) -> Result<(), InflateError> {
        let mut deflate = Deflate::default();
        let mut raw = std::mem::take(pending);
        let taken = deflate.inflate(&raw, pending, INFLATE_PER_READ)?;
        raw.drain(..taken);
        self.raw = raw;
        self.deflate = Some(deflate);
        Ok(())
    }

    /// Whether COMPRESS is on.
    pub fn compressed(&self) -> bool {
        self.deflate.is_some()
    }

    /// Whether TLS is on.
    pub fn tls(&self) -> bool {
        matches!(self.stream, Transport::Tls(_))
    }

    /// Runs the server side of a TLS handshake on the socket (after `OK Begin TLS
    /// negotiation now` went out in clear). On failure the connection is closed.
    pub async fn start_tls(&mut self, acceptor: &TlsAcceptor) -> std::io::Result<()> {
        let Transport::Plain(plain) = std::mem::replace(&mut self.stream, Transport::Closed) else {
            return Err(std::io::Error::other("TLS is already active"));
        };
        let tls = tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(plain))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake"))??;
        self.stream = Transport::Tls(Box::new(tls));
        Ok(())
    }

    /// Starts logging this session.
    pub fn set_telemetry(&mut self, log: TelemetryLog) {
        self.telemetry = Some(log);
    }

    /// Sends raw bytes, bypassing compression and telemetry (connection-limit refusal).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Closes the write side so the client sees EOF after everything sent.
    pub async fn shutdown(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}
