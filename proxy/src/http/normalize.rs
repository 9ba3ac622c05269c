//! The path a request is authorized on, and forwarded with.
//!
//! Policy matches paths as strings, while applications decode and resolve them. Any difference
//! between the two is a bypass (`/admin` denied, `/public/..%2Fadmin` allowed). So the proxy
//! normalizes the path once, authorizes the normalized form, and forwards that same form to the
//! app. The rules, in order, each either canonicalizing or refusing (a refused request gets 400):
//!
//! 1. The path must be origin-form (`/...`) or `*`.
//! 2. Percent-encodings of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded; other
//!    encodings stay, with upper-case hex. A `%` not followed by two hex digits is refused.
//!    Raw bytes outside ASCII (UTF-8 that a lenient client sent unencoded) are percent-encoded,
//!    upper-case, as RFC 3986 §2.1 asks: there is one spelling of such a path, and the app decodes
//!    it to the very bytes the client sent.
//! 3. Encodings that change how a path splits are refused: `%2F` (`/`), `%5C` (`\`), `%00`.
//!    A raw `\` is refused too (some servers treat it as a separator).
//! 4. Matrix parameters are refused, raw (`;`) or encoded (`%3B`): Java servers (Tomcat, Jetty,
//!    Spring) cut a segment at `;`, so `/admin;x=1` is `/admin` to them and not to a pattern, and
//!    `/public/..;/admin` climbs out of `/public`. There is one definition of a segment, this one.
//! 5. An encoded `%` followed by two hex digits (`%252F`) is refused: a second decoding by the app
//!    would turn it into the separator rule 3 refuses.
//! 6. A dot segment containing an encoded dot (`%2e`, `.%2E`, ...) is refused: it only exists to
//!    get past a filter.
//! 7. Empty segments are merged (`//a///b` becomes `/a/b`), as Envoy's `merge_slashes` does.
//! 8. `.` segments are removed and `..` segments resolved (RFC 3986 §5.2.4); a `..` that would
//!    climb above the root is refused rather than clamped.
//!
//! A trailing slash is kept (`/a/` and `/a` are different resources to many apps). The query is
//! not touched (policy ignores it).

use std::borrow::Cow;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// Not `/...` or `*`.
    #[error("the request path must start with `/`")]
    NotOriginForm,
    /// `%` not followed by two hex digits.
    #[error("the request path has a malformed percent-encoding")]
    BadPercent,
    /// `%2F` or `%5C`.
    #[error("the request path encodes a path separator (%2F or %5C); send `/` unencoded")]
    EncodedSeparator,
    /// `%00`.
    #[error("the request path encodes a NUL byte (%00)")]
    EncodedNul,
    /// A raw backslash.
    #[error("the request path contains a backslash; use `/`")]
    Backslash,
    /// A `.` or `..` segment written with `%2E`.
    #[error("the request path hides a dot segment behind %2E")]
    EncodedDotSegment,
    /// `;` or `%3B` in the path.
    #[error(
        "the request path has a matrix parameter (`;` or %3B), which Java servers cut from the segment; send it in the query instead"
    )]
    MatrixParameter,
    /// `%25` followed by two hex digits.
    #[error("the request path is encoded twice (%25 followed by hex digits); encode it once")]
    DoubleEncoded,
    /// `..` above the root.
    #[error("the request path climbs above the root with `..`")]
    AboveRoot,
}

