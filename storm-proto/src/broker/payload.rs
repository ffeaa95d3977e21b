//! Payloads with a defined layout: registration, routing info, errors.

use std::fmt;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use super::{ChannelId, ClientId};

/// Length of an encoded [`Registration`]: 37 bytes.
pub const REGISTRATION_LEN: usize = 1 + 16 + 16 + 4;

/// Length of an encoded [`RoutingInfo`]: 32 bytes.
pub const ROUTING_INFO_LEN: usize = 32;

/// What a registered client does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    /// `1`: sends requests, receives responses.
    Consumer,
    /// `2`: receives requests, sends responses.
    Provider,
}

impl Role {
    /// The byte on the wire.
    #[must_use]
    pub const fn to_u8(self) -> u8 {
        match self {
            Self::Consumer => 1,
            Self::Provider => 2,
        }
    }

    /// The role for a wire byte.
    #[must_use]
    pub const fn from_u8(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Consumer),
            2 => Some(Self::Provider),
            _ => None,
        }
    }
}

/// The payload of the first `Start` frame on a connection.
///
/// Layout (37 bytes, exactly):
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 1 | role: 1 consumer, 2 provider |
/// | 1 | 16 | client id |
/// | 17 | 16 | channel id |
/// | 33 | 4 | default request timeout in milliseconds, big-endian; 0 = the server's default |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration {
    /// Consumer or provider.
    pub role: Role,
    /// The client's id (sent to providers in the [`RoutingInfo`]).
    pub client_id: ClientId,
    /// The channel to meet on.
    pub channel_id: ChannelId,
    /// Timeout of this consumer's requests at the server (whole
    /// milliseconds, at most `u32::MAX` ms); zero means the server's
    /// default. Ignored for providers.
    pub timeout: Duration,
}

impl Registration {
    /// The 37-byte payload. A timeout above `u32::MAX` milliseconds (about
    /// 49 days) is sent as `u32::MAX`.
    #[must_use]
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(REGISTRATION_LEN);
        out.put_u8(self.role.to_u8());
        out.put_slice(&self.client_id.to_bytes());
        out.put_slice(&self.channel_id.to_bytes());
        out.put_u32(u32::try_from(self.timeout.as_millis()).unwrap_or(u32::MAX));
        out.freeze()
    }

    /// Parses a registration payload.
    ///
    /// # Errors
    ///
    /// [`PayloadError::Length`] unless `payload` is exactly 37 bytes,
    /// [`PayloadError::UnknownRole`] for a role byte other than 1 or 2.
    pub fn decode(payload: &[u8]) -> Result<Self, PayloadError> {
        let Ok(bytes) = <&[u8; REGISTRATION_LEN]>::try_from(payload) else {
            return Err(PayloadError::Length {
                len: payload.len(),
                expected: REGISTRATION_LEN,
            });
        };
        let (role, rest) = bytes.split_at(1);
        let (client, rest) = rest.split_at(16);
        let (channel, timeout) = rest.split_at(16);
        let role_byte = role.first().copied().unwrap_or(0);
        let role = Role::from_u8(role_byte).ok_or(PayloadError::UnknownRole(role_byte))?;
        Ok(Self {
            role,
            client_id: ClientId::from_bytes(id16(client)),
            channel_id: ChannelId::from_bytes(id16(channel)),
            timeout: Duration::from_millis(u64::from(u32::from_be_bytes(id4(timeout)))),
        })
    }
}

/// Copies a 16-byte slice (callers split exactly 16 bytes).
fn id16(bytes: &[u8]) -> [u8; 16] {
    let mut out = [0; 16];
    out.iter_mut().zip(bytes).for_each(|(o, b)| *o = *b);
    out
}

/// Copies a 4-byte slice (callers split exactly 4 bytes).
fn id4(bytes: &[u8]) -> [u8; 4] {
    let mut out = [0; 4];
    out.iter_mut().zip(bytes).for_each(|(o, b)| *o = *b);
    out
}

/// Who a forwarded request comes from: 32 bytes the router puts in front
/// of the `Start` payload it sends to a provider.
///
/// Layout: bytes 0–15 the consumer's client id, bytes 16–31 the channel id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RoutingInfo {
    /// The consumer's client id.
    pub client_id: ClientId,
    /// The channel the request was sent on.
    pub channel_id: ChannelId,
}

