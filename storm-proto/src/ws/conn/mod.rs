//! The RFC 6455 connection state machine; see [`Connection`].

use std::collections::VecDeque;
use std::fmt;

use bytes::buf::Limit;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use rand::RngCore;
use rand::rngs::StdRng;

use super::Side;
use super::close::{CloseCode, CloseFrame};
use super::deflate::{
    DeflateConfig, DeflateConfigError, DeflateError, DeflateParams, PerMessageDeflate,
};
use super::frame::{self, FrameError, FrameHeader, MAX_CONTROL_PAYLOAD, OpCode};
use super::utf8::Utf8Validator;
use crate::message::{Message, Utf8Bytes};
use crate::read_ahead::ReadAhead;

/// Limits and behaviour of a [`Connection`].
///
/// The size limits bound memory: a connection buffers at most one frame
/// being received plus one message being reassembled, so the worst case is
/// about `max_frame_size + max_message_size` bytes per connection (32 MiB
/// with the defaults), reached only while a peer actually sends that much.
///
/// `#[non_exhaustive]`, so a new field is not a breaking change: start from
/// [`default`](Self::default) and chain the `with_*` methods; the fields
/// stay public, to read and to set on a value you own.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Largest frame payload accepted; a larger declared length fails the
    /// connection with 1009 before any of it is buffered. Default 16 MiB.
    pub max_frame_size: usize,
    /// Largest message accepted, after reassembly and decompression; larger
    /// fails with 1009. Default 16 MiB.
    pub max_message_size: usize,
    /// Most frames one message may arrive in (guards against endless empty
    /// continuation frames); more fails with 1009. Default 1,048,576.
    pub max_fragments: usize,
    /// Answer pings with a pong carrying the same payload. A pong waits
    /// until the next [`Connection::poll_transmit`] (or
    /// [`Connection::queue_pong`]), and a ping arriving meanwhile replaces
    /// it: only the most recent ping is answered (RFC 6455 section 5.5.3),
    /// so a peer that pings faster than the transport takes the pongs makes
    /// the connection hold one pong, not one per ping. Default `true`.
    pub auto_pong: bool,
    /// Split outgoing messages into frames of at most this many payload bytes;
    /// 0 sends every message as one frame. Default 0.
    pub send_fragment_size: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_frame_size: 16 << 20,
            max_message_size: 16 << 20,
            max_fragments: 1 << 20,
            auto_pong: true,
            send_fragment_size: 0,
        }
    }
}

impl Config {
    /// Largest frame payload accepted (default 16 MiB).
    #[must_use]
    pub const fn with_max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame_size = bytes;
        self
    }

    /// Largest message accepted, after reassembly and decompression
    /// (default 16 MiB).
    #[must_use]
    pub const fn with_max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Most frames one message may arrive in (default 1,048,576).
    #[must_use]
    pub const fn with_max_fragments(mut self, fragments: usize) -> Self {
        self.max_fragments = fragments;
        self
    }

    /// Answer pings with a pong carrying the same payload (default
    /// `true`).
    #[must_use]
    pub const fn with_auto_pong(mut self, auto_pong: bool) -> Self {
        self.auto_pong = auto_pong;
        self
    }

    /// Split outgoing messages into frames of at most this many payload
    /// bytes; 0 sends every message as one frame (default 0).
    #[must_use]
    pub const fn with_send_fragment_size(mut self, bytes: usize) -> Self {
        self.send_fragment_size = bytes;
        self
    }
}

/// Something the peer did, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A complete text message (validated UTF-8, reassembled, decompressed).
    Text(Utf8Bytes),
    /// A complete binary message.
    Binary(Bytes),
    /// A ping. With `auto_pong` its pong waits for transmit (replacing
    /// the waiting pong of an earlier ping, see [`Config::auto_pong`]).
    Ping(Bytes),
    /// A pong.
    Pong(Bytes),
    /// The connection closed: the peer's close frame (its reply, if we
    /// closed first; our reply goes out with the next
    /// [`Connection::poll_transmit`], after the data queued before it, if
    /// it did), or
    /// [`CloseCode::ABNORMAL`] when the transport ended without one. No
    /// other event follows.
    Close(CloseFrame),
}

/// The peer broke the protocol. Each variant says what it did and
/// [`close_code`](Self::close_code) what the peer was told.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A frame header no valid frame can have.
    Frame(FrameError),
    /// RSV bits set that no negotiated extension defines.
    ReservedBits,
    /// A client sent an unmasked frame.
    UnmaskedFrame,
    /// A server sent a masked frame.
    MaskedFrame,
    /// A continuation frame with no message to continue.
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message was unfinished.
    ExpectedContinuation,
    /// A frame longer than [`Config::max_frame_size`].
    FrameTooLarge {
        /// Declared payload length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A message longer than [`Config::max_message_size`].
    MessageTooLarge {
        /// The limit.
        max: usize,
    },
    /// A message in more frames than [`Config::max_fragments`].
    TooManyFragments {
        /// The limit.
        max: usize,
    },
    /// A text message or close reason that is not UTF-8.
    InvalidUtf8,
    /// A close frame with a one-byte payload.
    InvalidCloseFrame,
    /// A close frame with a code that may not be sent.
    InvalidCloseCode(u16),
    /// Compressed data that could not be inflated.
    Deflate(DeflateError),
}

