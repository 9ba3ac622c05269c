//! The destination a client dialed before iptables REDIRECT sent its connection to the proxy
//! (`SO_ORIGINAL_DST`, read from the kernel's connection tracking through socket2's safe wrapper,
//! so this crate needs no `unsafe`).

use std::io;
use std::net::SocketAddr;

use socket2::SockRef;
use tokio::net::TcpStream;

/// The original destination of a redirected connection. For a connection that was not
/// redirected the kernel answers with the listener's own address (or an error when connection
/// tracking has no entry), which callers treat as "no route".
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let socket = SockRef::from(stream);
    let addr = if stream.local_addr()?.is_ipv4() {
        socket.original_dst_v4()?
    } else {
        socket.original_dst_v6()?
    };
    addr.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "SO_ORIGINAL_DST returned a non-IP address",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unredirected_connection_yields_its_own_address_or_an_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        // With conntrack loaded the kernel reports the listener itself; without, ENOENT. Either
        // way no other address is invented. (Real redirection is tested in the namespace test.)
        match original_dst(&accepted) {
            Ok(found) => assert_eq!(found, addr),
            Err(error) => assert_eq!(
                error.raw_os_error(),
                Some(2),
                "expected ENOENT, got {error}"
            ),
        }
    }
}
