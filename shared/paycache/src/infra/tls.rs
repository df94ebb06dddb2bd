//! The trusted roots of this crate's own TLS clients (PostgreSQL and the AWS
//! APIs): the system's, read and parsed once per execution environment
//! however many clients use them.

use std::sync::OnceLock;

use rustls::RootCertStore;

/// The system's trusted roots. Unreadable certificates are skipped; if none
/// remain, TLS connections fail — verification never turns off.
pub(crate) fn native_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        roots
    })
}

/// A client configuration (ring) that verifies against `roots`.
pub(crate) fn client_config(roots: RootCertStore) -> rustls::ClientConfig {
    let _ = rustls::crypto::ring::default_provider().install_default();
    rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth()
}
