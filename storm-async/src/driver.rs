//! The per-connection loop: the only place an adapter touches a socket
//! after the handshake.
//!
//! One task per connection polls two futures, the reader first: the reader
//! (socket → link → handler, and the link's timer; it does not read while
//! [`LinkDriver::poll_input_ready`] holds it back) and the writer (outbox →
//! one vectored write of up to 64 buffers → flush). The writer wakes when
//! the session's outbox waker fires; replies sent from the read path are
//! written in the same poll, without a wake-up.
//!
//! The task owns the connection's [`LinkDriver`]. Its two futures take
//! turns with it behind a mutex that is never contended (they run in one
//! task, one at a time; the mutex is there because the task must be
//! `Send`), each for a few calls, never across an `await`.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};

use storm_host::link::{CloseReason, LinkDriver, LinkEvent};

use crate::io::poll_read_with;
#[cfg(doc)]
use crate::runtime::Stream;
use crate::runtime::{PollRead, PollWrite, Runtime};
use crate::sync::{lock, sleep_until, timeout};
use crate::{Handler, Session};

/// Buffers per vectored write: the usual `IOV_MAX` is 1024; 64 already
/// gathers a 64 KiB batch of small messages in one call.
const MAX_SLICES: usize = 64;

/// Reads what the stream has and feeds it to `link`; `Ok(0)` at end of
/// stream. A large WebSocket frame is read straight into the link's input
/// buffer; everything else through the thread's buffer.
fn poll_read_into<S: PollRead>(
    reader: &mut S,
    cx: &mut Context<'_>,
    link: &mut LinkDriver,
) -> Poll<io::Result<usize>> {
    if let Some(mut room) = link.input_buffer() {
        let read = reader.poll_read_buf(cx, &mut room);
        if let Poll::Ready(Ok(n)) = read {
            if n > 0 {
                link.input_filled(Instant::now(), n);
            }
        }
        return read;
    }
    poll_read_with(reader, cx, usize::MAX, |bytes| {
        if !bytes.is_empty() {
            link.handle_input(Instant::now(), bytes);
        }
        bytes.len()
    })
}

/// Runs one connection until it closes: the handler sees `on_connect`, its
/// messages, and exactly one `on_disconnect`. `initial` holds bytes that
/// arrived with the handshake; the link takes them before the future is
/// made, so the task never stores them.
///
/// Takes the stream already [split](Stream::split): a TLS stream is large,
/// and split (into shared halves) before any `await`, it is never stored in
/// the connection task itself.
///
/// These functions return `async move` blocks instead of being `async fn`s:
/// an `async fn` keeps each argument twice in its future (as the argument
/// and as the local it is moved into), and these futures make up most of
/// every idle connection's memory.
pub(crate) fn drive<'a, R, Rd, Wr, H>(
    (reader, writer): (Rd, Wr),
    session: Session,
    link: Box<LinkDriver>,
    handler: &'a H,
    initial: Bytes,
    write_batch: usize,
    close_timeout: Duration,
) -> impl Future<Output = ()> + 'a
where
    R: Runtime,
    Rd: PollRead + 'a,
    Wr: PollWrite + 'a,
    H: Handler,
{
    let link = Mutex::new(link);
    if !initial.is_empty() {
        lock(&link).handle_input(Instant::now(), &initial);
    }
    drop(initial);
    async move {
        let session = &session;
        let link = &link;
        handler.on_connect(session).await;
        // Set by the writer when it changed the link's deadline; both loops
        // run in this one task, so the writer wakes the task and the reader
        // re-arms.
        let rearm = AtomicBool::new(false);
        let disconnected = AtomicBool::new(false);
        let mut write = pin!(write_loop(writer, session, link, &rearm, write_batch));
        // The reader lives in this block only: what runs after it (the
        // close timeout, the last dispatch) reuses its space in the task.
        let finished = {
            let mut read = pin!(read_loop::<R, _, _>(
                reader,
                session,
                link,
                handler,
                &rearm,
                &disconnected
            ));
            // The reader first, then the writer, in every poll of the task:
            // replies the handler sends from the read path are written in
            // the same poll. The writer's waker is unregistered while the
            // reader runs (the writer registers it again before it sleeps),
            // so those sends do not wake the task for a second poll.
            poll_fn(|cx| {
                session.outbox().unregister_waker();
                if let Poll::Ready(()) = read.as_mut().poll(cx) {
                    return Poll::Ready(None);
                }
                write.as_mut().poll(cx).map(Some)
            })
            .await
        };
        match finished {
            Some(result) => {
                if result.is_err() {
                    // The peer is gone: tell the link so the handler hears it.
                    lock(link).handle_eof();
                }
                // The writer closed the socket (an abort, a finished close):
                // hand over what the link still has, its Closed event last.
                dispatch(session, link, handler, &disconnected).await;
            }
            None => {
                // The link is closed: let the writer flush the close reply
                // (or the graceful close), bounded in time.
                let _ = timeout::<R, _>(close_timeout, write).await;
            }
        }
        if !disconnected.load(Ordering::Relaxed) {
            handler.on_disconnect(session, &CloseReason::Eof).await;
        }
    }
}

