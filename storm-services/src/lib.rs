//! Storm's services as a library: servers and clients other programs can
//! embed, built only on Storm's public API (storm-proto, storm-host and the
//! adapters). The `storm` binary (storm-cli) is a command line over them;
//! nothing here parses arguments, installs a log subscriber or a signal
//! handler: a service stops when its [`Stop`](host::Stop) signal is raised,
//! and logs through the `tracing` facade.
//!
//! - [`host`]: the one hosting seam: a service's server started on the
//!   chosen runtime (tokio, smol, std threads), run until its stop signal,
//!   and shut down gracefully.
//! - [`echo`]: every message back to its sender.
//! - [`json`]: the length-prefixed JSON service.
//! - [`chat`]: a WebSocket chat server with rooms, an admin console and a
//!   chat page.
//! - [`broker`]: the consumer/provider request broker over TCP (or TLS):
//!   the server on tokio, smol or std threads; the consumer and provider
//!   on tokio.
//! - [`gateway`]: one WebSocket endpoint routing to named backends
//!   (WebSocket or length-prefixed TCP), on tokio, smol or std threads;
//!   its decisions are [`storm_proto::route::gateway::Switchboard`].
//! - [`rpc`]: request/response client (several endpoints, round-robin or
//!   failover, timeouts, cancellation, compression, pluggable codecs) and
//!   server, over WebSocket or length-prefixed TCP (or TLS); the server on
//!   tokio, smol or std threads, the client on tokio or smol.
//! - [`sys`]: loopback addresses and process accounting for load
//!   generators and tests.

//!
//! # Where runtime-specific code lives
//!
//! One rule for every module: `foo.rs` holds what every runtime shares
//! (the decisions, written once); `foo/on_async.rs` holds the tokio and
//! smol code, one generic path over storm-async's
//! [`Runtime`](storm_async::Runtime); `foo/on_std.rs` holds the storm-std
//! (blocking threads) code. Nothing else names a runtime: no
//! `blocking.rs`, no `server.rs` standing for one flavour. (A *public*
//! std flavour of a type is re-exported as `foo::blocking::Type`, next to
//! the async `foo::Type`, as in [`broker::blocking`] and
//! [`rpc::blocking`].)

pub mod broker;
pub mod chat;
pub mod echo;
pub mod gateway;
pub mod host;
pub mod json;
pub mod rpc;
pub mod sys;