impl ProtocolError {
    /// The close code sent to the peer for this error.
    #[must_use]
    pub fn close_code(&self) -> CloseCode {
        match self {
            Self::FrameTooLarge { .. }
            | Self::MessageTooLarge { .. }
            | Self::TooManyFragments { .. } => CloseCode::MESSAGE_TOO_BIG,
            Self::InvalidUtf8 => CloseCode::INVALID_PAYLOAD,
            Self::Deflate(e) => CloseCode(e.close_code()),
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Frame(e) => e.fmt(f),
            Self::ReservedBits => f.write_str("reserved bits set"),
            Self::UnmaskedFrame => f.write_str("unmasked frame from client"),
            Self::MaskedFrame => f.write_str("masked frame from server"),
            Self::UnexpectedContinuation => f.write_str("continuation frame outside a message"),
            Self::ExpectedContinuation => f.write_str("new message inside a fragmented message"),
            Self::FrameTooLarge { len, max } => write!(f, "frame of {len} bytes (limit {max})"),
            Self::MessageTooLarge { max } => write!(f, "message over {max} bytes"),
            Self::TooManyFragments { max } => write!(f, "message in over {max} fragments"),
            Self::InvalidUtf8 => f.write_str("invalid UTF-8"),
            Self::InvalidCloseFrame => f.write_str("close frame with a 1-byte payload"),
            Self::InvalidCloseCode(code) => write!(f, "invalid close code {code}"),
            Self::Deflate(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ProtocolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Frame(e) => Some(e),
            Self::Deflate(e) => Some(e),
            _ => None,
        }
    }
}

impl From<FrameError> for ProtocolError {
    fn from(e: FrameError) -> Self {
        Self::Frame(e)
    }
}

/// A send the connection refused. Nothing was queued.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The closing handshake has started (or the connection failed): no more
    /// data may be sent.
    Closed,
    /// Ping, pong and close payloads are limited to 125 bytes.
    ControlTooLong(usize),
    /// This code may not be sent in a close frame.
    InvalidCloseCode(CloseCode),
    /// A close reason is limited to 123 bytes.
    ReasonTooLong(usize),
    /// The compressor failed.
    Deflate(DeflateError),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed => f.write_str("connection is closing or closed"),
            Self::ControlTooLong(len) => {
                write!(
                    f,
                    "control payload of {len} bytes (limit {MAX_CONTROL_PAYLOAD})"
                )
            }
            Self::InvalidCloseCode(code) => write!(f, "close code {code} may not be sent"),
            Self::ReasonTooLong(len) => {
                write!(
                    f,
                    "close reason of {len} bytes (limit {})",
                    CloseFrame::MAX_REASON_LEN
                )
            }
            Self::Deflate(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for SendError {}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Data flows both ways.
    Open,
    /// We sent a close frame and wait for the peer's.
    CloseSent,
    /// Both close frames are exchanged, or the transport ended.
    Closed,
    /// The peer broke the protocol; our close frame is owed (see
    /// `Connection::close_reply`) or went out.
    Failed(ProtocolError),
}

/// The frame whose payload is arriving.
#[derive(Debug)]
struct InFrame {
    header: FrameHeader,
    len: usize,
    /// Payload bytes already unmasked (and validated, for text).
    seen: usize,
    /// Validate this frame's bytes as UTF-8 as they arrive.
    validate: bool,
}

/// A fragmented message being reassembled.
#[derive(Debug)]
struct InMessage {
    text: bool,
    compressed: bool,
    fragments: usize,
    /// Wire bytes received so far (compressed size when compressed).
    wire_len: usize,
    data: BytesMut,
}

/// One WebSocket connection after the handshake, for either side.
///
/// A [`Connection`] turns bytes from the transport into [`Event`]s and the
/// application's sends into bytes for the transport, after the opening
/// handshake is done (see [`super::handshake`]). It does no I/O.
///
/// # Driving a connection
///
/// After every input — bytes from the socket ([`Self::handle_input`]),
/// end of stream ([`Self::handle_eof`]) or a send — drain both queues:
///
/// 1. [`Self::poll_event`] until `Ok(None)`, handing events to the
///    application (frames are parsed here, lazily, so a reply the
///    application queues goes out before the close frame of a protocol
///    error that followed the message it answers);
/// 2. [`Self::poll_transmit`] until `None`, writing every buffer to the
///    socket in order (auto-pongs and close replies are queued here too, so
///    they are never forgotten and never interleave with other frames; the
///    pong of the latest ping goes out after what was queued before this
///    call, and before any close frame);
/// 3. once [`Self::is_closed`] is true and the transmit queue is empty,
///    close the transport (a server closes first, RFC 6455 section 7.1.1).
///
/// ```
/// use storm_proto::ws::{Connection, Config, Event, Side};
///
/// let mut server = Connection::new(Side::Server, Config::default());
/// // A masked "Hello" from a client (RFC 6455 section 5.7).
/// server.handle_input(&[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]);
/// while let Some(event) = server.poll_event().unwrap() {
///     if let Event::Text(text) = event {
///         server.send_text(text.as_str()).unwrap(); // echo it back
///     }
/// }
/// let mut wire = Vec::new();
/// while let Some(bytes) = server.poll_transmit() {
///     wire.extend_from_slice(&bytes);
/// }
/// assert_eq!(wire, b"\x81\x05Hello");
/// ```
///
/// # Errors are final
///
/// When the peer breaks the protocol, `poll_event` returns a
/// [`ProtocolError`] saying what was wrong (after every event that came
/// before it), queues a close frame with the matching code (1002, 1007,
/// 1009, …) and returns that same error on every later call. The close frame
/// can still be drained with `poll_transmit`.
pub struct Connection {
    side: Side,
    config: Config,
    state: State,
    input: BytesMut,
    input_growth: InputGrowth,
    /// The room a read at a frame boundary gets while large frames flow.
    read_ahead: ReadAhead,
    frame: Option<InFrame>,
    message: Option<InMessage>,
    utf8: Utf8Validator,
    /// Buffers ready for the transport, all of them before `output`.
    queued: VecDeque<Bytes>,
    output: BytesMut,
    /// The auto-pong waiting for transmit: the latest ping's payload.
    /// Boxed: most connections never carry one.
    pong: Option<Box<PongPayload>>,
    /// The close frame this side owes since the peer's close frame or a
    /// protocol error: queued by the next `poll_transmit`, so that data
    /// queued before then (answers to what arrived before the close) goes
    /// out ahead of it. Boxed: most connections never carry one.
    close_reply: Option<Box<CloseReply>>,
    /// Masking keys; present on clients only.
    rng: Option<Box<StdRng>>,
    deflate: Option<Box<Deflate>>,
    /// The transport ended.
    eof: bool,
}

/// permessage-deflate once negotiated, with the buffer outgoing messages
/// are compressed into: a connection without it carries neither.
struct Deflate {
    codec: PerMessageDeflate,
    scratch: BytesMut,
}

/// What [`Connection::process_frame`] made of the input.
enum Parsed {
    /// Not a whole frame yet.
    NeedInput,
    /// A frame that makes no event (a fragment before the last).
    Frame,
    /// A frame's event.
    Event(Event),
}

/// A close frame owed to the peer, not yet queued.
struct CloseReply {
    code: Option<CloseCode>,
    reason: String,
}

/// The payload of a ping whose pong waits for transmit.
struct PongPayload {
    len: usize,
    bytes: [u8; MAX_CONTROL_PAYLOAD],
}

impl PongPayload {
    const EMPTY: Self = Self {
        len: 0,
        bytes: [0; MAX_CONTROL_PAYLOAD],
    };

