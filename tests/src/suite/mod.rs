//! The cross-adapter suite: one scenario list, run on every adapter and on
//! every (server, client) pair of adapters, over real loopback sockets.
//!
//! The pieces:
//!
//! - [`Adapter`]: what every adapter implements once ([`on_std`], and
//!   [`on_async`] for storm-tokio and storm-smol alike, generic over the
//!   storm-async runtime): start a server with a [`ServerSpec`],
//!   connect a client with a [`ClientSpec`], each handing back a small
//!   object-safe driver ([`ServerDriver`], [`ClientDriver`]). Each adapter
//!   drives its own API its own way (blocking on its runtime for tokio and
//!   smol, threads for std); what its handlers see goes through one
//!   [`Reactor`] into a channel of [`Event`]s.
//! - [`Server`] and [`Client`]: the blocking test handles the scenarios use,
//!   whatever the adapter. Every wait is bounded by [`WAIT`] and waits on
//!   handler events; only [`eventually`] polls, for the few states no event
//!   announces (byte counters, a released permit).
//! - [`raw`]: peers written by hand on `std::net` (a WebSocket client that
//!   never reads or never pongs, malformed frames, a server that never
//!   answers pings) for what no well-behaved adapter would do.
//! - [`scenarios`]: the scenarios, each a function generic over its server
//!   and client adapters (`fn ws_echo<S: Adapter, C: Adapter>()`).
//!
//! Adding an adapter: another storm-async runtime needs only an
//! [`on_async::Executor`] impl and a type alias in [`on_async`]; any other
//! adapter one file with one `impl Adapter` (model it on [`on_std`]), its
//! `pub mod` line here and its crate in `tests/Cargo.toml`, and one line
//! in the `adapters` list of `tests/tests/suite.rs`, which then runs every
//! scenario on every pair it makes with the others.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use storm_host::hub::{BroadcastReport, Hub, HubMetrics, SessionId};
use storm_host::link::CloseReason;
use storm_host::options::{ClientOptions, ServerOptions, WsOptions};
use storm_host::session::{SendError, Session};
use storm_host::setup::{Decision, UpgradeInfo};
use storm_proto::Message;
use storm_proto::framing::Framing;

pub mod on_async;
pub mod on_std;
pub mod pki;
pub mod raw;
pub mod scenarios;

/// The most any scenario waits for one event.
pub const WAIT: Duration = Duration::from_secs(10);

/// An adapter, as the suite drives it. Implemented once per adapter.
pub trait Adapter: 'static {
    /// Its short name, as it appears in test names (`tokio`, `std`).
    const NAME: &'static str;
    /// Whether it does TLS; TLS scenarios are skipped (and say so) for
    /// pairs where either side does not.
    const TLS: bool;

    /// Binds a server as `spec` says and starts serving; what its handler
    /// sees goes to `reactor` (after [`Reactor::attach`] with the server's
    /// hub, so that [`OnMessage::Relay`] can broadcast).
    ///
    /// # Errors
    ///
    /// The adapter's bind error.
    fn start_server(spec: &ServerSpec, reactor: Reactor) -> io::Result<Box<dyn ServerDriver>>;

    /// Connects a client as `spec` says (bounded by `spec.options.connect_timeout`);
    /// what its handler sees goes to `reactor`.
    ///
    /// # Errors
    ///
    /// The adapter's connect error, as text.
    fn connect(spec: &ClientSpec, reactor: Reactor) -> Result<Box<dyn ClientDriver>, String>;
}

/// A running server, as an adapter hands it to the harness.
pub trait ServerDriver: Send {
    /// The address it listens on.
    fn local_addr(&self) -> SocketAddr;
    /// The connected sessions (`ServerHandle::sessions`).
    fn sessions(&self) -> Vec<Session>;
    /// The server's hub (`ServerHandle::hub`): groups, broadcast, metrics.
    fn hub(&self) -> Hub;
    /// Sends to one session with the adapter's own `Session::send` (which
    /// waits, in its runtime's way, under the `Wait` policy).
    ///
    /// # Errors
    ///
    /// The session's [`SendError`]; [`SendError::Closed`] if it is gone.
    fn send(&self, session: SessionId, message: Message) -> Result<(), SendError>;
    /// `ServerHandle::shutdown(timeout)`, then waits for `serve` to return
    /// (bounded by [`WAIT`]); `true` if it returned `Ok`.
    fn shutdown(&mut self, timeout: Duration) -> bool;
}

