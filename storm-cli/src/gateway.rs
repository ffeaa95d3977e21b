//! `storm gateway`: one WebSocket endpoint in front of many named backends
//! (the SocketMaster design), built on `storm-tokio`'s public API with every
//! protocol decision taken from [`storm_proto::route`].
//!
//! # Client side: the wire protocol
//!
//! A client opens one WebSocket to the gateway and runs the route handshake
//! of [`storm_proto::route`] in text messages:
//!
//! ```text
//! client: {"event":"SMHandshake","data":"SYN"}
//! server: {"event":"SMHandshake","data":"SYN/ACK"}
//! client: {"event":"SMHandshake","data":"ACK"}
//! client: {"event":"SMHandshake","data":"orders"}          one per route it means to use
//! server: {"event":"SMHandshake","data":"ACK","route":"orders"}
//!         (or "data":"NACK","error":"unknown route" for a route not in the file)
//! client: {"event":"SMHandshakeEnd"}
//! server: {"event":"SMHandshakeEnd","data":"ACK"}
//! ```
//!
//! A handshake that breaks the rules or does not finish within the
//! handshake timeout (10 s) gets `{"event":"SMError","error":...}` and a
//! close with 1008 (1009 for an oversized message). After it, every message
//! (text or binary) starts with a route line:
//!
//! ```text
//! client → gateway: ROUTENAME=orders\n<payload>      forwarded to the orders backend
//! gateway → client: ROUTENAME=orders\n<payload>      a reply or push from that backend
//! ```
//!
//! A client may address any route of the file, announced or not. Every
//! message that cannot be delivered gets a text `SMError` reply, never
//! silence:
//!
//! ```text
//! {"event":"SMError","error":"message has no ROUTENAME= header line"}
//! {"event":"SMError","route":"video","error":"unknown route"}
//! {"event":"SMError","route":"orders","error":"backend unavailable"}   backend down, being reconnected
//! {"event":"SMError","route":"orders","error":"backend disconnected"}  the backend dropped while you had talked to it
//! ```
//!
//! # Backend side
//!
//! The gateway keeps one connection per route (a `storm-tokio` client that
//! reconnects with backoff), WebSocket (`ws://host:port/`) or TCP with a
//! 4-byte big-endian length prefix, and multiplexes every client over it
//! with the header of [`storm_proto::route::backend`]:
//!
//! ```text
//! gateway → backend: CLIENT=<client id>\n<payload>
//! backend → gateway: CLIENT=<client id>\n<payload>    to that client only
//! backend → gateway: CLIENT=*\n<payload>              to every client that announced the route
//! ```
//!
//! The client id is the gateway's session number for the client. A backend
//! that echoes whole messages answers the right client unchanged. Messages
//! keep their kind on WebSocket backends; from a TCP backend, a reply that
//! is valid UTF-8 reaches the client as a text message, anything else as
//! binary. A backend message without a valid header, or for a client that
//! has gone, is dropped and counted ([`GatewayHandle::dropped_replies`]).
//!
//! A backend that is down at start, or drops later, is reconnected with
//! [`GatewayOptions::reconnect`]; meanwhile messages for it are answered
//! with `backend unavailable`. When a connection drops, every client that
//! sent the route a message while it was up gets `backend disconnected`
//! (its request may be lost).
//!
//! Replies are queued to a client without waiting; a client that does not
//! read and lets 1 MiB of replies pile up is closed with 1008 ("slow
//! consumer") rather than stall every other client of the backend.
//!
//! # Configuration
//!
//! See [`config`] for the route file (`routes.ini`).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use storm_cli::gateway::{Gateway, GatewayConfig, GatewayOptions};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = GatewayConfig::parse("[orders]\nname = orders\nport = 1\nprotocol = tcp\n")?;
//! let gateway = Gateway::bind(config, GatewayOptions::default()).await?;
//! let handle = gateway.handle();
//! println!("listening on ws://{}", handle.local_addr());
//! let serving = tokio::spawn(gateway.serve());
//! // Nothing listens on port 1: the backend is down and being reconnected.
//! assert!(!handle.backends()[0].connected);
//! handle.shutdown(Duration::from_secs(1)).await;
//! serving.await??;
//! # Ok(()) }
//! ```

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use storm_proto::Message;
use storm_proto::Utf8Bytes;
use storm_proto::hub::SendOutcome;
use storm_proto::link::CloseReason;
use storm_proto::options::{ClientOptions, Framing, ServerOptions, WsOptions};
use storm_proto::reconnect::{Backoff, BackoffConfig, BackoffPolicy, BackoffStep, Jitter};
use storm_proto::route::backend::{
    self as wire, BACKEND_DISCONNECTED, BACKEND_UNAVAILABLE, Target,
};
use storm_proto::route::{self, Event, Negotiated, Router, ServerHandshake, envelope};
use storm_proto::ws::CloseCode;
use storm_tokio::{Client, Handler, ServerHandle, Session, TcpClient, WsClient, WsServer};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub mod cli;
pub mod config;

