//! A logged-in client connection to any MUPDATE server, read line by line.

use anyhow::{Context, Result, bail};
use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Where a MUPDATE server listens and the admin to log in as.
#[derive(Clone, Debug)]
pub struct Target {
    /// `host:port`.
    pub addr: String,
    /// Admin user.
    pub user: String,
    /// Admin password.
    pub password: String,
}

impl Target {
    /// The base64 SASL PLAIN response that logs in as the admin.
    pub fn plain_token(&self) -> String {
        base64::engine::general_purpose::STANDARD
            .encode(format!("\0{}\0{}", self.user, self.password))
    }
}

/// A logged-in client connection that reads line by line.
pub struct Conn {
    /// The buffered read half.
    pub read: BufReader<OwnedReadHalf>,
    /// The write half.
    pub write: OwnedWriteHalf,
    line: Vec<u8>,
}

impl Conn {
    /// Connects, waits for the banner and logs in with PLAIN.
    pub async fn open(target: &Target) -> Result<Conn> {
        let stream = TcpStream::connect(&target.addr)
            .await
            .with_context(|| format!("connect {}", target.addr))?;
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
        let token = target.plain_token();
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

    /// The next line, with its CRLF.
    pub async fn next_line(&mut self) -> Result<&[u8]> {
        self.line.clear();
        let n = self.read.read_until(b'\n', &mut self.line).await?;
        if n == 0 {
            bail!("server closed the connection");
        }
        Ok(&self.line)
    }

    /// Sends `request` and reads until the completion line of `tag`; returns whether OK.
    pub async fn command(&mut self, tag: &str, request: &[u8]) -> Result<bool> {
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
