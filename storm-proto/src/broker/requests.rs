//! The consumer's side: request ids, deadlines, cancellation.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::RngCore;

use super::{ConfigError, ErrorCode, ErrorPayload, Frame, FrameType, RequestId, non_zero};
use crate::deadline::DeadlineMap;

/// Limits of a [`Requests`] machine.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestsConfig {
    /// Most requests pending at once. Default: 1024.
    pub max_pending: usize,
}

impl RequestsConfig {
    /// Default of [`max_pending`](Self::max_pending): 1024.
    pub const DEFAULT_MAX_PENDING: usize = 1024;
}

impl Default for RequestsConfig {
    fn default() -> Self {
        Self {
            max_pending: Self::DEFAULT_MAX_PENDING,
        }
    }
}

/// What happened to a pending request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestEvent {
    /// (A piece of) the response. `last` is false while
    /// [`FLAG_MORE`](super::FLAG_MORE) says more pieces follow; the request
    /// is finished with the last piece.
    Response {
        /// The request.
        request_id: RequestId,
        /// The piece.
        payload: Bytes,
        /// True for the final piece.
        last: bool,
    },
    /// The request failed (an `Error` frame from the broker or provider).
    Failed {
        /// The request.
        request_id: RequestId,
        /// What the `Error` frame said.
        error: ErrorPayload,
    },
    /// The request's deadline passed before its final response.
    TimedOut(RequestId),
}

/// Counters of a [`Requests`] machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestsStats {
    /// Requests started.
    pub started: u64,
    /// Requests finished with a final response.
    pub completed: u64,
    /// Requests finished with an `Error` frame.
    pub failed: u64,
    /// Requests that timed out.
    pub timed_out: u64,
    /// Requests cancelled by the caller.
    pub cancelled: u64,
    /// `Response`/`Error` frames for no pending request (after a timeout or
    /// cancellation, or never sent): ignored.
    pub late_frames: u64,
}

/// Request/response correlation for a consumer.
///
/// [`start`](Self::start) picks a fresh random request id and a deadline;
/// the caller streams the request under that id (see
/// [`Streamer`](super::Streamer)). Every `Response`/`Error` frame from the
/// broker goes to [`handle_frame`](Self::handle_frame); frames for requests
/// that are no longer pending (timed out, cancelled, finished) are ignored
/// and counted in [`RequestsStats::late_frames`].
///
/// Drain order: after `handle_frame` or `handle_timeout`, drain
/// [`poll_event`](Self::poll_event) until `None`, then re-arm the timer
/// from [`poll_timeout`](Self::poll_timeout).
#[derive(Debug)]
pub struct Requests {
    max_pending: usize,
    pending: DeadlineMap<RequestId, ()>,
    events: VecDeque<RequestEvent>,
    stats: RequestsStats,
}

impl Requests {
    /// Builds the machine.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] if `max_pending` is zero.
    pub fn new(config: RequestsConfig) -> Result<Self, ConfigError> {
        non_zero("max_pending", config.max_pending)?;
        Ok(Self {
            max_pending: config.max_pending,
            pending: DeadlineMap::new(),
            events: VecDeque::new(),
            stats: RequestsStats::default(),
        })
    }

    /// Starts a request with a fresh id from `rng`, due `timeout` after
    /// `now`.
    ///
    /// # Errors
    ///
    /// [`RequestsError::TooManyPending`], or [`RequestsError::IdCollision`]
    /// if the RNG produced pending ids eight times in a row (a broken RNG).
    pub fn start(
        &mut self,
        rng: &mut (impl RngCore + ?Sized),
        now: Instant,
        timeout: Duration,
    ) -> Result<RequestId, RequestsError> {
        if self.pending.len() >= self.max_pending {
            return Err(RequestsError::TooManyPending {
                max: self.max_pending,
            });
        }
        for _ in 0..8 {
            let id = RequestId::random(rng);
            if !self.pending.contains_key(&id) {
                let deadline = super::deadline(now, timeout);
                self.pending.insert(id, Some(deadline), ());
                self.stats.started += 1;
                return Ok(id);
            }
        }
        Err(RequestsError::IdCollision)
    }

