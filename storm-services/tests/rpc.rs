//! `storm_services::rpc` over loopback: round trips over WebSocket and
//! TCP, JSON and a custom codec, compression seen through the byte hooks,
//! timeouts and cancellation seen by the server, round-robin, failover, a
//! server dying mid-call, idempotent resends, a restarted server, a server
//! that breaks the protocol, and servers and clients on every runtime. The
//! `storm rpc` binary's tests are storm-cli's. Every wait is bounded by
//! [`WAIT`]; nothing sleeps to synchronise.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use storm_proto::reconnect::BackoffConfig;
use storm_services::rpc::{
    CallOptions, CancelToken, Codec, CodecError, CompressionConfig, Fault, Json, Request,
    RpcClient, RpcError, RpcServer, RpcServerConfig, Strategy, blocking,
};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// The most any test waits for one event.
const WAIT: Duration = Duration::from_secs(10);

/// What the test server's handlers report.
#[derive(Clone)]
struct Probe {
    /// A `slow` or `hang` call started (its payload as text).
    started: mpsc::UnboundedSender<String>,
    /// A `slow` or `hang` handler was dropped before finishing: the server
    /// stopped it (cancel, deadline or lost connection).
    stopped: mpsc::UnboundedSender<String>,
}

struct Probes {
    started: mpsc::UnboundedReceiver<String>,
    stopped: mpsc::UnboundedReceiver<String>,
}

/// Sends on `stopped` when dropped unfinished.
struct StopGuard(Option<(mpsc::UnboundedSender<String>, String)>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        if let Some((tx, tag)) = self.0.take() {
            let _ = tx.send(tag);
        }
    }
}

fn probe() -> (Probe, Probes) {
    let (started, started_rx) = mpsc::unbounded_channel();
    let (stopped, stopped_rx) = mpsc::unbounded_channel();
    (
        Probe { started, stopped },
        Probes {
            started: started_rx,
            stopped: stopped_rx,
        },
    )
}

/// Methods: `echo` (bytes back), `add` ([a, b] → a + b), `name` (the
/// server's name), `hang` (never answers), `panic`, anything else is
/// `UNKNOWN_METHOD`. Parameters and results go through `codec`.
async fn handle<C: Codec>(
    codec: Arc<C>,
    name: &'static str,
    probe: Probe,
    request: Request,
) -> Result<Bytes, Fault> {
    if let Some(result) = answer(&*codec, name, &request) {
        return result;
    }
    // `hang`
    let tag = String::from_utf8_lossy(&request.payload).into_owned();
    let _guard = StopGuard(Some((probe.stopped.clone(), tag.clone())));
    let _ = probe.started.send(tag);
    std::future::pending::<()>().await;
    unreachable!()
}

/// [`handle`] for a blocking server: `hang` waits until the call is
/// cancelled (reported on `stopped`), at most [`WAIT`].
fn handle_blocking(name: &'static str, probe: &Probe, request: &Request) -> Result<Bytes, Fault> {
    if let Some(result) = answer(&Json, name, request) {
        return result;
    }
    let tag = String::from_utf8_lossy(&request.payload).into_owned();
    let _ = probe.started.send(tag.clone());
    if request.wait_cancelled(WAIT) {
        let _ = probe.stopped.send(tag);
    }
    Err(Fault::new(Fault::INTERNAL, "hang was not cancelled"))
}

/// Every method of [`handle`] but `hang` (`None`).
fn answer<C: Codec>(codec: &C, name: &str, request: &Request) -> Option<Result<Bytes, Fault>> {
    Some(match request.method.as_str() {
        "echo" => Ok(request.payload.clone()),
        "add" => request
            .params::<(i64, i64)>(codec)
            .and_then(|(a, b)| codec.reply(&(a + b))),
        "name" => codec.reply(name),
        "hang" => return None,
        "panic" => panic!("a handler bug"),
        other => Err(Fault::new(
            Fault::UNKNOWN_METHOD,
            format!("no method {other}"),
        )),
    })
}

async fn server_with<C: Codec>(
    config: RpcServerConfig,
    codec: C,
    name: &'static str,
) -> (RpcServer, Probes) {
    let (probe, probes) = probe();
    let codec = Arc::new(codec);
    let server = RpcServer::bind(config, move |request| {
        handle(Arc::clone(&codec), name, probe.clone(), request)
    })
    .await
    .expect("bind");
    (server, probes)
}

