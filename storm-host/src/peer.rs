//! A connection as the application holds it, whatever the runtime: the
//! part of every adapter's `Session` that does not wait.
//!
//! Each adapter's `Session` wraps a [`Peer`] (and dereferences to it) and
//! adds only `send`, which waits in the runtime's own way when the
//! slow-consumer policy says `Wait` (an async task, or a parked thread).
//! [`ClientError`] is every adapter's client error.

use std::any::Any;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::hub::{
    CloseKind, GroupError, Hub, MiddlewareChain, Outbox, SendOutcome, SessionClosed, SessionId,
    SessionMetrics, SessionState,
};
use storm_proto::Message;
use storm_proto::ws::CloseCode;

/// One connection: its id, address and metrics; sending; closing; groups.
/// Cheap to clone, and usable from any task or thread.
#[derive(Clone)]
pub struct Peer {
    outbox: Arc<Outbox>,
    middleware: Option<Arc<MiddlewareChain>>,
    hub: Hub,
    remote: SocketAddr,
    /// What the server's upgrade hook attached, if anything.
    attached: Option<Arc<dyn Any + Send + Sync>>,
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id())
            .field("remote", &self.remote)
            .finish()
    }
}

/// A send that did not happen; the message is handed back.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The session is closing or closed.
    Closed(Message),
    /// The slow-consumer policy is `Drop` and the session is backpressured.
    Dropped(Message),
    /// The slow-consumer policy is `Disconnect`: the session was aborted.
    Disconnected(Message),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Closed(_) => "session closed",
            Self::Dropped(_) => "message dropped: slow consumer",
            Self::Disconnected(_) => "slow consumer disconnected",
        })
    }
}

impl std::error::Error for SendError {}

/// Why an adapter's client could not connect or send; the same on every
/// adapter.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL is not a WebSocket URL.
    Url(storm_proto::ws::UrlError),
    /// TLS failed: the server's certificate is not trusted or does not
    /// name the server, the server refused the client's certificate, or
    /// the peer does not speak TLS.
    Tls(io::Error),
    /// Connecting or the handshake took longer than the connect timeout.
    Timeout,
    /// The transport failed.
    Io(io::Error),
    /// The server refused the WebSocket upgrade.
    Handshake(storm_proto::ws::handshake::ResponseError),
    /// An option is invalid.
    Config(String),
    /// No connection is up (between reconnects, or after close).
    NotConnected,
    /// The send was refused.
    Send(SendError),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Url(e) => e.fmt(f),
            Self::Tls(e) => {
                #[cfg(feature = "tls")]
                if let Some(hint) = crate::tls::client_hint(e) {
                    return write!(f, "TLS failed: {hint} ({e})");
                }
                write!(f, "TLS failed: {e}")
            }
            Self::Timeout => f.write_str("connect timed out"),
            Self::Io(e) => write!(f, "I/O error: {e}"),
            Self::Handshake(e) => write!(f, "WebSocket upgrade failed: {e}"),
            Self::Config(e) => write!(f, "invalid option: {e}"),
            Self::NotConnected => f.write_str("not connected"),
            Self::Send(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Url(e) => Some(e),
            Self::Tls(e) | Self::Io(e) => Some(e),
            Self::Handshake(e) => Some(e),
            Self::Send(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for ClientError {
    /// [`ClientError::Tls`] when rustls is what failed (a handshake, or an
    /// alert from the server such as a refused client certificate);
    /// [`ClientError::Timeout`] for a timed-out socket operation (a
    /// blocking socket's timeout shows as `WouldBlock` on some platforms);
    /// else [`ClientError::Io`].
    fn from(e: io::Error) -> Self {
        #[cfg(feature = "tls")]
        if e.get_ref()
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
        {
            return Self::Tls(e);
        }
        match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Self::Timeout,
            _ => Self::Io(e),
        }
    }
}

impl Peer {
    /// A peer for the connection whose outbox is `outbox`, registered in
    /// `hub`; what it sends runs through `middleware` first.
    #[must_use]
    pub fn new(
        outbox: Arc<Outbox>,
        middleware: Option<Arc<MiddlewareChain>>,
        hub: Hub,
        remote: SocketAddr,
    ) -> Self {
        Self {
            outbox,
            middleware,
            hub,
            remote,
            attached: None,
        }
    }

    /// Attaches the value a server's upgrade hook accepted the connection
    /// with (see [`attached`](Self::attached)).
    pub fn attach(&mut self, value: Arc<dyn Any + Send + Sync>) {
        self.attached = Some(value);
    }

    /// The value the server's upgrade hook attached when it accepted this
    /// connection (`Decision::accept().attach(value)`), when it is a `T`:
    /// the user a token named, the route a path chose. `None` when nothing
    /// or something else was attached (and always on a client).
    #[must_use]
    pub fn attached<T: Any>(&self) -> Option<&T> {
        self.attached.as_deref()?.downcast_ref()
    }

    /// The connection's outbox in the hub (for adapters: the writer's
    /// waker, the close request).
    #[must_use]
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Sends a message through the middleware and the slow-consumer
    /// policy. Suppressed by middleware: reported as queued.
    fn send(&self, message: Message) -> SendOutcome {
        let message = match &self.middleware {
            Some(chain) => match chain.sending(self.outbox.id(), message) {
                Some(message) => message,
                None => return SendOutcome::Queued,
            },
            None => message,
        };
        self.outbox.send(message)
    }

    /// The session's id, unique within its server.
    #[must_use]
    pub fn id(&self) -> SessionId {
        self.outbox.id()
    }

    /// The peer's address.
    #[must_use]
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }

    /// Open, closing or closed.
    #[must_use]
    pub fn state(&self) -> SessionState {
        self.outbox.state()
    }

    /// Bytes and messages in and out, drops, connect time.
    #[must_use]
    pub fn metrics(&self) -> SessionMetrics {
        self.outbox.metrics()
    }

    /// How long the session has been connected.
    #[must_use]
    pub fn uptime(&self) -> Duration {
        // The one clock read outside a `now` argument: a convenience for
        // applications, never used by the protocol machines.
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        self.outbox.uptime(now)
    }

    /// Whether sends are currently held back (pending bytes reached the
    /// limit and have not drained to half).
    #[must_use]
    pub fn is_backpressured(&self) -> bool {
        self.outbox.is_backpressured()
    }

    /// Queues a message without waiting: the policy's verdict as it is.
    pub fn try_send(&self, message: impl Into<Message>) -> SendOutcome {
        self.send(message.into())
    }

    /// One step of a send under the slow-consumer policy: `Ok(None)` when
    /// queued, `Ok(Some(message))` when the policy says wait (wait with
    /// [`poll_writable`](Self::poll_writable), then offer it again).
    ///
    /// # Errors
    ///
    /// [`SendError`] with the message handed back.
    pub fn offer(&self, message: Message) -> Result<Option<Message>, SendError> {
        match self.send(message) {
            SendOutcome::Queued => Ok(None),
            SendOutcome::Wait(back) => Ok(Some(back)),
            SendOutcome::Dropped(back) => Err(SendError::Dropped(back)),
            SendOutcome::Disconnected(back) => Err(SendError::Disconnected(back)),
            SendOutcome::Closed(back) => Err(SendError::Closed(back)),
        }
    }

    /// Resolves when the session is writable again, or with
    /// [`SessionClosed`] once it closed.
    pub fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<Result<(), SessionClosed>> {
        self.outbox.poll_writable(cx)
    }

    /// Closes gracefully: queued messages are written, then (WebSocket) a
    /// close frame with 1000, and the connection ends when the peer answers
    /// or the close timeout passes.
    pub fn close(&self) {
        self.outbox.close_with_frame(None, "");
    }

    /// [`close`](Self::close) with a WebSocket close code and reason.
    pub fn close_with(&self, code: CloseCode, reason: &str) {
        self.outbox.close_with_frame(Some(code), reason);
    }

    /// Closes at once; queued messages are discarded.
    pub fn abort(&self) {
        self.outbox.request_close(CloseKind::Abort);
    }

    /// Joins a group (room). `Ok(false)` if already a member.
    ///
    /// # Errors
    ///
    /// [`GroupError`] for an invalid name or too many groups.
    pub fn join(&self, group: &str) -> Result<bool, GroupError> {
        self.hub.join(self.id(), group)
    }

    /// Leaves a group. `false` if not a member.
    pub fn leave(&self, group: &str) -> bool {
        self.hub.leave(self.id(), group)
    }

    /// The groups this session is in.
    #[must_use]
    pub fn groups(&self) -> Vec<String> {
        self.hub.groups_of(self.id())
    }
}

