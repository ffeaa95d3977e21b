//! What every peer echo server shares: the `BIN ADDR` command line, the
//! loopback rule, the tokio runtime, the "listening on" line, the accept
//! loop, and the two ways peers batch their echoes: [`echo_batched`] for a
//! crate that offers a message `Stream` + `Sink`, [`Coalesce`] for one that
//! writes every frame to its stream.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::process::ExitCode;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::sys::loopback_addr;

/// The error a connection handler may end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a peer serves before it exits by itself, so that a server left
/// behind by an interrupted run does not live on: one hour.
pub const LIFETIME: Duration = Duration::from_secs(3600);

/// Most messages [`echo_batched`] reads before it writes their echoes.
pub const MAX_BATCH: usize = 1024;

/// Bytes [`Coalesce`] buffers before it writes without waiting for a read
/// to block; writes at least this long are not copied.
pub const COALESCE_LIMIT: usize = 64 * 1024;

/// A stream whose writes are buffered (up to [`COALESCE_LIMIT`]) until a
/// read would wait, a flush or shutdown is asked for, or the buffer would
/// overflow; then they go out in as few writes as the socket takes. Order
/// is kept: a write that does not fit drains the buffer first, and one of
/// at least [`COALESCE_LIMIT`] bytes goes straight to `inner`.
///
/// For a peer whose crate writes each frame to its stream and reads frames
/// with a future that cannot be dropped halfway: the echoes of everything
/// read so far leave in one write at the moment the peer would wait for
/// more input.
pub struct Coalesce<S> {
    inner: S,
    out: Vec<u8>,
    /// Bytes of `out` already written.
    written: usize,
}

