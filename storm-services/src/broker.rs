//! The request broker: consumers and providers meet on channel ids.
//!
//! A [`BrokerServer`] accepts TCP connections speaking the core's broker
//! frames ([`storm_proto::broker`]: a 24-byte header, `Start`/`Chunk`/`End`
//! requests, `Response`/`Error` answers). A [`Provider`] registers on a
//! channel and answers requests with a handler, which gets each request
//! whole ([`Provider::serve`]) or reads it as it arrives and may answer as
//! it goes ([`Provider::serve_streamed`]: any size, a few frames of
//! memory); a [`Consumer`] registers on the same channel and sends requests
//! of any size, streamed in chunks with flow control (written piece by
//! piece with [`Consumer::stream`], so they need never be in memory whole),
//! and gets each response (or error) back with a timeout.
//!
//! Every decision is the core's: the server runs a
//! [`Router`](storm_proto::broker::Router) (registry, round-robin over a
//! channel's providers, per-request timeouts, bounded queues that answer
//! `BUSY`, fast failure when no provider is there or one leaves, error
//! frames ahead of data); the consumer runs
//! [`Requests`](storm_proto::broker::Requests) (ids, deadlines,
//! cancellation) and a [`Streamer`](storm_proto::broker::Streamer); the
//! provider an [`Assembler`](storm_proto::broker::Assembler). This module
//! only moves frames between sockets and those machines, and runs their
//! timers.
//!
//! Nothing is dropped silently: every request ends in a response or a
//! [`BrokerError`] — [`BrokerError::Failed`] with the broker's code
//! ([`ErrorCode::NO_RESPONDERS`], [`ErrorCode::PROVIDER_GONE`],
//! [`ErrorCode::TIMEOUT`], [`ErrorCode::BUSY`], …) or the provider's own,
//! [`BrokerError::Timeout`] when the caller's deadline passes, or
//! [`BrokerError::Disconnected`].
//!
//! # Runtimes
//!
//! The server runs on tokio ([`BrokerServer`], the default runtime
//! parameter), on smol (`BrokerServer<storm_smol::Smol>`: one generic
//! path over [`storm_async::Runtime`]) and on plain threads
//! ([`blocking::BrokerServer`], storm-std). Every runtime drives the same
//! shared state: the router, the writer steps and the flow-control rule
//! are written once. TLS is an option of the server
//! ([`BrokerOptions::server`]`.tls`) and of the clients
//! ([`ConsumerOptions::client`]`.tls`, [`ProviderOptions::client`]`.tls`).
//!
//! [`Consumer`] and [`Provider`], the client library, run on tokio
//! ([`Consumer::connect`], [`Provider::connect`]), on smol
//! ([`Consumer::connect_on`]`::<storm_smol::Smol>`, one generic path over
//! [`storm_async::Runtime`]) and on plain threads
//! ([`blocking::Consumer`], [`blocking::Provider`]: the same consumer and
//! provider over storm-std's client, with blocking calls and handlers).
//!
//! # Flow control
//!
//! A consumer sends a request frame by frame and waits whenever its
//! connection is backpressured, so a 50 MiB request never sits in memory
//! twice. The server forwards frames as they arrive; before it reads the
//! next frame of a request or response already under way it waits until
//! the one connection that frame goes to
//! ([`Router::next_hop`](storm_proto::broker::Router::next_hop): the
//! request's provider for request data, its consumer for response data)
//! has drained its queue to half, so a stream slows down to the pace of
//! its reader instead of overflowing it.
//!
//! The wait is per request: a slow receiver slows only the streams that go
//! to it, never another request's stream on the same channel. It is
//! bounded by [`BrokerOptions::flow_wait`] per frame; after that the frame
//! goes to the router, which fails its request with `BUSY` if there is
//! still no room. A connection reads nothing while one of its frames
//! waits, so streams that share one sending connection wait together. New
//! requests are not held back: when every provider's queue is full, the
//! router answers them with `BUSY` at once.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//!
//! use bytes::Bytes;
//! use storm_services::broker::{
//!     BrokerOptions, BrokerServer, Consumer, ConsumerOptions, Provider, ProviderOptions,
//! };
//! use storm_proto::broker::ChannelId;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = BrokerServer::bind(BrokerOptions::default()).await?; // 127.0.0.1, a free port
//! let addr = server.local_addr().to_string();
//! tokio::spawn(server.serve());
//!
//! let channel = ChannelId::from_bytes([7; 16]);
//! let provider = Provider::connect(&addr, channel, ProviderOptions::default()).await?;
//! tokio::spawn(provider.serve(|request| async move {
//!     Ok(Bytes::from(request.payload.to_ascii_uppercase()))
//! }));
//!
//! let consumer = Consumer::connect(&addr, channel, ConsumerOptions::default()).await?;
//! let reply = consumer
//!     .request(Bytes::from_static(b"hello"), Duration::from_secs(5))
//!     .await?;
//! assert_eq!(&reply[..], b"HELLO");
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::io;

