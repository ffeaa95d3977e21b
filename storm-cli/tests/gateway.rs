//! `storm gateway` over loopback: route files with errors, routing to a
//! WebSocket and a TCP backend started in-process, a backend that stops and
//! comes back on the same port, pushes, handshake failures, and the real
//! `storm` binary. Every wait is bounded by [`WAIT`]; nothing sleeps.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::BytesMut;
use storm_host::link::CloseReason;
use storm_host::options::{ClientOptions, ServerOptions, WsOptions};
use storm_proto::Message;
use storm_proto::framing::Framing;
use storm_proto::reconnect::BackoffConfig;
use storm_proto::route::backend::{self, Target};
use storm_proto::route::envelope::{self, ErrorReply};
use storm_proto::route::{ClientConfig, ClientHandshake, Event, Negotiated};
use storm_services::gateway::{
    BackendStatus, ConfigErrorKind, Gateway, GatewayConfig, GatewayHandle, GatewayOptions, blocking,
};
use storm_tokio::{
    Client, ClientError, Handler, ServerHandle, Session, TcpServer, WsClient, WsServer,
};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// The most any test waits for one event.
const WAIT: Duration = Duration::from_secs(10);

/// A backend that answers `CLIENT=<id>\n<payload>` with
/// `CLIENT=<id>\n<tag>:<payload>` (in the kind it came in: the same frame
/// type, `;binary` kept), and pushes `CLIENT=*\n<tag>:pushed` to every
/// client of the route when the payload is `push`.
struct Tagger {
    tag: &'static str,
    connects: mpsc::UnboundedSender<()>,
}

impl Handler for Tagger {
    async fn on_connect(&self, _: &Session) {
        let _ = self.connects.send(());
    }

    async fn on_message(&self, session: &Session, message: Message) {
        let text = message.is_text();
        let bytes = message.into_bytes();
        let Ok(msg) = backend::decode(&bytes) else {
            return;
        };
        let mut out = BytesMut::new();
        match (msg.target, msg.payload) {
            (_, b"push") => {
                backend::encode_all(format!("{}:pushed", self.tag).as_bytes(), &mut out)
            }
            (Target::Client(id), payload) => {
                let mut tagged = format!("{}:", self.tag).into_bytes();
                tagged.extend_from_slice(payload);
                backend::encode_to(Target::Client(id), msg.binary, &tagged, &mut out);
            }
            (Target::AllClients, _) => return,
        }
        let reply = if text {
            Message::from(String::from_utf8(out.to_vec()).expect("UTF-8"))
        } else {
            Message::from(out.freeze())
        };
        let _ = session.send(reply).await;
    }
}

/// A backend that sends every message back as it came, header and kind
/// included: what a backend that knows nothing of the gateway does.
struct Echo;

impl Handler for Echo {
    async fn on_message(&self, session: &Session, message: Message) {
        let _ = session.send(message).await;
    }
}

/// A running in-process backend.
struct Backend {
    handle: ServerHandle,
    addr: SocketAddr,
    /// One item per connection the backend accepted (the gateway's).
    connects: mpsc::UnboundedReceiver<()>,
}

async fn ws_backend(addr: &str, tag: &'static str) -> Backend {
    let options = ServerOptions::default().with_addr(addr.to_owned());
    ws_backend_with(options, tag).await
}

async fn ws_backend_with(options: ServerOptions, tag: &'static str) -> Backend {
    let server = WsServer::bind(options, WsOptions::default())
        .await
        .expect("ws backend binds");
    let (tx, connects) = mpsc::unbounded_channel();
    let backend = Backend {
        handle: server.handle(),
        addr: server.local_addr(),
        connects,
    };
    tokio::spawn(server.serve(Tagger { tag, connects: tx }));
    backend
}

async fn tcp_backend(tag: &'static str) -> Backend {
    tcp_backend_with(ServerOptions::default(), tag).await
}

async fn tcp_backend_with(options: ServerOptions, tag: &'static str) -> Backend {
    let server = TcpServer::bind(options, Framing::LengthPrefix)
        .await
        .expect("tcp backend binds");
    let (tx, connects) = mpsc::unbounded_channel();
    let backend = Backend {
        handle: server.handle(),
        addr: server.local_addr(),
        connects,
    };
    tokio::spawn(server.serve(Tagger { tag, connects: tx }));
    backend
}

fn routes_ini(orders: SocketAddr, prices: SocketAddr) -> String {
    format!(
        "[orders]\nname = orders\nhost = 127.0.0.1\nport = {}\nprotocol = ws\n\n\
         [prices]\nname = prices\nhost = 127.0.0.1\nport = {}\nprotocol = tcp\n",
        orders.port(),
        prices.port()
    )
}

/// The runtimes a gateway runs on.
#[derive(Debug, Clone, Copy)]
enum Rt {
    Tokio,
    Smol,
    Std,
}

/// A gateway running in-process on one of the runtimes; the test itself
/// (backends, clients) runs on tokio.
#[derive(Clone)]
enum Running {
    Tokio(GatewayHandle<storm_tokio::Tokio>),
    Smol(GatewayHandle<storm_smol::Smol>),
    Std(blocking::GatewayHandle),
}

impl Running {
    fn local_addr(&self) -> SocketAddr {
        match self {
            Self::Tokio(h) => h.local_addr(),
            Self::Smol(h) => h.local_addr(),
            Self::Std(h) => h.local_addr(),
        }
    }

