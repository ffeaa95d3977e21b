//! Reconnect delays.

use std::fmt;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How the base delay grows from one attempt to the next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BackoffPolicy {
    /// The same delay before every attempt.
    Fixed {
        /// The delay (may be zero: retry at once).
        delay: Duration,
    },
    /// `initial` before the first attempt, then multiplied by `multiplier`
    /// for each further attempt, never above `max`.
    Exponential {
        /// Base delay before the first attempt.
        initial: Duration,
        /// Growth factor per attempt; finite and at least 1.
        multiplier: f64,
        /// Cap on the base delay; at least `initial`.
        max: Duration,
    },
}

/// Randomisation applied to each base delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// The delay is the base delay.
    None,
    /// "Full jitter": the delay is uniform in `[0, base]`, so many clients
    /// that lost the same server do not reconnect in lockstep.
    #[default]
    Full,
}

/// The configuration of a [`Backoff`].
///
/// `#[non_exhaustive]`, so a new field is not a breaking change: start from
/// [`default`](Self::default), [`fixed`](Self::fixed) or
/// [`exponential`](Self::exponential) and chain the `with_*` methods; the
/// fields stay public, to read and to set on a value you own.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BackoffConfig {
    /// How the base delay grows. Default exponential: 100 ms, ×2, capped
    /// at 30 s.
    pub policy: BackoffPolicy,
    /// Randomisation of each delay. Default [`Jitter::Full`].
    pub jitter: Jitter,
    /// Attempts allowed before giving up; 0 = unlimited. Default 0.
    pub max_attempts: u32,
    /// A connection that stayed up at least this long resets the attempt
    /// count and the delay when it drops (zero: any successful connection
    /// does). Default 10 s.
    pub stable_after: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self::exponential(Duration::from_millis(100), 2.0, Duration::from_secs(30))
    }
}

impl BackoffConfig {
    /// [`BackoffPolicy::Exponential`] from `initial`, times `multiplier`
    /// per attempt, capped at `max`; full jitter, unlimited attempts,
    /// reset after 10 s up (the other fields as in `default()`, which is
    /// `exponential(100 ms, 2.0, 30 s)`).
    #[must_use]
    pub const fn exponential(initial: Duration, multiplier: f64, max: Duration) -> Self {
        Self::with_defaults(
            BackoffPolicy::Exponential {
                initial,
                multiplier,
                max,
            },
            Jitter::Full,
        )
    }

    /// `policy` and `jitter`, unlimited attempts, reset after 10 s up.
    const fn with_defaults(policy: BackoffPolicy, jitter: Jitter) -> Self {
        Self {
            policy,
            jitter,
            max_attempts: 0,
            stable_after: Duration::from_secs(10),
        }
    }

    /// How the base delay grows (default exponential: 100 ms, ×2, capped
    /// at 30 s).
    #[must_use]
    pub const fn with_policy(mut self, policy: BackoffPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Randomisation of each delay (default [`Jitter::Full`]).
    #[must_use]
    pub const fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Attempts allowed before giving up; 0 = unlimited (default 0).
    #[must_use]
    pub const fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// How long a connection must stay up to reset the attempt count and
    /// the delay (default 10 s).
    #[must_use]
    pub const fn with_stable_after(mut self, stable_after: Duration) -> Self {
        self.stable_after = stable_after;
        self
    }

    /// The same `delay` before every attempt, no jitter, unlimited attempts;
    /// other fields as in `default()`.
    #[must_use]
    pub const fn fixed(delay: Duration) -> Self {
        Self::with_defaults(BackoffPolicy::Fixed { delay }, Jitter::None)
    }

    /// Checks the configuration.
    ///
    /// # Errors
    ///
    /// [`BackoffConfigError::InvalidMultiplier`] if an exponential
    /// multiplier is not finite or below 1;
    /// [`BackoffConfigError::InitialAboveMax`] if its `initial` exceeds `max`.
    pub fn validate(&self) -> Result<(), BackoffConfigError> {
        if let BackoffPolicy::Exponential {
            initial,
            multiplier,
            max,
        } = self.policy
        {
            if !multiplier.is_finite() || multiplier < 1.0 {
                return Err(BackoffConfigError::InvalidMultiplier);
            }
            if initial > max {
                return Err(BackoffConfigError::InitialAboveMax { initial, max });
            }
        }
        Ok(())
    }

    /// The largest base delay this policy can produce (the cap).
    pub fn cap(&self) -> Duration {
        match self.policy {
            BackoffPolicy::Fixed { delay } => delay,
            BackoffPolicy::Exponential { max, .. } => max,
        }
    }
}

/// A [`BackoffConfig`] that cannot work (local misuse).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackoffConfigError {
    /// The exponential multiplier is NaN, infinite or below 1.
    InvalidMultiplier,
    /// The exponential initial delay is above its cap.
    InitialAboveMax {
        /// The configured initial delay.
        initial: Duration,
        /// The configured cap.
        max: Duration,
    },
}

