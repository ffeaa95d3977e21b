//! `storm client json`'s connection on storm-std: a reader and a writer
//! thread; the client's loop waits on its own thread (smol's `block_on`
//! and timer, no executor of its own).

use std::io;
use std::time::Instant;

use storm_host::link::CloseReason;
use storm_host::options::ClientOptions;
use storm_proto::Message;
use storm_proto::framing::Framing;
use storm_std::{Client, Handler, Session, TcpClient};

use super::{DROPPED, Inbox, Wire};

/// A storm-std client.
pub(super) struct StdWire(Client);

impl Wire for StdWire {
    async fn connect(addr: &str, options: ClientOptions, inbox: Inbox) -> Result<Self, String> {
        TcpClient::connect(addr, options, Framing::LengthPrefix, inbox)
            .map(Self)
            .map_err(|e| e.to_string())
    }

    /// Blocks while the connection is backpressured: nothing else runs on
    /// the client's thread meanwhile.
    async fn send(&self, message: Message) -> io::Result<()> {
        self.0.send(message).map_err(|e| io::Error::new(DROPPED, e))
    }

    fn close(&self) {
        self.0.close();
    }

    async fn sleep_until(deadline: Instant) {
        smol::Timer::at(deadline).await;
    }
}

impl Handler for Inbox {
    fn on_message(&self, _session: &Session, message: Message) {
        // Blocking here (on the reader thread) holds the connection's
        // reading back while the client's loop is behind.
        if let Some(tx) = self.sender() {
            let _ = tx.blocking_send(message);
        }
    }

    fn on_disconnect(&self, _session: &Session, _reason: &CloseReason) {
        self.close();
    }
}
