//! The gateway's decisions, without I/O: which phase each client is in,
//! where its messages go, which client a backend's message is for, and who
//! is told when a backend drops.
//!
//! A [`Switchboard`] sits between the clients of one gateway endpoint (each
//! running the [route handshake](super) and then sending
//! [route-addressed](super::envelope) messages) and one backend connection
//! per route (shared by every client through the
//! [`CLIENT=` header](super::backend)). The adapter owns the sockets, the
//! timers and the lock, if it needs one; it feeds the switchboard what
//! happens (`handle_*`, with the time where it matters) and carries out the
//! [`Action`]s it then drains from [`poll_action`](Switchboard::poll_action):
//! messages to send to a client or a backend, clients to close. Clients and
//! backends are named by plain ids ([`ClientId`], [`BackendId`]); the
//! adapter keeps the connection behind each id.
//!
//! # Clients
//!
//! A client connects ([`handle_client_connect`]) and runs the route
//! handshake: its messages are answered with the handshake's texts, and a
//! handshake that fails, or is still running at its deadline
//! ([`handle_timeout`]), ends with a [`Action::Close`]. After the
//! handshake, every message names a route: one the switchboard cannot route
//! is answered with an `SMError` text ([`RouteError::error_reply`](super::RouteError::error_reply)); one for
//! a backend that is down is answered with
//! [`BACKEND_UNAVAILABLE`]; one for a
//! backend that is up is forwarded to it ([`Action::ToBackend`]) with the
//! client's id in its header.
//!
//! Inputs from a client ([`handle_client_message`],
//! [`handle_forward_failed`]) only produce actions for that client and for
//! backends, so the adapter may carry them out in that client's task and
//! wait while the client's connection is backpressured. Inputs from a
//! backend and timeouts produce actions for any client: the adapter should
//! queue those without waiting, so that one slow client does not stall the
//! others.
//!
//! # Backends
//!
//! A backend is down until [`handle_backend_up`]. Its messages go to the
//! client their header names, if that client finished its handshake, or to
//! every client that announced the route (`CLIENT=*`); a message without a
//! valid header, or for a client that is gone or not ready, is dropped and
//! counted ([`dropped_replies`](Switchboard::dropped_replies)). When the
//! connection drops ([`handle_backend_down`]), every client that sent the
//! route a message while it was up, and is still connected, is told
//! [`BACKEND_DISCONNECTED`]: the
//! answer it may be waiting for will not come.
//!
//! # Text and binary
//!
//! A client's message keeps its kind both ways (see
//! [text and binary](super::backend#text-and-binary)): a WebSocket backend
//! gets it in the same kind of message, a TCP backend gets a binary one
//! marked `;binary` in its header; a reply is text unless its header is
//! marked binary, its WebSocket frame is binary, or it is not UTF-8.
//!
//! [`handle_client_connect`]: Switchboard::handle_client_connect
//! [`handle_client_message`]: Switchboard::handle_client_message
//! [`handle_forward_failed`]: Switchboard::handle_forward_failed
//! [`handle_timeout`]: Switchboard::handle_timeout
//! [`handle_backend_up`]: Switchboard::handle_backend_up
//! [`handle_backend_down`]: Switchboard::handle_backend_down
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Instant;
//! use storm_proto::Message;
//! use storm_proto::route::gateway::{
//!     Action, BackendConfig, BackendId, BackendProtocol, ClientId, Switchboard,
//! };
//! use storm_proto::route::{ClientConfig, ClientHandshake, RouteTable, ServerConfig};
//!
//! let now = Instant::now();
//! let config = Arc::new(ServerConfig::new(RouteTable::new(["orders"])?));
//! let backends = vec![BackendConfig::new("orders", BackendProtocol::Tcp)];
//! let mut board = Switchboard::new(config, backends)?;
//! let orders = BackendId(0);
//! board.handle_backend_up(orders)?;
//!
//! // A client connects and runs the handshake.
//! let client = ClientId(7);
//! board.handle_client_connect(client, now)?;
//! let routes = ClientConfig { routes: vec!["orders".into()], ..ClientConfig::default() };
//! let mut handshake = ClientHandshake::new(&routes, now)?;
//! while !handshake.is_ready() {
//!     while let Some(text) = handshake.poll_transmit() {
//!         board.handle_client_message(client, Message::from(text), now)?;
//!     }
//!     while let Some(action) = board.poll_action() {
//!         if let Action::ToClient { message, .. } = action {
//!             handshake.handle_message(now, message.as_bytes())?;
//!         }
//!     }
//! }
//!
//! // Its messages go to the backend with its id…
//! board.handle_client_message(client, Message::from("ROUTENAME=orders\nbuy"), now)?;
//! let Some(Action::ToBackend { backend, message, .. }) = board.poll_action() else { panic!() };
//! assert_eq!((backend, message.as_bytes()), (orders, &b"CLIENT=7\nbuy"[..]));
//! // …and the backend's answer comes back to it.
//! board.handle_backend_message(orders, Message::Binary("CLIENT=7\nok".into()))?;
//! let Some(Action::ToClient { client: to, message }) = board.poll_action() else { panic!() };
//! assert_eq!((to, message), (client, Message::from("ROUTENAME=orders\nok")));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::backend::{self, BACKEND_DISCONNECTED, BACKEND_UNAVAILABLE, Target};
use super::{ConfigError, Event, Negotiated, Router, ServerConfig, ServerHandshake, envelope};
use crate::{Message, Utf8Bytes};

