//! The delimiter framer: each message ends with a delimiter byte sequence.

use bytes::{Buf, Bytes, BytesMut};

use super::{Framer, FramingConfigError, FramingError};

/// Settings of a [`DelimiterFramer`].
///
/// ```
/// use storm_proto::framing::{DelimiterConfig, DelimiterFramer};
///
/// let mut config = DelimiterConfig::default();
/// config.delimiter = b"\r\n\r\n".to_vec();
/// config.max_message_len = 8 * 1024;
/// let framer = DelimiterFramer::new(config)?;
/// # Ok::<(), storm_proto::framing::FramingConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DelimiterConfig {
    /// The byte sequence that ends every message; not part of the message.
    /// Must not be empty.
    ///
    /// Default: `b"\n"`.
    pub delimiter: Vec<u8>,
    /// The longest message, counted as the bytes before the delimiter
    /// (including a `\r` that [`strip_cr`](Self::strip_cr) removes). Once
    /// more than `max_message_len + delimiter.len() - 1` bytes are buffered
    /// without a delimiter, decoding fails with
    /// [`FramingError::FrameTooLarge`]: a connection never buffers more than
    /// about one maximal message.
    ///
    /// Default: [`DelimiterConfig::DEFAULT_MAX_MESSAGE_LEN`] (64 KiB).
    pub max_message_len: usize,
    /// Whether to remove one `\r` right before the delimiter from decoded
    /// messages, so that a `\n` delimiter also accepts `\r\n` line endings.
    /// When set, [`encode`](Framer::encode) refuses messages ending in `\r`
    /// (they would not survive the round trip); it never adds a `\r` itself.
    ///
    /// Default: `false` (byte-exact framing); [`DelimiterFramer::lines`]
    /// turns it on.
    pub strip_cr: bool,
}

impl DelimiterConfig {
    /// Default of [`max_message_len`](Self::max_message_len): 64 KiB.
    pub const DEFAULT_MAX_MESSAGE_LEN: usize = 64 * 1024;
}

impl Default for DelimiterConfig {
    fn default() -> Self {
        Self {
            delimiter: b"\n".to_vec(),
            max_message_len: Self::DEFAULT_MAX_MESSAGE_LEN,
            strip_cr: false,
        }
    }
}

/// Each message is followed by a delimiter (`\n` by default).
///
/// Decoded messages do not include the delimiter. The search for the
/// delimiter remembers how far it got, including a partly matched
/// multi-byte delimiter (a Knuth–Morris–Pratt automaton), so a message that
/// arrives one byte at a time costs linear time overall. A message longer
/// than [`DelimiterConfig::max_message_len`] is
/// [`FramingError::FrameTooLarge`] as soon as enough bytes are buffered to
/// know it, and bytes left without a delimiter at end of stream are
/// [`FramingError::Truncated`].
///
/// [`encode`](Framer::encode) appends the message and the delimiter, and
/// refuses a message that contains the delimiter (even one that only forms
/// it together with the appended delimiter, like `x,` before `,,`).
#[derive(Debug, Clone)]
pub struct DelimiterFramer {
    delimiter: Box<[u8]>,
    /// `prefix[i]`: the longest proper prefix of `delimiter[..=i]` that is
    /// also its suffix (where the search continues after a mismatch).
    prefix: Box<[usize]>,
    max_message_len: usize,
    strip_cr: bool,
    /// How many bytes at the front of the read buffer were already searched.
    scanned: usize,
    /// How many bytes of the delimiter the searched bytes end with.
    matched: usize,
    /// Total bytes examined, so tests can check the search is linear.
    #[cfg(test)]
    examined: usize,
}

impl DelimiterFramer {
    /// Builds a delimiter framer from `config`.
    ///
    /// # Errors
    ///
    /// [`FramingConfigError::EmptyDelimiter`] if `config.delimiter` is empty.
    pub fn new(config: DelimiterConfig) -> Result<Self, FramingConfigError> {
        if config.delimiter.is_empty() {
            return Err(FramingConfigError::EmptyDelimiter);
        }
        Ok(Self::from_checked(config))
    }