pub use config::{ConfigError, ConfigErrorKind, Endpoint, GatewayConfig, LoadError, Protocol};

/// How the gateway listens and reconnects.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// WebSocket address to listen on. Default `127.0.0.1:0` (a free port).
    pub addr: String,
    /// Backoff between attempts to (re)connect a backend. Default:
    /// exponential from 100 ms, ×2, capped at 5 s, full jitter, unlimited
    /// attempts (with `max_attempts`, a backend that gives up stays down and
    /// its messages keep getting `backend unavailable`).
    pub reconnect: BackoffConfig,
    /// Time one backend connection attempt may take. Default 5 s.
    pub connect_timeout: Duration,
    /// Time a client has for the route handshake; `None` waits forever.
    /// Default 10 s.
    pub handshake_timeout: Option<Duration>,
    /// Largest message accepted from a client or a backend, in bytes.
    /// Default 16 MiB.
    pub max_message_size: usize,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:0".to_owned(),
            reconnect: BackoffConfig {
                policy: BackoffPolicy::Exponential {
                    initial: Duration::from_millis(100),
                    multiplier: 2.0,
                    max: Duration::from_secs(5),
                },
                jitter: Jitter::Full,
                ..BackoffConfig::default()
            },
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Some(route::DEFAULT_HANDSHAKE_TIMEOUT),
            max_message_size: 16 << 20,
        }
    }
}

/// A bound gateway; [`serve`](Self::serve) runs it.
#[derive(Debug)]
pub struct Gateway {
    server: WsServer,
    handle: GatewayHandle,
}

/// Controls a running gateway: backend status, shutdown. Cheap to clone.
#[derive(Clone)]
pub struct GatewayHandle {
    server: ServerHandle,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for GatewayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayHandle")
            .field("local_addr", &self.local_addr())
            .finish_non_exhaustive()
    }
}

/// One backend as the gateway sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendStatus {
    /// The route name.
    pub route: String,
    /// Where it lives (`ws://…/` or `tcp://…`).
    pub url: String,
    /// Whether its connection is up.
    pub connected: bool,
}

impl Gateway {
    /// Binds the WebSocket endpoint and starts connecting every backend.
    ///
    /// # Errors
    ///
    /// A failed bind, or invalid options ([`io::ErrorKind::InvalidInput`]).
    pub async fn bind(config: GatewayConfig, options: GatewayOptions) -> io::Result<Self> {
        let invalid =
            |e: &dyn std::error::Error| io::Error::new(io::ErrorKind::InvalidInput, e.to_string());
        options.reconnect.validate().map_err(|e| invalid(&e))?;
        let route_config = route::ServerConfig {
            handshake_timeout: options.handshake_timeout,
            ..route::ServerConfig::new(config.route_table())
        };
        route_config.validate().map_err(|e| invalid(&e))?;
        let ws = ws_options(&options);
        let server = WsServer::bind(
            ServerOptions {
                addr: options.addr.clone(),
                ..ServerOptions::default()
            },
            ws,
        )
        .await?;
        let clients = Arc::new(Clients::default());
        let (stop, _) = watch::channel(false);
        let mut backends = HashMap::new();
        for endpoint in config.endpoints() {
            let backend = Arc::new(Backend {
                endpoint: endpoint.clone(),
                state: Mutex::new(BackendState::default()),
                connected: watch::channel(false).0,
            });
            tokio::spawn(manage(
                Arc::clone(&backend),
                Arc::clone(&clients),
                options.clone(),
                stop.subscribe(),
            ));
            backends.insert(endpoint.name.clone(), backend);
        }
        let shared = Arc::new(Shared {
            config,
            route_config: Arc::new(route_config),
            backends,
            clients,
            stop,
        });
        let handle = GatewayHandle {
            server: server.handle(),
            shared,
        };
        Ok(Self { server, handle })
    }

