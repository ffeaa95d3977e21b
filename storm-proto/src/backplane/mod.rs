//! The backplane protocol: what nodes of one Storm service tell each other
//! so that rooms, users and presence span several processes.
//!
//! Sans-IO like the rest of the crate: the transport (Redis pub/sub and
//! streams, NATS, …) lives on the adapter side (the `storm-backplane`
//! crate); here is what every transport shares:
//!
//! | part | what it decides |
//! |---|---|
//! | [`NodeId`] | who published: 128 random bits per process, so a node can ignore its own publications |
//! | [`SessionAddr`], [`NodeTag`] | one session among every node's (`NODE-N`), as services show and take it back |
//! | [`Channels`] | the names of the pub/sub channels and storage keys, under one prefix: a room's, a user's, a node's |
//! | [`Envelope`] | one message between nodes: versioned binary, encoded once per room message; decoding any bytes gives an envelope or a typed [`DecodeError`] |
//! | [`Position`], [`Epoch`] | where a room message sits in its room's history: a monotonic offset within an epoch (one incarnation of the history; a new epoch means the old offsets mean nothing) |
//! | [`Subscriber`], [`Order`] | per room, what an arriving envelope is: the next one, a duplicate, after a gap (the offsets it skipped), or from a new epoch; and whether it is this node's own |
//! | [`recover`], [`Unrecoverable`] | the recovery rule: given a client's last position, the room's top and the history window, exactly the messages it missed, or why that is impossible |
//! | [`Presence`] | who is in which room, each entry alive until a TTL deadline passed in as time |
//! | [`NodeStats`] | what a node reports of itself (sessions, rooms), so figures span every node |
//! | [`Subscriptions`] | which rooms' channels a node subscribes to (those with a local member), and joins held back until their room's subscription is confirmed, so recovery and live delivery meet without a gap |
//!
//! # Ordering and offsets
//!
//! A room's offsets are assigned where its history is kept (atomically with
//! the append and the publish: a Redis script), starting at 1 and growing by
//! one per message, so a subscriber that sees offset `n + 2` after `n` knows
//! it missed `n + 1`. Offset 0 is the position before the first message.

mod address;
mod channel;
mod envelope;
mod presence;
mod recovery;
mod sequence;
mod subscriptions;

use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;

pub use address::{NodeTag, SessionAddr, SessionAddrError};
pub use channel::{Channel, Channels, MAX_PREFIX_LEN, PrefixError};
pub use envelope::{
    DecodeError, EncodeError, Envelope, HEADER_LEN, Kind, MAX_NAME_LEN, POSITION_RANGE, VERSION,
};
pub use presence::{Presence, PresenceFull};
pub use recovery::{Unrecoverable, recover, recovery_range};
pub use sequence::{Inbound, Order, Subscriber};
pub use subscriptions::{Ready, SubscribeId, SubscriptionCommand, Subscriptions};

/// What one node reports of itself to the others, so that a service's
/// figures span every node: its sessions and its rooms (those with a local
/// member). Written as two decimal numbers, `"SESSIONS ROOMS"`.
///
/// ```
/// use storm_proto::backplane::NodeStats;
///
/// let stats = NodeStats { sessions: 3, rooms: 2 };
/// assert_eq!(stats.to_string(), "3 2");
/// assert_eq!("3 2".parse(), Ok(stats));
/// assert!("3".parse::<NodeStats>().is_err());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct NodeStats {
    /// Sessions connected to the node.
    pub sessions: u64,
    /// Rooms with at least one member on the node.
    pub rooms: u64,
}

impl fmt::Display for NodeStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.sessions, self.rooms)
    }
}

/// A string that is not two decimal numbers separated by a space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStatsError;

impl fmt::Display for NodeStatsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("node stats are two decimal numbers: sessions and rooms")
    }
}

impl std::error::Error for NodeStatsError {}

impl FromStr for NodeStats {
    type Err = NodeStatsError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (sessions, rooms) = text.split_once(' ').ok_or(NodeStatsError)?;
        let number = |digits: &str| {
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(NodeStatsError);
            }
            digits.parse::<u64>().map_err(|_| NodeStatsError)
        };
        Ok(Self {
            sessions: number(sessions)?,
            rooms: number(rooms)?,
        })
    }
}

/// One node (process) of a service: 128 bits, random per process start.
///
/// Displayed and parsed as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(u128);

impl NodeId {
    /// The id with these bits.
    #[must_use]
    pub const fn from_u128(bits: u128) -> Self {
        Self(bits)
    }

    /// Its bits.
    #[must_use]
    pub const fn to_u128(self) -> u128 {
        self.0
    }

    /// A fresh id from `rng` (the caller picks the randomness: the core
    /// reads no entropy of its own).
    pub fn random(rng: &mut impl rand::Rng) -> Self {
        Self(rng.random())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A string that is not 32 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeIdError;

impl fmt::Display for NodeIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a node id is 32 hex digits")
    }
}

impl std::error::Error for NodeIdError {}

impl FromStr for NodeId {
    type Err = NodeIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(NodeIdError);
        }
        u128::from_str_radix(text, 16)
            .map(Self)
            .map_err(|_| NodeIdError)
    }
}

/// One incarnation of a room's history. Chosen (at random) by the node that
/// first appends to a room whose history has none, kept with the history;
/// when the history is lost (its store restarted empty, its keys expired),
/// the next append starts a new epoch, and positions of the old one cannot
/// be recovered. Never zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epoch(NonZeroU64);

impl Epoch {
    /// The epoch with this value, `None` for zero.
    #[must_use]
    pub const fn new(value: u64) -> Option<Self> {
        match NonZeroU64::new(value) {
            Some(value) => Some(Self(value)),
            None => None,
        }
    }

    /// Its value.
    #[must_use]
    pub const fn get(self) -> u64 {
        self.0.get()
    }

    /// A fresh epoch from `rng`.
    pub fn random(rng: &mut impl rand::Rng) -> Self {
        loop {
            if let Some(epoch) = Self::new(rng.random()) {
                return epoch;
            }
        }
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Where a room message sits: its epoch and its offset in it. Offsets
/// start at 1; offset 0 is the position before the first message (what a
/// client that saw none of the epoch's messages holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    /// The history's incarnation.
    pub epoch: Epoch,
    /// The message's offset in it (0: before the first).
    pub offset: u64,
}

impl Position {
    /// A position.
    #[must_use]
    pub const fn new(epoch: Epoch, offset: u64) -> Self {
        Self { epoch, offset }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

#[cfg(test)]
mod tests;
