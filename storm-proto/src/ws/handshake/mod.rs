//! The HTTP/1.1 upgrade handshake (RFC 6455 section 4), for both sides.
//!
//! Both sides are sans-IO state objects that take the bytes a socket
//! returned, in any chunking, and write what must be sent into a caller's
//! [`BytesMut`]. Each state only offers the legal next step:
//!
//! - client: [`ClientHandshake::start`] writes the `GET` upgrade request;
//!   [`ClientHandshake::handle_input`] takes response bytes until it returns
//!   [`ClientStep::Done`] with the validated [`Upgraded`] result (selected
//!   subprotocol, negotiated permessage-deflate, and any bytes that followed
//!   the header block — the first WebSocket frames).
//! - server: [`ServerHandshake::handle_input`] takes request bytes until it
//!   returns [`ServerStep::Request`] with a [`PendingUpgrade`], which only
//!   offers [`PendingUpgrade::accept`] (writes the `101`) or
//!   [`PendingUpgrade::reject`] (writes an HTTP error), or
//!   [`PendingUpgrade::decide`], which renders the application's
//!   [`Decision`] (accept with a subprotocol, headers and an [`Attached`]
//!   value; or reject with a status, headers and a bounded body), validated
//!   so that no header is injected and none of the handshake's own is
//!   overridden. The [`UpgradeRequest`] shows the method, path, query,
//!   every header (case-insensitive lookup), `Origin`, and the offered
//!   subprotocols and extensions. A malformed request is
//!   a [`HandshakeError`] carrying the status to answer with
//!   ([`HandshakeError::write_response`]).
//!
//! Header blocks are scanned once: the end-of-headers search resumes where
//! the previous input stopped and `httparse` runs once, on the complete
//! block, so a header that trickles in one byte at a time costs linear time.
//! Nothing beyond the configured header limit is ever buffered.
//!
//! ```
//! use std::sync::Arc;
//! use bytes::BytesMut;
//! use rand::{SeedableRng, rngs::StdRng};
//! use storm_proto::ws::handshake::*;
//!
//! let mut rng = StdRng::seed_from_u64(7);
//! let mut config = ClientConfig::new("example.com", "/chat");
//! config.subprotocols = vec!["chat.v2".into()];
//! let mut to_server = BytesMut::new();
//! let client = ClientHandshake::start(&config, &mut rng, &mut to_server)?;
//!
//! let server_config = Arc::new(ServerConfig {
//!     subprotocols: vec!["chat.v1".into(), "chat.v2".into()],
//!     ..ServerConfig::default()
//! });
//! let server = ServerHandshake::new(server_config)?;
//! let ServerStep::Request(pending) = server.handle_input(&to_server)? else {
//!     unreachable!("the whole request was fed")
//! };
//! assert_eq!(pending.request().path(), "/chat");
//! let mut to_client = BytesMut::new();
//! let accepted = pending.accept(&mut to_client);
//! assert_eq!(accepted.subprotocol.as_deref(), Some("chat.v2"));
//!
//! let ClientStep::Done(upgraded) = client.handle_input(&to_client)? else {
//!     unreachable!("the whole response was fed")
//! };
//! assert_eq!(upgraded.subprotocol.as_deref(), Some("chat.v2"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::{BufMut, Bytes, BytesMut};
use sha1::{Digest, Sha1};

use crate::tls_sniff;

mod client;
mod decision;
mod server;

pub use client::{ClientConfig, ClientHandshake, ClientStep, ResponseError, Upgraded};
pub use decision::{
    Attached, Decision, MAX_DECISION_HEADER_BYTES, MAX_DECISION_HEADERS, MAX_REJECT_BODY, Refused,
};
pub use server::{
    Accepted, HandshakeError, PendingUpgrade, ServerConfig, ServerHandshake, ServerStep,
    UpgradeRequest,
};

/// The GUID RFC 6455 appends to the client's key before hashing.
pub const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Largest `max_headers` a config may ask for (each slot costs ~32 bytes
/// while a header block is parsed).
pub const MAX_HEADERS_LIMIT: usize = 1024;

/// Largest header-block limit a config may ask for: 1 MiB.
pub const MAX_HEADER_BYTES_LIMIT: usize = 1 << 20;

/// The `Sec-WebSocket-Accept` value for a `Sec-WebSocket-Key` value:
/// base64(SHA-1(key ++ GUID)).
#[must_use]
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(WEBSOCKET_GUID.as_bytes());
    STANDARD.encode(sha.finalize())
}

/// The header fields of a parsed request or response, in arrival order.
///
/// Names keep the peer's spelling; lookups are ASCII case-insensitive.
/// Values are raw bytes (HTTP allows non-UTF-8 octets).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, Bytes)>,
}

impl Headers {
    fn from_httparse(list: &[httparse::Header<'_>]) -> Self {
        Self {
            entries: list
                .iter()
                .map(|h| (h.name.to_owned(), Bytes::copy_from_slice(h.value)))
                .collect(),
        }
    }

    /// The first value of the field `name`, if present.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }

    /// Every value of the field `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.entries
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }

