//! What Storm's adapters share that is not protocol logic.
//!
//! [`storm_proto`] holds the protocols as pure, single-owner machines: no
//! clock reads, no locks, no files, no sockets, no `std::io` errors. What
//! every adapter (storm-async for tokio and smol, storm-std for threads)
//! needs beyond them lives here, once: state shared between connections
//! and the tasks or threads that send to them (behind short-held locks),
//! connection setup with its errors in `std::io` terms, the option
//! structs with their socket options, and TLS configuration from PEM data
//! or files. Nothing here does I/O on a socket either; the adapters do.
//!
//! | module | what it is |
//! |---|---|
//! | [`hub`] | what servers share that is not I/O: sessions and their outboxes, groups, broadcast fan-out, max connections, middleware, metrics |
//! | [`link`] | `LinkDriver`: storm-proto's `Link` joined to the connection's outbox and the middleware, what an adapter owns per connection (read path, write path, timer) |
//! | [`session`] | a connection as the application holds it: `Session`, the same type on every adapter (sending with `send(..).await` or `send_blocking`), and a server's `Registry` of them |
//! | [`options`] | option structs shared by every adapter (servers, clients, WebSocket, framing) |
//! | [`setup`] | opening a connection apart from the I/O: client targets and server setups checked once (TLS included), the WebSocket upgrade bytes in and protocol out, admission into a hub, a client's reconnect schedule |
//! | `tls` | (feature `tls`) the shared TLS options into rustls configurations (or the application's own, used as they are; the provider by feature, `ring` or `aws-lc-rs`; the system's roots with `native-roots`); PEM files into options; rustls' errors as sentences that say what to do |

#![warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod hub;
pub mod link;
pub mod options;
pub mod session;
pub mod setup;
#[cfg(feature = "tls")]
pub mod tls;
