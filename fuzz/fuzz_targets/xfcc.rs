//! `x-forwarded-client-cert`: whatever copies a peer sends, the app sees exactly the proxy's own
//! value (or none when the peer has no verified identity).
#![no_main]

use http::HeaderMap;
use http::header::HeaderValue;
use libfuzzer_sys::fuzz_target;
use meshguard_proxy::http::xfcc::{XFCC, set_xfcc};

fuzz_target!(|data: &[u8]| {
    let mut fields = data.split(|b| *b == b'\n');
    let local = String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
    let peer = fields
        .next()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let mut headers = HeaderMap::new();
    for incoming in fields {
        if let Ok(value) = HeaderValue::from_bytes(incoming) {
            headers.append(XFCC, value);
        }
    }
    set_xfcc(&mut headers, &local, peer.as_deref());
    let values: Vec<_> = headers.get_all(XFCC).iter().collect();
    assert!(
        values.len() <= 1,
        "more than one XFCC value reached the app"
    );
    match (peer, values.first()) {
        (None, Some(_)) => panic!("an XFCC header without a verified peer"),
        (Some(_), Some(value)) => assert!(value.as_bytes().starts_with(b"By=")),
        _ => {}
    }
});
