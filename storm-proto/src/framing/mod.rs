//! Message framers for plain TCP streams.
//!
//! TCP delivers a stream of bytes; a *framer* cuts that stream into messages
//! and turns outgoing messages into bytes. Three framers ship with Storm, and
//! a custom framer is just another implementation of [`Framer`]:
//!
//! | framer | on the wire | decode limit (default) |
//! |---|---|---|
//! | [`RawFramer`] | the bytes themselves, no boundaries | chunk of at most 64 KiB |
//! | [`LengthPrefixFramer`] | 4-byte big-endian length, then the message | 16 MiB per message |
//! | [`DelimiterFramer`] | the message, then a delimiter (`\n` by default) | 64 KiB per message |
//!
//! # The contract
//!
//! The shape is the familiar tokio-util codec one, without any I/O:
//!
//! - The caller owns one read buffer per connection (a [`BytesMut`]), appends
//!   whatever the socket returned, in any chunking, and calls
//!   [`Framer::decode`] until it returns `Ok(None)` (need more data). Each
//!   message is cut out of the buffer with `split_to`/`freeze`: no copy.
//!   Input is consumed only when a message is returned.
//! - At end of stream the caller calls [`Framer::decode_eof`] until it
//!   returns `Ok(None)`; bytes that do not form a whole message are a
//!   [`FramingError::Truncated`] error.
//! - [`Framer::encode`] appends one framed message to the caller's output
//!   buffer, so an adapter can batch many messages into one write.
//! - Results never depend on how the input was split (except for
//!   [`RawFramer`], whose messages *are* the chunks).
//!
//! # Memory
//!
//! Every framer has a maximum message length, checked before anything is
//! buffered for a message. After `decode` returns `Ok(None)` the read buffer
//! holds fewer than `encoded_len(max_message_len())` bytes; once it would
//! need more, `decode` returns [`FramingError::FrameTooLarge`] instead. So the
//! read buffer of one connection is bounded by roughly the maximum message
//! length plus whatever one socket read appends.
//!
//! # Errors
//!
//! Decode errors are the peer's fault ([`FramingError::is_remote`] is true):
//! the stream cannot be re-synchronised and the connection should be closed.
//! They are final: calling `decode` again with the same buffer returns the
//! same error. Encode errors are local misuse: nothing was appended, and the
//! connection is still usable.
//!
//! # Example
//!
//! ```
//! use bytes::BytesMut;
//! use storm_proto::framing::{Framer, LengthPrefixFramer};
//!
//! # fn main() -> Result<(), storm_proto::framing::FramingError> {
//! let mut framer = LengthPrefixFramer::default();
//!
//! // Sending: frames go into one output buffer, written with one syscall.
//! let mut out = BytesMut::new();
//! framer.encode(b"hello", &mut out)?;
//! framer.encode(b"", &mut out)?;
//! assert_eq!(&out[..], b"\0\0\0\x05hello\0\0\0\0");
//!
//! // Receiving: bytes arrive in arbitrary pieces.
//! let mut read_buf = BytesMut::new();
//! read_buf.extend_from_slice(&out[..7]);
//! assert_eq!(framer.decode(&mut read_buf)?, None); // need more data
//! read_buf.extend_from_slice(&out[7..]);
//! assert_eq!(framer.decode(&mut read_buf)?.as_deref(), Some(&b"hello"[..]));
//! assert_eq!(framer.decode(&mut read_buf)?.as_deref(), Some(&b""[..]));
//! assert_eq!(framer.decode(&mut read_buf)?, None);
//!
//! // End of stream: nothing left over, so no error.
//! assert_eq!(framer.decode_eof(&mut read_buf)?, None);
//! # Ok(())
//! # }
//! ```
//!
//! A framer is object-safe, so an adapter can pick one at run time:
//!
//! ```
//! use storm_proto::framing::{DelimiterFramer, Framer, RawFramer};
//!
//! let line_based = true;
//! let framer: Box<dyn Framer + Send> = if line_based {
//!     Box::new(DelimiterFramer::lines())
//! } else {
//!     Box::new(RawFramer::default())
//! };
//! assert_eq!(framer.max_message_len(), 64 * 1024);
//! ```

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

