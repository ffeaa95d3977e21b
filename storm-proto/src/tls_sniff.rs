//! Telling a TLS record from plain bytes: what a connection that does not
//! speak TLS sees when its peer does.
//!
//! A plain client of a TLS server sends its first message (a frame, an
//! HTTP upgrade request); the TLS server cannot parse it, answers with a
//! TLS alert record and closes. A TLS client of a plain server opens with
//! a ClientHello, a TLS handshake record. Either way the first bytes the
//! plain end receives are a TLS record header (RFC 8446 section 5.1):
//!
//! | byte | value |
//! |---|---|
//! | 0 | content type: `0x15` alert or `0x16` handshake |
//! | 1–2 | protocol version: `0x03 0x00` to `0x03 0x04` |
//! | 3–4 | record length, big-endian: 1 to 2^14 + 2048 |
//!
//! [`sniff`] recognises that header. The plain ends check the opening bytes
//! with it in one place per direction, so that the mismatch becomes a typed
//! error that says what to do, instead of a bogus frame length, a truncated
//! frame or an HTTP parse error:
//!
//! - a plain WebSocket client: [`ResponseError::ServerSpeaksTls`] (from the
//!   upgrade's response parse); a plain WebSocket server:
//!   [`HandshakeError::ClientSpeaksTls`] (from the request parse, answered
//!   with a 400);
//! - a plain framed TCP client or server (any framing but raw):
//!   [`FramingError::ServerSpeaksTls`] or [`FramingError::ClientSpeaksTls`],
//!   from the framer storm-host's `setup` gives such a connection, which
//!   checks the peer's first bytes before its framer cuts any frame.
//!
//! Five bytes of that shape are not what any Storm protocol opens with (a
//! length prefix of `0x1503..` or `0x1603..` declares more than 350 MB,
//! an HTTP message starts with a letter, a line of text has no `0x15` or
//! `0x16`, a broker frame starts with its version). Raw framing is not
//! checked: it passes any bytes as they come, including bytes that happen
//! to look like a record header.
//!
//! [`ResponseError::ServerSpeaksTls`]: crate::ws::handshake::ResponseError::ServerSpeaksTls
//! [`HandshakeError::ClientSpeaksTls`]: crate::ws::handshake::HandshakeError::ClientSpeaksTls

use bytes::{Bytes, BytesMut};

use crate::framing::{Framer, FramingError, LinkFramer};

/// Length of a TLS record header: content type, version, length.
pub const RECORD_HEADER_LEN: usize = 5;

/// The longest record a header may declare: 2^14 bytes of plaintext plus
/// 2048 of expansion (RFC 5246 section 6.2.3).
const MAX_RECORD_LEN: u16 = (1 << 14) + 2048;

/// What the opening bytes of a stream say about TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    /// Fewer than [`RECORD_HEADER_LEN`] bytes, all of them fitting a TLS
    /// alert or handshake record header: read more to tell.
    NeedMore,
    /// A TLS alert or handshake record header.
    Tls,
    /// Not a TLS record.
    Plain,
}

/// What the opening bytes of a stream, `first` (at least its first
/// [`RECORD_HEADER_LEN`] bytes, or all there are), say about TLS.
pub fn sniff<'a>(first: impl IntoIterator<Item = &'a u8>) -> Sniff {
    let mut header = [0u8; RECORD_HEADER_LEN];
    let mut seen = 0;
    for (slot, &byte) in header.iter_mut().zip(first) {
        let fits = match seen {
            0 => byte == 0x15 || byte == 0x16,
            1 => byte == 0x03,
            2 => byte <= 0x04,
            _ => true,
        };
        if !fits {
            return Sniff::Plain;
        }
        *slot = byte;
        seen += 1;
    }
    if seen < RECORD_HEADER_LEN {
        return Sniff::NeedMore;
    }
    let [_, _, _, high, low] = header;
    match u16::from_be_bytes([high, low]) {
        1..=MAX_RECORD_LEN => Sniff::Tls,
        _ => Sniff::Plain,
    }
}