async fn ws_server(name: &'static str) -> (RpcServer, Probes) {
    server_with(RpcServerConfig::ws("127.0.0.1:0"), Json, name).await
}

async fn tcp_server(name: &'static str) -> (RpcServer, Probes) {
    server_with(RpcServerConfig::tcp("127.0.0.1:0"), Json, name).await
}

/// Backoff short enough for tests: a failed endpoint is retried after
/// 50 ms.
fn quick() -> BackoffConfig {
    BackoffConfig::fixed(Duration::from_millis(50))
}

fn client(endpoints: &[String]) -> RpcClient {
    RpcClient::builder(endpoints)
        .expect("endpoints")
        .backoff(quick())
        .build()
        .expect("client")
}

/// An address where nothing listens.
fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("tcp://{addr}")
}

async fn next(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    timeout(WAIT, rx.recv())
        .await
        .expect("timed out waiting for the server")
        .expect("channel open")
}

async fn check_round_trip<R: storm_async::Runtime>(client: &RpcClient<Json, R>) {
    let sum: i64 = client.call("add", &(2, 40), WAIT).await.expect("add");
    assert_eq!(sum, 42);
    let raw = client
        .call_raw(
            "echo",
            Bytes::from_static(b"\x00\xffraw"),
            CallOptions::new(WAIT),
        )
        .await
        .expect("echo");
    assert_eq!(&raw[..], b"\x00\xffraw");
    match client.call::<_, i64>("nope", &(), WAIT).await {
        Err(RpcError::Remote(fault)) => assert_eq!(fault.code, Fault::UNKNOWN_METHOD),
        other => panic!("expected UNKNOWN_METHOD, got {other:?}"),
    }
    match client.call::<_, i64>("add", &"not numbers", WAIT).await {
        Err(RpcError::Remote(fault)) => assert_eq!(fault.code, Fault::BAD_REQUEST),
        other => panic!("expected BAD_REQUEST, got {other:?}"),
    }
    match client.call::<_, String>("add", &(1, 2), WAIT).await {
        Err(RpcError::Decode(_)) => {}
        other => panic!("expected a decode error, got {other:?}"),
    }
    match client.call::<_, i64>("panic", &(), WAIT).await {
        Err(RpcError::Remote(fault)) => assert_eq!(fault.code, Fault::INTERNAL),
        other => panic!("expected INTERNAL, got {other:?}"),
    }
}

#[tokio::test]
async fn round_trip_over_websocket() {
    let (server, _probes) = ws_server("a").await;
    let client = client(&[server.endpoint()]);
    check_round_trip(&client).await;
    assert_eq!(server.stats().requests, 6);
}

#[tokio::test]
async fn round_trip_over_length_prefixed_tcp() {
    let (server, _probes) = tcp_server("a").await;
    let client = client(&[server.endpoint()]);
    check_round_trip(&client).await;
    // Many calls in flight at once on one connection.
    let calls = (0..50).map(|i| {
        let client = client.clone();
        async move { client.call::<_, i64>("add", &(i, i), WAIT).await }
    });
    let results = futures_join_all(calls).await;
    for (i, result) in results.into_iter().enumerate() {
        assert_eq!(result.expect("add"), 2 * i as i64);
    }
}

/// Awaits every future (spawned, so they run concurrently).
async fn futures_join_all<F, T>(futures: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(timeout(WAIT, handle).await.expect("bounded").expect("task"));
    }
    out
}

/// JSON with its bytes reversed: not JSON on the wire, so a call only
/// works if both ends use it.
#[derive(Debug, Clone, Copy)]
struct Reversed;

impl Codec for Reversed {
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Bytes, CodecError> {
        let mut bytes = Json.encode(value)?.to_vec();
        bytes.reverse();
        Ok(bytes.into())
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        let mut bytes = bytes.to_vec();
        bytes.reverse();
        Json.decode(&bytes)
    }
}

