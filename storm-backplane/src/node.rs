//! What a node's backplane is whichever server carries it: its id and
//! channels, the bounded queue of its publisher, the handlers the
//! application gives it, its counters, the tasks it runs, and what it does
//! with what arrives (a room envelope checked against its channel and
//! handed to [`Subscriber`], a node message handed to its handler). Each
//! adapter (`redis`, `nats`) holds one [`Node`] and adds only what its
//! server needs: how a publication goes out, how it subscribes, how
//! presence is kept, what it keeps of history.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use storm_host::hub::Hub;
use storm_proto::Message;
use storm_proto::backplane::{
    Channel, Channels, Envelope, Kind, NodeId, Order, PrefixError, Subscriber,
};
use storm_proto::reconnect::{Backoff, BackoffConfig, BackoffConfigError};
use tokio::sync::{mpsc, watch};

use crate::{Deliver, OnNodeMessage, OnUnpublished};

/// Counters of one node's backplane, since it was made. Both adapters count
/// the same events; what one of them never sees stays 0 (noted per field).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Messages published (room and node messages; on NATS presence
    /// messages too).
    pub published: u64,
    /// Messages whose publish failed (the server down or refusing, or on
    /// NATS a batch it did not confirm): other nodes may not have them, and
    /// see the gap if there is history. (Counted per batch: when one breaks
    /// midway, the messages before the break may have gone out too.)
    pub publish_failed: u64,
    /// Messages not published because the queue was full.
    pub publish_dropped: u64,
    /// Room messages received (this node's own included).
    pub received: u64,
    /// Received messages delivered to local members.
    pub delivered: u64,
    /// Received messages this node published itself and delivered locally
    /// as it did (skipped; not echoes of `publish_ordered`).
    pub own: u64,
    /// Received messages already delivered (skipped; Redis only: without
    /// positions nothing is a duplicate).
    pub duplicates: u64,
    /// Offsets skipped between received messages: messages this node
    /// missed (Redis only).
    pub missed: u64,
    /// Rooms whose epoch changed under a running subscription (Redis only).
    pub epoch_changes: u64,
    /// Received messages that did not decode, or whose channel and envelope
    /// disagree, and node messages without a handler (dropped).
    pub invalid: u64,
    /// Messages to this node or to every node, from other nodes, handed to
    /// its `on_node_message` handler.
    pub node_messages: u64,
    /// Times the node (re)subscribed: its first subscription and each after
    /// a reconnection.
    pub subscriptions: u64,
    /// Room messages received for a room no longer held here (on their way
    /// as the node unsubscribed): delivered nowhere (Redis only: a NATS
    /// node subscribes to every room).
    pub not_held: u64,
    /// Presence entries of other nodes not kept: the table was full (NATS
    /// only: Redis keeps presence itself).
    pub presence_dropped: u64,
}

/// The live counters behind [`Stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) published: AtomicU64,
    pub(crate) publish_failed: AtomicU64,
    pub(crate) publish_dropped: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) own: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) missed: AtomicU64,
    pub(crate) epoch_changes: AtomicU64,
    pub(crate) invalid: AtomicU64,
    pub(crate) node_messages: AtomicU64,
    pub(crate) subscriptions: AtomicU64,
    pub(crate) not_held: AtomicU64,
    pub(crate) presence_dropped: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> Stats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Stats {
            published: load(&self.published),
            publish_failed: load(&self.publish_failed),
            publish_dropped: load(&self.publish_dropped),
            received: load(&self.received),
            delivered: load(&self.delivered),
            own: load(&self.own),
            duplicates: load(&self.duplicates),
            missed: load(&self.missed),
            epoch_changes: load(&self.epoch_changes),
            invalid: load(&self.invalid),
            node_messages: load(&self.node_messages),
            subscriptions: load(&self.subscriptions),
            not_held: load(&self.not_held),
            presence_dropped: load(&self.presence_dropped),
        }
    }
}

pub(crate) fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// Locks `mutex`, whether or not a holder panicked (what it guards stays
/// consistent: every critical section here is one step).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The [`Deliver`] of an adapter's `start`: straight into `hub`'s group.
pub(crate) fn deliver_to_hub() -> Deliver {
    std::sync::Arc::new(|hub: &Hub, room: &str, _, message: &Message| {
        hub.deliver_group(room, message, None);
    })
}

