//! What the application does when things happen: a trait whose methods all
//! have no-op defaults, so a handler implements only what it needs.

use std::time::Duration;

use storm_host::link::CloseReason;
use storm_proto::Message;

use crate::Session;

/// Callbacks for a server's or a client's connections, blocking: each
/// connection calls its handler from its own reader thread, one event at a
/// time, in order. While a callback runs, that connection reads nothing more
/// (natural backpressure), and its writer thread keeps writing; other
/// connections are not affected. Reply with
/// [`Session::send_blocking`] (a [`Session`] is the same type on every
/// adapter; its async `send` is for async tasks).
pub trait Handler: Send + Sync + 'static {
    /// A connection is established (after the WebSocket upgrade).
    fn on_connect(&self, session: &Session) {
        let _ = session;
    }

    /// A whole message arrived (text or binary for WebSocket; binary for a
    /// framed TCP connection), after middleware.
    fn on_message(&self, session: &Session, message: Message) {
        let _ = (session, message);
    }

    /// The connection ended; the last call for this session.
    fn on_disconnect(&self, session: &Session, reason: &CloseReason) {
        let _ = (session, reason);
    }

    /// Something failed that is not a disconnect: a refused handshake, a
    /// failed connect attempt, a failed accept. Servers report
    /// [`std::io::Error`]s (a handshake timeout with
    /// [`TimedOut`](std::io::ErrorKind::TimedOut); an accept that failed
    /// for want of descriptors, at most once a second while it lasts, see
    /// [`AcceptErrors`](storm_host::setup::AcceptErrors)), clients
    /// [`ClientError`](crate::ClientError)s: downcast to tell them apart.
    /// A server connection's failure names its peer
    /// ([`from_peer`](storm_host::setup::from_peer): `from ADDR: …`, the
    /// cause as its source; [`client_speaks_tls`](storm_host::setup::client_speaks_tls)
    /// finds a TLS client on a plain server).
    fn on_error(&self, error: &(dyn std::error::Error + Send + Sync + 'static)) {
        let _ = error;
    }

    /// A client lost its connection and will try again after `delay`
    /// (attempt 1, 2, …).
    fn on_reconnecting(&self, attempt: u32, delay: Duration) {
        let _ = (attempt, delay);
    }
}
