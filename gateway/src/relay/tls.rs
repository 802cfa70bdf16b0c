//! STARTTLS to the next hop: the policy (`[relay] tls`), the rustls client config built once per
//! settings generation from `ca_file` or the system's roots, the handshake (bounded), and the
//! connection's stream, plain or TLS.
//!
//! Opportunistic TLS encrypts without checking the certificate, like Postfix's `may`: a next hop
//! that offers STARTTLS gets it, one that does not gets plain text, and a check nobody asked for
//! would only turn mail away. `required` checks the certificate against the name (or IP address)
//! of the next hop, like Postfix's `secure`.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::{Config, RelayConfig, RelayTls};

/// Why the TLS settings could not be built; the text starts with the located key.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{at}: cannot read {}: {source}", .path.display())]
    Read { at: String, path: PathBuf, source: io::Error },
    #[error("{at}: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", .path.display())]
    Empty { at: String, path: PathBuf },
    #[error("{at}: {} holds a certificate rustls cannot use as a CA: {why}", .path.display())]
    BadCa { at: String, path: PathBuf, why: String },
    #[error("{at}: the system has no CA certificates to check the next hop with ({why}); set relay.ca_file")]
    NoSystemRoots { at: String, why: String },
    #[error("{at}: {why}")]
    Rustls { at: String, why: String },
}

/// What the relay does about STARTTLS, ready to use: the config's mode and, unless it is
/// `none`, the client config and the name to check.
#[derive(Debug, Clone)]
pub struct TlsPolicy {
    pub mode: RelayTls,
    handshake: Option<Handshake>,
}

#[derive(Debug, Clone)]
struct Handshake {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

/// Two policies are the same when built by the same generation (the same client config): a
/// pooled connection is only handed to sessions whose policy it was secured under.
impl PartialEq for TlsPolicy {
    fn eq(&self, other: &Self) -> bool {
        let same = match (&self.handshake, &other.handshake) {
            (Some(a), Some(b)) => Arc::ptr_eq(&a.config, &b.config) && a.name == b.name,
            (None, None) => true,
            _ => false,
        };
        self.mode == other.mode && same
    }
}

impl Eq for TlsPolicy {}

impl TlsPolicy {
    /// Plain text always.
    pub fn none() -> TlsPolicy {
        TlsPolicy { mode: RelayTls::None, handshake: None }
    }

    /// The policy for `relay`, reading `ca_file` (or the system's roots) now: a reload reads it
    /// again. Errors name the key and the file.
    pub fn from_config(config: &Config, relay: &RelayConfig) -> Result<TlsPolicy, TlsSetupError> {
        let verifier = match relay.tls {
            RelayTls::None => return Ok(TlsPolicy::none()),
            RelayTls::Opportunistic => None,
            RelayTls::Required => Some(match &relay.ca_file {
                Some(file) => roots_from_file(&config.resolve(file), config.locate("relay.ca_file"))?,
                None => system_roots(config.locate("relay.tls"))?,
            }),
        };
        // Validation made sure the name parses; the error is kept for a config built by hand.
        let name = ServerName::try_from(relay.tls_name().to_string()).map_err(|err| TlsSetupError::Rustls {
            at: config.locate("relay.server_name"),
            why: format!("{:?}: {err}", relay.tls_name()),
        })?;
        let config = client_config(verifier)
            .map_err(|err| TlsSetupError::Rustls { at: config.locate("relay.tls"), why: err.to_string() })?;
        Ok(TlsPolicy { mode: relay.tls, handshake: Some(Handshake { config: Arc::new(config), name }) })
    }

    /// Whether STARTTLS is sent when offered.
    pub fn wanted(&self) -> bool {
        self.handshake.is_some()
    }

    /// The TLS handshake over `tcp` after the next hop's 220 to STARTTLS, within `limit`.
    pub async fn secure(&self, tcp: TcpStream, limit: Duration) -> Result<TlsStream<TcpStream>, String> {
        let Some(handshake) = &self.handshake else { return Err("TLS is off ([relay] tls = \"none\")".into()) };
        let connector = TlsConnector::from(handshake.config.clone());
        match tokio::time::timeout(limit, connector.connect(handshake.name.clone(), tcp)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err(format!("the handshake took longer than {limit:?}")),
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS 1.2 at least; with `roots`, the certificate is checked against them, else not at all.
fn client_config(roots: Option<RootCertStore>) -> Result<ClientConfig, rustls::Error> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let config = match roots {
        Some(roots) => builder.with_root_certificates(roots).with_no_client_auth(),
        None => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(EncryptOnly(provider))).with_no_client_auth()
        }
    };
    Ok(config)
}

fn roots_from_file(path: &Path, at: String) -> Result<RootCertStore, TlsSetupError> {
    let text =
        std::fs::read(path).map_err(|source| TlsSetupError::Read { at: at.clone(), path: path.into(), source })?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&text) {
        let cert =
            cert.map_err(|err| TlsSetupError::BadCa { at: at.clone(), path: path.into(), why: err.to_string() })?;
        roots.add(cert).map_err(|err| TlsSetupError::BadCa {
            at: at.clone(),
            path: path.into(),
            why: err.to_string(),
        })?;
    }
    match roots.is_empty() {
        true => Err(TlsSetupError::Empty { at, path: path.into() }),
        false => Ok(roots),
    }
}

