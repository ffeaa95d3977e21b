//! Keep-alive timing: periodic pings, missed-pong counting, dead-peer
//! detection, round-trip time, and an idle timeout for plain TCP.
//!
//! Two machines, both driven by `now` and neither doing any I/O:
//!
//! - [`Heartbeat`] pings every [`interval`](HeartbeatConfig::interval) and
//!   declares the peer dead after [`max_missed`](HeartbeatConfig::max_missed)
//!   consecutive pings went unanswered; any pong resets the count, whatever
//!   its payload, since it proves the peer alive. Each ping carries an
//!   8-byte counter, so the pong that echoes it gives the round-trip time.
//!   It can also run an idle timeout.
//! - [`IdleTimer`] is the idle timeout alone, for plain TCP where there is no
//!   ping: no inbound traffic for [`idle`](IdleTimer::new) gives
//!   [`HeartbeatEvent::IdleTimeout`].
//!
//! # Timing rules
//!
//! The ping timer is periodic from [`Heartbeat::new`]: the first tick is at
//! `start + interval`, each later one `interval` after the tick before it was
//! handled (`now + interval`, so a late `handle_timeout` never causes a burst
//! of catch-up pings, and a suspended process is not mistaken for a dead
//! peer). At each tick, if `max_missed` pings are still unanswered the peer
//! is dead; otherwise one more ping is sent. With `interval = 15s` and
//! `max_missed = 3` a silent peer gets pings at 15, 30 and 45 seconds and is
//! declared dead at 60; a pong in between (at 17 seconds, say) resets the
//! count, and the peer is dead only after three unanswered pings in a row.
//!
//! Nothing fires before its deadline, and everything due fires at the first
//! [`handle_timeout`](Heartbeat::handle_timeout) at or after it. Time never
//! runs backwards inside a machine: a `now` earlier than one already seen is
//! treated as the latest one seen. After `handle_timeout(now)`,
//! [`poll_timeout`](Heartbeat::poll_timeout) is `None` or later than `now`.
//!
//! # Driving
//!
//! After every input (`handle_timeout`, `handle_pong`, `handle_activity`)
//! drain [`poll_event`](Heartbeat::poll_event) until `None`, then re-arm the
//! timer from `poll_timeout`:
//!
//! ```
//! use std::time::{Duration, Instant};
//! use storm_proto::heartbeat::{Heartbeat, HeartbeatConfig, HeartbeatEvent};
//!
//! # fn main() -> Result<(), storm_proto::heartbeat::HeartbeatConfigError> {
//! let start = Instant::now(); // an adapter reads the clock; the core never does
//! let config = HeartbeatConfig::default().with_interval(Duration::from_secs(15));
//! let mut heartbeat = Heartbeat::new(config, start)?;
//! assert_eq!(heartbeat.poll_timeout(), Some(start + Duration::from_secs(15)));
//!
//! // The timer fired: send the ping it asks for (e.g. ws::Connection::send_ping).
//! let t = start + Duration::from_secs(15);
//! heartbeat.handle_timeout(t);
//! let Some(HeartbeatEvent::SendPing(payload)) = heartbeat.poll_event() else { unreachable!() };
//!
//! // Two seconds later the pong echoes the payload: liveness and an RTT sample.
//! heartbeat.handle_pong(t + Duration::from_secs(2), &payload);
//! assert_eq!(heartbeat.poll_event(), Some(HeartbeatEvent::Rtt(Duration::from_secs(2))));
//! assert_eq!(heartbeat.poll_event(), None);
//! assert_eq!(heartbeat.missed(), 0);
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

/// Length of the payload of the pings a [`Heartbeat`] sends: a big-endian
/// counter.
pub const PING_PAYLOAD_LEN: usize = 8;

/// At most this many sent pings are remembered for RTT measurement (never
/// more than `max_missed`); a pong for an older ping still counts as
/// liveness but gives no RTT. Bounds memory to 16 bytes per entry.
pub const MAX_TRACKED_PINGS: usize = 64;

