//! A slab with generation keys, under the timer's deadlines (`timer.rs`)
//! and the poller's sockets (`readiness.rs`).
//!
//! Values live in slots of one `Vec`; a removed value's slot goes on an
//! intrusive free list and is reused by the next insert, so memory is the
//! most values ever held at once and an insert allocates only while the
//! slab grows past that. A [`Key`] names a slot and the generation it was
//! filled in: the generation moves on when the value is removed, so a key
//! whose value is gone never reaches a later value in the same slot (until
//! that slot has been refilled 2^32 times).

/// A value's place in a [`Slab`]: its slot and that slot's generation when
/// the value went in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    slot: u32,
    generation: u32,
}

impl Key {
    /// The key as one number (the generation in the high half): for a
    /// poller's event key.
    pub(crate) fn to_bits(self) -> u64 {
        u64::from(self.generation) << 32 | u64::from(self.slot)
    }

    /// The key [`to_bits`](Self::to_bits) gave `bits` for. Any number is a
    /// key: one the slab never gave finds nothing, or a value its holder
    /// must not trust more than the event that carried it.
    pub(crate) fn from_bits(bits: u64) -> Self {
        Self {
            slot: bits as u32,
            generation: (bits >> 32) as u32,
        }
    }
}

/// Values of type `T` by [`Key`]. Insert, look-up and remove are O(1).
#[derive(Debug)]
pub(crate) struct Slab<T> {
    slots: Vec<Slot<T>>,
    /// The first free slot, [`NONE`] when every slot is full.
    free: u32,
}

#[derive(Debug)]
struct Slot<T> {
    generation: u32,
    state: State<T>,
}

#[derive(Debug)]
enum State<T> {
    Full(T),
    /// Free; the next free slot ([`NONE`]: the last).
    Free(u32),
}

/// The end of the free list. Slots number fewer than `NONE`, so no slot
/// has this index.
const NONE: u32 = u32::MAX;

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: NONE,
        }
    }
}

impl<T> Slab<T> {
    /// How many values are held (by counting: for tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        let full = |slot: &&Slot<T>| matches!(slot.state, State::Full(_));
        self.slots.iter().filter(full).count()
    }

    /// How many slots exist: the most values ever held at once.
    #[cfg(test)]
    pub(crate) fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Holds `value`; gives it back when all `u32::MAX` slots are full.
    pub(crate) fn insert(&mut self, value: T) -> Result<Key, T> {
        let slot = if self.free == NONE {
            let Ok(slot) = u32::try_from(self.slots.len()) else {
                return Err(value);
            };
            if slot == NONE {
                return Err(value);
            }
            self.slots.push(Slot {
                generation: 0,
                state: State::Free(NONE),
            });
            slot
        } else {
            self.free
        };
        let record = &mut self.slots[slot as usize];
        if let State::Free(next) = record.state {
            // `slot` was the free list's head (or the new last slot, whose
            // next is NONE, which the list's head already is).
            self.free = next;
        }
        record.state = State::Full(value);
        Ok(Key {
            slot,
            generation: record.generation,
        })
    }

    /// `key`'s value, while it is held.
    pub(crate) fn get(&self, key: Key) -> Option<&T> {
        match self.slots.get(key.slot as usize)? {
            Slot {
                generation,
                state: State::Full(value),
            } if *generation == key.generation => Some(value),
            _ => None,
        }
    }

    /// `key`'s value, while it is held.
    pub(crate) fn get_mut(&mut self, key: Key) -> Option<&mut T> {
        match self.slots.get_mut(key.slot as usize)? {
            Slot {
                generation,
                state: State::Full(value),
            } if *generation == key.generation => Some(value),
            _ => None,
        }
    }

    /// Takes `key`'s value out (`None` when it is no longer held: nothing
    /// else is touched) and frees its slot for reuse under a new
    /// generation.
    pub(crate) fn remove(&mut self, key: Key) -> Option<T> {
        let record = self.slots.get_mut(key.slot as usize)?;
        if record.generation != key.generation || matches!(record.state, State::Free(_)) {
            return None;
        }
        let State::Full(value) = std::mem::replace(&mut record.state, State::Free(self.free))
        else {
            unreachable!("the slot was checked full");
        };
        record.generation = record.generation.wrapping_add(1);
        self.free = key.slot;
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_stale_key_reaches_nothing_after_its_slot_is_reused() {
        let mut slab = Slab::default();
        let a = slab.insert("a").unwrap();
        let b = slab.insert("b").unwrap();
        assert_eq!(slab.remove(a), Some("a"));
        let c = slab.insert("c").unwrap();
        assert_eq!(slab.slots(), 2, "a's slot was reused");
        assert_eq!(slab.get(a), None);
        assert_eq!(slab.get_mut(a), None);
        assert_eq!(slab.remove(a), None);
        assert_eq!(slab.get(c), Some(&"c"));
        assert_eq!(slab.get(b), Some(&"b"));
        assert_eq!(slab.len(), 2);
        assert_eq!(Key::from_bits(c.to_bits()), c);
        assert_ne!(a.to_bits(), c.to_bits());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert,
        Remove(usize),
        Get(usize),
        Set(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Insert),
            2 => any::<usize>().prop_map(Op::Remove),
            2 => any::<usize>().prop_map(Op::Get),
            1 => any::<usize>().prop_map(Op::Set),
        ]
    }

    proptest! {
        /// Random inserts, removals, look-ups and writes (with stale keys
        /// too) against a plain map of what is held.
        #[test]
        fn slab_matches_a_simple_model(ops in prop::collection::vec(op(), 1..300)) {
            let mut slab = Slab::default();
            // Every key ever issued, by id; what is held: id -> value.
            let mut keys = Vec::new();
            let mut model = BTreeMap::new();
            let mut most = 0;
            for op in ops {
                match op {
                    Op::Insert => {
                        let id = keys.len();
                        let key = slab.insert((id, 0)).unwrap();
                        prop_assert!(!keys.contains(&key), "a key is never issued twice");
                        keys.push(key);
                        model.insert(id, (id, 0));
                    }
                    Op::Remove(pick) if !keys.is_empty() => {
                        let id = pick % keys.len();
                        prop_assert_eq!(slab.remove(keys[id]), model.remove(&id));
                    }
                    Op::Get(pick) if !keys.is_empty() => {
                        let id = pick % keys.len();
                        prop_assert_eq!(slab.get(keys[id]), model.get(&id));
                        let key = Key::from_bits(keys[id].to_bits());
                        prop_assert_eq!(slab.get(key), model.get(&id));
                    }
                    Op::Set(pick) if !keys.is_empty() => {
                        let id = pick % keys.len();
                        match (slab.get_mut(keys[id]), model.get_mut(&id)) {
                            (Some(value), Some(held)) => {
                                prop_assert_eq!(*value, *held);
                                value.1 += 1;
                                held.1 += 1;
                            }
                            (None, None) => {}
                            (value, held) => prop_assert!(false, "{:?} against {:?}", value, held),
                        }
                    }
                    Op::Remove(_) | Op::Get(_) | Op::Set(_) => {}
                }
                most = most.max(model.len());
                prop_assert_eq!(slab.len(), model.len());
                // Memory: no more slots than values ever held at once.
                prop_assert_eq!(slab.slots(), most);
            }
        }
    }
}