/// A server's connected sessions, by id, with the hub they live in: the
/// part of every adapter's server handle that is not I/O. `S` is the
/// adapter's `Session` type (which dereferences to [`Peer`]).
#[derive(Debug)]
pub struct Registry<S> {
    hub: Hub,
    sessions: std::sync::Mutex<std::collections::HashMap<SessionId, S>>,
}

impl<S: Clone + std::ops::Deref<Target = Peer>> Registry<S> {
    /// An empty registry over `hub`.
    #[must_use]
    pub fn new(hub: Hub) -> Self {
        Self {
            hub,
            sessions: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<SessionId, S>> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a session once its connection is established.
    pub fn insert(&self, session: S) {
        let id = session.id();
        self.map().insert(id, session);
    }

    /// Removes a session when its connection ended, and disconnects it from
    /// the hub (leaving its groups, releasing its connection permit).
    pub fn remove(&self, id: SessionId) {
        self.map().remove(&id);
        self.hub.disconnect(id);
    }

    /// The connected sessions, by id.
    #[must_use]
    pub fn sessions(&self) -> Vec<S> {
        let mut sessions: Vec<S> = self.map().values().cloned().collect();
        sessions.sort_by_key(|s| s.id());
        sessions
    }

    /// One session by id.
    #[must_use]
    pub fn session(&self, id: SessionId) -> Option<S> {
        self.map().get(&id).cloned()
    }

    /// How many sessions are connected.
    #[must_use]
    pub fn session_count(&self) -> usize {
        self.hub.session_count()
    }

    /// The hub underneath: groups, metrics, broadcast.
    #[must_use]
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Sends `message` to every session but `exclude`, without waiting on
    /// any (each session's slow-consumer policy decides for it).
    pub fn broadcast(
        &self,
        message: impl Into<Message>,
        exclude: Option<SessionId>,
    ) -> crate::hub::BroadcastReport {
        self.hub.broadcast(&message.into(), exclude)
    }

    /// Sends `message` to the members of `group` but `exclude`.
    pub fn broadcast_group(
        &self,
        group: &str,
        message: impl Into<Message>,
        exclude: Option<SessionId>,
    ) -> crate::hub::BroadcastReport {
        self.hub.broadcast_group(group, &message.into(), exclude)
    }

    /// Members of a group.
    #[must_use]
    pub fn member_count(&self, group: &str) -> usize {
        self.hub.member_count(group)
    }

    /// Names of the groups with members.
    #[must_use]
    pub fn group_names(&self) -> Vec<String> {
        self.hub.group_names()
    }

    /// Closes every session gracefully.
    pub fn close_all(&self) {
        self.hub.close_all(crate::hub::CloseKind::Graceful);
    }
}