#[tokio::test]
async fn custom_codec_on_both_ends() {
    let (server, _probes) = server_with(RpcServerConfig::tcp("127.0.0.1:0"), Reversed, "r").await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let hook = Arc::clone(&seen);
    let client = RpcClient::builder([server.endpoint()])
        .expect("endpoints")
        .codec(Reversed)
        .on_bytes_sent(move |_, bytes| hook.lock().unwrap().push(bytes.to_vec()))
        .build()
        .expect("client");
    let sum: i64 = client.call("add", &(20, 22), WAIT).await.expect("add");
    assert_eq!(sum, 42);
    let sent = seen.lock().unwrap().concat();
    assert!(sent.ends_with(b"]22,02["), "reversed JSON on the wire");
    // The JSON client's parameters do not decode on this server.
    let json = client_for(&server);
    match json.call::<_, i64>("add", &(1, 2), WAIT).await {
        Err(RpcError::Remote(fault)) => assert_eq!(fault.code, Fault::BAD_REQUEST),
        other => panic!("expected BAD_REQUEST, got {other:?}"),
    }
}

fn client_for(server: &RpcServer) -> RpcClient {
    client(&[server.endpoint()])
}

/// Counts the bytes a hook sees.
fn counter() -> (
    Arc<AtomicUsize>,
    impl Fn(&storm_services::rpc::Endpoint, &[u8]) + Send + Sync,
) {
    let count = Arc::new(AtomicUsize::new(0));
    let hook_count = Arc::clone(&count);
    (
        count,
        move |_: &storm_services::rpc::Endpoint, bytes: &[u8]| {
            hook_count.fetch_add(bytes.len(), Ordering::Relaxed);
        },
    )
}

#[tokio::test]
async fn compression_shrinks_what_goes_on_the_wire() {
    let mut config = RpcServerConfig::ws("127.0.0.1:0");
    config.compression = Some(CompressionConfig::default());
    let (server, _probes) = server_with(config, Json, "z").await;
    let payload = Bytes::from("a fairly repetitive line of text, ".repeat(300)); // ~10 KB

    let mut totals = Vec::new();
    for compression in [None, Some(CompressionConfig::default())] {
        let (sent, sent_hook) = counter();
        let (received, received_hook) = counter();
        let client = RpcClient::builder([server.endpoint()])
            .expect("endpoints")
            .compression(compression)
            .on_bytes_sent(sent_hook)
            .on_bytes_received(received_hook)
            .build()
            .expect("client");
        let echoed = client
            .call_raw("echo", payload.clone(), CallOptions::new(WAIT))
            .await
            .expect("echo");
        assert_eq!(echoed, payload);
        totals.push((
            sent.load(Ordering::Relaxed),
            received.load(Ordering::Relaxed),
        ));
    }
    let [(plain_sent, plain_received), (small_sent, small_received)] = totals[..] else {
        unreachable!()
    };
    assert!(
        plain_sent > payload.len(),
        "uncompressed request: {plain_sent}"
    );
    assert!(
        small_sent * 10 < plain_sent,
        "compressed request {small_sent} vs {plain_sent}"
    );
    // The server compresses its responses for both clients.
    assert!(
        plain_received * 10 < payload.len(),
        "compressed response: {plain_received}"
    );
    assert!(small_received * 10 < payload.len());
}

#[tokio::test]
async fn a_timeout_fails_the_call_and_the_server_sees_the_cancel() {
    let (server, mut probes) = ws_server("a").await;
    let client = client_for(&server);
    let start = Instant::now();
    let result = client
        .call_raw(
            "hang",
            Bytes::from_static(b"t1"),
            CallOptions::new(Duration::from_millis(300)),
        )
        .await;
    assert_eq!(result, Err(RpcError::Timeout));
    assert!(start.elapsed() < WAIT);
    assert_eq!(next(&mut probes.started).await, "t1");
    assert_eq!(next(&mut probes.stopped).await, "t1");
    // The connection is still good.
    let sum: i64 = client.call("add", &(1, 1), WAIT).await.expect("add");
    assert_eq!(sum, 2);
}

#[tokio::test]
async fn dropping_a_call_cancels_it_on_the_server() {
    let (server, mut probes) = tcp_server("a").await;
    let client = client_for(&server);
    let call = client.call_raw(
        "hang",
        Bytes::from_static(b"dropped"),
        CallOptions::new(WAIT),
    );
    tokio::select! {
        result = call => panic!("hang answered: {result:?}"),
        started = next(&mut probes.started) => assert_eq!(started, "dropped"),
    }
    // The call future is dropped here.
    assert_eq!(next(&mut probes.stopped).await, "dropped");
    wait_until(|| server.stats().cancelled == 1).await;
}

