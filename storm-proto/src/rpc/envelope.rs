//! The RPC envelope: one request, response, error or cancel per transport
//! message, and the error payload ([`Fault`]).

use std::fmt;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::Utf8Bytes;

/// The envelope version this module reads and writes.
pub const VERSION: u8 = 1;
/// Bytes before the variable part of every envelope.
pub const HEADER_LEN: usize = 12;
/// Extra fixed bytes of a request: its timeout in milliseconds.
pub const REQUEST_EXTRA_LEN: usize = 4;
/// The payload is deflate-compressed ([`super::Deflate`]).
pub const FLAG_COMPRESSED: u8 = 0x01;
/// The request may safely run twice: a client may resend it on another
/// connection when the one it went out on dies.
pub const FLAG_IDEMPOTENT: u8 = 0x02;
/// Every flag this version knows; others are a protocol violation.
pub const KNOWN_FLAGS: u8 = FLAG_COMPRESSED | FLAG_IDEMPOTENT;
/// Longest method name (its length is one byte on the wire).
pub const MAX_METHOD_LEN: usize = 255;

/// What an envelope is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// A call: method, timeout, arguments.
    Request,
    /// The successful result of the request with the same id.
    Response,
    /// The failure of the request with the same id; the payload is a
    /// [`Fault`].
    Error,
    /// The client gave up on the request with the same id; no payload.
    Cancel,
}

impl Kind {
    /// The byte on the wire.
    #[must_use]
    pub fn to_byte(self) -> u8 {
        match self {
            Self::Request => 1,
            Self::Response => 2,
            Self::Error => 3,
            Self::Cancel => 4,
        }
    }

    /// The kind for a wire byte.
    #[must_use]
    pub fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Self::Request,
            2 => Self::Response,
            3 => Self::Error,
            4 => Self::Cancel,
            _ => return None,
        })
    }
}

/// One decoded (or to-be-encoded) envelope.
///
/// ```text
/// offset  size  field
///      0     1  version (1)
///      1     1  kind: 1 request, 2 response, 3 error, 4 cancel
///      2     1  flags: 0x01 compressed payload, 0x02 idempotent request
///      3     1  M = method length (requests only; 0 for other kinds)
///      4     8  request id, big-endian u64 (chosen by the client)
///     12     4  requests only: timeout in milliseconds, big-endian (0 = none)
///      …     M  requests only: method name, UTF-8
///      …   rest payload (for an error: a Fault; for a cancel: empty)
/// ```
///
/// The envelope is one whole transport message (a WebSocket binary message,
/// or one 4-byte length-prefixed TCP frame), so it has no length field of
/// its own: the payload is the rest of the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// What it is.
    pub kind: Kind,
    /// The request id it belongs to.
    pub id: u64,
    /// [`FLAG_COMPRESSED`], [`FLAG_IDEMPOTENT`].
    pub flags: u8,
    /// Requests: how long the client waits, in milliseconds (0 = no
    /// deadline). 0 for other kinds.
    pub timeout_ms: u32,
    /// Requests: the method name. Empty for other kinds.
    pub method: Utf8Bytes,
    /// The payload, compressed when `flags` has [`FLAG_COMPRESSED`].
    pub payload: Bytes,
}

impl Envelope {
    /// A request envelope.
    #[must_use]
    pub fn request(id: u64, method: Utf8Bytes, timeout_ms: u32, payload: Bytes) -> Self {
        Self {
            kind: Kind::Request,
            id,
            flags: 0,
            timeout_ms,
            method,
            payload,
        }
    }

    /// A response, error or cancel envelope (no method, no timeout).
    #[must_use]
    pub fn reply(kind: Kind, id: u64, payload: Bytes) -> Self {
        Self {
            kind,
            id,
            flags: 0,
            timeout_ms: 0,
            method: Utf8Bytes::default(),
            payload,
        }
    }

    /// The request's timeout, `None` for no deadline (or another kind).
    #[must_use]
    pub fn timeout(&self) -> Option<Duration> {
        (self.timeout_ms != 0).then(|| Duration::from_millis(u64::from(self.timeout_ms)))
    }

