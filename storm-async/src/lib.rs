//! Storm's async adapter, on any runtime: TCP and WebSocket servers and
//! clients, sessions, and the per-connection loop, generic over a small
//! [`Runtime`] trait.
//!
//! Users pick a runtime crate, not this one: `storm-tokio` and `storm-smol`
//! implement [`Runtime`] and name these servers and clients for their
//! runtime (`storm_tokio::WsServer` is `storm_async::WsServer<Tokio>`), so
//! switching runtime means changing one crate name. [`Handler`],
//! [`Session`] and [`Client`] are not generic: the same handler runs on
//! every runtime. [`Session`] is storm-host's, the one type every adapter
//! hands its handlers; here it sends with `session.send(message).await`.
//!
//! Every protocol decision comes from [`storm_proto`]. Per connection, one
//! task polls a reader (socket → [`LinkDriver`](storm_host::link::LinkDriver) →
//! handler; the link's timer) and a writer (outbox → one vectored write);
//! reads go through one buffer per worker thread, so an idle connection
//! holds none, and a connection that goes idle returns its other buffers
//! (see [`LinkConfig::release_after`](storm_host::link::LinkConfig::release_after)).
//!
//! TLS (rustls) is an option, not another server or client: set
//! [`ServerOptions::tls`](storm_host::options::ServerOptions::tls) or
//! [`ClientOptions::tls`](storm_host::options::ClientOptions::tls) (a
//! `wss://` URL turns it on by itself); storm-host's `tls` module builds the
//! rustls configurations and loads PEM files, the runtime only runs the
//! handshake on its streams. This crate compiles no rustls itself: a
//! runtime without TLS ([`Runtime::TLS`] false) makes servers and clients
//! refuse TLS options when they start.

mod client;
mod driver;
mod handler;
mod io;
pub mod runtime;
mod server;
mod sync;
pub mod websocket;

pub use client::{Client, ClientError, TcpClient, WsClient};
pub use handler::Handler;
pub use runtime::Runtime;
pub use server::{PendingSession, ServerHandle, TcpServer, UpgradeAnswer, WsServer};
pub use storm_host as host;
pub use storm_host::session::{SendError, Session};
pub use storm_proto as proto;
pub use websocket::{StreamConfig, WebSocketStream, WsStreamError};
