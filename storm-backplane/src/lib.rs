//! Storm's backplane adapters: the I/O side of rooms across nodes.
//!
//! A [`Hub`] made
//! [`with_backplane`](Hub::with_backplane) hands every group
//! broadcast to a [`Backplane`](storm_host::hub::Backplane) after delivering
//! it locally; an adapter here carries it to the other nodes of the service
//! and delivers what they publish into the local groups
//! ([`Hub::deliver_group`]). What the
//! nodes say to each other, and every decision about it (channel names, the
//! envelope, node ids, offsets and epochs, de-duplication, gaps, the
//! recovery rule), is the sans-IO protocol in
//! [`storm_proto::backplane`], re-exported here as [`proto`].
//!
//! | feature | adapter |
//! |---|---|
//! | `redis` (default) | `redis::RedisBackplane` (with the feature on): pub/sub between nodes, history in Redis Streams with epochs, presence with TTLs, names claimed across nodes (`claim`); on tokio, smol, and std (hosted on smol) |
//! | `nats` | `nats::NatsBackplane` (with the feature on): pub/sub between nodes through NATS core (`async-nats`), every room on one wildcard subscription, presence and node stats by heartbeats with the same TTL bound; **no history**: a client coming back with a position is told its missed messages cannot be recovered; no claims (names unique per node only); on tokio (`async-nats` needs it: a program on another runtime starts it on a tokio thread of its own, as `storm chat` does) |
//!
//! What an adapter hands the application is the same whichever it is: the
//! handler types below, [`Recovery`], its counters ([`Stats`]), the handle
//! of its tasks ([`Running`]) and why its settings were refused
//! ([`ConfigError`]). What the adapters do alike (the
//! publisher's queue, checking what arrives against its channel, handing
//! node messages to their handler, counting) is written once, in a private
//! `node` module; each adapter's module holds only what its server needs.

use std::sync::Arc;

use storm_host::hub::Hub;
use storm_proto::Message;
use storm_proto::backplane::{Position, Unrecoverable};

#[cfg(feature = "nats")]
pub mod nats;
#[cfg(any(feature = "redis", feature = "nats"))]
mod node;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "redis")]
pub mod stages;

#[cfg(any(feature = "redis", feature = "nats"))]
pub use node::{ConfigError, Running, Stats};

pub use storm_proto::backplane as proto;

/// What a node does with a message sent to it (an adapter's `to_node`) or
/// to every node (`to_all_nodes`): called once per message on the task
/// that receives it (Redis: the one reading the subscription connection;
/// NATS: the subscriber task), so it must not block.
pub type OnNodeMessage = Arc<dyn Fn(&Hub, &Message) + Send + Sync>;

/// What a node does with a message of an adapter's `publish_ordered` that
/// did not reach the other nodes (so not even this node delivers it through
/// the backplane): its room and the message. Called at once when the
/// publisher is known to be disconnected or the queue is full, else on the
/// publisher task when the write that carried it failed; it must not block.
pub type OnUnpublished = Arc<dyn Fn(&str, &Message) + Send + Sync>;

/// What a node does with a room message from the backplane: by default (an
/// adapter's `start`) `hub.deliver_group(room, message, None)`. Called once
/// per message and node (not per session), on the task that receives it
/// (as [`OnNodeMessage`]), so it must not block; `position` is the message's place in its
/// room's history (`None` without history). Which rooms' messages come to
/// it is the adapter's to say: with Redis only those of rooms held on this
/// node (a hub group with a local member, or a `RoomHold`); with NATS every
/// room's (one wildcard subscription, confirmed before `start` returns).
pub type Deliver = Arc<dyn Fn(&Hub, &str, Option<Position>, &Message) + Send + Sync>;

/// What a client coming back with its last position gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Exactly the messages it missed, in order, with their positions; then
    /// it is at `top`.
    Recovered {
        /// The missed messages.
        messages: Vec<(Position, Message)>,
        /// The room's position as of the recovery.
        top: Position,
    },
    /// It cannot know what it missed: it starts over at `top`.
    Impossible {
        /// Why.
        reason: Unrecoverable,
        /// The room's position as of the recovery.
        top: Position,
    },
    /// The backplane keeps no history (NATS core pub/sub): room messages
    /// carry no position, and there is no position to start from.
    NoHistory {
        /// Why a client that came back with a position cannot have what
        /// it missed (it may have missed messages); `None` for a fresh
        /// join, which has nothing to recover.
        unrecoverable: Option<&'static str>,
    },
}
