//! Backpressure: pending-byte accounting with pause/resume watermarks, and
//! the slow-consumer decision for a send that does not fit.
//!
//! Two pieces, both plain single-owner values (storm-host's `hub` wraps
//! them in its per-session lock):
//!
//! - [`Watermark`] counts pending bytes against a limit. It *pauses* when the
//!   pending bytes reach the limit (or when a send is refused) and *resumes*
//!   only once they have drained to half the limit. The gap between the two
//!   thresholds is the hysteresis: a session hovering around the limit does
//!   not flip between paused and writable on every message. A limit of `0`
//!   means unlimited: never paused. Used for the receive side as is (the
//!   adapter stops reading while it is paused).
//! - [`SendBudget`] is the send side: a watermark plus a
//!   [`SlowConsumerPolicy`] that decides what happens to a send that does not
//!   fit ([`Verdict`]), and counts the messages it dropped.
//!
//! # The admission rule
//!
//! A send of `len` bytes is admitted when the budget is not paused and
//! `pending + len <= limit`. **One exception:** when nothing is pending, a
//! single message larger than the whole limit is admitted (and pauses the
//! budget at once); otherwise such a message could never be sent. So pending
//! bytes never exceed the limit, except while the one oversized message is
//! the only thing pending. Cap message sizes with the framer or WebSocket
//! limits if that matters.
//!
//! Pending bytes are whatever the caller says they are: the hub counts a
//! message from the moment it is queued until the writer reports it written
//! ([`SendBudget::on_flushed`]), so bytes handed to a socket but not yet
//! confirmed still count.
//!
//! ```
//! use storm_proto::backpressure::{FlowChange, SendBudget, SlowConsumerPolicy, Verdict};
//!
//! let mut budget = SendBudget::new(100, SlowConsumerPolicy::Wait);
//! assert_eq!(budget.offer(60), Verdict::Admit);
//! assert_eq!(budget.offer(60), Verdict::Wait); // would exceed 100: paused
//! assert!(budget.is_backpressured());
//! assert_eq!(budget.on_flushed(5), FlowChange::Unchanged); // 55 > 50
//! assert_eq!(budget.offer(10), Verdict::Wait); // still paused (hysteresis)
//! assert_eq!(budget.on_flushed(5), FlowChange::Resumed); // 50 <= 100 / 2
//! assert_eq!(budget.offer(50), Verdict::Admit);
//! ```

use std::fmt;

/// Default of both pending-byte limits: 1 MiB.
pub const DEFAULT_MAX_PENDING_BYTES: usize = 1024 * 1024;

/// What a send that does not fit does. Applies to single sends and, per
/// session, to broadcasts (see [`SendBudget::offer_overflow`]).
///
/// Default: [`Wait`](Self::Wait).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum SlowConsumerPolicy {
    /// The sender waits until the session is writable again (reliable
    /// delivery; memory stays bounded because the sender is held back).
    #[default]
    Wait,
    /// The message is dropped for this session and counted (real-time data
    /// where a stale message is useless: game state, tickers, chat).
    Drop,
    /// The session is disconnected at once (an abort, not a graceful close:
    /// a consumer this slow would not read a close frame either).
    Disconnect,
}

/// Backpressure limits and policy of one session.
///
/// ```
/// use storm_proto::backpressure::{BackpressureConfig, SlowConsumerPolicy};
///
/// let mut config = BackpressureConfig::default();
/// config.max_pending_send_bytes = 256 * 1024;
/// config.slow_consumer_policy = SlowConsumerPolicy::Drop;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackpressureConfig {
    /// Bytes queued for sending (and not yet reported written) at which a
    /// session becomes backpressured; it is writable again at half. `0` =
    /// unlimited (not recommended: one slow consumer can exhaust memory).
    ///
    /// Default: [`DEFAULT_MAX_PENDING_BYTES`] (1 MiB per session).
    pub max_pending_send_bytes: usize,
    /// Bytes read but not yet consumed by the application at which the
    /// adapter stops reading; it reads again at half. `0` = unlimited.
    ///
    /// Default: [`DEFAULT_MAX_PENDING_BYTES`] (1 MiB per session).
    pub max_pending_receive_bytes: usize,
    /// What a send that does not fit does.
    ///
    /// Default: [`SlowConsumerPolicy::Wait`].
    pub slow_consumer_policy: SlowConsumerPolicy,
}

