//! The length-prefix framer: a 4-byte big-endian length, then the message.

use bytes::{Buf, Bytes, BytesMut};

use super::{Framer, FramingConfigError, FramingError};
use crate::Message;

/// Size of the length field in bytes.
const HEADER_LEN: usize = 4;

/// Settings of a [`LengthPrefixFramer`].
///
/// ```
/// use storm_proto::framing::{LengthPrefixConfig, LengthPrefixFramer};
///
/// let mut config = LengthPrefixConfig::default();
/// config.max_frame_len = 1024 * 1024;
/// let framer = LengthPrefixFramer::new(config)?;
/// # Ok::<(), storm_proto::framing::FramingConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LengthPrefixConfig {
    /// The longest message (not counting the 4-byte prefix) that is decoded
    /// or encoded. A peer declaring more gets
    /// [`FramingError::FrameTooLarge`] as soon as the 4 length bytes arrive,
    /// before anything is buffered for the message. At most `u32::MAX`.
    ///
    /// Memory: a connection may need a read buffer of up to
    /// `4 + max_frame_len` bytes (plus one socket read) to receive a maximal
    /// message; with the default that is about 16 MiB per connection, so a
    /// server expecting many concurrent large messages should lower it.
    ///
    /// Default: [`LengthPrefixConfig::DEFAULT_MAX_FRAME_LEN`] (16 MiB).
    pub max_frame_len: usize,
}

impl LengthPrefixConfig {
    /// Default of [`max_frame_len`](Self::max_frame_len): 16 MiB.
    pub const DEFAULT_MAX_FRAME_LEN: usize = 16 * 1024 * 1024;
}

impl Default for LengthPrefixConfig {
    fn default() -> Self {
        Self {
            max_frame_len: Self::DEFAULT_MAX_FRAME_LEN,
        }
    }
}

/// Each message is preceded by its length as a 4-byte big-endian integer.
///
/// Empty messages are allowed (a zero length). The declared length is
/// checked against [`LengthPrefixConfig::max_frame_len`] as soon as the
/// header is complete. The framer never reserves memory for a declared
/// length: the read buffer grows only as the peer actually sends bytes, so a
/// peer that sends headers and stalls costs almost nothing (a reader that
/// reads a large message in place, through [`Framer::remaining`], reserves
/// ahead at most as much as has arrived, and 8 KiB more).
///
/// [`encode`](Framer::encode) refuses messages longer than the maximum
/// ([`FramingError::MessageTooLarge`]); a length is never truncated to fit
/// the 4-byte field.
#[derive(Debug, Clone)]
pub struct LengthPrefixFramer {
    max_frame_len: usize,
}

impl LengthPrefixFramer {
    /// Builds a length-prefix framer from `config`.
    ///
    /// # Errors
    ///
    /// [`FramingConfigError::MaxFrameLenTooLarge`] if `config.max_frame_len`
    /// does not fit the 4-byte length field (more than `u32::MAX`).
    pub fn new(config: LengthPrefixConfig) -> Result<Self, FramingConfigError> {
        if u32::try_from(config.max_frame_len).is_err() {
            return Err(FramingConfigError::MaxFrameLenTooLarge {
                max: config.max_frame_len,
            });
        }
        Ok(Self {
            max_frame_len: config.max_frame_len,
        })
    }

    /// The peer declared a message of `len` bytes, over the limit. Out of
    /// line: the per-message path only branches to it.
    #[cold]
    fn frame_too_large(&self, len: usize) -> FramingError {
        FramingError::FrameTooLarge {
            len,
            max: self.max_frame_len,
        }
    }

    /// A message of `len` bytes to send is over the limit (or the field).
    #[cold]
    fn message_too_large(&self, len: usize) -> FramingError {
        FramingError::MessageTooLarge {
            len,
            max: self.max_frame_len,
        }
    }

    /// The message at the front of `src` when it is whole there and within
    /// the limit, cut off `src` (header and all) as the [`Message`] a link
    /// hands on; `None`, consuming nothing, for anything else (less than a
    /// whole frame, or a length over the limit), which
    /// [`decode`](Framer::decode) then tells apart. Whatever this takes,
    /// `decode` takes the same way.
    ///
    /// For a link's `LinkFramer`, which calls it before `decode`: the
    /// message is built here, in the `Message` the link's event holds, so
    /// its `Bytes` is written once, where it stays. Through `decode`'s
    /// `Result<Option<Bytes>, FramingError>` (which lives in memory: its
    /// error arm is written through a return slot) the `Bytes` was stored
    /// and then loaded back into the event, a copy that stalled on the
    /// stores that had just written it (BENCHMARKS.md, session 15). The
    /// WebSocket's `ws::Connection::whole_message` is the same path.
    #[inline(always)]
    pub(crate) fn whole_message(&self, src: &mut BytesMut) -> Option<Message> {
        let len = declared(src)?;
        if len > self.max_frame_len || src.len() - HEADER_LEN < len {
            return None;
        }
        Some(Message::Binary(cut(src, len)))
    }

