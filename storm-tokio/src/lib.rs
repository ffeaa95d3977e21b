//! Storm on tokio: TCP and WebSocket servers and clients.
//!
//! Every protocol decision comes from [`storm_proto`]; this crate owns the
//! sockets, the tasks and the timers. One task per connection runs the
//! [`Link`](storm_proto::link::Link) loop: read → events → your
//! [`Handler`]; outbox → one vectored write; timer → heartbeat.
//!
//! TLS (rustls) is an option, not another server or client: set
//! [`ServerOptions::tls`](storm_proto::options::ServerOptions::tls) or
//! [`ClientOptions::tls`](storm_proto::options::ClientOptions::tls) (a
//! `wss://` URL turns it on by itself); the [`tls`] module loads PEM files.
//!
//! ```no_run
//! use storm_tokio::{Handler, Session, WsServer};
//! use storm_tokio::proto::Message;
//! use storm_tokio::proto::options::{ServerOptions, WsOptions};
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
//! let options = ServerOptions { addr: "127.0.0.1:9001".into(), ..ServerOptions::default() };
//! let server = WsServer::bind(options, WsOptions::default()).await?;
//! println!("listening on {}", server.local_addr());
//! server.serve(Echo).await
//! # }
//! ```

mod client;
mod driver;
mod handler;
mod server;
mod session;
pub mod tls;

pub use client::{Client, ClientError, TcpClient, WsClient};
pub use handler::Handler;
pub use server::{ServerHandle, TcpServer, WsServer};
pub use session::{SendError, Session};
pub use storm_proto as proto;
