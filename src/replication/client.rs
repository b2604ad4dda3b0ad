//! A MUPDATE client connection: connect, read the banner, log in with PLAIN, and read
//! responses. The slave's link and the operator tools use it.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;

use crate::tls::{ClientTls, Transport};

use crate::protocol::command::encode_authenticate;
use crate::protocol::reply::{Reply, ReplyError, parse_reply};
use crate::protocol::sasl::{self, ServerTurn};
use crate::protocol::{Command, CommandKind};
use crate::store::StoreError;

/// Longest response line or literal accepted from a server.
const MAX_REPLY: usize = 1 << 20;

/// Whom to connect to and as whom.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// `host[:port]` (port 3905 when absent).
    pub server: String,
    /// Authentication identity.
    pub authname: String,
    /// Authorisation identity (empty: the same).
    pub username: String,
    /// Password.
    pub password: String,
    /// Time to connect, read the banner and log in.
    pub timeout: Duration,
    /// STARTTLS, required, when set.
    pub tls: Option<ClientTls>,
}

/// Why a link ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Socket trouble or EOF.
    #[error("connection to master: {0}")]
    Io(#[from] std::io::Error),
    /// The master broke the protocol.
    #[error("master sent something unexpected: {0}")]
    Protocol(String),
    /// Login refused.
    #[error("master refused the login: {0}")]
    Login(String),
    /// No answer in time.
    #[error("connection to master timed out")]
    Timeout,
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The master's answer could not be parsed.
    #[error(transparent)]
    Reply(#[from] ReplyError),
    /// The TLS handshake failed (an untrusted or wrong certificate, among others).
    #[error("TLS with the master: {0}")]
    Tls(String),
}

/// An open, logged-in connection.
pub struct Link {
    /// The SASL mechanism the login used.
    pub mechanism: &'static str,
    stream: Transport<TcpStream, TlsStream<TcpStream>>,
    buffer: Vec<u8>,
    /// Bytes of `buffer` already parsed: dropping each reply from the front at once would
    /// move the rest of the buffer for every record of a dump.
    start: usize,
    /// How long a request may take to go out (a master that reads nothing ends the link).
    send_patience: Duration,
}

impl Link {
    /// Sends the command `kind` tagged `tag`, within the link's timeout.
    pub async fn request(&mut self, tag: &[u8], kind: CommandKind) -> Result<(), LinkError> {
        let mut bytes = Vec::new();
        Command {
            tag: tag.to_vec(),
            kind,
        }
        .encode(&mut bytes);
        self.send(&bytes).await
    }

    /// Sends raw command bytes (already encoded), within the link's timeout.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        timeout(self.send_patience, self.stream.write_all(bytes))
            .await
            .map_err(|_| LinkError::Timeout)??;
        Ok(())
    }
}

impl Link {
    /// The next reply, waiting at most `patience` for more bytes.
    pub async fn next(&mut self, patience: Duration) -> Result<Reply, LinkError> {
        loop {
            if let Some(reply) = self.buffered()? {
                return Ok(reply);
            }
            self.fill(patience).await?;
        }
    }

