//! A WebSocket as a [`Stream`] of [`Message`]s and a [`Sink`] of them,
//! over any byte stream: [`WebSocketStream`].
//!
//! This is the lower-level API beside the servers and clients: no hub, no
//! handler, no reconnects; the application reads with `next()` and writes
//! with `send()` (futures-util's `StreamExt` and `SinkExt`). Underneath is
//! the same [`Link`] as every Storm connection: the same limits (a message
//! over [`ws::Config::max_message_size`] closes with 1009),
//! permessage-deflate, auto-pong, heartbeat and close handshake.
//!
//! storm-tokio and storm-smol name it for their runtime and I/O traits
//! (`storm_tokio::WebSocketStream<S>` over any tokio
//! `AsyncRead + AsyncWrite`); the machine-driving logic is here, once,
//! over storm-async's [`PollRead`] and [`PollWrite`].
//!
//! # Driving
//!
//! The socket makes progress only while it is polled: [`next`] reads,
//! answers pings, sends heartbeat pings, finishes the close handshake and
//! runs the timers; `send`/`flush` write. Keep a task reading (`next()`
//! until `None`) for as long as the connection lives, as with any
//! WebSocket library.
//!
//! # Cancel safety
//!
//! - `next()` (polling [`Stream::poll_next`]) is cancel-safe: a message is
//!   taken from the link only in the poll that returns it; a cancelled
//!   `next()` loses nothing, and the bytes it read stay buffered.
//! - `send(message)` (`SinkExt::send`: `poll_ready`, `start_send`,
//!   `poll_flush`) is not: once `start_send` ran the message is framed and
//!   will be written by a later flush, even if the `send` future is
//!   dropped before its flush completed. Dropping `send` never loses a
//!   message that was framed, nor writes half of one.
//! - [`close`](WebSocketStream::close) may be cancelled; the close frame
//!   stays queued and goes out with the next flush.
//!
//! # Panics
//!
//! None of its own: no method of [`WebSocketStream`], its halves or their
//! `Stream` and `Sink` impls panics, whatever the peer sends or the socket
//! does (errors are [`WsStreamError`]s). Polled after its end, `next()`
//! returns `None`; `start_send` without `poll_ready` queues the message
//! past [`StreamConfig::write_limit`] rather than panicking; a split half
//! whose task panicked while it held the socket leaves the other half
//! usable (the lock ignores poisoning). A panic of the byte stream `S`
//! itself, or of the runtime's timer (tokio's panics when polled outside
//! a tokio runtime), comes out of the poll that called it.
//!
//! # Bounded memory
//!
//! Framed output waits for the socket up to
//! [`StreamConfig::write_limit`] bytes: `poll_ready` waits (backpressure)
//! while more is pending, and the reader stops reading while its own output
//! (pongs, close replies) cannot be written, so a peer that pings but does
//! not read cannot grow the queue. Input is bounded by the WebSocket
//! limits in [`StreamConfig::ws`].
//!
//! # Splitting
//!
//! [`WebSocketStream::split`] gives a reader and a writer that can live in
//! different tasks; they share the socket behind a mutex that is held only
//! for one poll, never across an `.await`. futures-util's
//! `StreamExt::split` works as well. Either way each half keeps its own
//! waker for the socket's write readiness, so a reader waiting to send a
//! pong and a writer waiting to send a message both wake.
//!
//! [`next`]: Stream::poll_next
//! [`Stream`]: futures_core::Stream
//! [`Sink`]: futures_sink::Sink
//! [`Link`]: storm_proto::link::Link
//! [`ws::Config::max_message_size`]: storm_proto::ws::Config::max_message_size

use std::any::Any;
use std::fmt;
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use futures_core::Stream;
use futures_sink::Sink;

use storm_host::options::{ClientOptions, ServerOptions, TlsClientOptions, WsOptions};
pub use storm_host::session::ClientError;
use storm_host::setup::{Answer, ClientTarget, Decision, Opened, ServerSetup, UpgradeInfo};
use storm_proto::Message;
use storm_proto::link::{CloseReason, Link, LinkConfig, LinkEvent, Protocol};
use storm_proto::ws::CloseCode;

