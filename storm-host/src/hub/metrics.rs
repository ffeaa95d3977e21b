//! Server-wide counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
}

/// Counters shared by the hub and every session.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    traffic: [Traffic; SHARDS],
    pub(crate) connections_accepted: AtomicU64,
    pub(crate) connections_rejected: AtomicU64,
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
}
