//! The library side of the `storm` binary: what the gateway (still here,
//! on its way to storm-services) and the binary share. The services
//! themselves are the storm-services crate; the binary (`src/main.rs`) is
//! a thin command line over them.
//!
//! - [`gateway`]: one WebSocket endpoint routing to named backends, on
//!   tokio, smol or std threads.
//! - [`interrupt`]: Ctrl-C as a [`Stop`](storm_services::host::Stop)
//!   signal, on every runtime.
//! - [`runtime`]: `--runtime tokio|smol|std` and `--tls` for every
//!   service.

pub mod gateway;
pub mod interrupt;
pub mod runtime;