    /// Keeps `payload` (a ping's: at most 125 bytes, as the frame decoder
    /// checked; anything longer is cut there).
    fn set(&mut self, payload: &[u8]) {
        let len = payload.len().min(MAX_CONTROL_PAYLOAD);
        if let (Some(to), Some(from)) = (self.bytes.get_mut(..len), payload.get(..len)) {
            to.copy_from_slice(from);
        }
        self.len = len;
    }

    fn as_slice(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
}

/// The most [`Connection`] reserves ahead for the rest of a frame that is
/// still arriving.
pub(crate) const RESERVE_AHEAD: usize = 256 * 1024;

/// The least of a frame's payload still to come for which
/// [`Connection::fill_input`] offers its input buffer: below this, one read
/// into a shared buffer (and a copy) also takes the next frames.
pub const DIRECT_READ_MIN: usize = 8 * 1024;

/// `input`'s room to read the rest of a large message into, `to_come`
/// bytes of it still to come: `None` unless at least [`DIRECT_READ_MIN`]
/// bytes are to come and `input` has that much room. The one rule for
/// when a link reads in place, for WebSocket frames and framed messages.
pub(crate) fn direct_read_room(
    input: &mut BytesMut,
    to_come: usize,
) -> Option<Limit<&mut BytesMut>> {
    let room = input.capacity() - input.len();
    if to_come < DIRECT_READ_MIN || room < DIRECT_READ_MIN {
        return None;
    }
    Some(input.limit(room))
}

/// Drops `buf`'s allocation when it holds nothing. An empty buffer can
/// still keep an allocation alive without any capacity left (what it
/// split off shares it), so emptiness alone decides; `BytesMut::new`
/// allocates nothing.
pub(crate) fn release_bytes(buf: &mut BytesMut) {
    if buf.is_empty() {
        *buf = BytesMut::new();
    }
}

/// Queues `bytes`, framed ahead of a connection, for transmit behind what
/// it framed itself: `output`'s bytes, framed before them, move into
/// `queued` first, so the transmit queue (handed out before `output`)
/// keeps the order output was framed in.
pub(crate) fn queue_behind_output(
    output: &mut BytesMut,
    queued: &mut VecDeque<Bytes>,
    bytes: Bytes,
) {
    if !output.is_empty() {
        queued.push_back(output.split().freeze());
    }
    queued.push_back(bytes);
}

/// The most an input buffer allocates ahead of the read that needed a new
/// allocation: the adapters' read size.
const INPUT_AHEAD_MAX: usize = 16 * 1024;

/// How an input buffer grows when a read does not fit it. Messages cut
/// out of the buffer (`split_to`, no copy) share its allocation, so while
/// the application still holds one (in an outbox, in other sessions'
/// outboxes after a broadcast), the space behind it cannot be reused and
/// a read that does not fit the rest needs a new allocation. Each such
/// allocation makes room for twice as much as the one before, up to
/// [`INPUT_AHEAD_MAX`] beyond what is buffered: a connection whose
/// messages outlive the next read then allocates twice (buffer and its
/// shared header) per 16 KiB read instead of twice per read, while one
/// whose messages are gone by then reuses its buffer, which stays the
/// size of its reads. A held message keeps its whole buffer alive, as it
/// did when its read was 16 KiB: no more than that.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct InputGrowth {
    /// What the next new allocation reserves at least, beyond what is
    /// buffered; 0 at first (the first read gets what it needs).
    next: u32,
}

impl InputGrowth {
    /// Appends `data` to `buf`, reusing its space when nothing else holds
    /// it.
    pub(crate) fn append(&mut self, buf: &mut BytesMut, data: &[u8]) {
        if buf.capacity() - buf.len() < data.len() && !buf.try_reclaim(data.len()) {
            let want = data.len().max(self.next as usize);
            buf.reserve(want);
            let next = want.saturating_mul(2).min(INPUT_AHEAD_MAX);
            self.next = u32::try_from(next).unwrap_or(u32::MAX);
        }
        buf.extend_from_slice(data);
    }

