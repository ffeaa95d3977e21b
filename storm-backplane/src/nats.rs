//! The NATS backplane, on tokio: room broadcasts and node-to-node messages
//! through NATS core pub/sub (`async-nats`), presence through heartbeats.
//!
//! ```text
//! node A: hub.broadcast_group(room, m) ─ local members get m
//!           └ NatsBackplane::publish ─ encode once ─ bounded queue ─ publisher task
//!                 └ PUB PREFIX.room.TOKEN envelope (a batch, then one confirming request)
//! node B: subscriber task (SUB PREFIX.room.*) ─ decode ─ Subscriber::handle
//!                 └ not its own (unless an echo): deliver (hub.deliver_group)
//! ```
//!
//! One publish per room message, whatever the number of sessions or nodes;
//! one decode per node; the envelope is [`storm_proto::backplane`]'s, as on
//! Redis.
//!
//! # No history
//!
//! NATS core pub/sub keeps nothing: a message reaches the nodes subscribed
//! as it is published, and no one else, ever. So room messages carry no
//! position ([`Order::Unpositioned`](storm_proto::backplane::Order::Unpositioned)),
//! there is no gap detection, and
//! [`NatsBackplane::recover`] always answers [`Recovery::NoHistory`] with
//! the reason [`NO_HISTORY`]: a client that comes back with a position is
//! told, explicitly, that what it missed cannot be recovered, never handed
//! a silent gap. JetStream (NATS's persistence layer: a stream per room
//! prefix, each message's stream sequence as its offset, `DeliverByStartSequence`
//! consumers to replay) would give what the Redis backplane has: offsets,
//! gap detection and recovery. It is not used here.
//!
//! # Subjects
//!
//! Under the [`Channels`](storm_proto::backplane::Channels) of
//! [`NatsConfig::prefix`]: `PREFIX.room.TOKEN`
//! (a room's messages; [`room_token`]: the room's name when it is ASCII
//! letters, digits, `-` and `_`, else `=` and its UTF-8 in hex, so any room
//! name is one subject token), `PREFIX.node.TAG` and `PREFIX.node.all`
//! (messages to one node or every node), `PREFIX.presence.heartbeat`
//! (presence).
//!
//! # Presence
//!
//! Each node publishes its entries ([`present`](NatsBackplane::present),
//! [`absent`](NatsBackplane::absent)) as they change and all of them again
//! every third of [`NatsConfig::presence_ttl`]; every node keeps the others'
//! in a [`Presence`] table whose entries expire a TTL after they were last
//! heard of. A killed node's entries are gone from every other node within
//! the TTL. A node that starts, or reconnects, says `hello`, and the others
//! publish their entries at once.
//!
//! # No claims
//!
//! Unlike the Redis backplane (its `RedisBackplane::claim`), there is no
//! claim of a name across nodes here: NATS core keeps no state that could decide
//! between two nodes claiming one name at once (a request/reply round
//! among the nodes cannot either: a node that has not heard of the other's
//! claim yet answers "free"). A service on this backplane keeps names
//! unique per node only (`storm chat` does, and says so); a JetStream KV
//! bucket's create-if-absent would give what Redis gives.
//!
//! # Faults
//!
//! When nats-server goes away, local traffic goes on; `async-nats`
//! reconnects with the delays of the core's [`Backoff`] (exponential, with
//! jitter) and subscribes again. While it is disconnected, an ordered
//! publication goes at once to the [`on_unpublished`](NatsBackplane::on_unpublished)
//! handler (a chat tells its members that the others did not get it), as
//! does one whose batch was not confirmed by the server (the request after
//! it, which the server answers "no responders", failed or timed out).

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use storm_host::hub::{Backplane, Hub};
use storm_proto::Message;
use storm_proto::backplane::{NodeId, NodeStats, NodeTag, Position, Presence, Subscriber};
use storm_proto::reconnect::{Backoff, BackoffConfig, BackoffStep};
use tokio::sync::{Notify, mpsc, watch};

use crate::node::{Node, Queued, bump, defaults, deliver_to_hub, lock, settings_of};
pub use crate::{ConfigError, Deliver, OnNodeMessage, OnUnpublished, Recovery, Running, Stats};

/// Why a client coming back with a position cannot have what it missed on
/// this backplane: the reason of every [`NatsBackplane::recover`].
pub const NO_HISTORY: &str = "the NATS backplane keeps no history: messages published while you were away cannot be recovered";

/// Room messages one batch carries at most (then one confirmation).
const MAX_BATCH: usize = 256;

/// How long the server may take to confirm a batch or the subscriptions
/// (its answer to the request after them); past it a batch's ordered
/// messages go to the unpublished handler.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes of presence entries one heartbeat message carries at most (NATS
/// refuses payloads over the server's `max_payload`, 1 MiB by default).
const MAX_HEARTBEAT: usize = 64 * 1024;

/// The envelope name of presence messages (a node envelope).
const HEARTBEAT: &str = "heartbeat";

/// Other nodes whose stats a node keeps at most; a node past it is not
/// listed (counted in [`presence_dropped`](Stats::presence_dropped)).
const MAX_NODES: usize = 4096;