    /// The length prefix of a message of `len` bytes to send.
    fn header(&self, len: usize) -> Result<[u8; HEADER_LEN], FramingError> {
        // `max_frame_len <= u32::MAX` (checked by `new`), so within the
        // limit the length always fits the field; `try_from` says so
        // without a cast.
        match u32::try_from(len) {
            Ok(declared) if len <= self.max_frame_len => Ok(declared.to_be_bytes()),
            _ => Err(self.message_too_large(len)),
        }
    }
}

/// The length the header at the front of `src` declares; `None` before
/// the whole header. A length that does not fit `usize` is `usize::MAX`:
/// certainly over the limit.
#[inline(always)]
fn declared(src: &[u8]) -> Option<usize> {
    let header = src.first_chunk::<HEADER_LEN>()?;
    Some(usize::try_from(u32::from_be_bytes(*header)).unwrap_or(usize::MAX))
}

/// Cuts the frame of a message of `len` bytes off the front of `src` and
/// returns the message. `HEADER_LEN + len <= src.len()`.
#[inline(always)]
fn cut(src: &mut BytesMut, len: usize) -> Bytes {
    // One cut for header and message, then the header dropped from the
    // frozen frame: `Bytes::advance` is a pointer move, where
    // `BytesMut::advance` is a second trip through the buffer's
    // bookkeeping. `HEADER_LEN + len <= src.len()`: no overflow.
    let mut message = src.split_to(HEADER_LEN + len).freeze();
    message.advance(HEADER_LEN);
    message
}

impl Default for LengthPrefixFramer {
    /// A length-prefix framer with [`LengthPrefixConfig::default()`].
    fn default() -> Self {
        Self {
            max_frame_len: LengthPrefixConfig::DEFAULT_MAX_FRAME_LEN,
        }
    }
}

impl Framer for LengthPrefixFramer {
    // Taken in line by a link's `LinkFramer`: the message is then written
    // where the link hands it on, not into a return slot it copies
    // (`#[inline]` alone left it a call under fat LTO).
    #[inline(always)]
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FramingError> {
        let Some(len) = declared(src) else {
            return Ok(None);
        };
        if len > self.max_frame_len {
            return Err(self.frame_too_large(len));
        }
        if src.len() - HEADER_LEN < len {
            return Ok(None);
        }
        Ok(Some(cut(src, len)))
    }

    fn remaining(&self, src: &BytesMut) -> Option<usize> {
        let len = declared(src)?;
        if len > self.max_frame_len {
            return None;
        }
        (len + HEADER_LEN).checked_sub(src.len()).filter(|&n| n > 0)
    }

    #[inline]
    fn encode(&mut self, msg: &[u8], dst: &mut BytesMut) -> Result<(), FramingError> {
        let header = self.header(msg.len())?;
        // Room for the whole frame at once: a full buffer grows once per
        // frame, and both appends then find it.
        dst.reserve(HEADER_LEN + msg.len());
        dst.extend_from_slice(&header);
        dst.extend_from_slice(msg);
        Ok(())
    }

    fn encode_header(&mut self, msg: &[u8], dst: &mut BytesMut) -> Result<bool, FramingError> {
        dst.extend_from_slice(&self.header(msg.len())?);
        Ok(true)
    }

    fn encoded_len(&self, msg_len: usize) -> usize {
        msg_len.saturating_add(HEADER_LEN)
    }

    fn max_message_len(&self) -> usize {
        self.max_frame_len
    }

    fn encoder(&self) -> Option<Box<dyn Framer + Send>> {
        Some(Box::new(self.clone()))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::framing::test_util::{chunked, decode_all};

    fn framer(max: usize) -> LengthPrefixFramer {
        LengthPrefixFramer::new(LengthPrefixConfig { max_frame_len: max }).expect("valid config")
    }

    fn frame(msg: &[u8]) -> Vec<u8> {
        let mut v = u32::try_from(msg.len())
            .expect("short")
            .to_be_bytes()
            .to_vec();
        v.extend_from_slice(msg);
        v
    }

    #[test]
    fn defaults() {
        assert_eq!(
            LengthPrefixFramer::default().max_message_len(),
            16 * 1024 * 1024
        );
        assert_eq!(LengthPrefixFramer::default().encoded_len(10), 14);
    }

    #[test]
    fn config_over_u32_is_rejected() {
        let mut config = LengthPrefixConfig {
            max_frame_len: u32::MAX as usize,
        };
        assert!(LengthPrefixFramer::new(config.clone()).is_ok());
        if let Some(max) = (u32::MAX as usize).checked_add(1) {
            config.max_frame_len = max;
            assert_eq!(
                LengthPrefixFramer::new(config).err(),
                Some(FramingConfigError::MaxFrameLenTooLarge { max })
            );
        }
    }

    #[test]
    fn whole_with_trailing_data() -> Result<(), FramingError> {
        let mut f = LengthPrefixFramer::default();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&frame(b"one"));
        buf.extend_from_slice(&frame(b""));
        buf.extend_from_slice(&frame(b"three"));
        buf.extend_from_slice(&[0, 0, 0, 9, b'p']); // start of a fourth
        assert_eq!(f.decode(&mut buf)?.as_deref(), Some(&b"one"[..]));
        assert_eq!(f.decode(&mut buf)?.as_deref(), Some(&b""[..]));
        assert_eq!(f.decode(&mut buf)?.as_deref(), Some(&b"three"[..]));
        assert_eq!(f.decode(&mut buf)?, None);
        assert_eq!(&buf[..], &[0, 0, 0, 9, b'p']);
        assert_eq!(
            f.decode_eof(&mut buf),
            Err(FramingError::Truncated { buffered: 5 })
        );
        Ok(())
    }

