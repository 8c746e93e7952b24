//! TLS with rustls (ring provider): the client configuration a profile asks for, the sink's
//! server configuration, the echo heartbeat, and the classification of handshake failures by
//! their alert.
//!
//! Resumption: on, every connection of the process draws on one client session store (sized
//! for a ticket per connection, since a storm reconnects thousands at once and TLS 1.3 tickets
//! are used once); off, every handshake is a full one. The sink keeps a stateless ticketer and a large
//! session cache so that resumption is the client's choice alone.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{AlertDescription, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Failure;
use crate::metrics::{ErrorDetail, ErrorKind};
use crate::profile::protocol::TlsOptions;

pub type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

/// TLS 1.3 tickets the client keeps per server name. rustls' own cache keeps 8, so a storm of
/// thousands reconnecting at once would resume 8 and handshake the rest in full; a fleet of
/// devices each holds its own ticket, which this store stands in for.
const TICKETS_PER_SERVER: usize = 65_536;
/// Server session cache entries, for TLS 1.2 session ids.
const SERVER_SESSIONS: usize = 65_536;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A run's TLS client: one configuration shared by every connection.
pub struct Client {
    connector: tokio_rustls::TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl Client {
    pub fn new(
        options: &TlsOptions,
        extra_roots: &[CertificateDer<'static>],
    ) -> Result<Client, String> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?;
        let mut config = if options.verify {
            let mut roots = RootCertStore::empty();
            if let Some(path) = &options.ca_file {
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("tls.ca_file: cannot read {}: {e}", path.display()))?;
                let mut any = false;
                for cert in certs {
                    let cert = cert.map_err(|e| {
                        format!("tls.ca_file: {} is not valid PEM: {e}", path.display())
                    })?;
                    roots.add(cert).map_err(|e| {
                        format!(
                            "tls.ca_file: {}: a certificate is unusable: {e}",
                            path.display()
                        )
                    })?;
                    any = true;
                }
                if !any {
                    return Err(format!(
                        "tls.ca_file: {} holds no certificate; give a PEM file of CA certificates",
                        path.display()
                    ));
                }
            }
            for cert in extra_roots {
                roots
                    .add(cert.clone())
                    .map_err(|e| format!("tls: the sink's certificate is unusable: {e}"))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
                .with_no_client_auth()
        };
        config.alpn_protocols = options.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        config.resumption = if options.resumption {
            rustls::client::Resumption::store(Arc::new(TicketStore::default()))
        } else {
            rustls::client::Resumption::disabled()
        };
        let server_name = options
            .server_name
            .as_ref()
            .map(|name| {
                ServerName::try_from(name.clone())
                    .map_err(|_| format!("tls.server_name: {name:?} is not a DNS name"))
            })
            .transpose()?;
        Ok(Client {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    pub async fn handshake(
        &self,
        tcp: TcpStream,
        target: SocketAddr,
    ) -> Result<Box<ClientStream>, Failure> {
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(target.ip().into()));
        self.connector
            .connect(name, tcp)
            .await
            .map(Box::new)
            .map_err(|e| classify(&e))
    }
}

/// A client session store shared by all connections of the process, with room for one
/// ticket per connection (see `TICKETS_PER_SERVER`). Each ticket is used at most once.
#[derive(Debug, Default)]
struct TicketStore {
    servers: Mutex<HashMap<ServerName<'static>, Sessions>>,
}

#[derive(Debug, Default)]
struct Sessions {
    kx_hint: Option<rustls::NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    tls13: VecDeque<Tls13ClientSessionValue>,
}

impl TicketStore {
    fn with<T>(&self, name: &ServerName<'_>, f: impl FnOnce(&mut Sessions) -> T) -> T {
        // A poisoned lock only means a panic elsewhere; the tickets are still usable.
        let mut servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        f(servers.entry(name.to_owned()).or_default())
    }
}

impl ClientSessionStore for TicketStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: rustls::NamedGroup) {
        self.with(&server_name, |s| s.kx_hint = Some(group));
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.with(server_name, |s| s.kx_hint)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.with(&server_name, |s| s.tls12 = Some(value));
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.with(server_name, |s| s.tls12.clone())
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.with(server_name, |s| s.tls12 = None);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        self.with(&server_name, |s| {
            if s.tls13.len() == TICKETS_PER_SERVER {
                s.tls13.pop_front();
            }
            s.tls13.push_back(value);
        });
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        // Newest first: the oldest are the likeliest to have expired.
        self.with(server_name, |s| s.tls13.pop_back())
    }
}

/// A handshake failure as a kind and the alert behind it: one received from the server, or
/// the one this side sent refusing the server's certificate.
pub fn classify(error: &std::io::Error) -> Failure {
    let tls = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let detail = match tls {
        Some(rustls::Error::AlertReceived(alert)) => {
            Some(ErrorDetail::AlertReceived(u8::from(*alert)))
        }
        Some(rustls::Error::InvalidCertificate(cert)) => Some(ErrorDetail::AlertSent(u8::from(
            AlertDescription::from(cert.clone()),
        ))),
        Some(rustls::Error::NoApplicationProtocol) => Some(ErrorDetail::AlertSent(u8::from(
            AlertDescription::NoApplicationProtocol,
        ))),
        _ => None,
    };
    Failure {
        kind: ErrorKind::TlsHandshake,
        detail,
    }
}

/// Accepts any certificate: `"verify": false`. Signatures are still checked, so the
/// handshake costs what a verifying client's does, less the chain walk.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The names the sink's self-signed certificate carries.
pub const SELF_SIGNED_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// A self-signed certificate for `localhost`, `127.0.0.1` and `::1`, and its key.
pub fn self_signed() -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), String> {
    let certified = generate(&SELF_SIGNED_NAMES)?;
    let key = PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    Ok((certified.cert.der().clone(), key))
}

