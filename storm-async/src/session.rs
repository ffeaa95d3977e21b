//! A connection as the application holds it: the same type on every runtime.

use std::future::poll_fn;
use std::ops::Deref;

use storm_proto::Message;
use storm_proto::peer::Peer;
pub use storm_proto::peer::SendError;

/// One connection: everything [`Peer`] offers (id, address, metrics,
/// closing, groups), plus a `send` that waits asynchronously under the
/// `Wait` policy. Cheap to clone, and usable from any task.
#[derive(Clone, Debug)]
pub struct Session(Peer);

impl Deref for Session {
    type Target = Peer;
    fn deref(&self) -> &Peer {
        &self.0
    }
}

impl Session {
    pub(crate) fn new(peer: Peer) -> Self {
        Self(peer)
    }

    /// Sends a message under the slow-consumer policy: with `Wait` (the
    /// default) this waits until the session is writable.
    ///
    /// # Errors
    ///
    /// [`SendError`] with the message handed back.
    pub async fn send(&self, message: impl Into<Message>) -> Result<(), SendError> {
        let mut message = message.into();
        while let Some(back) = self.offer(message)? {
            message = back;
            if poll_fn(|cx| self.poll_writable(cx)).await.is_err() {
                return Err(SendError::Closed(message));
            }
        }
        Ok(())
    }

    /// Sends text (a WebSocket text message).
    ///
    /// # Errors
    ///
    /// As for [`send`](Self::send).
    pub async fn send_text(&self, text: &str) -> Result<(), SendError> {
        self.send(Message::from(text)).await
    }
}