impl Default for BackpressureConfig {
    fn default() -> Self {
        Self {
            max_pending_send_bytes: DEFAULT_MAX_PENDING_BYTES,
            max_pending_receive_bytes: DEFAULT_MAX_PENDING_BYTES,
            slow_consumer_policy: SlowConsumerPolicy::Wait,
        }
    }
}

/// How an accounting step changed the paused state.
#[must_use = "a Resumed change must wake whoever waits for writability"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowChange {
    /// The paused state did not change.
    Unchanged,
    /// The watermark just became paused (backpressured).
    Paused,
    /// The watermark just resumed: wake the senders (or the reader) waiting
    /// for it.
    Resumed,
}

/// Pending bytes against a limit, with pause at the limit and resume at half.
///
/// A limit of `0` means unlimited: the watermark counts but never pauses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watermark {
    limit: usize,
    pending: usize,
    paused: bool,
}

impl Watermark {
    /// An empty, unpaused watermark with the given limit (`0` = unlimited).
    pub const fn new(limit: usize) -> Self {
        Self {
            limit,
            pending: 0,
            paused: false,
        }
    }

    /// The limit (`0` = unlimited).
    pub const fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes currently pending.
    pub const fn pending(&self) -> usize {
        self.pending
    }

    /// Whether the watermark is paused: it reached the limit (or refused a
    /// send) and has not yet drained to half the limit.
    pub const fn is_paused(&self) -> bool {
        self.paused
    }

    /// The level at or below which a paused watermark resumes: half the
    /// limit, rounded down.
    pub const fn resume_at(&self) -> usize {
        self.limit / 2
    }

    /// Whether `len` more bytes may be admitted now: not paused and within
    /// the limit, or nothing pending at all (the oversized-message
    /// exception, see the [module docs](self)). Always true when unlimited.
    pub const fn fits(&self, len: usize) -> bool {
        if self.limit == 0 {
            return true;
        }
        if self.paused {
            return false;
        }
        // pending <= limit while not paused, so this cannot underflow.
        self.pending == 0 || len <= self.limit.saturating_sub(self.pending)
    }

    /// Counts `len` more pending bytes unconditionally (use [`fits`](Self::fits)
    /// first to respect the limit; the receive side uses it as is, since the
    /// bytes were already read). Pauses when the limit is reached.
    pub fn add(&mut self, len: usize) -> FlowChange {
        self.pending = self.pending.saturating_add(len);
        if self.limit != 0 && !self.paused && self.pending >= self.limit {
            self.paused = true;
            return FlowChange::Paused;
        }
        FlowChange::Unchanged
    }

    /// Pauses without adding bytes: a send was refused because it did not
    /// fit. The watermark resumes only at half the limit, so the refused
    /// sender cannot squeeze in again right away. No effect when unlimited.
    pub fn pause(&mut self) -> FlowChange {
        if self.limit != 0 && !self.paused {
            self.paused = true;
            return FlowChange::Paused;
        }
        FlowChange::Unchanged
    }

    /// Releases `len` pending bytes (saturating at zero). Resumes when the
    /// pending bytes drop to [`resume_at`](Self::resume_at) or below.
    pub fn release(&mut self, len: usize) -> FlowChange {
        self.pending = self.pending.saturating_sub(len);
        if self.paused && self.pending <= self.resume_at() {
            self.paused = false;
            return FlowChange::Resumed;
        }
        FlowChange::Unchanged
    }
}

/// The decision for one send. For every refusal the caller still owns the
/// payload (the hub hands it back).
#[must_use = "a refused send must be waited for, dropped or disconnected"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The bytes were counted as pending: queue the message.
    Admit,
    /// [`SlowConsumerPolicy::Wait`]: not admitted; try again once the budget
    /// resumes (a [`FlowChange::Resumed`] from [`SendBudget::on_flushed`]).
    Wait,
    /// [`SlowConsumerPolicy::Drop`]: not admitted, counted in
    /// [`SendBudget::dropped_messages`]. Do not retry.
    Drop,
    /// [`SlowConsumerPolicy::Disconnect`]: not admitted; abort the session.
    Disconnect,
}

/// Send-side accounting of one session: a [`Watermark`] plus the
/// [`SlowConsumerPolicy`] for sends that do not fit.
///
/// Invariant (tested under any interleaving of offers and flushes):
/// [`pending`](Self::pending) never exceeds the limit after an
/// [`offer`](Self::offer), except when the offer was made with nothing
/// pending (one oversized message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendBudget {
    window: Watermark,
    policy: SlowConsumerPolicy,
    dropped_messages: u64,
    dropped_bytes: u64,
}