/// A connected client, as an adapter hands it to the harness.
pub trait ClientDriver: Send {
    /// `Client::send` (waiting under the `Wait` policy).
    ///
    /// # Errors
    ///
    /// The adapter's `ClientError`, as text.
    fn send(&self, message: Message) -> Result<(), String>;
    /// The current connection's session (`None` between reconnects).
    fn session(&self) -> Option<Session>;
    /// `Client::close`: graceful, and no more reconnects.
    fn close(&self);
    /// Waits up to `timeout` for the client to stop for good; `true` if it
    /// did.
    fn wait_closed(&self, timeout: Duration) -> bool;
}

/// What a server speaks.
#[derive(Debug, Clone)]
pub enum Protocol {
    /// WebSocket (`WsServer` / `WsClient`).
    Ws(WsOptions),
    /// Framed TCP (`TcpServer` / `TcpClient`).
    Tcp(Framing),
}

/// What a server's handler does with a message (besides recording it).
#[derive(Debug, Clone, Default)]
pub enum OnMessage {
    /// Nothing.
    #[default]
    Record,
    /// Sends it back.
    Echo,
    /// Sends it back, then closes gracefully.
    EchoThenClose,
    /// Broadcasts it to this group, excluding the sender.
    Relay(String),
    /// Sends text back as `TAG:TEXT`, TAG the `String` the server's
    /// upgrade hook attached to the session (`-` when none): what a
    /// handler reads of its session's state.
    EchoTagged,
}

/// An upgrade decision, the same function on every adapter.
pub type Decide = Arc<dyn Fn(&UpgradeInfo) -> Decision + Send + Sync>;

/// How a WebSocket server decides on upgrade requests.
#[derive(Clone)]
pub enum UpgradeSpec {
    /// This function decides, at once (the async adapters hand its
    /// decision back as a ready future).
    Decide(Decide),
    /// A hook that does not decide in time: on tokio and smol its future
    /// never completes; on std it blocks its thread this long, then
    /// accepts.
    Stall(Duration),
}

impl fmt::Debug for UpgradeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Decide(_) => f.write_str("Decide(..)"),
            Self::Stall(hold) => write!(f, "Stall({hold:?})"),
        }
    }
}

/// A server's behaviour, as data, so every adapter's handler does the same.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// A group every session joins when it connects.
    pub join: Option<String>,
    /// What to do with each message.
    pub on_message: OnMessage,
}

/// Everything a server is started with.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// WebSocket or framed TCP.
    pub protocol: Protocol,
    /// The shared server options (address, limits, heartbeat, TLS, …).
    pub options: ServerOptions,
    /// What the handler does.
    pub behaviour: Behaviour,
    /// The upgrade hook of a WebSocket server, if any.
    pub upgrade: Option<UpgradeSpec>,
}

impl ServerSpec {
    /// A WebSocket server with default options that does `on_message`.
    #[must_use]
    pub fn ws(on_message: OnMessage) -> Self {
        Self {
            protocol: Protocol::Ws(WsOptions::default()),
            options: ServerOptions::default(),
            behaviour: Behaviour {
                join: None,
                on_message,
            },
            upgrade: None,
        }
    }

    /// A framed TCP server with default options that does `on_message`.
    #[must_use]
    pub fn tcp(framing: Framing, on_message: OnMessage) -> Self {
        Self {
            protocol: Protocol::Tcp(framing),
            ..Self::ws(on_message)
        }
    }
}

/// Everything a client is connected with.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    /// `ws://…`/`wss://…` URL (WebSocket) or `host:port` (framed TCP).
    pub target: String,
    /// WebSocket or framed TCP; must match the server.
    pub protocol: Protocol,
    /// The shared client options (reconnect, heartbeat, TLS, …).
    pub options: ClientOptions,
}