/// Settings of a [`NatsBackplane`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct NatsConfig {
    /// The server, as a `nats://HOST:PORT` URL.
    ///
    /// Default: `nats://127.0.0.1:4222`.
    pub url: String,
    /// The subject prefix ([`Channels`](storm_proto::backplane::Channels)):
    /// nodes of one service share it,
    /// other services sharing the server use another.
    ///
    /// Default: `storm`.
    pub prefix: String,
    /// How long a presence entry lives unless its node announces it again
    /// (every third of this): a dead node's members disappear within it.
    ///
    /// Default: 30 s.
    pub presence_ttl: Duration,
    /// Most presence entries of other nodes this node keeps; beyond it new
    /// ones are dropped (counted in
    /// [`presence_dropped`](Stats::presence_dropped), logged).
    ///
    /// Default: 100,000.
    pub max_presence: usize,
    /// Largest payload accepted from another node; larger envelopes are
    /// counted as [`invalid`](Stats::invalid) and dropped.
    ///
    /// Default: 16 MiB (the server's own `max_payload`, 1 MiB by default,
    /// bounds what is published).
    pub max_payload: usize,
    /// Messages waiting for the publisher; beyond it a broadcast is not
    /// published to other nodes, and counted in
    /// [`publish_dropped`](Stats::publish_dropped).
    ///
    /// Default: 4096.
    pub publish_queue: usize,
    /// Delays between reconnect attempts.
    ///
    /// Default: [`BackoffConfig::default`] (exponential from 100 ms, capped
    /// at 30 s, full jitter, unlimited).
    pub reconnect: BackoffConfig,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".to_owned(),
            prefix: defaults::PREFIX.to_owned(),
            presence_ttl: defaults::PRESENCE_TTL,
            max_presence: 100_000,
            max_payload: defaults::MAX_PAYLOAD,
            publish_queue: defaults::PUBLISH_QUEUE,
            reconnect: BackoffConfig::default(),
        }
    }
}

/// What went wrong talking to NATS, or setting up.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// [`NatsConfig::prefix`] is not a valid prefix, or
    /// [`NatsConfig::reconnect`] not a valid backoff, or
    /// [`NatsConfig::publish_queue`], [`NatsConfig::presence_ttl`] or
    /// [`NatsConfig::max_presence`] is zero.
    Config(ConfigError),
    /// [`NatsConfig::url`] is not a NATS URL.
    Url(String),
    /// The first connection failed.
    Connect(async_nats::ConnectError),
    /// A subscription failed.
    Subscribe(async_nats::SubscribeError),
    /// The server did not confirm the subscriptions.
    Unconfirmed(String),
    /// [`NatsBackplane::start`] was called twice.
    AlreadyStarted,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(e) => e.fmt(f),
            Self::Url(e) => write!(f, "not a NATS URL (nats://HOST:PORT): {e}"),
            Self::Connect(e) => write!(f, "nats: {e}"),
            Self::Subscribe(e) => write!(f, "nats subscription: {e}"),
            Self::Unconfirmed(e) => write!(f, "nats subscriptions not confirmed: {e}"),
            Self::AlreadyStarted => f.write_str("the backplane was started already"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Config(e) => Some(e),
            Self::Connect(e) => Some(e),
            Self::Subscribe(e) => Some(e),
            _ => None,
        }
    }
}

/// A message waiting for the publisher, its envelope encoded.
struct Publication {
    subject: String,
    wire: Bytes,
    /// The room and message of a [`publish_ordered`](NatsBackplane::publish_ordered),
    /// for the [`on_unpublished`](NatsBackplane::on_unpublished) handler.
    ordered: Option<(String, Message)>,
}

impl Queued for Publication {
    fn ordered(&self) -> Option<(&str, &Message)> {
        self.ordered
            .as_ref()
            .map(|(room, message)| (room.as_str(), message))
    }
}

/// The subject token of a room: its name when that is ASCII letters,
/// digits, `-` and `_` (readable in `nats sub`), else `=` and the name's
/// UTF-8 in lowercase hex. One token whatever the name (NATS subjects
/// cannot hold `.`, `*`, `>` or whitespace in a token), and no two rooms
/// share one (`=` is never in a plain name).
#[must_use]
pub fn room_token(room: &str) -> String {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    if !room.is_empty() && room.bytes().all(plain) {
        return room.to_owned();
    }
    let mut token = String::with_capacity(1 + 2 * room.len());
    token.push('=');
    for byte in room.bytes() {
        token.push_str(&format!("{byte:02x}"));
    }
    token
}

/// What a presence message says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PresenceOp {
    /// These entries are present (for a TTL from now).
    Present = 0,
    /// These entries left.
    Absent = 1,
    /// A node (re)joined: every node publishes its entries now.
    Hello = 2,
    /// The sending node's [`NodeStats`] (for a TTL from now).
    Stats = 3,
}

/// A decoded presence message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Heartbeat {
    /// These entries are present (for a TTL from now).
    Present(Vec<(String, String)>),
    /// These entries left.
    Absent(Vec<(String, String)>),
    /// A node (re)joined: every node publishes its entries now.
    Hello,
    /// The sending node's stats (for a TTL from now).
    Stats(NodeStats),
}

/// Why a presence message did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeartbeatError {
    Empty,
    Op(u8),
    Truncated,
    Utf8,
    /// A stats message whose text is not [`NodeStats`]'s.
    Stats,
}