use storm_proto::broker::{ConfigError, ErrorCode, ErrorPayload};
use storm_tokio::ClientError;

mod client;
mod consumer;
mod provider;
mod server;

pub use consumer::{Consumer, ConsumerOptions, RequestStream};
pub use provider::{
    BODY_FRAMES, Provider, ProviderHandle, ProviderOptions, Request, RequestBody, Responder,
    StreamedRequest,
};
pub use server::BrokerOptions;
pub use server::on_async::{BrokerHandle, BrokerServer};

/// The broker on plain threads (storm-std). The server: the same shared
/// broker state as the async server, a reader thread per connection
/// (storm-std's), a writer thread per connection and one timer thread. The
/// clients, [`Consumer`](blocking::Consumer) and
/// [`Provider`](blocking::Provider): the same consumer and provider as on
/// tokio and smol over storm-std's client, every call blocking its caller,
/// a provider's handlers blocking closures on threads of their own, told
/// of a cancellation ([`Request::is_cancelled`](blocking::Request::is_cancelled)).
pub mod blocking {
    pub use super::consumer::on_std::{Consumer, RequestStream};
    pub use super::provider::on_std::{Provider, Request, RequestBody, Responder, StreamedRequest};
    pub use super::server::on_std::{BrokerHandle, BrokerServer};
}

/// Why a broker operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum BrokerError {
    /// Remote: the broker or the provider answered with an `Error` frame
    /// (see [`ErrorCode`] for the broker's codes; providers use 100 and
    /// above).
    Failed {
        /// The code.
        code: ErrorCode,
        /// The message (lossy UTF-8).
        message: String,
    },
    /// The caller's deadline passed; the request was cancelled at the
    /// broker.
    Timeout,
    /// The connection to the broker is gone (or was never registered).
    Disconnected(String),
    /// Remote: the broker broke the protocol; the connection was closed.
    Protocol(String),
    /// Remote: the response grew beyond the consumer's `max_response`; the
    /// request was cancelled.
    ResponseTooLarge {
        /// The configured limit.
        max: usize,
    },
    /// Local: the consumer has `max_pending` requests open.
    TooManyPending,
    /// Connecting failed.
    Connect(ClientError),
    /// Local: an option is invalid.
    Config(String),
    /// Binding or serving failed.
    Io(io::Error),
}

impl BrokerError {
    /// The error code, for [`BrokerError::Failed`].
    #[must_use]
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Failed { code, .. } => Some(*code),
            _ => None,
        }
    }

    fn failed(error: &ErrorPayload) -> Self {
        Self::Failed {
            code: error.code,
            message: String::from_utf8_lossy(&error.message).into_owned(),
        }
    }
}

impl fmt::Display for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Failed { code, message } => write!(f, "request failed: {code}: {message}"),
            Self::Timeout => f.write_str("request timed out"),
            Self::Disconnected(why) => write!(f, "disconnected from the broker: {why}"),
            Self::Protocol(why) => write!(f, "broker protocol violation: {why}"),
            Self::ResponseTooLarge { max } => {
                write!(f, "response larger than the limit of {max} bytes")
            }
            Self::TooManyPending => f.write_str("too many requests pending"),
            Self::Connect(e) => write!(f, "cannot connect to the broker: {e}"),
            Self::Config(e) => write!(f, "invalid broker option: {e}"),
            Self::Io(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for BrokerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect(e) => Some(e),
            Self::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ConfigError> for BrokerError {
    fn from(e: ConfigError) -> Self {
        Self::Config(e.to_string())
    }
}

impl From<io::Error> for BrokerError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}
