//! The client's side: request ids, deadlines, cancellation, responses.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::deflate::{CompressionConfig, CompressionConfigError, Deflate};
use super::envelope::{
    DecodeError, EncodeError, Envelope, FLAG_COMPRESSED, FLAG_IDEMPOTENT, Fault, Kind,
};
use crate::Utf8Bytes;
use crate::deadline::DeadlineMap;

/// Limits and options of a [`Calls`] machine (and of a
/// [`Serving`](super::Serving) one).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallsConfig {
    /// Most calls pending at once. Default 1024.
    pub max_pending: usize,
    /// Largest payload accepted, on the wire and once inflated. Default
    /// 16 MiB: one response can hold that much memory.
    pub max_payload: usize,
    /// Compress outgoing payloads; `None` (the default) sends them as they
    /// are. Compressed input is inflated either way.
    pub compression: Option<CompressionConfig>,
}

impl CallsConfig {
    /// Default of [`max_pending`](Self::max_pending).
    pub const DEFAULT_MAX_PENDING: usize = 1024;
    /// Default of [`max_payload`](Self::max_payload).
    pub const DEFAULT_MAX_PAYLOAD: usize = 16 << 20;
}

impl Default for CallsConfig {
    fn default() -> Self {
        Self {
            max_pending: Self::DEFAULT_MAX_PENDING,
            max_payload: Self::DEFAULT_MAX_PAYLOAD,
            compression: None,
        }
    }
}

/// A configuration that cannot work (local misuse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallsConfigError {
    /// `max_pending` is zero.
    ZeroPending,
    /// The compression level is above 9.
    Compression(CompressionConfigError),
}

impl fmt::Display for CallsConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroPending => f.write_str("max_pending must be at least 1"),
            Self::Compression(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for CallsConfigError {}

/// A call that could not be started (local).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartError {
    /// `max_pending` calls are pending already.
    TooManyPending {
        /// The limit.
        max: usize,
    },
    /// The payload is over `max_payload`.
    PayloadTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The envelope cannot be encoded (a method name over 255 bytes).
    Encode(EncodeError),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooManyPending { max } => write!(f, "{max} calls are pending already"),
            Self::PayloadTooLarge { len, max } => {
                write!(f, "request payload of {len} bytes over the limit of {max}")
            }
            Self::Encode(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for StartError {}

/// How one call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallEvent {
    /// The server answered (payload inflated already).
    Response {
        /// The call.
        id: u64,
        /// The result.
        payload: Bytes,
    },
    /// The server answered with an error envelope, or its compressed
    /// response could not be inflated (then the fault is made here: code
    /// [`Fault::TOO_LARGE`] or [`Fault::INTERNAL`], with the decode error).
    Failed {
        /// The call.
        id: u64,
        /// Why.
        fault: Fault,
    },
    /// The deadline passed first. A cancel for the server is queued in
    /// [`Calls::poll_transmit`].
    TimedOut(u64),
    /// The connection was lost with the call in flight
    /// ([`Calls::handle_disconnect`]). `idempotent` tells whether the
    /// caller marked it safe to send again elsewhere.
    Disconnected {
        /// The call.
        id: u64,
        /// It was started with `idempotent`.
        idempotent: bool,
    },
}

/// Counters of a [`Calls`] machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallsStats {
    /// Calls started.
    pub started: u64,
    /// Calls answered with a response.
    pub completed: u64,
    /// Calls answered with an error.
    pub failed: u64,
    /// Calls that timed out.
    pub timed_out: u64,
    /// Calls cancelled by the caller.
    pub cancelled: u64,
    /// Calls lost with their connection.
    pub disconnected: u64,
    /// Replies for no pending call (after a timeout or cancel): ignored.
    pub late: u64,
    /// Requests sent compressed.
    pub compressed: u64,
}

