//! Request/response RPC: [`RpcClient`] (on tokio, or smol with
//! [`RpcClientBuilder::runtime`], or plain threads with
//! [`RpcClientBuilder::build_blocking`]) over several endpoints and a server to
//! answer it, over WebSocket or 4-byte length-prefixed TCP,
//! with or without TLS. The server runs on tokio ([`RpcServer::bind`]), on
//! smol (`RpcServer::<storm_smol::Smol>::bind_on`) or on plain threads
//! ([`blocking::RpcServer`]); every flavour makes the same decisions in one
//! place (decoding, refusals, cancels, deadlines, compression) and differs
//! only in how it runs a handler.
//!
//! The protocol logic is the core's [`storm_proto::rpc`]: the envelope (its
//! wire layout is documented on [`Envelope`](storm_proto::rpc::Envelope)),
//! per-message compression, and the [`Calls`](storm_proto::rpc::Calls) /
//! [`Serving`](storm_proto::rpc::Serving) machines; endpoint choice and
//! backoff are the core's [`EndpointSet`](storm_proto::reconnect::EndpointSet).
//! This module owns the connections, the timers and the tasks.
//!
//! - **Endpoints**: `ws://host:port/path` (one binary WebSocket message per
//!   envelope) or `tcp://host:port` / `host:port` (one 4-byte big-endian
//!   length-prefixed frame per envelope); `wss://` and `tls://host:port`
//!   are the same over TLS, verified with [`RpcClientBuilder::tls`] (the
//!   public web roots by default). Connections are opened on first use and
//!   kept.
//! - **Strategy**: [`Strategy::RoundRobin`] spreads calls over every usable
//!   endpoint; [`Strategy::Failover`] sends everything to the first usable
//!   one in list order. An endpoint whose connection fails or drops is
//!   skipped for its [`BackoffConfig`](storm_proto::reconnect::BackoffConfig)
//!   delay ([`RpcClientConfig::DEFAULT_BACKOFF`]: at most 1 s), then tried
//!   again. While every endpoint is down a call waits for the first retry
//!   time, up to its own deadline, and only then fails with
//!   [`RpcError::NoEndpoint`], which names the endpoints and the last
//!   connection error: an outage costs the calls whose timeout ran out
//!   during it, never a burst of instant failures.
//! - **Timeouts and cancellation**: every call has a deadline (the server is
//!   told it, and stops working when it passes). Dropping a call's future,
//!   or cancelling its [`CancelToken`], ends it and sends the server a
//!   cancel envelope, which aborts the handler's task.
//! - **A connection that dies** fails its calls in flight at once with
//!   [`RpcError::ConnectionLost`], not a timeout. A call marked
//!   [`idempotent`](CallOptions::idempotent) is sent again on another
//!   connection instead (at most [`RpcClientConfig::max_sends`] times in
//!   all), since running it twice is harmless; others are not, because the
//!   server may have run them.
//! - **Serialization** is a [`Codec`] (serde-based; [`Json`] by default).
//! - **Compression**: payloads at or above a threshold are deflated when
//!   that makes them smaller ([`RpcClientConfig::compression`],
//!   [`RpcServerConfig::compression`]); either side inflates whatever it
//!   gets, bounded by its payload limit.
//! - **Byte hooks**: [`RpcClientBuilder::on_bytes_sent`] and
//!   [`on_bytes_received`](RpcClientBuilder::on_bytes_received) see every
//!   envelope as it goes on or comes off the transport (after compression).
//!
//! ```no_run
//! use std::time::Duration;
//! use storm_services::rpc::{Request, RpcClient, RpcServer, RpcServerConfig, Json, Codec};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = RpcServer::bind(RpcServerConfig::ws("127.0.0.1:0"), |request: Request| async move {
//!     let (a, b): (i64, i64) = request.params(&Json)?;
//!     Json.reply(&(a + b))
//! })
//! .await?;
//! let client = RpcClient::builder([server.endpoint()])?.build()?;
//! let sum: i64 = client.call("add", &(2, 3), Duration::from_secs(1)).await?;
//! assert_eq!(sum, 5);
//! # Ok(()) }
//! ```

mod client;
mod codec;
mod server;

pub use client::{
    BytesHook, CallOptions, CancelToken, RpcClient, RpcClientBuilder, RpcClientConfig, Strategy,
};
pub use codec::{Codec, CodecError, Json};
pub use server::{Request, RpcServer, RpcServerConfig, RpcServerStats};

/// RPC on plain threads (storm-std): the server, with blocking handlers,
/// and the client ([`RpcClientBuilder::build_blocking`]), with blocking
/// calls.
pub mod blocking {
    pub use super::client::on_std::RpcClient;
    pub use super::server::on_std::RpcServer;
}
pub use storm_proto::rpc::{CompressionConfig, Fault};

use std::fmt;

use storm_proto::rpc::StartError;

/// One place an [`RpcClient`] can send calls.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Endpoint {
    /// A WebSocket URL (`ws://` or `wss://`).
    Ws(String),
    /// `host:port`, 4-byte length-prefixed TCP.
    Tcp(String),
    /// `host:port`, 4-byte length-prefixed TCP over TLS (`tls://`).
    Tls(String),
}

