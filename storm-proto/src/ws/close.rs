//! Close codes and close frames (RFC 6455 sections 5.5.1 and 7.4).

use std::fmt;

/// A close status code.
///
/// The associated constants name the codes RFC 6455 and the IANA registry
/// define. [`NO_STATUS`](Self::NO_STATUS), [`ABNORMAL`](Self::ABNORMAL) and
/// [`TLS_HANDSHAKE`](Self::TLS_HANDSHAKE) are never sent on the wire: Storm
/// reports them to say "the close frame had no code", "the transport ended
/// without a close frame" and "TLS failed".
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: the purpose of the connection is fulfilled.
    pub const NORMAL: Self = Self(1000);
    /// 1001: the endpoint is going away (server shutdown, page navigation).
    pub const GOING_AWAY: Self = Self(1001);
    /// 1002: the peer broke the protocol.
    pub const PROTOCOL_ERROR: Self = Self(1002);
    /// 1003: a data type the endpoint cannot accept.
    pub const UNSUPPORTED_DATA: Self = Self(1003);
    /// 1005: reported when a close frame carried no code; never sent.
    pub const NO_STATUS: Self = Self(1005);
    /// 1006: reported when the transport ended without a close frame; never sent.
    pub const ABNORMAL: Self = Self(1006);
    /// 1007: message data inconsistent with its type (invalid UTF-8 in text).
    pub const INVALID_PAYLOAD: Self = Self(1007);
    /// 1008: a message violates the endpoint's policy.
    pub const POLICY_VIOLATION: Self = Self(1008);
    /// 1009: a message or frame is larger than the endpoint accepts.
    pub const MESSAGE_TOO_BIG: Self = Self(1009);
    /// 1010: the client needed an extension the server did not negotiate.
    pub const MANDATORY_EXTENSION: Self = Self(1010);
    /// 1011: the server hit an unexpected condition.
    pub const INTERNAL_ERROR: Self = Self(1011);
    /// 1012: the service is restarting.
    pub const SERVICE_RESTART: Self = Self(1012);
    /// 1013: try again later.
    pub const TRY_AGAIN_LATER: Self = Self(1013);
    /// 1014: a gateway got an invalid response upstream.
    pub const BAD_GATEWAY: Self = Self(1014);
    /// 1015: reported when TLS failed; never sent.
    pub const TLS_HANDSHAKE: Self = Self(1015);

    /// Whether this code may appear in a close frame on the wire: the
    /// registered codes 1000–1003 and 1007–1014, and the application ranges
    /// 3000–4999. A received close frame with any other code is a protocol
    /// error.
    #[must_use]
    pub const fn is_sendable(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl fmt::Debug for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CloseCode({})", self.0)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> Self {
        Self(code)
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> Self {
        code.0
    }
}

/// Why a connection closed: the peer's close frame, or what Storm reports
/// when there was none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// The status code; [`CloseCode::NO_STATUS`] when the frame had none,
    /// [`CloseCode::ABNORMAL`] when the transport ended without a close frame.
    pub code: CloseCode,
    /// The UTF-8 reason (at most 123 bytes on the wire), often empty.
    pub reason: String,
}

impl CloseFrame {
    /// The longest reason that fits a close frame next to its code.
    pub const MAX_REASON_LEN: usize = 123;
}