    /// Builds the framer from a config whose delimiter is not empty.
    fn from_checked(config: DelimiterConfig) -> Self {
        Self {
            prefix: prefix_table(&config.delimiter),
            delimiter: config.delimiter.into_boxed_slice(),
            max_message_len: config.max_message_len,
            strip_cr: config.strip_cr,
            scanned: 0,
            matched: 0,
            #[cfg(test)]
            examined: 0,
        }
    }

    /// A framer for text lines: `\n` delimiter, a trailing `\r` stripped
    /// (so `\r\n` endings work too), 64 KiB maximum line length.
    #[must_use]
    pub fn lines() -> Self {
        Self::from_checked(DelimiterConfig {
            strip_cr: true,
            ..DelimiterConfig::default()
        })
    }

    /// The delimiter that ends every message.
    #[must_use]
    pub fn delimiter(&self) -> &[u8] {
        &self.delimiter
    }

    /// Advances the search automaton by one byte from state `matched`.
    fn step(&self, mut matched: usize, byte: u8) -> usize {
        loop {
            if self.delimiter.get(matched) == Some(&byte) {
                return matched + 1;
            }
            if matched == 0 {
                return 0;
            }
            matched = self.prefix.get(matched - 1).copied().unwrap_or(0);
        }
    }

    /// Searches `window` (the bytes following those already searched) for
    /// the end of a delimiter, continuing from the remembered state. Returns
    /// the offset in `window` just past the delimiter.
    fn scan(&mut self, window: &[u8]) -> Option<usize> {
        #[cfg(test)]
        {
            self.examined += window.len();
        }
        if let [byte] = *self.delimiter {
            return window.iter().position(|&b| b == byte).map(|i| i + 1);
        }
        for (i, &b) in window.iter().enumerate() {
            self.matched = self.step(self.matched, b);
            if self.matched == self.delimiter.len() {
                return Some(i + 1);
            }
        }
        None
    }

    /// Where a delimiter starts inside `msg`, or inside `msg` followed by
    /// the delimiter, before the appended delimiter itself.
    fn delimiter_in(&self, msg: &[u8]) -> Option<usize> {
        if let [byte] = *self.delimiter {
            return msg.iter().position(|&b| b == byte);
        }
        let mut matched = 0;
        for (i, &b) in msg.iter().chain(self.delimiter.iter()).enumerate() {
            matched = self.step(matched, b);
            if matched == self.delimiter.len() {
                let start = i + 1 - self.delimiter.len();
                return (start < msg.len()).then_some(start);
            }
        }
        None
    }
}

impl Default for DelimiterFramer {
    /// A framer with [`DelimiterConfig::default()`]: `\n`, 64 KiB, no `\r`
    /// stripping.
    fn default() -> Self {
        Self::from_checked(DelimiterConfig::default())
    }
}

/// The Knuth–Morris–Pratt prefix function of `pattern`.
fn prefix_table(pattern: &[u8]) -> Box<[usize]> {
    let mut table = vec![0; pattern.len()];
    let mut k = 0;
    for i in 1..pattern.len() {
        while k > 0 && pattern[i] != pattern[k] {
            k = table[k - 1];
        }
        if pattern[i] == pattern[k] {
            k += 1;
        }
        table[i] = k;
    }
    table.into_boxed_slice()
}

impl Framer for DelimiterFramer {
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FramingError> {
        if self.scanned > src.len() {
            // The caller replaced or cut the buffer: search it afresh.
            self.scanned = 0;
            self.matched = 0;
        }
        let limit = self.encoded_len(self.max_message_len);
        let end = src.len().min(limit);
        let start = self.scanned.min(end);
        let window = src.get(start..end).unwrap_or_default();
        match self.scan(window) {
            Some(offset) => {
                let frame_len = start + offset;
                let msg_len = frame_len.saturating_sub(self.delimiter.len());
                self.scanned = 0;
                self.matched = 0;
                let mut msg = src.split_to(msg_len);
                src.advance(frame_len - msg_len);
                if self.strip_cr && msg.last() == Some(&b'\r') {
                    msg.truncate(msg_len - 1);
                }
                Ok(Some(msg.freeze()))
            }
            None => {
                self.scanned = end;
                if end >= limit {
                    Err(FramingError::FrameTooLarge {
                        len: self.max_message_len.saturating_add(1),
                        max: self.max_message_len,
                    })
                } else {
                    Ok(None)
                }
            }
        }
    }

