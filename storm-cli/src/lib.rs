//! The library side of the `storm` binary: services other programs and the
//! tests can embed, built only on Storm's public API. The binary
//! (`src/main.rs`) is a thin command line over these modules.
//!
//! - [`bench`](mod@bench): `storm bench`, the load generator for every service.
//! - [`broker`]: the consumer/provider request broker over TCP (or TLS):
//!   the server on tokio, smol or std threads; the consumer and provider
//!   on tokio.
//! - [`gateway`]: one WebSocket endpoint routing to named backends, on
//!   tokio, smol or std threads.
//! - [`interrupt`]: Ctrl-C for every service, on every runtime.
//! - [`runtime`]: `--runtime tokio|smol|std` and `--tls` for every
//!   service.
//! - [`rpc`]: request/response client (several endpoints, round-robin or
//!   failover, timeouts, cancellation, compression, pluggable codecs) and
//!   server, over WebSocket or length-prefixed TCP (or TLS); the server on
//!   tokio, smol or std threads, the client on tokio or smol.

pub mod bench;
pub mod broker;
pub mod gateway;
pub mod interrupt;
pub mod rpc;
pub mod runtime;
