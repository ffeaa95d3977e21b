//! Storm's services as a library: servers and clients other programs can
//! embed, built only on Storm's public API (storm-proto, storm-host and the
//! adapters). The `storm` binary (storm-cli) is a command line over them;
//! nothing here parses arguments, installs a log subscriber or a signal
//! handler: a service stops when its [`Stop`](host::Stop) signal is raised,
//! and logs through the `tracing` facade.
//!
//! - [`host`]: the runtimes a service runs on (tokio, smol, std threads)
//!   and the stop signal.
//! - [`echo`]: every message back to its sender.
//! - [`json`]: the length-prefixed JSON service.
//! - [`chat`]: a WebSocket chat server with rooms, an admin console and a
//!   chat page.
//! - [`broker`]: the consumer/provider request broker over TCP (or TLS):
//!   the server on tokio, smol or std threads; the consumer and provider
//!   on tokio.
//! - [`rpc`]: request/response client (several endpoints, round-robin or
//!   failover, timeouts, cancellation, compression, pluggable codecs) and
//!   server, over WebSocket or length-prefixed TCP (or TLS); the server on
//!   tokio, smol or std threads, the client on tokio or smol.
//! - [`sys`]: loopback addresses and process accounting for load
//!   generators and tests.

pub mod broker;
pub mod chat;
pub mod echo;
pub mod host;
pub mod json;
pub mod rpc;
pub mod sys;
