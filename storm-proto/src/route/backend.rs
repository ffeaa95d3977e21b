//! The gateway's backend side: how messages from many clients share one
//! backend connection, and how replies find their way back.
//!
//! A gateway keeps **one** connection per route to that route's backend and
//! multiplexes every client over it. Each message on that connection, in
//! either direction, starts with one header line naming the client, then
//! the payload as is:
//!
//! ```text
//! CLIENT=<client id>\n<payload>
//! CLIENT=<client id>;binary\n<payload>
//! ```
//!
//! - gateway → backend: `<client id>` is the decimal number the gateway gave
//!   the client connection the payload came from (unique while the gateway
//!   runs); the payload is what the client sent after its `ROUTENAME=` line.
//! - backend → gateway: `CLIENT=<client id>` sends the payload to that
//!   client only (a reply), `CLIENT=*` to every client that negotiated the
//!   route in its handshake (a push). The gateway hands it to the client as
//!   `ROUTENAME=<route>\n<payload>` (see [`envelope`](super::envelope)).
//!
//! A backend that echoes whole messages therefore answers the right client,
//! in the kind the client used, without knowing anything about the gateway.
//! [`decode`] is liberal like [`envelope::decode`](super::envelope::decode):
//! the prefix and the marker ignore ASCII case and the line may end in
//! `\r\n`. The id is at most 20 digits, so the header is found within a few
//! bytes whatever the message length.
//!
//! # Text and binary
//!
//! A client's message is text or binary, and it stays so both ways:
//!
//! - **WebSocket backend**: the frame type carries the kind. The gateway
//!   forwards a text message in a text frame and a binary one in a binary
//!   frame, with no marker; a reply reaches the client in the frame type the
//!   backend sent it in (binary if its header is marked `;binary`).
//! - **Length-prefixed TCP backend**: TCP has no frame types, so the header
//!   carries the kind. The gateway writes [`BINARY_MARKER`] (`;binary`) after
//!   the id of every binary message and nothing after a text one. A reply is
//!   binary when its header is marked `;binary`, and text otherwise; an
//!   unmarked payload that is not UTF-8 cannot be a text message and goes to
//!   the client as binary (what a backend written before the marker existed
//!   gets).
//!
//! [`BackendMessage::binary`] says whether a header is marked.
//!
//! # Errors on the client's side
//!
//! A message the gateway cannot deliver to its backend is answered, never
//! dropped in silence, with a text message from [`error_reply`]:
//!
//! ```text
//! {"event":"SMError","route":"<route>","error":"backend unavailable"}
//! {"event":"SMError","route":"<route>","error":"backend disconnected"}
//! ```
//!
//! The first answers a message sent while the backend is down (it is being
//! reconnected); the second tells every client that sent the route a
//! message while the connection was up that the connection dropped, so an
//! answer it still waits for will not come.
//!
//! ```
//! use bytes::BytesMut;
//! use storm_proto::route::backend::{self, Target};
//!
//! let mut out = BytesMut::new();
//! backend::encode(7, b"hello", &mut out);
//! assert_eq!(&out[..], b"CLIENT=7\nhello");
//! let msg = backend::decode(&out)?;
//! assert_eq!((msg.target, msg.payload, msg.binary), (Target::Client(7), &b"hello"[..], false));
//! let mut out = BytesMut::new();
//! backend::encode_to(Target::Client(7), true, b"\x00\x01", &mut out);
//! assert_eq!(&out[..], b"CLIENT=7;binary\n\x00\x01");
//! assert!(backend::decode(&out)?.binary);
//! assert_eq!(backend::decode(b"CLIENT=*\ntick")?.target, Target::AllClients);
//! assert_eq!(
//!     backend::error_reply("orders", backend::BACKEND_UNAVAILABLE),
//!     r#"{"event":"SMError","route":"orders","error":"backend unavailable"}"#
//! );
//! # Ok::<(), backend::BackendError>(())
//! ```

use std::fmt;