/// A self-signed certificate for `names` and its key, as PEM text (for a proxy in front of
/// the sink, or a test's own server).
pub fn self_signed_pem(names: &[&str]) -> Result<(String, String), String> {
    let certified = generate(names)?;
    Ok((certified.cert.pem(), certified.signing_key.serialize_pem()))
}

/// A self-signed certificate for `SELF_SIGNED_NAMES` and its key, written as `sink.pem` and
/// `sink.key` into a fresh directory under the system's temporary directory, for several sink
/// processes to serve the same certificate. The directory is removed when this is dropped.
pub struct SelfSignedFiles {
    dir: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl SelfSignedFiles {
    /// `purpose` names the directory (`stampede-PURPOSE-PID-MICROS`).
    pub fn create(purpose: &str) -> Result<SelfSignedFiles, String> {
        let (cert, key) = self_signed_pem(&SELF_SIGNED_NAMES)?;
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        let dir = std::env::temp_dir().join(format!(
            "stampede-{purpose}-{}-{micros}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let files = SelfSignedFiles {
            cert: dir.join("sink.pem"),
            key: dir.join("sink.key"),
            dir,
        };
        for (path, text) in [(&files.cert, &cert), (&files.key, &key)] {
            std::fs::write(path, text)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        Ok(files)
    }

    /// The certificate as PEM text, for `--cert-out`.
    pub fn cert_pem(&self) -> Result<String, String> {
        std::fs::read_to_string(&self.cert)
            .map_err(|e| format!("cannot read {}: {e}", self.cert.display()))
    }
}

impl Drop for SelfSignedFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn generate(names: &[&str]) -> Result<rcgen::CertifiedKey<rcgen::KeyPair>, String> {
    rcgen::generate_simple_self_signed(names.iter().map(ToString::to_string).collect::<Vec<_>>())
        .map_err(|e| format!("cannot generate a self-signed certificate: {e}"))
}

/// A certificate as PEM text.
pub fn pem(cert: &CertificateDer<'_>) -> String {
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in text.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The sink's server configuration from PEM files, or from a fresh self-signed certificate
/// when neither is given. Returns the leaf certificate too (what clients must trust).
pub fn server_config(
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<(Arc<ServerConfig>, CertificateDer<'static>), String> {
    let (chain, key) = match (cert, key) {
        (None, None) => {
            let (cert, key) = self_signed()?;
            (vec![cert], key)
        }
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<_, _>>())
                .map_err(|e| {
                    format!(
                        "--cert {}: cannot read PEM certificates: {e}",
                        cert.display()
                    )
                })?;
            if chain.is_empty() {
                return Err(format!("--cert {}: holds no certificate", cert.display()));
            }
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                format!(
                    "--key {}: cannot read a PEM private key: {e}",
                    key.display()
                )
            })?;
            (chain, key)
        }
        (Some(_), None) => return Err("--cert needs --key (the certificate's private key)".into()),
        (None, Some(_)) => return Err("--key needs --cert (the certificate chain)".into()),
    };
    let leaf = chain[0].clone();
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("--cert/--key: the key does not fit the certificate: {e}"))?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SERVER_SESSIONS);
    config.ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|e| format!("tls ticketer: {e}"))?;
    Ok((Arc::new(config), leaf))
}

/// One heartbeat: write the payload and read the same number of bytes back.
pub async fn echo<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    payload: &[u8],
) -> Result<(), Failure> {
    stream
        .write_all(payload)
        .await
        .map_err(|e| Failure::io(&e))?;
    stream.flush().await.map_err(|e| Failure::io(&e))?;
    let mut buf = [0u8; 256];
    let mut got = 0;
    while got < payload.len() {
        let want = (payload.len() - got).min(buf.len());
        match stream.read(&mut buf[..want]).await {
            Ok(0) => return Err(Failure::kind(ErrorKind::ClosedByPeer)),
            Ok(n) => got += n,
            Err(e) => return Err(Failure::io(&e)),
        }
    }
    Ok(())
}

/// Reads and discards until the peer closes (a close_notify or EOF) or the socket fails.
pub async fn closed<S: AsyncRead + Unpin>(stream: &mut S) -> Failure {
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => return Failure::kind(ErrorKind::ClosedByPeer),
            Ok(_) => {}
            Err(e) => return Failure::io(&e),
        }
    }
}

pub type ServerStream = tokio_rustls::server::TlsStream<TcpStream>;

/// The sink's side of a handshake, counted (and whether it resumed a session).
pub async fn accept(
    config: Arc<ServerConfig>,
    tcp: TcpStream,
    stats: &super::SinkStats,
) -> Option<ServerStream> {
    let stream = tokio_rustls::TlsAcceptor::from(config)
        .accept(tcp)
        .await
        .ok()?;
    stats.tls_handshakes.fetch_add(1, Ordering::Relaxed);
    if stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
        stats.tls_resumed.fetch_add(1, Ordering::Relaxed);
    }
    Some(stream)
}

/// The sink's TLS connection after its handshake: echo what arrives.
pub async fn serve(mut stream: ServerStream, bytes: &AtomicU64) {
    // Small: it lives in every held connection's task; rustls buffers whole records anyway.
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                bytes.fetch_add(n as u64, Ordering::Relaxed);
                if stream.write_all(&buf[..n]).await.is_err() || stream.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}
