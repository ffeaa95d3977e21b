//! What several of the binary's test files use.

use std::sync::mpsc;

use storm_proto::Message;

/// A storm-std client handler that forwards every message it receives.
pub(crate) struct Inbox(pub(crate) mpsc::Sender<Message>);

impl storm_std::Handler for Inbox {
    fn on_message(&self, _: &storm_std::Session, message: Message) {
        let _ = self.0.send(message);
    }
}
