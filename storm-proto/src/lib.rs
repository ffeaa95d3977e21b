//! The sans-IO protocol core of Storm.
//!
//! Every protocol here is a state machine that is driven, never drives: the
//! caller feeds it the bytes a socket returned (`handle_input`), drains what it
//! produced (`poll_event`, `poll_transmit`) and, for timed machines, tells it
//! the time. Nothing in this crate opens a socket, spawns a thread, sleeps or
//! reads a clock, so the same machines run under tokio, smol, plain threads,
//! or a deterministic test simulator. The adapters `storm-tokio`,
//! `storm-smol` and `storm-std` do exactly that.
//!
//! | module | what it is |
//! |---|---|
//! | [`framing`] | message framers for plain TCP: raw, 4-byte length prefix, delimiter |
//! | [`ws::handshake`] | the WebSocket HTTP/1.1 upgrade, client and server |
//! | [`ws::Connection`] | RFC 6455 after the upgrade: frames, fragmentation, UTF-8, control frames, closing |
//! | [`ws::deflate`] | permessage-deflate (RFC 7692) |
//! | [`heartbeat`] | ping interval, missed pongs, dead-peer detection, RTT, idle timeout |
//! | [`link`] | one live connection as a `&mut` machine: a framer or WebSocket, heartbeat, close handshake, idle-buffer release; bytes and `now` in, events, bytes to send and the next deadline out |
//! | [`reconnect`] | backoff (fixed, exponential with jitter, max attempts) and endpoint sets with round-robin and failover |
//! | [`route`] | the gateway's route handshake (SYN, SYN/ACK, ACK, route names, end) and `ROUTENAME=` route-addressed messages |
//! | [`backplane`] | rooms across nodes: channel names, the node-to-node envelope, node ids, per-room offsets and epochs, de-duplication and gap detection, the recovery rule, presence with TTL deadlines |
//! | [`backpressure`] | pending-byte accounting with pause at the limit and resume at half; slow-consumer decisions (`Wait`, `Drop`, `Disconnect`) |
//! | [`broker`] | request/response broker: 24-byte frames, streaming and reassembly, consumer/provider routing, request correlation |
//! | [`rpc`] | request/response RPC: the envelope (request, response, error, cancel), per-message compression, client call correlation with deadlines and cancellation, server request tracking |
//! | [`deadline`] | the timer table of the rpc and broker machines: entries keyed by id, each with an optional deadline; the earliest first, expiry at `now`, removal when done |
//! | [`tls_sniff`] | telling a TLS record from plain bytes: a plain end whose peer speaks TLS gets an error that says so |
//!
//! # The drive loop
//!
//! A WebSocket server on a blocking socket, written against the core alone
//! (the adapters wrap this loop, add timers, sessions and TLS):
//!
//! ```no_run
//! use std::io::{Read, Write};
//! use std::sync::Arc;
//!
//! use bytes::BytesMut;
//! use storm_proto::ws::handshake::{ServerConfig, ServerHandshake, ServerStep};
//! use storm_proto::ws::{Config, Connection, Event, Side};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let listener = std::net::TcpListener::bind("127.0.0.1:9001")?;
//! let (mut socket, _) = listener.accept()?;
//! let mut buf = vec![0u8; 16 * 1024];
//! let mut out = BytesMut::new();
//!
//! // 1. The opening handshake: feed bytes until the request is complete.
//! let mut handshake = ServerHandshake::new(Arc::new(ServerConfig::default()))?;
//! let pending = loop {
//!     let n = socket.read(&mut buf)?;
//!     match handshake.handle_input(&buf[..n]) {
//!         Ok(ServerStep::NeedMore(next)) => handshake = next,
//!         Ok(ServerStep::Request(pending)) => break pending,
//!         Err(refused) => {
//!             refused.write_response(&mut out); // 400, 426 or 431
//!             socket.write_all(&out)?;
//!             return Ok(());
//!         }
//!     }
//! };
//! // The application may look at pending.request() (path, headers) here.
//! let accepted = pending.accept(&mut out);
//! socket.write_all(&out)?;
//!
//! // 2. The connection: input in, then drain events, then drain transmits.
//! let mut conn = Connection::new(Side::Server, Config::default());
//! conn.handle_input(&accepted.leftover); // frames sent right after the request
//! loop {
//!     while let Some(event) = conn.poll_event()? {
//!         match event {
//!             Event::Text(text) => conn.send_text(&text)?,
//!             Event::Binary(data) => conn.send_binary(&data)?,
//!             _ => {} // pings are answered for us; Close ends the loop below
//!         }
//!     }
//!     while let Some(bytes) = conn.poll_transmit() {
//!         socket.write_all(&bytes)?;
//!     }
//!     if conn.is_closed() {
//!         return Ok(()); // a server closes the TCP connection first
//!     }
//!     match socket.read(&mut buf)? {
//!         0 => conn.handle_eof(),
//!         n => conn.handle_input(&buf[..n]),
//!     }
//! }
//! # }
//! ```
//!
//! # Errors
//!
//! Every decoder is total: any byte sequence gives events or a typed error,
//! never a panic, and every buffer has a documented limit that is checked
//! before memory is reserved. Errors say whose fault they are: a peer's
//! violation carries what goes on the wire (a WebSocket close code, an HTTP
//! status); a local misuse (sending after close) is a separate error type.
//! After a fatal error a machine stays failed and returns the same error,
//! but what it queued (a close frame, an error response) can still be
//! drained.
#![warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod backplane;
pub mod backpressure;
pub mod broker;
pub mod deadline;
pub mod framing;
pub mod heartbeat;
pub mod link;
mod message;
mod read_ahead;
pub mod reconnect;
pub mod route;
pub mod rpc;
#[cfg(test)]
mod test_util;
pub mod tls_sniff;
pub mod ws;

pub use message::{Message, Utf8Bytes};