impl<S: AsyncWrite + Unpin> Coalesce<S> {
    /// Buffers the writes to `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            // Grown on demand: an idle connection keeps only what it wrote.
            out: Vec::new(),
            written: 0,
        }
    }

    /// Writes out everything buffered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.out.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.out.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesce<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending => {
                // No more input for now: what was echoed so far goes out.
                ready!(this.poll_drain(cx))?;
                Poll::Pending
            }
            ready => ready,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesce<S> {
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
        let this = self.get_mut();
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if this.out.len() + len > COALESCE_LIMIT {
            ready!(this.poll_drain(cx))?;
        }
        if len >= COALESCE_LIMIT {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        for buf in bufs {
            this.out.extend_from_slice(buf);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// Runs a peer echo server: reads `ADDR` from the command line (refusing
/// anything but loopback), binds it on a current-thread tokio runtime (the
/// whole server on one thread, as each peer is measured on one pinned
/// core: no work stealing, no cross-thread wakeups), prints `NAME listening on SCHEME://ADDR` as its first line, and serves
/// each connection with `handler` on its own task until [`LIFETIME`] has
/// passed.
///
/// Handler errors are printed only when `STORM_E2E_VERBOSE` is set: the
/// load generator drops its connections without closing them, so resets are
/// the normal end of a run.
pub fn run<F, Fut>(name: &str, scheme: &str, handler: F) -> ExitCode
where
    F: Fn(TcpStream) -> Fut + Send + Sync + Copy + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    let Some(text) = std::env::args().nth(1) else {
        eprintln!("usage: {name} ADDR   (a loopback address, e.g. 127.0.0.1:0)");
        return ExitCode::from(2);
    };
    let addr = match loopback_addr(&text) {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{name}: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let verbose = std::env::var_os("STORM_E2E_VERBOSE").is_some();
    let result = runtime.block_on(async move {
        let listener = TcpListener::bind(addr).await?;
        println!("{name} listening on {scheme}://{}", listener.local_addr()?);
        let serve = async {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        eprintln!("accept: {e}");
                        // Out of descriptors, most likely: let some close.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    if let (true, Err(e)) = (verbose, handler(stream).await) {
                        eprintln!("{peer}: {e}");
                    }
                });
            }
        };
        // `serve` never ends; the lifetime bounds the process.
        let _ = tokio::time::timeout(LIFETIME, serve).await;
        Ok::<(), std::io::Error>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Echoes every data message of a connection whose crate gives a message
/// `Stream` and `Sink` on one object, batched the way such a sink is meant
/// to be driven: every message already readable is taken (up to
/// [`MAX_BATCH`], without waiting), then `reply` turns each into its echo
/// (`None` drops it, e.g. a pong), the echoes are fed into the sink, and the
/// sink is flushed once. So the socket sees one write per batch of input,
/// not one per message, whatever the crate does when its stream is polled
/// with frames queued. The sink's own buffer limit bounds what a batch
/// holds on the write side.
///
/// # Errors
///
/// The first read or write error, as a [`BoxError`]. The end of the stream
/// ends the echo with `Ok` once the last batch is flushed.
pub async fn echo_batched<S, T, U, E>(
    mut io: S,
    mut reply: impl FnMut(T) -> Option<U>,
) -> Result<(), BoxError>
where
    S: Stream<Item = Result<T, E>> + Sink<U> + Unpin,
    E: Into<BoxError>,
    <S as Sink<U>>::Error: Into<BoxError>,
{
    let mut batch = Vec::new();
    let mut ended = false;
    while !ended {
        match io.next().await {
            Some(item) => batch.push(item.map_err(Into::into)?),
            None => break,
        }
        // Polling a stream and dropping the `next()` future when it is
        // pending loses nothing: the stream keeps its own state.
        while batch.len() < MAX_BATCH {
            match io.next().now_or_never() {
                Some(Some(item)) => batch.push(item.map_err(Into::into)?),
                Some(None) => {
                    ended = true;
                    break;
                }
                None => break,
            }
        }
        for item in batch.drain(..) {
            if let Some(echo) = reply(item) {
                io.feed(echo).await.map_err(Into::into)?;
            }
        }
        io.flush().await.map_err(Into::into)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(future)
    }

    /// A message stream that yields a script (`None`: pending once) and a
    /// sink that records what was fed before each flush.
    #[derive(Default)]
    struct Script {
        input: VecDeque<Option<u32>>,
        fed: Vec<u32>,
        flushes: Vec<Vec<u32>>,
    }

    impl Script {
        /// Batches of input, each `(first, end)` (`end` excluded).
        fn new(batches: &[(u32, u32)]) -> Self {
            let mut input = VecDeque::new();
            for &(first, end) in batches {
                input.extend((first..end).map(Some));
                input.push_back(None);
            }
            Self {
                input,
                ..Self::default()
            }
        }
    }

    impl Stream for Script {
        type Item = Result<u32, io::Error>;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            match self.input.pop_front() {
                Some(Some(n)) => Poll::Ready(Some(Ok(n))),
                Some(None) => {
                    // More input arrives at once.
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                None => Poll::Ready(None),
            }
        }
    }

    impl Sink<u32> for Script {
        type Error = io::Error;

        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn start_send(mut self: Pin<&mut Self>, item: u32) -> io::Result<()> {
            self.fed.push(item);
            Ok(())
        }

        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            let fed = std::mem::take(&mut self.fed);
            if !fed.is_empty() {
                self.flushes.push(fed);
            }
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Runs `echo_batched` over `script`, echoing the odd numbers, and
    /// returns what each flush carried.
    fn echo(script: Script) -> Vec<Vec<u32>> {
        let mut script = script;
        block_on(echo_batched(&mut script, |n: u32| {
            (n % 2 == 1).then_some(n)
        }))
        .expect("echo");
        assert!(script.fed.is_empty(), "everything fed was flushed");
        script.flushes
    }

    fn odd(range: std::ops::Range<u32>) -> Vec<u32> {
        range.filter(|n| n % 2 == 1).collect()
    }

    #[test]
    fn echo_batched_flushes_once_per_batch_of_ready_input() {
        let flushes = echo(Script::new(&[(0, 100), (100, 130), (131, 132)]));
        assert_eq!(flushes, vec![odd(0..100), odd(100..130), vec![131]]);
    }

    #[test]
    fn echo_batched_flushes_at_least_every_max_batch_messages() {
        let total = 2 * MAX_BATCH as u32 + 10;
        let flushes = echo(Script::new(&[(0, total)]));
        let sizes: Vec<usize> = flushes.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![MAX_BATCH / 2, MAX_BATCH / 2, 5]);
        assert_eq!(flushes.concat(), odd(0..total));
    }

    #[test]
    fn echo_batched_ends_with_the_stream_after_flushing() {
        // The stream ends while a batch is being read: that batch still
        // goes out.
        let mut script = Script::new(&[(0, 7)]);
        script.input.pop_back();
        assert_eq!(echo(script), vec![odd(0..7)]);
    }

    /// What `b` has received, without waiting.
    async fn received(b: &mut tokio::io::DuplexStream) -> Vec<u8> {
        let mut buf = vec![0u8; 4 * COALESCE_LIMIT];
        match b.read(&mut buf).now_or_never() {
            Some(n) => buf[..n.expect("read")].to_vec(),
            None => Vec::new(),
        }
    }

    #[test]
    fn coalesce_writes_when_a_read_would_wait() {
        block_on(async {
            let (a, mut b) = tokio::io::duplex(1 << 20);
            let mut a = Coalesce::new(a);
            let frames: Vec<u8> = (0..100u8).collect();
            for frame in frames.chunks(10) {
                a.write_all(frame).await.expect("write");
            }
            assert!(received(&mut b).await.is_empty(), "buffered");
            // Nothing to read: the read waits, and the buffer goes out.
            let mut buf = [0u8; 16];
            assert!(a.read(&mut buf).now_or_never().is_none());
            assert_eq!(received(&mut b).await, frames);
            // Input that is ready is read without sending anything.
            a.write_all(b"echo").await.expect("write");
            b.write_all(b"more").await.expect("write");
            assert_eq!(a.read(&mut buf).await.expect("read"), 4);
            assert!(received(&mut b).await.is_empty(), "still buffered");
            a.flush().await.expect("flush");
            assert_eq!(received(&mut b).await, b"echo");
        });
    }

    #[test]
    fn coalesce_keeps_order_around_large_writes() {
        block_on(async {
            let (a, mut b) = tokio::io::duplex(1 << 20);
            let mut a = Coalesce::new(a);
            let large: Vec<u8> = (0..COALESCE_LIMIT + 3).map(|i| i as u8).collect();
            a.write_all(b"head").await.expect("write");
            // Too large to buffer: the buffer goes first, then this.
            a.write_all(&large).await.expect("write");
            a.write_all(b"tail").await.expect("write");
            let mut got = Vec::new();
            loop {
                let chunk = received(&mut b).await;
                if chunk.is_empty() {
                    break;
                }
                got.extend_from_slice(&chunk);
            }
            assert_eq!(got, [b"head".as_slice(), &large].concat(), "tail buffered");
            a.shutdown().await.expect("shutdown");
            assert_eq!(received(&mut b).await, b"tail");
        });
    }
}