/// Whether `first`, the opening bytes of a stream, are a TLS alert or
/// handshake record header (`false` while fewer than
/// [`RECORD_HEADER_LEN`] bytes have arrived).
#[must_use]
pub fn looks_like_tls_record(first: &[u8]) -> bool {
    sniff(first) == Sniff::Tls
}

/// What a plain client is told when the server's first bytes are TLS; the
/// fix depends on how it connects.
pub(crate) const SERVER_SPEAKS_TLS: &str =
    "the server speaks TLS (its first bytes are a TLS record) and this client does not";

/// What a plain server says when a client opens with a TLS record.
pub(crate) const CLIENT_SPEAKS_TLS: &str = "TLS ClientHello on a plain port: the client speaks \
     TLS and this server is not running with TLS (`--tls CERT_PEM KEY_PEM` for a `storm` \
     server; `ServerOptions::tls` in code)";

/// A plain connection's framer: checks that the peer's opening bytes are
/// not a TLS record before `inner` cuts any frame out of them, and returns
/// `tls` (the error for this end) when they are. After the first
/// [`RECORD_HEADER_LEN`] bytes it is `inner` exactly; before, it holds at
/// most four bytes that fit a record header back. A link given one holds
/// its check and, by value, a built-in `inner`.
pub struct PlainFramer(LinkFramer);

impl PlainFramer {
    /// `inner` behind the check; `tls` is what a TLS record from the peer
    /// is ([`FramingError::ServerSpeaksTls`] on a client,
    /// [`FramingError::ClientSpeaksTls`] on a server).
    #[must_use]
    pub fn new(inner: Box<dyn Framer + Send>, tls: FramingError) -> Self {
        Self(LinkFramer::checked(inner, Some(tls)))
    }

    /// The check and the framer, as a link holds them.
    pub(crate) fn into_link_framer(self) -> LinkFramer {
        self.0
    }
}

