//! One live connection's protocol logic as a single-owner machine: a
//! protocol (a [`Framer`] for plain TCP, or a [`ws::Connection`] after the
//! upgrade), a [`Heartbeat`], the close handshake and the return of idle
//! buffers.
//!
//! A [`Link`] is driven in the quinn-proto shape: every method takes
//! `&mut self`, input and the time come in as arguments, and events, bytes
//! to send and the next deadline come out as values. It calls nothing
//! back and holds no lock; the caller owns it (and a lock, if two threads
//! drive it).
//!
//! - **input**: bytes from the socket → [`Link::handle_input`] (or, for
//!   the rest of a large WebSocket frame, straight into
//!   [`Link::input_buffer`], then [`Link::input_filled`]); end of stream →
//!   [`Link::handle_eof`]; then [`Link::poll_event`] until `None`, which
//!   parses. A WebSocket ping leaves its auto-pong waiting
//!   ([`Link::waiting_pong`]) until the caller admits it
//!   ([`Link::queue_pong`]) under its send limit.
//! - **output**: messages → [`Link::send`], which frames them at once
//!   (or, framed ahead by the link's [`Encoder`], → [`Link::send_encoded`]); a
//!   close → [`Link::close`] or [`Link::abort`]; [`Link::poll_transmit`]
//!   hands over the framed bytes (with the protocol's own pongs, pings and
//!   close frames) for one vectored write and says when to close the
//!   socket.
//! - **timer**: sleep until [`Link::poll_timeout`], then
//!   [`Link::handle_timeout`] and drain [`Link::poll_event`].
//!
//! Output is written in the order it was framed. So a caller that must
//! have a reply precede the close reply a later input causes frames the
//! reply ([`send`](Link::send)) before it parses that input
//! ([`poll_event`](Link::poll_event)).
//!
//! ```
//! use std::time::Instant;
//!
//! use storm_proto::Message;
//! use storm_proto::framing::LengthPrefixFramer;
//! use storm_proto::link::{Link, LinkConfig, LinkEvent, Protocol};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # #[allow(clippy::disallowed_methods)] // the caller reads the clock
//! let now = Instant::now();
//! let protocol = Protocol::Framed(Box::new(LengthPrefixFramer::default()));
//! let mut link = Link::new(protocol, &LinkConfig::default(), now)?;
//!
//! // Input: a length-prefixed "hi" arrives.
//! link.handle_input(now, b"\0\0\0\x02hi");
//! assert_eq!(link.poll_event(now), Some(LinkEvent::Message(Message::from(b"hi".to_vec()))));
//! assert_eq!(link.poll_event(now), None);
//!
//! // Output: echo it.
//! link.send(&Message::from(b"hi".to_vec()));
//! let mut out = Vec::new();
//! let transmit = link.poll_transmit(now, &mut out);
//! assert_eq!(out.concat(), b"\0\0\0\x02hi");
//! assert!(!transmit.close);
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::buf::Limit;
use bytes::{Bytes, BytesMut};

use crate::Message;
use crate::framing::{Framer, FramingError, LinkFramer};
use crate::heartbeat::{Heartbeat, HeartbeatConfig, HeartbeatConfigError, HeartbeatEvent};
use crate::read_ahead::ReadAhead;
use crate::ws::{
    self, CloseCode, CloseFrame, DIRECT_READ_MIN, InputGrowth, ProtocolError, RESERVE_AHEAD,
    release_bytes,
};

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

/// The protocol as a link keeps it. A framed link's buffers live with its
/// framer, so a WebSocket link (whose connection keeps its own) carries
/// none: every idle WebSocket connection is 64 bytes smaller.
enum Wire {
    Framed(Box<Framed>),
    WebSocket(Box<ws::Connection>),
}

/// A framed link's framer and its buffers.
struct Framed {
    /// The built-in framers held by value: their decode is taken in line.
    framer: LinkFramer,
    /// Bytes not yet cut into messages.
    input: BytesMut,
    input_growth: InputGrowth,
    /// How much the peer's recent reads show it sends at once, as a
    /// growing read buffer sizes itself ([`Framed::note_read`]); 0 while
    /// reads are small. A [stream](Framer::is_stream) framer's link reads
    /// that much in place; one that knows a message's length reserves its
    /// whole rest while it is not 0.
    read_room: usize,
    /// The room for the next message at a message boundary while large
    /// messages flow (framers that know a message's length), and the room
    /// offered last.
    ahead: ReadAhead,
    /// Frames ready for the writer.
    output: BytesMut,
    /// Bytes framed ahead ([`Link::send_encoded`]), with what `output`
    /// held before each, in order: they go before `output`.
    queued: VecDeque<Bytes>,
}

impl Framed {
    /// The input buffer's room for the rest of a large message whose
    /// length the framer knows ([`Framer::remaining`]); `None` below
    /// [`DIRECT_READ_MIN`] still to come. The room reserved ahead is at
    /// most what the peer has sent so far (at least `DIRECT_READ_MIN`),
    /// or, once its reads showed data flowing
    /// ([`read_room`](Self::read_room) not 0), the whole rest, as a
    /// WebSocket connection reserves a frame's; at most [`RESERVE_AHEAD`]
    /// either way: a peer that announces a large message and sends little
    /// does not make the link hold memory it never sent, while one that
    /// sends fast has the rest of a message read into one allocation,
    /// never moved as it grows. Not flowing, `DIRECT_READ_MIN` more lets
    /// the read that ends the message take the start of the next one in
    /// place too: otherwise a short tail of the message is left for a
    /// copying read, which finds the buffer full and moves the whole
    /// message to a new one. Flowing, the room is the rest exactly
    /// (whatever its size): the next message is read at the boundary into
    /// room of its own ([`ReadAhead`]), sized as the last large message,
    /// so each is read whole, into its own allocation, without a copy.
    ///
    /// A [stream](Framer::is_stream) framer's link has no message to read
    /// the rest of: it offers `read_room` while data flows instead.
    ///
    /// Nothing buffered, reads small and no large message flowing (a
    /// ping-pong's read, once per message): `None` without asking the
    /// framer, whose answers change nothing then (an empty buffer holds
    /// no partial message, [`Framer::remaining`]).
    fn input_room(&mut self) -> Option<Limit<&mut BytesMut>> {
        if self.input.is_empty() && self.read_room == 0 && !self.ahead.is_flowing() {
            return None;
        }
        if self.framer.is_stream() {
            if self.read_room == 0 {
                return None;
            }
            self.input.reserve(self.read_room);
            return Some(self.ahead.offer(&mut self.input, self.read_room));
        }
        let Some(to_come) = self.framer.remaining(&self.input) else {
            // At a boundary (or the start of a header).
            return self.ahead.room(&mut self.input);
        };
        if to_come >= DIRECT_READ_MIN {
            self.ahead.large_message(self.input.len() + to_come);
        }
        if self.read_room > 0 && self.ahead.is_flowing() {
            self.input.reserve(to_come.min(RESERVE_AHEAD));
            return Some(self.ahead.offer(&mut self.input, to_come));
        }
        if to_come < DIRECT_READ_MIN {
            return None;
        }
        let ahead = if self.read_room > 0 {
            RESERVE_AHEAD
        } else {
            self.input.len().clamp(DIRECT_READ_MIN, RESERVE_AHEAD)
        };
        self.input.reserve(to_come.min(ahead) + DIRECT_READ_MIN);
        let room = Limit::limit(&ws::direct_read_room(&mut self.input, to_come)?);
        Some(self.ahead.offer(&mut self.input, room))
    }

    /// Sizes [`read_room`](Self::read_room) after a read of `len` bytes
    /// (`in_place`: into the room [`input_room`](Self::input_room)
    /// offered; otherwise through the adapter's buffer), as a growing read
    /// buffer does: a copying read of at least [`DIRECT_READ_MIN`] bytes
    /// means data flows, and the room is twice as much; a read that fills
    /// the room offered doubles it, up to [`READ_ROOM_MAX`]; one of less
    /// than `DIRECT_READ_MIN` bytes halves it, and below
    /// `DIRECT_READ_MIN` it is 0 (a stream framer's link reads through the
    /// adapter's buffer again). So a link holds at most `READ_ROOM_MAX` of room beyond
    /// what was sent, and only while large reads keep coming; an idle one
    /// holds none (its input buffer is returned, [`Link::release_buffers`]).
    fn note_read(&mut self, len: usize, in_place: bool) {
        let room = self.read_room;
        let offered = self.ahead.offered();
        self.read_room = if !in_place {
            if len >= DIRECT_READ_MIN {
                room.max(len.saturating_mul(2)).min(READ_ROOM_MAX)
            } else {
                room
            }
        } else if len >= offered {
            room.max(offered).saturating_mul(2).min(READ_ROOM_MAX)
        } else if len < DIRECT_READ_MIN {
            Some(room / 2)
                .filter(|&half| half >= DIRECT_READ_MIN)
                .unwrap_or(0)
        } else {
            room
        };
        if in_place {
            self.ahead.note_read(len);
        }
    }
}

/// The most room a raw link reads into at once while data flows (see
/// [`Link::input_buffer`]): 64 KiB, what a plain echo's read buffer holds,
/// and the raw framer's default message size. The room doubles from twice
/// a copying read of at least [`DIRECT_READ_MIN`] bytes as reads fill it,
/// halves after a read of less than `DIRECT_READ_MIN`, and is gone below
/// `DIRECT_READ_MIN`.
pub const READ_ROOM_MAX: usize = 64 * 1024;

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
                framer: LinkFramer::new(framer),
                input: BytesMut::new(),
                input_growth: InputGrowth::default(),
                read_room: 0,
                ahead: ReadAhead::default(),
                output: BytesMut::new(),
                queued: VecDeque::new(),
            })),
            Protocol::WebSocket(conn) => Self::WebSocket(conn),
        }
    }
}

/// Frames application messages for one link exactly as [`Link::send`]
/// does, without the link: for a sender that frames under its own lock,
/// ahead of the link ([`Link::encoder`]), and hands the bytes over later
/// with [`Link::send_encoded`]. Only a link whose frames for a message
/// depend on nothing but the message has one: a framed link whose framer
/// gives an [encoder](Framer::encoder), a WebSocket server without
/// permessage-deflate.
pub struct Encoder(EncoderKind);

enum EncoderKind {
    Framed(LinkFramer),
    /// The connection's fragment size.
    WebSocket(usize),
}

