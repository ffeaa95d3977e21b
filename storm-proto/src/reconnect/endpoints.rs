//! Several endpoints: round-robin and failover.

use std::fmt;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use super::backoff::{Backoff, BackoffConfig, BackoffConfigError, BackoffStep};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    /// Usable.
    Up,
    /// Failed; skipped until `retry_at` (`None`: never, it gave up).
    Down { retry_at: Option<Instant> },
    /// Failed, but its retry time has come: usable again, on trial. A
    /// failure moves it on to its next backoff step.
    Retrying,
}

#[derive(Debug, Clone)]
struct Slot<T> {
    endpoint: T,
    backoff: Backoff,
    health: Health,
}

/// A fixed list of endpoints (addresses, or anything else) used round-robin,
/// with failover.
///
/// - [`next`](Self::next) picks the endpoint for each new request or
///   connection: the next usable one after the last pick, in list order, so
///   every usable endpoint gets the same share.
/// - [`mark_down`](Self::mark_down) takes a failed endpoint out of rotation
///   for its own [`Backoff`] delay; it is skipped until `now` reaches its
///   retry time, then tried again. [`mark_up`](Self::mark_up) restores it
///   (and, once it stayed up for `stable_after`, its backoff starts over).
/// - When every endpoint is down, `next` returns `None` and
///   [`poll_timeout`](Self::poll_timeout) says when the first one will be
///   retried; `None` there too means all gave up
///   ([`is_exhausted`](Self::is_exhausted)).
///
/// `handle_timeout(now)` moves endpoints whose retry time has come back into
/// rotation, so after it `poll_timeout` is `None` or later than `now`; `next`
/// does the same itself, so calling `handle_timeout` is optional.
///
/// ```
/// use std::time::{Duration, Instant};
/// use storm_proto::reconnect::{BackoffConfig, EndpointSet};
///
/// let t0 = Instant::now();
/// let config = BackoffConfig::fixed(Duration::from_secs(5));
/// let mut set = EndpointSet::new(["10.0.0.1:5000", "10.0.0.2:5000"], config, 1).unwrap();
/// assert_eq!(set.next(t0), Some((0, &"10.0.0.1:5000")));
/// assert_eq!(set.next(t0), Some((1, &"10.0.0.2:5000")));
///
/// // The second one failed: everything goes to the first until t0 + 5s.
/// let _ = set.mark_down(1, t0).unwrap();
/// assert_eq!(set.next(t0).map(|(i, _)| i), Some(0));
/// assert_eq!(set.next(t0).map(|(i, _)| i), Some(0));
/// assert_eq!(set.poll_timeout(), Some(t0 + Duration::from_secs(5)));
/// let later = t0 + Duration::from_secs(5);
/// assert_eq!(set.next(later).map(|(i, _)| i), Some(1));
/// ```
#[derive(Debug, Clone)]
pub struct EndpointSet<T> {
    slots: Vec<Slot<T>>,
    /// Where the next round-robin scan starts.
    cursor: usize,
}

impl<T> EndpointSet<T> {
    /// A set of `endpoints`, all up, each with its own [`Backoff`] built from
    /// `config`; their jitter RNGs are seeded from `seed`.
    ///
    /// # Errors
    ///
    /// [`EndpointSetError::NoEndpoints`] if `endpoints` is empty;
    /// [`EndpointSetError::Backoff`] if `config` is invalid.
    pub fn new(
        endpoints: impl IntoIterator<Item = T>,
        config: BackoffConfig,
        seed: u64,
    ) -> Result<Self, EndpointSetError> {
        config.validate().map_err(EndpointSetError::Backoff)?;
        let mut rng = StdRng::seed_from_u64(seed);
        let slots = endpoints
            .into_iter()
            .map(|endpoint| {
                Ok(Slot {
                    endpoint,
                    backoff: Backoff::new(config.clone(), rng.next_u64())?,
                    health: Health::Up,
                })
            })
            .collect::<Result<Vec<_>, BackoffConfigError>>()
            .map_err(EndpointSetError::Backoff)?;
        if slots.is_empty() {
            return Err(EndpointSetError::NoEndpoints);
        }
        Ok(Self { slots, cursor: 0 })
    }

    /// Number of endpoints (at least 1).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Always `false`: a set has at least one endpoint.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The endpoint at `index`.
    pub fn get(&self, index: usize) -> Option<&T> {
        self.slots.get(index).map(|slot| &slot.endpoint)
    }