impl fmt::Display for BackoffConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidMultiplier => {
                f.write_str("backoff multiplier must be a finite number of at least 1")
            }
            Self::InitialAboveMax { initial, max } => {
                write!(
                    f,
                    "backoff initial delay {initial:?} is above its cap {max:?}"
                )
            }
        }
    }
}

impl std::error::Error for BackoffConfigError {}

/// What to do after a connection dropped or an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum BackoffStep {
    /// Wait `delay`, then make attempt number `attempt` (1-based); the
    /// values an adapter passes to `on_reconnecting(attempt, delay)`.
    Retry {
        /// The attempt about to be made, counting from 1 since the last reset.
        attempt: u32,
        /// How long to wait before making it.
        delay: Duration,
    },
    /// `max_attempts` attempts failed: stop reconnecting. Repeated for every
    /// later call until [`Backoff::reset`].
    GiveUp {
        /// How many attempts were made.
        attempts: u32,
    },
}

/// Reconnect delays for one connection.
///
/// Inputs: [`connected`](Self::connected) when a connection is established,
/// [`disconnected`](Self::disconnected) when it drops *or* an attempt fails;
/// the latter answers with the next [`BackoffStep`]. There is no timer of its
/// own: the adapter sleeps for the returned delay. Jitter comes from a
/// [`StdRng`] seeded by the caller, so a run can be replayed.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    rng: StdRng,
    /// Attempts scheduled since the last reset.
    attempt: u32,
    /// Base delay (before jitter) of the last scheduled attempt.
    base: Duration,
    connected_at: Option<Instant>,
    gave_up: bool,
}

impl Backoff {
    /// A fresh backoff (no attempts yet) whose jitter is drawn from an RNG
    /// seeded with `seed`.
    ///
    /// # Errors
    ///
    /// The configuration's [`validate`](BackoffConfig::validate) error.
    pub fn new(config: BackoffConfig, seed: u64) -> Result<Self, BackoffConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            rng: StdRng::seed_from_u64(seed),
            attempt: 0,
            base: Duration::ZERO,
            connected_at: None,
            gave_up: false,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BackoffConfig {
        &self.config
    }

    /// A connection was established at `now`. If it stays up for
    /// [`stable_after`](BackoffConfig::stable_after), the next
    /// [`disconnected`](Self::disconnected) starts again from attempt 1.
    pub fn connected(&mut self, now: Instant) {
        self.connected_at = Some(now);
    }

    /// The connection dropped, or an attempt to connect failed, at `now`:
    /// returns how long to wait before the next attempt, or that it is time
    /// to give up.
    pub fn disconnected(&mut self, now: Instant) -> BackoffStep {
        if let Some(since) = self.connected_at.take() {
            if now.saturating_duration_since(since) >= self.config.stable_after {
                self.reset();
            }
        }
        let max = self.config.max_attempts;
        if self.gave_up || (max != 0 && self.attempt >= max) {
            self.gave_up = true;
            return BackoffStep::GiveUp {
                attempts: self.attempt,
            };
        }
        self.base = self.next_base();
        self.attempt = self.attempt.saturating_add(1);
        BackoffStep::Retry {
            attempt: self.attempt,
            delay: self.jittered(self.base),
        }
    }

