//! Streaming a payload as Start/Chunk…/End frames, and reassembling it.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::{ConfigError, Frame, FrameType, RequestId, non_zero};
use crate::deadline::DeadlineMap;

/// Splits one request into frames: `Start` (payload: the header), one
/// `Chunk` per at most `chunk_size` bytes of the payload, then an empty
/// `End`. An empty payload gives `Start`, `End`.
///
/// An iterator, so the caller can encode frames one at a time as its
/// socket (or its outbox) has room. Chunks are slices of the payload:
/// nothing is copied.
#[derive(Debug, Clone)]
pub struct Streamer {
    request_id: RequestId,
    header: Option<Bytes>,
    payload: Bytes,
    chunk_size: usize,
    ended: bool,
}

impl Streamer {
    /// A streamer for one request. Use the codec's (or router's) maximum
    /// frame payload as `chunk_size`.
    ///
    /// # Errors
    ///
    /// [`StreamerError::ZeroChunkSize`], or
    /// [`StreamerError::HeaderTooLarge`] if `header` is longer than
    /// `chunk_size` (it has to fit the `Start` frame).
    pub fn new(
        request_id: RequestId,
        header: Bytes,
        payload: Bytes,
        chunk_size: usize,
    ) -> Result<Self, StreamerError> {
        if chunk_size == 0 {
            return Err(StreamerError::ZeroChunkSize);
        }
        if header.len() > chunk_size {
            return Err(StreamerError::HeaderTooLarge {
                len: header.len(),
                max: chunk_size,
            });
        }
        Ok(Self {
            request_id,
            header: Some(header),
            payload,
            chunk_size,
            ended: false,
        })
    }
}

impl Iterator for Streamer {
    type Item = Frame;

    fn next(&mut self) -> Option<Frame> {
        if let Some(header) = self.header.take() {
            return Some(Frame::new(FrameType::Start, self.request_id, header));
        }
        if !self.payload.is_empty() {
            let n = self.chunk_size.min(self.payload.len());
            let chunk = self.payload.split_to(n);
            return Some(Frame::new(FrameType::Chunk, self.request_id, chunk));
        }
        if self.ended {
            return None;
        }
        self.ended = true;
        Some(Frame::new(FrameType::End, self.request_id, Bytes::new()))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let chunks = self.payload.len().div_ceil(self.chunk_size);
        let n = usize::from(self.header.is_some()) + chunks + usize::from(!self.ended);
        (n, Some(n))
    }
}

impl ExactSizeIterator for Streamer {}

/// Why a [`Streamer`] could not be built (local misuse).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamerError {
    /// A chunk size of zero.
    ZeroChunkSize,
    /// The header does not fit one frame.
    HeaderTooLarge {
        /// The header's length.
        len: usize,
        /// The chunk size.
        max: usize,
    },
}

impl fmt::Display for StreamerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroChunkSize => f.write_str("streamer chunk size must be at least 1"),
            Self::HeaderTooLarge { len, max } => {
                write!(
                    f,
                    "start header of {len} bytes does not fit a {max}-byte frame"
                )
            }
        }
    }
}

impl std::error::Error for StreamerError {}

/// Limits of an [`Assembler`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AssemblerConfig {
    /// Largest reassembled message (the sum of the `Chunk` payloads; the
    /// `Start` header is not counted, the frame codec bounds it).
    /// Default: 64 MiB.
    pub max_message_size: usize,
    /// Most requests open (started, not ended) at once. Default: 1024.
    pub max_open_requests: usize,
    /// Most bytes buffered across all open requests, so that many large
    /// requests cannot together exhaust memory. Default: 256 MiB; must be
    /// at least `max_message_size`.
    pub max_buffered_bytes: usize,
    /// How long a request may stay open after its `Start`. Default: 30 s.
    pub timeout: Duration,
}

impl AssemblerConfig {
    /// Default of [`max_message_size`](Self::max_message_size): 64 MiB.
    pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;
    /// Default of [`max_open_requests`](Self::max_open_requests): 1024.
    pub const DEFAULT_MAX_OPEN_REQUESTS: usize = 1024;
    /// Default of [`max_buffered_bytes`](Self::max_buffered_bytes): 256 MiB.
    pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 256 * 1024 * 1024;
    /// Default of [`timeout`](Self::timeout): 30 s.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
}

