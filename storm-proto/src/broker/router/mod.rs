//! The broker server's brain: registry, routing, timeouts, output queues.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use super::{
    ChannelId, ClientId, ConfigError, ErrorCode, ErrorPayload, FLAG_MORE, Frame, FrameConfig,
    FrameError, FrameType, ROUTING_INFO_LEN, Registration, RequestId, Role, RoutingInfo, non_zero,
};
use crate::deadline::DeadlineMap;

/// A connection, as numbered by the adapter (any scheme, unique while the
/// connection is known to the router).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// Limits and timeouts of a [`Router`].
///
/// Memory per connection is bounded by its output queue:
/// `max_queued_bytes` of data payloads plus `max_queued_errors` small error
/// frames (with the defaults about 8 MiB + 256 frames), and
/// `max_ended_requests` remembered ids (about 40 bytes each).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouterConfig {
    /// The frame codec's max payload: the `Start` frame sent to a provider
    /// (32 bytes of routing info + the consumer's header) must fit it.
    /// Default: 1 MiB.
    pub max_frame_payload: usize,
    /// Timeout of a request when the consumer registered with timeout 0.
    /// Default: 5 s.
    pub default_timeout: Duration,
    /// Cap on the timeout a consumer registers with. Default: 5 min.
    pub max_timeout: Duration,
    /// Most requests in flight through the router. Default: 65 536.
    pub max_requests: usize,
    /// Most requests in flight per consumer. Default: 1024.
    pub max_requests_per_consumer: usize,
    /// Most data frames queued for one connection. Default: 1024.
    pub max_queued_frames: usize,
    /// Most data payload bytes queued for one connection (one frame is
    /// always accepted into an empty queue). Default: 8 MiB.
    pub max_queued_bytes: usize,
    /// Most `Error` frames queued for one connection. When a connection's
    /// error lane is full it is not reading at all: the router closes it
    /// ([`CloseReason::ErrorQueueFull`]). Default: 256.
    pub max_queued_errors: usize,
    /// Most ended requests remembered per connection. When the router ends
    /// a request the peer may still be sending frames for (it failed while
    /// its consumer was still streaming, a cancellation crossed a timeout,
    /// a provider was told to stop), those frames were on their way before
    /// the peer knew: they are discarded and counted, since the peer has
    /// its `Error` already. The oldest id is forgotten first; a frame for
    /// an id the router has no record of is answered with an `Error`
    /// ([`ErrorCode::UNKNOWN_REQUEST`]) instead. Default: 1024.
    pub max_ended_requests: usize,
}

impl RouterConfig {
    /// Default of [`default_timeout`](Self::default_timeout): 5 s.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
    /// Default of [`max_timeout`](Self::max_timeout): 5 min.
    pub const DEFAULT_MAX_TIMEOUT: Duration = Duration::from_secs(300);
    /// Default of [`max_requests`](Self::max_requests).
    pub const DEFAULT_MAX_REQUESTS: usize = 65_536;
    /// Default of [`max_requests_per_consumer`](Self::max_requests_per_consumer).
    pub const DEFAULT_MAX_REQUESTS_PER_CONSUMER: usize = 1024;
    /// Default of [`max_queued_frames`](Self::max_queued_frames).
    pub const DEFAULT_MAX_QUEUED_FRAMES: usize = 1024;
    /// Default of [`max_queued_bytes`](Self::max_queued_bytes): 8 MiB.
    pub const DEFAULT_MAX_QUEUED_BYTES: usize = 8 * 1024 * 1024;
    /// Default of [`max_queued_errors`](Self::max_queued_errors).
    pub const DEFAULT_MAX_QUEUED_ERRORS: usize = 256;
    /// Default of [`max_ended_requests`](Self::max_ended_requests).
    pub const DEFAULT_MAX_ENDED_REQUESTS: usize = 1024;
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            max_frame_payload: FrameConfig::DEFAULT_MAX_PAYLOAD,
            default_timeout: Self::DEFAULT_TIMEOUT,
            max_timeout: Self::DEFAULT_MAX_TIMEOUT,
            max_requests: Self::DEFAULT_MAX_REQUESTS,
            max_requests_per_consumer: Self::DEFAULT_MAX_REQUESTS_PER_CONSUMER,
            max_queued_frames: Self::DEFAULT_MAX_QUEUED_FRAMES,
            max_queued_bytes: Self::DEFAULT_MAX_QUEUED_BYTES,
            max_queued_errors: Self::DEFAULT_MAX_QUEUED_ERRORS,
            max_ended_requests: Self::DEFAULT_MAX_ENDED_REQUESTS,
        }
    }
}

/// Something the adapter must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouterEvent {
    /// The output queue of `conn` went from empty to non-empty: drain it
    /// with [`Router::poll_transmit`] (as fast as its socket takes it). Not
    /// repeated until `poll_transmit` has returned `None` once.
    Transmit(ConnId),
    /// A connection registered.
    Registered {
        /// The connection.
        conn: ConnId,
        /// Its role.
        role: Role,
        /// Its client id.
        client_id: ClientId,
        /// Its channel.
        channel_id: ChannelId,
    },
    /// The router gave up on `conn`: drain what is still queued for it (the
    /// `Error` frame that explains), then close the socket and call
    /// [`Router::handle_disconnect`]. Its requests have already been failed
    /// or cancelled; frames it still sends are ignored.
    Close {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
}

