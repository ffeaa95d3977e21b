//! One session's [`Outbox`]: its id, queue, backpressure, close request and
//! metrics.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use storm_proto::Message;
use storm_proto::framing::FramingError;
use storm_proto::link::Encoder;
use storm_proto::ws::CloseCode;

use super::lock;
use super::metrics::{Totals, Traffic};
use storm_proto::backpressure::{
    BackpressureConfig, FlowChange, SendBudget, SlowConsumerPolicy, Verdict, Watermark,
};

/// A session's id: unique within a [`Hub`](super::Hub), assigned in
/// increasing order from 1 as sessions register (so ids sort by age).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(u64);

impl SessionId {
    /// A session id from its number (for tests, clients and lookups by a
    /// number typed into an admin console).
    pub const fn new(id: u64) -> Self {
        Self(id)
    }

    /// The number.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl From<SessionId> for u64 {
    fn from(id: SessionId) -> Self {
        id.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

pub use storm_proto::link::CloseKind;

/// [`CloseKind`] in the session's atomic: 0 for none.
const fn close_to_u8(kind: CloseKind) -> u8 {
    match kind {
        CloseKind::Graceful => 1,
        CloseKind::Abort => 2,
    }
}

const fn close_from_u8(value: u8) -> Option<CloseKind> {
    match value {
        1 => Some(CloseKind::Graceful),
        2 => Some(CloseKind::Abort),
        _ => None,
    }
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Registered and accepting sends.
    Open,
    /// A close was requested; sends are refused, the writer is closing.
    Closing(CloseKind),
    /// Removed from the hub ([`Hub::disconnect`](super::Hub::disconnect)).
    Closed,
}

/// The result of [`Outbox::send`]. Every refusal hands the message back.
#[must_use = "a refused message is handed back and must be handled"]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// Queued in the outbox; the writer was woken.
    Queued,
    /// [`SlowConsumerPolicy::Wait`]: the session is backpressured. Wait for
    /// [`Outbox::poll_writable`] and send again.
    Wait(Message),
    /// [`SlowConsumerPolicy::Drop`]: dropped for this slow session (counted
    /// in its metrics). Do not retry.
    Dropped(Message),
    /// [`SlowConsumerPolicy::Disconnect`]: the session was too slow and has
    /// been asked to [abort](CloseKind::Abort).
    Disconnected(Message),
    /// The session is closing or closed: nothing more is sent.
    Closed(Message),
}

/// What one [`Outbox::drain_into`] handed to the writer.
#[must_use = "close tells the writer when to close the connection"]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Drained {
    /// Messages appended to the caller's vector.
    pub messages: usize,
    /// Their total length in bytes.
    pub bytes: usize,
    /// `Some` when the writer must now close: [`CloseKind::Abort`] at once
    /// (the queue was discarded, nothing was drained); [`CloseKind::Graceful`]
    /// after writing what this call returned (the queue is now empty).
    pub close: Option<CloseKind>,
}

impl Drained {
    /// Whether nothing was drained and no close is due: wait for the waker.
    pub const fn is_idle(&self) -> bool {
        self.messages == 0 && self.close.is_none()
    }
}

/// The session has been closed; it will never be writable again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionClosed;

impl fmt::Display for SessionClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the session is closed")
    }
}

impl std::error::Error for SessionClosed {}

/// A snapshot of one session's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionMetrics {
    /// When the session connected (the `now` given at registration).
    pub connected_at: Instant,
    /// Bytes the writer reported written ([`Outbox::on_written`]).
    pub bytes_sent: u64,
    /// Bytes the reader reported read ([`Outbox::on_read`]).
    pub bytes_received: u64,
    /// Messages handed to the writer ([`Outbox::drain_into`]).
    pub messages_sent: u64,
    /// Messages the reader reported ([`Outbox::on_message_received`]).
    pub messages_received: u64,
    /// Messages dropped for this session by the slow-consumer policy.
    pub messages_dropped: u64,
    /// Bytes of the dropped messages.
    pub bytes_dropped: u64,
    /// Bytes queued or in flight, not yet reported written.
    pub pending_send_bytes: usize,
    /// Bytes read and not yet reported consumed.
    pub pending_receive_bytes: usize,
}

impl SessionMetrics {
    /// Time since the session connected, as of `now` (zero if `now` is
    /// earlier).
    pub fn uptime(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.connected_at)
    }
}

/// What the writer takes from an outbox ([`Outbox::drain_with`]).
#[derive(Debug)]
pub enum Output {
    /// A message, for the writer to frame.
    Message(Message),
    /// Frames the connection's [`Encoder`] made as messages were sent, in
    /// order: the frames of whole small messages and the headers of large
    /// ones, from one buffer, or a large message's payload itself (see
    /// [`Encoder::encode_chunked`]), never copied. One drain may hand out
    /// several, to be written in the order given; when the writer's batch
    /// ended inside a message, the rest follows on the next drain.
    Encoded(Bytes),
}

/// What the outbox holds for the writer.
#[derive(Debug)]
enum Queue {
    /// Messages, framed by the writer.
    Messages(VecDeque<Message>),
    /// Messages framed as they are sent, by the encoder of the
    /// connection's link ([`Outbox::encode_with`]).
    Encoded(Encoded),
}

/// An encoding queue: one buffer of frames, no per-message entry, except
/// a chunk for each large message's payload ([`Encoder::encode_chunked`]),
/// which goes to the writer as it is. On the wire, the queue is `buf`'s
/// bytes with each chunk placed between them where its `before` says.
#[derive(Debug)]
struct Encoded {
    encoder: Encoder,
    buf: BytesMut,
    /// Large payloads, in order (as many as the send limit admits: a
    /// few).
    chunks: Chunks,
    /// Messages queued.
    count: usize,
}

