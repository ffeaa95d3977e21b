//! A connection as the application holds it.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use storm_proto::Message;
use storm_proto::hub::{
    GroupError, Hub, SendOutcome, SessionId, SessionMetrics, SessionState, thread_waker,
};
use storm_proto::link::Link;
use storm_proto::ws::CloseCode;

/// One connection: its id, address and metrics; sending; closing; groups.
/// Cheap to clone, and usable from any thread.
#[derive(Clone)]
pub struct Session {
    link: Arc<Link>,
    hub: Hub,
    remote: SocketAddr,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id())
            .field("remote", &self.remote)
            .finish()
    }
}

/// A send that did not happen.
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

impl Session {
    pub(crate) fn new(link: Arc<Link>, hub: Hub, remote: SocketAddr) -> Self {
        Self { link, hub, remote }
    }

    pub(crate) fn link(&self) -> &Arc<Link> {
        &self.link
    }

    /// The session's id, unique within its server.
    #[must_use]
    pub fn id(&self) -> SessionId {
        self.link.session().id()
    }

    /// The peer's address.
    #[must_use]
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }

    /// Open, closing or closed.
    #[must_use]
    pub fn state(&self) -> SessionState {
        self.link.session().state()
    }

    /// Bytes and messages in and out, drops, connect time.
    #[must_use]
    pub fn metrics(&self) -> SessionMetrics {
        self.link.session().metrics()
    }

    /// How long the session has been connected.
    #[must_use]
    pub fn uptime(&self) -> std::time::Duration {
        self.link.session().uptime(Instant::now())
    }

    /// Whether sends are currently held back (pending bytes reached the
    /// limit and have not drained to half).
    #[must_use]
    pub fn is_backpressured(&self) -> bool {
        self.link.session().is_backpressured()
    }

    /// Sends a message under the slow-consumer policy: with `Wait` (the
    /// default) this blocks the calling thread until the session is
    /// writable. Called from the session's own handler, that also pauses
    /// its reading, which is the point.
    ///
    /// # Errors
    ///
    /// [`SendError`] with the message handed back.
    pub fn send(&self, message: impl Into<Message>) -> Result<(), SendError> {
        let mut message = message.into();
        // One waker per call, so the session keeps at most one for us.
        let mut waker = None;
        loop {
            match self.link.send(message) {
                SendOutcome::Queued => return Ok(()),
                SendOutcome::Wait(back) => {
                    message = back;
                    let waker = waker.get_or_insert_with(|| thread_waker(std::thread::current()));
                    let mut cx = Context::from_waker(waker);
                    loop {
                        match self.link.session().poll_writable(&mut cx) {
                            Poll::Ready(Ok(())) => break,
                            Poll::Ready(Err(_)) => return Err(SendError::Closed(message)),
                            // Parking may wake spuriously: poll again.
                            Poll::Pending => std::thread::park(),
                        }
                    }
                }
                SendOutcome::Dropped(back) => return Err(SendError::Dropped(back)),
                SendOutcome::Disconnected(back) => return Err(SendError::Disconnected(back)),
                SendOutcome::Closed(back) => return Err(SendError::Closed(back)),
            }
        }
    }

    /// Sends text (a WebSocket text message).
    ///
    /// # Errors
    ///
    /// As for [`send`](Self::send).
    pub fn send_text(&self, text: &str) -> Result<(), SendError> {
        self.send(Message::from(text))
    }

    /// Queues a message without waiting: the policy's verdict as it is.
    pub fn try_send(&self, message: impl Into<Message>) -> SendOutcome {
        self.link.send(message.into())
    }

    /// Closes gracefully: queued messages are written, then (WebSocket) a
    /// close frame with 1000, and the connection ends when the peer answers
    /// or the close timeout passes.
    pub fn close(&self) {
        self.link.close(None, "");
    }

    /// [`close`](Self::close) with a WebSocket close code and reason.
    pub fn close_with(&self, code: CloseCode, reason: &str) {
        self.link.close(Some(code), reason);
    }

    /// Closes at once; queued messages are discarded.
    pub fn abort(&self) {
        self.link.abort();
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