use bytes::{BufMut, BytesMut};

use super::wire;

/// The header prefix, as written.
pub const CLIENT_PREFIX: &str = "CLIENT=";

/// The client id that addresses every client of the route.
pub const ALL_CLIENTS: &str = "*";

/// What follows the client id in the header of a binary message (see
/// [text and binary](self#text-and-binary)).
pub const BINARY_MARKER: &str = ";binary";

/// Reason in [`error_reply`] for a message sent while the backend is down.
pub const BACKEND_UNAVAILABLE: &str = "backend unavailable";

/// Reason in [`error_reply`] sent when a backend connection drops.
pub const BACKEND_DISCONNECTED: &str = "backend disconnected";

/// Most digits of a client id (`u64::MAX` has 20).
const MAX_ID_DIGITS: usize = 20;

/// Who a backend message is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// One client, by the id the gateway gave it.
    Client(u64),
    /// Every client that negotiated the route (`CLIENT=*`).
    AllClients,
}

/// A decoded backend message: slices of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendMessage<'a> {
    /// Who it is for.
    pub target: Target,
    /// The payload after the header line.
    pub payload: &'a [u8],
    /// Length of the header line including its line break: the payload
    /// starts at this offset of the message (`msg.slice(header_len..)`).
    pub header_len: usize,
    /// Whether the header is marked [`BINARY_MARKER`]: the message is
    /// binary whatever carried it.
    pub binary: bool,
}

/// Why a backend message has no valid `CLIENT=` header (remote error: the
/// backend broke the protocol; the gateway drops the message and counts it).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendError {
    /// The message does not start with `CLIENT=`.
    MissingHeader,
    /// The id is neither `*` nor a decimal `u64`.
    InvalidClientId,
    /// Something other than [`BINARY_MARKER`] follows the id.
    InvalidMarker,
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingHeader => f.write_str("backend message has no CLIENT= header line"),
            Self::InvalidClientId => {
                f.write_str("backend message names no valid client id (a number or *)")
            }
            Self::InvalidMarker => {
                f.write_str("backend message header has a marker other than ;binary")
            }
        }
    }
}

impl std::error::Error for BackendError {}

/// Appends `CLIENT=<client>\n<payload>` to `out`: a text message, or on a
/// WebSocket backend whatever the frame type says
/// ([`encode_to`]`(Target::Client(client), false, …)`).
pub fn encode(client: u64, payload: &[u8], out: &mut BytesMut) {
    encode_to(Target::Client(client), false, payload, out);
}

/// Appends `CLIENT=*\n<payload>` to `out`: a push to every client of the
/// route (what a backend writes), text as [`encode`] is.
pub fn encode_all(payload: &[u8], out: &mut BytesMut) {
    encode_to(Target::AllClients, false, payload, out);
}

/// Appends the header for `target` (`CLIENT=<client>` or `CLIENT=*`),
/// marked [`BINARY_MARKER`] when `binary` (on a TCP backend, which has no
/// frame types: a binary message), then `payload`, to `out`.
pub fn encode_to(target: Target, binary: bool, payload: &[u8], out: &mut BytesMut) {
    let client;
    let id = match target {
        Target::Client(id) => {
            client = id.to_string();
            client.as_bytes()
        }
        Target::AllClients => ALL_CLIENTS.as_bytes(),
    };
    let marker = if binary {
        BINARY_MARKER.as_bytes()
    } else {
        b""
    };
    out.reserve(CLIENT_PREFIX.len() + id.len() + marker.len() + 1 + payload.len());
    out.put_slice(CLIENT_PREFIX.as_bytes());
    out.put_slice(id);
    out.put_slice(marker);
    out.put_u8(b'\n');
    out.put_slice(payload);
}

