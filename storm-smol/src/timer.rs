//! storm-smol's timer: every [`Runtime::sleep_until`](storm_async::runtime::Runtime::sleep_until)
//! of the process under one async-io `Timer`.
//!
//! async-io keeps its timers in a `BTreeMap` that every turn of its reactor
//! splits at the current time (allocating nodes), so each turn costs more
//! the more timers are armed — and every connection arms one (its idle
//! timeout, heartbeat or idle-buffer return). Here the deadlines live in
//! [`Timers`], an indexed binary heap over a slab (no allocation once it
//! has grown to the most sleeps ever armed at once), and async-io holds one
//! timer, for the earliest of them rounded up to the next [`TICK`]
//! (deadlines within one tick fire together; nothing fires early).
//!
//! When that timer fires, its waker (on whichever thread runs the reactor)
//! takes every due deadline out of the heap, wakes their tasks, and arms
//! the async-io timer for the next one. A sleep that comes earlier than the
//! armed tick re-arms it; one that comes later, or goes away, leaves it:
//! it then fires once for nothing and is armed for what is left.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use crate::slab::{Key, Slab};

/// The granularity of the async-io timer under every sleep: a deadline
/// fires at most this much after it (plus the reactor's own delay).
pub(crate) const TICK: Duration = Duration::from_millis(1);

#[derive(Debug)]
struct Entry<W> {
    waker: W,
    /// Index of this entry in [`Timers::heap`].
    position: u32,
}

/// Deadlines, each with a waker (`W`; any value in tests): a binary
/// min-heap of `(deadline, key)` over a [`Slab`] of entries, each entry
/// knowing its place in the heap. Insert, remove and take-the-earliest are
/// O(log n); the earliest is O(1). Memory is the most deadlines ever held
/// at once: a removed or fired deadline's slot is reused, and its key (the
/// slab's, with a generation) never reaches a later deadline there.
#[derive(Debug)]
pub(crate) struct Timers<W> {
    heap: Vec<(Instant, Key)>,
    entries: Slab<Entry<W>>,
}

impl<W> Default for Timers<W> {
    fn default() -> Self {
        Self {
            heap: Vec::new(),
            entries: Slab::default(),
        }
    }
}

impl<W> Timers<W> {
    /// How many deadlines are held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    /// The earliest deadline held.
    pub(crate) fn earliest(&self) -> Option<Instant> {
        self.heap.first().map(|&(at, _)| at)
    }

    /// Holds `waker` until `at`; the key removes it or changes its waker.
    ///
    /// # Panics
    ///
    /// With `u32::MAX` deadlines held at once.
    pub(crate) fn insert(&mut self, at: Instant, waker: W) -> Key {
        let position = u32::try_from(self.heap.len()).expect("fewer than 2^32 timers");
        let Ok(key) = self.entries.insert(Entry { waker, position }) else {
            panic!("fewer than 2^32 timers");
        };
        self.heap.push((at, key));
        self.sift_up(position as usize);
        key
    }

    /// Replaces the waker of `key`'s deadline and gives the old one back;
    /// gives `waker` back as the error when the deadline is no longer held
    /// (it fired or was removed).
    pub(crate) fn set_waker(&mut self, key: Key, waker: W) -> Result<W, W> {
        match self.entries.get_mut(key) {
            Some(entry) => Ok(std::mem::replace(&mut entry.waker, waker)),
            None => Err(waker),
        }
    }

    /// Removes `key`'s deadline and gives its waker back (`None` when it
    /// is no longer held: nothing else is touched).
    pub(crate) fn remove(&mut self, key: Key) -> Option<W> {
        let position = self.entries.get(key)?.position as usize;
        Some(self.remove_at(position).1)
    }