    /// Whether `flags` has [`FLAG_COMPRESSED`].
    #[must_use]
    pub fn is_compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }

    /// Whether `flags` has [`FLAG_IDEMPOTENT`].
    #[must_use]
    pub fn is_idempotent(&self) -> bool {
        self.flags & FLAG_IDEMPOTENT != 0
    }

    /// Bytes [`encode`](Self::encode) writes.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        let extra = match self.kind {
            Kind::Request => REQUEST_EXTRA_LEN + self.method.as_str().len(),
            _ => 0,
        };
        HEADER_LEN + extra + self.payload.len()
    }

    /// Appends the wire form to `dst` (reserving its exact length once).
    ///
    /// # Errors
    ///
    /// [`EncodeError`] (local misuse) for a method longer than
    /// [`MAX_METHOD_LEN`], a method or timeout on a non-request, a payload on
    /// a cancel, or unknown flags. Nothing is written then.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let method = self.method.as_str().as_bytes();
        if self.flags & !KNOWN_FLAGS != 0 {
            return Err(EncodeError::UnknownFlags(self.flags));
        }
        let method_len = match self.kind {
            Kind::Request => u8::try_from(method.len())
                .map_err(|_| EncodeError::MethodTooLong { len: method.len() })?,
            _ if !method.is_empty() || self.timeout_ms != 0 => {
                return Err(EncodeError::RequestFieldsOnReply);
            }
            Kind::Cancel if !self.payload.is_empty() => return Err(EncodeError::CancelPayload),
            _ => 0,
        };
        dst.reserve(self.encoded_len());
        dst.put_u8(VERSION);
        dst.put_u8(self.kind.to_byte());
        dst.put_u8(self.flags);
        dst.put_u8(method_len);
        dst.put_u64(self.id);
        if self.kind == Kind::Request {
            dst.put_u32(self.timeout_ms);
            dst.put_slice(method);
        }
        dst.put_slice(&self.payload);
        Ok(())
    }

    /// [`encode`](Self::encode) into a fresh buffer.
    ///
    /// # Errors
    ///
    /// As for `encode`.
    pub fn to_bytes(&self) -> Result<Bytes, EncodeError> {
        let mut dst = BytesMut::new();
        self.encode(&mut dst)?;
        Ok(dst.freeze())
    }

    /// Decodes one whole transport message, without copying: the method and
    /// payload are slices of `frame`. Total: any input gives an envelope or
    /// an error, never a panic.
    ///
    /// The payload is left as it is (still compressed if flagged);
    /// `max_payload` bounds its wire length here, and
    /// [`Deflate::decompress`](super::Deflate::decompress) bounds what it
    /// inflates to.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] (a remote violation): too short, another version, an
    /// unknown kind or flag, a method that is not UTF-8 or on a non-request,
    /// a payload over `max_payload`, a cancel with a payload, compressed
    /// cancel.
    pub fn decode(mut frame: Bytes, max_payload: usize) -> Result<Self, DecodeError> {
        let Some(header) = frame.get(..HEADER_LEN) else {
            return Err(DecodeError::TooShort { len: frame.len() });
        };
        let [version, kind, flags, method_len, ..] = *header else {
            return Err(DecodeError::TooShort { len: frame.len() });
        };
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        let kind = Kind::from_byte(kind).ok_or(DecodeError::UnknownKind(kind))?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(DecodeError::UnknownFlags(flags));
        }
        let method_len = usize::from(method_len);
        if kind != Kind::Request && method_len != 0 {
            return Err(DecodeError::MethodOnReply);
        }
        frame.advance(4);
        let id = frame.get_u64();
        let (timeout_ms, method) = if kind == Kind::Request {
            let need = REQUEST_EXTRA_LEN + method_len;
            if frame.len() < need {
                return Err(DecodeError::TooShort {
                    len: HEADER_LEN + frame.len(),
                });
            }
            let timeout_ms = frame.get_u32();
            let method = Utf8Bytes::try_from_bytes(frame.split_to(method_len))
                .map_err(|_| DecodeError::MethodNotUtf8)?;
            (timeout_ms, method)
        } else {
            (0, Utf8Bytes::default())
        };
        if frame.len() > max_payload {
            return Err(DecodeError::PayloadTooLarge {
                len: frame.len(),
                max: max_payload,
            });
        }
        if kind == Kind::Cancel && (!frame.is_empty() || flags != 0) {
            return Err(DecodeError::CancelPayload);
        }
        Ok(Self {
            kind,
            id,
            flags,
            timeout_ms,
            method,
            payload: frame,
        })
    }
}