/// Splits a backend message into target and payload.
///
/// # Errors
///
/// A [`BackendError`]; total on any input.
pub fn decode(msg: &[u8]) -> Result<BackendMessage<'_>, BackendError> {
    let prefix_len = CLIENT_PREFIX.len();
    match msg.get(..prefix_len) {
        Some(prefix) if prefix.eq_ignore_ascii_case(CLIENT_PREFIX.as_bytes()) => {}
        _ => return Err(BackendError::MissingHeader),
    }
    let rest = msg.get(prefix_len..).unwrap_or_default();
    // The id, the marker, an optional `\r` and the `\n` fit in this window.
    let window = rest
        .get(..MAX_ID_DIGITS + BINARY_MARKER.len() + 2)
        .unwrap_or(rest);
    let (line, header_len) = match window.iter().position(|&b| b == b'\n') {
        Some(i) => (window.get(..i).unwrap_or_default(), prefix_len + i + 1),
        None if window.len() == rest.len() => (rest, msg.len()),
        None => return Err(BackendError::InvalidClientId),
    };
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let (id, binary) = match line.iter().position(|&b| b == b';') {
        Some(i) => {
            let marker = line.get(i..).unwrap_or_default();
            if !marker.eq_ignore_ascii_case(BINARY_MARKER.as_bytes()) {
                return Err(BackendError::InvalidMarker);
            }
            (line.get(..i).unwrap_or_default(), true)
        }
        None => (line, false),
    };
    let target = if id == ALL_CLIENTS.as_bytes() {
        Target::AllClients
    } else if !id.is_empty() && id.len() <= MAX_ID_DIGITS && id.iter().all(u8::is_ascii_digit) {
        std::str::from_utf8(id)
            .ok()
            .and_then(|id| id.parse().ok())
            .map(Target::Client)
            .ok_or(BackendError::InvalidClientId)?
    } else {
        return Err(BackendError::InvalidClientId);
    };
    Ok(BackendMessage {
        target,
        payload: msg.get(header_len..).unwrap_or_default(),
        header_len,
        binary,
    })
}