    /// The address clients connect to.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// A handle for status and shutdown.
    #[must_use]
    pub fn handle(&self) -> GatewayHandle {
        self.handle.clone()
    }

    /// Serves clients until [`GatewayHandle::shutdown`].
    ///
    /// # Errors
    ///
    /// Only a failing listener.
    pub async fn serve(self) -> io::Result<()> {
        let handler = ClientHandler {
            shared: Arc::clone(&self.handle.shared),
        };
        self.server.serve(handler).await
    }
}

impl GatewayHandle {
    /// The address clients connect to.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The configuration the gateway runs with.
    #[must_use]
    pub fn config(&self) -> &GatewayConfig {
        &self.shared.config
    }

    /// Every backend, in file order.
    #[must_use]
    pub fn backends(&self) -> Vec<BackendStatus> {
        self.shared
            .config
            .endpoints()
            .iter()
            .filter_map(|e| self.shared.backends.get(&e.name))
            .map(|b| BackendStatus {
                route: b.endpoint.name.clone(),
                url: b.endpoint.url(),
                connected: *b.connected.borrow(),
            })
            .collect()
    }

    /// Waits until `route`'s backend is connected (`connected = true`) or
    /// down. Returns `false` at once for a route not in the file.
    pub async fn wait_backend(&self, route: &str, connected: bool) -> bool {
        let Some(backend) = self.shared.backends.get(route) else {
            return false;
        };
        let mut rx = backend.connected.subscribe();
        // The sender lives in `shared`, which outlives this borrow.
        rx.wait_for(|up| *up == connected).await.is_ok()
    }

    /// Clients connected now (handshake done or not).
    #[must_use]
    pub fn client_count(&self) -> usize {
        lock(&self.shared.clients.map).len()
    }

    /// Backend messages dropped: no valid `CLIENT=` header, or for a client
    /// that has gone.
    #[must_use]
    pub fn dropped_replies(&self) -> u64 {
        self.shared.clients.dropped.load(Ordering::Relaxed)
    }

    /// Stops reconnecting, closes every backend connection, closes every
    /// client gracefully (aborting those still open after `timeout`), and
    /// returns once [`Gateway::serve`] has returned.
    pub async fn shutdown(&self, timeout: Duration) {
        self.shared.stop.send_replace(true);
        for backend in self.shared.backends.values() {
            if let Some(client) = lock(&backend.state).client.take() {
                client.close();
            }
        }
        self.server.shutdown(timeout).await;
    }
}

