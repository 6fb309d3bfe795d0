//! The process-wide TLS crypto provider: ring, installed once (I/O-free, process state).
//!
//! Kiln compiles rustls without a bundled provider (`rustls-tls-no-provider` for oci-client
//! and reqwest; kube brings ring itself), so that aws-lc never enters the build. rustls then
//! needs its provider installed before the first client is built; every constructor of an
//! HTTP client in Kiln calls [`install_crypto_provider`] first.

use std::sync::Once;

/// Installs ring as rustls' process-wide default provider. Idempotent and cheap after the
/// first call; if another provider was installed first, that one stays.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // An `Err` means a provider is already installed: rustls uses that one, which is
        // what we want (there is only ever ring in this binary).
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_provider_is_installed_after_the_call() {
        super::install_crypto_provider();
        super::install_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
