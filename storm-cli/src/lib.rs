//! The library side of the `storm` binary: what its commands share. The
//! services themselves are the storm-services crate; the binary
//! (`src/main.rs`) is a thin command line over them.
//!
//! - [`interrupt`]: Ctrl-C as a [`Stop`](storm_services::host::Stop)
//!   signal, on every runtime.
//! - [`metrics`]: `--metrics-addr`, a server's metrics as Prometheus
//!   text.
//! - [`policy`]: the policy and limit flags of every server service
//!   (`--max-connections`, `--slow-consumer`, `--heartbeat`, …).
//! - [`runtime`]: `--runtime tokio|smol|std` and `--tls` for every
//!   service.

pub mod interrupt;
pub mod metrics;
pub mod policy;
pub mod runtime;
