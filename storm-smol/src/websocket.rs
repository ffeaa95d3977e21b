//! A WebSocket as a `Stream` and `Sink` of messages over any futures-io
//! `AsyncRead + AsyncWrite` (smol's I/O traits): [`WebSocketStream`]. The
//! logic is storm-async's [`websocket`](storm_async::websocket) module
//! (driving, cancel safety, splitting and limits are documented there);
//! this module names it for smol.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use smol::io::{AsyncRead, AsyncWrite};

use storm_async::runtime::{PollRead, PollWrite};
pub use storm_async::websocket::{
    ClientError, StreamConfig, WebSocketReader, WebSocketWriter, WsStreamError,
};

use crate::{Decision, Smol, UpgradeInfo};

/// Any futures-io stream seen through storm-async's poll traits.
#[derive(Debug)]
pub struct FuturesIo<T>(T);

impl<T> FuturesIo<T> {
    /// The stream.
    #[must_use]
    pub fn get_ref(&self) -> &T {
        &self.0
    }
}

impl<T: AsyncRead + Send + Unpin + 'static> PollRead for FuturesIo<T> {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Send + Unpin + 'static> PollWrite for FuturesIo<T> {
    fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

/// A WebSocket over the futures-io stream `S` (`smol::net::TcpStream`, a
/// futures-rustls stream, an `Async<UnixStream>`).
pub type WebSocketStream<S> = storm_async::WebSocketStream<Smol, FuturesIo<S>>;

/// What [`connect`] returns: a WebSocket over plain TCP or TLS.
pub type ClientWebSocketStream =
    storm_async::WebSocketStream<Smol, storm_async::websocket::ClientStream<Smol>>;

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
    WebSocketStream::accept(FuturesIo(io), config).await
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
    WebSocketStream::accept_hdr(FuturesIo(io), config, hook).await
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
    WebSocketStream::client_async(url, FuturesIo(io), config).await
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
