//! The echo service: every message goes back to its sender, over whatever
//! transport the server speaks (WebSocket, or TCP with any of the core's
//! framers), with or without TLS. [`Echo`] is the handler for every
//! runtime: storm-async's (tokio and smol) and storm-std's.

use storm_host::hub::SendOutcome;
use storm_host::link::CloseReason;
use storm_proto::Message;

use crate::host::{connection_closed, connection_error};

/// The echo handler, the same on tokio, smol and std threads.
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

impl storm_async::Handler for Echo {
    /// The fast path: the reply is queued at once; only a send that must
    /// wait (the `Wait` policy, a full send limit) goes to `on_message`.
    fn on_message_now(&self, session: &storm_async::Session, message: Message) -> Option<Message> {
        match session.try_send(message) {
            SendOutcome::Wait(message) => Some(message),
            // Queued, or refused as `send` would refuse it: closing,
            // dropped or disconnected by the slow-consumer policy.
            _ => None,
        }
    }

    async fn on_message(&self, session: &storm_async::Session, message: Message) {
        // A send fails only when the session is already closing.
        let _ = session.send(message).await;
    }

    async fn on_disconnect(&self, session: &storm_async::Session, reason: &CloseReason) {
        connection_closed(session.remote_addr(), reason);
    }

    async fn on_error(&self, error: &(dyn std::error::Error + Send + Sync + 'static)) {
        connection_error(error);
    }
}

impl storm_std::Handler for Echo {
    fn on_message(&self, session: &storm_std::Session, message: Message) {
        let _ = session.send_blocking(message);
    }

    fn on_disconnect(&self, session: &storm_std::Session, reason: &CloseReason) {
        connection_closed(session.remote_addr(), reason);
    }

    fn on_error(&self, error: &(dyn std::error::Error + Send + Sync + 'static)) {
        connection_error(error);
    }
}