mod delimiter;
mod length_prefix;
mod link_framer;
mod raw;

pub use delimiter::{DelimiterConfig, DelimiterFramer};
pub use length_prefix::{LengthPrefixConfig, LengthPrefixFramer};
pub(crate) use link_framer::LinkFramer;
pub use raw::{RawConfig, RawFramer};

/// Cuts a byte stream into messages and frames outgoing messages.
///
/// Implementations keep whatever scan state they need between calls (for
/// example how far a delimiter search got), so they assume the read buffer
/// passed to [`decode`](Self::decode) is the same buffer every time, only
/// appended to by the caller between calls. Use one framer per connection.
///
/// The trait is object-safe: `Box<dyn Framer + Send>` is itself a `Framer`.
/// A framer is `'static` (it owns its state, as a boxed framer must): a
/// link recognises the built-in framers behind the box it is given and
/// calls them directly, without the virtual call.
pub trait Framer: Any {
    /// Cuts the next complete message out of the front of `src`.
    ///
    /// Returns `Ok(Some(message))` and removes the frame from `src`, or
    /// `Ok(None)` if `src` does not yet hold a whole message (leaving `src`
    /// untouched). Call it in a loop after every read until it returns
    /// `Ok(None)`.
    ///
    /// After `Ok(None)`, `src.len() < self.encoded_len(self.max_message_len())`:
    /// the framer never lets the caller buffer more than one maximal frame.
    ///
    /// # Errors
    ///
    /// [`FramingError::FrameTooLarge`] if the peer sent (or declared) a
    /// message longer than the limit. Decode errors are final: the stream
    /// cannot be re-synchronised, close the connection.
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FramingError>;

    /// Like [`decode`](Self::decode), at end of stream: call it in a loop
    /// until it returns `Ok(None)`, after the socket reported EOF.
    ///
    /// The default returns the remaining whole messages, then `Ok(None)` if
    /// `src` is empty.
    ///
    /// # Errors
    ///
    /// As [`decode`](Self::decode), and [`FramingError::Truncated`] if bytes
    /// are left that do not form a whole message.
    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FramingError> {
        match self.decode(src)? {
            Some(message) => Ok(Some(message)),
            None if src.is_empty() => Ok(None),
            None => Err(FramingError::Truncated {
                buffered: src.len(),
            }),
        }
    }

    /// How many more bytes the message at the front of `src` needs to be
    /// whole, when the framing tells before it is (a length prefix does);
    /// `None` when it cannot tell, or when `src` holds no partial message.
    /// A reader uses it to read the rest of a large message straight into
    /// `src` instead of through a buffer of its own (see
    /// [`Link::input_buffer`](crate::link::Link::input_buffer)).
    ///
    /// The default says `None`.
    fn remaining(&self, src: &BytesMut) -> Option<usize> {
        let _ = src;
        None
    }

    /// Appends `msg`, framed, to `dst`.
    ///
    /// # Errors
    ///
    /// A local error ([`FramingError::MessageTooLarge`],
    /// [`FramingError::MessageContainsDelimiter`]) if `msg` cannot be framed;
    /// `dst` is then left untouched.
    fn encode(&mut self, msg: &[u8], dst: &mut BytesMut) -> Result<(), FramingError>;

    /// When `msg`'s frame is a header followed by `msg` itself, unchanged
    /// (a length prefix; the raw framer's empty header): appends the
    /// header alone to `dst` and returns `Ok(true)`; the caller then sends
    /// `msg`'s own bytes right behind it, without copying them into `dst`
    /// (see [`link::Encoder::encode_chunked`](crate::link::Encoder::encode_chunked)).
    /// `Ok(false)`, with nothing appended, when the frame is not that
    /// shape (the default): use [`encode`](Self::encode).
    ///
    /// # Errors
    ///
    /// As [`encode`](Self::encode); `dst` is then left untouched.
    fn encode_header(&mut self, msg: &[u8], dst: &mut BytesMut) -> Result<bool, FramingError> {
        let _ = (msg, dst);
        Ok(false)
    }