impl SendBudget {
    /// A budget of `limit` pending bytes (`0` = unlimited) with `policy`.
    pub const fn new(limit: usize, policy: SlowConsumerPolicy) -> Self {
        Self {
            window: Watermark::new(limit),
            policy,
            dropped_messages: 0,
            dropped_bytes: 0,
        }
    }

    /// The send budget described by `config`.
    pub const fn from_config(config: &BackpressureConfig) -> Self {
        Self::new(config.max_pending_send_bytes, config.slow_consumer_policy)
    }

    /// Decides a send of `len` bytes under the policy: [`Verdict::Admit`]
    /// (bytes now pending) if it [fits](Watermark::fits), otherwise the
    /// budget pauses and the policy answers [`Verdict::Wait`],
    /// [`Verdict::Drop`] (counted) or [`Verdict::Disconnect`].
    pub fn offer(&mut self, len: usize) -> Verdict {
        if self.window.fits(len) {
            let _ = self.window.add(len);
            return Verdict::Admit;
        }
        let _ = self.window.pause();
        match self.policy {
            SlowConsumerPolicy::Wait => Verdict::Wait,
            SlowConsumerPolicy::Drop => {
                self.count_drop(len);
                Verdict::Drop
            }
            SlowConsumerPolicy::Disconnect => Verdict::Disconnect,
        }
    }

    /// Admits `len` bytes the sender cannot drop or refuse, only hold back
    /// (a protocol's own control replies): `true` (bytes now pending) if
    /// they [fit](Watermark::fits); otherwise `false` and the budget pauses,
    /// as for a refused send, until it drains to half. The policy does not
    /// apply and nothing is counted as dropped.
    pub fn admit(&mut self, len: usize) -> bool {
        if self.window.fits(len) {
            let _ = self.window.add(len);
            return true;
        }
        let _ = self.window.pause();
        false
    }

    /// Decides a send that must not wait (a broadcast: one slow session may
    /// never hold the others up). Like [`offer`](Self::offer), except for the
    /// [`Wait`](SlowConsumerPolicy::Wait) policy: the message is queued
    /// anyway past the limit, up to a hard cap of `limit + overflow` pending
    /// bytes ([`Verdict::Admit`]); beyond the cap it is dropped and counted
    /// ([`Verdict::Drop`]). Never returns [`Verdict::Wait`]. With an
    /// unlimited budget everything is admitted.
    pub fn offer_overflow(&mut self, len: usize, overflow: usize) -> Verdict {
        match self.offer(len) {
            Verdict::Wait => {
                let cap = self.window.limit.saturating_add(overflow);
                if self
                    .window
                    .pending
                    .checked_add(len)
                    .is_some_and(|total| total <= cap)
                {
                    let _ = self.window.add(len);
                    Verdict::Admit
                } else {
                    self.count_drop(len);
                    Verdict::Drop
                }
            }
            other => other,
        }
    }

    /// Reports `len` bytes written (no longer pending). Returns
    /// [`FlowChange::Resumed`] when the budget drops to half its limit:
    /// wake the senders waiting under [`Verdict::Wait`].
    pub fn on_flushed(&mut self, len: usize) -> FlowChange {
        self.window.release(len)
    }

    /// Forgets `len` pending bytes that will never be written (an aborted
    /// session discarding its queue). Same as [`on_flushed`](Self::on_flushed).
    pub fn discard(&mut self, len: usize) -> FlowChange {
        self.window.release(len)
    }

    /// Whether sends are currently refused (paused until half drained).
    pub const fn is_backpressured(&self) -> bool {
        self.window.is_paused()
    }

    /// Bytes pending (admitted and not yet flushed).
    pub const fn pending(&self) -> usize {
        self.window.pending()
    }

    /// The limit (`0` = unlimited).
    pub const fn limit(&self) -> usize {
        self.window.limit()
    }

    /// The slow-consumer policy.
    pub const fn policy(&self) -> SlowConsumerPolicy {
        self.policy
    }

    /// Changes the slow-consumer policy for later sends.
    pub fn set_policy(&mut self, policy: SlowConsumerPolicy) {
        self.policy = policy;
    }

    /// Counts a message of `len` bytes dropped before it was offered (its
    /// framing refused it).
    pub fn count_dropped(&mut self, len: usize) {
        self.count_drop(len);
    }

    /// Messages dropped by the [`Drop`](SlowConsumerPolicy::Drop) policy,
    /// by [`offer_overflow`](Self::offer_overflow) past its cap, or
    /// [counted](Self::count_dropped) by the caller.
    pub const fn dropped_messages(&self) -> u64 {
        self.dropped_messages
    }