/// The tasks of a started backplane (`RedisBackplane::start`,
/// `NatsBackplane::start`); [`stop`](Self::stop) ends them. Dropping it
/// stops them too (without waiting).
#[derive(Debug)]
pub struct Running {
    stop: watch::Sender<bool>,
    /// Each task holds a sender until it ends: `recv` answers `None` once
    /// every task has ended (on any runtime; no join handle needed).
    done: mpsc::Receiver<()>,
}

impl Running {
    /// A handle, and what its tasks are made with.
    pub(crate) fn new() -> (Self, Tasks) {
        let (stop, stopped) = watch::channel(false);
        let (done, tasks_done) = mpsc::channel(1);
        let running = Self {
            stop,
            done: tasks_done,
        };
        (running, Tasks { stopped, done })
    }

    /// Stops the publisher (what is still queued is not published), the
    /// subscriber and the presence task, and waits for them.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.done.recv().await.is_some() {}
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// What the tasks of one [`Running`] are made with.
pub(crate) struct Tasks {
    stopped: watch::Receiver<bool>,
    done: mpsc::Sender<()>,
}

impl Tasks {
    /// Turns `true` when the tasks are to stop.
    pub(crate) fn stopped(&self) -> watch::Receiver<bool> {
        self.stopped.clone()
    }

