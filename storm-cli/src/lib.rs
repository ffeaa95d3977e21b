//! The library side of the `storm` binary: services whose API is useful
//! on its own, built only on Storm's public API.
//!
//! - [`broker`]: the consumer/provider request broker (server, consumer,
//!   provider) over plain TCP on tokio.

pub mod broker;
