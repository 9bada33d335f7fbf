//! Where an IMAP restore connects and how it trusts the server: the `--imap` address forms
//! (`imaps://`, `imap://`, `host:port`), the rustls client configuration (system roots,
//! `--imap-ca`, `--imap-insecure`) and the TLS handshake with errors that say what to do.
//! Never sends anything itself; the session (`session.rs`) decides when TLS starts.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore,
};

use crate::error::{Error, Result};

/// Port of IMAP over implicit TLS (RFC 8314).
pub const IMAPS_PORT: u16 = 993;
/// Port of IMAP with STARTTLS.
pub const IMAP_PORT: u16 = 143;

/// How the connection gets its TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Security {
    /// TLS from the first byte (`imaps://`, port 993).
    Implicit,
    /// Plain TCP, then STARTTLS before any credential (`imap://`).
    StartTls,
}

/// A parsed `--imap` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImapAddr {
    /// Host name or IP address, without IPv6 brackets; also the name the certificate must hold.
    pub host: String,
    pub port: u16,
    pub security: Security,
}

impl ImapAddr {
    /// `imaps://host[:port]` (implicit TLS, default 993), `imap://host[:port]` (STARTTLS,
    /// default 143), or `host:port` (993 means implicit TLS, any other port STARTTLS). IPv6
    /// addresses go in brackets: `imaps://[::1]`.
    pub fn parse(s: &str) -> Result<ImapAddr> {
        let bad = |why: &str| {
            Error::usage(format!(
                "--imap {s:?}: {why} (imaps://HOST[:PORT], imap://HOST[:PORT] or HOST:PORT)"
            ))
        };
        let (scheme, rest) = match s.split_once("://") {
            Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
                "imaps" => (Some(Security::Implicit), rest),
                "imap" => (Some(Security::StartTls), rest),
                _ => return Err(bad("unknown scheme")),
            },
            None => (None, s),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '@', '?', '#']) || rest.chars().any(char::is_whitespace) {
            return Err(bad("a host and port only"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            match after {
                "" => (host, None),
                p => (
                    host,
                    Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?),
                ),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((h, _)) if h.contains(':') => return Err(bad("put an IPv6 address in []")),
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| bad("bad port"))?,
            ),
            None => None,
        };
        let (security, port) = match (scheme, port) {
            (Some(Security::Implicit), p) => (Security::Implicit, p.unwrap_or(IMAPS_PORT)),
            (Some(Security::StartTls), p) => (Security::StartTls, p.unwrap_or(IMAP_PORT)),
            (None, Some(IMAPS_PORT)) => (Security::Implicit, IMAPS_PORT),
            (None, Some(p)) => (Security::StartTls, p),
            (None, None) => return Err(bad("no port")),
        };
        Ok(ImapAddr {
            host: host.to_string(),
            port,
            security,
        })
    }

    /// The address to connect to (`host:port`, IPv6 bracketed).
    pub fn socket(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for ImapAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.security {
            Security::Implicit => "imaps",
            Security::StartTls => "imap",
        };
        write!(f, "{scheme}://{}", self.socket())
    }
}

/// Which certificates the server's must chain to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// The operating system's trust store.
    System,
    /// Only the CA certificates in this PEM file (a private CA), instead of the system's.
    Ca(PathBuf),
    /// No check at all (`--imap-insecure`): anyone on the path can read the password.
    Insecure,
}

