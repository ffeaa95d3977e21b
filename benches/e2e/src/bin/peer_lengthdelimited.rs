//! Length-prefixed echo with tokio-util's `LengthDelimitedCodec` (4-byte
//! big-endian length, 16 MiB limit, as `storm echo --proto lp`): the decoded
//! stream is forwarded into the encoding sink, which flushes whenever no
//! more input is ready, so echoes are batched the way the codec is meant to
//! be used.
//!
//! Usage: `peer_lengthdelimited ADDR` (loopback only).

use std::process::ExitCode;

use bytes::BytesMut;
use futures_util::{StreamExt, TryStreamExt};
use storm_e2e::peer::{self, BoxError};
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

async fn echo(stream: TcpStream) -> Result<(), BoxError> {
    let codec = LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(16 << 20)
        .new_codec();
    let (sink, source) = Framed::new(stream, codec).split();
    source.map_ok(BytesMut::freeze).forward(sink).await?;
    Ok(())
}

fn main() -> ExitCode {
    peer::run("peer_lengthdelimited", "tcp", echo)
}