/// Presence messages saying `op` of `entries`: each at most
/// [`MAX_HEARTBEAT`] bytes of entries (one entry larger than that goes
/// alone). Layout: the op byte, then per entry the room and the member,
/// each as a 4-byte big-endian length and UTF-8.
fn encode_presence(op: PresenceOp, entries: &[(String, String)]) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut chunk = BytesMut::new();
    chunk.put_u8(op as u8);
    for (room, member) in entries {
        if chunk.len() > 1 && chunk.len() + 8 + room.len() + member.len() > MAX_HEARTBEAT {
            out.push(std::mem::take(&mut chunk).freeze());
            chunk.put_u8(op as u8);
        }
        for part in [room, member] {
            chunk.put_u32(u32::try_from(part.len()).unwrap_or(u32::MAX));
            chunk.put_slice(part.as_bytes());
        }
    }
    if chunk.len() > 1 || out.is_empty() {
        out.push(chunk.freeze());
    }
    out
}

/// The presence message carrying `stats`: the op byte, then the stats as
/// [`NodeStats`]'s text.
fn encode_stats(stats: NodeStats) -> Bytes {
    let text = stats.to_string();
    let mut wire = BytesMut::with_capacity(1 + text.len());
    wire.put_u8(PresenceOp::Stats as u8);
    wire.put_slice(text.as_bytes());
    wire.freeze()
}

/// What [`encode_presence`] or [`encode_stats`] wrote; total: any bytes
/// give a message or an error, never more memory than the bytes hold.
fn decode_presence(wire: &[u8]) -> Result<Heartbeat, HeartbeatError> {
    let (&op, rest) = wire.split_first().ok_or(HeartbeatError::Empty)?;
    match op {
        0 => decode_entries(rest).map(Heartbeat::Present),
        1 => decode_entries(rest).map(Heartbeat::Absent),
        2 => decode_entries(rest).map(|_| Heartbeat::Hello),
        3 => {
            let text = std::str::from_utf8(rest).map_err(|_| HeartbeatError::Utf8)?;
            text.parse()
                .map(Heartbeat::Stats)
                .map_err(|_| HeartbeatError::Stats)
        }
        other => Err(HeartbeatError::Op(other)),
    }
}

/// The entries of a presence message, after its op byte: per entry the
/// room and the member, each a 4-byte big-endian length and UTF-8.
fn decode_entries(mut wire: &[u8]) -> Result<Vec<(String, String)>, HeartbeatError> {
    let part = |wire: &mut &[u8]| -> Result<String, HeartbeatError> {
        if wire.len() < 4 {
            return Err(HeartbeatError::Truncated);
        }
        let len = usize::try_from(wire.get_u32()).map_err(|_| HeartbeatError::Truncated)?;
        if wire.len() < len {
            return Err(HeartbeatError::Truncated);
        }
        let text = std::str::from_utf8(&wire[..len]).map_err(|_| HeartbeatError::Utf8)?;
        let text = text.to_owned();
        wire.advance(len);
        Ok(text)
    };
    let mut entries = Vec::new();
    while !wire.is_empty() {
        let room = part(&mut wire)?;
        let member = part(&mut wire)?;
        entries.push((room, member));
    }
    Ok(entries)
}

/// Every node's stats as last heard of, each until its expiry; at most
/// [`MAX_NODES`].
#[derive(Debug, Default)]
struct NodeTable {
    nodes: std::collections::HashMap<NodeId, (NodeStats, Instant)>,
}

impl NodeTable {
    /// Notes `node`'s `stats`, alive until `expires`; `false` when the
    /// table is full and `node` is not in it (nothing noted).
    fn note(&mut self, node: NodeId, stats: NodeStats, expires: Instant, now: Instant) -> bool {
        if self.nodes.len() >= MAX_NODES && !self.nodes.contains_key(&node) {
            self.nodes.retain(|_, (_, until)| *until > now);
            if self.nodes.len() >= MAX_NODES {
                return false;
            }
        }
        self.nodes.insert(node, (stats, expires));
        true
    }

    /// The live nodes' stats at `now`, sorted by node id.
    fn live(&mut self, now: Instant) -> Vec<(NodeId, NodeStats)> {
        self.nodes.retain(|_, (_, until)| *until > now);
        let mut live: Vec<(NodeId, NodeStats)> = self
            .nodes
            .iter()
            .map(|(node, (stats, _))| (*node, *stats))
            .collect();
        live.sort_unstable_by_key(|(node, _)| *node);
        live
    }
}

/// The NATS backplane of one node. See the [module docs](self).
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Instant;
///
/// use storm_backplane::nats::{NatsBackplane, NatsConfig};
/// use storm_host::hub::{Hub, HubConfig};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let mut config = NatsConfig::default();
/// config.url = "nats://127.0.0.1:4222".into();
/// let backplane = Arc::new(NatsBackplane::new(config)?);
/// let hub = Hub::with_backplane(HubConfig::default(), Instant::now(), backplane.clone())?;
/// let running = backplane.start(hub.clone()).await?; // subscribed when it returns
/// // … serve sessions on `hub`; group broadcasts now reach every node …
/// running.stop().await;
/// # Ok(())
/// # }
/// ```
pub struct NatsBackplane {
    /// What every backplane of a node has (its id, channels, queue,
    /// handlers, counters).
    node: Node<Publication>,
    config: NatsConfig,
    /// The connection, once started.
    client: OnceLock<async_nats::Client>,
    /// This node's presence entries, published again every third of the TTL.
    mine: Mutex<BTreeSet<(String, String)>>,
    /// The other nodes' presence entries, as last heard of.
    others: Mutex<Presence>,
    /// Wakes the presence task to publish every entry now.
    refresh: Notify,
    /// Wakes the presence task to publish this node's stats now (its
    /// presence changed).
    changed: Notify,
    /// Every node's stats as last heard of (this one's as last published).
    nodes: Mutex<NodeTable>,
    /// The reconnect schedule, shared by the reconnect attempts.
    backoff: Arc<Mutex<Backoff>>,
    /// Whether the connection is up, as its events last said: a confirmation
    /// waiting for a server that went away gives up at once.
    up: watch::Sender<bool>,
}