/// An encoding queue's chunks: boxed when there are any, so that a
/// connection that never sends a large message, and an idle one, holds one
/// pointer for them.
#[derive(Debug, Default)]
// Boxed on purpose: 8 bytes in every session's outbox, not 32.
#[allow(clippy::box_collection)]
struct Chunks(Option<Box<VecDeque<Chunk>>>);

impl Chunks {
    fn front(&self) -> Option<&Chunk> {
        self.0.as_deref().and_then(VecDeque::front)
    }

    fn front_mut(&mut self) -> Option<&mut Chunk> {
        self.0.as_deref_mut().and_then(VecDeque::front_mut)
    }

    fn pop_front(&mut self) -> Option<Chunk> {
        self.0.as_deref_mut().and_then(VecDeque::pop_front)
    }

    fn push_back(&mut self, chunk: Chunk) {
        self.0.get_or_insert_default().push_back(chunk);
    }

    fn len(&self) -> usize {
        self.0.as_deref().map_or(0, VecDeque::len)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where in the buffer the last chunk goes: the sum of their `before`.
    fn placed(&self) -> usize {
        self.0
            .iter()
            .flat_map(|chunks| chunks.iter())
            .map(|c| c.before)
            .sum()
    }

    fn truncate(&mut self, len: usize) {
        if let Some(chunks) = &mut self.0 {
            chunks.truncate(len);
        }
    }

    fn clear(&mut self) {
        self.truncate(0);
    }

    /// Drops the queue's memory when it holds nothing.
    fn release(&mut self) {
        if self.is_empty() {
            self.0 = None;
        }
    }

    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.0.as_deref().map_or(0, |chunks| {
            std::mem::size_of::<VecDeque<Chunk>>()
                + chunks.capacity() * std::mem::size_of::<Chunk>()
        })
    }
}

/// The room an encoding queue reserves at once when it has less than
/// [`ROOM_LOW`] left: about 25 small replies (a 36-byte frame) between two
/// reservations. An idle queue returns it ([`Outbox::release_buffers`]).
const ROOM: usize = 1024;

/// Spare room below which the next frame reserves [`ROOM`] first.
const ROOM_LOW: usize = 128;

/// The most an encoding queue copies into a writer's own buffer
/// ([`Outbox::drain_written_into`]) rather than handing it out as a
/// `Bytes`: a batch of small replies. More goes out without a copy.
const COPY_MAX: usize = 4 * 1024;

/// A large message's payload in an encoding queue.
#[derive(Debug)]
struct Chunk {
    /// `buf`'s bytes that go before it, after the chunk ahead of it.
    before: usize,
    bytes: Bytes,
}

impl Encoded {
    fn new(encoder: Encoder) -> Self {
        Self {
            encoder,
            buf: BytesMut::new(),
            chunks: Chunks::default(),
            count: 0,
        }
    }

    /// Frames `message` at the end; returns how many bytes its frames take.
    fn stage(&mut self, message: &Message) -> Result<usize, FramingError> {
        // Room for the next few small frames in one reservation: a drain
        // splits off everything framed, which leaves the buffer no room,
        // and each frame's own reservation would otherwise reclaim (or
        // allocate) the buffer again, once per reply of a ping-pong.
        if self.buf.capacity() - self.buf.len() < ROOM_LOW {
            self.buf.reserve(ROOM);
        }
        let from = self.buf.len();
        let mut chunked = 0;
        let chunks = &mut self.chunks;
        // Where in `buf` the last chunk goes (looked up for a large
        // message only).
        let mut placed = None;
        self.encoder
            .encode_chunked(message, &mut self.buf, |at, bytes| {
                let last = *placed.get_or_insert_with(|| chunks.placed());
                chunked += bytes.len();
                chunks.push_back(Chunk {
                    before: at - last,
                    bytes,
                });
                placed = Some(at);
            })?;
        Ok(self.buf.len() - from + chunked)
    }

    /// Takes back what was staged since `staged`.
    fn unstage(&mut self, staged: Staged) {
        self.buf.truncate(staged.from);
        self.chunks.truncate(staged.chunks);
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.chunks.is_empty()
    }

    /// Hands out the queue's front, in order: `buf`'s bytes up to `max`
    /// bytes in all (at least one, when it holds any), and each chunk
    /// reached within them whole, as a queue of messages moves a message
    /// larger than its batch whole: one write takes a large message with
    /// its header, and a batch of writes exceeds `max` by at most one
    /// payload the send limit already counted. Returns how many bytes.
    fn drain(&mut self, max: usize, each: &mut impl FnMut(Output)) -> usize {
        let max = max.max(1);
        let mut taken = 0;
        while taken < max {
            // `buf`'s bytes before the next chunk, or all of them.
            let ahead = self.chunks.front().map_or(self.buf.len(), |c| c.before);
            if ahead > 0 {
                let take = ahead.min(max - taken);
                each(Output::Encoded(self.buf.split_to(take).freeze()));
                if let Some(chunk) = self.chunks.front_mut() {
                    chunk.before -= take;
                }
                taken += take;
                continue;
            }
            let Some(chunk) = self.chunks.pop_front() else {
                break;
            };
            taken += chunk.bytes.len();
            each(Output::Encoded(chunk.bytes));
        }
        taken
    }

    /// Copies the whole queue to the end of `head` and empties it, when it
    /// is frames alone (no chunk) of at most `max` (at least one byte) and
    /// [`COPY_MAX`] bytes; `None` otherwise ([`drain`](Self::drain) it).
    /// Returns how many bytes. The buffer keeps its room for the next
    /// frames, and no `Bytes` shares it.
    fn copy_all(&mut self, max: usize, head: &mut Vec<u8>) -> Option<usize> {
        let len = self.buf.len();
        if len > max.max(1) || len > COPY_MAX || !self.chunks.is_empty() {
            return None;
        }
        head.extend_from_slice(&self.buf);
        self.buf.clear();
        Some(len)
    }

    /// Discards everything queued (an abort).
    fn clear(&mut self) {
        self.buf.clear();
        self.chunks.clear();
        self.count = 0;
    }

