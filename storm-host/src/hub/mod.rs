//! What every server shares that is not I/O: sessions, outboxes, groups,
//! broadcast, the connection gate, middleware and metrics.
//!
//! A [`Hub`] is the one piece of `storm-proto` shared across tasks and
//! threads: it is `Send + Sync` and cheap to clone (an `Arc`). The tokio,
//! smol and std adapters all use it the same way:
//!
//! 1. On accept, [`Hub::try_admit`] returns a [`ConnectionPermit`] or
//!    [`Rejected`] (max connections reached: close the socket before any
//!    handshake).
//! 2. After the handshake, [`Hub::register`] turns the permit into a
//!    session's [`Outbox`] with a new [`SessionId`]; run the
//!    [`MiddlewareChain::connect`] hooks.
//! 3. The connection's writer drains the session's outbox
//!    ([`Outbox::poll_drain`]), writes vectored, and reports
//!    [`Outbox::on_written`]; it closes when [`Drained::close`] says so.
//!    Its reader reports [`Outbox::on_read`] / [`Outbox::on_consumed`].
//! 4. Anyone may [`Outbox::send`] to it, [`Hub::join`] groups or
//!    [`Hub::broadcast`].
//! 5. When the connection ends, [`Hub::disconnect`] removes the session,
//!    leaves all its groups and releases its permit; then run the
//!    [`MiddlewareChain::disconnect`] hooks.
//!
//! # Broadcast
//!
//! [`Hub::broadcast`] and [`Hub::broadcast_group`] clone one [`Message`]
//! (a reference count, no copy of the payload) into each recipient's outbox
//! and never wait for a slow session. Each connection's writer then frames
//! the shared payload for its own protocol (and its own compression state),
//! writing header and payload with one vectored write where it can.
//! Each recipient's [`SlowConsumerPolicy`] applies, except that **`Wait`
//! cannot wait in a broadcast**: a backpressured `Wait` session gets the
//! message queued anyway, past its limit, up to a hard cap of
//! `max_pending_send_bytes + broadcast_overflow_bytes`; beyond the cap the
//! message is dropped for that session, counted, and its id listed in
//! [`BroadcastReport::full`] so the caller can decide (resend later,
//! disconnect). `Drop` sessions skip the message; `Disconnect` sessions are
//! aborted. One slow client never delays the others.
//!
//! # Locks
//!
//! Internal locks guard only the hub's own data and are never held while
//! user code runs: wakers are woken, and the [`Backplane`] is called, after
//! every lock is released (but for its `group_opened`/`group_closed`
//! records); middleware is never called by the hub. Each group has its own
//! lock: a group broadcast holds its group's alone, so joins, leaves and
//! broadcasts of other groups never wait for it.
//!
//! ```
//! use std::time::Instant;
//!
//! use storm_proto::Message;
//! use storm_host::hub::{Hub, HubConfig, SendOutcome};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let now = Instant::now();
//! let hub = Hub::new(HubConfig::default(), now)?;
//! let alice = hub.register(hub.try_admit()?, now)?;
//! let bob = hub.register(hub.try_admit()?, now)?;
//! hub.join(alice.id(), "lobby")?;
//! hub.join(bob.id(), "lobby")?;
//!
//! // One message, shared (not copied) by everyone in the lobby but the sender.
//! let frame = Message::from("hello");
//! let report = hub.broadcast_group("lobby", &frame, Some(alice.id()));
//! assert_eq!(report.delivered, 1);
//!
//! // Bob's writer drains his outbox and reports what it wrote.
//! let mut batch = Vec::new();
//! let drained = bob.drain_into(&mut batch, 64 * 1024);
//! assert_eq!(batch, [frame]);
//! bob.on_written(drained.bytes);
//!
//! assert_eq!(alice.send(Message::from("direct")), SendOutcome::Queued);
//! hub.disconnect(bob.id());
//! assert_eq!(hub.member_count("lobby"), 1);
//! # Ok(())
//! # }
//! ```

mod backplane;
mod metrics;
mod middleware;
mod outbox;
mod waker;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::task::Waker;
use std::time::Instant;