    /// Reads more of the server's bytes into the buffer, waiting at most `patience`; what
    /// was already parsed is dropped first.
    async fn fill(&mut self, patience: Duration) -> Result<(), LinkError> {
        self.buffer.drain(..self.start);
        self.start = 0;
        self.buffer.reserve(64 * 1024);
        let n = timeout(patience, self.stream.read_buf(&mut self.buffer))
            .await
            .map_err(|_| LinkError::Timeout)??;
        if n == 0 {
            return Err(LinkError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(())
    }

    /// A reply already buffered, without reading.
    pub fn buffered(&mut self) -> Result<Option<Reply>, LinkError> {
        Ok(
            parse_reply(&self.buffer[self.start..], MAX_REPLY)?.map(|(reply, used)| {
                self.start += used;
                reply
            }),
        )
    }
}

/// `master` as `host:port`, with Cyrus's port 3905 when it names none.
pub fn with_default_port(master: &str) -> String {
    let has_port = master
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>().is_ok());
    if has_port {
        master.to_owned()
    } else {
        format!("{master}:3905")
    }
}

/// Connects and logs in with PLAIN, within `credentials.timeout`.
pub async fn connect(credentials: &Credentials) -> Result<Link, LinkError> {
    timeout(credentials.timeout, login(credentials))
        .await
        .map_err(|_| LinkError::Timeout)?
}

async fn login(settings: &Credentials) -> Result<Link, LinkError> {
    let stream = TcpStream::connect(with_default_port(&settings.server)).await?;
    stream.set_nodelay(true)?;
    let mut link = Link {
        mechanism: "PLAIN",
        stream: Transport::Plain(stream),
        buffer: Vec::new(),
        start: 0,
        send_patience: settings.timeout,
    };
    let mut banner = link.banner(settings.timeout).await?;
    if let Some(tls) = &settings.tls {
        if !banner.starttls {
            return Err(LinkError::Login(
                "the master does not offer STARTTLS, which mupdate_tls requires".into(),
            ));
        }
        link.start_tls(tls, settings.timeout).await?;
        banner = link.banner(settings.timeout).await?;
    }
    if banner.scram {
        link.scram_login(settings).await?;
        return Ok(link);
    }
    if !banner.plain {
        return Err(LinkError::Login(
            "the master offers neither SCRAM-SHA-256 nor PLAIN".into(),
        ));
    }
    let token = [
        settings.username.as_bytes(),
        b"\0",
        settings.authname.as_bytes(),
        b"\0",
        settings.password.as_bytes(),
    ]
    .concat();
    let mut command = Vec::new();
    encode_authenticate(&mut command, b"A01", "PLAIN", &token);
    link.stream.write_all(&command).await?;
    match link.next(settings.timeout).await? {
        Reply::Line { tag, word, .. } if tag == b"A01" && word == b"OK" => Ok(link),
        Reply::Line { rest, .. } => Err(LinkError::Login(String::from_utf8_lossy(&rest).into())),
        other => Err(LinkError::Protocol(format!("{other:?} after AUTHENTICATE"))),
    }
}

/// What a banner offers.
struct Offers {
    plain: bool,
    scram: bool,
    starttls: bool,
}

/// `,` and `=` escaped as SCRAM names need (RFC 5802 §5.1).
fn scram_name(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

impl Link {
    /// Reads the capability banner up to its `* OK` line.
    async fn banner(&mut self, patience: Duration) -> Result<Offers, LinkError> {
        let mut offers = Offers {
            plain: false,
            scram: false,
            starttls: false,
        };
        loop {
            match self.next(patience).await? {
                Reply::Line { tag, word, rest } if tag == b"*" && word == b"AUTH" => {
                    let offered = |mechanism: &[u8]| {
                        rest.split(|&b| b == b' ').any(|m| {
                            let m = m.trim_ascii();
                            let m = m
                                .strip_prefix(b"\"")
                                .and_then(|m| m.strip_suffix(b"\""))
                                .unwrap_or(m);
                            m.eq_ignore_ascii_case(mechanism)
                        })
                    };
                    offers.plain = offered(b"PLAIN");
                    offers.scram = offered(crate::auth::scram::MECHANISM.as_bytes());
                }
                Reply::Line { tag, word, .. } if tag == b"*" && word == b"STARTTLS" => {
                    offers.starttls = true;
                }
                Reply::Line { tag, word, .. } if tag == b"*" && word == b"OK" => return Ok(offers),
                Reply::Line { tag, .. } if tag == b"*" => {}
                other => return Err(LinkError::Protocol(format!("{other:?} in the banner"))),
            }
        }
    }

    /// The next raw line (a SASL challenge is bare base64, not a reply), without its CRLF.
    async fn raw_line(&mut self, patience: Duration) -> Result<Vec<u8>, LinkError> {
        loop {
            if let Some((line, used)) = sasl::split_line(&self.buffer[self.start..]) {
                let line = line.to_vec();
                self.start += used;
                return Ok(line);
            }
            if self.buffer.len() - self.start > MAX_REPLY {
                return Err(LinkError::Protocol("over-long SASL challenge".into()));
            }
            self.fill(patience).await?;
        }
    }

    /// A SASL challenge line, decoded; a tagged line instead means the login failed.
    async fn challenge(&mut self, patience: Duration) -> Result<Vec<u8>, LinkError> {
        let line = self.raw_line(patience).await?;
        match sasl::parse_server_turn(&line, b"A01") {
            Ok(ServerTurn::Challenge(data)) => Ok(data),
            Ok(ServerTurn::Answer(text)) => {
                Err(LinkError::Login(String::from_utf8_lossy(&text).into()))
            }
            Err(error) => Err(LinkError::Protocol(error.to_string())),
        }
    }

    /// SCRAM-SHA-256: the password never crosses the wire, and the master proves it holds
    /// the user's verifier.
    async fn scram_login(&mut self, settings: &Credentials) -> Result<(), LinkError> {
        use crate::auth::scram;
        let patience = settings.timeout;
        let nonce_bytes: [u8; 18] = rand::random();
        let nonce = STANDARD.encode(nonce_bytes);
        let gs2_header = if settings.username.is_empty() || settings.username == settings.authname {
            "n,,".to_owned()
        } else {
            format!("n,a={},", scram_name(&settings.username))
        };
        let bare = format!("n={},r={nonce}", scram_name(&settings.authname));
        let first = format!("{gs2_header}{bare}");
        let mut command = Vec::new();
        encode_authenticate(&mut command, b"A01", scram::MECHANISM, first.as_bytes());
        self.stream.write_all(&command).await?;
        let server_first = String::from_utf8(self.challenge(patience).await?)
            .map_err(|_| LinkError::Protocol("SCRAM server-first is not UTF-8".into()))?;
        if !server_first.starts_with(&format!("r={nonce}")) {
            return Err(LinkError::Protocol("SCRAM nonce not continued".into()));
        }
        let (client_final, expected) = scram::client_final(
            &bare,
            &gs2_header,
            &server_first,
            settings.password.as_bytes(),
        )
        .map_err(|e| LinkError::Protocol(e.to_string()))?;
        let mut response = Vec::new();
        sasl::encode_line(&mut response, client_final.as_bytes());
        self.stream.write_all(&response).await?;
        let server_final = self.challenge(patience).await?;
        if server_final != expected.as_bytes() {
            return Err(LinkError::Login(
                "the master's SCRAM signature is wrong: it does not hold this user's verifier"
                    .into(),
            ));
        }
        response.clear();
        sasl::encode_line(&mut response, b"");
        self.stream.write_all(&response).await?;
        match self.next(patience).await? {
            Reply::Line { tag, word, .. } if tag == b"A01" && word == b"OK" => {
                self.mechanism = scram::MECHANISM;
                Ok(())
            }
            Reply::Line { rest, .. } => {
                Err(LinkError::Login(String::from_utf8_lossy(&rest).into()))
            }
            other => Err(LinkError::Protocol(format!("{other:?} after AUTHENTICATE"))),
        }
    }

    /// STARTTLS, then the handshake, verifying the server's certificate.
    async fn start_tls(&mut self, tls: &ClientTls, patience: Duration) -> Result<(), LinkError> {
        self.request(b"S01", CommandKind::Starttls).await?;
        match self.next(patience).await? {
            Reply::Line { tag, word, .. } if tag == b"S01" && word == b"OK" => {}
            other => return Err(LinkError::Protocol(format!("{other:?} after STARTTLS"))),
        }
        if self.start < self.buffer.len() {
            return Err(LinkError::Protocol(
                "data after the STARTTLS answer, before the handshake".into(),
            ));
        }
        let Transport::Plain(tcp) = std::mem::replace(&mut self.stream, Transport::Closed) else {
            return Err(LinkError::Protocol("STARTTLS twice".into()));
        };
        let secured = tls
            .connector
            .connect(tls.server_name.clone(), tcp)
            .await
            .map_err(|e| LinkError::Tls(e.to_string()))?;
        self.stream = Transport::Tls(Box::new(secured));
        Ok(())
    }
}

/// Every record the server LISTs (with `prefix`), as replies.
pub async fn list(
    link: &mut Link,
    prefix: &str,
    patience: Duration,
) -> Result<Vec<Reply>, LinkError> {
    link.request(
        b"D",
        CommandKind::List {
            prefix: Some(prefix.as_bytes().to_vec()),
        },
    )
    .await?;
    let mut records = Vec::new();
    loop {
        match link.next(patience).await? {
            Reply::Line { tag, word, rest } if tag == b"D" => {
                if word == b"OK" {
                    return Ok(records);
                }
                return Err(LinkError::Protocol(format!(
                    "LIST answered {} {}",
                    String::from_utf8_lossy(&word),
                    String::from_utf8_lossy(&rest)
                )));
            }
            Reply::Line { .. } => {}
            record => records.push(record),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A master that accepts the connection and then reads nothing: however much the link
    /// has to send, `send` gives up after its patience instead of waiting for ever.
    #[tokio::test]
    async fn send_to_a_peer_that_reads_nothing_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (_silent_master, _) = listener.accept().await.unwrap();
        let mut link = Link {
            mechanism: "PLAIN",
            stream: Transport::Plain(client),
            buffer: Vec::new(),
            start: 0,
            send_patience: Duration::from_millis(300),
        };
        // Far more than both sockets' buffers can hold.
        let request = vec![b'x'; 256 << 20];
        let outcome = link.send(&request).await;
        assert!(matches!(outcome, Err(LinkError::Timeout)), "{outcome:?}");
    }

    #[test]
    fn default_port() {
        assert_eq!(with_default_port("master.example"), "master.example:3905");
        assert_eq!(with_default_port("127.0.0.1:4000"), "127.0.0.1:4000");
    }
}
