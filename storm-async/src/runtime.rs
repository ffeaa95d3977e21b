//! What an async runtime provides: the only runtime-specific part of an
//! adapter. storm-tokio and storm-smol each implement [`Runtime`] in about a
//! hundred lines; everything else in this crate is shared.
//!
//! The I/O traits are poll-based, like the runtimes' own: a `poll_*` method
//! borrows its buffer only for the call, so the driver can read every
//! connection of a worker thread into one shared buffer.

use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::BufMut;
use storm_host::options::TlsServerConfig;
use storm_host::setup::ClientTls;

pub use crate::io::Either;

/// The read side of a byte stream.
pub trait PollRead: Send + Unpin + 'static {
    /// Reads what is available into `buf`: `Ok(0)` at end of stream.
    /// Registers `cx` for wake-up and returns `Pending` when nothing is.
    ///
    /// # Errors
    ///
    /// Any I/O error of the stream.
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>>;

    /// Reads what is available into `buf`'s free room (at most
    /// `buf.remaining_mut()` bytes, appended), like
    /// [`poll_read`](Self::poll_read). The driver uses it to read a large
    /// WebSocket frame straight into the connection's input buffer.
    ///
    /// The default reads through the worker thread's shared read buffer
    /// and copies; a stream that can read into uninitialized memory (tokio's,
    /// through `ReadBuf`) overrides it to save that copy.
    ///
    /// # Errors
    ///
    /// Any I/O error of the stream.
    fn poll_read_buf<B: BufMut>(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut B,
    ) -> Poll<io::Result<usize>>
    where
        Self: Sized,
    {
        let room = buf.remaining_mut();
        crate::io::poll_read_with(self, cx, room, |bytes| {
            buf.put_slice(bytes);
            bytes.len()
        })
    }

    /// Whether a read could bring anything now, without reading: `Pending`
    /// only when a [`poll_read`](Self::poll_read) now would return
    /// `Pending` too, with `cx` registered for wake-up as that read would
    /// register it; `Ready` when the read might not (then read).
    ///
    /// The driver asks after a read that brought less than it had room
    /// for, before reading again in the same poll: on tokio such a read
    /// cleared the socket's readiness, so the read that would only find
    /// `Pending` (once per ping-pong message) is this look and the
    /// waker's registration. The default is always `Ready`: the driver
    /// reads (a TLS stream, whose plaintext may be buffered, keeps it).
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let _ = cx;
        Poll::Ready(())
    }
}

/// The write side of a byte stream.
pub trait PollWrite: Send + Unpin + 'static {
    /// Writes from `bufs`, in order, as much as the stream takes in one go.
    ///
    /// # Errors
    ///
    /// Any I/O error of the stream.
    fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>>;

    /// Pushes out anything the stream buffers (TLS records); a no-op on a
    /// plain socket.
    ///
    /// # Errors
    ///
    /// Any I/O error of the stream.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Flushes and shuts the write direction down (a TLS close_notify, a
    /// TCP FIN).
    ///
    /// # Errors
    ///
    /// Any I/O error of the stream.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

/// A connection's byte stream, read and written during the handshake,
/// then split so that one task reads while it writes.
pub trait Stream: PollRead + PollWrite {
    /// The read half.
    type Reader: PollRead;
    /// The write half.
    type Writer: PollWrite;

    /// Splits the stream into halves that can be used concurrently.
    fn split(self) -> (Self::Reader, Self::Writer);
}

/// An async runtime: tasks, a timer, TCP and TLS. Implemented by a marker
/// type (`storm_tokio::Tokio`, `storm_smol::Smol`); servers and clients are
/// generic over it, handlers and sessions are not.
///
/// TLS is part of every runtime's interface, in types that exist with or
/// without TLS compiled in ([`TlsServerConfig`], [`ClientTls`]: without
/// storm-host's `tls` feature no value of either exists), so turning a
/// `tls` feature on anywhere never breaks a runtime built without it. A
/// runtime built without TLS says so with [`TLS`](Self::TLS), and servers
/// and clients then refuse TLS options when they start.
pub trait Runtime: Send + Sync + 'static {
    /// Whether this runtime runs TLS (its crate's `tls` feature).
    const TLS: bool;
    /// A connected TCP stream.
    type Tcp: Stream;
    /// A listening TCP socket.
    type Listener: Send + Sync + 'static;
    /// A server-side TLS stream over [`Tcp`](Self::Tcp).
    type TlsServer: Stream;
    /// A client-side TLS stream over [`Tcp`](Self::Tcp).
    type TlsClient: Stream;

    /// Runs `future` in the background; it is not awaited by anyone. Any
    /// waker its polls are given wakes it (a connection's loop leaves its
    /// timer with the waker of an earlier poll).
    fn spawn(future: impl Future<Output = ()> + Send + 'static);

    /// Completes at `deadline` (at once when it has passed), never before
    /// it as [`Instant::now`] tells: a connection's loop that sees its
    /// clock still short of the deadline does not poll the timer again
    /// until it is polled anew.
    fn sleep_until(deadline: Instant) -> impl Future<Output = ()> + Send;

    /// Resolves `host:port` to socket addresses, without blocking the
    /// runtime.
    fn resolve(addr: &str) -> impl Future<Output = io::Result<Vec<SocketAddr>>> + Send;

    /// Connects to `addr`.
    fn connect(addr: SocketAddr) -> impl Future<Output = io::Result<Self::Tcp>> + Send;

    /// Takes over a bound, listening, non-blocking socket.
    ///
    /// # Errors
    ///
    /// When the runtime cannot register the socket.
    fn listen(listener: std::net::TcpListener) -> io::Result<Self::Listener>;

    /// Accepts the next connection.
    fn poll_accept(
        listener: &Self::Listener,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(Self::Tcp, SocketAddr)>>;

    /// The socket under a stream, to set options (nodelay, keep-alive).
    fn socket(stream: &Self::Tcp) -> socket2::SockRef<'_>;

    /// Runs the server side of a TLS handshake.
    fn tls_accept(
        config: TlsServerConfig,
        stream: Self::Tcp,
    ) -> impl Future<Output = io::Result<Self::TlsServer>> + Send;

    /// What the server side of a finished TLS handshake learned: the
    /// server name the client asked for (SNI) and the agreed ALPN
    /// protocol, for the upgrade hook (empty without the `tls` feature).
    fn tls_info(stream: &Self::TlsServer) -> storm_host::setup::TlsInfo;

    /// Runs the client side of a TLS handshake (with the server `tls`
    /// names).
    fn tls_connect(
        tls: ClientTls,
        stream: Self::Tcp,
    ) -> impl Future<Output = io::Result<Self::TlsClient>> + Send;
}

/// [`no_tls`] when TLS is `wanted` but runtime `R` is built without it;
/// servers check at bind, clients when they start.
pub(crate) fn check_tls<R: Runtime>(wanted: bool) -> io::Result<()> {
    match wanted && !R::TLS {
        true => Err(no_tls()),
        false => Ok(()),
    }
}

/// What a runtime built without TLS answers when asked for it: an
/// [`InvalidInput`](io::ErrorKind::InvalidInput) error that names the
/// feature.
#[must_use]
pub fn no_tls() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "TLS options are set, but the runtime's crate is built without its `tls` feature",
    )
}