use storm_proto::Message;

pub use backplane::Backplane;
#[cfg(feature = "metrics")]
pub use metrics::metric_names;
pub use metrics::{HandshakeFailure, HandshakeFailures, HubMetrics};
pub use middleware::{Middleware, MiddlewareChain};
pub use outbox::{
    CloseKind, Drained, Outbox, Output, SendOutcome, SessionClosed, SessionId, SessionMetrics,
    SessionState,
};
pub use waker::thread_waker;

use metrics::Totals;
use outbox::Delivery;
#[cfg(doc)]
use storm_proto::backpressure::SlowConsumerPolicy;
use storm_proto::backpressure::{BackpressureConfig, DEFAULT_MAX_PENDING_BYTES};

/// Locks ignoring poison: no user code runs under the hub's locks, and
/// every critical section leaves the data consistent.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// Settings of a [`Hub`].
///
/// ```
/// use storm_host::hub::{Hub, HubConfig};
///
/// let mut config = HubConfig::default();
/// config.max_connections = 10_000;
/// config.backpressure.max_pending_send_bytes = 256 * 1024;
/// let hub = Hub::new(config, std::time::Instant::now())?;
/// # Ok::<(), storm_host::hub::HubConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HubConfig {
    /// Connections admitted at once ([`Hub::try_admit`]); excess ones are
    /// [`Rejected`]. `0` = unlimited.
    ///
    /// Default: `0`.
    pub max_connections: usize,
    /// Per-session send and receive limits and the slow-consumer policy
    /// new sessions start with.
    ///
    /// Default: [`BackpressureConfig::default`] (1 MiB each way, `Wait`):
    /// at most about 1 MiB queued per session (plus the broadcast overflow).
    pub backpressure: BackpressureConfig,
    /// How far past its send limit a backpressured
    /// [`Wait`](SlowConsumerPolicy::Wait) session still gets broadcasts
    /// queued (see the [module docs](self)).
    ///
    /// Default: [`DEFAULT_MAX_PENDING_BYTES`] (1 MiB), so a `Wait` session
    /// holds at most about 2 MiB of broadcasts.
    pub broadcast_overflow_bytes: usize,
    /// Longest group name in bytes; longer names are refused by
    /// [`Hub::join`] (names may come from the network).
    ///
    /// Default: 256.
    pub max_group_name_len: usize,
    /// Groups one session may be in at once.
    ///
    /// Default: 256.
    pub max_groups_per_session: usize,
}

impl HubConfig {
    /// Default of [`max_group_name_len`](Self::max_group_name_len).
    pub const DEFAULT_MAX_GROUP_NAME_LEN: usize = 256;
    /// Default of [`max_groups_per_session`](Self::max_groups_per_session).
    pub const DEFAULT_MAX_GROUPS_PER_SESSION: usize = 256;

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// [`HubConfigError`] if a group limit is zero (no group could ever be
    /// joined).
    pub fn validate(&self) -> Result<(), HubConfigError> {
        if self.max_group_name_len == 0 {
            return Err(HubConfigError::ZeroMaxGroupNameLen);
        }
        if self.max_groups_per_session == 0 {
            return Err(HubConfigError::ZeroMaxGroupsPerSession);
        }
        Ok(())
    }
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            max_connections: 0,
            backpressure: BackpressureConfig::default(),
            broadcast_overflow_bytes: DEFAULT_MAX_PENDING_BYTES,
            max_group_name_len: Self::DEFAULT_MAX_GROUP_NAME_LEN,
            max_groups_per_session: Self::DEFAULT_MAX_GROUPS_PER_SESSION,
        }
    }
}

/// An invalid [`HubConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HubConfigError {
    /// [`HubConfig::max_group_name_len`] is zero.
    ZeroMaxGroupNameLen,
    /// [`HubConfig::max_groups_per_session`] is zero.
    ZeroMaxGroupsPerSession,
}

impl fmt::Display for HubConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ZeroMaxGroupNameLen => "max_group_name_len must be at least 1",
            Self::ZeroMaxGroupsPerSession => "max_groups_per_session must be at least 1",
        })
    }
}

