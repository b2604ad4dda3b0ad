//! Client of Cyrus SASL's saslauthd (`sasl_pwcheck_method: saslauthd`): four
//! length-prefixed strings (login, password, service, realm) out, one back (`OK…`/`NO…`).

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Errors talking to saslauthd.
#[derive(Debug, thiserror::Error)]
pub enum SaslauthdError {
    /// Socket I/O failed.
    #[error("saslauthd at {path}: {source}")]
    Io {
        /// The socket.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A field is longer than the protocol allows.
    #[error("saslauthd request field too long")]
    TooLong,
    /// No answer in time.
    #[error("saslauthd at {path} did not answer within {seconds} s")]
    TimedOut {
        /// The socket.
        path: String,
        /// The time it had.
        seconds: u64,
    },
}

fn put(out: &mut Vec<u8>, field: &[u8]) -> Result<(), SaslauthdError> {
    let len = u16::try_from(field.len()).map_err(|_| SaslauthdError::TooLong)?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(field);
    Ok(())
}

/// Asks saslauthd at `socket` whether `password` is right for `login` in `realm`, giving
/// it `patience` for the whole exchange.
pub async fn check(
    socket: &Path,
    patience: Duration,
    login: &str,
    password: &[u8],
    service: &str,
    realm: &str,
) -> Result<bool, SaslauthdError> {
    tokio::time::timeout(patience, ask(socket, login, password, service, realm))
        .await
        .unwrap_or_else(|_| {
            Err(SaslauthdError::TimedOut {
                path: socket.display().to_string(),
                seconds: patience.as_secs(),
            })
        })
}

async fn ask(
    socket: &Path,
    login: &str,
    password: &[u8],
    service: &str,
    realm: &str,
) -> Result<bool, SaslauthdError> {
    let io = |source| SaslauthdError::Io {
        path: socket.display().to_string(),
        source,
    };
    let mut request = Vec::with_capacity(64 + password.len());
    put(&mut request, login.as_bytes())?;
    put(&mut request, password)?;
    put(&mut request, service.as_bytes())?;
    put(&mut request, realm.as_bytes())?;
    let mut stream = UnixStream::connect(socket).await.map_err(io)?;
    stream.write_all(&request).await.map_err(io)?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.map_err(io)?;
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut answer).await.map_err(io)?;
    Ok(answer.starts_with(b"OK"))
}
