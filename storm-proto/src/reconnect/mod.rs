//! When and where to reconnect: backoff policies and endpoint sets.
//!
//! - [`Backoff`] decides how long to wait before the next connection attempt:
//!   a fixed delay or an exponential one with a cap, optionally with full
//!   jitter drawn from an RNG the caller seeds, a maximum number of attempts
//!   after which it gives up, and a reset once a connection has stayed up for
//!   [`stable_after`](BackoffConfig::stable_after).
//! - [`EndpointSet`] spreads requests or connections over several endpoints
//!   round-robin, and fails over: an endpoint marked down gets its own
//!   [`Backoff`] and is skipped until its retry time.
//!
//! Both are plain values driven by `now`; an adapter sleeps, connects and
//! reports the outcome back.
//!
//! # A reconnecting client
//!
//! ```
//! use std::time::{Duration, Instant};
//! use storm_proto::reconnect::{Backoff, BackoffConfig, BackoffStep};
//!
//! # fn main() -> Result<(), storm_proto::reconnect::BackoffConfigError> {
//! let config = BackoffConfig::fixed(Duration::from_secs(2)).with_max_attempts(3);
//! let mut backoff = Backoff::new(config, 42)?;
//! let t0 = Instant::now(); // the adapter's clock
//!
//! backoff.connected(t0);
//! // ... the connection drops, and every attempt to reconnect fails:
//! let mut now = t0 + Duration::from_secs(1);
//! loop {
//!     match backoff.disconnected(now) {
//!         BackoffStep::Retry { attempt, delay } => {
//!             // on_reconnecting(attempt, delay); sleep(delay); try to connect...
//!             assert_eq!(delay, Duration::from_secs(2));
//!             now += delay;
//!             let _ = attempt;
//!         }
//!         BackoffStep::GiveUp { attempts } => {
//!             assert_eq!(attempts, 3);
//!             break;
//!         }
//!     }
//! }
//! # Ok(())
//! # }
//! ```

mod backoff;
mod endpoints;

pub use backoff::{Backoff, BackoffConfig, BackoffConfigError, BackoffPolicy, BackoffStep, Jitter};
pub use endpoints::{EndpointError, EndpointSet, EndpointSetError};
