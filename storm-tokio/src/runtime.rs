//! tokio as a storm-async [`Runtime`]: tasks, timers, TCP and TLS.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
#[cfg(feature = "tls")]
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::BufMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
#[cfg(feature = "tls")]
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
#[cfg(feature = "tls")]
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

#[cfg(not(feature = "tls"))]
use storm_async::runtime::no_tls;
use storm_async::runtime::{PollRead, PollWrite, Runtime, Stream};
use storm_host::options::TlsServerConfig;
use storm_host::setup::ClientTls;

/// The tokio runtime, for storm-async's generic servers and clients
/// (this crate's [`WsServer`](crate::WsServer) is
/// `storm_async::WsServer<Tokio>`). Tasks go to the current runtime with
/// `tokio::spawn`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tokio;

/// A tokio stream seen through storm-async's poll traits.
#[derive(Debug)]
pub struct Io<T>(pub(crate) T);

impl<T: AsyncRead + Send + Unpin + 'static> PollRead for Io<T> {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut buf = ReadBuf::new(buf);
        ready!(Pin::new(&mut self.0).poll_read(cx, &mut buf))?;
        Poll::Ready(Ok(buf.filled().len()))
    }

    /// Reads into `buf`'s uninitialized room, without zeroing or copying.
    fn poll_read_buf<B: BufMut>(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut B,
    ) -> Poll<io::Result<usize>> {
        tokio_util::io::poll_read_buf(Pin::new(&mut self.0), cx, buf)
    }
}

impl<T: AsyncWrite + Send + Unpin + 'static> PollWrite for Io<T> {
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
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A plain socket splits into owned halves, without a lock.
impl Stream for Io<TcpStream> {
    type Reader = TcpReader;
    type Writer = Io<OwnedWriteHalf>;
    fn split(self) -> (Self::Reader, Self::Writer) {
        let (reader, writer) = self.0.into_split();
        (TcpReader(Io(reader)), Io(writer))
    }
}

/// A plain socket's read half: [`Io`]'s reads, and the socket's read
/// readiness for [`PollRead::poll_read_ready`].
#[derive(Debug)]
pub struct TcpReader(Io<OwnedReadHalf>);

impl PollRead for TcpReader {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        self.0.poll_read(cx, buf)
    }

    fn poll_read_buf<B: BufMut>(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut B,
    ) -> Poll<io::Result<usize>> {
        self.0.poll_read_buf(cx, buf)
    }

    /// `Pending` while the socket's read readiness is clear: a read that
    /// brought less than its buffer's room, or found nothing, clears it
    /// until the next readiness event, and a read would then return
    /// `Pending` after registering `cx` exactly as this does. An error
    /// is `Ready`: the read reports it.
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let socket: &TcpStream = self.0.0.as_ref();
        socket.poll_read_ready(cx).map(drop)
    }
}

/// A TLS stream splits with tokio's lock-based split.
#[cfg(feature = "tls")]
macro_rules! tls_stream {
    ($stream:ty) => {
        impl Stream for Io<$stream> {
            type Reader = Io<ReadHalf<$stream>>;
            type Writer = Io<WriteHalf<$stream>>;
            fn split(self) -> (Self::Reader, Self::Writer) {
                let (reader, writer) = tokio::io::split(self.0);
                (Io(reader), Io(writer))
            }
        }
    };
}

#[cfg(feature = "tls")]
tls_stream!(server::TlsStream<TcpStream>);
#[cfg(feature = "tls")]
tls_stream!(client::TlsStream<TcpStream>);

impl Runtime for Tokio {
    const TLS: bool = cfg!(feature = "tls");
    type Tcp = Io<TcpStream>;
    type Listener = TcpListener;
    #[cfg(feature = "tls")]
    type TlsServer = Io<server::TlsStream<TcpStream>>;
    #[cfg(feature = "tls")]
    type TlsClient = Io<client::TlsStream<TcpStream>>;
    // Without TLS: plain sockets, which no TLS handshake ever makes.
    #[cfg(not(feature = "tls"))]
    type TlsServer = Io<TcpStream>;
    #[cfg(not(feature = "tls"))]
    type TlsClient = Io<TcpStream>;

    fn spawn(future: impl Future<Output = ()> + Send + 'static) {
        drop(tokio::spawn(future));
    }

