//! `--reconnect` and `--max-attempts`, as every client of the `storm`
//! binary takes them, and the schedule of one client's reconnects: the
//! core's backoff with jitter ([`storm_proto::reconnect`]), said on stderr.
//!
//! `storm client ws`/`tcp` run it per endpoint through an
//! [`EndpointSet`](storm_proto::reconnect::EndpointSet); the clients of one
//! server (`storm client json`, `storm client broker provider`) through
//! [`Reconnect`].

use std::fmt::Display;
use std::io;
use std::time::{Duration, Instant};

use storm_proto::reconnect::{Backoff, BackoffConfig, BackoffStep};

/// `--reconnect` and `--max-attempts`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ReconnectArgs {
    /// Reconnect when the connection drops or cannot be made, with
    /// exponential backoff (100 ms doubling up to 30 s, full jitter; reset
    /// once a connection stayed up 10 s). Off by default: a drop ends the
    /// client.
    #[arg(long)]
    pub reconnect: bool,
    /// With --reconnect: attempts in a row before giving up (per endpoint
    /// where there are several); 0 never gives up.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub max_attempts: u32,
}

impl ReconnectArgs {
    /// The backoff of each endpoint, or `None` without `--reconnect`.
    pub(crate) fn backoff(&self) -> Option<BackoffConfig> {
        self.reconnect
            .then(|| BackoffConfig::default().with_max_attempts(self.max_attempts))
    }
}

/// The reconnects of a client of one server: when to try again, and what
/// stderr says about it (`NAME: disconnected: WHY; reconnecting in …`,
/// `NAME: reconnected`).
pub(crate) struct Reconnect {
    /// Who speaks on stderr, e.g. `storm client json`.
    name: &'static str,
    /// `None` without `--reconnect`.
    backoff: Option<Backoff>,
    /// A connection was made since the last drop: the next one is a
    /// reconnect.
    was_connected: bool,
}

impl Reconnect {
    /// The schedule `args` asks for.
    ///
    /// # Errors
    ///
    /// An invalid backoff configuration (not one the flags can make).
    pub(crate) fn new(name: &'static str, args: &ReconnectArgs) -> io::Result<Self> {
        let backoff = args
            .backoff()
            .map(|config| Backoff::new(config, rand::random()))
            .transpose()
            .map_err(io::Error::other)?;
        Ok(Self {
            name,
            backoff,
            was_connected: false,
        })
    }

    /// Whether `--reconnect` is on.
    pub(crate) fn is_on(&self) -> bool {
        self.backoff.is_some()
    }

    /// A connection is up (says `reconnected` when it is not the first).
    pub(crate) fn connected(&mut self) {
        if self.was_connected {
            eprintln!("{}: reconnected", self.name);
        }
        self.was_connected = true;
        if let Some(backoff) = &mut self.backoff {
            backoff.connected(Instant::now());
        }
    }

    /// The connection dropped, or could not be made, as `why` says (e.g.
    /// `disconnected: …`): how long to wait before the next attempt, said
    /// on stderr; `None` when there is none (without `--reconnect`, or
    /// `--max-attempts` used up), the caller then ends with `why`.
    pub(crate) fn after(&mut self, why: &dyn Display) -> Option<Duration> {
        match self.backoff.as_mut()?.disconnected(Instant::now()) {
            BackoffStep::Retry { attempt, delay } => {
                eprintln!(
                    "{}: {why}; reconnecting in {delay:.1?} (attempt {attempt})",
                    self.name
                );
                Some(delay)
            }
            BackoffStep::GiveUp { attempts } => {
                eprintln!("{}: {why}; giving up after {attempts} attempts", self.name);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_without_reconnect_and_gives_up_after_max_attempts() {
        let off = ReconnectArgs {
            reconnect: false,
            max_attempts: 0,
        };
        let mut schedule = Reconnect::new("t", &off).unwrap();
        assert!(!schedule.is_on());
        assert_eq!(schedule.after(&"disconnected: eof"), None);
        let on = ReconnectArgs {
            reconnect: true,
            max_attempts: 2,
        };
        let mut schedule = Reconnect::new("t", &on).unwrap();
        assert!(schedule.is_on());
        let cap = BackoffConfig::default().cap();
        for _ in 0..2 {
            let delay = schedule.after(&"disconnected: eof").expect("a retry");
            assert!(delay <= cap);
        }
        assert_eq!(schedule.after(&"disconnected: eof"), None);
    }
}