    /// [`release_bytes`] of `buf`: when it holds nothing, its allocation
    /// is dropped, and the next one starts at the size of its first read
    /// again.
    pub(crate) fn release(&mut self, buf: &mut BytesMut) {
        if buf.is_empty() {
            self.next = 0;
        }
        release_bytes(buf);
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("side", &self.side)
            .field("state", &self.state)
            .field("buffered_input", &self.input.len())
            .field("deflate", &self.deflate.is_some())
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// A connection for `side` with no extensions.
    ///
    /// A client needs random masking keys: this draws them from the
    /// operating system's generator once, to seed a [`StdRng`]. Use
    /// [`Connection::with_rng`] for a seed you choose (tests, simulations).
    #[must_use]
    pub fn new(side: Side, config: Config) -> Self {
        let rng = match side {
            Side::Client => Some(Box::new(rand::SeedableRng::from_os_rng())),
            Side::Server => None,
        };
        Self::build(side, config, rng)
    }

    /// A connection whose masking keys (client side) come from `rng`. A
    /// server never masks, so it ignores `rng`.
    #[must_use]
    pub fn with_rng(side: Side, config: Config, rng: StdRng) -> Self {
        let rng = (side == Side::Client).then(|| Box::new(rng));
        Self::build(side, config, rng)
    }

    fn build(side: Side, config: Config, rng: Option<Box<StdRng>>) -> Self {
        Self {
            side,
            config,
            state: State::Open,
            input: BytesMut::new(),
            input_growth: InputGrowth::default(),
            read_ahead: ReadAhead::default(),
            frame: None,
            message: None,
            utf8: Utf8Validator::default(),
            queued: VecDeque::new(),
            output: BytesMut::new(),
            pong: None,
            close_reply: None,
            rng,
            deflate: None,
            eof: false,
        }
    }

    /// Turns on permessage-deflate with the parameters the handshake
    /// negotiated, and this endpoint's compression settings from `config`.
    ///
    /// # Errors
    ///
    /// [`DeflateConfigError`] when the parameters ask this side to compress
    /// with a window zlib cannot produce (8 bits) or `config` is invalid.
    pub fn with_deflate(
        mut self,
        params: DeflateParams,
        config: &DeflateConfig,
    ) -> Result<Self, DeflateConfigError> {
        self.deflate = Some(Box::new(Deflate {
            codec: PerMessageDeflate::new(self.side, params, config)?,
            scratch: BytesMut::new(),
        }));
        Ok(self)
    }

    /// Which side this connection plays.
    #[must_use]
    pub fn side(&self) -> Side {
        self.side
    }

    /// The limits this connection enforces.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether data can still be sent (no close frame sent or received).
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// Whether the connection is finished: the closing handshake completed,
    /// the transport ended, or the peer broke the protocol. Once the
    /// transmit queue is drained, the transport should be closed.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed | State::Failed(_))
    }

    /// Frees the memory of the buffers and queues that hold nothing (input,
    /// output, scratch, events, transmit queue), so that an idle
    /// connection holds no buffer memory; they grow again with traffic.
    /// Cheap when there is nothing to free.
    pub fn release_buffers(&mut self) {
        self.input_growth.release(&mut self.input);
        self.read_ahead.forget();
        release_bytes(&mut self.output);
        if let Some(deflate) = &mut self.deflate {
            release_bytes(&mut deflate.scratch);
        }
        if self.queued.is_empty() && self.queued.capacity() != 0 {
            self.queued = VecDeque::new();
        }
    }

    /// Bytes of capacity its buffers and queues hold: what an idle
    /// connection costs beyond its fixed size, and what
    /// [`release_buffers`](Self::release_buffers) returns.
    #[must_use]
    pub fn buffer_capacity(&self) -> usize {
        self.input.capacity()
            + self.output.capacity()
            + self.deflate.as_ref().map_or(0, |d| d.scratch.capacity())
            + self.queued.capacity() * std::mem::size_of::<Bytes>()
            + self.close_reply.as_ref().map_or(0, |reply| {
                std::mem::size_of::<CloseReply>() + reply.reason.capacity()
            })
            + self
                .pong
                .as_ref()
                .map_or(0, |_| std::mem::size_of::<PongPayload>())
    }

    /// Bytes waiting for [`poll_transmit`](Self::poll_transmit), the
    /// waiting pong's frame included.
    #[must_use]
    pub fn transmit_len(&self) -> usize {
        self.queued.iter().map(Bytes::len).sum::<usize>()
            + self.output.len()
            + self.waiting_pong().unwrap_or(0)
            + self
                .close_reply
                .as_ref()
                .map_or(0, |reply| close_frame_len(self.rng.is_some(), reply))
    }

    /// Feeds bytes read from the transport, in any chunking. Then drain
    /// [`poll_event`](Self::poll_event), which parses them.
    ///
    /// Bytes after the peer's close frame, or after a protocol error, are
    /// discarded.
    pub fn handle_input(&mut self, data: &[u8]) {
        if self.state == State::Open || self.state == State::CloseSent {
            self.input_growth.append(&mut self.input, data);
        }
    }

    /// Lets `read` append to the input buffer directly, without the copy
    /// [`handle_input`](Self::handle_input) makes, while a large frame is
    /// arriving: at least [`DIRECT_READ_MIN`] bytes of its payload are
    /// still to come. `read` gets the buffer's room already reserved for
    /// the rest of the frame (so the read allocates nothing; a few bytes
    /// past the frame's end are fine, they are the next input), and should
    /// read into it with, e.g., `tokio_util::io::poll_read_buf`. It must
    /// only append, through [`BufMut`]: what is already buffered is the
    /// frame's start, and changing it corrupts the connection's input.
    ///
    /// Returns `read`'s result and how many bytes it appended, or `None`
    /// without calling it when no such frame is in progress: then read
    /// elsewhere and call [`handle_input`](Self::handle_input).
    pub fn fill_input<T>(
        &mut self,
        read: impl FnOnce(&mut Limit<&mut BytesMut>) -> T,
    ) -> Option<(T, usize)> {
        let mut room = self.input_room()?;
        let before = room.get_ref().len();
        let result = read(&mut room);
        let appended = room.get_ref().len().saturating_sub(before);
        self.input_filled(appended);
        Some((result, appended))
    }

    /// [`fill_input`](Self::fill_input) without the closure: the input
    /// buffer's room for the rest of a large frame, or `None` when no such
    /// frame is in progress. Append only, through [`BufMut`]; then call
    /// [`input_filled`](Self::input_filled).
    ///
    /// While large frames flow (the rest of one was read in place, and
    /// reads since brought at least [`DIRECT_READ_MIN`] or all they were
    /// offered), a read at a frame boundary gets room too: the last large
    /// frame's length on the wire, so a stream of equal frames is read one
    /// frame per read, each into an allocation of its own; and the rest
    /// of a frame is offered whatever its size (a copying read would move
    /// the whole frame). At most 256 KiB either way.
    pub fn input_room(&mut self) -> Option<Limit<&mut BytesMut>> {
        if !matches!(self.state, State::Open | State::CloseSent) {
            return None;
        }
        let Some(frame) = &self.frame else {
            return self.read_ahead.room(&mut self.input);
        };
        let to_come = frame.len.checked_sub(self.input.len())?;
        if to_come >= DIRECT_READ_MIN {
            self.read_ahead
                .large_message(frame.header.encoded_len() + frame.len);
        }
        if self.read_ahead.is_flowing() && to_come > 0 {
            self.input.reserve(to_come.min(RESERVE_AHEAD));
            return Some(self.read_ahead.offer(&mut self.input, to_come));
        }
        let room = Limit::limit(&direct_read_room(&mut self.input, to_come)?);
        Some(self.read_ahead.offer(&mut self.input, room))
    }

