//! smol as a storm-async [`Runtime`]: storm-smol's executor thread (or
//! `smol::spawn`), async-io's `Async<TcpStream>` (with read edges from
//! storm-smol's own poller under it), storm-smol's own timer heap under one
//! async-io `Timer`, futures-rustls.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::BufMut;
#[cfg(feature = "tls")]
use futures_rustls::{TlsAcceptor, TlsConnector, client, server};
use smol::Async;
use smol::io::{AsyncRead, AsyncWrite};
#[cfg(feature = "tls")]
use smol::io::{ReadHalf, WriteHalf};

#[cfg(not(feature = "tls"))]
use storm_async::runtime::no_tls;
use storm_async::runtime::{PollRead, PollWrite, Runtime, Stream};
use storm_host::options::TlsServerConfig;
use storm_host::setup::ClientTls;

#[cfg(unix)]
use crate::exec::Executor;
#[cfg(unix)]
use crate::readiness::{Edges, Registration};

/// The poller storm-smol's sockets read through: storm-smol's executor's
/// (its thread waits in it), or, where smol's global executor runs the
/// tasks, the process's poller under async-io. `None` where edge-triggered
/// polling is not available.
#[cfg(unix)]
fn edges() -> Option<&'static Edges> {
    match Executor::global() {
        Some(executor) => Some(executor.edges()),
        None => {
            let edges = Edges::process()?;
            edges.arm();
            Some(edges)
        }
    }
}

/// The smol runtime, for storm-async's generic servers and clients (this
/// crate's [`WsServer`](crate::WsServer) is `storm_async::WsServer<Smol>`).
/// With one executor thread (`SMOL_THREADS` unset or 1, smol's default),
/// tasks run on storm-smol's own executor thread, which waits for its
/// sockets' input itself (`exec.rs`); with more, they go to smol's global
/// executor (`smol::spawn`, `SMOL_THREADS` threads). Run servers and
/// clients inside `smol::block_on` or on any smol executor.
#[derive(Debug, Clone, Copy, Default)]
pub struct Smol;

/// A futures-io stream seen through storm-async's poll traits.
#[derive(Debug)]
pub struct Io<T>(T);

/// TLS streams and their halves read through futures-io (into initialized
/// buffers only, so `poll_read_buf` keeps its copying default).
#[cfg(feature = "tls")]
macro_rules! poll_read_via_futures_io {
    ($($stream:ty),*) => {$(
        impl PollRead for Io<$stream> {
            fn poll_read(
                &mut self,
                cx: &mut Context<'_>,
                buf: &mut [u8],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.0).poll_read(cx, buf)
            }
        }
    )*};
}

#[cfg(feature = "tls")]
poll_read_via_futures_io!(
    server::TlsStream<TcpStream>,
    client::TlsStream<TcpStream>,
    ReadHalf<server::TlsStream<TcpStream>>,
    ReadHalf<client::TlsStream<TcpStream>>
);

impl PollRead for Io<TcpStream> {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }

    /// Receives into `buf`'s uninitialized room, without zeroing or
    /// copying: a large WebSocket frame lands in the connection's input
    /// buffer directly.
    fn poll_read_buf<B: BufMut>(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut B,
    ) -> Poll<io::Result<usize>> {
        if !buf.has_remaining_mut() {
            return Poll::Ready(Ok(0));
        }
        let room = buf.chunk_mut().len();
        self.0.poll_read_op(cx, room, |socket| {
            // SAFETY: `UninitSlice` is a `[MaybeUninit<u8>]`, and `recv` only
            // writes into it (it never reads the bytes or de-initializes any).
            let room = unsafe { buf.chunk_mut().as_uninit_slice_mut() };
            let n = socket2::SockRef::from(socket).recv(room)?;
            // SAFETY: `recv` initialized the first `n` bytes of the room it
            // was given, which is `buf`'s next chunk.
            unsafe { buf.advance_mut(n) };
            Ok(n)
        })
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
        Pin::new(&mut self.0).poll_close(cx)
    }
}

/// A handle on a registered TCP socket. The two halves of a split are two
/// handles on one registration (readiness I/O needs only `&`, so no lock),
/// each with read state of its own. Closing it shuts the write direction
/// down.
#[derive(Debug)]
pub struct TcpStream {
    socket: Arc<Socket>,
    /// This handle's last read came back short (or would have blocked):
    /// the socket had nothing more, so the next read waits for readiness
    /// first instead of asking the socket again.
    drained: bool,
    /// The socket's read edges counted when that read began (with
    /// [`Edges`]): the wait returns once another came.
    seen: u64,
}

/// A socket, registered at async-io (writes, and reads where
/// edge-triggered polling is not available) and in [`Edges`] for reads.
#[derive(Debug)]
struct Socket {
    // Fields drop in order: the registration goes before the socket it
    // names.
    #[cfg(unix)]
    edges: Option<Registration>,
    io: Async<std::net::TcpStream>,
}

impl Socket {
    /// The read edges counted so far (0 without [`Edges`]).
    fn edges(&self) -> u64 {
        #[cfg(unix)]
        if let Some(registration) = &self.edges {
            return registration.readiness().edges();
        }
        0
    }

    /// Ready once the socket may have input after a read that began with
    /// `seen` edges counted.
    fn poll_readable(&self, cx: &mut Context<'_>, seen: u64) -> Poll<io::Result<()>> {
        #[cfg(unix)]
        if let Some(registration) = &self.edges {
            return registration.readiness().poll_edge(cx, seen).map(Ok);
        }
        let _ = seen;
        self.io.poll_readable(cx)
    }
}