/// Reads, feeds the link, runs the handler; also runs the link's timer.
/// Returns once the link reported `Closed`.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice (see `drive`)"
)]
fn read_loop<'a, R, S, H>(
    mut reader: S,
    session: &'a Session,
    link: &'a Mutex<Box<LinkDriver>>,
    handler: &'a H,
    rearm: &'a AtomicBool,
    disconnected: &'a AtomicBool,
) -> impl Future<Output = ()> + 'a
where
    R: Runtime,
    S: PollRead + 'a,
    H: Handler,
{
    async move {
        // One timer, replaced only when the link's deadline moves (or it
        // fired): most reads leave the deadline alone, and re-registering
        // a timer costs the runtime's timer lock twice.
        let mut armed = lock(link).poll_timeout();
        let mut timer = pin!(sleep_until::<R>(armed));
        let mut fired = false;
        loop {
            if !dispatch(session, link, handler, disconnected).await {
                return;
            }
            let deadline = lock(link).poll_timeout();
            if fired || deadline != armed {
                armed = deadline;
                fired = false;
                timer.set(sleep_until::<R>(armed));
            }
            poll_fn(|cx| {
                let mut link = lock(link);
                // Not while the peer's pongs wait for the writer: its
                // progress wakes the task.
                if link.poll_input_ready(cx).is_ready() {
                    if let Poll::Ready(read) = poll_read_into(&mut reader, cx, &mut link) {
                        if matches!(read, Ok(0) | Err(_)) {
                            link.handle_eof();
                        }
                        return Poll::Ready(());
                    }
                }
                if timer.as_mut().poll(cx).is_ready() {
                    fired = true;
                    link.handle_timeout(Instant::now());
                    return Poll::Ready(());
                }
                // The writer changed the deadline (a graceful close began).
                if rearm.swap(false, Ordering::Relaxed) {
                    return Poll::Ready(());
                }
                Poll::Pending
            })
            .await;
        }
    }
}

/// Hands the link's events to the handler, in order. `false` once the
/// connection closed.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice (see `drive`)"
)]
fn dispatch<'a, H: Handler>(
    session: &'a Session,
    link: &'a Mutex<Box<LinkDriver>>,
    handler: &'a H,
    disconnected: &'a AtomicBool,
) -> impl Future<Output = bool> + 'a {
    async move {
        // One clock read per batch: the events were read at about this time.
        let now = Instant::now();
        loop {
            // Only the message outlives this match: the event itself is not
            // kept across the handler's await.
            let event = lock(link).poll_event(now);
            let message = match event {
                None => break,
                Some(LinkEvent::Message(message)) => message,
                Some(LinkEvent::Closed(reason)) => {
                    disconnected.store(true, Ordering::Relaxed);
                    handler.on_disconnect(session, &reason).await;
                    return false;
                }
                Some(_) => continue,
            };
            handler.on_message(session, message).await;
        }
        !disconnected.load(Ordering::Relaxed)
    }
}

/// Drains the session's outbox through the link and writes it, many
/// messages per vectored write. Returns when the link says to close.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice (see `drive`)"
)]
fn write_loop<'a, W: PollWrite + 'a>(
    mut writer: W,
    session: &'a Session,
    link: &'a Mutex<Box<LinkDriver>>,
    rearm: &'a AtomicBool,
    write_batch: usize,
) -> impl Future<Output = io::Result<()>> + 'a {
    async move {
        let mut bufs: Vec<Bytes> = Vec::new();
        loop {
            let transmit = poll_fn(|cx| {
                session.outbox().register_waker(cx.waker());
                let transmit = lock(link).poll_transmit(Instant::now(), &mut bufs, write_batch);
                if transmit.timer_changed {
                    // The reader runs the timer: wake the task so that it
                    // re-arms.
                    rearm.store(true, Ordering::Relaxed);
                    cx.waker().wake_by_ref();
                }
                if transmit.bytes == 0 && !transmit.close {
                    if transmit.release {
                        // Idle a while: the link returned its buffers; so
                        // does the writer.
                        bufs = Vec::new();
                    }
                    return Poll::Pending;
                }
                Poll::Ready(transmit)
            })
            .await;
            write_all(&mut writer, &mut bufs).await?;
            // A TLS stream can accept a write and keep the records it made
            // until the next write or flush: flush before waiting for more
            // (a no-op on a plain socket).
            poll_fn(|cx| writer.poll_flush(cx)).await?;
            if transmit.close {
                let _ = poll_fn(|cx| writer.poll_close(cx)).await;
                return Ok(());
            }
        }
    }
}

/// Writes every buffer, in order, with as few syscalls as the socket allows.
async fn write_all<W: PollWrite>(writer: &mut W, bufs: &mut Vec<Bytes>) -> io::Result<()> {
    let mut first = 0;
    while first < bufs.len() {
        let written = poll_fn(|cx| {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let pending = bufs.get(first..).unwrap_or_default();
            let count = pending.len().min(MAX_SLICES);
            for (slice, buf) in slices.iter_mut().zip(pending) {
                *slice = IoSlice::new(buf);
            }
            writer.poll_write_vectored(cx, slices.get(..count).unwrap_or_default())
        })
        .await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let mut written = written;
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
