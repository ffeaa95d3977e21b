//! Who is in which room, across nodes: entries alive until a deadline.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use crate::deadline::DeadlineMap;

/// Presence entries, each alive until `ttl` after it was last
/// [`touch`](Self::touch)ed: the bookkeeping of a node that hears other
/// nodes' announcements (or of a store-less backplane). A node that dies
/// stops touching its entries, and they [expire](Self::pop_expired) within
/// `ttl`. Announcers re-announce every [`refresh_interval`](Self::refresh_interval).
///
/// Driven like every machine: `now` comes in, [`poll_timeout`](Self::poll_timeout)
/// says when the next entry expires. Bounded: at most `max_entries`.
///
/// ```
/// use std::time::{Duration, Instant};
/// use storm_proto::backplane::Presence;
///
/// let t0 = Instant::now();
/// let mut presence = Presence::new(Duration::from_secs(30), 1000);
/// presence.touch("lobby", "alice", t0)?;
/// presence.touch("lobby", "bob", t0 + Duration::from_secs(20))?;
/// assert_eq!(presence.members("lobby").collect::<Vec<_>>(), ["alice", "bob"]);
///
/// let later = t0 + Duration::from_secs(31);
/// assert_eq!(presence.pop_expired(later), Some(("lobby".into(), "alice".into())));
/// assert_eq!(presence.pop_expired(later), None);
/// assert_eq!(presence.members("lobby").collect::<Vec<_>>(), ["bob"]);
/// # Ok::<(), storm_proto::backplane::PresenceFull>(())
/// ```
#[derive(Debug, Clone)]
pub struct Presence {
    ttl: Duration,
    max_entries: usize,
    next_id: u64,
    ids: HashMap<(String, String), u64>,
    deadlines: DeadlineMap<u64, (String, String)>,
    rooms: BTreeMap<String, BTreeSet<String>>,
}

/// [`Presence::touch`] refused a new entry: the table holds its maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PresenceFull {
    /// The table's maximum.
    pub max_entries: usize,
}

impl fmt::Display for PresenceFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "presence table full ({} entries)", self.max_entries)
    }
}

impl std::error::Error for PresenceFull {}

impl Presence {
    /// An empty table whose entries live `ttl` after their last touch, at
    /// most `max_entries` at once.
    #[must_use]
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        Self {
            ttl,
            max_entries,
            next_id: 0,
            ids: HashMap::new(),
            deadlines: DeadlineMap::new(),
            rooms: BTreeMap::new(),
        }
    }

    /// How long an entry lives after its last touch.
    #[must_use]
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How often an announcer should touch its entries again: a third of the
    /// TTL, so two announcements may be lost before an entry expires.
    #[must_use]
    pub fn refresh_interval(&self) -> Duration {
        self.ttl / 3
    }

    /// Marks `member` present in `room` until `now + ttl`. Returns `true`
    /// if it was not present before.
    ///
    /// # Errors
    ///
    /// [`PresenceFull`] for a new entry when the table is full (a refresh of
    /// an existing one always succeeds).
    pub fn touch(&mut self, room: &str, member: &str, now: Instant) -> Result<bool, PresenceFull> {
        let deadline = now.checked_add(self.ttl);
        let key = (room.to_owned(), member.to_owned());
        if let Some(&id) = self.ids.get(&key) {
            self.deadlines.insert(id, deadline, key);
            return Ok(false);
        }
        if self.ids.len() >= self.max_entries {
            return Err(PresenceFull {
                max_entries: self.max_entries,
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        self.rooms
            .entry(key.0.clone())
            .or_default()
            .insert(key.1.clone());
        self.ids.insert(key.clone(), id);
        self.deadlines.insert(id, deadline, key);
        Ok(true)
    }

    /// Removes `member` from `room` (it left). Returns `true` if it was
    /// present.
    pub fn leave(&mut self, room: &str, member: &str) -> bool {
        let key = (room.to_owned(), member.to_owned());
        let Some(id) = self.ids.remove(&key) else {
            return false;
        };
        self.deadlines.remove(&id);
        self.unindex(&key);
        true
    }

    /// When the next entry expires.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.next_deadline()
    }

    /// Removes and returns one entry whose deadline is at or before `now`
    /// as `(room, member)`, earliest first; `None` when none is due.
    pub fn pop_expired(&mut self, now: Instant) -> Option<(String, String)> {
        let (_, key) = self.deadlines.pop_due(now)?;
        self.ids.remove(&key);
        self.unindex(&key);
        Some(key)
    }

    /// The members present in `room`, sorted (as of the last
    /// [`pop_expired`](Self::pop_expired)).
    pub fn members(&self, room: &str) -> impl Iterator<Item = &str> {
        self.rooms
            .get(room)
            .into_iter()
            .flat_map(|members| members.iter().map(String::as_str))
    }

    /// The rooms with at least one member, sorted.
    pub fn rooms(&self) -> impl Iterator<Item = &str> {
        self.rooms.keys().map(String::as_str)
    }

    /// Entries present.
    #[must_use]
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no entry is present.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    fn unindex(&mut self, (room, member): &(String, String)) {
        if let Some(members) = self.rooms.get_mut(room) {
            members.remove(member);
            if members.is_empty() {
                self.rooms.remove(room);
            }
        }
    }
}
