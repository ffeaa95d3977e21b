//! `storm client json`'s connection on tokio and smol: one generic path
//! over storm-async's `Runtime`.

use std::io;
use std::marker::PhantomData;
use std::time::Instant;

use storm_async::{Client, Handler, Runtime, Session, TcpClient};
use storm_host::link::CloseReason;
use storm_host::options::ClientOptions;
use storm_proto::Message;
use storm_proto::framing::Framing;

use super::{DROPPED, Inbox, Wire};

/// A storm-async client on runtime `R`.
pub(super) struct AsyncWire<R> {
    client: Client,
    runtime: PhantomData<fn() -> R>,
}

impl<R: Runtime> Wire for AsyncWire<R> {
    async fn connect(addr: &str, options: ClientOptions, inbox: Inbox) -> Result<Self, String> {
        let client = TcpClient::<R>::connect(addr, options, Framing::LengthPrefix, inbox)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Self {
            client,
            runtime: PhantomData,
        })
    }

    async fn send(&self, message: Message) -> io::Result<()> {
        self.client
            .send(message)
            .await
            .map_err(|e| io::Error::new(DROPPED, e))
    }

    fn close(&self) {
        self.client.close();
    }

    async fn sleep_until(deadline: Instant) {
        R::sleep_until(deadline).await;
    }
}

impl Handler for Inbox {
    async fn on_message(&self, _session: &Session, message: Message) {
        // Awaiting here holds the connection's reading back while the
        // client's loop is behind.
        if let Some(tx) = self.sender() {
            let _ = tx.send(message).await;
        }
    }

    async fn on_disconnect(&self, _session: &Session, _reason: &CloseReason) {
        self.close();
    }
}
