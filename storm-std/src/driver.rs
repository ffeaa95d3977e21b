//! The per-connection threads: the only place this adapter touches a socket
//! after the handshake.
//!
//! The thread that accepted (or connected) becomes the reader: it blocks in
//! `read` with a read timeout set from [`Link::poll_timeout`], feeds the
//! link, runs its timer, and calls the handler. A second thread writes: it
//! parks until the session's writer waker unparks it, then drains
//! [`Link::poll_transmit`] into one vectored write. The writer also runs
//! the link's timer while it is parked, because a deadline can start on its
//! side (a graceful close waiting for the peer's reply) while the reader is
//! blocked with an older timeout. Whatever the writer's timer decides that
//! the reader must report (a dead peer, a close that timed out) ends with
//! the writer shutting the socket down, which unblocks the reader.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};

use storm_proto::hub::{CloseKind, thread_waker};
use storm_proto::link::{CloseReason, Link, LinkEvent};

use crate::{Handler, Session};

/// How much one read asks the socket for.
const READ_CHUNK: usize = 16 * 1024;

/// The writer's socket write timeout: how often a write blocked on a peer
/// that does not read looks whether the session was aborted meanwhile.
const WRITE_POLL: Duration = Duration::from_millis(200);

/// Runs one connection until it closes: the handler sees `on_connect`, its
/// messages, and exactly one `on_disconnect`. `initial` holds bytes that
/// arrived with the handshake. Returns once both threads are done.
///
/// A handler that panics aborts its connection; the panic is not carried
/// further (the panic hook has printed it), so a server keeps serving.
pub(crate) fn drive<H: Handler>(
    stream: TcpStream,
    session: &Session,
    handler: &H,
    initial: Bytes,
    write_batch: usize,
    close_timeout: Duration,
) {
    let link = session.link();
    let writer_stream = match prepare(&stream) {
        Ok(writer_stream) => writer_stream,
        Err(e) => {
            link.abort();
            handler.on_error(&e);
            return;
        }
    };
    let stop = AtomicBool::new(false);
    let (done_tx, done_rx) = mpsc::channel::<()>();
    thread::scope(|scope| {
        let writer = thread::Builder::new()
            .name("storm-writer".to_owned())
            .spawn_scoped(scope, || {
                let _done = done_tx;
                let result = write_loop(&writer_stream, link, write_batch, &stop);
                if result.is_err() {
                    // The peer is gone: tell the link so the handler hears it.
                    link.handle_eof();
                }
                // Also unblocks the reader, which then reports the close.
                let _ = writer_stream.shutdown(Shutdown::Both);
            });
        let writer = match writer {
            Ok(writer) => Some(writer),
            Err(e) => {
                link.abort();
                handler.on_error(&e);
                None
            }
        };
        let reported = catch_unwind(AssertUnwindSafe(|| {
            handler.on_connect(session);
            read_loop(&stream, session, handler, &initial)
        }));
        match reported {
            Ok(true) => {}
            Ok(false) => handler.on_disconnect(session, &CloseReason::Eof),
            Err(_) => link.abort(),
        }
        // Let the writer flush the close reply (or the graceful close),
        // bounded in time; then stop it whatever it is doing.
        if writer.is_some() {
            let _ = done_rx.recv_timeout(close_timeout);
        }
        stop.store(true, Ordering::Release);
        let _ = stream.shutdown(Shutdown::Both);
        if let Some(writer) = writer {
            writer.thread().unpark();
            let _ = writer.join();
        }
    });
}

/// Socket settings for the connection's life, and the writer's handle.
fn prepare(stream: &TcpStream) -> io::Result<TcpStream> {
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(Some(WRITE_POLL))?;
    stream.try_clone()
}

/// Reads, feeds the link, runs the handler and the link's timer. Returns
/// `true` once the handler has seen `on_disconnect`; `false` if the
/// transport ended and the link had nothing more to say (not expected,
/// but the reader must never spin on a closed socket).
fn read_loop<H: Handler>(
    mut stream: &TcpStream,
    session: &Session,
    handler: &H,
    initial: &[u8],
) -> bool {
    let link = session.link();
    if !initial.is_empty() {
        link.handle_input(Instant::now(), initial);
    }
    let mut buf = vec![0u8; READ_CHUNK];
    let mut eof = false;
    loop {
        if dispatch(session, handler) {
            return true;
        }
        if eof {
            return false;
        }
        let now = Instant::now();
        let timeout = match link.poll_timeout() {
            Some(deadline) if deadline <= now => {
                link.handle_timeout(now);
                continue;
            }
            Some(deadline) => Some(deadline - now),
            None => None,
        };
        if stream.set_read_timeout(timeout).is_err() {
            link.handle_eof();
            eof = true;
            continue;
        }
        match stream.read(&mut buf) {
            Ok(0) => {
                link.handle_eof();
                eof = true;
            }
            Ok(n) => link.handle_input(Instant::now(), buf.get(..n).unwrap_or_default()),
            // The timer is looked at on the next turn.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => {
                link.handle_eof();
                eof = true;
            }
        }
    }
}

/// Hands the link's events to the handler, in order. `true` once the
/// connection closed (and the handler heard it).
fn dispatch<H: Handler>(session: &Session, handler: &H) -> bool {
    while let Some(event) = session.link().poll_event(Instant::now()) {
        match event {
            LinkEvent::Message(message) => handler.on_message(session, message),
            LinkEvent::Closed(reason) => {
                handler.on_disconnect(session, &reason);
                return true;
            }
            _ => {}
        }
    }
    false
}

/// Drains the session's outbox through the link and writes it, many
/// messages per vectored write. Returns when the link says to close, or
/// when told to stop.
fn write_loop(
    mut stream: &TcpStream,
    link: &Link,
    write_batch: usize,
    stop: &AtomicBool,
) -> io::Result<()> {
    let waker = thread_waker(thread::current());
    let mut bufs: Vec<Bytes> = Vec::new();
    loop {
        if stop.load(Ordering::Acquire) {
            return Ok(());
        }
        // Registered before polling: a message queued after the poll
        // unparks us, and an unpark before `park` makes it return at once.
        link.session().register_waker(&waker);
        let transmit = link.poll_transmit(Instant::now(), &mut bufs, write_batch);
        if transmit.bytes == 0 && !transmit.close {
            match link.poll_timeout() {
                None => thread::park(),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        link.handle_timeout(now);
                    } else {
                        thread::park_timeout(deadline - now);
                    }
                }
            }
            continue;
        }
        write_all(&mut stream, &mut bufs, link, stop)?;
        if transmit.close {
            return Ok(());
        }
    }
}

/// Writes every buffer, in order, with as few syscalls as the socket
/// allows. A write blocked on a peer that does not read gives up when the
/// session is aborted or the connection is stopped.
fn write_all(
    stream: &mut &TcpStream,
    bufs: &mut Vec<Bytes>,
    link: &Link,
    stop: &AtomicBool,
) -> io::Result<()> {
    let mut first = 0;
    while first < bufs.len() {
        let slices: Vec<IoSlice<'_>> = bufs
            .get(first..)
            .unwrap_or_default()
            .iter()
            .take(64)
            .map(|b| IoSlice::new(b))
            .collect();
        let mut written = match stream.write_vectored(&slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                if stop.load(Ordering::Acquire)
                    || link.session().close_request() == Some(CloseKind::Abort)
                {
                    bufs.clear();
                    return Err(io::ErrorKind::ConnectionAborted.into());
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        while written > 0 {
            let Some(head) = bufs.get_mut(first) else {
                break;
            };
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
