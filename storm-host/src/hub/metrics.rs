//! Server-wide counters.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::setup::TlsHandshakeFailed;

/// Shards of the traffic totals. Every session counts into the shard its
/// id picks, so busy sessions on different cores rarely write the same
/// cache line (one shared line cost 6× the time with two threads counting,
/// `hub_counters` bench); [`Hub::metrics`](super::Hub::metrics) sums them.
const SHARDS: usize = 16;

/// One shard of the traffic totals, on cache lines of its own (relaxed
/// atomics: totals, not synchronisation).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Traffic {
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) messages_sent: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) messages_dropped: AtomicU64,
    /// Times a session's send queue drained back to half its limit after
    /// reaching it: one per backpressure episode, counted as it ends.
    pub(crate) backpressure_episodes: AtomicU64,
}

/// Counters shared by the hub and every session.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    traffic: [Traffic; SHARDS],
    pub(crate) connections_accepted: AtomicU64,
    pub(crate) connections_rejected: AtomicU64,
    /// By [`HandshakeFailure`], in the order of [`HandshakeFailure::ALL`]
    /// (not sharded: one count per failed connection, not per message).
    pub(crate) handshake_failures: [AtomicU64; HandshakeFailure::ALL.len()],
}

impl Totals {
    pub(crate) fn load(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// The shard session number `id` counts into.
    pub(crate) fn shard(&self, id: u64) -> &Traffic {
        let [first, ..] = &self.traffic;
        let index = usize::try_from(id % SHARDS as u64).unwrap_or(0);
        self.traffic.get(index).unwrap_or(first)
    }

    /// The handshake failures counted so far.
    pub(crate) fn handshake_failures(&self) -> HandshakeFailures {
        HandshakeFailures(self.handshake_failures.each_ref().map(Self::load))
    }

    /// Counts one handshake that failed for `why`.
    pub(crate) fn handshake_failed(&self, why: HandshakeFailure) {
        if let Some(counter) = self.handshake_failures.get(why as usize) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One traffic counter, summed over the shards.
    pub(crate) fn sum(&self, counter: impl Fn(&Traffic) -> &AtomicU64) -> u64 {
        self.traffic
            .iter()
            .map(|shard| Self::load(counter(shard)))
            .fold(0, u64::wrapping_add)
    }
}

/// A snapshot of a hub's server-wide counters
/// ([`Hub::metrics`](super::Hub::metrics)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HubMetrics {
    /// When the hub was created (the `now` given to [`Hub::new`](super::Hub::new)).
    pub started_at: Instant,
    /// Time since `started_at`, as of the `now` given to `metrics`.
    pub uptime: Duration,
    /// Sessions registered now.
    pub sessions: usize,
    /// Connection permits held now (registered sessions plus connections
    /// still in their handshake).
    pub connections: usize,
    /// Permits granted since the start.
    pub connections_accepted: u64,
    /// Connections refused by the max-connections gate since the start.
    pub connections_rejected: u64,
    /// Bytes written, over all sessions.
    pub bytes_sent: u64,
    /// Bytes read, over all sessions.
    pub bytes_received: u64,
    /// Messages handed to writers, over all sessions.
    pub messages_sent: u64,
    /// Messages received, over all sessions.
    pub messages_received: u64,
    /// Messages dropped by slow-consumer policies, over all sessions.
    pub messages_dropped: u64,
    /// Backpressure episodes that ended, over all sessions: a session's
    /// pending send bytes reached its limit, then drained back to half
    /// (an episode still going on, or ended by the session closing, is not
    /// counted).
    pub backpressure_episodes: u64,
    /// Connections whose handshake failed, by why.
    pub handshake_failures: HandshakeFailures,
}

/// Why a server connection's handshake (TLS, the WebSocket upgrade, or
/// their `handshake_timeout`) failed, as [`Hub::handshake_failed`] counts
/// it: one of a few reasons, read off the error's kind.
///
/// [`Hub::handshake_failed`]: super::Hub::handshake_failed
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HandshakeFailure {
    /// Not done within the handshake timeout.
    TimedOut,
    /// Refused by the server's upgrade hook or `allowed_origins`
    /// ([`PermissionDenied`](io::ErrorKind::PermissionDenied)).
    Refused,
    /// The TLS handshake failed (bad certificate, plain bytes on a TLS
    /// port, no shared protocol version, …).
    Tls,
    /// The peer sent something that is not a valid handshake (a bad
    /// upgrade request, TLS on a plain port, …).
    Invalid,
    /// The peer went away during the handshake.
    Closed,
    /// Cut short on the server's side (its shutdown).
    Aborted,
    /// Anything else (socket options, registration).
    Other,
}

impl HandshakeFailure {
    /// Every reason, in a fixed order.
    pub const ALL: [Self; 7] = [
        Self::TimedOut,
        Self::Refused,
        Self::Tls,
        Self::Invalid,
        Self::Closed,
        Self::Aborted,
        Self::Other,
    ];