    fn encode(&mut self, msg: &[u8], dst: &mut BytesMut) -> Result<(), FramingError> {
        if msg.len() > self.max_message_len {
            return Err(FramingError::MessageTooLarge {
                len: msg.len(),
                max: self.max_message_len,
            });
        }
        if let Some(offset) = self.delimiter_in(msg) {
            return Err(FramingError::MessageContainsDelimiter { offset });
        }
        if self.strip_cr && msg.last() == Some(&b'\r') {
            return Err(FramingError::MessageContainsDelimiter {
                offset: msg.len() - 1,
            });
        }
        dst.reserve(self.encoded_len(msg.len()));
        dst.extend_from_slice(msg);
        dst.extend_from_slice(&self.delimiter);
        Ok(())
    }

    fn encoded_len(&self, msg_len: usize) -> usize {
        msg_len.saturating_add(self.delimiter.len())
    }

    fn max_message_len(&self) -> usize {
        self.max_message_len
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

    fn framer(delimiter: &[u8], max: usize, strip_cr: bool) -> DelimiterFramer {
        DelimiterFramer::new(DelimiterConfig {
            delimiter: delimiter.to_vec(),
            max_message_len: max,
            strip_cr,
        })
        .expect("valid config")
    }

    fn feed_bytewise(f: &mut DelimiterFramer, wire: &[u8]) -> Result<Vec<Bytes>, FramingError> {
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in wire {
            buf.extend_from_slice(&[b]);
            while let Some(m) = f.decode(&mut buf)? {
                got.push(m);
            }
        }
        Ok(got)
    }

    #[test]
    fn defaults() {
        let f = DelimiterFramer::default();
        assert_eq!(f.delimiter(), b"\n");
        assert_eq!(f.max_message_len(), 64 * 1024);
        assert!(!f.strip_cr);
        assert!(DelimiterFramer::lines().strip_cr);
        assert_eq!(f.encoded_len(3), 4);
    }

    #[test]
    fn empty_delimiter_is_rejected() {
        let mut config = DelimiterConfig::default();
        config.delimiter.clear();
        assert_eq!(
            DelimiterFramer::new(config).err(),
            Some(FramingConfigError::EmptyDelimiter)
        );
    }

    #[test]
    fn whole_with_trailing_data_and_empty_lines() -> Result<(), FramingError> {
        let mut f = DelimiterFramer::default();
        let mut buf = BytesMut::from(&b"one\n\ntwo\r\nthr"[..]);
        assert_eq!(f.decode(&mut buf)?.as_deref(), Some(&b"one"[..]));
        assert_eq!(f.decode(&mut buf)?.as_deref(), Some(&b""[..]));
        assert_eq!(f.decode(&mut buf)?.as_deref(), Some(&b"two\r"[..]));
        assert_eq!(f.decode(&mut buf)?, None);
        assert_eq!(&buf[..], b"thr");
        buf.extend_from_slice(b"ee\n");
        assert_eq!(f.decode(&mut buf)?.as_deref(), Some(&b"three"[..]));
        assert_eq!(f.decode_eof(&mut buf)?, None);
        Ok(())
    }

    #[test]
    fn lines_strip_one_cr() -> Result<(), FramingError> {
        let mut f = DelimiterFramer::lines();
        let mut buf = BytesMut::from(&b"a\r\nb\n\r\r\n\r\n"[..]);
        let expected: [&[u8]; 4] = [b"a", b"b", b"\r", b""];
        for want in expected {
            assert_eq!(f.decode(&mut buf)?.as_deref(), Some(want));
        }
        Ok(())
    }

    #[test]
    fn partial_line_at_eof_is_truncated() {
        let mut f = DelimiterFramer::default();
        let mut buf = BytesMut::from(&b"ok\nhalf"[..]);
        assert_eq!(
            f.decode_eof(&mut buf).ok().flatten().as_deref(),
            Some(&b"ok"[..])
        );
        assert_eq!(
            f.decode_eof(&mut buf),
            Err(FramingError::Truncated { buffered: 4 })
        );
    }

    #[test]
    fn byte_by_byte_multi_byte_delimiter() -> Result<(), FramingError> {
        let mut f = framer(b"\r\n", 100, false);
        let got = feed_bytewise(&mut f, b"a\rb\r\n\r\n\r\r\nz")?;
        let expected: [&[u8]; 3] = [b"a\rb", b"", b"\r"];
        assert_eq!(got, expected);
        Ok(())
    }

    #[test]
    fn self_overlapping_delimiter() -> Result<(), FramingError> {
        // "aab" inside "aaab": a naive restart after the mismatch would miss it.
        let mut f = framer(b"aab", 100, false);
        let got = feed_bytewise(&mut f, b"xaaabyaabaab")?;
        let expected: [&[u8]; 3] = [b"xa", b"y", b""];
        assert_eq!(got, expected);
        Ok(())
    }

    #[test]
    fn limit_boundaries_single_byte() -> Result<(), FramingError> {
        let mut f = framer(b"\n", 3, false);
        let mut buf = BytesMut::from(&b"abc"[..]);
        assert_eq!(f.decode(&mut buf)?, None, "max bytes may still be a line");
        buf.extend_from_slice(b"\n");
        assert_eq!(f.decode(&mut buf)?.as_deref(), Some(&b"abc"[..]));
        let mut f = framer(b"\n", 3, false);
        let mut buf = BytesMut::from(&b"abcd"[..]);
        let err = Err(FramingError::FrameTooLarge { len: 4, max: 3 });
        assert_eq!(f.decode(&mut buf), err);
        buf.extend_from_slice(b"\n");
        assert_eq!(f.decode(&mut buf), err, "errors are final");
        Ok(())
    }

    #[test]
    fn limit_boundaries_multi_byte() -> Result<(), FramingError> {
        let mut f = framer(b"\r\n", 3, false);
        let mut buf = BytesMut::from(&b"abc\r"[..]);
        assert_eq!(f.decode(&mut buf)?, None, "delimiter may start at max");
        buf.extend_from_slice(b"\n");
        assert_eq!(f.decode(&mut buf)?.as_deref(), Some(&b"abc"[..]));
        let mut buf = BytesMut::from(&b"abcd\r"[..]);
        assert_eq!(
            f.decode(&mut buf),
            Err(FramingError::FrameTooLarge { len: 4, max: 3 })
        );
        Ok(())
    }

    #[test]
    fn zero_max_allows_only_empty_messages() -> Result<(), FramingError> {
        let mut f = framer(b"\n", 0, false);
        let mut buf = BytesMut::from(&b"\n\nx"[..]);
        assert_eq!(f.decode(&mut buf)?.as_deref(), Some(&b""[..]));
        assert_eq!(f.decode(&mut buf)?.as_deref(), Some(&b""[..]));
        assert!(f.decode(&mut buf).is_err());
        Ok(())
    }

    #[test]
    fn search_is_linear_byte_by_byte() -> Result<(), FramingError> {
        for delimiter in [&b"\n"[..], b"\r\n", b"aab"] {
            let mut f = framer(delimiter, 1 << 20, false);
            let mut wire = vec![b'a'; 20_000];
            wire.extend_from_slice(delimiter);
            let got = feed_bytewise(&mut f, &wire)?;
            assert_eq!(got.len(), 1);
            assert_eq!(f.examined, wire.len(), "each byte examined once");
        }
        Ok(())
    }

    #[test]
    fn replaced_buffer_does_not_panic() -> Result<(), FramingError> {
        let mut f = framer(b"\r\n", 100, false);
        let mut buf = BytesMut::from(&b"abcdef\r"[..]);
        assert_eq!(f.decode(&mut buf)?, None);
        buf.clear();
        buf.extend_from_slice(b"x\r\n");
        assert_eq!(f.decode(&mut buf)?.as_deref(), Some(&b"x"[..]));
        Ok(())
    }

    #[test]
    fn encode_rejects_what_would_not_round_trip() -> Result<(), FramingError> {
        let mut out = BytesMut::new();
        let mut f = DelimiterFramer::default();
        f.encode(b"", &mut out)?;
        f.encode(b"hi\r", &mut out)?;
        assert_eq!(&out[..], b"\nhi\r\n");
        let contains = |offset| Err(FramingError::MessageContainsDelimiter { offset });
        assert_eq!(f.encode(b"a\nb", &mut out), contains(1));
        assert_eq!(
            DelimiterFramer::lines().encode(b"hi\r", &mut out),
            contains(2)
        );
        // "x,"+",," would read as "x" then ",".
        assert_eq!(
            framer(b",,", 10, false).encode(b"x,", &mut out),
            contains(1)
        );
        assert_eq!(
            framer(b"\n", 2, false).encode(b"abc", &mut out),
            Err(FramingError::MessageTooLarge { len: 3, max: 2 })
        );
        assert_eq!(&out[..], b"\nhi\r\n", "failed encodes append nothing");
        Ok(())
    }

    fn delimiters() -> impl Strategy<Value = Vec<u8>> {
        prop::sample::select(vec![
            b"\n".to_vec(),
            b"\r\n".to_vec(),
            b"ab".to_vec(),
            b"aa".to_vec(),
            b"aba".to_vec(),
            b"aab".to_vec(),
        ])
    }

    /// Bytes from a tiny alphabet, so delimiters occur by chance.
    fn text(max_len: usize) -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop::sample::select(vec![b'a', b'b', b'\r', b'\n', b'x']),
            0..max_len,
        )
    }

    /// First occurrence of `needle` in `hay`, the obvious way.
    fn naive_find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    proptest! {
        /// Every message encode accepts decodes back unchanged, whatever the
        /// chunking; encode refuses exactly the messages that would not.
        #[test]
        fn roundtrip_any_chunking(
            delimiter in delimiters(),
            strip_cr in any::<bool>(),
            messages in prop::collection::vec(text(12), 0..8),
            cuts in prop::collection::vec(any::<usize>(), 0..12),
        ) {
            let mut f = framer(&delimiter, 10, strip_cr);
            let mut wire = BytesMut::new();
            let mut accepted = Vec::new();
            for m in &messages {
                let framed = [&m[..], &delimiter[..]].concat();
                let should_accept = m.len() <= 10
                    && naive_find(&framed, &delimiter) == Some(m.len())
                    && !(strip_cr && m.last() == Some(&b'\r'));
                let result = f.encode(m, &mut wire);
                prop_assert_eq!(result.is_ok(), should_accept, "{:?}", result);
                if should_accept {
                    accepted.push(m.clone());
                }
            }
            let (out, end) = decode_all(&mut f, chunked(&wire, &cuts));
            prop_assert_eq!(end, Ok(()));
            prop_assert_eq!(out, accepted);
        }

        /// Arbitrary bytes never panic, never buffer past the limit, and give
        /// the same result however they are chunked.
        #[test]
        fn arbitrary_bytes_any_chunking(
            delimiter in delimiters(),
            strip_cr in any::<bool>(),
            max in 0usize..12,
            data in text(120),
            cuts in prop::collection::vec(any::<usize>(), 0..20),
        ) {
            let whole = decode_all(&mut framer(&delimiter, max, strip_cr), [data.clone()]);
            let split = decode_all(&mut framer(&delimiter, max, strip_cr), chunked(&data, &cuts));
            prop_assert_eq!(whole, split);
        }
    }
}
