//! Addresses and process accounting, shared by `storm bench` and the
//! end-to-end load generator (`benches/e2e`): both refuse anything but a
//! loopback address and read CPU time from `/proc`; the load generator and
//! the churn test of `storm echo` also read a server's memory there
//! ([`ProcessState`]).

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Why an address was refused by [`loopback_addr`].
#[derive(Debug)]
#[non_exhaustive]
pub enum AddrError {
    /// The text is neither `IP:PORT` nor a resolvable `HOST:PORT`.
    Invalid(String),
    /// The address (or one the name resolves to) is not on this machine.
    NotLoopback(SocketAddr),
}

impl fmt::Display for AddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(text) => write!(f, "not a socket address: {text}"),
            Self::NotLoopback(addr) => write!(
                f,
                "{addr} is not a loopback address; benchmarks only target this machine \
                 (127.0.0.0/8 or [::1])"
            ),
        }
    }
}

impl std::error::Error for AddrError {}

/// Parses `text` (`127.0.0.1:9001`, `[::1]:9001` or `localhost:9001`) and
/// returns it only if it, and every address the name resolves to, is a
/// loopback address.
///
/// # Errors
///
/// [`AddrError::Invalid`] if the text is not an address or does not
/// resolve; [`AddrError::NotLoopback`] for any other address.
pub fn loopback_addr(text: &str) -> Result<SocketAddr, AddrError> {
    let addrs: Vec<SocketAddr> = match text.parse::<SocketAddr>() {
        Ok(addr) => vec![addr],
        Err(_) => text
            .to_socket_addrs()
            .map_err(|_| AddrError::Invalid(text.to_owned()))?
            .collect(),
    };
    if let Some(bad) = addrs.iter().find(|a| !a.ip().to_canonical().is_loopback()) {
        return Err(AddrError::NotLoopback(*bad));
    }
    addrs
        .first()
        .copied()
        .ok_or_else(|| AddrError::Invalid(text.to_owned()))
}

/// Clock ticks per second of the times in `/proc/*/stat` (Linux `USER_HZ`,
/// 100 on every mainstream architecture; `getconf CLK_TCK` prints it).
pub const USER_HZ: u64 = 100;

/// User plus system CPU time, in [`USER_HZ`] ticks, from the text of a
/// `/proc/PID/stat` file: fields 14 and 15, counted after the `)` that ends
/// the command name (which may itself hold spaces and parentheses).
#[must_use]
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ")": field 3 (state) is the first; utime is field 14.
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time this process has used so far (all threads), in [`USER_HZ`]
/// ticks.
///
/// # Errors
///
/// If `/proc/self/stat` cannot be read or parsed (not Linux).
pub fn self_cpu_ticks() -> io::Result<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    stat_cpu_ticks(&stat).ok_or_else(|| io::Error::other("unexpected /proc/self/stat format"))
}

/// What Linux's `/proc/PID/status` and `/proc/PID/fd` say of a process:
/// its resident memory, its threads and its open descriptors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessState {
    /// Resident anonymous memory (heap and thread stacks), in KiB: what a
    /// server's connections cost it.
    pub rss_anon_kib: u64,
    /// All resident memory, in KiB: also the program's code and data pages
    /// it touched.
    pub vm_rss_kib: u64,
    /// The most resident memory the process ever held, in KiB (`VmHWM`).
    pub peak_rss_kib: u64,
    /// Threads.
    pub threads: u64,
    /// Open file descriptors (its sockets among them).
    pub descriptors: u64,
}