/// Normalizes a request path (without its query). Borrows when the path is already normal.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    if path == "*" {
        return Ok(Cow::Borrowed(path));
    }
    if !path.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    if is_already_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    let mut segments: Vec<String> = Vec::new();
    let mut raw_segments = path[1..].split('/').peekable();
    let mut trailing_slash = false;
    while let Some(raw) = raw_segments.next() {
        let last = raw_segments.peek().is_none();
        let (segment, encoded_dot) = decode_segment(raw)?;
        match segment.as_str() {
            "" => {
                // An empty segment: merged, but an empty last segment is a trailing slash.
                if last {
                    trailing_slash = true;
                }
                continue;
            }
            "." | ".." if encoded_dot => return Err(PathError::EncodedDotSegment),
            "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            _ => {
                segments.push(segment);
                continue;
            }
        }
        // After `.` or `..` the path names a directory.
        if last {
            trailing_slash = true;
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// The fast path: no `%`, `\`, `//` or dot segment.
fn is_already_normal(path: &str) -> bool {
    let bytes = path.as_bytes();
    if bytes
        .iter()
        .any(|b| matches!(b, b'%' | b'\\' | b';') || !b.is_ascii())
        || path.contains("//")
    {
        return false;
    }
    !path[1..].split('/').any(|s| s == "." || s == "..")
}

/// Decodes one segment: unreserved escapes decoded, others kept (upper-case hex), dangerous ones
/// refused. Returns whether any `.` came from an escape.
fn decode_segment(raw: &str) -> Result<(String, bool), PathError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut encoded_dot = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\\' => return Err(PathError::Backslash),
            b';' => return Err(PathError::MatrixParameter),
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).and_then(hex),
                    bytes.get(i + 2).and_then(hex),
                ) else {
                    return Err(PathError::BadPercent);
                };
                let decoded = hi << 4 | lo;
                match decoded {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    0 => return Err(PathError::EncodedNul),
                    b';' => return Err(PathError::MatrixParameter),
                    _ if is_unreserved(decoded) => {
                        encoded_dot |= decoded == b'.';
                        out.push(char::from(decoded));
                    }
                    _ => push_escape(&mut out, decoded),
                }
                i += 3;
            }
            _ if !b.is_ascii() => {
                // One byte of a UTF-8 sequence: as a `char` it would be a different character.
                push_escape(&mut out, b);
                i += 1;
            }
            _ => {
                out.push(char::from(b));
                i += 1;
            }
        }
    }
    // `%25` then two hex digits, looked for in the result rather than the input: an escape decoded
    // next to it (`%25f%65` gives `%25fe`) sets the same trap for a second decoding.
    let double = out
        .as_bytes()
        .windows(5)
        .any(|w| w.starts_with(b"%25") && hex(&w[3]).is_some() && hex(&w[4]).is_some());
    if double {
        return Err(PathError::DoubleEncoded);
    }
    Ok((out, encoded_dot))
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Writes `byte` as `%XX`, upper-case: the one spelling of an escape in a normal path.
fn push_escape(out: &mut String, byte: u8) {
    out.push('%');
    out.push(char::from(HEX_UPPER[usize::from(byte >> 4)]));
    out.push(char::from(HEX_UPPER[usize::from(byte & 0xF)]));
}

