//! The one rustls crypto provider every meshguard endpoint uses: aws-lc-rs, TLS 1.3 cipher suites
//! only, and key exchange X25519MLKEM768, then X25519, then P-256.
//!
//! It is built once per process: verifiers consult its signature algorithms on every handshake, and
//! building a provider allocates.

use std::sync::{Arc, OnceLock};

use rustls::crypto::aws_lc_rs::{self, kx_group};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};

/// The key-exchange groups we offer and accept, most preferred first. Post-quantum hybrid first so
/// recorded traffic stays private against a future quantum computer; the classical groups remain
/// for peers that do not speak ML-KEM yet (openssl < 3.5, older rustls).
pub const KX_GROUP_NAMES: [&str; 3] = ["X25519MLKEM768", "X25519", "secp256r1"];

/// The meshguard crypto provider (aws-lc-rs, TLS 1.3 suites, PQ-first key exchange).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let base = aws_lc_rs::default_provider();
            Arc::new(CryptoProvider {
                cipher_suites: vec![
                    aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
                    aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
                    aws_lc_rs::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
                ],
                kx_groups: vec![
                    kx_group::X25519MLKEM768,
                    kx_group::X25519,
                    kx_group::SECP256R1,
                ],
                ..base
            })
        })
        .clone()
}

/// The signature algorithms used to verify certificate chains and TLS 1.3 handshake signatures.
pub(crate) fn signature_algorithms() -> WebPkiSupportedAlgorithms {
    provider().signature_verification_algorithms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_exchange_order_is_pq_first() {
        let names: Vec<String> = provider()
            .kx_groups
            .iter()
            .map(|g| format!("{:?}", g.name()))
            .collect();
        assert_eq!(names, KX_GROUP_NAMES);
    }

    #[test]
    fn only_tls13_suites() {
        for suite in &provider().cipher_suites {
            assert_eq!(suite.version(), &rustls::version::TLS13);
        }
    }
}