impl Default for AssemblerConfig {
    fn default() -> Self {
        Self {
            max_message_size: Self::DEFAULT_MAX_MESSAGE_SIZE,
            max_open_requests: Self::DEFAULT_MAX_OPEN_REQUESTS,
            max_buffered_bytes: Self::DEFAULT_MAX_BUFFERED_BYTES,
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }
}

/// A reassembled request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its request id.
    pub request_id: RequestId,
    /// The flags of its `Start` frame.
    pub flags: u16,
    /// The payload of its `Start` frame.
    pub header: Bytes,
    /// The concatenated `Chunk` payloads.
    pub payload: Bytes,
}

/// Counters of an [`Assembler`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AssemblerStats {
    /// Messages completed.
    pub completed: u64,
    /// Partial requests that timed out.
    pub expired: u64,
    /// Partial requests abandoned because of a limit.
    pub rejected: u64,
}

#[derive(Debug)]
struct Partial {
    flags: u16,
    header: Bytes,
    chunks: Vec<Bytes>,
    size: usize,
}

/// Reassembles streamed requests (`Start`, `Chunk`…, `End`) per request id.
///
/// Feed every `Start`/`Chunk`/`End` frame to
/// [`handle_frame`](Self::handle_frame); it returns the message when its
/// `End` arrives. Partial requests expire `timeout` after their `Start`:
/// call [`handle_timeout`](Self::handle_timeout) at
/// [`poll_timeout`](Self::poll_timeout), then drain
/// [`poll_expired`](Self::poll_expired) until `None`.
///
/// Limits: at most `max_open_requests` open, each at most
/// `max_message_size` bytes, all together at most `max_buffered_bytes`. An
/// error concerns one frame (and, for the limits, abandons that request);
/// the assembler stays usable, so a server can answer with an `Error` frame
/// for that request id and go on.
///
/// Chunks are kept as received (shared `Bytes`) and concatenated once at
/// `End`, with one allocation of the exact size (none for a single chunk).
#[derive(Debug)]
pub struct Assembler {
    config: AssemblerConfig,
    open: DeadlineMap<RequestId, Partial>,
    expired: VecDeque<RequestId>,
    buffered: usize,
    stats: AssemblerStats,
}

impl Assembler {
    /// Builds an assembler.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] if a limit or the timeout is zero, or
    /// `max_buffered_bytes < max_message_size`.
    pub fn new(config: AssemblerConfig) -> Result<Self, ConfigError> {
        non_zero("max_message_size", config.max_message_size)?;
        non_zero("max_open_requests", config.max_open_requests)?;
        non_zero("max_buffered_bytes", config.max_buffered_bytes)?;
        if config.timeout.is_zero() {
            return Err(ConfigError::Zero { field: "timeout" });
        }
        if config.max_message_size > config.max_buffered_bytes {
            return Err(ConfigError::TooLarge {
                field: "max_message_size",
                value: config.max_message_size,
                max: config.max_buffered_bytes,
            });
        }
        Ok(Self {
            config,
            open: DeadlineMap::new(),
            expired: VecDeque::new(),
            buffered: 0,
            stats: AssemblerStats::default(),
        })
    }

