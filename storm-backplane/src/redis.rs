//! The Redis backplane, on tokio: room broadcasts through pub/sub, each
//! room's history in a Redis stream with an epoch, presence in a sorted set
//! whose scores are expiry times on Redis's own clock.
//!
//! ```text
//! node A: hub.broadcast_group(room, m) ─ local members get m
//!           └ RedisBackplane::publish ─ encode once ─ bounded queue ─ publisher task
//!                 └ EVALSHA publish script: offset += 1, XADD history, PUBLISH room channel
//! node B: subscriber task (PSUBSCRIBE PREFIX.room.*) ─ decode ─ Subscriber::handle
//!                 └ not a duplicate, not its own (unless an echo): deliver (hub.deliver_group)
//! ```
//!
//! One publish per room message, whatever the number of sessions or nodes;
//! one decode per node. The script makes the offset, the append and the
//! publish one step, so every node sees a room's offsets in order and a
//! missing offset is a real gap. When Redis is unreachable, local traffic
//! goes on; the publisher and the subscriber reconnect with the core's
//! [`Backoff`]; what could not be published is counted
//! ([`RedisStats::publish_failed`]) and logged, and subscribers see the gap
//! in the offsets when messages flow again.
//!
//! # Keys
//!
//! Under the [`Channels`] of [`RedisConfig::prefix`]: `PREFIX.meta.ROOM` (a
//! hash: `e` the epoch as 8 bytes, `o` the last offset),
//! `PREFIX.history.ROOM` (a stream of at most
//! [`history_len`](RedisConfig::history_len) entries, id `0-OFFSET`, field
//! `d` the positioned envelope), `PREFIX.presence.ROOM` (a sorted set:
//! member → expiry in Redis milliseconds).
//!
//! A room whose meta hash is gone (Redis restarted empty, the keys expired)
//! gets a new random epoch at its next append or read: positions of the old
//! epoch are then [`Unrecoverable::EpochChanged`](storm_proto::backplane::Unrecoverable::EpochChanged).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use storm_host::hub::{Backplane, Hub};
use storm_proto::Message;
use storm_proto::backplane::{
    Channel, Channels, Envelope, Epoch, Kind, NodeId, NodeTag, Order, Position, PrefixError,
    Subscriber, recover, recovery_range,
};
use storm_proto::reconnect::{Backoff, BackoffConfig, BackoffConfigError, BackoffStep};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

/// Appends a room message and publishes it, in one step.
///
/// KEYS: meta, history. ARGV: epoch candidate (8 bytes), history length
/// (0: no history, no position), channel, envelope, TTL in ms (0: none).
/// Returns the offset (0 without history).
const PUBLISH_SCRIPT: &str = r"
local maxlen = tonumber(ARGV[2])
if maxlen == 0 then
  redis.call('PUBLISH', ARGV[3], ARGV[4])
  return 0
end
local ttl = tonumber(ARGV[5])
if redis.call('HSETNX', KEYS[1], 'e', ARGV[1]) == 1 then
  redis.call('DEL', KEYS[2])
end
local epoch = redis.call('HGET', KEYS[1], 'e')
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
local n = offset
local be = ''
for i = 1, 8 do
  be = string.char(n % 256) .. be
  n = math.floor(n / 256)
end
local envelope = string.sub(ARGV[4], 1, 21) .. epoch .. be .. string.sub(ARGV[4], 38)
redis.call('XADD', KEYS[2], 'MAXLEN', maxlen, string.format('0-%d', offset), 'd', envelope)
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
redis.call('PUBLISH', ARGV[3], envelope)
return offset
";

/// A room's current position, starting an epoch if it has none.
///
/// KEYS: meta, history. ARGV: epoch candidate (8 bytes), TTL in ms (0:
/// none). Returns `{epoch (8 bytes), last offset}`.
const POSITION_SCRIPT: &str = r"
if redis.call('HSETNX', KEYS[1], 'e', ARGV[1]) == 1 then
  redis.call('DEL', KEYS[2])
  local ttl = tonumber(ARGV[2])
  if ttl > 0 then
    redis.call('PEXPIRE', KEYS[1], ttl)
  end
end
local offset = redis.call('HGET', KEYS[1], 'o')
if not offset then
  offset = 0
end
return {redis.call('HGET', KEYS[1], 'e'), tonumber(offset)}
";

/// Marks members present until Redis's now + TTL.
///
/// KEYS: presence. ARGV: TTL in ms, members…
const ANNOUNCE_SCRIPT: &str = r"
local time = redis.call('TIME')
local expires = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], expires, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return #ARGV - 1
";

/// The members present now, dropping the expired ones.
///
/// KEYS: presence.
const MEMBERS_SCRIPT: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
";

/// Room messages one pipeline to Redis carries at most.
const MAX_BATCH: usize = 256;

/// A Lua script, run by its SHA1 (`EVALSHA`) and sent whole (`EVAL`) only
/// when Redis does not have it yet (first use, or after a restart), so a
/// room message does not carry the script's text.
struct Script {
    body: &'static str,
    sha: String,
}

static PUBLISH: LazyLock<Script> = LazyLock::new(|| Script::new(PUBLISH_SCRIPT));
static POSITION: LazyLock<Script> = LazyLock::new(|| Script::new(POSITION_SCRIPT));
static ANNOUNCE: LazyLock<Script> = LazyLock::new(|| Script::new(ANNOUNCE_SCRIPT));
static MEMBERS: LazyLock<Script> = LazyLock::new(|| Script::new(MEMBERS_SCRIPT));