/// Request/response correlation for one client connection.
///
/// [`start`](Self::start) gives a call a fresh id (sequential per machine)
/// and its encoded request; the caller sends it. Every message from the
/// server goes to [`handle_frame`](Self::handle_frame); a response or error
/// for a pending call ends it with an event. [`cancel`](Self::cancel) ends a
/// call early and returns the cancel envelope to send;
/// [`handle_timeout`](Self::handle_timeout) ends calls whose deadline passed
/// and queues cancel envelopes for the server. When the connection dies,
/// [`handle_disconnect`](Self::handle_disconnect) ends every pending call.
///
/// Drain order after each input: [`poll_event`](Self::poll_event) until
/// `None`, then [`poll_transmit`](Self::poll_transmit) until `None`, then
/// re-arm the timer from [`poll_timeout`](Self::poll_timeout).
///
/// ```
/// use std::time::{Duration, Instant};
/// use storm_proto::rpc::{CallEvent, Calls, CallsConfig, Envelope, Kind, Serving};
///
/// let now = Instant::now();
/// let mut client = Calls::new(CallsConfig::default()).unwrap();
/// let mut server = Serving::new(CallsConfig::default()).unwrap();
/// let (id, request) = client.start(now, Some(Duration::from_secs(1)), "echo", "hi".into(), false).unwrap();
///
/// let incoming = server.handle_frame(request).unwrap().unwrap();
/// let reply = server.respond(incoming.id(), Ok(b"hi".as_slice().into())).unwrap();
///
/// client.handle_frame(reply).unwrap();
/// assert_eq!(client.poll_event(), Some(CallEvent::Response { id, payload: "hi".into() }));
/// ```
#[derive(Debug)]
pub struct Calls {
    config: CallsConfig,
    deflate: Deflate,
    next_id: u64,
    /// Pending calls: id, deadline, and whether the caller marked it
    /// idempotent.
    pending: DeadlineMap<u64, bool>,
    events: VecDeque<CallEvent>,
    transmit: VecDeque<Bytes>,
    stats: CallsStats,
}