    /// Returns the memory of an empty queue.
    fn release(&mut self) {
        // Emptiness alone decides: an empty buffer with no capacity left
        // still shares the allocation of what it split off.
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        self.chunks.release();
    }

    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.buf.capacity() + self.chunks.capacity()
    }
}

impl Queue {
    /// Prepares `message` for the queue and says how many bytes the send
    /// limit counts for it: its length, or, when the queue encodes, the
    /// length of its frames, framed already at the end of the queue (then
    /// [`commit`](Self::commit) or [`unstage`](Self::unstage) them).
    /// Framing first spares the limit's arithmetic a second pass over the
    /// message; a refused send takes its frames back.
    ///
    /// # Errors
    ///
    /// The encoder's refusal (a message too large for the framing, a line
    /// holding its delimiter): nothing was staged.
    fn stage(&mut self, message: &Message) -> Result<Staged, FramingError> {
        match self {
            Self::Messages(_) => Ok(Staged {
                len: message.len(),
                from: 0,
                chunks: 0,
            }),
            Self::Encoded(encoded) => {
                let from = encoded.buf.len();
                let chunks = encoded.chunks.len();
                Ok(Staged {
                    len: encoded.stage(message)?,
                    from,
                    chunks,
                })
            }
        }
    }

    /// Keeps a staged message: queues it, or counts its frames in.
    fn commit(&mut self, message: MessageIn<'_>) -> usize {
        match self {
            Self::Messages(queue) => {
                queue.push_back(message.into_owned());
                queue.len()
            }
            Self::Encoded(encoded) => {
                encoded.count += 1;
                encoded.count
            }
        }
    }

    /// Takes a staged message back (the limit refused it).
    fn unstage(&mut self, staged: Staged) {
        if let Self::Encoded(encoded) = self {
            encoded.unstage(staged);
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Self::Messages(queue) => queue.is_empty(),
            Self::Encoded(encoded) => encoded.is_empty(),
        }
    }

    /// Discards everything queued (an abort).
    fn clear(&mut self) {
        match self {
            Self::Messages(queue) => queue.clear(),
            Self::Encoded(encoded) => encoded.clear(),
        }
    }
}

/// A message [staged](Queue::stage) for the queue.
#[derive(Clone, Copy)]
struct Staged {
    /// The bytes the send limit counts for it.
    len: usize,
    /// Where its frames begin in an encoding queue's buffer.
    from: usize,
    /// How many chunks the encoding queue held before it.
    chunks: usize,
}

/// The outbox and everything that changes with it, under one lock.
#[derive(Debug)]
struct State {
    queue: Queue,
    /// Bytes in `queue` (pending bytes minus the ones in flight).
    queued_bytes: usize,
    budget: SendBudget,
    /// The writer to wake when data or a close request arrives.
    writer: Option<Waker>,
    /// Senders waiting for the session to become writable again.
    writable: Vec<Waker>,
    /// No more sends: a close was requested or the session was removed.
    closed: bool,
    /// The WebSocket close frame a graceful close asked for
    /// ([`Outbox::close_with_frame`]), until the writer takes it. Boxed:
    /// few sessions ever carry one.
    close_frame: Option<Box<(CloseCode, String)>>,
}

/// What a broadcast did for one session.
pub(crate) enum Delivery {
    Queued,
    Dropped,
    /// Dropped because a Wait-policy session was past the broadcast cap.
    Full,
    Disconnected,
    Closed,
}

/// A session's outbox, as the hub sees the connection (the application
/// holds the connection as its adapter's `Session`): shared (`Arc<Outbox>`) by the
/// registry, the groups, the adapter's reader and writer and any task that
/// sends to it. `Send + Sync`; every method takes `&self` and holds an
/// internal lock only for a few field updates, never while calling out
/// (wakers are woken after the lock is released).
///
/// # The outbox
///
/// Senders call [`send`](Self::send) with a [`Message`]; the adapter's writer
/// frames it for the connection's protocol when it drains the outbox. A
/// connection driven by a [`LinkDriver`](crate::link::LinkDriver) whose
/// link has an [`Encoder`] (a server) frames each message as it is sent
/// instead, under the outbox's lock, into one buffer that driver takes
/// whole ([`Output::Encoded`]), a large message's payload queued behind
/// its header as it is, not copied; the send limit then counts the
/// frames' bytes, headers included.
/// The adapter's writer loops:
///
/// 1. [`poll_drain`](Self::poll_drain) (or [`register_waker`](Self::register_waker)
///    then [`drain_into`](Self::drain_into)) moves queued messages into its
///    own `Vec<Message>` for one vectored write;
/// 2. writes them, calling [`on_written`](Self::on_written) with the bytes
///    the socket took, which releases backpressure and wakes waiting senders
///    when the session drops to half its limit;
/// 3. closes the connection when [`Drained::close`] says so.
///
/// The reader reports [`on_read`](Self::on_read) /
/// [`on_consumed`](Self::on_consumed) and stops reading while
/// [`is_read_paused`](Self::is_read_paused).
#[derive(Debug)]
pub struct Outbox {
    id: SessionId,
    connected_at: Instant,
    outbox: Mutex<State>,
    receive: Mutex<Watermark>,
    close: AtomicU8,
    disconnected: AtomicBool,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    messages_sent: AtomicU64,
    messages_received: AtomicU64,
    /// Messages in the outbox, mirrored outside the lock so the read path
    /// can skip draining an empty outbox without locking it.
    queued: AtomicUsize,
    /// `State::writer` holds a waker, mirrored outside the lock: a writer
    /// that registers the waker it registered last finds it still there
    /// without locking ([`LinkDriver`](crate::link::LinkDriver)).
    writer_set: AtomicBool,
    /// The writer is [unregistered](Self::unregister_waker): sends, closes
    /// and [`wake_writer`](Self::wake_writer) leave its waker in place and
    /// wake no one, until it [registers](Self::register_waker) again and
    /// looks at the outbox. Set and cleared by the writer alone, outside
    /// the lock; a waker-taking site reads it after its own change
    /// (both `SeqCst`, with the writer's look: see [`Self::take_writer`]).
    muted: AtomicBool,
    totals: Arc<Totals>,
}