    /// Whether [`decode`](Self::decode) hands out whatever is buffered as
    /// it arrives, with no boundaries of its own to wait for (the raw
    /// framer): a reader may then read large amounts straight into the
    /// link's input buffer while data flows (see
    /// [`Link::input_buffer`](crate::link::Link::input_buffer)). The
    /// default says `false`.
    fn is_stream(&self) -> bool {
        false
    }

    /// How many bytes [`encode`](Self::encode) appends for a message of
    /// `msg_len` bytes (saturating at `usize::MAX`). Lets an adapter reserve
    /// its output buffer once for a batch.
    fn encoded_len(&self, msg_len: usize) -> usize;

    /// The longest message [`decode`](Self::decode) returns, which is also
    /// the longest message [`encode`](Self::encode) accepts (except for
    /// [`RawFramer`], which encodes any length).
    fn max_message_len(&self) -> usize;

    /// A framer of the same configuration, for a sender that frames
    /// messages itself, ahead of the link that decodes with this one
    /// ([`link::Encoder`](crate::link::Encoder)): only its
    /// [`encode`](Self::encode) is used. `None` (the default) when
    /// encoding depends on this framer's
    /// state; the link then frames every message itself.
    fn encoder(&self) -> Option<Box<dyn Framer + Send>> {
        None
    }
}

impl<F: Framer + ?Sized> Framer for Box<F> {
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FramingError> {
        (**self).decode(src)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FramingError> {
        (**self).decode_eof(src)
    }

    fn encode(&mut self, msg: &[u8], dst: &mut BytesMut) -> Result<(), FramingError> {
        (**self).encode(msg, dst)
    }

    fn encoded_len(&self, msg_len: usize) -> usize {
        (**self).encoded_len(msg_len)
    }

    fn max_message_len(&self) -> usize {
        (**self).max_message_len()
    }

    fn encoder(&self) -> Option<Box<dyn Framer + Send>> {
        (**self).encoder()
    }

    fn remaining(&self, src: &BytesMut) -> Option<usize> {
        (**self).remaining(src)
    }

    fn encode_header(&mut self, msg: &[u8], dst: &mut BytesMut) -> Result<bool, FramingError> {
        (**self).encode_header(msg, dst)
    }

    fn is_stream(&self) -> bool {
        (**self).is_stream()
    }
}

/// Why a message could not be decoded or encoded.
///
/// [`is_remote`](Self::is_remote) says whose fault it is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FramingError {
    /// Remote: the peer sent or declared a message longer than the limit.
    FrameTooLarge {
        /// The declared length (length prefix), or for a delimited stream a
        /// lower bound on the line length (`max + 1`: no delimiter was found
        /// within the limit).
        len: usize,
        /// The configured maximum message length.
        max: usize,
    },
    /// Remote: the stream ended in the middle of a message.
    Truncated {
        /// Bytes left in the buffer that do not form a whole message.
        buffered: usize,
    },
    /// Remote: a plain client's server opened with a TLS record (an
    /// alert, as a TLS server answers bytes that are not TLS): the server
    /// speaks TLS. See [`tls_sniff`](crate::tls_sniff).
    ServerSpeaksTls,
    /// Remote: a plain server's client opened with a TLS record (its
    /// ClientHello): the client speaks TLS. See
    /// [`tls_sniff`](crate::tls_sniff).
    ClientSpeaksTls,
    /// Local: a message to send is longer than the framer can frame (its
    /// configured maximum, or what the length field can express).
    MessageTooLarge {
        /// Length of the message.
        len: usize,
        /// The largest length that can be encoded.
        max: usize,
    },
    /// Local: a message to send for a [`DelimiterFramer`] contains the
    /// delimiter (or would run into it, e.g. ends with a `\r` when trailing
    /// `\r` is stripped), so the peer would split it.
    MessageContainsDelimiter {
        /// Offset in the message where the delimiter starts.
        offset: usize,
    },
}

