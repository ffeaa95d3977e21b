//! What a server's accept loop does when `accept` fails: the one policy
//! every adapter follows (see [`AcceptErrors`]).

use std::io;
use std::time::{Duration, Instant};

/// How long a server waits before accepting again after a failure that is
/// not one connection's (see [`AcceptErrors`]).
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// The most often a server reports failures it waits out: the first, then
/// at most one per this period, saying how many went unreported.
pub const ACCEPT_REPORT_EVERY: Duration = Duration::from_secs(1);

/// Whose failure a failed `accept` was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AcceptFailure {
    /// The connection being accepted failed before it was handed over:
    /// accept the next one at once.
    Connection,
    /// The server cannot take connections now (out of descriptors, buffers
    /// or memory), or the failure is not known to be one connection's:
    /// wait [`ACCEPT_BACKOFF`] before accepting again.
    Server,
}

impl AcceptFailure {
    /// Classifies `error`, an error from `accept`.
    fn of(error: &io::Error) -> Self {
        use io::ErrorKind as Kind;
        let connection = matches!(
            error.kind(),
            Kind::ConnectionAborted
                | Kind::ConnectionReset
                | Kind::Interrupted
                | Kind::WouldBlock
                | Kind::TimedOut
                // Linux: firewall rules refused this connection.
                | Kind::PermissionDenied
                | Kind::NetworkDown
                | Kind::NetworkUnreachable
                | Kind::HostUnreachable
        ) || error
            .raw_os_error()
            .is_some_and(|code| errno::PENDING_ON_CONNECTION.contains(&code));
        if connection {
            Self::Connection
        } else {
            Self::Server
        }
    }
}

/// Error numbers that std has no [`io::ErrorKind`] for.
mod errno {
    /// The network errors Linux's `accept` passes on from the connection
    /// being accepted, to be retried at once (accept(2)): `EPROTO`,
    /// `ENOPROTOOPT`, `EHOSTDOWN`, `ENONET`, `EOPNOTSUPP`. Elsewhere none:
    /// an unknown failure is waited out, never retried in a tight loop.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub(super) const PENDING_ON_CONNECTION: &[i32] = &[71, 92, 112, 64, 95];
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    pub(super) const PENDING_ON_CONNECTION: &[i32] = &[];
}

/// One accept loop's failures over time: for each, when to accept again
/// and what to report.
///
/// A failure that belonged to the connection being accepted (the peer
/// reset or gave up while it waited in the backlog, a network error
/// pending on it) is that connection's: the loop reports it and accepts
/// the next one at once. Any other failure is the server's: out of
/// descriptors (`EMFILE`, `ENFILE`), socket buffers (`ENOBUFS`) or memory
/// (`ENOMEM`), which accepting again at once would only meet again, in a
/// loop that leaves no time to the connections already accepted, whose
/// ending is what frees the descriptors. The loop waits [`ACCEPT_BACKOFF`]
/// on a timer (serving those connections meanwhile) and tries again, for
/// as long as it takes; it reports such failures at most once per
/// [`ACCEPT_REPORT_EVERY`]. No accept failure ends a server.
///
/// ```
/// # use std::{io, time::Instant};
/// use storm_host::setup::{AcceptErrors, ACCEPT_BACKOFF};
///
/// let mut errors = AcceptErrors::default();
/// let emfile = io::Error::from_raw_os_error(24); // Too many open files
/// let step = errors.failed(emfile, Instant::now());
/// assert_eq!(step.wait, Some(ACCEPT_BACKOFF));
/// assert!(step.report.is_some(), "the first is reported");
///
/// let step = errors.failed(io::ErrorKind::ConnectionAborted.into(), Instant::now());
/// assert_eq!(step.wait, None, "one connection's: accept again at once");
/// ```
#[derive(Debug, Default)]
pub struct AcceptErrors {
    /// When a failure the loop waits out was last reported.
    reported_at: Option<Instant>,
    /// Such failures since then.
    unreported: u64,
}

/// What to do after a failed `accept` (from [`AcceptErrors::failed`]).
#[derive(Debug)]
#[must_use]
pub struct AcceptStep {
    /// How long to wait, on a timer and serving the connections already
    /// accepted, before accepting again; `None`: accept again at once.
    pub wait: Option<Duration>,
    /// The error to hand the server's handler, if any.
    pub report: Option<io::Error>,
}

