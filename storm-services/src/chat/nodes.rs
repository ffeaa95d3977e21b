//! The chat across nodes (`--backplane redis://…` or `nats://…`): room
//! events go through the backplane's [`publish_ordered`], so every node
//! delivers a room's events in the backplane's one order, each with its
//! position (`epoch`, `offset`; Redis only) added to its JSON once per
//! node; a `join` runs [`recover`] (or reads the room's position) before
//! the session enters the room's group. NATS keeps no history: a join
//! there has nothing to recover, and one that brings a position is told
//! `unrecoverable` ([`NO_HISTORY`]).
//!
//! ```text
//! join R (since?) ─ pending[R] holds R ─ task: subscribed(R) ─ recover(R, since) → top ─ publish `joined`
//!                       │                                └ finish: missed events, `position`, buffered past top, enter group
//! Deliver(R, pos, m) ── add pos to m ─ buffer for pending sessions of R ─ deliver to R's group
//! ```
//!
//! A node receives a room's events only while it holds the room (a
//! [`RoomHold`] of a user in it, or of a pending join). The recovery starts
//! once the room's subscription is confirmed ([`RoomHold::subscribed`]),
//! so every event past the position it reads arrives live and is
//! buffered: none falls between the two. The pending buffer and the group
//! delivery run under the chat's fan-out lock (`Chat::fanout`), as does
//! entering the group once `finish` has sent everything buffered (the
//! entry is then `ready`; if a delivery holds the lock, that delivery has
//! it enter, before its next event or after its fan-out, so the joining
//! session never waits for it): an event is either buffered before the
//! session enters the group or delivered through it after, never both,
//! never neither, and a room's events reach each member in the order they
//! were delivered. The registry lock is held only for the buffering, not
//! for the group's fan-out, so connects, commands and joins never wait
//! for a fan-out. An event buffered at or before `top` came in the
//! recovery and is skipped. The chat's hub has no
//! backplane (its groups do not tell it who is in a room): the pending
//! entry's hold passes to the user when the session enters the group, and
//! goes when the user leaves the room, so the room stays subscribed while
//! this node has a member in it.
//!
//! The backplane and the tasks here run on the node's runtime: tokio's or
//! smol's for a chat on tokio or smol, smol's global executor (threads of
//! its own, started by smol) for a chat on std's threads, so that one needs
//! no tokio and the same async code serves all three. [`Nodes`] holds the
//! runtime as what it uses of it (spawning, the timer, starting the
//! backplane), so [`Chat`] is one type on every runtime.
//!
//! [`publish_ordered`]: RedisBackplane::publish_ordered
//! [`recover`]: RedisBackplane::recover
//! [`NO_HISTORY`]: storm_backplane::nats::NO_HISTORY

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use storm_async::Runtime;
use storm_backplane::nats::{self, NatsBackplane, NatsConfig};
use storm_backplane::redis::{self, Claim, RedisBackplane, RedisConfig, RoomHold};
use storm_backplane::{Deliver, OnNodeMessage, OnUnpublished, Recovery};
use storm_host::hub::Hub;
use storm_host::session::Session;
use storm_proto::Message;
use storm_proto::backplane::{Epoch, NodeStats, NodeTag, Position, Ready, SessionAddr};

use super::{Chat, ChatId, Out, UserInfo, encode};

/// The presence "room" that holds the chat's user directory: every user of
/// every node, one entry each (the JSON of its [`UserInfo`], id `NODE-N`).
/// Empty, a name no chat room can have.
const DIRECTORY: &str = "";

/// What one chat node asks another, or every other one: a node message
/// (see [`RedisBackplane::to_node`]) holding this, as JSON.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(super) enum Ask {
    /// Send `event` (a JSON text: a whisper) to the node's session `to`.
    Send { to: u64, event: String },
    /// Close the node's session `to` with 1008 "kicked".
    Kick { to: u64 },
    /// Send `event` (the admin's `broadcast`) to every session of the node.
    Broadcast { event: String },
}

/// How long a listing waits for the directory, and a join for its room's
/// subscription.
const DIRECTORY_WAIT: Duration = Duration::from_secs(5);

/// Events a session that is joining buffers at most while its recovery
/// runs; beyond it, it is told recovery is impossible.
pub(super) const MAX_PENDING: usize = 4096;

