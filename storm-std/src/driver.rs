//! The per-connection threads: the only place this adapter touches a socket
//! after the handshake.
//!
//! The thread that accepted (or connected) becomes the reader: it blocks in
//! `read` with a read timeout set from [`LinkDriver::poll_timeout`], feeds the
//! link, runs its timer, and calls the handler; while
//! [`LinkDriver::poll_input_ready`] holds it back, it parks instead of reading.
//! A second thread writes: it parks until the session's writer waker unparks it, then drains
//! [`LinkDriver::poll_transmit`] into one vectored write.
//!
//! The two threads share the connection's [`LinkDriver`] behind this
//! adapter's mutex, held for a few calls at a time: never while a socket
//! read or write blocks, never while the handler runs. The writer also runs
//! the link's timer while it is parked, because a deadline can start on its
//! side (a graceful close waiting for the peer's reply) while the reader is
//! blocked with an older timeout. Whatever the writer's timer decides that
//! the reader must report (a dead peer, a close that timed out) ends with
//! the writer shutting the socket down, which unblocks the reader.
//!
//! What the two threads read and write is a [`Transport`]: a plain
//! [`TcpStream`] here, or TLS ([`crate::tls`]). The driver is generic over
//! it, so plain TCP pays nothing for TLS: no lock, no branch per message.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, mpsc};
use std::task::Context;
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};

use storm_host::hub::{CloseKind, Outbox, thread_waker};
use storm_host::link::{CloseReason, LinkDriver, LinkEvent};

use crate::{Handler, Session};

/// How much one read asks the socket for: the size of the reader
/// thread's read buffer, which lives on that thread's stack (see
/// [`read_loop`]).
pub(crate) const READ_CHUNK: usize = 16 * 1024;

/// The writer's socket write timeout: how often a write blocked on a peer
/// that does not read looks whether the session was aborted meanwhile.
const WRITE_POLL: Duration = Duration::from_millis(200);

/// How many buffers one vectored write hands the kernel (or rustls).
const MAX_SLICES: usize = 64;

/// A connection's byte stream after its handshakes, split between the
/// reader thread and the writer thread.
pub(crate) trait Transport: Send {
    /// The reader thread's half.
    type Reader: ReadHalf;
    /// The writer thread's half.
    type Writer: WriteHalf;

    /// Splits the stream; both halves refer to the same socket.
    fn split(self) -> io::Result<(Self::Reader, Self::Writer)>;
}

/// What one read did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Received {
    /// Bytes (possibly none yet: half a TLS record) went to the link.
    Input,
    /// As [`Input`](Self::Input), and the transport has bytes of its own to
    /// send (a TLS alert): the writer must be woken.
    #[cfg_attr(
        not(feature = "tls"),
        expect(dead_code, reason = "only TLS sends of its own")
    )]
    InputAndOutput,
    /// The peer closed its side.
    Eof,
}

/// The reader thread's half of a [`Transport`].
pub(crate) trait ReadHalf {
    /// The socket, for its read timeout and shutdown.
    fn socket(&self) -> &TcpStream;

    /// Blocks in one socket read into `buf` (bounded by the socket's read
    /// timeout) and feeds what it got to `link` (locked only for that).
    ///
    /// # Errors
    ///
    /// A timeout ([`WouldBlock`](io::ErrorKind::WouldBlock),
    /// [`TimedOut`](io::ErrorKind::TimedOut)) or an interrupt means "look at
    /// the timer and read again"; anything else ends the transport.
    fn read(&mut self, link: &Mutex<Box<LinkDriver>>, buf: &mut [u8]) -> io::Result<Received>;
}

/// The writer thread's half of a [`Transport`].
pub(crate) trait WriteHalf: Send {
    /// The socket, for shutdown.
    fn socket(&self) -> &TcpStream;

    /// Whether the transport has bytes of its own waiting (TLS records the
    /// reader produced); the writer then calls [`write`](Self::write) with
    /// nothing more.
    fn has_output(&self) -> bool {
        false
    }

    /// Writes every buffer, in order, then empties `bufs`. A write blocked
    /// on a peer that does not read gives up when the session (`outbox`)
    /// is aborted or the connection is stopped.
    fn write(
        &mut self,
        bufs: &mut Vec<Bytes>,
        outbox: &Outbox,
        stop: &AtomicBool,
    ) -> io::Result<()>;

    /// Called once after the link's last bytes, before the socket shuts
    /// down (TLS sends its `close_notify` here).
    fn finish(&mut self, outbox: &Outbox, stop: &AtomicBool) -> io::Result<()> {
        let _ = (outbox, stop);
        Ok(())
    }
}

/// Plain TCP: both halves use the same socket without any lock.
impl Transport for TcpStream {
    type Reader = PlainReader;
    type Writer = TcpStream;