fn ws_options(options: &GatewayOptions) -> WsOptions {
    let mut ws = WsOptions::default();
    ws.config.max_message_size = options.max_message_size;
    ws.config.max_frame_size = options.max_message_size;
    ws
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the client handler and the handle share.
struct Shared {
    config: GatewayConfig,
    route_config: Arc<route::ServerConfig>,
    /// By route name; fixed after bind.
    backends: HashMap<String, Arc<Backend>>,
    clients: Arc<Clients>,
    stop: watch::Sender<bool>,
}

/// The clients, by session number.
#[derive(Default)]
struct Clients {
    map: Mutex<HashMap<u64, ClientState>>,
    dropped: AtomicU64,
}

struct ClientState {
    session: Session,
    phase: Phase,
}

enum Phase {
    /// Running the route handshake; the task fails it at its deadline.
    Handshake {
        machine: ServerHandshake,
        timer: Option<JoinHandle<()>>,
    },
    /// Route traffic.
    Ready {
        router: Router,
        negotiated: Negotiated,
    },
    /// The handshake failed; the session is closing.
    Failed,
}

impl Clients {
    /// Queues a reply from `route`'s backend to client `id`, or a push to
    /// every client that announced `route`. The message is encoded once and
    /// shared by every recipient.
    fn deliver(&self, route: &str, target: Target, payload: &[u8], text: bool) {
        let mut buf = BytesMut::new();
        if envelope::encode(route, payload, &mut buf).is_err() {
            // Route names were checked when the config was loaded.
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let reply = message(buf.freeze(), text);
        let recipients: Vec<Session> = {
            let map = lock(&self.map);
            match target {
                Target::Client(id) => map
                    .get(&id)
                    .filter(|state| {
                        matches!(&state.phase, Phase::Ready { router, .. } if router.contains(route))
                    })
                    .map(|state| state.session.clone())
                    .into_iter()
                    .collect(),
                Target::AllClients => map
                    .values()
                    .filter(|state| {
                        matches!(&state.phase, Phase::Ready { negotiated, .. } if negotiated.contains(route))
                    })
                    .map(|state| state.session.clone())
                    .collect(),
            }
        };
        if recipients.is_empty() && matches!(target, Target::Client(_)) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        for session in recipients {
            offer(&session, reply.clone());
        }
    }

    /// Sends `text` to each of `ids` still connected.
    fn notify(&self, ids: &HashSet<u64>, text: &str) {
        let sessions: Vec<Session> = {
            let map = lock(&self.map);
            ids.iter()
                .filter_map(|id| map.get(id).map(|s| s.session.clone()))
                .collect()
        };
        for session in sessions {
            offer(&session, Message::from(text));
        }
    }
}

/// Queues without waiting; a client too slow to take it is closed.
fn offer(session: &Session, message: Message) {
    match session.try_send(message) {
        SendOutcome::Queued | SendOutcome::Closed(_) => {}
        _ => session.close_with(CloseCode::POLICY_VIOLATION, "slow consumer"),
    }
}

/// A text message when asked for and valid UTF-8, else binary.
fn message(bytes: Bytes, text: bool) -> Message {
    if text {
        match Utf8Bytes::try_from_bytes(bytes) {
            Ok(text) => Message::Text(text),
            Err(bytes) => Message::Binary(bytes),
        }
    } else {
        Message::Binary(bytes)
    }
}

/// One backend route and its shared connection.
struct Backend {
    endpoint: Endpoint,
    state: Mutex<BackendState>,
    /// Whether the connection is up, for observers.
    connected: watch::Sender<bool>,
}

#[derive(Default)]
struct BackendState {
    /// The storm-tokio client, once its first connection succeeded.
    client: Option<Client>,
    /// Between the client's `on_connect` and `on_disconnect`.
    up: bool,
    /// Clients that sent a message over the current connection.
    users: HashSet<u64>,
}

impl Backend {
    /// Recomputes and publishes whether messages can be forwarded.
    fn publish(&self, state: &BackendState) {
        let connected = state.up && state.client.is_some();
        self.connected.send_if_modified(|old| {
            let changed = *old != connected;
            *old = connected;
            changed
        });
    }

    /// Forwards one client message; `false` when the backend cannot take
    /// it (down, or its connection closing).
    #[must_use]
    async fn forward(&self, client_id: u64, payload: &[u8], text: bool) -> bool {
        let client = {
            let mut state = lock(&self.state);
            match (&state.client, state.up) {
                (Some(client), true) => {
                    let client = client.clone();
                    state.users.insert(client_id);
                    client
                }
                _ => return false,
            }
        };
        let mut buf = BytesMut::new();
        wire::encode(client_id, payload, &mut buf);
        let text = text && self.endpoint.protocol == Protocol::Ws;
        client.send(message(buf.freeze(), text)).await.is_ok()
    }
}

/// Connects a backend, and again whenever its client gives up.
async fn manage(
    backend: Arc<Backend>,
    clients: Arc<Clients>,
    options: GatewayOptions,
    mut stop: watch::Receiver<bool>,
) {
    let seed = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let Ok(mut backoff) = Backoff::new(options.reconnect.clone(), seed) else {
        return; // validated in bind
    };
    let client_options = ClientOptions {
        connect_timeout: options.connect_timeout,
        reconnect: Some(options.reconnect.clone()),
        ..ClientOptions::default()
    };
    let endpoint = backend.endpoint.clone();
    loop {
        let handler = BackendHandler {
            backend: Arc::clone(&backend),
            clients: Arc::clone(&clients),
        };
        let connect = async {
            match endpoint.protocol {
                Protocol::Ws => {
                    WsClient::connect(
                        &endpoint.url(),
                        client_options.clone(),
                        ws_options(&options),
                        handler,
                    )
                    .await
                }
                Protocol::Tcp => {
                    TcpClient::connect(
                        &endpoint.authority(),
                        client_options.clone(),
                        framing(options.max_message_size),
                        handler,
                    )
                    .await
                }
            }
        };
        let connected = tokio::select! {
            result = connect => result.ok(),
            _ = stop.wait_for(|stop| *stop) => return,
        };
        if let Some(client) = connected {
            backoff.connected(Instant::now());
            {
                let mut state = lock(&backend.state);
                state.client = Some(client.clone());
                backend.publish(&state);
            }
            tokio::select! {
                () = client.closed() => {}
                _ = stop.wait_for(|stop| *stop) => {
                    client.close();
                    return;
                }
            }
            let mut state = lock(&backend.state);
            state.client = None;
            backend.publish(&state);
        }
        let delay = match backoff.disconnected(Instant::now()) {
            BackoffStep::Retry { delay, .. } => delay,
            BackoffStep::GiveUp { .. } => return,
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

fn framing(max: usize) -> Framing {
    let mut config = storm_proto::framing::LengthPrefixConfig::default();
    config.max_frame_len = max;
    Framing::LengthPrefixWith(config)
}

/// Events of one backend connection.
struct BackendHandler {
    backend: Arc<Backend>,
    clients: Arc<Clients>,
}

impl Handler for BackendHandler {
    async fn on_connect(&self, _: &Session) {
        let mut state = lock(&self.backend.state);
        state.up = true;
        self.backend.publish(&state);
    }

    async fn on_message(&self, _: &Session, message: Message) {
        let text = match self.backend.endpoint.protocol {
            Protocol::Ws => message.is_text(),
            // TCP has no message kinds: text when it is text.
            Protocol::Tcp => true,
        };
        let bytes = message.into_bytes();
        match wire::decode(&bytes) {
            Ok(decoded) => self.clients.deliver(
                &self.backend.endpoint.name,
                decoded.target,
                decoded.payload,
                text,
            ),
            Err(_) => {
                self.clients.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    async fn on_disconnect(&self, _: &Session, _: &CloseReason) {
        // Refuse further forwards first, then tell the clients that had
        // talked to it, then let observers see the backend down.
        let users = {
            let mut state = lock(&self.backend.state);
            state.up = false;
            std::mem::take(&mut state.users)
        };
        let reply = wire::error_reply(&self.backend.endpoint.name, BACKEND_DISCONNECTED);
        self.clients.notify(&users, &reply);
        let state = lock(&self.backend.state);
        self.backend.publish(&state);
    }
}

/// Events of the gateway's client connections.
struct ClientHandler {
    shared: Arc<Shared>,
}

impl Handler for ClientHandler {
    async fn on_connect(&self, session: &Session) {
        let id = session.id().get();
        let machine =
            match ServerHandshake::new(Arc::clone(&self.shared.route_config), Instant::now()) {
                Ok(machine) => machine,
                Err(_) => {
                    // Validated in bind; never here.
                    session.close_with(CloseCode::INTERNAL_ERROR, "gateway misconfigured");
                    return;
                }
            };
        let timer = machine.poll_timeout().map(|deadline| {
            let clients = Arc::clone(&self.shared.clients);
            tokio::spawn(async move {
                tokio::time::sleep_until(deadline.into()).await;
                handshake_timeout(&clients, id);
            })
        });
        lock(&self.shared.clients.map).insert(
            id,
            ClientState {
                session: session.clone(),
                phase: Phase::Handshake { machine, timer },
            },
        );
    }

    async fn on_message(&self, session: &Session, message: Message) {
        let id = session.id().get();
        let text = message.is_text();
        let bytes = message.into_bytes();
        // Decide under the lock, send after it.
        let step = {
            let mut map = lock(&self.shared.clients.map);
            let Some(state) = map.get_mut(&id) else {
                return;
            };
            match &mut state.phase {
                Phase::Handshake { machine, timer } => {
                    let result = machine.handle_message(Instant::now(), &bytes);
                    let mut out = Vec::new();
                    while let Some(msg) = machine.poll_transmit() {
                        out.push(msg);
                    }
                    let ready = machine.poll_event();
                    if let Err(e) = result {
                        if let Some(timer) = timer.take() {
                            timer.abort();
                        }
                        let code = e.close_code();
                        if code.is_some() {
                            state.phase = Phase::Failed;
                        }
                        Step::Handshake { out, close: code }
                    } else {
                        if let Some(Event::Ready(negotiated)) = ready {
                            if let Some(timer) = timer.take() {
                                timer.abort();
                            }
                            let router =
                                Router::new(Arc::clone(&self.shared.route_config), &negotiated);
                            state.phase = Phase::Ready { router, negotiated };
                        }
                        Step::Handshake { out, close: None }
                    }
                }
                Phase::Ready { router, .. } => match router.resolve(&bytes) {
                    Ok(addressed) => Step::Forward {
                        route: addressed.route.to_owned(),
                        payload: addressed.payload_bytes(&bytes),
                    },
                    Err(e) => Step::Reply(e.error_reply()),
                },
                Phase::Failed => return,
            }
        };
        match step {
            Step::Handshake { out, close } => {
                for msg in out {
                    let _ = session.send_text(&msg).await;
                }
                if let Some(code) = close {
                    session.close_with(CloseCode::from(code), "route handshake failed");
                }
            }
            Step::Reply(text) => {
                let _ = session.send_text(&text).await;
            }
            Step::Forward { route, payload } => {
                let delivered = match self.shared.backends.get(&route) {
                    Some(backend) => backend.forward(id, &payload, text).await,
                    None => false,
                };
                if !delivered {
                    let reply = wire::error_reply(&route, BACKEND_UNAVAILABLE);
                    let _ = session.send_text(&reply).await;
                }
            }
        }
    }

    async fn on_disconnect(&self, session: &Session, _: &CloseReason) {
        let id = session.id().get();
        if let Some(ClientState {
            phase: Phase::Handshake {
                timer: Some(timer), ..
            },
            ..
        }) = lock(&self.shared.clients.map).remove(&id)
        {
            timer.abort();
        }
        for backend in self.shared.backends.values() {
            lock(&backend.state).users.remove(&id);
        }
    }
}

/// What one client message leads to, decided under the lock.
enum Step {
    Handshake {
        out: Vec<String>,
        close: Option<u16>,
    },
    Reply(String),
    Forward {
        route: String,
        payload: Bytes,
    },
}

/// Fails a handshake still running at its deadline.
fn handshake_timeout(clients: &Clients, id: u64) {
    let (session, out, code) = {
        let mut map = lock(&clients.map);
        let Some(state) = map.get_mut(&id) else {
            return;
        };
        let Phase::Handshake { machine, .. } = &mut state.phase else {
            return;
        };
        let Err(e) = machine.handle_timeout(Instant::now()) else {
            return;
        };
        let mut out = Vec::new();
        while let Some(msg) = machine.poll_transmit() {
            out.push(msg);
        }
        let code = e.close_code().unwrap_or(1008);
        let session = state.session.clone();
        state.phase = Phase::Failed;
        (session, out, code)
    };
    for msg in out {
        offer(&session, Message::from(msg));
    }
    session.close_with(CloseCode::from(code), "route handshake timed out");
}
