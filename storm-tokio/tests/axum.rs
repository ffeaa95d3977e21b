//! Storm behind a real axum router on loopback (feature `axum`): sessions
//! on a detached server's hub (its upgrade hook deciding, as on a
//! listening server) and `Stream + Sink` sockets, reached by Storm's own
//! client and by raw HTTP; the router's plain routes on the same port.
//!
//! Every wait is bounded by [`WAIT`].

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use common::{Seen, WAIT, next, next_disconnect, recorder};
use storm_host::link::CloseReason;
use storm_host::options::{ServerOptions, WsOptions};
use storm_proto::Message;
use storm_proto::ws::Config;
use storm_proto::ws::deflate::DeflateConfig;
use storm_tokio::axum::StormUpgrade;
use storm_tokio::websocket::{self, StreamConfig};
use storm_tokio::{Decision, Handler, ServerHandle, Session, UpgradeInfo, WsServer};

/// The largest message the tests send: 16 MiB.
const MAX_MESSAGE: usize = 16 << 20;

/// WebSocket options with permessage-deflate and 16 MiB messages.
fn ws_options() -> WsOptions {
    WsOptions::default()
        .with_config(
            Config::default()
                .with_max_message_size(MAX_MESSAGE)
                .with_max_frame_size(MAX_MESSAGE),
        )
        .with_deflate(DeflateConfig::default())
}

/// A detached server whose sessions may queue a whole 16 MiB reply.
fn hub(max_connections: usize) -> ServerHandle {
    let mut options = ServerOptions::default().with_max_connections(max_connections);
    options.backpressure.max_pending_send_bytes = 2 * MAX_MESSAGE;
    WsServer::detached(options, ws_options()).expect("detached server")
}

/// What the routes share.
struct App<H> {
    hub: ServerHandle,
    handler: Arc<H>,
}

impl<H> Clone for App<H> {
    fn clone(&self) -> Self {
        Self {
            hub: self.hub.clone(),
            handler: Arc::clone(&self.handler),
        }
    }
}

/// `/`: a session on the hub.
async fn session<H: Handler>(State(app): State<App<H>>, upgrade: StormUpgrade) -> Response {
    upgrade.serve(&app.hub, app.handler).await
}

/// `/decided`: a session the route itself accepts, attaching
/// `Room("route")`, whatever the server's hook would say.
async fn decided<H: Handler>(State(app): State<App<H>>, upgrade: StormUpgrade) -> Response {
    let decision = Decision::accept().attach(Room("route".to_owned()));
    upgrade
        .decision(decision)
        .serve(&app.hub, app.handler)
        .await
}

/// `/stream`: a `Stream + Sink` socket that echoes.
async fn stream(upgrade: StormUpgrade) -> Response {
    let config = StreamConfig::new().with_ws(ws_options());
    upgrade.config(config).on_upgrade(|mut ws| async move {
        while let Some(Ok(message)) = ws.next().await {
            if ws.send(message).await.is_err() {
                break;
            }
        }
    })
}

/// Serves the router (sessions at `/`, streams at `/stream`, `/health`)
/// on a loopback port, with the peers' addresses.
async fn serve<H: Handler>(hub: &ServerHandle, handler: H) -> SocketAddr {
    let app = App {
        hub: hub.clone(),
        handler: Arc::new(handler),
    };
    let router = Router::new()
        .route("/", get(session::<H>))
        .route("/decided", get(decided::<H>))
        .route("/stream", get(stream))
        .route("/health", get(|| async { "ok" }))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local address");
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, service).await });
    addr
}

/// Storm's client with deflate offered and 16 MiB messages.
async fn connect(addr: SocketAddr, path: &str) -> websocket::ClientWebSocketStream {
    let config = StreamConfig::new().with_ws(ws_options());
    timeout(
        WAIT,
        websocket::connect(&format!("ws://{addr}{path}"), &config),
    )
    .await
    .expect("connected in time")
    .expect("upgraded")
}

/// Sends `message` and expects it back.
async fn round_trip(ws: &mut websocket::ClientWebSocketStream, message: Message) {
    ws.send(message.clone()).await.expect("sent");
    let back = timeout(WAIT, ws.next()).await.expect("reply in time");
    assert_eq!(back.expect("a reply").expect("a message"), message);
}