    /// Takes the earliest deadline out if it is at or before `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Instant, W)> {
        match self.heap.first() {
            Some(&(at, _)) if at <= now => Some(self.remove_at(0)),
            _ => None,
        }
    }

    /// Removes the heap's entry at `position` and frees its slot.
    fn remove_at(&mut self, position: usize) -> (Instant, W) {
        let (at, key) = self.heap.swap_remove(position);
        if position < self.heap.len() {
            self.place(position);
            // The entry moved here from the end may belong above or below.
            let position = self.sift_up(position);
            self.sift_down(position);
        }
        let entry = self
            .entries
            .remove(key)
            .expect("a heap entry's key is held");
        (at, entry.waker)
    }

    /// Tells the slot of the heap's entry at `position` where it is.
    fn place(&mut self, position: usize) {
        if let Some(entry) = self.entries.get_mut(self.heap[position].1) {
            // Heap positions fit in u32: `insert` checked the length.
            entry.position = position as u32;
        }
    }

    fn sift_up(&mut self, mut position: usize) -> usize {
        while position > 0 {
            let parent = (position - 1) / 2;
            if self.heap[parent].0 <= self.heap[position].0 {
                break;
            }
            self.heap.swap(parent, position);
            self.place(position);
            position = parent;
        }
        self.place(position);
        position
    }

    fn sift_down(&mut self, mut position: usize) {
        loop {
            let left = 2 * position + 1;
            if left >= self.heap.len() {
                break;
            }
            let right = left + 1;
            let child = if right < self.heap.len() && self.heap[right].0 < self.heap[left].0 {
                right
            } else {
                left
            };
            if self.heap[position].0 <= self.heap[child].0 {
                break;
            }
            self.heap.swap(position, child);
            self.place(position);
            position = child;
        }
        self.place(position);
    }
}

/// The deadlines of a process (or of a test) and the one async-io timer
/// under them.
#[derive(Debug)]
pub(crate) struct Deadlines {
    state: Mutex<State>,
    /// The async-io timer's waker: takes the due deadlines out.
    fire: OnceLock<Waker>,
    /// Ticks count from here.
    origin: Instant,
}

#[derive(Debug)]
struct State {
    timers: Timers<Waker>,
    /// The async-io timer, for `armed` when that is `Some`.
    timer: async_io::Timer,
    /// The tick the async-io timer is armed for.
    armed: Option<Instant>,
}

/// The process's deadlines, under every [`Sleep`] that [`Deadlines::global`]
/// gives.
static GLOBAL: LazyLock<Deadlines> = LazyLock::new(Deadlines::new);