impl Script {
    fn new(body: &'static str) -> Self {
        use sha1::Digest;
        let digest = sha1::Sha1::digest(body.as_bytes());
        let sha = digest.iter().map(|byte| format!("{byte:02x}")).collect();
        Self { body, sha }
    }

    /// The call with `tail` (the number of keys, the keys, the arguments):
    /// by SHA, or with the whole body when `whole`.
    fn command(&self, whole: bool, tail: &redis::Cmd) -> redis::Cmd {
        let mut command = if whole {
            let mut command = redis::cmd("EVAL");
            command.arg(self.body);
            command
        } else {
            let mut command = redis::cmd("EVALSHA");
            command.arg(&self.sha);
            command
        };
        for arg in tail.args_iter() {
            if let redis::Arg::Simple(bytes) = arg {
                command.arg(bytes);
            }
        }
        command
    }
}

fn is_no_script(error: &redis::RedisError) -> bool {
    error.kind() == redis::ErrorKind::NoScriptError
}

/// Settings of a [`RedisBackplane`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RedisConfig {
    /// The server, as a `redis://HOST:PORT` URL.
    ///
    /// Default: `redis://127.0.0.1:6379`.
    pub url: String,
    /// The channel and key prefix ([`Channels`]): nodes of one service share
    /// it, other services sharing the server use another.
    ///
    /// Default: `storm`.
    pub prefix: String,
    /// Messages each room's history keeps (`XADD … MAXLEN`); 0 = no
    /// history: messages carry no position and nothing can be recovered.
    ///
    /// Default: 1000.
    pub history_len: usize,
    /// How long an idle room's history (and its epoch) lives after its last
    /// message; `None` = until Redis loses it.
    ///
    /// Default: `None`.
    pub history_ttl: Option<Duration>,
    /// Most messages one [`recover`](RedisBackplane::recover) returns; a
    /// client further behind is told recovery is impossible.
    ///
    /// Default: 1000.
    pub max_recover: u64,
    /// How long a presence entry lives unless its node refreshes it (every
    /// third of this): a dead node's members disappear within it.
    ///
    /// Default: 30 s.
    pub presence_ttl: Duration,
    /// Largest payload accepted from another node; larger envelopes are
    /// counted as [`invalid`](RedisStats::invalid) and dropped.
    ///
    /// Default: 16 MiB.
    pub max_payload: usize,
    /// Room messages waiting for the publisher; beyond it (Redis slow or
    /// down) a broadcast is not published to other nodes, and counted in
    /// [`publish_dropped`](RedisStats::publish_dropped).
    ///
    /// Default: 4096.
    pub publish_queue: usize,
    /// Delays between reconnect attempts of the publisher and the
    /// subscriber.
    ///
    /// Default: [`BackoffConfig::default`] (exponential from 100 ms, capped
    /// at 30 s, full jitter, unlimited).
    pub reconnect: BackoffConfig,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
            prefix: "storm".to_owned(),
            history_len: 1000,
            history_ttl: None,
            max_recover: 1000,
            presence_ttl: Duration::from_secs(30),
            max_payload: 16 * 1024 * 1024,
            publish_queue: 4096,
            reconnect: BackoffConfig::default(),
        }
    }
}

/// What went wrong talking to Redis, or setting up.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// [`RedisConfig::prefix`] is not a valid prefix.
    Prefix(PrefixError),
    /// [`RedisConfig::reconnect`] is not a valid backoff.
    Backoff(BackoffConfigError),
    /// [`RedisConfig::publish_queue`] or [`RedisConfig::presence_ttl`] is zero.
    Zero(&'static str),
    /// The URL is not a Redis URL, or Redis failed a command.
    Redis(redis::RedisError),
    /// [`RedisBackplane::start`] was called twice.
    AlreadyStarted,
    /// Redis answered something the scripts never return (another program
    /// wrote the service's keys).
    Reply(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Prefix(e) => e.fmt(f),
            Self::Backoff(e) => write!(f, "backplane reconnect: {e}"),
            Self::Zero(what) => write!(f, "backplane {what} must be at least 1"),
            Self::Redis(e) => write!(f, "redis: {e}"),
            Self::AlreadyStarted => f.write_str("the backplane was started already"),
            Self::Reply(what) => write!(f, "unexpected reply from redis: {what}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Redis(e) => Some(e),
            _ => None,
        }
    }
}

impl From<redis::RedisError> for Error {
    fn from(error: redis::RedisError) -> Self {
        Self::Redis(error)
    }
}

/// Counters of one node's backplane, since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStats {
    /// Room messages published.
    pub published: u64,
    /// Room messages whose publish failed (Redis down or refusing): other
    /// nodes did not get them, and see the gap if history is on. (Counted
    /// per pipeline: when one breaks midway, the messages before the break
    /// may have gone out too.)
    pub publish_failed: u64,
    /// Room messages not published because the queue was full.
    pub publish_dropped: u64,
    /// Room messages received from Redis (this node's own included).
    pub received: u64,
    /// Received messages delivered to local members.
    pub delivered: u64,
    /// Received messages this node published itself and delivered
    /// locally as it did (skipped; not [echoes](RedisBackplane::publish_ordered)).
    pub own: u64,
    /// Received messages already delivered (skipped).
    pub duplicates: u64,
    /// Offsets skipped between received messages: messages this node missed.
    pub missed: u64,
    /// Rooms whose epoch changed under a running subscription.
    pub epoch_changes: u64,
    /// Received messages that did not decode, or whose channel and room
    /// disagree (dropped).
    pub invalid: u64,
    /// Messages to this node or to every node, from other nodes, handed
    /// to its [`on_node_message`](RedisBackplane::on_node_message).
    pub node_messages: u64,
    /// Times the subscriber (re)subscribed.
    pub subscriptions: u64,
}

