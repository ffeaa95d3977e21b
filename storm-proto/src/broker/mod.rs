//! The request/response broker: frames, streaming, routing.
//!
//! Consumers and providers connect to a broker server and meet on a
//! *channel id*. A consumer streams a request (any size) to the server, the
//! server forwards it to one provider registered on that channel
//! (round-robin), and the provider's response or error travels back to the
//! consumer. This module holds everything of that system that is not I/O:
//!
//! | piece | what it is |
//! |---|---|
//! | [`FrameCodec`], [`Frame`] | the 24-byte frame header and its payload, decoded tokio-util style |
//! | [`Registration`], [`RoutingInfo`], [`ErrorPayload`] | the payloads with a defined layout |
//! | [`Streamer`] | splits a payload of any size into `Start`, `Chunk`…, `End` frames |
//! | [`Assembler`] | reassembles streamed requests per request id, with limits and timeouts |
//! | [`Router`] | the server's brain: registry, round-robin routing, timeouts, per-connection output queues |
//! | [`Requests`] | the consumer's side: request ids, deadlines, cancellation, late responses |
//!
//! # The wire format
//!
//! Every frame is a 24-byte header followed by the payload:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | version, always [`VERSION`] (1) |
//! | 1 | 1 | type: 1 `Start`, 2 `Chunk`, 3 `End`, 4 `Response`, 5 `Error` ([`FrameType`]) |
//! | 2 | 2 | flags, big-endian ([`FLAG_MORE`] is the only one defined) |
//! | 4 | 16 | request id ([`RequestId`]) |
//! | 20 | 4 | payload length, big-endian, at most the configured max frame payload (default 1 MiB) |
//!
//! # The conversation
//!
//! 1. **Registration.** The first frame on a connection is a `Start` whose
//!    payload is a [`Registration`] (role, client id, channel id, default
//!    timeout). The server acknowledges it with an empty `Response` carrying
//!    the same request id, or answers an `Error` and closes.
//! 2. **Request.** A consumer sends `Start` (payload: an optional
//!    application header, usually empty), any number of `Chunk` frames
//!    (the data), then `End` (empty), all with one request id of its
//!    choosing. [`Streamer`] produces exactly that sequence.
//! 3. **Forwarding.** The server forwards the frames one by one, as they
//!    arrive, to a provider (no whole-request buffering: a 50 MiB request
//!    costs the server at most its bounded queues). It rewrites the request
//!    id to one of its own, so ids of different consumers never collide at
//!    a provider, and prefixes the `Start` payload with the 32-byte
//!    [`RoutingInfo`] (the consumer's client id and the channel id).
//! 4. **Response.** The provider answers with `Response` frames (all but
//!    the last carry [`FLAG_MORE`]) or one `Error` frame (payload:
//!    [`ErrorPayload`]). The server routes them back to the consumer under
//!    the consumer's request id.
//! 5. **Cancellation.** An `Error` frame from a consumer cancels its
//!    request; the server tells the provider with an `Error`
//!    ([`ErrorCode::CANCELLED`]).
//!
//! Every request the server accepted ends in exactly one final `Response`
//! or one `Error` to its consumer, unless the consumer cancelled it or went
//! away: a missing provider ([`ErrorCode::NO_RESPONDERS`]), a provider that
//! disconnects ([`ErrorCode::PROVIDER_GONE`]), a timeout
//! ([`ErrorCode::TIMEOUT`]) and a full queue ([`ErrorCode::BUSY`]) all fail
//! fast with an `Error` frame.
//!
//! Nothing is dropped silently: every frame the server refuses is answered
//! with an `Error` naming the reason, under the frame's request id (when
//! its header has one), before any close — a frame for a request the
//! server does not know ([`ErrorCode::UNKNOWN_REQUEST`]), request data
//! after its `End` ([`ErrorCode::BAD_REQUEST`]), a frame over the frame
//! limit ([`ErrorCode::FRAME_TOO_LARGE`]: its payload is skipped, its
//! request fails, the connection stays), a bad version or type or a frame
//! the peer's role does not send ([`ErrorCode::PROTOCOL`], then the
//! connection closes). The only frames discarded unanswered are those a
//! peer sent before it could know their request had ended (it has that
//! request's `Error` already), and those from a connection already closing
//! with an `Error` that says why; both are counted in [`RouterStats`].
//!
//! # Example
//!
//! ```
//! use bytes::{Bytes, BytesMut};
//! use storm_proto::broker::{FrameCodec, RequestId, Streamer};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let codec = FrameCodec::default();
//! let id = RequestId::from_bytes([7; 16]);
//! let mut wire = BytesMut::new();
//! for frame in Streamer::new(id, Bytes::new(), Bytes::from_static(b"hello"), 2)? {
//!     codec.encode(&frame, &mut wire)?;
//! }
//! let mut types = Vec::new();
//! while let Some(frame) = codec.decode(&mut wire)? {
//!     types.push(frame.frame_type);
//! }
//! assert_eq!(types.len(), 5); // Start, 3 Chunks ("he", "ll", "o"), End
//! # Ok(())
//! # }
//! ```