#[tokio::test]
async fn a_cancel_token_cancels_the_call() {
    let (server, mut probes) = ws_server("a").await;
    let client = client_for(&server);
    let token = CancelToken::new();
    let call = {
        let client = client.clone();
        let token = token.clone();
        tokio::spawn(async move {
            client
                .call_raw(
                    "hang",
                    Bytes::from_static(b"token"),
                    CallOptions::new(WAIT).cancel_token(token),
                )
                .await
        })
    };
    assert_eq!(next(&mut probes.started).await, "token");
    token.cancel();
    let result = timeout(WAIT, call).await.expect("bounded").expect("task");
    assert_eq!(result, Err(RpcError::Cancelled));
    assert_eq!(next(&mut probes.stopped).await, "token");
    assert_eq!(server.stats().cancelled, 1);
    // A cancelled token fails later calls at once.
    let again = client
        .call_raw(
            "echo",
            Bytes::new(),
            CallOptions::new(WAIT).cancel_token(token),
        )
        .await;
    assert_eq!(again, Err(RpcError::Cancelled));
}

/// Polls `condition` (a counter updated by another task) until it holds,
/// yielding in between; bounded by [`WAIT`].
async fn wait_until(condition: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "condition not met in time");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn round_robin_spreads_calls_over_both_servers() {
    let (a, _pa) = ws_server("a").await;
    let (b, _pb) = tcp_server("b").await;
    let client = client(&[a.endpoint(), b.endpoint()]);
    let mut names = Vec::new();
    for _ in 0..6 {
        names.push(
            client
                .call::<_, String>("name", &(), WAIT)
                .await
                .expect("name"),
        );
    }
    assert_eq!(names, ["a", "b", "a", "b", "a", "b"]);
    assert_eq!((a.stats().requests, b.stats().requests), (3, 3));
}

#[tokio::test]
async fn failover_skips_an_endpoint_that_is_down() {
    let (b, _pb) = ws_server("b").await;
    let dead = dead_endpoint();
    for strategy in [Strategy::Failover, Strategy::RoundRobin] {
        let client = RpcClient::builder([dead.clone(), b.endpoint()])
            .expect("endpoints")
            .strategy(strategy)
            .backoff(BackoffConfig::fixed(Duration::from_secs(60)))
            .build()
            .expect("client");
        for _ in 0..4 {
            let name: String = client.call("name", &(), WAIT).await.expect("name");
            assert_eq!(name, "b");
        }
        assert!(
            !client.is_available(0),
            "the dead endpoint is out of rotation"
        );
    }
    // Failover prefers the first endpoint while it is up.
    let (a, _pa) = tcp_server("a").await;
    let client = RpcClient::builder([a.endpoint(), b.endpoint()])
        .expect("endpoints")
        .strategy(Strategy::Failover)
        .build()
        .expect("client");
    for _ in 0..3 {
        let name: String = client.call("name", &(), WAIT).await.expect("name");
        assert_eq!(name, "a");
    }
}

/// A call that finds every endpoint backing off waits for it up to its
/// own timeout, then fails naming the endpoints and the last error.
#[tokio::test]
async fn no_endpoint_up_waits_out_the_call_and_names_the_endpoints() {
    let dead = dead_endpoint();
    let client = RpcClient::builder([dead.clone()])
        .expect("endpoints")
        // Retried long after the call's deadline.
        .backoff(BackoffConfig::fixed(Duration::from_secs(60)))
        .build()
        .expect("client");
    let call_timeout = Duration::from_millis(300);
    for _ in 0..2 {
        let start = Instant::now();
        let result = client.call::<_, i64>("add", &(1, 2), call_timeout).await;
        let took = start.elapsed();
        let error = result.expect_err("nothing listens");
        assert!(
            took >= call_timeout && took < WAIT,
            "failed after {took:?}, not at its {call_timeout:?} timeout"
        );
        match &error {
            RpcError::NoEndpoint {
                endpoints,
                last_error: Some(last),
            } => {
                let named: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
                assert_eq!(named, std::slice::from_ref(&dead));
                assert!(last.starts_with(&dead), "{last}");
            }
            other => panic!("expected NoEndpoint, got {other:?}"),
        }
        let text = error.to_string();
        assert!(
            text.starts_with(&format!(
                "no endpoint is reachable (tried {dead}; last error: {dead}: "
            )),
            "{text}"
        );
    }
}

