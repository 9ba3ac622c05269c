//! The two DER conversions PKCS#11 tokens need: a raw ECDSA signature (r||s) into the X.509
//! `ECDSA-Sig-Value` SEQUENCE, and a `CKA_EC_POINT` OCTET STRING into the bare public point.

/// Converts a raw `r || s` signature (as `CKM_ECDSA` returns it) into DER `SEQUENCE { r, s }`.
pub(crate) fn ecdsa_raw_to_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) || raw.len() > 132 {
        return None;
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let r = der_integer(r);
    let s = der_integer(s);
    let mut out = Vec::with_capacity(r.len() + s.len() + 3);
    out.push(0x30);
    push_len(&mut out, r.len() + s.len());
    out.extend_from_slice(&r);
    out.extend_from_slice(&s);
    Some(out)
}

/// An unsigned big-endian integer as a DER INTEGER: leading zeros stripped, a zero byte added when
/// the top bit is set so the value stays positive.
fn der_integer(bytes: &[u8]) -> Vec<u8> {
    let first = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    let bytes = &bytes[first..];
    let pad = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let mut out = Vec::with_capacity(bytes.len() + 3);
    out.push(0x02);
    push_len(&mut out, bytes.len() + usize::from(pad));
    if pad {
        out.push(0);
    }
    out.extend_from_slice(bytes);
    out
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        // Signatures and points here are < 256 bytes, so one length byte suffices.
        out.push(0x81);
        out.push(len as u8);
    }
}

/// Unwraps `CKA_EC_POINT`: PKCS#11 says it is a DER OCTET STRING around the point; some tokens
/// return the bare point. Returns the bare point either way, or `None` when it is neither.
pub(crate) fn unwrap_ec_point(value: &[u8], expected_len: usize) -> Option<Vec<u8>> {
    if value.len() == expected_len {
        return Some(value.to_vec());
    }
    let (&tag, rest) = value.split_first()?;
    if tag != 0x04 {
        return None;
    }
    let (&len0, rest) = rest.split_first()?;
    let (len, rest) = match len0 {
        l if l < 0x80 => (usize::from(l), rest),
        0x81 => {
            let (&l, rest) = rest.split_first()?;
            (usize::from(l), rest)
        }
        _ => return None,
    };
    (len == rest.len() && len == expected_len).then(|| rest.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
        UnparsedPublicKey,
    };

    #[test]
    fn raw_signatures_verify_after_conversion() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let verifier =
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key.public_key().as_ref().to_vec());
        // Many signatures, so r or s with a high bit or a leading zero byte both occur.
        for i in 0..200u32 {
            let msg = i.to_be_bytes();
            let raw = key.sign(&rng, &msg).unwrap();
            let der = ecdsa_raw_to_der(raw.as_ref()).unwrap();
            verifier.verify(&msg, &der).unwrap();
        }
    }

    #[test]
    fn ec_point_unwrapping() {
        let point = [0x04u8; 65];
        let mut wrapped = vec![0x04, 65];
        wrapped.extend_from_slice(&point);
        assert_eq!(unwrap_ec_point(&wrapped, 65).unwrap(), point);
        assert_eq!(unwrap_ec_point(&point, 65).unwrap(), point);
        let p384 = [0x04u8; 97];
        let mut wrapped = vec![0x04, 0x81, 97];
        wrapped.extend_from_slice(&p384);
        assert_eq!(unwrap_ec_point(&wrapped, 97).unwrap(), p384);
        assert!(unwrap_ec_point(&[0x04, 3, 1, 2], 65).is_none());
        assert!(ecdsa_raw_to_der(&[1, 2, 3]).is_none());
    }
}
