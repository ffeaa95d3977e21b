//! One live connection as the adapters drive it: a
//! [`storm_proto::link::Link`] (the protocol, heartbeat and close
//! handshake, a single-owner `&mut` machine) joined to the connection's
//! [`Outbox`] (in the hub, shared with anyone who sends to it) and
//! the [`MiddlewareChain`]. A [`LinkDriver`] is what the adapters (tokio,
//! smol, std threads) own per connection; the adapter only moves bytes:
//!
//! - **read path**: bytes from the socket → [`LinkDriver::handle_input`]
//!   (or [`LinkDriver::input_buffer`] then [`LinkDriver::input_filled`]),
//!   then [`LinkDriver::poll_event`] until `None`, each event to the
//!   application's handler; before each read,
//!   [`LinkDriver::poll_input_ready`] (a peer whose pings are answered
//!   faster than it reads the pongs is not read until they drain);
//! - **write path**: [`LinkDriver::poll_transmit`] frames what the outbox
//!   holds (and the protocol's own pongs, pings and close frames) into
//!   buffers for one vectored write, and says when to close the socket;
//! - **timer**: sleep until [`LinkDriver::poll_timeout`], then
//!   [`LinkDriver::handle_timeout`] and drain [`LinkDriver::poll_event`].
//!
//! Every method takes `&mut self`: an async adapter's one task per
//! connection owns its driver outright; the std adapter's reader and
//! writer threads share it behind the adapter's own lock, never held while
//! user code runs.
//!
//! # Replies before the close reply
//!
//! A reply the application sent in answer to an event is written before
//! anything later input causes (the auto-pong to a later ping, the close
//! reply to the peer's close frame, the close frame of a protocol error):
//! the WebSocket owes those until its next transmit (see
//! [`storm_proto::ws::Connection::poll_transmit`]), and before
//! [`LinkDriver::poll_event`] hands out a ping or a WebSocket's `Closed`
//! it frames what the outbox holds. Replies to ordinary messages stay in
//! the outbox meanwhile, for the writer to take many at once. What the
//! read path frames counts against the send limit until the writer comes
//! back for more, having written it.
//!
//! ```
//! use std::time::Instant;
//!
//! use storm_proto::Message;
//! use storm_proto::framing::LengthPrefixFramer;
//! use storm_host::hub::{Hub, HubConfig};
//! use storm_host::link::{LinkConfig, LinkDriver, LinkEvent, Protocol};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let now = Instant::now();
//! let hub = Hub::new(HubConfig::default(), now)?;
//! let session = hub.register(hub.try_admit()?, now)?;
//! let protocol = Protocol::Framed(Box::new(LengthPrefixFramer::default()));
//! let mut link = LinkDriver::new(session.clone(), protocol, &LinkConfig::default(), now)?;
//!
//! // Read path: a length-prefixed "hi" arrives.
//! link.handle_input(now, b"\0\0\0\x02hi");
//! assert_eq!(link.poll_event(now), Some(LinkEvent::Message(Message::from(b"hi".to_vec()))));
//! assert_eq!(link.poll_event(now), None);
//!
//! // The application echoes it into the outbox; the write path frames it.
//! let _ = session.send(Message::from(b"hi".to_vec()));
//! let mut out = Vec::new();
//! let transmit = link.poll_transmit(now, &mut out, 64 * 1024);
//! assert_eq!(out.concat(), b"\0\0\0\x02hi");
//! assert!(!transmit.close);
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::buf::Limit;
use bytes::{Bytes, BytesMut};

use crate::hub::{CloseKind, MiddlewareChain, Outbox, Output};
use storm_proto::Message;
use storm_proto::heartbeat::HeartbeatConfig;
use storm_proto::link::Link;
pub use storm_proto::link::{CloseReason, LinkConfigError, LinkEvent, Protocol, Transmit};
use storm_proto::ws::CloseCode;

/// How a connection's link behaves: the
/// [`storm_proto::link::LinkConfig`] and the middleware.
///
/// `#[non_exhaustive]`: start from [`default`](Self::default) and chain
/// the `with_*` methods; the fields stay public, to read and to set on a
/// value you own.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LinkConfig {
    /// See [`storm_proto::link::LinkConfig::heartbeat`]. Default: ping
    /// every 30 s, dead after 3 missed pongs, no idle timeout.
    pub heartbeat: HeartbeatConfig,
    /// See [`storm_proto::link::LinkConfig::close_timeout`]. Default 5 s.
    pub close_timeout: Duration,
    /// Middleware run on every message received and sent. Default: none.
    pub middleware: Option<Arc<MiddlewareChain>>,
    /// See [`storm_proto::link::LinkConfig::release_after`]: an idle
    /// connection returns its buffers, its outbox's and its writer's.
    /// Default 1 s.
    pub release_after: Duration,
    /// See [`storm_proto::link::LinkConfig::half_close`]: plain TCP's
    /// graceful close shuts the write direction down and reads on until
    /// the peer's end (or `close_timeout`). Default off.
    pub half_close: bool,
}

impl Default for LinkConfig {
    fn default() -> Self {
        let machine = storm_proto::link::LinkConfig::default();
        Self {
            heartbeat: machine.heartbeat,
            close_timeout: machine.close_timeout,
            middleware: None,
            release_after: machine.release_after,
            half_close: machine.half_close,
        }
    }
}

impl LinkConfig {
    /// Pings, dead-peer detection and the idle timeout (default
    /// [`HeartbeatConfig::default`]).
    #[must_use]
    pub fn with_heartbeat(mut self, heartbeat: HeartbeatConfig) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// How long a graceful close waits for the peer (default 5 s).
    #[must_use]
    pub fn with_close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// Middleware run on every message received and sent (default none).
    #[must_use]
    pub fn with_middleware(mut self, middleware: Arc<MiddlewareChain>) -> Self {
        self.middleware = Some(middleware);
        self
    }

    /// When an idle connection returns its buffers (default 1 s).
    #[must_use]
    pub fn with_release_after(mut self, after: Duration) -> Self {
        self.release_after = after;
        self
    }

    /// Whether plain TCP's graceful close is a half-close (default off).
    #[must_use]
    pub fn with_half_close(mut self, half_close: bool) -> Self {
        self.half_close = half_close;
        self
    }

    /// The machine's part.
    fn machine(&self) -> storm_proto::link::LinkConfig {
        storm_proto::link::LinkConfig {
            heartbeat: self.heartbeat.clone(),
            close_timeout: self.close_timeout,
            release_after: self.release_after,
            half_close: self.half_close,
        }
    }
}

/// A connection's [`Link`] driven against its outbox. See the
/// [module docs](self).
#[derive(Debug)]
pub struct LinkDriver {
    link: Link,
    outbox: Arc<Outbox>,
    middleware: Option<Arc<MiddlewareChain>>,
    /// Bytes the read path framed (replies from the outbox, auto-pongs)
    /// that count against the send limit and the writer has not taken yet,
    /// so a peer that sends (or pings) but never reads meets the limit.
    unreleased: usize,
    /// Those the writer took with its last `poll_transmit`: they count
    /// until it comes back for more, having written them.
    in_writer: usize,
    /// An auto-pong found no room under the send limit: the reader waits
    /// until the limit drains to half.
    pong_held: bool,
    /// Messages handed out and not yet counted in the outbox's metrics:
    /// counted once per batch (when `poll_event` runs dry or closes), not
    /// with two atomic adds per message.
    received: u64,
    /// The waker [`register_waker`](Self::register_waker) last put in the
    /// outbox: registered again while it is there, without the lock.
    writer: Option<Waker>,
}

impl Drop for LinkDriver {
    fn drop(&mut self) {
        self.count_received();
    }
}

impl LinkDriver {
    /// A driver for the connection whose outbox is `outbox`, speaking
    /// `protocol`, from `now`. Runs the middleware's `on_connect`.
    ///
    /// # Errors
    ///
    /// [`LinkConfigError`] when the configuration is invalid.
    pub fn new(
        outbox: Arc<Outbox>,
        protocol: Protocol,
        config: &LinkConfig,
        now: Instant,
    ) -> Result<Self, LinkConfigError> {
        let link = Link::new(protocol, &config.machine(), now)?;
        // Senders frame under the outbox's lock where the protocol allows:
        // the writer then takes one buffer, not a message at a time.
        if let Some(encoder) = link.encoder() {
            outbox.encode_with(encoder);
        }
        if let Some(chain) = &config.middleware {
            chain.connect(outbox.id());
        }
        Ok(Self {
            link,
            outbox,
            middleware: config.middleware.clone(),
            unreleased: 0,
            in_writer: 0,
            pong_held: false,
            received: 0,
            writer: None,
        })
    }

    /// The connection's outbox: id, metrics, the writer's waker.
    #[must_use]
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// [`Outbox::register_waker`] for this connection's writer, which
    /// registers before every look at the outbox: the waker it registered
    /// last, still in place (not taken by a wake-up since), is kept
    /// without taking the outbox's lock. Ends an
    /// [`Outbox::unregister_waker`].
    //
    // Inlined: the writer's every poll registers, and the kept waker's
    // path is a few loads.
    #[inline]
    pub fn register_waker(&mut self, waker: &Waker) {
        let same = self.writer.as_ref().is_some_and(|w| w.will_wake(waker));
        if same && self.outbox.writer_registered() {
            self.outbox.unmute();
            return;
        }
        self.outbox.register_waker(waker);
        if !same {
            self.writer = Some(waker.clone());
        }
    }