    fn split(self) -> io::Result<(PlainReader, TcpStream)> {
        prepare(&self)?;
        let writer = self.try_clone()?;
        Ok((PlainReader { stream: self }, writer))
    }
}

/// Socket settings for the connection's life: the reader sets its own
/// timeouts from the link's timer; writes wake up to look for an abort.
pub(crate) fn prepare(stream: &TcpStream) -> io::Result<()> {
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(Some(WRITE_POLL))
}

/// The reader's half of a plain TCP connection.
pub(crate) struct PlainReader {
    stream: TcpStream,
}

impl ReadHalf for PlainReader {
    fn socket(&self) -> &TcpStream {
        &self.stream
    }

    fn read(&mut self, link: &Mutex<Box<LinkDriver>>, buf: &mut [u8]) -> io::Result<Received> {
        // A large message (or the next while large ones flow) is read
        // straight into the link's input buffer, lent out so the lock is
        // not held while the read blocks.
        let lent = lock(link).lend_input();
        let n = match lent {
            Some((input, room)) => read_into(&self.stream, link, input, room)?,
            None => {
                let n = (&self.stream).read(buf)?;
                if n > 0 {
                    lock(link).handle_input(Instant::now(), buf.get(..n).unwrap_or_default());
                }
                n
            }
        };
        Ok(if n == 0 {
            Received::Eof
        } else {
            Received::Input
        })
    }
}

/// Reads at most `room` bytes from `stream` onto the end of `input`, the
/// link's input buffer lent by [`LinkDriver::lend_input`], and gives it
/// back whatever the read did; how many bytes it read.
fn read_into(
    mut stream: &TcpStream,
    link: &Mutex<Box<LinkDriver>>,
    mut input: BytesMut,
    room: usize,
) -> io::Result<usize> {
    let start = input.len();
    // Safe code cannot read into uninitialised memory: zeroed first (a
    // fraction of the copy it saves).
    input.resize(start + room, 0);
    let read = stream.read(input.get_mut(start..).unwrap_or_default());
    let n = *read.as_ref().unwrap_or(&0);
    input.truncate(start + n);
    lock(link).restore_input(Instant::now(), input, n);
    read
}

impl WriteHalf for TcpStream {
    fn socket(&self) -> &TcpStream {
        self
    }

    fn write(
        &mut self,
        bufs: &mut Vec<Bytes>,
        outbox: &Outbox,
        stop: &AtomicBool,
    ) -> io::Result<()> {
        let mut first = 0;
        while first < bufs.len() {
            let slices = io_slices(bufs, first);
            match (&*self).write_vectored(&slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => advance(bufs, &mut first, n),
                Err(e) => retry_or_give_up(e, outbox, stop)?,
            }
        }
        bufs.clear();
        Ok(())
    }
}

/// Up to [`MAX_SLICES`] of `bufs`, from `first`.
pub(crate) fn io_slices(bufs: &[Bytes], first: usize) -> Vec<IoSlice<'_>> {
    bufs.get(first..)
        .unwrap_or_default()
        .iter()
        .take(MAX_SLICES)
        .map(|b| IoSlice::new(b))
        .collect()
}

/// Marks `written` bytes of `bufs` (from `first`) as written.
pub(crate) fn advance(bufs: &mut [Bytes], first: &mut usize, mut written: usize) {
    while let Some(head) = bufs.get_mut(*first) {
        if written >= head.len() {
            written -= head.len();
            *first += 1;
        } else {
            head.advance(written);
            return;
        }
    }
}

/// After a failed socket write: `Ok` to try again (a timeout or an
/// interrupt, and the connection goes on), else the error to end with.
pub(crate) fn retry_or_give_up(e: io::Error, outbox: &Outbox, stop: &AtomicBool) -> io::Result<()> {
    if !matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    ) {
        return Err(e);
    }
    if stop.load(Ordering::Acquire) || outbox.close_request() == Some(CloseKind::Abort) {
        return Err(io::ErrorKind::ConnectionAborted.into());
    }
    Ok(())
}