/// Why the router closes a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer broke the protocol (a `Error` frame with
    /// [`ErrorCode::PROTOCOL`] and this text is queued for it).
    Protocol(&'static str),
    /// The peer sent bytes that are not a frame of this protocol (a bad
    /// version or type): the stream cannot be trusted. An `Error` frame
    /// with [`ErrorCode::PROTOCOL`] and this error's text is queued for it.
    Malformed(FrameError),
    /// The peer's error lane was full: it is not reading.
    ErrorQueueFull,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Protocol(why) => write!(f, "protocol violation: {why}"),
            Self::Malformed(e) => write!(f, "malformed frame: {e}"),
            Self::ErrorQueueFull => f.write_str("error queue full: peer is not reading"),
        }
    }
}

/// Local misuse of the [`Router`] API by the adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouterError {
    /// [`Router::handle_connect`] with an id already known.
    DuplicateConn(ConnId),
    /// An id the router does not know (never connected, or disconnected).
    UnknownConn(ConnId),
}

impl fmt::Display for RouterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DuplicateConn(c) => write!(f, "{c} is already connected"),
            Self::UnknownConn(c) => write!(f, "{c} is not connected"),
        }
    }
}

impl std::error::Error for RouterError {}

/// Counters of a [`Router`]; every frame that does not reach its
/// destination is counted in one of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouterStats {
    /// Connections accepted.
    pub connections: u64,
    /// Successful registrations.
    pub registrations: u64,
    /// Frames taken from connections.
    pub frames_in: u64,
    /// Frames handed out by `poll_transmit`.
    pub frames_out: u64,
    /// `Error` frames queued (by the router or forwarded).
    pub error_frames: u64,
    /// Requests forwarded to a provider.
    pub requests_started: u64,
    /// Requests answered with a final `Response`.
    pub requests_completed: u64,
    /// Requests answered with an `Error` by the provider.
    pub provider_errors: u64,
    /// Requests refused: no provider on the channel.
    pub no_responders: u64,
    /// Requests failed because a queue was full (or `max_requests`).
    pub busy: u64,
    /// Requests refused: the consumer had too many in flight.
    pub too_many_requests: u64,
    /// Requests refused: `Start` header too long.
    pub bad_requests: u64,
    /// Requests that timed out.
    pub timed_out: u64,
    /// Requests failed because their provider disconnected.
    pub provider_gone: u64,
    /// Requests cancelled by their consumer.
    pub cancelled: u64,
    /// Requests dropped because their consumer disconnected (the provider
    /// is told).
    pub consumer_gone: u64,
    /// `Response`/`Error` frames from a provider for a request the router
    /// ended and told it about (a timeout or cancellation that crossed
    /// them): discarded.
    pub late_responses: u64,
    /// `Chunk`/`End`/`Error` frames from a consumer for a request the
    /// router ended and told it about (it failed while they were on their
    /// way), and frames from connections already closing (told why):
    /// discarded.
    pub discarded_frames: u64,
    /// Frames for a request id the router has no record of (never started,
    /// or ended and forgotten): answered with an `Error`
    /// ([`ErrorCode::UNKNOWN_REQUEST`]) naming the id.
    pub unknown_requests: u64,
    /// Frames whose payload was over the frame limit: skipped, answered
    /// with an `Error` ([`ErrorCode::FRAME_TOO_LARGE`]), and their request
    /// failed.
    pub oversized_frames: u64,
    /// Queued data frames removed because their request failed first.
    pub purged_frames: u64,
    /// Connections closed for a protocol violation.
    pub protocol_violations: u64,
    /// Connections closed because their error lane was full.
    pub slow_closes: u64,
}

#[derive(Debug)]
enum State {
    Unregistered,
    Consumer {
        client_id: ClientId,
        channel_id: ChannelId,
        timeout: Duration,
    },
    Provider {
        channel_id: ChannelId,
    },
    Closed,
}

#[derive(Debug, Default)]
struct Outbox {
    errors: VecDeque<Frame>,
    data: VecDeque<Frame>,
    data_bytes: usize,
    notified: bool,
}

#[derive(Debug)]
struct Conn {
    state: State,
    out: Outbox,
    /// Router-side ids of the requests this connection takes part in.
    requests: BTreeSet<RequestId>,
    /// Requests (in this connection's ids) the router ended while it may
    /// still send frames for them.
    ended: Ended,
    /// Scheduled for closing: takes no more frames.
    doomed: bool,
}

/// Ids of requests the router ended while their peer may still send frames
/// for them (it is told by the `Error` or final `Response` queued for it),
/// oldest forgotten first beyond the limit.
#[derive(Debug, Default)]
struct Ended {
    age_of: HashMap<RequestId, u64>,
    by_age: BTreeMap<u64, RequestId>,
    next_age: u64,
}

impl Ended {
    fn remember(&mut self, id: RequestId, max: usize) {
        self.forget(id);
        self.next_age += 1;
        self.age_of.insert(id, self.next_age);
        self.by_age.insert(self.next_age, id);
        while self.age_of.len() > max {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            self.age_of.remove(&oldest);
        }
    }

    fn forget(&mut self, id: RequestId) {
        if let Some(age) = self.age_of.remove(&id) {
            self.by_age.remove(&age);
        }
    }

