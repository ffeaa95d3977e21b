//! Server-wide counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Counters shared by the hub and every session (relaxed atomics: totals,
/// not synchronisation).
#[derive(Debug, Default)]
pub(crate) struct Totals {
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) messages_sent: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) messages_dropped: AtomicU64,
    pub(crate) connections_accepted: AtomicU64,
    pub(crate) connections_rejected: AtomicU64,
}

impl Totals {
    pub(crate) fn load(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
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
