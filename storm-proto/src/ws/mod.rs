//! RFC 6455 WebSocket: handshake, frames, connection, permessage-deflate.
//!
//! - [`handshake`]: the HTTP/1.1 upgrade, client and server;
//! - [`Connection`]: the connection state machine once the upgrade is done;
//! - [`frame`]: the frame header codec and masking, for those who build
//!   frames themselves (a broadcast encodes one frame for many sessions);
//! - [`deflate`]: permessage-deflate (RFC 7692), negotiated by the handshake.

mod close;
mod conn;
pub mod deflate;
pub mod extensions;
pub mod frame;
pub mod handshake;
mod url;
mod utf8;

pub use crate::message::Utf8Bytes;
pub use close::{CloseCode, CloseFrame};
pub use conn::{Config, Connection, DIRECT_READ_MIN, Event, ProtocolError, SendError};
pub(crate) use conn::{
    InputGrowth, RESERVE_AHEAD, direct_read_room, queue_behind_output, release_bytes,
};
pub use url::{UrlError, WsUrl};

/// Which end of a connection a machine plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The end that opened the connection: masks every frame it sends.
    Client,
    /// The end that accepted the connection: never masks, requires masked input.
    Server,
}
