//! Helpers shared by the framers' tests.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::{
    DelimiterConfig, DelimiterFramer, Framer, FramingError, LengthPrefixConfig, LengthPrefixFramer,
    RawConfig, RawFramer,
};
use crate::tls_sniff::PlainFramer;

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

/// One of the built-in framers, in a small configuration that any input
/// soon runs into the limits of: a length prefix or a delimiter of at most
/// `max` bytes, raw chunks of at most `max + 1` bytes.
#[derive(Debug, Clone)]
pub(crate) struct Builtin {
    kind: u8,
    max: usize,
    strip_cr: bool,
}

impl Builtin {
    pub(crate) fn framer(&self) -> Box<dyn Framer + Send> {
        match self.kind {
            0 => Box::new(
                LengthPrefixFramer::new(LengthPrefixConfig {
                    max_frame_len: self.max,
                })
                .expect("valid config"),
            ),
            1 => Box::new(
                RawFramer::new(RawConfig {
                    max_chunk_len: self.max + 1,
                })
                .expect("valid config"),
            ),
            _ => Box::new(
                DelimiterFramer::new(DelimiterConfig {
                    delimiter: if self.strip_cr {
                        b"\n".to_vec()
                    } else {
                        b"ab".to_vec()
                    },
                    max_message_len: self.max,
                    strip_cr: self.strip_cr,
                })
                .expect("valid config"),
            ),
        }
    }
}

/// Any [`Builtin`] framer.
pub(crate) fn any_builtin() -> impl Strategy<Value = Builtin> {
    (0u8..3, 0usize..40, any::<bool>()).prop_map(|(kind, max, strip_cr)| Builtin {
        kind,
        max,
        strip_cr,
    })
}

/// A framer the link does not know: `framer` boxed again (the box is
/// another type), every method forwarded through the vtable.
pub(crate) fn as_custom(framer: Box<dyn Framer + Send>) -> Box<dyn Framer + Send> {
    Box::new(framer)
}

/// `framer` behind a plain server's check of the opening bytes.
pub(crate) fn plain(framer: Box<dyn Framer + Send>) -> Box<dyn Framer + Send> {
    Box::new(PlainFramer::new(framer, FramingError::ClientSpeaksTls))
}

/// Bytes the framers of [`any_builtin_framer`] find frames, delimiters,
/// too long frames and TLS record headers in.
pub(crate) fn any_wire() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![
            Just(0u8),
            Just(3u8),
            Just(0x16u8),
            Just(b'\n'),
            Just(b'\r'),
            Just(b'a'),
            Just(b'b'),
            any::<u8>(),
        ],
        0..200,
    )
}

/// One decode call's result, and the bytes left buffered after it.
pub(crate) type Decoded = (Result<Option<Bytes>, FramingError>, usize);

/// What a reader sees of `framer`, call by call, when it feeds `chunks`
/// one after another and decodes after each until `Ok(None)` or an error,
/// then (with `eof`) decodes at EOF the same way: for each chunk what
/// [`Framer::remaining`] says once it was appended, then each decode's
/// result with the bytes left buffered after it.
pub(crate) fn every_call<F: Framer + ?Sized>(
    framer: &mut F,
    chunks: &[Vec<u8>],
    eof: bool,
) -> Vec<(Option<usize>, Vec<Decoded>)> {
    let mut src = BytesMut::new();
    let mut calls = Vec::new();
    let decode = |framer: &mut F, src: &mut BytesMut, eof: bool| {
        let mut results = Vec::new();
        loop {
            let result = if eof {
                framer.decode_eof(src)
            } else {
                framer.decode(src)
            };
            let last = !matches!(result, Ok(Some(_)));
            results.push((result, src.len()));
            if last {
                return results;
            }
        }
    };
    for chunk in chunks {
        src.extend_from_slice(chunk);
        let remaining = framer.remaining(&src);
        calls.push((remaining, decode(framer, &mut src, false)));
    }
    if eof {
        calls.push((None, decode(framer, &mut src, true)));
    }
    calls
}
