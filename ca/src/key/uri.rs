//! Key addresses: RFC 7512 PKCS#11 URIs for HSM keys and `file:PATH` for development keys.
//!
//! A URI never carries the PIN itself (`pin-value` is refused): the PIN comes from the file named by
//! `pin-source` or from `MESHGUARD_HSM_PIN`, so it never appears on a command line or in a log.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::CaError;

/// Where the CA's signing key lives.
#[derive(Clone, PartialEq, Eq)]
pub enum KeyUri {
    /// A key inside a PKCS#11 token.
    Pkcs11(Pkcs11Uri),
    /// A PKCS#8 file: for development only.
    File(PathBuf),
}

/// The parts of an RFC 7512 URI meshguard uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// `token=`: the token label (tokens are found by label, never by slot number).
    pub token: String,
    /// `object=`: the label of the key pair inside the token.
    pub object: String,
    /// `module-path=`: the PKCS#11 shared library.
    pub module_path: PathBuf,
    /// `pin-source=`: a file holding the user PIN (`file:PATH` or a plain path).
    pub pin_source: Option<PathBuf>,
}

impl FromStr for KeyUri {
    type Err = CaError;

    fn from_str(uri: &str) -> Result<Self, CaError> {
        let bad = |reason: &str| CaError::KeyUri {
            uri: redact(uri),
            reason: reason.to_owned(),
        };
        if let Some(path) = uri.strip_prefix("file:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(bad("the file path is empty"));
            }
            return Ok(KeyUri::File(PathBuf::from(path)));
        }
        let Some(rest) = uri.strip_prefix("pkcs11:") else {
            return Err(bad("it starts with neither `pkcs11:` nor `file:`"));
        };
        let (path_part, query_part) = rest.split_once('?').unwrap_or((rest, ""));
        let mut token = None;
        let mut object = None;
        let mut module_path = None;
        let mut pin_source = None;
        for attr in path_part.split(';').filter(|a| !a.is_empty()) {
            let (name, value) = attr
                .split_once('=')
                .ok_or_else(|| bad("a path attribute has no `=`"))?;
            let value = pct_decode(value).map_err(|e| bad(&e))?;
            match name {
                "token" => token = Some(value),
                "object" => object = Some(value),
                "type" if value == "private" => {}
                "type" => return Err(bad("`type` must be `private` (the signing key)")),
                // Standard attributes that narrow the search; the label alone is what we match on.
                "manufacturer"
                | "model"
                | "serial"
                | "id"
                | "library-manufacturer"
                | "library-description"
                | "library-version" => {}
                "slot-id" | "slot-description" | "slot-manufacturer" => {
                    return Err(bad(
                        "tokens are found by label; slot attributes are not accepted",
                    ));
                }
                other => return Err(bad(&format!("unknown path attribute `{other}`"))),
            }
        }
        for attr in query_part.split('&').filter(|a| !a.is_empty()) {
            let (name, value) = attr
                .split_once('=')
                .ok_or_else(|| bad("a query attribute has no `=`"))?;
            let value = pct_decode(value).map_err(|e| bad(&e))?;
            match name {
                "module-path" => module_path = Some(PathBuf::from(value)),
                "pin-source" => {
                    let path = value.strip_prefix("file:").unwrap_or(&value);
                    let path = path.strip_prefix("//").unwrap_or(path);
                    pin_source = Some(PathBuf::from(path));
                }
                "pin-value" => {
                    return Err(bad(
                        "pin-value would put the PIN on the command line; use pin-source=file:PATH or MESHGUARD_HSM_PIN",
                    ));
                }
                other => return Err(bad(&format!("unknown query attribute `{other}`"))),
            }
        }
        let token = token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| bad("`token=LABEL` is required"))?;
        let object = object
            .filter(|o| !o.is_empty())
            .ok_or_else(|| bad("`object=LABEL` is required"))?;
        let module_path = module_path.ok_or_else(|| bad("`module-path=PATH` is required"))?;
        Ok(KeyUri::Pkcs11(Pkcs11Uri {
            token,
            object,
            module_path,
            pin_source,
        }))
    }
}

impl fmt::Display for KeyUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyUri::File(path) => write!(f, "file:{}", path.display()),
            KeyUri::Pkcs11(uri) => {
                write!(
                    f,
                    "pkcs11:token={};object={}?module-path={}",
                    pct_encode(&uri.token),
                    pct_encode(&uri.object),
                    pct_encode(&uri.module_path.to_string_lossy())
                )?;
                if let Some(pin) = &uri.pin_source {
                    write!(f, "&pin-source=file:{}", pct_encode(&pin.to_string_lossy()))?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for KeyUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyUri({self})")
    }
}

/// What may be echoed back in an error: everything but a `pin-value`.
fn redact(uri: &str) -> String {
    match uri.find("pin-value=") {
        Some(at) => {
            let end = uri[at..].find('&').map_or(uri.len(), |e| at + e);
            format!("{}pin-value=<redacted>{}", &uri[..at], &uri[end..])
        }
        None => uri.to_owned(),
    }
}

fn pct_decode(value: &str) -> Result<String, String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or("a `%` escape is cut short")?;
            let hex = std::str::from_utf8(hex).map_err(|_| "a `%` escape is not hex")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| "a `%` escape is not hex")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "a value is not UTF-8 after decoding".to_owned())
}

fn pct_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_form() {
        let uri: KeyUri = "pkcs11:token=meshguard%20ca;object=root?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin"
            .parse()
            .unwrap();
        let KeyUri::Pkcs11(p) = &uri else {
            panic!("not pkcs11")
        };
        assert_eq!(p.token, "meshguard ca");
        assert_eq!(p.object, "root");
        assert_eq!(
            p.module_path,
            PathBuf::from("/usr/lib/softhsm/libsofthsm2.so")
        );
        assert_eq!(p.pin_source, Some(PathBuf::from("/run/pin")));
        assert_eq!(uri.to_string().parse::<KeyUri>().unwrap(), uri);
    }

    #[test]
    fn refuses_pin_value_without_echoing_it() {
        let err = "pkcs11:token=t;object=o?module-path=/m.so&pin-value=987654"
            .parse::<KeyUri>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("pin-source"), "{err}");
        assert!(!err.contains("987654"), "{err}");
    }

    #[test]
    fn names_what_is_missing() {
        let err = "pkcs11:object=o?module-path=/m.so"
            .parse::<KeyUri>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("token=LABEL"), "{err}");
        let err = "pkcs11:token=t;slot-id=3;object=o?module-path=/m.so"
            .parse::<KeyUri>()
            .unwrap_err();
        assert!(err.to_string().contains("by label"));
        assert!("hsm:whatever".parse::<KeyUri>().is_err());
        assert_eq!(
            "file:/tmp/k.pem".parse::<KeyUri>().unwrap(),
            KeyUri::File("/tmp/k.pem".into())
        );
    }
}