#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    publish_failed: AtomicU64,
    publish_dropped: AtomicU64,
    received: AtomicU64,
    delivered: AtomicU64,
    own: AtomicU64,
    duplicates: AtomicU64,
    missed: AtomicU64,
    epoch_changes: AtomicU64,
    invalid: AtomicU64,
    node_messages: AtomicU64,
    subscriptions: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// A message waiting for the publisher, its envelope encoded.
enum Publication {
    /// A room message (unpositioned): appended, positioned and published
    /// by the publish script; `ordered` holds the message of a
    /// [`publish_ordered`](RedisBackplane::publish_ordered), for the
    /// [`on_unpublished`](RedisBackplane::on_unpublished) handler.
    Room {
        room: String,
        wire: Bytes,
        ordered: Option<Message>,
    },
    /// A message to one node or every node: published on `channel` as it
    /// is.
    Node { channel: String, wire: Bytes },
}

pub use crate::{Deliver, OnNodeMessage, OnUnpublished, Recovery};

/// One stream entry as `XRANGE` returns it: its id and its fields.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

/// The Redis backplane of one node. See the [module docs](self).
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Instant;
///
/// use storm_backplane::redis::{RedisBackplane, RedisConfig};
/// use storm_host::hub::{Hub, HubConfig};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let mut config = RedisConfig::default();
/// config.url = "redis://127.0.0.1:6379".into();
/// let backplane = Arc::new(RedisBackplane::new(config)?);
/// let hub = Hub::with_backplane(HubConfig::default(), Instant::now(), backplane.clone())?;
/// let running = backplane.start(hub.clone()).await?; // subscribed when it returns
/// // … serve sessions on `hub`; group broadcasts now reach every node …
/// running.stop().await;
/// # Ok(())
/// # }
/// ```
pub struct RedisBackplane {
    node: NodeId,
    channels: Channels,
    config: RedisConfig,
    client: redis::Client,
    queue: mpsc::Sender<Publication>,
    /// Taken by [`start`](Self::start).
    pending: Mutex<Option<mpsc::Receiver<Publication>>>,
    /// The command connection of `recover`, `position` and presence; `None`
    /// until first used or after it failed.
    commands: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// This node's presence entries, and what Redis has yet to hear of.
    presence: Mutex<PresenceState>,
    /// Wakes the presence task when `presence` changed.
    presence_changed: Notify,
    /// What messages to this node go to; set before `start`.
    on_node: std::sync::OnceLock<OnNodeMessage>,
    /// What ordered messages that cannot be published go to.
    on_unpublished: std::sync::OnceLock<OnUnpublished>,
    /// The publisher has a working connection (as far as it knows): while
    /// it has not, ordered messages fail at once instead of waiting.
    publisher_up: std::sync::atomic::AtomicBool,
    counters: Counters,
    /// The reconnect schedule each task starts from (a copy each).
    backoff: Backoff,
}

impl fmt::Debug for RedisBackplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackplane")
            .field("node", &self.node)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The tasks of a started [`RedisBackplane`]; [`stop`](Self::stop) ends them.
/// Dropping it stops them too (without waiting).
#[derive(Debug)]
pub struct Running {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops the publisher (what is still queued is not published), the
    /// subscriber and the presence task, and waits for them.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One presence entry: a room and a member.
type Entry = (String, String);

/// This node's presence as the presence task keeps Redis told of it.
#[derive(Debug, Default)]
struct PresenceState {
    /// Every entry of this node: written again every third of the TTL.
    entries: BTreeSet<Entry>,
    /// Entries to write at the task's next turn (disjoint from `removed`).
    added: BTreeSet<Entry>,
    /// Entries to remove at the task's next turn.
    removed: BTreeSet<Entry>,
}

impl PresenceState {
    fn present(&mut self, entry: Entry) {
        self.removed.remove(&entry);
        self.added.insert(entry.clone());
        self.entries.insert(entry);
    }