/// A task of the node's runtime.
type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Starting the Redis backplane on the node's runtime.
type Start = fn(
    Arc<RedisBackplane>,
    Hub,
    Deliver,
) -> Pin<Box<dyn Future<Output = Result<redis::Running, redis::Error>> + Send>>;

/// Why a rename is refused when Redis cannot say whether the name is
/// free on the other nodes (rather than risk two users of one name).
pub(super) const NAMES_UNCHECKED: &str = "names cannot be checked across nodes while Redis is down";

/// The backplane a chat runs across nodes on
/// ([`ChatConfig::backplane`](super::ChatConfig::backplane); `--backplane`
/// picks it by the URL's scheme).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum BackplaneConfig {
    /// Redis: room events with positions, history and recovery, node
    /// stats; on every runtime.
    Redis(RedisConfig),
    /// NATS core pub/sub: room events without positions, no history (a
    /// join with a position is told `unrecoverable`), node stats with
    /// presence, names unique per node only; on every runtime (off tokio,
    /// `async-nats` runs on a one-thread tokio runtime of its own).
    Nats(NatsConfig),
}

/// The backplane of a chat node: one arm per adapter, each method of
/// [`Nodes`] picks the arm's call.
enum Plane {
    /// Holds each room it delivers ([`RoomHold`]); started on the node's
    /// runtime by `start` (its `start_with`).
    Redis {
        backplane: Arc<RedisBackplane>,
        start: Start,
    },
    /// Subscribed to every room; started on `tokio`: the node's runtime
    /// when that is tokio, else a one-thread tokio runtime of its own
    /// (`async-nats` needs tokio), whose thread ends when `_own_thread`
    /// is dropped.
    Nats {
        backplane: Arc<NatsBackplane>,
        tokio: tokio::runtime::Handle,
        _own_thread: Option<tokio::sync::oneshot::Sender<()>>,
    },
}

/// The tasks of a started backplane; they end when it is dropped.
#[derive(Debug)]
pub(super) enum Running {
    Redis(#[allow(dead_code)] redis::Running),
    Nats(#[allow(dead_code)] nats::Running),
}

/// The backplane of a chat node and the runtime it and the chat's tasks
/// across nodes (recoveries, listings, whispers) run on.
pub(super) struct Nodes {
    backplane: Plane,
    /// The runtime's `spawn`, from any thread (the console's too).
    spawn: Arc<dyn Fn(Task) + Send + Sync>,
    /// The runtime's timer.
    sleep_until: fn(Instant) -> Task,
}

/// A session between its `join` and the end of its recovery.
pub(super) struct Pending {
    pub(super) room: String,
    /// Which join this is (a session may join again before the first ends).
    pub(super) ticket: u64,
    /// Events of `room` delivered meanwhile, with their positions.
    pub(super) buffer: Vec<(Option<Position>, Message)>,
    /// More than [`MAX_PENDING`] came.
    pub(super) overflow: bool,
    /// Once the recovery ended: the room's position as of it (`None` when
    /// it could not be read); buffered events at or before it came in the
    /// recovery.
    pub(super) top: Option<Option<Position>>,
    /// Keeps this node subscribed to `room`; passes to the user once the
    /// session is in the room's group (`None` in unit tests).
    pub(super) hold: Option<RoomHold>,
    /// The session has every event of `room` delivered so far and enters
    /// the room's group at the next chance: before the next delivery
    /// (`Chat::enter_ready`).
    pub(super) ready: bool,
}

impl Pending {
    /// A session starting to join `room`.
    pub(super) fn new(room: &str, ticket: u64) -> Self {
        Self {
            room: room.to_owned(),
            ticket,
            buffer: Vec::new(),
            overflow: false,
            top: None,
            hold: None,
            ready: false,
        }
    }
}

/// A one-thread tokio runtime for the NATS backplane of a node that does
/// not run on tokio (`async-nats` needs tokio): its handle, and what stops
/// it. The thread ends, and the runtime with its tasks is dropped there,
/// when the sender is dropped.
fn tokio_thread() -> io::Result<(tokio::runtime::Handle, tokio::sync::oneshot::Sender<()>)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = runtime.handle().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("storm-nats".to_owned())
        .spawn(move || {
            runtime.block_on(async {
                let _ = stopped.await;
            });
        })?;
    Ok((handle, stop))
}

impl Nodes {
    /// The backplane of `config`, on runtime `R` (tokio's or smol's; a
    /// chat on std's threads takes smol's). Called inside the tokio
    /// runtime for tokio, outside any tokio runtime for smol (as the chat's
    /// `run`s do); its [`start`](Self::start) is awaited on `R`. NATS
    /// outside tokio gets a tokio thread of its own ([`tokio_thread`]).
    pub(super) fn new<R: Runtime>(config: &BackplaneConfig) -> io::Result<Self> {
        // tokio spawns only on its own threads, through its handle from
        // others: made inside tokio (`R` is tokio), the handle; smol
        // spawns from anywhere.
        let tokio = tokio::runtime::Handle::try_current().ok();
        let backplane = match config {
            BackplaneConfig::Redis(config) => Plane::Redis {
                backplane: Arc::new(RedisBackplane::new(config.clone()).map_err(io::Error::other)?),
                start: |backplane, hub, deliver| {
                    Box::pin(async move { backplane.start_with::<R>(hub, deliver).await })
                },
            },
            BackplaneConfig::Nats(config) => {
                let backplane =
                    Arc::new(NatsBackplane::new(config.clone()).map_err(io::Error::other)?);
                match &tokio {
                    Some(tokio) => Plane::Nats {
                        backplane,
                        tokio: tokio.clone(),
                        _own_thread: None,
                    },
                    None => {
                        let (tokio, stop) = tokio_thread()?;
                        Plane::Nats {
                            backplane,
                            tokio,
                            _own_thread: Some(stop),
                        }
                    }
                }
            }
        };
        let spawn: Arc<dyn Fn(Task) + Send + Sync> = match tokio {
            Some(tokio) => Arc::new(move |task| drop(tokio.spawn(task))),
            None => Arc::new(|task| R::spawn(task)),
        };
        Ok(Self {
            backplane,
            spawn,
            sleep_until: |deadline| Box::pin(R::sleep_until(deadline)),
        })
    }