/// Locks `mutex`; a panic elsewhere (a handler's, caught) does not poison it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs one connection until it closes: the handler sees `on_connect`, its
/// messages, and exactly one `on_disconnect`. `initial` holds bytes that
/// arrived with the handshake. Returns once both threads are done.
///
/// A handler that panics aborts its connection; the panic is not carried
/// further (the panic hook has printed it), so a server keeps serving.
pub(crate) fn drive<T: Transport, H: Handler>(
    transport: T,
    session: &Session,
    link: Box<LinkDriver>,
    handler: &H,
    initial: Bytes,
    write_batch: usize,
    close_timeout: Duration,
) {
    let link = &Mutex::new(link);
    let (mut reader, mut write_half) = match transport.split() {
        Ok(halves) => halves,
        Err(e) => {
            session.abort();
            handler.on_error(&e);
            return;
        }
    };
    let stop = AtomicBool::new(false);
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let reader_thread = thread::current();
    thread::scope(|scope| {
        let stop = &stop;
        let writer = thread::Builder::new()
            .name("storm-writer".to_owned())
            .spawn_scoped(scope, move || {
                let _done = done_tx;
                let result = write_loop(&mut write_half, session, link, write_batch, stop);
                if result.is_err() {
                    // The peer is gone: tell the link so the handler hears it.
                    lock(link).handle_eof();
                }
                // Also unblocks the reader, which then reports the close
                // (parked, it is woken).
                let _ = write_half.socket().shutdown(Shutdown::Both);
                reader_thread.unpark();
            });
        let writer = match writer {
            Ok(writer) => Some(writer),
            Err(e) => {
                session.abort();
                handler.on_error(&e);
                None
            }
        };
        let writer_thread = writer.as_ref().map(|writer| writer.thread().clone());
        let reported = catch_unwind(AssertUnwindSafe(|| {
            handler.on_connect(session);
            read_loop(
                &mut reader,
                session,
                link,
                handler,
                &initial,
                writer_thread.as_ref(),
            )
        }));
        match reported {
            Ok(true) => {}
            Ok(false) => handler.on_disconnect(session, &CloseReason::Eof),
            Err(_) => session.abort(),
        }
        // Let the writer flush the close reply (or the graceful close),
        // bounded in time; then stop it whatever it is doing.
        if writer.is_some() {
            let _ = done_rx.recv_timeout(close_timeout);
        }
        stop.store(true, Ordering::Release);
        let _ = reader.socket().shutdown(Shutdown::Both);
        if let Some(writer) = writer {
            writer.thread().unpark();
            let _ = writer.join();
        }
    });
}

/// Reads, feeds the link, runs the handler and the link's timer. Returns
/// `true` once the handler has seen `on_disconnect`; `false` if the
/// transport ended and the link had nothing more to say (not expected,
/// but the reader must never spin on a closed socket).
///
/// The read buffer is on this thread's stack, not the heap, so it goes
/// with the thread when the connection ends: freed heap stays in the
/// allocator's per-thread arenas, where a buffer per closed connection
/// added up (BENCHMARKS.md, session 6). The handler runs below it, on the
/// rest of the stack.
fn read_loop<R: ReadHalf, H: Handler>(
    reader: &mut R,
    session: &Session,
    link: &Mutex<Box<LinkDriver>>,
    handler: &H,
    initial: &[u8],
    writer: Option<&thread::Thread>,
) -> bool {
    if !initial.is_empty() {
        lock(link).handle_input(Instant::now(), initial);
    }
    let waker = thread_waker(thread::current());
    let mut buf = [0u8; READ_CHUNK];
    let mut eof = false;
    loop {
        if dispatch(session, link, handler) {
            return true;
        }
        if eof {
            return false;
        }
        let now = Instant::now();
        let (timeout, ready) = {
            let mut link = lock(link);
            let timeout = match link.poll_timeout() {
                Some(deadline) if deadline <= now => {
                    link.handle_timeout(now);
                    continue;
                }
                Some(deadline) => Some(deadline - now),
                None => None,
            };
            let ready = link.poll_input_ready(&mut Context::from_waker(&waker));
            (timeout, ready)
        };
        if ready.is_pending() {
            // The peer's pongs wait for the writer: parked until it drains
            // them, the session closes, the writer ends or the timer is due.
            match timeout {
                Some(timeout) => thread::park_timeout(timeout),
                None => thread::park(),
            }
            continue;
        }
        if reader.socket().set_read_timeout(timeout).is_err() {
            lock(link).handle_eof();
            eof = true;
            continue;
        }
        match reader.read(link, &mut buf) {
            Ok(Received::Input) => {}
            Ok(Received::InputAndOutput) => {
                if let Some(writer) = writer {
                    writer.unpark();
                }
            }
            Ok(Received::Eof) => {
                lock(link).handle_eof();
                eof = true;
            }
            // The timer is looked at on the next turn.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => {
                lock(link).handle_eof();
                eof = true;
                // A TLS failure leaves an alert for the writer to send.
                if let Some(writer) = writer {
                    writer.unpark();
                }
            }
        }
    }
}