    /// The reason as a metric label: `timed_out`, `refused`, `tls`,
    /// `invalid`, `closed`, `aborted` or `other`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::TimedOut => "timed_out",
            Self::Refused => "refused",
            Self::Tls => "tls",
            Self::Invalid => "invalid",
            Self::Closed => "closed",
            Self::Aborted => "aborted",
            Self::Other => "other",
        }
    }

    /// Why the handshake that ended in `error` failed. A TLS failure is
    /// one the adapter marked with
    /// [`setup::tls_handshake_failed`](crate::setup::tls_handshake_failed)
    /// (a TLS handshake that timed out counts as timed out).
    #[must_use]
    pub fn of(error: &io::Error) -> Self {
        use io::ErrorKind as Kind;
        match error.kind() {
            Kind::TimedOut => Self::TimedOut,
            Kind::PermissionDenied => Self::Refused,
            _ if error
                .get_ref()
                .is_some_and(|inner| inner.is::<TlsHandshakeFailed>()) =>
            {
                Self::Tls
            }
            Kind::InvalidData | Kind::InvalidInput => Self::Invalid,
            Kind::UnexpectedEof | Kind::ConnectionReset | Kind::BrokenPipe => Self::Closed,
            Kind::ConnectionAborted => Self::Aborted,
            _ => Self::Other,
        }
    }
}

/// Handshake failures counted by [`HandshakeFailure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HandshakeFailures([u64; HandshakeFailure::ALL.len()]);

impl HandshakeFailures {
    /// The failures for `why`.
    #[must_use]
    pub fn get(&self, why: HandshakeFailure) -> u64 {
        self.0.get(why as usize).copied().unwrap_or(0)
    }

    /// Every failure, whatever the reason.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.0.iter().fold(0, |sum, n| sum.wrapping_add(*n))
    }
}

/// The names [`HubMetrics::record`] gives each figure through the
/// [`metrics`](::metrics) facade, every one labelled `service`.
#[cfg(feature = "metrics")]
pub mod metric_names {
    /// Gauge: connections open now (past admission: in their handshake or
    /// registered).
    pub const CONNECTIONS_OPEN: &str = "storm_connections_open";
    /// Counter: connections admitted since the start.
    pub const CONNECTIONS_TOTAL: &str = "storm_connections_total";
    /// Counter: connections refused by the max-connections gate.
    pub const CONNECTIONS_REJECTED: &str = "storm_connections_rejected_total";
    /// Counter: messages received from clients.
    pub const MESSAGES_RECEIVED: &str = "storm_messages_received_total";
    /// Counter: messages handed to writers for clients.
    pub const MESSAGES_SENT: &str = "storm_messages_sent_total";
    /// Counter: bytes read from clients.
    pub const BYTES_RECEIVED: &str = "storm_bytes_received_total";
    /// Counter: bytes written to clients.
    pub const BYTES_SENT: &str = "storm_bytes_sent_total";
    /// Counter: messages dropped by slow-consumer policies.
    pub const MESSAGES_DROPPED: &str = "storm_messages_dropped_total";
    /// Counter: handshakes that failed, labelled `reason` as well
    /// ([`HandshakeFailure::name`](super::HandshakeFailure::name)).
    pub const HANDSHAKE_FAILURES: &str = "storm_handshake_failures_total";
    /// Counter: backpressure episodes that ended
    /// ([`HubMetrics::backpressure_episodes`](super::HubMetrics::backpressure_episodes)).
    pub const BACKPRESSURE_EPISODES: &str = "storm_backpressure_episodes_total";
}

#[cfg(feature = "metrics")]
impl HubMetrics {
    /// Hands this snapshot to the [`metrics`](::metrics) facade's
    /// recorder, under the [`metric_names`] and labelled `service` = `service`:
    /// gauges set, counters set to their absolute values. Nothing on the
    /// per-message path talks to the recorder; call this when the figures
    /// are wanted (on each scrape, or periodically), with a fresh
    /// [`Hub::metrics`](super::Hub::metrics).
    pub fn record(&self, service: &str) {
        let label = || [("service", service.to_owned())];
        ::metrics::gauge!(metric_names::CONNECTIONS_OPEN, &label()).set(as_f64(self.connections));
        for (name, value) in [
            (metric_names::CONNECTIONS_TOTAL, self.connections_accepted),
            (
                metric_names::CONNECTIONS_REJECTED,
                self.connections_rejected,
            ),
            (metric_names::MESSAGES_RECEIVED, self.messages_received),
            (metric_names::MESSAGES_SENT, self.messages_sent),
            (metric_names::BYTES_RECEIVED, self.bytes_received),
            (metric_names::BYTES_SENT, self.bytes_sent),
            (metric_names::MESSAGES_DROPPED, self.messages_dropped),
            (
                metric_names::BACKPRESSURE_EPISODES,
                self.backpressure_episodes,
            ),
        ] {
            ::metrics::counter!(name, &label()).absolute(value);
        }
        for why in HandshakeFailure::ALL {
            let labels = [
                ("service", service.to_owned()),
                ("reason", why.name().to_owned()),
            ];
            ::metrics::counter!(metric_names::HANDSHAKE_FAILURES, &labels)
                .absolute(self.handshake_failures.get(why));
        }
    }
}

#[cfg(feature = "metrics")]
fn as_f64(n: usize) -> f64 {
    // A gauge of connections: exact far beyond any real count.
    u32::try_from(n).map_or(f64::from(u32::MAX), f64::from)
}
