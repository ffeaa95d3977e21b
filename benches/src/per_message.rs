//! The per-message path (decode → event → handler → encode) without
//! sockets, shared by the `per_message` bench (time) and the
//! `alloc_per_message` example (allocations).
//!
//! A batch is what a connection task does with one read at a deep
//! pipeline: the reads' bytes go in, every message comes out as an event,
//! the handler sends it straight back, and the writer takes the framed
//! bytes (and drops them, as written) until it finds nothing more, its
//! last call being the idle poll. Once through a bare
//! [`storm_proto::link::Link`] ([`Echo::link`]), once through
//! [`storm_host::link::LinkDriver`] and the session's hub outbox
//! ([`Echo::driver`]), as the adapters run it.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use storm_host::hub::{Hub, HubConfig, Outbox};
use storm_host::link::{LinkDriver, LinkEvent};
use storm_proto::framing::{Framer, LengthPrefixFramer, RawFramer};
use storm_proto::link::{Link, LinkConfig, Protocol};
use storm_proto::ws::frame::{FrameHeader, OpCode, encode_frame};
use storm_proto::ws::{Config, Connection, Side};

/// The most one writer call takes from the outbox: the adapters' default
/// (`write_batch`, 64 KiB).
pub const WRITE_BATCH: usize = 64 * 1024;

/// A wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// WebSocket, server side: masked binary client frames in, unmasked
    /// frames out, no deflate.
    WebSocket,
    /// 4-byte big-endian length prefix.
    LengthPrefixed,
    /// Raw bytes: a message is what one read brought.
    Raw,
}

impl Wire {
    /// Every wire format.
    pub const ALL: [Self; 3] = [Self::WebSocket, Self::LengthPrefixed, Self::Raw];

    /// Its short name: `ws`, `lp`, `raw`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::WebSocket => "ws",
            Self::LengthPrefixed => "lp",
            Self::Raw => "raw",
        }
    }

    /// A fresh server-side protocol machine for it.
    #[must_use]
    pub fn protocol(self) -> Protocol {
        match self {
            Self::WebSocket => {
                Protocol::WebSocket(Box::new(Connection::new(Side::Server, Config::default())))
            }
            Self::LengthPrefixed => Protocol::Framed(Box::new(LengthPrefixFramer::default())),
            Self::Raw => Protocol::Framed(Box::new(RawFramer::default())),
        }
    }

    /// The reads that carry `count` client messages of `size` bytes,
    /// `per_read` of them in each read (the last read may hold fewer).
    /// Raw framing has no boundaries: a raw message is what one read
    /// brought, so for raw `per_read` is 1 whatever is asked.
    ///
    /// # Panics
    ///
    /// When `per_read` is 0, or for raw when `size` is over the raw
    /// framer's default chunk limit (a read would be several messages).
    #[must_use]
    pub fn reads(self, size: usize, count: usize, per_read: usize) -> Vec<Bytes> {
        assert!(per_read > 0);
        let per_read = if self == Self::Raw {
            assert!(size <= RawFramer::default().max_message_len());
            1
        } else {
            per_read
        };
        let payload = vec![b'x'; size];
        let mut framer = LengthPrefixFramer::default();
        let mut reads = Vec::new();
        let mut read = BytesMut::new();
        for i in 0..count {
            match self {
                Self::WebSocket => {
                    let mut header = FrameHeader::new(OpCode::Binary, 0);
                    header.mask = Some(u32::try_from(i).unwrap_or(0).to_be_bytes());
                    encode_frame(header, &payload, &mut read);
                }
                Self::LengthPrefixed => framer
                    .encode(&payload, &mut read)
                    .expect("under the default limit"),
                Self::Raw => read.extend_from_slice(&payload),
            }
            if (i + 1) % per_read == 0 || i + 1 == count {
                reads.push(read.split().freeze());
            }
        }
        reads
    }

    /// The bytes a server frames to send one message of `size` bytes.
    #[must_use]
    pub fn encoded_len(self, size: usize) -> usize {
        match self {
            Self::WebSocket => {
                size + match size {
                    0..=125 => 2,
                    126..=0xffff => 4,
                    _ => 10,
                }
            }
            Self::LengthPrefixed => size + 4,
            Self::Raw => size,
        }
    }
}

/// What one batch did: messages echoed and bytes handed to the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Echoed {
    /// Messages the handler got and sent back.
    pub messages: usize,
    /// Bytes the writer took.
    pub bytes: usize,
}