    /// Subscribes and starts delivering room events into `hub` through
    /// `chat`; returns once subscribed.
    pub(super) async fn start(&self, hub: Hub, chat: Weak<Chat>) -> io::Result<Running> {
        let unpublished = chat.clone();
        let on_unpublished: OnUnpublished = Arc::new(move |room: &str, message: &Message| {
            if let Some(chat) = unpublished.upgrade() {
                chat.unpublished(room, message);
            }
        });
        let asked = chat.clone();
        let on_node_message: OnNodeMessage = Arc::new(move |hub: &Hub, message: &Message| {
            let ask = match message {
                Message::Text(text) => serde_json::from_str::<Ask>(text.as_str()).ok(),
                _ => None,
            };
            match (ask, asked.upgrade()) {
                (Some(ask), Some(chat)) => chat.on_ask(hub, ask),
                (None, _) => tracing::warn!("chat: another node asked something unknown"),
                (_, None) => {}
            }
        });
        let deliver: Deliver = Arc::new(
            move |hub: &Hub, room: &str, position: Option<Position>, message: &Message| {
                if let Some(chat) = chat.upgrade() {
                    chat.deliver(hub, room, position, message);
                }
            },
        );
        match &self.backplane {
            Plane::Redis { backplane, start } => {
                backplane.on_unpublished(on_unpublished);
                backplane.on_node_message(on_node_message);
                let running = start(Arc::clone(backplane), hub, deliver).await;
                running.map(Running::Redis).map_err(io::Error::other)
            }
            Plane::Nats {
                backplane, tokio, ..
            } => {
                backplane.on_unpublished(on_unpublished);
                backplane.on_node_message(on_node_message);
                // Started on tokio whatever awaits it (it spawns there).
                let backplane = Arc::clone(backplane);
                let running = tokio
                    .spawn(async move { backplane.start_with(hub, deliver).await })
                    .await
                    .map_err(io::Error::other)?;
                running.map(Running::Nats).map_err(io::Error::other)
            }
        }
    }

    /// This node's tag, in every session id it shows.
    pub(super) fn tag(&self) -> NodeTag {
        match &self.backplane {
            Plane::Redis { backplane, .. } => backplane.node().tag(),
            Plane::Nats { backplane, .. } => backplane.node().tag(),
        }
    }

    /// Runs `task` on the backplane's runtime.
    pub(super) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        (self.spawn)(Box::pin(task));
    }