impl fmt::Debug for Encoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            EncoderKind::Framed(_) => f.write_str("Encoder::Framed"),
            EncoderKind::WebSocket(fragment) => {
                f.debug_tuple("Encoder::WebSocket").field(fragment).finish()
            }
        }
    }
}

/// The header of a WebSocket message's first frame (its opcode says text
/// or binary); its length is set as each frame is made.
fn first_frame_header(message: &Message) -> ws::frame::FrameHeader {
    let opcode = match message {
        Message::Text(_) => ws::frame::OpCode::Text,
        Message::Binary(_) => ws::frame::OpCode::Binary,
    };
    ws::frame::FrameHeader::new(opcode, 0)
}

/// [`Encoder::encode`] of a WebSocket server's message, fragmented at
/// `fragment` bytes (0: never).
#[inline(never)]
fn encode_websocket(fragment: usize, message: &Message, dst: &mut BytesMut) {
    let first = first_frame_header(message);
    let payload = message.as_bytes();
    // The usual message, one short frame, is framed here in line;
    // `encode_message` frames it the same way.
    if (fragment == 0 || payload.len() <= fragment)
        && ws::frame::encode_short_unmasked(first.first_byte(), payload, dst)
    {
        return;
    }
    ws::frame::encode_message(first, payload, fragment, || None, dst);
}

impl Encoder {
    /// Appends `message`, framed, to `dst`.
    ///
    /// # Errors
    ///
    /// The framer's refusal (a message too large for its limit, a line
    /// that holds the delimiter); `dst` is left untouched. [`Link::send`]
    /// drops such a message.
    //
    // Inlined into the caller: a framed link's message then costs one call
    // (the framer's) instead of two. A WebSocket message is framed out of
    // line: inlined, its framing made the caller's `BytesMut` writes calls
    // (BENCHMARKS.md, session 15).
    #[inline(always)]
    pub fn encode(&mut self, message: &Message, dst: &mut BytesMut) -> Result<(), FramingError> {
        match &mut self.0 {
            EncoderKind::Framed(framer) => framer.encode(message.as_bytes(), dst),
            EncoderKind::WebSocket(fragment) => {
                encode_websocket(*fragment, message, dst);
                Ok(())
            }
        }
    }

    /// Like [`encode`](Self::encode), but a message of at least
    /// [`LARGE_MESSAGE`] bytes whose frames are headers and the payload
    /// as it is (raw, length-prefixed, a WebSocket server's frames)
    /// is not copied: only the headers are appended to `dst`, and each
    /// piece of the payload (the message's own [`Bytes`], or slices of it
    /// when the WebSocket fragments it) goes to `chunk` with `dst`'s
    /// length at that moment: on the wire it follows `dst`'s bytes up to
    /// there. Frames of any other message are appended whole.
    ///
    /// # Errors
    ///
    /// As [`encode`](Self::encode): nothing was appended, and `chunk` was
    /// not called.
    pub fn encode_chunked(
        &mut self,
        message: &Message,
        dst: &mut BytesMut,
        mut chunk: impl FnMut(usize, Bytes),
    ) -> Result<(), FramingError> {
        if message.len() < LARGE_MESSAGE {
            return self.encode(message, dst);
        }
        match &mut self.0 {
            EncoderKind::Framed(framer) => {
                if !framer.encode_header(message.as_bytes(), dst)? {
                    return framer.encode(message.as_bytes(), dst);
                }
                chunk(dst.len(), message.clone().into_bytes());
            }
            EncoderKind::WebSocket(fragment) if *fragment == 0 || *fragment >= LARGE_MESSAGE => {
                let first = first_frame_header(message);
                let payload = message.clone().into_bytes();
                for (mut header, range) in
                    ws::frame::message_frames(first, payload.len(), *fragment)
                {
                    header.payload_len = u64::try_from(range.len()).unwrap_or(u64::MAX);
                    header.encode(dst);
                    chunk(dst.len(), payload.slice(range));
                }
            }
            // Small fragments: one buffer beats a chunk per fragment.
            EncoderKind::WebSocket(_) => return self.encode(message, dst),
        }
        Ok(())
    }
}

/// The smallest message [`Encoder::encode_chunked`] does not copy: 16 KiB,
/// the adapters' read size. Below it, copying is cheap (well under a
/// microsecond) and small messages batch into one buffer for the writer;
/// a message's [`Bytes`] may also be a slice of a larger read buffer,
/// which a chunk would keep alive while it waits (the send limit counts
/// the message only). From it on, the copy costs more than the chunk (a
/// queue entry and one more buffer in the vectored write), and a message
/// that large filled at least one read of its own, so the memory it keeps
/// alive is of its own size.
pub const LARGE_MESSAGE: usize = 16 * 1024;

/// How a [`Link`] behaves.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Pings (WebSocket ping frames), dead-peer detection and the idle
    /// timeout. Plain TCP has no ping, so only `idle_timeout` applies there.
    /// Default: [`HeartbeatConfig::default`] (ping every 30 s, dead after 3
    /// missed pongs, no idle timeout).
    pub heartbeat: HeartbeatConfig,
    /// How long a graceful close waits for the peer's close frame (WebSocket)
    /// or, with [`half_close`](Self::half_close), for the peer's end of the
    /// stream, before the socket is closed anyway. Default 5 s.
    pub close_timeout: Duration,
    /// A link that goes idle (nothing to write after traffic) returns its
    /// buffers to the allocator, and [`Transmit::release`] tells the
    /// writer to return its own: at once, unless it already did less than
    /// `release_after` ago; then when that much time has passed (a
    /// connection that keeps sending bursts would otherwise allocate its
    /// buffers again for every burst). Zero returns them at every idle
    /// moment. Default 1 s.
    pub release_after: Duration,
    /// Plain TCP (a framed link) only: a graceful close is a half-close.
    /// Once what was framed is written, [`Transmit::shutdown`] asks the
    /// writer to shut the socket's write direction down (a TCP FIN) and
    /// the link reads on, handing out what the peer still sends, until
    /// the peer ends the stream ([`CloseReason::Eof`]) or `close_timeout`
    /// passes ([`CloseReason::Local`]). For a client whose server answers
    /// what it read after the client's end. Off (default): a graceful
    /// close closes the socket once what was framed is written, and
    /// nothing more is read. WebSocket links ignore it (their close
    /// handshake already waits for the peer).
    pub half_close: bool,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            heartbeat: HeartbeatConfig::default(),
            close_timeout: Duration::from_secs(5),
            release_after: Duration::from_secs(1),
            half_close: false,
        }
    }
}

/// How a connection was asked to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CloseKind {
    /// Write what is queued, then close properly (a WebSocket close frame,
    /// a TCP shutdown). Can take forever with a consumer that does not read:
    /// follow up with [`Abort`](Self::Abort) after a timeout.
    Graceful,
    /// Close the socket at once; queued messages are discarded. Wins over
    /// an earlier `Graceful` request.
    Abort,
}

/// What happened on a link, for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkEvent {
    /// A whole message.
    Message(Message),
    /// A WebSocket ping (its auto-pong waits: [`Link::waiting_pong`]).
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
    /// This side closed ([`Link::close`], [`Link::abort`]), or a graceful
    /// close timed out waiting for the peer.
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
    /// Bytes appended to the caller's buffer list (with
    /// [`Link::poll_transmit_behind`], and those the caller holds ahead).
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
    /// A half-close ([`LinkConfig::half_close`]): after writing what was
    /// appended, shut the socket's write direction down (a TCP FIN; TLS
    /// sends its close_notify first) and keep reading. Said once; a later
    /// [`close`](Self::close) closes the socket.
    pub shutdown: bool,
    /// Everything was handed out, and the call after writing it would
    /// append nothing and change nothing (this call had its idle moment):
    /// the writer need not make it, but waits for a wake-up (or reads)
    /// instead. Said by [`Link::poll_transmit_last`], never by
    /// [`Link::poll_transmit`], whose caller calls again once it wrote.
    pub done: bool,
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

/// When an idle link returns its buffers: at the first idle moment after
/// traffic, unless the last return was less than `after` ago; then
/// `after` past that return (a connection that goes idle between every
/// two bursts would otherwise allocate its buffers again for each).
#[derive(Debug)]
struct IdleRelease {
    after: Duration,
    /// Traffic since the last idle moment.
    busy: bool,
    /// The buffers were returned at least once.
    released: bool,
    /// `after` past the last return: until then it is recent (`None` when
    /// that overflows the clock: recent for good, no timer). Kept as an
    /// instant so that each idle moment compares two instants, not
    /// subtracts them (a `Duration` made per reply).
    recent_until: Option<Instant>,
    /// Idle since a return that was too recent: the timer returns them.
    pending: bool,
    /// A return the writer has not heard of yet.
    unheard: bool,
}

impl IdleRelease {
    fn new(after: Duration) -> Self {
        Self {
            after,
            busy: false,
            released: false,
            recent_until: None,
            pending: false,
            unheard: false,
        }
    }

    /// Bytes moved: the next idle moment may return the buffers.
    fn traffic(&mut self) {
        self.busy = true;
    }

    /// Nothing to write at `now`: whether to return the buffers now (if
    /// not, and there was traffic, the timer will).
    fn idle(&mut self, now: Instant) -> bool {
        if !std::mem::take(&mut self.busy) {
            return false;
        }
        // `now - released < after`: an `Instant` never goes back.
        let recent = self.released && self.recent_until.is_none_or(|until| now < until);
        self.pending = recent;
        !recent
    }

    /// When the timer returns them.
    fn deadline(&self) -> Option<Instant> {
        if !self.pending {
            return None;
        }
        self.recent_until
    }

    /// Whether the timer is due at `now`.
    fn due(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|at| now >= at)
    }

    /// The buffers were returned at `now`.
    fn released(&mut self, now: Instant) {
        self.released = true;
        self.recent_until = now.checked_add(self.after);
        self.pending = false;
        self.unheard = true;
    }

    /// Whether a return happened since the writer last asked.
    fn take_unheard(&mut self) -> bool {
        std::mem::take(&mut self.unheard)
    }
}

/// One connection's protocol state, heartbeat and close handshake. See
/// the [module docs](self).
#[derive(Debug)]
pub struct Link {
    wire: Wire,
    heartbeat: Heartbeat,
    close_timeout: Duration,
    idle: IdleRelease,
    /// Events ready for `poll_event` (timer results, heartbeat RTTs, a
    /// local close).
    events: VecDeque<LinkEvent>,
    /// A graceful WebSocket close waits for the peer's reply until then.
    close_deadline: Option<Instant>,
    /// Set once `LinkEvent::Closed` was queued or reported.
    closed: bool,
    /// The writer must close the socket after its next write.
    finish: bool,
    /// Aborted: output is discarded.
    aborted: bool,
    /// The transport ended.
    eof: bool,
    /// A graceful close of a framed link half-closes
    /// ([`LinkConfig::half_close`]).
    half_close: bool,
    /// Where a half-close is.
    shutdown: HalfClose,
}