/// A client connection, as numbered by the adapter: unique while the client
/// is connected, and the number its messages carry to the backends
/// (`CLIENT=<id>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub u64);

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client#{}", self.0)
    }
}

/// A backend: its index in the list given to [`Switchboard::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(pub usize);

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "backend#{}", self.0)
    }
}

/// How a backend connection carries messages, which decides how a
/// message's kind (text or binary) crosses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendProtocol {
    /// WebSocket: the frame type carries the kind.
    WebSocket,
    /// Length-prefixed TCP: no frame types, so a binary message's header is
    /// marked [`BINARY_MARKER`](super::backend::BINARY_MARKER) and an
    /// unmarked reply is text (binary anyway if it is not UTF-8).
    Tcp,
}

/// One backend of a [`Switchboard`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// The route it serves: a route of the switchboard's route table.
    pub route: String,
    /// How its connection carries messages.
    pub protocol: BackendProtocol,
}

impl BackendConfig {
    /// The backend of `route`, reached over `protocol`.
    #[must_use]
    pub fn new(route: impl Into<String>, protocol: BackendProtocol) -> Self {
        Self {
            route: route.into(),
            protocol,
        }
    }
}

/// Something the adapter must do. Actions come out in the order they are to
/// be carried out; those for one client keep their order. (Not
/// `non_exhaustive`: an adapter must carry out every action, so a new one
/// is a breaking change.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `message` to `client`.
    ToClient {
        /// The client.
        client: ClientId,
        /// What to send.
        message: Message,
    },
    /// Close `client`'s WebSocket with `code` and `reason`, after what was
    /// sent to it before. Nothing else is sent to it afterwards.
    Close {
        /// The client.
        client: ClientId,
        /// The close code: 1008 (policy violation), 1009 (a message too
        /// long) or 1011 (internal error).
        code: u16,
        /// The close reason.
        reason: &'static str,
    },
    /// Send `message` (from `client`) to `backend`, waiting while its
    /// connection is backpressured. If the connection cannot take it (it
    /// dropped meanwhile), call [`Switchboard::handle_forward_failed`] so
    /// the client is told.
    ToBackend {
        /// The backend.
        backend: BackendId,
        /// The client the message comes from.
        client: ClientId,
        /// What to send, with its `CLIENT=` header.
        message: Message,
    },
}

/// Close reason of a client whose handshake failed.
pub const HANDSHAKE_FAILED: &str = "route handshake failed";

/// Close reason of a client whose handshake did not finish in time.
pub const HANDSHAKE_TIMED_OUT: &str = "route handshake timed out";