    fn absent(&mut self, entry: Entry) {
        self.added.remove(&entry);
        self.entries.remove(&entry);
        self.removed.insert(entry);
    }
}

/// `entries` grouped by room, for one command per room.
fn by_room(entries: impl IntoIterator<Item = Entry>) -> BTreeMap<String, Vec<String>> {
    let mut rooms: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (room, member) in entries {
        rooms.entry(room).or_default().push(member);
    }
    rooms
}

/// A fresh random epoch as the scripts take it: 8 bytes, big-endian. Used
/// only if the room has none.
fn epoch_candidate() -> [u8; 8] {
    Epoch::random(&mut rand::rng()).get().to_be_bytes()
}

fn millis(duration: Option<Duration>) -> u64 {
    duration.map_or(0, |d| {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
    })
}

impl RedisBackplane {
    /// A backplane for a new node (a random [`NodeId`]); no I/O yet. Hand it
    /// to [`Hub::with_backplane`], then [`start`](Self::start) it with that
    /// hub. Broadcasts made before `start` wait in the queue.
    ///
    /// # Errors
    ///
    /// [`Error`] for an invalid prefix, URL, backoff or a zero queue or TTL.
    pub fn new(config: RedisConfig) -> Result<Self, Error> {
        let channels = Channels::new(&config.prefix).map_err(Error::Prefix)?;
        let backoff =
            Backoff::new(config.reconnect.clone(), rand::random()).map_err(Error::Backoff)?;
        if config.publish_queue == 0 {
            return Err(Error::Zero("publish queue"));
        }
        if config.presence_ttl.is_zero() {
            return Err(Error::Zero("presence TTL"));
        }
        let client = redis::Client::open(config.url.as_str())?;
        let (queue, pending) = mpsc::channel(config.publish_queue);
        Ok(Self {
            node: NodeId::random(&mut rand::rng()),
            channels,
            config,
            client,
            queue,
            pending: Mutex::new(Some(pending)),
            commands: tokio::sync::Mutex::new(None),
            presence: Mutex::new(PresenceState::default()),
            presence_changed: Notify::new(),
            on_node: std::sync::OnceLock::new(),
            on_unpublished: std::sync::OnceLock::new(),
            publisher_up: std::sync::atomic::AtomicBool::new(true),
            counters: Counters::default(),
            backoff,
        })
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The settings.
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// The counters so far.
    pub fn stats(&self) -> RedisStats {
        let c = &self.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        RedisStats {
            published: load(&c.published),
            publish_failed: load(&c.publish_failed),
            publish_dropped: load(&c.publish_dropped),
            received: load(&c.received),
            delivered: load(&c.delivered),
            own: load(&c.own),
            duplicates: load(&c.duplicates),
            missed: load(&c.missed),
            epoch_changes: load(&c.epoch_changes),
            invalid: load(&c.invalid),
            node_messages: load(&c.node_messages),
            subscriptions: load(&c.subscriptions),
        }
    }

    /// Connects and subscribes to every room of the prefix, then runs, on
    /// the current tokio runtime, the publisher, the subscriber (which
    /// delivers other nodes' room messages into `hub`'s groups) and the
    /// presence task. Returns once subscribed.
    ///
    /// # Errors
    ///
    /// [`Error::Redis`] if the first connection or subscription fails;
    /// [`Error::AlreadyStarted`] on a second call.
    pub async fn start(self: &Arc<Self>, hub: Hub) -> Result<Running, Error> {
        let deliver: Deliver = Arc::new(|hub: &Hub, room: &str, _, message: &Message| {
            hub.deliver_group(room, message, None);
        });
        self.start_with(hub, deliver).await
    }

    /// [`start`](Self::start), handing each room message to deliver to
    /// `deliver` instead of straight to `hub`'s group: where a service
    /// turns the message and its position into what its sessions get (the
    /// offset in a chat message, say), once per node.
    ///
    /// # Errors
    ///
    /// As for [`start`](Self::start).
    pub async fn start_with(
        self: &Arc<Self>,
        hub: Hub,
        deliver: Deliver,
    ) -> Result<Running, Error> {
        let pending = lock(&self.pending).take().ok_or(Error::AlreadyStarted)?;
        let pubsub = self.subscribe().await?;
        let publisher = self.publisher_connection().await?;
        let (stop, stopped) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(Arc::clone(self).run_subscriber(hub, deliver, pubsub, stopped.clone())),
            tokio::spawn(Arc::clone(self).run_publisher(pending, publisher, stopped.clone())),
            tokio::spawn(Arc::clone(self).run_presence(stopped)),
        ];
        Ok(Running { stop, tasks })
    }

    async fn subscribe(&self) -> Result<redis::aio::PubSub, Error> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.psubscribe(self.channels.all_rooms()).await?;
        pubsub
            .subscribe(self.channels.node(self.node.tag()))
            .await?;
        pubsub.subscribe(self.channels.all_nodes()).await?;
        bump(&self.counters.subscriptions, 1);
        Ok(pubsub)
    }

    fn backoff(&self) -> Backoff {
        self.backoff.clone()
    }

    /// Waits the backoff's next delay, or returns `false` if stopped (or the
    /// backoff gave up) first.
    async fn wait_retry(backoff: &mut Backoff, stopped: &mut watch::Receiver<bool>) -> bool {
        let delay = match backoff.disconnected(Instant::now()) {
            BackoffStep::Retry { delay, .. } => delay,
            BackoffStep::GiveUp { attempts } => {
                tracing::error!(attempts, "backplane: giving up reconnecting to redis");
                return false;
            }
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            _ = stopped.wait_for(|stop| *stop) => false,
        }
    }

    async fn run_subscriber(
        self: Arc<Self>,
        hub: Hub,
        deliver: Deliver,
        pubsub: redis::aio::PubSub,
        mut stopped: watch::Receiver<bool>,
    ) {
        let mut rooms = Subscriber::new(self.node);
        let mut backoff = self.backoff();
        let mut pubsub = Some(pubsub);
        loop {
            let current = match pubsub.take() {
                Some(current) => current,
                None => match self.subscribe().await {
                    Ok(current) => current,
                    Err(error) => {
                        tracing::warn!(%error, "backplane: redis subscription failed");
                        if Self::wait_retry(&mut backoff, &mut stopped).await {
                            continue;
                        }
                        return;
                    }
                },
            };
            backoff.connected(Instant::now());
            let mut messages = current.into_on_message();
            loop {
                tokio::select! {
                    message = messages.next() => match message {
                        Some(message) => self.receive(&hub, &deliver, &mut rooms, &message),
                        None => break,
                    },
                    _ = stopped.wait_for(|stop| *stop) => return,
                }
            }
            tracing::warn!("backplane: redis subscription lost; resubscribing");
            if !Self::wait_retry(&mut backoff, &mut stopped).await {
                return;
            }
        }
    }

