//! Raw TCP echo on tokio: every read is written straight back. No framing,
//! no parsing: the physical limit of a tokio echo server on this machine.
//!
//! Usage: `peer_raw_tcp ADDR` (loopback only; port 0 picks a free port,
//! printed on the first line).

use std::process::ExitCode;

use storm_e2e::peer::{self, BoxError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn echo(mut stream: TcpStream) -> Result<(), BoxError> {
    let mut buf = vec![0u8; 64 * 1024];
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