use crate::io::{Either, poll_read_with};
use crate::runtime::{PollRead, PollWrite, Runtime};
use crate::server::{UpgradeHook, upgrade_hook};
use crate::sync::{lock, timeout};

/// How a [`WebSocketStream`] behaves. Build it with [`StreamConfig::new`]
/// (the defaults) and set the fields you need; more fields may come in
/// later versions.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StreamConfig {
    /// Frame and message limits, auto-pong, permessage-deflate (accepted by
    /// a server, offered by a client; default off) and subprotocols.
    pub ws: WsOptions,
    /// Heartbeat (a ping every 30 s, dead after 3 missed pongs), close
    /// timeout (5 s) and idle buffer release. Default
    /// [`LinkConfig::default`].
    pub link: LinkConfig,
    /// Most bytes of framed output that wait for the socket before
    /// `poll_ready` (so `send`) waits: backpressure. Default 64 KiB.
    pub write_limit: usize,
    /// Time the WebSocket handshake has to finish (`accept`, `connect`,
    /// `client_async`). Default 10 s.
    pub handshake_timeout: Duration,
    /// Extra request headers a client sends (e.g. `Authorization`).
    /// Default none.
    pub headers: Vec<(String, String)>,
    /// TLS for [`connect`](WebSocketStream::connect) to a `wss://` URL
    /// (which CAs to trust, a client certificate, the server name).
    /// Default `None`: the public web roots. `client_async` adds no TLS:
    /// its stream is whatever you give it.
    pub tls: Option<TlsClientOptions>,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            ws: WsOptions::default(),
            link: LinkConfig::default(),
            write_limit: 64 * 1024,
            handshake_timeout: Duration::from_secs(10),
            headers: Vec::new(),
            tls: None,
        }
    }
}

impl StreamConfig {
    /// The defaults (see each field).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// These WebSocket options (limits, deflate, subprotocols).
    #[must_use]
    pub fn with_ws(mut self, ws: WsOptions) -> Self {
        self.ws = ws;
        self
    }

    /// This heartbeat and close timeout.
    #[must_use]
    pub fn with_link(mut self, link: LinkConfig) -> Self {
        self.link = link;
        self
    }
}

/// What went wrong on a [`WebSocketStream`].
#[derive(Debug)]
#[non_exhaustive]
pub enum WsStreamError {
    /// The byte stream failed; the connection is over.
    Io(io::Error),
    /// The connection ended abnormally: the peer broke the protocol or
    /// sent a message over the limit (the close frame with the code, such
    /// as 1002 or 1009, was sent), stopped answering pings, or went idle.
    /// Reported once by `next()`, which then returns `None`. An ordinary
    /// close (a close frame, end of stream) is no error: `next()` returns
    /// `None`, and [`WebSocketStream::close_reason`] says why.
    Closed(CloseReason),
    /// A message was sent after the close handshake began.
    AlreadyClosed,
}

impl fmt::Display for WsStreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "I/O: {e}"),
            Self::Closed(reason) => write!(f, "connection closed: {reason}"),
            Self::AlreadyClosed => f.write_str("the connection is closing: nothing more is sent"),
        }
    }
}

impl std::error::Error for WsStreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for WsStreamError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// A client's byte stream from [`WebSocketStream::connect`]: plain TCP
/// ([`Either::A`]) or TLS ([`Either::B`]) on runtime `R`.
pub type ClientStream<R> = Either<<R as Runtime>::Tcp, <R as Runtime>::TlsClient>;

/// Most buffers one vectored write takes.
const MAX_SLICES: usize = 64;

/// Which half polls the socket's write side (each keeps its own waker).
#[derive(Clone, Copy)]
enum Side {
    Reader = 0,
    Writer = 1,
}

/// A WebSocket over the byte stream `S`, on runtime `R` (its timer runs
/// the heartbeat and the close timeout): a [`Stream`] of
/// `Result<Message, WsStreamError>` and a [`Sink`] of [`Message`]. See the
/// [module docs](self) for driving, cancel safety and splitting.
///
/// storm-tokio and storm-smol name it `WebSocketStream<S>` for their
/// streams; use those.
pub struct WebSocketStream<R, S> {
    core: Core<S>,
    runtime: PhantomData<fn() -> R>,
}

