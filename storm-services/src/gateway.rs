//! `storm gateway`: one WebSocket endpoint in front of many named backends
//! that clients address by route name, built on the adapters' public API
//! with every protocol decision taken from [`storm_proto::route`] (the
//! handshake, envelopes and the [`Switchboard`]).
//!
//! # Runtimes
//!
//! The gateway runs the same on tokio, smol and plain threads: every
//! decision (handshakes, routing, which client gets a backend's reply, who
//! hears that a backend dropped) is taken by one sans-IO [`Switchboard`];
//! the code here feeds it what happens on the connections and carries out
//! its actions, and the adapters do the waiting.
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
//! use storm_services::gateway::{Gateway, GatewayConfig, GatewayOptions};
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

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use storm_host::hub::SendOutcome;
use storm_host::options::{ClientOptions, TlsClientOptions, TlsServerOptions, WsOptions};
use storm_host::session::Session;
use storm_proto::Message;
use storm_proto::backpressure::BackpressureConfig;
use storm_proto::framing::{Framing, LengthPrefixConfig};
use storm_proto::heartbeat::HeartbeatConfig;
use storm_proto::reconnect::{Backoff, BackoffConfig, BackoffStep};
use storm_proto::route::gateway::{
    Action, BackendConfig, BackendId, BackendProtocol, ClientId, Switchboard,
};
use storm_proto::route::{self, ServerConfig};
use storm_proto::ws::CloseCode;
use tokio::sync::watch;

pub mod config;
mod on_async;
mod on_std;

pub use config::{ConfigError, ConfigErrorKind, Endpoint, GatewayConfig, LoadError, Protocol};
pub use on_async::{Gateway, GatewayHandle};

/// The gateway on plain threads (storm-std): the same switchboard as the
/// async gateway, a reader and a writer thread per connection and one
/// timer thread.
pub mod blocking {
    pub use super::on_std::{Gateway, GatewayHandle};
}

/// How the gateway listens and reconnects.
///
/// `#[non_exhaustive]`, so a new option is not a breaking change: start
/// from [`default`](Self::default) and chain the `with_*` methods; the
/// fields stay public, to read and to set on a value you own.
#[derive(Debug, Clone)]
#[non_exhaustive]
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
    /// Most clients at once; more are closed at accept. 0 = unlimited.
    /// Default 0.
    pub max_connections: usize,
    /// Each client's send limit and slow-consumer policy. The gateway
    /// never waits on one client: under `Wait` a client over its limit is
    /// closed (1008), under `Drop` the message is dropped for it, under
    /// `Disconnect` it is aborted. Default [`BackpressureConfig::default`]
    /// (1 MiB, `Wait`).
    pub backpressure: BackpressureConfig,
    /// The clients' heartbeat and idle timeout. Default
    /// [`HeartbeatConfig::default`] (ping every 30 s, dead after 3 missed
    /// pongs, no idle timeout).
    pub heartbeat: HeartbeatConfig,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:0".to_owned(),
            tls: None,
            backend_tls: TlsClientOptions::default(),
            reconnect: BackoffConfig::exponential(
                Duration::from_millis(100),
                2.0,
                Duration::from_secs(5),
            ),
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Some(route::DEFAULT_HANDSHAKE_TIMEOUT),
            max_message_size: 16 << 20,
            max_connections: 0,
            backpressure: BackpressureConfig::default(),
            heartbeat: HeartbeatConfig::default(),
        }
    }
}

impl GatewayOptions {
    /// The WebSocket address to listen on (default `127.0.0.1:0`).
    #[must_use]
    pub fn with_addr(mut self, addr: impl Into<String>) -> Self {
        self.addr = addr.into();
        self
    }

