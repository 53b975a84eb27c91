//! TLS to the PostgreSQL server, as libpq's `sslmode` and `sslrootcert` URL
//! options ask (docs/format.md §8): rustls with the ring provider, so the
//! wheels carry no OpenSSL, and the platform's root certificates unless the
//! URL names a file of its own.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{Error, Result};

/// libpq's `sslmode` values perdure follows (`allow` is not one: it would
/// try plain first, which no server that offers TLS should get).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS if the server offers it, else plain (libpq's default).
    Prefer,
    /// TLS or no connection.
    Require,
    /// TLS, the certificate's chain checked against the roots.
    VerifyCa,
    /// TLS, the chain and the host name checked.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Option<SslMode> {
        Some(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where the root certificates come from: `sslrootcert=/path/ca.pem`, or the
/// platform's store (`sslrootcert=system`, or none given).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Roots {
    File(PathBuf),
    System,
}

/// How a location's connections use TLS: the mode, and the connector that
/// does it (none where no TLS is ever tried).
#[derive(Clone)]
pub(crate) struct Tls {
    mode: SslMode,
    roots: Option<Roots>,
    connector: Option<MakeRustlsConnect>,
}

impl Tls {
    /// Takes `sslmode=` and `sslrootcert=` out of `options` (the URL's query,
    /// split at `&`): tokio-postgres knows neither `verify-ca` nor
    /// `verify-full`, nor where roots come from. `over_sockets_only`: every
    /// host is a Unix socket, where libpq never uses TLS.
    pub(crate) fn take(options: &mut Vec<&str>, over_sockets_only: bool) -> Result<Tls> {
        let mut mode = SslMode::Prefer;
        let mut roots = None;
        let mut error = None;
        options.retain(|option| {
            if let Some(value) = option.strip_prefix("sslmode=") {
                match SslMode::parse(&decode(value)) {
                    Some(given) => mode = given,
                    None => {
                        error = Some(Error::InvalidInput(format!(
                            "sslmode={value}: perdure knows disable, prefer, require, verify-ca and verify-full"
                        )))
                    }
                }
                false
            } else if let Some(value) = option.strip_prefix("sslrootcert=") {
                let value = decode(value);
                roots = Some(if value == "system" {
                    Roots::System
                } else {
                    Roots::File(PathBuf::from(value))
                });
                false
            } else {
                true
            }
        });
        if let Some(error) = error {
            return Err(error);
        }
        let verifier: Option<Arc<dyn ServerCertVerifier>> = match (mode, &roots) {
            _ if over_sockets_only => None,
            (SslMode::Disable, _) => None,
            // libpq checks nothing here unless it has roots: then as verify-ca.
            (SslMode::Prefer | SslMode::Require, None) => Some(Arc::new(AnyCertificate(provider()))),
            (SslMode::Prefer | SslMode::Require | SslMode::VerifyCa, Some(_)) | (SslMode::VerifyCa, None) => {
                Some(Arc::new(ChainOnly(webpki(&roots)?)))
            }
            (SslMode::VerifyFull, _) => Some(webpki(&roots)?),
        };
        let connector = match verifier {
            Some(verifier) => Some(MakeRustlsConnect::new(
                ClientConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .map_err(|err| Error::InvalidInput(format!("TLS set-up: {err}")))?
                    .dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_no_client_auth(),
            )),
            None => None,
        };
        Ok(Tls { mode, roots, connector })
    }

    /// What tokio-postgres is told: it asks the server for TLS unless
    /// `disable`, and refuses a server without it from `require` on.
    pub(crate) fn client_mode(&self) -> postgres::config::SslMode {
        match (self.mode, &self.connector) {
            (_, None) | (SslMode::Disable, _) => postgres::config::SslMode::Disable,
            (SslMode::Prefer, _) => postgres::config::SslMode::Prefer,
            _ => postgres::config::SslMode::Require,
        }
    }

    pub(crate) fn mode(&self) -> SslMode {
        self.mode
    }

    /// A connection over TLS as set up, or plain.
    pub(crate) fn connect(&self, config: &postgres::Config) -> std::result::Result<postgres::Client, postgres::Error> {
        match &self.connector {
            Some(connector) => config.connect(connector.clone()),
            None => config.connect(postgres::NoTls),
        }
    }

    /// As [`Tls::connect`], a client of the async API; its connection is
    /// the task spawned on the runtime this runs in, which must drive it.
    pub(crate) async fn connect_async(
        &self,
        config: &tokio_postgres::Config,
    ) -> std::result::Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), postgres::Error> {
        // A connection that ends in an error leaves it to the client's next
        // request to report.
        Ok(match &self.connector {
            Some(connector) => {
                let (client, connection) = config.connect(connector.clone()).await?;
                (client, tokio::spawn(async move { drop(connection.await) }))
            }
            None => {
                let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
                (client, tokio::spawn(async move { drop(connection.await) }))
            }
        })
    }

    /// Says what failed in a connection attempt, for `Error::Postgres`.
    pub(crate) fn explain(&self, err: &postgres::Error, shown: &str) -> String {
        let mode = self.mode.name();
        if let Some(refused) = rustls_error(err) {
            let roots = match &self.roots {
                Some(Roots::File(path)) => format!("roots from {}", path.display()),
                _ => "the platform's roots".to_owned(),
            };
            return match refused {
                rustls::Error::InvalidCertificate(_) => format!(
                    "the server's TLS certificate is refused (sslmode={mode}, {roots}: {refused}): cannot connect to {shown}"
                ),
                _ => format!("the TLS handshake failed (sslmode={mode}: {refused}): cannot connect to {shown}"),
            };
        }
        let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
        while let Some(inner) = cause {
            if inner.to_string().contains("server does not support TLS") {
                return format!(
                    "TLS required (sslmode={mode}) but the server does not offer it: cannot connect to {shown}"
                );
            }
            cause = inner.source();
        }
        format!("cannot connect to {shown}")
    }
}

