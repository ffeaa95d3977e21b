//! Route-addressed messages, after the handshake.
//!
//! # The envelope
//!
//! Every message after the handshake, text or binary, in either direction,
//! starts with one header line naming its route, then the payload as is:
//!
//! ```text
//! ROUTENAME=<route name>\n<payload>
//! ```
//!
//! - client → gateway: the route the message is for;
//! - gateway → client: the route a backend reply comes from.
//!
//! [`encode`] and [`encode_text`] write exactly that. [`decode`] is liberal:
//! the `ROUTENAME=` prefix is matched ignoring ASCII case, the line may end
//! in `\r\n`, and a message that is only the header line without a line
//! break is a message with an empty payload. The name must be a valid route
//! name ([`validate_route_name`]); it is looked for only within
//! `max_route_name_len + 2` bytes after the prefix, so a long message
//! without a line break costs nothing. The payload is never copied: it is a
//! slice of the message, and [`Addressed::header_len`] lets a caller holding
//! the message as [`Bytes`] cut it with `msg.slice(header_len..)`.
//!
//! # Errors on the wire
//!
//! A message the gateway cannot route gets an error reply, a text message
//! (see [`RouteError::error_reply`]):
//!
//! ```text
//! {"event":"SMError","route":"<route>","error":"unknown route"}
//! {"event":"SMError","error":"<why the envelope is malformed>"}
//! ```
//!
//! A client tells such a reply from routed data with [`ErrorReply::parse`].

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;

use super::handshake::{Negotiated, ServerConfig, UNKNOWN_ROUTE_REASON};
use super::wire;
use super::{MAX_ROUTE_NAME_LEN_LIMIT, NameError, truncate, validate_route_name};

/// The header prefix, as written.
pub const ROUTENAME_PREFIX: &str = "ROUTENAME=";

/// A decoded route-addressed message: slices of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addressed<'a> {
    /// The route name.
    pub route: &'a str,
    /// The payload after the header line.
    pub payload: &'a [u8],
    /// Length of the header line including its line break: the payload
    /// starts at this offset of the message.
    pub header_len: usize,
}

impl Addressed<'_> {
    /// The payload as a zero-copy slice of `msg`, which must be the message
    /// this was decoded from.
    #[must_use]
    pub fn payload_bytes(&self, msg: &Bytes) -> Bytes {
        msg.slice(self.header_len.min(msg.len())..)
    }
}

/// A decoded route-addressed text message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressedText<'a> {
    /// The route name.
    pub route: &'a str,
    /// The text after the header line.
    pub payload: &'a str,
}

/// Why a message is not a valid route-addressed message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The message does not start with `ROUTENAME=`.
    MissingHeader,
    /// The route name in the header is not valid (too long, empty, control
    /// characters, reserved, not UTF-8).
    InvalidRouteName(NameError),
}

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingHeader => f.write_str("message has no ROUTENAME= header line"),
            Self::InvalidRouteName(err) => write!(f, "bad ROUTENAME header: {err}"),
        }
    }
}

impl std::error::Error for EnvelopeError {}

/// Appends `ROUTENAME=<route>\n<payload>` to `out`.
///
/// # Errors
///
/// [`EnvelopeError::InvalidRouteName`] if `route` is not a valid route name
/// of at most [`MAX_ROUTE_NAME_LEN_LIMIT`] bytes; nothing is written then.
pub fn encode(route: &str, payload: &[u8], out: &mut BytesMut) -> Result<(), EnvelopeError> {
    validate_route_name(route, MAX_ROUTE_NAME_LEN_LIMIT)
        .map_err(EnvelopeError::InvalidRouteName)?;
    out.reserve(ROUTENAME_PREFIX.len() + route.len() + 1 + payload.len());
    out.put_slice(ROUTENAME_PREFIX.as_bytes());
    out.put_slice(route.as_bytes());
    out.put_u8(b'\n');
    out.put_slice(payload);
    Ok(())
}

/// `ROUTENAME=<route>\n<payload>` as a text message.
///
/// # Errors
///
/// As [`encode`].
pub fn encode_text(route: &str, payload: &str) -> Result<String, EnvelopeError> {
    validate_route_name(route, MAX_ROUTE_NAME_LEN_LIMIT)
        .map_err(EnvelopeError::InvalidRouteName)?;
    let mut out = String::with_capacity(ROUTENAME_PREFIX.len() + route.len() + 1 + payload.len());
    out.push_str(ROUTENAME_PREFIX);
    out.push_str(route);
    out.push('\n');
    out.push_str(payload);
    Ok(out)
}