impl Endpoint {
    /// Reads `ws://…`, `wss://…`, `tcp://host:port`, `tls://host:port` or
    /// `host:port` (plain TCP).
    ///
    /// # Errors
    ///
    /// [`RpcError::Config`] for anything else.
    pub fn parse(text: &str) -> Result<Self, RpcError> {
        let text = text.trim();
        if text.starts_with("ws://") || text.starts_with("wss://") {
            return Ok(Self::Ws(text.to_owned()));
        }
        let (addr, tls) = match text.strip_prefix("tls://") {
            Some(addr) => (addr, true),
            None => (text.strip_prefix("tcp://").unwrap_or(text), false),
        };
        match addr.rsplit_once(':') {
            Some((host, port))
                if !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok() =>
            {
                let addr = addr.to_owned();
                Ok(if tls {
                    Self::Tls(addr)
                } else {
                    Self::Tcp(addr)
                })
            }
            _ => Err(RpcError::Config(format!(
                "endpoint {text:?} is neither a ws:// URL nor tcp:// or tls:// host:port"
            ))),
        }
    }

    /// Whether calls to it go over TLS (`wss://` or `tls://`).
    #[must_use]
    pub fn is_tls(&self) -> bool {
        match self {
            Self::Ws(url) => url.starts_with("wss://"),
            Self::Tcp(_) => false,
            Self::Tls(_) => true,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ws(url) => f.write_str(url),
            Self::Tcp(addr) => write!(f, "tcp://{addr}"),
            Self::Tls(addr) => write!(f, "tls://{addr}"),
        }
    }
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RpcError {
    /// The deadline passed: the client's timer fired (and the server was
    /// sent a cancel), or the server answered [`Fault::TIMEOUT`].
    Timeout,
    /// The call was cancelled through its [`CancelToken`].
    Cancelled,
    /// The connection the call was in flight on died; the server may or
    /// may not have run it.
    ConnectionLost {
        /// Where it was sent.
        endpoint: Endpoint,
    },
    /// No endpoint could be reached before the deadline: the call waited
    /// its whole timeout for one (or every endpoint ran out of backoff
    /// attempts).
    NoEndpoint {
        /// Every endpoint of the client, in list order: none was usable.
        endpoints: Vec<Endpoint>,
        /// The last failed connection attempt, naming its endpoint, if one
        /// was made.
        last_error: Option<String>,
    },
    /// The server answered with an error.
    Remote(Fault),
    /// The request could not be serialized.
    Encode(CodecError),
    /// The response could not be deserialized.
    Decode(CodecError),
    /// The call could not be started: too many pending, payload too large,
    /// method name too long.
    Start(StartError),
    /// Invalid configuration or endpoint.
    Config(String),
    /// The client was closed.
    Closed,
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout => f.write_str("call timed out"),
            Self::Cancelled => f.write_str("call cancelled"),
            Self::ConnectionLost { endpoint } => {
                write!(f, "connection to {endpoint} lost with the call in flight")
            }
            Self::NoEndpoint {
                endpoints,
                last_error,
            } => {
                f.write_str("no endpoint is reachable (tried ")?;
                for (i, endpoint) in endpoints.iter().enumerate() {
                    let comma = if i == 0 { "" } else { ", " };
                    write!(f, "{comma}{endpoint}")?;
                }
                if let Some(e) = last_error {
                    write!(f, "; last error: {e}")?;
                }
                f.write_str(")")
            }
            Self::Remote(fault) => write!(f, "server error: {fault}"),
            Self::Encode(e) => write!(f, "cannot encode the request: {e}"),
            Self::Decode(e) => write!(f, "cannot decode the response: {e}"),
            Self::Start(e) => write!(f, "cannot start the call: {e}"),
            Self::Config(e) => write!(f, "invalid configuration: {e}"),
            Self::Closed => f.write_str("the client is closed"),
        }
    }
}

impl std::error::Error for RpcError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Remote(fault) => Some(fault),
            Self::Encode(e) | Self::Decode(e) => Some(e),
            Self::Start(e) => Some(e),
            _ => None,
        }
    }
}

/// Bytes allowed above `max_payload` in the transport's message limit: the
/// envelope header (16 bytes) and a method name (up to 255).
const ENVELOPE_SLACK: usize = 512;

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::{Endpoint, RpcError};

    #[test]
    fn no_endpoint_names_every_endpoint_and_the_last_error() {
        let endpoints = vec![
            Endpoint::Tcp("a:1".into()),
            Endpoint::Ws("ws://b:2/".into()),
        ];
        let none = RpcError::NoEndpoint {
            endpoints: endpoints.clone(),
            last_error: None,
        };
        assert_eq!(
            none.to_string(),
            "no endpoint is reachable (tried tcp://a:1, ws://b:2/)"
        );
        let refused = RpcError::NoEndpoint {
            endpoints,
            last_error: Some("tcp://a:1: refused".into()),
        };
        assert_eq!(
            refused.to_string(),
            "no endpoint is reachable (tried tcp://a:1, ws://b:2/; last error: tcp://a:1: refused)"
        );
    }

    #[test]
    fn endpoints_parse_with_their_transport_and_tls() {
        let parse = |text| Endpoint::parse(text).map(|e| (e.to_string(), e.is_tls()));
        assert_eq!(parse("ws://h:1/"), Ok(("ws://h:1/".into(), false)));
        assert_eq!(parse("wss://h:1/x"), Ok(("wss://h:1/x".into(), true)));
        assert_eq!(parse("tcp://h:1"), Ok(("tcp://h:1".into(), false)));
        assert_eq!(parse("h:1"), Ok(("tcp://h:1".into(), false)));
        assert_eq!(parse("tls://h:1"), Ok(("tls://h:1".into(), true)));
        for bad in ["tls://h", "tls://:1", "h:x", "http://h:1"] {
            assert!(
                matches!(Endpoint::parse(bad), Err(RpcError::Config(_))),
                "{bad}"
            );
        }
    }
}