    fn contains(&self, id: RequestId) -> bool {
        self.age_of.contains_key(&id)
    }
}

#[derive(Debug)]
struct Entry {
    consumer: ConnId,
    consumer_id: RequestId,
    provider: ConnId,
    consumer_done: bool,
}

#[derive(Debug, Default)]
struct Channel {
    providers: Vec<ConnId>,
    next: usize,
}

/// The broker server as a pure state machine.
///
/// The adapter assigns each connection a [`ConnId`], tells the router
/// about it ([`handle_connect`](Self::handle_connect)), decodes its bytes
/// with a [`FrameCodec`](super::FrameCodec) and hands every frame to
/// [`handle_frame`](Self::handle_frame); when the socket closes it calls
/// [`handle_disconnect`](Self::handle_disconnect).
///
/// **Routing is frame by frame.** A consumer's `Start` picks a provider on
/// its channel (round-robin, skipping providers whose queue is full) and
/// is forwarded at once; its `Chunk`s and `End` follow as they arrive. The
/// router never holds a whole request: a 50 MiB request costs it at most
/// the provider's bounded queue. Request ids are rewritten towards
/// providers (so two consumers' ids never collide) and restored on the way
/// back.
///
/// **Output** is one queue per connection with two lanes: `Error` frames
/// always leave before data. When an `Error` ends a request, that
/// request's data frames still queued for the same connection are removed
/// (so an `Error` never overtakes the data it ends). A data lane is
/// bounded (`max_queued_frames`, `max_queued_bytes`): when it is full the
/// *sender* of the frame gets an `Error` ([`ErrorCode::BUSY`]) and the
/// request is abandoned at both ends — nothing is dropped silently.
///
/// **Drain order** after every `handle_*` call: drain
/// [`poll_event`](Self::poll_event) until `None`; for every
/// [`RouterEvent::Transmit`] drain [`poll_transmit`](Self::poll_transmit)
/// for that connection while its socket is writable (the queue keeps the
/// rest); re-arm the timer from [`poll_timeout`](Self::poll_timeout).
#[derive(Debug)]
pub struct Router {
    config: RouterConfig,
    conns: HashMap<ConnId, Conn>,
    channels: HashMap<ChannelId, Channel>,
    entries: DeadlineMap<RequestId, Entry>,
    by_consumer: HashMap<(ConnId, RequestId), RequestId>,
    events: VecDeque<RouterEvent>,
    to_close: VecDeque<(ConnId, CloseReason)>,
    next_id: u128,
    stats: RouterStats,
}

impl Router {
    /// Builds a router.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] if a limit or timeout is zero, `max_frame_payload`
    /// cannot hold the 32-byte routing info or exceeds `u32::MAX`, or
    /// `default_timeout > max_timeout`.
    pub fn new(config: RouterConfig) -> Result<Self, ConfigError> {
        non_zero("max_requests", config.max_requests)?;
        non_zero(
            "max_requests_per_consumer",
            config.max_requests_per_consumer,
        )?;
        non_zero("max_queued_frames", config.max_queued_frames)?;
        non_zero("max_queued_bytes", config.max_queued_bytes)?;
        non_zero("max_queued_errors", config.max_queued_errors)?;
        if config.default_timeout.is_zero() {
            return Err(ConfigError::Zero {
                field: "default_timeout",
            });
        }
        if config.default_timeout > config.max_timeout {
            return Err(ConfigError::TooLarge {
                field: "default_timeout",
                value: usize::try_from(config.default_timeout.as_millis()).unwrap_or(usize::MAX),
                max: usize::try_from(config.max_timeout.as_millis()).unwrap_or(usize::MAX),
            });
        }
        if config.max_frame_payload < ROUTING_INFO_LEN {
            return Err(ConfigError::Zero {
                field: "max_frame_payload (below 32)",
            });
        }
        if u32::try_from(config.max_frame_payload).is_err() {
            return Err(ConfigError::TooLarge {
                field: "max_frame_payload",
                value: config.max_frame_payload,
                max: u32::MAX as usize,
            });
        }
        Ok(Self {
            config,
            conns: HashMap::new(),
            channels: HashMap::new(),
            entries: DeadlineMap::new(),
            by_consumer: HashMap::new(),
            events: VecDeque::new(),
            to_close: VecDeque::new(),
            next_id: 0,
            stats: RouterStats::default(),
        })
    }

    /// A new connection. Its first frame must be a registration `Start`.
    ///
    /// # Errors
    ///
    /// [`RouterError::DuplicateConn`] if `conn` is already known.
    pub fn handle_connect(&mut self, conn: ConnId) -> Result<(), RouterError> {
        if self.conns.contains_key(&conn) {
            return Err(RouterError::DuplicateConn(conn));
        }
        self.conns.insert(
            conn,
            Conn {
                state: State::Unregistered,
                out: Outbox::default(),
                requests: BTreeSet::new(),
                ended: Ended::default(),
                doomed: false,
            },
        );
        self.stats.connections += 1;
        Ok(())
    }