    /// One message from the room pattern: decode, classify, deliver.
    fn receive(&self, hub: &Hub, deliver: &Deliver, rooms: &mut Subscriber, message: &redis::Msg) {
        let c = &self.counters;
        let room = match self.channels.parse(message.get_channel_name()) {
            Some(Channel::Room(room)) => room,
            Some(Channel::Node(_) | Channel::AllNodes) => {
                self.receive_node_message(hub, message);
                return;
            }
            _ => {
                bump(&c.received, 1);
                bump(&c.invalid, 1);
                return;
            }
        };
        bump(&c.received, 1);
        let wire = Bytes::copy_from_slice(message.get_payload_bytes());
        let envelope = match Envelope::decode(wire, self.config.max_payload) {
            Ok(envelope) if envelope.kind == Kind::Room && envelope.name.as_str() == room => {
                envelope
            }
            Ok(_) => {
                bump(&c.invalid, 1);
                tracing::warn!(
                    room,
                    "backplane: envelope names another room than its channel"
                );
                return;
            }
            Err(error) => {
                bump(&c.invalid, 1);
                tracing::warn!(room, %error, "backplane: undecodable message");
                return;
            }
        };
        // An ordered publication goes to `Deliver` even with no member
        // here: the service may have sessions about to enter the room (a
        // chat's joining sessions wait for it), and decides itself.
        if hub.member_count(room) == 0 && !envelope.echo {
            // Nobody here to deliver to, and nothing to track: the next
            // message after a member joins starts the room's sequence anew.
            rooms.forget(room);
            return;
        }
        let inbound = rooms.handle(&envelope);
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
            deliver(hub, room, envelope.position, &envelope.message);
            bump(&c.delivered, 1);
        } else if inbound.own {
            bump(&c.own, 1);
        } else {
            bump(&c.duplicates, 1);
        }
    }

    /// One message on this node's channel or the every-node one: decoded
    /// and handed to [`on_node_message`](Self::on_node_message)'s handler,
    /// unless this node sent it.
    fn receive_node_message(&self, hub: &Hub, message: &redis::Msg) {
        let c = &self.counters;
        let wire = Bytes::copy_from_slice(message.get_payload_bytes());
        let envelope = match Envelope::decode(wire, self.config.max_payload) {
            Ok(envelope) if envelope.kind == Kind::Node => envelope,
            Ok(_) => {
                bump(&c.invalid, 1);
                tracing::warn!("backplane: a room or user message on a node channel");
                return;
            }
            Err(error) => {
                bump(&c.invalid, 1);
                tracing::warn!(%error, "backplane: undecodable node message");
                return;
            }
        };
        if envelope.origin == self.node {
            return; // its own, to every node: it acted on it already
        }
        match self.on_node.get() {
            Some(handler) => {
                bump(&c.node_messages, 1);
                handler(hub, &envelope.message);
            }
            None => {
                bump(&c.invalid, 1);
                tracing::warn!("backplane: a node message, and no handler for it");
            }
        }
    }

    async fn run_publisher(
        self: Arc<Self>,
        mut pending: mpsc::Receiver<Publication>,
        connection: MultiplexedConnection,
        mut stopped: watch::Receiver<bool>,
    ) {
        let mut backoff = self.backoff();
        let mut connection = Some(connection);
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            // The first message waited for, then whatever else is queued:
            // one round trip for all of them.
            tokio::select! {
                taken = pending.recv_many(&mut batch, MAX_BATCH) => if taken == 0 {
                    return;
                },
                _ = stopped.wait_for(|stop| *stop) => return,
            }
            let conn = loop {
                if let Some(conn) = connection.as_mut() {
                    break conn;
                }
                match self.publisher_connection().await {
                    Ok(fresh) => {
                        backoff.connected(Instant::now());
                        connection = Some(fresh);
                        self.publisher_up.store(true, Ordering::Relaxed);
                    }
                    Err(error) => {
                        self.publisher_up.store(false, Ordering::Relaxed);
                        tracing::warn!(%error, "backplane: redis connection failed");
                        if !Self::wait_retry(&mut backoff, &mut stopped).await {
                            return;
                        }
                    }
                }
            };
            let count = u64::try_from(batch.len()).unwrap_or(u64::MAX);
            match self.append(conn, &batch).await {
                Ok(()) => bump(&self.counters.published, count),
                Err(error) => {
                    // Not retried: the scripts may have run (a reply lost),
                    // and a second run would publish the messages twice.
                    bump(&self.counters.publish_failed, count);
                    tracing::warn!(messages = count, %error, "backplane: publish failed");
                    connection = None;
                    self.publisher_up.store(false, Ordering::Relaxed);
                    for publication in &batch {
                        if let Publication::Room {
                            room,
                            ordered: Some(message),
                            ..
                        } = publication
                        {
                            self.unpublished(room, message);
                        }
                    }
                }
            }
            batch.clear();
        }
    }

    /// A connection for the publisher, with the publish script loaded (so
    /// it is called by SHA alone, pipelined; a restarted Redis breaks the
    /// connection, and the next one loads it again).
    async fn publisher_connection(&self) -> Result<MultiplexedConnection, redis::RedisError> {
        let mut connection = self.client.get_multiplexed_tokio_connection().await?;
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(PUBLISH.body)
            .query_async(&mut connection)
            .await?;
        if sha != PUBLISH.sha {
            tracing::warn!(
                sha,
                expected = PUBLISH.sha,
                "backplane: redis hashes scripts differently"
            );
        }
        Ok(connection)
    }

    /// Appends and publishes `batch` in order, in one pipeline.
    async fn append(
        &self,
        connection: &mut MultiplexedConnection,
        batch: &[Publication],
    ) -> Result<(), redis::RedisError> {
        let mut pipeline = redis::pipe();
        for publication in batch {
            let (room, wire) = match publication {
                Publication::Room { room, wire, .. } => (room, wire),
                Publication::Node { channel, wire } => {
                    pipeline.cmd("PUBLISH").arg(channel).arg(&wire[..]);
                    continue;
                }
            };
            let mut tail = redis::Cmd::new();
            tail.arg(2)
                .arg(self.channels.meta(room))
                .arg(self.channels.history(room))
                .arg(&epoch_candidate()[..])
                .arg(self.config.history_len)
                .arg(self.channels.room(room))
                .arg(&wire[..])
                .arg(millis(self.config.history_ttl));
            pipeline.add_command(PUBLISH.command(false, &tail));
        }
        pipeline.query_async::<Vec<u64>>(connection).await.map(drop)
    }

    /// Keeps Redis told of this node's presence: what changed as soon as
    /// it changed ([`present`](Self::present), [`absent`](Self::absent)),
    /// every entry again every third of the TTL. A write that fails is
    /// logged and made good by the next refresh; a removal that fails, by
    /// the entry's expiry.
    async fn run_presence(self: Arc<Self>, mut stopped: watch::Receiver<bool>) {
        let period = self.config.presence_ttl / 3;
        let mut next_refresh = tokio::time::Instant::now() + period;
        loop {
            let refresh = tokio::select! {
                () = tokio::time::sleep_until(next_refresh) => true,
                () = self.presence_changed.notified() => false,
                _ = stopped.wait_for(|stop| *stop) => return,
            };
            let (removed, written) = {
                let mut state = lock(&self.presence);
                let removed = std::mem::take(&mut state.removed);
                let added = std::mem::take(&mut state.added);
                if refresh {
                    next_refresh = tokio::time::Instant::now() + period;
                    (removed, state.entries.clone())
                } else {
                    (removed, added)
                }
            };
            for (room, members) in by_room(removed) {
                let mut command = redis::cmd("ZREM");
                command.arg(self.channels.presence(&room)).arg(&members);
                if let Err(error) = self.query::<u64>(&command).await {
                    tracing::warn!(room, %error, "backplane: presence removal failed");
                }
            }
            for (room, members) in by_room(written) {
                if let Err(error) = self.touch(&room, &members).await {
                    tracing::warn!(room, %error, "backplane: presence write failed");
                }
            }
        }
    }

    /// Runs `command` on the command connection, connecting first if
    /// needed. When the connection turns out to be broken (Redis restarted
    /// since its last use), it reconnects and runs `command` once more:
    /// every command sent this way may safely run twice.
    async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, Error> {
        let mut slot = self.commands.lock().await;
        let mut retried = false;
        loop {
            let connection = match slot.as_mut() {
                Some(connection) => connection,
                None => slot.insert(self.client.get_multiplexed_tokio_connection().await?),
            };
            match command.query_async(connection).await {
                Ok(reply) => return Ok(reply),
                Err(error) => {
                    *slot = None;
                    let broken = error.is_io_error()
                        || error.is_connection_dropped()
                        || error.is_unrecoverable_error();
                    if retried || !broken {
                        return Err(error.into());
                    }
                    retried = true;
                }
            }
        }
    }

    /// Runs `script` with `tail` through [`query`](Self::query), by SHA
    /// first.
    async fn query_script<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        tail: &redis::Cmd,
    ) -> Result<T, Error> {
        match self.query(&script.command(false, tail)).await {
            Err(Error::Redis(error)) if is_no_script(&error) => {
                self.query(&script.command(true, tail)).await
            }
            other => other,
        }
    }

    /// The room's position now: its epoch (started here if it has none)
    /// and its last offset. What a client joining fresh starts from.
    ///
    /// # Errors
    ///
    /// [`Error::Redis`] if Redis is unreachable or refuses.
    pub async fn position(&self, room: &str) -> Result<Position, Error> {
        let mut tail = redis::Cmd::new();
        tail.arg(2)
            .arg(self.channels.meta(room))
            .arg(self.channels.history(room))
            .arg(&epoch_candidate()[..])
            .arg(millis(self.config.history_ttl));
        let (epoch, offset): (Vec<u8>, u64) = self.query_script(&POSITION, &tail).await?;
        let epoch = <[u8; 8]>::try_from(epoch.as_slice())
            .ok()
            .and_then(|bytes| Epoch::new(u64::from_be_bytes(bytes)))
            .ok_or_else(|| Error::Reply(format!("room {room:?} has a malformed epoch")))?;
        Ok(Position::new(epoch, offset))
    }

    /// What a client of `room` that last saw `since` missed: exactly those
    /// messages, in order, or why that cannot be known
    /// ([`storm_proto::backplane::recover`] decides from what Redis holds).
    ///
    /// # Errors
    ///
    /// [`Error::Redis`] if Redis is unreachable or refuses.
    pub async fn recover(&self, room: &str, since: Position) -> Result<Recovery, Error> {
        let top = self.position(room).await?;
        let range = match recovery_range(since, top, self.config.max_recover) {
            Ok(Some(range)) => range,
            Ok(None) => {
                return Ok(Recovery::Recovered {
                    messages: Vec::new(),
                    top,
                });
            }
            Err(reason) => return Ok(Recovery::Impossible { reason, top }),
        };
        let mut command = redis::cmd("XRANGE");
        command
            .arg(self.channels.history(room))
            .arg(format!("0-{}", range.start()))
            .arg(format!("0-{}", range.end()));
        let entries: Vec<StreamEntry> = self.query(&command).await?;
        // Entries of another epoch (the history restarted between the two
        // reads) are left out: the rule then says what is missing.
        let window = entries
            .into_iter()
            .filter_map(|(_, fields)| fields.into_iter().find(|(name, _)| name == "d"))
            .filter_map(|(_, wire)| Envelope::decode(wire.into(), self.config.max_payload).ok())
            .filter_map(|envelope| {
                let at = envelope.position.filter(|at| at.epoch == top.epoch)?;
                Some((at.offset, (at, envelope.message)))
            });
        Ok(match recover(since, top, self.config.max_recover, window) {
            Ok(messages) => Recovery::Recovered { messages, top },
            Err(reason) => Recovery::Impossible { reason, top },
        })
    }

    /// Marks `members` present in `room` until Redis's now + the TTL.
    async fn touch(&self, room: &str, members: &[String]) -> Result<(), Error> {
        let mut tail = redis::Cmd::new();
        tail.arg(1)
            .arg(self.channels.presence(room))
            .arg(millis(Some(self.config.presence_ttl)))
            .arg(members);
        self.query_script::<u64>(&ANNOUNCE, &tail).await.map(drop)
    }

    /// Marks `member` present in `room`, across nodes, until this node
    /// [withdraws](Self::withdraw) it or stops refreshing it (it stopped or
    /// died): then it disappears within [`RedisConfig::presence_ttl`].
    ///
    /// # Errors
    ///
    /// [`Error::Redis`] if Redis is unreachable or refuses (the entry is
    /// still refreshed once it is back).
    pub async fn announce(&self, room: &str, member: &str) -> Result<(), Error> {
        lock(&self.presence).present((room.to_owned(), member.to_owned()));
        self.touch(room, &[member.to_owned()]).await
    }

    /// [`announce`](Self::announce) without waiting: the entry is this
    /// node's at once, and the presence task (of a started backplane)
    /// writes it to Redis right after, in the order of this node's
    /// `present` and [`absent`](Self::absent) calls.
    pub fn present(&self, room: &str, member: &str) {
        lock(&self.presence).present((room.to_owned(), member.to_owned()));
        self.presence_changed.notify_one();
    }

    /// [`withdraw`](Self::withdraw) without waiting, like
    /// [`present`](Self::present).
    pub fn absent(&self, room: &str, member: &str) {
        lock(&self.presence).absent((room.to_owned(), member.to_owned()));
        self.presence_changed.notify_one();
    }

    /// Removes `member` from `room`'s presence.
    ///
    /// # Errors
    ///
    /// [`Error::Redis`] if Redis is unreachable or refuses (the entry then
    /// expires within the TTL).
    pub async fn withdraw(&self, room: &str, member: &str) -> Result<(), Error> {
        lock(&self.presence).absent((room.to_owned(), member.to_owned()));
        let mut command = redis::cmd("ZREM");
        command.arg(self.channels.presence(room)).arg(member);
        self.query::<u64>(&command).await.map(drop)
    }

    /// Who is present in `room`, on every node, sorted.
    ///
    /// # Errors
    ///
    /// [`Error::Redis`] if Redis is unreachable or refuses.
    pub async fn members(&self, room: &str) -> Result<Vec<String>, Error> {
        let mut tail = redis::Cmd::new();
        tail.arg(1).arg(self.channels.presence(room));
        let mut members: Vec<String> = self.query_script(&MEMBERS, &tail).await?;
        members.sort_unstable();
        Ok(members)
    }
}