/// One connection's echo, the machine under it and the writer's list of
/// buffers.
pub struct Echo {
    path: Path,
    out: Vec<Bytes>,
}

enum Path {
    Link(Box<Link>),
    Driver {
        driver: Box<LinkDriver>,
        outbox: Arc<Outbox>,
        /// The hub the session is registered with.
        _hub: Hub,
    },
}

/// Why an [`Echo`] could not be set up.
pub type SetupError = Box<dyn std::error::Error + Send + Sync>;

impl Echo {
    /// An echo through a bare [`Link`] speaking `wire`, with the default
    /// configuration, from `now`.
    ///
    /// # Errors
    ///
    /// When the link cannot be built.
    pub fn link(wire: Wire, now: Instant) -> Result<Self, SetupError> {
        let link = Link::new(wire.protocol(), &LinkConfig::default(), now)?;
        Ok(Self {
            path: Path::Link(Box::new(link)),
            out: Vec::new(),
        })
    }

    /// An echo through a [`LinkDriver`] speaking `wire`, its session
    /// registered with a hub of its own, every configuration at its
    /// default, from `now`: the handler sends to the session's outbox.
    ///
    /// # Errors
    ///
    /// When the hub or the link cannot be built.
    pub fn driver(wire: Wire, now: Instant) -> Result<Self, SetupError> {
        let hub = Hub::new(HubConfig::default(), now)?;
        let outbox = hub.register(hub.try_admit()?, now)?;
        let config = storm_host::link::LinkConfig::default();
        let driver = LinkDriver::new(Arc::clone(&outbox), wire.protocol(), &config, now)?;
        Ok(Self {
            path: Path::Driver {
                driver: Box::new(driver),
                outbox,
                _hub: hub,
            },
            out: Vec::new(),
        })
    }

    /// One batch at `now`: each of `reads` in and its messages echoed,
    /// then the writer's calls until it finds nothing to write.
    ///
    /// # Panics
    ///
    /// On any event but a message, or when the link wants to close.
    pub fn batch(&mut self, now: Instant, reads: &[Bytes]) -> Echoed {
        let mut messages = 0;
        for read in reads {
            self.handle_input(now, read);
            while let Some(event) = self.poll_event(now) {
                let LinkEvent::Message(message) = event else {
                    panic!("unexpected {event:?}");
                };
                messages += 1;
                self.send(message);
            }
        }
        let mut bytes = 0;
        loop {
            let transmit = self.poll_transmit(now);
            assert!(!transmit.close, "the link closed");
            self.out.clear(); // written
            if transmit.bytes == 0 {
                break;
            }
            bytes += transmit.bytes;
        }
        Echoed { messages, bytes }
    }

    fn handle_input(&mut self, now: Instant, read: &[u8]) {
        match &mut self.path {
            Path::Link(link) => link.handle_input(now, read),
            Path::Driver { driver, .. } => driver.handle_input(now, read),
        }
    }

    fn poll_event(&mut self, now: Instant) -> Option<LinkEvent> {
        match &mut self.path {
            Path::Link(link) => link.poll_event(now),
            Path::Driver { driver, .. } => driver.poll_event(now),
        }
    }

    /// The handler's reply.
    fn send(&mut self, message: storm_proto::Message) {
        match &mut self.path {
            Path::Link(link) => link.send(&message),
            Path::Driver { outbox, .. } => {
                let _ = outbox.send(message);
            }
        }
    }

    fn poll_transmit(&mut self, now: Instant) -> storm_proto::link::Transmit {
        match &mut self.path {
            Path::Link(link) => link.poll_transmit(now, &mut self.out),
            Path::Driver { driver, .. } => driver.poll_transmit(now, &mut self.out, WRITE_BATCH),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_echoes_every_message_back_framed() {
        let now = Instant::now();
        for build in [Echo::link, Echo::driver] {
            for wire in Wire::ALL {
                for (count, size, per_read) in [(100, 32, 100), (100, 32, 1), (3, 64 * 1024, 3)] {
                    let reads = wire.reads(size, count, per_read);
                    let expected_reads = if wire == Wire::Raw {
                        count
                    } else {
                        count / per_read
                    };
                    assert_eq!(reads.len(), expected_reads);
                    let mut echo = build(wire, now).unwrap();
                    for _ in 0..2 {
                        let echoed = echo.batch(now, &reads);
                        assert_eq!(echoed.messages, count, "{wire:?}");
                        assert_eq!(echoed.bytes, count * wire.encoded_len(size), "{wire:?}");
                    }
                }
            }
        }
    }
}
