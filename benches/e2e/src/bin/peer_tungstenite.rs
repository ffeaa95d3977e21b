//! WebSocket echo with tokio-tungstenite: `accept_async`, then the data
//! messages of the read half forwarded into the write half (the crate's own
//! echo-server pattern; the sink flushes when no more input is ready).
//!
//! Usage: `peer_tungstenite ADDR` (loopback only).

use std::future::ready;
use std::process::ExitCode;

use futures_util::{StreamExt, TryStreamExt};
use storm_e2e::peer::{self, BoxError};
use tokio::net::TcpStream;

async fn echo(stream: TcpStream) -> Result<(), BoxError> {
    let ws = tokio_tungstenite::accept_async(stream).await?;
    let (sink, source) = ws.split();
    source
        .try_filter(|message| ready(message.is_binary() || message.is_text()))
        .forward(sink)
        .await?;
    Ok(())
}

fn main() -> ExitCode {
    peer::run("peer_tungstenite", "ws", echo)
}