/// The check of the opening bytes comes first in `decode`, `decode_eof`
/// and `remaining` (it is written once, in the crate's `LinkFramer`, which
/// a link holds the built-in framers in).
impl Framer for PlainFramer {
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FramingError> {
        self.0.decode(src)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FramingError> {
        self.0.decode_eof(src)
    }

    fn encode(&mut self, msg: &[u8], dst: &mut BytesMut) -> Result<(), FramingError> {
        self.0.encode(msg, dst)
    }

    fn encode_header(&mut self, msg: &[u8], dst: &mut BytesMut) -> Result<bool, FramingError> {
        self.0.encode_header(msg, dst)
    }

    fn is_stream(&self) -> bool {
        self.0.is_stream()
    }

    fn encoded_len(&self, msg_len: usize) -> usize {
        self.0.encoded_len(msg_len)
    }

    fn max_message_len(&self) -> usize {
        self.0.max_message_len()
    }

    fn encoder(&self) -> Option<Box<dyn Framer + Send>> {
        self.0.encoder()
    }

    fn remaining(&self, src: &BytesMut) -> Option<usize> {
        self.0.remaining(src)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::{DelimiterFramer, LengthPrefixFramer, RawFramer};

    /// What a rustls server sends a plain client: a fatal `decode_error`
    /// alert in a TLS 1.2 record.
    const ALERT: &[u8] = b"\x15\x03\x03\x00\x02\x02\x32";
    /// The start of a TLS 1.3 ClientHello (record version 1.0, as clients
    /// send it).
    const CLIENT_HELLO: &[u8] = b"\x16\x03\x01\x00\xf4\x01\x00\x00\xf0\x03\x03";

    #[test]
    fn tls_records_are_told_from_plain_bytes() {
        assert_eq!(sniff(ALERT), Sniff::Tls);
        assert_eq!(sniff(CLIENT_HELLO), Sniff::Tls);
        assert!(looks_like_tls_record(ALERT));
        for prefix in 0..RECORD_HEADER_LEN {
            assert_eq!(sniff(&CLIENT_HELLO[..prefix]), Sniff::NeedMore);
            assert!(!looks_like_tls_record(&CLIENT_HELLO[..prefix]));
        }
        for plain in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"HTTP/1.1 101 Switching Protocols",
            b"\0\0\0\x05hello",
            // Other content types, versions and lengths.
            b"\x17\x03\x03\x00\x10",
            b"\x16\x02\x00\x00\x10",
            b"\x16\x03\x05\x00\x10",
            b"\x16\x03\x03\x00\x00",
            b"\x16\x03\x03\x48\x01",
        ] {
            assert_eq!(sniff(plain), Sniff::Plain, "{plain:?}");
        }
        // Split over two buffers, as a handshake sees it.
        assert_eq!(
            sniff(CLIENT_HELLO[..2].iter().chain(&CLIENT_HELLO[2..])),
            Sniff::Tls
        );
    }

    fn plain(inner: Box<dyn Framer + Send>) -> PlainFramer {
        PlainFramer::new(inner, FramingError::ServerSpeaksTls)
    }

    #[test]
    fn a_tls_record_first_is_the_error_whole_or_byte_by_byte() {
        let framers: [fn() -> Box<dyn Framer + Send>; 3] = [
            || Box::new(LengthPrefixFramer::default()),
            || Box::new(DelimiterFramer::lines()),
            || Box::new(RawFramer::default()),
        ];
        for make in framers {
            let mut framer = plain(make());
            let mut src = BytesMut::from(ALERT);
            assert_eq!(framer.decode(&mut src), Err(FramingError::ServerSpeaksTls));
            let mut framer = plain(make());
            let mut src = BytesMut::new();
            for (i, &byte) in ALERT.iter().enumerate() {
                src.extend_from_slice(&[byte]);
                let result = framer.decode(&mut src);
                if i + 1 < RECORD_HEADER_LEN {
                    assert_eq!(result, Ok(None), "byte {i}");
                } else {
                    assert_eq!(result, Err(FramingError::ServerSpeaksTls), "byte {i}");
                    break;
                }
            }
            // The alert then the end of the stream, as the TLS server
            // closes right after it.
            let mut framer = plain(make());
            let mut src = BytesMut::from(ALERT);
            assert_eq!(
                framer.decode_eof(&mut src),
                Err(FramingError::ServerSpeaksTls)
            );
        }
    }

    #[test]
    fn plain_streams_are_the_inner_framer_exactly() -> Result<(), FramingError> {
        let mut framer = plain(Box::new(LengthPrefixFramer::default()));
        let mut src = BytesMut::from(&b"\0\0\0\x02hi\0\0\0\x01"[..]);
        assert_eq!(framer.decode(&mut src)?.as_deref(), Some(&b"hi"[..]));
        assert_eq!(framer.decode(&mut src)?, None);
        // Later bytes that look like a record are data.
        src.extend_from_slice(b"\x16");
        assert_eq!(framer.decode(&mut src)?.as_deref(), Some(&b"\x16"[..]));
        // A raw chunk that cannot start a record is delivered at once.
        let mut framer = plain(Box::new(RawFramer::default()));
        let mut src = BytesMut::from(&b"x"[..]);
        assert_eq!(framer.decode(&mut src)?.as_deref(), Some(&b"x"[..]));
        // A stream that ends before five bytes: the inner framer's verdict.
        let mut framer = plain(Box::new(RawFramer::default()));
        let mut src = BytesMut::from(&b"\x16\x03"[..]);
        assert_eq!(framer.decode(&mut src)?, None);
        assert_eq!(
            framer.decode_eof(&mut src)?.as_deref(),
            Some(&b"\x16\x03"[..])
        );
        let mut framer = plain(Box::new(LengthPrefixFramer::default()));
        let mut src = BytesMut::from(&b"\x16\x03"[..]);
        assert_eq!(
            framer.decode_eof(&mut src),
            Err(FramingError::Truncated { buffered: 2 })
        );
        Ok(())
    }
}