impl ClientSpec {
    /// A client for `server`, speaking what it speaks, with default options.
    #[must_use]
    pub fn to(server: &Server) -> Self {
        let (target, protocol) = match &server.spec.protocol {
            Protocol::Ws(_) => {
                let scheme = if server.spec.options.tls.is_some() {
                    "wss"
                } else {
                    "ws"
                };
                (
                    format!("{scheme}://{}/", server.local_addr()),
                    Protocol::Ws(WsOptions::default()),
                )
            }
            Protocol::Tcp(framing) => (
                server.local_addr().to_string(),
                Protocol::Tcp(framing.clone()),
            ),
        };
        Self {
            target,
            protocol,
            options: ClientOptions::default(),
        }
    }
}

/// What a handler saw, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `on_connect`.
    Connect(SessionId),
    /// `on_message`.
    Message(SessionId, Message),
    /// `on_disconnect`.
    Disconnect(SessionId, CloseReason),
    /// `on_reconnecting` (the attempt number).
    Reconnecting(u32),
    /// `on_error`, as text.
    Error(String),
}

/// The one handler logic every adapter's handler forwards to: records what
/// happens and says what to do, per the server's [`Behaviour`]. Adapters
/// only add their own way of waiting on a send.
#[derive(Clone)]
pub struct Reactor {
    events: Sender<Event>,
    behaviour: Behaviour,
    hub: Option<Hub>,
}

impl fmt::Debug for Reactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reactor")
            .field("behaviour", &self.behaviour)
            .finish_non_exhaustive()
    }
}

impl Reactor {
    fn new(behaviour: Behaviour) -> (Self, Receiver<Event>) {
        let (events, rx) = mpsc::channel();
        (
            Self {
                events,
                behaviour,
                hub: None,
            },
            rx,
        )
    }

    /// The same reactor, able to broadcast through `hub` (a server's).
    #[must_use]
    pub fn attach(mut self, hub: Hub) -> Self {
        self.hub = Some(hub);
        self
    }

    fn record(&self, event: Event) {
        // The test may have finished with this side already.
        let _ = self.events.send(event);
    }

    /// `on_connect`: joins the behaviour's group, records.
    pub fn connected(&self, session: &Session) {
        if let Some(group) = &self.behaviour.join {
            let _ = session.join(group);
        }
        self.record(Event::Connect(session.id()));
    }

    /// `on_message`: records, relays; the message to send back, if any
    /// (send it, then call [`replied`](Self::replied)).
    #[must_use]
    pub fn received(&self, session: &Session, message: Message) -> Option<Message> {
        self.record(Event::Message(session.id(), message.clone()));
        match &self.behaviour.on_message {
            OnMessage::Record => None,
            OnMessage::Echo | OnMessage::EchoThenClose => Some(message),
            OnMessage::EchoTagged => {
                let tag = session.attached::<String>().map_or("-", String::as_str);
                let text = String::from_utf8_lossy(message.as_bytes());
                Some(Message::from(format!("{tag}:{text}").as_str()))
            }
            OnMessage::Relay(group) => {
                if let Some(hub) = &self.hub {
                    let _ = hub.broadcast_group(group, &message, Some(session.id()));
                }
                None
            }
        }
    }

    /// After the reply of [`received`](Self::received) was sent.
    pub fn replied(&self, session: &Session) {
        if matches!(self.behaviour.on_message, OnMessage::EchoThenClose) {
            session.close();
        }
    }

    /// `on_disconnect`.
    pub fn disconnected(&self, session: &Session, reason: &CloseReason) {
        self.record(Event::Disconnect(session.id(), reason.clone()));
    }