    /// Takes one frame of a streamed request.
    ///
    /// Returns the message on its `End`, `Ok(None)` otherwise.
    ///
    /// # Errors
    ///
    /// [`AssembleError`]: `Chunk`/`End` for a request that is not open,
    /// a second `Start` for an open one, a frame type other than
    /// `Start`/`Chunk`/`End`, too many open requests, a message or total
    /// over its limit (the request is then abandoned: later frames for it
    /// are unknown).
    pub fn handle_frame(
        &mut self,
        frame: Frame,
        now: Instant,
    ) -> Result<Option<Message>, AssembleError> {
        let id = frame.request_id;
        match frame.frame_type {
            FrameType::Start => {
                if self.open.contains_key(&id) {
                    return Err(AssembleError::DuplicateStart(id));
                }
                if self.open.len() >= self.config.max_open_requests {
                    self.stats.rejected += 1;
                    return Err(AssembleError::TooManyOpen {
                        max: self.config.max_open_requests,
                    });
                }
                let deadline = super::deadline(now, self.config.timeout);
                self.open.insert(
                    id,
                    Some(deadline),
                    Partial {
                        flags: frame.flags,
                        header: frame.payload,
                        chunks: Vec::new(),
                        size: 0,
                    },
                );
                Ok(None)
            }
            FrameType::Chunk => {
                let Some(partial) = self.open.get_mut(&id) else {
                    return Err(AssembleError::UnknownRequest(id));
                };
                let len = frame.payload.len();
                let size = partial.size.saturating_add(len);
                if size > self.config.max_message_size {
                    self.abandon(id);
                    return Err(AssembleError::MessageTooLarge {
                        request_id: id,
                        size,
                        max: self.config.max_message_size,
                    });
                }
                if self.buffered.saturating_add(len) > self.config.max_buffered_bytes {
                    self.abandon(id);
                    return Err(AssembleError::BufferFull {
                        request_id: id,
                        max: self.config.max_buffered_bytes,
                    });
                }
                partial.size = size;
                if !frame.payload.is_empty() {
                    partial.chunks.push(frame.payload);
                }
                self.buffered += len;
                Ok(None)
            }
            FrameType::End => {
                let Some(partial) = self.remove(id) else {
                    return Err(AssembleError::UnknownRequest(id));
                };
                self.stats.completed += 1;
                let payload = match partial.chunks.as_slice() {
                    [] => Bytes::new(),
                    [one] => one.clone(),
                    many => {
                        let mut out = BytesMut::with_capacity(partial.size);
                        many.iter().for_each(|c| out.extend_from_slice(c));
                        out.freeze()
                    }
                };
                Ok(Some(Message {
                    request_id: id,
                    flags: partial.flags,
                    header: partial.header,
                    payload,
                }))
            }
            other => Err(AssembleError::UnexpectedType(other)),
        }
    }

    /// Forgets an open request (the peer cancelled it). True if it was open.
    pub fn cancel(&mut self, request_id: RequestId) -> bool {
        self.remove(request_id).is_some()
    }

    /// The earliest deadline of an open request, `None` if none is open.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.open.next_deadline()
    }

    /// Expires every open request whose deadline is `<= now`; their ids
    /// come out of [`poll_expired`](Self::poll_expired).
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((id, partial)) = self.open.pop_due(now) {
            self.buffered -= partial.size;
            self.stats.expired += 1;
            self.expired.push_back(id);
        }
    }

    /// The next request that expired in [`handle_timeout`](Self::handle_timeout).
    #[must_use]
    pub fn poll_expired(&mut self) -> Option<RequestId> {
        self.expired.pop_front()
    }

    /// Requests open now.
    #[must_use]
    pub fn open_requests(&self) -> usize {
        self.open.len()
    }

    /// Chunk bytes buffered now, across all open requests.
    #[must_use]
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> AssemblerStats {
        self.stats
    }

    fn abandon(&mut self, id: RequestId) {
        self.stats.rejected += 1;
        let _ = self.remove(id);
    }

    fn remove(&mut self, id: RequestId) -> Option<Partial> {
        let partial = self.open.remove(&id)?;
        self.buffered -= partial.size;
        Some(partial)
    }
}

/// Why a frame could not be assembled. All but
/// [`UnexpectedType`](Self::UnexpectedType) are the peer's fault and
/// concern one request; the assembler stays usable.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AssembleError {
    /// A `Chunk` or `End` for a request that is not open (never started,
    /// already ended, expired or abandoned).
    UnknownRequest(RequestId),
    /// A `Start` for a request that is already open.
    DuplicateStart(RequestId),
    /// A `Start` while `max_open_requests` are open.
    TooManyOpen {
        /// The limit.
        max: usize,
    },
    /// The request grew over `max_message_size`; it was abandoned.
    MessageTooLarge {
        /// The request.
        request_id: RequestId,
        /// Its size with this chunk.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// All open requests together would buffer more than
    /// `max_buffered_bytes`; this request was abandoned.
    BufferFull {
        /// The request.
        request_id: RequestId,
        /// The limit.
        max: usize,
    },
    /// A `Response` or `Error` frame: not part of a streamed request.
    UnexpectedType(FrameType),
}

