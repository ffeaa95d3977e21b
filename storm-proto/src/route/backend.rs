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
//! A backend that echoes whole messages therefore answers the right client
//! without knowing anything about the gateway. [`decode`] is liberal like
//! [`envelope::decode`](super::envelope::decode): the prefix ignores ASCII
//! case and the line may end in `\r\n`. The id is at most 20 digits, so the
//! header is found within a few bytes whatever the message length.
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
//! assert_eq!((msg.target, msg.payload), (Target::Client(7), &b"hello"[..]));
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
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingHeader => f.write_str("backend message has no CLIENT= header line"),
            Self::InvalidClientId => {
                f.write_str("backend message names no valid client id (a number or *)")
            }
        }
    }
}

impl std::error::Error for BackendError {}

/// Appends `CLIENT=<client>\n<payload>` to `out`.
pub fn encode(client: u64, payload: &[u8], out: &mut BytesMut) {
    let id = client.to_string();
    out.reserve(CLIENT_PREFIX.len() + id.len() + 1 + payload.len());
    out.put_slice(CLIENT_PREFIX.as_bytes());
    out.put_slice(id.as_bytes());
    out.put_u8(b'\n');
    out.put_slice(payload);
}

/// Appends `CLIENT=*\n<payload>` to `out`: a push to every client of the
/// route (what a backend writes).
pub fn encode_all(payload: &[u8], out: &mut BytesMut) {
    out.reserve(CLIENT_PREFIX.len() + ALL_CLIENTS.len() + 1 + payload.len());
    out.put_slice(CLIENT_PREFIX.as_bytes());
    out.put_slice(ALL_CLIENTS.as_bytes());
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
    // The id, an optional `\r` and the `\n` fit in this window.
    let window = rest.get(..MAX_ID_DIGITS + 2).unwrap_or(rest);
    let (line, header_len) = match window.iter().position(|&b| b == b'\n') {
        Some(i) => (window.get(..i).unwrap_or_default(), prefix_len + i + 1),
        None if window.len() == rest.len() => (rest, msg.len()),
        None => return Err(BackendError::InvalidClientId),
    };
    let id = line.strip_suffix(b"\r").unwrap_or(line);
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
        assert_eq!(m.target, Target::Client(u64::MAX));
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

    #[test]
    fn error_replies_parse_as_error_replies() {
        let text = error_reply("a\"b", BACKEND_DISCONNECTED);
        let reply = ErrorReply::parse(text.as_bytes()).unwrap();
        assert_eq!(reply.route.as_deref(), Some("a\"b"));
        assert_eq!(reply.error, BACKEND_DISCONNECTED);
    }
}