impl std::error::Error for HubConfigError {}

/// The max-connections gate refused a connection: close it before any
/// handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rejected {
    /// The configured [`HubConfig::max_connections`].
    pub max_connections: usize,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "too many connections (max {})", self.max_connections)
    }
}

impl std::error::Error for Rejected {}

/// [`Hub::register`] was given a permit another hub granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegisterError {
    /// The permit belongs to a different hub; it was released.
    ForeignPermit,
}

impl fmt::Display for RegisterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the connection permit was granted by another hub")
    }
}

impl std::error::Error for RegisterError {}

/// A [`Hub::join`] that was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupError {
    /// No registered session has this id (never was, or disconnected).
    UnknownSession(SessionId),
    /// The group name is empty.
    EmptyName,
    /// The group name is longer than [`HubConfig::max_group_name_len`].
    NameTooLong {
        /// Length of the refused name in bytes.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The session is already in [`HubConfig::max_groups_per_session`]
    /// groups.
    TooManyGroups {
        /// The configured maximum.
        max: usize,
    },
}

impl fmt::Display for GroupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownSession(id) => write!(f, "no session {id}"),
            Self::EmptyName => f.write_str("empty group name"),
            Self::NameTooLong { len, max } => {
                write!(f, "group name of {len} bytes is longer than {max}")
            }
            Self::TooManyGroups { max } => write!(f, "session is already in {max} groups"),
        }
    }
}

impl std::error::Error for GroupError {}

/// What a broadcast did. Each recipient lands in exactly one count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BroadcastReport {
    /// Sessions whose outbox got the message.
    pub delivered: usize,
    /// Sessions that did not get it because they were too slow: `Drop`
    /// sessions that were backpressured, and `Wait` sessions past the
    /// broadcast cap (also listed in [`full`](Self::full)).
    pub dropped: usize,
    /// `Disconnect` sessions that were backpressured and are now aborting.
    pub disconnected: usize,
    /// Sessions already closing or closed.
    pub closed: usize,
    /// The `Wait` sessions among [`dropped`](Self::dropped).
    pub full: Vec<SessionId>,
}

impl BroadcastReport {
    /// Every recipient considered (all the counts added up).
    pub fn recipients(&self) -> usize {
        self.delivered + self.dropped + self.disconnected + self.closed
    }

    fn record(&mut self, id: SessionId, delivery: Delivery) {
        match delivery {
            Delivery::Queued => self.delivered += 1,
            Delivery::Dropped => self.dropped += 1,
            Delivery::Full => {
                self.dropped += 1;
                self.full.push(id);
            }
            Delivery::Disconnected => self.disconnected += 1,
            Delivery::Closed => self.closed += 1,
        }
    }
}

/// The max-connections gate, shared with the permits (and nothing else, so
/// a permit stored in the registry makes no reference cycle).
#[derive(Debug)]
struct Gate {
    max: usize,
    admitted: AtomicUsize,
}

/// One admitted connection, counted against
/// [`HubConfig::max_connections`] until it is dropped. Hand it to
/// [`Hub::register`] after the handshake; the hub keeps it until
/// [`Hub::disconnect`]. Dropping it (a failed handshake) releases the slot.
#[derive(Debug)]
#[must_use = "dropping the permit releases the connection slot"]
pub struct ConnectionPermit {
    gate: Arc<Gate>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.gate.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug)]
struct Entry {
    session: Arc<Outbox>,
    _permit: ConnectionPermit,
}

/// The groups, by name and by session.
///
/// Each group has its own lock ([`Group::members`]), so a fan-out holds
/// its group alone: the map's lock is held only to find a group (clone its
/// `Arc`) or to change the map, never while a group's lock is awaited.
/// Lock order: a group's lock, then the map's. A member is added or removed
/// with both held, so `by_session[id]` names a group exactly when that
/// group's members hold `id`; `by_name` holds exactly the groups with a
/// member.
#[derive(Debug, Default)]
struct Groups {
    by_name: HashMap<Arc<str>, Arc<Group>>,
    by_session: HashMap<SessionId, BTreeSet<Arc<str>>>,
}

