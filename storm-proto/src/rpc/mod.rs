//! Request/response RPC over any message transport: the envelope, payload
//! compression, and the two sans-IO machines that correlate requests and
//! replies.
//!
//! - [`Envelope`]: one request, response, error or cancel per transport
//!   message (a WebSocket binary message, or one 4-byte length-prefixed TCP
//!   frame); its layout is documented on the type. [`Fault`] is the error
//!   payload.
//! - [`Deflate`]: optional per-message payload compression above a size
//!   threshold (raw deflate, each message on its own).
//! - [`Calls`]: the client connection's side: ids, deadlines
//!   ([`poll_timeout`](Calls::poll_timeout) /
//!   [`handle_timeout`](Calls::handle_timeout)), cancellation (a cancel
//!   envelope tells the server), and failing every call in flight when the
//!   connection dies.
//! - [`Serving`]: the server connection's side: requests in, cancels,
//!   replies out, with a limit on requests in flight.
//!
//! Which endpoint a call goes to (round-robin, failover, backoff) is
//! [`crate::reconnect::EndpointSet`]'s job; the adapters' RPC clients put the
//! two together.

mod calls;
mod deflate;
mod envelope;
mod serving;

pub use calls::{CallEvent, Calls, CallsConfig, CallsConfigError, CallsStats, StartError};
pub use deflate::{CompressionConfig, CompressionConfigError, Deflate};
pub use envelope::{
    DecodeError, EncodeError, Envelope, FLAG_COMPRESSED, FLAG_IDEMPOTENT, Fault, HEADER_LEN,
    KNOWN_FLAGS, Kind, MAX_METHOD_LEN, REQUEST_EXTRA_LEN, VERSION,
};
pub use serving::{Incoming, IncomingRequest, Serving, ServingStats};

#[cfg(test)]
mod tests;
