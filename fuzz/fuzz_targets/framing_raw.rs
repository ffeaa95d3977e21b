//! Fuzzes `RawFramer`: any bytes in any chunking come out unchanged, in
//! non-empty messages of at most the limit, and nothing stays buffered.
//!
//! Input: byte 0 picks the max chunk length (1..=256), byte 1 seeds the
//! chunk sizes, the rest is the stream.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use storm_proto::framing::{Framer, RawConfig, RawFramer};

fuzz_target!(|data: &[u8]| {
    let [cfg, seed, stream @ ..] = data else {
        return;
    };
    let mut config = RawConfig::default();
    config.max_chunk_len = usize::from(*cfg) + 1;
    let Ok(mut framer) = RawFramer::new(config) else {
        return;
    };
    let max = framer.max_message_len();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut rest = stream;
    let mut state = *seed;
    while !rest.is_empty() {
        state = state.wrapping_mul(33).wrapping_add(7);
        let (chunk, tail) = rest.split_at(rest.len().min(usize::from(state % 31) + 1));
        rest = tail;
        buf.extend_from_slice(chunk);
        while let Ok(Some(m)) = framer.decode(&mut buf) {
            assert!(!m.is_empty() && m.len() <= max);
            out.extend_from_slice(&m);
        }
        assert!(buf.is_empty(), "raw framer left bytes buffered");
    }
    assert_eq!(framer.decode_eof(&mut buf), Ok(None));
    assert_eq!(out, stream);
});
