//! Why a TLS handshake failed, as a short metric label and a sentence for the access log.
//!
//! tokio-rustls reports handshake failures as `io::Error`s wrapping the `rustls::Error`; our
//! verifiers put meshguard's own reason (an SVID rule, an unexpected identity) inside that. This
//! module digs the most specific reason out so every refusal in the log says what was wrong.

use std::io;

use meshguard_identity::verifier::refusal_reason;
use meshguard_identity::{IdentityError, SvidError};

/// A classified handshake failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeFailure {
    /// A fixed, low-cardinality label for metrics, e.g. `no_client_certificate`.
    pub label: &'static str,
    /// The reason in words, e.g. "the certificate of spiffe://... expired at ...".
    pub reason: String,
    /// The SPIFFE ID the peer presented, when the refusal names one.
    pub presented: Option<String>,
}

/// Classifies the error of a handshake that did not complete.
pub fn classify(error: &io::Error) -> HandshakeFailure {
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        let label = match error.kind() {
            io::ErrorKind::TimedOut => "timeout",
            io::ErrorKind::UnexpectedEof => "closed_during_handshake",
            io::ErrorKind::InvalidData => "not_tls",
            _ => "io_error",
        };
        let reason = match label {
            "timeout" => "the TLS handshake did not complete in time".to_owned(),
            "closed_during_handshake" => {
                "the peer closed the connection during the TLS handshake".to_owned()
            }
            _ => format!("the TLS handshake failed: {error}"),
        };
        return HandshakeFailure {
            label,
            reason,
            presented: None,
        };
    };
    classify_tls(tls)
}

fn classify_tls(tls: &rustls::Error) -> HandshakeFailure {
    use rustls::Error;
    let plain = |label, reason: String| HandshakeFailure {
        label,
        reason,
        presented: None,
    };
    match tls {
        Error::NoCertificatesPresented => plain(
            "no_client_certificate",
            "the client presented no certificate; mesh clients must present their X.509-SVID"
                .to_owned(),
        ),
        Error::InvalidMessage(_)
        | Error::InappropriateMessage { .. }
        | Error::InappropriateHandshakeMessage { .. } => plain(
            "not_tls",
            format!(
                "the peer does not speak TLS 1.3 (plaintext or garbage on an mTLS port?): {tls}"
            ),
        ),
        Error::PeerIncompatible(_) => plain(
            "incompatible_peer",
            format!("the peer cannot speak meshguard's TLS profile (TLS 1.3 only): {tls}"),
        ),
        Error::AlertReceived(alert) => plain(
            "alert_received",
            format!(
                "the peer refused the handshake with alert {alert:?} (does it trust our certificate?)"
            ),
        ),
        Error::InvalidCertificate(_) => match refusal_reason(tls) {
            Some(inner) => {
                if let Some(svid) = inner.downcast_ref::<SvidError>() {
                    svid_failure(svid)
                } else if let Some(IdentityError::UnexpectedPeer { presented, .. }) =
                    inner.downcast_ref::<IdentityError>()
                {
                    HandshakeFailure {
                        label: "unexpected_identity",
                        reason: inner.to_string(),
                        presented: Some(presented.to_string()),
                    }
                } else if let Some(IdentityError::Svid(svid)) =
                    inner.downcast_ref::<IdentityError>()
                {
                    svid_failure(svid)
                } else {
                    plain("invalid_certificate", inner.to_string())
                }
            }
            None => plain(
                "invalid_certificate",
                format!("the peer's certificate is invalid: {tls}"),
            ),
        },
        other => plain("tls_error", format!("the TLS handshake failed: {other}")),
    }
}

fn svid_failure(svid: &SvidError) -> HandshakeFailure {
    let (label, presented) = match svid {
        SvidError::Expired { presented, .. } => ("expired_certificate", Some(presented)),
        SvidError::NotYetValid { presented, .. } => ("certificate_not_yet_valid", Some(presented)),
        SvidError::NoBundleForTrustDomain { presented, .. } => {
            ("foreign_trust_domain", Some(presented))
        }
        SvidError::UnknownIssuer { presented } => ("unknown_issuer", Some(presented)),
        _ => ("invalid_svid", None),
    };
    HandshakeFailure {
        label,
        reason: svid.to_string(),
        presented: presented.map(ToString::to_string),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_without_tls_inside_are_classified_by_kind() {
        let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "eof");
        assert_eq!(classify(&eof).label, "closed_during_handshake");
        let timeout = io::Error::new(io::ErrorKind::TimedOut, "slow");
        assert_eq!(classify(&timeout).label, "timeout");
    }

    #[test]
    fn rustls_errors_inside_io_errors_are_found() {
        let missing = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::NoCertificatesPresented,
        );
        let failure = classify(&missing);
        assert_eq!(failure.label, "no_client_certificate");
        assert!(failure.reason.contains("presented no certificate"));
        let garbage = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
        );
        assert_eq!(classify(&garbage).label, "not_tls");
    }
}
