//! Storm on smol: TCP and WebSocket servers and clients.
//!
//! The same servers, clients, sessions and handler as `storm-tokio`, under
//! the same names: switching runtime means changing the crate name. Every
//! protocol decision comes from [`storm_proto`]; the servers, clients and
//! the per-connection loop are storm-async's; this crate is the [`Smol`]
//! runtime under them: async-io's `Async<TcpStream>` readiness and `Timer`,
//! smol's executor (one thread of storm-smol's own that waits for its
//! sockets itself, or smol's global executor with `SMOL_THREADS` above 1),
//! and futures-rustls for TLS. No tokio anywhere.
//!
//! TLS (rustls) is an option, not another server or client: set
//! [`ServerOptions::tls`](storm_host::options::ServerOptions::tls) or
//! [`ClientOptions::tls`](storm_host::options::ClientOptions::tls) (a
//! `wss://` URL turns it on by itself); the `tls` module loads PEM files,
//! and a rustls configuration of your own goes in as it is
//! (`TlsServerOptions::from_config`, `TlsClientOptions::from_config`).
//! Features as storm-tokio's: `tls` and `ring` (default), `aws-lc-rs`,
//! `native-roots`; without `tls` no rustls is compiled.
//!
//! ```no_run
//! use storm_smol::{Handler, Session, WsServer};
//! use storm_smol::proto::Message;
//! use storm_smol::host::options::{ServerOptions, WsOptions};
//!
//! struct Echo;
//!
//! impl Handler for Echo {
//!     async fn on_message(&self, session: &Session, message: Message) {
//!         let _ = session.send(message).await;
//!     }
//! }
//!
//! fn main() -> std::io::Result<()> {
//!     smol::block_on(async {
//!         let options = ServerOptions::default().with_addr("127.0.0.1:9001");
//!         let server = WsServer::bind(options, WsOptions::default()).await?;
//!         println!("listening on {}", server.local_addr());
//!         server.serve(Echo).await
//!     })
//! }
//! ```
//!
//! # Examples
//!
//! The repository's `examples/` (package `storm-examples`) are written once
//! for every adapter; `--runtime smol` runs them on this one:
//! `cargo run -p storm-examples --example NAME -- --runtime smol ARGS`, NAME
//! one of `ws_echo`, `tcp_echo`, `chat`, `reconnecting_client` and
//! `autobahn_client` (`--help` gives each one's arguments).

#[cfg(unix)]
mod exec;
#[cfg(unix)]
mod readiness;
pub mod runtime;
mod slab;
mod timer;
#[cfg(feature = "tls")]
pub mod tls;
pub mod websocket;

pub use runtime::Smol;

pub use storm_async::{Client, ClientError, Handler, SendError, Session};
pub use storm_host as host;
pub use storm_host::setup::{Decision, UpgradeInfo};
pub use storm_proto as proto;
pub use websocket::WebSocketStream;

/// A WebSocket server on smol. See the [crate docs](crate) for an example.
pub type WsServer = storm_async::WsServer<Smol>;
/// A plain TCP server with a framer (length-prefixed by default), on smol.
pub type TcpServer = storm_async::TcpServer<Smol>;
/// Controls a running smol server: sessions, groups, broadcast, shutdown.
pub type ServerHandle = storm_async::ServerHandle<Smol>;
/// Connects WebSocket clients on smol.
pub type WsClient = storm_async::WsClient<Smol>;
/// Connects plain TCP clients with a framer on smol.
pub type TcpClient = storm_async::TcpClient<Smol>;

/// Locks `mutex` of the timer or the poller. No user code runs under
/// those locks (wakers are woken and dropped outside them), so a panic
/// elsewhere leaves nothing half done: a poisoned lock is taken as it is.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the timer's and the poller's tests share.
#[cfg(test)]
mod testing {
    use std::sync::Arc;
    use std::sync::mpsc::Sender;
    use std::task::Wake;

    /// A waker that sends its name each time it is woken.
    pub(crate) struct Tell(pub(crate) Sender<&'static str>, pub(crate) &'static str);

    impl Wake for Tell {
        fn wake(self: Arc<Self>) {
            let _ = self.0.send(self.1);
        }
    }
}