/// The rustls error under a failed connection, if TLS is what failed
/// (tokio-rustls wraps it in an `io::Error`, whose `source` skips it).
fn rustls_error(err: &postgres::Error) -> Option<&rustls::Error> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(inner) = cause {
        if let Some(found) = inner.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        if let Some(found) = inner
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|wrapped| wrapped.downcast_ref::<rustls::Error>())
        {
            return Some(found);
        }
        cause = inner.source();
    }
    None
}

/// ring, not aws-lc-rs, which needs cmake and nasm on the wheel builders.
/// rustls deprecates ring's provider for lacking post-quantum key exchange,
/// which the server's side (OpenSSL) would have to offer too.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The checker of chain and host name over the roots asked for.
fn webpki(roots: &Option<Roots>) -> Result<Arc<WebPkiServerVerifier>> {
    let store = match roots {
        Some(Roots::File(path)) => file_roots(path)?,
        Some(Roots::System) | None => system_roots()?,
    };
    WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider())
        .build()
        .map_err(|err| Error::InvalidInput(format!("TLS root certificates: {err}")))
}

fn file_roots(path: &Path) -> Result<RootCertStore> {
    let bad = |why: String| Error::InvalidInput(format!("sslrootcert {}: {why}", path.display()));
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|err| bad(err.to_string()))? {
        let cert = cert.map_err(|err| bad(format!("not a PEM certificate: {err}")))?;
        store
            .add(cert)
            .map_err(|err| bad(format!("not a usable CA certificate: {err}")))?;
    }
    if store.is_empty() {
        return Err(bad("holds no PEM certificate".to_owned()));
    }
    Ok(store)
}

fn system_roots() -> Result<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    store.add_parsable_certificates(found.certs);
    if store.is_empty() {
        let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        return Err(Error::InvalidInput(format!(
            "no root certificates found on this platform ({}): name a CA file with sslrootcert=",
            errors.join("; ")
        )));
    }
    Ok(store)
}

/// `require` without roots: libpq encrypts but checks no certificate (the
/// handshake's signatures are still checked, so the server holds the key).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the full check but for the host name. webpki checks the
/// chain before the name, so a name mismatch means the chain was good.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A URL query value with its `%XX` escapes decoded (a path may need them).
fn decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let hex = bytes.get(at + 1..at + 3).and_then(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        });
        match (bytes[at], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                at += 3;
            }
            (byte, _) => {
                out.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(query: &str) -> Result<(Tls, Vec<&str>)> {
        let mut options: Vec<&str> = query.split('&').collect();
        let tls = Tls::take(&mut options, false)?;
        Ok((tls, options))
    }

    #[test]
    fn the_ssl_options_are_taken_out_and_the_rest_kept() {
        let (tls, kept) = take("port=5432&sslmode=require&application_name=x").unwrap();
        assert_eq!(tls.mode(), SslMode::Require);
        assert_eq!(tls.client_mode(), postgres::config::SslMode::Require);
        assert_eq!(kept, ["port=5432", "application_name=x"]);
        let (tls, kept) = take("port=1").unwrap();
        assert_eq!(
            (tls.mode(), tls.client_mode()),
            (SslMode::Prefer, postgres::config::SslMode::Prefer)
        );
        assert_eq!(kept, ["port=1"]);
        let (tls, _) = take("sslmode=disable").unwrap();
        assert!(tls.connector.is_none());
        assert_eq!(tls.client_mode(), postgres::config::SslMode::Disable);
    }

    #[test]
    fn unknown_modes_are_refused() {
        for bad in ["allow", "verify_full", "REQUIRE", ""] {
            let err = take(&format!("sslmode={bad}")).err().unwrap();
            assert!(
                matches!(&err, Error::InvalidInput(m) if m.contains("verify-full")),
                "{err}"
            );
        }
    }

    #[test]
    fn over_unix_sockets_no_tls_is_tried() {
        let mut options = vec!["sslmode=verify-full", "sslrootcert=system"];
        let tls = Tls::take(&mut options, true).unwrap();
        assert!(tls.connector.is_none());
        assert_eq!(tls.client_mode(), postgres::config::SslMode::Disable);
        assert_eq!(tls.mode(), SslMode::VerifyFull);
        assert!(options.is_empty());
    }

    #[test]
    fn a_root_file_that_is_not_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no such ca.pem");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        for path in [&missing, &garbage] {
            let escaped = path.display().to_string().replace(' ', "%20");
            for mode in ["require", "verify-ca", "verify-full"] {
                let err = take(&format!("sslmode={mode}&sslrootcert={escaped}")).err().unwrap();
                assert!(
                    matches!(&err, Error::InvalidInput(m) if m.contains(&path.display().to_string())),
                    "{err}"
                );
            }
        }
    }

    #[test]
    fn escapes_are_decoded() {
        assert_eq!(decode("%2Ftmp%2Fa%20b.pem"), "/tmp/a b.pem");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz"), "%zz");
    }
}