/// An attempt cut short by the deadline says less than the attempt that
/// failed before it (on a loaded machine, a refused certificate's attempt
/// can be followed by one still opening at the deadline): the error names
/// both.
#[tokio::test]
async fn the_attempt_before_the_one_cut_short_is_named_too() {
    // Closes the first connection at once, then holds every later one
    // without answering the WebSocket handshake.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("ws://{}/", listener.local_addr().expect("addr"));
    let accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        if let Ok((first, _)) = listener.accept().await {
            drop(first);
        }
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let client = client(std::slice::from_ref(&endpoint));
    let result = client
        .call::<_, i64>("add", &(1, 2), Duration::from_millis(1500))
        .await;
    match result {
        Err(RpcError::NoEndpoint {
            last_error: Some(last),
            ..
        }) => assert!(
            last.starts_with(&format!(
                "{endpoint}: still connecting; before that, {endpoint}: "
            )),
            "{last}"
        ),
        other => panic!("expected NoEndpoint, got {other:?}"),
    }
    accepting.abort();
}

/// A connection attempt still going at the call's deadline ends the call
/// with `NoEndpoint` naming it.
#[tokio::test]
async fn a_connection_still_opening_at_the_deadline_is_named() {
    // Accepts TCP connections and never answers the WebSocket handshake.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("ws://{}/", listener.local_addr().expect("addr"));
    let accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let client = client(std::slice::from_ref(&endpoint));
    let call_timeout = Duration::from_millis(300);
    let start = Instant::now();
    let result = client.call::<_, i64>("add", &(1, 2), call_timeout).await;
    assert!(start.elapsed() >= call_timeout);
    match result {
        Err(RpcError::NoEndpoint {
            last_error: Some(last),
            ..
        }) => assert_eq!(last, format!("{endpoint}: still connecting")),
        other => panic!("expected NoEndpoint, got {other:?}"),
    }
    accepting.abort();
}

#[tokio::test]
async fn a_server_dying_mid_call_fails_it_fast() {
    let (server, mut probes) = ws_server("a").await;
    let client = client_for(&server);
    let call = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .call_raw(
                    "hang",
                    Bytes::from_static(b"doomed"),
                    CallOptions::new(Duration::from_secs(60)),
                )
                .await
        })
    };
    assert_eq!(next(&mut probes.started).await, "doomed");
    let start = Instant::now();
    server.shutdown(Duration::from_millis(100)).await;
    let result = timeout(WAIT, call).await.expect("bounded").expect("task");
    assert!(
        matches!(result, Err(RpcError::ConnectionLost { .. })),
        "{result:?}"
    );
    assert!(
        start.elapsed() < WAIT,
        "failed fast, not at the 60 s deadline"
    );
    assert_eq!(next(&mut probes.stopped).await, "doomed");
}

#[tokio::test]
async fn an_idempotent_call_is_resent_elsewhere_when_its_server_dies() {
    let (a, mut pa) = tcp_server("a").await;
    let (b, mut pb) = tcp_server("b").await;
    let client = client(&[a.endpoint(), b.endpoint()]);
    let call = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .call_raw(
                    "hang",
                    Bytes::from_static(b"again"),
                    CallOptions::new(WAIT).idempotent(true),
                )
                .await
        })
    };
    // Round-robin sends it to a first.
    assert_eq!(next(&mut pa.started).await, "again");
    a.shutdown(Duration::from_millis(100)).await;
    // It is sent again, to b.
    assert_eq!(next(&mut pb.started).await, "again");
    call.abort();
    assert_eq!(next(&mut pb.stopped).await, "again");
}

#[tokio::test]
async fn reconnects_after_the_server_restarts() {
    let (server, _probes) = tcp_server("first").await;
    let addr = server.local_addr();
    let client = client_for(&server);
    let name: String = client.call("name", &(), WAIT).await.expect("name");
    assert_eq!(name, "first");
    assert!(client.is_connected(0));
    server.shutdown(Duration::from_millis(100)).await;
    // A call made before the client has read the server's goodbye would
    // go out on the dying connection and fail with ConnectionLost (it is
    // not idempotent); wait until the client has seen the end.
    wait_until(|| !client.is_connected(0)).await;

    let (restarted, _probes) =
        server_with(RpcServerConfig::tcp(&addr.to_string()), Json, "second").await;
    assert_eq!(restarted.local_addr(), addr);
    // The old connection is gone; the endpoint is retried after its
    // backoff and the call goes through on a new connection.
    let name: String = client
        .call("name", &(), WAIT)
        .await
        .expect("name after restart");
    assert_eq!(name, "second");
}