    /// `len` bytes were appended to [`input_room`](Self::input_room)'s
    /// room: sizes the room of later reads.
    pub fn input_filled(&mut self, len: usize) {
        self.read_ahead.note_read(len);
    }

    /// Drops the input buffer's allocation while it holds nothing and no
    /// frame is in progress (a read found nothing: the room reserved for
    /// it goes back).
    pub(crate) fn release_idle_input(&mut self) {
        if self.frame.is_none() {
            release_bytes(&mut self.input);
        }
    }

    /// Puts back the input buffer [`input_room`](Self::input_room)'s
    /// owner took out to read into elsewhere (`Link::lend_input`).
    pub(crate) fn restore_input(&mut self, input: BytesMut) {
        self.input = input;
    }

    /// Tells the connection the transport has no more bytes to give.
    ///
    /// If the closing handshake had not completed,
    /// [`poll_event`](Self::poll_event) reports [`Event::Close`] with
    /// [`CloseCode::ABNORMAL`] after the events already buffered.
    pub fn handle_eof(&mut self) {
        self.eof = true;
    }

    /// The next event, in the order the peer caused them.
    ///
    /// Frames are parsed here, one at a time, so the application sees (and
    /// can answer) every message that preceded a protocol violation before
    /// the violation closes the connection. A partial frame is kept (up to
    /// [`Config::max_frame_size`]) and its text validated as it arrives, so
    /// invalid UTF-8 fails at its first bad byte. Call until `Ok(None)` after
    /// every [`handle_input`](Self::handle_input).
    ///
    /// # Errors
    ///
    /// The [`ProtocolError`] the peer committed, after every event before it.
    /// A close frame with its code goes out with the next
    /// [`poll_transmit`](Self::poll_transmit), after the data queued before
    /// it (answers to the messages before the error), and every later call
    /// returns the same error.
    //
    // Inlined with its fast path into the caller, the general path kept
    // out of line: see `Link::poll_event`.
    #[inline(always)]
    pub fn poll_event(&mut self) -> Result<Option<Event>, ProtocolError> {
        if let Some(message) = self.whole_message() {
            return Ok(Some(match message {
                Message::Text(text) => Event::Text(text),
                Message::Binary(bytes) => Event::Binary(bytes),
            }));
        }
        self.poll_frames()
    }

    /// The fast path of [`poll_event`](Self::poll_event): the message of
    /// the frame at the front of the input when that frame is a whole
    /// message already whole in the buffer (a final text or binary frame,
    /// no RSV bit, masked as this side expects, a 7- or 16-bit length
    /// within the limits, no message or frame in progress), cut out in one
    /// go: the header read at once and cut off the input buffer, the
    /// payload unmasked in place and split off as it is (no state stored
    /// between the two, and the payload's `Bytes` made by `split_to` on
    /// the buffer, like the general path's).
    ///
    /// `None` for any other input, which `poll_event` then parses frame by
    /// frame ([`poll_frames`](Self::poll_frames)), and for text that is
    /// not UTF-8: the connection has failed then (as `poll_frames` fails
    /// it), and `poll_frames` reports the error. Whatever this path takes,
    /// the general one turns into the same event or error (the tests check
    /// the two agree on any input in any pieces).
    ///
    /// The message comes out as the [`Message`] the application gets, not
    /// as an [`Event`]: `Link` hands it on as `LinkEvent::Message`, which
    /// lays a `Message` out as it is, so the payload's `Bytes` is written
    /// once, where it stays, instead of being reshaped from `Event`'s
    /// layout (a copy that stalled on the stores that had just written it:
    /// BENCHMARKS.md, session 15). `whole_message`, then `poll_frames`, is
    /// `poll_event`.
    #[inline(always)]
    pub(crate) fn whole_message(&mut self) -> Option<Message> {
        if self.frame.is_some()
            || self.message.is_some()
            || !matches!(self.state, State::Open | State::CloseSent)
        {
            return None;
        }
        let &[b0, b1, ..] = &self.input[..] else {
            return None;
        };
        let text = match b0 {
            0x81 => true,
            0x82 => false,
            _ => return None,
        };
        let masked = b1 & 0x80 != 0;
        if masked != (self.side == Side::Server) {
            return None;
        }
        let (len, key_at) = match b1 & 0x7F {
            127 => return None,
            126 => {
                let &[_, _, hi, lo, ..] = &self.input[..] else {
                    return None;
                };
                (usize::from(u16::from_be_bytes([hi, lo])), 4)
            }
            len => (usize::from(len), 2),
        };
        let header_len = if masked { key_at + 4 } else { key_at };
        if self.input.len() < header_len + len
            || len > self.config.max_frame_size
            || len > self.config.max_message_size
        {
            return None;
        }
        let key = match self.input.get(key_at..header_len) {
            Some(&[a, b, c, d]) => Some([a, b, c, d]),
            _ => None,
        };
        // The header goes first, so the payload is split off the buffer
        // as it is: no `Bytes` made of the whole frame and advanced after
        // (that cost more time than it saved instructions).
        self.input.advance(header_len);
        let payload = self.input.get_mut(..len).unwrap_or_default();
        // No message in progress: the validator holds no partial code
        // point, so this frame's text is checked on its own.
        let ascii = match key {
            Some(key) => frame::unmask_ascii(payload, key),
            None => text && payload.is_ascii(),
        };
        if text && !ascii && std::str::from_utf8(payload).is_err() {
            self.fail_cold(ProtocolError::InvalidUtf8);
            return None;
        }
        let payload = self.input.split_to(len).freeze();
        Some(if text {
            Message::Text(Utf8Bytes::from_validated(payload))
        } else {
            Message::Binary(payload)
        })
    }