/// One group: its name and its members behind its own lock.
#[derive(Debug)]
struct Group {
    name: Arc<str>,
    members: RwLock<Members>,
}

#[derive(Debug, Default)]
struct Members {
    sessions: HashMap<SessionId, Arc<Outbox>>,
    /// The last member left and the group left the map: it is never used
    /// again (a join that finds it looks the name up anew).
    closed: bool,
}

impl Group {
    fn new(name: &str) -> Self {
        Self {
            name: Arc::from(name),
            members: RwLock::new(Members::default()),
        }
    }
}

struct Shared {
    config: HubConfig,
    started_at: Instant,
    next_id: AtomicU64,
    gate: Arc<Gate>,
    registry: RwLock<HashMap<SessionId, Entry>>,
    groups: RwLock<Groups>,
    totals: Arc<Totals>,
    /// `None` on a single node: nothing leaves the process.
    backplane: Option<Arc<dyn Backplane>>,
}

/// The shared state of a server: registry, groups, gate and totals.
/// `Send + Sync`; clones share the same hub. See the [module docs](self).
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("sessions", &self.session_count())
            .field("groups", &self.group_count())
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub with no sessions and no [`Backplane`] (one node: nothing leaves
    /// the process); `now` is its start time for [`metrics`](Self::metrics).
    ///
    /// # Errors
    ///
    /// [`HubConfigError`] if `config` does not [validate](HubConfig::validate).
    pub fn new(config: HubConfig, now: Instant) -> Result<Self, HubConfigError> {
        Self::build(config, now, None)
    }

    /// Like [`new`](Self::new), publishing group broadcasts to `backplane`.
    ///
    /// # Errors
    ///
    /// [`HubConfigError`] if `config` does not [validate](HubConfig::validate).
    pub fn with_backplane(
        config: HubConfig,
        now: Instant,
        backplane: Arc<dyn Backplane>,
    ) -> Result<Self, HubConfigError> {
        Self::build(config, now, Some(backplane))
    }

    fn build(
        config: HubConfig,
        now: Instant,
        backplane: Option<Arc<dyn Backplane>>,
    ) -> Result<Self, HubConfigError> {
        config.validate()?;
        Ok(Self {
            shared: Arc::new(Shared {
                gate: Arc::new(Gate {
                    max: config.max_connections,
                    admitted: AtomicUsize::new(0),
                }),
                config,
                started_at: now,
                next_id: AtomicU64::new(1),
                registry: RwLock::new(HashMap::new()),
                groups: RwLock::new(Groups::default()),
                totals: Arc::new(Totals::default()),
                backplane,
            }),
        })
    }

    /// The hub's settings.
    pub fn config(&self) -> &HubConfig {
        &self.shared.config
    }

    /// The backplane group broadcasts leave through, `None` on a single
    /// node.
    pub fn backplane(&self) -> Option<&Arc<dyn Backplane>> {
        self.shared.backplane.as_ref()
    }

    // ---- connections ----------------------------------------------------

    /// Admits one more connection if fewer than
    /// [`HubConfig::max_connections`] hold a permit (always, when that is 0).
    ///
    /// # Errors
    ///
    /// [`Rejected`] at the limit: close the connection right away.
    pub fn try_admit(&self) -> Result<ConnectionPermit, Rejected> {
        let gate = &self.shared.gate;
        let admitted = gate
            .admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (gate.max == 0 || n < gate.max).then(|| n + 1)
            });
        if admitted.is_err() {
            self.shared
                .totals
                .connections_rejected
                .fetch_add(1, Ordering::Relaxed);
            return Err(Rejected {
                max_connections: gate.max,
            });
        }
        self.shared
            .totals
            .connections_accepted
            .fetch_add(1, Ordering::Relaxed);
        Ok(ConnectionPermit {
            gate: Arc::clone(gate),
        })
    }

    /// Registers an admitted connection as a new session connected at
    /// `now`, with the next id and the configured backpressure.
    ///
    /// # Errors
    ///
    /// [`RegisterError::ForeignPermit`] if `permit` came from another hub.
    pub fn register(
        &self,
        permit: ConnectionPermit,
        now: Instant,
    ) -> Result<Arc<Outbox>, RegisterError> {
        if !Arc::ptr_eq(&permit.gate, &self.shared.gate) {
            return Err(RegisterError::ForeignPermit);
        }
        let id = SessionId::new(self.shared.next_id.fetch_add(1, Ordering::Relaxed));
        let session = Arc::new(Outbox::new(
            id,
            now,
            &self.shared.config.backpressure,
            Arc::clone(&self.shared.totals),
        ));
        write(&self.shared.registry).insert(
            id,
            Entry {
                session: Arc::clone(&session),
                _permit: permit,
            },
        );
        Ok(session)
    }

    /// Removes a session: it refuses sends from now on (its waiters are
    /// woken), leaves all its groups, and its connection permit is
    /// released. Returns it, or `None` if it was not registered.
    pub fn disconnect(&self, id: SessionId) -> Option<Arc<Outbox>> {
        let entry = write(&self.shared.registry).remove(&id)?;
        // Marked before leaving the groups, so a concurrent `join` that
        // looked the session up earlier sees it gone (checked under the
        // lock of the map of groups) and cannot re-add it.
        entry.session.mark_disconnected();
        self.leave_all(id);
        Some(entry.session)
    }

    /// Registered sessions.
    pub fn session_count(&self) -> usize {
        read(&self.shared.registry).len()
    }

    /// The session with this id, if registered.
    pub fn session(&self, id: SessionId) -> Option<Arc<Outbox>> {
        read(&self.shared.registry)
            .get(&id)
            .map(|entry| Arc::clone(&entry.session))
    }

    /// A snapshot of every registered session, in id order.
    pub fn sessions(&self) -> Vec<Arc<Outbox>> {
        let mut all: Vec<_> = read(&self.shared.registry)
            .values()
            .map(|entry| Arc::clone(&entry.session))
            .collect();
        all.sort_unstable_by_key(|session| session.id());
        all
    }

    /// Asks every registered session to close (a server shutdown). Their
    /// writers observe it through [`Drained::close`].
    pub fn close_all(&self, kind: CloseKind) {
        for session in self.sessions() {
            session.request_close(kind);
        }
    }

    /// Server-wide counters as of `now`.
    pub fn metrics(&self, now: Instant) -> HubMetrics {
        let totals = &self.shared.totals;
        HubMetrics {
            started_at: self.shared.started_at,
            uptime: now.saturating_duration_since(self.shared.started_at),
            sessions: self.session_count(),
            connections: self.shared.gate.admitted.load(Ordering::Acquire),
            connections_accepted: Totals::load(&totals.connections_accepted),
            connections_rejected: Totals::load(&totals.connections_rejected),
            bytes_sent: totals.sum(|t| &t.bytes_sent),
            bytes_received: totals.sum(|t| &t.bytes_received),
            messages_sent: totals.sum(|t| &t.messages_sent),
            messages_received: totals.sum(|t| &t.messages_received),
            messages_dropped: totals.sum(|t| &t.messages_dropped),
            backpressure_episodes: totals.sum(|t| &t.backpressure_episodes),
            handshake_failures: totals.handshake_failures(),
        }
    }

    /// Counts a server connection whose handshake failed with `error`
    /// (in [`HubMetrics::handshake_failures`], by
    /// [`HandshakeFailure::of`]) and returns why.
    pub fn handshake_failed(&self, error: &std::io::Error) -> HandshakeFailure {
        let why = HandshakeFailure::of(error);
        self.shared.totals.handshake_failed(why);
        why
    }

    // ---- groups ---------------------------------------------------------

    /// Adds a session to a group, creating the group. Returns `true` if it
    /// joined, `false` if it was already a member. Waits for a broadcast
    /// to this group under way, never for one to another group.
    ///
    /// # Errors
    ///
    /// [`GroupError`] for an unknown session, an empty or too long name, or
    /// a session already in too many groups.
    pub fn join(&self, id: SessionId, group: &str) -> Result<bool, GroupError> {
        let config = &self.shared.config;
        if group.is_empty() {
            return Err(GroupError::EmptyName);
        }
        if group.len() > config.max_group_name_len {
            return Err(GroupError::NameTooLong {
                len: group.len(),
                max: config.max_group_name_len,
            });
        }
        let session = self.session(id).ok_or(GroupError::UnknownSession(id))?;
        loop {
            let found = self.group(group);
            let fresh = found.is_none();
            let entry = found.unwrap_or_else(|| Arc::new(Group::new(group)));
            let mut members = write(&entry.members);
            if members.closed {
                continue; // emptied and gone from the map since: look again
            }
            let mut groups = write(&self.shared.groups);
            if fresh && groups.by_name.contains_key(group) {
                continue; // another join opened it first: join that one
            }
            if session.is_disconnected() {
                return Err(GroupError::UnknownSession(id));
            }
            let Groups {
                by_name,
                by_session,
            } = &mut *groups;
            let mine = by_session.entry(id).or_default();
            if mine.contains(group) {
                return Ok(false);
            }
            if mine.len() >= config.max_groups_per_session {
                if mine.is_empty() {
                    by_session.remove(&id);
                }
                return Err(GroupError::TooManyGroups {
                    max: config.max_groups_per_session,
                });
            }
            mine.insert(Arc::clone(&entry.name));
            members.sessions.insert(id, Arc::clone(&session));
            if fresh {
                by_name.insert(Arc::clone(&entry.name), Arc::clone(&entry));
                if let Some(backplane) = &self.shared.backplane {
                    backplane.group_opened(group);
                }
            }
            return Ok(true);
        }
    }

    /// Removes a session from a group (the group disappears when empty).
    /// Returns `true` if it was a member. Once it returns, no broadcast to
    /// the group reaches the session (it waits for one under way).
    pub fn leave(&self, id: SessionId, group: &str) -> bool {
        loop {
            let entry = {
                let groups = read(&self.shared.groups);
                if !groups
                    .by_session
                    .get(&id)
                    .is_some_and(|mine| mine.contains(group))
                {
                    return false;
                }
                groups.by_name.get(group).map(Arc::clone)
            };
            let Some(entry) = entry else { return false };
            let mut members = write(&entry.members);
            if members.closed {
                continue; // it left since, and may have joined again
            }
            if !members.sessions.contains_key(&id) {
                return false; // it left since
            }
            self.remove_member(&entry, &mut members, id);
            return true;
        }
    }

    /// Removes a session from every group it is in (done by
    /// [`disconnect`](Self::disconnect)). Returns how many it left. A
    /// group it joins while this runs may be left out (never after
    /// [`disconnect`](Self::disconnect), which refuses such joins).
    pub fn leave_all(&self, id: SessionId) -> usize {
        let mine: Vec<Arc<Group>> = {
            let groups = read(&self.shared.groups);
            let Some(names) = groups.by_session.get(&id) else {
                return 0;
            };
            names
                .iter()
                .filter_map(|name| groups.by_name.get(name).map(Arc::clone))
                .collect()
        };
        let mut left = 0;
        for entry in mine {
            let mut members = write(&entry.members);
            if !members.closed && members.sessions.contains_key(&id) {
                self.remove_member(&entry, &mut members, id);
                left += 1;
            }
        }
        left
    }

    /// The group named `name`, if it has a member (the map's lock held
    /// only to clone it).
    fn group(&self, name: &str) -> Option<Arc<Group>> {
        read(&self.shared.groups).by_name.get(name).map(Arc::clone)
    }

    /// Removes member `id` from `group`, whose lock is held as `members`,
    /// closing the group if it was the last one: takes the map's lock.
    fn remove_member(&self, group: &Group, members: &mut Members, id: SessionId) {
        let mut groups = write(&self.shared.groups);
        let Groups {
            by_name,
            by_session,
        } = &mut *groups;
        members.sessions.remove(&id);
        if let Some(mine) = by_session.get_mut(&id) {
            mine.remove(&*group.name);
            if mine.is_empty() {
                by_session.remove(&id);
            }
        }
        if members.sessions.is_empty() {
            members.closed = true;
            by_name.remove(&*group.name);
            // Under the map's lock, as `group_opened` in `join`: a name's
            // next group opens only after this one has closed.
            if let Some(backplane) = &self.shared.backplane {
                backplane.group_closed(&group.name);
            }
        }
    }

    /// Members of a group (0 for a group that does not exist).
    pub fn member_count(&self, group: &str) -> usize {
        self.group(group)
            .map_or(0, |group| read(&group.members).sessions.len())
    }

    /// The ids of a group's members, sorted.
    pub fn members(&self, group: &str) -> Vec<SessionId> {
        let mut ids: Vec<_> = self
            .group(group)
            .map(|group| read(&group.members).sessions.keys().copied().collect())
            .unwrap_or_default();
        ids.sort_unstable();
        ids
    }

    /// Number of non-empty groups.
    pub fn group_count(&self) -> usize {
        read(&self.shared.groups).by_name.len()
    }

    /// The names of all non-empty groups, sorted.
    pub fn group_names(&self) -> Vec<String> {
        let mut names: Vec<String> = read(&self.shared.groups)
            .by_name
            .keys()
            .map(|name| name.to_string())
            .collect();
        names.sort_unstable();
        names
    }

    /// The groups a session is in, sorted.
    pub fn groups_of(&self, id: SessionId) -> Vec<String> {
        read(&self.shared.groups)
            .by_session
            .get(&id)
            .map(|names| names.iter().map(|name| name.to_string()).collect())
            .unwrap_or_default()
    }

    // ---- broadcast ------------------------------------------------------

    /// Queues one `message` for every registered session but `exclude`:
    /// shared, not copied, by a session that queues messages; framed at
    /// once by one that frames as it sends (a server connection, see
    /// [`Outbox`]'s encoder). Never waits (see the
    /// [module docs](self) for what each policy does).
    pub fn broadcast(&self, message: &Message, exclude: Option<SessionId>) -> BroadcastReport {
        let overflow = self.shared.config.broadcast_overflow_bytes;
        let mut report = BroadcastReport::default();
        let mut wake = Vec::new();
        {
            let registry = read(&self.shared.registry);
            wake.reserve(registry.len());
            for (&id, entry) in registry.iter() {
                if Some(id) != exclude {
                    report.record(id, entry.session.push_nowait(message, overflow, &mut wake));
                }
            }
        }
        wake_all(wake);
        report
    }

    /// Queues one `message` (shared or framed, as for
    /// [`broadcast`](Self::broadcast)) for the local members of `group` but
    /// `exclude`, like [`broadcast`](Self::broadcast), then
    /// [publishes](Backplane::publish) it once to the backplane, if any, for
    /// other nodes.
    pub fn broadcast_group(
        &self,
        group: &str,
        message: &Message,
        exclude: Option<SessionId>,
    ) -> BroadcastReport {
        let report = self.deliver_group(group, message, exclude);
        if let Some(backplane) = &self.shared.backplane {
            backplane.publish(group, message);
        }
        report
    }

    /// Queues `message` for the local members of `group` only, without
    /// publishing: what a [`Backplane`] calls with a message another node
    /// published.
    pub fn deliver_group(
        &self,
        group: &str,
        message: &Message,
        exclude: Option<SessionId>,
    ) -> BroadcastReport {
        let overflow = self.shared.config.broadcast_overflow_bytes;
        let mut report = BroadcastReport::default();
        let mut wake = Vec::new();
        if let Some(group) = self.group(group) {
            // This group's lock alone: joins, leaves and fan-outs of other
            // groups go on meanwhile.
            let members = read(&group.members);
            wake.reserve(members.sessions.len());
            for (&id, session) in &members.sessions {
                if Some(id) != exclude {
                    report.record(id, session.push_nowait(message, overflow, &mut wake));
                }
            }
        }
        wake_all(wake);
        report
    }
}

fn wake_all(wakers: Vec<Waker>) {
    for waker in wakers {
        waker.wake();
    }
}

#[cfg(test)]
mod tests;