/// Echoes every message: an RPC client gets its own request back, which is
/// a protocol violation for it.
struct Mirror;

impl storm_tokio::Handler for Mirror {
    async fn on_message(&self, session: &storm_tokio::Session, message: storm_proto::Message) {
        let _ = session.send(message).await;
    }
}

#[tokio::test]
async fn a_server_that_breaks_the_protocol_fails_the_call_fast() {
    let options = storm_host::options::ServerOptions::default().with_addr("127.0.0.1:0");
    let server = storm_tokio::TcpServer::bind(options, storm_proto::framing::Framing::LengthPrefix)
        .await
        .expect("bind");
    let endpoint = format!("tcp://{}", server.local_addr());
    let handle = server.handle();
    tokio::spawn(server.serve(Mirror));
    let client = client(&[endpoint]);
    let start = Instant::now();
    let result = client
        .call::<_, i64>("add", &(1, 2), Duration::from_secs(60))
        .await;
    assert!(
        matches!(result, Err(RpcError::ConnectionLost { .. })),
        "{result:?}"
    );
    assert!(start.elapsed() < WAIT);
    handle.shutdown(Duration::from_millis(100)).await;
}

/// A server of the test methods on one of the runtimes.
enum AnyServer {
    Tokio(RpcServer),
    Smol(RpcServer<storm_smol::Smol>),
    Std(blocking::RpcServer),
}

#[derive(Debug, Clone, Copy)]
enum On {
    Tokio,
    Smol,
    Std,
}

impl AnyServer {
    /// Binds the test methods ([`handle`]) with `config` on `runtime`.
    async fn bind(runtime: On, config: RpcServerConfig) -> (Self, Probes) {
        let (probe, probes) = probe();
        let codec = Arc::new(Json);
        let server = match runtime {
            On::Tokio => Self::Tokio(
                RpcServer::bind(config, move |request| {
                    handle(Arc::clone(&codec), "tokio", probe.clone(), request)
                })
                .await
                .expect("bind"),
            ),
            // Bound from smol's own `block_on`: its tasks run on smol.
            On::Smol => Self::Smol(
                smol::block_on(RpcServer::<storm_smol::Smol>::bind_on(
                    config,
                    move |request| handle(Arc::clone(&codec), "smol", probe.clone(), request),
                ))
                .expect("bind"),
            ),
            On::Std => Self::Std(
                blocking::RpcServer::bind(config, move |request| {
                    handle_blocking("std", &probe, &request)
                })
                .expect("bind"),
            ),
        };
        (server, probes)
    }

    fn endpoint(&self) -> String {
        match self {
            Self::Tokio(server) => server.endpoint(),
            Self::Smol(server) => server.endpoint(),
            Self::Std(server) => server.endpoint(),
        }
    }

    fn stats(&self) -> storm_services::rpc::RpcServerStats {
        match self {
            Self::Tokio(server) => server.stats(),
            Self::Smol(server) => server.stats(),
            Self::Std(server) => server.stats(),
        }
    }

    /// Shuts down, bounded by [`WAIT`].
    async fn shutdown(self) {
        let quick = Duration::from_millis(500);
        let stopped = match self {
            Self::Tokio(server) => timeout(WAIT, server.shutdown(quick)).await.is_ok(),
            Self::Smol(server) => timeout(
                WAIT,
                tokio::task::spawn_blocking(move || smol::block_on(server.shutdown(quick))),
            )
            .await
            .is_ok_and(|joined| joined.is_ok()),
            Self::Std(server) => timeout(
                WAIT,
                tokio::task::spawn_blocking(move || server.shutdown(quick)),
            )
            .await
            .is_ok_and(|joined| joined.is_ok_and(|stopped| stopped.is_ok())),
        };
        assert!(stopped, "the server did not stop in time");
    }
}