    /// Serves clients over TLS (default: plain `ws://`).
    #[must_use]
    pub fn with_tls(mut self, tls: TlsServerOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// How backends with `tls = on` are checked (default
    /// [`TlsClientOptions::default`]: the public web roots).
    #[must_use]
    pub fn with_backend_tls(mut self, backend_tls: TlsClientOptions) -> Self {
        self.backend_tls = backend_tls;
        self
    }

    /// Backoff between attempts to (re)connect a backend (default
    /// exponential from 100 ms, ×2, capped at 5 s, full jitter, unlimited).
    #[must_use]
    pub fn with_reconnect(mut self, reconnect: BackoffConfig) -> Self {
        self.reconnect = reconnect;
        self
    }

    /// Time one backend connection attempt may take (default 5 s).
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Time a client has for the route handshake; `None` waits forever
    /// (default 10 s).
    #[must_use]
    pub fn with_handshake_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Largest message accepted from a client or a backend (default
    /// 16 MiB).
    #[must_use]
    pub fn with_max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Most clients at once, 0 = unlimited (default 0).
    #[must_use]
    pub fn with_max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// Each client's send limit and slow-consumer policy (default
    /// [`BackpressureConfig::default`]).
    #[must_use]
    pub fn with_backpressure(mut self, backpressure: BackpressureConfig) -> Self {
        self.backpressure = backpressure;
        self
    }

    /// The clients' heartbeat and idle timeout (default
    /// [`HeartbeatConfig::default`]).
    #[must_use]
    pub fn with_heartbeat(mut self, heartbeat: HeartbeatConfig) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// The server options of the client endpoint.
    fn server_options(&self) -> storm_host::options::ServerOptions {
        let mut options = storm_host::options::ServerOptions::default()
            .with_addr(self.addr.clone())
            .with_max_connections(self.max_connections)
            .with_backpressure(self.backpressure);
        options.tls = self.tls.clone();
        options.link.heartbeat = self.heartbeat.clone();
        options
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

/// The gateway's shared state, the same on every runtime: the
/// [`Switchboard`] that takes every decision and the connections its ids
/// name (each a [`Session`]), under one lock, plus what observers and
/// shutdown wait on. The adapters feed it connection events and carry out
/// the [`Effect`]s it returns.
struct Core {
    config: GatewayConfig,
    options: GatewayOptions,
    state: Mutex<State>,
    /// Whether each backend's connection is up, for observers; by
    /// [`BackendId`] (file order).
    connected: Vec<Watched>,
    /// Set by shutdown: stop reconnecting.
    stopped: Watched,
    /// The backend loops still running, which shutdown waits for.
    loops: Arc<Loops>,
    /// When the gateway was made: the `now` a client message is handled
    /// at while no handshake deadline is pending (see
    /// [`client_message`](Self::client_message)).
    epoch: Instant,
}

struct State {
    switchboard: Switchboard,
    /// Every connected client's session, by id.
    clients: HashMap<u64, Session>,
    /// By [`BackendId`].
    backends: Vec<BackendState>,
}

/// Closes a backend's client for good (no more reconnects).
type Closer = Box<dyn Fn() + Send + Sync>;

struct BackendState {
    /// The current connection, between the client's `on_connect` and
    /// `on_disconnect`.
    session: Option<Session>,
    /// Closes the client that keeps the connection, while there is one.
    closer: Option<Closer>,
}

/// A switchboard [`Action`] with the connection it goes to.
enum Effect<S> {
    /// Sends `message` to this client.
    Send(S, Message),
    /// Closes this client.
    Close(S, CloseCode, &'static str),
    /// Sends `message` from `client` to `backend` over `session`; if that
    /// fails (or there is no session), [`Core::forward_failed`] says what
    /// to tell the client.
    Forward {
        session: Option<S>,
        backend: BackendId,
        client: ClientId,
        message: Message,
    },
}

/// The effects of one input, in order. Most inputs have one (a client's
/// message: its forward, or one reply), which is kept inline, so that a
/// forwarded message allocates nothing; more (handshake replies, a
/// backend's push to many clients) spill into a queue.
struct Effects<S> {
    first: Option<Effect<S>>,
    rest: VecDeque<Effect<S>>,
}

impl<S> Effects<S> {
    fn new() -> Self {
        Self {
            first: None,
            rest: VecDeque::new(),
        }
    }

    /// Adds `effect` after every other.
    fn push(&mut self, effect: Effect<S>) {
        if self.first.is_none() && self.rest.is_empty() {
            self.first = Some(effect);
        } else {
            self.rest.push_back(effect);
        }
    }

    /// Takes the earliest effect.
    fn pop(&mut self) -> Option<Effect<S>> {
        self.first.take().or_else(|| self.rest.pop_front())
    }

    /// Adds every effect of `other` after these, in order.
    fn append(&mut self, mut other: Self) {
        while let Some(effect) = other.pop() {
            self.push(effect);
        }
    }
}

/// What a client's message decided, for the client's handler to carry out
/// in order: the one place that decides it, whatever the runtime. The
/// handler only does the sends, waiting while the client or the backend is
/// backpressured:
///
/// ```text
/// while let Some((to, message)) = sends.poll_send() {
///     if to.send(message) /* .await */ .is_err() { sends.handle_send_failed(); }
/// }
/// ```
///
/// Closes are done here (they do not wait). A forward that fails, or has
/// no backend connection to go to, is handed back to the switchboard,
/// whose answer (`backend unavailable`) joins the queue; a failed send to a
/// client needs nothing (the client is going).
pub(super) struct ClientSends<'a> {
    core: &'a Core,
    effects: Effects<Session>,
    /// The backend and client of the forward last handed out by
    /// [`poll_send`](Self::poll_send), if it was one.
    forward: Option<(BackendId, ClientId)>,
}

impl ClientSends<'_> {
    /// The next message to send and where to, or `None` when the message
    /// is dealt with.
    pub(super) fn poll_send(&mut self) -> Option<(Session, Message)> {
        self.forward = None;
        while let Some(effect) = self.effects.pop() {
            match effect {
                Effect::Send(client, message) => return Some((client, message)),
                Effect::Close(client, code, reason) => client.close_with(code, reason),
                Effect::Forward {
                    session: Some(session),
                    backend,
                    client,
                    message,
                } => {
                    self.forward = Some((backend, client));
                    return Some((session, message));
                }
                Effect::Forward {
                    session: None,
                    backend,
                    client,
                    ..
                } => self
                    .effects
                    .append(self.core.forward_failed(backend, client)),
            }
        }
        None
    }

    /// The send last handed out by [`poll_send`](Self::poll_send) failed.
    pub(super) fn handle_send_failed(&mut self) {
        if let Some((backend, client)) = self.forward.take() {
            self.effects
                .append(self.core.forward_failed(backend, client));
        }
    }
}

/// How to reach one backend: what the adapters' clients connect with.
struct Dial {
    id: BackendId,
    endpoint: Endpoint,
    options: ClientOptions,
    ws: WsOptions,
    framing: Framing,
    /// The waits between its attempts.
    backoff: Backoff,
}

impl Dial {
    /// The connection ended or the attempt failed: how long to wait before
    /// the next attempt, or `None` to give up (the backend stays down).
    fn retry_delay(&mut self) -> Option<Duration> {
        match self.backoff.disconnected(Instant::now()) {
            BackoffStep::Retry { delay, .. } => Some(delay),
            BackoffStep::GiveUp { .. } => None,
        }
    }
}

impl Core {
    /// Checks the options; the adapters then bind and start their backend
    /// loops.
    fn new(config: GatewayConfig, options: GatewayOptions) -> io::Result<Self> {
        let invalid =
            |e: &dyn std::error::Error| io::Error::new(io::ErrorKind::InvalidInput, e.to_string());
        options.reconnect.validate().map_err(|e| invalid(&e))?;
        let route_config = ServerConfig {
            handshake_timeout: options.handshake_timeout,
            ..ServerConfig::new(config.route_table())
        };
        let backends = config
            .endpoints()
            .iter()
            .map(|endpoint| {
                let protocol = match endpoint.protocol {
                    Protocol::Ws => BackendProtocol::WebSocket,
                    Protocol::Tcp => BackendProtocol::Tcp,
                };
                BackendConfig::new(endpoint.name.clone(), protocol)
            })
            .collect();
        let switchboard =
            Switchboard::new(Arc::new(route_config), backends).map_err(|e| invalid(&e))?;
        let count = config.endpoints().len();
        let state = State {
            switchboard,
            clients: HashMap::new(),
            backends: (0..count)
                .map(|_| BackendState {
                    session: None,
                    closer: None,
                })
                .collect(),
        };
        Ok(Self {
            config,
            options,
            state: Mutex::new(state),
            connected: (0..count).map(|_| Watched::new()).collect(),
            stopped: Watched::new(),
            loops: Arc::new(Loops::new()),
            epoch: Instant::now(),
        })
    }

    // ---- status, for the handles ----

    fn backends(&self) -> Vec<BackendStatus> {
        self.config
            .endpoints()
            .iter()
            .zip(&self.connected)
            .map(|(endpoint, connected)| BackendStatus {
                route: endpoint.name.clone(),
                url: endpoint.url(),
                connected: connected.get(),
            })
            .collect()
    }

    /// Whether `route`'s backend is connected, to wait on; `None` for a
    /// route not in the file.
    fn connected(&self, route: &str) -> Option<&Watched> {
        let i = self
            .config
            .endpoints()
            .iter()
            .position(|e| e.name == route)?;
        self.connected.get(i)
    }

    fn client_count(&self) -> usize {
        lock(&self.state).switchboard.client_count()
    }

    fn dropped_replies(&self) -> u64 {
        lock(&self.state).switchboard.dropped_replies()
    }

    /// Stops reconnecting and closes every backend client.
    fn stop(&self) {
        self.stopped.set(true);
        let closers: Vec<Closer> = lock(&self.state)
            .backends
            .iter_mut()
            .filter_map(|backend| backend.closer.take())
            .collect();
        for close in closers {
            close();
        }
    }

    // ---- backends ----

    /// How to connect each route (with a fresh backoff for its attempts),
    /// and the guard its loop holds while it runs.
    ///
    /// The adapters' clients do not reconnect by themselves: the backend
    /// loop makes a new client after each drop, so that every wait between
    /// attempts is one that shutdown can cut short, the same on every
    /// runtime.
    fn dials(&self) -> Vec<(Dial, LoopGuard)> {
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let options = ClientOptions::default().with_connect_timeout(self.options.connect_timeout);
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
                    id: BackendId(i),
                    endpoint: endpoint.clone(),
                    options: if endpoint.tls {
                        options.clone().with_tls(self.options.backend_tls.clone())
                    } else {
                        options.clone()
                    },
                    ws: self.options.ws_options(),
                    framing: Framing::LengthPrefixWith(framing.clone()),
                    backoff,
                };
                Some((dial, self.loops.start()))
            })
            .collect()
    }

