//! The per-connection loop: the only place this adapter touches a socket
//! after the handshake.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::Notify;
use tokio::time::sleep_until;

use storm_proto::link::{CloseReason, LinkEvent};

use crate::{Handler, Session};

/// How much one read asks the socket for.
const READ_CHUNK: usize = 16 * 1024;

/// Runs one connection until it closes: the handler sees `on_connect`, its
/// messages, and exactly one `on_disconnect`. `initial` holds bytes that
/// arrived with the handshake.
pub(crate) async fn drive<S, H>(
    stream: S,
    session: Session,
    handler: &H,
    initial: Bytes,
    write_batch: usize,
    close_timeout: Duration,
) where
    S: AsyncRead + AsyncWrite + Send,
    H: Handler,
{
    let (reader, writer) = tokio::io::split(stream);
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
    mut reader: ReadHalf<R>,
    session: &Session,
    handler: &H,
    wakeup: &Notify,
    initial: Bytes,
    disconnected: &AtomicBool,
) where
    R: AsyncRead,
    H: Handler,
{
    let link = session.link();
    if !initial.is_empty() {
        link.handle_input(Instant::now(), &initial);
    }
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        if !dispatch(session, handler, disconnected).await {
            return;
        }
        let deadline = link.poll_timeout();
        tokio::select! {
            read = reader.read(&mut buf) => match read {
                Ok(0) | Err(_) => link.handle_eof(),
                Ok(n) => link.handle_input(Instant::now(), &buf[..n]),
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
    while let Some(event) = session.link().poll_event(Instant::now()) {
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
    mut writer: WriteHalf<W>,
    session: &Session,
    wakeup: &Notify,
    write_batch: usize,
) -> io::Result<()>
where
    W: AsyncWrite,
{
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
    writer: &mut WriteHalf<W>,
    bufs: &mut Vec<Bytes>,
) -> io::Result<()> {
    let mut first = 0;
    while first < bufs.len() {
        let slices: Vec<IoSlice<'_>> = bufs[first..]
            .iter()
            .take(64)
            .map(|b| IoSlice::new(b))
            .collect();
        let mut written = writer.write_vectored(&slices).await?;
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