impl<R, S> fmt::Debug for WebSocketStream<R, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketStream")
            .field("link", &self.core.link)
            .finish_non_exhaustive()
    }
}

/// The state both halves share: the link, the socket and the output
/// waiting for it.
struct Core<S> {
    io: S,
    link: Link,
    /// Framed output taken from the link, not yet written; `pending[first..]`
    /// is what is left.
    pending: Vec<Bytes>,
    first: usize,
    pending_len: usize,
    write_limit: usize,
    /// The link said to close the socket after the pending output.
    shutdown_due: bool,
    /// The socket's write side was shut down.
    shut: bool,
    /// The timer: when it is set for, and the runtime's sleep.
    timer: Option<(Instant, Sleep)>,
    /// Makes a sleep on the runtime (`R::sleep_until`).
    sleep: fn(Instant) -> Sleep,
    /// Why the link closed, once it did.
    closed: Option<CloseReason>,
    /// How long the last output (a close reply) may wait for the socket
    /// once the link closed ([`LinkConfig::close_timeout`]), and until
    /// when it does.
    close_timeout: Duration,
    linger: Option<Instant>,
    /// `next()` reported the end; it returns `None` from now on.
    ended: bool,
    /// This side began the close handshake.
    closing: bool,
    /// The subprotocol the handshake agreed on.
    subprotocol: Option<String>,
    /// What the server's upgrade hook attached (a server), or the
    /// server's [`UpgradeResponse`](storm_host::setup::UpgradeResponse)
    /// (a client).
    attached: Option<Arc<dyn Any + Send + Sync>>,
    /// Each half's waker while it waits for the socket to take output.
    write_wakers: [Option<Waker>; 2],
    /// The reader's waker while it waits for input or the timer (a close
    /// from the writer moves the timer).
    read_waker: Option<Waker>,
}

/// A sleep on the stream's runtime.
type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

fn sleep_on<R: Runtime>(deadline: Instant) -> Sleep {
    Box::pin(R::sleep_until(deadline))
}

impl<S: PollRead + PollWrite> Core<S> {
    fn new<R: Runtime>(
        io: S,
        protocol: Protocol,
        initial: &[u8],
        config: &StreamConfig,
    ) -> io::Result<Self> {
        let now = Instant::now();
        let mut link = Link::new(protocol, &config.link, now)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        if !initial.is_empty() {
            link.handle_input(now, initial);
        }
        Ok(Self {
            io,
            link,
            pending: Vec::new(),
            first: 0,
            pending_len: 0,
            write_limit: config.write_limit.max(1),
            shutdown_due: false,
            shut: false,
            timer: None,
            sleep: sleep_on::<R>,
            closed: None,
            close_timeout: config.link.close_timeout,
            linger: None,
            ended: false,
            closing: false,
            subprotocol: None,
            attached: None,
            write_wakers: [None, None],
            read_waker: None,
        })
    }

    /// Bytes framed and not yet written, in the link and here.
    fn backlog(&self) -> usize {
        self.pending_len + self.link.transmit_len()
    }

