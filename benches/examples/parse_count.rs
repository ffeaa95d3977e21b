//! The parse alone, to count with callgrind: `N` 32-byte client messages
//! through a bare server-side `Link` (no sockets, no handler, no reply),
//! fed in reads of 100 messages, each message dropped as it comes out.
//! The marginal instructions per message between two counts are what
//! turning bytes into a message costs (plus the copy into the link's
//! input and the message's drop):
//!
//! ```sh
//! cargo build --release -p storm-benches --example parse_count
//! for n in 100000 300000; do
//!     valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!         target/release/examples/parse_count ws-text $n
//! done   # (second count - first) / 200000
//! ```
//!
//! `ws-text`: masked text frames (ASCII), `ws-binary`: masked binary
//! frames, `lp`: 4-byte length prefixes.

#![allow(clippy::disallowed_methods)] // one Instant from the clock to start the link

use std::hint::black_box;
use std::time::Instant;

use bytes::BytesMut;
use storm_proto::framing::{Framer, LengthPrefixFramer};
use storm_proto::link::{Link, LinkConfig, LinkEvent, Protocol};
use storm_proto::ws::frame::{FrameHeader, OpCode, encode_frame};
use storm_proto::ws::{Config, Connection, Side};

/// Messages per read.
const PER_READ: usize = 100;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: parse_count ws-text|ws-binary|lp COUNT";
    let wire = args.next().ok_or(usage)?;
    let count: usize = args.next().ok_or(usage)?.parse()?;
    let opcode = match wire.as_str() {
        "ws-text" => Some(OpCode::Text),
        "ws-binary" => Some(OpCode::Binary),
        "lp" => None,
        _ => return Err(usage.into()),
    };
    let payload = [b'x'; 32];
    let mut read = BytesMut::new();
    let mut framer = LengthPrefixFramer::default();
    for i in 0..PER_READ {
        match opcode {
            Some(opcode) => {
                let mut header = FrameHeader::new(opcode, 0);
                header.mask = Some(u32::try_from(i)?.wrapping_mul(0x9e37_79b9).to_be_bytes());
                encode_frame(header, &payload, &mut read);
            }
            None => framer.encode(&payload, &mut read)?,
        }
    }
    let protocol = match opcode {
        Some(_) => Protocol::WebSocket(Box::new(Connection::new(Side::Server, Config::default()))),
        None => Protocol::Framed(Box::new(framer)),
    };
    let now = Instant::now();
    let mut link = Link::new(protocol, &LinkConfig::default(), now)?;
    let mut messages = 0usize;
    for _ in 0..count / PER_READ {
        link.handle_input(now, &read);
        while let Some(event) = link.poll_event(now) {
            let LinkEvent::Message(message) = event else {
                return Err(format!("unexpected {event:?}").into());
            };
            black_box(message);
            messages += 1;
        }
    }
    println!("{messages} messages");
    Ok(())
}