    /// Runs `task` on the backplane's runtime and waits for it on the
    /// calling thread (not one of the runtime's: the console's); `None`
    /// when the runtime dropped it (the node is stopping).
    pub(super) fn block_on<T: Send + 'static>(
        &self,
        task: impl Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        let (done, outcome) = std::sync::mpsc::sync_channel(1);
        self.spawn(async move {
            let _ = done.send(task.await);
        });
        outcome.recv().ok()
    }

    /// Tells the directory that a user of this node was `before` and is
    /// now `after` (`None`: not there). Never waits: the backplane's
    /// presence task writes it, in call order, and refreshes this node's
    /// entries while it runs; a killed node's entries expire within
    /// the presence TTL ([`RedisConfig::presence_ttl`],
    /// [`NatsConfig::presence_ttl`]).
    pub(super) fn relist(&self, before: Option<&UserInfo>, after: Option<&UserInfo>) {
        if let Some(entry) = before.and_then(entry) {
            match &self.backplane {
                Plane::Redis { backplane, .. } => backplane.absent(DIRECTORY, &entry),
                Plane::Nats { backplane, .. } => backplane.absent(DIRECTORY, &entry),
            }
        }
        if let Some(entry) = after.and_then(entry) {
            match &self.backplane {
                Plane::Redis { backplane, .. } => backplane.present(DIRECTORY, &entry),
                Plane::Nats { backplane, .. } => backplane.present(DIRECTORY, &entry),
            }
        }
    }

    /// The users of the other nodes, as the directory holds them (waiting
    /// at most [`DIRECTORY_WAIT`]).
    pub(super) async fn others(&self) -> Result<Vec<UserInfo>, String> {
        let members = match &self.backplane {
            Plane::Redis { backplane, .. } => within(
                self.sleep_until,
                DIRECTORY_WAIT,
                backplane.members(DIRECTORY),
            )
            .await
            .ok_or_else(|| format!("no answer within {DIRECTORY_WAIT:?}"))?
            .map_err(|e| e.to_string())?,
            // Kept on this node as the others announce them: no waiting.
            Plane::Nats { backplane, .. } => backplane.members(DIRECTORY),
        };
        let mine = self.tag();
        Ok(members
            .iter()
            .filter_map(|member| listed(member))
            .filter(|user| !matches!(user.id, ChatId::Node(addr) if addr.node == mine))
            .collect())
    }

    /// The other live nodes' stats, as each last reported them (with its
    /// presence: see [`RedisBackplane::nodes`] and [`NatsBackplane::nodes`]),
    /// waiting at most [`DIRECTORY_WAIT`] for Redis.
    pub(super) async fn other_nodes(&self) -> Result<Vec<(NodeTag, NodeStats)>, String> {
        let (nodes, mine) = match &self.backplane {
            Plane::Redis { backplane, .. } => (
                within(self.sleep_until, DIRECTORY_WAIT, backplane.nodes())
                    .await
                    .ok_or_else(|| format!("no answer within {DIRECTORY_WAIT:?}"))?
                    .map_err(|e| e.to_string())?,
                backplane.node(),
            ),
            // Kept on this node as the others announce them: no waiting.
            Plane::Nats { backplane, .. } => (backplane.nodes(), backplane.node()),
        };
        Ok(nodes
            .into_iter()
            .filter(|(node, _)| *node != mine)
            .map(|(node, stats)| (node.tag(), stats))
            .collect())
    }

    /// The sessions of the other live nodes, summed (see
    /// [`other_nodes`](Self::other_nodes)).
    pub(super) async fn other_sessions(&self) -> Result<u64, String> {
        let others = self.other_nodes().await?;
        Ok(others.iter().map(|(_, stats)| stats.sessions).sum())
    }

    /// Whether user names are unique across nodes: with Redis, each one a
    /// [claim](RedisBackplane::claim); with NATS (core pub/sub, nothing
    /// that can arbitrate between nodes) unique per node only.
    pub(super) fn unique_names(&self) -> bool {
        matches!(self.backplane, Plane::Redis { .. })
    }

    /// Claims `name` for this node's session `holder` across nodes, in
    /// place of `replacing` (its claimed name, released in the same step
    /// once `name` is its), waiting at most [`DIRECTORY_WAIT`]: `true`
    /// when it has it, `false` when a session of any node has it; why it
    /// cannot be known ([`NAMES_UNCHECKED`]: Redis down or slow). Nothing
    /// to claim with NATS: `true`.
    pub(super) async fn claim(
        &self,
        name: &str,
        holder: SessionAddr,
        replacing: Option<&str>,
    ) -> Result<bool, String> {
        let Plane::Redis { backplane, .. } = &self.backplane else {
            return Ok(true);
        };
        let holder = holder.to_string();
        let claim = backplane.claim(name, &holder, replacing);
        match within(self.sleep_until, DIRECTORY_WAIT, claim).await {
            Some(Ok(Claim::Claimed)) => Ok(true),
            Some(Ok(_)) => Ok(false),
            Some(Err(error)) => Err(format!("{NAMES_UNCHECKED} ({error})")),
            None => Err(format!(
                "{NAMES_UNCHECKED} (no answer within {DIRECTORY_WAIT:?})"
            )),
        }
    }

    /// Releases the claim of `holder` (a session that left, or whose
    /// rename ended elsewhere) to `name`, without waiting: a task does it;
    /// if Redis cannot be told, the claim expires within the presence TTL
    /// (this node no longer refreshes it).
    pub(super) fn release(&self, name: &str, holder: SessionAddr) {
        let Plane::Redis { backplane, .. } = &self.backplane else {
            return;
        };
        let (backplane, name) = (Arc::clone(backplane), name.to_owned());
        self.spawn(async move {
            if let Err(error) = backplane.release(&name, &holder.to_string()).await {
                tracing::warn!(name, %error, "chat: a name was not released; it expires with the presence TTL");
            }
        });
    }

    /// Asks the node tagged `node` for `ask`; `false` if it cannot go
    /// (the backplane's queue is full).
    pub(super) fn ask(&self, node: NodeTag, ask: &Ask) -> bool {
        match &self.backplane {
            Plane::Redis { backplane, .. } => backplane.to_node(node, &ask_message(ask)),
            Plane::Nats { backplane, .. } => backplane.to_node(node, &ask_message(ask)),
        }
    }

    /// Asks every other node for `ask`, like [`ask`](Self::ask).
    pub(super) fn ask_all(&self, ask: &Ask) -> bool {
        match &self.backplane {
            Plane::Redis { backplane, .. } => backplane.to_all_nodes(&ask_message(ask)),
            Plane::Nats { backplane, .. } => backplane.to_all_nodes(&ask_message(ask)),
        }
    }

    /// Sends `message` to `room` on every node, this one included.
    pub(super) fn publish(&self, room: &str, message: &Message) {
        match &self.backplane {
            Plane::Redis { backplane, .. } => backplane.publish_ordered(room, message),
            Plane::Nats { backplane, .. } => backplane.publish_ordered(room, message),
        }
    }

    /// A session starting to join `room`: holds the room on this node
    /// (subscribed to it; with NATS every room is, and nothing is held).
    pub(super) fn pending(&self, room: &str, ticket: u64) -> Pending {
        Pending {
            hold: match &self.backplane {
                Plane::Redis { backplane, .. } => Some(backplane.hold(room)),
                Plane::Nats { .. } => None,
            },
            ..Pending::new(room, ticket)
        }
    }

    /// Waits until the room `pending` joins is subscribed on this node
    /// ([`RoomHold::subscribed`]); with NATS at once (every room is,
    /// confirmed before the node started serving).
    pub(super) fn subscribed(
        &self,
        pending: &Pending,
    ) -> Pin<Box<dyn Future<Output = Ready> + Send + 'static>> {
        match &pending.hold {
            Some(hold) => Box::pin(hold.subscribed()),
            None => Box::pin(std::future::ready(Ready::Subscribed)),
        }
    }

    /// Runs the recovery of a join (`since` the client's last position, if
    /// it gave one) once `room`'s subscription is confirmed (`subscribed`,
    /// from [`RoomHold::subscribed`]), then publishes `joined` and hands the
    /// outcome to [`Chat::finish_join`].
    #[allow(clippy::too_many_arguments)]
    pub(super) fn sync(
        &self,
        chat: Arc<Chat>,
        session: Session,
        room: String,
        since: Option<Position>,
        ticket: u64,
        joined: Message,
        subscribed: impl Future<Output = Ready> + Send + 'static,
    ) {
        let backplane = match &self.backplane {
            Plane::Redis { backplane, .. } => Arc::clone(backplane),
            Plane::Nats { backplane, .. } => {
                // Every room is subscribed from the start, and there is
                // nothing to read: no history, no position.
                let outcome = match since {
                    Some(since) => backplane.recover(&room, since),
                    None => Recovery::NoHistory {
                        unrecoverable: None,
                    },
                };
                let backplane = Arc::clone(backplane);
                self.spawn(async move {
                    backplane.publish_ordered(&room, &joined);
                    chat.finish_join(&session, &room, ticket, Ok(outcome));
                });
                return;
            }
        };
        let sleep_until = self.sleep_until;
        self.spawn(async move {
            // The gap-free contract: the position is read only once every
            // later event is sure to arrive live (and be buffered).
            let outcome = match within(sleep_until, DIRECTORY_WAIT, subscribed).await {
                Some(Ready::Subscribed) => match since {
                    Some(since) => backplane.recover(&room, since).await,
                    None => backplane
                        .position(&room)
                        .await
                        .map(|top| Recovery::Recovered {
                            messages: Vec::new(),
                            top,
                        }),
                }
                .map_err(|e| e.to_string()),
                Some(Ready::Down) => Err("not subscribed to the room".to_owned()),
                // Left or gone meanwhile: `finish_join` finds no entry.
                Some(Ready::Unheld) => Err("left".to_owned()),
                None => Err(format!("not subscribed within {DIRECTORY_WAIT:?}")),
            };
            // After the room's position was read: `joined` lands past it.
            backplane.publish_ordered(&room, &joined);
            chat.finish_join(&session, &room, ticket, outcome);
        });
    }
}