/// The async-io timer's waker.
#[derive(Debug)]
struct Fire(&'static Deadlines);

impl Wake for Fire {
    fn wake(self: Arc<Self>) {
        self.0.expire();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.expire();
    }
}

impl Deadlines {
    /// An empty deadlines. Sleeps need it `'static`: the process's is
    /// [`Deadlines::global`]; a test leaks one of its own.
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(State {
                timers: Timers::default(),
                timer: async_io::Timer::never(),
                armed: None,
            }),
            fire: OnceLock::new(),
            origin: Instant::now(),
        }
    }

    /// The process's deadlines.
    pub(crate) fn global() -> &'static Self {
        &GLOBAL
    }

    /// A future that completes at `deadline` (at once when it has passed),
    /// never before it as [`Instant::now`] tells.
    pub(crate) fn sleep_until(&'static self, deadline: Instant) -> Sleep {
        Sleep {
            deadlines: self,
            deadline,
            armed: None,
        }
    }

    /// How many sleeps wait on this deadlines.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().timers.len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::lock(&self.state)
    }

    /// The first tick at or after `at`.
    fn tick(&self, at: Instant) -> Instant {
        let since = at.saturating_duration_since(self.origin);
        let tick = TICK.as_nanos();
        let ticks = since.as_nanos().div_ceil(tick);
        // Past what a `Duration` holds: no rounding (still not early).
        u64::try_from(ticks * tick)
            .ok()
            .and_then(|nanos| self.origin.checked_add(Duration::from_nanos(nanos)))
            .filter(|&rounded| rounded >= at)
            .unwrap_or(at)
    }

    fn fire_waker(&'static self) -> &'static Waker {
        self.fire.get_or_init(|| Waker::from(Arc::new(Fire(self))))
    }

    /// Holds `waker` until `deadline`, arming the async-io timer when this
    /// is now the earliest tick.
    fn insert(&'static self, deadline: Instant, waker: Waker) -> Key {
        let mut due = Vec::new();
        let mut state = self.lock();
        let key = state.timers.insert(deadline, waker);
        let tick = self.tick(deadline);
        if state.armed.is_none_or(|armed| tick < armed) && !self.arm(&mut state, tick) {
            self.take_due(&mut state, &mut due);
        }
        drop(state);
        due.into_iter().for_each(Waker::wake);
        key
    }

    /// Gives `key`'s deadline the waker `waker`; `false` when it fired.
    fn set_waker(&self, key: Key, waker: Waker) -> bool {
        let mut state = self.lock();
        let replaced = state.timers.set_waker(key, waker);
        drop(state);
        // Wakers are dropped outside the lock: dropping a task's last one
        // may drop the task, and a sleep in it.
        replaced.is_ok()
    }

    /// Removes `key`'s deadline (nothing when it fired).
    fn remove(&self, key: Key) {
        let mut state = self.lock();
        let removed = state.timers.remove(key);
        drop(state);
        drop(removed);
    }

    /// Takes every due deadline out and wakes its task; arms the async-io
    /// timer for the next one.
    fn expire(&'static self) {
        let mut due = Vec::new();
        let mut state = self.lock();
        self.take_due(&mut state, &mut due);
        drop(state);
        due.into_iter().for_each(Waker::wake);
    }

    /// Moves the due deadlines' wakers to `due` and arms the async-io timer
    /// for the earliest one left (or leaves it unarmed).
    fn take_due(&'static self, state: &mut State, due: &mut Vec<Waker>) {
        loop {
            let now = Instant::now();
            while let Some((_, waker)) = state.timers.pop_due(now) {
                due.push(waker);
            }
            let Some(next) = state.timers.earliest() else {
                state.timer.clear();
                state.armed = None;
                return;
            };
            // A tick that passed meanwhile takes another round, which
            // takes at least `next`: this ends.
            if self.arm(state, self.tick(next)) {
                return;
            }
        }
    }

    /// Arms the async-io timer for `tick`; `false` when the tick has
    /// passed (the timer is then unarmed).
    fn arm(&'static self, state: &mut State, tick: Instant) -> bool {
        if state.armed != Some(tick) {
            state.timer.set_at(tick);
            state.armed = Some(tick);
        }
        let mut cx = Context::from_waker(self.fire_waker());
        if Pin::new(&mut state.timer).poll(&mut cx).is_ready() {
            state.armed = None;
            return false;
        }
        true
    }
}

impl Default for Deadlines {
    fn default() -> Self {
        Self::new()
    }
}

