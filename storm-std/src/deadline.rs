//! Handshakes on a blocking socket, bounded by one deadline.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Time left before `deadline`, or a timed-out error naming the handshake.
pub(crate) fn remaining(deadline: Instant, what: &str) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what} timed out"),
        ))
    } else {
        Ok(left)
    }
}

/// A read or write timeout during a handshake is the handshake's timeout.
pub(crate) fn timed_out(e: io::Error, what: &str) -> io::Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"))
        }
        _ => e,
    }
}

/// A blocking socket bounded by one deadline: every read and every write
/// gets the time left before the deadline as its timeout, so a whole
/// exchange (a handshake: TLS, then the WebSocket upgrade; or one HTTP
/// request) ends by the deadline however the peer trickles its bytes. Past
/// it, each call fails with [`TimedOut`](io::ErrorKind::TimedOut) and a
/// message naming `what`.
///
/// The servers bound their handshakes with it; wrap it in a blocking
/// rustls stream to bound a TLS exchange the same way.
#[derive(Debug)]
pub struct Deadlined<'a> {
    stream: &'a TcpStream,
    deadline: Instant,
    what: &'static str,
}

impl<'a> Deadlined<'a> {
    /// Reads and writes `stream` until `deadline`; `what` names the
    /// exchange in the timed-out error.
    #[must_use]
    pub fn new(stream: &'a TcpStream, deadline: Instant, what: &'static str) -> Self {
        Self {
            stream,
            deadline,
            what,
        }
    }
}

impl Read for Deadlined<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream
            .set_read_timeout(Some(remaining(self.deadline, self.what)?))?;
        self.stream.read(buf).map_err(|e| timed_out(e, self.what))
    }
}

impl Write for Deadlined<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream
            .set_write_timeout(Some(remaining(self.deadline, self.what)?))?;
        self.stream.write(buf).map_err(|e| timed_out(e, self.what))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