fn system_roots(at: String) -> Result<RootCertStore, TlsSetupError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    // Unusable ones among many are skipped, as every TLS client does with the system store.
    let (added, _skipped) = roots.add_parsable_certificates(found.certs);
    match added {
        0 => {
            let why = found.errors.first().map_or("none found".to_string(), |err| err.to_string());
            Err(TlsSetupError::NoSystemRoots { at, why })
        }
        _ => Ok(roots),
    }
}

/// Accepts any certificate, but still checks the handshake's signatures: encryption against a
/// passive listener, as Postfix's `may` gives.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384`: the form logs and `Received:` use.
pub fn describe(conn: &rustls::CommonState) -> String {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        other => format!("{other:?}"),
    };
    let cipher = conn.negotiated_cipher_suite().and_then(|suite| suite.suite().as_str()).unwrap_or("unknown");
    format!("{version} with cipher {cipher}")
}

/// A next-hop connection's byte stream: plain until STARTTLS, TLS after.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, relay: &str) -> Result<Config, String> {
        let text = format!("[relay]\naddress = \"127.0.0.1:10025\"\n{relay}\n");
        let mut config = crate::config::parse("/etc/sluice.toml", &text).map_err(|e| e.to_string())?;
        config.base_dir = dir.to_path_buf();
        Ok(config)
    }

    fn policy(dir: &Path, relay: &str) -> Result<TlsPolicy, String> {
        let config = config(dir, relay)?;
        TlsPolicy::from_config(&config, config.relay.as_ref().unwrap()).map_err(|e| e.to_string())
    }

    #[test]
    fn modes_and_their_config() {
        let dir = tempfile::tempdir().unwrap();
        let opportunistic = policy(dir.path(), "").unwrap();
        assert_eq!((opportunistic.mode, opportunistic.wanted()), (RelayTls::Opportunistic, true));
        let none = policy(dir.path(), "tls = \"none\"").unwrap();
        assert_eq!((none.mode, none.wanted()), (RelayTls::None, false));
        assert_eq!(none, TlsPolicy::none());
        // Each generation builds its own: a pooled connection is not handed across.
        assert_eq!(opportunistic, opportunistic.clone());
        assert_ne!(opportunistic, policy(dir.path(), "").unwrap());
    }

    #[test]
    fn ca_file_problems_name_the_key_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = policy(dir.path(), "tls = \"required\"\nca_file = \"missing.pem\"").unwrap_err();
        let missing = dir.path().join("missing.pem");
        assert!(err.starts_with("/etc/sluice.toml:4: relay.ca_file: cannot read "), "{err}");
        assert!(err.contains(&missing.display().to_string()), "{err}");
        std::fs::write(dir.path().join("empty.pem"), "not a certificate\n").unwrap();
        let err = policy(dir.path(), "tls = \"required\"\nca_file = \"empty.pem\"").unwrap_err();
        assert!(err.starts_with("/etc/sluice.toml:4: relay.ca_file: "), "{err}");
        assert!(err.ends_with("empty.pem holds no PEM certificate (-----BEGIN CERTIFICATE-----)"), "{err}");
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        std::fs::write(dir.path().join("bad.pem"), garbage).unwrap();
        let err = policy(dir.path(), "tls = \"required\"\nca_file = \"bad.pem\"").unwrap_err();
        assert!(err.contains("bad.pem holds a certificate rustls cannot use as a CA"), "{err}");
    }

    #[test]
    fn config_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = config(dir.path(), "ca_file = \"ca.pem\"").unwrap_err();
        assert!(
            err.starts_with(
                "/etc/sluice.toml:3:1: relay.ca_file: certificates are checked only with tls = \"required\""
            ),
            "{err}"
        );
        let err = config(dir.path(), "tls = \"none\"\nserver_name = \"mx.example\"").unwrap_err();
        assert!(err.starts_with("/etc/sluice.toml:4:1: relay.server_name: is used only for TLS"), "{err}");
        let err = config(dir.path(), "server_name = \"not a name\"").unwrap_err();
        assert!(err.starts_with("/etc/sluice.toml:3:1: relay.server_name: \"not a name\" is not a host name"), "{err}");
        let err = config(dir.path(), "tls = \"always\"").unwrap_err();
        assert!(err.contains("relay.tls") && err.contains("\"opportunistic\""), "{err}");
        let relay = config(dir.path(), "server_name = \"mx.example\"").unwrap().relay.unwrap();
        assert_eq!((relay.host(), relay.tls_name()), ("127.0.0.1", "mx.example"));
        let text = "[relay]\naddress = \"[::1]:25\"\n";
        let relay = crate::config::parse("t.toml", text).unwrap().relay.unwrap();
        assert_eq!(relay.tls_name(), "::1");
    }
}
