//! Where a room message's time goes: per-message timestamps of the Redis
//! backplane's stages, for measuring (`xnode --stages`), off unless asked
//! for.
//!
//! With [`RedisConfig::stages`](crate::redis::RedisConfig::stages) naming a
//! file (`storm chat --backplane-stages FILE`, or its environment variable
//! `STORM_BACKPLANE_STAGES`, so that a node can be measured as it is
//! started), a
//! [`RedisBackplane`](crate::redis::RedisBackplane) stamps each room message it publishes when it is queued, when the
//! publisher takes it into a pipeline and when that pipeline's reply is in
//! (then its offset is known), and each room message it receives when the
//! task reading its subscription connection has it and when it has been handed to its
//! [`Deliver`](crate::Deliver); a thread appends them to the file as text
//! lines every [`FLUSH_EVERY`]:
//!
//! ```text
//! p ROOM OFFSET QUEUED TAKEN REPLIED     a message this node published
//! r ROOM OFFSET RECEIVED DELIVERED       a message this node received
//! ```
//!
//! Times are nanoseconds of the system clock since the Unix epoch: one
//! clock for every process on the machine, so the stamps of two nodes (and
//! of the client that sent the message) can be set against each other by
//! the room and offset. Room names are written with `%` escapes for
//! whitespace and `%` itself ([`escape`]). Without a file nothing is
//! stamped: each stage costs one `Option` check. At most [`MAX_PENDING`]
//! lines wait for the thread; beyond that they are counted and left out
//! (the count goes to the file as a line `dropped N`).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::node::lock;

/// How often the thread appends what was stamped.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Lines waiting for the thread, at most.
pub const MAX_PENDING: usize = 1 << 20;