    /// Writes everything framed so far (then flushes, and shuts the write
    /// side down when the link says so). `Pending` keeps `side`'s waker;
    /// any progress wakes the other half's.
    fn poll_write_out(&mut self, cx: &mut Context<'_>, side: Side) -> Poll<io::Result<()>> {
        loop {
            if self.link.is_aborted() && self.pending_len > 0 {
                // An abort (a dead or idle peer) writes nothing more.
                self.pending.clear();
                self.first = 0;
                self.pending_len = 0;
            }
            let transmit = self.link.poll_transmit(Instant::now(), &mut self.pending);
            self.pending_len += transmit.bytes;
            self.shutdown_due |= transmit.close;
            if transmit.timer_changed {
                wake(&mut self.read_waker);
            }
            if self.first == self.pending.len() {
                self.pending.clear();
                self.first = 0;
                if transmit.release {
                    self.pending = Vec::new();
                }
                break;
            }
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut count = 0;
            for (slice, bytes) in slices.iter_mut().zip(&self.pending[self.first..]) {
                *slice = IoSlice::new(bytes);
                count += 1;
            }
            let n = match self.io.poll_write_vectored(cx, &slices[..count]) {
                Poll::Pending => {
                    self.write_wakers[side as usize] = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                Poll::Ready(result) => result?,
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(n);
            for waker in &mut self.write_wakers {
                wake(waker);
            }
        }
        if self.shutdown_due && !self.shut {
            if self.io.poll_close(cx)?.is_pending() {
                self.write_wakers[side as usize] = Some(cx.waker().clone());
                return Poll::Pending;
            }
            self.shut = true;
            wake(&mut self.read_waker);
            return Poll::Ready(Ok(()));
        }
        if self.shut {
            return Poll::Ready(Ok(()));
        }
        self.io.poll_flush(cx)
    }

    /// `n` bytes of the pending output were written.
    fn advance(&mut self, mut n: usize) {
        self.pending_len -= n;
        while n > 0 {
            let Some(front) = self.pending.get_mut(self.first) else {
                break;
            };
            if n < front.len() {
                front.advance(n);
                break;
            }
            n -= front.len();
            self.first += 1;
        }
    }

    /// Whether the timer fired (armed for `deadline`).
    fn poll_timer(&mut self, cx: &mut Context<'_>, deadline: Option<Instant>) -> bool {
        let Some(deadline) = deadline else {
            self.timer = None;
            return false;
        };
        // A timer set for later than the deadline is re-armed; one set
        // earlier fires, finds nothing due and is re-armed then.
        if self.timer.as_ref().is_none_or(|(at, _)| *at > deadline) {
            self.timer = Some((deadline, (self.sleep)(deadline)));
        }
        let fired = self
            .timer
            .as_mut()
            .is_some_and(|(_, sleep)| sleep.as_mut().poll(cx).is_ready());
        if fired {
            self.timer = None;
        }
        fired
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, WsStreamError>>> {
        loop {
            if self.ended {
                return Poll::Ready(None);
            }
            let now = Instant::now();
            if let Some(event) = self.link.poll_event(now) {
                match event {
                    LinkEvent::Message(message) => return Poll::Ready(Some(Ok(message))),
                    // Admitted at once: the reader reads no more while the
                    // output it causes waits over the limit.
                    LinkEvent::Ping(_) if self.link.waiting_pong().is_some() => {
                        self.link.queue_pong();
                    }
                    LinkEvent::Closed(reason) => {
                        self.closed = Some(reason);
                        self.linger = now.checked_add(self.close_timeout);
                    }
                    _ => {}
                }
                continue;
            }
            let written = match self.poll_write_out(cx, Side::Reader) {
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(self.fail(e)))),
                Poll::Ready(Ok(())) => true,
                Poll::Pending => false,
            };
            if self.closed.is_some() {
                // The close reply (or our close frame) goes out, and the
                // socket's write side shuts down when the link says so;
                // then the stream ends.
                if !written && !self.poll_timer(cx, self.linger) {
                    return Poll::Pending;
                }
                // Written, or the peer took nothing for `close_timeout`.
                self.ended = true;
                return Poll::Ready(match &self.closed {
                    Some(reason) if !reason.is_normal() => {
                        Some(Err(WsStreamError::Closed(reason.clone())))
                    }
                    _ => None,
                });
            }
            if !written && self.backlog() >= self.write_limit {
                // Our own output (pongs, close replies) waits: read no more.
                return Poll::Pending;
            }
            if self.poll_timer(cx, self.link.poll_timeout()) {
                self.link.handle_timeout(Instant::now());
                continue;
            }
            if self.link.is_input_done() {
                self.read_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            // A large frame's rest is read straight into the link's input
            // buffer; anything else through the thread's read buffer.
            let read = match self.link.input_buffer() {
                Some(mut room) => match self.io.poll_read_buf(cx, &mut room) {
                    Poll::Ready(Ok(n)) => {
                        self.link.input_filled(now, n);
                        Poll::Ready(Ok(n))
                    }
                    other => other,
                },
                None => {
                    let link = &mut self.link;
                    poll_read_with(&mut self.io, cx, usize::MAX, |bytes| {
                        link.handle_input(now, bytes);
                        bytes.len()
                    })
                }
            };
            match read {
                Poll::Pending => {
                    self.read_waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(self.fail(e)))),
                Poll::Ready(Ok(0)) => self.link.handle_eof(),
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    /// The socket failed: the link aborts, and `next()` ends after this
    /// error.
    fn fail(&mut self, e: io::Error) -> WsStreamError {
        self.link.abort();
        self.ended = true;
        for waker in &mut self.write_wakers {
            wake(waker);
        }
        WsStreamError::Io(e)
    }

    fn check_open(&self) -> Result<(), WsStreamError> {
        if self.closing || self.closed.is_some() || self.link.is_closed() || self.ended {
            return Err(WsStreamError::AlreadyClosed);
        }
        Ok(())
    }

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsStreamError>> {
        self.check_open()?;
        while self.backlog() >= self.write_limit {
            std::task::ready!(self.poll_write_out(cx, Side::Writer))?;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(&mut self, message: &Message) -> Result<(), WsStreamError> {
        self.check_open()?;
        self.link.send(message);
        Ok(())
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsStreamError>> {
        self.poll_write_out(cx, Side::Writer)
            .map_err(WsStreamError::Io)
    }

    /// Begins the close handshake with `code` and `reason` (1000 and none
    /// when they cannot be sent); once only.
    fn start_close(&mut self, code: CloseCode, reason: &str) {
        if !self.closing {
            self.closing = true;
            self.link.close(Instant::now(), code, reason);
            // The close timeout moved the reader's timer.
            wake(&mut self.read_waker);
        }
    }
}

fn wake(waker: &mut Option<Waker>) {
    if let Some(waker) = waker.take() {
        waker.wake();
    }
}

impl<R: Runtime, S: PollRead + PollWrite> WebSocketStream<R, S> {
    /// A WebSocket already past its handshake, speaking `protocol` (a
    /// [`Protocol::WebSocket`]); `initial` holds bytes the peer sent after
    /// the handshake.
    ///
    /// # Errors
    ///
    /// [`InvalidInput`](io::ErrorKind::InvalidInput) for an invalid
    /// heartbeat configuration.
    pub fn from_upgraded(
        io: S,
        protocol: Protocol,
        initial: &[u8],
        config: &StreamConfig,
    ) -> io::Result<Self> {
        Ok(Self {
            core: Core::new::<R>(io, protocol, initial, config)?,
            runtime: PhantomData,
        })
    }

    /// A WebSocket past the handshake that made `opened` (its protocol,
    /// the bytes the peer sent after the handshake, the agreed
    /// subprotocol and what was attached; [`Answer::opened`] on a
    /// server).
    ///
    /// # Errors
    ///
    /// As [`from_upgraded`](Self::from_upgraded).
    pub fn from_opened(io: S, opened: Opened, config: &StreamConfig) -> io::Result<Self> {
        let mut stream = Self::from_upgraded(io, opened.protocol, &opened.leftover, config)?;
        stream.core.subprotocol = opened.subprotocol;
        stream.core.attached = opened.attached;
        Ok(stream)
    }

    /// The server side: reads the client's upgrade request from `io`,
    /// answers it (101, or a 400/403/426/431 refusal) and speaks WebSocket
    /// with `config`'s limits, deflate, subprotocols and allowed origins.
    /// The handshake has `config.handshake_timeout`.
    ///
    /// # Errors
    ///
    /// The refusal's reason (invalid input; permission denied for an
    /// origin not allowed), an I/O error, or
    /// [`TimedOut`](io::ErrorKind::TimedOut).
    pub async fn accept(io: S, config: &StreamConfig) -> io::Result<Self> {
        Self::accept_with(io, config, None).await
    }

    /// [`accept`](Self::accept) with the application deciding on the
    /// request, as tokio-tungstenite's `accept_hdr_async` does: `hook` is
    /// an upgrade hook of the shape [`WsServer::on_upgrade`] takes (one
    /// function can serve both). It sees the request (method, path, query,
    /// headers, `Origin`, offered subprotocols and extensions) once it has
    /// passed the handshake's checks, and returns a [`Decision`]: accept
    /// (choosing a subprotocol, adding response headers, attaching a
    /// value, readable from the stream with
    /// [`subprotocol`](Self::subprotocol) and
    /// [`attached`](Self::attached)) or reject (the status, headers and
    /// body are sent, then this returns the refusal).
    ///
    /// The stream is any byte stream, so the request's
    /// [`remote_addr`](UpgradeInfo::remote_addr) is `0.0.0.0:0` and its
    /// [`tls`](UpgradeInfo::tls) `None`: a hook that needs them takes them
    /// from where the stream was accepted. The hook runs within
    /// `config.handshake_timeout`, which the request's reading shares; a
    /// hook still running then is dropped, nothing is answered, and the
    /// error is [`TimedOut`](io::ErrorKind::TimedOut).
    ///
    /// # Errors
    ///
    /// As [`accept`](Self::accept);
    /// [`PermissionDenied`](io::ErrorKind::PermissionDenied) when the hook
    /// rejected ("upgrade rejected with 403 by the application"), after
    /// its response was sent; [`InvalidInput`](io::ErrorKind::InvalidInput)
    /// after a `500` for a decision with a mistake (a header with CR or LF,
    /// a subprotocol the client did not offer).
    ///
    /// [`WsServer::on_upgrade`]: crate::WsServer::on_upgrade
    pub async fn accept_hdr<F, Fut>(io: S, config: &StreamConfig, hook: F) -> io::Result<Self>
    where
        F: Fn(UpgradeInfo) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Decision> + Send + 'static,
    {
        Self::accept_with(io, config, Some(upgrade_hook(hook))).await
    }

    /// The server side's handshake, decided by `hook` when there is one.
    async fn accept_with(
        mut io: S,
        config: &StreamConfig,
        hook: Option<UpgradeHook>,
    ) -> io::Result<Self> {
        let setup = server_setup(config)?;
        let unknown = SocketAddr::from(([0, 0, 0, 0], 0));
        let opened = {
            let hook = hook.as_ref().map(|hook| (hook, unknown, None));
            let handshake = pin!(crate::server::open_upgrade(&setup, &mut io, hook));
            timeout::<R, _>(config.handshake_timeout, handshake)
                .await
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::TimedOut, "WebSocket handshake timed out")
                })??
        };
        Self::from_opened(io, opened, config)
    }

    /// The client side over a connected `io`: sends the upgrade request
    /// for `url` (`ws://` or `wss://`: `io` is already whatever the URL
    /// needs, no TLS is added), with `config`'s headers, deflate offer and
    /// subprotocols, and reads the response. The handshake has
    /// `config.handshake_timeout`.
    ///
    /// # Errors
    ///
    /// [`ClientError::Url`] for a bad URL, [`ClientError::Handshake`] when
    /// the server refused, [`ClientError::Io`], [`ClientError::Timeout`].
    pub async fn client_async(
        url: &str,
        mut io: S,
        config: &StreamConfig,
    ) -> Result<Self, ClientError> {
        let options = client_options(config);
        let target = ClientTarget::ws(&plain_url(url), &options, config.ws.clone())?;
        let opened = {
            let handshake = pin!(crate::client::open(&mut io, &target, &options));
            timeout::<R, _>(config.handshake_timeout, handshake)
                .await
                .ok_or(ClientError::Timeout)??
        };
        Ok(Self::from_opened(io, opened, config)?)
    }
}

impl<R: Runtime> WebSocketStream<R, ClientStream<R>> {
    /// Connects to `url` (`ws://`, or `wss://` with
    /// [`StreamConfig::tls`], by default trusting the web roots) on
    /// runtime `R` and runs the client handshake (see
    /// [`client_async`](Self::client_async)); the TCP connect, TLS and
    /// WebSocket handshakes together have `config.handshake_timeout`.
    ///
    /// # Errors
    ///
    /// As [`client_async`](Self::client_async), and [`ClientError::Tls`].
    pub async fn connect(url: &str, config: &StreamConfig) -> Result<Self, ClientError> {
        let mut options = client_options(config);
        options.tls = config.tls.clone();
        let target = ClientTarget::ws(url, &options, config.ws.clone())?;
        let attempt = async {
            let (tcp, _): (R::Tcp, SocketAddr) =
                crate::client::connect_tcp::<R>(&target.authority()).await?;
            R::socket(&tcp).set_tcp_nodelay(true)?;
            let mut io: ClientStream<R> = match target.tls() {
                None => Either::A(tcp),
                Some(tls) => Either::B(
                    R::tls_connect(tls.clone(), tcp)
                        .await
                        .map_err(ClientError::Tls)?,
                ),
            };
            let opened = crate::client::open(&mut io, &target, &options).await?;
            Ok::<_, ClientError>(Self::from_opened(io, opened, config)?)
        };
        timeout::<R, _>(config.handshake_timeout, pin!(attempt))
            .await
            .ok_or(ClientError::Timeout)?
    }
}

/// A server's setup for `config`: its WebSocket options and handshake
/// timeout.
fn server_setup(config: &StreamConfig) -> io::Result<ServerSetup> {
    let options = ServerOptions::default().with_handshake_timeout(config.handshake_timeout);
    ServerSetup::ws(&options, config.ws.clone())
}

/// The server's answer to an upgrade request another HTTP server (hyper,
/// axum) read, for a [`WebSocketStream`]: `head` is the request's header
/// block as HTTP/1.1 bytes (request line, headers, blank line); the
/// limits, permessage-deflate and subprotocols are `config.ws`'s (its
/// `allowed_origins` included: 403); `decision` is the application's
/// ([`Decision::accept`] for the defaults). Send [`Answer::response`];
/// once the HTTP server hands the connection over, make the socket with
/// [`WebSocketStream::from_opened`] from [`Answer::opened`].
///
/// # Errors
///
/// [`InvalidInput`](io::ErrorKind::InvalidInput), with nothing to send,
/// for invalid options or a `head` that is not a whole header block. A
/// refused request is no error here: its refusal is the answer's
/// response, and `opened` says why.
pub fn answer_upgrade(
    head: &[u8],
    config: &StreamConfig,
    decision: Decision,
) -> io::Result<Answer> {
    let setup = server_setup(config)?;
    Ok(match crate::server::read_head(&setup, head)? {
        Ok(request) => request.decide(decision),
        Err(refusal) => refusal,
    })
}

/// A client's options as the shared setup takes them.
fn client_options(config: &StreamConfig) -> ClientOptions {
    let mut options = ClientOptions::default().with_connect_timeout(config.handshake_timeout);
    options.headers = config.headers.clone();
    options
}

/// `url` as a `ws://` URL: `client_async` is given its stream, TLS or not,
/// so a `wss://` URL must not make the setup build a TLS configuration.
fn plain_url(url: &str) -> String {
    match url.get(..6) {
        Some(scheme) if scheme.eq_ignore_ascii_case("wss://") => format!("ws://{}", &url[6..]),
        _ => url.to_owned(),
    }
}

impl<R, S: PollRead + PollWrite> WebSocketStream<R, S> {
    /// Begins the close handshake with `code` and `reason` (at most 123
    /// bytes; 1000 and no reason when they cannot be sent) and writes the
    /// close frame. Keep reading: `next()` returns `None` once the peer
    /// answered (or `close_timeout` passed, the socket then closed).
    /// Cancel-safe: the close frame stays queued.
    ///
    /// # Errors
    ///
    /// The socket failed.
    pub async fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), WsStreamError> {
        self.core.start_close(code, reason);
        poll_fn(|cx| self.core.poll_flush(cx)).await
    }

    /// Why the connection closed, once `next()` saw it end: the peer's
    /// close frame ([`CloseReason::Remote`]), end of stream, a local close
    /// that timed out, or the fault reported as [`WsStreamError::Closed`].
    #[must_use]
    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.core.closed.as_ref()
    }

    /// The subprotocol the handshake agreed on (`Sec-WebSocket-Protocol`
    /// of the `101`): on a server, the one the upgrade hook chose or the
    /// first of [`WsOptions::subprotocols`](storm_host::options::WsOptions)
    /// the client offered; on a client, the server's choice.
    #[must_use]
    pub fn subprotocol(&self) -> Option<&str> {
        self.core.subprotocol.as_deref()
    }

    /// What the handshake attached to this connection, if it is a `T`: on
    /// a server, the value the upgrade hook's decision attached
    /// ([`Decision::attach`]); on a client, the server's
    /// [`UpgradeResponse`](storm_host::setup::UpgradeResponse) (its
    /// subprotocol and every header of the `101`), as a client session
    /// carries it.
    #[must_use]
    pub fn attached<T: Any>(&self) -> Option<&T> {
        self.core.attached.as_deref()?.downcast_ref()
    }

    /// The byte stream (for its addresses, say). Reading or writing it
    /// directly breaks the connection.
    #[must_use]
    pub fn get_ref(&self) -> &S {
        &self.core.io
    }

    /// Splits into a reader and a writer for different tasks (see the
    /// [module docs](self#splitting)).
    #[must_use]
    pub fn split(self) -> (WebSocketReader<R, S>, WebSocketWriter<R, S>) {
        let shared = Arc::new(Mutex::new(self.core));
        (
            WebSocketReader {
                core: Arc::clone(&shared),
                runtime: PhantomData,
            },
            WebSocketWriter {
                core: shared,
                runtime: PhantomData,
            },
        )
    }
}

impl<R, S: PollRead + PollWrite> Stream for WebSocketStream<R, S> {
    type Item = Result<Message, WsStreamError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().core.poll_next(cx)
    }
}

impl<R, S: PollRead + PollWrite> Sink<Message> for WebSocketStream<R, S> {
    type Error = WsStreamError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().core.poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        self.get_mut().core.start_send(&item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().core.poll_flush(cx)
    }