/// The `backpressure on` event, when a send made the session's budget
/// backpressured and it `was` not.
#[cfg(feature = "tracing")]
fn trace_pause(id: SessionId, was: bool, state: &State) {
    if !was && state.budget.is_backpressured() {
        let pending = state.budget.pending();
        tracing::debug!(id = id.get(), pending, "backpressure on");
    }
}

/// A slow-consumer policy acting on one session: `drop` or `disconnect`.
#[cfg(feature = "tracing")]
fn trace_slow_consumer(id: SessionId, action: &'static str, len: usize) {
    tracing::debug!(id = id.get(), action, len, "slow consumer");
}

/// A drain that pushes messages to `out` (an outbox without an encoder
/// hands out nothing else).
fn messages_into(out: &mut Vec<Message>) -> impl FnMut(Output) + '_ {
    |output| {
        if let Output::Message(message) = output {
            out.push(message);
        }
    }
}

/// A message to queue: a sender's own, or a broadcast's shared one (cloned
/// only if the queue keeps messages).
enum MessageIn<'a> {
    Owned(Message),
    Borrowed(&'a Message),
}

impl MessageIn<'_> {
    fn into_owned(self) -> Message {
        match self {
            Self::Owned(message) => message,
            Self::Borrowed(message) => message.clone(),
        }
    }
}

/// Wakes the wakers taken under the outbox's lock, once it is released.
/// Inline for the usual case, nothing to wake (no allocation to free).
#[inline]
fn wake_all(wakers: Vec<Waker>) {
    if !wakers.is_empty() {
        wake_each(wakers);
    }
}

fn wake_each(wakers: Vec<Waker>) {
    for waker in wakers {
        waker.wake();
    }
}

fn as_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

impl Outbox {
    pub(crate) fn new(
        id: SessionId,
        connected_at: Instant,
        config: &BackpressureConfig,
        totals: Arc<Totals>,
    ) -> Self {
        Self {
            id,
            connected_at,
            outbox: Mutex::new(State {
                queue: Queue::Messages(VecDeque::new()),
                queued_bytes: 0,
                budget: SendBudget::from_config(config),
                writer: None,
                writable: Vec::new(),
                closed: false,
                close_frame: None,
            }),
            receive: Mutex::new(Watermark::new(config.max_pending_receive_bytes)),
            close: AtomicU8::new(0),
            disconnected: AtomicBool::new(false),
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
            messages_received: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
            writer_set: AtomicBool::new(false),
            muted: AtomicBool::new(false),
            totals,
        }
    }

    /// The shard of the hub's totals this session counts into.
    fn traffic(&self) -> &Traffic {
        self.totals.shard(self.id.get())
    }

    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// When the session connected (the `now` given at registration).
    pub fn connected_at(&self) -> Instant {
        self.connected_at
    }

