//! Small I/O helpers over the [`runtime`](crate::runtime) traits: what the
//! handshakes need, and a stream that is one of two kinds.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::task::{Context, Poll};

use crate::runtime::{PollRead, PollWrite, Stream};

/// One read of a handshake: reads what is available through the worker
/// thread's read buffer and hands it, with the handshake's state, to
/// `step`; `Ok(None)` at end of stream. A handshake in progress holds no
/// read buffer of its own (1000 handshakes at once would otherwise hold
/// 4 KiB each).
pub(crate) async fn read_step<S: PollRead, U, T>(
    stream: &mut S,
    state: U,
    step: impl FnOnce(U, &[u8]) -> T,
) -> io::Result<Option<T>> {
    let mut pending = Some((state, step));
    poll_fn(|cx| {
        crate::driver::poll_read_with(stream, cx, usize::MAX, |input| {
            pending
                .take()
                .filter(|_| !input.is_empty())
                .map(|(state, step)| step(state, input))
        })
    })
    .await
}

/// Writes all of `data`, then flushes (a TLS stream may hold records until
/// flushed).
pub(crate) async fn write_all_flush<S: PollWrite>(
    stream: &mut S,
    mut data: &[u8],
) -> io::Result<()> {
    while !data.is_empty() {
        let n = poll_fn(|cx| stream.poll_write_vectored(cx, &[IoSlice::new(data)])).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        data = data.get(n..).unwrap_or_default();
    }
    poll_fn(|cx| stream.poll_flush(cx)).await
}

/// A stream (or a half) that is one of two types: a client's plain TCP or
/// TLS connection.
#[derive(Debug)]
pub(crate) enum Either<A, B> {
    /// The first kind.
    A(A),
    /// The second kind.
    B(B),
}

impl<A: PollRead, B: PollRead> PollRead for Either<A, B> {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self {
            Self::A(s) => s.poll_read(cx, buf),
            Self::B(s) => s.poll_read(cx, buf),
        }
    }
}

impl<A: PollWrite, B: PollWrite> PollWrite for Either<A, B> {
    fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self {
            Self::A(s) => s.poll_write_vectored(cx, bufs),
            Self::B(s) => s.poll_write_vectored(cx, bufs),
        }
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Self::A(s) => s.poll_flush(cx),
            Self::B(s) => s.poll_flush(cx),
        }
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Self::A(s) => s.poll_close(cx),
            Self::B(s) => s.poll_close(cx),
        }
    }
}

impl<A: Stream, B: Stream> Stream for Either<A, B> {
    type Reader = Either<A::Reader, B::Reader>;
    type Writer = Either<A::Writer, B::Writer>;

    fn split(self) -> (Self::Reader, Self::Writer) {
        match self {
            Self::A(s) => {
                let (r, w) = s.split();
                (Either::A(r), Either::A(w))
            }
            Self::B(s) => {
                let (r, w) = s.split();
                (Either::B(r), Either::B(w))
            }
        }
    }
}