impl Calls {
    /// Builds the machine.
    ///
    /// # Errors
    ///
    /// [`CallsConfigError`] for a zero `max_pending` or a compression level
    /// above 9.
    pub fn new(config: CallsConfig) -> Result<Self, CallsConfigError> {
        if config.max_pending == 0 {
            return Err(CallsConfigError::ZeroPending);
        }
        let deflate = Deflate::new(config.compression).map_err(CallsConfigError::Compression)?;
        Ok(Self {
            config,
            deflate,
            next_id: 1,
            pending: DeadlineMap::new(),
            events: VecDeque::new(),
            transmit: VecDeque::new(),
            stats: CallsStats::default(),
        })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &CallsConfig {
        &self.config
    }

    /// Starts a call of `method` with `payload`, due `timeout` after `now`
    /// (`None`: no deadline; the server is told the timeout, rounded up to
    /// whole milliseconds). `idempotent` marks it safe to send again if the
    /// connection dies. Returns its id and the request envelope to send,
    /// compressed if the configuration says so.
    ///
    /// # Errors
    ///
    /// [`StartError`]: too many pending, payload over the limit, method
    /// name too long.
    pub fn start(
        &mut self,
        now: Instant,
        timeout: Option<Duration>,
        method: &str,
        payload: Bytes,
        idempotent: bool,
    ) -> Result<(u64, Bytes), StartError> {
        if self.pending.len() >= self.config.max_pending {
            return Err(StartError::TooManyPending {
                max: self.config.max_pending,
            });
        }
        if payload.len() > self.config.max_payload {
            return Err(StartError::PayloadTooLarge {
                len: payload.len(),
                max: self.config.max_payload,
            });
        }
        let id = self.next_id;
        let timeout_ms = timeout.map_or(0, |t| {
            let ms = t.as_nanos().div_ceil(1_000_000).max(1);
            u32::try_from(ms).unwrap_or(u32::MAX)
        });
        let (payload, compressed) = self.deflate.compress(payload);
        let mut envelope = Envelope::request(id, Utf8Bytes::from(method), timeout_ms, payload);
        envelope.flags = if compressed { FLAG_COMPRESSED } else { 0 }
            | if idempotent { FLAG_IDEMPOTENT } else { 0 };
        let frame = envelope.to_bytes().map_err(StartError::Encode)?;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let deadline = timeout.and_then(|t| now.checked_add(t));
        self.pending.insert(id, deadline, idempotent);
        self.stats.started += 1;
        self.stats.compressed += u64::from(compressed);
        Ok((id, frame))
    }

    /// Ends a pending call at the caller's request. Returns the cancel
    /// envelope to send so the server can stop working on it, or `None` if
    /// the call was not pending (already ended). No event is produced.
    pub fn cancel(&mut self, id: u64) -> Option<Bytes> {
        self.pending.remove(&id)?;
        self.stats.cancelled += 1;
        cancel_frame(id)
    }

    /// Takes one message from the server.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] when it is not a valid envelope, or is a request or
    /// cancel (servers send neither): the peer broke the protocol and the
    /// connection should be dropped (then call
    /// [`handle_disconnect`](Self::handle_disconnect)). A reply whose
    /// compressed payload does not inflate, or inflates past the limit, is
    /// not a connection error: that call fails with a fault and the error
    /// is returned as well.
    pub fn handle_frame(&mut self, frame: Bytes) -> Result<(), DecodeError> {
        let envelope = Envelope::decode(frame, self.config.max_payload)?;
        if !matches!(envelope.kind, Kind::Response | Kind::Error) {
            return Err(DecodeError::UnknownKind(envelope.kind.to_byte()));
        }
        let id = envelope.id;
        if self.pending.remove(&id).is_none() {
            self.stats.late += 1;
            return Ok(());
        }
        let payload = if envelope.is_compressed() {
            match self
                .deflate
                .decompress(&envelope.payload, self.config.max_payload)
            {
                Ok(payload) => payload,
                Err(error) => {
                    let code = match error {
                        DecodeError::PayloadTooLarge { .. } => Fault::TOO_LARGE,
                        _ => Fault::INTERNAL,
                    };
                    self.stats.failed += 1;
                    self.events.push_back(CallEvent::Failed {
                        id,
                        fault: Fault::new(code, error.to_string()),
                    });
                    return Err(error);
                }
            }
        } else {
            envelope.payload
        };
        if envelope.kind == Kind::Response {
            self.stats.completed += 1;
            self.events.push_back(CallEvent::Response { id, payload });
        } else {
            self.stats.failed += 1;
            self.events.push_back(CallEvent::Failed {
                id,
                fault: Fault::decode(&payload),
            });
        }
        Ok(())
    }

    /// The connection is gone: every pending call ends with
    /// [`CallEvent::Disconnected`] (in id order), and queued cancels are
    /// dropped. The machine can be used again on a new connection.
    pub fn handle_disconnect(&mut self) {
        let mut ids: Vec<(u64, bool)> = self.pending.drain().collect();
        ids.sort_unstable();
        self.transmit.clear();
        for (id, idempotent) in ids {
            self.stats.disconnected += 1;
            self.events
                .push_back(CallEvent::Disconnected { id, idempotent });
        }
    }

    /// The next ended call.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<CallEvent> {
        self.events.pop_front()
    }

    /// The next envelope to send on the machine's own account (cancels for
    /// calls that timed out).
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmit.pop_front()
    }

    /// The earliest deadline of a pending call.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.next_deadline()
    }

    /// Ends every call due at or before `now` with
    /// [`CallEvent::TimedOut`] and queues a cancel for each.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((id, _)) = self.pending.pop_due(now) {
            self.stats.timed_out += 1;
            self.events.push_back(CallEvent::TimedOut(id));
            if let Some(frame) = cancel_frame(id) {
                self.transmit.push_back(frame);
            }
        }
    }

    /// Whether `id` is pending.
    #[must_use]
    pub fn is_pending(&self, id: u64) -> bool {
        self.pending.contains_key(&id)
    }

    /// Calls pending now.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> CallsStats {
        self.stats
    }
}

fn cancel_frame(id: u64) -> Option<Bytes> {
    Envelope::reply(Kind::Cancel, id, Bytes::new())
        .to_bytes()
        .ok()
}