    #[test]
    fn byte_by_byte() -> Result<(), FramingError> {
        let mut f = LengthPrefixFramer::default();
        let wire = [frame(b"ab"), frame(b""), frame(b"c")].concat();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in &wire {
            buf.extend_from_slice(&[b]);
            while let Some(m) = f.decode(&mut buf)? {
                got.push(m);
            }
        }
        assert_eq!(got, vec![&b"ab"[..], &b""[..], &b"c"[..]]);
        assert!(buf.is_empty());
        Ok(())
    }

    #[test]
    fn partial_header_at_eof_is_truncated() {
        let mut f = LengthPrefixFramer::default();
        let mut buf = BytesMut::from(&[0u8, 0][..]);
        assert_eq!(
            f.decode_eof(&mut buf),
            Err(FramingError::Truncated { buffered: 2 })
        );
    }

    #[test]
    fn limit_is_checked_on_the_header_alone() -> Result<(), FramingError> {
        let mut f = framer(8);
        // Exactly the limit is fine.
        let mut buf = BytesMut::from(&frame(b"12345678")[..]);
        assert_eq!(f.decode(&mut buf)?.as_deref(), Some(&b"12345678"[..]));
        // Limit + 1 fails as soon as the header is complete.
        let mut buf = BytesMut::from(&[0u8, 0, 0, 9][..]);
        assert_eq!(
            f.decode(&mut buf),
            Err(FramingError::FrameTooLarge { len: 9, max: 8 })
        );
        assert_eq!(buf.len(), 4, "error consumes nothing");
        // A huge declared length reserves nothing.
        let mut f = LengthPrefixFramer::default();
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        let capacity = buf.capacity();
        assert!(matches!(
            f.decode(&mut buf),
            Err(FramingError::FrameTooLarge { .. })
        ));
        let mut buf2 = BytesMut::from(&[0x00, 0xff, 0xff, 0xff][..]);
        assert_eq!(f.decode(&mut buf2)?, None);
        assert_eq!(buf.capacity(), capacity);
        assert!(buf2.capacity() < 1024);
        Ok(())
    }

    #[test]
    fn encode_limits() -> Result<(), FramingError> {
        let mut f = framer(3);
        let mut out = BytesMut::from(&b"x"[..]);
        f.encode(b"abc", &mut out)?;
        f.encode(b"", &mut out)?;
        assert_eq!(&out[..], b"x\0\0\0\x03abc\0\0\0\0");
        assert_eq!(
            f.encode(b"abcd", &mut out),
            Err(FramingError::MessageTooLarge { len: 4, max: 3 })
        );
        assert_eq!(out.len(), 12, "a failed encode appends nothing");
        Ok(())
    }

    /// A plausible frame (small declared length, random body that may be
    /// shorter or longer than declared) or random junk.
    fn segment() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            (0u32..30, prop::collection::vec(any::<u8>(), 0..30)).prop_map(|(len, body)| {
                let mut v = len.to_be_bytes().to_vec();
                v.extend_from_slice(&body);
                v
            }),
            prop::collection::vec(any::<u8>(), 0..10),
        ]
    }

    proptest! {
        /// Any messages, encoded then delivered in any chunking, decode to
        /// the same messages.
        #[test]
        fn roundtrip_any_chunking(
            messages in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..8),
            cuts in prop::collection::vec(any::<usize>(), 0..12),
        ) {
            let mut f = framer(40);
            let mut wire = BytesMut::new();
            for m in &messages {
                f.encode(m, &mut wire)?;
            }
            let (out, end) = decode_all(&mut f, chunked(&wire, &cuts));
            prop_assert_eq!(end, Ok(()));
            prop_assert_eq!(out, messages);
        }

        /// Arbitrary bytes never panic, never buffer a frame past the limit,
        /// and give the same result however they are chunked.
        #[test]
        fn arbitrary_bytes_any_chunking(
            data in prop::collection::vec(segment(), 0..8).prop_map(|s| s.concat()),
            cuts in prop::collection::vec(any::<usize>(), 0..12),
            max in 0usize..24,
        ) {
            let whole = decode_all(&mut framer(max), [data.clone()]);
            let split = decode_all(&mut framer(max), chunked(&data, &cuts));
            prop_assert_eq!(whole, split);
        }
    }
}