    /// Bytes of the dropped messages.
    pub const fn dropped_bytes(&self) -> u64 {
        self.dropped_bytes
    }

    fn count_drop(&mut self, len: usize) {
        self.dropped_messages = self.dropped_messages.saturating_add(1);
        self.dropped_bytes = self
            .dropped_bytes
            .saturating_add(u64::try_from(len).unwrap_or(u64::MAX));
    }
}

impl fmt::Display for SlowConsumerPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Wait => "wait",
            Self::Drop => "drop",
            Self::Disconnect => "disconnect",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn defaults() {
        let config = BackpressureConfig::default();
        assert_eq!(config.max_pending_send_bytes, 1 << 20);
        assert_eq!(config.max_pending_receive_bytes, 1 << 20);
        assert_eq!(config.slow_consumer_policy, SlowConsumerPolicy::Wait);
        let budget = SendBudget::from_config(&config);
        assert_eq!(budget.limit(), 1 << 20);
        assert!(!budget.is_backpressured());
    }

    #[test]
    fn pauses_at_limit_and_resumes_at_half() {
        let mut w = Watermark::new(100);
        assert_eq!(w.add(99), FlowChange::Unchanged);
        assert_eq!(w.add(1), FlowChange::Paused);
        assert!(w.is_paused());
        assert!(!w.fits(1));
        assert_eq!(w.release(49), FlowChange::Unchanged); // 51
        assert!(w.is_paused());
        assert_eq!(w.release(1), FlowChange::Resumed); // 50
        assert!(!w.is_paused());
        assert!(w.fits(50));
        assert!(!w.fits(51));
    }

    #[test]
    fn unlimited_never_pauses() {
        let mut budget = SendBudget::new(0, SlowConsumerPolicy::Disconnect);
        for _ in 0..10 {
            assert_eq!(budget.offer(usize::MAX / 4), Verdict::Admit);
        }
        assert!(!budget.is_backpressured());
        let mut w = Watermark::new(0);
        assert_eq!(w.pause(), FlowChange::Unchanged);
        assert!(!w.is_paused());
    }

    #[test]
    fn oversized_message_admitted_only_when_empty() {
        let mut budget = SendBudget::new(10, SlowConsumerPolicy::Wait);
        assert_eq!(budget.offer(1), Verdict::Admit);
        assert_eq!(budget.offer(50), Verdict::Wait);
        assert_eq!(budget.on_flushed(1), FlowChange::Resumed);
        assert_eq!(budget.offer(50), Verdict::Admit);
        assert!(budget.is_backpressured());
        assert_eq!(budget.offer(1), Verdict::Wait);
        assert_eq!(budget.on_flushed(50), FlowChange::Resumed);
        assert_eq!(budget.pending(), 0);
    }

    #[test]
    fn policies_decide_refusals() {
        let mut drop = SendBudget::new(10, SlowConsumerPolicy::Drop);
        assert_eq!(drop.offer(8), Verdict::Admit);
        assert_eq!(drop.offer(8), Verdict::Drop);
        assert_eq!(drop.offer(1), Verdict::Drop); // paused: hysteresis
        assert_eq!(drop.dropped_messages(), 2);
        assert_eq!(drop.dropped_bytes(), 9);
        let mut disc = SendBudget::new(10, SlowConsumerPolicy::Disconnect);
        assert_eq!(disc.offer(8), Verdict::Admit);
        assert_eq!(disc.offer(8), Verdict::Disconnect);
        assert_eq!(disc.dropped_messages(), 0);
    }

    #[test]
    fn overflow_queues_wait_sessions_up_to_cap() {
        let mut budget = SendBudget::new(10, SlowConsumerPolicy::Wait);
        assert_eq!(budget.offer_overflow(8, 5), Verdict::Admit);
        assert_eq!(budget.offer_overflow(7, 5), Verdict::Admit); // 15 <= 15
        assert_eq!(budget.offer_overflow(1, 5), Verdict::Drop);
        assert_eq!(budget.pending(), 15);
        assert_eq!(budget.dropped_messages(), 1);
        // Drop and Disconnect sessions get their policy, not the overflow.
        let mut drop = SendBudget::new(10, SlowConsumerPolicy::Drop);
        assert_eq!(drop.offer_overflow(8, 5), Verdict::Admit);
        assert_eq!(drop.offer_overflow(8, 5), Verdict::Drop);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Offer(usize),
        Overflow(usize),
        Flush(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0usize..300).prop_map(Op::Offer),
            (0usize..300).prop_map(Op::Overflow),
            (0usize..300).prop_map(Op::Flush),
        ]
    }

    fn policy() -> impl Strategy<Value = SlowConsumerPolicy> {
        prop_oneof![
            Just(SlowConsumerPolicy::Wait),
            Just(SlowConsumerPolicy::Drop),
            Just(SlowConsumerPolicy::Disconnect),
        ]
    }

    proptest! {
        /// Model test: against a plain counter, any interleaving of sends and
        /// flushes never admits past the limit (bar one oversized message
        /// into an empty budget), and the paused flag follows the watermarks.
        #[test]
        fn never_admits_past_the_limit(
            limit in 1usize..500,
            overflow in 0usize..200,
            policy in policy(),
            ops in proptest::collection::vec(op(), 0..200),
        ) {
            let mut budget = SendBudget::new(limit, policy);
            let mut pending = 0usize;
            let mut paused = false;
            let mut dropped = 0u64;
            for op in ops {
                match op {
                    Op::Offer(len) | Op::Overflow(len) => {
                        let before = pending;
                        let fits = !paused && (before == 0 || before + len <= limit);
                        let verdict = match op {
                            Op::Offer(_) => budget.offer(len),
                            _ => budget.offer_overflow(len, overflow),
                        };
                        let is_overflow = matches!(op, Op::Overflow(_));
                        if fits {
                            prop_assert_eq!(verdict, Verdict::Admit);
                        } else {
                            paused = true;
                            let expected = match policy {
                                SlowConsumerPolicy::Wait if is_overflow => {
                                    if before + len <= limit + overflow {
                                        Verdict::Admit
                                    } else {
                                        Verdict::Drop
                                    }
                                }
                                SlowConsumerPolicy::Wait => Verdict::Wait,
                                SlowConsumerPolicy::Drop => Verdict::Drop,
                                SlowConsumerPolicy::Disconnect => Verdict::Disconnect,
                            };
                            prop_assert_eq!(verdict, expected);
                        }
                        if verdict == Verdict::Admit {
                            pending += len;
                        }
                        if verdict == Verdict::Drop {
                            dropped += 1;
                        }
                        if pending >= limit {
                            paused = true;
                        }
                        // The property itself.
                        let cap = if is_overflow && policy == SlowConsumerPolicy::Wait {
                            limit + overflow
                        } else {
                            limit
                        };
                        prop_assert!(verdict != Verdict::Admit || before == 0 || pending <= cap,
                            "pending {} over {} after admitting {} onto {}", pending, cap, len, before);
                    }
                    Op::Flush(len) => {
                        let len = len.min(pending);
                        let change = budget.on_flushed(len);
                        pending -= len;
                        let resumed = paused && pending <= limit / 2;
                        if resumed {
                            paused = false;
                        }
                        prop_assert_eq!(change == FlowChange::Resumed, resumed);
                    }
                }
                prop_assert_eq!(budget.pending(), pending);
                prop_assert_eq!(budget.is_backpressured(), paused);
                prop_assert_eq!(budget.dropped_messages(), dropped);
            }
        }

        /// Hysteresis: once paused, nothing is admitted until the pending
        /// bytes have drained to half the limit, so the paused flag flips at
        /// most once per half-limit drained.
        #[test]
        fn no_admission_between_half_and_limit_while_paused(
            limit in 2usize..1000,
            sizes in proptest::collection::vec(1usize..100, 1..100),
        ) {
            let mut budget = SendBudget::new(limit, SlowConsumerPolicy::Wait);
            while budget.offer(1) == Verdict::Admit {}
            prop_assert!(budget.is_backpressured());
            prop_assert_eq!(budget.pending(), limit);
            // Draining to just above half keeps it paused.
            let _ = budget.on_flushed(limit - limit / 2 - 1);
            prop_assert!(budget.is_backpressured());
            prop_assert_eq!(budget.offer(1), Verdict::Wait);
            prop_assert_eq!(budget.on_flushed(1), FlowChange::Resumed);
            for len in sizes {
                let paused = budget.is_backpressured();
                let verdict = budget.offer(len);
                if paused {
                    prop_assert_eq!(verdict, Verdict::Wait);
                }
                if verdict == Verdict::Admit {
                    prop_assert!(budget.pending() <= limit || budget.pending() == len);
                }
                let _ = budget.on_flushed(len.min(budget.pending()));
            }
        }
    }
}