    /// `task`, holding a sender of [`Running::stop`]'s wait until it ends:
    /// what the adapter spawns on its runtime.
    pub(crate) fn task(
        &self,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        let done = self.done.clone();
        async move {
            task.await;
            drop(done);
        }
    }
}

/// A setting refused before any I/O: one that both adapters' configs
/// (`RedisConfig`, `NatsConfig`) have, or a bound of one of them that must
/// be at least 1.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The prefix is not a valid one.
    Prefix(PrefixError),
    /// The reconnect schedule is not a valid backoff.
    Backoff(BackoffConfigError),
    /// This queue, TTL or bound is zero.
    Zero(&'static str),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Prefix(e) => e.fmt(f),
            Self::Backoff(e) => write!(f, "backplane reconnect: {e}"),
            Self::Zero(what) => write!(f, "backplane {what} must be at least 1"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The [`Settings`] of an adapter's config, whose fields of the same names
/// say them.
macro_rules! settings_of {
    ($config:expr) => {
        $crate::node::Settings {
            prefix: &$config.prefix,
            reconnect: &$config.reconnect,
            publish_queue: $config.publish_queue,
            presence_ttl: $config.presence_ttl,
            max_payload: $config.max_payload,
        }
    };
}
pub(crate) use settings_of;

/// The defaults of the settings both adapters share (each config's docs
/// say them).
pub(crate) mod defaults {
    use std::time::Duration;

    pub(crate) const PREFIX: &str = "storm";
    pub(crate) const PRESENCE_TTL: Duration = Duration::from_secs(30);
    pub(crate) const MAX_PAYLOAD: usize = 16 * 1024 * 1024;
    pub(crate) const PUBLISH_QUEUE: usize = 4096;
}

/// The settings both adapters share.
pub(crate) struct Settings<'a> {
    pub(crate) prefix: &'a str,
    pub(crate) reconnect: &'a BackoffConfig,
    pub(crate) publish_queue: usize,
    pub(crate) presence_ttl: Duration,
    pub(crate) max_payload: usize,
}

/// A publication waiting in the queue, as the adapter shapes it.
pub(crate) trait Queued {
    /// The room and message of a `publish_ordered`, for the unpublished
    /// handler when it does not go out; `None` for any other.
    fn ordered(&self) -> Option<(&str, &Message)>;
}

/// The part of a node's backplane that does not depend on its server; `P`
/// is what the adapter's publisher takes from the queue.
pub(crate) struct Node<P> {
    /// This node's id.
    pub(crate) id: NodeId,
    /// The channel (subject) names under the prefix.
    pub(crate) channels: Channels,
    pub(crate) counters: Counters,
    max_payload: usize,
    queue: mpsc::Sender<P>,
    /// The publisher's end, taken once by the adapter's `start`.
    pending: Mutex<Option<mpsc::Receiver<P>>>,
    on_node: OnceLock<OnNodeMessage>,
    on_unpublished: OnceLock<OnUnpublished>,
}

impl<P: Queued> Node<P> {
    /// A new node (a random [`NodeId`]) and the reconnect schedule its
    /// tasks start from; no I/O.
    pub(crate) fn new(settings: &Settings<'_>) -> Result<(Self, Backoff), ConfigError> {
        let channels = Channels::new(settings.prefix).map_err(ConfigError::Prefix)?;
        let backoff = Backoff::new(settings.reconnect.clone(), rand::random())
            .map_err(ConfigError::Backoff)?;
        if settings.publish_queue == 0 {
            return Err(ConfigError::Zero("publish queue"));
        }
        if settings.presence_ttl.is_zero() {
            return Err(ConfigError::Zero("presence TTL"));
        }
        let (queue, pending) = mpsc::channel(settings.publish_queue);
        let node = Self {
            id: NodeId::random(&mut rand::rng()),
            channels,
            counters: Counters::default(),
            max_payload: settings.max_payload,
            queue,
            pending: Mutex::new(Some(pending)),
            on_node: OnceLock::new(),
            on_unpublished: OnceLock::new(),
        };
        Ok((node, backoff))
    }

    /// The publisher's end of the queue; `None` once taken (started already).
    pub(crate) fn take_pending(&self) -> Option<mpsc::Receiver<P>> {
        lock(&self.pending).take()
    }

    /// The counters so far.
    pub(crate) fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    /// Sets the node message handler; `false` if it was set already.
    pub(crate) fn on_node_message(&self, handler: OnNodeMessage) -> bool {
        self.on_node.set(handler).is_ok()
    }

    /// Sets the unpublished handler; `false` if it was set already.
    pub(crate) fn on_unpublished(&self, handler: OnUnpublished) -> bool {
        self.on_unpublished.set(handler).is_ok()
    }

    /// Hands an ordered message that did not go to the unpublished handler.
    pub(crate) fn unpublished(&self, room: &str, message: &Message) {
        if let Some(handler) = self.on_unpublished.get() {
            handler(room, message);
        }
    }

    /// Encodes `message` once as a room envelope (an echo when `echo`: the
    /// `publish_ordered` kind) and queues what `publication` makes of the
    /// bytes. Never waits. What cannot go (it does not encode, the queue is
    /// full, or an ordered one while the publisher is not `connected`) is
    /// counted and logged, and an ordered one goes to the unpublished
    /// handler.
    pub(crate) fn publish_room(
        &self,
        room: &str,
        message: &Message,
        echo: bool,
        connected: bool,
        publication: impl FnOnce(Bytes) -> P,
    ) {
        let failed = |counter: &AtomicU64| {
            bump(counter, 1);
            if echo {
                self.unpublished(room, message);
            }
        };
        let mut envelope = Envelope::room(self.id, room, message.clone());
        envelope.echo = echo;
        let wire = match envelope.to_bytes() {
            Ok(wire) => wire,
            Err(error) => {
                tracing::warn!(room, %error, "backplane: cannot publish");
                return failed(&self.counters.publish_failed);
            }
        };
        if echo && !connected {
            return failed(&self.counters.publish_failed);
        }
        if self.queue.try_send(publication(wire)).is_err() {
            tracing::warn!(
                room,
                "backplane: publish queue full; not sent to other nodes"
            );
            failed(&self.counters.publish_dropped);
        }
    }

    /// Encodes `message` once as a node envelope to `to` (a node tag or
    /// `all`, for the logs) and queues what `publication` makes of the
    /// bytes. Never waits; what cannot go is counted and logged, and
    /// `false`.
    pub(crate) fn send_to_node(
        &self,
        to: &str,
        message: &Message,
        publication: impl FnOnce(Bytes) -> P,
    ) -> bool {
        let wire = match Envelope::node(self.id, to, message.clone()).to_bytes() {
            Ok(wire) => wire,
            Err(error) => {
                bump(&self.counters.publish_failed, 1);
                tracing::warn!(to, %error, "backplane: cannot send to a node");
                return false;
            }
        };
        if self.queue.try_send(publication(wire)).is_err() {
            bump(&self.counters.publish_dropped, 1);
            tracing::warn!(to, "backplane: publish queue full; not sent to the node");
            return false;
        }
        true
    }

    /// Counts a batch the publisher sent (`Ok`) or could not send: then its
    /// ordered messages go to the unpublished handler (not retried: the
    /// server may have had them, and a second send would deliver twice).
    /// An adapter that tracks whether its publisher is connected marks it
    /// down before: the handler's caller may publish again at once.
    pub(crate) fn sent<E: fmt::Display>(&self, batch: &[P], outcome: Result<(), E>) {
        let count = u64::try_from(batch.len()).unwrap_or(u64::MAX);
        match outcome {
            Ok(()) => bump(&self.counters.published, count),
            Err(error) => {
                bump(&self.counters.publish_failed, count);
                tracing::warn!(messages = count, %error, "backplane: publish failed");
                for (room, message) in batch.iter().filter_map(Queued::ordered) {
                    self.unpublished(room, message);
                }
            }
        }
    }

    /// A message on `channel`: a room message's envelope when it is one
    /// whose room `matches` the channel's (given the envelope's room name
    /// and the channel's room part) to go on with; a node message is handed
    /// to the node message handler here; anything else is counted as
    /// invalid and logged.
    pub(crate) fn receive(
        &self,
        hub: &Hub,
        channel: &str,
        wire: Bytes,
        matches: impl FnOnce(&str, &str) -> bool,
    ) -> Option<Envelope> {
        let c = &self.counters;
        let room = match self.channels.parse(channel) {
            Some(Channel::Room(room)) => room,
            Some(Channel::Node(_) | Channel::AllNodes) => {
                self.receive_node_message(hub, wire);
                return None;
            }
            _ => {
                bump(&c.received, 1);
                bump(&c.invalid, 1);
                return None;
            }
        };
        bump(&c.received, 1);
        match Envelope::decode(wire, self.max_payload) {
            Ok(envelope)
                if envelope.kind == Kind::Room && matches(envelope.name.as_str(), room) =>
            {
                Some(envelope)
            }
            Ok(_) => {
                bump(&c.invalid, 1);
                tracing::warn!(
                    room,
                    "backplane: envelope names another room than its channel"
                );
                None
            }
            Err(error) => {
                bump(&c.invalid, 1);
                tracing::warn!(room, %error, "backplane: undecodable message");
                None
            }
        }
    }

    /// A room message this node goes on with: `rooms` tells its place
    /// (gaps and new epochs counted and logged), and unless it is a
    /// duplicate or this node's own (not an echo) it goes to `deliver`.
    pub(crate) fn deliver(
        &self,
        hub: &Hub,
        deliver: &Deliver,
        rooms: &mut Subscriber,
        envelope: &Envelope,
    ) {
        let c = &self.counters;
        let room = envelope.name.as_str();
        let inbound = rooms.handle(envelope);
        match inbound.order {
            Order::Gap { first, last } => {
                bump(&c.missed, last - first + 1);
                tracing::warn!(room, first, last, "backplane: missed room messages");
            }
            Order::EpochChanged { was } => {
                bump(&c.epoch_changes, 1);
                tracing::warn!(room, %was, "backplane: room history started over");
            }
            _ => {}
        }
        if inbound.deliver() {
            // Counted first: whoever sees the message sees it counted (a
            // member on another thread than this task's).
            bump(&c.delivered, 1);
            deliver(hub, room, envelope.position, &envelope.message);
        } else if inbound.own {
            bump(&c.own, 1);
        } else {
            bump(&c.duplicates, 1);
        }
    }

    /// Decodes a node envelope; `None` (counted, logged) when it does not
    /// decode or is a room message.
    pub(crate) fn node_envelope(&self, wire: Bytes) -> Option<Envelope> {
        match Envelope::decode(wire, self.max_payload) {
            Ok(envelope) if envelope.kind == Kind::Node => Some(envelope),
            Ok(_) => {
                bump(&self.counters.invalid, 1);
                tracing::warn!("backplane: a room or user message on a node channel");
                None
            }
            Err(error) => {
                bump(&self.counters.invalid, 1);
                tracing::warn!(%error, "backplane: undecodable node message");
                None
            }
        }
    }

    /// A message to this node or every node: handed to the node message
    /// handler unless this node sent it.
    fn receive_node_message(&self, hub: &Hub, wire: Bytes) {
        let Some(envelope) = self.node_envelope(wire) else {
            return;
        };
        if envelope.origin == self.id {
            return; // its own, to every node: it acted on it already
        }
        match self.on_node.get() {
            Some(handler) => {
                bump(&self.counters.node_messages, 1);
                handler(hub, &envelope.message);
            }
            None => {
                bump(&self.counters.invalid, 1);
                tracing::warn!("backplane: a node message, and no handler for it");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A publication as an adapter would shape it: the wire and, for an
    /// ordered one, its room and message.
    struct Out {
        ordered: Option<(String, Message)>,
    }

    impl Queued for Out {
        fn ordered(&self) -> Option<(&str, &Message)> {
            self.ordered.as_ref().map(|(room, m)| (room.as_str(), m))
        }
    }

    fn settings(edit: impl FnOnce(&mut Settings<'_>)) -> Result<Node<Out>, ConfigError> {
        let reconnect = BackoffConfig::default();
        let mut settings = Settings {
            prefix: "storm",
            reconnect: &reconnect,
            publish_queue: 1,
            presence_ttl: Duration::from_secs(30),
            max_payload: 1024,
        };
        edit(&mut settings);
        Node::new(&settings).map(|(node, _)| node)
    }

    #[test]
    fn settings_are_checked_before_any_io() {
        assert!(matches!(
            settings(|s| s.prefix = "a.b"),
            Err(ConfigError::Prefix(_))
        ));
        assert!(matches!(
            settings(|s| s.publish_queue = 0),
            Err(ConfigError::Zero("publish queue"))
        ));
        assert!(matches!(
            settings(|s| s.presence_ttl = Duration::ZERO),
            Err(ConfigError::Zero("presence TTL"))
        ));
        let (a, b) = (settings(|_| {}).unwrap(), settings(|_| {}).unwrap());
        assert_ne!(a.id, b.id);
    }

    #[test]
    fn a_full_queue_drops_counts_and_hands_ordered_messages_back() {
        let node = settings(|_| {}).unwrap();
        let unpublished = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&unpublished);
        node.on_unpublished(Arc::new(move |room: &str, m: &Message| {
            lock(&seen).push((room.to_owned(), m.clone()));
        }));
        let plain = |_| Out { ordered: None };
        node.publish_room("room", &Message::from("a"), false, true, plain);
        node.publish_room("room", &Message::from("b"), false, true, plain);
        let c = Message::from("c");
        let ordered = |_| Out {
            ordered: Some(("room".to_owned(), c.clone())),
        };
        node.publish_room("room", &c, true, true, ordered);
        assert!(!node.send_to_node("all", &Message::from("d"), plain));
        // An ordered message while the publisher is down never queues.
        let mut pending = node.take_pending().unwrap();
        assert!(pending.try_recv().is_ok());
        node.publish_room("room", &Message::from("e"), true, false, plain);
        assert!(pending.try_recv().is_err());
        // A room name no envelope can carry does not encode.
        node.publish_room("", &Message::from("f"), false, true, plain);
        let stats = node.stats();
        assert_eq!((stats.publish_dropped, stats.publish_failed), (3, 2));
        assert_eq!(
            *lock(&unpublished),
            [
                ("room".to_owned(), Message::from("c")),
                ("room".to_owned(), Message::from("e"))
            ]
        );
        assert!(node.take_pending().is_none(), "taken once");
    }

    #[test]
    fn a_failed_batch_is_counted_and_its_ordered_messages_handed_back() {
        let node = settings(|_| {}).unwrap();
        let unpublished = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&unpublished);
        node.on_unpublished(Arc::new(move |room: &str, _: &Message| {
            lock(&seen).push(room.to_owned());
        }));
        let batch = [
            Out { ordered: None },
            Out {
                ordered: Some(("r".to_owned(), Message::from("x"))),
            },
        ];
        node.sent(&batch, Ok::<(), &str>(()));
        node.sent(&batch, Err("down"));
        let stats = node.stats();
        assert_eq!((stats.published, stats.publish_failed), (2, 2));
        assert_eq!(*lock(&unpublished), ["r"]);
    }
}
