//! RFC 6455 WebSocket: handshake, frames, connection, permessage-deflate.

pub mod deflate;
pub mod extensions;
pub mod frame;
pub mod handshake;

/// Which end of a connection a machine plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The end that opened the connection: masks every frame it sends.
    Client,
    /// The end that accepted the connection: never masks, requires masked input.
    Server,
}
