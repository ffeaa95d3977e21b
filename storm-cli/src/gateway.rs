//! `storm gateway`: one WebSocket endpoint in front of many named backends
//! (the SocketMaster design), built on the adapters' public API with every
//! protocol decision taken from [`storm_proto::route`].
//!
//! # Runtimes
//!
//! The gateway runs the same on tokio, smol and plain threads: its state
//! and every decision (handshakes, routing, which client gets a backend's
//! reply, who hears that a backend dropped) live in one runtime-neutral
//! type; the adapters only send what it returns and do the waiting.
//!
//! - [`Gateway<R>`](Gateway) / [`GatewayHandle<R>`](GatewayHandle) run on
//!   any [`storm_async::Runtime`]: `Gateway` alone is tokio
//!   (`storm_tokio::Tokio`), `Gateway<storm_smol::Smol>` is smol. Its
//!   client endpoint is a `storm_async::WsServer<R>`, its backends
//!   `storm_async::{WsClient, TcpClient}<R>`, its timers `R::sleep_until`.
//! - [`blocking::Gateway`] / [`blocking::GatewayHandle`] run on storm-std:
//!   two threads per client, one per backend, one for handshake deadlines.
//!
//! With [`GatewayOptions::tls`], clients connect over `wss://`; backends
//! with `tls = on` in the route file are reached over TLS, checked against
//! [`GatewayOptions::backend_tls`].
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
//! The gateway keeps one connection per route (an adapter client, made
//! again with backoff whenever it drops), WebSocket (`ws://host:port/`) or TCP with a
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
//! that echoes whole messages answers the right client unchanged, and in
//! the kind (text or binary) the client used: on a WebSocket backend the
//! frame type carries the kind; on a TCP backend, which has no frame types,
//! a binary message's header is `CLIENT=<client id>;binary`, and a reply is
//! binary if its header is marked so, text otherwise (binary anyway if it is
//! not UTF-8); see [`storm_proto::route::backend`]. A backend message
//! without a valid header, or for a client that has gone, is dropped and
//! counted ([`GatewayHandle::dropped_replies`]).
//!
//! A backend that is down at start, or drops later, is reconnected with
//! [`GatewayOptions::reconnect`]; meanwhile messages for it are answered
//! with `backend unavailable`. When a connection drops, every client that
//! sent the route a message while it was up gets `backend disconnected`
//! (its request may be lost).
//!
//! Shutdown stops every backend at once, on every runtime: a wait between
//! attempts ends there and then with no further attempt, an attempt in
//! progress is abandoned (on threads, where a blocking connect cannot be
//! interrupted, it is finished, within the connect timeout, and closed), a
//! live connection is closed. `shutdown` returns only once all of that is
//! done, so no backend task or thread outlives it.
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
//! // On tokio; `Gateway::<storm_smol::Smol>::bind` is the same on smol.
//! let gateway: Gateway = Gateway::bind(config, GatewayOptions::default()).await?;
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
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use storm_host::hub::SendOutcome;
use storm_host::options::{ClientOptions, Framing, TlsClientOptions, TlsServerOptions, WsOptions};
use storm_host::peer::Peer;
use storm_proto::Message;
use storm_proto::Utf8Bytes;
use storm_proto::framing::LengthPrefixConfig;
use storm_proto::reconnect::{Backoff, BackoffConfig, BackoffPolicy, Jitter};
use storm_proto::route::backend::{
    self as wire, BACKEND_DISCONNECTED, BACKEND_UNAVAILABLE, Target,
};
use storm_proto::route::{self, Event, Negotiated, Router, ServerHandshake, envelope};
use storm_proto::ws::CloseCode;
use tokio::sync::watch;

pub mod blocking;
pub mod cli;
pub mod config;
mod on_async;
#[cfg(test)]
mod tests;

pub use config::{ConfigError, ConfigErrorKind, Endpoint, GatewayConfig, LoadError, Protocol};
pub use on_async::{Gateway, GatewayHandle};

/// How the gateway listens and reconnects.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// WebSocket address to listen on. Default `127.0.0.1:0` (a free port).
    pub addr: String,
    /// Serve clients over TLS (`wss://`) with this certificate and key.
    /// Default `None`: plain `ws://`.
    pub tls: Option<TlsServerOptions>,
    /// How backends with `tls = on` in the route file are checked: the CAs
    /// trusted (default: the public web roots), a client certificate to
    /// present, the name expected (default: the endpoint's `host`).
    pub backend_tls: TlsClientOptions,
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
            tls: None,
            backend_tls: TlsClientOptions::default(),
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