    /// The protocol machine (to look at; the driver feeds it).
    #[must_use]
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// Feeds bytes read from the socket. Then drain
    /// [`poll_event`](Self::poll_event), which parses them.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) {
        if self.link.is_closed() {
            return;
        }
        // Input is parsed as the application drains events, so read
        // accounting is only metrics.
        self.outbox.on_read_consumed(data.len());
        self.link.handle_input(now, data);
    }

    /// The room to read the rest of a large WebSocket frame into, without
    /// [`handle_input`](Self::handle_input)'s copy (see
    /// [`Link::input_buffer`]); then call
    /// [`input_filled`](Self::input_filled). `None`: read into any buffer
    /// and call `handle_input`.
    pub fn input_buffer(&mut self) -> Option<Limit<&mut BytesMut>> {
        self.link.input_buffer()
    }

    /// `len` bytes were read into [`input_buffer`](Self::input_buffer) at
    /// `now`.
    pub fn input_filled(&mut self, now: Instant, len: usize) {
        self.outbox.on_read_consumed(len);
        self.link.input_filled(now, len);
    }

    /// The read into [`input_buffer`](Self::input_buffer) would block: the
    /// room goes back while the link holds no input (see
    /// [`Link::input_pending`]).
    pub fn input_pending(&mut self) {
        self.link.input_pending();
    }

    /// [`input_buffer`](Self::input_buffer)'s room lent out with the input
    /// buffer, for a blocking read without the driver's lock (see
    /// [`Link::lend_input`]); give it back with
    /// [`restore_input`](Self::restore_input).
    pub fn lend_input(&mut self) -> Option<(BytesMut, usize)> {
        self.link.lend_input()
    }

    /// Gives back what [`lend_input`](Self::lend_input) lent, `len` bytes
    /// appended at `now` (0: none).
    pub fn restore_input(&mut self, now: Instant, input: BytesMut, len: usize) {
        self.outbox.on_read_consumed(len);
        self.link.restore_input(now, input, len);
    }

    /// The socket has no more bytes to read. [`poll_event`](Self::poll_event)
    /// reports what was still buffered, then [`LinkEvent::Closed`].
    pub fn handle_eof(&mut self) {
        self.link.handle_eof();
    }

    /// Whether the reader may read more. `Pending` once the WebSocket's
    /// auto-pong found no room under the send limit
    /// ([`BackpressureConfig::max_pending_send_bytes`](storm_proto::backpressure::BackpressureConfig::max_pending_send_bytes)):
    /// the peer pings faster than it reads the pongs, so it is not read
    /// until the writer has drained the limit to half (or the session
    /// closes), when `cx`'s waker is woken. A control reply holds the
    /// reader back this way whatever the slow-consumer policy, as a
    /// handler that waits to send does.
    ///
    /// Reading on anyway is safe (the pong of a later ping replaces the
    /// one that waits), but the link then holds what the reads bring.
    pub fn poll_input_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.link.is_input_done() {
            return Poll::Ready(());
        }
        self.admit_pong();
        if !self.pong_held {
            return Poll::Ready(());
        }
        // Registered under the outbox's lock: a drain between the check
        // above and here is not missed.
        if self.outbox.poll_writable(cx).is_pending() {
            return Poll::Pending;
        }
        self.pong_held = false;
        Poll::Ready(())
    }

    /// Queues the WebSocket's waiting auto-pong if the send limit has room
    /// for it, counted like a reply framed on the read path. Otherwise it
    /// waits (a later ping's replaces it, and the writer takes it when it
    /// next comes) and the session is backpressured until the writer
    /// drains it to half; meanwhile the reader waits
    /// ([`poll_input_ready`](Self::poll_input_ready)).
    fn admit_pong(&mut self) {
        let Some(len) = self.link.waiting_pong() else {
            return;
        };
        if self.outbox.admit_control(len) {
            self.link.queue_pong();
            self.unreleased += len;
        } else {
            self.pong_held = true;
        }
    }

    /// The next event, in order, after middleware; `None` when nothing
    /// more can be parsed (read more, or wait for the timer). Before a ping
    /// or a WebSocket's `Closed` it frames what the outbox holds (see [the
    /// module docs](self)); the writer is woken when output is ready.
    ///
    /// [`poll_event_with`](Self::poll_event_with) hands messages to a
    /// closure instead, which is cheaper for a loop that handles most of
    /// them at once.
    //
    // Inlined as it was before `poll_event_with` (the other adapters'
    // loops call it per message).
    #[inline(always)]
    pub fn poll_event(&mut self, now: Instant) -> Option<LinkEvent> {
        self.poll_event_with(now, Some)
    }

    /// [`poll_event`](Self::poll_event), handing each message (after
    /// middleware) to `on_message` as it is parsed, in order: `None` once
    /// it is handled, and the driver parses on; `Some` hands it back, and
    /// it is returned as [`LinkEvent::Message`]. Returns the first event
    /// `on_message` did not take (any other event, or a message handed
    /// back); `None` when nothing more can be parsed. Events, their order,
    /// the driver's work between them and the bytes framed are those of
    /// `poll_event` (which is this with `on_message` handing every message
    /// back): `on_message` runs where `poll_event` would have returned.
    ///
    /// For the connection loop: a message goes from the parse to
    /// `on_message` without being stored as a [`LinkEvent`] and returned
    /// through memory, a 40-byte copy per message that waited on the
    /// stores that had just written it (BENCHMARKS.md, session 13).
    //
    // Inlined, with the link's parse (`Link::poll_event`), into the
    // connection task, so `on_message` is called in line too.
    #[inline(always)]
    pub fn poll_event_with(
        &mut self,
        now: Instant,
        mut on_message: impl FnMut(Message) -> Option<Message>,
    ) -> Option<LinkEvent> {
        loop {
            let event = if self.link.has_queued_events() {
                self.link.poll_event(now)
            } else if self.link.is_closed() {
                if self.link.close_due() {
                    self.outbox.wake_writer();
                }
                None
            } else {
                let before = self.link.has_transmit();
                let closing = self.outbox.close_request().is_some();
                if closing {
                    self.pump(now, usize::MAX, false, None);
                }
                let event = self.link.poll_event(now);
                // A message makes no output of the link's own: nothing more
                // to do for it unless a close was just started. (Looked at
                // by discriminant only: the event's address is never
                // taken, so a message's stays out of memory.)
                let ping = matches!(event, Some(LinkEvent::Ping(_)));
                let closed = matches!(event, Some(LinkEvent::Closed(_)));
                if closing || !matches!(event, Some(LinkEvent::Message(_))) {
                    self.answer(now, ping, closed, before);
                }
                event
            };
            match event {
                // Taken apart at once: the message itself goes on, not the
                // event around it.
                Some(LinkEvent::Message(message)) => {
                    let Some(message) = self.deliver_message(message) else {
                        continue;
                    };
                    if let Some(back) = on_message(message) {
                        return Some(LinkEvent::Message(back));
                    }
                }
                Some(event) => {
                    self.deliver(&event);
                    return Some(event);
                }
                None => {
                    self.count_received();
                    return None;
                }
            }
        }
    }

    /// What a parsed event (or none) asks of the driver, `before` it was
    /// parsed the link had output or not: a `ping`'s auto-pong and a
    /// WebSocket close reply (the event `closed` the link) answer this
    /// input, so the replies to what came before go ahead of them; the
    /// writer is woken when output just appeared (it was woken for what
    /// was there before) or it must close.
    fn answer(&mut self, now: Instant, ping: bool, closed: bool, before: bool) {
        let answers = ping || (closed && self.link.is_websocket());
        if answers && self.outbox.has_queued() {
            self.pump(now, usize::MAX, false, None);
        }
        if ping {
            self.admit_pong();
        }
        if (self.link.has_transmit() && !before) || self.link.close_due() {
            self.outbox.wake_writer();
        }
    }

    /// Adds the messages handed out since the last call to the outbox's
    /// metrics.
    fn count_received(&mut self) {
        if self.received > 0 {
            self.outbox
                .on_messages_received(std::mem::take(&mut self.received));
        }
    }

    /// Bookkeeping and middleware for a message leaving the driver; `None`
    /// when middleware suppressed it.
    #[inline(always)]
    fn deliver_message(&mut self, message: Message) -> Option<Message> {
        self.received += 1;
        match &self.middleware {
            Some(chain) => chain.received(self.outbox.id(), message),
            None => Some(message),
        }
    }

    /// Bookkeeping, middleware and session state for an event other than a
    /// message leaving the driver.
    fn deliver(&mut self, event: &LinkEvent) {
        if let LinkEvent::Closed(reason) = event {
            let id = self.outbox.id();
            #[cfg(feature = "tracing")]
            trace_close(id, reason);
            self.count_received();
            // Refuse further sends; the writer flushes what must go out.
            self.outbox.request_close(CloseKind::Graceful);
            if let Some(chain) = &self.middleware {
                match reason {
                    CloseReason::Protocol(e) => chain.error(id, e),
                    CloseReason::Framing(e) => chain.error(id, e),
                    _ => {}
                }
                chain.disconnect(id);
            }
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.link.poll_timeout()
    }

    /// Handles what is due at `now`: pings, dead peers, idle timeouts, a
    /// graceful close the peer never answered, idle buffers. Then drain
    /// [`poll_event`](Self::poll_event).
    pub fn handle_timeout(&mut self, now: Instant) {
        let aborted = self.link.is_aborted();
        self.link.handle_timeout(now);
        if self.link.is_aborted() && !aborted {
            // A dead or idle peer: what is queued for it is discarded.
            self.outbox.request_close(CloseKind::Abort);
        }
        self.outbox.wake_writer();
    }

    /// Moves queued messages from the outbox into the link (framing them),
    /// and starts a requested close. `for_writer`: the writer takes the
    /// result now, so the bytes leave the send limit; otherwise (the read
    /// path) they stay counted until it does. Returns whether
    /// [`poll_timeout`](Self::poll_timeout) moved (a close began).
    ///
    /// An empty outbox with no close requested is not locked: its
    /// `has_queued` hint is exact for a caller that registered the
    /// writer's waker first (a message queued after the look wakes it).
    ///
    /// `head`: the writer's own buffer, written before anything the link
    /// holds (for the writer only, see
    /// [`poll_transmit_into`](Self::poll_transmit_into)). While the link
    /// holds nothing to transmit and takes encoded bytes, the outbox may
    /// copy its frames there rather than hand them to the link.
    fn pump(
        &mut self,
        now: Instant,
        max_bytes: usize,
        for_writer: bool,
        head: Option<&mut Vec<u8>>,
    ) -> bool {
        if !self.outbox.has_queued() && self.outbox.close_request().is_none() {
            return false;
        }
        let head = head.filter(|_| !self.link.has_transmit() && self.link.takes_encoded());
        // Framed under the outbox's lock, straight from its queue (an
        // abort hands out nothing).
        let link = &mut self.link;
        let frame = |output: Output| match output {
            Output::Message(message) => link.send(&message),
            Output::Encoded(bytes) => link.send_encoded(bytes),
        };
        let drained = if let Some(head) = head {
            self.outbox.drain_written_into(max_bytes, head, frame)
        } else if for_writer {
            self.outbox.drain_written(max_bytes, frame)
        } else {
            let drained = self.outbox.drain_with(max_bytes, frame);
            self.unreleased += drained.bytes;
            drained
        };
        let Some(close) = drained.close else {
            return false;
        };
        let deadline = self.link.poll_timeout();
        match close {
            CloseKind::Abort => self.link.abort(),
            CloseKind::Graceful => {
                let (code, reason) = self
                    .outbox
                    .take_close_frame()
                    .map_or((CloseCode::NORMAL, String::new()), |frame| *frame);
                self.link.close(now, code, &reason);
            }
        }
        self.link.poll_timeout() != deadline
    }

    /// The write path: appends buffers to write (in order) to `out`, at most
    /// about `max_bytes` of messages from the outbox, and says whether to
    /// close the socket after writing them. Call when the outbox's writer
    /// waker fires (register it with [`register_waker`](Self::register_waker)
    /// first) and after every read, once what the last call appended is
    /// written: the bytes the read path framed (replies, auto-pongs) count
    /// against the send limit until the writer comes back. When
    /// [`Transmit::release`] says so, the outbox's queue was returned too.
    ///
    /// [`Transmit::done`]: this call took everything (the outbox is empty,
    /// no close is asked for, nothing the writer takes stays counted
    /// against the send limit) and had the idle moment the call after the
    /// write would have had; a writer that registered its waker before
    /// this call need not come back until woken or until it reads.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        out: &mut Vec<Bytes>,
        max_bytes: usize,
    ) -> Transmit {
        self.transmit(now, None, out, max_bytes)
    }

    /// [`poll_transmit`](Self::poll_transmit) for a writer that writes a
    /// buffer of its own, `head`, before `out`'s buffers: a few KiB of
    /// small frames from the outbox (a ping-pong's reply) may be appended
    /// to `head`, a copy, instead of to `out` as a `Bytes` that shares the
    /// outbox's buffer until written and is dropped after. Only while
    /// `out` is empty and the link holds nothing to write ahead of them:
    /// the bytes are written in the order framed, `head`'s first.
    /// [`Transmit::bytes`] counts what either got. The writer empties
    /// both once written (and returns `head`'s memory with
    /// [`Transmit::release`], as `out`'s).
    pub fn poll_transmit_into(
        &mut self,
        now: Instant,
        head: &mut Vec<u8>,
        out: &mut Vec<Bytes>,
        max_bytes: usize,
    ) -> Transmit {
        self.transmit(now, Some(head), out, max_bytes)
    }

    /// `head`: see [`poll_transmit_into`](Self::poll_transmit_into).
    #[inline(always)]
    fn transmit(
        &mut self,
        now: Instant,
        head: Option<&mut Vec<u8>>,
        out: &mut Vec<Bytes>,
        max_bytes: usize,
    ) -> Transmit {
        let mut head = head.filter(|_| out.is_empty());
        let before = head.as_ref().map_or(0, |head| head.len());
        // An abort discards the outbox and what the link framed, also
        // after a graceful close has begun.
        let abort = self.outbox.close_request() == Some(CloseKind::Abort);
        // A close the pump starts (asked for by another task) moves the
        // deadline too.
        let mut timer_changed = false;
        if !self.link.close_due() || (abort && !self.link.is_aborted()) {
            timer_changed = self.pump(now, max_bytes, true, head.as_deref_mut());
        }
        let ahead = head.map_or(0, |head| head.len() - before);
        // The writer is back: it wrote what it took last time. What the
        // read path framed since goes to it now, and counts until its next
        // call.
        let written = std::mem::replace(&mut self.in_writer, std::mem::take(&mut self.unreleased));
        if written > 0 {
            self.outbox.on_written(written);
        }
        // Nothing left for the writer to come back for (nothing queued, no
        // close asked for, nothing it takes counted until it returns): the
        // link's call is the last before a wake-up.
        let last = self.in_writer == 0
            && !self.outbox.has_queued()
            && self.outbox.close_request().is_none();
        let mut transmit = self.link.poll_transmit_behind(now, ahead, out, last);
        transmit.timer_changed |= timer_changed;
        if transmit.release {
            self.outbox.release_buffers();
        }
        if self.link.is_closed() && self.link.has_queued_events() {
            // A Closed event (an abort) waits for the reader.
            self.outbox.wake_writer();
        }
        transmit
    }
}

