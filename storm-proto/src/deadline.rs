//! A map whose entries may carry a deadline: the one timer table of the
//! machines that expire what they track (rpc calls, broker requests,
//! partial broker streams, the broker router's requests in flight).
//!
//! Pure like the rest of the crate: the time comes in as `now`, nothing
//! here reads a clock.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;
use std::time::Instant;

/// Stale heap records tolerated beyond twice the number of entries before
/// the heap is rebuilt (so a small map is not rebuilt on every removal).
const SLACK: usize = 32;

/// Entries keyed by id, each with an optional deadline: the earliest
/// deadline ([`next_deadline`](Self::next_deadline)), the entries due at
/// `now` in deadline order ([`pop_due`](Self::pop_due)), and removal when an
/// entry's work is done ([`remove`](Self::remove)).
///
/// A machine holds one, answers `poll_timeout` with `next_deadline` and
/// `handle_timeout(now)` by draining `pop_due(now)`. Entries due at the same
/// instant come out in key order. An entry leaves the map exactly once: by
/// `remove`, `pop_due`, [`drain`](Self::drain) or being replaced by
/// [`insert`](Self::insert); so nothing expires twice and nothing removed
/// expires. Limits on the number of entries are the owner's (every user
/// checks [`len`](Self::len) against its own limit before inserting).
///
/// Costs, for n entries: lookups, `insert` and `next_deadline` O(1) (an
/// insert with a deadline O(log n) at worst); `remove` and `pop_due` O(log
/// n) amortized. The deadlines are a binary heap with lazy deletion: a
/// removed entry's heap record stays until it reaches the top or the heap
/// is rebuilt, which happens when stale records outnumber live ones, so
/// the heap never holds more than `2n + 32` records.
///
/// ```
/// use std::time::{Duration, Instant};
/// use storm_proto::deadline::DeadlineMap;
///
/// let t0 = Instant::now();
/// let mut calls = DeadlineMap::new();
/// calls.insert(1, Some(t0 + Duration::from_secs(2)), "slow");
/// calls.insert(2, Some(t0 + Duration::from_secs(1)), "fast");
/// calls.insert(3, None, "patient");
/// assert_eq!(calls.next_deadline(), Some(t0 + Duration::from_secs(1)));
///
/// assert_eq!(calls.remove(&2), Some("fast")); // answered in time
/// assert_eq!(calls.pop_due(t0 + Duration::from_secs(5)), Some((1, "slow")));
/// assert_eq!(calls.pop_due(t0 + Duration::from_secs(5)), None);
/// assert_eq!(calls.len(), 1); // 3 has no deadline
/// ```
#[derive(Debug, Clone)]
pub struct DeadlineMap<K, V> {
    entries: HashMap<K, Entry<V>>,
    /// `(deadline, key)` of every entry with a deadline, earliest on top,
    /// plus stale records of entries removed or replaced since (lazy
    /// deletion). Invariant: the top record, if any, is live.
    due: BinaryHeap<Reverse<(Instant, K)>>,
}

#[derive(Debug, Clone)]
struct Entry<V> {
    deadline: Option<Instant>,
    value: V,
}

impl<K, V> Default for DeadlineMap<K, V> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            due: BinaryHeap::new(),
        }
    }
}

