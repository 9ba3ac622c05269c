//! The destination a client dialed before iptables REDIRECT sent its connection to the proxy
//! (`SO_ORIGINAL_DST`, read from the kernel's connection tracking through socket2's safe wrapper,
//! so this crate needs no `unsafe`). Both families: `ip6tables` REDIRECT is read with
//! `IP6T_SO_ORIGINAL_DST`, and an IPv4 connection accepted by a dual-stack `[::]` listener (its
//! addresses IPv4-mapped) with the IPv4 option, because its connection-tracking entry is IPv4.

use std::io;
use std::net::SocketAddr;

use socket2::SockRef;
use tokio::net::TcpStream;

/// The original destination of a redirected connection, IPv4 ones in plain IPv4 form. For a
/// connection that was not redirected the kernel answers with the listener's own address (or an
/// error when connection tracking has no entry), which callers treat as "no route".
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let socket = SockRef::from(stream);
    let addr = if stream.local_addr()?.ip().to_canonical().is_ipv4() {
        socket.original_dst_v4()?
    } else {
        socket.original_dst_v6()?
    };
    let addr = addr.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "SO_ORIGINAL_DST returned a non-IP address",
        )
    })?;
    Ok(canonical(addr))
}

/// The address with an IPv4-mapped IPv6 address (`[::ffff:10.0.0.1]:80`) as IPv4 (`10.0.0.1:80`),
/// so routes and logs see one form.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unredirected_ipv4_connection_on_a_dual_stack_listener_reads_as_ipv4() {
        let listener = tokio::net::TcpListener::bind("[::]:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _client = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        // The IPv6 option on this IPv4 connection would fail; the IPv4 one reads conntrack.
        match original_dst(&accepted) {
            Ok(found) => assert_eq!(found, SocketAddr::from(([127, 0, 0, 1], port))),
            Err(error) => assert_eq!(
                error.raw_os_error(),
                Some(2),
                "expected ENOENT, got {error}"
            ),
        }
    }

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