impl RoutingInfo {
    /// The 32 bytes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; ROUTING_INFO_LEN] {
        let mut out = [0; ROUTING_INFO_LEN];
        let (client, channel) = out.split_at_mut(16);
        client.copy_from_slice(&self.client_id.to_bytes());
        channel.copy_from_slice(&self.channel_id.to_bytes());
        out
    }

    /// Splits the routing info off the front of `payload`; returns it and
    /// the rest (shared, not copied).
    ///
    /// # Errors
    ///
    /// [`PayloadError::Length`] if `payload` is shorter than 32 bytes.
    pub fn split(payload: &Bytes) -> Result<(Self, Bytes), PayloadError> {
        let (Some(client), Some(channel)) = (payload.get(..16), payload.get(16..32)) else {
            return Err(PayloadError::Length {
                len: payload.len(),
                expected: ROUTING_INFO_LEN,
            });
        };
        let info = Self {
            client_id: ClientId::from_bytes(id16(client)),
            channel_id: ChannelId::from_bytes(id16(channel)),
        };
        Ok((info, payload.slice(ROUTING_INFO_LEN..)))
    }
}

/// An error code in an [`ErrorPayload`]. Codes 1–99 are the broker's own;
/// providers are free to use 100 and above for application errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// `0`: no code was given (or the payload was too short to hold one).
    pub const UNSPECIFIED: Self = Self(0);
    /// `1`: no provider is registered on the channel.
    pub const NO_RESPONDERS: Self = Self(1);
    /// `2`: the provider handling the request disconnected.
    pub const PROVIDER_GONE: Self = Self(2);
    /// `3`: the request timed out at the server.
    pub const TIMEOUT: Self = Self(3);
    /// `4`: a queue on the way was full; the request was abandoned.
    pub const BUSY: Self = Self(4);
    /// `5`: the consumer cancelled the request (sent to providers).
    pub const CANCELLED: Self = Self(5);
    /// `6`: the peer broke the protocol; the server closes the connection.
    pub const PROTOCOL: Self = Self(6);
    /// `7`: the consumer has too many requests open.
    pub const TOO_MANY_REQUESTS: Self = Self(7);
    /// `8`: the request itself is malformed (a `Start` header too long,
    /// data after its `End`).
    pub const BAD_REQUEST: Self = Self(8);
    /// `9`: a frame names a request the broker has no record of (never
    /// started, or ended long ago); the frame was discarded.
    pub const UNKNOWN_REQUEST: Self = Self(9);
    /// `10`: a frame's payload was over the broker's frame limit
    /// (`--max-frame`); its payload was skipped and its request failed.
    pub const FRAME_TOO_LARGE: Self = Self(10);

    /// A short name for the broker's codes, `None` for others.
    #[must_use]
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "unspecified",
            1 => "no responders",
            2 => "provider gone",
            3 => "timeout",
            4 => "busy",
            5 => "cancelled",
            6 => "protocol violation",
            7 => "too many requests",
            8 => "bad request",
            9 => "unknown request",
            10 => "frame too large",
            _ => return None,
        })
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", self.0),
            None => write!(f, "error {}", self.0),
        }
    }
}

/// The payload of an `Error` frame: a 2-byte big-endian [`ErrorCode`], then
/// a human-readable message (UTF-8 by convention, not enforced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorPayload {
    /// The code.
    pub code: ErrorCode,
    /// The message.
    pub message: Bytes,
}

impl ErrorPayload {
    /// An error payload with this message (a `&'static str` is not
    /// copied).
    #[must_use]
    pub fn new(code: ErrorCode, message: impl Into<Bytes>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The encoded payload.
    #[must_use]
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(2 + self.message.len());
        out.put_u16(self.code.0);
        out.put_slice(&self.message);
        out.freeze()
    }

    /// Parses an error payload. Total: a payload shorter than two bytes
    /// gives [`ErrorCode::UNSPECIFIED`] and the bytes as the message, so a
    /// sloppy peer's error is still an error.
    #[must_use]
    pub fn decode(payload: &Bytes) -> Self {
        match payload.first_chunk::<2>() {
            Some(code) => Self {
                code: ErrorCode(u16::from_be_bytes(*code)),
                message: payload.slice(2..),
            },
            None => Self {
                code: ErrorCode::UNSPECIFIED,
                message: payload.clone(),
            },
        }
    }

    /// The message as text, if it is UTF-8.
    #[must_use]
    pub fn message_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.message).ok()
    }
}

impl fmt::Display for ErrorPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}",
            self.code,
            String::from_utf8_lossy(&self.message)
        )
    }
}

