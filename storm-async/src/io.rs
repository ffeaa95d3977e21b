//! Small I/O helpers over the [`runtime`](crate::runtime) traits: what the
//! handshakes need, and a stream that is one of two kinds.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::task::{Context, Poll, ready};

use crate::runtime::{PollRead, PollWrite, Stream};

/// How much one read asks the socket for.
pub(crate) const READ_CHUNK: usize = 16 * 1024;

thread_local! {
    /// One read buffer per worker thread, shared by every connection it
    /// runs: a read borrows it only for one poll, so an idle connection
    /// holds no read buffer at all.
    static READ_BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; READ_CHUNK].into_boxed_slice());
}

/// Reads what the stream has (at most `max` bytes) into the thread's
/// buffer and hands it to `f` (an empty slice at end of stream). Nothing
/// per connection: the handshakes read through it too.
pub(crate) fn poll_read_with<S: PollRead, T>(
    reader: &mut S,
    cx: &mut Context<'_>,
    max: usize,
    f: impl FnOnce(&[u8]) -> T,
) -> Poll<io::Result<T>> {
    READ_BUFFER.with_borrow_mut(|buf| {
        let buf = buf.get_mut(..max.min(READ_CHUNK)).unwrap_or_default();
        let n = ready!(reader.poll_read(cx, buf))?;
        Poll::Ready(Ok(f(buf.get(..n).unwrap_or_default())))
    })
}

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
        poll_read_with(stream, cx, usize::MAX, |input| {
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

/// A stream (or a half) that is one of two types: a client's plain TCP
/// (`A`) or TLS (`B`) connection.
#[derive(Debug)]
pub enum Either<A, B> {
    /// The first kind (a client's plain TCP).
    A(A),
    /// The second kind (a client's TLS).
    B(B),
}

impl<A: PollRead, B: PollRead> PollRead for Either<A, B> {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self {
            Self::A(s) => s.poll_read(cx, buf),
            Self::B(s) => s.poll_read(cx, buf),
        }
    }

    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self {
            Self::A(s) => s.poll_read_ready(cx),
            Self::B(s) => s.poll_read_ready(cx),
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