impl fmt::Display for AssembleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownRequest(id) => write!(f, "frame for request {id}, which is not open"),
            Self::DuplicateStart(id) => write!(f, "second start for open request {id}"),
            Self::TooManyOpen { max } => write!(f, "more than {max} requests open"),
            Self::MessageTooLarge {
                request_id,
                size,
                max,
            } => write!(
                f,
                "request {request_id} grew to {size} bytes, more than {max}"
            ),
            Self::BufferFull { request_id, max } => write!(
                f,
                "request {request_id} abandoned: open requests would buffer more than {max} bytes"
            ),
            Self::UnexpectedType(t) => write!(f, "{t:?} frame is not part of a streamed request"),
        }
    }
}

impl std::error::Error for AssembleError {}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::broker::FrameCodec;

    fn id(n: u8) -> RequestId {
        RequestId::from_bytes([n; 16])
    }

    fn frame(t: FrameType, n: u8, payload: &'static [u8]) -> Frame {
        Frame::new(t, id(n), Bytes::from_static(payload))
    }

    fn small(max_message: usize, max_open: usize, max_buffered: usize) -> Assembler {
        Assembler::new(AssemblerConfig {
            max_message_size: max_message,
            max_open_requests: max_open,
            max_buffered_bytes: max_buffered,
            timeout: Duration::from_secs(1),
        })
        .expect("valid")
    }

    #[test]
    fn streamer_frames() {
        let s = Streamer::new(
            id(1),
            Bytes::from_static(b"h"),
            Bytes::from_static(b"abcde"),
            2,
        )
        .expect("valid");
        assert_eq!(s.len(), 5);
        let frames: Vec<Frame> = s.collect();
        let kinds: Vec<FrameType> = frames.iter().map(|f| f.frame_type).collect();
        use FrameType::{Chunk, End, Start};
        assert_eq!(kinds, [Start, Chunk, Chunk, Chunk, End]);
        assert_eq!(&frames[0].payload[..], b"h");
        assert_eq!(&frames[3].payload[..], b"e");
        assert!(frames[4].payload.is_empty());
        let empty: Vec<FrameType> = Streamer::new(id(1), Bytes::new(), Bytes::new(), 9)
            .expect("valid")
            .map(|f| f.frame_type)
            .collect();
        assert_eq!(empty, [Start, End]);
    }

    #[test]
    fn streamer_errors() {
        assert_eq!(
            Streamer::new(id(1), Bytes::new(), Bytes::new(), 0).err(),
            Some(StreamerError::ZeroChunkSize)
        );
        let err = Streamer::new(id(1), Bytes::from_static(b"abc"), Bytes::new(), 2)
            .expect_err("header too large");
        assert_eq!(err, StreamerError::HeaderTooLarge { len: 3, max: 2 });
        assert!(err.to_string().contains('3'));
        assert!(!StreamerError::ZeroChunkSize.to_string().is_empty());
    }

    #[test]
    fn interleaved_requests_assemble_independently() {
        let mut a = Assembler::new(AssemblerConfig::default()).expect("valid");
        let now = crate::test_util::epoch();
        for f in [
            frame(FrameType::Start, 1, b"h1"),
            frame(FrameType::Start, 2, b""),
            frame(FrameType::Chunk, 1, b"ab"),
            frame(FrameType::Chunk, 2, b"x"),
            frame(FrameType::Chunk, 1, b"cd"),
        ] {
            assert_eq!(a.handle_frame(f, now), Ok(None));
        }
        assert_eq!(a.open_requests(), 2);
        assert_eq!(a.buffered_bytes(), 5);
        let m = a
            .handle_frame(frame(FrameType::End, 1, b""), now)
            .expect("ok")
            .expect("complete");
        assert_eq!((&m.header[..], &m.payload[..]), (&b"h1"[..], &b"abcd"[..]));
        let m = a
            .handle_frame(frame(FrameType::End, 2, b""), now)
            .expect("ok")
            .expect("complete");
        assert_eq!(&m.payload[..], b"x");
        assert_eq!(a.buffered_bytes(), 0);
        assert_eq!(a.stats().completed, 2);
        assert_eq!(a.poll_timeout(), None);
    }

    #[test]
    fn every_error_path() {
        let now = crate::test_util::epoch();
        let mut a = small(4, 2, 6);
        assert_eq!(
            a.handle_frame(frame(FrameType::Chunk, 9, b"x"), now),
            Err(AssembleError::UnknownRequest(id(9)))
        );
        assert_eq!(
            a.handle_frame(frame(FrameType::End, 9, b""), now),
            Err(AssembleError::UnknownRequest(id(9)))
        );
        assert_eq!(
            a.handle_frame(frame(FrameType::Response, 9, b""), now),
            Err(AssembleError::UnexpectedType(FrameType::Response))
        );
        assert_eq!(
            a.handle_frame(frame(FrameType::Start, 1, b""), now),
            Ok(None)
        );
        assert_eq!(
            a.handle_frame(frame(FrameType::Start, 1, b""), now),
            Err(AssembleError::DuplicateStart(id(1)))
        );
        assert_eq!(
            a.handle_frame(frame(FrameType::Start, 2, b""), now),
            Ok(None)
        );
        assert_eq!(
            a.handle_frame(frame(FrameType::Start, 3, b""), now),
            Err(AssembleError::TooManyOpen { max: 2 })
        );
        // 4 bytes fit, a fifth does not: the request is abandoned.
        assert_eq!(
            a.handle_frame(frame(FrameType::Chunk, 1, b"abcd"), now),
            Ok(None)
        );
        assert_eq!(
            a.handle_frame(frame(FrameType::Chunk, 1, b"e"), now),
            Err(AssembleError::MessageTooLarge {
                request_id: id(1),
                size: 5,
                max: 4
            })
        );
        assert_eq!(
            a.handle_frame(frame(FrameType::End, 1, b""), now),
            Err(AssembleError::UnknownRequest(id(1)))
        );
        assert_eq!(a.buffered_bytes(), 0);
        // Total limit: 4 + 3 > 6.
        assert_eq!(
            a.handle_frame(frame(FrameType::Start, 3, b""), now),
            Ok(None)
        );
        assert_eq!(
            a.handle_frame(frame(FrameType::Chunk, 2, b"abcd"), now),
            Ok(None)
        );
        assert_eq!(
            a.handle_frame(frame(FrameType::Chunk, 3, b"abc"), now),
            Err(AssembleError::BufferFull {
                request_id: id(3),
                max: 6
            })
        );
        assert_eq!(a.buffered_bytes(), 4);
        assert_eq!(a.stats().rejected, 3);
        for e in [
            AssembleError::UnknownRequest(id(1)),
            AssembleError::DuplicateStart(id(1)),
            AssembleError::TooManyOpen { max: 2 },
            AssembleError::UnexpectedType(FrameType::Error),
        ] {
            assert!(!e.to_string().is_empty());
        }
        assert!(a.cancel(id(2)));
        assert!(!a.cancel(id(2)));
        assert_eq!(a.buffered_bytes(), 0);
    }

    #[test]
    fn partial_requests_expire_at_their_deadline() {
        let t0 = crate::test_util::epoch();
        let mut a = small(10, 10, 10);
        a.handle_frame(frame(FrameType::Start, 1, b""), t0)
            .expect("ok");
        let t1 = t0 + Duration::from_millis(500);
        a.handle_frame(frame(FrameType::Start, 2, b""), t1)
            .expect("ok");
        assert_eq!(a.poll_timeout(), Some(t0 + Duration::from_secs(1)));
        a.handle_timeout(t0 + Duration::from_millis(999));
        assert_eq!(a.poll_expired(), None);
        a.handle_timeout(t0 + Duration::from_secs(1));
        assert_eq!(a.poll_expired(), Some(id(1)));
        assert_eq!(a.poll_expired(), None);
        // The handled deadline is gone: the next one is later than now.
        assert_eq!(a.poll_timeout(), Some(t1 + Duration::from_secs(1)));
        a.handle_timeout(t1 + Duration::from_secs(5));
        assert_eq!(a.poll_expired(), Some(id(2)));
        assert_eq!(a.poll_timeout(), None);
        assert_eq!(a.stats().expired, 2);
        assert_eq!(
            a.handle_frame(frame(FrameType::Chunk, 1, b"x"), t1),
            Err(AssembleError::UnknownRequest(id(1)))
        );
    }

    #[test]
    fn config_is_validated() {
        let ok = AssemblerConfig::default();
        assert!(Assembler::new(ok.clone()).is_ok());
        let mut c = ok.clone();
        c.max_open_requests = 0;
        assert!(Assembler::new(c).is_err());
        let mut c = ok.clone();
        c.timeout = Duration::ZERO;
        assert!(Assembler::new(c).is_err());
        let mut c = ok.clone();
        c.max_buffered_bytes = c.max_message_size - 1;
        assert!(matches!(
            Assembler::new(c),
            Err(ConfigError::TooLarge { .. })
        ));
    }

    proptest! {
        /// Any payload, any chunk size, any chunking of the encoded byte
        /// stream: the assembled message is the payload.
        #[test]
        fn streamer_to_assembler_round_trip(
            payload in proptest::collection::vec(any::<u8>(), 0..5000),
            header in proptest::collection::vec(any::<u8>(), 0..8),
            chunk_size in 8usize..700,
            cuts in proptest::collection::vec(any::<usize>(), 0..30),
        ) {
            let codec = FrameCodec::new(crate::broker::FrameConfig { max_payload: chunk_size })
                .expect("valid");
            let mut wire = BytesMut::new();
            let streamer = Streamer::new(
                id(5),
                Bytes::from(header.clone()),
                Bytes::from(payload.clone()),
                chunk_size,
            ).expect("valid");
            for f in streamer {
                codec.encode(&f, &mut wire).expect("fits");
            }
            let mut points: Vec<usize> = cuts.iter().map(|x| x % (wire.len() + 1)).collect();
            points.extend([0, wire.len()]);
            points.sort_unstable();
            let mut a = small(5000, 1, 5000);
            let now = crate::test_util::epoch();
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for w in points.windows(2) {
                buf.extend_from_slice(&wire[w[0]..w[1]]);
                while let Some(f) = codec.decode(&mut buf).expect("valid") {
                    if let Some(m) = a.handle_frame(f, now).expect("valid stream") {
                        out.push(m);
                    }
                }
            }
            prop_assert_eq!(out.len(), 1);
            prop_assert_eq!(&out[0].payload[..], &payload[..]);
            prop_assert_eq!(&out[0].header[..], &header[..]);
            prop_assert_eq!(a.buffered_bytes(), 0);
        }

        /// Arbitrary frame sequences never break the limits.
        #[test]
        fn arbitrary_frames_respect_limits(
            ops in proptest::collection::vec((0u8..6, 0u8..6, 0usize..40, 0u64..3000), 0..200),
        ) {
            let mut a = small(50, 3, 80);
            let t0 = crate::test_util::epoch();
            let mut now = t0;
            for (t, n, len, dt) in ops {
                now += Duration::from_millis(dt);
                if t == 0 {
                    a.handle_timeout(now);
                    while a.poll_expired().is_some() {}
                    prop_assert!(a.poll_timeout().is_none_or(|d| d > now));
                    continue;
                }
                let f = Frame::new(
                    FrameType::from_u8(t).expect("1..=5"),
                    id(n),
                    Bytes::from(vec![0; len]),
                );
                let _ = a.handle_frame(f, now);
                prop_assert!(a.open_requests() <= 3);
                prop_assert!(a.buffered_bytes() <= 80);
            }
        }
    }
}
