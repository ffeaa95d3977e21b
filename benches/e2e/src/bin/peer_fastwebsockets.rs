//! WebSocket echo with fastwebsockets. The crate's own upgrade goes through
//! hyper; here the opening handshake is read from the raw `TcpStream`
//! ([`storm_e2e::handshake::server_response`]) and the socket is then handed
//! to `WebSocket::after_handshake`, wrapped in a `FragmentCollector` and
//! echoed frame by frame as in the crate's echo example (each
//! `write_frame` writes to the socket).
//!
//! Usage: `peer_fastwebsockets ADDR` (loopback only).

use std::process::ExitCode;

use fastwebsockets::{FragmentCollector, OpCode, Role, WebSocket};
use storm_e2e::handshake::{MAX_HEAD, server_response};
use storm_e2e::peer::{self, BoxError};
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
    let mut ws = FragmentCollector::new(WebSocket::after_handshake(stream, Role::Server));
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => return Ok(()),
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
}

fn main() -> ExitCode {
    peer::run("peer_fastwebsockets", "ws", echo)
}
