//! WebSocket echo with tokio-websockets: `ServerBuilder::accept`, then the
//! data messages forwarded back into the same stream's sink (pings and the
//! close handshake are answered by the crate itself).
//!
//! Usage: `peer_tokio_websockets ADDR` (loopback only).

use std::future::ready;
use std::process::ExitCode;

use futures_util::{StreamExt, TryStreamExt};
use storm_e2e::peer::{self, BoxError};
use tokio::net::TcpStream;
use tokio_websockets::ServerBuilder;

async fn echo(stream: TcpStream) -> Result<(), BoxError> {
    let (_request, ws) = ServerBuilder::new().accept(stream).await?;
    let (sink, source) = ws.split();
    source
        .try_filter(|message| ready(message.is_binary() || message.is_text()))
        .forward(sink)
        .await?;
    Ok(())
}

fn main() -> ExitCode {
    peer::run("peer_tokio_websockets", "ws", echo)
}