/// A sleep on a [`Deadlines`] until a deadline.
///
/// It holds a place in the deadlines from its first pending poll until it
/// completes or is dropped, so a sleep that is dropped leaves nothing
/// behind.
#[derive(Debug)]
#[must_use = "a sleep does nothing unless awaited"]
pub(crate) struct Sleep {
    deadlines: &'static Deadlines,
    deadline: Instant,
    /// Its place in the deadlines, and the waker it was given there.
    armed: Option<(Key, Waker)>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if Instant::now() >= this.deadline {
            if let Some((key, _)) = this.armed.take() {
                // Still there unless it fired.
                this.deadlines.remove(key);
            }
            return Poll::Ready(());
        }
        match &mut this.armed {
            None => {
                let key = this.deadlines.insert(this.deadline, cx.waker().clone());
                this.armed = Some((key, cx.waker().clone()));
            }
            Some((key, waker)) if !waker.will_wake(cx.waker()) => {
                if !this.deadlines.set_waker(*key, cx.waker().clone()) {
                    // It fired: its deadline passed after the clock was read.
                    this.armed = None;
                    return Poll::Ready(());
                }
                waker.clone_from(cx.waker());
            }
            Some(_) => {}
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some((key, _)) = self.armed.take() {
            self.deadlines.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::mpsc;

    use proptest::prelude::*;

    use super::*;
    use crate::testing::Tell;

    /// The most a test waits for one event.
    const WAIT: Duration = Duration::from_secs(10);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn timers_give_the_earliest_first_and_a_stale_key_touches_nothing() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        let late = timers.insert(t0 + ms(30), "late");
        let early = timers.insert(t0 + ms(10), "early");
        let middle = timers.insert(t0 + ms(20), "middle");
        assert_eq!(timers.earliest(), Some(t0 + ms(10)));
        assert_eq!(timers.remove(middle), Some("middle"));
        assert_eq!(timers.pop_due(t0 + ms(9)), None);
        assert_eq!(timers.pop_due(t0 + ms(10)), Some((t0 + ms(10), "early")));
        // The freed slots are reused; the old keys do not reach the new
        // deadlines in them.
        let again = timers.insert(t0 + ms(5), "again");
        let more = timers.insert(t0 + ms(6), "more");
        assert_eq!(timers.remove(early), None);
        assert_eq!(timers.remove(middle), None);
        assert_eq!(timers.set_waker(early, "stale"), Err("stale"));
        assert_eq!(timers.len(), 3);
        assert_eq!(timers.set_waker(more, "more2"), Ok("more"));
        assert_eq!(timers.pop_due(t0 + ms(100)), Some((t0 + ms(5), "again")));
        assert_eq!(timers.pop_due(t0 + ms(100)), Some((t0 + ms(6), "more2")));
        assert_eq!(timers.remove(late), Some("late"));
        assert_eq!(timers.remove(again), None);
        assert_eq!(timers.len(), 0);
        assert_eq!(timers.earliest(), None);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u16),
        Remove(usize),
        SetWaker(usize),
        PopDue(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u16..200).prop_map(Op::Insert),
            2 => any::<usize>().prop_map(Op::Remove),
            1 => any::<usize>().prop_map(Op::SetWaker),
            1 => (0u16..200).prop_map(Op::PopDue),
        ]
    }

    proptest! {
        /// Random arms, re-arms (new wakers), removals (with stale keys
        /// too) and expiries against a plain map of what is held.
        #[test]
        fn timers_match_a_simple_model(ops in prop::collection::vec(op(), 1..300)) {
            let t0 = Instant::now();
            let mut timers = Timers::default();
            // Every key ever issued, by id; what is held: id -> (at, waker).
            let mut keys = Vec::new();
            let mut model: BTreeMap<usize, (Instant, (usize, u32))> = BTreeMap::new();
            let mut most = 0;
            for op in ops {
                match op {
                    Op::Insert(at) => {
                        let id = keys.len();
                        let at = t0 + ms(u64::from(at));
                        keys.push(timers.insert(at, (id, 0)));
                        model.insert(id, (at, (id, 0)));
                    }
                    Op::Remove(pick) if !keys.is_empty() => {
                        let id = pick % keys.len();
                        let held = model.remove(&id).map(|(_, waker)| waker);
                        prop_assert_eq!(timers.remove(keys[id]), held);
                    }
                    Op::SetWaker(pick) if !keys.is_empty() => {
                        let id = pick % keys.len();
                        match model.get_mut(&id) {
                            Some((_, waker)) => {
                                let new = (id, waker.1 + 1);
                                prop_assert_eq!(timers.set_waker(keys[id], new), Ok(*waker));
                                *waker = new;
                            }
                            None => {
                                prop_assert_eq!(timers.set_waker(keys[id], (id, 99)), Err((id, 99)));
                            }
                        }
                    }
                    Op::PopDue(now) => {
                        let now = t0 + ms(u64::from(now));
                        while let Some((at, waker)) = timers.pop_due(now) {
                            let earliest = model.values().map(|&(at, _)| at).min();
                            prop_assert_eq!(Some(at), earliest);
                            prop_assert!(at <= now);
                            prop_assert_eq!(model.remove(&waker.0), Some((at, waker)));
                        }
                        prop_assert!(model.values().all(|&(at, _)| at > now));
                    }
                    Op::Remove(_) | Op::SetWaker(_) => {}
                }
                most = most.max(model.len());
                prop_assert_eq!(timers.len(), model.len());
                prop_assert_eq!(timers.earliest(), model.values().map(|&(at, _)| at).min());
                // Memory: no more slots than deadlines ever held at once.
                prop_assert!(timers.entries.slots() <= most);
            }
        }
    }

    fn deadlines() -> &'static Deadlines {
        Box::leak(Box::new(Deadlines::new()))
    }

    fn poll_once(sleep: &mut Sleep, waker: &Waker) -> Poll<()> {
        Pin::new(sleep).poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn sleeps_never_complete_before_their_deadlines() {
        let deadlines = deadlines();
        let t0 = Instant::now();
        let sleeps = (0..200u64).map(|i| {
            let deadline = t0 + Duration::from_micros(i * 137 % 40_000);
            async move {
                deadlines.sleep_until(deadline).await;
                (deadline, Instant::now())
            }
        });
        let tasks: Vec<_> = sleeps.map(smol::spawn).collect();
        smol::block_on(smol::future::or(
            async {
                for task in tasks {
                    let (deadline, done) = task.await;
                    assert!(done >= deadline, "completed {:?} early", deadline - done);
                }
            },
            async {
                smol::Timer::after(WAIT).await;
                panic!("the sleeps did not complete within {WAIT:?}");
            },
        ));
        assert_eq!(deadlines.len(), 0);
    }

    #[test]
    fn dropped_sleeps_leave_nothing_behind() {
        let deadlines = deadlines();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut sleeps: Vec<_> = (0..1000).map(|_| deadlines.sleep_until(deadline)).collect();
        for sleep in &mut sleeps {
            assert!(poll_once(sleep, Waker::noop()).is_pending());
        }
        assert_eq!(deadlines.len(), 1000);
        drop(sleeps);
        assert_eq!(deadlines.len(), 0);
        // A sleep whose deadline has passed completes without a place.
        let mut past = deadlines.sleep_until(Instant::now());
        assert!(poll_once(&mut past, Waker::noop()).is_ready());
        assert_eq!(deadlines.len(), 0);
    }

    #[test]
    fn an_earlier_sleep_fires_though_a_later_one_armed_the_timer() {
        let deadlines = deadlines();
        let (tx, rx) = mpsc::channel();
        let mut late = deadlines.sleep_until(Instant::now() + Duration::from_secs(60));
        let mut early = deadlines.sleep_until(Instant::now() + ms(20));
        assert!(
            poll_once(&mut late, &Waker::from(Arc::new(Tell(tx.clone(), "late")))).is_pending()
        );
        let woken = Waker::from(Arc::new(Tell(tx, "early")));
        assert!(poll_once(&mut early, &woken).is_pending());
        // No executor: async-io's own thread runs the reactor.
        assert_eq!(rx.recv_timeout(WAIT), Ok("early"));
        assert!(poll_once(&mut early, &woken).is_ready());
        assert_eq!(deadlines.len(), 1);
        drop(late);
        assert_eq!(deadlines.len(), 0);
    }

    #[test]
    fn a_sleep_polled_by_another_task_wakes_that_one() {
        let deadlines = deadlines();
        let (tx, rx) = mpsc::channel();
        let deadline = Instant::now() + ms(30);
        let mut sleep = deadlines.sleep_until(deadline);
        let first = Waker::from(Arc::new(Tell(tx.clone(), "first")));
        let second = Waker::from(Arc::new(Tell(tx, "second")));
        assert!(poll_once(&mut sleep, &first).is_pending());
        assert!(poll_once(&mut sleep, &second).is_pending());
        assert_eq!(rx.recv_timeout(WAIT), Ok("second"));
        assert!(Instant::now() >= deadline);
        assert!(poll_once(&mut sleep, &second).is_ready());
        // The first waker was let go and never woken.
        assert!(rx.try_recv().is_err());
        assert_eq!(deadlines.len(), 0);
    }

    #[test]
    fn ticks_round_up_to_the_millisecond_and_never_down() {
        let deadlines = deadlines();
        let on_tick = deadlines.origin + ms(5);
        assert_eq!(deadlines.tick(on_tick), on_tick);
        assert_eq!(
            deadlines.tick(on_tick + Duration::from_nanos(1)),
            on_tick + ms(1)
        );
        assert_eq!(deadlines.tick(on_tick - Duration::from_nanos(1)), on_tick);
        let far = deadlines.origin + Duration::from_secs(86_400 * 365 * 100);
        assert!(deadlines.tick(far) >= far);
    }
}