    /// All fields as `(name, value)`, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_ref()))
    }

    /// Number of fields.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no fields.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The comma-separated list items of every `name` field, trimmed, empty
    /// items skipped.
    fn list_items<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.get_all(name)
            .flat_map(|v| v.split(|&b| b == b','))
            .map(|s: &'a [u8]| s.trim_ascii())
            .filter(|s| !s.is_empty())
    }

    /// Whether the `name` list contains `token`, ASCII case-insensitively.
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.list_items(name)
            .any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
    }
}

/// The value of a field that must appear exactly once, trimmed; `None` when
/// it is missing or repeated.
fn single<'a>(headers: &'a Headers, name: &'a str) -> Option<&'a [u8]> {
    let mut values = headers.get_all(name);
    match (values.next(), values.next()) {
        (Some(v), None) => Some(v.trim_ascii()),
        _ => None,
    }
}

/// A configuration or an application choice that cannot be used. These are
/// local mistakes; nothing has been written when one is returned.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The `Host` value is empty or contains bytes not allowed in a header.
    InvalidHost,
    /// The resource name does not start with `/` or contains spaces or
    /// control characters.
    InvalidResource,
    /// A subprotocol is not an HTTP token.
    InvalidSubprotocol(String),
    /// A subprotocol is listed twice.
    DuplicateSubprotocol(String),
    /// The server tried to select a subprotocol the client did not offer.
    SubprotocolNotOffered(String),
    /// A header name is not a token or its value contains control characters.
    InvalidHeader(String),
    /// A header the handshake writes itself (e.g. `Upgrade`,
    /// `Sec-WebSocket-*`, `Content-Length`).
    ReservedHeader(String),
    /// A [`DeflateConfig`](super::deflate::DeflateConfig) field out of range
    /// (window bits 9..=15, level 0..=9).
    InvalidDeflate(&'static str),
    /// A size limit is zero or above its documented maximum.
    InvalidLimit(&'static str),
    /// A rejection's status is outside 300..=599.
    InvalidStatus(u16),
    /// An upgrade decision mixes acceptance and rejection (a body on an
    /// acceptance, say).
    InvalidDecision(&'static str),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidHost => f.write_str("invalid Host value"),
            Self::InvalidResource => f.write_str("invalid resource name"),
            Self::InvalidSubprotocol(p) => write!(f, "subprotocol `{p}` is not a token"),
            Self::DuplicateSubprotocol(p) => write!(f, "subprotocol `{p}` listed twice"),
            Self::SubprotocolNotOffered(p) => {
                write!(f, "subprotocol `{p}` was not offered by the client")
            }
            Self::InvalidHeader(h) => write!(f, "invalid header `{h}`"),
            Self::ReservedHeader(h) => write!(f, "header `{h}` is written by the handshake"),
            Self::InvalidDeflate(field) => write!(f, "deflate config field `{field}` out of range"),
            Self::InvalidLimit(field) => write!(f, "limit `{field}` out of range"),
            Self::InvalidStatus(status) => {
                write!(
                    f,
                    "status {status} cannot refuse an upgrade (300..=599 can)"
                )
            }
            Self::InvalidDecision(why) => write!(f, "invalid upgrade decision: {why}"),
        }
    }
}

impl std::error::Error for ConfigError {}

fn check_limits(
    header_bytes: usize,
    header_bytes_name: &'static str,
    max_headers: usize,
) -> Result<(), ConfigError> {
    if !(4..=MAX_HEADER_BYTES_LIMIT).contains(&header_bytes) {
        return Err(ConfigError::InvalidLimit(header_bytes_name));
    }
    if !(1..=MAX_HEADERS_LIMIT).contains(&max_headers) {
        return Err(ConfigError::InvalidLimit("max_headers"));
    }
    Ok(())
}

fn check_deflate(config: Option<&super::deflate::DeflateConfig>) -> Result<(), ConfigError> {
    let Some(c) = config else { return Ok(()) };
    if !(9..=15).contains(&c.server_max_window_bits) {
        return Err(ConfigError::InvalidDeflate("server_max_window_bits"));
    }
    if !(9..=15).contains(&c.client_max_window_bits) {
        return Err(ConfigError::InvalidDeflate("client_max_window_bits"));
    }
    if c.compression_level > 9 {
        return Err(ConfigError::InvalidDeflate("compression_level"));
    }
    Ok(())
}

fn check_subprotocols(list: &[String]) -> Result<(), ConfigError> {
    for (i, p) in list.iter().enumerate() {
        if !super::extensions::is_token(p.as_bytes()) {
            return Err(ConfigError::InvalidSubprotocol(p.clone()));
        }
        if list.iter().take(i).any(|q| q == p) {
            return Err(ConfigError::DuplicateSubprotocol(p.clone()));
        }
    }
    Ok(())
}

