//! Storm on tokio: TCP and WebSocket servers and clients.
//!
//! Not built yet: the adapter lands with its own issue. The protocol core is
//! [`storm_proto`].

pub use storm_proto as proto;
