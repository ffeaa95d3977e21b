//! Storm on blocking `std::net` sockets and threads.
//!
//! So far: [`ws::WebSocket`], a blocking WebSocket over any `Read + Write`
//! stream, with [`ws::connect`] for `ws://` URLs. The servers, sessions and
//! rooms of the other adapters come with their own issue.

pub mod ws;

pub use storm_proto as proto;
