//! Which rooms a node subscribes to: a room's channel while the room has a
//! local member, and joins held back until their room's subscription is
//! confirmed.

use std::collections::{BTreeMap, VecDeque};

/// Tells one subscribe command from another of the same room: a
/// confirmation counts only for the command it answers (a room unsubscribed
/// and subscribed again meanwhile waits for its newer one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscribeId(u64);

/// What the transport is to do, in this order, on its subscription
/// connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionCommand {
    /// Subscribe to the room's channel; answer with
    /// [`Subscriptions::confirmed`] once the server confirmed it.
    Subscribe {
        /// The room.
        room: String,
        /// What to confirm.
        id: SubscribeId,
    },
    /// Unsubscribe from the room's channel (no answer needed).
    Unsubscribe {
        /// The room.
        room: String,
    },
}

/// How a [`wait`](Subscriptions::wait) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// The room's subscription is confirmed: every message published on its
    /// channel from now on reaches this node.
    Subscribed,
    /// The subscription connection is down (or went down before the
    /// confirmation): live messages may be missed until it is back.
    Down,
    /// The room has no holder any more (its last one left before the
    /// confirmation): there is nothing to wait for.
    Unheld,
}

/// Where a held room's subscription stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not asked for: the connection is down.
    Down,
    /// Asked for by the subscribe command `id`, not confirmed yet.
    Asked(SubscribeId),
    /// Confirmed.
    Subscribed,
}

#[derive(Debug)]
struct Room<W> {
    holders: usize,
    state: State,
    waiting: Vec<W>,
}

/// The room subscriptions of one node, sans-IO.
///
/// A room is *held* while something on this node needs its messages (a
/// local member of its group, a session joining it); [`hold`](Self::hold)
/// and [`release`](Self::release) count the holders. The first holder of a
/// room makes it [`SubscriptionCommand::Subscribe`] its channel; the last one leaving
/// makes it [`SubscriptionCommand::Unsubscribe`]. So a node receives the messages of
/// the rooms it has members in, and of no other.
///
/// **The gap-free contract.** A join that must not miss a message between
/// what it reads from the history and what arrives live
/// [`wait`](Self::wait)s for its room: the waiter is released with
/// [`Ready::Subscribed`] only once the transport reported the confirmation
/// of the subscribe command that is current for the room
/// ([`confirmed`](Self::confirmed) with its [`SubscribeId`]). On a
/// transport that delivers a channel's messages after the confirmation of
/// the subscription (Redis: one connection, in order), every message
/// published after that point reaches the node; a history read started
/// after the release therefore overlaps the live stream instead of leaving
/// a gap, and the positions tell the overlap apart.
///
/// The transport drains [`poll_command`](Self::poll_command) and runs the
/// commands in order on its subscription connection, reporting each
/// confirmed subscribe; it reports [`disconnected`](Self::disconnected)
/// when that connection breaks (pending commands are dropped: a new
/// connection subscribes to nothing) and [`connected`](Self::connected)
/// with a new one (every held room is subscribed again). Released waiters
/// come out of [`poll_released`](Self::poll_released). `W` is whatever the
/// caller wakes a waiter with.
///
/// ```
/// use storm_proto::backplane::{SubscriptionCommand, Ready, Subscriptions};
///
/// let mut subs = Subscriptions::new();
/// subs.connected();
/// assert!(subs.hold("lobby")); // the first holder
/// subs.wait("lobby", "alice's join");
/// let Some(SubscriptionCommand::Subscribe { room, id }) = subs.poll_command() else { panic!() };
/// assert_eq!(room, "lobby");
/// assert_eq!(subs.poll_released(), None); // not before the confirmation
/// subs.confirmed(&room, id);
/// assert_eq!(subs.poll_released(), Some(("alice's join", Ready::Subscribed)));
///
/// assert!(!subs.hold("lobby")); // a second holder: nothing to do
/// assert!(!subs.release("lobby"));
/// assert!(subs.release("lobby")); // the last one
/// assert_eq!(subs.poll_command(), Some(SubscriptionCommand::Unsubscribe { room: "lobby".into() }));
/// ```
#[derive(Debug)]
pub struct Subscriptions<W> {
    rooms: BTreeMap<String, Room<W>>,
    up: bool,
    next_id: u64,
    commands: VecDeque<SubscriptionCommand>,
    released: VecDeque<(W, Ready)>,
}

impl<W> Default for Subscriptions<W> {
    fn default() -> Self {
        Self::new()
    }
}

impl<W> Subscriptions<W> {
    /// No room held, the connection down.
    #[must_use]
    pub fn new() -> Self {
        Self {
            rooms: BTreeMap::new(),
            up: false,
            next_id: 0,
            commands: VecDeque::new(),
            released: VecDeque::new(),
        }
    }

