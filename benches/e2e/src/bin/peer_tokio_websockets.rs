//! WebSocket echo with tokio-websockets: `ServerBuilder::accept` with the
//! crate's default `Config` (4 MiB frames, 8 KiB flush threshold) and
//! `Limits`, then the one `WebSocketStream` (not `split()`, whose halves
//! share a lock) driven by [`peer::echo_batched`]: every message that is
//! ready is read first, then their echoes are fed and flushed once. Reading
//! first matters for this crate: polling its stream flushes whatever frames
//! are queued, so feeding each echo as it is read (or `forward`) would cost
//! one write per message. Pings and the close handshake are answered by the
//! crate itself.
//!
//! On a current-thread runtime like every peer ([`peer::run`]).
//!
//! Usage: `peer_tokio_websockets ADDR` (loopback only).

use std::process::ExitCode;

use storm_e2e::peer::{self, BoxError};
use tokio::net::TcpStream;
use tokio_websockets::{Message, ServerBuilder};

async fn echo(stream: TcpStream) -> Result<(), BoxError> {
    let (_request, ws) = ServerBuilder::new().accept(stream).await?;
    peer::echo_batched(ws, |message: Message| {
        (message.is_binary() || message.is_text()).then_some(message)
    })
    .await
}

fn main() -> ExitCode {
    peer::run("peer_tokio_websockets", "ws", echo)
}