/// A header value may hold visible ASCII, spaces, tabs and obs-text, but no
/// other control characters (CR and LF would inject headers).
fn is_header_value(v: &[u8]) -> bool {
    v.iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
}

fn check_header(name: &str, value: &str, reserved: &[&str]) -> Result<(), ConfigError> {
    if !super::extensions::is_token(name.as_bytes()) || !is_header_value(value.as_bytes()) {
        return Err(ConfigError::InvalidHeader(name.to_owned()));
    }
    if reserved.iter().any(|r| r.eq_ignore_ascii_case(name)) {
        return Err(ConfigError::ReservedHeader(name.to_owned()));
    }
    Ok(())
}

fn put_header(out: &mut BytesMut, name: &str, value: &[u8]) {
    out.put_slice(name.as_bytes());
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// Reason phrase for the statuses a handshake commonly answers with.
fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Writes a complete, self-delimited HTTP/1.1 response that closes the
/// connection: status line, `extra` headers, `Content-Length`,
/// `Connection: close`, body.
///
/// A `Content-Type` among `extra` replaces the default plain-text one.
fn write_closing_response<N: AsRef<str>, V: AsRef<str>>(
    out: &mut BytesMut,
    status: u16,
    extra: &[(N, V)],
    body: &[u8],
) {
    out.put_slice(format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status)).as_bytes());
    for (name, value) in extra {
        put_header(out, name.as_ref(), value.as_ref().as_bytes());
    }
    let typed = extra
        .iter()
        .any(|(name, _)| name.as_ref().eq_ignore_ascii_case("content-type"));
    if !body.is_empty() && !typed {
        put_header(out, "Content-Type", b"text/plain; charset=utf-8");
    }
    put_header(out, "Content-Length", body.len().to_string().as_bytes());
    put_header(out, "Connection", b"close");
    out.put_slice(b"\r\n");
    out.put_slice(body);
}

/// Why a header block cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeadError {
    /// It is longer than its limit.
    TooLarge,
    /// The stream opens with a TLS record, not HTTP: the peer speaks TLS
    /// (see [`tls_sniff`](crate::tls_sniff)).
    Tls,
}

/// Accumulates a header block up to a limit, remembering how far it has
/// scanned for the blank line that ends it.
///
/// The scan is a three-state machine over the bytes as they arrive (after a
/// line feed; after a line feed and a carriage return), so each byte is
/// looked at once no matter how the input is chunked. Both `\r\n\r\n` and
/// bare `\n\n` end the block (httparse accepts bare LF line endings).
#[derive(Debug)]
struct HeadBuffer {
    buf: BytesMut,
    limit: usize,
    /// 0: inside a line; 1: just after `\n`; 2: just after `\n\r`.
    state: u8,
}

impl HeadBuffer {
    fn new(limit: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            limit,
            state: 0,
        }
    }

    /// Takes more input. Returns the complete header block and the bytes
    /// that followed it once the blank line has been seen, `Ok(None)` while
    /// more is needed.
    ///
    /// Never buffers more than `limit` bytes: input past the limit without a
    /// blank line is an error. A stream whose first bytes are a TLS record
    /// header is an error as soon as they have arrived.
    fn push(&mut self, data: &[u8]) -> Result<Option<(Bytes, Bytes)>, HeadError> {
        // Decided once five bytes are in (an HTTP message's first byte
        // already decides).
        if self.buf.len() < tls_sniff::RECORD_HEADER_LEN
            && tls_sniff::sniff(self.buf.iter().chain(data)) == tls_sniff::Sniff::Tls
        {
            return Err(HeadError::Tls);
        }
        let room = self.limit.saturating_sub(self.buf.len());
        let (now, rest) = data.split_at(data.len().min(room));
        let mut end = None;
        for (i, &b) in now.iter().enumerate() {
            self.state = match (self.state, b) {
                (1 | 2, b'\n') => {
                    end = Some(i + 1);
                    break;
                }
                (_, b'\n') => 1,
                (1, b'\r') => 2,
                _ => 0,
            };
        }
        match end {
            Some(end) => {
                let (head_tail, after) = now.split_at(end);
                self.buf.extend_from_slice(head_tail);
                let head = self.buf.split().freeze();
                let mut leftover = BytesMut::with_capacity(after.len() + rest.len());
                leftover.extend_from_slice(after);
                leftover.extend_from_slice(rest);
                Ok(Some((head, leftover.freeze())))
            }
            None => {
                self.buf.extend_from_slice(now);
                if rest.is_empty() && self.buf.len() < self.limit {
                    Ok(None)
                } else {
                    Err(HeadError::TooLarge)
                }
            }
        }
    }

    fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// Maps an httparse error to a short description.
fn httparse_reason(err: httparse::Error) -> &'static str {
    match err {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid HTTP version",
    }
}

#[cfg(test)]
mod tests;