/// What a [`Heartbeat`] or [`IdleTimer`] asks of its driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeartbeatEvent {
    /// Send a ping carrying this payload now (a WebSocket ping frame, or an
    /// application-level ping on plain TCP). The peer's pong should echo it.
    SendPing([u8; PING_PAYLOAD_LEN]),
    /// The peer missed `missed` consecutive pongs: close (or abort) the
    /// connection. Final: the machine has no deadline and emits nothing more.
    PeerDead {
        /// How many pings went unanswered (the configured `max_missed`).
        missed: u32,
    },
    /// A pong echoed one of our pings: the round-trip time it measured.
    Rtt(Duration),
    /// Nothing arrived from the peer for the configured idle timeout.
    IdleTimeout,
}

/// How a [`Heartbeat`] pings and when it gives up on the peer.
///
/// `#[non_exhaustive]`, so a new field is not a breaking change: start from
/// [`default`](Self::default) and chain the `with_*` methods; the fields
/// stay public, to read and to set on a value you own.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeartbeatConfig {
    /// Time between pings; zero disables pinging (and dead-peer detection).
    /// Default 30 s.
    pub interval: Duration,
    /// Consecutive unanswered pings after which the peer is dead; must be at
    /// least 1. Default 3.
    pub max_missed: u32,
    /// No inbound traffic (pongs and [`handle_activity`](Heartbeat::handle_activity))
    /// for this long gives [`HeartbeatEvent::IdleTimeout`]; zero disables.
    /// Default zero.
    pub idle_timeout: Duration,
    /// Whether any inbound traffic proves the peer alive, like a pong does
    /// (resetting the missed count, without an RTT sample). Default `false`:
    /// only pongs count, so a peer that keeps sending but never answers pings
    /// (a stuck reader) is still detected.
    pub traffic_is_liveness: bool,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            max_missed: 3,
            idle_timeout: Duration::ZERO,
            traffic_is_liveness: false,
        }
    }
}

impl HeartbeatConfig {
    /// Time between pings; zero disables pinging (default 30 s).
    #[must_use]
    pub const fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Consecutive unanswered pings after which the peer is dead, at
    /// least 1 (default 3).
    #[must_use]
    pub const fn with_max_missed(mut self, max_missed: u32) -> Self {
        self.max_missed = max_missed;
        self
    }

    /// No inbound traffic for this long gives
    /// [`HeartbeatEvent::IdleTimeout`]; zero disables (default zero).
    #[must_use]
    pub const fn with_idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    /// Whether any inbound traffic proves the peer alive, like a pong
    /// (default `false`).
    #[must_use]
    pub const fn with_traffic_is_liveness(mut self, traffic_is_liveness: bool) -> Self {
        self.traffic_is_liveness = traffic_is_liveness;
        self
    }

    /// Checks the configuration.
    ///
    /// # Errors
    ///
    /// [`HeartbeatConfigError::ZeroMaxMissed`] if `max_missed` is 0.
    pub fn validate(&self) -> Result<(), HeartbeatConfigError> {
        if self.max_missed == 0 {
            return Err(HeartbeatConfigError::ZeroMaxMissed);
        }
        Ok(())
    }
}

/// A [`HeartbeatConfig`] that cannot work (local misuse).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeartbeatConfigError {
    /// `max_missed` is 0: the peer would be dead before it could answer.
    ZeroMaxMissed,
}

impl fmt::Display for HeartbeatConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroMaxMissed => f.write_str("heartbeat max_missed must be at least 1"),
        }
    }
}

impl std::error::Error for HeartbeatConfigError {}

/// Ping timing and dead-peer detection for one connection.
///
/// Inputs: [`handle_timeout`](Self::handle_timeout) when the timer from
/// [`poll_timeout`](Self::poll_timeout) fires, [`handle_pong`](Self::handle_pong)
/// for every pong, [`handle_activity`](Self::handle_activity) for any other
/// inbound traffic. After each input drain [`poll_event`](Self::poll_event)
/// until `None` (events come in the order they happened; one
/// `handle_timeout` gives at most a ping or `PeerDead`, then at most an
/// `IdleTimeout`), then re-arm the timer. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Heartbeat {
    interval: Duration,
    max_missed: u32,
    traffic_is_liveness: bool,
    /// Latest `now` seen.
    now: Instant,
    next_ping: Option<Instant>,
    missed: u32,
    next_counter: u64,
    /// Sent pings still remembered for RTT, oldest first, counters ascending.
    in_flight: VecDeque<(u64, Instant)>,
    last_rtt: Option<Duration>,
    dead: bool,
    /// `None` when the idle timeout is off (the default): boxed, because
    /// every connection carries a heartbeat and most carry no idle timeout.
    idle: Option<Box<IdleTimer>>,
    events: VecDeque<HeartbeatEvent>,
}