    /// Cancels a pending request. Returns the `Error` frame
    /// ([`ErrorCode::CANCELLED`]) to send to the broker so the provider can
    /// stop, or `None` if the request was not pending.
    pub fn cancel(&mut self, request_id: RequestId) -> Option<Frame> {
        self.pending.remove(&request_id)?;
        self.stats.cancelled += 1;
        let payload = ErrorPayload::new(ErrorCode::CANCELLED, "cancelled by consumer").encode();
        Some(Frame::new(FrameType::Error, request_id, payload))
    }

    /// Takes a frame from the broker.
    ///
    /// # Errors
    ///
    /// [`RequestsError::UnexpectedFrame`] for `Start`, `Chunk` or `End`
    /// (the broker never sends those to a consumer: a protocol violation).
    pub fn handle_frame(&mut self, frame: Frame) -> Result<(), RequestsError> {
        let id = frame.request_id;
        match frame.frame_type {
            FrameType::Response => {
                if !self.pending.contains_key(&id) {
                    self.stats.late_frames += 1;
                    return Ok(());
                }
                let last = !frame.has_more();
                if last {
                    self.pending.remove(&id);
                    self.stats.completed += 1;
                }
                self.events.push_back(RequestEvent::Response {
                    request_id: id,
                    payload: frame.payload,
                    last,
                });
            }
            FrameType::Error => {
                if self.pending.remove(&id).is_none() {
                    self.stats.late_frames += 1;
                    return Ok(());
                }
                self.stats.failed += 1;
                self.events.push_back(RequestEvent::Failed {
                    request_id: id,
                    error: ErrorPayload::decode(&frame.payload),
                });
            }
            other => return Err(RequestsError::UnexpectedFrame(other)),
        }
        Ok(())
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<RequestEvent> {
        self.events.pop_front()
    }

    /// The earliest deadline of a pending request.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.next_deadline()
    }

    /// Times out every request due at or before `now`
    /// ([`RequestEvent::TimedOut`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((id, ())) = self.pending.pop_due(now) {
            self.stats.timed_out += 1;
            self.events.push_back(RequestEvent::TimedOut(id));
        }
    }

    /// True if `request_id` is pending.
    #[must_use]
    pub fn is_pending(&self, request_id: RequestId) -> bool {
        self.pending.contains_key(&request_id)
    }

    /// Requests pending now.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> RequestsStats {
        self.stats
    }
}

/// Why a [`Requests`] operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestsError {
    /// Local: `max_pending` requests are pending.
    TooManyPending {
        /// The limit.
        max: usize,
    },
    /// Local: the RNG kept producing ids that are pending.
    IdCollision,
    /// Remote: the broker sent a frame a consumer never receives.
    UnexpectedFrame(FrameType),
}

impl fmt::Display for RequestsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooManyPending { max } => write!(f, "{max} requests already pending"),
            Self::IdCollision => f.write_str("could not pick an unused request id"),
            Self::UnexpectedFrame(t) => write!(f, "broker sent a {t:?} frame to a consumer"),
        }
    }
}