use std::fmt;

use rand::RngCore;

mod frame;
mod framer;
mod payload;
mod requests;
mod response;
mod router;
mod stream;

pub use frame::{
    EncodeError, FLAG_MORE, Frame, FrameCodec, FrameConfig, FrameError, FrameType, HEADER_LEN,
    VERSION,
};
pub use framer::BrokerFramer;
pub use payload::{
    ErrorCode, ErrorPayload, PayloadError, REGISTRATION_LEN, ROUTING_INFO_LEN, Registration, Role,
    RoutingInfo,
};
pub use requests::{RequestEvent, Requests, RequestsConfig, RequestsError, RequestsStats};
pub use response::ResponseStreamer;
pub use router::{
    CloseReason, ConnId, Router, RouterConfig, RouterError, RouterEvent, RouterStats,
};
pub use stream::{
    AssembleError, Assembler, AssemblerConfig, AssemblerStats, Message, Streamer, StreamerError,
};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name([u8; 16]);

        impl $name {
            /// The id with these 16 bytes.
            #[must_use]
            pub const fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(bytes)
            }

            /// The 16 bytes of the id.
            #[must_use]
            pub const fn to_bytes(self) -> [u8; 16] {
                self.0
            }

            /// A random id from the caller's RNG (a random UUID in spirit).
            pub fn random(rng: &mut (impl RngCore + ?Sized)) -> Self {
                let mut bytes = [0; 16];
                rng.fill_bytes(&mut bytes);
                Self(bytes)
            }
        }

        impl fmt::Display for $name {
            /// Lower-case hex, 32 digits.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for b in self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }
    };
}

id_type!(
    /// The 16-byte id of one request (any 16 bytes; a random UUID fits),
    /// chosen by the consumer; the router uses its own ids towards providers.
    RequestId
);
id_type!(
    /// The 16-byte id a client (consumer or provider) registers with.
    ClientId
);
id_type!(
    /// The 16-byte id of a channel: consumers and providers with the same
    /// channel id are routed to each other.
    ChannelId
);

/// `now + timeout`, saturating instead of panicking when a (huge,
/// configured or requested) timeout would overflow `Instant`: such a
/// deadline becomes "in about a century", which is never in practice.
pub(crate) fn deadline(
    now: std::time::Instant,
    timeout: std::time::Duration,
) -> std::time::Instant {
    const CENTURY: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(timeout)
        .or_else(|| now.checked_add(CENTURY))
        .unwrap_or(now)
}

/// A broker configuration rejected when its machine was built.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A limit that must be at least 1 (or a duration that must be non-zero)
    /// is zero.
    Zero {
        /// The field's name.
        field: &'static str,
    },
    /// A limit is above what the wire format or another limit allows.
    TooLarge {
        /// The field's name.
        field: &'static str,
        /// The configured value.
        value: usize,
        /// The largest accepted value.
        max: usize,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Zero { field } => write!(f, "broker config: {field} must not be zero"),
            Self::TooLarge { field, value, max } => {
                write!(f, "broker config: {field} = {value} is above {max}")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// Checks that a limit is non-zero.
fn non_zero(field: &'static str, value: usize) -> Result<(), ConfigError> {
    if value == 0 {
        Err(ConfigError::Zero { field })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn ids_display_as_hex_and_random_ids_differ() {
        let id = RequestId::from_bytes([0xab; 16]);
        assert_eq!(id.to_string(), "ab".repeat(16));
        assert!(format!("{id:?}").starts_with("RequestId("));
        assert_eq!(id.to_bytes(), [0xab; 16]);
        let mut rng = StdRng::seed_from_u64(1);
        assert_ne!(ClientId::random(&mut rng), ClientId::random(&mut rng));
        assert_eq!(ChannelId::default().to_bytes(), [0; 16]);
    }

    #[test]
    fn config_errors_display() {
        assert!(ConfigError::Zero { field: "x" }.to_string().contains('x'));
        let e = ConfigError::TooLarge {
            field: "y",
            value: 9,
            max: 3,
        };
        assert!(e.to_string().contains('9'));
    }
}
