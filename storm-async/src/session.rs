//! A connection as the application holds it: the same type on every runtime.

use std::future::{Future, poll_fn};
use std::ops::Deref;
use std::task::Poll;

use storm_host::peer::Peer;
pub use storm_host::peer::SendError;
use storm_proto::Message;

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

    /// Sends text (a WebSocket text message).
    ///
    /// # Errors
    ///
    /// As for [`send`](Self::send).
    pub async fn send_text(&self, text: &str) -> Result<(), SendError> {
        self.send(Message::from(text)).await
    }
}