    /// All endpoints with their indices, in list order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &T)> {
        self.slots.iter().map(|slot| &slot.endpoint).enumerate()
    }

    /// Whether the endpoint at `index` may be picked at `now` (up, or down
    /// with its retry time reached). `false` for an unknown index.
    pub fn is_available(&self, index: usize, now: Instant) -> bool {
        self.slots
            .get(index)
            .is_some_and(|slot| available(slot.health, now))
    }

    /// The backoff of the endpoint at `index` (its attempt count and delay).
    pub fn backoff(&self, index: usize) -> Option<&Backoff> {
        self.slots.get(index).map(|slot| &slot.backoff)
    }

    /// The endpoint for the next request or connection: the first available
    /// one after the previous pick, in list order. `None` if all are down;
    /// then [`poll_timeout`](Self::poll_timeout) says when to ask again.
    #[must_use]
    pub fn next(&mut self, now: Instant) -> Option<(usize, &T)> {
        self.handle_timeout(now);
        let len = self.slots.len();
        let index = (0..len)
            .map(|i| (self.cursor + i) % len)
            .find(|&i| self.slots.get(i).is_some_and(|s| available(s.health, now)))?;
        self.cursor = (index + 1) % len;
        self.slots.get(index).map(|slot| (index, &slot.endpoint))
    }

    /// Using the endpoint at `index` failed at `now`: it leaves the rotation
    /// for its next backoff delay. Returns that step (attempt number and
    /// delay, for `on_reconnecting`), or [`BackoffStep::GiveUp`] when it ran
    /// out of attempts: it then stays down until [`mark_up`](Self::mark_up).
    ///
    /// A failure reported while the endpoint is already down and before its
    /// retry time (a request that was sent before it went down) does not
    /// count again: the step in force is returned, with the delay that is
    /// left.
    ///
    /// # Errors
    ///
    /// [`EndpointError::UnknownEndpoint`] if `index` is out of range.
    pub fn mark_down(&mut self, index: usize, now: Instant) -> Result<BackoffStep, EndpointError> {
        let len = self.slots.len();
        let slot = self
            .slots
            .get_mut(index)
            .ok_or(EndpointError::UnknownEndpoint { index, len })?;
        match slot.health {
            Health::Down { retry_at: None } => {
                return Ok(BackoffStep::GiveUp {
                    attempts: slot.backoff.attempt(),
                });
            }
            Health::Down { retry_at: Some(at) } if now < at => {
                return Ok(BackoffStep::Retry {
                    attempt: slot.backoff.attempt(),
                    delay: at.saturating_duration_since(now),
                });
            }
            Health::Up | Health::Retrying | Health::Down { .. } => {}
        }
        let step = slot.backoff.disconnected(now);
        slot.health = Health::Down {
            retry_at: match step {
                // An unrepresentable retry time is as good as never.
                BackoffStep::Retry { delay, .. } => now.checked_add(delay),
                BackoffStep::GiveUp { .. } => None,
            },
        };
        Ok(step)
    }

    /// The endpoint at `index` works (a connection to it was established,
    /// or a request succeeded) at `now`: back in rotation. Its backoff
    /// starts over if it is still up `stable_after` later.
    ///
    /// # Errors
    ///
    /// [`EndpointError::UnknownEndpoint`] if `index` is out of range.
    pub fn mark_up(&mut self, index: usize, now: Instant) -> Result<(), EndpointError> {
        let len = self.slots.len();
        let slot = self
            .slots
            .get_mut(index)
            .ok_or(EndpointError::UnknownEndpoint { index, len })?;
        if slot.health != Health::Up {
            slot.backoff.connected(now);
            slot.health = Health::Up;
        }
        Ok(())
    }

    /// The earliest retry time of an endpoint that is down; `None` if none
    /// is waiting for one.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|slot| match slot.health {
                Health::Down { retry_at } => retry_at,
                Health::Up | Health::Retrying => None,
            })
            .min()
    }

    /// Puts endpoints whose retry time is at or before `now` back into
    /// rotation (on trial).
    pub fn handle_timeout(&mut self, now: Instant) {
        for slot in &mut self.slots {
            if let Health::Down { retry_at: Some(at) } = slot.health {
                if now >= at {
                    slot.health = Health::Retrying;
                }
            }
        }
    }

    /// Whether every endpoint gave up (ran out of attempts): nothing will
    /// ever be picked again without a [`mark_up`](Self::mark_up).
    pub fn is_exhausted(&self) -> bool {
        self.slots
            .iter()
            .all(|slot| slot.health == Health::Down { retry_at: None })
    }
}

fn available(health: Health, now: Instant) -> bool {
    match health {
        Health::Up | Health::Retrying => true,
        Health::Down { retry_at } => retry_at.is_some_and(|at| now >= at),
    }
}