impl Heartbeat {
    /// Starts the heartbeat of a connection established at `now`.
    ///
    /// # Errors
    ///
    /// The configuration's [`validate`](HeartbeatConfig::validate) error.
    pub fn new(config: HeartbeatConfig, now: Instant) -> Result<Self, HeartbeatConfigError> {
        config.validate()?;
        let next_ping = if config.interval.is_zero() {
            None
        } else {
            now.checked_add(config.interval)
        };
        Ok(Self {
            interval: config.interval,
            max_missed: config.max_missed,
            traffic_is_liveness: config.traffic_is_liveness,
            now,
            next_ping,
            missed: 0,
            next_counter: 0,
            in_flight: VecDeque::new(),
            last_rtt: None,
            dead: false,
            idle: (!config.idle_timeout.is_zero())
                .then(|| Box::new(IdleTimer::new(config.idle_timeout, now))),
            events: VecDeque::new(),
        })
    }

    fn advance(&mut self, now: Instant) -> Instant {
        self.now = self.now.max(now);
        self.now
    }

    /// The earliest instant at which [`handle_timeout`](Self::handle_timeout)
    /// has something to do; `None` when nothing is scheduled (disabled, or
    /// the peer is dead).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.dead {
            return None;
        }
        match (
            self.next_ping,
            self.idle.as_ref().and_then(|idle| idle.poll_timeout()),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The timer fired (or the driver woke up for another reason): sends the
    /// due ping or declares the peer dead, and checks the idle timeout.
    /// Does nothing before a deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.dead {
            return;
        }
        let now = self.advance(now);
        if self.next_ping.is_some_and(|at| now >= at) {
            if self.missed >= self.max_missed {
                self.dead = true;
                self.next_ping = None;
                self.in_flight.clear();
                self.events.push_back(HeartbeatEvent::PeerDead {
                    missed: self.missed,
                });
                return;
            }
            let counter = self.next_counter;
            self.next_counter = self.next_counter.wrapping_add(1);
            let cap = MAX_TRACKED_PINGS.min(self.max_missed as usize);
            while self.in_flight.len() >= cap {
                self.in_flight.pop_front();
            }
            self.in_flight.push_back((counter, now));
            self.missed += 1;
            self.events
                .push_back(HeartbeatEvent::SendPing(counter.to_be_bytes()));
            self.next_ping = now.checked_add(self.interval);
        }
        if let Some(idle) = &mut self.idle {
            idle.handle_timeout(now);
            if let Some(event) = idle.poll_event() {
                self.events.push_back(event);
            }
        }
    }

    /// A pong arrived: the peer is alive (missed count back to 0), and if
    /// `payload` echoes a remembered ping, an [`HeartbeatEvent::Rtt`] sample
    /// follows. A pong with any other payload (unsolicited, or for a
    /// forgotten ping) still counts as liveness. Also counts as inbound
    /// traffic for the idle timeout. Ignored once the peer is dead.
    pub fn handle_pong(&mut self, now: Instant, payload: &[u8]) {
        if self.dead {
            return;
        }
        let now = self.advance(now);
        self.missed = 0;
        if let Some(idle) = &mut self.idle {
            idle.handle_activity(now);
        }
        let Ok(bytes) = <[u8; PING_PAYLOAD_LEN]>::try_from(payload) else {
            return;
        };
        let counter = u64::from_be_bytes(bytes);
        let Some(pos) = self.in_flight.iter().position(|&(c, _)| c == counter) else {
            return;
        };
        let sent = self.in_flight.get(pos).map(|&(_, sent)| sent);
        // This ping and every older one are answered.
        self.in_flight.drain(..=pos);
        if let Some(sent) = sent {
            let rtt = now.saturating_duration_since(sent);
            self.last_rtt = Some(rtt);
            self.events.push_back(HeartbeatEvent::Rtt(rtt));
        }
    }

    /// Any other inbound traffic arrived (a message, a ping from the peer).
    /// Restarts the idle timeout; resets the missed count only when
    /// [`traffic_is_liveness`](HeartbeatConfig::traffic_is_liveness) is set.
    /// Ignored once the peer is dead.
    pub fn handle_activity(&mut self, now: Instant) {
        if self.dead {
            return;
        }
        let now = self.advance(now);
        if let Some(idle) = &mut self.idle {
            idle.handle_activity(now);
        }
        if self.traffic_is_liveness {
            self.missed = 0;
        }
    }

    /// The next thing to do, in order; drain until `None` after every input.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<HeartbeatEvent> {
        self.events.pop_front()
    }

    /// Pings sent since the last pong (or liveness), not yet answered.
    pub fn missed(&self) -> u32 {
        self.missed
    }

    /// The latest round-trip time measured, if any.
    pub fn rtt(&self) -> Option<Duration> {
        self.last_rtt
    }

    /// Whether [`HeartbeatEvent::PeerDead`] was emitted.
    pub fn is_dead(&self) -> bool {
        self.dead
    }
}

