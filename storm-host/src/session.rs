//! A connection as the application holds it: [`Session`], the same type on
//! every runtime (each adapter re-exports it), with [`SendError`] for a
//! send that did not happen, and [`ClientError`], every adapter's client
//! error; [`Registry`], a server's connected sessions.
//!
//! A session is one type whatever runs it, so code that works with
//! sessions (a service's rooms, a registry) is written once. Only a send
//! under the `Wait` slow-consumer policy waits, and it waits in one of two
//! ways, both here: [`Session::send`] is a future (tokio and smol, or any
//! executor: it needs no runtime of its own), [`Session::send_blocking`]
//! parks the calling thread (storm-std's handlers and threads).

use std::any::Any;
use std::fmt;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::hub::{
    CloseKind, GroupError, Hub, MiddlewareChain, Outbox, SendOutcome, SessionClosed, SessionId,
    SessionMetrics, SessionState, thread_waker,
};
use storm_proto::Message;
use storm_proto::ws::CloseCode;

/// One connection, as a handler receives it and any task or thread keeps
/// it: its id, address and metrics; sending; closing; groups. Cheap to
/// clone (clones are the same connection), and usable from any task or
/// thread.
///
/// Sending: [`send`](Self::send)`(m).await` on tokio and smol,
/// [`send_blocking`](Self::send_blocking)`(m)` on storm-std's threads;
/// both wait only when the slow-consumer policy is `Wait` and the session
/// is backpressured. [`try_send`](Self::try_send) never waits.
#[derive(Clone)]
pub struct Session {
    outbox: Arc<Outbox>,
    middleware: Option<Arc<MiddlewareChain>>,
    hub: Hub,
    remote: SocketAddr,
    /// What the server's upgrade hook attached, if anything.
    attached: Option<Arc<dyn Any + Send + Sync>>,
}