    /// The connection is gone (socket closed, or after
    /// [`RouterEvent::Close`]). Its requests fail fast: each consumer
    /// waiting on it as a provider gets an `Error`
    /// ([`ErrorCode::PROVIDER_GONE`]); each provider working for it as a
    /// consumer gets an `Error` ([`ErrorCode::CANCELLED`]). Its queue is
    /// dropped.
    ///
    /// # Errors
    ///
    /// [`RouterError::UnknownConn`].
    pub fn handle_disconnect(&mut self, conn: ConnId) -> Result<(), RouterError> {
        if !self.conns.contains_key(&conn) {
            return Err(RouterError::UnknownConn(conn));
        }
        self.close_now(conn, None);
        self.conns.remove(&conn);
        self.reap();
        Ok(())
    }

    /// A frame decoded from `conn`.
    ///
    /// What the peer does wrong is answered on the wire (an `Error` frame
    /// under the frame's request id, and for protocol violations a
    /// [`RouterEvent::Close`] after it), never with an `Err`: a frame for
    /// a request the router does not know gets
    /// [`ErrorCode::UNKNOWN_REQUEST`], request data after the request's
    /// `End` fails the request ([`ErrorCode::BAD_REQUEST`]), a frame the
    /// peer's role or state does not send is a violation. Only frames the
    /// peer sent before it could know their request had ended (see
    /// [`RouterConfig::max_ended_requests`]) and frames from a connection
    /// already closing (and told why) are discarded without an answer,
    /// and counted.
    ///
    /// # Errors
    ///
    /// [`RouterError::UnknownConn`] (local misuse).
    pub fn handle_frame(
        &mut self,
        conn: ConnId,
        frame: Frame,
        now: Instant,
    ) -> Result<(), RouterError> {
        let Some(c) = self.conns.get(&conn) else {
            return Err(RouterError::UnknownConn(conn));
        };
        self.stats.frames_in += 1;
        if c.doomed {
            self.stats.discarded_frames += 1;
            return Ok(());
        }
        match c.state {
            State::Closed => self.stats.discarded_frames += 1,
            State::Unregistered => self.register(conn, frame),
            State::Consumer {
                client_id,
                channel_id,
                timeout,
            } => {
                let info = RoutingInfo {
                    client_id,
                    channel_id,
                };
                self.consumer_frame(conn, info, super::deadline(now, timeout), frame);
            }
            State::Provider { .. } => self.provider_frame(conn, frame),
        }
        self.reap();
        Ok(())
    }

    /// A message from `conn` that
    /// [`BrokerFramer::parse`](super::BrokerFramer::parse) refused with
    /// `error`; `request_id` is what its header names, if it has a header
    /// of this version ([`FrameCodec::peek_request_id`](super::FrameCodec::peek_request_id)).
    ///
    /// A frame over the frame limit ([`FrameError::TooLarge`], its payload
    /// skipped by the framer) from a registered peer is answered with an
    /// `Error` ([`ErrorCode::FRAME_TOO_LARGE`], naming the size and the
    /// limit) under its request id, and the request it belongs to fails at
    /// both ends; the connection stays open. Anything else — a bad version
    /// or type, or an oversized registration — is a violation: an `Error`
    /// ([`ErrorCode::PROTOCOL`], the error's text) under the request id if
    /// there is one, then [`RouterEvent::Close`].
    ///
    /// # Errors
    ///
    /// [`RouterError::UnknownConn`] (local misuse).
    pub fn handle_refused(
        &mut self,
        conn: ConnId,
        request_id: Option<RequestId>,
        error: &FrameError,
    ) -> Result<(), RouterError> {
        let Some(c) = self.conns.get(&conn) else {
            return Err(RouterError::UnknownConn(conn));
        };
        self.stats.frames_in += 1;
        if c.doomed || matches!(c.state, State::Closed) {
            self.stats.discarded_frames += 1;
            return Ok(());
        }
        let registered = !matches!(c.state, State::Unregistered);
        match (error, request_id) {
            (FrameError::TooLarge { len, max }, Some(id)) if registered => {
                self.oversized(conn, id, *len, *max);
            }
            _ => self.violation_as(
                conn,
                request_id.unwrap_or_default(),
                error.to_string(),
                CloseReason::Malformed(error.clone()),
            ),
        }
        self.reap();
        Ok(())
    }

