//! The seam where a group broadcast leaves this node.

use storm_proto::Message;

/// Fans a group broadcast out to other nodes (Redis or NATS pub/sub, …).
///
/// [`Hub::broadcast_group`](super::Hub::broadcast_group) delivers to the
/// local members, then calls [`publish`](Self::publish) with the same
/// message. A backplane receiving a message published by another
/// node hands it to [`Hub::deliver_group`](super::Hub::deliver_group), which
/// delivers locally and does not publish again (no echo loops).
///
/// Called without any hub lock held; it must not block for long (queue the
/// message for a publisher task instead). Session ids are per node, so the
/// sender exclusion is not forwarded.
pub trait Backplane: Send + Sync {
    /// Publishes `message` for the members of `group` on other nodes.
    fn publish(&self, group: &str, message: &Message);
}

/// The single-node backplane: publishes nothing. The default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocalBackplane;

impl Backplane for LocalBackplane {
    fn publish(&self, _group: &str, _message: &Message) {}
}