    /// [`poll_event`](Self::poll_event) frame by frame: every frame, whole
    /// or in pieces, control or data, fragment or message.
    #[inline(never)]
    pub(crate) fn poll_frames(&mut self) -> Result<Option<Event>, ProtocolError> {
        // A frame makes one event at most and is parsed only when asked
        // for, so nothing (a flood of pings included) is ever queued.
        loop {
            match &self.state {
                State::Failed(e) => return Err(e.clone()),
                State::Closed => return Ok(None),
                State::Open | State::CloseSent => {}
            }
            match self.process_frame() {
                Ok(Parsed::Event(event)) => return Ok(Some(event)),
                Ok(Parsed::Frame) => {}
                Ok(Parsed::NeedInput) if self.eof => {
                    self.state = State::Closed;
                    self.release_input();
                    return Ok(Some(Event::Close(CloseFrame {
                        code: CloseCode::ABNORMAL,
                        reason: String::new(),
                    })));
                }
                Ok(Parsed::NeedInput) => return Ok(None),
                Err(e) => return Err(self.fail(e)),
            }
        }
    }

    fn release_input(&mut self) {
        self.input = BytesMut::new();
        self.message = None;
        self.frame = None;
        self.utf8.reset();
    }

    /// The next bytes to write to the transport, in order. The waiting
    /// auto-pong, if any, is queued first (after what was queued before
    /// it), so it is no longer replaced by a later ping's.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.queue_pong();
        if let Some(reply) = self.close_reply.take() {
            self.queue_close(reply.code, &reply.reason);
        }
        if let Some(bytes) = self.queued.pop_front() {
            return Some(bytes);
        }
        if self.output.is_empty() {
            return None;
        }
        Some(self.output.split().freeze())
    }

    /// Whether [`poll_transmit`](Self::poll_transmit) has anything to give.
    #[must_use]
    pub fn has_transmit(&self) -> bool {
        !self.queued.is_empty()
            || !self.output.is_empty()
            || self.pong.is_some()
            || self.close_reply.is_some()
    }

    /// The length of the frame of the auto-pong that waits for transmit
    /// (see [`Config::auto_pong`]), or `None` when no pong waits. At most
    /// [`MAX_CONTROL_PAYLOAD`] plus a header (2 bytes from a server, 6
    /// from a client).
    #[must_use]
    pub fn waiting_pong(&self) -> Option<usize> {
        let payload = self.pong.as_ref()?.len;
        let mask = if self.rng.is_some() { 4 } else { 0 };
        Some(2 + mask + payload)
    }

    /// Queues the waiting auto-pong for transmit now, after everything
    /// queued so far: a later ping no longer replaces it. For a caller that
    /// bounds what it queues (a send limit) and has room for the pong's
    /// [`waiting_pong`](Self::waiting_pong) bytes. Does nothing when no
    /// pong waits.
    pub fn queue_pong(&mut self) {
        if let Some(pong) = self.pong.take() {
            self.queue_frame(FrameHeader::new(OpCode::Pong, 0), pong.as_slice());
        }
    }

    /// Queues a text message.
    ///
    /// # Errors
    ///
    /// [`SendError::Closed`] once a close frame was sent, or received and
    /// answered: until [`poll_transmit`](Self::poll_transmit) queues the
    /// answer to the peer's close (or the close frame of a protocol
    /// error), messages are still queued, ahead of it.
    pub fn send_text(&mut self, text: &str) -> Result<(), SendError> {
        self.send_data(OpCode::Text, text.as_bytes())
    }

    /// Queues a binary message.
    ///
    /// # Errors
    ///
    /// As for [`send_text`](Self::send_text).
    pub fn send_binary(&mut self, data: &[u8]) -> Result<(), SendError> {
        self.send_data(OpCode::Binary, data)
    }

    /// The fragment size ([`Config::send_fragment_size`]) a sender that
    /// frames data messages ahead of the connection uses, when their
    /// frames depend on nothing but their bytes: a server without
    /// permessage-deflate ([`frame::encode_message`] with no mask, then
    /// [`send_encoded`](Self::send_encoded)). `None` for a client (a fresh
    /// masking key per frame) or with compression (the compressor's state).
    #[must_use]
    pub fn stateless_fragment_size(&self) -> Option<usize> {
        (self.rng.is_none() && self.deflate.is_none()).then_some(self.config.send_fragment_size)
    }

    /// Queues bytes already framed as data messages, as
    /// [`stateless_fragment_size`](Self::stateless_fragment_size) says,
    /// after everything queued so far; they are handed out as they are.
    ///
    /// # Errors
    ///
    /// [`SendError::Closed`] once the closing handshake started (as for
    /// [`send_binary`](Self::send_binary)); nothing is queued.
    pub fn send_encoded(&mut self, bytes: Bytes) -> Result<(), SendError> {
        if !self.can_send() {
            return Err(SendError::Closed);
        }
        queue_behind_output(&mut self.output, &mut self.queued, bytes);
        Ok(())
    }

    /// Queues a ping.
    ///
    /// # Errors
    ///
    /// [`SendError::ControlTooLong`] over 125 bytes; [`SendError::Closed`]
    /// once the closing handshake started.
    pub fn send_ping(&mut self, payload: &[u8]) -> Result<(), SendError> {
        self.send_control(OpCode::Ping, payload)
    }

    /// Queues a pong (unsolicited pongs serve as one-way heartbeats).
    ///
    /// # Errors
    ///
    /// As for [`send_ping`](Self::send_ping).
    pub fn send_pong(&mut self, payload: &[u8]) -> Result<(), SendError> {
        self.send_control(OpCode::Pong, payload)
    }

