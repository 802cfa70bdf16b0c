//! STARTTLS for the gateway's clients: the rustls server config built from `[tls]` for each
//! settings generation (so a reload re-reads the certificate), the client stream that is plain
//! until the handshake, and what a session shows of its encryption (version and cipher).

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;

/// The acceptor for `[tls]`, or None without one. The error names the file, line and key of
/// the certificate or key that cannot be used, and what to do.
pub fn acceptor(config: &Config) -> Result<Option<TlsAcceptor>, String> {
    let Some(tls) = &config.tls else { return Ok(None) };
    let cert_path = config.resolve(&tls.cert_file);
    let key_path = config.resolve(&tls.key_file);
    let at = |key: &str, path: &Path, why: String| format!("{}: {}: {why}", config.locate(key), path.display());
    let certs = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| at("tls.cert_file", &cert_path, format!("cannot read a PEM certificate chain: {err}")))?;
    if certs.is_empty() {
        let why = "holds no certificate (expected -----BEGIN CERTIFICATE----- blocks, the server's first)";
        return Err(at("tls.cert_file", &cert_path, why.into()));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|err| at("tls.key_file", &key_path, format!("cannot read a PEM private key: {err}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|err| format!("{}: {err}", config.locate("tls")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|err| {
            at("tls.key_file", &key_path, format!("does not fit the certificate in {}: {err}", cert_path.display()))
        })?;
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}

/// The negotiated protocol version and cipher suite, as logs and `/sessions` show them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// "TLSv1.3" or "TLSv1.2".
    pub version: String,
    /// The IANA-style suite name, e.g. "TLS13_AES_256_GCM_SHA384".
    pub cipher: String,
}

impl TlsInfo {
    fn of(stream: &TlsStream<TcpStream>) -> TlsInfo {
        let (_, conn) = stream.get_ref();
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
            other => format!("{other:?}"),
        };
        let cipher =
            conn.negotiated_cipher_suite().and_then(|suite| suite.suite().as_str()).unwrap_or("unknown").to_string();
        TlsInfo { version, cipher }
    }
}

/// A client's connection: plain until STARTTLS, then TLS; `Gone` after a failed handshake
/// (the TCP stream went with it).
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Gone,
}

impl ClientStream {
    /// The TCP socket underneath, for socket options.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            ClientStream::Plain(tcp) => Some(tcp),
            ClientStream::Tls(tls) => Some(tls.get_ref().0),
            ClientStream::Gone => None,
        }
    }

    /// Runs the server handshake on a plain stream; the caller bounds it with a timer. On
    /// failure the stream is `Gone`.
    pub async fn start_tls(&mut self, acceptor: &TlsAcceptor) -> io::Result<TlsInfo> {
        let ClientStream::Plain(tcp) = std::mem::replace(self, ClientStream::Gone) else {
            return Err(io::Error::other("STARTTLS on a stream that is not plain"));
        };
        let tls = acceptor.accept(tcp).await?;
        let info = TlsInfo::of(&tls);
        *self = ClientStream::Tls(Box::new(tls));
        Ok(info)
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the connection ended with a failed TLS handshake")
}

impl AsyncRead for ClientStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            ClientStream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
            ClientStream::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            ClientStream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
            ClientStream::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            ClientStream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
            ClientStream::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            ClientStream::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
            ClientStream::Gone => Poll::Ready(Ok(())),
        }
    }
}