    fn sleep_until(deadline: Instant) -> impl Future<Output = ()> + Send {
        tokio::time::sleep_until(deadline.into())
    }

    async fn resolve(addr: &str) -> io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host(addr).await?.collect())
    }

    async fn connect(addr: SocketAddr) -> io::Result<Self::Tcp> {
        TcpStream::connect(addr).await.map(Io)
    }

    fn listen(listener: std::net::TcpListener) -> io::Result<TcpListener> {
        TcpListener::from_std(listener)
    }

    fn poll_accept(
        listener: &TcpListener,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(Self::Tcp, SocketAddr)>> {
        listener
            .poll_accept(cx)
            .map_ok(|(stream, remote)| (Io(stream), remote))
    }

    fn socket(stream: &Self::Tcp) -> socket2::SockRef<'_> {
        socket2::SockRef::from(&stream.0)
    }

    #[cfg(feature = "tls")]
    async fn tls_accept(config: TlsServerConfig, stream: Self::Tcp) -> io::Result<Self::TlsServer> {
        TlsAcceptor::from(Arc::clone(config.rustls()))
            .accept(stream.0)
            .await
            .map(Io)
    }

    #[cfg(feature = "tls")]
    fn tls_info(stream: &Self::TlsServer) -> storm_host::setup::TlsInfo {
        storm_host::setup::TlsInfo::of(stream.0.get_ref().1)
    }

    #[cfg(not(feature = "tls"))]
    fn tls_info(_: &Self::TlsServer) -> storm_host::setup::TlsInfo {
        storm_host::setup::TlsInfo::default()
    }

    #[cfg(feature = "tls")]
    async fn tls_connect(tls: ClientTls, stream: Self::Tcp) -> io::Result<Self::TlsClient> {
        TlsConnector::from(Arc::clone(tls.config().rustls()))
            .connect(tls.name().clone(), stream.0)
            .await
            .map(Io)
    }

    #[cfg(not(feature = "tls"))]
    async fn tls_accept(_: TlsServerConfig, _: Self::Tcp) -> io::Result<Self::TlsServer> {
        Err(no_tls())
    }

    #[cfg(not(feature = "tls"))]
    async fn tls_connect(_: ClientTls, _: Self::Tcp) -> io::Result<Self::TlsClient> {
        Err(no_tls())
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;

    use super::*;

    /// What the driver's look after a short read relies on
    /// ([`PollRead::poll_read_ready`]), on a real loopback socket: a read
    /// that brought less than its room leaves the reader not ready, in
    /// the same poll, until the peer sends more; then the waker the look
    /// registered wakes the task, the look is ready, and the read brings
    /// the bytes.
    #[tokio::test(flavor = "current_thread")]
    async fn a_short_read_leaves_the_reader_not_ready_until_the_peer_sends() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (mut reader, _writer) = Io(server).split();
        let mut buf = [0u8; 1024];
        let bounded = Duration::from_secs(10);
        for (turn, sent) in [&b"ping"[..], b"pong", b"again"].into_iter().enumerate() {
            client.write_all(sent).await.unwrap();
            // Read, then look in the same poll: not ready.
            let read = tokio::time::timeout(
                bounded,
                poll_fn(|cx| {
                    let n = ready!(reader.poll_read(cx, &mut buf))?;
                    Poll::Ready(io::Result::Ok((n, reader.poll_read_ready(cx))))
                }),
            )
            .await
            .unwrap()
            .unwrap();
            assert_eq!(read.0, sent.len(), "turn {turn}");
            assert!(
                read.1.is_pending(),
                "turn {turn}: a short read clears readiness"
            );
            assert_eq!(&buf[..read.0], sent);
        }
        // The look's waker is woken by the peer's bytes.
        let look = tokio::spawn(async move {
            poll_fn(|cx| reader.poll_read_ready(cx)).await;
            let n = poll_fn(|cx| reader.poll_read(cx, &mut buf)).await.unwrap();
            buf[..n].to_vec()
        });
        tokio::task::yield_now().await;
        client.write_all(b"late").await.unwrap();
        let late = tokio::time::timeout(bounded, look).await.unwrap().unwrap();
        assert_eq!(late, b"late");
    }
}
