//! Length-prefixed echo with tokio-util's `LengthDelimitedCodec` (4-byte
//! big-endian length, 16 MiB limit, as `storm echo --proto lp`) in one
//! `Framed` (not `split()`, whose halves share a lock), driven by
//! [`peer::echo_batched`]: every frame that is ready is decoded, the echoes
//! are fed into the sink (which only appends to its write buffer until it
//! passes the codec's backpressure boundary) and flushed once per batch —
//! the batched flush the codec is meant to be used with.
//!
//! On a current-thread runtime like every peer ([`peer::run`]).
//!
//! Usage: `peer_lengthdelimited ADDR` (loopback only).

use std::process::ExitCode;

use bytes::BytesMut;
use storm_e2e::peer::{self, BoxError};
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

async fn echo(stream: TcpStream) -> Result<(), BoxError> {
    let codec = LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(16 << 20)
        .new_codec();
    peer::echo_batched(Framed::new(stream, codec), |frame: BytesMut| {
        Some(frame.freeze())
    })
    .await
}

fn main() -> ExitCode {
    peer::run("peer_lengthdelimited", "tcp", echo)
}