/// The rustls configuration for `trust`, on the aws-lc-rs provider the rest of the program's
/// TLS already uses.
pub fn client_config(trust: &Trust) -> Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::usage(format!("TLS setup: {e}")))?;
    let config = match trust {
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth(),
        Trust::System => {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(Error::refused(
                    "no CA certificates in the system's trust store (ca-certificates): give \
                     the server's CA with --imap-ca FILE",
                ));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Ca(path) => {
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| Error::config(path, format!("--imap-ca: {e}")))?;
            for cert in certs {
                let cert = cert.map_err(|e| Error::config(path, format!("--imap-ca: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| Error::config(path, format!("--imap-ca: {e}")))?;
            }
            if roots.is_empty() {
                return Err(Error::config(
                    path,
                    "--imap-ca: no CERTIFICATE in the file (PEM expected)",
                ));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(Arc::new(config))
}

/// `--imap-insecure`: accepts any certificate. The handshake signatures are still checked, so
/// the session is at least bound to the key the server showed.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
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
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
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

/// A TLS session over the TCP connection.
pub type TlsStream = rustls::StreamOwned<ClientConnection, TcpStream>;

/// Runs the handshake to its end, so a certificate the server shows that we do not trust is
/// an error here, before a single IMAP byte (let alone a password) goes through the session.
pub fn handshake(
    config: Arc<ClientConfig>,
    addr: &ImapAddr,
    mut tcp: TcpStream,
) -> Result<TlsStream> {
    let name = ServerName::try_from(addr.host.clone())
        .map_err(|_| Error::usage(format!("--imap {addr}: {:?} is no host name", addr.host)))?;
    let mut conn = ClientConnection::new(config, name)
        .map_err(|e| Error::protocol(format!("IMAP server {addr}"), format!("TLS: {e}")))?;
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut tcp) {
            return Err(tls_error(addr, e));
        }
    }
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// Names the server and says what the operator can do about a refused certificate.
fn tls_error(addr: &ImapAddr, e: io::Error) -> Error {
    let inner = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
        .cloned();
    let server = format!("IMAP server {addr}");
    match inner {
        Some(rustls::Error::InvalidCertificate(c)) => {
            let why = match &c {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                    "certificate not trusted (its issuer is not a CA we trust): give the CA \
                     with --imap-ca FILE, or skip the check with --imap-insecure"
                        .to_string()
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => format!(
                    "certificate is not valid for {:?}: connect by the name it holds",
                    addr.host
                ),
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    "certificate has expired".to_string()
                }
                other => format!("certificate refused: {other:?}"),
            };
            Error::refused(format!("{server}: {why}"))
        }
        Some(other) => Error::protocol(server, format!("TLS: {other}")),
        None => Error::protocol(server, format!("TLS handshake: {e}")),
    }
}

/// The session's byte stream: plain TCP until TLS starts.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
    /// Only while STARTTLS moves the connection from `Plain` to `Tls`.
    Closed,
}

impl Stream {
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
            Stream::Closed => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
            Stream::Closed => Err(io::ErrorKind::NotConnected.into()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
            Stream::Closed => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_forms() {
        let p = |s: &str| ImapAddr::parse(s).map(|a| (a.host, a.port, a.security));
        assert_eq!(
            p("imaps://mail.example.com").unwrap(),
            ("mail.example.com".into(), 993, Security::Implicit)
        );
        assert_eq!(
            p("imap://mail.example.com").unwrap(),
            ("mail.example.com".into(), 143, Security::StartTls)
        );
        assert_eq!(
            p("IMAPS://127.0.0.1:10993/").unwrap(),
            ("127.0.0.1".into(), 10993, Security::Implicit)
        );
        assert_eq!(
            p("mail:993").unwrap(),
            ("mail".into(), 993, Security::Implicit)
        );
        assert_eq!(
            p("mail:143").unwrap(),
            ("mail".into(), 143, Security::StartTls)
        );
        assert_eq!(
            p("imaps://[::1]:994").unwrap(),
            ("::1".into(), 994, Security::Implicit)
        );
        assert_eq!(
            ImapAddr::parse("imaps://[::1]").unwrap().socket(),
            "[::1]:993"
        );
        for bad in [
            "mail",
            "http://mail",
            "::1:993",
            "imap://user@mail",
            "imap://mail:0",
            "imap://mail:x",
            "imap://",
            "imap://mail/INBOX",
        ] {
            assert!(ImapAddr::parse(bad).is_err(), "{bad}");
        }
    }
}