/// Hands the link's events to the handler, in order. `true` once the
/// connection closed (and the handler heard it).
fn dispatch<H: Handler>(session: &Session, link: &Mutex<Box<LinkDriver>>, handler: &H) -> bool {
    // One clock read per batch, as on tokio and smol: the events were read
    // at about this time.
    let now = Instant::now();
    loop {
        // Unlocked before the handler runs.
        let event = lock(link).poll_event(now);
        let Some(event) = event else {
            return false;
        };
        match event {
            LinkEvent::Message(message) => handler.on_message(session, message),
            LinkEvent::Closed(reason) => {
                handler.on_disconnect(session, &reason);
                return true;
            }
            _ => {}
        }
    }
}

/// Drains the session's outbox through the link and writes it, many
/// messages per vectored write. Returns when the link says to close, or
/// when told to stop.
fn write_loop<W: WriteHalf>(
    writer: &mut W,
    session: &Session,
    link: &Mutex<Box<LinkDriver>>,
    write_batch: usize,
    stop: &AtomicBool,
) -> io::Result<()> {
    let outbox = session.outbox();
    let waker = thread_waker(thread::current());
    let mut bufs: Vec<Bytes> = Vec::new();
    // The write direction was shut down (a half-close): reading goes on.
    let mut shut = false;
    loop {
        if stop.load(Ordering::Acquire) {
            return Ok(());
        }
        // Registered before polling: a message queued after the poll
        // unparks us, and an unpark before `park` makes it return at once.
        outbox.register_waker(&waker);
        let transmit = lock(link).poll_transmit(Instant::now(), &mut bufs, write_batch);
        if transmit.bytes == 0 && !transmit.close && !transmit.shutdown {
            if transmit.release {
                // Idle a while: the link returned its buffers; so does
                // the writer.
                bufs = Vec::new();
            }
            if writer.has_output() {
                writer.write(&mut bufs, outbox, stop)?;
                continue;
            }
            let deadline = lock(link).poll_timeout();
            match deadline {
                None => thread::park(),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        lock(link).handle_timeout(now);
                    } else {
                        thread::park_timeout(deadline - now);
                    }
                }
            }
            continue;
        }
        writer.write(&mut bufs, outbox, stop)?;
        if transmit.close {
            return if shut {
                Ok(())
            } else {
                writer.finish(outbox, stop)
            };
        }
        if transmit.shutdown {
            writer.finish(outbox, stop)?;
            // A failure shows when reading, or at the close.
            let _ = writer.socket().shutdown(Shutdown::Write);
            shut = true;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // the test reads the clock

    use std::net::TcpListener;
    use std::sync::Arc;

    use storm_host::hub::{Hub, HubConfig};
    use storm_host::link::{LinkConfig, Protocol};
    use storm_proto::framing::LengthPrefixFramer;

    use super::*;

    /// Issue #16: the reader thread reads a large length-prefixed message
    /// (and the next, while large ones flow) straight into the link, in
    /// reads as large as the message. BASE read every message through its
    /// 16 KiB buffer: at least four reads per 64 KiB message.
    #[test]
    fn large_messages_are_read_in_reads_larger_than_the_buffer() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let payload = vec![9u8; 64 * 1024];
        let mut wire = Vec::new();
        for _ in 0..2 {
            wire.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
            wire.extend_from_slice(&payload);
        }
        let (written_tx, written_rx) = mpsc::channel();
        let writer = thread::spawn(move || {
            let mut peer = TcpStream::connect(addr).unwrap();
            peer.write_all(&wire).unwrap();
            let _ = written_tx.send(());
            // Held open until the reader is done.
            let _ = written_tx;
            peer
        });
        let (stream, _) = listener.accept().unwrap();
        // All of it in the kernel before the first read (bounded: the
        // reads below only count, they do not need it).
        let _ = written_rx.recv_timeout(Duration::from_secs(5));
        let now = Instant::now();
        let hub = Hub::new(HubConfig::default(), now).unwrap();
        let outbox = hub.register(hub.try_admit().unwrap(), now).unwrap();
        let protocol = Protocol::Framed(Box::new(LengthPrefixFramer::default()));
        let driver = LinkDriver::new(Arc::clone(&outbox), protocol, &LinkConfig::default(), now);
        let link = Mutex::new(Box::new(driver.unwrap()));
        let (mut reader, _writer) = stream.split().unwrap();
        reader
            .socket()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; READ_CHUNK];
        let (mut reads, mut messages) = (0, 0);
        while messages < 2 {
            assert_eq!(reader.read(&link, &mut buf).unwrap(), Received::Input);
            reads += 1;
            while let Some(event) = lock(&link).poll_event(Instant::now()) {
                match event {
                    LinkEvent::Message(message) => {
                        assert_eq!(message.as_bytes(), &payload[..]);
                        messages += 1;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        // The first 16 KiB through the buffer, then about a read per
        // message (BASE: 9).
        assert!(reads <= 5, "{reads} reads for two 64 KiB messages");
        drop(writer.join());
    }
}