impl fmt::Debug for Session {
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

impl Session {
    /// The session of the connection whose outbox is `outbox`, registered
    /// in `hub`; what it sends runs through `middleware` first.
    #[must_use]
    pub(crate) fn new(
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
    pub(crate) fn attach(&mut self, value: Arc<dyn Any + Send + Sync>) {
        self.attached = Some(value);
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

    /// Sends a message under the slow-consumer policy, waiting
    /// asynchronously: with `Wait` (the default) this waits until the
    /// session is writable. For async tasks (tokio, smol, any executor);
    /// on a thread of its own, use [`send_blocking`](Self::send_blocking).
    ///
    /// The future holds the message once and a reference to the session
    /// (48 bytes), since it lives inside every handler's future and so
    /// inside every connection task.
    ///
    /// **Cancel safety**: the message is queued whole in the poll that
    /// returns `Ready(Ok(()))`, or not at all: a future dropped before
    /// then drops its message unsent (never queued in part, never twice).
    ///
    /// **Panics**: none of its own; the session's middleware (application
    /// code) runs inside it, and a panic there comes out of this poll.
    ///
    /// # Errors
    ///
    /// [`SendError`] with the message handed back.
    pub fn send(
        &self,
        message: impl Into<Message>,
    ) -> impl Future<Output = Result<(), SendError>> + Send + '_ {
        let mut message = Some(message.into());
        poll_fn(move |cx| {
            while let Some(next) = message.take() {
                let Some(back) = self.offer(next)? else {
                    return Poll::Ready(Ok(()));
                };
                match self.poll_writable(cx) {
                    // Writable again: offer it once more.
                    Poll::Ready(Ok(())) => message = Some(back),
                    Poll::Ready(Err(_)) => return Poll::Ready(Err(SendError::Closed(back))),
                    Poll::Pending => {
                        message = Some(back);
                        return Poll::Pending;
                    }
                }
            }
            // Polled again after it completed.
            Poll::Ready(Ok(()))
        })
    }

    /// Sends text (a WebSocket text message), waiting as
    /// [`send`](Self::send) does.
    ///
    /// # Errors
    ///
    /// As for [`send`](Self::send).
    pub async fn send_text(&self, text: &str) -> Result<(), SendError> {
        self.send(Message::from(text)).await
    }

    /// Sends a message under the slow-consumer policy, blocking the calling
    /// thread: with `Wait` (the default) this parks the thread until the
    /// session is writable. For storm-std's handlers and plain threads;
    /// called from the session's own handler, that also pauses its reading,
    /// which is the point. Never call it from an async task (it would
    /// block the executor's thread): use [`send`](Self::send) there.
    ///
    /// # Errors
    ///
    /// [`SendError`] with the message handed back.
    pub fn send_blocking(&self, message: impl Into<Message>) -> Result<(), SendError> {
        let mut message = message.into();
        // One waker per call, so the session keeps at most one for us.
        let mut waker = None;
        while let Some(back) = self.offer(message)? {
            message = back;
            let waker = waker.get_or_insert_with(|| thread_waker(std::thread::current()));
            let mut cx = Context::from_waker(waker);
            loop {
                match self.poll_writable(&mut cx) {
                    Poll::Ready(Ok(())) => break,
                    Poll::Ready(Err(_)) => return Err(SendError::Closed(message)),
                    // Parking may wake spuriously: poll again.
                    Poll::Pending => std::thread::park(),
                }
            }
        }
        Ok(())
    }

    /// Queues a message without waiting: the policy's verdict as it is.
    pub fn try_send(&self, message: impl Into<Message>) -> SendOutcome {
        self.queue(message.into())
    }

    /// Sends a message through the middleware and the slow-consumer
    /// policy. Suppressed by middleware: reported as queued.
    //
    // Inlined, and without middleware the message goes to the outbox as
    // it came: a `match` that made the message to send anew copied its 40
    // bytes from the slot the caller had just written (BENCHMARKS.md,
    // session 14's deep pipeline).
    #[inline]
    fn queue(&self, message: Message) -> SendOutcome {
        let Some(chain) = &self.middleware else {
            return self.outbox.send(message);
        };
        match chain.sending(self.outbox.id(), message) {
            Some(message) => self.outbox.send(message),
            None => SendOutcome::Queued,
        }
    }

    /// One step of a send under the slow-consumer policy: `Ok(None)` when
    /// queued, `Ok(Some(message))` when the policy says wait (wait with
    /// [`poll_writable`](Self::poll_writable), then offer it again).
    fn offer(&self, message: Message) -> Result<Option<Message>, SendError> {
        match self.queue(message) {
            SendOutcome::Queued => Ok(None),
            SendOutcome::Wait(back) => Ok(Some(back)),
            SendOutcome::Dropped(back) => Err(SendError::Dropped(back)),
            SendOutcome::Disconnected(back) => Err(SendError::Disconnected(back)),
            SendOutcome::Closed(back) => Err(SendError::Closed(back)),
        }
    }

    /// Resolves when the session is writable again, or with
    /// [`SessionClosed`] once it closed: for a sender that holds its
    /// messages itself after [`try_send`](Self::try_send) said
    /// [`SendOutcome::Wait`], and sends them once this resolves.
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

    /// The value the server's upgrade hook attached when it accepted this
    /// connection (`Decision::accept().attach(value)`), when it is a `T`:
    /// the user a token named, the route a path chose. `None` when nothing
    /// or something else was attached. A client's session carries the
    /// server's [`UpgradeResponse`](crate::setup::UpgradeResponse) here
    /// (WebSocket).
    #[must_use]
    pub fn attached<T: Any>(&self) -> Option<&T> {
        self.attached.as_deref()?.downcast_ref()
    }

    /// The connection's outbox in the hub: for adapters (the writer's
    /// waker, the close request), not for applications.
    #[doc(hidden)]
    #[must_use]
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }
}

/// A server's connected sessions, by id, with the hub they live in: the
/// part of every adapter's server handle that is not I/O.
#[derive(Debug)]
pub struct Registry {
    hub: Hub,
    sessions: std::sync::Mutex<std::collections::HashMap<SessionId, Session>>,
}

impl Registry {
    /// An empty registry over `hub`.
    #[must_use]
    pub fn new(hub: Hub) -> Self {
        Self {
            hub,
            sessions: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<SessionId, Session>> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a session once its connection is established.
    pub fn insert(&self, session: Session) {
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
    pub fn sessions(&self) -> Vec<Session> {
        let mut sessions: Vec<Session> = self.map().values().cloned().collect();
        sessions.sort_by_key(|s| s.id());
        sessions
    }

    /// One session by id.
    #[must_use]
    pub fn session(&self, id: SessionId) -> Option<Session> {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests take `now` from the clock

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};

    use super::*;
    use crate::hub::HubConfig;
    use storm_proto::backpressure::SlowConsumerPolicy;

    /// A session under the `Wait` policy with a send limit of `limit`
    /// bytes, and its outbox, where the test plays the writer.
    fn session(limit: usize) -> (Session, Arc<Outbox>) {
        let mut config = HubConfig::default();
        config.backpressure.max_pending_send_bytes = limit;
        config.backpressure.slow_consumer_policy = SlowConsumerPolicy::Wait;
        let now = Instant::now();
        let hub = Hub::new(config, now).unwrap();
        let outbox = hub.register(hub.try_admit().unwrap(), now).unwrap();
        let remote = ([127, 0, 0, 1], 1).into();
        (Session::new(Arc::clone(&outbox), None, hub, remote), outbox)
    }

    /// The writer takes everything queued and writes it all: the number of
    /// messages taken.
    fn write_all(outbox: &Outbox) -> usize {
        let mut out = Vec::new();
        let drained = outbox.drain_into(&mut out, usize::MAX);
        outbox.on_written(drained.bytes);
        out.len()
    }

    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The future lives inside every handler's future, so inside every
    /// connection task: it holds the message and a reference, nothing more.
    #[test]
    fn the_send_future_holds_the_message_and_a_reference() {
        let (session, _outbox) = session(1024);
        let future = session.send("x");
        assert!(std::mem::size_of_val(&future) <= 48);
    }

    /// `send` waits while the session is backpressured, is woken when the
    /// writer drains it, and then queues the message.
    #[test]
    fn send_waits_for_the_writer_then_queues() {
        let (session, outbox) = session(100);
        assert_eq!(session.try_send(vec![0; 80]), SendOutcome::Queued);
        let count = Arc::new(CountingWaker::default());
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        let mut future = std::pin::pin!(session.send(vec![0; 80]));
        assert!(future.as_mut().poll(&mut cx).is_pending());
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        assert_eq!(write_all(&outbox), 1);
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the writer wakes it");
        assert_eq!(future.as_mut().poll(&mut cx), Poll::Ready(Ok(())));
        assert_eq!(write_all(&outbox), 1);
    }

    /// `send_blocking` parks its thread while the session is backpressured
    /// and returns once the writer drained it and the message is queued.
    #[test]
    fn send_blocking_waits_for_the_writer_then_queues() {
        let (session, outbox) = session(100);
        assert_eq!(session.try_send(vec![0; 80]), SendOutcome::Queued);
        let sender = std::thread::spawn(move || session.send_blocking(vec![0; 80]));
        let (start, mut written) = (Instant::now(), 0);
        while written < 2 && start.elapsed() < Duration::from_secs(10) {
            written += write_all(&outbox);
            std::thread::yield_now();
        }
        assert_eq!(written, 2, "both messages reach the writer");
        assert_eq!(sender.join().unwrap(), Ok(()));
    }
}