    fn backends(&self) -> Vec<BackendStatus> {
        match self {
            Self::Tokio(h) => h.backends(),
            Self::Smol(h) => h.backends(),
            Self::Std(h) => h.backends(),
        }
    }

    fn client_count(&self) -> usize {
        match self {
            Self::Tokio(h) => h.client_count(),
            Self::Smol(h) => h.client_count(),
            Self::Std(h) => h.client_count(),
        }
    }

    fn dropped_replies(&self) -> u64 {
        match self {
            Self::Tokio(h) => h.dropped_replies(),
            Self::Smol(h) => h.dropped_replies(),
            Self::Std(h) => h.dropped_replies(),
        }
    }

    /// Waits (at most [`WAIT`]) until `route` is up or down; whether it is.
    async fn wait_backend(&self, route: &str, connected: bool) -> bool {
        match self {
            Self::Tokio(h) => timeout(WAIT, h.wait_backend(route, connected))
                .await
                .unwrap_or(false),
            Self::Smol(h) => timeout(WAIT, h.wait_backend(route, connected))
                .await
                .unwrap_or(false),
            Self::Std(h) => {
                let (h, route) = (h.clone(), route.to_owned());
                tokio::task::spawn_blocking(move || h.wait_backend(&route, connected, WAIT))
                    .await
                    .expect("join")
            }
        }
    }

    async fn shutdown(&self, limit: Duration) {
        let stopping = async {
            match self {
                Self::Tokio(h) => h.shutdown(limit).await,
                Self::Smol(h) => h.shutdown(limit).await,
                Self::Std(h) => {
                    let h = h.clone();
                    tokio::task::spawn_blocking(move || h.shutdown(limit))
                        .await
                        .expect("join");
                }
            }
        };
        timeout(WAIT + limit, stopping)
            .await
            .expect("gateway stops in time");
    }
}

/// Starts a gateway in-process on tokio with fast, fixed reconnects.
async fn gateway(ini: &str) -> Running {
    gateway_on(Rt::Tokio, ini, GatewayOptions::default()).await
}

/// Starts a gateway in-process on `rt` with fast, fixed reconnects.
async fn gateway_on(rt: Rt, ini: &str, options: GatewayOptions) -> Running {
    let options = options.with_reconnect(BackoffConfig::fixed(Duration::from_millis(20)));
    start_gateway(rt, ini, options).await
}

/// Starts a gateway in-process on `rt` with `options` as they are.
async fn start_gateway(rt: Rt, ini: &str, options: GatewayOptions) -> Running {
    let config = GatewayConfig::parse(ini).expect("config parses");
    match rt {
        Rt::Tokio => {
            let gateway = Gateway::<storm_tokio::Tokio>::bind(config, options)
                .await
                .expect("gateway binds");
            let handle = gateway.handle();
            tokio::spawn(gateway.serve());
            Running::Tokio(handle)
        }
        Rt::Smol => {
            let gateway = Gateway::<storm_smol::Smol>::bind(config, options)
                .await
                .expect("gateway binds");
            let handle = gateway.handle();
            smol::spawn(gateway.serve()).detach();
            Running::Smol(handle)
        }
        Rt::Std => tokio::task::spawn_blocking(move || {
            let gateway = blocking::Gateway::bind(config, options).expect("gateway binds");
            let handle = gateway.handle();
            gateway.spawn().expect("accept thread");
            Running::Std(handle)
        })
        .await
        .expect("join"),
    }
}

async fn wait_backend(gateway: &Running, route: &str, connected: bool) {
    assert!(
        gateway.wait_backend(route, connected).await,
        "backend {route} connected={connected} in time"
    );
}

/// What the test client's handler saw.
#[derive(Debug)]
enum Seen {
    Message(Message),
    Closed(CloseReason),
}

struct Forward(mpsc::UnboundedSender<Seen>);

impl Handler for Forward {
    async fn on_message(&self, _: &Session, message: Message) {
        let _ = self.0.send(Seen::Message(message));
    }
    async fn on_disconnect(&self, _: &Session, reason: &CloseReason) {
        let _ = self.0.send(Seen::Closed(reason.clone()));
    }
}

/// A gateway client: a storm-tokio WebSocket client plus the core's
/// client handshake.
struct TestClient {
    client: Client,
    rx: mpsc::UnboundedReceiver<Seen>,
}

impl TestClient {
    async fn connect(addr: SocketAddr) -> Self {
        Self::connect_to(&format!("ws://{addr}/"), ClientOptions::default())
            .await
            .expect("client connects")
    }