impl fmt::Debug for NatsBackplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsBackplane")
            .field("node", &self.node.id)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl NatsBackplane {
    /// A backplane for a new node (a random [`NodeId`]); no I/O yet. Hand it
    /// to [`Hub::with_backplane`], then [`start`](Self::start) it with that
    /// hub. Broadcasts made before `start` wait in the queue.
    ///
    /// # Errors
    ///
    /// [`Error`] for an invalid prefix, URL, backoff, or a zero queue, TTL
    /// or presence bound.
    pub fn new(config: NatsConfig) -> Result<Self, Error> {
        let (node, backoff) = Node::new(&settings_of!(config)).map_err(Error::Config)?;
        if config.max_presence == 0 {
            return Err(Error::Config(ConfigError::Zero("presence bound")));
        }
        if !config.url.starts_with("nats://") {
            return Err(Error::Url(config.url.clone()));
        }
        config
            .url
            .parse::<async_nats::ServerAddr>()
            .map_err(|e| Error::Url(e.to_string()))?;
        Ok(Self {
            node,
            others: Mutex::new(Presence::new(config.presence_ttl, config.max_presence)),
            config,
            client: OnceLock::new(),
            mine: Mutex::new(BTreeSet::new()),
            refresh: Notify::new(),
            changed: Notify::new(),
            nodes: Mutex::new(NodeTable::default()),
            backoff: Arc::new(Mutex::new(backoff)),
            up: watch::Sender::new(true),
        })
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.node.id
    }

    /// The settings.
    pub fn config(&self) -> &NatsConfig {
        &self.config
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.node.stats()
    }

    /// The subject presence messages go on.
    fn heartbeat_subject(&self) -> String {
        self.node.channels.presence(HEARTBEAT)
    }

    /// Connects and subscribes to every room of the prefix, to this node's
    /// and every node's messages and to presence, then runs, on the current
    /// tokio runtime, the publisher, the subscriber (which delivers other
    /// nodes' room messages into `hub`'s groups) and the presence task.
    /// Returns once subscribed.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`], [`Error::Subscribe`] or [`Error::Unconfirmed`] if the
    /// first connection or subscription fails; [`Error::AlreadyStarted`] on a second call.
    pub async fn start(self: &Arc<Self>, hub: Hub) -> Result<Running, Error> {
        self.start_with(hub, deliver_to_hub()).await
    }

    /// [`start`](Self::start), handing each room message to deliver to
    /// `deliver` instead of straight to `hub`'s group (see
    /// [`Deliver`]; positions are always `None` here).
    ///
    /// # Errors
    ///
    /// As for [`start`](Self::start).
    pub async fn start_with(
        self: &Arc<Self>,
        hub: Hub,
        deliver: Deliver,
    ) -> Result<Running, Error> {
        let pending = self.node.take_pending().ok_or(Error::AlreadyStarted)?;
        let client = self.connect().await?;
        let subjects = [
            self.node.channels.room("*"),
            self.node.channels.node(self.node.id.tag()),
            self.node.channels.all_nodes(),
            self.heartbeat_subject(),
        ];
        let mut subscriptions = Vec::with_capacity(subjects.len());
        for subject in subjects {
            subscriptions.push(client.subscribe(subject).await.map_err(Error::Subscribe)?);
        }
        // Only once the server answered a request sent after them is this
        // node subscribed.
        self.confirm(&client).await.map_err(Error::Unconfirmed)?;
        let _ = self.client.set(client);
        let (running, tasks) = Running::new();
        let inbox = futures_util::stream::select_all(subscriptions);
        let hub_for_presence = hub.clone();
        let this = || Arc::clone(self);
        tokio::spawn(tasks.task(this().run_subscriber(hub, deliver, inbox, tasks.stopped())));
        tokio::spawn(tasks.task(this().run_publisher(pending, tasks.stopped())));
        tokio::spawn(tasks.task(this().run_presence(hub_for_presence, tasks.stopped())));
        self.hello();
        Ok(running)
    }

    /// The connection: reconnecting on the core's backoff, forever (or as
    /// [`NatsConfig::reconnect`] says), each reconnection counted and
    /// followed by a `hello` and this node's entries.
    async fn connect(self: &Arc<Self>) -> Result<async_nats::Client, Error> {
        let backoff = Arc::clone(&self.backoff);
        let delay = move |attempts: usize| {
            let mut backoff = lock(&backoff);
            let now = Instant::now();
            if attempts <= 1 {
                backoff.connected(now);
            }
            match backoff.disconnected(now) {
                BackoffStep::Retry { delay, .. } => delay,
                BackoffStep::GiveUp { attempts } => {
                    tracing::error!(attempts, "backplane: past the reconnect limit to nats");
                    Duration::from_secs(3600)
                }
            }
        };
        let node: Weak<Self> = Arc::downgrade(self);
        let events = move |event: async_nats::Event| {
            if let Some(node) = node.upgrade() {
                node.on_event(&event);
            }
            std::future::ready(())
        };
        let client = async_nats::ConnectOptions::new()
            .name(format!("storm node {}", self.node.id.tag()))
            .max_reconnects(None)
            .reconnect_delay_callback(delay)
            .event_callback(events)
            .connect(self.config.url.as_str())
            .await
            .map_err(Error::Connect)?;
        Ok(client)
    }

    fn on_event(&self, event: &async_nats::Event) {
        match event {
            async_nats::Event::Connected => {
                // The first connection too. On a reconnection async-nats
                // subscribed again already: say hello, so the others
                // publish their entries, and publish ours.
                bump(&self.node.counters.subscriptions, 1);
                self.up.send_replace(true);
                tracing::info!("backplane: reconnected to nats");
                self.hello();
            }
            async_nats::Event::Disconnected => {
                self.up.send_replace(false);
                tracing::warn!("backplane: disconnected from nats; reconnecting");
            }
            async_nats::Event::SlowConsumer(_) => {
                tracing::warn!("backplane: nats dropped messages for this slow node");
            }
            other => tracing::debug!(%other, "backplane: nats event"),
        }
    }

    /// Asks every node for its entries, and publishes this node's.
    fn hello(&self) {
        let subject = self.heartbeat_subject();
        for payload in encode_presence(PresenceOp::Hello, &[]) {
            self.enqueue_plain(subject.clone(), HEARTBEAT, payload);
        }
        self.refresh.notify_one();
    }

    /// Whether the connection is known to be down (not before `start`:
    /// until then messages wait in the queue).
    fn disconnected(&self) -> bool {
        self.client
            .get()
            .is_some_and(|client| client.connection_state() != State::Connected)
    }

    async fn run_subscriber(
        self: Arc<Self>,
        hub: Hub,
        deliver: Deliver,
        mut inbox: futures_util::stream::SelectAll<async_nats::Subscriber>,
        mut stopped: watch::Receiver<bool>,
    ) {
        let mut rooms = Subscriber::new(self.node.id);
        let heartbeat = self.heartbeat_subject();
        loop {
            tokio::select! {
                message = inbox.next() => match message {
                    Some(message) if message.subject.as_str() == heartbeat => {
                        self.receive_presence(message.payload);
                    }
                    Some(message) => self.receive(&hub, &deliver, &mut rooms, &message),
                    // The client was closed: nothing more will come.
                    None => return,
                },
                _ = stopped.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// One message on a room subject (decode, classify, deliver) or on a
    /// node subject ([`on_node_message`](Self::on_node_message)'s).
    fn receive(
        &self,
        hub: &Hub,
        deliver: &Deliver,
        rooms: &mut Subscriber,
        message: &async_nats::Message,
    ) {
        let subject = message.subject.as_str();
        let same = |name: &str, token: &str| room_token(name) == token;
        let Some(envelope) = self
            .node
            .receive(hub, subject, message.payload.clone(), same)
        else {
            return;
        };
        // As on Redis: an ordered publication goes to `Deliver` even with no
        // member here (the service may have sessions about to enter).
        if hub.member_count(envelope.name.as_str()) == 0 && !envelope.echo {
            return;
        }
        self.node.deliver(hub, deliver, rooms, &envelope);
    }

    /// A presence message of another node: its entries noted (for a TTL)
    /// or removed; a `hello` wakes the presence task.
    fn receive_presence(&self, wire: Bytes) {
        let Some(envelope) = self.node.node_envelope(wire) else {
            return;
        };
        if envelope.origin == self.node.id {
            return; // this node's own entries are in `mine`
        }
        let Message::Binary(payload) = &envelope.message else {
            bump(&self.node.counters.invalid, 1);
            return;
        };
        let heartbeat = match decode_presence(payload) {
            Ok(decoded) => decoded,
            Err(error) => {
                bump(&self.node.counters.invalid, 1);
                tracing::warn!(?error, "backplane: undecodable presence message");
                return;
            }
        };
        let now = Instant::now();
        match heartbeat {
            Heartbeat::Hello => self.refresh.notify_one(),
            Heartbeat::Stats(stats) => {
                let expires = now + self.config.presence_ttl;
                if !lock(&self.nodes).note(envelope.origin, stats, expires, now) {
                    bump(&self.node.counters.presence_dropped, 1);
                    tracing::warn!("backplane: node stats table full");
                }
            }
            Heartbeat::Absent(entries) => {
                let mut others = lock(&self.others);
                while others.pop_expired(now).is_some() {}
                for (room, member) in &entries {
                    others.leave(room, member);
                }
            }
            Heartbeat::Present(entries) => {
                let mut others = lock(&self.others);
                while others.pop_expired(now).is_some() {}
                for (room, member) in &entries {
                    if others.touch(room, member, now).is_err() {
                        bump(&self.node.counters.presence_dropped, 1);
                        tracing::warn!(room, "backplane: presence table full");
                    }
                }
            }
        }
    }

    async fn run_publisher(
        self: Arc<Self>,
        mut pending: mpsc::Receiver<Publication>,
        mut stopped: watch::Receiver<bool>,
    ) {
        let Some(client) = self.client.get().cloned() else {
            return;
        };
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            tokio::select! {
                taken = pending.recv_many(&mut batch, MAX_BATCH) => if taken == 0 {
                    return;
                },
                _ = stopped.wait_for(|stop| *stop) => return,
            }
            // Not retried when it fails: the server may have had them (the
            // confirmation's answer lost), and a second send would deliver
            // twice.
            let sent = if client.connection_state() == State::Connected {
                self.send_batch(&client, &batch).await
            } else {
                Err("disconnected from nats".to_owned())
            };
            self.node.sent(&batch, sent);
            batch.clear();
        }
    }

    /// Publishes `batch` in order, then waits (bounded, and no longer than
    /// the connection is up) for the server to confirm it has them all
    /// ([`confirm`](Self::confirm)).
    async fn send_batch(
        &self,
        client: &async_nats::Client,
        batch: &[Publication],
    ) -> Result<(), String> {
        let mut up = self.up.subscribe();
        for publication in batch {
            client
                .publish(publication.subject.clone(), publication.wire.clone())
                .await
                .map_err(|e| e.to_string())?;
        }
        tokio::select! {
            confirmed = self.confirm(client) => confirmed,
            _ = up.wait_for(|up| !*up) => Err("disconnected from nats before the server confirmed".to_owned()),
        }
    }

    /// Waits (at most [`CONFIRM_TIMEOUT`]) until the server has everything
    /// this node sent before: a request on a subject no one subscribes to
    /// (`PREFIX.sync.TAG`), which the server answers "no responders" after
    /// it handled what came before it on the connection. (async-nats's own
    /// `flush` only writes to the socket.)
    async fn confirm(&self, client: &async_nats::Client) -> Result<(), String> {
        let subject = format!(
            "{}.sync.{}",
            self.node.channels.prefix(),
            self.node.id.tag()
        );
        let request = client.request(subject, Bytes::new());
        match tokio::time::timeout(CONFIRM_TIMEOUT, request).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) if error.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("not confirmed within {CONFIRM_TIMEOUT:?}")),
        }
    }

    /// Publishes this node's entries every third of the TTL, and at once
    /// when woken ([`hello`](Self::hello), another node's hello); and this
    /// node's [`NodeStats`] (`hub`'s sessions and groups) at each of those
    /// turns and whenever its presence changed
    /// ([`present`](Self::present), [`absent`](Self::absent)). The
    /// periodic turn keeps its schedule however often changes wake it.
    async fn run_presence(self: Arc<Self>, hub: Hub, mut stopped: watch::Receiver<bool>) {
        let period = self.config.presence_ttl / 3;
        let subject = self.heartbeat_subject();
        let mut next_refresh = tokio::time::Instant::now();
        loop {
            let refresh = tokio::select! {
                () = tokio::time::sleep_until(next_refresh) => true,
                () = self.refresh.notified() => true,
                () = self.changed.notified() => false,
                _ = stopped.wait_for(|stop| *stop) => return,
            };
            if refresh {
                next_refresh = tokio::time::Instant::now() + period;
                let entries: Vec<(String, String)> = lock(&self.mine).iter().cloned().collect();
                if !entries.is_empty() {
                    for payload in encode_presence(PresenceOp::Present, &entries) {
                        self.enqueue_plain(subject.clone(), HEARTBEAT, payload);
                    }
                }
            }
            let stats = NodeStats {
                sessions: u64::try_from(hub.session_count()).unwrap_or(u64::MAX),
                rooms: u64::try_from(hub.group_count()).unwrap_or(u64::MAX),
            };
            let now = Instant::now();
            lock(&self.nodes).note(self.node.id, stats, now + self.config.presence_ttl, now);
            self.enqueue_plain(subject.clone(), HEARTBEAT, encode_stats(stats));
        }
    }

    /// Queues a presence or node message; a full queue drops it (counted,
    /// logged) and returns `false`.
    fn enqueue_plain(&self, subject: String, to: &str, payload: Bytes) -> bool {
        self.enqueue_node(subject, to, &Message::Binary(payload))
    }

    fn enqueue_node(&self, subject: String, to: &str, message: &Message) -> bool {
        self.node.send_to_node(to, message, |wire| Publication {
            subject,
            wire,
            ordered: None,
        })
    }

    /// Marks `member` present in `room`, across nodes, until this node
    /// says it is [absent](Self::absent) or stops announcing it (it stopped
    /// or died): then it disappears within [`NatsConfig::presence_ttl`].
    /// Never waits: the entry is this node's at once and published right
    /// after, in call order with `absent`.
    pub fn present(&self, room: &str, member: &str) {
        let entry = (room.to_owned(), member.to_owned());
        lock(&self.mine).insert(entry.clone());
        let payload = encode_presence(PresenceOp::Present, &[entry]);
        for payload in payload {
            self.enqueue_plain(self.heartbeat_subject(), HEARTBEAT, payload);
        }
        self.changed.notify_one();
    }

    /// Removes `member` from `room`'s presence, like [`present`](Self::present)
    /// (if the removal is lost, the entry expires within the TTL).
    pub fn absent(&self, room: &str, member: &str) {
        let entry = (room.to_owned(), member.to_owned());
        lock(&self.mine).remove(&entry);
        for payload in encode_presence(PresenceOp::Absent, &[entry]) {
            self.enqueue_plain(self.heartbeat_subject(), HEARTBEAT, payload);
        }
        self.changed.notify_one();
    }

    /// Every live node's [`NodeStats`] (this one's included), as each last
    /// published them: at each change of its presence and every third of
    /// [`NatsConfig::presence_ttl`]; a node that stopped or died drops out
    /// within the TTL. Sorted by node id. No I/O: the stats are kept here
    /// as the nodes announce them. What a service sums for figures across
    /// nodes.
    pub fn nodes(&self) -> Vec<(NodeId, NodeStats)> {
        lock(&self.nodes).live(Instant::now())
    }

    /// Who is present in `room`, on every node as last heard of, sorted.
    /// No I/O: the other nodes' entries are kept here as they announce them.
    pub fn members(&self, room: &str) -> Vec<String> {
        let mut members: BTreeSet<String> = lock(&self.mine)
            .iter()
            .filter(|(r, _)| r == room)
            .map(|(_, member)| member.clone())
            .collect();
        let mut others = lock(&self.others);
        let now = Instant::now();
        while others.pop_expired(now).is_some() {}
        members.extend(others.members(room).map(str::to_owned));
        members.into_iter().collect()
    }

    /// What a client of `room` that last saw `since` missed: on NATS core
    /// nothing is kept, so always [`Recovery::NoHistory`] with the reason
    /// [`NO_HISTORY`] (see the [module docs](self)).
    pub fn recover(&self, room: &str, since: Position) -> Recovery {
        tracing::debug!(room, %since, "backplane: recovery asked of nats, which keeps no history");
        Recovery::NoHistory {
            unrecoverable: Some(NO_HISTORY),
        }
    }

    /// Publishes `message` to `room` on every node, this one included:
    /// every node, this one too, delivers it as it comes back from NATS,
    /// through the [`Deliver`] of [`start_with`](Self::start_with), so all
    /// nodes see one order per publisher. Never waits. What cannot reach
    /// NATS (a full queue, a connection known to be down, a batch the
    /// server did not confirm) is counted, logged, and handed to the
    /// [`on_unpublished`](Self::on_unpublished) handler; in the rare case
    /// of a batch the server had but could not confirm, a message may then
    /// come back too.
    pub fn publish_ordered(&self, room: &str, message: &Message) {
        self.enqueue(room, message, true);
    }

    /// Sends `message` to the node tagged `node` (see [`NodeTag`]), to its
    /// [`on_node_message`](Self::on_node_message) handler. Never waits; a
    /// full queue drops it (counted, logged) and returns `false`.
    pub fn to_node(&self, node: NodeTag, message: &Message) -> bool {
        self.enqueue_node(self.node.channels.node(node), &node.to_string(), message)
    }

    /// Sends `message` to every other node's
    /// [`on_node_message`](Self::on_node_message) handler, as
    /// [`to_node`](Self::to_node) does.
    pub fn to_all_nodes(&self, message: &Message) -> bool {
        self.enqueue_node(self.node.channels.all_nodes(), "all", message)
    }

    /// Where messages to this node go. Set it before [`start`](Self::start);
    /// only the first call counts (`false` for the others). Without it they
    /// are counted as [`invalid`](Stats::invalid) and dropped.
    pub fn on_node_message(&self, handler: OnNodeMessage) -> bool {
        self.node.on_node_message(handler)
    }

    /// Where ordered messages that cannot be published go (see
    /// [`OnUnpublished`]). Set it before [`start`](Self::start); only the
    /// first call counts (`false` for the others).
    pub fn on_unpublished(&self, handler: OnUnpublished) -> bool {
        self.node.on_unpublished(handler)
    }

    /// Encodes once, queues for the publisher; counts and logs what cannot
    /// go, and hands the ordered ones that cannot to the unpublished
    /// handler.
    fn enqueue(&self, room: &str, message: &Message, echo: bool) {
        let connected = !self.disconnected();
        self.node
            .publish_room(room, message, echo, connected, |wire| Publication {
                subject: self.node.channels.room(&room_token(room)),
                wire,
                ordered: echo.then(|| (room.to_owned(), message.clone())),
            });
    }
}