/// Now on the system clock, in nanoseconds since the Unix epoch (0 before
/// it).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `room` with `%`, whitespace and control characters as `%XX`: one token
/// of a stages line.
pub fn escape(room: &str) -> String {
    let mut out = String::with_capacity(room.len());
    for c in room.chars() {
        if c == '%' || c.is_whitespace() || c.is_control() {
            let mut bytes = [0; 4];
            for byte in c.encode_utf8(&mut bytes).bytes() {
                let _ = write!(out, "%{byte:02X}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// [`escape`]'s `room` back; `None` for a `%` not followed by two hex
/// digits or bytes that are not UTF-8.
pub fn unescape(token: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(token.len());
    let mut rest = token.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(byte);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

/// One stages line, as [the module](self) describes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stamp {
    /// A room message this node published.
    Published {
        /// Its room.
        room: String,
        /// Its offset.
        offset: u64,
        /// Queued for the publisher.
        queued: u64,
        /// Taken into a pipeline.
        taken: u64,
        /// The pipeline's reply parsed.
        replied: u64,
    },
    /// A room message this node received.
    Received {
        /// Its room.
        room: String,
        /// Its offset.
        offset: u64,
        /// The task reading the subscription connection has it.
        received: u64,
        /// Handed to the node's `Deliver` (or skipped as its own).
        delivered: u64,
    },
}

impl Stamp {
    /// The line, without its end.
    pub fn line(&self) -> String {
        match self {
            Self::Published {
                room,
                offset,
                queued,
                taken,
                replied,
            } => format!("p {} {offset} {queued} {taken} {replied}", escape(room)),
            Self::Received {
                room,
                offset,
                received,
                delivered,
            } => format!("r {} {offset} {received} {delivered}", escape(room)),
        }
    }

    /// A line back; `None` for anything else.
    pub fn parse(line: &str) -> Option<Self> {
        let mut words = line.split_ascii_whitespace();
        let kind = words.next()?;
        let room = unescape(words.next()?)?;
        let mut number = || words.next()?.parse::<u64>().ok();
        let stamp = match kind {
            "p" => Self::Published {
                room,
                offset: number()?,
                queued: number()?,
                taken: number()?,
                replied: number()?,
            },
            "r" => Self::Received {
                room,
                offset: number()?,
                received: number()?,
                delivered: number()?,
            },
            _ => return None,
        };
        words.next().is_none().then_some(stamp)
    }
}

/// The stamps of one backplane waiting for the thread that writes them.
#[derive(Debug)]
pub(crate) struct Stages {
    pending: Mutex<Pending>,
}

#[derive(Debug, Default)]
struct Pending {
    lines: Vec<Stamp>,
    dropped: u64,
}

impl Stages {
    /// Stages to the file at `path` (appended to), with the thread that
    /// writes them; `None` when the thread cannot start (said on stderr).
    pub(crate) fn start(path: &Path) -> Option<Arc<Self>> {
        let path = path.to_owned();
        let stages = Arc::new(Self {
            pending: Mutex::new(Pending::default()),
        });
        // The thread runs as long as the process: what it measures has no
        // end before that.
        let writer = Arc::clone(&stages);
        let started = std::thread::Builder::new()
            .name("backplane-stages".to_owned())
            .spawn(move || writer.write_to(&path));
        match started {
            Ok(_) => Some(stages),
            Err(error) => {
                eprintln!("backplane: no thread to write the stages: {error}");
                None
            }
        }
    }

    /// Keeps `stamp` for the thread (counted and left out when
    /// [`MAX_PENDING`] wait already).
    pub(crate) fn push(&self, stamp: Stamp) {
        let mut pending = lock(&self.pending);
        if pending.lines.len() < MAX_PENDING {
            pending.lines.push(stamp);
        } else {
            pending.dropped += 1;
        }
    }

    /// Appends what was stamped to `path` every [`FLUSH_EVERY`], forever;
    /// returns (said on stderr) when the file cannot be written.
    fn write_to(&self, path: &Path) {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path);
        let mut file = match file {
            Ok(file) => std::io::BufWriter::new(file),
            Err(error) => {
                eprintln!("backplane: stages to {}: {error}", path.display());
                return;
            }
        };
        loop {
            std::thread::sleep(FLUSH_EVERY);
            let Pending { lines, dropped } = std::mem::take(&mut *lock(&self.pending));
            let mut text = String::new();
            for stamp in &lines {
                text.push_str(&stamp.line());
                text.push('\n');
            }
            if dropped > 0 {
                let _ = writeln!(text, "dropped {dropped}");
            }
            if let Err(error) = file.write_all(text.as_bytes()).and_then(|()| file.flush()) {
                eprintln!("backplane: stages to {}: {error}", path.display());
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_back() {
        let stamps = [
            Stamp::Published {
                room: "a b%".to_owned(),
                offset: 7,
                queued: 1,
                taken: 2,
                replied: 3,
            },
            Stamp::Received {
                room: "lobby".to_owned(),
                offset: 8,
                received: 4,
                delivered: 5,
            },
        ];
        let lines: Vec<String> = stamps.iter().map(Stamp::line).collect();
        assert_eq!(lines, ["p a%20b%25 7 1 2 3", "r lobby 8 4 5"]);
        for line in &lines {
            let back = Stamp::parse(line).expect("a stages line");
            assert_eq!(back.line(), *line);
        }
        assert!(matches!(
            Stamp::parse("p a%20b%25 7 1 2 3"),
            Some(Stamp::Published { room, .. }) if room == "a b%"
        ));
        for bad in [
            "p %2 1 2 3 4",
            "p %zz 1 2 3 4",
            "p %FF 1 2 3 4",
            "",
            "p",
            "p x 1 2 3",
            "r x 1 2",
            "r x 1 2 3 4",
            "q x 1 2 3",
            "p x 1 2 3 4 5",
        ] {
            assert_eq!(Stamp::parse(bad), None, "{bad:?}");
        }
        assert_eq!(escape("é\tx"), "é%09x");
        assert_eq!(unescape("é%09x").as_deref(), Some("é\tx"));
    }
}