    async fn connect_to(url: &str, options: ClientOptions) -> Result<Self, ClientError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let client = timeout(
            WAIT,
            WsClient::connect(url, options, WsOptions::default(), Forward(tx)),
        )
        .await
        .expect("connect in time")?;
        Ok(Self { client, rx })
    }

    async fn next(&mut self) -> Seen {
        timeout(WAIT, self.rx.recv())
            .await
            .expect("event in time")
            .expect("client handler alive")
    }

    async fn recv(&mut self) -> Message {
        match self.next().await {
            Seen::Message(message) => message,
            Seen::Closed(reason) => panic!("closed instead of a message: {reason:?}"),
        }
    }

    async fn handshake(&mut self, routes: &[&str]) -> Negotiated {
        let config = ClientConfig {
            routes: routes.iter().map(|r| (*r).to_owned()).collect(),
            ..ClientConfig::default()
        };
        let mut machine = ClientHandshake::new(&config, std::time::Instant::now()).expect("config");
        loop {
            while let Some(text) = machine.poll_transmit() {
                self.client.send(text).await.expect("send");
            }
            if let Some(Event::Ready(negotiated)) = machine.poll_event() {
                return negotiated;
            }
            let reply = self.recv().await;
            machine
                .handle_message(std::time::Instant::now(), reply.as_bytes())
                .expect("handshake step");
        }
    }

    async fn send_to(&self, route: &str, payload: &str) {
        let text = envelope::encode_text(route, payload).expect("route name");
        self.client.send(text).await.expect("send");
    }

    /// The next message, which must be routed text: route and payload.
    async fn reply(&mut self) -> (String, String) {
        let message = self.recv().await;
        assert!(message.is_text(), "replies are text: {message:?}");
        let text = std::str::from_utf8(message.as_bytes()).expect("UTF-8");
        let addressed = envelope::decode_text(text, 128)
            .unwrap_or_else(|e| panic!("routed reply expected, got {text:?}: {e}"));
        (addressed.route.to_owned(), addressed.payload.to_owned())
    }

    /// The next message, which must be routed data from `route`: its payload.
    async fn reply_from(&mut self, route: &str) -> String {
        let (from, payload) = self.reply().await;
        assert_eq!(from, route, "{payload:?}");
        payload
    }

    /// Waits for the gateway to close the connection with `code`.
    async fn expect_close(&mut self, code: u16) {
        loop {
            if let Seen::Closed(reason) = self.next().await {
                let CloseReason::Remote(frame) = reason else {
                    panic!("closed by the gateway expected: {reason:?}");
                };
                assert_eq!(u16::from(frame.code), code);
                return;
            }
        }
    }

    /// The next message, which must be an `SMError`.
    async fn error(&mut self) -> ErrorReply {
        let message = self.recv().await;
        ErrorReply::parse(message.as_bytes())
            .unwrap_or_else(|| panic!("SMError expected, got {message:?}"))
    }
}

#[tokio::test]
async fn routes_to_a_ws_and_a_tcp_backend_and_back_to_the_sender() {
    routes_to_two_backends(Rt::Tokio).await;
}

#[tokio::test]
async fn routes_to_a_ws_and_a_tcp_backend_on_smol() {
    routes_to_two_backends(Rt::Smol).await;
}

#[tokio::test]
async fn routes_to_a_ws_and_a_tcp_backend_on_std() {
    routes_to_two_backends(Rt::Std).await;
}

async fn routes_to_two_backends(rt: Rt) {
    let orders = ws_backend("127.0.0.1:0", "orders").await;
    let prices = tcp_backend("prices").await;
    let ini = routes_ini(orders.addr, prices.addr);
    let gateway = gateway_on(rt, &ini, GatewayOptions::default()).await;
    wait_backend(&gateway, "orders", true).await;
    wait_backend(&gateway, "prices", true).await;

    let mut alice = TestClient::connect(gateway.local_addr()).await;
    let negotiated = alice.handshake(&["orders", "prices", "video"]).await;
    assert_eq!(negotiated.routes(), ["orders", "prices"]);
    assert_eq!(negotiated.rejected()[0].route, "video");
    let mut bob = TestClient::connect(gateway.local_addr()).await;
    // Bob announces nothing: every route of the file is still addressable.
    assert!(bob.handshake(&[]).await.routes().is_empty());

    // Interleaved requests over the two shared backend connections; each
    // reply comes back to its sender only, tagged by the backend. Replies
    // from one backend keep their order; the two backends race each other.
    for i in 0..20 {
        alice.send_to("orders", &format!("a{i}")).await;
        bob.send_to("prices", &format!("b{i}")).await;
        bob.send_to("orders", &format!("b{i}")).await;
        alice.send_to("prices", &format!("a{i}")).await;
        for (client, who) in [(&mut alice, "a"), (&mut bob, "b")] {
            let mut replies = vec![client.reply().await, client.reply().await];
            replies.sort();
            assert_eq!(
                replies,
                [
                    ("orders".to_owned(), format!("orders:{who}{i}")),
                    ("prices".to_owned(), format!("prices:{who}{i}")),
                ]
            );
        }
    }

    // Binary messages stay binary through either backend, valid UTF-8 or
    // not; text stays text.
    for route in ["orders", "prices"] {
        for payload in [&b"\x00\x01\xff"[..], b"{\"utf8\":true}"] {
            let mut binary = BytesMut::new();
            envelope::encode(route, payload, &mut binary).expect("encode");
            alice.client.send(binary.freeze()).await.expect("send");
            let reply = alice.recv().await;
            assert!(!reply.is_text(), "{route}: {reply:?}");
            let mut want = format!("ROUTENAME={route}\n{route}:").into_bytes();
            want.extend_from_slice(payload);
            assert_eq!(reply.as_bytes(), want, "{route}");
        }
        alice.send_to(route, "{\"utf8\":true}").await;
        assert_eq!(
            alice.reply_from(route).await,
            format!("{route}:{{\"utf8\":true}}")
        );
    }

    // Messages the gateway cannot route get an error, and the client goes on.
    alice.send_to("video", "x").await;
    let error = alice.error().await;
    assert_eq!(
        (error.route.as_deref(), error.error.as_str()),
        (Some("video"), "unknown route")
    );
    alice.client.send("no header").await.expect("send");
    let error = alice.error().await;
    assert_eq!(error.route, None);
    assert!(error.error.contains("ROUTENAME"), "{}", error.error);
    alice.send_to("orders", "still here").await;
    assert_eq!(alice.reply_from("orders").await, "orders:still here");
    assert_eq!(gateway.client_count(), 2);
    assert_eq!(gateway.dropped_replies(), 0);
    gateway.shutdown(WAIT).await;
}