impl<K: Copy + Eq + Hash + Ord, V> DeadlineMap<K, V> {
    /// An empty map.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if there are no entries.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True if `key` has an entry.
    #[must_use]
    pub fn contains_key(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// The value of `key`'s entry.
    #[must_use]
    pub fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|e| &e.value)
    }

    /// The value of `key`'s entry, to change (its deadline stays).
    #[must_use]
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.entries.get_mut(key).map(|e| &mut e.value)
    }

    /// Adds an entry due at `deadline` (`None`: never due). An entry of
    /// `key` already there is replaced, deadline and all, and its value
    /// returned.
    pub fn insert(&mut self, key: K, deadline: Option<Instant>, value: V) -> Option<V> {
        let old = self.entries.insert(key, Entry { deadline, value });
        if let Some(at) = deadline {
            self.due.push(Reverse((at, key)));
        }
        let old = old?;
        self.tidy();
        Some(old.value)
    }

    /// Removes `key`'s entry (its work is done) and returns its value;
    /// `None` if it has none. It will not come out of
    /// [`pop_due`](Self::pop_due).
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let entry = self.entries.remove(key)?;
        if entry.deadline.is_some() {
            self.tidy();
        }
        Some(entry.value)
    }

    /// The earliest deadline of an entry, `None` if no entry has one.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Instant> {
        self.due.peek().map(|Reverse((at, _))| *at)
    }

    /// Removes and returns the entry with the earliest deadline if that is
    /// at or before `now`; `None` when nothing is due. Call it until `None`
    /// to expire everything due: entries come out in deadline order, ties
    /// in key order.
    pub fn pop_due(&mut self, now: Instant) -> Option<(K, V)> {
        let &Reverse((at, key)) = self.due.peek()?;
        if at > now {
            return None;
        }
        self.due.pop();
        // The top record is live (the invariant), so this finds the entry.
        let entry = self.entries.remove(&key);
        self.tidy();
        entry.map(|e| (key, e.value))
    }

    /// Removes every entry, in no particular order, deadlines or not.
    pub fn drain(&mut self) -> impl Iterator<Item = (K, V)> + '_ {
        self.due.clear();
        self.entries.drain().map(|(key, e)| (key, e.value))
    }

    /// Restores the invariants after an entry left or was replaced: the
    /// heap holds at most `2n + SLACK` records, and its top is live.
    fn tidy(&mut self) {
        if self.due.len() > 2 * self.entries.len() + SLACK {
            let mut records = std::mem::take(&mut self.due).into_vec();
            records.clear();
            records.extend(
                self.entries
                    .iter()
                    .filter_map(|(key, e)| e.deadline.map(|at| Reverse((at, *key)))),
            );
            self.due = BinaryHeap::from(records);
            return;
        }
        while let Some(&Reverse((at, key))) = self.due.peek() {
            if self.entries.get(&key).and_then(|e| e.deadline) == Some(at) {
                break;
            }
            self.due.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn drain_due<V>(map: &mut DeadlineMap<u32, V>, now: Instant) -> Vec<(u32, V)> {
        std::iter::from_fn(|| map.pop_due(now)).collect()
    }

    #[test]
    fn earliest_first_ties_in_key_order_and_none_never_due() {
        let t0 = crate::test_util::epoch();
        let mut m = DeadlineMap::new();
        assert_eq!(m.next_deadline(), None);
        m.insert(7, Some(at(t0, 20)), 'a');
        m.insert(5, Some(at(t0, 10)), 'b');
        m.insert(3, None, 'c');
        m.insert(2, Some(at(t0, 10)), 'd');
        assert_eq!(m.next_deadline(), Some(at(t0, 10)));
        assert_eq!(m.pop_due(at(t0, 9)), None);
        assert_eq!(drain_due(&mut m, at(t0, 10)), [(2, 'd'), (5, 'b')]);
        assert_eq!(m.next_deadline(), Some(at(t0, 20)));
        assert_eq!(drain_due(&mut m, at(t0, 1_000_000)), [(7, 'a')]);
        assert_eq!(m.next_deadline(), None);
        assert_eq!((m.len(), m.get(&3)), (1, Some(&'c')));
    }

    #[test]
    fn removed_and_replaced_entries_do_not_expire() {
        let t0 = crate::test_util::epoch();
        let mut m = DeadlineMap::new();
        m.insert(1, Some(at(t0, 10)), "first");
        m.insert(2, Some(at(t0, 20)), "other");
        assert_eq!(m.remove(&1), Some("first"));
        assert_eq!(m.remove(&1), None);
        assert_eq!(m.next_deadline(), Some(at(t0, 20)));
        // Replaced: the old deadline no longer fires, the new one once.
        assert_eq!(m.insert(2, Some(at(t0, 30)), "later"), Some("other"));
        assert_eq!(m.next_deadline(), Some(at(t0, 30)));
        assert_eq!(m.pop_due(at(t0, 25)), None);
        // Re-inserted under the same deadline as its stale record: once.
        m.insert(1, Some(at(t0, 30)), "again");
        m.remove(&1);
        m.insert(1, Some(at(t0, 30)), "again");
        assert_eq!(drain_due(&mut m, at(t0, 30)), [(1, "again"), (2, "later")]);
        assert!(m.is_empty() && m.next_deadline().is_none());
        if let Some(v) = m.get_mut(&1) {
            *v = "gone";
        }
        assert_eq!(m.get(&1), None);
    }

    #[test]
    fn get_mut_keeps_the_deadline_and_drain_empties() {
        let t0 = crate::test_util::epoch();
        let mut m = DeadlineMap::new();
        m.insert(1, Some(at(t0, 5)), 10);
        m.insert(2, None, 20);
        *m.get_mut(&1).expect("present") += 1;
        assert_eq!(m.next_deadline(), Some(at(t0, 5)));
        let mut all: Vec<_> = m.drain().collect();
        all.sort_unstable();
        assert_eq!(all, [(1, 11), (2, 20)]);
        assert!(m.is_empty());
        assert_eq!((m.next_deadline(), m.pop_due(at(t0, 99))), (None, None));
        assert!(!m.contains_key(&1));
    }

    #[test]
    fn stale_records_stay_bounded_by_the_entries() {
        let t0 = crate::test_util::epoch();
        let mut m = DeadlineMap::new();
        // One long-lived entry on top keeps every later record buried.
        m.insert(0, Some(at(t0, 1)), ());
        for id in 1..10_000 {
            m.insert(id, Some(at(t0, 1000 + u64::from(id))), ());
            m.remove(&id);
            assert!(m.due.len() <= 2 * m.len() + SLACK, "{}", m.due.len());
        }
        assert_eq!(m.next_deadline(), Some(at(t0, 1)));
        assert_eq!(drain_due(&mut m, at(t0, 1 << 40)), [(0, ())]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Key, deadline (ms after the epoch), or none.
        Insert(u32, Option<u64>),
        Remove(u32),
        /// Pop everything due at this many ms after the epoch.
        Expire(u64),
        Drain,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0u32..24, proptest::option::weighted(0.9, 0u64..100))
                .prop_map(|(k, d)| Op::Insert(k, d)),
            5 => (0u32..24).prop_map(Op::Remove),
            3 => (0u64..120).prop_map(Op::Expire),
            1 => Just(Op::Drain),
        ]
    }

    proptest! {
        /// Against a model (a sorted map of key to deadline and a unique
        /// token): the same earliest deadline, the same entries due in the
        /// same order, the same removals, no token out twice, and the heap
        /// bounded by the entries.
        #[test]
        fn behaves_like_the_model(ops in proptest::collection::vec(op(), 0..300)) {
            let t0 = crate::test_util::epoch();
            let mut map = DeadlineMap::new();
            let mut model: BTreeMap<u32, (Option<u64>, u64)> = BTreeMap::new();
            let mut out = HashSet::new();
            let mut token = 0u64;
            for op in ops {
                match op {
                    Op::Insert(k, d) => {
                        token += 1;
                        let old = map.insert(k, d.map(|ms| at(t0, ms)), token);
                        prop_assert_eq!(old, model.insert(k, (d, token)).map(|(_, t)| t));
                        if let Some(old) = old {
                            prop_assert!(out.insert(old));
                        }
                    }
                    Op::Remove(k) => {
                        let got = map.remove(&k);
                        prop_assert_eq!(got, model.remove(&k).map(|(_, t)| t));
                        if let Some(t) = got {
                            prop_assert!(out.insert(t));
                        }
                    }
                    Op::Expire(ms) => {
                        let mut due: Vec<(u64, u32, u64)> = model
                            .iter()
                            .filter_map(|(k, (d, t))| d.filter(|d| *d <= ms).map(|d| (d, *k, *t)))
                            .collect();
                        due.sort_unstable();
                        for (_, k, _) in &due {
                            model.remove(k);
                        }
                        let want: Vec<(u32, u64)> = due.iter().map(|(_, k, t)| (*k, *t)).collect();
                        let got = drain_due(&mut map, at(t0, ms));
                        prop_assert_eq!(&got, &want);
                        for (_, t) in got {
                            prop_assert!(out.insert(t));
                        }
                    }
                    Op::Drain => {
                        let mut got: Vec<(u32, u64)> = map.drain().collect();
                        got.sort_unstable();
                        let want: Vec<(u32, u64)> =
                            std::mem::take(&mut model).into_iter().map(|(k, (_, t))| (k, t)).collect();
                        prop_assert_eq!(&got, &want);
                        for (_, t) in got {
                            prop_assert!(out.insert(t));
                        }
                    }
                }
                let earliest = model.values().filter_map(|(d, _)| *d).min();
                prop_assert_eq!(map.next_deadline(), earliest.map(|ms| at(t0, ms)));
                prop_assert_eq!(map.len(), model.len());
                for k in 0..24 {
                    prop_assert_eq!(map.get(&k), model.get(&k).map(|(_, t)| t));
                }
                prop_assert!(map.due.len() <= 2 * map.len() + SLACK);
            }
        }
    }
}