/// An idle timeout: no inbound traffic for a while gives
/// [`HeartbeatEvent::IdleTimeout`], once; the next traffic re-arms it.
///
/// For plain TCP connections without pings. Inputs:
/// [`handle_activity`](Self::handle_activity) for every inbound read,
/// [`handle_timeout`](Self::handle_timeout) when the timer from
/// [`poll_timeout`](Self::poll_timeout) fires; drain
/// [`poll_event`](Self::poll_event) after `handle_timeout`. The same timing
/// rules as [`Heartbeat`] apply (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct IdleTimer {
    idle: Duration,
    now: Instant,
    deadline: Option<Instant>,
    expired: bool,
}

impl IdleTimer {
    /// Starts the timer at `now`; `idle` zero disables it.
    pub fn new(idle: Duration, now: Instant) -> Self {
        let mut timer = Self {
            idle,
            now,
            deadline: None,
            expired: false,
        };
        timer.arm();
        timer
    }

    fn arm(&mut self) {
        self.deadline = if self.idle.is_zero() {
            None
        } else {
            self.now.checked_add(self.idle)
        };
    }

    /// Inbound traffic arrived: the idle period starts again at `now`.
    pub fn handle_activity(&mut self, now: Instant) {
        self.now = self.now.max(now);
        self.arm();
    }