#[tokio::test]
async fn a_stopped_backend_gives_errors_and_a_restarted_one_routes_again() {
    restarted_backend(Rt::Tokio).await;
}

#[tokio::test]
async fn a_restarted_backend_routes_again_on_smol() {
    restarted_backend(Rt::Smol).await;
}

#[tokio::test]
async fn a_restarted_backend_routes_again_on_std() {
    restarted_backend(Rt::Std).await;
}

async fn restarted_backend(rt: Rt) {
    let orders = ws_backend("127.0.0.1:0", "orders").await;
    let prices = tcp_backend("prices").await;
    let ini = routes_ini(orders.addr, prices.addr);
    let gateway = gateway_on(rt, &ini, GatewayOptions::default()).await;
    // Both backends: the one that stays up is used below too.
    wait_backend(&gateway, "orders", true).await;
    wait_backend(&gateway, "prices", true).await;
    let mut client = TestClient::connect(gateway.local_addr()).await;
    client.handshake(&["orders", "prices"]).await;
    client.send_to("orders", "before").await;
    assert_eq!(client.reply_from("orders").await, "orders:before");

    // Stop the backend: the client that talked to it hears so, and every
    // later message for it is answered with an error, not lost.
    timeout(WAIT, orders.handle.shutdown(WAIT))
        .await
        .expect("backend stops");
    wait_backend(&gateway, "orders", false).await;
    let notice = client.error().await;
    assert_eq!(
        (notice.route.as_deref(), notice.error.as_str()),
        (Some("orders"), backend::BACKEND_DISCONNECTED)
    );
    for i in 0..3 {
        client.send_to("orders", &format!("lost {i}")).await;
        let error = client.error().await;
        assert_eq!(
            (error.route.as_deref(), error.error.as_str()),
            (Some("orders"), backend::BACKEND_UNAVAILABLE)
        );
    }
    // The other backend is not affected.
    client.send_to("prices", "fine").await;
    assert_eq!(client.reply_from("prices").await, "prices:fine");

    // The backend comes back on the same port: the gateway reconnects.
    let restarted = ws_backend(&orders.addr.to_string(), "orders-2").await;
    assert_eq!(restarted.addr, orders.addr);
    wait_backend(&gateway, "orders", true).await;
    client.send_to("orders", "after").await;
    assert_eq!(client.reply_from("orders").await, "orders-2:after");
    assert!(gateway.backends().iter().all(|b| b.connected));
    gateway.shutdown(WAIT).await;
}

#[tokio::test]
async fn a_backend_down_at_start_is_connected_once_it_listens() {
    // A port nothing listens on (free a moment ago).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let free: SocketAddr = ([127, 0, 0, 1], port).into();
    let prices = tcp_backend("prices").await;
    let gateway = gateway(&routes_ini(free, prices.addr)).await;
    let mut client = TestClient::connect(gateway.local_addr()).await;
    client.handshake(&["orders"]).await;
    assert!(!gateway.backends()[0].connected);
    client.send_to("orders", "early").await;
    let error = client.error().await;
    assert_eq!(error.error, backend::BACKEND_UNAVAILABLE);

    let orders = ws_backend(&free.to_string(), "orders").await;
    assert_eq!(orders.addr, free);
    wait_backend(&gateway, "orders", true).await;
    client.send_to("orders", "late").await;
    assert_eq!(client.reply_from("orders").await, "orders:late");
    gateway.shutdown(WAIT).await;
}

#[tokio::test]
async fn a_backend_push_reaches_every_client_that_announced_the_route() {
    let orders = ws_backend("127.0.0.1:0", "orders").await;
    let prices = tcp_backend("prices").await;
    let gateway = gateway(&routes_ini(orders.addr, prices.addr)).await;
    wait_backend(&gateway, "prices", true).await;
    let mut subscribers = Vec::new();
    for _ in 0..3 {
        let mut client = TestClient::connect(gateway.local_addr()).await;
        client.handshake(&["prices"]).await;
        subscribers.push(client);
    }
    let mut other = TestClient::connect(gateway.local_addr()).await;
    other.handshake(&["orders"]).await;

    subscribers[0].send_to("prices", "push").await;
    for client in &mut subscribers {
        assert_eq!(client.reply_from("prices").await, "prices:pushed");
    }
    // `other` did not announce prices: its next message is its own reply.
    other.send_to("orders", "mine").await;
    assert_eq!(other.reply_from("orders").await, "orders:mine");
    gateway.shutdown(WAIT).await;
}

#[tokio::test]
async fn a_broken_handshake_gets_an_error_and_a_policy_close() {
    let orders = ws_backend("127.0.0.1:0", "orders").await;
    let prices = tcp_backend("prices").await;
    let gateway = gateway(&routes_ini(orders.addr, prices.addr)).await;
    let mut client = TestClient::connect(gateway.local_addr()).await;
    // Route traffic before the handshake.
    client.send_to("orders", "too early").await;
    let error = client.error().await;
    assert!(
        error.error.starts_with("malformed handshake message"),
        "{}",
        error.error
    );
    client.expect_close(1008).await;
    gateway.shutdown(WAIT).await;
}

#[tokio::test]
async fn a_handshake_that_does_not_finish_times_out() {
    handshake_times_out(Rt::Tokio).await;
}