    /// Time since the session connected, as of `now`.
    pub fn uptime(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.connected_at)
    }

    /// Where the session is in its life.
    pub fn state(&self) -> SessionState {
        if self.disconnected.load(Ordering::Acquire) {
            SessionState::Closed
        } else {
            match self.close_request() {
                Some(kind) => SessionState::Closing(kind),
                None => SessionState::Open,
            }
        }
    }

    /// Whether the session has been removed from its hub.
    pub fn is_disconnected(&self) -> bool {
        self.disconnected.load(Ordering::Acquire)
    }

    /// Queues a message under the session's slow-consumer policy.
    ///
    /// Wakes the writer when the message is queued. On
    /// [`SendOutcome::Wait`], wait with [`poll_writable`](Self::poll_writable)
    /// and send again; on [`SendOutcome::Disconnected`] the session has been
    /// asked to abort. A message is never admitted past the send limit,
    /// except one larger than the whole limit into an empty outbox (see
    /// [`backpressure`](storm_proto::backpressure)).
    pub fn send(&self, message: Message) -> SendOutcome {
        let mut outbox = lock(&self.outbox);
        if outbox.closed {
            return SendOutcome::Closed(message);
        }
        #[cfg(feature = "tracing")]
        let was = outbox.budget.is_backpressured();
        let Some(staged) = self.stage(&mut outbox, &message) else {
            return SendOutcome::Dropped(message);
        };
        let verdict = outbox.budget.offer(staged.len);
        #[cfg(feature = "tracing")]
        trace_pause(self.id, was, &outbox);
        if verdict != Verdict::Admit {
            outbox.queue.unstage(staged);
        }
        match verdict {
            Verdict::Admit => {
                self.commit(&mut outbox, MessageIn::Owned(message), staged.len);
                // The writer is woken after the lock is released.
                let writer = self.take_writer(&mut outbox);
                drop(outbox);
                if let Some(writer) = writer {
                    writer.wake();
                }
                SendOutcome::Queued
            }
            Verdict::Wait => SendOutcome::Wait(message),
            Verdict::Drop => {
                self.traffic()
                    .messages_dropped
                    .fetch_add(1, Ordering::Relaxed);
                #[cfg(feature = "tracing")]
                trace_slow_consumer(self.id, "drop", message.len());
                SendOutcome::Dropped(message)
            }
            Verdict::Disconnect => {
                #[cfg(feature = "tracing")]
                trace_slow_consumer(self.id, "disconnect", message.len());
                let mut wake = Vec::new();
                self.close_locked(&mut outbox, CloseKind::Abort, &mut wake);
                drop(outbox);
                wake_all(wake);
                SendOutcome::Disconnected(message)
            }
        }
    }

    /// Broadcast's send: never waits (see [`SendBudget::offer_overflow`]).
    /// Wakers to wake are appended to `wake`, for the caller to wake after
    /// releasing its own locks.
    pub(crate) fn push_nowait(
        &self,
        message: &Message,
        overflow: usize,
        wake: &mut Vec<Waker>,
    ) -> Delivery {
        let mut outbox = lock(&self.outbox);
        if outbox.closed {
            return Delivery::Closed;
        }
        #[cfg(feature = "tracing")]
        let was = outbox.budget.is_backpressured();
        let Some(staged) = self.stage(&mut outbox, message) else {
            return Delivery::Dropped;
        };
        let verdict = outbox.budget.offer_overflow(staged.len, overflow);
        #[cfg(feature = "tracing")]
        trace_pause(self.id, was, &outbox);
        if verdict != Verdict::Admit {
            outbox.queue.unstage(staged);
        }
        match verdict {
            Verdict::Admit => {
                self.commit(&mut outbox, MessageIn::Borrowed(message), staged.len);
                wake.extend(self.take_writer(&mut outbox));
                Delivery::Queued
            }
            Verdict::Drop | Verdict::Wait => {
                self.traffic()
                    .messages_dropped
                    .fetch_add(1, Ordering::Relaxed);
                #[cfg(feature = "tracing")]
                trace_slow_consumer(self.id, "drop", message.len());
                if outbox.budget.policy() == SlowConsumerPolicy::Wait {
                    Delivery::Full
                } else {
                    Delivery::Dropped
                }
            }
            Verdict::Disconnect => {
                #[cfg(feature = "tracing")]
                trace_slow_consumer(self.id, "disconnect", message.len());
                self.close_locked(&mut outbox, CloseKind::Abort, wake);
                Delivery::Disconnected
            }
        }
    }

    /// [`Queue::stage`]s `message`; `None` when the encoder refused it,
    /// which counts it as dropped (it never reaches the send limit).
    fn stage(&self, outbox: &mut State, message: &Message) -> Option<Staged> {
        match outbox.queue.stage(message) {
            Ok(staged) => Some(staged),
            Err(error) => {
                outbox.budget.count_dropped(message.len());
                self.traffic()
                    .messages_dropped
                    .fetch_add(1, Ordering::Relaxed);
                #[cfg(feature = "tracing")]
                tracing::warn!(id = self.id.get(), %error, "message not sent");
                #[cfg(not(feature = "tracing"))]
                let _ = error;
                None
            }
        }
    }

    /// Keeps a staged message the limit admitted (`len` bytes).
    fn commit(&self, outbox: &mut State, message: MessageIn<'_>, len: usize) {
        let count = outbox.queue.commit(message);
        // `SeqCst`: before `take_writer`'s look at `muted` (see there).
        self.queued.store(count, Ordering::SeqCst);
        outbox.queued_bytes += len;
    }

    /// From now on, frames every message as it is sent, with `encoder`
    /// (its link's, see [`Link::encoder`](storm_proto::link::Link::encoder)),
    /// into one buffer the writer takes whole ([`Output::Encoded`]): no
    /// per-message queue entry (but a chunk for each large message's
    /// payload, [`Encoder::encode_chunked`]) and no framing in the
    /// writer. Messages
    /// already queued are framed now, in order. For the connection's own
    /// driver ([`LinkDriver`](crate::link::LinkDriver)), which then drains
    /// with [`drain_with`](Self::drain_with) or
    /// [`drain_written`](Self::drain_written); the `Vec<Message>` drains
    /// ([`drain_into`](Self::drain_into), [`poll_drain`](Self::poll_drain))
    /// are for an outbox without one.
    pub(crate) fn encode_with(&self, encoder: Encoder) {
        let mut guard = lock(&self.outbox);
        let outbox = &mut *guard;
        let Queue::Messages(queue) = &mut outbox.queue else {
            return;
        };
        let messages = std::mem::take(queue);
        outbox.queue = Queue::Encoded(Encoded::new(encoder));
        // The limit counted the messages' lengths; it now counts frames.
        let counted = std::mem::take(&mut outbox.queued_bytes);
        let _ = outbox.budget.discard(counted);
        for message in messages {
            if let Some(staged) = self.stage(outbox, &message) {
                let _ = outbox.budget.admit(staged.len);
                self.commit(outbox, MessageIn::Owned(message), staged.len);
            }
        }
    }

    /// Counts `bytes` of output the connection makes by itself (a
    /// WebSocket auto-pong) against the send limit, if they fit: they are
    /// then pending like a message in flight, until
    /// [`on_written`](Self::on_written). If not, returns `false` and the
    /// session is backpressured as for a refused send; the caller holds the
    /// output back and waits for [`poll_writable`](Self::poll_writable).
    /// The slow-consumer policy does not apply.
    pub fn admit_control(&self, bytes: usize) -> bool {
        lock(&self.outbox).budget.admit(bytes)
    }

    /// Whether sends are currently refused: the pending bytes reached the
    /// limit and have not yet drained to half.
    pub fn is_backpressured(&self) -> bool {
        lock(&self.outbox).budget.is_backpressured()
    }

    /// Resolves when the session is writable (not backpressured), or with
    /// [`SessionClosed`] once it is closing or closed. While pending, the
    /// waker is kept and woken when the writer drains the outbox to half
    /// the limit or the session closes.
    ///
    /// Any waker works: an async task's, or for a blocking sender a
    /// [`thread_waker`](super::thread_waker) followed by
    /// `std::thread::park()` in a loop.
    pub fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<Result<(), SessionClosed>> {
        let mut outbox = lock(&self.outbox);
        if outbox.closed {
            return Poll::Ready(Err(SessionClosed));
        }
        if !outbox.budget.is_backpressured() {
            return Poll::Ready(Ok(()));
        }
        if !outbox.writable.iter().any(|w| w.will_wake(cx.waker())) {
            outbox.writable.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Registers the writer's waker: woken (once) when a message is queued
    /// or a close is requested. Register, then [`drain_into`](Self::drain_into)
    /// again before sleeping, or use [`poll_drain`](Self::poll_drain), which
    /// does both under one lock.
    pub fn register_waker(&self, waker: &Waker) {
        let mut outbox = lock(&self.outbox);
        self.set_writer(&mut outbox, waker);
        self.unmute();
    }

    /// Puts `waker` in the writer's slot, unless the one there wakes the
    /// same task.
    fn set_writer(&self, outbox: &mut State, waker: &Waker) {
        match &mut outbox.writer {
            Some(old) if old.will_wake(waker) => {}
            slot => *slot = Some(waker.clone()),
        }
        self.writer_set.store(true, Ordering::Relaxed);
    }

    /// Whether the writer's slot holds a waker (the last one registered:
    /// only the writer registers). Exact for the writer itself, as of its
    /// own last registration and the wake-ups it was given since: a waker
    /// taken before this poll of its task began reads `false`; one taken
    /// later wakes the task again.
    pub(crate) fn writer_registered(&self) -> bool {
        self.writer_set.load(Ordering::Relaxed)
    }

    /// Ends an [`unregister_waker`](Self::unregister_waker): from here on
    /// a send wakes the writer, and the writer's next look at the outbox
    /// (`has_queued`, `close_request`) sees every send and close a muted
    /// taker left unwoken (see [`Self::take_writer`]).
    pub(crate) fn unmute(&self) {
        if self.muted.load(Ordering::Relaxed) {
            self.muted.store(false, Ordering::SeqCst);
        }
    }

    /// Takes the writer's waker to wake (after the lock is released),
    /// unless the writer is [muted](Self::unregister_waker): then the
    /// waker stays and no one is woken. Called after the change the writer
    /// must see (a message committed, a close requested), which is `SeqCst`
    /// as the load here is: either this load sees the writer's
    /// [`unmute`](Self::unmute) (and wakes it) or the writer's later look
    /// sees the change. Both are in one total order.
    fn take_writer(&self, outbox: &mut State) -> Option<Waker> {
        if self.muted.load(Ordering::SeqCst) {
            return None;
        }
        self.writer_set.store(false, Ordering::Relaxed);
        outbox.writer.take()
    }

    /// Frees the outbox queue's memory when it is empty, so that an idle
    /// session holds none; it grows again with traffic.
    pub fn release_buffers(&self) {
        let mut outbox = lock(&self.outbox);
        match &mut outbox.queue {
            Queue::Messages(queue) if queue.is_empty() && queue.capacity() != 0 => {
                *queue = VecDeque::new();
            }
            Queue::Encoded(encoded) => encoded.release(),
            Queue::Messages(_) => {}
        }
    }

    /// Bytes of capacity the outbox queue holds (tests of
    /// [`release_buffers`](Self::release_buffers)).
    #[cfg(test)]
    pub(crate) fn outbox_capacity(&self) -> usize {
        match &lock(&self.outbox).queue {
            Queue::Messages(queue) => queue.capacity() * std::mem::size_of::<Message>(),
            Queue::Encoded(encoded) => encoded.capacity(),
        }
    }

    /// Sends (and closes, and [`wake_writer`](Self::wake_writer)) do not
    /// wake the writer until it [registers](Self::register_waker) again:
    /// for a driver that is about to run code that sends (its own read
    /// path) and polls its writer right after, which registers the waker
    /// again and looks at the outbox. Saves the connection task a wake-up,
    /// and a trip through the scheduler, for every reply sent from the
    /// read path.
    ///
    /// Takes no lock, and the waker stays in place: registering the same
    /// one again takes no lock either
    /// ([`LinkDriver::register_waker`](crate::link::LinkDriver::register_waker)).
    pub fn unregister_waker(&self) {
        self.muted.store(true, Ordering::Relaxed);
    }

    /// Wakes the writer without queueing a message: the connection's own
    /// state produced output (an auto-pong, a close reply) or must close.
    pub fn wake_writer(&self) {
        let waker = {
            let mut outbox = lock(&self.outbox);
            self.take_writer(&mut outbox)
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Moves queued messages into `out` for one vectored write: whole
    /// messages while their total stays within `max_bytes`, and always at
    /// least one (a message larger than `max_bytes` is moved alone). The
    /// bytes stay pending until [`on_written`](Self::on_written).
    ///
    /// After an [abort](CloseKind::Abort) request the queue is discarded and
    /// nothing is moved; [`Drained::close`] says when to close.
    ///
    /// For an outbox without an encoder (one a
    /// [`LinkDriver`](crate::link::LinkDriver) drives frames messages as
    /// they are sent and is drained by that driver alone).
    pub fn drain_into(&self, out: &mut Vec<Message>, max_bytes: usize) -> Drained {
        self.drain_with(max_bytes, messages_into(out))
    }

    /// [`drain_into`](Self::drain_into), handing each [`Output`] to `each`
    /// instead of a `Vec`, under the outbox's lock: `each` must not call
    /// back into this outbox. An encoding outbox hands out its frames,
    /// at most `max_bytes` of them (at least one byte) at a time, except
    /// that a large message's payload, once reached, goes whole.
    pub fn drain_with(&self, max_bytes: usize, each: impl FnMut(Output)) -> Drained {
        let mut wake = Vec::new();
        let drained = {
            let mut outbox = lock(&self.outbox);
            self.drain_locked(&mut outbox, each, None, max_bytes, &mut wake)
        };
        wake_all(wake);
        drained
    }

    /// [`drain_into`](Self::drain_into), registering `cx`'s waker in the same
    /// critical section when there is nothing to do, so no wake-up is lost.
    pub fn poll_drain(
        &self,
        cx: &mut Context<'_>,
        out: &mut Vec<Message>,
        max_bytes: usize,
    ) -> Poll<Drained> {
        let mut wake = Vec::new();
        let drained = {
            let mut outbox = lock(&self.outbox);
            let drained =
                self.drain_locked(&mut outbox, messages_into(out), None, max_bytes, &mut wake);
            if drained.is_idle() {
                self.set_writer(&mut outbox, cx.waker());
                self.unmute();
            }
            drained
        };
        wake_all(wake);
        if drained.is_idle() {
            Poll::Pending
        } else {
            Poll::Ready(drained)
        }
    }

    /// `head`: see [`drain_written_into`](Self::drain_written_into).
    fn drain_locked(
        &self,
        outbox: &mut State,
        mut each: impl FnMut(Output),
        head: Option<&mut Vec<u8>>,
        max_bytes: usize,
        wake: &mut Vec<Waker>,
    ) -> Drained {
        let close = self.close_request();
        if close == Some(CloseKind::Abort) {
            let discarded = std::mem::take(&mut outbox.queued_bytes);
            outbox.queue.clear();
            self.queued.store(0, Ordering::Release);
            if outbox.budget.discard(discarded) == FlowChange::Resumed {
                wake.append(&mut outbox.writable);
            }
            return Drained {
                close,
                ..Drained::default()
            };
        }
        let mut drained = Drained::default();
        match &mut outbox.queue {
            Queue::Messages(queue) => {
                while let Some(front) = queue.front() {
                    let len = front.len();
                    if drained.messages > 0 && len > max_bytes.saturating_sub(drained.bytes) {
                        break;
                    }
                    if let Some(message) = queue.pop_front() {
                        each(Output::Message(message));
                        drained.messages += 1;
                        drained.bytes += len;
                    }
                }
                self.queued.store(queue.len(), Ordering::Release);
            }
            Queue::Encoded(encoded) if !encoded.is_empty() => {
                let copied = head.and_then(|head| encoded.copy_all(max_bytes, head));
                drained.bytes = match copied {
                    Some(bytes) => bytes,
                    None => encoded.drain(max_bytes, &mut each),
                };
                if encoded.is_empty() {
                    // The messages are counted once their last bytes go.
                    drained.messages = std::mem::take(&mut encoded.count);
                    self.queued.store(0, Ordering::Release);
                }
            }
            Queue::Encoded(_) => {}
        }
        outbox.queued_bytes = outbox.queued_bytes.saturating_sub(drained.bytes);
        if outbox.queue.is_empty() && close == Some(CloseKind::Graceful) {
            drained.close = close;
        }
        self.messages_sent
            .fetch_add(as_u64(drained.messages), Ordering::Relaxed);
        self.traffic()
            .messages_sent
            .fetch_add(as_u64(drained.messages), Ordering::Relaxed);
        drained
    }

    /// Reports `bytes` written to the socket: releases that much
    /// backpressure and counts it as sent. Wakes the senders waiting in
    /// [`poll_writable`](Self::poll_writable) when the pending bytes drop to
    /// half the limit.
    pub fn on_written(&self, bytes: usize) {
        let wake = {
            let mut outbox = lock(&self.outbox);
            self.written_locked(&mut outbox, bytes)
        };
        wake_all(wake);
    }

    /// [`drain_with`](Self::drain_with) and [`on_written`](Self::on_written)
    /// for what it drained, under one lock: for a writer that counts a
    /// message as written once it is framed into its protocol's own
    /// bounded output (as [`LinkDriver`](crate::link::LinkDriver) does).
    pub fn drain_written(&self, max_bytes: usize, each: impl FnMut(Output)) -> Drained {
        self.drain_written_to(max_bytes, None, each)
    }

    /// [`drain_written`](Self::drain_written) for a writer with a buffer of
    /// its own, `head`: an encoding outbox that holds frames alone, at most
    /// `max_bytes` and a few KiB of them, appends them all to `head` (a
    /// copy) instead of handing them to `each` as a `Bytes`, which would
    /// share the outbox's buffer until written. Otherwise as
    /// `drain_written`: what one call drains goes to `head` whole or to
    /// `each` whole, never part to each.
    pub fn drain_written_into(
        &self,
        max_bytes: usize,
        head: &mut Vec<u8>,
        each: impl FnMut(Output),
    ) -> Drained {
        self.drain_written_to(max_bytes, Some(head), each)
    }

    // Inlined, as `drain_written` was into the driver's pump.
    #[inline(always)]
    fn drain_written_to(
        &self,
        max_bytes: usize,
        head: Option<&mut Vec<u8>>,
        each: impl FnMut(Output),
    ) -> Drained {
        let mut wake = Vec::new();
        let drained = {
            let mut outbox = lock(&self.outbox);
            let drained = self.drain_locked(&mut outbox, each, head, max_bytes, &mut wake);
            if drained.bytes > 0 {
                let resumed = self.written_locked(&mut outbox, drained.bytes);
                if !resumed.is_empty() {
                    wake.extend(resumed);
                }
            }
            drained
        };
        wake_all(wake);
        drained
    }

    fn written_locked(&self, outbox: &mut State, bytes: usize) -> Vec<Waker> {
        let in_flight = outbox.budget.pending().saturating_sub(outbox.queued_bytes);
        let bytes = bytes.min(in_flight);
        self.bytes_sent.fetch_add(as_u64(bytes), Ordering::Relaxed);
        self.traffic()
            .bytes_sent
            .fetch_add(as_u64(bytes), Ordering::Relaxed);
        if outbox.budget.on_flushed(bytes) == FlowChange::Resumed {
            // Once per episode, never per message.
            self.traffic()
                .backpressure_episodes
                .fetch_add(1, Ordering::Relaxed);
            #[cfg(feature = "tracing")]
            tracing::debug!(id = self.id.get(), "backpressure off");
            std::mem::take(&mut outbox.writable)
        } else {
            Vec::new()
        }
    }

    /// Asks the writer to close: sends are refused from now on, the writer
    /// and any waiting senders are woken. An abort wins over an earlier
    /// graceful request; a graceful request after an abort changes nothing.
    pub fn request_close(&self, kind: CloseKind) {
        let mut wake = Vec::new();
        {
            let mut outbox = lock(&self.outbox);
            self.close_locked(&mut outbox, kind, &mut wake);
        }
        wake_all(wake);
    }

    /// A graceful close whose WebSocket close frame carries `code` (1000
    /// when `None`) and `reason`: the first such request's frame is the
    /// one sent, once the outbox is written.
    pub fn close_with_frame(&self, code: Option<CloseCode>, reason: &str) {
        let mut wake = Vec::new();
        {
            let mut outbox = lock(&self.outbox);
            if outbox.close_frame.is_none() {
                outbox.close_frame = Some(Box::new((
                    code.unwrap_or(CloseCode::NORMAL),
                    reason.to_owned(),
                )));
            }
            self.close_locked(&mut outbox, CloseKind::Graceful, &mut wake);
        }
        wake_all(wake);
    }

    /// Takes the close frame [`close_with_frame`](Self::close_with_frame)
    /// asked for, if any: for the writer, when the outbox is drained.
    pub fn take_close_frame(&self) -> Option<Box<(CloseCode, String)>> {
        lock(&self.outbox).close_frame.take()
    }

    fn close_locked(&self, outbox: &mut State, kind: CloseKind, wake: &mut Vec<Waker>) {
        // `SeqCst`: before `take_writer`'s look at `muted` (see there).
        self.close.fetch_max(close_to_u8(kind), Ordering::SeqCst);
        outbox.closed = true;
        wake.extend(self.take_writer(outbox));
        wake.append(&mut outbox.writable);
    }

    /// The close requested so far, if any (the strongest one).
    pub fn close_request(&self) -> Option<CloseKind> {
        close_from_u8(self.close.load(Ordering::SeqCst))
    }

    /// Marks the session removed from its hub: sends are refused, waiters
    /// are woken with [`SessionClosed`].
    pub(crate) fn mark_disconnected(&self) {
        self.disconnected.store(true, Ordering::Release);
        let wake = {
            let mut outbox = lock(&self.outbox);
            outbox.closed = true;
            let mut wake: Vec<Waker> = self.take_writer(&mut outbox).into_iter().collect();
            wake.append(&mut outbox.writable);
            wake
        };
        wake_all(wake);
    }

    /// The session's slow-consumer policy.
    pub fn policy(&self) -> SlowConsumerPolicy {
        lock(&self.outbox).budget.policy()
    }

    /// Changes the session's slow-consumer policy for later sends.
    pub fn set_policy(&self, policy: SlowConsumerPolicy) {
        lock(&self.outbox).budget.set_policy(policy);
    }

    /// Messages waiting in the outbox (not yet drained by the writer).
    pub fn queued_messages(&self) -> usize {
        match &lock(&self.outbox).queue {
            Queue::Messages(queue) => queue.len(),
            Queue::Encoded(encoded) => encoded.count,
        }
    }

    /// Bytes queued or in flight, not yet reported written.
    pub fn pending_send_bytes(&self) -> usize {
        lock(&self.outbox).budget.pending()
    }

    /// Reports `bytes` read from the socket and not yet consumed by the
    /// application. Returns [`FlowChange::Paused`] when the receive limit is
    /// reached: stop reading until [`on_consumed`](Self::on_consumed)
    /// returns [`FlowChange::Resumed`].
    pub fn on_read(&self, bytes: usize) -> FlowChange {
        self.bytes_received
            .fetch_add(as_u64(bytes), Ordering::Relaxed);
        self.traffic()
            .bytes_received
            .fetch_add(as_u64(bytes), Ordering::Relaxed);
        lock(&self.receive).add(bytes)
    }

    /// Reports `bytes` consumed by the application (decoded and handled).
    /// Returns [`FlowChange::Resumed`] when reading may continue.
    pub fn on_consumed(&self, bytes: usize) -> FlowChange {
        lock(&self.receive).release(bytes)
    }

    /// Whether the reader should stop reading (receive limit reached, not
    /// yet consumed down to half).
    pub fn is_read_paused(&self) -> bool {
        lock(&self.receive).is_paused()
    }

    /// Whether the outbox may hold messages: a lock-free hint (exact once
    /// the senders' and drainer's stores are visible), for a reader that
    /// wants to skip an empty outbox.
    pub fn has_queued(&self) -> bool {
        // `SeqCst`: the writer's look after `unmute` (see `take_writer`).
        self.queued.load(Ordering::SeqCst) > 0
    }

    /// Counts bytes read and consumed in one step, for a reader that
    /// decodes as it reads (no receive backpressure to account).
    pub fn on_read_consumed(&self, bytes: usize) {
        self.bytes_received
            .fetch_add(as_u64(bytes), Ordering::Relaxed);
        self.traffic()
            .bytes_received
            .fetch_add(as_u64(bytes), Ordering::Relaxed);
    }

    /// Counts one message received (after decoding and middleware).
    pub fn on_message_received(&self) {
        self.on_messages_received(1);
    }

    /// Counts `count` messages received, for a reader that counts a batch
    /// at once.
    pub fn on_messages_received(&self, count: u64) {
        self.messages_received.fetch_add(count, Ordering::Relaxed);
        self.traffic()
            .messages_received
            .fetch_add(count, Ordering::Relaxed);
    }

    /// A snapshot of the session's counters.
    pub fn metrics(&self) -> SessionMetrics {
        let (dropped, dropped_bytes, pending_send) = {
            let outbox = lock(&self.outbox);
            (
                outbox.budget.dropped_messages(),
                outbox.budget.dropped_bytes(),
                outbox.budget.pending(),
            )
        };
        SessionMetrics {
            connected_at: self.connected_at,
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            messages_sent: self.messages_sent.load(Ordering::Relaxed),
            messages_received: self.messages_received.load(Ordering::Relaxed),
            messages_dropped: dropped,
            bytes_dropped: dropped_bytes,
            pending_send_bytes: pending_send,
            pending_receive_bytes: lock(&self.receive).pending(),
        }
    }
}