    /// Begins the close handshake (1000) and writes the close frame; see
    /// [`WebSocketStream::close`].
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let core = &mut self.get_mut().core;
        core.start_close(CloseCode::NORMAL, "");
        core.poll_flush(cx)
    }
}

/// The reading half of a split [`WebSocketStream`]: a [`Stream`] of
/// messages. It also answers pings and runs the timers, so keep it polled.
pub struct WebSocketReader<R, S> {
    core: Arc<Mutex<Core<S>>>,
    runtime: PhantomData<fn() -> R>,
}

/// The writing half of a split [`WebSocketStream`]: a [`Sink`] of
/// messages, and [`close`](Self::close).
pub struct WebSocketWriter<R, S> {
    core: Arc<Mutex<Core<S>>>,
    runtime: PhantomData<fn() -> R>,
}

impl<R, S> fmt::Debug for WebSocketReader<R, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebSocketReader")
    }
}

impl<R, S> fmt::Debug for WebSocketWriter<R, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebSocketWriter")
    }
}

impl<R, S: PollRead + PollWrite> WebSocketReader<R, S> {
    /// See [`WebSocketStream::close_reason`].
    #[must_use]
    pub fn close_reason(&self) -> Option<CloseReason> {
        lock(&self.core).closed.clone()
    }
}

