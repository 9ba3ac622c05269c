//! The HTTP/1-over-HTTP/2 hop between sidecars: any request the outbound side accepts must come
//! out of the inbound side with its original version and without the carrier header, whatever
//! the client put in the URI, the Host header or a forged `meshguard-orig-proto`.
#![no_main]

use http::header::{HOST, HeaderValue};
use http::{Request, Version};
use libfuzzer_sys::fuzz_target;
use meshguard_proxy::http::orig_proto::{ORIG_PROTO, restore_version, upgrade_to_h2};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(3, |b| *b == b'\n');
    let (uri, host, forged) = (parts.next(), parts.next(), parts.next());
    let version = match selector % 3 {
        0 => Version::HTTP_10,
        1 => Version::HTTP_11,
        _ => Version::HTTP_2,
    };
    let mut builder = Request::builder().version(version);
    if let Some(uri) = uri.and_then(|u| http::Uri::try_from(u).ok()) {
        builder = builder.uri(uri);
    }
    let Ok(mut request) = builder.body(()) else {
        return;
    };
    if let Some(host) = host.and_then(|h| HeaderValue::from_bytes(h).ok()) {
        request.headers_mut().insert(HOST, host);
    }
    if let Some(forged) = forged.and_then(|f| HeaderValue::from_bytes(f).ok()) {
        request.headers_mut().insert(ORIG_PROTO, forged);
    }
    if upgrade_to_h2(&mut request).is_err() {
        return;
    }
    assert_eq!(request.version(), Version::HTTP_2);
    if version != Version::HTTP_2 {
        // HTTP/2 needs `:authority`; an HTTP/2 request arrives with its own (or a Host header).
        assert!(
            request.uri().authority().is_some(),
            "an upgraded request has no :authority"
        );
    }
    let restored = restore_version(&mut request);
    assert_eq!(restored, version, "the version did not survive the hop");
    assert!(
        !request.headers().contains_key(ORIG_PROTO),
        "the carrier header reached the app"
    );
});