/// `future`'s output, or `None` once `limit` has passed on the runtime's
/// timer `sleep_until` (a [`Nodes`]'s).
async fn within<T>(
    sleep_until: fn(Instant) -> Task,
    limit: Duration,
    future: impl Future<Output = T>,
) -> Option<T> {
    let timer = sleep_until(Instant::now() + limit);
    smol::future::or(async { Some(future.await) }, async {
        timer.await;
        None
    })
    .await
}

fn ask_message(ask: &Ask) -> Message {
    Message::from(serde_json::to_string(ask).unwrap_or_default())
}

/// A user's directory entry: its JSON (fields in declaration order, so
/// the same user always gives the same entry); `None` for an id that is
/// not `NODE-N`.
fn entry(user: &UserInfo) -> Option<String> {
    matches!(user.id, ChatId::Node(_))
        .then(|| serde_json::to_string(user).ok())
        .flatten()
}

/// The user a directory entry names; `None` for what no node writes.
fn listed(entry: &str) -> Option<UserInfo> {
    #[derive(serde::Deserialize)]
    struct Entry {
        id: String,
        name: String,
        room: Option<String>,
    }
    let Entry { id, name, room } = serde_json::from_str(entry).ok()?;
    let addr: SessionAddr = id.parse().ok()?;
    Some(UserInfo {
        id: ChatId::Node(addr),
        name,
        room,
    })
}