/// A switchboard that cannot be set up, or local misuse of its API by the
/// adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SwitchboardError {
    /// Setup: the route configuration does not validate.
    Config(ConfigError),
    /// Setup: a backend's route is not in the route table.
    UnknownRoute(String),
    /// Setup: two backends serve the same route.
    DuplicateBackend(String),
    /// Misuse: [`Switchboard::handle_client_connect`] with an id already
    /// connected.
    DuplicateClient(ClientId),
    /// Misuse: a client id that is not connected (never, or no longer).
    UnknownClient(ClientId),
    /// Misuse: a backend id out of range.
    UnknownBackend(BackendId),
}

impl fmt::Display for SwitchboardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(e) => e.fmt(f),
            Self::UnknownRoute(route) => {
                write!(f, "backend route {route:?} is not in the route table")
            }
            Self::DuplicateBackend(route) => write!(f, "two backends for route {route:?}"),
            Self::DuplicateClient(c) => write!(f, "{c} is already connected"),
            Self::UnknownClient(c) => write!(f, "{c} is not connected"),
            Self::UnknownBackend(b) => write!(f, "{b} does not exist"),
        }
    }
}

impl std::error::Error for SwitchboardError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Config(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ConfigError> for SwitchboardError {
    fn from(e: ConfigError) -> Self {
        Self::Config(e)
    }
}

/// The gateway's state and decisions; see [the module docs](self).
///
/// Memory: per client its handshake (bounded by the handshake
/// [`Limits`](super::Limits)) or its negotiated routes; per backend the ids
/// of the clients that used its current connection. The action queue holds
/// what the last inputs produced (a push makes one action per recipient):
/// drain it after every input.
#[derive(Debug)]
pub struct Switchboard {
    config: Arc<ServerConfig>,
    backends: Vec<Backend>,
    by_route: HashMap<String, BackendId>,
    clients: HashMap<ClientId, Phase>,
    /// Deadlines of the handshakes still running, earliest first.
    deadlines: BTreeSet<(Instant, ClientId)>,
    actions: VecDeque<Action>,
    dropped_replies: u64,
}

#[derive(Debug)]
struct Backend {
    route: String,
    protocol: BackendProtocol,
    up: bool,
    /// Clients that sent a message over the current connection.
    users: HashSet<ClientId>,
}

#[derive(Debug)]
enum Phase {
    /// Running the route handshake, failed at `deadline` if any. (Boxed:
    /// most clients are past it.)
    Handshake {
        machine: Box<ServerHandshake>,
        deadline: Option<Instant>,
    },
    /// Route traffic.
    Ready {
        router: Router,
        negotiated: Negotiated,
    },
    /// The handshake failed and the client is being closed: nothing more
    /// goes to it.
    Failed,
}

impl Switchboard {
    /// A switchboard for clients handshaking under `config` (its route
    /// table is what clients may use) and for `backends`, every one down;
    /// a backend's [`BackendId`] is its index in `backends`. A route of the
    /// table without a backend is answered `backend unavailable`.
    ///
    /// # Errors
    ///
    /// [`SwitchboardError::Config`] if `config` does not validate,
    /// [`UnknownRoute`](SwitchboardError::UnknownRoute) for a backend whose
    /// route is not in the table,
    /// [`DuplicateBackend`](SwitchboardError::DuplicateBackend) for two
    /// backends of one route.
    pub fn new(
        config: Arc<ServerConfig>,
        backends: Vec<BackendConfig>,
    ) -> Result<Self, SwitchboardError> {
        config.validate()?;
        let mut by_route = HashMap::with_capacity(backends.len());
        for (i, backend) in backends.iter().enumerate() {
            if !config.routes.contains(&backend.route) {
                return Err(SwitchboardError::UnknownRoute(backend.route.clone()));
            }
            if by_route
                .insert(backend.route.clone(), BackendId(i))
                .is_some()
            {
                return Err(SwitchboardError::DuplicateBackend(backend.route.clone()));
            }
        }
        let backends = backends
            .into_iter()
            .map(|b| Backend {
                route: b.route,
                protocol: b.protocol,
                up: false,
                users: HashSet::new(),
            })
            .collect();
        Ok(Self {
            config,
            backends,
            by_route,
            clients: HashMap::new(),
            deadlines: BTreeSet::new(),
            actions: VecDeque::new(),
            dropped_replies: 0,
        })
    }

    /// The configuration clients handshake under.
    #[must_use]
    pub fn config(&self) -> &Arc<ServerConfig> {
        &self.config
    }

    /// The next action to carry out.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Clients connected now, whatever their phase.
    #[must_use]
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Whether `backend`'s connection is up (false for an unknown id).
    #[must_use]
    pub fn is_up(&self, backend: BackendId) -> bool {
        self.backends.get(backend.0).is_some_and(|b| b.up)
    }

    /// Backend messages dropped: no valid `CLIENT=` header, or for a client
    /// that is gone or has not finished its handshake.
    #[must_use]
    pub fn dropped_replies(&self) -> u64 {
        self.dropped_replies
    }

    /// The earliest handshake deadline, if a handshake is running: call
    /// [`handle_timeout`](Self::handle_timeout) at or after it.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|(deadline, _)| *deadline)
    }

    // ---- clients ----

    /// A client connected at `now`: its handshake starts. Returns its
    /// deadline, if the handshake has one (also reflected in
    /// [`poll_timeout`](Self::poll_timeout)).
    ///
    /// # Errors
    ///
    /// [`SwitchboardError::DuplicateClient`] if `client` is connected.
    pub fn handle_client_connect(
        &mut self,
        client: ClientId,
        now: Instant,
    ) -> Result<Option<Instant>, SwitchboardError> {
        if self.clients.contains_key(&client) {
            return Err(SwitchboardError::DuplicateClient(client));
        }
        let phase = match ServerHandshake::new(Arc::clone(&self.config), now) {
            Ok(machine) => {
                let deadline = machine.poll_timeout();
                if let Some(deadline) = deadline {
                    self.deadlines.insert((deadline, client));
                }
                Phase::Handshake {
                    machine: Box::new(machine),
                    deadline,
                }
            }
            Err(_) => {
                // Validated in `new`; never here.
                self.actions.push_back(Action::Close {
                    client,
                    code: 1011,
                    reason: "gateway misconfigured",
                });
                Phase::Failed
            }
        };
        let deadline = match &phase {
            Phase::Handshake { deadline, .. } => *deadline,
            _ => None,
        };
        self.clients.insert(client, phase);
        Ok(deadline)
    }

    /// One message from `client`, received at `now`: a handshake step, or
    /// route traffic to forward or answer.
    ///
    /// # Errors
    ///
    /// [`SwitchboardError::UnknownClient`] if `client` is not connected.
    pub fn handle_client_message(
        &mut self,
        client: ClientId,
        message: Message,
        now: Instant,
    ) -> Result<(), SwitchboardError> {
        let phase = self
            .clients
            .get_mut(&client)
            .ok_or(SwitchboardError::UnknownClient(client))?;
        let text = message.is_text();
        let bytes = message.into_bytes();
        let (route, payload) = match phase {
            Phase::Handshake { machine, deadline } => {
                let result = machine.handle_message(now, &bytes);
                while let Some(text) = machine.poll_transmit() {
                    self.actions.push_back(Action::ToClient {
                        client,
                        message: Message::from(text),
                    });
                }
                let ready = machine.poll_event();
                let deadline = *deadline;
                match result {
                    Err(e) => {
                        if let Some(code) = e.close_code() {
                            *phase = Phase::Failed;
                            self.actions.push_back(Action::Close {
                                client,
                                code,
                                reason: HANDSHAKE_FAILED,
                            });
                        }
                    }
                    Ok(()) => {
                        if let Some(Event::Ready(negotiated)) = ready {
                            let router = Router::new(Arc::clone(&self.config), &negotiated);
                            *phase = Phase::Ready { router, negotiated };
                        }
                    }
                }
                if let (false, Some(deadline)) =
                    (matches!(phase, Phase::Handshake { .. }), deadline)
                {
                    self.deadlines.remove(&(deadline, client));
                }
                return Ok(());
            }
            Phase::Ready { router, .. } => match router.resolve(&bytes) {
                Ok(addressed) => (addressed.route.to_owned(), addressed.payload_bytes(&bytes)),
                Err(e) => {
                    self.reply(client, e.error_reply());
                    return Ok(());
                }
            },
            Phase::Failed => return Ok(()),
        };
        self.forward(client, &route, &payload, text);
        Ok(())
    }

    /// `client`'s message for `route`, to its backend if it is up.
    fn forward(&mut self, client: ClientId, route: &str, payload: &Bytes, text: bool) {
        let backend = self.by_route.get(route).copied();
        let Some((id, backend)) = backend.and_then(|id| {
            let backend = self.backends.get_mut(id.0)?;
            backend.up.then_some((id, backend))
        }) else {
            self.reply(client, backend::error_reply(route, BACKEND_UNAVAILABLE));
            return;
        };
        backend.users.insert(client);
        // The frame type carries the kind on a WebSocket; TCP has none, so
        // there the header marks a binary message.
        let websocket = backend.protocol == BackendProtocol::WebSocket;
        let mut buf = BytesMut::new();
        backend::encode_to(
            Target::Client(client.0),
            !websocket && !text,
            payload,
            &mut buf,
        );
        self.actions.push_back(Action::ToBackend {
            backend: id,
            client,
            message: text_or_binary(buf.freeze(), text && websocket),
        });
    }

    /// `backend`'s connection could not take a message [`Action::ToBackend`]
    /// sent from `client`: the client is told `backend unavailable`.
    ///
    /// # Errors
    ///
    /// [`SwitchboardError::UnknownBackend`] or
    /// [`UnknownClient`](SwitchboardError::UnknownClient).
    pub fn handle_forward_failed(
        &mut self,
        backend: BackendId,
        client: ClientId,
    ) -> Result<(), SwitchboardError> {
        let route = &backend_of(&mut self.backends, backend)?.route;
        if !self.clients.contains_key(&client) {
            return Err(SwitchboardError::UnknownClient(client));
        }
        let reply = backend::error_reply(route, BACKEND_UNAVAILABLE);
        self.reply(client, reply);
        Ok(())
    }

    /// Fails every handshake whose deadline is at or before `now`: each
    /// such client gets its `SMError` and an [`Action::Close`].
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(deadline, client)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(phase) = self.clients.get_mut(&client) else {
                continue;
            };
            let Phase::Handshake { machine, .. } = phase else {
                continue;
            };
            // At or past the deadline the machine always fails.
            let code = match machine.handle_timeout(now) {
                Err(e) => e.close_code().unwrap_or(1008),
                Ok(()) => 1008,
            };
            while let Some(text) = machine.poll_transmit() {
                self.actions.push_back(Action::ToClient {
                    client,
                    message: Message::from(text),
                });
            }
            *phase = Phase::Failed;
            self.actions.push_back(Action::Close {
                client,
                code,
                reason: HANDSHAKE_TIMED_OUT,
            });
        }
    }

    /// `client` disconnected: it is forgotten, and no action addresses it
    /// from now on.
    ///
    /// # Errors
    ///
    /// [`SwitchboardError::UnknownClient`] if `client` is not connected.
    pub fn handle_client_disconnect(&mut self, client: ClientId) -> Result<(), SwitchboardError> {
        let phase = self
            .clients
            .remove(&client)
            .ok_or(SwitchboardError::UnknownClient(client))?;
        if let Phase::Handshake {
            deadline: Some(deadline),
            ..
        } = phase
        {
            self.deadlines.remove(&(deadline, client));
        }
        for backend in &mut self.backends {
            backend.users.remove(&client);
        }
        // What was queued for it has no one to go to.
        self.actions.retain(|action| match action {
            Action::ToClient { client: c, .. } | Action::Close { client: c, .. } => *c != client,
            Action::ToBackend { .. } => true,
        });
        Ok(())
    }

    fn reply(&mut self, client: ClientId, text: String) {
        self.actions.push_back(Action::ToClient {
            client,
            message: Message::from(text),
        });
    }

    // ---- backends ----

    /// `backend`'s connection is up: client messages for its route are
    /// forwarded from now on.
    ///
    /// # Errors
    ///
    /// [`SwitchboardError::UnknownBackend`].
    pub fn handle_backend_up(&mut self, backend: BackendId) -> Result<(), SwitchboardError> {
        backend_of(&mut self.backends, backend)?.up = true;
        Ok(())
    }

    /// `backend`'s connection dropped: client messages for its route are
    /// answered `backend unavailable` from now on, and every connected
    /// client that sent it a message while it was up is told
    /// `backend disconnected`.
    ///
    /// # Errors
    ///
    /// [`SwitchboardError::UnknownBackend`].
    pub fn handle_backend_down(&mut self, backend: BackendId) -> Result<(), SwitchboardError> {
        let state = backend_of(&mut self.backends, backend)?;
        state.up = false;
        let users = std::mem::take(&mut state.users);
        let reply = Message::from(backend::error_reply(&state.route, BACKEND_DISCONNECTED));
        for client in users {
            if self.clients.contains_key(&client) {
                self.actions.push_back(Action::ToClient {
                    client,
                    message: reply.clone(),
                });
            }
        }
        Ok(())
    }

    /// One message from `backend`: to the client its header names, or to
    /// every client that announced the route. The message is encoded once
    /// and shared by every recipient.
    ///
    /// # Errors
    ///
    /// [`SwitchboardError::UnknownBackend`].
    pub fn handle_backend_message(
        &mut self,
        backend: BackendId,
        message: Message,
    ) -> Result<(), SwitchboardError> {
        let state = backend_of(&mut self.backends, backend)?;
        // Unmarked, a message is what its frame says on a WebSocket and
        // text on TCP (no frame types); `;binary` makes it binary on both.
        let unmarked_text = match state.protocol {
            BackendProtocol::WebSocket => message.is_text(),
            BackendProtocol::Tcp => true,
        };
        let bytes = message.into_bytes();
        let Ok(decoded) = backend::decode(&bytes) else {
            self.dropped_replies += 1;
            return Ok(());
        };
        let route = state.route.as_str();
        let mut buf = BytesMut::new();
        if envelope::encode(route, decoded.payload, &mut buf).is_err() {
            // Route names were validated with the table in `new`.
            self.dropped_replies += 1;
            return Ok(());
        }
        let reply = text_or_binary(buf.freeze(), unmarked_text && !decoded.binary);
        match decoded.target {
            Target::Client(id) => {
                let client = ClientId(id);
                let ready = matches!(
                    self.clients.get(&client),
                    Some(Phase::Ready { router, .. }) if router.contains(route)
                );
                if ready {
                    self.actions.push_back(Action::ToClient {
                        client,
                        message: reply,
                    });
                } else {
                    self.dropped_replies += 1;
                }
            }
            Target::AllClients => {
                for (client, phase) in &self.clients {
                    if matches!(phase, Phase::Ready { negotiated, .. } if negotiated.contains(route))
                    {
                        self.actions.push_back(Action::ToClient {
                            client: *client,
                            message: reply.clone(),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// `backend` of `backends` (a field, so the rest of the switchboard stays
/// free to borrow).
fn backend_of(
    backends: &mut [Backend],
    backend: BackendId,
) -> Result<&mut Backend, SwitchboardError> {
    backends
        .get_mut(backend.0)
        .ok_or(SwitchboardError::UnknownBackend(backend))
}

/// A text message when asked for and valid UTF-8, else binary.
fn text_or_binary(bytes: Bytes, text: bool) -> Message {
    if text {
        match Utf8Bytes::try_from_bytes(bytes) {
            Ok(text) => Message::Text(text),
            Err(bytes) => Message::Binary(bytes),
        }
    } else {
        Message::Binary(bytes)
    }
}

#[cfg(test)]
mod tests;
