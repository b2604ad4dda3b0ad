//! TLS set-up with rustls (TLS 1.2 and 1.3 only, ring provider): the server's STARTTLS
//! acceptor from `tls_server_cert`/`tls_server_key`, and a slave's connector that verifies
//! its master against a configured CA.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Why TLS could not be set up; start-up fails with it (exit 78).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the material.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The name to verify the master against is not a valid server name.
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
    /// `mupdate_tls` without a CA to verify the master with.
    #[error("mupdate_tls needs mupdate_tls_ca_file, the CA the master's certificate must chain to")]
    NoCaFile,
}

/// A byte stream (`IO`: a TCP socket, or an in-memory pipe in tests) in clear, or under TLS
/// (`S`: the server or client side's TLS stream over it).
#[derive(Debug)]
pub enum Transport<IO, S> {
    /// Before STARTTLS, or without it.
    Plain(IO),
    /// After a successful handshake.
    Tls(Box<S>),
    /// Only while a handshake is under way, or after one failed.
    Closed,
}

fn closed() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotConnected, "connection closed")
}

impl<IO: AsyncRead + Unpin, S: AsyncRead + Unpin> AsyncRead for Transport<IO, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Transport::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
            Transport::Closed => Poll::Ready(Err(closed())),
        }
    }
}

impl<IO: AsyncWrite + Unpin, S: AsyncWrite + Unpin> AsyncWrite for Transport<IO, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Transport::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
            Transport::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Transport::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
            Transport::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Transport::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
            Transport::Closed => Poll::Ready(Ok(())),
        }
    }
}

/// How a client (our slave, the operator tools) secures its link: STARTTLS is required,
/// and the server must present a certificate for `server_name` from a trusted CA.
#[derive(Clone)]
pub struct ClientTls {
    /// Trusts the configured CA only.
    pub connector: TlsConnector,
    /// The name the certificate must carry.
    pub server_name: ServerName<'static>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientTls({:?})", self.server_name)
    }
}

impl ClientTls {
    /// From the CA file and the name to verify (`host` of `host[:port]`).
    pub fn new(ca_file: &Path, server_name: &str) -> Result<ClientTls, TlsError> {
        Ok(ClientTls {
            connector: connector(ca_file)?,
            server_name: self::server_name(server_name)?,
        })
    }
}

/// The TLS a client of `server` (`host[:port]`) uses under these settings: none without
/// `mupdate_tls`; with it, `mupdate_tls_ca_file` is required.
pub fn client_for(
    settings: &crate::config::Settings,
    server: &str,
) -> Result<Option<ClientTls>, TlsError> {
    if !settings.mupdate_tls {
        return Ok(None);
    }
    let ca_file = settings
        .mupdate_tls_ca_file
        .as_deref()
        .ok_or(TlsError::NoCaFile)?;
    let name = match &settings.mupdate_tls_server_name {
        Some(name) => name.clone(),
        None => host_of(server).to_owned(),
    };
    ClientTls::new(ca_file, &name).map(Some)
}

/// The host part of `host`, `host:port`, `[v6]:port` or a bare IPv6 address.
pub fn host_of(server: &str) -> &str {
    if let Some(rest) = server.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    if server.matches(':').count() == 1 {
        return server.split(':').next().unwrap_or(server);
    }
    server
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |message: String| TlsError::File {
        path: path.to_owned(),
        message,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certificates.is_empty() {
        return Err(bad("no certificate in the file".into()));
    }
    Ok(certificates)
}

/// The STARTTLS acceptor for `cert` (a PEM chain) and `key` (a PEM private key).
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let chain = certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
        path: key.to_owned(),
        message: e.to_string(),
    })?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A connector that trusts only the certificates in `ca_file` (PEM).
pub fn connector(ca_file: &Path) -> Result<TlsConnector, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(ca_file)? {
        roots.add(certificate)?;
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// `host` as the name a certificate must carry (a DNS name or an IP address).
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_owned()).map_err(|_| TlsError::ServerName(host.to_owned()))
}
