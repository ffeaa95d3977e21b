//! The names of the pub/sub channels and storage keys of one service.

use std::fmt;

use super::NodeTag;

/// Longest prefix, in bytes.
pub const MAX_PREFIX_LEN: usize = 64;

/// The channel and key names of one service, all under one prefix, so
/// several services (or tests) can share a Redis or NATS server.
///
/// | name | what it is |
/// |---|---|
/// | `PREFIX.room.ROOM` | pub/sub: a room's messages ([`room`](Self::room)); `PREFIX.room.*` every room's ([`all_rooms`](Self::all_rooms)) |
/// | `PREFIX.user.USER` | pub/sub: messages to one user on whichever node holds them |
/// | `PREFIX.node.NODE` | pub/sub: messages to one node (its sessions, by id), NODE its [`NodeTag`] |
/// | `PREFIX.node.all` | pub/sub: messages to every node ([`all_nodes`](Self::all_nodes)) |
/// | `PREFIX.history.ROOM` | storage: a room's last messages (a Redis stream) |
/// | `PREFIX.meta.ROOM` | storage: a room's epoch and last offset |
/// | `PREFIX.presence.ROOM` | storage: who is in a room, each entry with its expiry |
/// | `PREFIX.stats.nodes` | storage: every live node's [`NodeStats`](super::NodeStats), each with its expiry |
/// | `PREFIX.claim.NAME` | storage: who holds a name that is unique across nodes (a user name), with its expiry |
///
/// A room or user name may hold any character (a `.` too): the prefix and
/// the kind are fixed, so [`parse`](Self::parse) reads the name back whole.
/// The prefix may not, so that it cannot be mistaken for a kind or make a
/// subscription pattern match more than it should.
///
/// ```
/// use storm_proto::backplane::{Channel, Channels};
///
/// let channels = Channels::new("chat")?;
/// assert_eq!(channels.room("lobby"), "chat.room.lobby");
/// assert_eq!(channels.parse("chat.room.a.b"), Some(Channel::Room("a.b")));
/// assert_eq!(channels.parse("other.room.lobby"), None);
/// # Ok::<(), storm_proto::backplane::PrefixError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channels {
    prefix: String,
}

/// A prefix [`Channels::new`] refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PrefixError {
    /// The prefix is empty.
    Empty,
    /// Longer than [`MAX_PREFIX_LEN`] bytes.
    TooLong {
        /// Its length.
        len: usize,
    },
    /// A character other than ASCII letters, digits, `-` and `_`.
    BadChar(char),
}

impl fmt::Display for PrefixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("the backplane prefix is empty"),
            Self::TooLong { len } => write!(
                f,
                "backplane prefix of {len} bytes, most is {MAX_PREFIX_LEN}"
            ),
            Self::BadChar(c) => write!(
                f,
                "backplane prefix holds {c:?}: only ASCII letters, digits, '-' and '_'"
            ),
        }
    }
}

impl std::error::Error for PrefixError {}

/// What a channel name is for, as [`Channels::parse`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel<'a> {
    /// A room's messages.
    Room(&'a str),
    /// One user's messages.
    User(&'a str),
    /// One node's messages.
    Node(NodeTag),
    /// Every node's messages.
    AllNodes,
}

const ROOM: &str = "room";
const USER: &str = "user";
const NODE: &str = "node";
/// The name of the every-node channel: not 8 hex digits, so no node's.
const ALL: &str = "all";
const HISTORY: &str = "history";
const META: &str = "meta";
const PRESENCE: &str = "presence";
const STATS: &str = "stats";
const CLAIM: &str = "claim";

impl Channels {
    /// The names under `prefix`.
    ///
    /// # Errors
    ///
    /// [`PrefixError`] for an empty or too long prefix, or one with a
    /// character other than ASCII letters, digits, `-` and `_`.
    pub fn new(prefix: &str) -> Result<Self, PrefixError> {
        if prefix.is_empty() {
            return Err(PrefixError::Empty);
        }
        if prefix.len() > MAX_PREFIX_LEN {
            return Err(PrefixError::TooLong { len: prefix.len() });
        }
        if let Some(bad) = prefix
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(PrefixError::BadChar(bad));
        }
        Ok(Self {
            prefix: prefix.to_owned(),
        })
    }

    /// The prefix.
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn name(&self, kind: &str, name: &str) -> String {
        let mut out = String::with_capacity(self.prefix.len() + kind.len() + name.len() + 2);
        out.push_str(&self.prefix);
        out.push('.');
        out.push_str(kind);
        out.push('.');
        out.push_str(name);
        out
    }

    /// The channel of a room's messages.
    #[must_use]
    pub fn room(&self, room: &str) -> String {
        self.name(ROOM, room)
    }

    /// The subscription pattern (Redis `PSUBSCRIBE` glob) that matches every
    /// room's channel of this prefix.
    #[must_use]
    pub fn all_rooms(&self) -> String {
        self.name(ROOM, "*")
    }

    /// The channel of one user's messages.
    #[must_use]
    pub fn user(&self, user: &str) -> String {
        self.name(USER, user)
    }

    /// The channel of one node's messages.
    #[must_use]
    pub fn node(&self, node: NodeTag) -> String {
        self.name(NODE, &node.to_string())
    }

    /// The channel of messages to every node.
    #[must_use]
    pub fn all_nodes(&self) -> String {
        self.name(NODE, ALL)
    }

    /// The key of a room's history.
    #[must_use]
    pub fn history(&self, room: &str) -> String {
        self.name(HISTORY, room)
    }

    /// The key of a room's epoch and last offset.
    #[must_use]
    pub fn meta(&self, room: &str) -> String {
        self.name(META, room)
    }

    /// The key of a room's presence.
    #[must_use]
    pub fn presence(&self, room: &str) -> String {
        self.name(PRESENCE, room)
    }

    /// The key of every live node's counts ([`NodeStats`](super::NodeStats)).
    #[must_use]
    pub fn node_stats(&self) -> String {
        self.name(STATS, "nodes")
    }

    /// The key of a name one holder has across nodes (a claim).
    #[must_use]
    pub fn claim(&self, name: &str) -> String {
        self.name(CLAIM, name)
    }

    /// What `channel` is for, `None` if it is not one of this prefix's
    /// channels (another service's, or a storage key).
    #[must_use]
    pub fn parse<'a>(&self, channel: &'a str) -> Option<Channel<'a>> {
        let rest = channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('.')?;
        let (kind, name) = rest.split_once('.')?;
        match kind {
            ROOM => Some(Channel::Room(name)),
            USER => Some(Channel::User(name)),
            NODE if name == ALL => Some(Channel::AllNodes),
            NODE => NodeTag::parse(name).map(Channel::Node),
            _ => None,
        }
    }
}
