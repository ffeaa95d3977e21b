//! One live connection's logic, everything but the I/O: what the adapters
//! (tokio, smol, std threads) all run per connection.
//!
//! A [`Link`] joins a protocol (a [`Framer`] for plain TCP, or a
//! [`ws::Connection`] after the upgrade), the
//! connection's [`Session`] (its outbox, shared with anyone who sends to it),
//! a [`Heartbeat`] and the [`MiddlewareChain`]. The adapter only moves bytes:
//!
//! - **read path**: bytes from the socket → [`Link::handle_input`], then
//!   [`Link::poll_event`] until `None`, each event to the application's
//!   handler; before each read, [`Link::poll_input_ready`] (a peer whose
//!   pings are answered faster than it reads the pongs is not read until
//!   they drain);
//! - **write path**: [`Link::poll_transmit`] frames what the session's outbox
//!   holds (and the protocol's own pongs, pings and close frames) into
//!   buffers for one vectored write, and says when to close the socket;
//! - **timer**: sleep until [`Link::poll_timeout`], then
//!   [`Link::handle_timeout`] and drain [`Link::poll_event`].
//!
//! The read and write paths may run on different threads (the std adapter
//! does): the link's state sits behind one short-held lock, never held while
//! user code runs. After anything the reader does that queues output (an
//! auto-pong, a close reply), the session's writer waker is woken.
//!
//! ```
//! use std::time::Instant;
//!
//! use storm_proto::Message;
//! use storm_proto::framing::LengthPrefixFramer;
//! use storm_host::hub::{Hub, HubConfig};
//! use storm_host::link::{Link, LinkConfig, LinkEvent, Protocol};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let now = Instant::now();
//! let hub = Hub::new(HubConfig::default(), now)?;
//! let session = hub.register(hub.try_admit()?, now)?;
//! let protocol = Protocol::Framed(Box::new(LengthPrefixFramer::default()));
//! let link = Link::new(session, protocol, LinkConfig::default(), now)?;
//!
//! // Read path: a length-prefixed "hi" arrives.
//! link.handle_input(now, b"\0\0\0\x02hi");
//! assert_eq!(link.poll_event(now), Some(LinkEvent::Message(Message::from(b"hi".to_vec()))));
//! assert_eq!(link.poll_event(now), None);
//!
//! // The application echoes it; the write path frames it.
//! let _ = link.send(Message::from(b"hi".to_vec()));
//! let mut out = Vec::new();
//! let transmit = link.poll_transmit(now, &mut out, 64 * 1024);
//! assert_eq!(out.concat(), b"\0\0\0\x02hi");
//! assert!(!transmit.close);
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::buf::Limit;
use bytes::{Bytes, BytesMut};

use crate::hub::{CloseKind, MiddlewareChain, SendOutcome, Session};
use storm_proto::Message;
use storm_proto::framing::{Framer, FramingError};
use storm_proto::heartbeat::{Heartbeat, HeartbeatConfig, HeartbeatConfigError, HeartbeatEvent};
use storm_proto::ws::{self, CloseCode, CloseFrame, ProtocolError, release_bytes};

/// The protocol a link speaks.
pub enum Protocol {
    /// Plain TCP with a framer: every message is [`Message::Binary`].
    Framed(Box<dyn Framer + Send>),
    /// WebSocket after the upgrade.
    WebSocket(Box<ws::Connection>),
}

impl fmt::Debug for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Framed(_) => f.write_str("Framed"),
            Self::WebSocket(conn) => f.debug_tuple("WebSocket").field(conn).finish(),
        }
    }
}

/// The protocol as a link's state keeps it. A framed link's buffers live
/// with its framer, so a WebSocket link (whose connection keeps its own)
/// carries none: every idle WebSocket connection is 64 bytes smaller.
enum Wire {
    Framed(Box<Framed>),
    WebSocket(Box<ws::Connection>),
}

/// A framed link's framer and its buffers.
struct Framed {
    framer: Box<dyn Framer + Send>,
    /// Bytes not yet cut into messages.
    input: BytesMut,
    /// Frames ready for the writer.
    output: BytesMut,
}

impl fmt::Debug for Wire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Framed(framed) => f
                .debug_struct("Framed")
                .field("input", &framed.input.len())
                .field("output", &framed.output.len())
                .finish_non_exhaustive(),
            Self::WebSocket(conn) => f.debug_tuple("WebSocket").field(conn).finish(),
        }
    }
}

impl From<Protocol> for Wire {
    fn from(protocol: Protocol) -> Self {
        match protocol {
            Protocol::Framed(framer) => Self::Framed(Box::new(Framed {
                framer,
                input: BytesMut::new(),
                output: BytesMut::new(),
            })),
            Protocol::WebSocket(conn) => Self::WebSocket(conn),
        }
    }
}

/// How a [`Link`] behaves.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Pings (WebSocket ping frames), dead-peer detection and the idle
    /// timeout. Plain TCP has no ping, so only `idle_timeout` applies there.
    /// Default: [`HeartbeatConfig::default`] (ping every 30 s, dead after 3
    /// missed pongs, no idle timeout).
    pub heartbeat: HeartbeatConfig,
    /// How long a graceful close waits for the peer's close frame (WebSocket)
    /// before the socket is closed anyway. Default 5 s.
    pub close_timeout: Duration,
    /// Middleware run on every message received and sent. Default: none.
    pub middleware: Option<Arc<MiddlewareChain>>,
    /// A link that goes idle (nothing to write after traffic) returns its
    /// buffers and queues to the allocator, and [`Transmit::release`]
    /// tells the writer to return its own: at once, unless it already did
    /// less than `release_after` ago; then when that much time has passed
    /// (a connection that keeps sending bursts would otherwise allocate
    /// its buffers again for every burst). Zero returns them at every idle
    /// moment. Default 1 s.
    pub release_after: Duration,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            heartbeat: HeartbeatConfig::default(),
            close_timeout: Duration::from_secs(5),
            middleware: None,
            release_after: Duration::from_secs(1),
        }
    }
}

