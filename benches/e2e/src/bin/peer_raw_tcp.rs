//! Raw TCP echo on tokio: every read (into a 64 KiB buffer) is written
//! straight back with `write_all`. No framing, no parsing, one write per
//! read: the physical limit of a tokio echo server on this machine.
//!
//! On a current-thread runtime like every peer ([`peer::run`]).
//!
//! Usage: `peer_raw_tcp ADDR` (loopback only; port 0 picks a free port,
//! printed on the first line).

use std::process::ExitCode;

use storm_e2e::peer::{self, BoxError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes read from the socket at a time.
const BUFFER: usize = 64 * 1024;

async fn echo(mut stream: TcpStream) -> Result<(), BoxError> {
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n]).await?;
    }
}

fn main() -> ExitCode {
    peer::run("peer_raw_tcp", "tcp", echo)
}
