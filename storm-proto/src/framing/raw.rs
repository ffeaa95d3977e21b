//! The raw framer: no framing at all.

use bytes::{Bytes, BytesMut};

use super::{Framer, FramingConfigError, FramingError};
use crate::Message;

/// Settings of a [`RawFramer`].
///
/// Build one from [`RawConfig::default()`] and change the fields you need:
///
/// ```
/// use storm_proto::framing::{RawConfig, RawFramer};
///
/// let mut config = RawConfig::default();
/// config.max_chunk_len = 4096;
/// let framer = RawFramer::new(config)?;
/// # Ok::<(), storm_proto::framing::FramingConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RawConfig {
    /// The longest message [`RawFramer::decode`](Framer::decode) returns;
    /// more buffered bytes come out as several messages. Must be at least 1.
    ///
    /// Default: [`RawConfig::DEFAULT_MAX_CHUNK_LEN`] (64 KiB).
    pub max_chunk_len: usize,
}

impl RawConfig {
    /// Default of [`max_chunk_len`](Self::max_chunk_len): 64 KiB.
    pub const DEFAULT_MAX_CHUNK_LEN: usize = 64 * 1024;
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            max_chunk_len: Self::DEFAULT_MAX_CHUNK_LEN,
        }
    }
}

/// Every chunk of available bytes is a message.
///
/// For protocols that have no message boundaries of their own (or that the
/// application parses itself). [`decode`](Framer::decode) returns everything
/// buffered, in pieces of at most [`RawConfig::max_chunk_len`] bytes, so the
/// messages depend on how the bytes arrived. [`encode`](Framer::encode)
/// appends the message unchanged, whatever its length, and
/// [`decode_eof`](Framer::decode_eof) returns any bytes left, never an error.
///
/// Memory: `decode` returns `Ok(None)` only for an empty buffer, so the
/// framer itself never makes the caller buffer anything.
#[derive(Debug, Clone)]
pub struct RawFramer {
    max_chunk_len: usize,
}

impl RawFramer {
    /// Builds a raw framer from `config`.
    ///
    /// # Errors
    ///
    /// [`FramingConfigError::ZeroMaxChunkLen`] if `config.max_chunk_len` is 0.
    pub fn new(config: RawConfig) -> Result<Self, FramingConfigError> {
        if config.max_chunk_len == 0 {
            return Err(FramingConfigError::ZeroMaxChunkLen);
        }
        Ok(Self {
            max_chunk_len: config.max_chunk_len,
        })
    }

    /// What [`decode`](Framer::decode) cuts off `src`, as the [`Message`]
    /// a link hands on (see `LengthPrefixFramer::whole_message`): `None`
    /// for an empty buffer.
    #[inline(always)]
    pub(crate) fn whole_message(&self, src: &mut BytesMut) -> Option<Message> {
        self.chunk(src).map(Message::Binary)
    }

    /// The next chunk of `src`, cut off it.
    #[inline(always)]
    fn chunk(&self, src: &mut BytesMut) -> Option<Bytes> {
        if src.is_empty() {
            return None;
        }
        let len = src.len().min(self.max_chunk_len);
        Some(src.split_to(len).freeze())
    }
}

impl Default for RawFramer {
    /// A raw framer with [`RawConfig::default()`].
    fn default() -> Self {
        Self {
            max_chunk_len: RawConfig::DEFAULT_MAX_CHUNK_LEN,
        }
    }
}

impl Framer for RawFramer {
    // Taken in line by a link's `LinkFramer`: the message is then written
    // where the link hands it on, not into a return slot it copies
    // (`#[inline]` alone left it a call under fat LTO).
    #[inline(always)]
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FramingError> {
        Ok(self.chunk(src))
    }

    #[inline]
    fn encode(&mut self, msg: &[u8], dst: &mut BytesMut) -> Result<(), FramingError> {
        dst.extend_from_slice(msg);
        Ok(())
    }

    fn encode_header(&mut self, _: &[u8], _: &mut BytesMut) -> Result<bool, FramingError> {
        // No header: the message is its own frame.
        Ok(true)
    }