    /// Starts the closing handshake: queues a close frame and refuses further
    /// sends. [`Event::Close`] follows when the peer answers.
    ///
    /// # Errors
    ///
    /// [`SendError::InvalidCloseCode`] for a code that may not be sent,
    /// [`SendError::ReasonTooLong`] over 123 bytes, [`SendError::Closed`] if
    /// the handshake already started.
    pub fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), SendError> {
        if !code.is_sendable() {
            return Err(SendError::InvalidCloseCode(code));
        }
        if reason.len() > CloseFrame::MAX_REASON_LEN {
            return Err(SendError::ReasonTooLong(reason.len()));
        }
        if self.state != State::Open {
            return Err(SendError::Closed);
        }
        self.queue_close(Some(code), reason);
        self.state = State::CloseSent;
        Ok(())
    }

    fn send_control(&mut self, opcode: OpCode, payload: &[u8]) -> Result<(), SendError> {
        if payload.len() > MAX_CONTROL_PAYLOAD {
            return Err(SendError::ControlTooLong(payload.len()));
        }
        if !self.can_send() {
            return Err(SendError::Closed);
        }
        self.queue_frame(FrameHeader::new(opcode, 0), payload);
        Ok(())
    }

    fn send_data(&mut self, opcode: OpCode, data: &[u8]) -> Result<(), SendError> {
        if !self.can_send() {
            return Err(SendError::Closed);
        }
        let first = FrameHeader::new(opcode, 0);
        let Some(deflate) = self
            .deflate
            .as_mut()
            .filter(|deflate| deflate.codec.should_compress(data.len()))
        else {
            self.queue_fragments(first, data);
            return Ok(());
        };
        let mut scratch = std::mem::take(&mut deflate.scratch);
        scratch.clear();
        deflate
            .codec
            .compress(data, &mut scratch)
            .map_err(SendError::Deflate)?;
        self.queue_fragments(
            FrameHeader {
                rsv1: true,
                ..first
            },
            &scratch,
        );
        if let Some(deflate) = &mut self.deflate {
            deflate.scratch = scratch;
        }
        Ok(())
    }

    /// Queues `payload` as one frame with `first`'s header, or as
    /// fragments of at most [`Config::send_fragment_size`] bytes, the first
    /// with `first`'s header, the rest continuations.
    fn queue_fragments(&mut self, first: FrameHeader, payload: &[u8]) {
        let rng = &mut self.rng;
        let mask = || {
            rng.as_mut().map(|rng| {
                let mut key = [0u8; 4];
                rng.fill_bytes(&mut key);
                key
            })
        };
        frame::encode_message(
            first,
            payload,
            self.config.send_fragment_size,
            mask,
            &mut self.output,
        );
    }

    fn queue_frame(&mut self, mut header: FrameHeader, payload: &[u8]) {
        if let Some(rng) = &mut self.rng {
            let mut key = [0u8; 4];
            rng.fill_bytes(&mut key);
            header.mask = Some(key);
        }
        frame::encode_frame(header, payload, &mut self.output);
    }

    fn queue_close(&mut self, code: Option<CloseCode>, reason: &str) {
        // Nothing may follow a close frame: the pong goes first.
        self.queue_pong();
        let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
        let len = match code {
            Some(code) => {
                payload[..2].copy_from_slice(&code.0.to_be_bytes());
                let reason = truncate_utf8(reason, CloseFrame::MAX_REASON_LEN);
                payload[2..2 + reason.len()].copy_from_slice(reason.as_bytes());
                2 + reason.len()
            }
            None => 0,
        };
        self.queue_frame(FrameHeader::new(OpCode::Close, 0), &payload[..len]);
    }

    /// Whether data may be queued: the connection is open, or its close
    /// reply waits for the next `poll_transmit`.
    pub(crate) fn can_send(&self) -> bool {
        self.state == State::Open || self.close_reply.is_some()
    }

    /// Records a protocol failure: our close frame is owed (unless one went
    /// out already) and the connection stays failed.
    fn fail(&mut self, error: ProtocolError) -> ProtocolError {
        if self.state == State::Open {
            self.close_reply = Some(Box::new(CloseReply {
                code: Some(error.close_code()),
                reason: error.to_string(),
            }));
        }
        self.state = State::Failed(error.clone());
        self.release_input();
        error
    }

    /// [`fail`](Self::fail) out of the fast path's line.
    #[cold]
    #[inline(never)]
    fn fail_cold(&mut self, error: ProtocolError) {
        self.fail(error);
    }

    /// Parses and handles the next complete frame.
    fn process_frame(&mut self) -> Result<Parsed, ProtocolError> {
        if self.frame.is_none() {
            let Some((header, header_len)) = FrameHeader::decode(&self.input)? else {
                return Ok(Parsed::NeedInput);
            };
            let frame = self.check_header(header)?;
            self.input.advance(header_len);
            self.frame = Some(frame);
        }
        let Some(frame) = &mut self.frame else {
            return Ok(Parsed::NeedInput);
        };
        let available = self.input.len().min(frame.len);
        if available > frame.seen {
            let fresh = &mut self.input[frame.seen..available];
            if let Some(mask) = frame.header.mask {
                frame::apply_mask(fresh, mask, frame.seen);
            }
            if frame.validate {
                self.utf8
                    .feed(fresh)
                    .map_err(|_| ProtocolError::InvalidUtf8)?;
            }
            frame.seen = available;
        }
        if available < frame.len {
            // Room for the rest of the frame in one allocation instead of
            // doubling (and copying) as it arrives; at most RESERVE_AHEAD at
            // a time, so a peer announcing large frames and sending little
            // does not make the connection hold memory it never sent.
            self.input
                .reserve((frame.len - self.input.len()).min(RESERVE_AHEAD));
            return Ok(Parsed::NeedInput);
        }
        let len = frame.len;
        let header = frame.header;
        self.frame = None;
        let payload = self.input.split_to(len).freeze();
        Ok(match self.handle_frame(header, payload)? {
            Some(event) => Parsed::Event(event),
            None => Parsed::Frame,
        })
    }

    /// Checks a header against the connection's rules before any of its
    /// payload is buffered.
    fn check_header(&mut self, header: FrameHeader) -> Result<InFrame, ProtocolError> {
        if header.rsv2 || header.rsv3 {
            return Err(ProtocolError::ReservedBits);
        }
        match (self.side, header.mask.is_some()) {
            (Side::Server, false) => return Err(ProtocolError::UnmaskedFrame),
            (Side::Client, true) => return Err(ProtocolError::MaskedFrame),
            _ => {}
        }
        let max = self.config.max_frame_size;
        let len = match usize::try_from(header.payload_len) {
            Ok(len) if len <= max => len,
            _ => {
                return Err(ProtocolError::FrameTooLarge {
                    len: header.payload_len,
                    max,
                });
            }
        };
        let validate = match header.opcode {
            _ if header.opcode.is_control() => {
                if header.rsv1 {
                    return Err(ProtocolError::ReservedBits);
                }
                false
            }
            OpCode::Continuation => {
                let Some(message) = &self.message else {
                    return Err(ProtocolError::UnexpectedContinuation);
                };
                if header.rsv1 {
                    return Err(ProtocolError::ReservedBits);
                }
                if message.fragments >= self.config.max_fragments {
                    return Err(ProtocolError::TooManyFragments {
                        max: self.config.max_fragments,
                    });
                }
                if message.wire_len.saturating_add(len) > self.config.max_message_size {
                    return Err(ProtocolError::MessageTooLarge {
                        max: self.config.max_message_size,
                    });
                }
                message.text && !message.compressed
            }
            OpCode::Text | OpCode::Binary => {
                if self.message.is_some() {
                    return Err(ProtocolError::ExpectedContinuation);
                }
                if header.rsv1 && self.deflate.is_none() {
                    return Err(ProtocolError::ReservedBits);
                }
                if len > self.config.max_message_size {
                    return Err(ProtocolError::MessageTooLarge {
                        max: self.config.max_message_size,
                    });
                }
                header.opcode == OpCode::Text && !header.rsv1
            }
            // Every control opcode was handled by the first arm.
            OpCode::Close | OpCode::Ping | OpCode::Pong => false,
        };
        Ok(InFrame {
            header,
            len,
            seen: 0,
            validate,
        })
    }

    /// Handles one whole frame; its event, if it makes one (a fragment
    /// that does not end its message makes none).
    fn handle_frame(
        &mut self,
        header: FrameHeader,
        payload: Bytes,
    ) -> Result<Option<Event>, ProtocolError> {
        Ok(Some(match header.opcode {
            OpCode::Ping => {
                if self.config.auto_pong && self.state == State::Open {
                    // Replaces the pong of an earlier ping if it still waits.
                    self.pong
                        .get_or_insert_with(|| Box::new(PongPayload::EMPTY))
                        .set(&payload);
                }
                Event::Ping(payload)
            }
            OpCode::Pong => Event::Pong(payload),
            OpCode::Close => self.handle_close(&payload)?,
            OpCode::Text | OpCode::Binary => {
                let text = header.opcode == OpCode::Text;
                if header.fin && !header.rsv1 {
                    // The common case: a whole message in one frame, no copy.
                    return self.emit(text, payload).map(Some);
                }
                let mut message = InMessage {
                    text,
                    compressed: header.rsv1,
                    fragments: 1,
                    wire_len: payload.len(),
                    data: BytesMut::new(),
                };
                self.append(&mut message, &payload, header.fin)?;
                if !header.fin {
                    self.message = Some(message);
                    return Ok(None);
                }
                self.emit(text, message.data.freeze())?
            }
            OpCode::Continuation => {
                let Some(mut message) = self.message.take() else {
                    return Err(ProtocolError::UnexpectedContinuation);
                };
                message.fragments += 1;
                message.wire_len += payload.len();
                self.append(&mut message, &payload, header.fin)?;
                if !header.fin {
                    self.message = Some(message);
                    return Ok(None);
                }
                self.emit(message.text, message.data.freeze())?
            }
        }))
    }

    /// Adds one frame's payload to a message being reassembled.
    fn append(
        &mut self,
        message: &mut InMessage,
        payload: &[u8],
        fin: bool,
    ) -> Result<(), ProtocolError> {
        let max = self.config.max_message_size;
        if message.compressed {
            let Some(deflate) = &mut self.deflate else {
                return Err(ProtocolError::ReservedBits);
            };
            let before = message.data.len();
            deflate
                .codec
                .decompress(payload, fin, &mut message.data, max)
                .map_err(ProtocolError::Deflate)?;
            if message.text {
                self.utf8
                    .feed(&message.data[before..])
                    .map_err(|_| ProtocolError::InvalidUtf8)?;
            }
        } else {
            // Sizes were checked against the limit in `check_header`.
            message.data.extend_from_slice(payload);
        }
        Ok(())
    }

    fn emit(&mut self, text: bool, data: Bytes) -> Result<Event, ProtocolError> {
        Ok(if text {
            self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
            // Validated piece by piece as it arrived (or just above, after
            // decompression); `finish` checked it ended on a boundary.
            Event::Text(Utf8Bytes::from_validated(data))
        } else {
            Event::Binary(data)
        })
    }

    fn handle_close(&mut self, payload: &[u8]) -> Result<Event, ProtocolError> {
        let frame = match payload {
            [] => CloseFrame {
                code: CloseCode::NO_STATUS,
                reason: String::new(),
            },
            [_] => return Err(ProtocolError::InvalidCloseFrame),
            [hi, lo, reason @ ..] => {
                let code = CloseCode(u16::from_be_bytes([*hi, *lo]));
                if !code.is_sendable() {
                    return Err(ProtocolError::InvalidCloseCode(code.0));
                }
                let reason = std::str::from_utf8(reason).map_err(|_| ProtocolError::InvalidUtf8)?;
                CloseFrame {
                    code,
                    reason: reason.to_owned(),
                }
            }
        };
        if self.state == State::Open {
            // Echo the peer's code, as RFC 6455 section 5.5.1 asks.
            let code = (frame.code != CloseCode::NO_STATUS).then_some(frame.code);
            self.close_reply = Some(Box::new(CloseReply {
                code,
                reason: String::new(),
            }));
        }
        self.state = State::Closed;
        self.release_input();
        Ok(Event::Close(frame))
    }
}

/// The length of the close frame `reply` makes: header, mask key on a
/// client, code and reason (cut as `queue_close` cuts it).
fn close_frame_len(masked: bool, reply: &CloseReply) -> usize {
    let payload = match reply.code {
        Some(_) => 2 + truncate_utf8(&reply.reason, CloseFrame::MAX_REASON_LEN).len(),
        None => 0,
    };
    2 + if masked { 4 } else { 0 } + payload
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char
/// boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests;
