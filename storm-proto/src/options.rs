//! Option structs shared by every adapter, so switching runtime changes a
//! crate name and nothing else. Pure data with documented defaults; the
//! adapters apply the socket options.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::backpressure::BackpressureConfig;
use crate::framing::{
    DelimiterConfig, DelimiterFramer, Framer, FramingConfigError, LengthPrefixConfig,
    LengthPrefixFramer, RawConfig, RawFramer,
};
use crate::link::LinkConfig;
use crate::reconnect::BackoffConfig;
use crate::ws;
use crate::ws::deflate::DeflateConfig;

/// How a plain TCP connection cuts its byte stream into messages.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum Framing {
    /// Whatever each read returns is a message ([`RawFramer`]).
    Raw(RawConfig),
    /// 4-byte big-endian length prefix ([`LengthPrefixFramer`]). The default.
    #[default]
    LengthPrefix,
    /// Length prefix with a chosen maximum.
    LengthPrefixWith(LengthPrefixConfig),
    /// Delimited messages, `\n` by default ([`DelimiterFramer`]).
    Delimiter(DelimiterConfig),
    /// Your own framer, built once per connection.
    Custom(Arc<dyn Fn() -> Box<dyn Framer + Send> + Send + Sync>),
}

impl Framing {
    /// A framer for one connection.
    ///
    /// # Errors
    ///
    /// The framer's configuration error.
    pub fn build(&self) -> Result<Box<dyn Framer + Send>, FramingConfigError> {
        Ok(match self {
            Self::Raw(config) => Box::new(RawFramer::new(config.clone())?),
            Self::LengthPrefix => Box::new(LengthPrefixFramer::default()),
            Self::LengthPrefixWith(config) => Box::new(LengthPrefixFramer::new(config.clone())?),
            Self::Delimiter(config) => Box::new(DelimiterFramer::new(config.clone())?),
            Self::Custom(make) => make(),
        })
    }
}

impl fmt::Debug for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Raw(c) => f.debug_tuple("Raw").field(c).finish(),
            Self::LengthPrefix => f.write_str("LengthPrefix"),
            Self::LengthPrefixWith(c) => f.debug_tuple("LengthPrefixWith").field(c).finish(),
            Self::Delimiter(c) => f.debug_tuple("Delimiter").field(c).finish(),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// Socket and session options every server has.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Where to listen, e.g. `127.0.0.1:9001` or `[::1]:9001`. Default
    /// `127.0.0.1:0` (a free port; ask the server for its address).
    pub addr: String,
    /// Listen backlog. Default 1024.
    pub backlog: u32,
    /// `TCP_NODELAY` on accepted sockets. Default `true`.
    pub nodelay: bool,
    /// TCP keep-alive on accepted sockets. Default `true`.
    pub keepalive: bool,
    /// `SO_RCVBUF` / `SO_SNDBUF`; `None` keeps the system's. Default `None`.
    pub recv_buffer_size: Option<u32>,
    /// See `recv_buffer_size`.
    pub send_buffer_size: Option<u32>,
    /// Most concurrent connections; more are closed at accept, before any
    /// handshake. 0 = unlimited. Default 0.
    pub max_connections: usize,
    /// Time a new connection has to finish its handshake (WebSocket upgrade,
    /// TLS). Default 10 s.
    pub handshake_timeout: Duration,
    /// Pending-send limits and the slow-consumer policy of each session.
    pub backpressure: BackpressureConfig,
    /// Heartbeat, close timeout, middleware.
    pub link: LinkConfig,
    /// Most bytes of queued messages one write gathers. Default 64 KiB.
    pub write_batch: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:0".to_owned(),
            backlog: 1024,
            nodelay: true,
            keepalive: true,
            recv_buffer_size: None,
            send_buffer_size: None,
            max_connections: 0,
            handshake_timeout: Duration::from_secs(10),
            backpressure: BackpressureConfig::default(),
            link: LinkConfig::default(),
            write_batch: 64 * 1024,
        }
    }
}

/// WebSocket specifics, for servers and clients.
#[derive(Debug, Clone, Default)]
pub struct WsOptions {
    /// Frame and message limits, auto-pong, fragmentation.
    pub config: ws::Config,
    /// permessage-deflate to accept (server) or offer (client). Default off.
    pub deflate: Option<DeflateConfig>,
    /// Subprotocols: supported in preference order (server) or offered
    /// (client). Default none.
    pub subprotocols: Vec<String>,
}

/// Options every client has.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Time to connect (TCP and handshakes). Default 10 s.
    pub connect_timeout: Duration,
    /// `TCP_NODELAY`. Default `true`.
    pub nodelay: bool,
    /// Reconnect after an unexpected disconnect, with this backoff; `None`
    /// turns reconnecting off. Default `None`.
    pub reconnect: Option<BackoffConfig>,
    /// Pending-send limits and slow-consumer policy.
    pub backpressure: BackpressureConfig,
    /// Heartbeat, close timeout, middleware.
    pub link: LinkConfig,
    /// Extra handshake headers (WebSocket), e.g. `Authorization`.
    pub headers: Vec<(String, String)>,
    /// Most bytes of queued messages one write gathers. Default 64 KiB.
    pub write_batch: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            nodelay: true,
            reconnect: None,
            backpressure: BackpressureConfig::default(),
            link: LinkConfig::default(),
            headers: Vec::new(),
            write_batch: 64 * 1024,
        }
    }
}