/// Splits a route-addressed message (text or binary) into route and payload,
/// accepting route names of at most `max_route_name_len` bytes.
///
/// # Errors
///
/// An [`EnvelopeError`]; total on any input.
pub fn decode(msg: &[u8], max_route_name_len: usize) -> Result<Addressed<'_>, EnvelopeError> {
    let prefix_len = ROUTENAME_PREFIX.len();
    match msg.get(..prefix_len) {
        Some(prefix) if prefix.eq_ignore_ascii_case(ROUTENAME_PREFIX.as_bytes()) => {}
        _ => return Err(EnvelopeError::MissingHeader),
    }
    let rest = msg.get(prefix_len..).unwrap_or_default();
    // The name, an optional `\r` and the `\n` fit in this window.
    let window = rest
        .get(..max_route_name_len.saturating_add(2))
        .unwrap_or(rest);
    let (line, header_len) = match window.iter().position(|&b| b == b'\n') {
        Some(i) => (window.get(..i).unwrap_or_default(), prefix_len + i + 1),
        None if window.len() == rest.len() => (rest, msg.len()),
        None => {
            return Err(EnvelopeError::InvalidRouteName(NameError::TooLong {
                len: window.len(),
                max: max_route_name_len,
            }));
        }
    };
    let name = line.strip_suffix(b"\r").unwrap_or(line);
    let route = std::str::from_utf8(name)
        .map_err(|_| EnvelopeError::InvalidRouteName(NameError::NotUtf8))?;
    validate_route_name(route, max_route_name_len).map_err(EnvelopeError::InvalidRouteName)?;
    Ok(Addressed {
        route,
        payload: msg.get(header_len..).unwrap_or_default(),
        header_len,
    })
}

/// [`decode`] for a text message.
///
/// # Errors
///
/// As [`decode`].
pub fn decode_text(
    msg: &str,
    max_route_name_len: usize,
) -> Result<AddressedText<'_>, EnvelopeError> {
    let addressed = decode(msg.as_bytes(), max_route_name_len)?;
    Ok(AddressedText {
        route: addressed.route,
        // The header ends after an ASCII `\n` or at the end: a char boundary.
        payload: msg.get(addressed.header_len..).unwrap_or_default(),
    })
}

/// Why the gateway cannot route a message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouteError {
    /// The message is not a valid route-addressed message.
    Envelope(EnvelopeError),
    /// The route is neither negotiated nor in the gateway's table.
    UnknownRoute(String),
}

impl RouteError {
    /// The text message to send back to the client: `{"event":"SMError",
    /// "route":<route>,"error":"unknown route"}` for an unknown route,
    /// `{"event":"SMError","error":<why>}` for a malformed envelope. Not
    /// fatal: the connection goes on.
    #[must_use]
    pub fn error_reply(&self) -> String {
        match self {
            Self::UnknownRoute(route) => wire::route_error(route, UNKNOWN_ROUTE_REASON),
            Self::Envelope(err) => wire::error(&err.to_string()),
        }
    }
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Envelope(err) => err.fmt(f),
            Self::UnknownRoute(route) => write!(f, "{UNKNOWN_ROUTE_REASON} {route:?}"),
        }
    }
}

impl std::error::Error for RouteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Envelope(err) => Some(err),
            Self::UnknownRoute(_) => None,
        }
    }
}

impl From<EnvelopeError> for RouteError {
    fn from(err: EnvelopeError) -> Self {
        Self::Envelope(err)
    }
}

/// The gateway side of route-addressed traffic on one connection: resolves
/// names against the routes negotiated in the handshake plus the gateway's
/// own route table ([`ServerConfig::routes`]), so a client may also address
/// a configured route it did not announce.
///
/// Stateless per message: [`resolve`](Self::resolve) each message from the
/// client and either forward the payload to the route's backend or send
/// [`RouteError::error_reply`] back; tag each backend reply with
/// [`encode_reply`](Self::encode_reply).
#[derive(Debug, Clone)]
pub struct Router {
    config: Arc<ServerConfig>,
    /// Negotiated routes not in the table (only under
    /// [`UnknownRoutePolicy::Accept`](super::UnknownRoutePolicy::Accept)).
    extra: BTreeSet<String>,
}

impl Router {
    /// A router for a connection whose handshake produced `negotiated`.
    #[must_use]
    pub fn new(config: Arc<ServerConfig>, negotiated: &Negotiated) -> Self {
        let extra = negotiated
            .routes()
            .iter()
            .filter(|route| !config.routes.contains(route))
            .cloned()
            .collect();
        Self { config, extra }
    }

    /// Whether messages for `route` are routed.
    #[must_use]
    pub fn contains(&self, route: &str) -> bool {
        self.config.routes.contains(route) || self.extra.contains(route)
    }

