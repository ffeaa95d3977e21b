//! What the broker's tests share, whether they drive the library
//! (storm-services' `tests/broker.rs`) or the `storm` binary (storm-cli's):
//! channel ids, payloads whose loss or reordering shows, and a client
//! written by hand on blocking `std::net` that registers and then does what
//! no well-behaved client does (never reads). Every read has a timeout.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use storm_proto::broker::{
    ChannelId, ClientId, Frame, FrameCodec, FrameType, HEADER_LEN, Registration, RequestId, Role,
};

use crate::suite::WAIT;

/// Channel `n`.
#[must_use]
pub fn channel(n: u128) -> ChannelId {
    ChannelId::from_bytes(n.to_be_bytes())
}

/// `len` deterministic pseudo-random bytes (xorshift), so a swapped or
/// lost chunk cannot go unnoticed.
#[must_use]
pub fn noise(len: usize) -> Bytes {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out.into()
}

/// The 64-bit FNV-1a hash of `data`: a cheap checksum of big payloads.
#[must_use]
pub fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A raw connection to the broker at `addr`, registered as `role` on `ch`
/// with its own request `timeout` (the broker has acknowledged it), which
/// then reads only what its caller reads. Reads time out after [`WAIT`].
///
/// # Panics
///
/// When the broker cannot be reached or does not acknowledge.
#[must_use]
pub fn registered_raw(addr: &str, ch: ChannelId, role: Role, timeout: Duration) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let registration = Registration {
        role,
        client_id: ClientId::random(&mut rand::rng()),
        channel_id: ch,
        timeout,
    };
    let mut wire = BytesMut::new();
    FrameCodec::default()
        .encode(
            &Frame::new(
                FrameType::Start,
                RequestId::random(&mut rand::rng()),
                registration.encode(),
            ),
            &mut wire,
        )
        .expect("fits");
    stream.write_all(&wire).expect("register");
    let mut ack = [0u8; HEADER_LEN];
    stream.read_exact(&mut ack).expect("acknowledged");
    assert_eq!(ack[1], FrameType::Response.to_u8());
    stream
}