/// An envelope that cannot be encoded (local misuse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The method name is longer than [`MAX_METHOD_LEN`] bytes.
    MethodTooLong {
        /// Its length.
        len: usize,
    },
    /// A method or timeout on a response, error or cancel.
    RequestFieldsOnReply,
    /// A cancel with a payload.
    CancelPayload,
    /// Flags this version does not know.
    UnknownFlags(u8),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MethodTooLong { len } => {
                write!(f, "method name of {len} bytes, most is {MAX_METHOD_LEN}")
            }
            Self::RequestFieldsOnReply => f.write_str("method or timeout on a non-request"),
            Self::CancelPayload => f.write_str("a cancel carries no payload"),
            Self::UnknownFlags(flags) => write!(f, "unknown envelope flags {flags:#04x}"),
        }
    }
}

impl std::error::Error for EncodeError {}

/// Bytes that are not a valid envelope (the peer's fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// Shorter than its header says.
    TooShort {
        /// The message length.
        len: usize,
    },
    /// Another envelope version.
    Version(u8),
    /// An unknown kind byte.
    UnknownKind(u8),
    /// Flags this version does not know.
    UnknownFlags(u8),
    /// A method length on a response, error or cancel.
    MethodOnReply,
    /// The method name is not UTF-8.
    MethodNotUtf8,
    /// A cancel with a payload or flags.
    CancelPayload,
    /// The payload (on the wire, or inflated) is over the limit.
    PayloadTooLarge {
        /// Its length (for inflation: at least this much).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A compressed payload that does not inflate.
    Corrupt,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort { len } => write!(f, "envelope of {len} bytes is truncated"),
            Self::Version(v) => write!(f, "envelope version {v}, expected {VERSION}"),
            Self::UnknownKind(k) => write!(f, "unknown envelope kind {k}"),
            Self::UnknownFlags(flags) => write!(f, "unknown envelope flags {flags:#04x}"),
            Self::MethodOnReply => f.write_str("method on a non-request envelope"),
            Self::MethodNotUtf8 => f.write_str("method name is not UTF-8"),
            Self::CancelPayload => f.write_str("cancel envelope with a payload or flags"),
            Self::PayloadTooLarge { len, max } => {
                write!(f, "payload of {len} bytes over the limit of {max}")
            }
            Self::Corrupt => f.write_str("compressed payload does not inflate"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why a request failed, as carried by an error envelope: a code and a
/// human-readable message.
///
/// ```text
/// offset  size  field
///      0     2  code, big-endian u16
///      2  rest  message, UTF-8 (invalid sequences are replaced on decode)
/// ```
///
/// Codes below 1000 are Storm's (the constants here); applications use
/// 1000 and above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// What kind of failure.
    pub code: u16,
    /// Details for people.
    pub message: String,
}

impl Fault {
    /// The request was malformed (its payload did not decode, for one).
    pub const BAD_REQUEST: u16 = 1;
    /// No handler for the method.
    pub const UNKNOWN_METHOD: u16 = 2;
    /// The handler failed (generic application error).
    pub const HANDLER: u16 = 3;
    /// The server gave up at the request's deadline.
    pub const TIMEOUT: u16 = 4;
    /// The request was cancelled.
    pub const CANCELLED: u16 = 5;
    /// Too many requests in flight on the connection.
    pub const OVERLOADED: u16 = 6;
    /// The server failed (a bug, a panic in a handler).
    pub const INTERNAL: u16 = 7;
    /// The request or response is over a size limit.
    pub const TOO_LARGE: u16 = 8;
    /// The same id is already in flight on this connection.
    pub const DUPLICATE_ID: u16 = 9;
    /// First code for applications.
    pub const APPLICATION: u16 = 1000;

    /// A fault.
    #[must_use]
    pub fn new(code: u16, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The wire form.
    #[must_use]
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(2 + self.message.len());
        out.put_u16(self.code);
        out.put_slice(self.message.as_bytes());
        out.freeze()
    }

    /// Reads the wire form; total: fewer than two bytes is code 0 with an
    /// empty message, and invalid UTF-8 is replaced.
    #[must_use]
    pub fn decode(payload: &[u8]) -> Self {
        match payload {
            [hi, lo, message @ ..] => Self {
                code: u16::from_be_bytes([*hi, *lo]),
                message: String::from_utf8_lossy(message).into_owned(),
            },
            _ => Self::new(0, ""),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fault {}: {}", self.code, self.message)
    }
}

impl std::error::Error for Fault {}