    /// A client of `dial` connected: its waits start over, and `close` is
    /// kept to stop it at shutdown; `false` (and nothing kept) when the
    /// gateway is already stopping: close it.
    #[must_use]
    fn attach_client(&self, dial: &mut Dial, close: Closer) -> bool {
        dial.backoff.connected(Instant::now());
        let backend = dial.id;
        let mut state = lock(&self.state);
        if self.stopped.get() {
            return false;
        }
        let Some(backend) = state.backends.get_mut(backend.0) else {
            return false;
        };
        backend.closer = Some(close);
        true
    }

    /// `backend`'s client stopped (its connection ended, or it was closed).
    fn detach_client(&self, backend: BackendId) {
        if let Some(backend) = lock(&self.state).backends.get_mut(backend.0) {
            backend.closer = None;
        }
    }

    /// A backend connection is up.
    fn backend_up(&self, backend: BackendId, session: &Session) {
        {
            let mut state = lock(&self.state);
            let Some(slot) = state.backends.get_mut(backend.0) else {
                return;
            };
            slot.session = Some(session.clone());
            // In range: checked above.
            let _ = state.switchboard.handle_backend_up(backend);
        }
        if let Some(connected) = self.connected.get(backend.0) {
            connected.set(true);
        }
    }

    /// A message from `backend`: to one client, or pushed to every client
    /// that announced the route.
    fn backend_message(&self, backend: BackendId, message: Message) {
        let effects = self.feed(|switchboard| {
            // In range: the id came from `dials`.
            let _ = switchboard.handle_backend_message(backend, message);
        });
        offer_all(effects);
    }