#[tokio::test]
async fn a_handshake_that_does_not_finish_times_out_on_smol() {
    handshake_times_out(Rt::Smol).await;
}

#[tokio::test]
async fn a_handshake_that_does_not_finish_times_out_on_std() {
    handshake_times_out(Rt::Std).await;
}

async fn handshake_times_out(rt: Rt) {
    let orders = ws_backend("127.0.0.1:0", "orders").await;
    let prices = tcp_backend("prices").await;
    let options = GatewayOptions::default().with_handshake_timeout(Some(Duration::from_millis(50)));
    let gateway = gateway_on(rt, &routes_ini(orders.addr, prices.addr), options).await;
    let mut client = TestClient::connect(gateway.local_addr()).await;
    let error = client.error().await;
    assert_eq!(error.error, "route handshake timed out");
    client.expect_close(1008).await;
    gateway.shutdown(WAIT).await;
}

/// A reconnect delay far longer than the test: a wait that shutdown did
/// not end would still be pending when the test ends.
const LONG_BACKOFF: Duration = Duration::from_secs(10);

/// How long shutdown may take while every backend waits [`LONG_BACKOFF`]:
/// it has nothing to wait for, the bound is only room for a loaded machine.
const QUICK_SHUTDOWN: Duration = Duration::from_secs(2);

/// How long a listener on a backend's address watches for a connection
/// attempt after shutdown returned. Absence can only be watched for a
/// while: an attempt made by a wait that shutdown woke up (instead of
/// ending) would come at once, well within 300 ms, while a longer window
/// would only slow the suite down.
const SILENCE: Duration = Duration::from_millis(300);

#[tokio::test]
async fn shutdown_ends_backend_reconnect_waits_at_once() {
    shutdown_while_backends_wait(Rt::Tokio).await;
}

#[tokio::test]
async fn shutdown_ends_backend_reconnect_waits_at_once_on_smol() {
    shutdown_while_backends_wait(Rt::Smol).await;
}

#[tokio::test]
async fn shutdown_ends_backend_reconnect_waits_at_once_on_std() {
    shutdown_while_backends_wait(Rt::Std).await;
}

/// One backend down from the start, one that drops: both wait
/// [`LONG_BACKOFF`] to reconnect when the gateway shuts down. Shutdown is
/// quick, nothing of the gateway is left running (counted on tokio, where
/// the gateway gets a runtime of its own), and nothing connects to either
/// address afterwards.
async fn shutdown_while_backends_wait(rt: Rt) {
    // A port nothing listens on (free a moment ago).
    let down = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .and_then(|l| l.local_addr())
        .expect("free port");
    // The other backend: a bare listener, framed TCP needs no handshake.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listener");
    let dropping = listener.local_addr().expect("address");
    let options = GatewayOptions::default().with_reconnect(BackoffConfig::fixed(LONG_BACKOFF));
    let ini = routes_ini(down, dropping);
    let own = matches!(rt, Rt::Tokio).then(OwnRuntime::start);
    let (gateway, serving) = match &own {
        Some(own) => {
            let (gateway, serving) = own.gateway(&ini, options).await;
            (gateway, Some(serving))
        }
        None => (start_gateway(rt, &ini, options).await, None),
    };

    let (stream, _) = timeout(WAIT, listener.accept())
        .await
        .expect("the gateway connects in time")
        .expect("accept");
    wait_backend(&gateway, "prices", true).await;
    drop((stream, listener));
    wait_backend(&gateway, "prices", false).await;
    assert!(!gateway.backends()[0].connected);
    if let Some(own) = &own {
        // The gateway saw the drop; let it reach its wait to reconnect.
        own.settle().await;
    }

    let started = std::time::Instant::now();
    gateway.shutdown(QUICK_SHUTDOWN).await;
    let took = started.elapsed();
    assert!(took < QUICK_SHUTDOWN, "{rt:?}: shutdown took {took:?}");
    if let (Some(own), Some(serving)) = (own, serving) {
        assert_eq!(
            own.finish(serving).await,
            0,
            "tasks of the gateway still alive after shutdown"
        );
    }

    let orders = tokio::net::TcpListener::bind(down).await.expect("rebind");
    let prices = tokio::net::TcpListener::bind(dropping)
        .await
        .expect("rebind");
    let (orders, prices) = tokio::join!(
        timeout(SILENCE, orders.accept()),
        timeout(SILENCE, prices.accept())
    );
    assert!(orders.is_err(), "{rt:?}: orders reconnected after shutdown");
    assert!(prices.is_err(), "{rt:?}: prices reconnected after shutdown");
}

/// A current-thread tokio runtime on a thread of its own, for a gateway
/// whose tasks are counted once it has shut down.
struct OwnRuntime {
    handle: tokio::runtime::Handle,
    stop: tokio::sync::oneshot::Sender<()>,
    /// Returns the number of tasks still alive on the runtime once told to
    /// stop.
    thread: std::thread::JoinHandle<usize>,
}