/// `message` (a JSON object) with `"epoch"` and `"offset"` of `position`
/// added at its end, its own fields as they were and in their order (the
/// chat writes `type` first, across nodes as on one); as it is without a
/// position or if it is not a JSON object.
pub(super) fn positioned(message: &Message, position: Option<Position>) -> Message {
    let (Some(position), Message::Text(text)) = (position, message) else {
        return message.clone();
    };
    let text = text.as_str();
    let Ok(mut object) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text)
    else {
        return message.clone();
    };
    // A valid object ends with its closing brace (and maybe whitespace).
    let end = text.rfind('}').unwrap_or(text.len());
    if object.contains_key("epoch") || object.contains_key("offset") || end == text.len() {
        // Not one the chat writes: the fields replaced, the order lost.
        object.insert("epoch".to_owned(), position.epoch.to_string().into());
        object.insert("offset".to_owned(), position.offset.into());
        return Message::from(serde_json::Value::Object(object).to_string());
    }
    let comma = if object.is_empty() { "" } else { "," };
    Message::from(format!(
        r#"{}{comma}"epoch":"{}","offset":{}}}"#,
        &text[..end],
        position.epoch,
        position.offset
    ))
}

/// The position a `join` carries: both `epoch` (16 hex digits, as
/// delivered) and `offset`, or neither.
pub(super) fn since(epoch: Option<&str>, offset: Option<u64>) -> Result<Option<Position>, String> {
    match (epoch, offset) {
        (None, None) => Ok(None),
        (Some(epoch), Some(offset)) => u64::from_str_radix(epoch, 16)
            .ok()
            .and_then(Epoch::new)
            .map(|epoch| Some(Position::new(epoch, offset)))
            .ok_or_else(|| format!("bad epoch {epoch:?}: 16 hex digits, as delivered")),
        _ => Err("a join carries both epoch and offset, or neither".to_owned()),
    }
}