/// Writes `request` on a fresh connection and reads the whole response
/// (the server closes after it, or it is a `101` head).
async fn raw(addr: SocketAddr, request: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(request.as_bytes()).await.expect("request");
    let mut response = Vec::new();
    let mut buf = [0; 4096];
    loop {
        let n = timeout(WAIT, tcp.read(&mut buf))
            .await
            .expect("response in time")
            .expect("read");
        response.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&response);
        let upgraded = text.starts_with("HTTP/1.1 101") && text.contains("\r\n\r\n");
        if n == 0 || upgraded {
            return text.into_owned();
        }
    }
}

/// An upgrade request for `path` with `extra` header lines.
fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
const DEFLATE: &str = "Sec-WebSocket-Extensions: permessage-deflate\r\n";

/// `GET /health` answers `200 ok`, and an upgrade at `/` offering
/// permessage-deflate gets it.
async fn assert_health_and_deflate(addr: SocketAddr) {
    let health = raw(
        addr,
        "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.ends_with("\r\n\r\nok"), "{health}");
    let head = raw(addr, &upgrade_request("/", &format!("{KEY}{DEFLATE}"))).await;
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-extensions: permessage-deflate"),
        "{head}"
    );
}

#[tokio::test]
async fn sessions_and_streams_echo_text_and_binary_with_deflate() {
    let hub = hub(0);
    let (handler, mut seen) = recorder(true);
    let addr = serve(&hub, handler).await;
    for path in ["/", "/stream"] {
        // The 101 carries the core's accept key and deflate agreement.
        let head = raw(addr, &upgrade_request(path, &format!("{KEY}{DEFLATE}"))).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{path}: {head}");
        let lower = head.to_ascii_lowercase();
        assert!(
            lower.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        assert!(
            lower.contains("sec-websocket-extensions: permessage-deflate"),
            "{head}"
        );
        let mut ws = connect(addr, path).await;
        round_trip(&mut ws, Message::from("hello through axum")).await;
        round_trip(&mut ws, Message::from(vec![0u8, 1, 2, 255])).await;
        round_trip(&mut ws, Message::from("a".repeat(100_000))).await;
        if path == "/" {
            // Sessions on the hub, with the peers' addresses from axum.
            let sessions = hub.sessions();
            assert!(!sessions.is_empty());
            assert!(sessions.iter().all(|s| s.remote_addr().ip().is_loopback()));
        }
    }
    assert_eq!(next(&mut seen).await, Seen::Connect);
}

#[tokio::test]
async fn the_health_route_answers_beside_the_websocket() {
    let hub = hub(0);
    let (handler, _seen) = recorder(true);
    let addr = serve(&hub, handler).await;
    assert_health_and_deflate(addr).await;
    // And a WebSocket on the same port at the same time.
    let mut ws = connect(addr, "/").await;
    round_trip(&mut ws, Message::from("still here")).await;
}

#[tokio::test]
async fn a_16_mib_message_comes_back_whole() {
    let hub = hub(0);
    let (handler, _seen) = recorder(true);
    let addr = serve(&hub, handler).await;
    let big: Vec<u8> = (0..MAX_MESSAGE).map(|i| (i % 251) as u8).collect();
    for path in ["/", "/stream"] {
        let mut ws = connect(addr, path).await;
        round_trip(&mut ws, Message::from(big.clone())).await;
    }
}

/// Joins every session to the room `lobby` and says so.
struct Lobby(tokio::sync::mpsc::UnboundedSender<()>);

impl Handler for Lobby {
    async fn on_connect(&self, session: &Session) {
        session.join("lobby").expect("join");
        let _ = self.0.send(());
    }
}

#[tokio::test]
async fn a_hub_broadcast_reaches_two_sessions_served_through_axum() {
    let hub = hub(0);
    let (tx, mut joined) = tokio::sync::mpsc::unbounded_channel();
    let addr = serve(&hub, Lobby(tx)).await;
    let mut first = connect(addr, "/").await;
    let mut second = connect(addr, "/").await;
    for _ in 0..2 {
        timeout(WAIT, joined.recv()).await.expect("joined in time");
    }
    assert_eq!(hub.member_count("lobby"), 2);
    let report = hub.broadcast_group("lobby", "to everyone", None);
    assert_eq!(report.delivered, 2, "{report:?}");
    for ws in [&mut first, &mut second] {
        let message = timeout(WAIT, ws.next()).await.expect("broadcast in time");
        assert_eq!(
            message.expect("a message").expect("not an error"),
            Message::from("to everyone")
        );
    }
    // A shutdown of the detached server closes both and returns.
    timeout(WAIT, hub.shutdown(WAIT))
        .await
        .expect("shut down in time");
    for ws in [&mut first, &mut second] {
        let end = timeout(WAIT, ws.next()).await.expect("closed in time");
        assert!(end.is_none(), "{end:?}");
    }
}

#[tokio::test]
async fn a_bad_upgrade_is_refused_with_the_cores_status() {
    let hub = hub(0);
    let (handler, mut seen) = recorder(true);
    let addr = serve(&hub, handler).await;
    for path in ["/", "/stream"] {
        // No Sec-WebSocket-Key: 400 with the core's reason, then closed.
        let response = raw(addr, &upgrade_request(path, "")).await;
        assert!(response.starts_with("HTTP/1.1 400"), "{path}: {response}");
        assert!(
            response.contains("invalid Sec-WebSocket-Key"),
            "{path}: {response}"
        );
    }
    // The session route's handler heard why.
    match next(&mut seen).await {
        Seen::Error(Some(std::io::ErrorKind::InvalidInput), text) => {
            assert!(text.contains("Sec-WebSocket-Key"), "{text}");
        }
        other => panic!("expected the refusal, got {other:?}"),
    }
    assert_eq!(hub.session_count(), 0);
}

#[tokio::test]
async fn a_full_hub_refuses_with_503() {
    let hub = hub(1);
    let (handler, mut seen) = recorder(true);
    let addr = serve(&hub, handler).await;
    let mut ws = connect(addr, "/").await;
    assert_eq!(next(&mut seen).await, Seen::Connect);
    let response = raw(addr, &upgrade_request("/", KEY)).await;
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    // The handler heard the refusal; the first session is untouched.
    match next(&mut seen).await {
        Seen::Error(Some(std::io::ErrorKind::PermissionDenied), _) => {}
        other => panic!("expected the refusal, got {other:?}"),
    }
    round_trip(&mut ws, Message::from("first")).await;
    ws.close(storm_proto::ws::CloseCode::NORMAL, "bye")
        .await
        .expect("close");
    loop {
        if let Seen::Disconnect(reason) = next(&mut seen).await {
            assert!(matches!(reason, CloseReason::Remote(_)), "{reason:?}");
            break;
        }
    }
}

/// The `axum_echo` example (built beside this test by `cargo test -p
/// storm-tokio --features axum`), run as its users run it; killed, by its
/// id, when dropped.
struct Example(std::process::Child);

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_axum_echo_example_serves_echo_and_health_on_one_port() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    // target/PROFILE/deps/TEST → target/PROFILE/examples/axum_echo
    let test = std::env::current_exe().expect("the test's own path");
    let profile = test
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target/PROFILE");
    let path = profile.join("examples").join("axum_echo");
    let mut child = Command::new(&path)
        .arg("127.0.0.1:0")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}: run this test through `cargo test -p storm-tokio --features axum` (or `--workspace`), which builds the examples", path.display()));
    let stdout = child.stdout.take().expect("stdout");
    let example = Example(child);
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map(|_| line)
    });
    let line = timeout(WAIT, line)
        .await
        .expect("listening in time")
        .expect("reader")
        .expect("a line");
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("axum_echo listening on ws://")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .parse()
        .expect("an address");
    assert_health_and_deflate(addr).await;
    let mut ws = connect(addr, "/").await;
    round_trip(&mut ws, Message::from("text")).await;
    let big: Vec<u8> = (0..MAX_MESSAGE).map(|i| (i % 253) as u8).collect();
    round_trip(&mut ws, Message::from(big)).await;
    drop(example);
}

