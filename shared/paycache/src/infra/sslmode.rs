//! `sslmode` as libpq (and psql, psycopg, sqlx) means it.
//!
//! | `sslmode` | TLS | certificate checked |
//! |---|---|---|
//! | `disable` | never | — |
//! | `allow`, `prefer` (the default) | when the server offers it | no |
//! | `require` | always (refuses a server without TLS) | no; with `DATABASE_CA_CERT` set, as `verify-ca` |
//! | `verify-ca` | always | chain to the system roots or `DATABASE_CA_CERT` |
//! | `verify-full` | always | chain, and the host name |
//!
//! So a newcomer's own PostgreSQL (Debian's default: TLS with a self-signed
//! certificate) works with a bare `DATABASE_URL`, as with every other
//! client; the deployed template sets `sslmode=verify-full`. (`allow` tries
//! TLS first rather than plain text first: the driver has no "plain first"
//! mode; either way neither is verified.) tokio-postgres knows only
//! `disable`, `prefer` and `require`, so the mode is read here and removed
//! from what the driver parses.
//!
//! `require` with a root CA configured verifies the chain, as libpq does:
//! "if a root CA file exists, the behavior of `sslmode=require` will be the
//! same as that of `verify-ca`" (PostgreSQL documentation, libpq → SSL
//! Support → Client Verification of Server Certificates). Here the root CA
//! file is `DATABASE_CA_CERT` ([`SslMode::with_root_ca`]).

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when offered, unverified (libpq's `allow` and `prefer`).
    Prefer,
    /// TLS always, unverified.
    Require,
    /// TLS always, the chain verified.
    VerifyCa,
    /// TLS always, the chain and the host name verified.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "disable" => Self::Disable,
            "allow" | "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }

    /// What tokio-postgres is told.
    pub(crate) fn driver(self) -> tokio_postgres::config::SslMode {
        match self {
            Self::Disable => tokio_postgres::config::SslMode::Disable,
            Self::Prefer => tokio_postgres::config::SslMode::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }

    /// The mode in effect once a root CA file is (or is not) configured:
    /// libpq's `require` becomes `verify-ca` when one is.
    pub fn with_root_ca(self, root_ca_configured: bool) -> Self {
        match self {
            Self::Require if root_ca_configured => Self::VerifyCa,
            other => other,
        }
    }

    /// Whether the server's certificate is checked at all.
    pub fn verifies(self) -> bool {
        matches!(self, Self::VerifyCa | Self::VerifyFull)
    }
}

/// Splits `sslmode` off a connection string (URL or key/value form):
/// the rest for the driver, and the mode (`prefer` when absent). `None` for
/// an `sslmode` that is not one of libpq's.
pub fn split(conninfo: &str) -> Option<(String, SslMode)> {
    let mut mode = SslMode::Prefer;
    if conninfo.starts_with("postgres://") || conninfo.starts_with("postgresql://") {
        let Some((base, query)) = conninfo.split_once('?') else {
            return Some((conninfo.to_owned(), mode));
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("sslmode", v)) => mode = SslMode::parse(v)?,
                _ => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Some((rest, mode));
    }
    let mut kept = Vec::new();
    for token in conninfo.split_whitespace() {
        match token.split_once('=') {
            Some(("sslmode", v)) => mode = SslMode::parse(v.trim_matches('\''))?,
            _ => kept.push(token),
        }
    }
    Some((kept.join(" "), mode))
}

/// The rustls client configuration for `mode` (not used for `disable`).
pub(crate) fn client_config(mode: SslMode, roots: RootCertStore) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        SslMode::VerifyFull => return crate::infra::tls::client_config(roots),
        SslMode::VerifyCa => Arc::new(ChainOnly(
            match WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
            {
                Ok(v) => v,
                // No usable roots: nothing can verify; refuse everything.
                Err(_) => return crate::infra::tls::client_config(RootCertStore::empty()),
            },
        )),
        SslMode::Disable | SslMode::Prefer | SslMode::Require => {
            Arc::new(Unverified(provider.clone()))
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth()
}

/// `verify-ca`: the chain must verify; the host name is not compared.
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
    ) -> Result<ServerCertVerified, Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(Error::InvalidCertificate(
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
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require`: encrypted, the certificate not checked (the
/// handshake's own signatures still are).
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
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
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What to tell the operator when a connection fails over TLS: why, and
/// which setting changes it. `None` when the failure is not about TLS.
pub(crate) fn hint(mode: SslMode, error_text: &str) -> Option<&'static str> {
    if error_text.contains("invalid peer certificate") {
        return Some(
            // rustls 0.23 says "certificate not valid for name …" (its
            // `NotValidForNameContext`); older wording, `NotValidForName`.
            if mode == SslMode::VerifyFull
                && (error_text.contains("not valid for name")
                    || error_text.contains("NotValidForName"))
            {
                "certificate verify failed: the certificate does not name this host; connect with the name it carries, or use sslmode=verify-ca"
            } else {
                "certificate verify failed (self-signed, or signed by a CA not trusted here); use sslmode=verify-full with DATABASE_CA_CERT set to the CA that signed it, or sslmode=prefer / require without DATABASE_CA_CERT (encrypted, not verified)"
            },
        );
    }
    if error_text.contains("server does not support TLS") {
        return Some(
            "the server does not offer TLS, which this sslmode requires; enable ssl on the server, or use sslmode=prefer",
        );
    }
    None
}

/// The roots a mode verifies against: the system's (RDS Proxy's
/// certificate chains to Amazon's public roots, among them) and
/// `DATABASE_CA_CERT`'s. Unverified modes need none (and do not load them).
pub(crate) fn roots(
    sslmode: SslMode,
    extra: &[rustls::pki_types::CertificateDer<'static>],
) -> rustls::RootCertStore {
    let mut roots = if sslmode.verifies() {
        crate::infra::tls::native_roots().clone()
    } else {
        rustls::RootCertStore::empty()
    };
    for cert in extra {
        // Checked when the configuration was read.
        let _ = roots.add(cert.clone());
    }
    roots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_with_a_root_ca_is_verify_ca() {
        assert_eq!(SslMode::Require.with_root_ca(true), SslMode::VerifyCa);
        assert_eq!(SslMode::Require.with_root_ca(false), SslMode::Require);
        assert_eq!(SslMode::Prefer.with_root_ca(true), SslMode::Prefer);
        assert_eq!(SslMode::VerifyFull.with_root_ca(true), SslMode::VerifyFull);
    }

    #[test]
    fn sslmode_is_read_from_either_form_and_removed() {
        assert_eq!(
            split("host=h port=5 sslmode=verify-full user=u"),
            Some(("host=h port=5 user=u".into(), SslMode::VerifyFull))
        );
        assert_eq!(
            split("host=h user=u"),
            Some(("host=h user=u".into(), SslMode::Prefer))
        );
        assert_eq!(
            split("postgresql://u:p@h:5/db?sslmode=verify-ca&application_name=x"),
            Some((
                "postgresql://u:p@h:5/db?application_name=x".into(),
                SslMode::VerifyCa
            ))
        );
        assert_eq!(
            split("postgres://h/db?sslmode=require"),
            Some(("postgres://h/db".into(), SslMode::Require))
        );
        assert_eq!(
            split("postgres://h/db"),
            Some(("postgres://h/db".into(), SslMode::Prefer))
        );
        assert_eq!(
            split("postgres://h/db?sslmode=allow").map(|s| s.1),
            Some(SslMode::Prefer)
        );
        assert_eq!(
            split("postgres://h/db?sslmode=disable").map(|s| s.1),
            Some(SslMode::Disable)
        );
        assert_eq!(split("postgres://h/db?sslmode=sometimes"), None);
        assert_eq!(split("host=h sslmode=VERIFY-FULL"), None);
    }

    /// RDS Proxy's certificate chains to Amazon's public roots, which the
    /// system's bundle holds: `verify-full` without `DATABASE_CA_CERT`
    /// depends on those roots being loaded for the verifying modes.
    #[test]
    fn verifying_modes_trust_the_system_roots_and_the_configured_ca() {
        let system = rustls_native_certs::load_native_certs().certs;
        assert!(
            !system.is_empty(),
            "no system CA certificates here (Debian: ca-certificates): this check needs some"
        );
        let n = crate::infra::tls::native_roots().len();
        assert!(n > 0);
        for mode in [SslMode::VerifyFull, SslMode::VerifyCa] {
            assert_eq!(roots(mode, &[]).len(), n, "{mode:?}: the system roots");
            assert_eq!(
                roots(mode, &system[..1]).len(),
                n + 1,
                "{mode:?}: and DATABASE_CA_CERT's"
            );
        }
        for mode in [SslMode::Disable, SslMode::Prefer, SslMode::Require] {
            assert!(roots(mode, &[]).is_empty(), "{mode:?}: no roots loaded");
        }
    }
}