    /// The earliest request deadline, `None` if no request is in flight.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.entries.next_deadline()
    }

    /// Fails every request due at or before `now`: its consumer gets an
    /// `Error` ([`ErrorCode::TIMEOUT`]), its provider too (so it can stop).
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((rid, entry)) = self.entries.pop_due(now) {
            self.stats.timed_out += 1;
            self.unlink(rid, &entry);
            self.fail_removed(
                rid,
                &entry,
                ErrorPayload::new(ErrorCode::TIMEOUT, "request timed out"),
                Some(ErrorPayload::new(ErrorCode::TIMEOUT, "request timed out")),
            );
        }
        self.reap();
    }

    /// The next event for the adapter.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<RouterEvent> {
        self.events.pop_front()
    }

    /// The next frame to write to `conn`: `Error` frames first, then data,
    /// each lane in order. `None` when the queue is empty (or `conn` is
    /// unknown); the next frame queued then raises a new
    /// [`RouterEvent::Transmit`].
    #[must_use]
    pub fn poll_transmit(&mut self, conn: ConnId) -> Option<Frame> {
        let c = self.conns.get_mut(&conn)?;
        let frame = match c.out.errors.pop_front() {
            Some(f) => Some(f),
            None => c.out.data.pop_front().inspect(|f| {
                c.out.data_bytes -= f.payload.len();
            }),
        };
        match frame {
            Some(f) => {
                self.stats.frames_out += 1;
                Some(f)
            }
            None => {
                c.out.notified = false;
                None
            }
        }
    }

    /// Frames and data payload bytes queued for `conn`.
    #[must_use]
    pub fn queued(&self, conn: ConnId) -> Option<(usize, usize)> {
        let c = self.conns.get(&conn)?;
        Some((c.out.errors.len() + c.out.data.len(), c.out.data_bytes))
    }

    /// The connection a frame from `from` will be forwarded to as stream
    /// data, so an adapter can apply flow control per request: a
    /// consumer's `Chunk` or `End` of a request under way goes to the
    /// provider the request was assigned to; a provider's `Response` to a
    /// request it serves goes to that request's consumer.
    ///
    /// `None` for every other frame — a `Start` (the router picks a
    /// provider with room, or answers `BUSY`), an `Error`, a frame of an
    /// unknown or finished request, a frame from an unregistered or
    /// closing connection: none of these is queued as stream data, so none
    /// needs to wait for a receiver. Call it just before
    /// [`handle_frame`](Self::handle_frame) with the same frame; the answer
    /// holds until the next `handle_*` call.
    #[must_use]
    pub fn next_hop(
        &self,
        from: ConnId,
        frame_type: FrameType,
        request_id: RequestId,
    ) -> Option<ConnId> {
        let c = self.conns.get(&from).filter(|c| !c.doomed)?;
        match (&c.state, frame_type) {
            (State::Consumer { .. }, FrameType::Chunk | FrameType::End) => {
                let rid = self.by_consumer.get(&(from, request_id))?;
                let entry = self.entries.get(rid).filter(|e| !e.consumer_done)?;
                Some(entry.provider)
            }
            (State::Provider { .. }, FrameType::Response) => {
                let entry = self
                    .entries
                    .get(&request_id)
                    .filter(|e| e.provider == from)?;
                Some(entry.consumer)
            }
            _ => None,
        }
    }

    /// Requests in flight.
    #[must_use]
    pub fn open_requests(&self) -> usize {
        self.entries.len()
    }

    /// Connections known (including closed ones not yet disconnected).
    #[must_use]
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> RouterStats {
        self.stats
    }

    // ---- inputs ---------------------------------------------------------

    fn register(&mut self, conn: ConnId, frame: Frame) {
        if frame.frame_type != FrameType::Start {
            return self.violation(conn, frame.request_id, "first frame must be a registration");
        }
        let Ok(reg) = Registration::decode(&frame.payload) else {
            return self.violation(conn, frame.request_id, "malformed registration");
        };
        let state = match reg.role {
            Role::Consumer => State::Consumer {
                client_id: reg.client_id,
                channel_id: reg.channel_id,
                timeout: if reg.timeout.is_zero() {
                    self.config.default_timeout
                } else {
                    reg.timeout.min(self.config.max_timeout)
                },
            },
            Role::Provider => {
                self.channels
                    .entry(reg.channel_id)
                    .or_default()
                    .providers
                    .push(conn);
                State::Provider {
                    channel_id: reg.channel_id,
                }
            }
        };
        if let Some(c) = self.conns.get_mut(&conn) {
            c.state = state;
        }
        self.stats.registrations += 1;
        let ack = Frame::new(FrameType::Response, frame.request_id, Bytes::new());
        // The queue of a fresh connection is empty: one frame always fits.
        let _ = self.push_data(conn, ack);
        self.events.push_back(RouterEvent::Registered {
            conn,
            role: reg.role,
            client_id: reg.client_id,
            channel_id: reg.channel_id,
        });
    }

    fn consumer_frame(&mut self, conn: ConnId, info: RoutingInfo, deadline: Instant, frame: Frame) {
        let id = frame.request_id;
        match frame.frame_type {
            FrameType::Start => self.start(conn, info, deadline, frame),
            FrameType::Chunk | FrameType::End => {
                let is_end = frame.frame_type == FrameType::End;
                let Some(&rid) = self.by_consumer.get(&(conn, id)) else {
                    if self.stray(conn, id, is_end) {
                        self.stats.discarded_frames += 1;
                    }
                    return;
                };
                let Some(entry) = self.entries.get_mut(&rid) else {
                    return;
                };
                if entry.consumer_done {
                    self.stats.bad_requests += 1;
                    return self.fail(
                        rid,
                        ErrorPayload::new(ErrorCode::BAD_REQUEST, "request data after its End"),
                        Some(ErrorPayload::new(
                            ErrorCode::CANCELLED,
                            "request failed at the broker: data after its End",
                        )),
                    );
                }
                entry.consumer_done = is_end;
                let provider = entry.provider;
                let forward = Frame {
                    request_id: rid,
                    ..frame
                };
                if !self.push_data(provider, forward) {
                    self.stats.busy += 1;
                    self.fail(
                        rid,
                        ErrorPayload::new(ErrorCode::BUSY, "provider queue full"),
                        Some(ErrorPayload::new(
                            ErrorCode::BUSY,
                            "request abandoned: queue full",
                        )),
                    );
                }
            }
            FrameType::Error => {
                let Some(&rid) = self.by_consumer.get(&(conn, id)) else {
                    if self.stray(conn, id, true) {
                        self.stats.discarded_frames += 1;
                    }
                    return;
                };
                if let Some(entry) = self.remove_entry(rid) {
                    self.stats.cancelled += 1;
                    self.cancel_at_provider(
                        entry.provider,
                        rid,
                        ErrorPayload::new(ErrorCode::CANCELLED, "cancelled by consumer"),
                    );
                }
            }
            FrameType::Response => self.violation(conn, id, "consumers do not send responses"),
        }
    }

    fn start(&mut self, conn: ConnId, info: RoutingInfo, deadline: Instant, frame: Frame) {
        let id = frame.request_id;
        if self.by_consumer.contains_key(&(conn, id)) {
            return self.violation(conn, id, "duplicate request id");
        }
        // A new request under an id that ended before.
        if let Some(c) = self.conns.get_mut(&conn) {
            c.ended.forget(id);
        }
        let open = self.conns.get(&conn).map_or(0, |c| c.requests.len());
        let max_header = self.config.max_frame_payload - ROUTING_INFO_LEN;
        let refusal = if open >= self.config.max_requests_per_consumer {
            self.stats.too_many_requests += 1;
            Some(ErrorPayload::new(
                ErrorCode::TOO_MANY_REQUESTS,
                "too many requests in flight",
            ))
        } else if self.entries.len() >= self.config.max_requests {
            self.stats.busy += 1;
            Some(ErrorPayload::new(
                ErrorCode::BUSY,
                "broker at its request limit",
            ))
        } else if frame.payload.len() > max_header {
            self.stats.bad_requests += 1;
            Some(ErrorPayload::new(
                ErrorCode::BAD_REQUEST,
                format!(
                    "start header of {} bytes is over the limit of {max_header} \
                     (the frame limit less {ROUTING_INFO_LEN} bytes of routing info)",
                    frame.payload.len()
                ),
            ))
        } else {
            None
        };
        // The consumer may be streaming the refused request's data already:
        // `end_at` lets those frames be discarded quietly.
        if let Some(error) = refusal {
            return self.end_at(conn, id, &error);
        }
        let provider = match self.pick_provider(info.channel_id, frame.payload.len()) {
            Ok(p) => p,
            Err(error) => return self.end_at(conn, id, &error),
        };
        self.next_id += 1;
        let rid = RequestId::from_bytes(self.next_id.to_be_bytes());
        let mut payload = BytesMut::with_capacity(ROUTING_INFO_LEN + frame.payload.len());
        payload.put_slice(&info.to_bytes());
        payload.put_slice(&frame.payload);
        let forward = Frame {
            frame_type: FrameType::Start,
            flags: frame.flags,
            request_id: rid,
            payload: payload.freeze(),
        };
        // pick_provider checked there is room.
        let _ = self.push_data(provider, forward);
        self.entries.insert(
            rid,
            Some(deadline),
            Entry {
                consumer: conn,
                consumer_id: id,
                provider,
                consumer_done: false,
            },
        );
        self.by_consumer.insert((conn, id), rid);
        for c in [conn, provider] {
            if let Some(c) = self.conns.get_mut(&c) {
                c.requests.insert(rid);
            }
        }
        self.stats.requests_started += 1;
    }

    /// Round-robin over the channel's providers, skipping full queues.
    fn pick_provider(&mut self, channel: ChannelId, len: usize) -> Result<ConnId, ErrorPayload> {
        let Some(ch) = self
            .channels
            .get(&channel)
            .filter(|c| !c.providers.is_empty())
        else {
            self.stats.no_responders += 1;
            return Err(ErrorPayload::new(
                ErrorCode::NO_RESPONDERS,
                "no provider on this channel",
            ));
        };
        let n = ch.providers.len();
        let start = ch.next % n;
        let found = (0..n).map(|i| (start + i) % n).find(|&i| {
            ch.providers
                .get(i)
                .is_some_and(|p| self.has_room(*p, ROUTING_INFO_LEN + len))
        });
        match found {
            Some(i) => {
                let provider = ch.providers.get(i).copied();
                if let Some(ch) = self.channels.get_mut(&channel) {
                    ch.next = i + 1;
                }
                provider.ok_or_else(|| ErrorPayload::new(ErrorCode::BUSY, "no provider"))
            }
            None => {
                self.stats.busy += 1;
                Err(ErrorPayload::new(ErrorCode::BUSY, "all providers are busy"))
            }
        }
    }

    fn provider_frame(&mut self, conn: ConnId, frame: Frame) {
        let rid = frame.request_id;
        match frame.frame_type {
            FrameType::Response | FrameType::Error => {
                let last = frame.frame_type == FrameType::Error || frame.flags & FLAG_MORE == 0;
                let Some(entry) = self.entries.get(&rid).filter(|e| e.provider == conn) else {
                    if self.stray(conn, rid, last) {
                        self.stats.late_responses += 1;
                    }
                    return;
                };
                let (consumer, consumer_id) = (entry.consumer, entry.consumer_id);
                let consumer_done = entry.consumer_done;
                if frame.frame_type == FrameType::Error {
                    self.stats.provider_errors += 1;
                    let _ = self.remove_entry(rid);
                    self.purge(consumer, consumer_id);
                    self.remember_ended(consumer, consumer_id);
                    self.push_error_frame(
                        consumer,
                        Frame {
                            request_id: consumer_id,
                            ..frame
                        },
                    );
                    return;
                }
                let back = Frame {
                    request_id: consumer_id,
                    ..frame
                };
                if !self.push_data(consumer, back) {
                    self.stats.busy += 1;
                    let _ = self.remove_entry(rid);
                    self.purge(consumer, consumer_id);
                    let error = ErrorPayload::new(ErrorCode::BUSY, "consumer queue full");
                    self.end_at(consumer, consumer_id, &error);
                    self.end_at(conn, rid, &error);
                } else if last {
                    self.stats.requests_completed += 1;
                    let _ = self.remove_entry(rid);
                    if !consumer_done {
                        // Answered before the consumer finished sending.
                        self.remember_ended(consumer, consumer_id);
                    }
                }
            }
            _ => self.violation(conn, rid, "providers do not send request frames"),
        }
    }

    // ---- request bookkeeping ----------------------------------------------

    fn remove_entry(&mut self, rid: RequestId) -> Option<Entry> {
        let entry = self.entries.remove(&rid)?;
        self.unlink(rid, &entry);
        Some(entry)
    }

    /// Drops the indexes of a request already out of `entries`.
    fn unlink(&mut self, rid: RequestId, entry: &Entry) {
        self.by_consumer
            .remove(&(entry.consumer, entry.consumer_id));
        for c in [entry.consumer, entry.provider] {
            if let Some(c) = self.conns.get_mut(&c) {
                c.requests.remove(&rid);
            }
        }
    }

    /// Ends a request with an `Error` to its consumer, and (if given) to its
    /// provider.
    fn fail(
        &mut self,
        rid: RequestId,
        to_consumer: ErrorPayload,
        to_provider: Option<ErrorPayload>,
    ) {
        if let Some(entry) = self.remove_entry(rid) {
            self.fail_removed(rid, &entry, to_consumer, to_provider);
        }
    }

    /// [`fail`](Self::fail) for a request already removed.
    fn fail_removed(
        &mut self,
        rid: RequestId,
        entry: &Entry,
        to_consumer: ErrorPayload,
        to_provider: Option<ErrorPayload>,
    ) {
        self.purge(entry.consumer, entry.consumer_id);
        self.end_at(entry.consumer, entry.consumer_id, &to_consumer);
        if let Some(error) = to_provider {
            self.cancel_at_provider(entry.provider, rid, error);
        }
    }

    /// Tells a provider a request is off, unless it never saw its `Start`
    /// (still queued: then the queued frames are simply removed).
    fn cancel_at_provider(&mut self, provider: ConnId, rid: RequestId, error: ErrorPayload) {
        if !self.purge(provider, rid) {
            self.end_at(provider, rid, &error);
        }
    }

    /// Tells `conn` that its request `id` is over (an `Error`) and
    /// remembers the id, so frames of it already on their way are
    /// discarded quietly.
    fn end_at(&mut self, conn: ConnId, id: RequestId, error: &ErrorPayload) {
        self.remember_ended(conn, id);
        self.push_error(conn, id, error);
    }

    fn remember_ended(&mut self, conn: ConnId, id: RequestId) {
        let max = self.config.max_ended_requests;
        if let Some(c) = self.conns.get_mut(&conn) {
            c.ended.remember(id, max);
        }
    }

    /// A frame from `conn` for request `id`, under which it has no request
    /// in flight. True if the router ended that request and told the peer
    /// (the frame was on its way before the peer knew): the caller counts
    /// it as discarded, and the peer's `last` frame of the request lets the
    /// id go. Otherwise the frame is answered with
    /// [`ErrorCode::UNKNOWN_REQUEST`] under that id, and false.
    fn stray(&mut self, conn: ConnId, id: RequestId, last: bool) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        if c.ended.contains(id) {
            if last {
                c.ended.forget(id);
            }
            return true;
        }
        self.stats.unknown_requests += 1;
        let why = ErrorPayload::new(
            ErrorCode::UNKNOWN_REQUEST,
            format!("no request {id} in flight"),
        );
        self.push_error(conn, id, &why);
        false
    }

    /// A frame of `len` bytes from registered `conn` under request `id`,
    /// over the frame limit `max` (its payload was skipped): the request it
    /// belongs to fails at both ends, or the peer is told under `id`.
    fn oversized(&mut self, conn: ConnId, id: RequestId, len: usize, max: usize) {
        self.stats.oversized_frames += 1;
        let text =
            format!("frame payload of {len} bytes is over the broker's limit of {max} bytes");
        let is_provider = matches!(
            self.conns.get(&conn).map(|c| &c.state),
            Some(State::Provider { .. })
        );
        let live = if is_provider {
            self.entries
                .get(&id)
                .filter(|e| e.provider == conn)
                .map(|_| id)
        } else {
            self.by_consumer.get(&(conn, id)).copied()
        };
        let too_large = |text: String| ErrorPayload::new(ErrorCode::FRAME_TOO_LARGE, text);
        match live {
            Some(rid) if is_provider => self.fail(
                rid,
                too_large(format!("the provider's response: {text}")),
                Some(too_large(text)),
            ),
            Some(rid) => self.fail(
                rid,
                too_large(text),
                Some(ErrorPayload::new(
                    ErrorCode::CANCELLED,
                    "request failed at the broker: the consumer sent a frame over its limit",
                )),
            ),
            None if self.conns.get(&conn).is_some_and(|c| c.ended.contains(id)) => {
                self.stats.discarded_frames += 1;
            }
            None => self.end_at(conn, id, &too_large(text)),
        }
    }

    /// Removes queued data frames of request `id` from `conn`'s queue;
    /// true if its `Start` was among them (the peer never saw the request).
    fn purge(&mut self, conn: ConnId, id: RequestId) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        let mut start_removed = false;
        let mut purged = 0;
        let out = &mut c.out;
        out.data.retain(|f| {
            let keep = f.request_id != id;
            if !keep {
                start_removed |= f.frame_type == FrameType::Start;
                out.data_bytes -= f.payload.len();
                purged += 1;
            }
            keep
        });
        self.stats.purged_frames += purged;
        start_removed
    }

    // ---- connections and queues ---------------------------------------------

    fn violation(&mut self, conn: ConnId, id: RequestId, why: &'static str) {
        self.violation_as(conn, id, why, CloseReason::Protocol(why));
    }

    /// Answers `conn` with an `Error` ([`ErrorCode::PROTOCOL`], `message`)
    /// under `id`, then closes it.
    fn violation_as(
        &mut self,
        conn: ConnId,
        id: RequestId,
        message: impl Into<Bytes>,
        reason: CloseReason,
    ) {
        self.stats.protocol_violations += 1;
        self.push_error(conn, id, &ErrorPayload::new(ErrorCode::PROTOCOL, message));
        self.doom(conn, reason);
    }

    fn doom(&mut self, conn: ConnId, reason: CloseReason) {
        if let Some(c) = self.conns.get_mut(&conn) {
            if !c.doomed && !matches!(c.state, State::Closed) {
                c.doomed = true;
                self.to_close.push_back((conn, reason));
            }
        }
    }

    /// Closes the connections doomed so far; closing one may doom others
    /// (a full error lane), so this is a work list, not recursion.
    fn reap(&mut self) {
        while let Some((conn, reason)) = self.to_close.pop_front() {
            if self.conns.contains_key(&conn) {
                self.close_now(conn, Some(reason));
            }
        }
    }

    fn close_now(&mut self, conn: ConnId, reason: Option<CloseReason>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let state = std::mem::replace(&mut c.state, State::Closed);
        if matches!(state, State::Closed) {
            return;
        }
        c.doomed = true;
        let requests = std::mem::take(&mut c.requests);
        if let State::Provider { channel_id } = state {
            if let Some(ch) = self.channels.get_mut(&channel_id) {
                ch.providers.retain(|p| *p != conn);
                if ch.providers.is_empty() {
                    self.channels.remove(&channel_id);
                }
            }
        }
        for rid in requests {
            let Some(entry) = self.entries.get(&rid) else {
                continue;
            };
            if entry.provider == conn {
                self.stats.provider_gone += 1;
                self.fail(
                    rid,
                    ErrorPayload::new(ErrorCode::PROVIDER_GONE, "provider disconnected"),
                    None,
                );
            } else if let Some(entry) = self.remove_entry(rid) {
                self.stats.consumer_gone += 1;
                self.cancel_at_provider(
                    entry.provider,
                    rid,
                    ErrorPayload::new(ErrorCode::CANCELLED, "consumer disconnected"),
                );
            }
        }
        if let Some(reason) = reason {
            if reason == CloseReason::ErrorQueueFull {
                self.stats.slow_closes += 1;
            }
            self.events.push_back(RouterEvent::Close { conn, reason });
        }
    }

    fn has_room(&self, conn: ConnId, len: usize) -> bool {
        self.conns.get(&conn).is_some_and(|c| {
            !c.doomed
                && (c.out.data.is_empty()
                    || (c.out.data.len() < self.config.max_queued_frames
                        && c.out.data_bytes.saturating_add(len) <= self.config.max_queued_bytes))
        })
    }

    /// Queues a data frame; false if the queue is full (or the connection
    /// is closing), in which case the caller fails the request.
    fn push_data(&mut self, conn: ConnId, frame: Frame) -> bool {
        if !self.has_room(conn, frame.payload.len()) {
            return false;
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        c.out.data_bytes += frame.payload.len();
        c.out.data.push_back(frame);
        self.notify(conn);
        true
    }

    fn push_error(&mut self, conn: ConnId, id: RequestId, error: &ErrorPayload) {
        let frame = Frame::new(FrameType::Error, id, error.encode());
        self.push_error_frame(conn, frame);
    }

    /// Queues an `Error` frame in the priority lane. A connection that is
    /// closing gets nothing more (its requests are failed at the other end
    /// instead); one whose error lane is full is closed.
    fn push_error_frame(&mut self, conn: ConnId, frame: Frame) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.doomed || matches!(c.state, State::Closed) {
            return;
        }
        if c.out.errors.len() >= self.config.max_queued_errors {
            self.doom(conn, CloseReason::ErrorQueueFull);
            return;
        }
        c.out.errors.push_back(frame);
        self.stats.error_frames += 1;
        self.notify(conn);
    }

    fn notify(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            if !c.out.notified {
                c.out.notified = true;
                self.events.push_back(RouterEvent::Transmit(conn));
            }
        }
    }
}

#[cfg(test)]
mod tests;