impl RedisBackplane {
    /// Publishes `message` to `room` on every node, this one included.
    /// Unlike a group broadcast through the hub (this node's members at
    /// once, the others' through Redis), every node, this one too, delivers
    /// it as it comes back from Redis, through the [`Deliver`] of
    /// [`start_with`](Self::start_with) and with its position: all nodes
    /// see the room's messages in one order, and can tell their sessions
    /// the offsets. Never waits. What cannot reach Redis (a full queue,
    /// a publisher known to be disconnected, a failed pipeline) is counted,
    /// logged, and handed to the [`on_unpublished`](Self::on_unpublished)
    /// handler, which can at least deliver it on this node; in the rare
    /// case of a pipeline that broke after Redis ran it, a message may then
    /// come back too.
    pub fn publish_ordered(&self, room: &str, message: &Message) {
        self.enqueue(room, message, true);
    }

    /// Sends `message` to the node tagged `node` (see [`NodeTag`]), to its
    /// [`on_node_message`](Self::on_node_message) handler. Never waits; a
    /// full queue drops it (counted, logged) and returns `false`.
    pub fn to_node(&self, node: NodeTag, message: &Message) -> bool {
        let channel = self.channels.node(node);
        self.enqueue_node(channel, &node.to_string(), message)
    }

    /// Sends `message` to every other node's
    /// [`on_node_message`](Self::on_node_message) handler, as
    /// [`to_node`](Self::to_node) does.
    pub fn to_all_nodes(&self, message: &Message) -> bool {
        self.enqueue_node(self.channels.all_nodes(), "all", message)
    }

