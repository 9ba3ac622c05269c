//! The Workload API source against a real gRPC server on a Unix socket, speaking the SPIFFE
//! Workload API's `FetchX509SVID` as a SPIRE agent does (the `workload.spiffe.io: true` metadata
//! check, full state streamed on each change). The messages are written by hand with prost; the
//! service is dispatched by path through `tonic::server::Grpc`, which is what tonic's codegen emits.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use meshguard_identity::source::{
    IdentitySource, IdentityState, IdentityStatus, RenewalPolicy, RunningIdentity, SourceError,
    StartOptions, WorkloadApiSource,
};
use meshguard_identity::test_ca::{IssuedSvid, TestCa};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::{Request, Response, Status};

const WORKLOAD: &str = "/ns/ledger/sa/ledger";
/// Upper bound for the source to follow the server; a bound, not a wait.
const FOLLOW: Duration = Duration::from_secs(20);

// === messages (workload.proto) ===

#[derive(Clone, PartialEq, prost::Message)]
struct X509SvidRequest {}

#[derive(Clone, PartialEq, prost::Message)]
struct X509SvidResponse {
    #[prost(message, repeated, tag = "1")]
    svids: Vec<X509SvidMessage>,
    #[prost(bytes = "vec", repeated, tag = "2")]
    crl: Vec<Vec<u8>>,
    #[prost(map = "string, bytes", tag = "3")]
    federated_bundles: HashMap<String, Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct X509SvidMessage {
    #[prost(string, tag = "1")]
    spiffe_id: String,
    #[prost(bytes = "vec", tag = "2")]
    x509_svid: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    x509_svid_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    bundle: Vec<u8>,
    #[prost(string, tag = "5")]
    hint: String,
}

/// The Workload API state for one SVID from `ca`, plus federated bundles.
fn state(ca: &TestCa, svid: &IssuedSvid, federated: &[&TestCa]) -> X509SvidResponse {
    X509SvidResponse {
        svids: vec![X509SvidMessage {
            spiffe_id: format!("spiffe://{}{WORKLOAD}", ca.trust_domain()),
            x509_svid: svid.chain.iter().flat_map(|c| c.to_vec()).collect(),
            x509_svid_key: svid.key.secret_der().to_vec(),
            bundle: ca.root_der().to_vec(),
            hint: String::new(),
        }],
        crl: Vec::new(),
        federated_bundles: federated
            .iter()
            .map(|f| {
                (
                    format!("spiffe://{}", f.trust_domain()),
                    f.root_der().to_vec(),
                )
            })
            .collect(),
    }
}

// === the server ===

/// `SpiffeWorkloadAPI` with only `FetchX509SVID`, streaming whatever `state` holds.
#[derive(Clone)]
struct WorkloadApi {
    state: watch::Receiver<X509SvidResponse>,
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<X509SvidResponse, Status>> + Send>>;

/// The `FetchX509SVID` handler: the full state now, then again on every change; the stream ends
/// when the server stops (the state's sender is dropped).
#[derive(Clone)]
struct FetchX509Svid(watch::Receiver<X509SvidResponse>);

impl Service<Request<X509SvidRequest>> for FetchX509Svid {
    type Response = Response<ResponseStream>;
    type Error = Status;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Status>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: Request<X509SvidRequest>) -> Self::Future {
        let rx = self.0.clone();
        let stream = futures::stream::unfold((rx, true), |(mut rx, first)| async move {
            if !first && rx.changed().await.is_err() {
                return None;
            }
            let message = rx.borrow_and_update().clone();
            Some((Ok(message), (rx, false)))
        });
        Box::pin(async move { Ok(Response::new(Box::pin(stream) as ResponseStream)) })
    }
}

impl Service<http::Request<Body>> for WorkloadApi {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let handler = FetchX509Svid(self.state.clone());
        Box::pin(async move {
            // SPIRE refuses calls without this header (it keeps browsers and proxies out).
            let secured = request
                .headers()
                .get("workload.spiffe.io")
                .is_some_and(|v| v == "true");
            if !secured {
                return Ok(
                    Status::invalid_argument("security header missing from request").into_http(),
                );
            }
            if request.uri().path() != "/SpiffeWorkloadAPI/FetchX509SVID" {
                return Ok(Status::unimplemented("only FetchX509SVID is served here").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.server_streaming(handler, request).await)
        })
    }
}

/// A running test agent; `stop` takes it away (listener closed, streams ended, socket removed).
struct TestAgent {
    socket: PathBuf,
    state: watch::Sender<X509SvidResponse>,
    server: JoinHandle<()>,
}

impl TestAgent {
    fn start(socket: &Path, initial: X509SvidResponse) -> Self {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket).expect("bind the agent socket");
        let (state, rx) = watch::channel(initial);
        let service = WorkloadApi { state: rx };
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .serve_with_incoming(service, UnixListenerStream::new(listener))
                .await
                .expect("the test agent serves");
        });
        Self {
            socket: socket.to_path_buf(),
            state,
            server,
        }
    }

    fn push(&self, next: X509SvidResponse) {
        self.state.send_replace(next);
    }

    fn stop(self) {
        self.server.abort();
        // Dropping the sender ends every open FetchX509SVID stream.
        drop(self.state);
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn endpoint(socket: &Path) -> String {
    format!("unix://{}", socket.display())
}

fn fast_reconnect() -> RenewalPolicy {
    RenewalPolicy {
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        ..RenewalPolicy::default()
    }
}

async fn start(socket: &Path) -> RunningIdentity {
    let source =
        WorkloadApiSource::with_backoff(&endpoint(socket), fast_reconnect()).expect("source");
    tokio::time::timeout(FOLLOW, source.start(StartOptions::default()))
        .await
        .expect("first credentials from the Workload API")
}

async fn status_where(
    status: &mut watch::Receiver<IdentityStatus>,
    pred: impl Fn(&IdentityStatus) -> bool,
) -> IdentityStatus {
    tokio::time::timeout(FOLLOW, status.wait_for(|s| pred(s)))
        .await
        .expect("status change within the bound")
        .expect("the driver is running")
        .clone()
}

#[tokio::test]
async fn follows_a_rotation_pushed_by_the_agent() {
    let ca = TestCa::new("bank.example");
    let partner = TestCa::new("partner.example");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let first = ca.issue(WORKLOAD);
    let agent = TestAgent::start(&socket, state(&ca, &first, &[&partner]));

    let identity = start(&socket).await;
    let current = identity.credentials().current();
    assert_eq!(current.svid.leaf(), &first.chain[0]);
    assert_eq!(
        current.svid.spiffe_id().as_str(),
        "spiffe://bank.example/ns/ledger/sa/ledger"
    );
    // The own and the federated bundle, each under its own trust domain.
    assert_eq!(current.bundles.len(), 2);
    assert_eq!(current.bundles.get(ca.trust_domain()), Some(&ca.bundle()));
    assert_eq!(
        current.bundles.get(partner.trust_domain()),
        Some(&partner.bundle())
    );

    let second = ca.issue(WORKLOAD);
    agent.push(state(&ca, &second, &[]));
    let mut status = identity.status();
    let seen = status_where(&mut status, |s| s.rotations == 1).await;
    assert_eq!(seen.state, IdentityState::Serving);
    let current = identity.credentials().current();
    assert_eq!(current.svid.leaf(), &second.chain[0]);
    assert_eq!(current.bundles.len(), 1, "the federation was withdrawn");
    agent.stop();
}

#[tokio::test]
async fn survives_the_agent_going_away_and_coming_back() {
    let ca = TestCa::new("bank.example");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let first = ca.issue(WORKLOAD);
    let agent = TestAgent::start(&socket, state(&ca, &first, &[]));
    let identity = start(&socket).await;
    let mut status = identity.status();

    agent.stop();
    // The source notices and says so, while the current certificate keeps serving.
    let down = status_where(&mut status, |s| s.last_error.is_some()).await;
    assert_eq!(down.state, IdentityState::Serving);
    assert!(identity.is_serving());
    assert_eq!(
        identity.credentials().current().svid.leaf(),
        &first.chain[0]
    );

    let second = ca.issue(WORKLOAD);
    let agent = TestAgent::start(&socket, state(&ca, &second, &[]));
    let back = status_where(&mut status, |s| s.rotations == 1).await;
    assert_eq!(back.last_error, None);
    assert_eq!(
        identity.credentials().current().svid.leaf(),
        &second.chain[0]
    );
    agent.stop();
}

#[tokio::test]
async fn an_update_failing_validation_is_not_served() {
    let ca = TestCa::new("bank.example");
    let impostor = TestCa::new("bank.example");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let first = ca.issue(WORKLOAD);
    let agent = TestAgent::start(&socket, state(&ca, &first, &[]));
    let identity = start(&socket).await;
    let mut status = identity.status();

    // An SVID whose chain does not lead to the bundle sent alongside it.
    agent.push(state(&ca, &impostor.issue(WORKLOAD), &[]));
    let seen = status_where(&mut status, |s| s.last_error.is_some()).await;
    assert!(seen.last_error.unwrap().contains("unknown CA"));
    assert_eq!(
        identity.credentials().current().svid.leaf(),
        &first.chain[0]
    );
    agent.stop();
}

#[tokio::test]
async fn refuses_endpoints_that_are_not_unix_sockets() {
    for bad in ["tcp://127.0.0.1:8081", "http://localhost", "not a uri"] {
        let err = WorkloadApiSource::new(bad).unwrap_err();
        assert!(
            matches!(err, SourceError::BadEndpoint { .. }),
            "{bad}: {err}"
        );
    }
}

#[tokio::test]
async fn an_absent_agent_is_reported_not_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nobody-home.sock");
    let mut source = WorkloadApiSource::with_backoff(&endpoint(&socket), fast_reconnect()).unwrap();
    let err = tokio::time::timeout(FOLLOW, source.fetch())
        .await
        .unwrap()
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("nobody-home.sock"), "{text}");
}

#[tokio::test]
async fn waits_for_an_agent_that_starts_later() {
    let ca = TestCa::new("bank.example");
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("agent.sock");
    let source =
        WorkloadApiSource::with_backoff(&endpoint(&socket), fast_reconnect()).expect("source");
    let starting = tokio::spawn(source.start(StartOptions::default()));
    tokio::task::yield_now().await;
    assert!(!starting.is_finished(), "no agent, no credentials");

    let svid = ca.issue(WORKLOAD);
    let agent = TestAgent::start(&socket, state(&ca, &svid, &[]));
    let identity = tokio::time::timeout(FOLLOW, starting)
        .await
        .expect("start returns once the agent answers")
        .expect("start does not panic");
    assert_eq!(identity.credentials().current().svid.leaf(), &svid.chain[0]);
    agent.stop();
}