/// The `connection closed` event: why, by whom (`peer` or `local`) and
/// with which close code, if a close frame said (a peer's protocol or
/// framing error is the reason, with `error = true`).
#[cfg(feature = "tracing")]
fn trace_close(id: crate::hub::SessionId, reason: &CloseReason) {
    let by = match reason {
        CloseReason::Remote(_)
        | CloseReason::Eof
        | CloseReason::Protocol(_)
        | CloseReason::Framing(_) => "peer",
        _ => "local",
    };
    let code = match reason {
        CloseReason::Remote(frame) => Some(frame.code.0),
        _ => None,
    };
    let error = matches!(reason, CloseReason::Protocol(_) | CloseReason::Framing(_));
    tracing::info!(id = id.get(), by, code, error, reason = %reason, "connection closed");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // tests take one starting Instant from the clock

    use super::*;
    use crate::hub::{Hub, HubConfig, Middleware, SendOutcome, SessionId};
    use crate::session::Session;
    use storm_proto::framing::{DelimiterFramer, LengthPrefixFramer};
    use storm_proto::ws::frame::{FrameHeader, OpCode, encode_frame};
    use storm_proto::ws::{self, Config, Connection, Side};

    /// A driver and the application's handle on its connection.
    struct Conn {
        driver: LinkDriver,
        session: Session,
    }

    impl Conn {
        fn new(hub: &Hub, protocol: Protocol, config: &LinkConfig, now: Instant) -> Self {
            let outbox = hub.register(hub.try_admit().unwrap(), now).unwrap();
            let remote = ([127, 0, 0, 1], 1).into();
            let session = Session::new(
                Arc::clone(&outbox),
                config.middleware.clone(),
                hub.clone(),
                remote,
            );
            let driver = LinkDriver::new(outbox, protocol, config, now).unwrap();
            Self { driver, session }
        }

        fn send(&self, message: Message) -> SendOutcome {
            self.session.try_send(message)
        }
    }

    impl std::ops::Deref for Conn {
        type Target = LinkDriver;
        fn deref(&self) -> &LinkDriver {
            &self.driver
        }
    }

    impl std::ops::DerefMut for Conn {
        fn deref_mut(&mut self) -> &mut LinkDriver {
            &mut self.driver
        }
    }

    fn setup(protocol: Protocol, config: LinkConfig) -> (Hub, Conn, Instant) {
        let now = Instant::now();
        let hub = Hub::new(HubConfig::default(), now).unwrap();
        let conn = Conn::new(&hub, protocol, &config, now);
        (hub, conn, now)
    }

    /// A link whose send limit is `limit` bytes, under the Drop policy.
    fn limited(protocol: Protocol, limit: usize) -> (Hub, Conn, Instant) {
        use storm_proto::backpressure::{BackpressureConfig, SlowConsumerPolicy};
        let now = Instant::now();
        let mut backpressure = BackpressureConfig::default();
        backpressure.max_pending_send_bytes = limit;
        backpressure.slow_consumer_policy = SlowConsumerPolicy::Drop;
        let config = HubConfig {
            backpressure,
            ..HubConfig::default()
        };
        let hub = Hub::new(config, now).unwrap();
        let link = Conn::new(&hub, protocol, &LinkConfig::default(), now);
        (hub, link, now)
    }

    fn ws_limited(limit: usize) -> (Hub, Conn, Instant) {
        let conn = Connection::new(Side::Server, Config::default());
        limited(Protocol::WebSocket(Box::new(conn)), limit)
    }

    /// What a client decodes from `wire` (a server link's output).
    fn decoded(wire: &[u8]) -> Vec<ws::Event> {
        let mut client = Connection::new(Side::Client, Config::default());
        client.handle_input(wire);
        std::iter::from_fn(|| client.poll_event().unwrap()).collect()
    }

    /// 100 masked pings of 125 bytes, the `i`th carrying `i` in every byte.
    fn ping_flood() -> Vec<u8> {
        (0..100u8)
            .flat_map(|i| masked(OpCode::Ping, &[i; 125]))
            .collect()
    }

    fn pong(i: u8) -> ws::Event {
        ws::Event::Pong(Bytes::from(vec![i; 125]))
    }

    /// Records that it was woken.
    #[derive(Default)]
    struct Flag(std::sync::atomic::AtomicBool);

    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl Flag {
        fn woken(&self) -> bool {
            self.0.swap(false, std::sync::atomic::Ordering::SeqCst)
        }
    }

    fn ws_server(config: LinkConfig) -> (Hub, Conn, Instant) {
        let conn = Connection::new(Side::Server, Config::default());
        setup(Protocol::WebSocket(Box::new(conn)), config)
    }

    fn masked(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut header = FrameHeader::new(opcode, 0);
        header.mask = Some([9, 8, 7, 6]);
        let mut out = BytesMut::new();
        encode_frame(header, payload, &mut out);
        out.to_vec()
    }

    fn events(link: &mut Conn, now: Instant) -> Vec<LinkEvent> {
        std::iter::from_fn(|| link.poll_event(now)).collect()
    }

    fn transmit(link: &mut Conn, now: Instant) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let t = link.poll_transmit(now, &mut out, 1 << 20);
        (out.concat(), t.close)
    }

    /// 100 requests arrive; the application answers each with 100 bytes,
    /// `header` more once framed; the writer is stuck (poll_transmit is
    /// never called): the send limit (1000 bytes, policy Drop), which
    /// counts the frames, must hold.
    fn peer_that_sends_but_never_reads(protocol: Protocol, request: &[u8], header: usize) {
        let (_hub, mut link, now) = limited(protocol, 1000);
        link.handle_input(now, &request.repeat(100));
        let (mut queued, mut dropped) = (0, 0);
        while let Some(event) = link.poll_event(now) {
            assert!(matches!(event, LinkEvent::Message(_)));
            match link.send(Message::from(vec![0u8; 100])) {
                SendOutcome::Queued => queued += 1,
                SendOutcome::Dropped(_) => dropped += 1,
                other => panic!("{other:?}"),
            }
        }
        let fit = 1000 / (100 + header);
        assert_eq!((queued, dropped), (fit, 100 - fit));
        // Once the writer has written what was framed (it comes back for
        // more), the limit is released.
        let (bytes, _) = transmit(&mut link, now);
        // Exactly the admitted frames: a refused message leaves none.
        assert_eq!(bytes.len(), fit * (100 + header));
        let (more, _) = transmit(&mut link, now);
        assert!(more.is_empty());
        assert!(matches!(
            link.send(Message::from(vec![0u8; 100])),
            SendOutcome::Queued
        ));
    }

    /// Buffers and queues of the link, its protocol and its outbox.
    fn buffer_capacity(link: &mut Conn) -> usize {
        link.driver.link().buffer_capacity() + link.outbox().outbox_capacity()
    }

    /// `request` × 20 in, each echoed back, all taken by the writer at
    /// `now` in one call, which says it took everything (`done`: that call
    /// has the idle moment).
    fn echo_burst(link: &mut Conn, request: &[u8], now: Instant) -> Transmit {
        link.handle_input(now, &request.repeat(20));
        for event in events(link, now) {
            let LinkEvent::Message(message) = event else {
                panic!("{event:?}");
            };
            assert!(matches!(link.send(message), SendOutcome::Queued));
        }
        assert!(buffer_capacity(link) > 0, "traffic allocated buffers");
        let sent = link.poll_transmit(now, &mut Vec::new(), 1 << 20);
        assert!(sent.bytes > 0 && sent.done && !sent.close);
        sent
    }

    /// A link that goes idle returns every buffer and queue of its own,
    /// its protocol's and its outbox's at once, and tells the writer. One
    /// that goes idle again within `release_after` keeps them until then
    /// (the timer), so that a connection sending burst after burst does
    /// not allocate them again for each. The idle moment is the writer's
    /// call that takes everything ([`Transmit::done`]).
    fn idle_link_holds_no_buffers(protocol: Protocol, request: &[u8]) {
        let (_hub, mut link, now) = setup(protocol, LinkConfig::default());
        let mut out = Vec::new();
        let sent = echo_burst(&mut link, request, now);
        assert!(sent.release, "the writer is told");
        assert_eq!(
            buffer_capacity(&mut link),
            0,
            "buffers left on an idle link"
        );
        let idle = link.poll_transmit(now, &mut out, 1 << 20);
        assert_eq!((idle.bytes, idle.release), (0, false), "told once");

        // The next burst, soon after: idle again, the buffers stay.
        let soon = now + Duration::from_millis(10);
        let idle = echo_burst(&mut link, request, soon);
        assert!(!idle.release);
        assert!(
            buffer_capacity(&mut link) > 0,
            "a busy link keeps its buffers"
        );
        let due = now + LinkConfig::default().release_after;
        assert_eq!(link.poll_timeout(), Some(due));
        assert!(idle.timer_changed, "the writer hears that the timer moved");
        let again = link.poll_transmit(soon, &mut out, 1 << 20);
        assert_eq!((again.bytes, again.timer_changed), (0, false));
        link.handle_timeout(due);
        // The link's own at once; the outbox's
        // when the writer, woken by the timeout, hears of it.
        let told = link.poll_transmit(due, &mut out, 1 << 20);
        assert_eq!((told.bytes, told.release), (0, true));
        assert_eq!(
            buffer_capacity(&mut link),
            0,
            "buffers left after release_after"
        );
        assert_ne!(
            link.poll_timeout(),
            Some(due),
            "the release deadline is gone"
        );
    }

    /// `release_after` zero: every idle moment returns the buffers.
    #[test]
    fn release_after_zero_returns_buffers_at_every_idle_moment() {
        let config = LinkConfig {
            release_after: Duration::ZERO,
            ..LinkConfig::default()
        };
        let protocol = Protocol::Framed(Box::new(LengthPrefixFramer::default()));
        let (_hub, mut link, now) = setup(protocol, config);
        for _ in 0..2 {
            let idle = echo_burst(&mut link, b"\0\0\0\x05hello", now);
            assert!(idle.release);
            assert_eq!(buffer_capacity(&mut link), 0);
        }
    }

    #[test]
    fn an_idle_websocket_link_holds_no_buffers() {
        let conn = Connection::new(Side::Server, Config::default());
        let protocol = Protocol::WebSocket(Box::new(conn));
        idle_link_holds_no_buffers(protocol, &masked(OpCode::Binary, b"hello"));
    }

    #[test]
    fn an_idle_framed_link_holds_no_buffers() {
        let protocol = Protocol::Framed(Box::new(LengthPrefixFramer::default()));
        idle_link_holds_no_buffers(protocol, b"\0\0\0\x05hello");
    }

    /// Large messages, queued as chunks of their own and read in place
    /// (raw): nothing of them stays on an idle link either.
    #[test]
    fn an_idle_link_holds_no_buffers_after_large_messages() {
        use storm_proto::framing::RawFramer;
        let payload = vec![9u8; 20 * 1024];
        let protocol = Protocol::Framed(Box::new(LengthPrefixFramer::default()));
        let mut request = u32::try_from(payload.len()).unwrap().to_be_bytes().to_vec();
        request.extend_from_slice(&payload);
        idle_link_holds_no_buffers(protocol, &request);
        idle_link_holds_no_buffers(Protocol::Framed(Box::new(RawFramer::default())), &payload);
        let conn = Connection::new(Side::Server, Config::default());
        let protocol = Protocol::WebSocket(Box::new(conn));
        idle_link_holds_no_buffers(protocol, &masked(OpCode::Binary, &payload));
    }

    /// Issue #16: the writer's call that takes a reply says it took
    /// everything ([`Transmit::done`]), so the writer does not call again
    /// only to learn that. Not while anything is left: more queued than
    /// `max_bytes`, or bytes the read path framed (an auto-pong: they
    /// count against the send limit until the writer comes back).
    #[test]
    fn the_call_that_takes_everything_says_done_and_nothing_less() {
        let protocol = Protocol::Framed(Box::new(LengthPrefixFramer::default()));
        let (_hub, mut link, now) = setup(protocol, LinkConfig::default());
        let mut out = Vec::new();
        assert_eq!(link.send(Message::from(vec![1u8; 10])), SendOutcome::Queued);
        let t = link.poll_transmit(now, &mut out, 1 << 20);
        assert_eq!((t.bytes, t.done), (14, true));
        for _ in 0..3 {
            assert_eq!(link.send(Message::from(vec![2u8; 10])), SendOutcome::Queued);
        }
        let t = link.poll_transmit(now, &mut out, 14);
        assert_eq!((t.bytes, t.done), (14, false), "two more queued");
        let t = link.poll_transmit(now, &mut out, 1 << 20);
        assert_eq!((t.bytes, t.done), (28, true));

        let (_hub, mut link, now) = ws_server(LinkConfig::default());
        link.handle_input(now, &masked(OpCode::Ping, b"x"));
        assert!(matches!(events(&mut link, now)[..], [LinkEvent::Ping(_)]));
        let t = link.poll_transmit(now, &mut out, 1 << 20);
        assert_eq!(
            (t.bytes, t.done),
            (3, false),
            "the pong counts until written"
        );
        assert!(link.outbox().pending_send_bytes() > 0);
        let t = link.poll_transmit(now, &mut out, 1 << 20);
        assert_eq!(t.bytes, 0);
        assert_eq!(link.outbox().pending_send_bytes(), 0);
    }

    /// The connection task's turn (issue #16): unregistered while its read
    /// path replies, registered again before it takes the replies. The
    /// same waker stays in the outbox throughout (no clone per turn, no
    /// lock); replies from the read path wake no one; after a call that
    /// took everything (`done`), a send from elsewhere wakes the writer.
    #[test]
    fn the_writer_keeps_its_waker_across_turns_and_a_later_send_wakes_it() {
        let protocol = Protocol::Framed(Box::new(LengthPrefixFramer::default()));
        let (_hub, mut link, now) = setup(protocol, LinkConfig::default());
        let flag = Arc::new(Flag::default());
        let waker = Waker::from(Arc::clone(&flag));
        let mut out = Vec::new();
        link.register_waker(&waker);
        // `flag`, `waker`, the driver's and the outbox's.
        assert_eq!(Arc::strong_count(&flag), 4);
        for _ in 0..3 {
            link.outbox().unregister_waker();
            assert_eq!(link.send(Message::from(vec![1u8; 10])), SendOutcome::Queued);
            assert!(!flag.woken(), "a reply from the read path wakes no one");
            link.register_waker(&waker);
            assert_eq!(Arc::strong_count(&flag), 4, "not cloned");
            let t = link.poll_transmit(now, &mut out, 1 << 20);
            assert!(t.done);
        }
        assert_eq!(link.send(Message::from(vec![1u8; 10])), SendOutcome::Queued);
        assert!(flag.woken());
        // Taken to wake: the next registration puts it back.
        link.register_waker(&waker);
        assert_eq!(Arc::strong_count(&flag), 4);
        assert_eq!(link.poll_transmit(now, &mut out, 1 << 20).bytes, 14);
        link.session.close();
        assert!(flag.woken(), "a close wakes it too");
    }

    #[test]
    fn a_framed_peer_that_sends_but_never_reads_meets_the_send_limit() {
        let protocol = Protocol::Framed(Box::new(LengthPrefixFramer::default()));
        peer_that_sends_but_never_reads(protocol, b"\0\0\0\x01q", 4);
    }

    #[test]
    fn a_websocket_peer_that_sends_but_never_reads_meets_the_send_limit() {
        let conn = Connection::new(Side::Server, Config::default());
        let protocol = Protocol::WebSocket(Box::new(conn));
        peer_that_sends_but_never_reads(protocol, &masked(OpCode::Binary, b"q"), 2);
    }

    #[test]
    fn a_server_link_frames_messages_as_they_are_sent_broadcasts_included() {
        let (hub, mut link, now) = setup(
            Protocol::WebSocket(Box::new(Connection::new(Side::Server, Config::default()))),
            LinkConfig::default(),
        );
        let id = link.outbox().id();
        hub.join(id, "room").unwrap();
        assert_eq!(link.send(Message::from(vec![1u8; 32])), SendOutcome::Queued);
        let report = hub.broadcast_group("room", &Message::from("hi"), None);
        assert_eq!(report.delivered, 1);
        // Framed already: the limit counts the frames (2-byte headers).
        assert_eq!(link.outbox().queued_messages(), 2);
        assert_eq!(link.outbox().pending_send_bytes(), 34 + 4);
        let (wire, close) = transmit(&mut link, now);
        assert!(!close);
        assert_eq!(
            decoded(&wire),
            [
                ws::Event::Binary(Bytes::from(vec![1u8; 32])),
                ws::Event::Text("hi".into())
            ]
        );
        assert_eq!(link.outbox().queued_messages(), 0);
        assert_eq!(link.outbox().metrics().messages_sent, 2);
    }

    /// A large message goes to the writer as the sender's own bytes,
    /// behind its header, in order among small ones; the limit counts
    /// its frame; a graceful close comes after it.
    #[test]
    fn a_large_message_is_written_from_its_own_bytes_in_order_and_before_the_close() {
        let big = Bytes::from(vec![5u8; 64 * 1024]);
        let websocket =
            || Protocol::WebSocket(Box::new(Connection::new(Side::Server, Config::default())));
        let framed = || Protocol::Framed(Box::new(LengthPrefixFramer::default()));
        // The protocols and their headers, of a small frame and a large.
        for (protocol, small, large) in [(websocket(), 2, 10), (framed(), 4, 4)] {
            let (_hub, mut link, now) = setup(protocol, LinkConfig::default());
            for message in [
                Bytes::from_static(b"a"),
                big.clone(),
                Bytes::from_static(b"b"),
            ] {
                assert_eq!(link.send(Message::Binary(message)), SendOutcome::Queued);
            }
            assert_eq!(
                link.outbox().pending_send_bytes(),
                2 * (1 + small) + large + big.len()
            );
            link.session.close();
            let mut out = Vec::new();
            // A write batch of the default 64 KiB: the large payload, begun
            // within it, goes whole, with its header, in the first; the
            // rest follows when the writer comes back.
            let first = link.poll_transmit(now, &mut out, 64 * 1024);
            assert!(!first.close);
            let last = out.last().unwrap();
            // The payload is the sender's allocation, not a copy.
            assert_eq!((last.as_ptr(), last.len()), (big.as_ptr(), big.len()));
            let rest = link.poll_transmit(now, &mut out, 64 * 1024);
            // A framed link closes after the write; a WebSocket waits for
            // the peer's answer to its close frame.
            assert_eq!(rest.close, !link.link().is_websocket());
            let wire = out.concat();
            if link.link().is_websocket() {
                let events = decoded(&wire);
                assert_eq!(events.len(), 4);
                assert_eq!(events[0], ws::Event::Binary(Bytes::from_static(b"a")));
                assert!(events[1] == ws::Event::Binary(big.clone()));
                assert_eq!(events[2], ws::Event::Binary(Bytes::from_static(b"b")));
                assert!(matches!(events[3], ws::Event::Close(_)));
            } else {
                let mut expected = b"\0\0\0\x01a\0\x01\0\0".to_vec();
                expected.extend_from_slice(&big);
                expected.extend_from_slice(b"\0\0\0\x01b");
                assert!(wire == expected);
            }
        }
    }

    #[test]
    fn a_message_the_framer_refuses_is_dropped_and_counted_not_lost_silently() {
        let (_hub, mut link, now) = setup(
            Protocol::Framed(Box::new(DelimiterFramer::lines())),
            LinkConfig::default(),
        );
        let refused = Message::from("two\nlines");
        assert_eq!(link.send(refused.clone()), SendOutcome::Dropped(refused));
        assert_eq!(link.outbox().metrics().messages_dropped, 1);
        assert_eq!(link.outbox().pending_send_bytes(), 0);
        assert_eq!(link.send(Message::from("ok")), SendOutcome::Queued);
        assert_eq!(transmit(&mut link, now), (b"ok\n".to_vec(), false));
    }

    #[test]
    fn framed_messages_in_and_out() {
        let (_hub, mut link, now) = setup(
            Protocol::Framed(Box::new(DelimiterFramer::lines())),
            LinkConfig::default(),
        );
        link.handle_input(now, b"one\r\ntw");
        link.handle_input(now, b"o\n");
        assert_eq!(
            events(&mut link, now),
            [
                LinkEvent::Message(Message::from(b"one".to_vec())),
                LinkEvent::Message(Message::from(b"two".to_vec()))
            ]
        );
        assert_eq!(link.send(Message::from("x")), SendOutcome::Queued);
        assert_eq!(transmit(&mut link, now), (b"x\n".to_vec(), false));
        assert_eq!(link.outbox().metrics().messages_received, 2);
    }

    #[test]
    fn a_large_websocket_frame_is_read_in_place_and_counted() {
        use bytes::BufMut;
        let (_hub, mut link, now) = ws_server(LinkConfig::default());
        let payload = vec![5u8; 50_000];
        let frame = masked(OpCode::Binary, &payload);
        let read_in_place = |link: &mut Conn, bytes: &[u8]| {
            let mut room = link.input_buffer()?;
            room.put_slice(bytes);
            link.input_filled(now, bytes.len());
            Some(bytes.len())
        };
        // No frame in progress: read elsewhere and call handle_input.
        assert_eq!(read_in_place(&mut link, &frame[..10]), None);
        link.handle_input(now, &frame[..10]);
        assert!(events(&mut link, now).is_empty());
        // The header is parsed: the rest of the frame goes in place.
        assert_eq!(
            read_in_place(&mut link, &frame[10..]),
            Some(frame.len() - 10)
        );
        assert_eq!(
            events(&mut link, now),
            [LinkEvent::Message(Message::from(payload))]
        );
        let metrics = link.outbox().metrics();
        assert_eq!(metrics.bytes_received, frame.len() as u64);
        assert_eq!(metrics.messages_received, 1);
        // A framed link has no frame to read in place.
        let (_hub, mut framed, now) = setup(
            Protocol::Framed(Box::new(LengthPrefixFramer::default())),
            LinkConfig::default(),
        );
        assert!(framed.input_buffer().is_none());
        let _ = now;
    }

    #[test]
    fn framed_graceful_close_flushes_then_closes_and_abort_discards() {
        let (_hub, mut link, now) = setup(
            Protocol::Framed(Box::new(LengthPrefixFramer::default())),
            LinkConfig::default(),
        );
        let _ = link.send(Message::from(b"last".to_vec()));
        link.session.close();
        assert_eq!(
            link.send(Message::from(b"late".to_vec())),
            SendOutcome::Closed(Message::from(b"late".to_vec()))
        );
        assert_eq!(transmit(&mut link, now), (b"\0\0\0\x04last".to_vec(), true));

        let (_hub, mut link, now) = setup(
            Protocol::Framed(Box::new(LengthPrefixFramer::default())),
            LinkConfig::default(),
        );
        let _ = link.send(Message::from(b"dropped".to_vec()));
        link.session.abort();
        assert_eq!(transmit(&mut link, now), (Vec::new(), true));
    }

    /// A half-close asked for through the session (as another task
    /// does): the writer writes what was queued, is told to shut the write
    /// side down and to re-arm its timer for the close timeout; the peer's
    /// answers still arrive, and its end closes the link.
    #[test]
    fn framed_half_close_writes_then_shuts_down_and_reads_on() {
        let config = LinkConfig {
            half_close: true,
            close_timeout: Duration::from_secs(1),
            ..LinkConfig::default()
        };
        let (_hub, mut link, now) = setup(
            Protocol::Framed(Box::new(LengthPrefixFramer::default())),
            config,
        );
        let _ = link.send(Message::from(b"last".to_vec()));
        link.session.close();
        let mut out = Vec::new();
        let t = link.poll_transmit(now, &mut out, 1 << 20);
        assert_eq!(out.concat(), b"\0\0\0\x04last");
        assert!(t.shutdown && !t.close && t.timer_changed);
        assert_eq!(link.poll_timeout(), Some(now + Duration::from_secs(1)));
        link.handle_input(now, b"\0\0\0\x05reply");
        link.handle_eof();
        assert_eq!(
            events(&mut link, now),
            [
                LinkEvent::Message(Message::from(b"reply".to_vec())),
                LinkEvent::Closed(CloseReason::Eof)
            ]
        );
        assert_eq!(transmit(&mut link, now), (Vec::new(), true));
    }

    #[test]
    fn framing_errors_and_eof_close() {
        let (_hub, mut link, now) = setup(
            Protocol::Framed(Box::new(LengthPrefixFramer::default())),
            LinkConfig::default(),
        );
        link.handle_input(now, b"\0\0\0\x05ab");
        link.handle_eof();
        assert!(matches!(
            events(&mut link, now).as_slice(),
            [LinkEvent::Closed(CloseReason::Framing(_))]
        ));
        assert!(transmit(&mut link, now).1);
        // Input after the close is neither parsed nor counted.
        link.handle_input(now, b"\0\0\0\x01x");
        assert_eq!(events(&mut link, now), []);
        assert_eq!(link.outbox().metrics().bytes_received, 6);
    }

    /// A peer pings and never reads: the pongs count against the send
    /// limit (1000 bytes: seven pongs of 127), and once it is full only
    /// the latest ping is answered.
    #[test]
    fn a_ping_flood_is_answered_within_the_send_limit() {
        let (_hub, mut link, now) = ws_limited(1000);
        link.handle_input(now, &ping_flood());
        let pings = events(&mut link, now);
        assert_eq!(pings.len(), 100);
        assert!(pings.iter().all(|e| matches!(e, LinkEvent::Ping(_))));
        assert_eq!(link.outbox().pending_send_bytes(), 7 * 127);
        let (wire, _) = transmit(&mut link, now);
        let expected: Vec<ws::Event> = (0..7).chain([99]).map(pong).collect();
        assert_eq!(decoded(&wire), expected);
    }

    /// Once a pong finds the send limit full, the reader is held back until
    /// the writer has written what counts against it (down to half the
    /// limit), as for a handler that waits to send.
    #[test]
    fn a_ping_flood_holds_the_reader_back_until_the_limit_drains() {
        let (_hub, mut link, now) = ws_limited(1000);
        let flag = Arc::new(Flag::default());
        let waker = std::task::Waker::from(Arc::clone(&flag));
        let mut cx = Context::from_waker(&waker);
        assert!(link.poll_input_ready(&mut cx).is_ready());
        link.handle_input(now, &ping_flood());
        assert_eq!(events(&mut link, now).len(), 100);
        assert!(link.poll_input_ready(&mut cx).is_pending());
        assert!(link.outbox().is_backpressured());
        // The writer takes the pongs; they count until it comes back.
        let (wire, _) = transmit(&mut link, now);
        assert_eq!(decoded(&wire).len(), 8);
        assert!(!flag.woken());
        assert!(link.poll_input_ready(&mut cx).is_pending());
        // Back for more: they are written, and the reader is woken.
        let (wire, _) = transmit(&mut link, now);
        assert!(wire.is_empty());
        assert!(flag.woken());
        assert!(link.poll_input_ready(&mut cx).is_ready());
        assert_eq!(link.outbox().pending_send_bytes(), 0);
        // And the next ping is answered.
        link.handle_input(now, &masked(OpCode::Ping, b"again"));
        assert_eq!(events(&mut link, now).len(), 1);
        assert_eq!(
            decoded(&transmit(&mut link, now).0),
            [ws::Event::Pong(Bytes::from_static(b"again"))]
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// The peer pings with this many bytes (2..=125).
        Ping(usize),
        /// The peer sends a message of this many bytes, echoed back.
        Data(usize),
        /// The writer comes for what there is (having written the last).
        Drain,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (2usize..=125).prop_map(Op::Ping),
            (1usize..=125).prop_map(Op::Data),
            Just(Op::Drain),
        ]
    }

    proptest::proptest! {
        /// Any interleaving of pings, data (echoed under the Drop policy)
        /// and the writer's visits: what counts against the send limit
        /// never exceeds it, what the link holds for the writer exceeds it
        /// by one pong frame at most (beyond the headers of the data frames,
        /// which the limit does not count), the reader is held back only
        /// while the limit is full, and the pongs that go out answer pings
        /// in order, the last ping included.
        #[test]
        fn pongs_stay_within_the_send_limit(
            limit in 200usize..2000,
            ops in proptest::collection::vec(op(), 1..300),
        ) {
            const PONG_FRAME: usize = 2 + 125;
            let (_hub, mut link, now) = ws_limited(limit);
            let waker = std::task::Waker::from(Arc::new(Flag::default()));
            let mut cx = Context::from_waker(&waker);
            let mut wire = Vec::new();
            let mut pings = Vec::new();
            let (mut echoed, mut queued_since_drain) = (0, 0);
            for op in ops {
                match op {
                    Op::Ping(len) => {
                        let seq = u16::try_from(pings.len()).unwrap().to_be_bytes();
                        let mut payload = vec![0xa5; len];
                        payload[..2].copy_from_slice(&seq);
                        link.handle_input(now, &masked(OpCode::Ping, &payload));
                        pings.push(payload);
                        proptest::prop_assert!(matches!(
                            events(&mut link, now).as_slice(),
                            [LinkEvent::Ping(_)]
                        ));
                    }
                    Op::Data(len) => {
                        link.handle_input(now, &masked(OpCode::Binary, &vec![7; len]));
                        let event = link.poll_event(now);
                        let Some(LinkEvent::Message(message)) = event else {
                            return Err(proptest::test_runner::TestCaseError::fail(format!("{event:?}")));
                        };
                        if link.send(message) == SendOutcome::Queued {
                            echoed += 1;
                            queued_since_drain += 1;
                        }
                        proptest::prop_assert_eq!(link.poll_event(now), None);
                    }
                    Op::Drain => {
                        wire.extend(transmit(&mut link, now).0);
                        queued_since_drain = 0;
                    }
                }
                let held = link.link().transmit_len();
                proptest::prop_assert!(link.outbox().pending_send_bytes() <= limit);
                proptest::prop_assert!(
                    held <= limit + PONG_FRAME + 2 * queued_since_drain,
                    "{} bytes held, limit {}", held, limit
                );
                if link.poll_input_ready(&mut cx).is_pending() {
                    proptest::prop_assert!(link.outbox().is_backpressured());
                }
            }
            // The writer comes twice more: everything is out, and the
            // reader may read.
            wire.extend(transmit(&mut link, now).0);
            wire.extend(transmit(&mut link, now).0);
            proptest::prop_assert!(link.poll_input_ready(&mut cx).is_ready());
            proptest::prop_assert_eq!(link.outbox().pending_send_bytes(), 0);
            let got = decoded(&wire);
            let data = got.iter().filter(|e| matches!(e, ws::Event::Binary(_))).count();
            proptest::prop_assert_eq!(data, echoed);
            let answered: Vec<usize> = got
                .iter()
                .filter_map(|e| match e {
                    ws::Event::Pong(payload) => {
                        let seq = usize::from(u16::from_be_bytes([payload[0], payload[1]]));
                        Some(seq).filter(|&seq| pings[seq] == payload[..])
                    }
                    _ => None,
                })
                .collect();
            proptest::prop_assert_eq!(answered.len(), got.len() - data, "a pong for no ping");
            proptest::prop_assert!(answered.windows(2).all(|w| w[0] < w[1]), "pongs out of order");
            proptest::prop_assert_eq!(answered.last().copied(), pings.len().checked_sub(1));
        }
    }

    /// A frame a WebSocket client may send, or a broken one.
    #[derive(Debug, Clone)]
    enum Frame {
        Text(String),
        Binary(Vec<u8>),
        /// A binary message in two fragments, cut at `.1` (modulo its
        /// length).
        Fragmented(Vec<u8>, usize),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        /// Text that is not UTF-8 (1007).
        BadUtf8,
        /// A frame without the mask a client must set (1002).
        Unmasked(Vec<u8>),
        Close,
    }

    fn frame_strategy() -> impl proptest::strategy::Strategy<Value = Frame> {
        use proptest::prelude::*;
        let bytes = || proptest::collection::vec(any::<u8>(), 0..300);
        let control = || proptest::collection::vec(any::<u8>(), 0..=125);
        prop_oneof![
            6 => "[a-zé€]{0,40}".prop_map(Frame::Text),
            6 => bytes().prop_map(Frame::Binary),
            2 => (bytes(), any::<usize>()).prop_map(|(b, at)| Frame::Fragmented(b, at)),
            2 => control().prop_map(Frame::Ping),
            1 => control().prop_map(Frame::Pong),
            1 => Just(Frame::BadUtf8),
            1 => control().prop_map(Frame::Unmasked),
            1 => Just(Frame::Close),
        ]
    }

    fn client_frame(fin: bool, opcode: OpCode, payload: &[u8], mask: bool) -> Vec<u8> {
        let mut header = FrameHeader::new(opcode, 0);
        header.fin = fin;
        header.mask = mask.then_some([9, 8, 7, 6]);
        let mut out = BytesMut::new();
        encode_frame(header, payload, &mut out);
        out.to_vec()
    }

    fn frame_wire(frame: &Frame) -> Vec<u8> {
        match frame {
            Frame::Text(text) => client_frame(true, OpCode::Text, text.as_bytes(), true),
            Frame::Binary(bytes) => client_frame(true, OpCode::Binary, bytes, true),
            Frame::Fragmented(bytes, at) => {
                let (first, rest) = bytes.split_at(at % (bytes.len() + 1));
                let mut wire = client_frame(false, OpCode::Binary, first, true);
                wire.extend(client_frame(true, OpCode::Continuation, rest, true));
                wire
            }
            Frame::Ping(payload) => client_frame(true, OpCode::Ping, payload, true),
            Frame::Pong(payload) => client_frame(true, OpCode::Pong, payload, true),
            Frame::BadUtf8 => client_frame(true, OpCode::Text, &[b'a', 0xff], true),
            Frame::Unmasked(payload) => client_frame(true, OpCode::Binary, payload, false),
            Frame::Close => client_frame(true, OpCode::Close, &[0x03, 0xe8], true),
        }
    }

    /// The application of the property below: echoes every message, and
    /// hands back (to be sent later, as `on_message` would) those whose
    /// length is a multiple of 3. `true`: handled.
    fn echo_now(session: &Session, message: &Message) -> bool {
        if message.len() % 3 == 0 {
            return false;
        }
        let _ = session.try_send(message.clone());
        true
    }

    /// The events of `wire`, as a lone WebSocket connection parses it and
    /// a link reports them, `middleware` applied: the reference the link's
    /// two ways of handing out events are held to.
    fn reference_events(wire: &[u8], eof: bool, middleware: bool) -> Vec<LinkEvent> {
        let mut conn = Connection::new(Side::Server, Config::default());
        conn.handle_input(wire);
        if eof {
            conn.handle_eof();
        }
        let mut events = Vec::new();
        loop {
            let event = match conn.poll_event() {
                Ok(Some(ws::Event::Text(text))) => LinkEvent::Message(Message::Text(text)),
                Ok(Some(ws::Event::Binary(bytes))) => LinkEvent::Message(Message::Binary(bytes)),
                Ok(Some(ws::Event::Ping(payload))) => LinkEvent::Ping(payload),
                Ok(Some(ws::Event::Pong(payload))) => LinkEvent::Pong(payload),
                Ok(Some(ws::Event::Close(frame))) if frame.code == CloseCode::ABNORMAL => {
                    LinkEvent::Closed(CloseReason::Eof)
                }
                Ok(Some(ws::Event::Close(frame))) => LinkEvent::Closed(CloseReason::Remote(frame)),
                Ok(None) => break,
                Err(e) => LinkEvent::Closed(CloseReason::Protocol(e)),
                Ok(Some(other)) => panic!("no such client frame was sent: {other:?}"),
            };
            let closed = matches!(event, LinkEvent::Closed(_));
            match event {
                LinkEvent::Message(message) if middleware => {
                    events.extend(
                        Upper
                            .on_received(SessionId::new(1), message)
                            .map(LinkEvent::Message),
                    );
                }
                event => events.push(event),
            }
            if closed {
                break;
            }
        }
        events
    }

    /// Feeds `wire` in `chunks` to a WebSocket server link and drains it
    /// after each chunk (and after the end, if `eof`), the writer coming
    /// after each drain. `with`: through `poll_event_with` and
    /// [`echo_now`], else through `poll_event`, each message then given to
    /// `echo_now`. Every message it did not handle is sent after it is
    /// handed back. Returns the events, those `echo_now` took included,
    /// in order, and the bytes written after each drain.
    fn drain_link(
        wire: &[u8],
        chunks: &[usize],
        eof: bool,
        middleware: bool,
        with: bool,
    ) -> (Vec<LinkEvent>, Vec<Vec<u8>>) {
        let config = LinkConfig {
            middleware: middleware.then(|| Arc::new(MiddlewareChain::new().with(Upper))),
            ..LinkConfig::default()
        };
        let (_hub, mut link, now) = ws_server(config);
        let session = link.session.clone();
        let mut seen = Vec::new();
        let mut written = Vec::new();
        let mut rest = wire;
        let mut sizes = chunks.iter().cycle();
        let mut fed_eof = false;
        loop {
            if !rest.is_empty() {
                let (chunk, tail) = rest.split_at((*sizes.next().unwrap()).min(rest.len()));
                link.handle_input(now, chunk);
                rest = tail;
            } else if eof && !fed_eof {
                link.handle_eof();
                fed_eof = true;
            } else {
                break;
            }
            loop {
                let event = if with {
                    let handled = &mut seen;
                    link.driver.poll_event_with(now, |message| {
                        if echo_now(&session, &message) {
                            handled.push(LinkEvent::Message(message));
                            return None;
                        }
                        Some(message)
                    })
                } else {
                    match link.poll_event(now) {
                        Some(LinkEvent::Message(message)) if echo_now(&session, &message) => {
                            seen.push(LinkEvent::Message(message));
                            continue;
                        }
                        event => event,
                    }
                };
                let Some(event) = event else { break };
                if let LinkEvent::Message(message) = &event {
                    let _ = session.try_send(message.clone());
                }
                seen.push(event);
            }
            written.push(transmit(&mut link, now).0);
        }
        (seen, written)
    }

    /// Issue #16: a small reply goes to the writer's own buffer, a copy,
    /// not a `Bytes` in its list; a large one, or one behind output the
    /// link holds (the pong of a ping answered on the read path), still
    /// goes as before.
    #[test]
    fn a_small_reply_is_copied_into_the_writers_buffer() {
        let (_hub, mut link, now) = ws_server(LinkConfig::default());
        let (mut head, mut out) = (Vec::new(), Vec::new());
        let reply = |payload: &[u8]| {
            let mut frame = BytesMut::new();
            encode_frame(FrameHeader::new(OpCode::Binary, 0), payload, &mut frame);
            frame.to_vec()
        };
        assert_eq!(
            link.send(Message::from(b"hi".to_vec())),
            SendOutcome::Queued
        );
        let t = link.poll_transmit_into(now, &mut head, &mut out, 1 << 16);
        assert_eq!(
            (head.as_slice(), out.len(), t.bytes),
            (&reply(b"hi")[..], 0, 4)
        );
        assert_eq!(link.outbox().pending_send_bytes(), 0);
        head.clear();

        let large = vec![7u8; 5000];
        assert_eq!(link.send(Message::from(large.clone())), SendOutcome::Queued);
        let t = link.poll_transmit_into(now, &mut head, &mut out, 1 << 16);
        assert_eq!(
            (head.len(), out.concat(), t.bytes),
            (0, reply(&large), 5004)
        );
        out.clear();

        link.handle_input(now, &masked(OpCode::Ping, b"p"));
        assert_eq!(
            events(&mut link, now),
            [LinkEvent::Ping(Bytes::from_static(b"p"))]
        );
        assert_eq!(
            link.send(Message::from(b"after".to_vec())),
            SendOutcome::Queued
        );
        let t = link.poll_transmit_into(now, &mut head, &mut out, 1 << 16);
        let mut pong = BytesMut::new();
        encode_frame(FrameHeader::new(OpCode::Pong, 0), b"p", &mut pong);
        let wire = [pong.to_vec(), reply(b"after")].concat();
        assert_eq!((head.len(), out.concat(), t.bytes), (0, wire, 10));
    }

    /// What happens to a connection in [`a_writers_own_buffer_writes_what_the_link_framed`].
    #[derive(Debug, Clone)]
    enum WriteOp {
        /// The application sends a message of this many bytes (small,
        /// larger than the copy, or large enough to go out as a chunk).
        Send(usize),
        /// The peer pings (a WebSocket): the read path frames the replies
        /// ahead of the pong.
        Ping,
        /// The writer comes with this batch size, having written the last.
        Transmit(usize),
        /// A close is asked for (`true`: an abort).
        Close(bool),
    }

    fn write_op() -> impl proptest::strategy::Strategy<Value = WriteOp> {
        use proptest::prelude::*;
        prop_oneof![
            4 => prop_oneof![0usize..200, 4000usize..5000, 16_384usize..20_000].prop_map(WriteOp::Send),
            1 => Just(WriteOp::Ping),
            4 => prop_oneof![Just(1usize), 1usize..100, Just(4096), Just(1 << 16)].prop_map(WriteOp::Transmit),
            1 => proptest::bool::weighted(0.3).prop_map(WriteOp::Close),
        ]
    }

    /// A connection of `kind`: 0 length-prefixed, 1 the same with
    /// half-close, 2 a WebSocket server.
    fn write_conn(kind: u8) -> (Hub, Conn, Instant) {
        use storm_proto::framing::LengthPrefixFramer;
        let lp = || Protocol::Framed(Box::new(LengthPrefixFramer::default()));
        match kind {
            0 => setup(lp(), LinkConfig::default()),
            1 => setup(lp(), LinkConfig::default().with_half_close(true)),
            _ => ws_server(LinkConfig::default()),
        }
    }

    proptest::proptest! {
        /// `poll_transmit_into` (the writer's own buffer, which small
        /// frames are copied into) and `poll_transmit` (every frame a
        /// `Bytes`) write the same bytes in the same order and say the
        /// same, call by call, for any mix of small and large messages,
        /// batch sizes, pings answered on the read path, closes and
        /// aborts; and the send limit counts the same.
        #[test]
        fn a_writers_own_buffer_writes_what_the_link_framed(
            kind in 0u8..3,
            ops in proptest::collection::vec(write_op(), 1..60),
        ) {
            let (_hub_a, mut a, now) = write_conn(kind);
            let (_hub_b, mut b, _) = write_conn(kind);
            let waker = std::task::Waker::noop();
            let (mut head, mut out_b) = (Vec::new(), Vec::new());
            for (i, op) in ops.into_iter().enumerate() {
                match op {
                    WriteOp::Send(len) => {
                        let message = Message::from(vec![u8::try_from(i % 251).unwrap(); len]);
                        proptest::prop_assert_eq!(a.send(message.clone()), b.send(message));
                    }
                    WriteOp::Ping => {
                        if kind == 2 {
                            let ping = masked(OpCode::Ping, &[u8::try_from(i % 251).unwrap(); 5]);
                            a.handle_input(now, &ping);
                            b.handle_input(now, &ping);
                            proptest::prop_assert_eq!(events(&mut a, now), events(&mut b, now));
                        }
                    }
                    WriteOp::Transmit(max) => {
                        a.register_waker(waker);
                        b.register_waker(waker);
                        let mut out_a = Vec::new();
                        let by_a = a.poll_transmit(now, &mut out_a, max);
                        let by_b = b.poll_transmit_into(now, &mut head, &mut out_b, max);
                        let wire_b = [head.as_slice(), &out_b.concat()].concat();
                        proptest::prop_assert_eq!(out_a.concat(), wire_b);
                        proptest::prop_assert_eq!(by_a, by_b);
                        head.clear();
                        out_b.clear();
                    }
                    WriteOp::Close(abort) => {
                        let close = if abort { CloseKind::Abort } else { CloseKind::Graceful };
                        a.outbox().request_close(close);
                        b.outbox().request_close(close);
                    }
                }
                proptest::prop_assert_eq!(
                    a.outbox().pending_send_bytes(),
                    b.outbox().pending_send_bytes()
                );
            }
        }
    }

    proptest::proptest! {
        /// `poll_event_with` hands out the events `poll_event` does, those
        /// a lone WebSocket connection parses from the same input, in
        /// order, for any input in any pieces, with and without
        /// middleware, whether the closure takes a message or hands it
        /// back; and the link frames the same bytes either way (replies
        /// before the pongs and close replies of later input).
        #[test]
        fn poll_event_with_hands_out_what_poll_event_does(
            frames in proptest::collection::vec(frame_strategy(), 0..24),
            chunks in proptest::collection::vec(1usize..80, 1..8),
            eof: bool,
            middleware: bool,
        ) {
            let wire: Vec<u8> = frames.iter().flat_map(frame_wire).collect();
            let (by_poll, written_by_poll) = drain_link(&wire, &chunks, eof, middleware, false);
            let (by_with, written_by_with) = drain_link(&wire, &chunks, eof, middleware, true);
            proptest::prop_assert_eq!(&by_with, &by_poll);
            proptest::prop_assert_eq!(written_by_with, written_by_poll);
            let expected = reference_events(&wire, eof, middleware);
            proptest::prop_assert_eq!(by_with, expected);
        }
    }

    #[test]
    fn websocket_ping_is_answered_and_a_reply_precedes_the_close_reply() {
        let (_hub, mut link, now) = ws_server(LinkConfig::default());
        let mut input = masked(OpCode::Ping, b"p");
        input.extend(masked(OpCode::Text, b"hello"));
        input.extend(masked(OpCode::Close, &1000u16.to_be_bytes()));
        link.handle_input(now, &input);
        assert_eq!(
            link.poll_event(now),
            Some(LinkEvent::Ping(Bytes::from_static(b"p")))
        );
        assert_eq!(
            link.poll_event(now),
            Some(LinkEvent::Message(Message::from("hello")))
        );
        // The reply queued now goes out before the close reply that the
        // rest of the input causes.
        let _ = link.send(Message::from("hello"));
        assert!(matches!(
            link.poll_event(now),
            Some(LinkEvent::Closed(CloseReason::Remote(f))) if f.code == CloseCode::NORMAL
        ));
        assert_eq!(link.poll_event(now), None);
        assert_eq!(
            transmit(&mut link, now),
            (b"\x8a\x01p\x81\x05hello\x88\x02\x03\xe8".to_vec(), true)
        );
    }

    #[test]
    fn websocket_graceful_close_sends_the_code_after_queued_messages_and_times_out() {
        let config = LinkConfig {
            close_timeout: Duration::from_secs(1),
            ..LinkConfig::default()
        };
        let (_hub, mut link, now) = ws_server(config);
        let _ = link.send(Message::from("bye"));
        link.session.close_with(CloseCode::GOING_AWAY, "restart");
        let (bytes, close) = transmit(&mut link, now);
        assert!(!close, "waits for the peer's reply");
        assert_eq!(&bytes[..5], b"\x81\x03bye");
        assert_eq!(&bytes[5..9], b"\x88\x09\x03\xe9");
        assert_eq!(link.poll_timeout(), Some(now + Duration::from_secs(1)));
        link.handle_timeout(now + Duration::from_secs(1));
        assert_eq!(
            events(&mut link, now),
            [LinkEvent::Closed(CloseReason::Local(CloseKind::Graceful))]
        );
        assert!(transmit(&mut link, now).1);
    }

    #[test]
    fn abort_is_reported_and_discards_output() {
        let (_hub, mut link, now) = setup(
            Protocol::Framed(Box::new(LengthPrefixFramer::default())),
            LinkConfig::default(),
        );
        let _ = link.send(Message::from(b"x".to_vec()));
        link.session.abort();
        assert_eq!(
            events(&mut link, now),
            [LinkEvent::Closed(CloseReason::Local(CloseKind::Abort))]
        );
        assert_eq!(transmit(&mut link, now), (Vec::new(), true));

        // The writer hears of it first: the outbox is discarded too, so
        // nothing stays counted against the send limit.
        let (_hub, mut link, now) = setup(
            Protocol::Framed(Box::new(LengthPrefixFramer::default())),
            LinkConfig::default(),
        );
        let _ = link.send(Message::from(b"x".to_vec()));
        link.session.abort();
        assert_eq!(transmit(&mut link, now), (Vec::new(), true));
        assert_eq!(link.outbox().pending_send_bytes(), 0);
        assert_eq!(
            events(&mut link, now),
            [LinkEvent::Closed(CloseReason::Local(CloseKind::Abort))]
        );
    }

    #[test]
    fn heartbeat_pings_and_declares_a_silent_peer_dead() {
        let config = LinkConfig {
            heartbeat: HeartbeatConfig::default()
                .with_interval(Duration::from_secs(1))
                .with_max_missed(2),
            ..LinkConfig::default()
        };
        let (_hub, mut link, start) = ws_server(config);
        let mut seen = Vec::new();
        let mut now = start;
        let mut pings = 0;
        while seen.is_empty() {
            now = link.poll_timeout().unwrap();
            assert!(
                now <= start + Duration::from_secs(10),
                "a silent peer is declared dead in time"
            );
            link.handle_timeout(now);
            seen = events(&mut link, now);
            let (bytes, _) = transmit(&mut link, now);
            pings += bytes.iter().filter(|&&b| b == 0x89).count();
        }
        assert_eq!(pings, 2);
        assert_eq!(seen, [LinkEvent::Closed(CloseReason::PeerDead)]);
        assert!(transmit(&mut link, now).1, "a dead peer is aborted");
    }

    struct Upper;
    impl Middleware for Upper {
        fn on_received(&self, _: SessionId, message: Message) -> Option<Message> {
            (!message.is_empty()).then(|| Message::from(message.as_bytes().to_ascii_uppercase()))
        }
        fn on_sending(&self, _: SessionId, message: Message) -> Option<Message> {
            Some(Message::from([message.as_bytes(), b"!"].concat()))
        }
    }

    #[test]
    fn middleware_transforms_and_suppresses() {
        let config = LinkConfig {
            middleware: Some(Arc::new(MiddlewareChain::new().with(Upper))),
            ..LinkConfig::default()
        };
        let (_hub, mut link, now) = setup(
            Protocol::Framed(Box::new(DelimiterFramer::default())),
            config,
        );
        link.handle_input(now, b"hi\n\n");
        assert_eq!(
            events(&mut link, now),
            [LinkEvent::Message(Message::from(b"HI".to_vec()))]
        );
        let _ = link.send(Message::from(b"yo".to_vec()));
        assert_eq!(transmit(&mut link, now).0, b"yo!\n");
    }
}