    /// `on_error`.
    pub fn error(&self, error: &(dyn std::error::Error + Send + Sync + 'static)) {
        self.record(Event::Error(error.to_string()));
    }

    /// `on_reconnecting`.
    pub fn reconnecting(&self, attempt: u32) {
        self.record(Event::Reconnecting(attempt));
    }
}

/// The events a handler recorded, with bounded waits.
#[derive(Debug)]
pub struct Events(Receiver<Event>);

impl Events {
    /// The next event, within [`WAIT`].
    ///
    /// # Panics
    ///
    /// When nothing arrives in time.
    #[must_use]
    pub fn next(&self) -> Event {
        match self.0.recv_timeout(WAIT) {
            Ok(event) => event,
            Err(RecvTimeoutError::Timeout) => panic!("no event within {WAIT:?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("the handler is gone"),
        }
    }

    /// The next event within `timeout`, if any.
    #[must_use]
    pub fn next_within(&self, timeout: Duration) -> Option<Event> {
        self.0.recv_timeout(timeout).ok()
    }

    /// An event that already arrived, if any (does not wait).
    #[must_use]
    pub fn try_next(&self) -> Option<Event> {
        self.0.try_recv().ok()
    }

    /// The next connect, skipping other events.
    pub fn connect(&self) -> SessionId {
        loop {
            if let Event::Connect(id) = self.next() {
                return id;
            }
        }
    }

    /// The next message, skipping other events.
    #[must_use]
    pub fn message(&self) -> (SessionId, Message) {
        loop {
            if let Event::Message(id, message) = self.next() {
                return (id, message);
            }
        }
    }

    /// The next disconnect, skipping other events.
    #[must_use]
    pub fn disconnect(&self) -> (SessionId, CloseReason) {
        loop {
            if let Event::Disconnect(id, reason) = self.next() {
                return (id, reason);
            }
        }
    }
}

/// A running server of any adapter, with what its handler saw.
pub struct Server {
    driver: Box<dyn ServerDriver>,
    /// What the server's handler saw.
    pub events: Events,
    spec: ServerSpec,
    adapter: &'static str,
    stopped: bool,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("adapter", &self.adapter)
            .field("addr", &self.local_addr())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Starts a server of adapter `A`.
    ///
    /// # Panics
    ///
    /// When it cannot bind.
    #[must_use]
    pub fn start<A: Adapter>(spec: ServerSpec) -> Self {
        let (reactor, rx) = Reactor::new(spec.behaviour.clone());
        let driver = A::start_server(&spec, reactor)
            .unwrap_or_else(|e| panic!("{} server: bind failed: {e}", A::NAME));
        Self {
            driver,
            events: Events(rx),
            spec,
            adapter: A::NAME,
            stopped: false,
        }
    }

    /// What it was started with.
    #[must_use]
    pub fn spec(&self) -> &ServerSpec {
        &self.spec
    }

    /// The address it listens on.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.driver.local_addr()
    }

    /// The connected sessions.
    #[must_use]
    pub fn sessions(&self) -> Vec<Session> {
        self.driver.sessions()
    }

    /// One session by id.
    ///
    /// # Panics
    ///
    /// When no such session is connected.
    #[must_use]
    pub fn session(&self, id: SessionId) -> Session {
        self.sessions()
            .into_iter()
            .find(|s| s.id() == id)
            .unwrap_or_else(|| panic!("session {id:?} is not connected"))
    }

    /// The hub: groups, broadcast, metrics.
    #[must_use]
    pub fn hub(&self) -> Hub {
        self.driver.hub()
    }

    /// The hub's metrics now.
    #[must_use]
    pub fn metrics(&self) -> HubMetrics {
        self.hub().metrics(Instant::now())
    }

    /// Broadcasts to every session but `exclude`.
    pub fn broadcast(
        &self,
        message: impl Into<Message>,
        exclude: Option<SessionId>,
    ) -> BroadcastReport {
        self.hub().broadcast(&message.into(), exclude)
    }

    /// Broadcasts to `group` but `exclude`.
    pub fn broadcast_group(
        &self,
        group: &str,
        message: impl Into<Message>,
        exclude: Option<SessionId>,
    ) -> BroadcastReport {
        self.hub().broadcast_group(group, &message.into(), exclude)
    }

