//! What an arriving envelope is, per room: de-duplication and gap
//! detection.

use std::collections::HashMap;

use super::{Envelope, NodeId, Position};

/// Where an arriving room message sits relative to the last one its room
/// delivered on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// The message has no position (history is off, or a user message):
    /// nothing to compare.
    Unpositioned,
    /// The first positioned message of its room this node sees.
    First,
    /// The one right after the last.
    Next,
    /// At or before the last: seen already (a recovery overlapping the live
    /// stream, a re-delivery). Not to be delivered again.
    Duplicate,
    /// Offsets `first..=last` of the same epoch were skipped: this node (and
    /// its sessions in the room) missed them.
    Gap {
        /// The first missed offset.
        first: u64,
        /// The last missed offset.
        last: u64,
    },
    /// The room's history started over (its store lost it): whatever came
    /// between `was` and this message is unknown.
    EpochChanged {
        /// The last position delivered before.
        was: Position,
    },
}

/// What [`Subscriber::handle`] made of one envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inbound {
    /// Its place in its room's sequence.
    pub order: Order,
    /// Published by this node.
    pub own: bool,
    /// Its origin delivers it when it comes back ([`Envelope::echo`]).
    pub echo: bool,
}

impl Inbound {
    /// Whether to hand the message to local sessions: not a duplicate, and
    /// not this node's own unless it is an [echo](Envelope::echo) (an own
    /// message without it was delivered locally as it was published). A
    /// gap or a new epoch is reported through [`order`](Self::order), and
    /// the message itself is still delivered.
    #[must_use]
    pub fn deliver(&self) -> bool {
        (!self.own || self.echo) && self.order != Order::Duplicate
    }
}

/// One node's view of the rooms it receives: the last position of each, to
/// tell the next message from a duplicate, a gap or a new epoch, and its
/// own id, to tell its own publications (which it delivered locally as it
/// published them) from the others'.
///
/// Holds one entry per room it was told about; the owner bounds that by
/// [`forget`](Self::forget)ting a room when its last local member leaves.
///
/// ```
/// use storm_proto::Message;
/// use storm_proto::backplane::{Envelope, Epoch, NodeId, Order, Position, Subscriber};
///
/// let (me, other) = (NodeId::from_u128(1), NodeId::from_u128(2));
/// let mut subscriber = Subscriber::new(me);
/// let epoch = Epoch::new(9).unwrap();
/// let at = |offset| {
///     let mut envelope = Envelope::room(other, "lobby", Message::from("x"));
///     envelope.position = Some(Position::new(epoch, offset));
///     envelope
/// };
/// assert_eq!(subscriber.handle(&at(1)).order, Order::First);
/// assert_eq!(subscriber.handle(&at(2)).order, Order::Next);
/// assert_eq!(subscriber.handle(&at(4)).order, Order::Gap { first: 3, last: 3 });
/// assert!(!subscriber.handle(&at(4)).deliver()); // a duplicate
/// ```
#[derive(Debug, Clone)]
pub struct Subscriber {
    node: NodeId,
    last: HashMap<String, Position>,
}

impl Subscriber {
    /// The view of node `node`, with no room seen yet.
    #[must_use]
    pub fn new(node: NodeId) -> Self {
        Self {
            node,
            last: HashMap::new(),
        }
    }

    /// The node this view belongs to.
    #[must_use]
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Classifies `envelope` and, if it moves its room forward (anything but
    /// a duplicate), records its position as the room's last: this node's
    /// own publications move it too, so the next foreign message is not
    /// taken for a gap.
    pub fn handle(&mut self, envelope: &Envelope) -> Inbound {
        let own = envelope.origin == self.node;
        let order = match envelope.position {
            None => Order::Unpositioned,
            Some(at) => self.observe(envelope.name.as_str(), at),
        };
        Inbound {
            order,
            own,
            echo: envelope.echo,
        }
    }

    /// Records that `room` reached `at` (a message delivered, or a
    /// recovery's last), and says how `at` follows the last one.
    pub fn observe(&mut self, room: &str, at: Position) -> Order {
        let Some(last) = self.last.get_mut(room) else {
            self.last.insert(room.to_owned(), at);
            return Order::First;
        };
        let order = follow(*last, at);
        if order != Order::Duplicate {
            *last = at;
        }
        order
    }

    /// The last position of `room`, if any was seen.
    #[must_use]
    pub fn last(&self, room: &str) -> Option<Position> {
        self.last.get(room).copied()
    }

    /// Stops tracking `room` (its last local member left).
    pub fn forget(&mut self, room: &str) {
        self.last.remove(room);
    }

    /// Rooms tracked.
    #[must_use]
    pub fn len(&self) -> usize {
        self.last.len()
    }

    /// Whether no room is tracked.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

/// How `at` follows `last` in one room.
fn follow(last: Position, at: Position) -> Order {
    if at.epoch != last.epoch {
        return Order::EpochChanged { was: last };
    }
    match at.offset.checked_sub(last.offset) {
        None | Some(0) => Order::Duplicate,
        Some(1) => Order::Next,
        Some(_) => Order::Gap {
            first: last.offset + 1,
            last: at.offset - 1,
        },
    }
}