    /// A backend connection ended.
    fn backend_down(&self, backend: BackendId) {
        // Refuse further forwards first, then tell the clients that had
        // talked to it, then let observers see the backend down.
        let effects = {
            let mut state = lock(&self.state);
            if let Some(slot) = state.backends.get_mut(backend.0) {
                slot.session = None;
            }
            let _ = state.switchboard.handle_backend_down(backend);
            state.effects()
        };
        offer_all(effects);
        if let Some(connected) = self.connected.get(backend.0) {
            connected.set(false);
        }
    }

    // ---- clients ----

    /// A client connected: its handshake starts. The deadline at which the
    /// adapter calls [`timeout`](Self::timeout), if any.
    fn client_connected(&self, session: &Session) -> Option<Instant> {
        let id = session.id().get();
        let (deadline, effects) = {
            let mut state = lock(&self.state);
            state.clients.insert(id, session.clone());
            let deadline = state
                .switchboard
                .handle_client_connect(ClientId(id), Instant::now())
                .ok()
                .flatten();
            (deadline, state.effects())
        };
        offer_all(effects);
        deadline
    }

    /// One message from client `id`: what to do, for the client's handler
    /// to carry out (waiting while the client is backpressured).
    ///
    /// The clock is read only while a handshake deadline is pending: the
    /// switchboard compares `now` with handshake deadlines and nothing
    /// else, so with none pending (every client past its handshake, the
    /// steady state) any instant gives the same answer, and a forwarded
    /// message costs no clock read.
    fn client_message(&self, id: u64, message: Message) -> ClientSends<'_> {
        let effects = self.feed(|switchboard| {
            let now = match switchboard.poll_timeout() {
                Some(_) => Instant::now(),
                None => self.epoch,
            };
            // Known: the handler calls this between connect and disconnect.
            let _ = switchboard.handle_client_message(ClientId(id), message, now);
        });
        ClientSends {
            core: self,
            effects,
            forward: None,
        }
    }

    /// `backend` could not take the message [`Effect::Forward`] carried
    /// from `client`: what to tell the client.
    fn forward_failed(&self, backend: BackendId, client: ClientId) -> Effects<Session> {
        self.feed(|switchboard| {
            let _ = switchboard.handle_forward_failed(backend, client);
        })
    }

    /// Client `id` disconnected.
    fn client_disconnected(&self, id: u64) {
        let mut state = lock(&self.state);
        state.clients.remove(&id);
        let _ = state.switchboard.handle_client_disconnect(ClientId(id));
    }

    /// Fails the handshakes whose deadline has passed by `now`; the next
    /// deadline, if a handshake is still running.
    fn timeout(&self, now: Instant) -> Option<Instant> {
        let (next, effects) = {
            let mut state = lock(&self.state);
            state.switchboard.handle_timeout(now);
            (state.switchboard.poll_timeout(), state.effects())
        };
        offer_all(effects);
        next
    }

    /// Gives `input` the switchboard; what it decided.
    fn feed(&self, input: impl FnOnce(&mut Switchboard)) -> Effects<Session> {
        let mut state = lock(&self.state);
        input(&mut state.switchboard);
        state.effects()
    }
}