/// What happened on a link, for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkEvent {
    /// A whole message (after middleware).
    Message(Message),
    /// A WebSocket ping (already answered when auto-pong is on).
    Ping(Bytes),
    /// A WebSocket pong.
    Pong(Bytes),
    /// A heartbeat round trip was measured.
    Rtt(Duration),
    /// The connection is over; the last event. Close the socket once
    /// [`Link::poll_transmit`] says so (or at once for an abort).
    Closed(CloseReason),
}

/// Why a link closed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer closed the WebSocket with this frame (after we did, or
    /// first: our reply is queued).
    Remote(CloseFrame),
    /// The transport ended (for WebSocket: without a close frame).
    Eof,
    /// This side closed: [`Session::request_close`] (or the hub's
    /// `close_all`), the slow-consumer policy, or a graceful close that
    /// timed out waiting for the peer.
    Local(CloseKind),
    /// The peer missed too many pongs.
    PeerDead,
    /// Nothing arrived for the idle timeout.
    IdleTimeout,
    /// The peer broke the WebSocket protocol; the close frame with this
    /// code is queued.
    Protocol(ProtocolError),
    /// The peer's framing was invalid (a frame over the limit, a truncated
    /// frame at EOF).
    Framing(FramingError),
}

impl CloseReason {
    /// Whether this is an ordinary end of a connection rather than a fault
    /// (a close frame, EOF, a local close).
    #[must_use]
    pub fn is_normal(&self) -> bool {
        matches!(self, Self::Remote(_) | Self::Eof | Self::Local(_))
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Remote(frame) if frame.reason.is_empty() => {
                write!(f, "closed by peer ({})", frame.code)
            }
            Self::Remote(frame) => write!(f, "closed by peer ({} {})", frame.code, frame.reason),
            Self::Eof => f.write_str("connection ended"),
            Self::Local(CloseKind::Graceful) => f.write_str("closed"),
            Self::Local(CloseKind::Abort) => f.write_str("aborted"),
            Self::PeerDead => f.write_str("peer stopped answering pings"),
            Self::IdleTimeout => f.write_str("idle timeout"),
            Self::Protocol(e) => write!(f, "protocol error: {e}"),
            Self::Framing(e) => write!(f, "framing error: {e}"),
        }
    }
}

/// What [`Link::poll_transmit`] asks of the writer.
#[must_use = "close says when to close the socket"]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Transmit {
    /// Bytes appended to the caller's buffer list.
    pub bytes: usize,
    /// Close the socket after writing what was appended (a graceful close
    /// that has flushed, or an abort: then nothing was appended).
    pub close: bool,
    /// The link went idle and returned its buffers (see
    /// [`LinkConfig::release_after`]): the writer should return its own
    /// (such as its list of buffers to write) too.
    pub release: bool,
    /// [`Link::poll_timeout`] changed in this call (a graceful close began
    /// its wait, an idle link its release countdown): re-arm the timer.
    pub timer_changed: bool,
}

/// A [`Link`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkConfigError {
    /// The heartbeat configuration is invalid.
    Heartbeat(HeartbeatConfigError),
}

impl fmt::Display for LinkConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Heartbeat(e) => write!(f, "heartbeat: {e}"),
        }
    }
}

impl std::error::Error for LinkConfigError {}

/// One connection's protocol state, session and heartbeat. See the
/// [module docs](self).
#[derive(Debug)]
pub struct Link {
    session: Arc<Session>,
    middleware: Option<Arc<MiddlewareChain>>,
    close_timeout: Duration,
    release_after: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    wire: Wire,
    heartbeat: Heartbeat,
    /// Set once `LinkEvent::Closed` was reported.
    closed: bool,
    /// A graceful WebSocket close waits for the peer's reply until then.
    close_deadline: Option<Instant>,
    /// The writer must close the socket after its next write.
    finish: bool,
    /// Scratch for draining the outbox.
    batch: Vec<Message>,
    /// Events ready for `poll_event` (timer results, heartbeat RTTs).
    events: VecDeque<LinkEvent>,
    /// The transport ended.
    eof: bool,
    /// The close frame a graceful close sends once the outbox is drained.
    /// Boxed: few links ever carry one, and every link's state is part of
    /// an idle connection's memory.
    close_frame: Option<Box<(CloseCode, String)>>,
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
    /// Traffic since the link was last idle: the next idle
    /// `poll_transmit` returns the buffers, or leaves it to the timer.
    busy: bool,
    /// When the buffers were last returned.
    released: Option<Instant>,
    /// Idle since the last return, which was too recent: return them again
    /// `release_after` after it (the timer).
    release_pending: bool,
    /// The buffers were returned; the writer hears it from its next
    /// `poll_transmit`.
    release_writer: bool,
}