impl<R, S: PollRead + PollWrite> WebSocketWriter<R, S> {
    /// See [`WebSocketStream::close`].
    ///
    /// # Errors
    ///
    /// The socket failed.
    pub async fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), WsStreamError> {
        lock(&self.core).start_close(code, reason);
        poll_fn(|cx| lock(&self.core).poll_flush(cx)).await
    }
}

impl<R, S: PollRead + PollWrite> Stream for WebSocketReader<R, S> {
    type Item = Result<Message, WsStreamError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        lock(&self.core).poll_next(cx)
    }
}

impl<R, S: PollRead + PollWrite> Sink<Message> for WebSocketWriter<R, S> {
    type Error = WsStreamError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        lock(&self.core).poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        lock(&self.core).start_send(&item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        lock(&self.core).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let mut core = lock(&self.core);
        core.start_close(CloseCode::NORMAL, "");
        core.poll_flush(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::plain_url;

    #[test]
    fn client_async_takes_a_wss_url_as_its_plain_request() {
        assert_eq!(plain_url("wss://example.com/x"), "ws://example.com/x");
        assert_eq!(plain_url("WSS://example.com"), "ws://example.com");
        assert_eq!(plain_url("ws://example.com"), "ws://example.com");
        assert_eq!(plain_url("wss"), "wss");
    }
}