impl State {
    /// The switchboard's actions, with the connections they go to. A client
    /// is in `clients` exactly while the switchboard knows it, so every
    /// action for one finds it.
    fn effects(&mut self) -> Effects<Session> {
        let mut out = Effects::new();
        while let Some(action) = self.switchboard.poll_action() {
            let effect = match action {
                Action::ToClient { client, message } => self
                    .clients
                    .get(&client.0)
                    .map(|session| Effect::Send(session.clone(), message)),
                Action::Close {
                    client,
                    code,
                    reason,
                } => self
                    .clients
                    .get(&client.0)
                    .map(|session| Effect::Close(session.clone(), CloseCode::from(code), reason)),
                Action::ToBackend {
                    backend,
                    client,
                    message,
                } => Some(Effect::Forward {
                    session: self.backends.get(backend.0).and_then(|b| b.session.clone()),
                    backend,
                    client,
                    message,
                }),
            };
            if let Some(effect) = effect {
                out.push(effect);
            }
        }
        out
    }
}

/// Carries out what a backend event or a timeout decided: every message is
/// queued without waiting (a client too slow to take it is closed), so one
/// slow client never stalls the others. Only a client's own messages are
/// forwarded to backends, by its handler: there are no forwards here.
fn offer_all(mut effects: Effects<Session>) {
    while let Some(effect) = effects.pop() {
        match effect {
            Effect::Send(session, message) => offer(&session, message),
            Effect::Close(session, code, reason) => session.close_with(code, reason),
            Effect::Forward { .. } => {}
        }
    }
}