impl ProcessState {
    /// Reads the state of process `pid`.
    ///
    /// # Errors
    ///
    /// If `/proc/PID` cannot be read (no such process, not Linux) or
    /// `status` lacks a field.
    pub fn read(pid: u32) -> io::Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let descriptors = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
        let field = |name: &str| {
            status_field(&status, name).ok_or_else(|| {
                io::Error::other(format!("/proc/{pid}/status has no number for {name}"))
            })
        };
        Ok(Self {
            rss_anon_kib: field("RssAnon")?,
            vm_rss_kib: field("VmRSS")?,
            peak_rss_kib: field("VmHWM")?,
            threads: field("Threads")?,
            descriptors,
        })
    }

    /// Waits until process `pid` holds no more threads and descriptors
    /// than it did in state `earlier` (so it let go of every connection
    /// opened since), looking every 20 ms for at most `timeout`; returns
    /// its state then.
    ///
    /// # Errors
    ///
    /// [`read`](Self::read)'s, or [`io::ErrorKind::TimedOut`] (saying what
    /// the process still held) after `timeout`.
    pub fn wait_settled(pid: u32, earlier: &Self, timeout: Duration) -> io::Result<Self> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = Self::read(pid)?;
            if now.threads <= earlier.threads && now.descriptors <= earlier.descriptors {
                return Ok(now);
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "process {pid} still held {} threads and {} descriptors after \
                         {timeout:?} (earlier: {} and {})",
                        now.threads, now.descriptors, earlier.threads, earlier.descriptors
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The number that starts the value of line `NAME:` of a
/// `/proc/PID/status` text (`RssAnon:     1234 kB` gives 1234).
fn status_field(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))?
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_accepted() {
        for text in [
            "127.0.0.1:9001",
            "127.3.2.1:1",
            "[::1]:80",
            "[::ffff:127.0.0.1]:5",
        ] {
            assert!(loopback_addr(text).is_ok(), "{text}");
        }
    }

    #[test]
    fn others_refused() {
        for text in [
            "10.0.0.1:80",
            "192.168.1.1:9001",
            "0.0.0.0:9001",
            "[::]:1",
            "8.8.8.8:53",
        ] {
            assert!(
                matches!(loopback_addr(text), Err(AddrError::NotLoopback(_))),
                "{text}"
            );
        }
        assert!(matches!(
            loopback_addr("no port"),
            Err(AddrError::Invalid(_))
        ));
    }

    #[test]
    fn stat_fields() {
        let stat = "4242 (a) b (c)) S 1 2 3 4 5 6 7 8 9 10 123 45 0 0 20 0 1 0";
        assert_eq!(stat_cpu_ticks(stat), Some(168));
        assert_eq!(stat_cpu_ticks("4242 (a) S 1 2"), None);
        assert!(self_cpu_ticks().is_ok());
    }

    #[test]
    fn status_fields() {
        let status = "Name:\tstorm\nVmHWM:\t    9000 kB\nVmRSS:\t    7188 kB\n\
                      RssAnon:\t     492 kB\nThreads:\t3\n";
        assert_eq!(status_field(status, "RssAnon"), Some(492));
        assert_eq!(status_field(status, "VmRSS"), Some(7188));
        assert_eq!(status_field(status, "VmHWM"), Some(9000));
        assert_eq!(status_field(status, "Threads"), Some(3));
        assert_eq!(status_field(status, "Rss"), None);
        assert_eq!(status_field(status, "Name"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn own_state() {
        let state = ProcessState::read(std::process::id()).unwrap();
        assert!(state.rss_anon_kib > 0 && state.vm_rss_kib >= state.rss_anon_kib);
        assert!(state.peak_rss_kib >= state.vm_rss_kib, "{state:?}");
        assert!(state.threads >= 1 && state.descriptors >= 3, "{state:?}");
        let pid = std::process::id();
        let more = ProcessState {
            threads: u64::MAX,
            descriptors: u64::MAX,
            ..state
        };
        assert!(ProcessState::wait_settled(pid, &more, Duration::ZERO).is_ok());
        let none = ProcessState::default();
        let waited = ProcessState::wait_settled(pid, &none, Duration::ZERO).unwrap_err();
        assert_eq!(waited.kind(), io::ErrorKind::TimedOut, "{waited}");
    }
}
