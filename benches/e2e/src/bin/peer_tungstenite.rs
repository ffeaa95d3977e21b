//! WebSocket echo with tokio-tungstenite, configured as the crate performs
//! best on a deep pipeline (issue #16):
//!
//! - `accept_async_with_config` with a 4 KiB read buffer
//!   (`WebSocketConfig::read_buffer_size`; the default, 128 KiB, is what the
//!   crate's docs suggest for high read load, 4 KiB where there are many
//!   connections; 4 KiB is the setting issue #16 measured as tungstenite's
//!   best at 100 connections x 100 x 32 B, and it may cost some speed in
//!   the 64 KiB scenario); the
//!   write buffer keeps its default (128 KiB), so fed messages are only
//!   copied until the flush;
//! - no `split()` (whose halves share a lock): the one `WebSocketStream` is
//!   driven by [`peer::echo_batched`], which reads every message that is
//!   ready, feeds their echoes and flushes once per batch, the `Sink` usage
//!   the crate documents (`feed`, then `flush`).
//!
//! On a current-thread runtime like every peer ([`peer::run`]).
//!
//! Usage: `peer_tungstenite ADDR` (loopback only).

use std::process::ExitCode;

use storm_e2e::peer::{self, BoxError};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Bytes read from the socket at a time.
const READ_BUFFER: usize = 4 * 1024;

async fn echo(stream: TcpStream) -> Result<(), BoxError> {
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let ws = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await?;
    // Pings are answered by the crate; only data messages are echoed.
    peer::echo_batched(ws, |message: Message| {
        (message.is_binary() || message.is_text()).then_some(message)
    })
    .await
}

fn main() -> ExitCode {
    peer::run("peer_tungstenite", "ws", echo)
}