impl GatewayOptions {
    /// The server options of the client endpoint.
    fn server_options(&self) -> storm_host::options::ServerOptions {
        storm_host::options::ServerOptions {
            addr: self.addr.clone(),
            tls: self.tls.clone(),
            ..storm_host::options::ServerOptions::default()
        }
    }

    /// The WebSocket options of every connection, client or backend.
    fn ws_options(&self) -> WsOptions {
        let mut ws = WsOptions::default();
        ws.config.max_message_size = self.max_message_size;
        ws.config.max_frame_size = self.max_message_size;
        ws
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

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A flag that async tasks and threads can both wait on.
struct Watched {
    value: Mutex<bool>,
    changed: Condvar,
    watch: watch::Sender<bool>,
}

impl Watched {
    fn new() -> Self {
        Self {
            value: Mutex::new(false),
            changed: Condvar::new(),
            watch: watch::channel(false).0,
        }
    }

    fn get(&self) -> bool {
        *lock(&self.value)
    }

    fn set(&self, value: bool) {
        let mut current = lock(&self.value);
        if *current != value {
            *current = value;
            self.watch.send_replace(value);
            self.changed.notify_all();
        }
    }

    /// Waits until the flag is `value`, on any async runtime.
    async fn wait_for(&self, value: bool) {
        let mut rx = self.watch.subscribe();
        // The sender lives in `self`, which outlives this borrow.
        let _ = rx.wait_for(|now| *now == value).await;
    }

    /// Blocks until the flag is `value`.
    fn wait(&self, value: bool) {
        let current = lock(&self.value);
        drop(
            self.changed
                .wait_while(current, |now| *now != value)
                .unwrap_or_else(PoisonError::into_inner),
        );
    }

    /// Blocks until the flag is `value` or `timeout` passes; whether it is.
    fn wait_timeout(&self, value: bool, timeout: Duration) -> bool {
        let current = lock(&self.value);
        let (current, _) = self
            .changed
            .wait_timeout_while(current, timeout, |now| *now != value)
            .unwrap_or_else(PoisonError::into_inner);
        *current == value
    }
}

/// The gateway itself, the same on every runtime: the clients and their
/// handshakes, the backends' connections, and every decision about a
/// message. `S` is the adapter's `Session` (it dereferences to [`Peer`]);
/// the adapters only do what it returns, and the waiting.
struct Core<S> {
    config: GatewayConfig,
    options: GatewayOptions,
    route_config: Arc<route::ServerConfig>,
    /// By route name; fixed after bind.
    backends: HashMap<String, Backend<S>>,
    clients: Mutex<HashMap<u64, ClientState>>,
    /// Backend messages that could not be delivered.
    dropped: AtomicU64,
    /// Set by shutdown: stop reconnecting.
    stopped: Watched,
    /// The backend loops still running, which shutdown waits for.
    loops: Arc<Loops>,
}

/// Counts the backend loops (one per route) that are running.
struct Loops {
    running: Mutex<usize>,
    /// Whether none is: `true` until the first starts.
    ended: Watched,
}

impl Loops {
    fn new() -> Self {
        let ended = Watched::new();
        ended.set(true);
        Self {
            running: Mutex::new(0),
            ended,
        }
    }

    /// One more loop runs until the guard is dropped, which the loop's
    /// task or thread does when it ends, or is dropped, or never starts.
    fn start(self: &Arc<Self>) -> LoopGuard {
        let mut running = lock(&self.running);
        *running += 1;
        self.ended.set(false);
        LoopGuard(Arc::clone(self))
    }
}

/// A running backend loop, counted in [`Loops`] until dropped.
struct LoopGuard(Arc<Loops>);

impl Drop for LoopGuard {
    fn drop(&mut self) {
        let mut running = lock(&self.0.running);
        *running = running.saturating_sub(1);
        if *running == 0 {
            self.0.ended.set(true);
        }
    }
}

/// One backend route and its shared connection.
struct Backend<S> {
    endpoint: Endpoint,
    state: Mutex<BackendState<S>>,
    /// Whether the connection is up, for observers.
    connected: Watched,
}

/// Closes a backend's client for good (no more reconnects).
type Closer = Box<dyn Fn() + Send + Sync>;

struct BackendState<S> {
    /// The current connection, between the client's `on_connect` and
    /// `on_disconnect`.
    session: Option<S>,
    /// Closes the client that keeps the connection, while there is one.
    closer: Option<Closer>,
    /// Clients that sent a message over the current connection.
    users: HashSet<u64>,
}

struct ClientState {
    peer: Peer,
    phase: Phase,
}

enum Phase {
    /// Running the route handshake; the adapter's timer fails it at its
    /// deadline.
    Handshake(ServerHandshake),
    /// Route traffic.
    Ready {
        router: Router,
        negotiated: Negotiated,
    },
    /// The handshake failed; the session is closing.
    Failed,
}

/// What the adapter does with one client message, decided under the lock.
enum Step<S> {
    /// Sends these texts to the client in order, then closes it with the
    /// code, if any.
    Answer {
        out: Vec<String>,
        close: Option<u16>,
    },
    /// Sends `message` to the backend connection `backend` (waiting if it
    /// is backpressured); if that fails, answers the client with
    /// [`Core::unavailable`] for `route`.
    Forward {
        route: String,
        backend: S,
        message: Message,
    },
}

/// How to reach one backend: what the adapters' clients connect with.
struct Dial {
    endpoint: Endpoint,
    options: ClientOptions,
    ws: WsOptions,
    framing: Framing,
}

impl<S: Clone + Deref<Target = Peer> + Send + Sync + 'static> Core<S> {
    /// Checks the options; the adapters then bind and start their backend
    /// loops.
    fn new(config: GatewayConfig, options: GatewayOptions) -> io::Result<Self> {
        let invalid =
            |e: &dyn std::error::Error| io::Error::new(io::ErrorKind::InvalidInput, e.to_string());
        options.reconnect.validate().map_err(|e| invalid(&e))?;
        let route_config = route::ServerConfig {
            handshake_timeout: options.handshake_timeout,
            ..route::ServerConfig::new(config.route_table())
        };
        route_config.validate().map_err(|e| invalid(&e))?;
        let backends = config
            .endpoints()
            .iter()
            .map(|endpoint| {
                let backend = Backend {
                    endpoint: endpoint.clone(),
                    state: Mutex::new(BackendState {
                        session: None,
                        closer: None,
                        users: HashSet::new(),
                    }),
                    connected: Watched::new(),
                };
                (endpoint.name.clone(), backend)
            })
            .collect();
        Ok(Self {
            config,
            options,
            route_config: Arc::new(route_config),
            backends,
            clients: Mutex::default(),
            dropped: AtomicU64::new(0),
            stopped: Watched::new(),
            loops: Arc::new(Loops::new()),
        })
    }

    // ---- status, for the handles ----

    fn backends(&self) -> Vec<BackendStatus> {
        self.config
            .endpoints()
            .iter()
            .filter_map(|e| self.backends.get(&e.name))
            .map(|b| BackendStatus {
                route: b.endpoint.name.clone(),
                url: b.endpoint.url(),
                connected: b.connected.get(),
            })
            .collect()
    }

    fn client_count(&self) -> usize {
        lock(&self.clients).len()
    }

    fn dropped_replies(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Stops reconnecting and closes every backend client.
    fn stop(&self) {
        self.stopped.set(true);
        for backend in self.backends.values() {
            let closer = lock(&backend.state).closer.take();
            if let Some(close) = closer {
                close();
            }
        }
    }

    // ---- backends ----

    /// How to connect each route, a fresh backoff for its attempts, and
    /// the guard its loop holds while it runs.
    ///
    /// The adapters' clients do not reconnect by themselves: the backend
    /// loop makes a new client after each drop, so that every wait between
    /// attempts is one that shutdown can cut short, the same on every
    /// runtime.
    fn dials(&self) -> Vec<(Dial, Backoff, LoopGuard)> {
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let options = ClientOptions {
            connect_timeout: self.options.connect_timeout,
            reconnect: None,
            ..ClientOptions::default()
        };
        let mut framing = LengthPrefixConfig::default();
        framing.max_frame_len = self.options.max_message_size;
        self.config
            .endpoints()
            .iter()
            .enumerate()
            .filter_map(|(i, endpoint)| {
                // Validated in `new`.
                let backoff =
                    Backoff::new(self.options.reconnect.clone(), seed.wrapping_add(i as u64))
                        .ok()?;
                let dial = Dial {
                    endpoint: endpoint.clone(),
                    options: ClientOptions {
                        tls: endpoint.tls.then(|| self.options.backend_tls.clone()),
                        ..options.clone()
                    },
                    ws: self.options.ws_options(),
                    framing: Framing::LengthPrefixWith(framing.clone()),
                };
                Some((dial, backoff, self.loops.start()))
            })
            .collect()
    }

    /// Keeps `close` to stop `route`'s new client at shutdown; `false`
    /// (and nothing kept) when the gateway is already stopping: close it.
    #[must_use]
    fn attach_client(&self, route: &str, close: Closer) -> bool {
        let Some(backend) = self.backends.get(route) else {
            return false;
        };
        let mut state = lock(&backend.state);
        if self.stopped.get() {
            return false;
        }
        state.closer = Some(close);
        true
    }

    /// `route`'s client stopped (its connection ended, or it was closed).
    fn detach_client(&self, route: &str) {
        if let Some(backend) = self.backends.get(route) {
            lock(&backend.state).closer = None;
        }
    }

    /// A backend connection is up.
    fn backend_up(&self, route: &str, session: &S) {
        if let Some(backend) = self.backends.get(route) {
            lock(&backend.state).session = Some(session.clone());
            backend.connected.set(true);
        }
    }

    /// A message from `route`'s backend: to one client, or pushed to every
    /// client that announced the route.
    fn backend_message(&self, route: &str, message: Message) {
        let Some(backend) = self.backends.get(route) else {
            return;
        };
        // Unmarked, a message is what its frame says on a WebSocket and
        // text on TCP (no frame types); `;binary` makes it binary on both.
        let unmarked_text = match backend.endpoint.protocol {
            Protocol::Ws => message.is_text(),
            Protocol::Tcp => true,
        };
        let bytes = message.into_bytes();
        match wire::decode(&bytes) {
            Ok(decoded) => {
                let text = unmarked_text && !decoded.binary;
                self.deliver(route, decoded.target, decoded.payload, text);
            }
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A backend connection ended.
    fn backend_down(&self, route: &str) {
        let Some(backend) = self.backends.get(route) else {
            return;
        };
        // Refuse further forwards first, then tell the clients that had
        // talked to it, then let observers see the backend down.
        let users = {
            let mut state = lock(&backend.state);
            state.session = None;
            std::mem::take(&mut state.users)
        };
        let reply = wire::error_reply(route, BACKEND_DISCONNECTED);
        let peers: Vec<Peer> = {
            let clients = lock(&self.clients);
            users
                .iter()
                .filter_map(|id| clients.get(id).map(|c| c.peer.clone()))
                .collect()
        };
        for peer in peers {
            offer(&peer, Message::from(reply.as_str()));
        }
        backend.connected.set(false);
    }

    /// Queues a reply from `route`'s backend to client `id`, or a push to
    /// every client that announced `route`: a text message if `text` and
    /// the payload is UTF-8, else binary. The message is encoded once and
    /// shared by every recipient.
    fn deliver(&self, route: &str, target: Target, payload: &[u8], text: bool) {
        let mut buf = BytesMut::new();
        if envelope::encode(route, payload, &mut buf).is_err() {
            // Route names were checked when the config was loaded.
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let reply = message(buf.freeze(), text);
        let recipients: Vec<Peer> = {
            let map = lock(&self.clients);
            match target {
                Target::Client(id) => map
                    .get(&id)
                    .filter(|state| {
                        matches!(&state.phase, Phase::Ready { router, .. } if router.contains(route))
                    })
                    .map(|state| state.peer.clone())
                    .into_iter()
                    .collect(),
                Target::AllClients => map
                    .values()
                    .filter(|state| {
                        matches!(&state.phase, Phase::Ready { negotiated, .. } if negotiated.contains(route))
                    })
                    .map(|state| state.peer.clone())
                    .collect(),
            }
        };
        if recipients.is_empty() && matches!(target, Target::Client(_)) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        for peer in recipients {
            offer(&peer, reply.clone());
        }
    }

    // ---- clients ----

    /// A client connected: its handshake starts. The deadline at which the
    /// adapter calls [`handshake_deadline`](Self::handshake_deadline), if any.
    fn client_connected(&self, peer: &Peer) -> Option<Instant> {
        let machine = match ServerHandshake::new(Arc::clone(&self.route_config), Instant::now()) {
            Ok(machine) => machine,
            Err(_) => {
                // Validated in `new`; never here.
                peer.close_with(CloseCode::INTERNAL_ERROR, "gateway misconfigured");
                return None;
            }
        };
        let deadline = machine.poll_timeout();
        lock(&self.clients).insert(
            peer.id().get(),
            ClientState {
                peer: peer.clone(),
                phase: Phase::Handshake(machine),
            },
        );
        deadline
    }

    /// One message from client `id`: what to do with it.
    fn client_message(&self, id: u64, message: Message) -> Step<S> {
        let text = message.is_text();
        let bytes = message.into_bytes();
        let nothing = Step::Answer {
            out: Vec::new(),
            close: None,
        };
        let (route, payload) = {
            let mut map = lock(&self.clients);
            let Some(state) = map.get_mut(&id) else {
                return nothing;
            };
            match &mut state.phase {
                Phase::Handshake(machine) => {
                    let result = machine.handle_message(Instant::now(), &bytes);
                    let mut out = Vec::new();
                    while let Some(msg) = machine.poll_transmit() {
                        out.push(msg);
                    }
                    let ready = machine.poll_event();
                    return match result {
                        Err(e) => {
                            let close = e.close_code();
                            if close.is_some() {
                                state.phase = Phase::Failed;
                            }
                            Step::Answer { out, close }
                        }
                        Ok(_) => {
                            if let Some(Event::Ready(negotiated)) = ready {
                                let router =
                                    Router::new(Arc::clone(&self.route_config), &negotiated);
                                state.phase = Phase::Ready { router, negotiated };
                            }
                            Step::Answer { out, close: None }
                        }
                    };
                }
                Phase::Ready { router, .. } => match router.resolve(&bytes) {
                    Ok(addressed) => (addressed.route.to_owned(), addressed.payload_bytes(&bytes)),
                    Err(e) => {
                        return Step::Answer {
                            out: vec![e.error_reply()],
                            close: None,
                        };
                    }
                },
                Phase::Failed => return nothing,
            }
        };
        self.forward(id, route, &payload, text)
    }

    /// Client `id`'s message for `route`, to its backend if it is up.
    fn forward(&self, id: u64, route: String, payload: &Bytes, text: bool) -> Step<S> {
        let backend = self.backends.get(&route).and_then(|backend| {
            let mut state = lock(&backend.state);
            let session = state.session.clone()?;
            state.users.insert(id);
            Some((session, backend.endpoint.protocol))
        });
        let Some((backend, protocol)) = backend else {
            return Step::Answer {
                out: vec![Self::unavailable(&route)],
                close: None,
            };
        };
        let mut buf = BytesMut::new();
        // The frame type carries the kind on a WebSocket; TCP has none, so
        // there the header marks a binary message.
        let marked = protocol == Protocol::Tcp && !text;
        wire::encode_to(Target::Client(id), marked, payload, &mut buf);
        let message = message(buf.freeze(), text && protocol == Protocol::Ws);
        Step::Forward {
            route,
            backend,
            message,
        }
    }

    /// The error a client gets for a message its backend could not take.
    fn unavailable(route: &str) -> String {
        wire::error_reply(route, BACKEND_UNAVAILABLE)
    }

    /// Client `id` disconnected.
    fn client_disconnected(&self, id: u64) {
        lock(&self.clients).remove(&id);
        for backend in self.backends.values() {
            lock(&backend.state).users.remove(&id);
        }
    }

    /// Client `id`'s handshake deadline passed: fails it if it is still
    /// running.
    fn handshake_deadline(&self, id: u64) {
        let (peer, out, code) = {
            let mut map = lock(&self.clients);
            let Some(state) = map.get_mut(&id) else {
                return;
            };
            let Phase::Handshake(machine) = &mut state.phase else {
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
            let peer = state.peer.clone();
            state.phase = Phase::Failed;
            (peer, out, code)
        };
        for msg in out {
            offer(&peer, Message::from(msg));
        }
        peer.close_with(CloseCode::from(code), "route handshake timed out");
    }
}

/// Queues without waiting; a client too slow to take it is closed.
fn offer(peer: &Peer, message: Message) {
    match peer.try_send(message) {
        SendOutcome::Queued | SendOutcome::Closed(_) => {}
        _ => peer.close_with(CloseCode::POLICY_VIOLATION, "slow consumer"),
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
