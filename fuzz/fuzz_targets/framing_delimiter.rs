//! Fuzzes `DelimiterFramer`: arbitrary bytes in arbitrary chunks never
//! panic, never leave a maximal frame's worth of bytes buffered, and (without
//! `\r` stripping) every decoded message re-encodes to exactly the bytes it
//! consumed.
//!
//! Input: byte 0 picks the delimiter (bits 0-2) and `\r` stripping (bit 3),
//! byte 1 the max message length (0..=255), byte 2 seeds the chunk sizes,
//! the rest is the stream.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use storm_proto::framing::{DelimiterConfig, DelimiterFramer, Framer};

const DELIMITERS: [&[u8]; 8] = [
    b"\n",
    b"\r\n",
    b"\0",
    b"aa",
    b"aab",
    b"aba",
    b"\r\n\r\n",
    b"abcab",
];

fuzz_target!(|data: &[u8]| {
    let [cfg, max, seed, stream @ ..] = data else {
        return;
    };
    let mut config = DelimiterConfig::default();
    config.delimiter = DELIMITERS[usize::from(cfg & 7)].to_vec();
    config.strip_cr = cfg & 8 != 0;
    config.max_message_len = usize::from(*max);
    let strip_cr = config.strip_cr;
    let Ok(mut framer) = DelimiterFramer::new(config) else {
        return;
    };
    let max = framer.max_message_len();
    let bound = framer.encoded_len(max);
    let mut buf = BytesMut::new();
    let mut reencoded = BytesMut::new();
    let mut rest = stream;
    let mut state = *seed;
    'feed: while !rest.is_empty() {
        state = state.wrapping_mul(33).wrapping_add(7);
        let (chunk, tail) = rest.split_at(rest.len().min(usize::from(state % 31) + 1));
        rest = tail;
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            match framer.decode(&mut buf) {
                Ok(Some(m)) => {
                    assert!(m.len() <= max);
                    assert!(buf.len() < before);
                    if !strip_cr {
                        assert_eq!(before - buf.len(), framer.encoded_len(m.len()));
                        assert!(framer.encode(&m, &mut reencoded).is_ok());
                    }
                }
                Ok(None) => {
                    assert!(buf.len() < bound, "buffered {} >= {bound}", buf.len());
                    break;
                }
                Err(e) => {
                    assert!(e.is_remote());
                    assert_eq!(buf.len(), before, "an error consumed input");
                    assert_eq!(framer.decode(&mut buf), Err(e), "errors are final");
                    break 'feed;
                }
            }
        }
    }
    if !strip_cr {
        let consumed = stream.len() - rest.len() - buf.len();
        assert_eq!(&reencoded[..], &stream[..consumed]);
    }
    while let Ok(Some(_)) = framer.decode_eof(&mut buf) {}
});