impl State {
    /// When [`Link::handle_timeout`] is next due.
    fn deadline(&self, release_after: Duration) -> Option<Instant> {
        if self.closed && self.close_deadline.is_none() {
            return None;
        }
        [
            self.heartbeat.poll_timeout(),
            self.close_deadline,
            self.release_deadline(release_after),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// When a pending release is due.
    fn release_deadline(&self, release_after: Duration) -> Option<Instant> {
        if !self.release_pending {
            return None;
        }
        self.released?.checked_add(release_after)
    }

    /// Frees the buffers and queues that hold nothing.
    fn release_buffers(&mut self) {
        if self.batch.is_empty() && self.batch.capacity() != 0 {
            self.batch = Vec::new();
        }
        if self.events.is_empty() && self.events.capacity() != 0 {
            self.events = VecDeque::new();
        }
        match &mut self.wire {
            Wire::Framed(framed) => {
                release_bytes(&mut framed.input);
                release_bytes(&mut framed.output);
            }
            Wire::WebSocket(conn) => conn.release_buffers(),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Link {
    /// A link for `session` speaking `protocol`, from `now`. Runs the
    /// middleware's `on_connect`.
    ///
    /// # Errors
    ///
    /// [`LinkConfigError`] when the configuration is invalid.
    pub fn new(
        session: Arc<Session>,
        protocol: Protocol,
        config: LinkConfig,
        now: Instant,
    ) -> Result<Self, LinkConfigError> {
        let mut heartbeat_config = config.heartbeat;
        if matches!(protocol, Protocol::Framed(_)) {
            // Plain TCP has no ping frame: only the idle timeout applies.
            heartbeat_config.interval = Duration::ZERO;
        }
        let heartbeat =
            Heartbeat::new(heartbeat_config, now).map_err(LinkConfigError::Heartbeat)?;
        if let Some(chain) = &config.middleware {
            chain.connect(session.id());
        }
        Ok(Self {
            session,
            middleware: config.middleware,
            close_timeout: config.close_timeout,
            release_after: config.release_after,
            state: Mutex::new(State {
                wire: protocol.into(),
                heartbeat,
                closed: false,
                close_deadline: None,
                finish: false,
                batch: Vec::new(),
                close_frame: None,
                events: VecDeque::new(),
                eof: false,
                unreleased: 0,
                in_writer: 0,
                pong_held: false,
                busy: false,
                released: None,
                release_pending: false,
                release_writer: false,
            }),
        })
    }

    /// The session: id, outbox, metrics, groups (through the hub).
    #[must_use]
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// Sends a message through the middleware and the session's
    /// slow-consumer policy. Suppressed by middleware: reported as queued.
    pub fn send(&self, message: Message) -> SendOutcome {
        let message = match &self.middleware {
            Some(chain) => match chain.sending(self.session.id(), message) {
                Some(message) => message,
                None => return SendOutcome::Queued,
            },
            None => message,
        };
        self.session.send(message)
    }

    /// Asks for a graceful close: queued messages are written, then a
    /// WebSocket close frame with `code` (1000 when `None`) and the socket
    /// is closed once the peer answers (or after the close timeout).
    pub fn close(&self, code: Option<CloseCode>, reason: &str) {
        {
            let mut state = lock(&self.state);
            if state.close_frame.is_none() {
                state.close_frame = Some(Box::new((
                    code.unwrap_or(CloseCode::NORMAL),
                    reason.to_owned(),
                )));
            }
        }
        self.session.request_close(CloseKind::Graceful);
    }

    /// Closes the socket at once, discarding what is queued.
    pub fn abort(&self) {
        self.session.request_close(CloseKind::Abort);
    }

    /// Feeds bytes read from the socket. Then drain
    /// [`poll_event`](Self::poll_event), which parses them.
    pub fn handle_input(&self, now: Instant, data: &[u8]) {
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        if state.closed {
            return;
        }
        self.note_input(state, now, data.len());
        match &mut state.wire {
            Wire::Framed(framed) => framed.input.extend_from_slice(data),
            Wire::WebSocket(conn) => conn.handle_input(data),
        }
    }

    /// Reads straight into the WebSocket's input buffer while a large frame
    /// arrives, instead of [`handle_input`](Self::handle_input)'s copy: see
    /// [`ws::Connection::fill_input`]. `None` (without calling `read`) when
    /// there is no such frame: read into any buffer and call
    /// `handle_input`.
    ///
    /// The link's lock is held while `read` runs, so it must not block:
    /// one non-blocking read. `now` is asked for the time only when bytes
    /// arrived (a read that finds nothing costs no clock read).
    pub fn fill_input<T>(
        &self,
        now: impl FnOnce() -> Instant,
        read: impl FnOnce(&mut Limit<&mut BytesMut>) -> T,
    ) -> Option<T> {
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        if state.closed {
            return None;
        }
        let Wire::WebSocket(conn) = &mut state.wire else {
            return None;
        };
        let (result, appended) = conn.fill_input(read)?;
        if appended > 0 {
            self.note_input(state, now(), appended);
        }
        Some(result)
    }

    /// Bookkeeping for `len` bytes of input arriving at `now`.
    fn note_input(&self, state: &mut State, now: Instant, len: usize) {
        state.busy = true;
        state.heartbeat.handle_activity(now);
        // Input is parsed as the application drains events, so read
        // accounting is only metrics.
        self.session.on_read_consumed(len);
    }

    /// The socket has no more bytes to read. [`poll_event`](Self::poll_event)
    /// reports what was still buffered, then [`LinkEvent::Closed`].
    pub fn handle_eof(&self) {
        let mut state = lock(&self.state);
        if !state.closed {
            state.eof = true;
            if let Wire::WebSocket(conn) = &mut state.wire {
                conn.handle_eof();
            }
        }
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
    pub fn poll_input_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        {
            let mut guard = lock(&self.state);
            let state = &mut *guard;
            if state.closed || state.eof {
                return Poll::Ready(());
            }
            self.admit_pong(state);
            if !state.pong_held {
                return Poll::Ready(());
            }
        }
        // Registered under the session's lock: a drain between the check
        // above and here is not missed.
        if self.session.poll_writable(cx).is_pending() {
            return Poll::Pending;
        }
        lock(&self.state).pong_held = false;
        Poll::Ready(())
    }

    /// Queues the WebSocket's waiting auto-pong if the send limit has room
    /// for it, counted like a reply framed on the read path. Otherwise it
    /// waits (a later ping's replaces it, and the writer takes it when it
    /// next comes) and the session is backpressured until the writer
    /// drains it to half; meanwhile the reader waits
    /// ([`poll_input_ready`](Self::poll_input_ready)).
    fn admit_pong(&self, state: &mut State) {
        let Wire::WebSocket(conn) = &mut state.wire else {
            return;
        };
        let Some(len) = conn.waiting_pong() else {
            return;
        };
        if self.session.admit_control(len) {
            conn.queue_pong();
            state.unreleased += len;
        } else {
            state.pong_held = true;
        }
    }

    /// The next event, in order; `None` when nothing more can be parsed
    /// (read more, or wait for the timer).
    ///
    /// Before it parses further input, it frames the messages the
    /// application queued in answer to earlier events, so a reply always
    /// precedes anything later input causes (a close reply, the close frame
    /// of a protocol error). The writer is woken when output is ready.
    pub fn poll_event(&self, now: Instant) -> Option<LinkEvent> {
        loop {
            let (event, wake) = {
                let mut guard = lock(&self.state);
                let state = &mut *guard;
                match state.events.pop_front() {
                    Some(event) => (Some(event), false),
                    None if state.closed => (None, state.finish),
                    None => {
                        let before = has_output(&state.wire);
                        // Only a WebSocket reader makes output of its own
                        // (pongs, close replies) that must not overtake
                        // the replies already queued; a framed link leaves
                        // the outbox to the writer, so the outbox's limit
                        // holds against a peer that sends but never reads.
                        let ordered =
                            matches!(state.wire, Wire::WebSocket(_)) && self.session.has_queued();
                        if ordered || self.session.close_request().is_some() {
                            self.pump(state, now, usize::MAX, false);
                        }
                        let event = match state.events.pop_front() {
                            Some(event) => Some(event),
                            None => next_event(state, now),
                        };
                        if matches!(event, Some(LinkEvent::Ping(_))) {
                            self.admit_pong(state);
                        }
                        // Wake the writer when output just appeared (it was
                        // woken for what was there before) or it must close.
                        let after = has_output(&state.wire);
                        (event, (after && !before) || state.finish)
                    }
                }
            };
            if wake {
                self.session.wake_writer();
            }
            if let Some(event) = self.deliver(event?) {
                return Some(event);
            }
        }
    }

    /// Bookkeeping, middleware and session state for one event leaving the
    /// link; `None` when middleware suppressed it.
    fn deliver(&self, mut event: LinkEvent) -> Option<LinkEvent> {
        let id = self.session.id();
        match &mut event {
            LinkEvent::Message(message) => {
                self.session.on_message_received();
                if let Some(chain) = &self.middleware {
                    let taken = std::mem::replace(message, Message::Binary(Bytes::new()));
                    *message = chain.received(id, taken)?;
                }
            }
            LinkEvent::Closed(reason) => {
                // Refuse further sends; the writer flushes what must go out.
                self.session.request_close(CloseKind::Graceful);
                if let Some(chain) = &self.middleware {
                    match reason {
                        CloseReason::Protocol(e) => chain.error(id, e),
                        CloseReason::Framing(e) => chain.error(id, e),
                        _ => {}
                    }
                    chain.disconnect(id);
                }
            }
            _ => {}
        }
        Some(event)
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        lock(&self.state).deadline(self.release_after)
    }

    /// Handles what is due at `now`: pings, dead peers, idle timeouts, a
    /// graceful close the peer never answered. Then drain
    /// [`poll_event`](Self::poll_event).
    pub fn handle_timeout(&self, now: Instant) {
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        if state
            .release_deadline(self.release_after)
            .is_some_and(|at| now >= at)
        {
            // The writer is woken below and hears it from poll_transmit.
            self.release(state, now);
        }
        if state.close_deadline.is_some_and(|deadline| now >= deadline) {
            state.close_deadline = None;
            state.finish = true;
            if !state.closed {
                state.closed = true;
                state
                    .events
                    .push_back(LinkEvent::Closed(CloseReason::Local(CloseKind::Graceful)));
            }
        }
        let mut dead = false;
        if !state.closed {
            state.heartbeat.handle_timeout(now);
            while let Some(event) = state.heartbeat.poll_event() {
                let reason = match event {
                    HeartbeatEvent::SendPing(payload) => {
                        if let Wire::WebSocket(conn) = &mut state.wire {
                            let _ = conn.send_ping(&payload);
                        }
                        continue;
                    }
                    HeartbeatEvent::Rtt(rtt) => {
                        state.events.push_back(LinkEvent::Rtt(rtt));
                        continue;
                    }
                    HeartbeatEvent::PeerDead { .. } => CloseReason::PeerDead,
                    HeartbeatEvent::IdleTimeout => CloseReason::IdleTimeout,
                    // The heartbeat's events are non-exhaustive: one this
                    // link does not know is not a reason to close.
                    _ => continue,
                };
                state.closed = true;
                dead = true;
                state.events.push_back(LinkEvent::Closed(reason));
                break;
            }
        }
        drop(guard);
        if dead {
            self.session.request_close(CloseKind::Abort);
        }
        self.session.wake_writer();
    }

    /// Returns every empty buffer and queue of the link, its protocol and
    /// its outbox; the writer is told by its next `poll_transmit`.
    fn release(&self, state: &mut State, now: Instant) {
        state.release_buffers();
        self.session.release_buffers();
        state.release_writer = true;
        state.released = Some(now);
        state.release_pending = false;
    }

    /// Moves queued messages from the session's outbox into the protocol
    /// (framing them), and starts a requested close. `for_writer`: the
    /// writer takes the result now, so the bytes leave the send limit;
    /// otherwise (the read path) they stay counted until it does.
    fn pump(&self, state: &mut State, now: Instant, max_bytes: usize, for_writer: bool) {
        let mut batch = std::mem::take(&mut state.batch);
        let drained = if for_writer {
            self.session.drain_written(&mut batch, max_bytes)
        } else {
            let drained = self.session.drain_into(&mut batch, max_bytes);
            state.unreleased += drained.bytes;
            drained
        };
        if drained.messages == 0 && drained.close.is_none() {
            state.batch = batch;
            return;
        }
        if drained.close == Some(CloseKind::Abort) {
            state.finish = true;
            if !state.closed {
                state.closed = true;
                state
                    .events
                    .push_back(LinkEvent::Closed(CloseReason::Local(CloseKind::Abort)));
            }
            state.batch = batch;
            return;
        }
        for message in batch.drain(..) {
            match &mut state.wire {
                Wire::Framed(framed) => {
                    // A message the framer refuses (too large for the local
                    // limit) is dropped; it was accounted as sent.
                    let _ = framed.framer.encode(message.as_bytes(), &mut framed.output);
                }
                Wire::WebSocket(conn) => {
                    let _ = match &message {
                        Message::Text(text) => conn.send_text(text),
                        Message::Binary(bytes) => conn.send_binary(bytes),
                    };
                }
            }
        }
        state.batch = batch;
        if drained.close == Some(CloseKind::Graceful) {
            match &mut state.wire {
                Wire::Framed(_) => {
                    state.finish = true;
                    if !state.closed {
                        state.closed = true;
                        state
                            .events
                            .push_back(LinkEvent::Closed(CloseReason::Local(CloseKind::Graceful)));
                    }
                }
                Wire::WebSocket(conn) => {
                    if conn.is_open() {
                        let (code, reason) = state
                            .close_frame
                            .take()
                            .map_or((CloseCode::NORMAL, String::new()), |frame| *frame);
                        if conn.close(code, &reason).is_err() {
                            let _ = conn.close(CloseCode::NORMAL, "");
                        }
                    }
                    if state.close_deadline.is_none() && !conn.is_closed() {
                        state.close_deadline = now.checked_add(self.close_timeout);
                    }
                }
            }
        }
    }

    /// The write path: appends buffers to write (in order) to `out`, at most
    /// about `max_bytes` of messages from the outbox, and says whether to
    /// close the socket after writing them. Call when the session's writer
    /// waker fires (register it with [`Session::register_waker`]) and after
    /// every read, once what the last call appended is written: the bytes
    /// the read path framed (replies, auto-pongs) count against the send
    /// limit until the writer comes back.
    pub fn poll_transmit(&self, now: Instant, out: &mut Vec<Bytes>, max_bytes: usize) -> Transmit {
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        let mut transmit = Transmit::default();
        let deadline = state.deadline(self.release_after);
        if !state.finish {
            self.pump(state, now, max_bytes, true);
        }
        // The writer is back: it wrote what it took last time. What the
        // read path framed since goes to it now, and counts until its next
        // call.
        let written =
            std::mem::replace(&mut state.in_writer, std::mem::take(&mut state.unreleased));
        if written > 0 {
            self.session.on_written(written);
        }
        match &mut state.wire {
            Wire::Framed(framed) => {
                if !framed.output.is_empty()
                    && self.session.close_request() != Some(CloseKind::Abort)
                {
                    let bytes = framed.output.split().freeze();
                    transmit.bytes += bytes.len();
                    out.push(bytes);
                }
            }
            Wire::WebSocket(conn) => {
                while let Some(bytes) = conn.poll_transmit() {
                    if self.session.close_request() != Some(CloseKind::Abort) {
                        transmit.bytes += bytes.len();
                        out.push(bytes);
                    }
                }
                if conn.is_closed() {
                    state.finish = true;
                    state.close_deadline = None;
                }
            }
        }
        transmit.close = state.finish;
        if transmit.bytes > 0 {
            state.busy = true;
        } else if !transmit.close && std::mem::take(&mut state.busy) {
            // Nothing to write after traffic: an idle connection holds no
            // buffer memory. But a busy one goes idle between every two
            // bursts: returning them each time would allocate them again
            // for the next burst, so within `release_after` of the last
            // return, the timer returns them.
            let recent = state
                .released
                .is_some_and(|at| now.saturating_duration_since(at) < self.release_after);
            if recent {
                state.release_pending = true;
            } else {
                self.release(state, now);
            }
        }
        transmit.release = std::mem::take(&mut state.release_writer);
        transmit.timer_changed = state.deadline(self.release_after) != deadline;
        let needs_event = state.closed && !state.events.is_empty();
        drop(guard);
        if needs_event {
            // A Closed event (an abort) waits for the reader.
            self.session.wake_writer();
        }
        transmit
    }
}

/// Parses one event from the protocol's buffered input.
fn next_event(state: &mut State, now: Instant) -> Option<LinkEvent> {
    match &mut state.wire {
        Wire::Framed(framed) => {
            let result = if state.eof {
                framed.framer.decode_eof(&mut framed.input)
            } else {
                framed.framer.decode(&mut framed.input)
            };
            match result {
                Ok(Some(message)) => Some(LinkEvent::Message(Message::Binary(message))),
                Ok(None) if state.eof => {
                    state.closed = true;
                    state.finish = true;
                    Some(LinkEvent::Closed(CloseReason::Eof))
                }
                Ok(None) => None,
                Err(e) => {
                    state.closed = true;
                    state.finish = true;
                    Some(LinkEvent::Closed(CloseReason::Framing(e)))
                }
            }
        }
        Wire::WebSocket(conn) => match conn.poll_event() {
            Ok(Some(ws::Event::Text(text))) => Some(LinkEvent::Message(Message::Text(text))),
            Ok(Some(ws::Event::Binary(bytes))) => Some(LinkEvent::Message(Message::Binary(bytes))),
            Ok(Some(ws::Event::Ping(payload))) => Some(LinkEvent::Ping(payload)),
            Ok(Some(ws::Event::Pong(payload))) => {
                state.heartbeat.handle_pong(now, &payload);
                while let Some(event) = state.heartbeat.poll_event() {
                    if let HeartbeatEvent::Rtt(rtt) = event {
                        state.events.push_back(LinkEvent::Rtt(rtt));
                    }
                }
                Some(LinkEvent::Pong(payload))
            }
            Ok(Some(ws::Event::Close(frame))) => {
                state.closed = true;
                if state.eof {
                    state.finish = true;
                }
                Some(LinkEvent::Closed(if frame.code == CloseCode::ABNORMAL {
                    CloseReason::Eof
                } else {
                    CloseReason::Remote(frame)
                }))
            }
            // `ws::Event` is non-exhaustive: an event this link does not
            // know carries nothing for the application.
            Ok(Some(_)) | Ok(None) => None,
            Err(e) => {
                state.closed = true;
                Some(LinkEvent::Closed(CloseReason::Protocol(e)))
            }
        },
    }
}

fn has_output(wire: &Wire) -> bool {
    match wire {
        Wire::Framed(framed) => !framed.output.is_empty(),
        Wire::WebSocket(conn) => conn.has_transmit(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // tests take one starting Instant from the clock

    use super::*;
    use crate::hub::{Hub, HubConfig, Middleware, SessionId};
    use storm_proto::framing::{DelimiterFramer, LengthPrefixFramer};
    use storm_proto::ws::frame::{FrameHeader, OpCode, encode_frame};
    use storm_proto::ws::{Config, Connection, Side};

    fn setup(protocol: Protocol, config: LinkConfig) -> (Hub, Link, Instant) {
        let now = Instant::now();
        let hub = Hub::new(HubConfig::default(), now).unwrap();
        let session = hub.register(hub.try_admit().unwrap(), now).unwrap();
        (hub, Link::new(session, protocol, config, now).unwrap(), now)
    }

    /// A link whose send limit is `limit` bytes, under the Drop policy.
    fn limited(protocol: Protocol, limit: usize) -> (Hub, Link, Instant) {
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
        let session = hub.register(hub.try_admit().unwrap(), now).unwrap();
        let link = Link::new(session, protocol, LinkConfig::default(), now).unwrap();
        (hub, link, now)
    }

    fn ws_limited(limit: usize) -> (Hub, Link, Instant) {
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

    fn ws_server(config: LinkConfig) -> (Hub, Link, Instant) {
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

    fn events(link: &Link, now: Instant) -> Vec<LinkEvent> {
        std::iter::from_fn(|| link.poll_event(now)).collect()
    }

    fn transmit(link: &Link, now: Instant) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let t = link.poll_transmit(now, &mut out, 1 << 20);
        (out.concat(), t.close)
    }

    /// 100 requests arrive; the application answers each with 100 bytes;
    /// the writer is stuck (poll_transmit is never called): the send limit
    /// (1000 bytes, policy Drop) must hold.
    fn peer_that_sends_but_never_reads(protocol: Protocol, request: &[u8]) {
        let (_hub, link, now) = limited(protocol, 1000);
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
        assert_eq!((queued, dropped), (10, 90));
        // Once the writer has written what was framed (it comes back for
        // more), the limit is released.
        let (bytes, _) = transmit(&link, now);
        assert!(bytes.len() >= 1000);
        let (more, _) = transmit(&link, now);
        assert!(more.is_empty());
        assert!(matches!(
            link.send(Message::from(vec![0u8; 100])),
            SendOutcome::Queued
        ));
    }

    /// Buffers and queues of the link, its protocol and its outbox.
    fn buffer_capacity(link: &Link) -> usize {
        let state = lock(&link.state);
        let protocol = match &state.wire {
            Wire::WebSocket(conn) => conn.buffer_capacity(),
            Wire::Framed(framed) => framed.input.capacity() + framed.output.capacity(),
        };
        protocol + state.batch.capacity() + state.events.capacity() + link.session.outbox_capacity()
    }

    /// `request` × 20 in, each echoed back, all written at `now`.
    fn echo_burst(link: &Link, request: &[u8], now: Instant) {
        link.handle_input(now, &request.repeat(20));
        for event in events(link, now) {
            let LinkEvent::Message(message) = event else {
                panic!("{event:?}");
            };
            assert!(matches!(link.send(message), SendOutcome::Queued));
        }
        assert!(buffer_capacity(link) > 0, "traffic allocated buffers");
        let sent = link.poll_transmit(now, &mut Vec::new(), 1 << 20);
        assert!(sent.bytes > 0 && !sent.release);
    }

    /// A link that goes idle returns every buffer and queue of its own,
    /// its protocol's and its outbox's at once, and tells the writer. One
    /// that goes idle again within `release_after` keeps them until then
    /// (the timer), so that a connection sending burst after burst does
    /// not allocate them again for each.
    fn idle_link_holds_no_buffers(protocol: Protocol, request: &[u8]) {
        let (_hub, link, now) = setup(protocol, LinkConfig::default());
        let mut out = Vec::new();
        echo_burst(&link, request, now);
        let idle = link.poll_transmit(now, &mut out, 1 << 20);
        assert_eq!((idle.bytes, idle.release), (0, true), "the writer is told");
        assert_eq!(buffer_capacity(&link), 0, "buffers left on an idle link");
        assert!(
            !link.poll_transmit(now, &mut out, 1 << 20).release,
            "told once"
        );

        // The next burst, soon after: idle again, the buffers stay.
        let soon = now + Duration::from_millis(10);
        echo_burst(&link, request, soon);
        let idle = link.poll_transmit(soon, &mut out, 1 << 20);
        assert_eq!((idle.bytes, idle.release), (0, false));
        assert!(buffer_capacity(&link) > 0, "a busy link keeps its buffers");
        let due = now + LinkConfig::default().release_after;
        assert_eq!(link.poll_timeout(), Some(due));
        assert!(idle.timer_changed, "the writer hears that the timer moved");
        let again = link.poll_transmit(soon, &mut out, 1 << 20);
        assert_eq!((again.bytes, again.timer_changed), (0, false));
        link.handle_timeout(due);
        assert_eq!(
            buffer_capacity(&link),
            0,
            "buffers left after release_after"
        );
        let told = link.poll_transmit(due, &mut out, 1 << 20);
        assert_eq!((told.bytes, told.release), (0, true));
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
        let (_hub, link, now) = setup(protocol, config);
        for _ in 0..2 {
            echo_burst(&link, b"\0\0\0\x05hello", now);
            let idle = link.poll_transmit(now, &mut Vec::new(), 1 << 20);
            assert_eq!((idle.bytes, idle.release), (0, true));
            assert_eq!(buffer_capacity(&link), 0);
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

    #[test]
    fn a_framed_peer_that_sends_but_never_reads_meets_the_send_limit() {
        let protocol = Protocol::Framed(Box::new(LengthPrefixFramer::default()));
        peer_that_sends_but_never_reads(protocol, b"\0\0\0\x01q");
    }

    #[test]
    fn a_websocket_peer_that_sends_but_never_reads_meets_the_send_limit() {
        let conn = Connection::new(Side::Server, Config::default());
        let protocol = Protocol::WebSocket(Box::new(conn));
        peer_that_sends_but_never_reads(protocol, &masked(OpCode::Binary, b"q"));
    }

    #[test]
    fn framed_messages_in_and_out() {
        let (_hub, link, now) = setup(
            Protocol::Framed(Box::new(DelimiterFramer::lines())),
            LinkConfig::default(),
        );
        link.handle_input(now, b"one\r\ntw");
        link.handle_input(now, b"o\n");
        assert_eq!(
            events(&link, now),
            [
                LinkEvent::Message(Message::from(b"one".to_vec())),
                LinkEvent::Message(Message::from(b"two".to_vec()))
            ]
        );
        assert_eq!(link.send(Message::from("x")), SendOutcome::Queued);
        assert_eq!(transmit(&link, now), (b"x\n".to_vec(), false));
        assert_eq!(link.session().metrics().messages_received, 2);
    }

    #[test]
    fn a_large_websocket_frame_is_read_in_place_and_counted() {
        use bytes::BufMut;
        let (_hub, link, now) = ws_server(LinkConfig::default());
        let payload = vec![5u8; 50_000];
        let frame = masked(OpCode::Binary, &payload);
        let read_in_place = |bytes: &[u8]| {
            link.fill_input(
                || now,
                |room| {
                    room.put_slice(bytes);
                    bytes.len()
                },
            )
        };
        // No frame in progress: read elsewhere and call handle_input.
        assert_eq!(read_in_place(&frame[..10]), None);
        link.handle_input(now, &frame[..10]);
        assert!(events(&link, now).is_empty());
        // The header is parsed: the rest of the frame goes in place.
        assert_eq!(read_in_place(&frame[10..]), Some(frame.len() - 10));
        assert_eq!(
            events(&link, now),
            [LinkEvent::Message(Message::from(payload))]
        );
        let metrics = link.session().metrics();
        assert_eq!(metrics.bytes_received, frame.len() as u64);
        assert_eq!(metrics.messages_received, 1);
        // A framed link has no frame to read in place.
        let (_hub, framed, now) = setup(
            Protocol::Framed(Box::new(LengthPrefixFramer::default())),
            LinkConfig::default(),
        );
        assert_eq!(framed.fill_input(|| now, |room| room.remaining_mut()), None);
    }

    #[test]
    fn framed_graceful_close_flushes_then_closes_and_abort_discards() {
        let (_hub, link, now) = setup(
            Protocol::Framed(Box::new(LengthPrefixFramer::default())),
            LinkConfig::default(),
        );
        let _ = link.send(Message::from(b"last".to_vec()));
        link.close(None, "");
        assert_eq!(
            link.send(Message::from(b"late".to_vec())),
            SendOutcome::Closed(Message::from(b"late".to_vec()))
        );
        assert_eq!(transmit(&link, now), (b"\0\0\0\x04last".to_vec(), true));

        let (_hub, link, now) = setup(
            Protocol::Framed(Box::new(LengthPrefixFramer::default())),
            LinkConfig::default(),
        );
        let _ = link.send(Message::from(b"dropped".to_vec()));
        link.abort();
        assert_eq!(transmit(&link, now), (Vec::new(), true));
    }

    #[test]
    fn framing_errors_and_eof_close() {
        let (_hub, link, now) = setup(
            Protocol::Framed(Box::new(LengthPrefixFramer::default())),
            LinkConfig::default(),
        );
        link.handle_input(now, b"\0\0\0\x05ab");
        link.handle_eof();
        assert!(matches!(
            events(&link, now).as_slice(),
            [LinkEvent::Closed(CloseReason::Framing(_))]
        ));
        assert!(transmit(&link, now).1);
    }

    /// A peer pings and never reads: the pongs count against the send
    /// limit (1000 bytes: seven pongs of 127), and once it is full only
    /// the latest ping is answered.
    #[test]
    fn a_ping_flood_is_answered_within_the_send_limit() {
        let (_hub, link, now) = ws_limited(1000);
        link.handle_input(now, &ping_flood());
        let pings = events(&link, now);
        assert_eq!(pings.len(), 100);
        assert!(pings.iter().all(|e| matches!(e, LinkEvent::Ping(_))));
        assert_eq!(link.session().pending_send_bytes(), 7 * 127);
        let (wire, _) = transmit(&link, now);
        let expected: Vec<ws::Event> = (0..7).chain([99]).map(pong).collect();
        assert_eq!(decoded(&wire), expected);
    }

    /// Once a pong finds the send limit full, the reader is held back until
    /// the writer has written what counts against it (down to half the
    /// limit), as for a handler that waits to send.
    #[test]
    fn a_ping_flood_holds_the_reader_back_until_the_limit_drains() {
        let (_hub, link, now) = ws_limited(1000);
        let flag = Arc::new(Flag::default());
        let waker = std::task::Waker::from(Arc::clone(&flag));
        let mut cx = Context::from_waker(&waker);
        assert!(link.poll_input_ready(&mut cx).is_ready());
        link.handle_input(now, &ping_flood());
        assert_eq!(events(&link, now).len(), 100);
        assert!(link.poll_input_ready(&mut cx).is_pending());
        assert!(link.session().is_backpressured());
        // The writer takes the pongs; they count until it comes back.
        let (wire, _) = transmit(&link, now);
        assert_eq!(decoded(&wire).len(), 8);
        assert!(!flag.woken());
        assert!(link.poll_input_ready(&mut cx).is_pending());
        // Back for more: they are written, and the reader is woken.
        let (wire, _) = transmit(&link, now);
        assert!(wire.is_empty());
        assert!(flag.woken());
        assert!(link.poll_input_ready(&mut cx).is_ready());
        assert_eq!(link.session().pending_send_bytes(), 0);
        // And the next ping is answered.
        link.handle_input(now, &masked(OpCode::Ping, b"again"));
        assert_eq!(events(&link, now).len(), 1);
        assert_eq!(
            decoded(&transmit(&link, now).0),
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
            let (_hub, link, now) = ws_limited(limit);
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
                            events(&link, now).as_slice(),
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
                        wire.extend(transmit(&link, now).0);
                        queued_since_drain = 0;
                    }
                }
                let held = match &lock(&link.state).wire {
                    Wire::WebSocket(conn) => conn.transmit_len(),
                    Wire::Framed(_) => unreachable!(),
                };
                proptest::prop_assert!(link.session().pending_send_bytes() <= limit);
                proptest::prop_assert!(
                    held <= limit + PONG_FRAME + 2 * queued_since_drain,
                    "{} bytes held, limit {}", held, limit
                );
                if link.poll_input_ready(&mut cx).is_pending() {
                    proptest::prop_assert!(link.session().is_backpressured());
                }
            }
            // The writer comes twice more: everything is out, and the
            // reader may read.
            wire.extend(transmit(&link, now).0);
            wire.extend(transmit(&link, now).0);
            proptest::prop_assert!(link.poll_input_ready(&mut cx).is_ready());
            proptest::prop_assert_eq!(link.session().pending_send_bytes(), 0);
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

    #[test]
    fn websocket_ping_is_answered_and_a_reply_precedes_the_close_reply() {
        let (_hub, link, now) = ws_server(LinkConfig::default());
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
            transmit(&link, now),
            (b"\x8a\x01p\x81\x05hello\x88\x02\x03\xe8".to_vec(), true)
        );
    }

    #[test]
    fn websocket_graceful_close_sends_the_code_after_queued_messages_and_times_out() {
        let config = LinkConfig {
            close_timeout: Duration::from_secs(1),
            ..LinkConfig::default()
        };
        let (_hub, link, now) = ws_server(config);
        let _ = link.send(Message::from("bye"));
        link.close(Some(CloseCode::GOING_AWAY), "restart");
        let (bytes, close) = transmit(&link, now);
        assert!(!close, "waits for the peer's reply");
        assert_eq!(&bytes[..5], b"\x81\x03bye");
        assert_eq!(&bytes[5..9], b"\x88\x09\x03\xe9");
        assert_eq!(link.poll_timeout(), Some(now + Duration::from_secs(1)));
        link.handle_timeout(now + Duration::from_secs(1));
        assert_eq!(
            events(&link, now),
            [LinkEvent::Closed(CloseReason::Local(CloseKind::Graceful))]
        );
        assert!(transmit(&link, now).1);
    }

    #[test]
    fn abort_is_reported_and_discards_output() {
        let (_hub, link, now) = setup(
            Protocol::Framed(Box::new(LengthPrefixFramer::default())),
            LinkConfig::default(),
        );
        let _ = link.send(Message::from(b"x".to_vec()));
        link.abort();
        assert_eq!(
            events(&link, now),
            [LinkEvent::Closed(CloseReason::Local(CloseKind::Abort))]
        );
        assert_eq!(transmit(&link, now), (Vec::new(), true));
    }

    #[test]
    fn heartbeat_pings_and_declares_a_silent_peer_dead() {
        let config = LinkConfig {
            heartbeat: HeartbeatConfig {
                interval: Duration::from_secs(1),
                max_missed: 2,
                ..HeartbeatConfig::default()
            },
            ..LinkConfig::default()
        };
        let (_hub, link, start) = ws_server(config);
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
            seen = events(&link, now);
            let (bytes, _) = transmit(&link, now);
            pings += bytes.iter().filter(|&&b| b == 0x89).count();
        }
        assert_eq!(pings, 2);
        assert_eq!(seen, [LinkEvent::Closed(CloseReason::PeerDead)]);
        assert!(transmit(&link, now).1, "a dead peer is aborted");
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
        let (_hub, link, now) = setup(
            Protocol::Framed(Box::new(DelimiterFramer::default())),
            config,
        );
        link.handle_input(now, b"hi\n\n");
        assert_eq!(
            events(&link, now),
            [LinkEvent::Message(Message::from(b"HI".to_vec()))]
        );
        let _ = link.send(Message::from(b"yo".to_vec()));
        assert_eq!(transmit(&link, now).0, b"yo!\n");
    }
}