/// Building an [`EndpointSet`] failed (local misuse).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndpointSetError {
    /// No endpoints were given.
    NoEndpoints,
    /// The backoff configuration is invalid.
    Backoff(BackoffConfigError),
}

impl fmt::Display for EndpointSetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoEndpoints => f.write_str("an endpoint set needs at least one endpoint"),
            Self::Backoff(err) => write!(f, "invalid endpoint backoff: {err}"),
        }
    }
}

impl std::error::Error for EndpointSetError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::NoEndpoints => None,
            Self::Backoff(err) => Some(err),
        }
    }
}

/// Marking an endpoint failed (local misuse).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndpointError {
    /// No endpoint has this index.
    UnknownEndpoint {
        /// The index given.
        index: usize,
        /// How many endpoints there are.
        len: usize,
    },
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownEndpoint { index, len } => {
                write!(f, "no endpoint {index} in a set of {len}")
            }
        }
    }
}

impl std::error::Error for EndpointError {}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;
    use crate::reconnect::{BackoffPolicy, Jitter};
    use crate::test_util::epoch;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn picks(set: &mut EndpointSet<u32>, now: Instant, n: usize) -> Vec<usize> {
        (0..n)
            .filter_map(|_| set.next(now).map(|(i, _)| i))
            .collect()
    }

    #[test]
    fn round_robin_and_failover() {
        let t0 = epoch();
        let mut set = EndpointSet::new([10, 11, 12], BackoffConfig::fixed(ms(100)), 0).unwrap();
        assert_eq!(picks(&mut set, t0, 4), [0, 1, 2, 0]);
        assert_eq!(
            set.mark_down(2, t0).unwrap(),
            BackoffStep::Retry {
                attempt: 1,
                delay: ms(100)
            }
        );
        assert_eq!(picks(&mut set, t0, 4), [1, 0, 1, 0]);
        assert!(!set.is_available(2, t0 + ms(99)));
        assert!(set.is_available(2, t0 + ms(100)));
        // Retry time reached: back in rotation, on trial.
        assert_eq!(picks(&mut set, t0 + ms(100), 3), [1, 2, 0]);
        // The trial failed: next backoff step.
        assert!(matches!(
            set.mark_down(2, t0 + ms(100)).unwrap(),
            BackoffStep::Retry { attempt: 2, .. }
        ));
        set.mark_up(2, t0 + ms(150)).unwrap();
        assert_eq!(picks(&mut set, t0 + ms(150), 3), [1, 2, 0]);
    }

    #[test]
    fn all_down_gives_none_and_the_earliest_retry() {
        let t0 = epoch();
        let cfg = BackoffConfig {
            max_attempts: 1,
            ..BackoffConfig::fixed(ms(100))
        };
        let mut set = EndpointSet::new([1, 2], cfg, 0).unwrap();
        let _ = set.mark_down(0, t0).unwrap();
        let _ = set.mark_down(1, t0 + ms(30)).unwrap();
        assert_eq!(set.next(t0 + ms(50)), None);
        assert_eq!(set.poll_timeout(), Some(t0 + ms(100)));
        set.handle_timeout(t0 + ms(100));
        assert_eq!(set.poll_timeout(), Some(t0 + ms(130)));
        assert_eq!(set.next(t0 + ms(100)), Some((0, &1)));
        // Out of attempts: both give up and the set is exhausted.
        assert_eq!(
            set.mark_down(0, t0 + ms(101)).unwrap(),
            BackoffStep::GiveUp { attempts: 1 }
        );
        set.handle_timeout(t0 + ms(130));
        assert_eq!(
            set.mark_down(1, t0 + ms(131)).unwrap(),
            BackoffStep::GiveUp { attempts: 1 }
        );
        assert!(set.is_exhausted());
        assert_eq!(set.poll_timeout(), None);
        assert_eq!(set.next(t0 + ms(10_000)), None);
        set.mark_up(1, t0 + ms(10_000)).unwrap();
        assert_eq!(set.next(t0 + ms(10_000)), Some((1, &2)));
    }

    #[test]
    fn repeated_failure_before_retry_time_counts_once() {
        let t0 = epoch();
        let mut set = EndpointSet::new([1], BackoffConfig::fixed(ms(100)), 0).unwrap();
        let _ = set.mark_down(0, t0).unwrap();
        assert_eq!(
            set.mark_down(0, t0 + ms(40)).unwrap(),
            BackoffStep::Retry {
                attempt: 1,
                delay: ms(60)
            }
        );
        assert_eq!(set.backoff(0).map(Backoff::attempt), Some(1));
    }

    #[test]
    fn misuse_is_an_error() {
        let t0 = epoch();
        assert_eq!(
            EndpointSet::<u8>::new([], BackoffConfig::default(), 0).unwrap_err(),
            EndpointSetError::NoEndpoints
        );
        let bad = BackoffConfig {
            policy: BackoffPolicy::Exponential {
                initial: ms(2),
                multiplier: 2.0,
                max: ms(1),
            },
            ..BackoffConfig::default()
        };
        assert!(matches!(
            EndpointSet::new([1], bad, 0),
            Err(EndpointSetError::Backoff(_))
        ));
        let mut set = EndpointSet::new([1], BackoffConfig::default(), 0).unwrap();
        let err = set.mark_down(1, t0).unwrap_err();
        assert_eq!(err, EndpointError::UnknownEndpoint { index: 1, len: 1 });
        assert!(set.mark_up(5, t0).is_err());
        assert!(!err.to_string().is_empty());
    }

    proptest! {
        #[test]
        fn round_robin_visits_healthy_endpoints_equally(
            healthy in proptest::collection::vec(any::<bool>(), 1..12),
            rounds in 1usize..6,
            warmup in 0usize..12,
        ) {
            let t0 = epoch();
            let n = healthy.len();
            let mut set = EndpointSet::new(0..n as u32, BackoffConfig::fixed(ms(1_000)), 0).unwrap();
            for (i, up) in healthy.iter().enumerate() {
                if !up {
                    let _ = set.mark_down(i, t0).unwrap();
                }
            }
            let up = healthy.iter().filter(|&&h| h).count();
            let _ = picks(&mut set, t0, warmup);
            let mut counts = vec![0usize; n];
            for i in picks(&mut set, t0, rounds * up) {
                counts[i] += 1;
            }
            for (i, count) in counts.iter().enumerate() {
                prop_assert_eq!(*count, if healthy[i] { rounds } else { 0 });
            }
            prop_assert_eq!(set.next(t0).is_none(), up == 0);
        }

        #[test]
        fn down_endpoint_never_chosen_before_its_retry_time(
            n in 1usize..6,
            seed in any::<u64>(),
            max_attempts in 0u32..4,
            ops in proptest::collection::vec((0u8..4, 0usize..6, 0u64..300), 1..120),
        ) {
            let cfg = BackoffConfig {
                policy: BackoffPolicy::Exponential { initial: ms(10), multiplier: 2.0, max: ms(500) },
                jitter: Jitter::Full,
                max_attempts,
                stable_after: ms(200),
            };
            let t0 = epoch();
            let mut set = EndpointSet::new(0..n as u32, cfg, seed).unwrap();
            // Reference: when each endpoint may be used again (None: now).
            let mut retry_at: HashMap<usize, Option<Instant>> = HashMap::new();
            let mut now = t0;
            for (kind, index, dt) in ops {
                now += ms(dt / 10);
                let index = index % n;
                match kind {
                    0 | 1 => {
                        let blocked = |i: &usize| match retry_at.get(i) {
                            Some(Some(at)) => now < *at,
                            Some(None) => true,
                            None => false,
                        };
                        match set.next(now) {
                            Some((i, _)) => prop_assert!(!blocked(&i)),
                            None => {
                                prop_assert!((0..n).all(|i| blocked(&i)));
                                let earliest = retry_at.values().flatten().min().copied();
                                prop_assert_eq!(set.poll_timeout(), earliest);
                            }
                        }
                        if let Some(deadline) = set.poll_timeout() {
                            prop_assert!(deadline > now);
                        }
                    }
                    2 => {
                        let was_blocked = matches!(retry_at.get(&index), Some(Some(at)) if now < *at);
                        match set.mark_down(index, now).unwrap() {
                            BackoffStep::Retry { attempt, delay } => {
                                prop_assert!(delay <= ms(500));
                                prop_assert!(max_attempts == 0 || attempt <= max_attempts);
                                if !was_blocked {
                                    retry_at.insert(index, Some(now + delay));
                                } else {
                                    prop_assert_eq!(retry_at[&index], Some(now + delay));
                                }
                            }
                            BackoffStep::GiveUp { attempts } => {
                                prop_assert_eq!(attempts, max_attempts);
                                retry_at.insert(index, None);
                            }
                        }
                    }
                    _ => {
                        set.mark_up(index, now).unwrap();
                        retry_at.remove(&index);
                    }
                }
                prop_assert_eq!(set.is_exhausted(), (0..n).all(|i| retry_at.get(&i) == Some(&None)));
            }
        }
    }
}