impl FramingError {
    /// True if the peer caused the error (close the connection), false if it
    /// is local misuse (the connection is unaffected).
    #[must_use]
    pub fn is_remote(&self) -> bool {
        match self {
            Self::FrameTooLarge { .. }
            | Self::Truncated { .. }
            | Self::ServerSpeaksTls
            | Self::ClientSpeaksTls => true,
            Self::MessageTooLarge { .. } | Self::MessageContainsDelimiter { .. } => false,
        }
    }
}

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FrameTooLarge { len, max } => write!(
                f,
                "peer sent a frame of {len} bytes, more than the limit of {max} bytes"
            ),
            Self::Truncated { buffered } => write!(
                f,
                "stream ended inside a frame ({buffered} bytes of an incomplete frame)"
            ),
            Self::ServerSpeaksTls => write!(
                f,
                "{}: connect over TLS (TLS client options; `--tls-ca CA_PEM` or a tls:// \
                 endpoint for a `storm` client)",
                crate::tls_sniff::SERVER_SPEAKS_TLS
            ),
            Self::ClientSpeaksTls => f.write_str(crate::tls_sniff::CLIENT_SPEAKS_TLS),
            Self::MessageTooLarge { len, max } => write!(
                f,
                "message of {len} bytes is too large to send (at most {max} bytes)"
            ),
            Self::MessageContainsDelimiter { offset } => write!(
                f,
                "message to send contains the delimiter at offset {offset}"
            ),
        }
    }
}

impl std::error::Error for FramingError {}

/// A framer configuration that was rejected when the framer was built.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FramingConfigError {
    /// A [`RawConfig::max_chunk_len`] of zero: no byte could ever be returned.
    ZeroMaxChunkLen,
    /// A [`LengthPrefixConfig::max_frame_len`] above `u32::MAX`: the 4-byte
    /// length field could not express it.
    MaxFrameLenTooLarge {
        /// The configured value.
        max: usize,
    },
    /// An empty [`DelimiterConfig::delimiter`].
    EmptyDelimiter,
}

impl fmt::Display for FramingConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroMaxChunkLen => f.write_str("raw framer max chunk length must be at least 1"),
            Self::MaxFrameLenTooLarge { max } => write!(
                f,
                "length-prefix max frame length {max} does not fit the 4-byte length field"
            ),
            Self::EmptyDelimiter => f.write_str("delimiter must not be empty"),
        }
    }
}

impl std::error::Error for FramingConfigError {}

/// How a plain TCP connection cuts its byte stream into messages.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum Framing {
    /// Whatever each read returns is a message ([`RawFramer`]).
    Raw(RawConfig),
    /// 4-byte big-endian length prefix ([`LengthPrefixFramer`]). The default.
    #[default]
    LengthPrefix,
    /// Length prefix with a chosen maximum.
    LengthPrefixWith(LengthPrefixConfig),
    /// Delimited messages, `\n` by default ([`DelimiterFramer`]).
    Delimiter(DelimiterConfig),
    /// Your own framer, built once per connection.
    Custom(Arc<dyn Fn() -> Box<dyn Framer + Send> + Send + Sync>),
}

impl Framing {
    /// A framer for one connection.
    ///
    /// # Errors
    ///
    /// The framer's configuration error.
    pub fn build(&self) -> Result<Box<dyn Framer + Send>, FramingConfigError> {
        Ok(match self {
            Self::Raw(config) => Box::new(RawFramer::new(config.clone())?),
            Self::LengthPrefix => Box::new(LengthPrefixFramer::default()),
            Self::LengthPrefixWith(config) => Box::new(LengthPrefixFramer::new(config.clone())?),
            Self::Delimiter(config) => Box::new(DelimiterFramer::new(config.clone())?),
            Self::Custom(make) => make(),
        })
    }
}

impl fmt::Debug for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Raw(c) => f.debug_tuple("Raw").field(c).finish(),
            Self::LengthPrefix => f.write_str("LengthPrefix"),
            Self::LengthPrefixWith(c) => f.debug_tuple("LengthPrefixWith").field(c).finish(),
            Self::Delimiter(c) => f.debug_tuple("Delimiter").field(c).finish(),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

