//! Storm on blocking `std::net` sockets and threads: TCP and WebSocket
//! servers and clients, with the same API shape as `storm-tokio`, but
//! blocking: [`Handler`] methods are plain functions,
//! [`Session::send_blocking`] blocks under the `Wait` policy (a
//! [`Session`] is the same type on every adapter; its async `send` is for
//! async tasks), and [`WsServer::serve`] blocks until
//! [`ServerHandle::shutdown`].
//!
//! Every protocol decision comes from [`storm_proto`]; this crate owns the
//! sockets and the threads. Per connection:
//!
//! - a **reader thread** (the one that ran the handshakes) blocks in
//!   `read` with a read timeout taken from
//!   [`LinkDriver::poll_timeout`](storm_host::link::LinkDriver::poll_timeout), so
//!   heartbeats and close timeouts fire; it feeds the link and calls your
//!   [`Handler`], one event at a time, in order;
//! - a **writer thread** parks until the session's outbox wakes it, then
//!   writes everything queued in one vectored write, and shuts the socket
//!   down when the link says the connection is over.
//!
//! Servers accept on one more thread (yours, in [`WsServer::serve`], or a
//! new one with [`WsServer::spawn`]); clients run their connection, and
//! their reconnects, on their own threads.
//!
//! # TLS
//!
//! Set [`ServerOptions::tls`](storm_host::options::ServerOptions::tls) on
//! a server (optionally with a client CA, to require client certificates),
//! and [`ClientOptions::tls`](storm_host::options::ClientOptions::tls) or a
//! `wss://` URL on a client: the same options, the same certificate checks
//! and the same errors as `storm-tokio` ([`ClientError::Tls`] when the
//! server is not trusted or refuses the client), and a rustls
//! configuration of your own goes in as it is
//! (`TlsServerOptions::from_config`, `TlsClientOptions::from_config`). The
//! configuration comes from storm-host's `tls` module; this crate's `tls`
//! module re-exports its PEM-file helpers and says how the two threads
//! share one rustls connection. Features as storm-tokio's: `tls` and `ring`
//! (default), `aws-lc-rs`, `native-roots`; without `tls` no rustls is
//! compiled and TLS options are refused at bind and connect.
//!
//! # Limits
//!
//! - **Two threads per connection**, TLS or not: about 43 KiB resident
//!   per open WebSocket connection (measured: the reader's stack 28 KiB,
//!   16 KiB of it its read buffer; the writer's 8 KiB; 7 KiB of heap),
//!   where `storm-tokio` needs 2.8 KiB; the kernel's own cost of each
//!   thread comes on top. Fine for hundreds to a few thousand
//!   connections; not for tens of thousands: use `storm-tokio` for that.
//!   Each thread reserves the standard library's default stack (2 MiB of
//!   address space, or `RUST_MIN_STACK`); only the pages it touches are
//!   resident. Handlers run on the reader thread, below its read buffer.
//! - **A closed connection leaves little behind**: a connection's
//!   threads end with it (no handle is kept for `serve` to join), and its
//!   read buffer, on the reader's stack, goes with them. Its heap goes
//!   back to the allocator, which keeps it for the next connections
//!   (glibc: about 7 KiB per connection at the peak), so rounds of
//!   connection churn do not grow the process.
//! - **TLS shares one lock per connection** between its reader and writer.
//!   Neither holds it while blocked on the socket, only while rustls
//!   decrypts one read (16 KiB at most) or encrypts one batch (64 KiB at
//!   most), so the two directions slow each other down a little under full
//!   duplex load but never stop each other. Plain TCP has no such lock.
//! - A handshake (TLS, then the WebSocket upgrade) runs on the connection's
//!   own thread before the writer starts, bounded by the handshake timeout
//!   (servers) or the connect timeout (clients).
//! - A client's name resolution (`to_socket_addrs`) blocks without a
//!   timeout of its own; the connect timeout covers the TCP connect, the
//!   TLS handshake and the upgrade.
//! - A writer blocked on a peer that does not read looks every 200 ms
//!   whether its session was aborted.
//! - A handler that panics aborts its connection; the server keeps going.
//!
//! ```no_run
//! use storm_std::{Handler, Session, WsServer};
//! use storm_std::proto::Message;
//! use storm_std::host::options::{ServerOptions, WsOptions};
//!
//! struct Echo;
//!
//! impl Handler for Echo {
//!     fn on_message(&self, session: &Session, message: Message) {
//!         let _ = session.send_blocking(message);
//!     }
//! }
//!
//! # fn main() -> std::io::Result<()> {
//! let options = ServerOptions::default().with_addr("127.0.0.1:9001");
//! let server = WsServer::bind(options, WsOptions::default())?;
//! println!("listening on {}", server.local_addr());
//! server.serve(Echo)
//! # }
//! ```
//!
//! [`ws::WebSocket`] is the lower-level piece: one blocking WebSocket over
//! any `Read + Write` stream (a rustls `StreamOwned` too), without
//! sessions, hub or heartbeat; its own [`ws::connect`] speaks `ws://` only.
//!
//! # Examples
//!
//! The repository's `examples/` (package `storm-examples`) are written once
//! for every adapter; `--runtime std` runs them on this one:
//! `cargo run -p storm-examples --example NAME -- --runtime std ARGS`, NAME
//! one of `ws_echo`, `tcp_echo`, `chat`, `reconnecting_client` and
//! `autobahn_client` (`--help` gives each one's arguments).
//! `ws_echo_blocking` and `autobahn_client_blocking` use [`ws::WebSocket`].

mod client;
mod deadline;
mod driver;
mod handler;
mod server;
#[cfg(feature = "tls")]
pub mod tls;
pub mod ws;

pub use client::{Client, ClientError, TcpClient, WsClient};
pub use deadline::Deadlined;
pub use handler::Handler;
pub use server::{ServerHandle, TcpServer, WsServer};
pub use storm_host as host;
pub use storm_host::session::{SendError, Session};
pub use storm_host::setup::{Decision, UpgradeInfo};
pub use storm_proto as proto;

/// Refuses TLS options (`wanted`) when this crate is built without its
/// `tls` feature: servers at bind, clients when they start.
fn check_tls(wanted: bool) -> std::io::Result<()> {
    match wanted && !cfg!(feature = "tls") {
        true => Err(no_tls()),
        false => Ok(()),
    }
}

/// Why TLS options are refused without the `tls` feature.
fn no_tls() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        "TLS options are set, but storm-std is built without its `tls` feature",
    )
}
