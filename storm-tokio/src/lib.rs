//! Storm on tokio: TCP and WebSocket servers and clients.
//!
//! Every protocol decision comes from [`storm_proto`]; the servers,
//! clients and the per-connection loop are storm-async's, shared with
//! storm-smol; this crate is the [`Tokio`] runtime under them (sockets,
//! tasks, timers, tokio-rustls). One task per connection runs the
//! [`LinkDriver`](storm_host::link::LinkDriver) loop: read → events → your
//! [`Handler`]; outbox → one vectored write; timer → heartbeat.
//!
//! TLS (rustls) is an option, not another server or client: set
//! [`ServerOptions::tls`](storm_host::options::ServerOptions::tls) or
//! [`ClientOptions::tls`](storm_host::options::ClientOptions::tls) (a
//! `wss://` URL turns it on by itself); the `tls` module loads PEM files,
//! and a rustls configuration of your own goes in as it is
//! (`TlsServerOptions::from_config`, `TlsClientOptions::from_config`).
//!
//! # Features
//!
//! - `tls` (default): TLS through rustls. Without it no rustls is
//!   compiled, and TLS options are refused at bind and connect.
//! - `ring` (default), `aws-lc-rs`: the crypto provider of configurations
//!   built from PEM (aws-lc-rs when on; it needs cmake to build). A
//!   process-wide default provider the application installed comes first,
//!   and a configuration of your own brings its own. For aws-lc-rs alone:
//!   `default-features = false, features = ["tls", "aws-lc-rs"]`.
//! - `native-roots`: `TlsClientOptions::native_roots`, the operating
//!   system's trust store (rustls-native-certs) instead of the web roots.
//! - `axum`: the `axum` module, Storm's WebSockets and sessions served by
//!   an axum router or a hyper 1.x service (`StormUpgrade`).
//!
//! ```no_run
//! use storm_tokio::{Handler, Session, WsServer};
//! use storm_tokio::proto::Message;
//! use storm_tokio::host::options::{ServerOptions, WsOptions};
//!
//! struct Echo;
//!
//! impl Handler for Echo {
//!     async fn on_message(&self, session: &Session, message: Message) {
//!         let _ = session.send(message).await;
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> std::io::Result<()> {
//! let options = ServerOptions::default().with_addr("127.0.0.1:9001");
//! let server = WsServer::bind(options, WsOptions::default()).await?;
//! println!("listening on {}", server.local_addr());
//! server.serve(Echo).await
//! # }
//! ```
//!
//! # Examples
//!
//! The repository's `examples/` (package `storm-examples`) are written once
//! for every adapter; `--runtime tokio` runs them on this one:
//! `cargo run -p storm-examples --example NAME -- --runtime tokio ARGS`, NAME
//! one of `ws_echo`, `tcp_echo`, `chat`, `reconnecting_client` and
//! `autobahn_client` (`--help` gives each one's arguments).

#[cfg(feature = "axum")]
pub mod axum;
pub mod runtime;
#[cfg(feature = "tls")]
pub mod tls;
pub mod websocket;

pub use runtime::Tokio;
pub use storm_async::{Client, ClientError, Handler, SendError, Session};
pub use storm_host as host;
pub use storm_host::setup::{Decision, UpgradeInfo};
pub use storm_proto as proto;
pub use websocket::WebSocketStream;

/// A WebSocket server on tokio. See the [crate docs](crate) for an example.
pub type WsServer = storm_async::WsServer<Tokio>;
/// A plain TCP server with a framer (length-prefixed by default), on tokio.
pub type TcpServer = storm_async::TcpServer<Tokio>;
/// Controls a running tokio server: sessions, groups, broadcast, shutdown.
pub type ServerHandle = storm_async::ServerHandle<Tokio>;
/// Connects WebSocket clients on tokio.
pub type WsClient = storm_async::WsClient<Tokio>;
/// Connects plain TCP clients with a framer on tokio.
pub type TcpClient = storm_async::TcpClient<Tokio>;