/// What a session whose recovery ended gets first, in order: the missed
/// events, `unrecoverable` if it cannot have them, `position`, then the
/// events buffered past the room's position ([`buffered`]). Records the
/// position in `pending`.
pub(super) fn finish_messages(
    room: &str,
    pending: &mut Pending,
    outcome: Result<Recovery, String>,
) -> Vec<Message> {
    let mut out = Vec::new();
    let top = match outcome {
        Ok(Recovery::Recovered { messages, top }) => {
            out.extend(messages.iter().map(|(at, m)| positioned(m, Some(*at))));
            Some(top)
        }
        Ok(Recovery::Impossible { reason, top }) => {
            out.push(encode(&Out::Unrecoverable {
                room,
                reason: &reason.to_string(),
            }));
            Some(top)
        }
        Ok(Recovery::NoHistory { unrecoverable }) => {
            if let Some(reason) = unrecoverable {
                out.push(encode(&Out::Unrecoverable { room, reason }));
            }
            None
        }
        Err(error) => {
            out.push(encode(&Out::Unrecoverable {
                room,
                reason: &format!("the backplane is unreachable: {error}"),
            }));
            None
        }
    };
    pending.top = Some(top);
    if let Some(top) = top {
        out.push(encode(&Out::Position {
            room,
            epoch: &top.epoch.to_string(),
            offset: top.offset,
        }));
    }
    out.extend(buffered(room, pending));
    out
}

