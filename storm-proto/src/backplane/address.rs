//! Naming one session among every node's: a node's short tag and the
//! session's number on that node.

use std::fmt;
use std::str::FromStr;

use super::NodeId;

/// A node's short name in what services show: 32 bits of its [`NodeId`]
/// ([`NodeId::tag`]), written as 8 lowercase hex digits. Two nodes share a
/// tag with probability 2⁻³² per pair (a service with 100 nodes: about one
/// in a million).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeTag(u32);

impl NodeTag {
    /// The tag with these bits.
    #[must_use]
    pub const fn from_u32(bits: u32) -> Self {
        Self(bits)
    }

    /// Its bits.
    #[must_use]
    pub const fn to_u32(self) -> u32 {
        self.0
    }

    /// The tag written as 8 hex digits (either case); `None` otherwise.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != 8 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(text, 16).ok().map(Self)
    }
}

impl NodeId {
    /// This node's [`NodeTag`]: the low 32 bits of its id.
    #[must_use]
    pub const fn tag(self) -> NodeTag {
        // Truncation intended: the tag is the id's low 32 bits.
        #[allow(clippy::cast_possible_truncation)]
        NodeTag(self.to_u128() as u32)
    }
}

impl fmt::Display for NodeTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// One session of a service spread over nodes: the [`NodeTag`] of the node
/// that holds it and its number there (the hub's session id). Written
/// `NODE-N`, e.g. `0a1b2c3d-7`: unique across the nodes (as the tags are),
/// so a service can show it and take it back to reach the session on
/// whichever node holds it.
///
/// ```
/// use storm_proto::backplane::{NodeTag, SessionAddr};
///
/// let addr: SessionAddr = "0a1b2c3d-7".parse()?;
/// assert_eq!(addr, SessionAddr::new(NodeTag::from_u32(0x0a1b_2c3d), 7));
/// assert_eq!(addr.to_string(), "0a1b2c3d-7");
/// assert!("0a1b2c3d7".parse::<SessionAddr>().is_err());
/// # Ok::<(), storm_proto::backplane::SessionAddrError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionAddr {
    /// The node holding the session.
    pub node: NodeTag,
    /// Its number on that node.
    pub session: u64,
}

impl SessionAddr {
    /// Session `session` of the node tagged `node`.
    #[must_use]
    pub const fn new(node: NodeTag, session: u64) -> Self {
        Self { node, session }
    }
}

impl fmt::Display for SessionAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.node, self.session)
    }
}

/// A string that is not `NODE-N` (8 hex digits, `-`, a decimal number
/// without leading zeros).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionAddrError;

impl fmt::Display for SessionAddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a session id across nodes is NODE-N: 8 hex digits, '-', a number")
    }
}

impl std::error::Error for SessionAddrError {}

impl FromStr for SessionAddr {
    type Err = SessionAddrError;

    /// Accepts exactly what [`Display`](fmt::Display) writes (hex digits of
    /// either case; no sign, no leading zero in the number).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (node, session) = text.split_once('-').ok_or(SessionAddrError)?;
        let node = NodeTag::parse(node).ok_or(SessionAddrError)?;
        let digits = !session.is_empty()
            && session.bytes().all(|b| b.is_ascii_digit())
            && (session == "0" || !session.starts_with('0'));
        if !digits {
            return Err(SessionAddrError);
        }
        let session = session.parse().map_err(|_| SessionAddrError)?;
        Ok(Self::new(node, session))
    }
}
