//! TLS client settings for ureq: the system's roots (read once per process — parsing the CA
//! store is most of a refresh's CPU), plus a CA file when one is configured. A plain-http
//! URL gets a config with no roots at all, so nothing is parsed for it.

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::path::Path;
use std::sync::{Arc, OnceLock};

fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| rustls_native_certs::load_native_certs().unwrap_or_default())
}

fn config(roots: rustls::RootCertStore) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// TLS roots: the system's, plus `ca_file` when set.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in system_roots() {
        let _ = roots.add(cert.clone());
    }
    if let Some(ca) = ca_file {
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|e| format!("cannot read ca_file {}: {e}", ca.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("ca_file {} is not PEM: {e}", ca.display()))?;
        if certs.is_empty() {
            return Err(format!("ca_file {} holds no certificate", ca.display()));
        }
        for c in certs {
            roots.add(c).map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
        }
    }
    config(roots)
}

/// What a request to `url` needs: the system roots for https, none for anything else
/// (ureq would otherwise load the system store for a plain-http URL too).
pub fn for_url(url: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    if url.starts_with("https://") { client_config(None) } else { config(rustls::RootCertStore::empty()) }
}