impl Backplane for NatsBackplane {
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
        // What both adapters check is tested in `node`; here NATS's own
        // (the URL, the presence bound), and that a shared check comes out
        // as a NATS `Error`.
        for url in ["redis://x", "nats://[::1"] {
            let config = NatsConfig {
                url: url.into(),
                ..NatsConfig::default()
            };
            assert!(matches!(NatsBackplane::new(config), Err(Error::Url(_))));
        }
        let presence = NatsConfig {
            max_presence: 0,
            ..NatsConfig::default()
        };
        assert!(matches!(
            NatsBackplane::new(presence),
            Err(Error::Config(ConfigError::Zero("presence bound")))
        ));
        let prefix = NatsConfig {
            prefix: "a.b".into(),
            ..NatsConfig::default()
        };
        assert!(matches!(
            NatsBackplane::new(prefix),
            Err(Error::Config(ConfigError::Prefix(_)))
        ));
        assert!(NatsBackplane::new(NatsConfig::default()).is_ok());
    }

    #[test]
    fn every_room_name_is_one_subject_token_of_its_own() {
        assert_eq!(room_token("rust-lang_2"), "rust-lang_2");
        assert_eq!(room_token("a.b"), "=612e62");
        assert_eq!(room_token("two words"), "=74776f20776f726473");
        assert_eq!(room_token("*"), "=2a");
        assert_eq!(room_token(""), "=");
        assert_eq!(room_token("é"), "=c3a9");
        let names = ["=61", "a", "A", "=", "", " ", "a b", "a.b"];
        let tokens: BTreeSet<String> = names.iter().map(|n| room_token(n)).collect();
        assert_eq!(tokens.len(), names.len(), "{tokens:?}");
        for token in &tokens {
            assert!(!token.is_empty());
            assert!(!token.contains(['.', '*', '>', ' ', '\t']), "{token}");
        }
    }

    #[test]
    fn presence_messages_read_back_and_stay_bounded() {
        let entries: Vec<(String, String)> = (0..5000)
            .map(|i| {
                (
                    format!("room{}", i % 7),
                    format!("{{\"id\":\"member-{i}\"}}"),
                )
            })
            .collect();
        let chunks = encode_presence(PresenceOp::Present, &entries);
        assert!(chunks.len() > 1, "split: {}", chunks.len());
        let mut back = Vec::new();
        for chunk in &chunks {
            assert!(chunk.len() <= MAX_HEARTBEAT, "{}", chunk.len());
            let Ok(Heartbeat::Present(entries)) = decode_presence(chunk) else {
                panic!("not a present message");
            };
            back.extend(entries);
        }
        assert_eq!(back, entries);
        let hello = encode_presence(PresenceOp::Hello, &[]);
        assert_eq!(hello.len(), 1);
        assert_eq!(decode_presence(&hello[0]), Ok(Heartbeat::Hello));
        let stats = NodeStats {
            sessions: 12,
            rooms: 3,
        };
        assert_eq!(
            decode_presence(&encode_stats(stats)),
            Ok(Heartbeat::Stats(stats))
        );
    }

    #[test]
    fn presence_decoding_is_total() {
        assert_eq!(decode_presence(b""), Err(HeartbeatError::Empty));
        assert_eq!(decode_presence(b"\x07"), Err(HeartbeatError::Op(7)));
        assert_eq!(decode_presence(b"\x00\x00"), Err(HeartbeatError::Truncated));
        assert_eq!(
            decode_presence(b"\x00\xff\xff\xff\xffab"),
            Err(HeartbeatError::Truncated)
        );
        assert_eq!(
            decode_presence(b"\x00\x00\x00\x00\x01a"),
            Err(HeartbeatError::Truncated),
            "a room without its member"
        );
        assert_eq!(
            decode_presence(b"\x01\x00\x00\x00\x01\xff\x00\x00\x00\x00"),
            Err(HeartbeatError::Utf8)
        );
        // Every prefix of a valid message decodes or fails, never panics.
        let wire = &encode_presence(PresenceOp::Absent, &[("r".into(), "m".into())])[0];
        for end in 0..=wire.len() {
            let _ = decode_presence(&wire[..end]);
        }
        assert_eq!(
            decode_presence(wire),
            Ok(Heartbeat::Absent(vec![("r".into(), "m".into())]))
        );
        assert_eq!(decode_presence(b"\x03"), Err(HeartbeatError::Stats));
        assert_eq!(decode_presence(b"\x031 x"), Err(HeartbeatError::Stats));
        assert_eq!(decode_presence(b"\x03\xff"), Err(HeartbeatError::Utf8));
        let stats = encode_stats(NodeStats {
            sessions: u64::MAX,
            rooms: 0,
        });
        for end in 0..=stats.len() {
            let _ = decode_presence(&stats[..end]);
        }
    }

    #[test]
    fn node_stats_expire_and_stay_bounded() {
        let start = Instant::now();
        let ttl = Duration::from_secs(30);
        let mut table = NodeTable::default();
        let stats = |sessions| NodeStats { sessions, rooms: 1 };
        let (a, b) = (NodeId::from_u128(1), NodeId::from_u128(2));
        assert!(table.note(a, stats(1), start + ttl, start));
        assert!(table.note(b, stats(2), start + 2 * ttl, start));
        // Heard of again: the newer stats replace the older.
        assert!(table.note(a, stats(5), start + ttl, start));
        let mut both = vec![(a, stats(5)), (b, stats(2))];
        both.sort_unstable_by_key(|(node, _)| *node);
        assert_eq!(table.live(start), both);
        // A node not heard of within its TTL is gone.
        assert_eq!(table.live(start + ttl), [(b, stats(2))]);
        // Full: a new node is not listed, a known one still updates, and
        // once entries expire there is room again.
        let mut table = NodeTable::default();
        for bits in 10..10 + MAX_NODES {
            let node = NodeId::from_u128(u128::try_from(bits).unwrap());
            assert!(table.note(node, stats(1), start + ttl, start));
        }
        assert!(!table.note(a, stats(1), start + ttl, start));
        let known = *table.nodes.keys().next().unwrap();
        assert!(table.note(known, stats(9), start + 2 * ttl, start));
        assert!(table.note(a, stats(1), start + 3 * ttl, start + ttl));
        assert_eq!(table.live(start + ttl).len(), 2);
    }

    #[test]
    fn recovery_is_never_silent() {
        let backplane = NatsBackplane::new(NatsConfig::default()).unwrap();
        let since = Position::new(storm_proto::backplane::Epoch::new(1).unwrap(), 3);
        assert_eq!(
            backplane.recover("room", since),
            Recovery::NoHistory {
                unrecoverable: Some(NO_HISTORY)
            }
        );
        assert!(NO_HISTORY.contains("NATS backplane keeps no history"));
    }

    #[test]
    fn own_entries_are_listed_at_once() {
        let backplane = NatsBackplane::new(NatsConfig::default()).unwrap();
        backplane.present("", "b");
        backplane.present("", "a");
        backplane.present("x", "c");
        assert_eq!(backplane.members(""), ["a", "b"]);
        backplane.absent("", "a");
        assert_eq!(backplane.members(""), ["b"]);
    }
}