impl TcpStream {
    fn new(io: Async<std::net::TcpStream>) -> Self {
        Self {
            socket: Arc::new(Socket {
                #[cfg(unix)]
                edges: edges().and_then(|edges| edges.register(io.get_ref())),
                io,
            }),
            drained: false,
            seen: 0,
        }
    }

    /// Runs the read `op` on the socket, waiting for readiness while it
    /// would block. `op` reads into `room` bytes and returns how many it
    /// read.
    ///
    /// A read that fills less than `room` emptied the socket's receive
    /// queue (as tokio assumes too): the next call waits for readiness
    /// before it reads. With [`Edges`] that is the next read edge counted
    /// after the read began (data that came meanwhile made one). Through
    /// async-io, waiting also keeps a read from asking the socket twice:
    /// async-io's readiness check, asked after the first, still reports the
    /// event the batch itself was read on; and its interest is oneshot,
    /// re-armed by `epoll_ctl`, which also reports data that came in
    /// meanwhile: nothing is missed by waiting either way.
    fn poll_read_op(
        &mut self,
        cx: &mut Context<'_>,
        room: usize,
        mut op: impl FnMut(&std::net::TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            if self.drained {
                ready!(self.socket.poll_readable(cx, self.seen))?;
                self.drained = false;
            }
            self.seen = self.socket.edges();
            match op(self.socket.io.get_ref()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.drained = true,
                result => {
                    self.drained = matches!(result, Ok(n) if n > 0 && n < room);
                    return Poll::Ready(result);
                }
            }
        }
    }
}

/// Another handle on the same socket (the other half of a split), with
/// read state of its own.
impl Clone for TcpStream {
    fn clone(&self) -> Self {
        Self {
            socket: Arc::clone(&self.socket),
            drained: false,
            seen: 0,
        }
    }
}

impl AsyncRead for TcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let room = buf.len();
        self.get_mut()
            .poll_read_op(cx, room, |mut socket| socket.read(buf))
    }
}

impl AsyncWrite for TcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.socket.io.get_ref().write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                result => return Poll::Ready(result),
            }
            ready!(self.socket.io.poll_writable(cx))?;
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A socket buffers nothing of its own.
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(match self.socket.io.get_ref().shutdown(Shutdown::Write) {
            // The peer already went away: nothing left to shut down.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            result => result,
        })
    }
}

/// A plain socket splits into two handles on the one registration.
impl Stream for Io<TcpStream> {
    type Reader = Self;
    type Writer = Self;
    fn split(self) -> (Self, Self) {
        (Io(self.0.clone()), self)
    }
}

/// A TLS stream splits with futures-lite's lock-based split.
#[cfg(feature = "tls")]
macro_rules! tls_stream {
    ($stream:ty) => {
        impl Stream for Io<$stream> {
            type Reader = Io<ReadHalf<$stream>>;
            type Writer = Io<WriteHalf<$stream>>;
            fn split(self) -> (Self::Reader, Self::Writer) {
                let (reader, writer) = smol::io::split(self.0);
                (Io(reader), Io(writer))
            }
        }
    };
}

#[cfg(feature = "tls")]
tls_stream!(server::TlsStream<TcpStream>);
#[cfg(feature = "tls")]
tls_stream!(client::TlsStream<TcpStream>);

impl Runtime for Smol {
    const TLS: bool = cfg!(feature = "tls");
    type Tcp = Io<TcpStream>;
    type Listener = Async<TcpListener>;
    #[cfg(feature = "tls")]
    type TlsServer = Io<server::TlsStream<TcpStream>>;
    #[cfg(feature = "tls")]
    type TlsClient = Io<client::TlsStream<TcpStream>>;
    // Without TLS: plain sockets, which no TLS handshake ever makes.
    #[cfg(not(feature = "tls"))]
    type TlsServer = Io<TcpStream>;
    #[cfg(not(feature = "tls"))]
    type TlsClient = Io<TcpStream>;

    /// On storm-smol's executor thread (`exec.rs`) with one executor thread
    /// (`SMOL_THREADS` unset or 1); on smol's global executor with more.
    fn spawn(future: impl Future<Output = ()> + Send + 'static) {
        #[cfg(unix)]
        if let Some(executor) = Executor::global() {
            executor.spawn(future);
            return;
        }
        smol::spawn(future).detach();
    }

    /// On storm-smol's own deadlines (`timer.rs`): one async-io timer under
    /// every sleep of the process, which fires up to 1 ms late (never
    /// early).
    fn sleep_until(deadline: Instant) -> impl Future<Output = ()> + Send {
        crate::timer::Deadlines::global().sleep_until(deadline)
    }

    async fn resolve(addr: &str) -> io::Result<Vec<SocketAddr>> {
        smol::net::resolve(addr).await
    }

    async fn connect(addr: SocketAddr) -> io::Result<Self::Tcp> {
        let stream = Async::<std::net::TcpStream>::connect(addr).await?;
        Ok(Io(TcpStream::new(stream)))
    }

    fn listen(listener: TcpListener) -> io::Result<Async<TcpListener>> {
        // The read poller's descriptors open with the first listener, not
        // with the first connection: a server holds the same descriptors
        // once its connections are gone as before they came.
        #[cfg(unix)]
        let _ = edges();
        Async::new(listener)
    }

    fn poll_accept(
        listener: &Async<TcpListener>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(Self::Tcp, SocketAddr)>> {
        loop {
            match listener.get_ref().accept() {
                Ok((stream, remote)) => {
                    let stream = Async::new(stream)?;
                    return Poll::Ready(Ok((Io(TcpStream::new(stream)), remote)));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            ready!(listener.poll_readable(cx))?;
        }
    }

    fn socket(stream: &Self::Tcp) -> socket2::SockRef<'_> {
        socket2::SockRef::from(&stream.0.socket.io)
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