    /// Where messages to this node ([`to_node`](Self::to_node),
    /// [`to_all_nodes`](Self::to_all_nodes)) go. Set it before
    /// [`start`](Self::start); only the first call counts (`false` for
    /// the others). Without it they are counted as
    /// [`invalid`](RedisStats::invalid) and dropped.
    pub fn on_node_message(&self, handler: OnNodeMessage) -> bool {
        self.on_node.set(handler).is_ok()
    }

    fn enqueue_node(&self, channel: String, to: &str, message: &Message) -> bool {
        let wire = match Envelope::node(self.node, to, message.clone()).to_bytes() {
            Ok(wire) => wire,
            Err(error) => {
                bump(&self.counters.publish_failed, 1);
                tracing::warn!(to, %error, "backplane: cannot send to a node");
                return false;
            }
        };
        if self
            .queue
            .try_send(Publication::Node { channel, wire })
            .is_err()
        {
            bump(&self.counters.publish_dropped, 1);
            tracing::warn!(to, "backplane: publish queue full; not sent to the node");
            return false;
        }
        true
    }

    /// Where ordered messages that cannot be published go (see
    /// [`OnUnpublished`]). Set it before [`start`](Self::start); only the
    /// first call counts (`false` for the others). Without it they are
    /// counted and logged only.
    pub fn on_unpublished(&self, handler: OnUnpublished) -> bool {
        self.on_unpublished.set(handler).is_ok()
    }