    fn ask(&mut self, room: &str) -> State {
        let id = SubscribeId(self.next_id);
        self.next_id += 1;
        self.commands.push_back(SubscriptionCommand::Subscribe {
            room: room.to_owned(),
            id,
        });
        State::Asked(id)
    }

    /// One more holder of `room`. Returns `true` if it is the first: the
    /// room is subscribed (at once if the connection is up, else when it
    /// is back).
    pub fn hold(&mut self, room: &str) -> bool {
        if let Some(held) = self.rooms.get_mut(room) {
            held.holders += 1;
            return false;
        }
        let state = if self.up { self.ask(room) } else { State::Down };
        self.rooms.insert(
            room.to_owned(),
            Room {
                holders: 1,
                state,
                waiting: Vec::new(),
            },
        );
        true
    }

    /// One holder of `room` fewer. Returns `true` if it was the last: the
    /// room is unsubscribed (a subscribe command not taken yet is simply
    /// withdrawn), and its waiters are released with [`Ready::Unheld`].
    /// Releasing a room not held does nothing (`false`).
    pub fn release(&mut self, room: &str) -> bool {
        let Some(held) = self.rooms.get_mut(room) else {
            return false;
        };
        held.holders -= 1;
        if held.holders > 0 {
            return false;
        }
        let Some(held) = self.rooms.remove(room) else {
            return false;
        };
        self.released
            .extend(held.waiting.into_iter().map(|w| (w, Ready::Unheld)));
        if held.state == State::Down {
            return true;
        }
        let queued = self
            .commands
            .iter()
            .position(|c| matches!(c, SubscriptionCommand::Subscribe { room: r, .. } if r == room));
        match queued {
            Some(at) => {
                self.commands.remove(at);
            }
            None => self.commands.push_back(SubscriptionCommand::Unsubscribe {
                room: room.to_owned(),
            }),
        }
        true
    }

    /// Releases `waiter` once `room`'s subscription is confirmed (at once if
    /// it is): see the gap-free contract above. Released at once with
    /// [`Ready::Down`] while the connection is down, with [`Ready::Unheld`]
    /// for a room nobody holds.
    pub fn wait(&mut self, room: &str, waiter: W) {
        let ready = match self.rooms.get_mut(room) {
            None => Ready::Unheld,
            Some(held) => match held.state {
                State::Subscribed => Ready::Subscribed,
                State::Down => Ready::Down,
                State::Asked(_) => {
                    held.waiting.push(waiter);
                    return;
                }
            },
        };
        self.released.push_back((waiter, ready));
    }

    /// The transport's subscribe command `id` for `room` was confirmed.
    /// Releases the room's waiters if `id` is the room's current command;
    /// an older one (the room was released and held again meanwhile) is
    /// ignored.
    pub fn confirmed(&mut self, room: &str, id: SubscribeId) {
        let Some(held) = self.rooms.get_mut(room) else {
            return;
        };
        if held.state != State::Asked(id) {
            return;
        }
        held.state = State::Subscribed;
        self.released.extend(
            held.waiting
                .drain(..)
                .map(|waiter| (waiter, Ready::Subscribed)),
        );
    }

    /// The subscription connection is up (again): every held room is
    /// subscribed on it.
    pub fn connected(&mut self) {
        self.up = true;
        self.commands.clear();
        let rooms: Vec<String> = self.rooms.keys().cloned().collect();
        for room in rooms {
            let state = self.ask(&room);
            if let Some(held) = self.rooms.get_mut(&room) {
                held.state = state;
            }
        }
    }

    /// The subscription connection broke: nothing is subscribed, commands
    /// not run are dropped, and waiters are released with [`Ready::Down`].
    pub fn disconnected(&mut self) {
        self.up = false;
        self.commands.clear();
        for held in self.rooms.values_mut() {
            held.state = State::Down;
            self.released
                .extend(held.waiting.drain(..).map(|waiter| (waiter, Ready::Down)));
        }
    }

    /// The next command for the transport, in order.
    pub fn poll_command(&mut self) -> Option<SubscriptionCommand> {
        self.commands.pop_front()
    }

    /// The next released waiter and how its wait ended.
    pub fn poll_released(&mut self) -> Option<(W, Ready)> {
        self.released.pop_front()
    }

    /// Whether something on this node holds `room`: a message of a room
    /// not held (one in flight when it was unsubscribed) goes nowhere.
    #[must_use]
    pub fn is_held(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    /// Whether `room`'s subscription is confirmed.
    #[must_use]
    pub fn is_subscribed(&self, room: &str) -> bool {
        self.rooms
            .get(room)
            .is_some_and(|held| held.state == State::Subscribed)
    }

    /// The rooms held, sorted.
    pub fn rooms(&self) -> impl Iterator<Item = &str> {
        self.rooms.keys().map(String::as_str)
    }

    /// Rooms held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    /// Whether no room is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }
}