/// Queues without waiting; a client too slow to take it is closed, unless
/// its policy drops the message (counted in the hub's metrics) instead.
fn offer(session: &Session, message: Message) {
    match session.try_send(message) {
        SendOutcome::Queued | SendOutcome::Dropped(_) | SendOutcome::Closed(_) => {}
        _ => session.close_with(CloseCode::POLICY_VIOLATION, "slow consumer"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The switchboard's actions after a client connects and sends
    /// `messages`: the handshake at `start`, the rest at `later(now)` for
    /// each message (`now`: the time since `start` the message came).
    fn run(timeout: Option<Duration>, later: impl Fn(Instant) -> Instant) -> Vec<Action> {
        let config = GatewayConfig::parse("[orders]\nname = orders\nport = 1\nprotocol = tcp\n")
            .expect("config");
        let route_config = ServerConfig {
            handshake_timeout: timeout,
            ..ServerConfig::new(config.route_table())
        };
        let backend = BackendConfig::new("orders", BackendProtocol::Tcp);
        let mut board = Switchboard::new(Arc::new(route_config), vec![backend]).expect("board");
        let start = Instant::now();
        let client = ClientId(1);
        board.handle_client_connect(client, start).expect("connect");
        board.handle_backend_up(BackendId(0)).expect("up");
        let messages = [
            r#"{"event":"SMHandshake","data":"SYN"}"#,
            r#"{"event":"SMHandshake","data":"ACK"}"#,
            r#"{"event":"SMHandshake","data":"orders"}"#,
            r#"{"event":"SMHandshakeEnd"}"#,
            "ROUTENAME=orders\nbuy",
            "ROUTENAME=video\nplay",
            "no header",
        ];
        for text in messages {
            // What `Core::client_message` passes: the clock only while a
            // deadline is pending.
            let now = match board.poll_timeout() {
                Some(_) => start,
                None => later(start),
            };
            board
                .handle_client_message(client, Message::from(text), now)
                .expect("known client");
        }
        std::iter::from_fn(|| board.poll_action()).collect()
    }

    /// Pushes and pops interleaved every way up to eight operations give
    /// effects in the order they were pushed, as a plain queue does.
    #[test]
    fn effects_keep_their_order_however_pushes_and_pops_interleave() {
        for len in 0..=8u32 {
            for ops in 0..(1u32 << len) {
                let (mut effects, mut model) = (Effects::new(), VecDeque::new());
                for (n, op) in (0..len).map(|i| (i, ops >> i & 1)).collect::<Vec<_>>() {
                    if op == 1 {
                        effects.push(Effect::Send(n, Message::from("")));
                        model.push_back(n);
                    } else {
                        let popped = effects.pop().map(|e| match e {
                            Effect::Send(n, _) => n,
                            _ => unreachable!("only sends are pushed"),
                        });
                        assert_eq!(popped, model.pop_front(), "ops {ops:b}");
                    }
                }
                let mut rest = Effects::new();
                rest.append(effects);
                let drained: Vec<u32> = std::iter::from_fn(|| rest.pop())
                    .map(|e| match e {
                        Effect::Send(n, _) => n,
                        _ => unreachable!("only sends are pushed"),
                    })
                    .collect();
                assert_eq!(drained, Vec::from(model), "ops {ops:b}");
            }
        }
    }

    /// `Core::client_message` reads no clock while no handshake deadline is
    /// pending, and hands the switchboard its epoch instead: that must give
    /// the same answers as the real time, before the handshake ends (when
    /// it has no deadline) and after.
    #[test]
    fn without_a_pending_deadline_the_answer_does_not_depend_on_now() {
        for timeout in [None, Some(Duration::from_secs(10))] {
            let on_time = run(timeout, |start| start);
            let hours_late = run(timeout, |start| start + Duration::from_secs(3600));
            assert_eq!(on_time, hours_late, "{timeout:?}");
            // The forward, the unknown route and the missing header were
            // all answered.
            assert!(on_time.len() >= 3, "{on_time:?}");
        }
    }
}