impl AcceptErrors {
    /// `accept` failed with `error` at `now`.
    ///
    /// A connection's failure is reported as it is (an interrupted call
    /// is no failure: not reported). A failure the loop waits out is
    /// reported when none was in the last [`ACCEPT_REPORT_EVERY`], with
    /// its kind and a message that says that the server waits, and how
    /// many such failures went unreported since the last report.
    pub fn failed(&mut self, error: io::Error, now: Instant) -> AcceptStep {
        if AcceptFailure::of(&error) == AcceptFailure::Connection {
            let retried = matches!(
                error.kind(),
                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
            );
            return AcceptStep {
                wait: None,
                report: (!retried).then_some(error),
            };
        }
        let due = self
            .reported_at
            .is_none_or(|at| now.saturating_duration_since(at) >= ACCEPT_REPORT_EVERY);
        let report = if due {
            let since = match std::mem::take(&mut self.unreported) {
                0 => String::new(),
                n => format!(" (and {n} times since the last report)"),
            };
            self.reported_at = Some(now);
            let ms = ACCEPT_BACKOFF.as_millis();
            Some(io::Error::new(
                error.kind(),
                format!(
                    "accept failed{since}: {error}; accepting again every {ms} ms, \
                     serving the open connections meanwhile"
                ),
            ))
        } else {
            self.unreported += 1;
            None
        };
        AcceptStep {
            wait: Some(ACCEPT_BACKOFF),
            report,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_connections_failures_are_retried_at_once_and_reported() {
        let mut errors = AcceptErrors::default();
        let now = Instant::now();
        for kind in [
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::PermissionDenied,
        ] {
            assert_eq!(AcceptFailure::of(&kind.into()), AcceptFailure::Connection);
            let step = errors.failed(kind.into(), now);
            assert_eq!(step.wait, None, "{kind:?}");
            assert_eq!(step.report.map(|e| e.kind()), Some(kind));
        }
    }

    #[test]
    fn an_interrupted_accept_is_retried_at_once_unreported() {
        let step =
            AcceptErrors::default().failed(io::ErrorKind::Interrupted.into(), Instant::now());
        assert_eq!(step.wait, None);
        assert!(step.report.is_none());
    }

    /// EMFILE, ENFILE, ENOMEM and ENOBUFS, and EPROTO, by their Linux
    /// numbers.
    #[cfg(target_os = "linux")]
    #[test]
    fn exhaustion_is_waited_out_and_pending_network_errors_are_not() {
        for code in [24, 23, 12, 105] {
            let error = io::Error::from_raw_os_error(code);
            assert_eq!(AcceptFailure::of(&error), AcceptFailure::Server, "{error}");
        }
        let eproto = io::Error::from_raw_os_error(71);
        assert_eq!(AcceptFailure::of(&eproto), AcceptFailure::Connection);
    }

    #[test]
    fn unknown_failures_are_waited_out() {
        let error = io::Error::other("something new");
        assert_eq!(AcceptFailure::of(&error), AcceptFailure::Server);
    }

    #[test]
    fn waited_out_failures_are_reported_at_most_once_a_period() {
        let mut errors = AcceptErrors::default();
        let start = Instant::now();
        let fail = |errors: &mut AcceptErrors, at: Duration| {
            let step = errors.failed(io::Error::other("out of descriptors"), start + at);
            assert_eq!(step.wait, Some(ACCEPT_BACKOFF));
            step.report.map(|e| e.to_string())
        };
        let first = fail(&mut errors, Duration::ZERO).expect("the first is reported");
        assert!(
            first.starts_with("accept failed: out of descriptors; accepting again every 10 ms"),
            "{first}"
        );
        for ms in [10, 20, 990] {
            assert_eq!(fail(&mut errors, Duration::from_millis(ms)), None);
        }
        // A connection's failure in between is reported and changes nothing.
        let step = errors.failed(io::ErrorKind::ConnectionReset.into(), start);
        assert!(step.report.is_some());
        let next = fail(&mut errors, ACCEPT_REPORT_EVERY).expect("a period later");
        assert!(
            next.starts_with("accept failed (and 3 times since the last report): out of"),
            "{next}"
        );
        assert_eq!(
            fail(&mut errors, ACCEPT_REPORT_EVERY + ACCEPT_BACKOFF),
            None
        );
    }
}
