//! The per-connection loop: the only place this adapter touches a socket
//! after the handshake.

use std::cell::RefCell;
use std::future::Future;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadHalf, WriteHalf,
};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;
use tokio::time::sleep_until;

use storm_proto::link::{CloseReason, Link, LinkEvent};

use crate::{Handler, Session};

/// How much one read asks the socket for.
const READ_CHUNK: usize = 16 * 1024;

thread_local! {
    /// One read buffer per worker thread, shared by every plain-TCP
    /// connection it runs: an idle connection holds no read buffer at all.
    static READ_BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; READ_CHUNK].into_boxed_slice());
}

/// A connection's byte stream, split into a reader and a writer.
pub(crate) trait Transport: Send {
    /// The read half.
    type Reader: Reader;
    /// The write half.
    type Writer: AsyncWrite + Send;
    /// Splits the stream.
    fn split(self) -> (Self::Reader, Self::Writer);
}

/// Reads bytes straight into a [`Link`].
pub(crate) trait Reader: Send {
    /// Waits for bytes and feeds them to `link`; `Ok(0)` at end of stream.
    fn read_into(&mut self, link: &Link) -> impl Future<Output = io::Result<usize>> + Send;
}

impl Transport for TcpStream {
    type Reader = OwnedReadHalf;
    type Writer = OwnedWriteHalf;
    fn split(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        self.into_split()
    }
}

impl Reader for OwnedReadHalf {
    async fn read_into(&mut self, link: &Link) -> io::Result<usize> {
        let stream: &TcpStream = self.as_ref();
        loop {
            // Wait for readiness without a buffer, then read into the
            // worker's shared one and hand the bytes over at once.
            stream.readable().await?;
            let mut read = None;
            let outcome = READ_BUFFER.with_borrow_mut(|buf| {
                stream.try_io(Interest::READABLE, || {
                    let n = stream.try_read(buf)?;
                    if n > 0 {
                        link.handle_input(Instant::now(), &buf[..n]);
                    }
                    read = Some(n);
                    if n > 0 && n < buf.len() {
                        // A short read emptied the socket: clear the
                        // readiness now instead of paying for a read that
                        // would only say WouldBlock (data arriving since
                        // raises a new readiness event, so none is lost).
                        Err(io::ErrorKind::WouldBlock.into())
                    } else {
                        Ok(())
                    }
                })
            });
            match (read, outcome) {
                (Some(n), _) => return Ok(n),
                (None, Err(e)) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                (None, _) => {}
            }
        }
    }
}

/// Any other stream (TLS): split with tokio's lock-based split and read
/// through a buffer of its own.
pub(crate) struct Buffered<S>(pub(crate) S);

impl<S: AsyncRead + AsyncWrite + Send> Transport for Buffered<S> {
    type Reader = (ReadHalf<S>, Vec<u8>);
    type Writer = WriteHalf<S>;
    fn split(self) -> (Self::Reader, WriteHalf<S>) {
        let (reader, writer) = tokio::io::split(self.0);
        ((reader, vec![0u8; READ_CHUNK]), writer)
    }
}

impl<S: AsyncRead + Send> Reader for (ReadHalf<S>, Vec<u8>) {
    async fn read_into(&mut self, link: &Link) -> io::Result<usize> {
        let (reader, buf) = self;
        let n = reader.read(buf).await?;
        if n > 0 {
            link.handle_input(Instant::now(), &buf[..n]);
        }
        Ok(n)
    }
}

/// Runs one connection until it closes: the handler sees `on_connect`, its
/// messages, and exactly one `on_disconnect`. `initial` holds bytes that
/// arrived with the handshake.
pub(crate) async fn drive<T, H>(
    stream: T,
    session: Session,
    handler: &H,
    initial: Bytes,
    write_batch: usize,
    close_timeout: Duration,
) where
    T: Transport,
    H: Handler,
{
    let (reader, writer) = stream.split();
    let wakeup = Notify::new();
    handler.on_connect(&session).await;
    let disconnected = AtomicBool::new(false);
    {
        let mut write = pin!(write_loop(writer, &session, &wakeup, write_batch));
        let mut read = pin!(read_loop(
            reader,
            &session,
            handler,
            &wakeup,
            initial,
            &disconnected
        ));
        tokio::select! {
            result = &mut write => {
                if result.is_err() {
                    // The peer is gone: tell the link so the handler hears it.
                    session.link().handle_eof();
                }
                // The writer closed the socket (an abort, a finished close):
                // hand over what the link still has, its Closed event last.
                dispatch(&session, handler, &disconnected).await;
            }
            () = &mut read => {
                // The link is closed: let the writer flush the close reply
                // (or the graceful close), bounded in time.
                let _ = tokio::time::timeout(close_timeout, &mut write).await;
            }
        }
    }
    if !disconnected.load(Ordering::Relaxed) {
        handler.on_disconnect(&session, &CloseReason::Eof).await;
    }
}