/// The value the hooks here attach.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Room(String);

/// A token in the query: accepted with the client's second subprotocol
/// and the peer's IP attached; else 401 with a body.
async fn token_hook(info: UpgradeInfo) -> Decision {
    match info.query_param("token").as_deref() {
        Some("sesame") => Decision::accept()
            .subprotocol("chat.v2")
            .attach(Room(info.remote_addr().ip().to_string())),
        _ => Decision::reject(401)
            .header("WWW-Authenticate", "Bearer")
            .body("no token\n"),
    }
}

/// The hub's sessions' attached rooms, once the next session connected.
async fn rooms(
    hub: &ServerHandle,
    seen: &mut tokio::sync::mpsc::UnboundedReceiver<Seen>,
) -> Vec<Option<Room>> {
    assert_eq!(next(seen).await, Seen::Connect);
    hub.sessions()
        .iter()
        .map(|session| session.attached::<Room>().cloned())
        .collect()
}

#[tokio::test]
async fn a_detached_servers_upgrade_hook_decides_behind_axum() {
    let hub = hub(0).on_upgrade(token_hook).expect("the hook");
    let (handler, mut seen) = recorder(true);
    let addr = serve(&hub, handler).await;
    // Refused by the hook: its status, header and body, and the handler
    // heard why.
    let response = raw(addr, &upgrade_request("/", KEY)).await;
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");
    assert!(response.contains("www-authenticate: Bearer"), "{response}");
    assert!(response.ends_with("\r\n\r\nno token\n"), "{response}");
    match next(&mut seen).await {
        Seen::Error(Some(std::io::ErrorKind::PermissionDenied), text) => {
            assert!(text.contains("rejected with 401"), "{text}");
        }
        other => panic!("expected the refusal, got {other:?}"),
    }
    // Accepted by the hook: its subprotocol reaches the client, and what
    // it attached (from axum's peer address) the session.
    let mut config = StreamConfig::new().with_ws(ws_options());
    config.ws.subprotocols = vec!["chat.v1".to_owned(), "chat.v2".to_owned()];
    let url = format!("ws://{addr}/?token=sesame");
    let mut ws = timeout(WAIT, websocket::connect(&url, &config))
        .await
        .expect("connected in time")
        .expect("upgraded");
    assert_eq!(ws.subprotocol(), Some("chat.v2"));
    assert_eq!(
        rooms(&hub, &mut seen).await,
        [Some(Room("127.0.0.1".to_owned()))]
    );
    round_trip(&mut ws, Message::from("let in")).await;
    ws.close(storm_proto::ws::CloseCode::NORMAL, "")
        .await
        .expect("close");
    assert!(timeout(WAIT, ws.next()).await.expect("closed").is_none());
    let _ = next_disconnect(&mut seen).await;
    // A route's own decision replaces the hook for its request.
    let mut ws = connect(addr, "/decided").await;
    assert_eq!(
        rooms(&hub, &mut seen).await,
        [Some(Room("route".to_owned()))]
    );
    round_trip(&mut ws, Message::from("decided by the route")).await;
}