impl OwnRuntime {
    fn start() -> Self {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let _ = handle_tx.send(runtime.handle().clone());
            // Runs the spawned tasks until told to stop (or the test
            // panicked and dropped `stop`).
            let _ = runtime.block_on(stopped);
            runtime.metrics().num_alive_tasks()
        });
        let handle = handle_rx.recv_timeout(WAIT).expect("runtime starts");
        Self {
            handle,
            stop,
            thread,
        }
    }

    /// Binds a gateway on this runtime and spawns its `serve` there.
    async fn gateway(
        &self,
        ini: &str,
        options: GatewayOptions,
    ) -> (Running, tokio::task::JoinHandle<std::io::Result<()>>) {
        let config = GatewayConfig::parse(ini).expect("config parses");
        let gateway = self
            .handle
            .spawn(Gateway::<storm_tokio::Tokio>::bind(config, options))
            .await
            .expect("join")
            .expect("gateway binds");
        let handle = gateway.handle();
        let serving = self.handle.spawn(gateway.serve());
        (Running::Tokio(handle), serving)
    }

    /// Returns once every task that was ready to run on this runtime has
    /// run until it waits for something: each round queues a task behind
    /// the ready ones and waits until it ran.
    async fn settle(&self) {
        for _ in 0..3 {
            self.handle.spawn(async {}).await.expect("join");
        }
    }

    /// Waits for `serving` (the gateway shut down), stops the runtime and
    /// counts the tasks still alive on it. A task completes, and leaves the
    /// count, within the poll that ends it, on this runtime's only thread,
    /// before that thread sees the stop: the count is exact.
    async fn finish(self, serving: tokio::task::JoinHandle<std::io::Result<()>>) -> usize {
        timeout(WAIT, serving)
            .await
            .expect("serve returns")
            .expect("join")
            .expect("serve");
        let _ = self.stop.send(());
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join().expect("runtime thread"))
            .await
            .expect("join")
    }
}

