//! What the application does when things happen: a trait whose methods all
//! have no-op defaults, so a handler implements only what it needs.

use std::future::Future;
use std::time::Duration;

use storm_host::link::CloseReason;
use storm_proto::Message;

use crate::Session;

/// Callbacks for a server's or a client's connections. Each connection calls
/// its handler from its own task, one event at a time, in order: while a
/// callback runs, that connection reads nothing more (natural backpressure);
/// other connections are not affected.
pub trait Handler: Send + Sync + 'static {
    /// A connection is established (after the WebSocket upgrade).
    fn on_connect(&self, session: &Session) -> impl Future<Output = ()> + Send {
        let _ = session;
        async {}
    }

    /// A whole message arrived (text or binary for WebSocket; binary for a
    /// framed TCP connection), after middleware.
    fn on_message(&self, session: &Session, message: Message) -> impl Future<Output = ()> + Send {
        let _ = (session, message);
        async {}
    }

    /// A whole message arrived, for a handler that can deal with it at
    /// once, without waiting: return `None` once it is handled, or hand it
    /// back (`Some`) for [`on_message`](Self::on_message), which the
    /// connection then awaits before it reads on. Called first for every
    /// message, on the connection's task, in order; the default hands
    /// every message to `on_message`.
    ///
    /// The synchronous fast path: no future per message. A handler whose
    /// work per message is synchronous (an echo, a lookup, a counter)
    /// implements it, replying with [`Session::try_send`]; when the send
    /// says [`SendOutcome::Wait`](storm_host::hub::SendOutcome::Wait), it
    /// returns the message the send handed back for `on_message` to send
    /// with `send(m).await`, so a handler that must wait still waits (and
    /// the connection reads nothing more meanwhile). It must never block.
    fn on_message_now(&self, session: &Session, message: Message) -> Option<Message> {
        let _ = session;
        Some(message)
    }

    /// The connection ended; the last call for this session.
    fn on_disconnect(
        &self,
        session: &Session,
        reason: &CloseReason,
    ) -> impl Future<Output = ()> + Send {
        let _ = (session, reason);
        async {}
    }

    /// Something failed that is not a disconnect: a refused handshake, a
    /// failed connect attempt, a failed accept. Ordinary disconnects
    /// (reset, broken pipe) are [`on_disconnect`](Self::on_disconnect)
    /// instead. Servers report [`std::io::Error`]s (a failed TLS handshake,
    /// a handshake timeout with [`TimedOut`](std::io::ErrorKind::TimedOut);
    /// an accept that failed for want of descriptors, at most once a second
    /// while it lasts, see
    /// [`AcceptErrors`](storm_host::setup::AcceptErrors)), clients
    /// [`ClientError`](crate::ClientError)s: downcast to tell them apart.
    /// A server connection's failure names its peer
    /// ([`from_peer`](storm_host::setup::from_peer): `from ADDR: …`, the
    /// cause as its source; [`client_speaks_tls`](storm_host::setup::client_speaks_tls)
    /// finds a TLS client on a plain server).
    fn on_error(
        &self,
        error: &(dyn std::error::Error + Send + Sync + 'static),
    ) -> impl Future<Output = ()> + Send {
        let _ = error;
        async {}
    }

    /// A client lost its connection and will try again after `delay`
    /// (attempt 1, 2, …).
    fn on_reconnecting(&self, attempt: u32, delay: Duration) -> impl Future<Output = ()> + Send {
        let _ = (attempt, delay);
        async {}
    }
}
