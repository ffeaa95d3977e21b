//! WebSocket echo with fastwebsockets, with write coalescing. The crate's
//! own upgrade goes through hyper; here the opening handshake is read from
//! the raw `TcpStream` ([`storm_e2e::handshake::server_response`]) and the
//! socket is then handed to `WebSocket::after_handshake`, wrapped in a
//! `FragmentCollector` and echoed frame by frame as in the crate's echo
//! example.
//!
//! `write_frame` writes every frame to its stream at once, so on a bare
//! `TcpStream` each echo is a `write` call. The crate documents the remedy:
//! give it a buffered stream and call `flush`. Its `read_frame` cannot be
//! polled without waiting (a partly parsed header would be lost), so the
//! buffering stream here, [`Coalesce`] (64 KiB at most), flushes by itself at the one moment
//! that needs it: when a read would wait. Echoes of everything read so far
//! then go out in one write, as with the other peers' batched flush. Frames
//! over the crate's `writev` threshold keep its vectored write, straight
//! through when nothing is buffered.
//!
//! On a current-thread runtime like every peer ([`peer::run`]).
//!
//! Usage: `peer_fastwebsockets ADDR` (loopback only).

use std::process::ExitCode;

use fastwebsockets::{FragmentCollector, OpCode, Role, WebSocket};
use storm_e2e::handshake::{MAX_HEAD, server_response};
use storm_e2e::peer::{self, BoxError, Coalesce};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn handshake(stream: &mut TcpStream) -> Result<(), BoxError> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err("closed during the handshake".into());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some((len, response)) = server_response(&head)? {
            if len != head.len() {
                // A client may not send frames before the 101 arrives.
                return Err("data after the upgrade request".into());
            }
            stream.write_all(response.as_bytes()).await?;
            return Ok(());
        }
        if head.len() > MAX_HEAD {
            return Err("upgrade request too long".into());
        }
    }
}

async fn echo(mut stream: TcpStream) -> Result<(), BoxError> {
    handshake(&mut stream).await?;
    let ws = WebSocket::after_handshake(Coalesce::new(stream), Role::Server);
    let mut ws = FragmentCollector::new(ws);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => {
                // The crate has queued its reply to the close: send it.
                ws.into_inner().flush().await?;
                return Ok(());
            }
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
}

fn main() -> ExitCode {
    peer::run("peer_fastwebsockets", "ws", echo)
}