/// Reads, feeds the link, runs the handler; also runs the link's timer.
/// Returns once the link reported `Closed`.
async fn read_loop<R, H>(
    mut reader: R,
    session: &Session,
    handler: &H,
    wakeup: &Notify,
    initial: Bytes,
    disconnected: &AtomicBool,
) where
    R: Reader,
    H: Handler,
{
    let link = session.link();
    if !initial.is_empty() {
        link.handle_input(Instant::now(), &initial);
    }
    loop {
        if !dispatch(session, handler, disconnected).await {
            return;
        }
        let deadline = link.poll_timeout();
        tokio::select! {
            read = reader.read_into(link) => if matches!(read, Ok(0) | Err(_)) {
                link.handle_eof();
            },
            () = sleep_opt(deadline) => link.handle_timeout(Instant::now()),
            // The writer changed a deadline (a graceful close began).
            () = wakeup.notified() => {}
        }
    }
}

async fn sleep_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// Hands the link's events to the handler, in order. `false` once the
/// connection closed.
async fn dispatch<H: Handler>(session: &Session, handler: &H, disconnected: &AtomicBool) -> bool {
    // One clock read per batch: the events were read at about this time.
    let now = Instant::now();
    while let Some(event) = session.link().poll_event(now) {
        match event {
            LinkEvent::Message(message) => handler.on_message(session, message).await,
            LinkEvent::Closed(reason) => {
                disconnected.store(true, Ordering::Relaxed);
                handler.on_disconnect(session, &reason).await;
                return false;
            }
            _ => {}
        }
    }
    !disconnected.load(Ordering::Relaxed)
}

/// Drains the session's outbox through the link and writes it, many
/// messages per vectored write. Returns when the link says to close.
async fn write_loop<W>(
    writer: W,
    session: &Session,
    wakeup: &Notify,
    write_batch: usize,
) -> io::Result<()>
where
    W: AsyncWrite,
{
    let mut writer = pin!(writer);
    let link = Arc::clone(session.link());
    let mut bufs: Vec<Bytes> = Vec::new();
    loop {
        let had_deadline = link.poll_timeout();
        let transmit = poll_fn(|cx| {
            link.session().register_waker(cx.waker());
            let transmit = link.poll_transmit(Instant::now(), &mut bufs, write_batch);
            if transmit.bytes == 0 && !transmit.close {
                Poll::Pending
            } else {
                Poll::Ready(transmit)
            }
        })
        .await;
        if link.poll_timeout() != had_deadline {
            wakeup.notify_one();
        }
        write_all(&mut writer, &mut bufs).await?;
        // A TLS stream can accept a write and keep the records it made
        // until the next write or flush: flush before waiting for more
        // (a no-op on a plain socket).
        writer.flush().await?;
        if transmit.close {
            let _ = writer.shutdown().await;
            return Ok(());
        }
    }
}

/// Writes every buffer, in order, with as few syscalls as the socket allows.
async fn write_all<W: AsyncWrite>(
    writer: &mut Pin<&mut W>,
    bufs: &mut Vec<Bytes>,
) -> io::Result<()> {
    /// Buffers per `writev`: the usual `IOV_MAX` is 1024; 64 already
    /// gathers a 64 KiB batch of small messages in one call.
    const MAX_SLICES: usize = 64;
    let mut first = 0;
    while first < bufs.len() {
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let count = (bufs.len() - first).min(MAX_SLICES);
        for (slice, buf) in slices.iter_mut().zip(&bufs[first..first + count]) {
            *slice = IoSlice::new(buf);
        }
        let mut written = writer.write_vectored(&slices[..count]).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let head = &mut bufs[first];
            if written >= head.len() {
                written -= head.len();
                first += 1;
            } else {
                head.advance(written);
                written = 0;
            }
        }
    }
    bufs.clear();
    Ok(())
}