#[cfg(test)]
pub(crate) mod test_util;

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::test_util::{any_builtin, as_custom, plain};
    use super::*;
    use crate::Message;

    #[test]
    fn errors_say_whose_fault() {
        assert!(FramingError::FrameTooLarge { len: 2, max: 1 }.is_remote());
        assert!(FramingError::Truncated { buffered: 1 }.is_remote());
        assert!(FramingError::ServerSpeaksTls.is_remote());
        assert!(FramingError::ClientSpeaksTls.is_remote());
        let text = FramingError::ServerSpeaksTls.to_string();
        assert!(
            text.contains("speaks TLS") && text.contains("--tls-ca"),
            "{text}"
        );
        let text = FramingError::ClientSpeaksTls.to_string();
        assert!(
            text.contains("ClientHello") && text.contains("--tls"),
            "{text}"
        );
        assert!(!FramingError::MessageTooLarge { len: 2, max: 1 }.is_remote());
        assert!(!FramingError::MessageContainsDelimiter { offset: 0 }.is_remote());
        let text = FramingError::FrameTooLarge { len: 20, max: 10 }.to_string();
        assert!(text.contains("peer") && text.contains("20") && text.contains("10"));
        let text = FramingError::MessageTooLarge { len: 20, max: 10 }.to_string();
        assert!(text.contains("send"));
    }

    #[test]
    fn boxed_dyn_framer_is_a_framer() -> Result<(), FramingError> {
        fn roundtrip<F: Framer>(mut framer: F) -> Result<Option<Bytes>, FramingError> {
            let mut buf = BytesMut::new();
            framer.encode(b"abc", &mut buf)?;
            framer.decode(&mut buf)
        }
        let framers: Vec<Box<dyn Framer + Send>> = vec![
            Box::new(RawFramer::default()),
            Box::new(LengthPrefixFramer::default()),
            Box::new(DelimiterFramer::default()),
        ];
        for framer in framers {
            assert_eq!(roundtrip(framer)?.as_deref(), Some(&b"abc"[..]));
        }
        Ok(())
    }

    #[test]
    fn a_link_framer_holds_the_builtin_framers_by_value() {
        let builtin = |framer: Box<dyn Framer + Send>| LinkFramer::new(framer).is_builtin();
        assert!(builtin(Box::<LengthPrefixFramer>::default()));
        assert!(builtin(Box::<RawFramer>::default()));
        assert!(builtin(Box::new(DelimiterFramer::lines())));
        assert!(builtin(plain(Box::new(LengthPrefixFramer::default()))));
        assert!(!builtin(as_custom(Box::new(RawFramer::default()))));
        assert!(!builtin(plain(as_custom(Box::new(RawFramer::default())))));
        assert!(!builtin(plain(plain(Box::new(RawFramer::default())))));
        // Its configuration comes along: a limit of 3 bytes still refuses 4.
        let mut framer = LinkFramer::new(Box::new(
            LengthPrefixFramer::new(LengthPrefixConfig { max_frame_len: 3 }).expect("valid"),
        ));
        assert_eq!(framer.max_message_len(), 3);
        let mut src = BytesMut::from(&b"\0\0\0\x04abcd"[..]);
        assert_eq!(
            framer.decode(&mut src),
            Err(FramingError::FrameTooLarge { len: 4, max: 3 })
        );
    }

    /// One built-in framer twice, behind a plain server's check of the
    /// opening bytes when `checked`: called through its vtable (as a
    /// user's framer is), and held by a `LinkFramer`.
    fn builtin_through_both(
        builtin: &test_util::Builtin,
        checked: bool,
    ) -> (Box<dyn Framer + Send>, LinkFramer) {
        let (framer, own) = (builtin.framer(), as_custom(builtin.framer()));
        if checked {
            (plain(own), LinkFramer::new(plain(framer)))
        } else {
            (own, LinkFramer::new(framer))
        }
    }

    /// A `LinkFramer` decoding as a link does: its
    /// [`whole_message`](LinkFramer::whole_message) first, then its
    /// `decode` (or `decode_eof`).
    struct AsALink(LinkFramer);

    impl AsALink {
        fn whole_message(&self, src: &mut BytesMut) -> Option<Bytes> {
            self.0.whole_message(src).map(|message| match message {
                Message::Binary(bytes) => bytes,
                Message::Text(_) => panic!("a framer's message is binary"),
            })
        }
    }

    impl Framer for AsALink {
        fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FramingError> {
            match self.whole_message(src) {
                Some(message) => Ok(Some(message)),
                None => self.0.decode(src),
            }
        }

        fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FramingError> {
            match self.whole_message(src) {
                Some(message) => Ok(Some(message)),
                None => self.0.decode_eof(src),
            }
        }

        fn remaining(&self, src: &BytesMut) -> Option<usize> {
            self.0.remaining(src)
        }

        fn encode(&mut self, msg: &[u8], dst: &mut BytesMut) -> Result<(), FramingError> {
            self.0.encode(msg, dst)
        }

        fn encoded_len(&self, msg_len: usize) -> usize {
            self.0.encoded_len(msg_len)
        }

        fn max_message_len(&self) -> usize {
            self.0.max_message_len()
        }
    }

    #[test]
    fn a_link_framer_builds_the_length_prefix_and_raw_messages_itself() {
        let whole = |framer: Box<dyn Framer + Send>, wire: &[u8]| {
            let mut src = BytesMut::from(wire);
            let message = LinkFramer::new(framer).whole_message(&mut src);
            (message, src.len())
        };
        let binary = |bytes: &'static [u8]| Some(Message::Binary(Bytes::from_static(bytes)));
        let lp = || Box::new(LengthPrefixFramer::default());
        let raw = || Box::new(RawFramer::default());
        assert_eq!(whole(lp(), b"\0\0\0\x02hi\0"), (binary(b"hi"), 1));
        assert_eq!(whole(raw(), b"hi"), (binary(b"hi"), 0));
        // Anything else is left to `decode`, untouched: a partial frame, an
        // empty buffer, a length over the limit, another framer, opening
        // bytes still to check.
        assert_eq!(whole(lp(), b"\0\0\0\x02h"), (None, 5));
        assert_eq!(whole(raw(), b""), (None, 0));
        let small = LengthPrefixFramer::new(LengthPrefixConfig { max_frame_len: 1 });
        assert_eq!(
            whole(Box::new(small.expect("valid")), b"\0\0\0\x02hi"),
            (None, 6)
        );
        assert_eq!(
            whole(Box::new(DelimiterFramer::lines()), b"hi\n"),
            (None, 3)
        );
        assert_eq!(whole(as_custom(raw()), b"hi"), (None, 2));
        assert_eq!(whole(plain(raw()), b"hi"), (None, 2));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// A `LinkFramer` decoding as a link does, its `whole_message`
        /// first, cuts any bytes, in any pieces, into the messages and
        /// errors (at EOF, over the limits, before and after the check of
        /// the opening bytes) that the framer it holds gives alone through
        /// its vtable, call by call.
        #[test]
        fn a_link_framers_whole_message_is_what_it_decodes(
            builtin in any_builtin(),
            checked in any::<bool>(),
            wire in test_util::any_wire(),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
            eof in any::<bool>(),
        ) {
            let (mut own, held) = builtin_through_both(&builtin, checked);
            let mut held = AsALink(held);
            let chunks = test_util::chunked(&wire, &cuts);
            prop_assert_eq!(
                test_util::every_call(&mut held, &chunks, eof),
                test_util::every_call(&mut own, &chunks, eof)
            );
        }

        /// Any built-in framer held by a `LinkFramer` (behind a plain
        /// server's check or not) cuts any bytes, in any pieces, into the
        /// messages and errors (at EOF too) that the same framer gives
        /// through its vtable, call by call, and says the same
        /// `remaining` on the way.
        #[test]
        fn a_link_framer_decodes_as_the_framer_it_holds(
            builtin in any_builtin(),
            checked in any::<bool>(),
            wire in test_util::any_wire(),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
            eof in any::<bool>(),
        ) {
            let (mut own, mut held) = builtin_through_both(&builtin, checked);
            prop_assert!(held.is_builtin());
            prop_assert_eq!(held.is_stream(), own.is_stream());
            prop_assert_eq!(held.max_message_len(), own.max_message_len());
            let chunks = test_util::chunked(&wire, &cuts);
            prop_assert_eq!(
                test_util::every_call(&mut held, &chunks, eof),
                test_util::every_call(&mut own, &chunks, eof)
            );
        }
    }

    #[test]
    fn config_errors_display() {
        assert!(!FramingConfigError::EmptyDelimiter.to_string().is_empty());
        assert!(
            FramingConfigError::MaxFrameLenTooLarge { max: 7 }
                .to_string()
                .contains('7')
        );
    }
}
