//! A WebSocket as a `Stream` and `Sink` of messages over any tokio
//! `AsyncRead + AsyncWrite`: [`WebSocketStream`]. The logic is
//! storm-async's [`websocket`](storm_async::websocket) module (driving,
//! cancel safety, splitting and limits are documented there); this module
//! names it for tokio's I/O traits.
//!
//! ```no_run
//! use futures_util::{SinkExt, StreamExt};
//! use storm_tokio::websocket::{self, StreamConfig};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9001").await?;
//! let (tcp, _) = listener.accept().await?;
//! let mut ws = websocket::accept(tcp, &StreamConfig::new()).await?;
//! while let Some(message) = ws.next().await {
//!     ws.send(message?).await?;
//! }
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::io;

use tokio::io::{AsyncRead, AsyncWrite};

pub use storm_async::websocket::{
    ClientError, StreamConfig, WebSocketReader, WebSocketWriter, WsStreamError,
};

use crate::runtime::Io;
use crate::{Decision, Tokio, UpgradeInfo};

/// A WebSocket over the tokio stream `S` (a `TcpStream`, a TLS stream, an
/// upgraded connection, a `DuplexStream`).
pub type WebSocketStream<S> = storm_async::WebSocketStream<Tokio, Io<S>>;

/// What [`connect`] returns: a WebSocket over plain TCP or TLS.
pub type ClientWebSocketStream =
    storm_async::WebSocketStream<Tokio, storm_async::websocket::ClientStream<Tokio>>;

/// The server side of the handshake over `io`; see
/// [`storm_async::WebSocketStream::accept`].
///
/// # Errors
///
/// The refusal's reason (invalid input), an I/O error, or a timeout.
pub async fn accept<S>(io: S, config: &StreamConfig) -> io::Result<WebSocketStream<S>>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    WebSocketStream::accept(Io(io), config).await
}

/// [`accept`] with `hook` deciding on the request (as tokio-tungstenite's
/// `accept_hdr_async`): the hook an upgrade hook of the shape
/// `WsServer::on_upgrade` takes; the chosen subprotocol and attached value
/// are the stream's `subprotocol()` and `attached()`. See
/// [`storm_async::WebSocketStream::accept_hdr`].
///
/// # Errors
///
/// As [`accept`]; permission denied when the hook rejected (its response
/// was sent).
pub async fn accept_hdr<S, F, Fut>(
    io: S,
    config: &StreamConfig,
    hook: F,
) -> io::Result<WebSocketStream<S>>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    F: Fn(UpgradeInfo) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Decision> + Send + 'static,
{
    WebSocketStream::accept_hdr(Io(io), config, hook).await
}

/// The client side of the handshake for `url` over the connected `io`;
/// see [`storm_async::WebSocketStream::client_async`].
///
/// # Errors
///
/// A bad URL, a refusal, an I/O error or a timeout.
pub async fn client_async<S>(
    url: &str,
    io: S,
    config: &StreamConfig,
) -> Result<WebSocketStream<S>, ClientError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    WebSocketStream::client_async(url, Io(io), config).await
}

/// Connects to a `ws://` or `wss://` URL and runs the client handshake;
/// see [`storm_async::WebSocketStream::connect`].
///
/// # Errors
///
/// A bad URL, a failed connect, TLS handshake or refusal, a timeout.
pub async fn connect(
    url: &str,
    config: &StreamConfig,
) -> Result<ClientWebSocketStream, ClientError> {
    ClientWebSocketStream::connect(url, config).await
}