/// Where a framed link's half-close is ([`LinkConfig::half_close`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HalfClose {
    /// Not asked for.
    Open,
    /// Asked for: the next `poll_transmit` says to shut the write
    /// direction down after what it hands out.
    Due,
    /// Said: nothing more is written; input goes on until the peer's end.
    Said,
}

impl Link {
    /// A link speaking `protocol`, from `now`.
    ///
    /// # Errors
    ///
    /// [`LinkConfigError`] when the configuration is invalid.
    pub fn new(
        protocol: Protocol,
        config: &LinkConfig,
        now: Instant,
    ) -> Result<Self, LinkConfigError> {
        let mut heartbeat_config = config.heartbeat.clone();
        if matches!(protocol, Protocol::Framed(_)) {
            // Plain TCP has no ping frame: only the idle timeout applies.
            heartbeat_config.interval = Duration::ZERO;
        }
        let heartbeat =
            Heartbeat::new(heartbeat_config, now).map_err(LinkConfigError::Heartbeat)?;
        Ok(Self {
            wire: protocol.into(),
            heartbeat,
            close_timeout: config.close_timeout,
            idle: IdleRelease::new(config.release_after),
            events: VecDeque::new(),
            close_deadline: None,
            closed: false,
            finish: false,
            aborted: false,
            eof: false,
            half_close: config.half_close,
            shutdown: HalfClose::Open,
        })
    }

