//! A connection as the application holds it.

use std::ops::Deref;
use std::task::{Context, Poll};

use storm_host::hub::thread_waker;
use storm_host::peer::Peer;
pub use storm_host::peer::SendError;
use storm_proto::Message;

/// One connection: everything [`Peer`] offers (id, address, metrics,
/// closing, groups), plus a `send` that blocks the calling thread under the
/// `Wait` policy. Cheap to clone, and usable from any thread.
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

    /// Sends text (a WebSocket text message).
    ///
    /// # Errors
    ///
    /// As for [`send`](Self::send).
    pub fn send_text(&self, text: &str) -> Result<(), SendError> {
        self.send(Message::from(text))
    }
}