    /// When the connection counts as idle unless traffic arrives first;
    /// `None` when disabled or already expired (until the next traffic).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// Checks the deadline; at or after it, queues
    /// [`HeartbeatEvent::IdleTimeout`] and disarms until the next traffic.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if self.deadline.is_some_and(|at| self.now >= at) {
            self.deadline = None;
            self.expired = true;
        }
    }

    /// [`HeartbeatEvent::IdleTimeout`] once after the deadline passed.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<HeartbeatEvent> {
        std::mem::take(&mut self.expired).then_some(HeartbeatEvent::IdleTimeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::epoch;
    use proptest::prelude::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn drain(hb: &mut Heartbeat) -> Vec<HeartbeatEvent> {
        std::iter::from_fn(|| hb.poll_event()).collect()
    }

    fn config(interval: u64, max_missed: u32) -> HeartbeatConfig {
        HeartbeatConfig {
            interval: secs(interval),
            max_missed,
            ..HeartbeatConfig::default()
        }
    }

    #[test]
    fn pings_every_15s_and_three_unanswered_in_a_row_mean_dead() {
        // A pong at 17s resets the count; silence from then on: pings at 30,
        // 45 and 60s go unanswered, and the tick at 75s finds the peer dead.
        let t0 = epoch();
        let mut hb = Heartbeat::new(config(15, 3), t0).unwrap();
        hb.handle_timeout(t0 + secs(15));
        let [HeartbeatEvent::SendPing(p)] = drain(&mut hb)[..] else {
            panic!("expected a ping")
        };
        assert_eq!(hb.missed(), 1);
        hb.handle_pong(t0 + secs(17), &p);
        assert_eq!(drain(&mut hb), [HeartbeatEvent::Rtt(secs(2))]);
        assert_eq!(hb.missed(), 0);
        for (t, missed) in [(30, 1), (45, 2), (60, 3)] {
            assert_eq!(hb.poll_timeout(), Some(t0 + secs(t)));
            hb.handle_timeout(t0 + secs(t));
            assert!(matches!(drain(&mut hb)[..], [HeartbeatEvent::SendPing(_)]));
            assert_eq!(hb.missed(), missed);
        }
        hb.handle_timeout(t0 + secs(75));
        assert_eq!(drain(&mut hb), [HeartbeatEvent::PeerDead { missed: 3 }]);
        assert!(hb.is_dead());
        assert_eq!(hb.poll_timeout(), None);
        hb.handle_pong(t0 + secs(76), &p);
        hb.handle_timeout(t0 + secs(1000));
        assert_eq!(drain(&mut hb), []);
    }

    #[test]
    fn nothing_before_the_deadline() {
        let t0 = epoch();
        let mut hb = Heartbeat::new(config(10, 1), t0).unwrap();
        hb.handle_timeout(t0 + secs(10) - Duration::from_nanos(1));
        assert_eq!(drain(&mut hb), []);
        hb.handle_timeout(t0 + secs(10));
        assert_eq!(drain(&mut hb).len(), 1);
    }

    #[test]
    fn late_timeout_sends_one_ping_and_reschedules_from_now() {
        let t0 = epoch();
        let mut hb = Heartbeat::new(config(10, 3), t0).unwrap();
        hb.handle_timeout(t0 + secs(95));
        assert_eq!(drain(&mut hb).len(), 1);
        assert_eq!(hb.poll_timeout(), Some(t0 + secs(105)));
    }

    #[test]
    fn zero_interval_disables() {
        let t0 = epoch();
        let mut hb = Heartbeat::new(config(0, 3), t0).unwrap();
        assert_eq!(hb.poll_timeout(), None);
        hb.handle_timeout(t0 + secs(1_000_000));
        assert_eq!(drain(&mut hb), []);
    }

    #[test]
    fn zero_max_missed_is_rejected() {
        let err = Heartbeat::new(config(1, 0), epoch()).unwrap_err();
        assert_eq!(err, HeartbeatConfigError::ZeroMaxMissed);
        assert!(!err.to_string().is_empty());
    }

    #[test]
    fn unknown_pong_is_liveness_without_rtt() {
        let t0 = epoch();
        let mut hb = Heartbeat::new(config(1, 2), t0).unwrap();
        hb.handle_timeout(t0 + secs(1));
        hb.handle_timeout(t0 + secs(2));
        assert_eq!(drain(&mut hb).len(), 2);
        assert_eq!(hb.missed(), 2);
        hb.handle_pong(t0 + secs(2), b"hello");
        hb.handle_pong(t0 + secs(2), &999u64.to_be_bytes());
        assert_eq!(drain(&mut hb), []);
        assert_eq!(hb.missed(), 0);
        assert_eq!(hb.rtt(), None);
    }

    #[test]
    fn pong_for_older_ping_measures_from_that_ping() {
        let t0 = epoch();
        let mut hb = Heartbeat::new(config(1, 3), t0).unwrap();
        hb.handle_timeout(t0 + secs(1));
        hb.handle_timeout(t0 + secs(2));
        let pings = drain(&mut hb);
        let HeartbeatEvent::SendPing(first) = pings[0] else {
            panic!()
        };
        let HeartbeatEvent::SendPing(second) = pings[1] else {
            panic!()
        };
        hb.handle_pong(t0 + Duration::from_millis(2500), &first);
        assert_eq!(
            drain(&mut hb),
            [HeartbeatEvent::Rtt(Duration::from_millis(1500))]
        );
        hb.handle_pong(t0 + Duration::from_millis(2600), &second);
        assert_eq!(
            drain(&mut hb),
            [HeartbeatEvent::Rtt(Duration::from_millis(600))]
        );
        // The same pong twice gives one sample.
        hb.handle_pong(t0 + Duration::from_millis(2700), &second);
        assert_eq!(drain(&mut hb), []);
    }

    #[test]
    fn traffic_counts_as_liveness_only_when_configured() {
        let t0 = epoch();
        for liveness in [false, true] {
            let cfg = HeartbeatConfig {
                traffic_is_liveness: liveness,
                ..config(1, 1)
            };
            let mut hb = Heartbeat::new(cfg, t0).unwrap();
            hb.handle_timeout(t0 + secs(1));
            hb.handle_activity(t0 + secs(1));
            hb.handle_timeout(t0 + secs(2));
            let dead = drain(&mut hb).contains(&HeartbeatEvent::PeerDead { missed: 1 });
            assert_eq!(dead, !liveness);
        }
    }

    #[test]
    fn idle_timer_fires_once_and_rearms_on_traffic() {
        let t0 = epoch();
        let mut idle = IdleTimer::new(secs(5), t0);
        idle.handle_activity(t0 + secs(3));
        idle.handle_timeout(t0 + secs(5));
        assert_eq!(idle.poll_event(), None);
        assert_eq!(idle.poll_timeout(), Some(t0 + secs(8)));
        idle.handle_timeout(t0 + secs(8));
        assert_eq!(idle.poll_event(), Some(HeartbeatEvent::IdleTimeout));
        assert_eq!(idle.poll_event(), None);
        assert_eq!(idle.poll_timeout(), None);
        idle.handle_activity(t0 + secs(9));
        assert_eq!(idle.poll_timeout(), Some(t0 + secs(14)));
        assert_eq!(IdleTimer::new(Duration::ZERO, t0).poll_timeout(), None);
    }

    #[test]
    fn heartbeat_with_idle_only() {
        let t0 = epoch();
        let cfg = HeartbeatConfig {
            idle_timeout: secs(4),
            ..config(0, 3)
        };
        let mut hb = Heartbeat::new(cfg, t0).unwrap();
        assert_eq!(hb.poll_timeout(), Some(t0 + secs(4)));
        hb.handle_pong(t0 + secs(1), b"");
        hb.handle_timeout(t0 + secs(4));
        assert_eq!(drain(&mut hb), []);
        hb.handle_timeout(t0 + secs(5));
        assert_eq!(drain(&mut hb), [HeartbeatEvent::IdleTimeout]);
    }

    #[test]
    fn huge_durations_do_not_overflow() {
        let t0 = epoch();
        let cfg = HeartbeatConfig {
            interval: Duration::MAX,
            idle_timeout: Duration::MAX,
            ..HeartbeatConfig::default()
        };
        let mut hb = Heartbeat::new(cfg, t0).unwrap();
        assert_eq!(hb.poll_timeout(), None);
        hb.handle_activity(t0 + secs(1));
        hb.handle_timeout(t0 + secs(1));
        assert_eq!(drain(&mut hb), []);
    }

    /// The plainest statement of the rules, with no clamping shortcuts.
    #[derive(Debug)]
    struct Model {
        interval: Option<u64>,
        idle: Option<u64>,
        max_missed: u32,
        liveness: bool,
        latest: u64,
        next_ping: Option<u64>,
        idle_at: Option<u64>,
        missed: u32,
        sent: Vec<(u64, u64)>,
        dead: bool,
    }

    impl Model {
        fn deadline(&self) -> Option<u64> {
            if self.dead {
                return None;
            }
            [self.next_ping, self.idle_at].into_iter().flatten().min()
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Timeout(u64),
        /// Pong for the ping this many pings back (or an unknown payload).
        Pong(u64, Option<usize>),
        Activity(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Times jitter around the present: mostly forward, sometimes stale.
        let t = 0u64..40;
        prop_oneof![
            4 => t.clone().prop_map(Op::Timeout),
            2 => (t.clone(), proptest::option::of(0usize..4)).prop_map(|(t, k)| Op::Pong(t, k)),
            1 => t.prop_map(Op::Activity),
        ]
    }

    proptest! {
        #[test]
        fn matches_reference_model(
            interval in 0u64..8,
            idle in 0u64..12,
            max_missed in 1u32..4,
            liveness in any::<bool>(),
            ops in proptest::collection::vec(op(), 0..80),
        ) {
            let t0 = epoch();
            let at = |ms: u64| t0 + Duration::from_millis(ms);
            let cfg = HeartbeatConfig {
                interval: Duration::from_millis(interval),
                max_missed,
                idle_timeout: Duration::from_millis(idle),
                traffic_is_liveness: liveness,
            };
            let mut hb = Heartbeat::new(cfg, t0).unwrap();
            let mut m = Model {
                interval: (interval > 0).then_some(interval),
                idle: (idle > 0).then_some(idle),
                max_missed,
                liveness,
                latest: 0,
                next_ping: (interval > 0).then_some(interval),
                idle_at: (idle > 0).then_some(idle),
                missed: 0,
                sent: Vec::new(),
                dead: false,
            };
            let mut clock = 0u64;
            for op in ops {
                prop_assert_eq!(hb.poll_timeout(), m.deadline().map(at));
                let mut expected = Vec::new();
                match op {
                    Op::Timeout(dt) => {
                        // Half the timeouts land exactly on the deadline.
                        let now = match m.deadline() {
                            Some(d) if dt % 2 == 0 => d,
                            _ => clock + dt / 2,
                        };
                        clock = clock.max(now);
                        hb.handle_timeout(at(now));
                        if !m.dead {
                            m.latest = m.latest.max(now);
                            let now = m.latest;
                            if m.next_ping.is_some_and(|p| now >= p) {
                                if m.missed >= m.max_missed {
                                    m.dead = true;
                                    expected.push(HeartbeatEvent::PeerDead { missed: m.missed });
                                } else {
                                    let counter = m.sent.len() as u64;
                                    m.sent.push((counter, now));
                                    m.missed += 1;
                                    m.next_ping = m.interval.map(|i| now + i);
                                    expected.push(HeartbeatEvent::SendPing(counter.to_be_bytes()));
                                }
                            }
                            if !m.dead && m.idle_at.is_some_and(|i| now >= i) {
                                m.idle_at = None;
                                expected.push(HeartbeatEvent::IdleTimeout);
                            }
                        }
                        let events = drain(&mut hb);
                        prop_assert_eq!(&events, &expected);
                        // Never an expired deadline after handle_timeout.
                        if let Some(d) = hb.poll_timeout() {
                            prop_assert!(d > at(now));
                        }
                        continue;
                    }
                    Op::Pong(dt, back) => {
                        // Sometimes stale: up to 10ms before the latest time.
                        let now = (clock + dt / 4).saturating_sub(10);
                        clock = clock.max(now);
                        let payload = back
                            .and_then(|k| m.sent.len().checked_sub(k + 1))
                            .map(|i| (i as u64).to_be_bytes().to_vec())
                            .unwrap_or_else(|| b"?".to_vec());
                        hb.handle_pong(at(now), &payload);
                        if !m.dead {
                            m.latest = m.latest.max(now);
                            m.missed = 0;
                            m.idle_at = m.idle.map(|i| m.latest + i);
                            // Remembered: the last min(max_missed, 64) pings,
                            // minus those answered (by this pong or a newer one).
                            if let Some(i) = back.and_then(|k| m.sent.len().checked_sub(k + 1)) {
                                let remembered = i + (m.max_missed as usize) >= m.sent.len();
                                if remembered && m.sent[i].1 != u64::MAX {
                                    expected.push(HeartbeatEvent::Rtt(Duration::from_millis(m.latest - m.sent[i].1)));
                                    for entry in &mut m.sent[..=i] {
                                        entry.1 = u64::MAX;
                                    }
                                }
                            }
                        }
                    }
                    Op::Activity(dt) => {
                        let now = clock + dt / 4;
                        clock = now;
                        hb.handle_activity(at(now));
                        if !m.dead {
                            m.latest = m.latest.max(now);
                            m.idle_at = m.idle.map(|i| m.latest + i);
                            if m.liveness {
                                m.missed = 0;
                            }
                        }
                    }
                }
                prop_assert_eq!(drain(&mut hb), expected);
                prop_assert_eq!(hb.missed(), m.missed);
            }
        }
    }
}
