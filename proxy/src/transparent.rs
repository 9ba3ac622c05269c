//! Transparent outbound capture: iptables REDIRECT sends the app's connections here; the original
//! destination (`SO_ORIGINAL_DST`) is looked up in the route table (most specific CIDR first, a
//! route naming the port before one for any port), and the connection goes over mTLS to the
//! route's sidecar, which must present one of the route's expected IDs. A destination with no route
//! is refused (default deny) or, with `passthrough = true`, connected to unchanged and logged.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::ClientConfig;
use tokio::net::TcpStream;

use crate::access_log::{ErrorClass, Outcome};
use crate::config::{RouteConfig, Target, TransparentConfig};
use crate::copy::copy_bidirectional;
use crate::listener::{Connection, Shared};
use crate::{original_dst, upstream};

/// A route with its TLS client config.
#[derive(Debug, Clone)]
pub struct Route {
    /// The route as configured.
    pub config: RouteConfig,
    /// TLS client config expecting the route's identities.
    pub client: Arc<ClientConfig>,
    /// The expected identities as written, for log lines.
    pub expected: Arc<str>,
}

/// The route table, sorted most specific first.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// Sorts the routes: longer prefix first, then port-specific before any-port.
    pub fn new(mut routes: Vec<Route>) -> Self {
        routes.sort_by_key(|r| {
            (
                std::cmp::Reverse(r.config.destination.prefix_len()),
                r.config.ports.is_empty(),
            )
        });
        Self { routes }
    }

    /// The route for an original destination, if any.
    pub fn lookup(&self, dst: SocketAddr) -> Option<&Route> {
        self.routes.iter().find(|r| {
            r.config.destination.contains(dst.ip())
                && (r.config.ports.is_empty() || r.config.ports.contains(&dst.port()))
        })
    }
}

/// The transparent listener's fixed parts.
#[derive(Debug, Clone)]
pub struct Transparent {
    /// The listener's config.
    pub config: Arc<TransparentConfig>,
    /// Its routes.
    pub table: Arc<RouteTable>,
    /// Process-wide state.
    pub shared: Shared,
}

impl Transparent {
    /// Serves one redirected connection to its end.
    pub async fn handle(
        self,
        mut app: TcpStream,
        _peer: SocketAddr,
        mut conn: Connection,
    ) -> Connection {
        conn.record.local_id = Some(self.shared.local_id());
        let listen = app.local_addr().ok().map(original_dst::canonical);
        let dst = match original_dst::original_dst(&app) {
            Ok(dst) if Some(dst) != listen => dst,
            Ok(_) | Err(_) => {
                conn.record.decision = Some(Outcome::Deny);
                conn.record.fail(ErrorClass::Policy, "the connection was not redirected by iptables (no original destination); refused");
                return conn;
            }
        };
        conn.record.original_dst = Some(dst.to_string());
        let timeouts = self.shared.timeouts;
        let Some(route) = self.table.lookup(dst) else {
            if !self.config.passthrough {
                conn.record.decision = Some(Outcome::Deny);
                conn.record.fail(
                    ErrorClass::Policy,
                    format!("no route for original destination {dst}; denied by default"),
                );
                tracing::warn!(listener = %conn.record.listener, %dst, "no route for destination; denied");
                return conn;
            }
            tracing::warn!(listener = %conn.record.listener, %dst, "no route for destination; passing through in plaintext");
            conn.record.decision = Some(Outcome::Audit);
            conn.record.reason = Some(format!(
                "no route for {dst}; passed through in plaintext (passthrough = true)"
            ));
            let target = Target::from_addr(dst);
            conn.record.upstream = Some(target.to_string());
            let mut upstream = match upstream::connect(&target, timeouts.connect.get()).await {
                Ok(upstream) => upstream,
                Err(error) => {
                    conn.record.fail(
                        ErrorClass::Upstream,
                        format!("cannot connect to {dst}: {error}"),
                    );
                    return conn;
                }
            };
            let outcome = copy_bidirectional(&mut app, &mut upstream, timeouts.idle.get()).await;
            conn.finish_copy(outcome);
            return conn;
        };
        let target = match (&route.config.target, route.config.target_port) {
            (Some(target), _) => target.clone(),
            (None, Some(port)) => Target::from_addr(SocketAddr::new(dst.ip(), port)),
            (None, None) => Target::from_addr(dst), // config validation rules this out
        };
        let Some(mut tls) = upstream::originate_to(
            &mut conn,
            &target,
            route.config.sni.as_deref(),
            &route.client,
            timeouts.connect.get(),
            timeouts.handshake.get(),
            &route.expected,
        )
        .await
        else {
            return conn;
        };
        conn.record.decision = Some(Outcome::Allow);
        let outcome = copy_bidirectional(&mut app, &mut tls, timeouts.idle.get()).await;
        conn.finish_copy(outcome);
        conn
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshguard_identity::TlsProfile;
    use meshguard_identity::test_ca::TestCa;

    fn route(dest: &str, ports: Vec<u16>, target: &str, client: &Arc<ClientConfig>) -> Route {
        Route {
            config: RouteConfig {
                destination: dest.parse().unwrap(),
                ports,
                target: Some(target.parse().unwrap()),
                target_port: None,
                expect: vec!["spiffe://td/*".parse().unwrap()],
                sni: None,
            },
            client: client.clone(),
            expected: Arc::from("spiffe://td/*"),
        }
    }

    #[test]
    fn the_most_specific_route_wins() {
        let ca = TestCa::new("td");
        let client = TlsProfile::new(ca.rotating("/a")).client_config().unwrap();
        let table = RouteTable::new(vec![
            route("10.0.0.0/8", vec![], "1.1.1.1:1", &client),
            route("10.0.0.0/24", vec![], "2.2.2.2:2", &client),
            route("10.0.0.0/24", vec![8080], "3.3.3.3:3", &client),
        ]);
        let target = |dst: &str| {
            table
                .lookup(dst.parse().unwrap())
                .map(|r| r.config.target.clone().unwrap().to_string())
        };
        assert_eq!(target("10.0.0.5:8080").as_deref(), Some("3.3.3.3:3"));
        assert_eq!(target("10.0.0.5:9090").as_deref(), Some("2.2.2.2:2"));
        assert_eq!(target("10.9.0.5:9090").as_deref(), Some("1.1.1.1:1"));
        assert_eq!(target("192.168.0.1:80"), None);
    }
}
