//! Fuzzes `LengthPrefixFramer`: arbitrary bytes in arbitrary chunks never
//! panic, never leave a maximal frame's worth of bytes buffered, and every
//! decoded message re-encodes to exactly the bytes it consumed.
//!
//! Input: byte 0 picks the max frame length (0..=1020, in steps of 4),
//! byte 1 seeds the chunk sizes, the rest is the stream.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use storm_proto::framing::{Framer, LengthPrefixConfig, LengthPrefixFramer};

fuzz_target!(|data: &[u8]| {
    let [cfg, seed, stream @ ..] = data else {
        return;
    };
    let mut config = LengthPrefixConfig::default();
    config.max_frame_len = usize::from(*cfg) * 4;
    let Ok(mut framer) = LengthPrefixFramer::new(config) else {
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
                    assert_eq!(before - buf.len(), framer.encoded_len(m.len()));
                    assert!(framer.encode(&m, &mut reencoded).is_ok());
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
    let consumed = stream.len() - rest.len() - buf.len();
    assert_eq!(&reencoded[..], &stream[..consumed]);
    while let Ok(Some(_)) = framer.decode_eof(&mut buf) {}
});