#[test]
fn route_files_with_errors_name_the_line() {
    let dir = temp_dir("test");
    let cases: &[(&str, usize, &str)] = &[
        (
            "[a]\nname=a\nport=9101\nhots=x\n",
            4,
            "unknown key \"hots\"",
        ),
        (
            "[a]\nname=a\nhost=127.0.0.1\n",
            1,
            "section [a] has no port",
        ),
        (
            "[a]\nname=a\nport=1\n[b]\nname=a\nport=2\n",
            5,
            "route name \"a\" already used",
        ),
        (
            "[a]\nname=a\nport=1\nprotocol=udp\n",
            4,
            "protocol \"udp\" is not ws or tcp",
        ),
        ("[a]\nname=a\nport=99999\n", 3, "port \"99999\""),
        (
            "; a comment\n[Endpoint1]\nName = endpoint1\nPort = 8080\nUsage\n",
            5,
            "expected `[section]`",
        ),
    ];
    for (i, (text, line, why)) in cases.iter().enumerate() {
        let path = dir.join(format!("routes{i}.ini"));
        std::fs::write(&path, text).expect("write");
        let error = GatewayConfig::load(&path).expect_err("rejected");
        assert_eq!(
            error.config_error().and_then(|e| e.line),
            Some(*line),
            "{text:?}"
        );
        let shown = error.to_string();
        assert!(
            shown.contains(&format!("routes{i}.ini:{line}: ")) && shown.contains(why),
            "{shown}"
        );
    }
    let error = GatewayConfig::parse("").expect_err("empty");
    assert_eq!(
        (error.line, error.kind),
        (None, ConfigErrorKind::NoEndpoints)
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// A fresh directory for test `name`'s files (the caller removes it).
fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("storm-gateway-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Starts `storm gateway --config CONFIG --addr 127.0.0.1:0 ARGS`; the
/// process and its first three stdout lines (the banner and two routes).
async fn spawn_gateway(config: &std::path::Path, args: &[&str]) -> (Process, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_storm"))
        .args(["gateway", "--config"])
        .arg(config)
        .args(["--addr", "127.0.0.1:0", "--max-backoff-ms", "100"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("storm starts");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, stderr_lines) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let process = Process {
        child,
        stderr: stderr_lines,
    };
    let lines = tokio::task::spawn_blocking(move || {
        let mut reader = BufReader::new(stdout);
        let mut lines = Vec::new();
        for _ in 0..3 {
            let mut line = String::new();
            reader.read_line(&mut line).expect("banner line");
            lines.push(line.trim().to_owned());
        }
        lines
    });
    let lines = timeout(WAIT, lines)
        .await
        .expect("banner in time")
        .expect("join");
    (process, lines)
}

/// Waits until `backend` accepted a (gateway's) connection.
async fn connected(backend: &mut Backend) {
    timeout(WAIT, backend.connects.recv())
        .await
        .expect("gateway connects the backend in time")
        .expect("backend alive");
}

/// Sends `hi` to `route` until its backend answers it: the answer. The
/// gateway marks a backend up only after its side of the upgrade, a moment
/// after the backend saw the connection: a request in that moment gets an
/// error reply, so retry a bounded number of times, each try waiting for
/// its answer.
async fn first_answer(client: &mut TestClient, route: &str) -> Message {
    for _ in 0..100 {
        client.send_to(route, "hi").await;
        let message = client.recv().await;
        if ErrorReply::parse(message.as_bytes()).is_none() {
            return message;
        }
    }
    panic!("{route} never answered");
}

/// [`first_answer`] from a [`Tagger`] backend tagged `route`.
async fn route_once_up(client: &mut TestClient, route: &str) {
    let message = first_answer(client, route).await;
    assert_eq!(
        message.as_bytes(),
        format!("ROUTENAME={route}\n{route}:hi").as_bytes()
    );
}

/// A running `storm gateway`, killed on drop, and its stderr line by line.
struct Process {
    child: Child,
    stderr: mpsc::UnboundedReceiver<String>,
}

impl Process {
    /// Sends `signal` (`INT`, `TERM`) to this process, by its id.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// The next line on stderr.
    async fn stderr_line(&mut self) -> String {
        timeout(WAIT, self.stderr.recv())
            .await
            .expect("a stderr line in time")
            .expect("stderr still open")
    }

    /// Waits (at most [`WAIT`]) for the process to exit: its status and
    /// the rest of its stderr.
    async fn exit(&mut self) -> (std::process::ExitStatus, Vec<String>) {
        let mut lines = Vec::new();
        let rest = async {
            while let Some(line) = self.stderr.recv().await {
                lines.push(line);
            }
        };
        timeout(WAIT, rest).await.expect("exits in time");
        // Its stderr closed: it has exited, and `wait` returns at once.
        let status = tokio::task::block_in_place(|| self.child.wait()).expect("wait");
        (status, lines)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_storm_binary_routes_and_rejects_a_bad_route_file() {
    let dir = temp_dir("bin");

    // A bad file: exit code 2 and the line on stderr.
    let bad = dir.join("bad.ini");
    std::fs::write(
        &bad,
        "[orders]\nname = orders\nport = 9101\nprotocol = quic\n",
    )
    .expect("write");
    let output = tokio::task::spawn_blocking({
        let bad = bad.clone();
        move || {
            Command::new(env!("CARGO_BIN_EXE_storm"))
                .args(["gateway", "--config"])
                .arg(&bad)
                .args(["--addr", "127.0.0.1:0"])
                .output()
        }
    });
    let output = timeout(WAIT, output)
        .await
        .expect("exits in time")
        .expect("join")
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.ini:4: protocol \"quic\" is not ws or tcp"),
        "{stderr}"
    );

    // A good file: the banner, the routes, and routing over loopback.
    let mut orders = ws_backend("127.0.0.1:0", "orders").await;
    let mut prices = tcp_backend("prices").await;
    let good = dir.join("routes.ini");
    std::fs::write(&good, routes_ini(orders.addr, prices.addr)).expect("write");
    let (_process, lines) = spawn_gateway(&good, &[]).await;
    let addr: SocketAddr = lines[0]
        .strip_prefix("storm gateway (Tokio runtime) listening on ws://")
        .unwrap_or_else(|| panic!("banner: {lines:?}"))
        .parse()
        .expect("address");
    assert_eq!(lines[1], format!("route orders -> ws://{}/", orders.addr));
    assert_eq!(lines[2], format!("route prices -> tcp://{}", prices.addr));

    let mut client = TestClient::connect(addr).await;
    client.handshake(&["orders", "prices"]).await;
    for backend in [&mut orders, &mut prices] {
        connected(backend).await;
    }
    for route in ["orders", "prices"] {
        route_once_up(&mut client, route).await;
    }
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[tokio::test]
async fn backends_behind_tls_are_reached_on_every_runtime() {
    let pki = storm_tests::suite::pki::Pki::new();
    let tls = || ServerOptions::default().with_tls(pki.server());
    let orders = ws_backend_with(tls(), "orders").await;
    let prices = tcp_backend_with(tls(), "prices").await;
    let ini = routes_ini(orders.addr, prices.addr).replace("protocol", "tls = on\nprotocol");
    for rt in [Rt::Tokio, Rt::Smol, Rt::Std] {
        let options = GatewayOptions::default().with_backend_tls(pki.client());
        let gateway = gateway_on(rt, &ini, options).await;
        let urls: Vec<String> = gateway.backends().into_iter().map(|b| b.url).collect();
        assert_eq!(
            urls,
            [
                format!("wss://{}/", orders.addr),
                format!("tls://{}", prices.addr)
            ]
        );
        wait_backend(&gateway, "orders", true).await;
        wait_backend(&gateway, "prices", true).await;
        let mut client = TestClient::connect(gateway.local_addr()).await;
        client.handshake(&["orders", "prices"]).await;
        for route in ["orders", "prices"] {
            client.send_to(route, &format!("{rt:?}")).await;
            assert_eq!(client.reply_from(route).await, format!("{route}:{rt:?}"));
        }
        gateway.shutdown(WAIT).await;
    }

    // A gateway that does not trust the backends' CA never connects them.
    let other = storm_tests::suite::pki::Pki::named("another CA");
    let options = GatewayOptions::default().with_backend_tls(other.client());
    let gateway = gateway_on(Rt::Tokio, &ini, options).await;
    let mut client = TestClient::connect(gateway.local_addr()).await;
    client.handshake(&["orders"]).await;
    client.send_to("orders", "untrusted").await;
    assert_eq!(client.error().await.error, backend::BACKEND_UNAVAILABLE);
    assert!(gateway.backends().iter().all(|b| !b.connected));
    gateway.shutdown(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_storm_binary_serves_wss_on_every_runtime() {
    let pki = storm_tests::suite::pki::Pki::new();
    let dir = temp_dir("wss");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let server = pki.server();
    std::fs::write(&cert, &server.cert_chain_pem).expect("write");
    std::fs::write(&key, &server.key_pem).expect("write");
    let mut orders = ws_backend("127.0.0.1:0", "orders").await;
    let prices = tcp_backend("prices").await;
    let routes = dir.join("routes.ini");
    std::fs::write(&routes, routes_ini(orders.addr, prices.addr)).expect("write");
    let (cert, key) = (cert.to_str().expect("path"), key.to_str().expect("path"));
    for (runtime, shown) in [("tokio", "Tokio"), ("smol", "Smol"), ("std", "Std")] {
        let args = ["--tls", cert, key, "--runtime", runtime];
        let (process, lines) = spawn_gateway(&routes, &args).await;
        let banner = format!("storm gateway ({shown} runtime) listening on wss://");
        let port = lines[0]
            .strip_prefix(&banner)
            .and_then(|addr| addr.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| panic!("banner: {lines:?}"))
            .port();
        let url = format!("wss://localhost:{port}/");

        // A client that trusts the test CA routes through it.
        let trusting = ClientOptions::default().with_tls(pki.client());
        let mut client = TestClient::connect_to(&url, trusting)
            .await
            .expect("wss client connects");
        client.handshake(&["orders"]).await;
        connected(&mut orders).await;
        route_once_up(&mut client, "orders").await;

        // One that trusts another CA does not get in; nor does plain ws://.
        let other = ClientOptions::default()
            .with_tls(storm_tests::suite::pki::Pki::named("another CA").client());
        assert!(
            TestClient::connect_to(&url, other).await.is_err(),
            "{runtime}"
        );
        let plain = format!("ws://127.0.0.1:{port}/");
        assert!(
            TestClient::connect_to(&plain, ClientOptions::default())
                .await
                .is_err(),
            "{runtime}"
        );

        // Ctrl-C: the client is closed with a close frame, and the
        // gateway exits 0.
        let mut process = process;
        process.signal("INT");
        loop {
            if let Seen::Closed(reason) = client.next().await {
                assert!(
                    matches!(reason, CloseReason::Remote(_)),
                    "{runtime}: {reason:?}"
                );
                break;
            }
        }
        let (exit, _) = process.exit().await;
        assert!(exit.success(), "{runtime}: {exit}");
    }
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_storm_binary_keeps_message_kinds_through_an_echoing_tcp_backend() {
    let dir = temp_dir("kinds");
    let orders = ws_backend("127.0.0.1:0", "orders").await;
    let echo = TcpServer::bind(ServerOptions::default(), Framing::LengthPrefix)
        .await
        .expect("tcp backend binds");
    let echo_addr = echo.local_addr();
    tokio::spawn(echo.serve(Echo));
    let routes = dir.join("routes.ini");
    std::fs::write(&routes, routes_ini(orders.addr, echo_addr)).expect("write");
    let (_process, lines) = spawn_gateway(&routes, &[]).await;
    let addr: SocketAddr = lines[0]
        .strip_prefix("storm gateway (Tokio runtime) listening on ws://")
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("banner: {lines:?}"));

    let mut client = TestClient::connect(addr).await;
    client.handshake(&["prices"]).await;
    let first = first_answer(&mut client, "prices").await;
    assert!(first.is_text(), "{first:?}");
    assert_eq!(first.as_bytes(), b"ROUTENAME=prices\nhi");
    // A binary message whose bytes are valid UTF-8 comes back binary, and
    // a text message as text, with the same bytes.
    let json = br#"{"kind":"binary","utf8":true}"#;
    let mut sent = BytesMut::new();
    envelope::encode("prices", json, &mut sent).expect("encode");
    let sent = sent.freeze();
    for text in [false, true, false] {
        let message = if text {
            Message::from(String::from_utf8(sent.to_vec()).expect("UTF-8"))
        } else {
            Message::from(sent.clone())
        };
        client.client.send(message).await.expect("send");
        let reply = client.recv().await;
        assert_eq!(reply.is_text(), text, "{reply:?}");
        assert_eq!(reply.as_bytes(), &sent[..]);
    }
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_logs_a_shutdown_and_no_reconnecting_on_every_runtime() {
    let dir = temp_dir("term");
    let orders = ws_backend("127.0.0.1:0", "orders").await;
    let prices = tcp_backend("prices").await;
    let routes = dir.join("routes.ini");
    std::fs::write(&routes, routes_ini(orders.addr, prices.addr)).expect("write");
    for runtime in ["tokio", "smol", "std"] {
        let (mut process, lines) = spawn_gateway(&routes, &["--runtime", runtime]).await;
        let addr: SocketAddr = lines[0]
            .rsplit_once("ws://")
            .and_then(|(_, addr)| addr.parse().ok())
            .unwrap_or_else(|| panic!("banner: {lines:?}"));
        // Both backends up, and in use by a client.
        let mut up = Vec::new();
        while up.len() < 2 {
            let line = process.stderr_line().await;
            if let Some((route, _)) = line
                .strip_prefix("backend ")
                .and_then(|rest| rest.split_once(" connected"))
            {
                up.push(route.to_owned());
            }
        }
        let mut client = TestClient::connect(addr).await;
        client.handshake(&["orders", "prices"]).await;
        for route in ["orders", "prices"] {
            route_once_up(&mut client, route).await;
        }

        process.signal("TERM");
        let (exit, lines) = process.exit().await;
        assert!(exit.success(), "{runtime}: {exit} {lines:?}");
        let shutdown = lines
            .iter()
            .position(|line| line.starts_with("storm gateway: interrupted, shutting down"))
            .unwrap_or_else(|| panic!("{runtime}: no shutdown line in {lines:?}"));
        assert!(
            lines[shutdown..]
                .iter()
                .all(|line| !line.contains("down, reconnecting")),
            "{runtime}: {lines:?}"
        );
        assert_eq!(
            lines.last().map(String::as_str),
            Some("storm gateway: stopped"),
            "{runtime}"
        );
    }
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