    /// Sends to one session with the adapter's waiting send.
    ///
    /// # Errors
    ///
    /// The session's [`SendError`].
    pub fn send(&self, session: SessionId, message: impl Into<Message>) -> Result<(), SendError> {
        self.driver.send(session, message.into())
    }

    /// Waits for `n` more connects; their session ids, in order.
    #[must_use]
    pub fn connects(&self, n: usize) -> Vec<SessionId> {
        (0..n).map(|_| self.events.connect()).collect()
    }

    /// Shuts down with `timeout` for graceful closes; asserts that it
    /// returned, and cleanly, within [`WAIT`] past `timeout`.
    ///
    /// # Panics
    ///
    /// When it did not.
    pub fn shutdown(&mut self, timeout: Duration) {
        self.stopped = true;
        let started = Instant::now();
        assert!(
            self.driver.shutdown(timeout),
            "{} server: serve ended with an error",
            self.adapter
        );
        assert!(
            started.elapsed() < timeout + WAIT,
            "{} server: shutdown took {:?}",
            self.adapter,
            started.elapsed()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.stopped {
            // Frees the port and the threads even when a scenario failed.
            let _ = self.driver.shutdown(Duration::from_millis(100));
        }
    }
}

/// A connected client of any adapter, with what its handler saw.
pub struct Client {
    driver: Box<dyn ClientDriver>,
    /// What the client's handler saw.
    pub events: Events,
    adapter: &'static str,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("adapter", &self.adapter)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects a client of adapter `A`.
    ///
    /// # Errors
    ///
    /// The adapter's connect error, as text.
    pub fn try_connect<A: Adapter>(spec: &ClientSpec) -> Result<Self, String> {
        let (reactor, rx) = Reactor::new(Behaviour::default());
        let driver = A::connect(spec, reactor)?;
        Ok(Self {
            driver,
            events: Events(rx),
            adapter: A::NAME,
        })
    }

    /// Connects a client of adapter `A` and waits for its `on_connect`.
    ///
    /// # Panics
    ///
    /// When it cannot connect.
    #[must_use]
    pub fn connect<A: Adapter>(spec: &ClientSpec) -> Self {
        let client = Self::try_connect::<A>(spec)
            .unwrap_or_else(|e| panic!("{} client: connect failed: {e}", A::NAME));
        let _ = client.events.connect();
        client
    }

    /// Sends, waiting under the `Wait` policy.
    ///
    /// # Panics
    ///
    /// When the send fails.
    pub fn send(&self, message: impl Into<Message>) {
        if let Err(e) = self.driver.send(message.into()) {
            panic!("{} client: send failed: {e}", self.adapter);
        }
    }

    /// Sends; the error as text.
    ///
    /// # Errors
    ///
    /// The adapter's `ClientError`, as text.
    pub fn try_send(&self, message: impl Into<Message>) -> Result<(), String> {
        self.driver.send(message.into())
    }

    /// The next message received.
    #[must_use]
    pub fn recv(&self) -> Message {
        self.events.message().1
    }

    /// The next disconnect's reason.
    #[must_use]
    pub fn disconnect(&self) -> CloseReason {
        self.events.disconnect().1
    }

    /// The current session.
    #[must_use]
    pub fn session(&self) -> Option<Session> {
        self.driver.session()
    }

    /// Closes gracefully, no more reconnects.
    pub fn close(&self) {
        self.driver.close();
    }

    /// Aborts the current connection at once (no close frame).
    pub fn abort(&self) {
        if let Some(session) = self.session() {
            session.abort();
        }
    }

    /// Asserts the client stops for good within [`WAIT`].
    ///
    /// # Panics
    ///
    /// When it does not.
    pub fn assert_closed(&self) {
        assert!(
            self.driver.wait_closed(WAIT),
            "{} client: still running after {WAIT:?}",
            self.adapter
        );
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.driver.close();
    }
}

/// Polls `condition` until it holds, for at most [`WAIT`]: for the few
/// states no event announces (a registry emptied after `on_disconnect`).
///
/// # Panics
///
/// When it does not hold in time.
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "not in time: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}