    fn is_stream(&self) -> bool {
        true
    }

    fn encoded_len(&self, msg_len: usize) -> usize {
        msg_len
    }

    fn max_message_len(&self) -> usize {
        self.max_chunk_len
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

    fn framer(max: usize) -> RawFramer {
        RawFramer::new(RawConfig { max_chunk_len: max }).expect("valid config")
    }

    #[test]
    fn zero_max_is_rejected() {
        assert_eq!(
            RawFramer::new(RawConfig { max_chunk_len: 0 }).err(),
            Some(FramingConfigError::ZeroMaxChunkLen)
        );
    }

    #[test]
    fn default_is_64_kib() {
        assert_eq!(RawFramer::default().max_message_len(), 64 * 1024);
    }

    #[test]
    fn whole_buffer_is_one_message() -> Result<(), FramingError> {
        let mut f = RawFramer::default();
        let mut buf = BytesMut::from(&b"hello world"[..]);
        assert_eq!(f.decode(&mut buf)?.as_deref(), Some(&b"hello world"[..]));
        assert!(buf.is_empty());
        assert_eq!(f.decode(&mut buf)?, None);
        assert_eq!(f.decode_eof(&mut buf)?, None);
        Ok(())
    }

    #[test]
    fn chunks_are_cut_at_the_limit() -> Result<(), FramingError> {
        let mut f = framer(4);
        // Exactly the limit, then limit + 1.
        let mut buf = BytesMut::from(&b"abcd"[..]);
        assert_eq!(f.decode(&mut buf)?.as_deref(), Some(&b"abcd"[..]));
        let mut buf = BytesMut::from(&b"abcde"[..]);
        assert_eq!(f.decode(&mut buf)?.as_deref(), Some(&b"abcd"[..]));
        assert_eq!(f.decode(&mut buf)?.as_deref(), Some(&b"e"[..]));
        assert_eq!(f.decode(&mut buf)?, None);
        Ok(())
    }

    #[test]
    fn eof_returns_leftover_bytes() -> Result<(), FramingError> {
        let mut f = RawFramer::default();
        let mut buf = BytesMut::from(&b"tail"[..]);
        assert_eq!(f.decode_eof(&mut buf)?.as_deref(), Some(&b"tail"[..]));
        assert_eq!(f.decode_eof(&mut buf)?, None);
        Ok(())
    }

    #[test]
    fn byte_by_byte() -> Result<(), FramingError> {
        let mut f = RawFramer::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in b"xyz" {
            buf.extend_from_slice(&[b]);
            while let Some(m) = f.decode(&mut buf)? {
                got.push(m);
            }
        }
        assert_eq!(got, vec![&b"x"[..], &b"y"[..], &b"z"[..]]);
        Ok(())
    }

    #[test]
    fn encode_appends_unchanged_even_when_long() -> Result<(), FramingError> {
        let mut f = framer(2);
        let mut out = BytesMut::from(&b">"[..]);
        f.encode(b"", &mut out)?;
        f.encode(b"abcdef", &mut out)?;
        assert_eq!(&out[..], b">abcdef");
        assert_eq!(f.encoded_len(6), 6);
        Ok(())
    }

    proptest! {
        /// Raw framing keeps every byte in order; each message is non-empty
        /// and at most the limit; nothing is left buffered after `Ok(None)`.
        #[test]
        fn bytes_survive_any_chunking(
            messages in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..8),
            cuts in prop::collection::vec(any::<usize>(), 0..10),
            max in 1usize..20,
        ) {
            let mut f = framer(max);
            let mut wire = BytesMut::new();
            for m in &messages {
                f.encode(m, &mut wire)?;
            }
            let (out, end) = decode_all(&mut f, chunked(&wire, &cuts));
            prop_assert_eq!(end, Ok(()));
            prop_assert!(out.iter().all(|m| !m.is_empty() && m.len() <= max));
            let joined: Vec<u8> = out.concat();
            prop_assert_eq!(joined, messages.concat());
        }
    }
}