    /// Hands an ordered message that did not go to the
    /// [`on_unpublished`](Self::on_unpublished) handler.
    fn unpublished(&self, room: &str, message: &Message) {
        if let Some(handler) = self.on_unpublished.get() {
            handler(room, message);
        }
    }

    /// Encodes once, queues for the publisher; counts and logs what cannot
    /// go, and hands the ordered ones that cannot to
    /// [`on_unpublished`](Self::on_unpublished)'s handler.
    fn enqueue(&self, room: &str, message: &Message, echo: bool) {
        let mut envelope = Envelope::room(self.node, room, message.clone());
        envelope.echo = echo;
        let wire = match envelope.to_bytes() {
            Ok(wire) => wire,
            Err(error) => {
                bump(&self.counters.publish_failed, 1);
                tracing::warn!(room, %error, "backplane: cannot publish");
                if echo {
                    self.unpublished(room, message);
                }
                return;
            }
        };
        if echo && !self.publisher_up.load(Ordering::Relaxed) {
            bump(&self.counters.publish_failed, 1);
            self.unpublished(room, message);
            return;
        }
        let publication = Publication::Room {
            room: room.to_owned(),
            wire,
            ordered: echo.then(|| message.clone()),
        };
        if self.queue.try_send(publication).is_err() {
            if echo {
                self.unpublished(room, message);
            }
            bump(&self.counters.publish_dropped, 1);
            tracing::warn!(
                room,
                "backplane: publish queue full; not sent to other nodes"
            );
        }
    }
}

impl Backplane for RedisBackplane {
    /// Encodes the message once and queues it for the publisher; never
    /// waits. A full queue drops it for other nodes (counted, logged).
    fn publish(&self, group: &str, message: &Message) {
        self.enqueue(group, message, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_before_any_io() {
        let config = |edit: fn(&mut RedisConfig)| {
            let mut config = RedisConfig::default();
            edit(&mut config);
            RedisBackplane::new(config)
        };
        assert!(matches!(
            config(|c| c.prefix = "a.b".into()),
            Err(Error::Prefix(_))
        ));
        assert!(matches!(
            config(|c| c.url = "http://x".into()),
            Err(Error::Redis(_))
        ));
        assert!(matches!(
            config(|c| c.publish_queue = 0),
            Err(Error::Zero(_))
        ));
        assert!(matches!(
            config(|c| c.presence_ttl = Duration::ZERO),
            Err(Error::Zero(_))
        ));
        let a = config(|_| {}).unwrap();
        let b = config(|_| {}).unwrap();
        assert_ne!(a.node(), b.node());
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let config = RedisConfig {
            publish_queue: 1,
            ..RedisConfig::default()
        };
        let backplane = RedisBackplane::new(config).unwrap();
        backplane.publish("room", &Message::from("a"));
        backplane.publish("room", &Message::from("b"));
        backplane.publish("", &Message::from("c"));
        let stats = backplane.stats();
        assert_eq!(stats.publish_dropped, 1);
        assert_eq!(stats.publish_failed, 1);
    }

    #[test]
    fn scripts_are_called_by_the_sha1_redis_gives_them() {
        // `SCRIPT LOAD "return 1"` answers this.
        let script = Script::new("return 1");
        assert_eq!(script.sha, "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
        let mut tail = redis::Cmd::new();
        tail.arg(0).arg("x");
        let by_sha = script.command(false, &tail);
        let whole = script.command(true, &tail);
        let args = |command: &redis::Cmd| -> Vec<Vec<u8>> {
            command
                .args_iter()
                .filter_map(|arg| match arg {
                    redis::Arg::Simple(bytes) => Some(bytes.to_vec()),
                    redis::Arg::Cursor => None,
                })
                .collect()
        };
        assert_eq!(args(&by_sha)[0], b"EVALSHA");
        assert_eq!(args(&by_sha)[1..], [script.sha.as_bytes(), b"0", b"x"]);
        assert_eq!(args(&whole)[..2], [&b"EVAL"[..], b"return 1"]);
    }

    #[test]
    fn the_publish_script_splices_the_position_where_the_envelope_has_it() {
        // The script keeps bytes 1..=21 (Lua counts from 1), writes 16, and
        // goes on from byte 38.
        assert_eq!(storm_proto::backplane::POSITION_RANGE, 21..37);
        assert!(
            PUBLISH_SCRIPT
                .contains("string.sub(ARGV[4], 1, 21) .. epoch .. be .. string.sub(ARGV[4], 38)")
        );
    }

    #[test]
    fn ttls_are_whole_milliseconds() {
        assert_eq!(millis(None), 0);
        assert_eq!(millis(Some(Duration::from_micros(10))), 1);
        assert_eq!(millis(Some(Duration::from_secs(2))), 2000);
    }
}