#[tokio::test]
async fn a_hook_that_never_decides_is_cut_off_with_503() {
    let options =
        ServerOptions::default().with_handshake_timeout(std::time::Duration::from_millis(200));
    let hub = WsServer::detached(options, ws_options())
        .expect("detached server")
        .on_upgrade(|_| std::future::pending())
        .expect("the hook");
    let (handler, mut seen) = recorder(true);
    let addr = serve(&hub, handler).await;
    let response = raw(addr, &upgrade_request("/", KEY)).await;
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    assert!(response.contains("not decided in time"), "{response}");
    match next(&mut seen).await {
        Seen::Error(Some(std::io::ErrorKind::TimedOut), _) => {}
        other => panic!("expected the timeout, got {other:?}"),
    }
    assert_eq!(hub.session_count(), 0);
}

#[tokio::test]
async fn only_a_detached_server_takes_its_hook_from_the_handle_and_once() {
    let hub = hub(0).on_upgrade(token_hook).expect("the first hook");
    let again = hub.on_upgrade(token_hook).map(drop).map_err(|e| e.kind());
    assert_eq!(again, Err(std::io::ErrorKind::InvalidInput));
    let options = ServerOptions::default().with_addr("127.0.0.1:0");
    let listening = WsServer::bind(options, WsOptions::default())
        .await
        .expect("bind");
    let refused = listening.handle().on_upgrade(token_hook).map(drop);
    assert_eq!(
        refused.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::InvalidInput)
    );
}