impl std::error::Error for RequestsError {}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::broker::FLAG_MORE;

    fn response(id: RequestId, payload: &'static [u8], more: bool) -> Frame {
        let mut f = Frame::new(FrameType::Response, id, Bytes::from_static(payload));
        if more {
            f.flags = FLAG_MORE;
        }
        f
    }

    #[test]
    fn responses_match_pending_requests() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut r = Requests::new(RequestsConfig::default()).expect("valid");
        let now = crate::test_util::epoch();
        let a = r
            .start(&mut rng, now, Duration::from_secs(1))
            .expect("room");
        let b = r
            .start(&mut rng, now, Duration::from_secs(2))
            .expect("room");
        assert_ne!(a, b);
        assert_eq!(r.pending(), 2);
        r.handle_frame(response(b, b"part", true)).expect("ok");
        r.handle_frame(response(b, b"end", false)).expect("ok");
        let err = ErrorPayload::new(ErrorCode(100), "app").encode();
        r.handle_frame(Frame::new(FrameType::Error, a, err))
            .expect("ok");
        assert_eq!(
            r.poll_event(),
            Some(RequestEvent::Response {
                request_id: b,
                payload: Bytes::from_static(b"part"),
                last: false
            })
        );
        assert!(matches!(
            r.poll_event(),
            Some(RequestEvent::Response { last: true, .. })
        ));
        assert!(matches!(
            r.poll_event(),
            Some(RequestEvent::Failed { request_id, error }) if request_id == a && error.code == ErrorCode(100)
        ));
        assert_eq!(r.poll_event(), None);
        assert_eq!(r.pending(), 0);
        assert_eq!(r.poll_timeout(), None);
        let s = r.stats();
        assert_eq!((s.started, s.completed, s.failed), (2, 1, 1));
    }

    #[test]
    fn timeouts_cancellation_and_late_frames() {
        let mut rng = StdRng::seed_from_u64(4);
        let mut r = Requests::new(RequestsConfig::default()).expect("valid");
        let t0 = crate::test_util::epoch();
        let a = r.start(&mut rng, t0, Duration::from_secs(1)).expect("room");
        let b = r.start(&mut rng, t0, Duration::from_secs(3)).expect("room");
        assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_secs(1)));
        r.handle_timeout(t0 + Duration::from_millis(999));
        assert_eq!(r.poll_event(), None);
        r.handle_timeout(t0 + Duration::from_secs(1));
        assert_eq!(r.poll_event(), Some(RequestEvent::TimedOut(a)));
        assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_secs(3)));
        assert!(!r.is_pending(a) && r.is_pending(b));
        let cancel = r.cancel(b).expect("pending");
        assert_eq!(cancel.frame_type, FrameType::Error);
        assert_eq!(
            ErrorPayload::decode(&cancel.payload).code,
            ErrorCode::CANCELLED
        );
        assert_eq!(r.cancel(b), None);
        r.handle_frame(response(a, b"late", false)).expect("ok");
        r.handle_frame(Frame::new(FrameType::Error, b, Bytes::new()))
            .expect("ok");
        assert_eq!(r.poll_event(), None);
        let s = r.stats();
        assert_eq!((s.timed_out, s.cancelled, s.late_frames), (1, 1, 2));
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn errors() {
        let mut rng = StdRng::seed_from_u64(5);
        let now = crate::test_util::epoch();
        let mut r = Requests::new(RequestsConfig { max_pending: 1 }).expect("valid");
        r.start(&mut rng, now, Duration::from_secs(1))
            .expect("room");
        let err = r
            .start(&mut rng, now, Duration::from_secs(1))
            .expect_err("full");
        assert_eq!(err, RequestsError::TooManyPending { max: 1 });
        assert!(err.to_string().contains('1'));
        let e = r
            .handle_frame(Frame::new(
                FrameType::Chunk,
                RequestId::default(),
                Bytes::new(),
            ))
            .expect_err("consumers get no chunks");
        assert_eq!(e, RequestsError::UnexpectedFrame(FrameType::Chunk));
        assert!(!e.to_string().is_empty());
        assert!(Requests::new(RequestsConfig { max_pending: 0 }).is_err());

        /// An RNG that always returns zero.
        struct Zero;
        impl RngCore for Zero {
            fn next_u32(&mut self) -> u32 {
                0
            }
            fn next_u64(&mut self) -> u64 {
                0
            }
            fn fill_bytes(&mut self, dst: &mut [u8]) {
                dst.fill(0);
            }
        }
        let mut r = Requests::new(RequestsConfig::default()).expect("valid");
        r.start(&mut Zero, now, Duration::from_secs(1))
            .expect("first");
        assert_eq!(
            r.start(&mut Zero, now, Duration::from_secs(1)),
            Err(RequestsError::IdCollision)
        );
        assert!(!RequestsError::IdCollision.to_string().is_empty());
    }
}