/// The events `pending` buffered since its recovery ended (or since the
/// last call), past the room's position; `unrecoverable` first if more
/// than [`MAX_PENDING`] came. Empty when nothing more came: the session may
/// then enter the room's group.
pub(super) fn buffered(room: &str, pending: &mut Pending) -> Vec<Message> {
    let top = pending.top.flatten();
    let mut out = Vec::new();
    if std::mem::take(&mut pending.overflow) {
        out.push(encode(&Out::Unrecoverable {
            room,
            reason: "too many messages came while recovering",
        }));
    }
    let past_top = |at: &Option<Position>| match (at, top) {
        (Some(at), Some(top)) => at.epoch != top.epoch || at.offset > top.offset,
        _ => true,
    };
    out.extend(
        std::mem::take(&mut pending.buffer)
            .into_iter()
            .filter(|(at, _)| past_top(at))
            .map(|(_, m)| m),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: u64) -> Position {
        Position::new(Epoch::new(0xab).unwrap(), offset)
    }

    #[test]
    fn positions_are_added_to_json_objects_only() {
        let m = Message::from(r#"{"type":"chat","text":"hi"}"#);
        let Message::Text(text) = positioned(&m, Some(at(7))) else {
            panic!("text")
        };
        let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
        assert_eq!(v["epoch"], "00000000000000ab");
        assert_eq!(v["offset"], 7);
        assert_eq!(v["text"], "hi");
        assert_eq!(positioned(&m, None), m);
        let odd = Message::from("not json");
        assert_eq!(positioned(&odd, Some(at(1))), odd);
        for odd in ["[1]", "\"x\"", "{", r#"{"a":1}}"#] {
            let odd = Message::from(odd);
            assert_eq!(positioned(&odd, Some(at(1))), odd);
        }
    }

    #[test]
    fn positions_keep_the_event_s_fields_in_order_type_first() {
        // What one node sends, plus the position: clients (and `xnode`)
        // that read `type` first read it first across nodes too.
        let joined =
            Message::from(r#"{"type":"joined","room":"lobby","id":"000000ab-7","name":"n"}"#);
        assert_eq!(
            positioned(&joined, Some(at(7))),
            Message::from(
                r#"{"type":"joined","room":"lobby","id":"000000ab-7","name":"n","epoch":"00000000000000ab","offset":7}"#
            )
        );
        let spaced = Message::from("{ } \n");
        assert_eq!(
            positioned(&spaced, Some(at(2))),
            Message::from(r#"{ "epoch":"00000000000000ab","offset":2}"#)
        );
        // One that has the fields already (no chat event does): replaced.
        let taken = Message::from(r#"{"offset":1,"type":"x"}"#);
        let Message::Text(text) = positioned(&taken, Some(at(3))) else {
            panic!("text")
        };
        let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
        assert_eq!(
            (v["offset"].as_u64(), v["type"].as_str()),
            (Some(3), Some("x"))
        );
    }

    #[test]
    fn a_join_position_is_both_or_neither() {
        assert_eq!(since(None, None), Ok(None));
        assert_eq!(since(Some("00000000000000ab"), Some(3)), Ok(Some(at(3))));
        assert!(since(Some("ab"), None).is_err());
        assert!(since(None, Some(3)).is_err());
        assert!(since(Some("zz"), Some(3)).is_err());
        assert!(since(Some("0"), Some(3)).is_err());
    }

    #[test]
    fn directory_entries_read_back_as_the_user_they_list() {
        let user = UserInfo {
            id: ChatId::Node(SessionAddr::new(NodeTag::from_u32(0xab), 7)),
            name: "alice".to_owned(),
            room: Some("rust".to_owned()),
        };
        let written = entry(&user).unwrap();
        assert_eq!(
            written,
            r#"{"id":"000000ab-7","name":"alice","room":"rust"}"#
        );
        assert_eq!(listed(&written), Some(user));
        let local = UserInfo {
            id: ChatId::Local(7),
            name: "bob".to_owned(),
            room: None,
        };
        assert_eq!(entry(&local), None);
        for bad in [
            "",
            "{}",
            r#"{"id":7,"name":"x","room":null}"#,
            r#"{"id":"7","name":"x","room":null}"#,
        ] {
            assert_eq!(listed(bad), None, "{bad}");
        }
    }

    #[test]
    fn asks_read_back() {
        for ask in [
            Ask::Send {
                to: 3,
                event: "{}".to_owned(),
            },
            Ask::Kick { to: 4 },
            Ask::Broadcast {
                event: "x".to_owned(),
            },
        ] {
            let Message::Text(text) = ask_message(&ask) else {
                panic!("text")
            };
            assert_eq!(serde_json::from_str::<Ask>(text.as_str()).unwrap(), ask);
        }
        assert_eq!(
            ask_message(&Ask::Kick { to: 4 }),
            Message::from(r#"{"op":"kick","to":4}"#)
        );
    }

    #[test]
    fn without_history_a_position_is_told_unrecoverable_and_nothing_is_skipped() {
        let mut pending = Pending::new("r", 0);
        pending.buffer = vec![(None, Message::from("b1"))];
        let outcome = Ok(Recovery::NoHistory {
            unrecoverable: Some(storm_backplane::nats::NO_HISTORY),
        });
        let out = finish_messages("r", &mut pending, outcome);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(
            matches!(&out[0], Message::Text(t) if t.as_str().contains("unrecoverable") && t.as_str().contains("keeps no history"))
        );
        assert_eq!(out[1], Message::from("b1"), "no position: nothing skipped");
        // A fresh join: no notice, no position, the buffered events.
        let mut fresh = Pending::new("r", 1);
        fresh.buffer = vec![(None, Message::from("b2"))];
        let outcome = Ok(Recovery::NoHistory {
            unrecoverable: None,
        });
        assert_eq!(
            finish_messages("r", &mut fresh, outcome),
            [Message::from("b2")]
        );
    }

    #[test]
    fn finishing_skips_what_the_recovery_had() {
        let mut pending = Pending::new("r", 0);
        pending.buffer = vec![
            (Some(at(2)), Message::from("b2")),
            (Some(at(3)), Message::from("b3")),
        ];
        let outcome = Ok(Recovery::Recovered {
            messages: vec![(at(2), Message::from("m2"))],
            top: at(2),
        });
        let out = finish_messages("r", &mut pending, outcome);
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(out[0], Message::from("m2"));
        assert!(matches!(&out[1], Message::Text(t) if t.as_str().contains(r#""type":"position""#)));
        assert_eq!(out[2], Message::from("b3"));
        // Later: what came meanwhile, past the position still.
        pending.buffer = vec![
            (Some(at(2)), Message::from("late2")),
            (Some(at(4)), Message::from("b4")),
        ];
        assert_eq!(buffered("r", &mut pending), [Message::from("b4")]);
        assert!(buffered("r", &mut pending).is_empty(), "then nothing");
        pending.overflow = true;
        let told = buffered("r", &mut pending);
        assert!(matches!(&told[..], [Message::Text(t)] if t.as_str().contains("unrecoverable")));
    }
}
