//! What the loopback test files share: a handler that records every
//! callback into a channel, and bounded waits on that channel.
#![allow(dead_code, missing_docs)] // each test file uses a different subset

use std::io;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::timeout;

use storm_host::link::CloseReason;
use storm_proto::Message;
use storm_tokio::{Client, Handler, Session};

/// The most any test waits for one event.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// What a test handler saw.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Seen {
    Connect,
    Message(Message),
    Disconnect(CloseReason),
    Reconnecting(u32),
    /// `on_error`: the I/O error kind (if it is one) and the text.
    Error(Option<io::ErrorKind>, String),
}

/// Records everything; echoes messages when asked.
pub(crate) struct Recorder {
    tx: mpsc::UnboundedSender<Seen>,
    echo: bool,
}

impl Handler for Recorder {
    async fn on_connect(&self, _: &Session) {
        let _ = self.tx.send(Seen::Connect);
    }
    async fn on_message(&self, session: &Session, message: Message) {
        let _ = self.tx.send(Seen::Message(message.clone()));
        if self.echo {
            let _ = session.send(message).await;
        }
    }
    async fn on_disconnect(&self, _: &Session, reason: &CloseReason) {
        let _ = self.tx.send(Seen::Disconnect(reason.clone()));
    }
    async fn on_error(&self, error: &(dyn std::error::Error + Send + Sync + 'static)) {
        let kind = error.downcast_ref::<io::Error>().map(io::Error::kind);
        let _ = self.tx.send(Seen::Error(kind, error.to_string()));
    }
    async fn on_reconnecting(&self, attempt: u32, _: Duration) {
        let _ = self.tx.send(Seen::Reconnecting(attempt));
    }
}

/// A recording handler and the receiving end of what it records.
pub(crate) fn recorder(echo: bool) -> (Recorder, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Recorder { tx, echo }, rx)
}

/// The next callback, within [`WAIT`].
pub(crate) async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    timeout(WAIT, rx.recv())
        .await
        .expect("event in time")
        .expect("handler alive")
}

/// The next message, skipping other callbacks.
pub(crate) async fn next_message(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Message {
    loop {
        if let Seen::Message(message) = next(rx).await {
            return message;
        }
    }
}

/// The next disconnect, skipping other callbacks.
pub(crate) async fn next_disconnect(rx: &mut mpsc::UnboundedReceiver<Seen>) -> CloseReason {
    loop {
        if let Seen::Disconnect(reason) = next(rx).await {
            return reason;
        }
    }
}

/// Sends each message through `client` (to an echo server), checks that it
/// comes back unchanged, then closes and checks the close handshake.
pub(crate) async fn echo_and_close(
    client: &Client,
    rx: &mut mpsc::UnboundedReceiver<Seen>,
    messages: impl IntoIterator<Item = Message>,
) {
    for message in messages {
        client.send(message.clone()).await.unwrap();
        assert_eq!(next_message(rx).await, message);
    }
    client.close();
    assert!(matches!(next_disconnect(rx).await, CloseReason::Remote(_)));
    timeout(WAIT, client.closed()).await.unwrap();
}
