//! The seam where a group broadcast leaves this node.

use storm_proto::Message;

/// Fans a group broadcast out to other nodes (Redis or NATS pub/sub, …).
///
/// A hub made [`with_backplane`](super::Hub::with_backplane) delivers a
/// [`Hub::broadcast_group`](super::Hub::broadcast_group) to the local
/// members, then calls [`publish`](Self::publish) once with the same
/// message, whatever the number of members (so an implementation encodes
/// it once and publishes it once). A backplane receiving a message
/// published by another node hands it to
/// [`Hub::deliver_group`](super::Hub::deliver_group), which delivers locally
/// and does not publish again (no echo loops).
///
/// A hub made with [`Hub::new`](super::Hub::new) has no backplane: a
/// broadcast costs one `None` check more than it would without the seam.
///
/// Called without any hub lock held; it must not block for long (queue the
/// message for a publisher task instead). Session ids are per node, so the
/// sender exclusion is not forwarded.
pub trait Backplane: Send + Sync {
    /// Publishes `message` for the members of `group` on other nodes.
    fn publish(&self, group: &str, message: &Message);

    /// `group` got its first local member: a backplane that receives per
    /// group (one subscription per room) starts receiving it.
    ///
    /// Called under the lock of the hub's map of groups, so that a
    /// group's `opened` and [`closed`](Self::group_closed) alternate in the
    /// order its membership changed: it must only record the change (never
    /// block, never call back into the hub). Default: nothing.
    fn group_opened(&self, group: &str) {
        let _ = group;
    }

    /// `group` lost its last local member (it left or disconnected): the
    /// backplane may stop receiving it. Called like
    /// [`group_opened`](Self::group_opened). Default: nothing.
    fn group_closed(&self, group: &str) {
        let _ = group;
    }
}