    /// Forgets all attempts (and a give-up): the next delay is the first one.
    pub fn reset(&mut self) {
        self.attempt = 0;
        self.base = Duration::ZERO;
        self.gave_up = false;
    }

    /// Attempts scheduled since the last reset (the `attempt` of the last
    /// [`BackoffStep::Retry`]).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The base delay (before jitter) of the last scheduled attempt; zero
    /// before the first.
    pub fn base_delay(&self) -> Duration {
        self.base
    }

    /// Whether it gave up (until [`reset`](Self::reset)).
    pub fn is_given_up(&self) -> bool {
        self.gave_up
    }

    /// The base delay of the next attempt: never above the cap, never below
    /// the previous one.
    fn next_base(&self) -> Duration {
        match self.config.policy {
            BackoffPolicy::Fixed { delay } => delay,
            BackoffPolicy::Exponential {
                initial,
                multiplier,
                max,
            } => {
                if self.attempt == 0 {
                    return initial;
                }
                let prev = self.base;
                Duration::try_from_secs_f64(prev.as_secs_f64() * multiplier)
                    .unwrap_or(max)
                    .min(max)
                    .max(prev)
            }
        }
    }

    fn jittered(&mut self, base: Duration) -> Duration {
        match self.config.jitter {
            Jitter::None => base,
            Jitter::Full => {
                let nanos = u64::try_from(base.as_nanos()).unwrap_or(u64::MAX);
                Duration::from_nanos(self.rng.random_range(0..=nanos))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::epoch;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn exponential(initial: u64, multiplier: f64, max: u64, jitter: Jitter) -> BackoffConfig {
        BackoffConfig {
            policy: BackoffPolicy::Exponential {
                initial: ms(initial),
                multiplier,
                max: ms(max),
            },
            jitter,
            ..BackoffConfig::default()
        }
    }

    fn delays(backoff: &mut Backoff, now: Instant, n: usize) -> Vec<Duration> {
        (0..n)
            .map(|_| match backoff.disconnected(now) {
                BackoffStep::Retry { delay, .. } => delay,
                BackoffStep::GiveUp { .. } => panic!("gave up"),
            })
            .collect()
    }

    #[test]
    fn exponential_doubles_up_to_the_cap() {
        let mut b = Backoff::new(exponential(100, 2.0, 1000, Jitter::None), 1).unwrap();
        let got = delays(&mut b, epoch(), 6);
        assert_eq!(
            got,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        assert_eq!(b.attempt(), 6);
    }

    #[test]
    fn fixed_delay_and_max_attempts() {
        let cfg = BackoffConfig {
            max_attempts: 2,
            ..BackoffConfig::fixed(ms(2000))
        };
        let mut b = Backoff::new(cfg, 0).unwrap();
        let now = epoch();
        assert_eq!(
            b.disconnected(now),
            BackoffStep::Retry {
                attempt: 1,
                delay: ms(2000)
            }
        );
        assert_eq!(
            b.disconnected(now),
            BackoffStep::Retry {
                attempt: 2,
                delay: ms(2000)
            }
        );
        assert_eq!(b.disconnected(now), BackoffStep::GiveUp { attempts: 2 });
        assert!(b.is_given_up());
        // A short-lived connection does not undo the give-up.
        b.connected(now);
        assert_eq!(b.disconnected(now), BackoffStep::GiveUp { attempts: 2 });
        b.reset();
        assert!(matches!(
            b.disconnected(now),
            BackoffStep::Retry { attempt: 1, .. }
        ));
    }

    #[test]
    fn stable_connection_resets_and_flapping_does_not() {
        let mut b = Backoff::new(exponential(100, 2.0, 10_000, Jitter::None), 0).unwrap();
        let t0 = epoch();
        let _ = delays(&mut b, t0, 3);
        // Up for 9.999 s: not stable (default 10 s), the delay keeps growing.
        b.connected(t0);
        assert_eq!(
            b.disconnected(t0 + ms(9_999)),
            BackoffStep::Retry {
                attempt: 4,
                delay: ms(800)
            }
        );
        b.connected(t0 + ms(10_000));
        assert_eq!(
            b.disconnected(t0 + ms(20_000)),
            BackoffStep::Retry {
                attempt: 1,
                delay: ms(100)
            }
        );
    }

    #[test]
    fn invalid_configs_are_rejected() {
        for m in [0.5, f64::NAN, f64::INFINITY] {
            let err = Backoff::new(exponential(1, m, 2, Jitter::Full), 0).unwrap_err();
            assert_eq!(err, BackoffConfigError::InvalidMultiplier);
        }
        let err = Backoff::new(exponential(3, 2.0, 2, Jitter::Full), 0).unwrap_err();
        assert!(matches!(err, BackoffConfigError::InitialAboveMax { .. }));
        assert!(!err.to_string().is_empty());
    }

    #[test]
    fn same_seed_same_delays() {
        let now = epoch();
        let mut a = Backoff::new(BackoffConfig::default(), 7).unwrap();
        let mut b = Backoff::new(BackoffConfig::default(), 7).unwrap();
        assert_eq!(delays(&mut a, now, 20), delays(&mut b, now, 20));
    }

    #[test]
    fn huge_values_do_not_overflow() {
        let cfg = BackoffConfig {
            policy: BackoffPolicy::Exponential {
                initial: Duration::MAX,
                multiplier: f64::MAX,
                max: Duration::MAX,
            },
            ..BackoffConfig::default()
        };
        let mut b = Backoff::new(cfg, 0).unwrap();
        let _ = delays(&mut b, epoch(), 3);
        assert_eq!(b.base_delay(), Duration::MAX);
    }

    fn config_strategy() -> impl Strategy<Value = BackoffConfig> {
        let policy = prop_oneof![
            (0u64..5_000).prop_map(|d| BackoffPolicy::Fixed { delay: ms(d) }),
            (0u64..1_000, 1.0f64..10.0, 0u64..100_000).prop_map(|(i, m, extra)| {
                BackoffPolicy::Exponential {
                    initial: ms(i),
                    multiplier: m,
                    max: ms(i + extra),
                }
            }),
        ];
        (
            policy,
            prop_oneof![Just(Jitter::None), Just(Jitter::Full)],
            0u32..6,
        )
            .prop_map(|(policy, jitter, max_attempts)| BackoffConfig {
                policy,
                jitter,
                max_attempts,
                ..BackoffConfig::default()
            })
    }

    proptest! {
        #[test]
        fn delays_within_cap_and_bases_non_decreasing(
            cfg in config_strategy(),
            seed in any::<u64>(),
            n in 1usize..40,
        ) {
            let cap = cfg.cap();
            let jitter = cfg.jitter;
            let max_attempts = cfg.max_attempts;
            let mut b = Backoff::new(cfg, seed).unwrap();
            let now = epoch();
            let mut prev_base = Duration::ZERO;
            for i in 1..=n {
                match b.disconnected(now) {
                    BackoffStep::Retry { attempt, delay } => {
                        prop_assert_eq!(attempt as usize, i);
                        prop_assert!(max_attempts == 0 || attempt <= max_attempts);
                        prop_assert!(delay <= cap);
                        prop_assert!(b.base_delay() <= cap);
                        prop_assert!(b.base_delay() >= prev_base);
                        prop_assert!(delay <= b.base_delay());
                        if jitter == Jitter::None {
                            prop_assert_eq!(delay, b.base_delay());
                        }
                        prev_base = b.base_delay();
                    }
                    BackoffStep::GiveUp { attempts } => {
                        // Exactly at max, and for good.
                        prop_assert_eq!(i as u32, max_attempts + 1);
                        prop_assert_eq!(attempts, max_attempts);
                        prop_assert_eq!(b.disconnected(now), BackoffStep::GiveUp { attempts });
                        return Ok(());
                    }
                }
            }
            prop_assert!(max_attempts == 0 || n <= max_attempts as usize);
        }
    }
}