fn hex(b: &u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize_path(p).map(Cow::into_owned)
    }

    #[test]
    fn canonical_paths_are_borrowed_unchanged() {
        for p in ["/", "/a", "/a/b/", "/a.b/c..d/.e", "*", "/a=1/b,c"] {
            assert!(
                matches!(normalize_path(p), Ok(Cow::Borrowed(q)) if q == p),
                "{p}"
            );
        }
    }

    #[test]
    fn rewrites() {
        for (input, want) in [
            ("//a///b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/../c", "/a/c"),
            ("/a/.", "/a/"),
            ("/..a/b", "/..a/b"),
            ("/%61%64min", "/admin"),
            ("/a%7e%2D", "/a~-"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a%20b", "/a%20b"),
            ("/public/../admin", "/admin"),
            ("/a//", "/a/"),
            ("//", "/"),
            ("/.", "/"),
        ] {
            assert_eq!(norm(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn refusals() {
        for (input, want) in [
            ("a/b", PathError::NotOriginForm),
            ("", PathError::NotOriginForm),
            ("/public/..%2Fadmin", PathError::EncodedSeparator),
            ("/a%2fb", PathError::EncodedSeparator),
            ("/a%5cb", PathError::EncodedSeparator),
            ("/a%00", PathError::EncodedNul),
            ("/a\\b", PathError::Backslash),
            ("/a/%2e%2e/admin", PathError::EncodedDotSegment),
            ("/a/.%2E/admin", PathError::EncodedDotSegment),
            ("/a/%2e/b", PathError::EncodedDotSegment),
            ("/..", PathError::AboveRoot),
            ("/a/../../b", PathError::AboveRoot),
            ("/a%", PathError::BadPercent),
            ("/a%4", PathError::BadPercent),
            ("/a%zz", PathError::BadPercent),
            ("/admin;x=1", PathError::MatrixParameter),
            ("/public/..;/admin", PathError::MatrixParameter),
            ("/admin%3bx", PathError::MatrixParameter),
            ("/admin%3B", PathError::MatrixParameter),
            ("/a%252Fb", PathError::DoubleEncoded),
            ("/a%252e%252e/b", PathError::DoubleEncoded),
        ] {
            assert_eq!(norm(input), Err(want), "{input}");
        }
    }

    /// What a decoding application would make of a path: every escape decoded, dot segments
    /// resolved (clamped at the root), empty segments dropped.
    fn app_view(path: &str) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = Vec::new();
        for raw in path.split('/') {
            let bytes = raw.as_bytes();
            let mut seg = Vec::new();
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'%'
                    && let (Some(h), Some(l)) = (
                        bytes.get(i + 1).and_then(hex),
                        bytes.get(i + 2).and_then(hex),
                    )
                {
                    seg.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                seg.push(bytes[i]);
                i += 1;
            }
            match &seg[..] {
                b"" | b"." => {}
                b".." => {
                    out.pop();
                }
                _ => out.push(seg),
            }
        }
        out
    }

    /// Found by `fuzz/fuzz_targets/normalize_path.rs`: `%25` stayed when the next two raw bytes
    /// were not both hex, even though decoding made them so (`%25f%65` to `%25fe`), and a second
    /// pass (the app's decoding) then met a double encoding.
    #[test]
    fn double_encoding_assembled_by_decoding_is_refused() {
        assert_eq!(norm("/%25f%65"), Err(PathError::DoubleEncoded));
        assert_eq!(
            norm("//%25f%65/%25E%5aE/%65E%2E"),
            Err(PathError::DoubleEncoded)
        );
        assert_eq!(norm("/%25%34%31"), Err(PathError::DoubleEncoded));
        assert_eq!(norm("/%25zz"), Ok("/%25zz".to_owned()));
    }

    /// Found by `fuzz/fuzz_targets/normalize_path.rs`: raw UTF-8 in a path that needed work was
    /// copied byte by byte as Latin-1 characters, so `/߆/%41` became `/ß\u{86}/A` and a second
    /// pass changed it again.
    #[test]
    fn raw_utf8_is_percent_encoded_once() {
        assert_eq!(norm("/\u{7c6}/%41"), Ok("/%DF%86/A".to_owned()));
        assert_eq!(norm("/café"), Ok("/caf%C3%A9".to_owned()));
        assert_eq!(norm("/caf%C3%A9"), Ok("/caf%C3%A9".to_owned()));
        let out = norm("/a.%C3.//\u{7c6}c").expect("a valid path");
        assert_eq!(norm(&out), Ok(out.clone()));
        assert!(out.is_ascii());
    }

    fn path_strategy() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("/".to_owned()),
            Just(".".to_owned()),
            Just("..".to_owned()),
            Just("%2e".to_owned()),
            Just("%2F".to_owned()),
            Just("%41".to_owned()),
            Just("%c3%a9".to_owned()),
            Just("%".to_owned()),
            Just("\\".to_owned()),
            Just("é".to_owned()),
            "[a-z;~_-]{1,3}",
        ];
        prop::collection::vec(piece, 0..12).prop_map(|v| format!("/{}", v.concat()))
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC*") {
            let _ = normalize_path(&s);
        }

        #[test]
        fn idempotent_and_unambiguous(path in path_strategy()) {
            if let Ok(out) = normalize_path(&path) {
                let out = out.into_owned();
                // Normal form is a fixed point.
                prop_assert_eq!(normalize_path(&out).map(Cow::into_owned), Ok(out.clone()));
                prop_assert!(!out.contains("//"));
                prop_assert!(!out[1..].split('/').any(|s| s == "." || s == ".."));
                // What the app sees after its own decoding is what policy matched, and it is what
                // the app would have made of the original path.
                let view = app_view(&out);
                let rebuilt: Vec<Vec<u8>> = out[1..].split('/').filter(|s| !s.is_empty())
                    .map(|s| app_view(&format!("/{s}")).concat()).collect();
                prop_assert_eq!(&view, &rebuilt);
                prop_assert_eq!(view, app_view(&path));
            }
        }
    }
}