/// Why a payload with a defined layout is malformed (the peer's fault).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PayloadError {
    /// The payload has the wrong length.
    Length {
        /// Its length.
        len: usize,
        /// The expected (or minimum) length.
        expected: usize,
    },
    /// A registration's role byte is neither 1 nor 2.
    UnknownRole(u8),
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Length { len, expected } => {
                write!(f, "payload of {len} bytes, expected {expected}")
            }
            Self::UnknownRole(r) => write!(f, "unknown registration role {r}"),
        }
    }
}

impl std::error::Error for PayloadError {}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn registration_layout_and_round_trip() {
        let reg = Registration {
            role: Role::Provider,
            client_id: ClientId::from_bytes([1; 16]),
            channel_id: ChannelId::from_bytes([2; 16]),
            timeout: Duration::from_millis(258),
        };
        let bytes = reg.encode();
        assert_eq!(bytes.len(), REGISTRATION_LEN);
        assert_eq!(bytes[0], 2);
        assert_eq!(&bytes[1..17], &[1; 16]);
        assert_eq!(&bytes[17..33], &[2; 16]);
        assert_eq!(&bytes[33..], &[0, 0, 1, 2]);
        assert_eq!(Registration::decode(&bytes), Ok(reg));
    }

    #[test]
    fn registration_errors() {
        assert_eq!(
            Registration::decode(&[1; 36]),
            Err(PayloadError::Length {
                len: 36,
                expected: 37
            })
        );
        assert!(Registration::decode(&[1; 38]).is_err());
        let mut bytes = [0u8; 37];
        assert_eq!(
            Registration::decode(&bytes),
            Err(PayloadError::UnknownRole(0))
        );
        bytes[0] = 3;
        let err = Registration::decode(&bytes).expect_err("role 3");
        assert!(err.to_string().contains('3'));
        bytes[0] = 1;
        assert_eq!(
            Registration::decode(&bytes).map(|r| r.role),
            Ok(Role::Consumer)
        );
    }

    #[test]
    fn huge_timeout_saturates() {
        let reg = Registration {
            role: Role::Consumer,
            client_id: ClientId::default(),
            channel_id: ChannelId::default(),
            timeout: Duration::from_secs(u64::MAX),
        };
        let back = Registration::decode(&reg.encode()).expect("valid");
        assert_eq!(back.timeout, Duration::from_millis(u64::from(u32::MAX)));
    }

    #[test]
    fn routing_info_split() {
        let info = RoutingInfo {
            client_id: ClientId::from_bytes([3; 16]),
            channel_id: ChannelId::from_bytes([4; 16]),
        };
        let mut payload = info.to_bytes().to_vec();
        payload.extend_from_slice(b"hdr");
        let (back, rest) = RoutingInfo::split(&Bytes::from(payload)).expect("long enough");
        assert_eq!(back, info);
        assert_eq!(&rest[..], b"hdr");
        assert_eq!(
            RoutingInfo::split(&Bytes::from_static(&[0; 31])),
            Err(PayloadError::Length {
                len: 31,
                expected: 32
            })
        );
    }

    #[test]
    fn error_payloads() {
        let e = ErrorPayload::new(ErrorCode::NO_RESPONDERS, "no responders");
        let bytes = e.encode();
        assert_eq!(&bytes[..3], &[0, 1, b'n']);
        assert_eq!(ErrorPayload::decode(&bytes), e);
        assert_eq!(e.message_str(), Some("no responders"));
        assert!(e.to_string().contains("no responders (1)"));
        let short = ErrorPayload::decode(&Bytes::from_static(b"x"));
        assert_eq!(short.code, ErrorCode::UNSPECIFIED);
        assert_eq!(&short.message[..], b"x");
        assert_eq!(ErrorCode(500).to_string(), "error 500");
        assert_eq!(ErrorCode(500).name(), None);
        for code in 0..=10 {
            assert!(ErrorCode(code).name().is_some());
        }
        assert_eq!(ErrorCode(11).name(), None);
        let owned = ErrorPayload::new(ErrorCode::UNKNOWN_REQUEST, format!("id {}", 7));
        assert_eq!(owned.message_str(), Some("id 7"));
        let bad = ErrorPayload {
            code: ErrorCode::BUSY,
            message: Bytes::from_static(&[0xff]),
        };
        assert_eq!(bad.message_str(), None);
    }

    proptest! {
        #[test]
        fn arbitrary_registration_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(reg) = Registration::decode(&data) {
                prop_assert_eq!(&reg.encode()[..], &data[..]);
            }
            let bytes = Bytes::from(data);
            let e = ErrorPayload::decode(&bytes);
            if bytes.len() >= 2 {
                prop_assert_eq!(e.encode(), bytes.clone());
            }
            let _ = RoutingInfo::split(&bytes);
        }
    }
}
