//! Helpers shared by the framers' tests.

use bytes::{Bytes, BytesMut};

use super::{Framer, FramingError};

/// Splits `wire` at the cut points (taken modulo its length + 1).
pub(super) fn chunked(wire: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    points.push(0);
    points.push(wire.len());
    points.sort_unstable();
    points
        .windows(2)
        .filter_map(|w| wire.get(w[0]..w[1]).map(<[u8]>::to_vec))
        .collect()
}

/// Feeds `chunks` one after another, decoding after each, then decodes at
/// EOF. Returns the messages and how the stream ended (the first error).
///
/// Checks the framer's invariants on the way: every message is within the
/// limit, the buffer after `Ok(None)` is below one maximal frame, a failed
/// decode leaves the buffer alone and fails again the same way.
pub(super) fn decode_all<F: Framer>(
    framer: &mut F,
    chunks: impl IntoIterator<Item = Vec<u8>>,
) -> (Vec<Bytes>, Result<(), FramingError>) {
    let bound = framer.encoded_len(framer.max_message_len());
    let max = framer.max_message_len();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut step = |framer: &mut F, buf: &mut BytesMut, eof: bool| loop {
        let before = buf.len();
        let result = if eof {
            framer.decode_eof(buf)
        } else {
            framer.decode(buf)
        };
        match result {
            Ok(Some(m)) => {
                assert!(m.len() <= max, "message {} over max {max}", m.len());
                assert!(buf.len() < before, "a message must consume input");
                out.push(m);
            }
            Ok(None) => {
                assert!(
                    buf.len() < bound.max(1),
                    "buffered {} bytes, bound {bound}",
                    buf.len()
                );
                return Ok(());
            }
            Err(e) => {
                assert_eq!(buf.len(), before, "an error must not consume input");
                let again = if eof {
                    framer.decode_eof(buf)
                } else {
                    framer.decode(buf)
                };
                assert_eq!(again, Err(e.clone()), "errors are final");
                return Err(e);
            }
        }
    };
    for chunk in chunks {
        buf.extend_from_slice(&chunk);
        if let Err(e) = step(framer, &mut buf, false) {
            return (out, Err(e));
        }
    }
    let end = step(framer, &mut buf, true);
    (out, end)
}