    /// Decodes a message from the client and checks its route.
    ///
    /// # Errors
    ///
    /// [`RouteError`]; answer it with [`RouteError::error_reply`].
    pub fn resolve<'a>(&self, msg: &'a [u8]) -> Result<Addressed<'a>, RouteError> {
        let addressed = decode(msg, self.config.limits.max_route_name_len)?;
        if !self.contains(addressed.route) {
            return Err(RouteError::UnknownRoute(addressed.route.to_owned()));
        }
        Ok(addressed)
    }

    /// Appends a backend's reply, tagged with the route it comes from, to
    /// `out` (the message to send to the client).
    ///
    /// # Errors
    ///
    /// [`RouteError::UnknownRoute`] if `route` is not routed on this
    /// connection; nothing is written then.
    pub fn encode_reply(
        &self,
        route: &str,
        payload: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), RouteError> {
        if !self.contains(route) {
            return Err(RouteError::UnknownRoute(route.to_owned()));
        }
        encode(route, payload, out)?;
        Ok(())
    }
}

/// An `SMError` reply from the gateway, as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    /// The route the failed message was for, if the gateway could tell.
    pub route: Option<String>,
    /// The gateway's reason (at most 256 bytes).
    pub error: String,
}

impl ErrorReply {
    /// Parses `msg` as an `SMError` message; `None` if it is not one.
    /// Unknown fields are ignored.
    #[must_use]
    pub fn parse(msg: &[u8]) -> Option<Self> {
        #[derive(Deserialize)]
        struct Reply {
            event: String,
            #[serde(default)]
            route: Option<String>,
            #[serde(default)]
            error: Option<String>,
        }
        let reply: Reply = serde_json::from_slice(msg).ok()?;
        if reply.event != wire::EVENT_ERROR {
            return None;
        }
        let error = reply.error.unwrap_or_default();
        Some(Self {
            route: reply.route,
            error: truncate(&error, 256).to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::RouteTable;

    #[test]
    fn encode_shapes() {
        assert_eq!(
            encode_text("Endpoint1", "hi").unwrap(),
            "ROUTENAME=Endpoint1\nhi"
        );
        let mut out = BytesMut::from(&b"x"[..]);
        encode("a", &[0, 1, 0xff], &mut out).unwrap();
        assert_eq!(&out[..], b"xROUTENAME=a\n\x00\x01\xff");
        for bad in ["", "a\nb", "ACK"] {
            let mut out = BytesMut::new();
            assert!(matches!(
                encode(bad, b"p", &mut out),
                Err(EnvelopeError::InvalidRouteName(_))
            ));
            assert!(out.is_empty(), "nothing written on error");
            assert!(encode_text(bad, "p").is_err());
        }
    }

    #[test]
    fn decode_accepts_variants() {
        let a = decode(b"ROUTENAME=chat\nhello", 16).unwrap();
        assert_eq!(
            (a.route, a.payload, a.header_len),
            ("chat", &b"hello"[..], 15)
        );
        let a = decode(b"routename=chat\r\n\r\nx", 16).unwrap();
        assert_eq!((a.route, a.payload), ("chat", &b"\r\nx"[..]));
        let a = decode(b"ROUTENAME=chat", 16).unwrap();
        assert_eq!((a.route, a.payload, a.header_len), ("chat", &b""[..], 14));
        let a = decode(b"ROUTENAME=chat\n", 16).unwrap();
        assert_eq!((a.route, a.payload), ("chat", &b""[..]));
        let a = decode(b"ROUTENAME=a=b\n\n\n", 16).unwrap();
        assert_eq!((a.route, a.payload), ("a=b", &b"\n\n"[..]));
        let t = decode_text("ROUTENAME=ü\nñ", 16).unwrap();
        assert_eq!((t.route, t.payload), ("ü", "ñ"));
    }

    #[test]
    fn decode_rejects() {
        use EnvelopeError::*;
        let cases: &[(&[u8], EnvelopeError)] = &[
            (b"", MissingHeader),
            (b"ROUTENAME", MissingHeader),
            (b"{\"event\":\"x\"}", MissingHeader),
            (b" ROUTENAME=a\n", MissingHeader),
            (b"ROUTENAME=\nx", InvalidRouteName(NameError::Empty)),
            (b"ROUTENAME=", InvalidRouteName(NameError::Empty)),
            (
                b"ROUTENAME=a\tb\nx",
                InvalidRouteName(NameError::ControlCharacter),
            ),
            (
                b"ROUTENAME=a\r\r\nx",
                InvalidRouteName(NameError::ControlCharacter),
            ),
            (b"ROUTENAME=\xff\nx", InvalidRouteName(NameError::NotUtf8)),
            (b"ROUTENAME=SYN\nx", InvalidRouteName(NameError::Reserved)),
            (
                b"ROUTENAME=abcde\nx",
                InvalidRouteName(NameError::TooLong { len: 5, max: 4 }),
            ),
            (
                b"ROUTENAME=abcde",
                InvalidRouteName(NameError::TooLong { len: 5, max: 4 }),
            ),
            (
                b"ROUTENAME=abcdefgh",
                InvalidRouteName(NameError::TooLong { len: 6, max: 4 }),
            ),
        ];
        for (msg, want) in cases {
            assert_eq!(
                decode(msg, 4).as_ref().err(),
                Some(want),
                "{:?}",
                String::from_utf8_lossy(msg)
            );
        }
        // At the limit exactly, with `\r\n`.
        assert_eq!(decode(b"ROUTENAME=abcd\r\nx", 4).unwrap().route, "abcd");
    }

    #[test]
    fn decode_scans_only_the_window() {
        // A huge message without a line break fails after max + 2 bytes.
        let mut msg = b"ROUTENAME=".to_vec();
        msg.resize(1 << 20, b'a');
        assert_eq!(
            decode(&msg, 8),
            Err(EnvelopeError::InvalidRouteName(NameError::TooLong {
                len: 10,
                max: 8
            }))
        );
    }

    #[test]
    fn payload_bytes_is_a_slice() {
        let msg = Bytes::from_static(b"ROUTENAME=r\npayload");
        let a = decode(&msg, 8).unwrap();
        let payload = a.payload_bytes(&msg);
        assert_eq!(&payload[..], b"payload");
        assert_eq!(payload.as_ptr(), msg[12..].as_ptr());
    }

    fn router(policy: crate::route::UnknownRoutePolicy, negotiated: &[&str]) -> Router {
        let config = Arc::new(ServerConfig {
            routes: RouteTable::new(["chat", "prices"]).unwrap(),
            unknown_routes: policy,
            ..ServerConfig::default()
        });
        let negotiated = Negotiated::for_tests(negotiated);
        Router::new(config, &negotiated)
    }

    #[test]
    fn router_resolves_table_and_negotiated_routes() {
        use crate::route::UnknownRoutePolicy::*;
        let r = router(Reject, &["chat"]);
        // The routes are the negotiated ones OR the table's: a table route
        // resolves even if the client did not announce it.
        assert_eq!(r.resolve(b"ROUTENAME=prices\n1").unwrap().route, "prices");
        assert_eq!(r.resolve(b"ROUTENAME=chat\n1").unwrap().payload, b"1");
        let err = r.resolve(b"ROUTENAME=video\nx").unwrap_err();
        assert_eq!(err, RouteError::UnknownRoute("video".into()));
        assert_eq!(
            err.error_reply(),
            r#"{"event":"SMError","route":"video","error":"unknown route"}"#
        );
        let err = r.resolve(b"hello").unwrap_err();
        assert_eq!(err, RouteError::Envelope(EnvelopeError::MissingHeader));
        assert_eq!(
            err.error_reply(),
            r#"{"event":"SMError","error":"message has no ROUTENAME= header line"}"#
        );
        // Accept policy: a negotiated route outside the table resolves.
        let r = router(Accept, &["chat", "video"]);
        assert!(r.contains("video") && r.contains("prices") && !r.contains("other"));
        assert_eq!(r.resolve(b"ROUTENAME=video\nx").unwrap().route, "video");
    }

    #[test]
    fn router_tags_replies() {
        let r = router(crate::route::UnknownRoutePolicy::Reject, &[]);
        let mut out = BytesMut::new();
        r.encode_reply("prices", b"42", &mut out).unwrap();
        assert_eq!(&out[..], b"ROUTENAME=prices\n42");
        let client_side = decode(&out, 128).unwrap();
        assert_eq!(
            (client_side.route, client_side.payload),
            ("prices", &b"42"[..])
        );
        let mut out = BytesMut::new();
        assert_eq!(
            r.encode_reply("video", b"42", &mut out),
            Err(RouteError::UnknownRoute("video".into()))
        );
        assert!(out.is_empty());
    }

    #[test]
    fn error_reply_parsing() {
        let reply = ErrorReply::parse(
            br#"{"event":"SMError","route":"video","error":"unknown route","extra":1}"#,
        )
        .unwrap();
        assert_eq!(reply.route.as_deref(), Some("video"));
        assert_eq!(reply.error, "unknown route");
        assert_eq!(
            ErrorReply::parse(br#"{"event":"SMError"}"#).unwrap(),
            ErrorReply {
                route: None,
                error: String::new()
            }
        );
        assert!(ErrorReply::parse(b"ROUTENAME=a\n{}").is_none());
        assert!(ErrorReply::parse(br#"{"event":"SMHandshake"}"#).is_none());
        assert!(ErrorReply::parse(b"\xff").is_none());
    }
}