    /// Feeds bytes read from the socket. Then drain
    /// [`poll_event`](Self::poll_event), which parses them.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) {
        if self.closed {
            return;
        }
        self.note_input(now);
        match &mut self.wire {
            Wire::Framed(framed) => {
                framed.input_growth.append(&mut framed.input, data);
                framed.note_read(data.len(), false);
            }
            Wire::WebSocket(conn) => conn.handle_input(data),
        }
    }

    /// The input buffer, limited to the room reserved for the rest of a
    /// large message, to read into without
    /// [`handle_input`](Self::handle_input)'s copy: a WebSocket frame (see
    /// [`ws::Connection::input_room`]) or a framed message whose length
    /// the framer knows ([`Framer::remaining`]: length-prefixed), with at
    /// least [`DIRECT_READ_MIN`] bytes to come, or, while large reads keep
    /// coming, whatever a [stream](Framer::is_stream) framer's link
    /// (raw) reads next, into room that grows with the reads up to
    /// [`READ_ROOM_MAX`]; then call
    /// [`input_filled`](Self::input_filled). `None` when there is no such
    /// message: read into any buffer and call `handle_input`. Append only.
    pub fn input_buffer(&mut self) -> Option<Limit<&mut BytesMut>> {
        if self.closed {
            return None;
        }
        match &mut self.wire {
            Wire::WebSocket(conn) => conn.input_room(),
            Wire::Framed(framed) => framed.input_room(),
        }
    }

    /// `len` bytes were appended to [`input_buffer`](Self::input_buffer)
    /// at `now`.
    pub fn input_filled(&mut self, now: Instant, len: usize) {
        if len > 0 {
            self.note_input(now);
        }
        match &mut self.wire {
            Wire::Framed(framed) => framed.note_read(len, true),
            Wire::WebSocket(conn) => conn.input_filled(len),
        }
    }

    /// The read into [`input_buffer`](Self::input_buffer)'s room found
    /// nothing yet (it would block): the room goes back with the input
    /// buffer when that holds nothing (no message in progress), so a link
    /// that waits for its peer holds no room for a read.
    pub fn input_pending(&mut self) {
        match &mut self.wire {
            Wire::Framed(framed) => release_bytes(&mut framed.input),
            Wire::WebSocket(conn) => conn.release_idle_input(),
        }
    }

    /// [`input_buffer`](Self::input_buffer)'s room lent out with the input
    /// buffer itself, for a reader that cannot hold the link while it
    /// reads (a blocking read on a thread of its own, with the link behind
    /// a lock): the buffer (what it holds is the link's input so far:
    /// append only) and how many bytes at most to append. Give it back
    /// with [`restore_input`](Self::restore_input) whatever the read did,
    /// before the link is fed or parsed again. `None` when there is no
    /// such room: read into any buffer and call
    /// [`handle_input`](Self::handle_input).
    pub fn lend_input(&mut self) -> Option<(BytesMut, usize)> {
        let room = self.input_buffer()?;
        let len = Limit::limit(&room);
        Some((std::mem::take(room.into_inner()), len))
    }

    /// Gives back the input buffer [`lend_input`](Self::lend_input) lent,
    /// with `len` bytes appended at `now`; 0 when the read brought nothing
    /// (then, as [`input_pending`](Self::input_pending), an empty buffer's
    /// room is returned). A link closed meanwhile drops it.
    pub fn restore_input(&mut self, now: Instant, input: BytesMut, len: usize) {
        if self.closed {
            return;
        }
        match &mut self.wire {
            Wire::Framed(framed) => framed.input = input,
            Wire::WebSocket(conn) => conn.restore_input(input),
        }
        if len == 0 {
            self.input_pending();
        } else {
            self.input_filled(now, len);
        }
    }

    /// Bookkeeping for input arriving at `now`.
    fn note_input(&mut self, now: Instant) {
        self.idle.traffic();
        self.heartbeat.handle_activity(now);
    }

    /// The socket has no more bytes to read. [`poll_event`](Self::poll_event)
    /// reports what was still buffered, then [`LinkEvent::Closed`].
    pub fn handle_eof(&mut self) {
        if !self.closed {
            self.eof = true;
            if let Wire::WebSocket(conn) = &mut self.wire {
                conn.handle_eof();
            }
        }
    }

    /// Whether the transport ended or the link closed: there is nothing
    /// more to read.
    #[must_use]
    pub fn is_input_done(&self) -> bool {
        self.closed || self.eof
    }

    /// The next event, in order; `None` when nothing more can be parsed
    /// (read more, or wait for the timer).
    //
    // Inlined with `next_event` and the WebSocket's fast path into the
    // caller (see `LinkDriver::poll_event` in storm-host): no event is
    // returned through memory on a small message's way.
    #[inline(always)]
    pub fn poll_event(&mut self, now: Instant) -> Option<LinkEvent> {
        if let Some(event) = self.events.pop_front() {
            return Some(event);
        }
        if self.closed {
            return None;
        }
        self.next_event(now)
    }

    /// Whether [`poll_event`](Self::poll_event) has events queued that need
    /// no input (a local close, a timer's result).
    #[must_use]
    pub fn has_queued_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// The length of the frame of the WebSocket auto-pong that waits for
    /// the caller's send limit (see [`ws::Connection::waiting_pong`]).
    #[must_use]
    pub fn waiting_pong(&self) -> Option<usize> {
        match &self.wire {
            Wire::WebSocket(conn) => conn.waiting_pong(),
            Wire::Framed(_) => None,
        }
    }

    /// Queues the waiting auto-pong for transmit, after everything framed
    /// so far.
    pub fn queue_pong(&mut self) {
        if let Wire::WebSocket(conn) = &mut self.wire {
            conn.queue_pong();
        }
    }

    /// Frames `message` for the writer, after everything framed so far.
    /// Nothing once the link aborted or its close frame went out; a
    /// message the framer refuses (too large for its limit) is dropped.
    pub fn send(&mut self, message: &Message) {
        if self.aborted || self.shutdown != HalfClose::Open {
            return;
        }
        match &mut self.wire {
            Wire::Framed(framed) => {
                let _ = framed.framer.encode(message.as_bytes(), &mut framed.output);
            }
            Wire::WebSocket(conn) => {
                let _ = match message {
                    Message::Text(text) => conn.send_text(text),
                    Message::Binary(bytes) => conn.send_binary(bytes),
                };
            }
        }
    }

    /// The link's [`Encoder`], for a sender that frames messages ahead of
    /// it; `None` when framing a message depends on the link's state (a
    /// WebSocket client's masking, permessage-deflate, a framer without an
    /// [encoder](Framer::encoder)): send those with [`send`](Self::send).
    #[must_use]
    pub fn encoder(&self) -> Option<Encoder> {
        let kind = match &self.wire {
            Wire::Framed(framed) => EncoderKind::Framed(LinkFramer::new(framed.framer.encoder()?)),
            Wire::WebSocket(conn) => EncoderKind::WebSocket(conn.stateless_fragment_size()?),
        };
        Some(Encoder(kind))
    }

    /// Queues bytes the link's [`Encoder`] framed (any number of whole
    /// messages) after everything framed so far; the writer gets them as
    /// they are. Like [`send`](Self::send), nothing once the link aborted
    /// or its close frame went out: the bytes are dropped.
    pub fn send_encoded(&mut self, bytes: Bytes) {
        if self.aborted || self.shutdown != HalfClose::Open || bytes.is_empty() {
            return;
        }
        match &mut self.wire {
            Wire::Framed(framed) => {
                ws::queue_behind_output(&mut framed.output, &mut framed.queued, bytes);
            }
            Wire::WebSocket(conn) => {
                let _ = conn.send_encoded(bytes);
            }
        }
    }

    /// A graceful close, after everything framed so far: a WebSocket close
    /// frame with `code` and `reason` (1000 and none when they cannot be
    /// sent), then the socket is closed once the peer answers or
    /// [`LinkConfig::close_timeout`] from `now` passed; a framed link
    /// closes the socket after its last write, or with
    /// [`LinkConfig::half_close`] shuts its write direction down then and
    /// reads on until the peer's end or the close timeout. Calling it
    /// again changes nothing.
    pub fn close(&mut self, now: Instant, code: CloseCode, reason: &str) {
        match &mut self.wire {
            Wire::Framed(_) if self.half_close && !self.closed => {
                if self.shutdown == HalfClose::Open {
                    if self.eof {
                        // The peer ended first: what it sent is handed out,
                        // then `Closed(Eof)` closes the socket.
                        self.shutdown = HalfClose::Said;
                    } else {
                        self.shutdown = HalfClose::Due;
                        self.close_deadline = now.checked_add(self.close_timeout);
                    }
                }
            }
            Wire::Framed(_) => self.finish(CloseKind::Graceful),
            Wire::WebSocket(conn) => {
                if conn.is_open() && conn.close(code, reason).is_err() {
                    let _ = conn.close(CloseCode::NORMAL, "");
                }
                if self.close_deadline.is_none() && !conn.is_closed() {
                    self.close_deadline = now.checked_add(self.close_timeout);
                }
            }
        }
    }

    /// Closes at once: what was framed is discarded, the next
    /// [`poll_transmit`](Self::poll_transmit) says to close the socket.
    pub fn abort(&mut self) {
        self.aborted = true;
        self.finish(CloseKind::Abort);
    }

    /// Whether the link aborted (by [`abort`](Self::abort), or on a dead or
    /// idle peer): what is queued for it will never be written.
    #[must_use]
    pub fn is_aborted(&self) -> bool {
        self.aborted
    }

    /// The writer closes the socket after its next write; `Closed` is
    /// reported (with `kind`) unless it already was.
    fn finish(&mut self, kind: CloseKind) {
        self.finish = true;
        if !self.closed {
            self.closed = true;
            self.events
                .push_back(LinkEvent::Closed(CloseReason::Local(kind)));
        }
    }

    /// Whether there is framed output for
    /// [`poll_transmit`](Self::poll_transmit).
    #[must_use]
    pub fn has_transmit(&self) -> bool {
        match &self.wire {
            Wire::Framed(framed) => !framed.output.is_empty() || !framed.queued.is_empty(),
            Wire::WebSocket(conn) => conn.has_transmit(),
        }
    }

    /// Whether the writer is to close the socket after its next write.
    #[must_use]
    pub fn close_due(&self) -> bool {
        self.finish
    }

    /// Whether the link speaks WebSocket (which makes output of its own:
    /// pongs, close replies).
    #[must_use]
    pub fn is_websocket(&self) -> bool {
        matches!(self.wire, Wire::WebSocket(_))
    }

    /// Whether [`LinkEvent::Closed`] was reported or is queued: nothing
    /// more is parsed.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.poll_timeout_with(self.idle.deadline())
    }

    /// [`poll_timeout`](Self::poll_timeout), were the idle buffers' return
    /// due at `idle`.
    fn poll_timeout_with(&self, idle: Option<Instant>) -> Option<Instant> {
        if self.closed && self.close_deadline.is_none() {
            return None;
        }
        [self.heartbeat.poll_timeout(), self.close_deadline, idle]
            .into_iter()
            .flatten()
            .min()
    }

    /// Handles what is due at `now`: pings, dead peers (aborted), idle
    /// timeouts (aborted), a graceful close the peer never answered, the
    /// return of idle buffers. Then drain [`poll_event`](Self::poll_event).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.idle.due(now) {
            // The writer hears it from poll_transmit.
            self.release_buffers(now);
        }
        if self.close_deadline.is_some_and(|deadline| now >= deadline) {
            self.close_deadline = None;
            self.finish(CloseKind::Graceful);
        }
        if self.closed {
            return;
        }
        self.heartbeat.handle_timeout(now);
        while let Some(event) = self.heartbeat.poll_event() {
            let reason = match event {
                HeartbeatEvent::SendPing(payload) => {
                    if let Wire::WebSocket(conn) = &mut self.wire {
                        let _ = conn.send_ping(&payload);
                    }
                    continue;
                }
                HeartbeatEvent::Rtt(rtt) => {
                    self.events.push_back(LinkEvent::Rtt(rtt));
                    continue;
                }
                HeartbeatEvent::PeerDead { .. } => CloseReason::PeerDead,
                HeartbeatEvent::IdleTimeout => CloseReason::IdleTimeout,
            };
            self.closed = true;
            self.finish = true;
            self.aborted = true;
            self.events.push_back(LinkEvent::Closed(reason));
            break;
        }
    }

    /// Returns every empty buffer and queue of the link and its protocol;
    /// the writer is told by its next `poll_transmit`.
    fn release_buffers(&mut self, now: Instant) {
        if self.events.is_empty() && self.events.capacity() != 0 {
            self.events = VecDeque::new();
        }
        match &mut self.wire {
            Wire::Framed(framed) => {
                framed.input_growth.release(&mut framed.input);
                framed.read_room = 0;
                framed.ahead.forget();
                release_bytes(&mut framed.output);
                if framed.queued.is_empty() && framed.queued.capacity() != 0 {
                    framed.queued = VecDeque::new();
                }
            }
            Wire::WebSocket(conn) => conn.release_buffers(),
        }
        self.idle.released(now);
    }

    /// The write path: appends what was framed (in order) to `out` and
    /// says whether to close the socket after writing it, whether the link
    /// went idle and returned its buffers, and whether the deadline moved.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<Bytes>) -> Transmit {
        self.poll_transmit_behind(now, 0, out, false)
    }

    /// [`poll_transmit`](Self::poll_transmit) for a caller that knows
    /// nothing will be framed before it has written what this appends (its
    /// outbox is empty, and the link takes no input meanwhile): the call
    /// after that write would append nothing, so this one has that call's
    /// idle moment and says [`Transmit::done`] (unless it says to close or
    /// shut down). A caller that frames more anyway calls again.
    pub fn poll_transmit_last(&mut self, now: Instant, out: &mut Vec<Bytes>) -> Transmit {
        self.poll_transmit_behind(now, 0, out, true)
    }

    /// Whether [`send_encoded`](Self::send_encoded) would queue bytes now
    /// (not aborted, no close frame or half-close begun).
    #[must_use]
    pub fn takes_encoded(&self) -> bool {
        !self.aborted
            && self.shutdown == HalfClose::Open
            && match &self.wire {
                Wire::Framed(_) => true,
                Wire::WebSocket(conn) => conn.can_send(),
            }
    }

    /// [`poll_transmit`](Self::poll_transmit) (with `last`:
    /// [`poll_transmit_last`](Self::poll_transmit_last)) for a caller that
    /// holds `ahead` bytes the link's [`Encoder`] framed, to write before
    /// what this appends: taken from its senders' queue itself rather than
    /// through [`send_encoded`](Self::send_encoded), while the link
    /// [took encoded bytes](Self::takes_encoded) and had nothing to
    /// transmit ([`has_transmit`](Self::has_transmit)). They are this
    /// call's output as if the link had appended them: counted in
    /// [`Transmit::bytes`], traffic for the idle moment.
    //
    // The one body of the three transmit calls, inlined into each: the
    // writer's one call per reply.
    #[inline(always)]
    pub fn poll_transmit_behind(
        &mut self,
        now: Instant,
        ahead: usize,
        out: &mut Vec<Bytes>,
        last: bool,
    ) -> Transmit {
        let mut transmit = Transmit {
            bytes: ahead,
            ..Transmit::default()
        };
        let mut push = |bytes: Bytes| {
            if !self.aborted {
                transmit.bytes += bytes.len();
                out.push(bytes);
            }
        };
        let mut ws_closed = false;
        match &mut self.wire {
            Wire::Framed(framed) => {
                // One buffer at a time: a `VecDeque` drain costs more to
                // set up and drop than the one or two buffers most calls
                // find.
                while let Some(bytes) = framed.queued.pop_front() {
                    push(bytes);
                }
                if !framed.output.is_empty() {
                    push(framed.output.split().freeze());
                }
                if self.shutdown == HalfClose::Due && !self.finish {
                    self.shutdown = HalfClose::Said;
                    transmit.shutdown = true;
                }
            }
            Wire::WebSocket(conn) => {
                while let Some(bytes) = conn.poll_transmit() {
                    push(bytes);
                }
                ws_closed = conn.is_closed();
            }
        }
        // Only a finished close and an idle moment after traffic move the
        // deadline: the busy path does not look at it.
        if ws_closed {
            if self.close_deadline.is_some() {
                let before = self.poll_timeout();
                self.close_deadline = None;
                transmit.timer_changed = self.poll_timeout() != before;
            }
            self.finish = true;
        }
        transmit.close = self.finish;
        transmit.done = last && !transmit.close && !transmit.shutdown;
        if transmit.bytes > 0 {
            self.idle.traffic();
        }
        if (transmit.bytes == 0 || transmit.done) && !transmit.close && self.idle.busy {
            let before = self.idle.deadline();
            if self.idle.idle(now) {
                // Nothing to write after traffic: an idle connection holds
                // no buffer memory.
                self.release_buffers(now);
            }
            let after = self.idle.deadline();
            transmit.timer_changed =
                after != before && self.poll_timeout_with(before) != self.poll_timeout_with(after);
        }
        transmit.release = self.idle.take_unheard();
        transmit
    }

    /// Bytes of capacity the link's buffers and queues hold (what
    /// returning them frees).
    #[must_use]
    pub fn buffer_capacity(&self) -> usize {
        let protocol = match &self.wire {
            Wire::WebSocket(conn) => conn.buffer_capacity(),
            Wire::Framed(framed) => {
                framed.input.capacity()
                    + framed.output.capacity()
                    + framed.queued.capacity() * std::mem::size_of::<Bytes>()
            }
        };
        protocol + self.events.capacity() * std::mem::size_of::<LinkEvent>()
    }

    /// Bytes framed and not yet taken by
    /// [`poll_transmit`](Self::poll_transmit), a waiting pong included.
    #[must_use]
    pub fn transmit_len(&self) -> usize {
        match &self.wire {
            Wire::WebSocket(conn) => conn.transmit_len(),
            Wire::Framed(framed) => {
                framed.output.len() + framed.queued.iter().map(Bytes::len).sum::<usize>()
            }
        }
    }

    /// Parses one event from the protocol's buffered input.
    #[inline(always)]
    fn next_event(&mut self, now: Instant) -> Option<LinkEvent> {
        match &mut self.wire {
            // As a WebSocket's: a whole message of a length-prefix or raw
            // framer comes out as the `Message` it is handed on as, written
            // in place (`LinkFramer::whole_message`); anything else goes
            // through the framer's `decode`, which sees the same bytes.
            Wire::Framed(framed) => {
                if let Some(message) = framed.framer.whole_message(&mut framed.input) {
                    return Some(LinkEvent::Message(message));
                }
                let result = if self.eof {
                    framed.framer.decode_eof(&mut framed.input)
                } else {
                    framed.framer.decode(&mut framed.input)
                };
                match result {
                    Ok(Some(message)) => Some(LinkEvent::Message(Message::Binary(message))),
                    Ok(None) if self.eof => {
                        self.closed = true;
                        self.finish = true;
                        // A half-close ends here: nothing left to wait for.
                        self.close_deadline = None;
                        Some(LinkEvent::Closed(CloseReason::Eof))
                    }
                    Ok(None) => None,
                    Err(e) => {
                        self.closed = true;
                        self.finish = true;
                        self.close_deadline = None;
                        Some(LinkEvent::Closed(CloseReason::Framing(e)))
                    }
                }
            }
            // `Connection::poll_event` in its two steps: a whole message
            // comes out of the fast path as the `Message` it is handed on
            // as, written in place (see `ws::Connection::whole_message`).
            Wire::WebSocket(conn) => {
                if let Some(message) = conn.whole_message() {
                    return Some(LinkEvent::Message(message));
                }
                match conn.poll_frames() {
                    Ok(Some(ws::Event::Text(text))) => {
                        Some(LinkEvent::Message(Message::Text(text)))
                    }
                    Ok(Some(ws::Event::Binary(bytes))) => {
                        Some(LinkEvent::Message(Message::Binary(bytes)))
                    }
                    Ok(Some(ws::Event::Ping(payload))) => Some(LinkEvent::Ping(payload)),
                    Ok(Some(ws::Event::Pong(payload))) => {
                        self.heartbeat.handle_pong(now, &payload);
                        while let Some(event) = self.heartbeat.poll_event() {
                            if let HeartbeatEvent::Rtt(rtt) = event {
                                self.events.push_back(LinkEvent::Rtt(rtt));
                            }
                        }
                        Some(LinkEvent::Pong(payload))
                    }
                    Ok(Some(ws::Event::Close(frame))) => {
                        self.closed = true;
                        if self.eof {
                            self.finish = true;
                        }
                        Some(LinkEvent::Closed(if frame.code == CloseCode::ABNORMAL {
                            CloseReason::Eof
                        } else {
                            CloseReason::Remote(frame)
                        }))
                    }
                    Ok(None) => None,
                    Err(e) => {
                        self.closed = true;
                        Some(LinkEvent::Closed(CloseReason::Protocol(e)))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // tests take one starting Instant from the clock

    use super::*;
    use crate::framing::LengthPrefixFramer;
    use bytes::BufMut;

    const AFTER: Duration = Duration::from_secs(1);

    #[test]
    fn idle_release_returns_at_once_then_waits_out_the_interval() {
        let start = Instant::now();
        let mut idle = IdleRelease::new(AFTER);
        // Idle without traffic: nothing to return.
        assert!(!idle.idle(start));
        assert_eq!(idle.deadline(), None);
        // Traffic, then idle: return now, once.
        idle.traffic();
        assert!(idle.idle(start));
        idle.released(start);
        assert!(idle.take_unheard());
        assert!(!idle.take_unheard());
        assert!(!idle.idle(start));
        // Traffic again soon after: the timer returns them, at `AFTER`.
        let soon = start + Duration::from_millis(10);
        idle.traffic();
        assert!(!idle.idle(soon));
        assert_eq!(idle.deadline(), Some(start + AFTER));
        assert!(!idle.due(soon));
        assert!(idle.due(start + AFTER));
        idle.released(start + AFTER);
        assert_eq!(idle.deadline(), None);
        assert!(idle.take_unheard());
        // Traffic after the interval: at once again.
        idle.traffic();
        assert!(idle.idle(start + 3 * AFTER));
    }

    /// A return is recent for exactly `after` (half-open), and one whose
    /// end the clock cannot hold stays recent, with no timer.
    #[test]
    fn idle_release_is_recent_for_exactly_its_interval() {
        let start = Instant::now();
        let mut idle = IdleRelease::new(AFTER);
        idle.traffic();
        assert!(idle.idle(start));
        idle.released(start);
        idle.traffic();
        assert!(!idle.idle(start + AFTER - Duration::from_nanos(1)));
        assert_eq!(idle.deadline(), Some(start + AFTER));
        idle.traffic();
        assert!(idle.idle(start + AFTER));
        let mut forever = IdleRelease::new(Duration::MAX);
        forever.traffic();
        assert!(forever.idle(start));
        forever.released(start);
        forever.traffic();
        assert!(!forever.idle(start + AFTER));
        assert_eq!(forever.deadline(), None);
    }

    #[test]
    fn idle_release_after_zero_returns_at_every_idle_moment() {
        let now = Instant::now();
        let mut idle = IdleRelease::new(Duration::ZERO);
        for _ in 0..3 {
            idle.traffic();
            assert!(idle.idle(now));
            idle.released(now);
        }
    }

    fn framed(now: Instant) -> Link {
        let protocol = Protocol::Framed(Box::new(LengthPrefixFramer::default()));
        Link::new(protocol, &LinkConfig::default(), now).unwrap()
    }

    /// The last call before a wait takes everything and has the idle
    /// moment of the empty call after it: same buffers returned, same
    /// deadline, so the writer can skip that call (`done`). Not when it
    /// says to close.
    #[test]
    fn the_last_transmit_has_the_idle_moment_of_the_call_after_it() {
        let now = Instant::now();
        let (mut last, mut twice) = (framed(now), framed(now));
        for at in [now, now + Duration::from_millis(10), now + AFTER] {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            last.send(&Message::from(b"hi".to_vec()));
            twice.send(&Message::from(b"hi".to_vec()));
            let one = last.poll_transmit_last(at, &mut a);
            let first = twice.poll_transmit(at, &mut b);
            let then = twice.poll_transmit(at, &mut b);
            assert_eq!(a, b);
            assert_eq!((one.bytes, one.done, first.done), (6, true, false));
            assert_eq!(then.bytes, 0);
            assert_eq!(one.release, first.release || then.release);
            assert_eq!(last.poll_timeout(), twice.poll_timeout());
            assert_eq!(last.buffer_capacity(), twice.buffer_capacity());
        }
        last.close(now, CloseCode::NORMAL, "");
        let closing = last.poll_transmit_last(now, &mut Vec::new());
        assert!(closing.close && !closing.done);
    }

    #[test]
    fn output_goes_out_in_the_order_it_was_framed_then_the_socket_closes() {
        let now = Instant::now();
        let mut link = framed(now);
        link.send(&Message::from(b"a".to_vec()));
        link.close(now, CloseCode::NORMAL, "");
        assert_eq!(
            link.poll_event(now),
            Some(LinkEvent::Closed(CloseReason::Local(CloseKind::Graceful)))
        );
        let mut out = Vec::new();
        let transmit = link.poll_transmit(now, &mut out);
        assert_eq!(out.concat(), b"\0\0\0\x01a");
        assert!(transmit.close);
    }

    #[test]
    fn abort_discards_what_was_framed() {
        let now = Instant::now();
        let mut link = framed(now);
        link.send(&Message::from(b"a".to_vec()));
        link.abort();
        link.send(&Message::from(b"b".to_vec()));
        let mut out = Vec::new();
        let transmit = link.poll_transmit(now, &mut out);
        assert!(out.is_empty() && transmit.close);
        assert!(link.is_aborted());
    }

    fn half_closing(now: Instant) -> Link {
        let protocol = Protocol::Framed(Box::new(LengthPrefixFramer::default()));
        let config = LinkConfig {
            half_close: true,
            close_timeout: AFTER,
            ..LinkConfig::default()
        };
        Link::new(protocol, &config, now).unwrap()
    }

    #[test]
    fn a_half_close_shuts_the_write_side_after_the_output_and_reads_until_the_peers_end() {
        let now = Instant::now();
        let mut link = half_closing(now);
        link.send(&Message::from(b"a".to_vec()));
        link.close(now, CloseCode::NORMAL, "");
        link.close(now, CloseCode::NORMAL, "");
        // Nothing after the half-close is framed.
        link.send(&Message::from(b"late".to_vec()));
        assert_eq!(link.poll_event(now), None, "still open");
        let mut out = Vec::new();
        let transmit = link.poll_transmit(now, &mut out);
        assert_eq!(out.concat(), b"\0\0\0\x01a");
        assert!(transmit.shutdown && !transmit.close);
        assert_eq!(link.poll_timeout(), Some(now + AFTER));
        // Said once.
        out.clear();
        let again = link.poll_transmit(now, &mut out);
        assert!(out.is_empty() && !again.shutdown && !again.close);
        // The peer's answers still arrive, then its end closes the link.
        link.handle_input(now, b"\0\0\0\x02hi\0\0\0\x01!");
        link.handle_eof();
        assert_eq!(
            link.poll_event(now),
            Some(LinkEvent::Message(Message::from(b"hi".to_vec())))
        );
        assert_eq!(
            link.poll_event(now),
            Some(LinkEvent::Message(Message::from(b"!".to_vec())))
        );
        assert_eq!(
            link.poll_event(now),
            Some(LinkEvent::Closed(CloseReason::Eof))
        );
        assert_eq!(link.poll_timeout(), None);
        assert!(link.poll_transmit(now, &mut out).close);
    }

    #[test]
    fn a_half_close_the_peer_never_ends_times_out() {
        let now = Instant::now();
        let mut link = half_closing(now);
        link.close(now, CloseCode::NORMAL, "");
        let mut out = Vec::new();
        assert!(link.poll_transmit(now, &mut out).shutdown);
        link.handle_timeout(now + AFTER);
        assert_eq!(
            link.poll_event(now + AFTER),
            Some(LinkEvent::Closed(CloseReason::Local(CloseKind::Graceful)))
        );
        let transmit = link.poll_transmit(now + AFTER, &mut out);
        assert!(transmit.close && !transmit.shutdown);
    }

    #[test]
    fn without_half_close_a_framed_close_never_shuts_down_alone() {
        let now = Instant::now();
        let mut link = framed(now);
        link.close(now, CloseCode::NORMAL, "");
        let transmit = link.poll_transmit(now, &mut Vec::new());
        assert!(transmit.close && !transmit.shutdown);
        // Once the peer ended, a half-close has nothing to shut down: what
        // the peer sent is handed out, then its end closes the socket.
        let mut ended = half_closing(now);
        ended.handle_input(now, b"\0\0\0\x01!");
        ended.handle_eof();
        ended.close(now, CloseCode::NORMAL, "");
        assert!(!ended.poll_transmit(now, &mut Vec::new()).shutdown);
        assert_eq!(
            ended.poll_event(now),
            Some(LinkEvent::Message(Message::from(b"!".to_vec())))
        );
        assert_eq!(
            ended.poll_event(now),
            Some(LinkEvent::Closed(CloseReason::Eof))
        );
        let transmit = ended.poll_transmit(now, &mut Vec::new());
        assert!(transmit.close && !transmit.shutdown);
    }

    /// Length-prefixed wire bytes of `payload`.
    fn lp(payload: &[u8]) -> Vec<u8> {
        let mut wire = u32::try_from(payload.len()).unwrap().to_be_bytes().to_vec();
        wire.extend_from_slice(payload);
        wire
    }

    /// Feeds `wire` in pieces of `chunk` bytes, through the input buffer
    /// when the link offers it and through `handle_input` otherwise;
    /// returns the messages and how many bytes went in place.
    fn feed(link: &mut Link, now: Instant, wire: &[u8], chunk: usize) -> (Vec<Bytes>, usize) {
        let (messages, in_place, _) = feed_reads(link, now, wire, chunk, chunk);
        (messages, in_place)
    }

    /// [`feed`] with reads of at most `copied` bytes through
    /// `handle_input` and at most `in_place` bytes (and the room offered)
    /// through the input buffer; also says how many reads it took.
    fn feed_reads(
        link: &mut Link,
        now: Instant,
        wire: &[u8],
        copied: usize,
        in_place_max: usize,
    ) -> (Vec<Bytes>, usize, usize) {
        let (mut messages, mut in_place, mut at, mut reads) = (Vec::new(), 0, 0, 0);
        while at < wire.len() {
            reads += 1;
            let end = at.saturating_add(copied).min(wire.len());
            if let Some(mut room) = link.input_buffer() {
                let end = at
                    .saturating_add(room.remaining_mut().min(in_place_max))
                    .min(wire.len());
                room.put_slice(&wire[at..end]);
                link.input_filled(now, end - at);
                in_place += end - at;
                at = end;
            } else {
                link.handle_input(now, &wire[at..end]);
                at = end;
            }
            while let Some(event) = link.poll_event(now) {
                match event {
                    LinkEvent::Message(message) => messages.push(message.into_bytes()),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        (messages, in_place, reads)
    }

    #[test]
    fn a_large_length_prefixed_message_is_read_in_place() {
        let now = Instant::now();
        let mut link = framed(now);
        let big: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        // Nothing offered before the length is known, or for a small one.
        assert!(link.input_buffer().is_none());
        link.handle_input(now, &lp(b"small")[..6]);
        assert!(link.input_buffer().is_none());
        let mut wire = lp(b"small")[6..].to_vec();
        wire.extend(lp(&big));
        wire.extend(lp(b"after"));
        let (messages, in_place) = feed(&mut link, now, &wire, 16 * 1024);
        assert_eq!(messages, [&b"small"[..], &big, b"after"]);
        // Most of it went in place: all but the first read's and the
        // last DIRECT_READ_MIN bytes, when the room allows whole reads.
        assert!(in_place >= big.len() / 2, "{in_place}");
    }

    fn raw(now: Instant) -> Link {
        let framer = Box::new(crate::framing::RawFramer::default());
        Link::new(Protocol::Framed(framer), &LinkConfig::default(), now).unwrap()
    }

    #[test]
    fn a_raw_link_reads_a_flowing_stream_in_large_reads() {
        let now = Instant::now();
        let mut link = raw(now);
        let wire: Vec<u8> = (0..4 * 64 * 1024).map(|i| (i % 251) as u8).collect();
        // Reads of 16 KiB through the adapter's buffer, as many as the
        // room offered in place: the room grows to 64 KiB as reads fill
        // it (16 KiB copied, then 32 KiB, then 64 KiB each).
        let (messages, in_place, reads) = feed_reads(&mut link, now, &wire, 16 * 1024, usize::MAX);
        assert_eq!(messages.concat(), wire);
        assert_eq!(in_place, wire.len() - 16 * 1024);
        assert!(reads <= 6, "{reads} reads for 256 KiB");
        assert!(messages.iter().all(|m| m.len() <= READ_ROOM_MAX));
        // Bounded: never more room than READ_ROOM_MAX (and what the
        // reserve rounds to).
        assert!(link.buffer_capacity() <= 2 * READ_ROOM_MAX);
    }

    #[test]
    fn a_raw_link_reads_through_the_adapters_buffer_again_once_reads_are_small() {
        let now = Instant::now();
        let mut link = raw(now);
        // Small reads never start reading in place.
        let (_, in_place, _) = feed_reads(&mut link, now, &[1; 4096], 100, usize::MAX);
        assert_eq!(in_place, 0);
        assert!(link.input_buffer().is_none());
        // One large read does; then small ones shrink the room away.
        link.handle_input(now, &[2; 16 * 1024]);
        while link.poll_event(now).is_some() {}
        let mut reads = 0;
        while let Some(mut room) = link.input_buffer() {
            room.put_slice(b"x");
            link.input_filled(now, 1);
            while link.poll_event(now).is_some() {}
            reads += 1;
            assert!(reads <= 3, "the room never shrinks");
        }
        // An idle link returns its room with its buffers.
        link.handle_input(now, &[3; 16 * 1024]);
        while link.poll_event(now).is_some() {}
        assert!(link.input_buffer().is_some());
        link.release_buffers(now);
        assert!(link.input_buffer().is_none());
        assert_eq!(link.buffer_capacity(), 0);
    }

    #[test]
    fn the_read_that_ends_a_large_message_is_in_place_too() {
        let now = Instant::now();
        let mut link = framed(now);
        let big = vec![7u8; 64 * 1024];
        let mut wire = lp(&big);
        wire.extend(lp(b"after"));
        // A socket with all of `wire` ready: a copying read takes the
        // adapters' 16 KiB, a read in place all the room offered.
        let (messages, in_place, _) = feed_reads(&mut link, now, &wire, 16 * 1024, usize::MAX);
        assert_eq!(messages, [&big[..], b"after"]);
        // Only the first read, before the length is known, is a copy: the
        // room offered for the rest reaches past the message's end, so no
        // short tail of it is left for a copying read, which would find
        // the buffer full and move the whole message to a new one.
        assert_eq!(in_place, wire.len() - 16 * 1024);
    }

    /// Large messages back to back, as an echo's peer with several in
    /// flight sends them: after the first, each is read in place in few
    /// reads, never through the adapter's buffer.
    #[test]
    fn a_stream_of_large_length_prefixed_messages_is_read_in_few_reads() {
        let now = Instant::now();
        let mut link = framed(now);
        let big: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        let wire: Vec<u8> = (0..8).flat_map(|_| lp(&big)).collect();
        let (messages, in_place, reads) = feed_reads(&mut link, now, &wire, 16 * 1024, usize::MAX);
        assert_eq!(messages.len(), 8);
        assert!(messages.iter().all(|m| m[..] == big[..]));
        assert_eq!(in_place, wire.len() - 16 * 1024);
        // About one read per message: the room reserved ahead grows with
        // the reads to a whole message.
        assert!(reads <= 8 + 3, "{reads} reads for 8 messages");
    }

    /// A client's masked binary frame of `payload`.
    fn masked_binary(payload: &[u8]) -> Vec<u8> {
        let mut header = ws::frame::FrameHeader::new(ws::frame::OpCode::Binary, 0);
        header.mask = Some([1, 2, 3, 4]);
        let mut out = BytesMut::new();
        ws::frame::encode_frame(header, payload, &mut out);
        out.to_vec()
    }

    /// The peer's large messages arrive one at a time: every read that
    /// starts at a message boundary finds only that message (at most
    /// `copied` bytes through the adapter's buffer, any room in place).
    /// Returns the messages, the bytes read in place and the reads.
    fn feed_one_at_a_time(
        link: &mut Link,
        now: Instant,
        messages: &[Vec<u8>],
        copied: usize,
    ) -> (Vec<Bytes>, usize, usize) {
        let (mut got, mut in_place, mut reads) = (Vec::new(), 0, 0);
        for message in messages {
            let (m, i, r) = feed_reads(link, now, message, copied, usize::MAX);
            got.extend(m);
            in_place += i;
            reads += r;
        }
        (got, in_place, reads)
    }

    /// Issue #16: a read at a message boundary (the next message's length
    /// not known yet) goes in place too while large messages flow, into
    /// room for a whole message: one read per message, no copy. BASE read
    /// it through the adapter's 16 KiB buffer and copied it.
    #[test]
    fn large_length_prefixed_messages_are_read_one_read_each_from_the_boundary() {
        let now = Instant::now();
        let mut link = framed(now);
        let big: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        let wires: Vec<Vec<u8>> = (0..8).map(|_| lp(&big)).collect();
        let (messages, in_place, reads) = feed_one_at_a_time(&mut link, now, &wires, 16 * 1024);
        assert_eq!(messages.len(), 8);
        assert!(messages.iter().all(|m| m[..] == big[..]));
        let total: usize = wires.iter().map(Vec::len).sum();
        // Only the first read of the first message is a copy.
        assert_eq!(in_place, total - 16 * 1024);
        assert_eq!(reads, 8 + 1, "one read per message after the first");
        // All sent at once, too.
        let mut link = framed(now);
        let (messages, in_place, reads) =
            feed_reads(&mut link, now, &wires.concat(), 16 * 1024, usize::MAX);
        assert_eq!(messages.len(), 8);
        assert_eq!(in_place, total - 16 * 1024);
        assert_eq!(reads, 8 + 1);
    }

    /// WebSocket frames as length-prefixed messages: BASE read every
    /// 64 KiB frame in two reads, its first 16 KiB through the adapter's
    /// buffer.
    #[test]
    fn large_websocket_frames_are_read_one_read_each() {
        let now = Instant::now();
        let big: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        let frame = masked_binary(&big);
        let wires = vec![frame; 8];
        let total: usize = wires.iter().map(Vec::len).sum();
        for all_at_once in [false, true] {
            let mut link = ws(ws::Side::Server, ws::Config::default(), now);
            let (messages, in_place, reads) = if all_at_once {
                feed_reads(&mut link, now, &wires.concat(), 16 * 1024, usize::MAX)
            } else {
                feed_one_at_a_time(&mut link, now, &wires, 16 * 1024)
            };
            assert_eq!(messages.len(), 8);
            assert!(messages.iter().all(|m| m[..] == big[..]));
            assert_eq!(in_place, total - 16 * 1024);
            assert_eq!(reads, 8 + 1, "one read per frame after the first");
        }
    }

    /// The room offered at a boundary goes back when the read finds
    /// nothing, and with the idle release: a link waiting for its peer
    /// holds no room.
    #[test]
    fn a_link_that_waits_at_a_boundary_holds_no_room() {
        let now = Instant::now();
        let big = vec![5u8; 64 * 1024];
        let frame = masked_binary(&big);
        let links = [
            (framed(now), lp(&big)),
            (ws(ws::Side::Server, ws::Config::default(), now), frame),
        ];
        for (mut link, wire) in links {
            let (messages, _, _) = feed_reads(&mut link, now, &wire, 16 * 1024, usize::MAX);
            assert_eq!(messages.len(), 1);
            drop(messages);
            let room = Limit::limit(&link.input_buffer().expect("large messages flow"));
            assert!((64 * 1024..=64 * 1024 + 14).contains(&room), "{room}");
            assert!(link.buffer_capacity() >= room);
            // The read would block.
            link.input_pending();
            assert_eq!(link.buffer_capacity(), 0);
            // Lent and given back empty, the same.
            let (input, lent) = link.lend_input().expect("still flowing");
            assert_eq!(lent, room);
            link.restore_input(now, input, 0);
            assert_eq!(link.buffer_capacity(), 0);
            // Idle: boundary reads go through the adapter's buffer again.
            link.release_buffers(now);
            assert!(link.input_buffer().is_none());
        }
    }

    /// However a peer splits its messages and however much a read
    /// brings, a length-prefixed link never holds more than its largest
    /// message allows: a declaration beyond the limit gets no room (and
    /// fails), and while messages at the limit flow the input buffer stays
    /// within one message and a read's worth.
    #[test]
    fn a_flowing_link_reserves_no_more_than_the_largest_message() {
        let now = Instant::now();
        let max = 40_000;
        let mut link = Link::new(
            Protocol::Framed(Box::new(
                LengthPrefixFramer::new(crate::framing::LengthPrefixConfig { max_frame_len: max })
                    .unwrap(),
            )),
            &LinkConfig::default(),
            now,
        )
        .unwrap();
        let wire: Vec<u8> = (0..6).flat_map(|_| lp(&vec![1u8; max])).collect();
        let mut at = 0;
        let mut largest = 0;
        for read in [16 * 1024, 100, 40_004, 7, 50_000, usize::MAX]
            .iter()
            .cycle()
        {
            if at == wire.len() {
                break;
            }
            let end = at.saturating_add(*read).min(wire.len());
            match link.input_buffer() {
                Some(mut room) => {
                    let end = at.saturating_add(room.remaining_mut()).min(end);
                    room.put_slice(&wire[at..end]);
                    link.input_filled(now, end - at);
                    at = end;
                }
                None => {
                    link.handle_input(now, &wire[at..end]);
                    at = end;
                }
            }
            largest = largest.max(link.buffer_capacity());
            while let Some(event) = link.poll_event(now) {
                assert!(matches!(event, LinkEvent::Message(m) if m.len() == max));
            }
        }
        assert!(largest <= 2 * (max + 4) + 16 * 1024, "{largest}");
        // Flowing; then a declaration beyond the limit: no room, and the
        // link fails.
        link.handle_input(now, &(max as u32 + 1).to_be_bytes());
        assert!(matches!(
            link.poll_event(now),
            Some(LinkEvent::Closed(CloseReason::Framing(_)))
        ));
        assert!(link.input_buffer().is_none());
    }

    #[test]
    fn an_oversized_declaration_is_not_offered_room() {
        let now = Instant::now();
        let mut link = Link::new(
            Protocol::Framed(Box::new(
                LengthPrefixFramer::new(crate::framing::LengthPrefixConfig {
                    max_frame_len: 1024,
                })
                .unwrap(),
            )),
            &LinkConfig::default(),
            now,
        )
        .unwrap();
        link.handle_input(now, &u32::MAX.to_be_bytes());
        assert!(link.input_buffer().is_none());
        assert!(matches!(
            link.poll_event(now),
            Some(LinkEvent::Closed(CloseReason::Framing(_)))
        ));
    }

    fn ws(side: ws::Side, config: ws::Config, now: Instant) -> Link {
        let conn = ws::Connection::new(side, config);
        Link::new(
            Protocol::WebSocket(Box::new(conn)),
            &LinkConfig::default(),
            now,
        )
        .unwrap()
    }

    fn transmitted(link: &mut Link, now: Instant) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = link.poll_transmit(now, &mut out);
        out.concat()
    }

    #[test]
    fn only_a_link_whose_frames_depend_on_the_message_alone_has_an_encoder() {
        let now = Instant::now();
        assert!(framed(now).encoder().is_some());
        assert!(
            ws(ws::Side::Server, ws::Config::default(), now)
                .encoder()
                .is_some()
        );
        // A client masks each frame with a fresh key.
        assert!(
            ws(ws::Side::Client, ws::Config::default(), now)
                .encoder()
                .is_none()
        );
        // A framer without an encoder of its own.
        struct Opaque(LengthPrefixFramer);
        impl Framer for Opaque {
            fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FramingError> {
                self.0.decode(src)
            }
            fn encode(&mut self, msg: &[u8], dst: &mut BytesMut) -> Result<(), FramingError> {
                self.0.encode(msg, dst)
            }
            fn encoded_len(&self, msg_len: usize) -> usize {
                self.0.encoded_len(msg_len)
            }
            fn max_message_len(&self) -> usize {
                self.0.max_message_len()
            }
        }
        let opaque = Protocol::Framed(Box::new(Opaque(LengthPrefixFramer::default())));
        let link = Link::new(opaque, &LinkConfig::default(), now).unwrap();
        assert!(link.encoder().is_none());
    }

    /// Issue #16: a small message's read (nothing buffered, nothing
    /// large flowing) is told there is no room without asking the framer;
    /// BASE asked it twice per read (`is_stream`, `remaining`), and this
    /// fails there with 6 questions for the 3 reads. A partial message
    /// still asks, and its large rest is offered room.
    #[test]
    fn a_small_reads_room_is_refused_without_asking_the_framer() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        /// A length-prefix framer that counts the questions about room.
        struct Asked(LengthPrefixFramer, Arc<AtomicUsize>);
        impl Framer for Asked {
            fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FramingError> {
                self.0.decode(src)
            }
            fn encode(&mut self, msg: &[u8], dst: &mut BytesMut) -> Result<(), FramingError> {
                self.0.encode(msg, dst)
            }
            fn encoded_len(&self, msg_len: usize) -> usize {
                self.0.encoded_len(msg_len)
            }
            fn max_message_len(&self) -> usize {
                self.0.max_message_len()
            }
            fn remaining(&self, src: &BytesMut) -> Option<usize> {
                self.1.fetch_add(1, Ordering::Relaxed);
                self.0.remaining(src)
            }
            fn is_stream(&self) -> bool {
                self.1.fetch_add(1, Ordering::Relaxed);
                self.0.is_stream()
            }
        }
        let now = Instant::now();
        let asked = Arc::new(AtomicUsize::new(0));
        let framer = Asked(LengthPrefixFramer::default(), Arc::clone(&asked));
        let mut link = Link::new(
            Protocol::Framed(Box::new(framer)),
            &LinkConfig::default(),
            now,
        )
        .unwrap();
        for _ in 0..3 {
            assert!(link.input_buffer().is_none());
            link.handle_input(now, &[0, 0, 0, 2, b'h', b'i']);
            assert!(matches!(link.poll_event(now), Some(LinkEvent::Message(_))));
        }
        assert_eq!(
            asked.load(Ordering::Relaxed),
            0,
            "questions for small reads"
        );
        // The start of a large message: the rest is read in place.
        link.handle_input(now, &[0, 1, 0, 0, 1]);
        let room = link.input_buffer().expect("room for the rest");
        assert!(Limit::limit(&room) >= DIRECT_READ_MIN);
        assert!(asked.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn encoded_bytes_keep_their_place_among_the_links_own_output() {
        let now = Instant::now();
        let mut link = ws(ws::Side::Server, ws::Config::default(), now);
        let mut encoder = link.encoder().unwrap();
        // A reply framed by the link, then one framed ahead, then a ping's
        // pong, then a reply framed by the link again.
        link.send(&Message::from("a"));
        let mut ahead = BytesMut::new();
        encoder.encode(&Message::from("b"), &mut ahead).unwrap();
        link.send_encoded(ahead.freeze());
        let mut client = ws::Connection::new(ws::Side::Client, ws::Config::default());
        client.send_ping(b"p").unwrap();
        link.handle_input(now, &client.poll_transmit().unwrap());
        assert_eq!(
            link.poll_event(now),
            Some(LinkEvent::Ping(Bytes::from_static(b"p")))
        );
        link.queue_pong();
        link.send(&Message::from("c"));
        link.close(now, CloseCode::NORMAL, "");
        // Nothing goes after the close frame.
        let mut late = BytesMut::new();
        encoder.encode(&Message::from("late"), &mut late).unwrap();
        link.send_encoded(late.freeze());
        client.handle_input(&transmitted(&mut link, now));
        let events: Vec<ws::Event> = std::iter::from_fn(|| client.poll_event().unwrap()).collect();
        assert_eq!(
            events,
            [
                ws::Event::Text("a".into()),
                ws::Event::Text("b".into()),
                ws::Event::Pong(Bytes::from_static(b"p")),
                ws::Event::Text("c".into()),
                ws::Event::Close(ws::CloseFrame {
                    code: CloseCode::NORMAL,
                    reason: String::new(),
                }),
            ]
        );
    }

    #[test]
    fn encoded_bytes_keep_their_place_on_a_framed_link_and_an_abort_discards_them() {
        let now = Instant::now();
        let mut link = framed(now);
        let mut encoder = link.encoder().unwrap();
        link.send(&Message::from(b"a".to_vec()));
        let mut ahead = BytesMut::new();
        encoder
            .encode(&Message::from(b"b".to_vec()), &mut ahead)
            .unwrap();
        link.send_encoded(ahead.freeze());
        link.send(&Message::from(b"c".to_vec()));
        assert_eq!(link.transmit_len(), 15);
        assert_eq!(
            transmitted(&mut link, now),
            [lp(b"a"), lp(b"b"), lp(b"c")].concat()
        );
        let mut more = BytesMut::new();
        encoder
            .encode(&Message::from(b"d".to_vec()), &mut more)
            .unwrap();
        link.send_encoded(more.freeze());
        link.abort();
        assert!(transmitted(&mut link, now).is_empty());
    }

    /// The events `link` hands out for `input` fed in pieces of the sizes
    /// in `pieces` (cycled; each at least 1 byte), drained after each.
    fn events_of_pieces(
        link: &mut Link,
        now: Instant,
        input: &[u8],
        pieces: &[usize],
    ) -> Vec<LinkEvent> {
        let mut events = Vec::new();
        let mut rest = input;
        for &size in pieces.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, later) = rest.split_at(size.min(rest.len()));
            link.handle_input(now, piece);
            events.extend(std::iter::from_fn(|| link.poll_event(now)));
            rest = later;
        }
        events
    }

    /// What `Link::poll_event` is to hand out for what a lone
    /// `ws::Connection` made of the same input: its events, in order, as
    /// link events; its error or its close as the link's `Closed`, the
    /// last event.
    fn link_events_of(conn: &mut ws::Connection) -> Vec<LinkEvent> {
        let mut events = Vec::new();
        loop {
            let event = match conn.poll_event() {
                Ok(None) => return events,
                Ok(Some(ws::Event::Text(text))) => LinkEvent::Message(Message::Text(text)),
                Ok(Some(ws::Event::Binary(bytes))) => LinkEvent::Message(Message::Binary(bytes)),
                Ok(Some(ws::Event::Ping(payload))) => LinkEvent::Ping(payload),
                Ok(Some(ws::Event::Pong(payload))) => LinkEvent::Pong(payload),
                Ok(Some(ws::Event::Close(frame))) if frame.code == CloseCode::ABNORMAL => {
                    LinkEvent::Closed(CloseReason::Eof)
                }
                Ok(Some(ws::Event::Close(frame))) => LinkEvent::Closed(CloseReason::Remote(frame)),
                Err(e) => LinkEvent::Closed(CloseReason::Protocol(e)),
            };
            let last = matches!(event, LinkEvent::Closed(_));
            events.push(event);
            if last {
                return events;
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// A WebSocket link parses as its connection does: on any input
        /// (whole messages, fragments, control frames, invalid frames and
        /// text), in any pieces, with or without the end of input, a
        /// server link hands out the events, in order, that
        /// `ws::Connection::poll_event` gives for the whole input, though
        /// the link takes a whole message from the connection's fast path
        /// as a `Message` and everything else frame by frame.
        #[test]
        fn a_websocket_link_hands_out_what_its_connection_parses(
            frames in proptest::collection::vec(crate::test_util::any_frame(), 0..8),
            pieces in proptest::collection::vec(1usize..200, 1..6),
            eof in proptest::bool::ANY,
            max_message_size in proptest::prop_oneof![proptest::strategy::Just(16usize << 20), 0usize..150],
        ) {
            let now = Instant::now();
            let config = ws::Config::default().with_max_message_size(max_message_size);
            let input = frames.concat();
            let mut link = ws(ws::Side::Server, config.clone(), now);
            let mut events = events_of_pieces(&mut link, now, &input, &pieces);
            let mut conn = ws::Connection::new(ws::Side::Server, config);
            conn.handle_input(&input);
            if eof {
                link.handle_eof();
                events.extend(std::iter::from_fn(|| link.poll_event(now)));
                conn.handle_eof();
            }
            proptest::prop_assert_eq!(events, link_events_of(&mut conn));
        }
    }

    /// A framer of the user's own (fixed two-byte messages) works through
    /// a link as the built-in ones do: its messages, its frames, its
    /// error at the end of the stream.
    #[test]
    fn a_users_framer_cuts_and_frames_a_links_messages() {
        struct Pairs;
        impl Framer for Pairs {
            fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FramingError> {
                Ok((src.len() >= 2).then(|| src.split_to(2).freeze()))
            }
            fn encode(&mut self, msg: &[u8], dst: &mut BytesMut) -> Result<(), FramingError> {
                if msg.len() != 2 {
                    return Err(FramingError::MessageTooLarge {
                        len: msg.len(),
                        max: 2,
                    });
                }
                dst.extend_from_slice(msg);
                Ok(())
            }
            fn encoded_len(&self, msg_len: usize) -> usize {
                msg_len
            }
            fn max_message_len(&self) -> usize {
                2
            }
        }
        let now = Instant::now();
        let mut link = Link::new(
            Protocol::Framed(Box::new(Pairs)),
            &LinkConfig::default(),
            now,
        )
        .unwrap();
        link.handle_input(now, b"abc");
        assert_eq!(
            link.poll_event(now),
            Some(LinkEvent::Message(Message::Binary(Bytes::from_static(
                b"ab"
            ))))
        );
        assert_eq!(link.poll_event(now), None);
        link.send(&Message::Binary(Bytes::from_static(b"xy")));
        link.send(&Message::Binary(Bytes::from_static(b"too long")));
        let mut out = Vec::new();
        let _ = link.poll_transmit(now, &mut out);
        assert_eq!(out.concat(), b"xy");
        assert!(link.encoder().is_none());
        link.handle_eof();
        assert_eq!(
            link.poll_event(now),
            Some(LinkEvent::Closed(CloseReason::Framing(
                FramingError::Truncated { buffered: 1 }
            )))
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// A link holding a built-in framer by value (behind a plain
        /// server's check or not) hands out, for any bytes in any pieces,
        /// with or without EOF, the events a link gives that calls the
        /// same framer through its vtable (a user's framer), and frames
        /// what it sends the same.
        #[test]
        fn a_link_decodes_with_a_builtin_framer_as_through_its_vtable(
            builtin in crate::framing::test_util::any_builtin(),
            checked in proptest::bool::ANY,
            wire in crate::framing::test_util::any_wire(),
            pieces in proptest::collection::vec(1usize..60, 1..6),
            eof in proptest::bool::ANY,
            replies in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..8), 0..4),
        ) {
            use crate::framing::test_util::{as_custom, plain};
            let now = Instant::now();
            let (held, own) = (builtin.framer(), as_custom(builtin.framer()));
            let (held, own) = if checked { (plain(held), plain(own)) } else { (held, own) };
            let mut links = [held, own].map(|framer| {
                Link::new(Protocol::Framed(framer), &LinkConfig::default(), now).unwrap()
            });
            let outcome = links.each_mut().map(|link| {
                let mut events = events_of_pieces(link, now, &wire, &pieces);
                for reply in &replies {
                    link.send(&Message::Binary(Bytes::copy_from_slice(reply)));
                }
                let mut out = Vec::new();
                let _ = link.poll_transmit(now, &mut out);
                if eof {
                    link.handle_eof();
                    events.extend(std::iter::from_fn(|| link.poll_event(now)));
                }
                (events, out.concat())
            });
            let builtin = matches!(&links[0].wire, Wire::Framed(framed) if framed.framer.is_builtin());
            proptest::prop_assert!(builtin);
            let [held, own] = outcome;
            proptest::prop_assert_eq!(held, own);
        }
    }

    proptest::proptest! {
        /// Reading in place or through a copy, in any piece sizes, gives
        /// the same messages.
        #[test]
        fn in_place_reads_give_the_messages_a_copy_gives(
            sizes in proptest::collection::vec(0usize..70_000, 1..6),
            chunk in 1usize..20_000,
            in_place in 1usize..80_000,
        ) {
            let now = Instant::now();
            let payloads: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| (0..n).map(|j| (i + j) as u8).collect())
                .collect();
            let wire: Vec<u8> = payloads.iter().flat_map(|p| lp(p)).collect();
            let (messages, _) = feed(&mut framed(now), now, &wire, chunk);
            proptest::prop_assert_eq!(&messages, &payloads);
            // Reads in place of any other size (a boundary's included).
            let (messages, _, _) = feed_reads(&mut framed(now), now, &wire, chunk, in_place);
            proptest::prop_assert_eq!(&messages, &payloads);
        }

        /// The same for WebSocket frames through a server link.
        #[test]
        fn in_place_websocket_reads_give_the_messages_a_copy_gives(
            sizes in proptest::collection::vec(0usize..70_000, 1..6),
            chunk in 1usize..20_000,
            in_place in 1usize..80_000,
        ) {
            let now = Instant::now();
            let payloads: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| (0..n).map(|j| (i + j) as u8).collect())
                .collect();
            let wire: Vec<u8> = payloads
                .iter()
                .flat_map(|p| masked_binary(p))
                .collect();
            let mut link = ws(ws::Side::Server, ws::Config::default(), now);
            let (messages, _, _) = feed_reads(&mut link, now, &wire, chunk, in_place);
            proptest::prop_assert_eq!(&messages, &payloads);
        }

        /// A message framed ahead by the link's encoder is, byte for
        /// byte, what the link frames itself: WebSocket text and binary,
        /// fragmented or not, and length-prefixed.
        #[test]
        fn the_encoder_frames_as_the_link_does(
            len in proptest::prop_oneof![0usize..300, 16_000usize..17_000, 60_000usize..70_000],
            text in proptest::bool::ANY,
            fragment in proptest::prop_oneof![proptest::strategy::Just(0usize), 1usize..200, 16_000usize..40_000, 60_000usize..70_000],
        ) {
            let now = Instant::now();
            let message = if text {
                Message::from("é".repeat(len / 2))
            } else {
                Message::from(vec![7u8; len])
            };
            let config = ws::Config::default().with_send_fragment_size(fragment);
            let websocket = || ws(ws::Side::Server, config.clone(), now);
            let makers: [&dyn Fn() -> Link; 3] = [&websocket, &|| framed(now), &|| raw(now)];
            for make in makers {
                let (mut link, mut twin, mut chunked_twin) = (make(), make(), make());
                twin.send(&message);
                let expected = transmitted(&mut twin, now);
                let mut encoder = link.encoder().unwrap();
                let mut ahead = BytesMut::new();
                encoder.encode(&message, &mut ahead).unwrap();
                link.send_encoded(ahead.freeze());
                proptest::prop_assert_eq!(&transmitted(&mut link, now), &expected);
                // Chunked: the headers in one buffer, the payload's pieces
                // at their places, never copied.
                let mut dst = BytesMut::new();
                let mut pieces = Vec::new();
                encoder.encode_chunked(&message, &mut dst, |at, bytes| pieces.push((at, bytes))).unwrap();
                let payload = message.as_bytes().as_ptr_range();
                proptest::prop_assert_eq!(pieces.is_empty(), len < LARGE_MESSAGE || (1..LARGE_MESSAGE).contains(&fragment) && chunked_twin.is_websocket());
                let dst = dst.freeze();
                let mut from = 0;
                for (at, bytes) in pieces {
                    proptest::prop_assert!(payload.contains(&bytes.as_ptr()));
                    chunked_twin.send_encoded(dst.slice(from..at));
                    chunked_twin.send_encoded(bytes);
                    from = at;
                }
                chunked_twin.send_encoded(dst.slice(from..));
                proptest::prop_assert_eq!(transmitted(&mut chunked_twin, now), expected);
            }
        }
    }
}