/// The text message a client gets for a message the gateway could not hand
/// to `route`'s backend: `{"event":"SMError","route":<route>,"error":<reason>}`
/// (the shape of [`RouteError::error_reply`](super::RouteError::error_reply)),
/// with `reason` usually [`BACKEND_UNAVAILABLE`] or [`BACKEND_DISCONNECTED`].
#[must_use]
pub fn error_reply(route: &str, reason: &str) -> String {
    wire::route_error(route, reason)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::route::envelope::ErrorReply;

    #[test]
    fn encode_shapes() {
        let mut out = BytesMut::new();
        encode(u64::MAX, b"\x00\xff", &mut out);
        assert_eq!(&out[..], b"CLIENT=18446744073709551615\n\x00\xff");
        let mut out = BytesMut::new();
        encode_all(b"", &mut out);
        assert_eq!(&out[..], b"CLIENT=*\n");
        let mut out = BytesMut::new();
        encode_to(Target::Client(3), true, b"ok", &mut out);
        assert_eq!(&out[..], b"CLIENT=3;binary\nok");
        let mut out = BytesMut::new();
        encode_to(Target::AllClients, true, b"\xff", &mut out);
        assert_eq!(&out[..], b"CLIENT=*;binary\n\xff");
    }

    #[test]
    fn decode_accepts_variants() {
        let m = decode(b"CLIENT=42\nhi").unwrap();
        assert_eq!(
            (m.target, m.payload, m.header_len),
            (Target::Client(42), &b"hi"[..], 10)
        );
        let m = decode(b"client=0\r\n\nx").unwrap();
        assert_eq!((m.target, m.payload), (Target::Client(0), &b"\nx"[..]));
        let m = decode(b"CLIENT=*").unwrap();
        assert_eq!((m.target, m.payload), (Target::AllClients, &b""[..]));
        let m = decode(b"CLIENT=18446744073709551615\n").unwrap();
        assert_eq!((m.target, m.binary), (Target::Client(u64::MAX), false));
        // The marker, in any ASCII case, with `\r\n`, at the longest id:
        // the longest header, which fills the window exactly.
        let m = decode(b"CLIENT=18446744073709551615;BiNaRy\r\nx").unwrap();
        assert_eq!(
            (m.target, m.payload, m.binary, m.header_len),
            (Target::Client(u64::MAX), &b"x"[..], true, 36)
        );
        let m = decode(b"CLIENT=*;binary").unwrap();
        assert_eq!(
            (m.target, m.payload, m.binary),
            (Target::AllClients, &b""[..], true)
        );
    }

    #[test]
    fn decode_rejects() {
        use BackendError::*;
        let cases: &[(&[u8], BackendError)] = &[
            (b"", MissingHeader),
            (b"CLIENT", MissingHeader),
            (b"ROUTENAME=a\nx", MissingHeader),
            (b"CLIENT=\nx", InvalidClientId),
            (b"CLIENT=-1\nx", InvalidClientId),
            (b"CLIENT=+1\nx", InvalidClientId),
            (b"CLIENT=1 \nx", InvalidClientId),
            (b"CLIENT=**\nx", InvalidClientId),
            (b"CLIENT=18446744073709551616\nx", InvalidClientId),
            (b"CLIENT=123456789012345678901\nx", InvalidClientId),
            (b"CLIENT=\xff\nx", InvalidClientId),
            (b"CLIENT=;binary\nx", InvalidClientId),
            (b"CLIENT=1;text\nx", InvalidMarker),
            (b"CLIENT=1;binary;binary\nx", InvalidMarker),
            (b"CLIENT=1;binaryx\nx", InvalidMarker),
            (b"CLIENT=1;\nx", InvalidMarker),
            (b"CLIENT=1 ;binary\nx", InvalidClientId),
            (b"CLIENT=1\r;binary\nx", InvalidClientId),
        ];
        for (msg, want) in cases {
            assert_eq!(
                decode(msg).as_ref().err(),
                Some(want),
                "{:?}",
                String::from_utf8_lossy(msg)
            );
        }
    }

    #[test]
    fn decode_scans_only_the_window() {
        let mut msg = b"CLIENT=".to_vec();
        msg.resize(1 << 20, b'1');
        assert_eq!(decode(&msg), Err(BackendError::InvalidClientId));
    }

    #[test]
    fn decode_is_total_byte_by_byte() {
        // Every prefix of a valid message either decodes or fails cleanly.
        let msg = b"CLIENT=12\r\npayload";
        for end in 0..=msg.len() {
            let _ = decode(&msg[..end]);
        }
    }

    proptest! {
        /// Whatever the client, payload and kind, a header written by the
        /// encoders decodes to the same client, payload and kind.
        #[test]
        fn encode_decode_keeps_target_payload_and_kind(
            client in proptest::option::of(any::<u64>()),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            binary in any::<bool>(),
        ) {
            let target = client.map_or(Target::AllClients, Target::Client);
            let mut out = BytesMut::new();
            encode_to(target, binary, &payload, &mut out);
            // The text shorthands write the same bytes.
            let mut shorthand = BytesMut::new();
            match (client, binary) {
                (Some(id), false) => encode(id, &payload, &mut shorthand),
                (None, false) => encode_all(&payload, &mut shorthand),
                (_, true) => shorthand.clone_from(&out),
            }
            prop_assert_eq!(&shorthand, &out);
            let decoded = decode(&out).unwrap();
            prop_assert_eq!(decoded.target, target);
            prop_assert_eq!(decoded.payload, &payload[..]);
            prop_assert_eq!(decoded.binary, binary);
            prop_assert_eq!(decoded.header_len + payload.len(), out.len());
        }
    }

    #[test]
    fn error_replies_parse_as_error_replies() {
        let text = error_reply("a\"b", BACKEND_DISCONNECTED);
        let reply = ErrorReply::parse(text.as_bytes()).unwrap();
        assert_eq!(reply.route.as_deref(), Some("a\"b"));
        assert_eq!(reply.error, BACKEND_DISCONNECTED);
    }
}
