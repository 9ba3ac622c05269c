//! Token operations for [`super::pkcs11`]: loading the module, finding the token by label, login,
//! key generation with explicit security attributes, reading the public key, and naming faults.

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use super::der::unwrap_ec_point;
use super::{KeyAlgorithm, Pkcs11Uri};
use crate::error::{CaError, HsmFault};
use crate::secret::Secret;

/// DER OIDs for `CKA_EC_PARAMS`.
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

pub(super) fn initialise(uri: &Pkcs11Uri) -> Result<Pkcs11, CaError> {
    let ctx = Pkcs11::new(&uri.module_path).map_err(|e| {
        CaError::HsmUnavailable(HsmFault::ModuleMissing {
            path: uri.module_path.clone(),
            detail: e.to_string(),
        })
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(P11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(ctx),
        Err(e) => Err(unavailable(&uri.token, &e)),
    }
}

pub(super) fn find_slot(ctx: &Pkcs11, label: &str) -> Result<Slot, HsmFault> {
    for slot in ctx
        .get_slots_with_token()
        .map_err(|e| classify(label, &e))?
    {
        if let Ok(info) = ctx.get_token_info(slot)
            && info.label().trim_end() == label
        {
            return Ok(slot);
        }
    }
    Err(HsmFault::TokenMissing {
        label: label.to_owned(),
    })
}

pub(super) fn login(session: &Session, label: &str, pin: &Secret) -> Result<(), HsmFault> {
    let auth = AuthPin::from(pin.expose());
    match session.login(UserType::User, Some(&auth)) {
        Ok(()) | Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(e) => Err(classify(label, &e)),
    }
}

pub(super) fn find_key(
    session: &Session,
    label: &str,
    class: ObjectClass,
) -> Result<Option<ObjectHandle>, P11Error> {
    let found = session.find_objects(&[
        Attribute::Class(class),
        Attribute::Label(label.as_bytes().to_vec()),
    ])?;
    Ok(found.into_iter().next())
}

pub(super) fn generate(
    session: &Session,
    label: &str,
    algorithm: KeyAlgorithm,
) -> Result<ObjectHandle, P11Error> {
    let (mechanism, params) = match algorithm {
        KeyAlgorithm::EcdsaP256 => (Mechanism::EccKeyPairGen, OID_P256),
        KeyAlgorithm::EcdsaP384 => (Mechanism::EccKeyPairGen, OID_P384),
        KeyAlgorithm::Ed25519 => (Mechanism::EccEdwardsKeyPairGen, OID_ED25519),
    };
    let mut id = [0u8; 16];
    aws_lc_rs::rand::fill(&mut id).map_err(|_| P11Error::InvalidValue)?;
    let label = label.as_bytes().to_vec();
    let public = [
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::EcParams(params.to_vec()),
        Attribute::Label(label.clone()),
        Attribute::Id(id.to_vec()),
    ];
    // Set every security attribute explicitly: token defaults differ between vendors.
    let private = [
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Derive(false),
        Attribute::Unwrap(false),
        Attribute::Label(label),
        Attribute::Id(id.to_vec()),
    ];
    let (_, private_key) = session.generate_key_pair(&mechanism, &public, &private)?;
    tracing::info!(
        algorithm = algorithm.name(),
        "generated the CA key inside the HSM (sensitive, non-extractable, sign-only)"
    );
    Ok(private_key)
}

pub(super) fn read_public_key(
    session: &Session,
    label: &str,
) -> Result<(KeyAlgorithm, Vec<u8>), CaError> {
    let bad = |reason: String| CaError::UnsupportedKey(format!("public key `{label}`: {reason}"));
    let handle = find_key(session, label, ObjectClass::PUBLIC_KEY)
        .map_err(|e| bad(e.to_string()))?
        .ok_or_else(|| bad("the token holds no public key with this label".into()))?;
    let attrs = session
        .get_attributes(
            handle,
            &[
                AttributeType::KeyType,
                AttributeType::EcParams,
                AttributeType::EcPoint,
            ],
        )
        .map_err(|e| bad(e.to_string()))?;
    let (mut key_type, mut params, mut point) = (None, None, None);
    for attr in attrs {
        match attr {
            Attribute::KeyType(t) => key_type = Some(t),
            Attribute::EcParams(p) => params = Some(p),
            Attribute::EcPoint(p) => point = Some(p),
            _ => {}
        }
    }
    let params = params.ok_or_else(|| bad("no CKA_EC_PARAMS".into()))?;
    let point = point.ok_or_else(|| bad("no CKA_EC_POINT".into()))?;
    let (algorithm, len) = match (key_type, params.as_slice()) {
        (Some(KeyType::EC), OID_P256) => (KeyAlgorithm::EcdsaP256, 65),
        (Some(KeyType::EC), OID_P384) => (KeyAlgorithm::EcdsaP384, 97),
        (Some(KeyType::EC_EDWARDS), OID_ED25519) => (KeyAlgorithm::Ed25519, 32),
        _ => {
            return Err(bad(
                "only EC keys on P-256, P-384 or Ed25519 are supported".into()
            ));
        }
    };
    let point =
        unwrap_ec_point(&point, len).ok_or_else(|| bad("CKA_EC_POINT is malformed".into()))?;
    Ok((algorithm, point))
}

pub(super) fn unavailable(label: &str, error: &P11Error) -> CaError {
    CaError::HsmUnavailable(classify(label, error))
}

/// Names the cause of a PKCS#11 failure.
pub(super) fn classify(label: &str, error: &P11Error) -> HsmFault {
    let detail = error.to_string();
    let detail = detail.split(". ").next().unwrap_or(&detail).to_owned();
    match error {
        P11Error::LibraryLoading(e) => HsmFault::ModuleMissing {
            path: Default::default(),
            detail: e.to_string(),
        },
        P11Error::Pkcs11(rv, _) => match rv {
            RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange => {
                HsmFault::WrongPin {
                    label: label.to_owned(),
                }
            }
            RvError::PinLocked => HsmFault::PinLocked {
                label: label.to_owned(),
            },
            RvError::TokenNotPresent | RvError::TokenNotRecognized | RvError::SlotIdInvalid => {
                HsmFault::TokenMissing {
                    label: label.to_owned(),
                }
            }
            RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::UserNotLoggedIn
            | RvError::CryptokiNotInitialized
            | RvError::KeyHandleInvalid
            | RvError::ObjectHandleInvalid => HsmFault::SessionLost {
                detail: format!("{rv:?}"),
            },
            RvError::DeviceError
            | RvError::DeviceMemory
            | RvError::DeviceRemoved
            | RvError::GeneralError
            | RvError::FunctionFailed => HsmFault::DeviceError {
                detail: format!("CKR_{rv:?}: {detail}"),
            },
            _ => HsmFault::Other { detail },
        },
        _ => HsmFault::Other { detail },
    }
}