/// On `runtime`, over WebSocket and TCP: the round trip (results, faults,
/// a panicking handler), a cancel the server sees and acts on, and
/// responses compressed above the threshold.
async fn calls_on(runtime: On) {
    for ws in [true, false] {
        let mut config = if ws {
            RpcServerConfig::ws("127.0.0.1:0")
        } else {
            RpcServerConfig::tcp("127.0.0.1:0")
        };
        config.compression = Some(CompressionConfig::default());
        let (server, mut probes) = AnyServer::bind(runtime, config).await;
        let what = format!("{runtime:?} {}", server.endpoint());
        let (received, received_hook) = counter();
        let client = RpcClient::builder([server.endpoint()])
            .expect("endpoints")
            .backoff(quick())
            .on_bytes_received(received_hook)
            .build()
            .expect("client");

        check_round_trip(&client).await;
        let name: String = client.call("name", &(), WAIT).await.expect("name");
        assert_eq!(name, format!("{runtime:?}").to_lowercase(), "{what}");

        // Cancellation reaches the server's handler.
        let token = CancelToken::new();
        let call = {
            let client = client.clone();
            let token = token.clone();
            tokio::spawn(async move {
                client
                    .call_raw(
                        "hang",
                        Bytes::from_static(b"cancel me"),
                        CallOptions::new(WAIT).cancel_token(token),
                    )
                    .await
            })
        };
        assert_eq!(next(&mut probes.started).await, "cancel me", "{what}");
        token.cancel();
        let result = timeout(WAIT, call).await.expect("bounded").expect("task");
        assert_eq!(result, Err(RpcError::Cancelled), "{what}");
        assert_eq!(next(&mut probes.stopped).await, "cancel me", "{what}");
        wait_until(|| server.stats().cancelled == 1).await;

        // A response above the threshold comes back compressed.
        let payload = Bytes::from("a fairly repetitive line of text, ".repeat(300)); // ~10 KB
        let before = received.load(Ordering::Relaxed);
        let echoed = client
            .call_raw("echo", payload.clone(), CallOptions::new(WAIT))
            .await
            .expect("echo");
        assert_eq!(echoed, payload, "{what}");
        let response = received.load(Ordering::Relaxed) - before;
        assert!(
            response * 10 < payload.len(),
            "{what}: response of {response} bytes"
        );

        let stats = server.stats();
        assert_eq!(
            (stats.requests, stats.cancelled),
            (9, 1),
            "{what}: {stats:?}"
        );
        client.close().await;
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_on_tokio_over_ws_and_tcp() {
    calls_on(On::Tokio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_on_smol_over_ws_and_tcp() {
    calls_on(On::Smol).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_on_std_over_ws_and_tcp() {
    calls_on(On::Std).await;
}

/// `rx`'s next message, on any runtime, bounded by [`WAIT`].
async fn next_on_smol(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    let timer = async {
        smol::Timer::after(WAIT).await;
        None
    };
    smol::future::or(rx.recv(), timer)
        .await
        .expect("timed out waiting for the server")
}

/// The client on smol (no tokio runtime where it runs) against a server
/// on each runtime, over WebSocket and TCP: the round trip, a timeout and
/// a cancel token, both seen by the server.
#[test]
fn a_client_on_smol_calls_servers_on_every_runtime() {
    let tokio = tokio::runtime::Runtime::new().expect("tokio runtime");
    for runtime in [On::Tokio, On::Smol, On::Std] {
        for ws in [true, false] {
            let config = if ws {
                RpcServerConfig::ws("127.0.0.1:0")
            } else {
                RpcServerConfig::tcp("127.0.0.1:0")
            };
            let (server, mut probes) = tokio.block_on(AnyServer::bind(runtime, config));
            let what = format!("{runtime:?} {}", server.endpoint());
            smol::block_on(async {
                let client = RpcClient::builder([server.endpoint()])
                    .expect("endpoints")
                    .backoff(quick())
                    .runtime::<storm_smol::Smol>()
                    .build()
                    .expect("client");
                check_round_trip(&client).await;

                let timed_out = client
                    .call_raw(
                        "hang",
                        Bytes::from_static(b"late"),
                        CallOptions::new(Duration::from_millis(200)),
                    )
                    .await;
                assert_eq!(timed_out, Err(RpcError::Timeout), "{what}");
                assert_eq!(next_on_smol(&mut probes.started).await, "late", "{what}");
                assert_eq!(next_on_smol(&mut probes.stopped).await, "late", "{what}");

                let token = CancelToken::new();
                let call = smol::spawn({
                    let client = client.clone();
                    let token = token.clone();
                    async move {
                        client
                            .call_raw(
                                "hang",
                                Bytes::from_static(b"token"),
                                CallOptions::new(WAIT).cancel_token(token),
                            )
                            .await
                    }
                });
                assert_eq!(next_on_smol(&mut probes.started).await, "token", "{what}");
                token.cancel();
                assert_eq!(call.await, Err(RpcError::Cancelled), "{what}");
                assert_eq!(next_on_smol(&mut probes.stopped).await, "token", "{what}");
                client.close().await;
            });
            tokio.block_on(server.shutdown());
        }
    }
}

/// The blocking client (storm-std: no async runtime where it runs)
/// against a server on each runtime, over WebSocket and TCP: the round
/// trip, a server's fault, a timeout and a cancel token cancelled from
/// another thread, both seen by the server; then, its one endpoint gone, a
/// call fails within its timeout and names the endpoint, and once closed
/// it refuses calls.
#[test]
fn a_blocking_client_calls_servers_on_every_runtime() {
    let tokio = tokio::runtime::Runtime::new().expect("tokio runtime");
    for runtime in [On::Tokio, On::Smol, On::Std] {
        for ws in [true, false] {
            let config = if ws {
                RpcServerConfig::ws("127.0.0.1:0")
            } else {
                RpcServerConfig::tcp("127.0.0.1:0")
            };
            let (server, mut probes) = tokio.block_on(AnyServer::bind(runtime, config));
            let what = format!("{runtime:?} {}", server.endpoint());
            let client: blocking::RpcClient = RpcClient::builder([server.endpoint()])
                .expect("endpoints")
                .backoff(quick())
                .build_blocking()
                .expect("client");
            let sum: i64 = client.call("add", &(2, 40), WAIT).expect("add");
            assert_eq!(sum, 42, "{what}");
            let raw = client
                .call_raw(
                    "echo",
                    Bytes::from_static(b"\x00\xff"),
                    CallOptions::new(WAIT),
                )
                .expect("echo");
            assert_eq!(&raw[..], b"\x00\xff", "{what}");
            match client.call::<_, i64>("nope", &(), WAIT) {
                Err(RpcError::Remote(fault)) => assert_eq!(fault.code, Fault::UNKNOWN_METHOD),
                other => panic!("{what}: expected UNKNOWN_METHOD, got {other:?}"),
            }

            let timed_out = client.call_raw(
                "hang",
                Bytes::from_static(b"late"),
                CallOptions::new(Duration::from_millis(200)),
            );
            assert_eq!(timed_out, Err(RpcError::Timeout), "{what}");
            smol::block_on(async {
                assert_eq!(next_on_smol(&mut probes.started).await, "late", "{what}");
                assert_eq!(next_on_smol(&mut probes.stopped).await, "late", "{what}");
            });

            let token = CancelToken::new();
            let call = std::thread::spawn({
                let client = client.clone();
                let token = token.clone();
                move || {
                    client.call_raw(
                        "hang",
                        Bytes::from_static(b"token"),
                        CallOptions::new(WAIT).cancel_token(token),
                    )
                }
            });
            smol::block_on(async {
                assert_eq!(next_on_smol(&mut probes.started).await, "token", "{what}");
            });
            token.cancel();
            assert_eq!(
                call.join().expect("call"),
                Err(RpcError::Cancelled),
                "{what}"
            );
            smol::block_on(async {
                assert_eq!(next_on_smol(&mut probes.stopped).await, "token", "{what}");
            });

            tokio.block_on(server.shutdown());
            let begun = Instant::now();
            let result = client.call_raw(
                "echo",
                Bytes::new(),
                CallOptions::new(Duration::from_millis(300)),
            );
            // NoEndpoint, or (the client not yet told of the close when the
            // call started) ConnectionLost: either names the endpoint.
            match result {
                Err(RpcError::NoEndpoint { endpoints, .. }) => {
                    assert_eq!(endpoints, client.endpoints(), "{what}");
                }
                Err(RpcError::ConnectionLost { endpoint }) => {
                    assert_eq!([endpoint], client.endpoints(), "{what}");
                }
                other => panic!("{what}: expected NoEndpoint, got {other:?}"),
            }
            assert!(begun.elapsed() < WAIT, "{what}");
            client.close();
            let closed = client.call_raw("echo", Bytes::new(), CallOptions::new(WAIT));
            assert_eq!(closed, Err(RpcError::Closed), "{what}");
        }
    }
}
