//! The Redis backplane: room broadcasts through pub/sub, each room's
//! history in a Redis stream with an epoch, presence in a sorted set whose
//! scores are expiry times on Redis's own clock.
//!
//! One async backplane for every runtime: its tasks are spawned and timed
//! through the storm-async [`Runtime`] its caller names when it
//! [starts](RedisBackplane::start) it (`storm_tokio::Tokio` or
//! `storm_smol::Smol`; a program on storm-std's threads starts it on
//! `Smol`, whose global executor runs it on a thread of its own, so no
//! tokio is needed there), and its Redis connections run where they are
//! made: the `redis` crate, built with its tokio and its smol support,
//! drives a connection on tokio when it is made inside a tokio runtime and
//! on smol's executor otherwise. The rest (`tokio::sync`'s channels,
//! `select!`) runs on any executor.
//!
//! ```text
//! node A: hub.broadcast_group(room, m) ─ local members get m
//!           └ RedisBackplane::publish ─ encode once ─ bounded queue ─ publisher task
//!                 └ EVALSHA publish script, once per run of a room's messages taken together:
//!                   offset += n, then per message XADD history, PUBLISH room channel
//! node B: subscription connection (RESP3; SUBSCRIBE PREFIX.room.R while R is held)
//!           └ its reading task hands each push over ─ decode ─ Subscriber::handle
//!                 └ not a duplicate, not its own (unless an echo): deliver (hub.deliver_group)
//! ```
//!
//! One publish per room message, whatever the number of sessions or nodes;
//! one decode per node that holds the room. A node subscribes to a room's
//! channel while the room is *held* there (a local member of its hub group,
//! or a [`RoomHold`]: a session joining it), and to no other room's: Redis
//! sends a room's messages only to the nodes that have members in it
//! ([`storm_proto::backplane::Subscriptions`] decides when to subscribe and
//! unsubscribe; the subscriber task runs its commands, and the connection's
//! own task delivers what it reads: `Subscription`). The script makes
//! the offset, the append and the publish one step, so every node sees a
//! room's offsets in order and a missing offset is a real gap. When Redis
//! is unreachable, local traffic goes on; the publisher and the subscriber
//! reconnect with the core's [`Backoff`]; what could not be published is
//! counted ([`Stats::publish_failed`]) and logged, and subscribers see
//! the gap in the offsets when messages flow again.
//!
//! # Keys
//!
//! Under the [`Channels`](storm_proto::backplane::Channels) of
//! [`RedisConfig::prefix`]: `PREFIX.meta.ROOM` (a
//! hash: `e` the epoch as 8 bytes, `o` the last offset),
//! `PREFIX.history.ROOM` (a stream of at least the last
//! [`history_len`](RedisConfig::history_len) entries, trimmed by whole
//! stream nodes: up to `stream-node-max-entries` more; id `0-OFFSET`, field
//! `d` the positioned envelope), `PREFIX.presence.ROOM` (a sorted set:
//! member → expiry in Redis milliseconds), `PREFIX.stats.nodes` (a hash:
//! node id → `EXPIRY SESSIONS ROOMS`, each node's [`NodeStats`] as its
//! presence task last wrote them), `PREFIX.claim.NAME` (a string: the
//! holder of a name unique across nodes, with the presence TTL as its
//! expiry: [`RedisBackplane::claim`]).
//!
//! A room whose meta hash is gone (Redis restarted empty, the keys expired)
//! gets a new random epoch at its next append or read: positions of the old
//! epoch are then [`Unrecoverable::EpochChanged`](storm_proto::backplane::Unrecoverable::EpochChanged).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind};
use storm_async::Runtime;
use storm_host::hub::{Backplane, Hub};
use storm_proto::Message;
use storm_proto::backplane::{
    Envelope, Epoch, NodeId, NodeStats, NodeTag, Position, Ready, Subscriber, SubscriptionCommand,
    Subscriptions, recover, recovery_range,
};
use storm_proto::reconnect::{Backoff, BackoffConfig, BackoffStep};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::node::{Node, Queued, bump, defaults, deliver_to_hub, lock, settings_of};
use crate::stages::{Stages, Stamp, now_ns};

/// Appends a run of one room's messages and publishes each, in one step.
///
/// KEYS: meta, history. ARGV: epoch candidate (8 bytes), history length
/// (0: no history, no position), channel, TTL in ms (0: none), then the
/// envelopes in order (at least one). Returns the last one's offset (0
/// without history); the run's offsets are the ones before it, in order.
///
/// Every room message runs through it, so it is kept to what Redis must
/// do: one `HGET` of the epoch and one `HINCRBY` per run (a `HSET` only
/// when the room starts an epoch), and per message its offset's 8 bytes
/// by `struct.pack` (a loop of string concatenations cost a quarter of the
/// script), `XADD … MAXLEN ~` (the history keeps at least `maxlen`
/// messages and is trimmed by whole stream nodes, up to
/// `stream-node-max-entries`, 100 by default, more, which Redis does at a
/// fraction of an exact trim's cost; recovery judges by what the stream
/// holds, so a few more kept messages only widen what can be recovered)
/// and one `PUBLISH`. A run of a room's messages that the publisher took
/// together is one call, not one per message: `EVALSHA`'s own cost and
/// the offset's read and increment are paid once per run (BENCHMARKS.md,
/// session 14: Redis's time per message of a burst of ten, 12.7–16 µs
/// one call each, 4–7 µs in one call).
///
/// Public for measuring: `redis_hop` (benches/e2e) runs it with no storm
/// around it, the floor of a room message's hop through Redis.
pub const PUBLISH_SCRIPT: &str = r"
local maxlen = tonumber(ARGV[2])
if maxlen == 0 then
  for i = 5, #ARGV do
    redis.call('PUBLISH', ARGV[3], ARGV[i])
  end
  return 0
end
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'e', epoch)
  redis.call('DEL', KEYS[2])
end
local last = redis.call('HINCRBY', KEYS[1], 'o', #ARGV - 4)
local offset = last - (#ARGV - 4)
for i = 5, #ARGV do
  offset = offset + 1
  local envelope = string.sub(ARGV[i], 1, 21) .. epoch .. struct.pack('>I8', offset) .. string.sub(ARGV[i], 38)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, string.format('0-%d', offset), 'd', envelope)
  redis.call('PUBLISH', ARGV[3], envelope)
end
if ARGV[4] ~= '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
return last
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

/// Writes a node's stats, alive until Redis's now + TTL.
///
/// KEYS: node stats. ARGV: TTL in ms, node, stats (`SESSIONS ROOMS`).
const REPORT_SCRIPT: &str = r"
local time = redis.call('TIME')
local expires = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000) + tonumber(ARGV[1])
redis.call('HSET', KEYS[1], ARGV[2], expires .. ' ' .. ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
";

/// Every live node's stats, dropping the expired ones.
///
/// KEYS: node stats. Returns `{node, stats, node, stats, …}`.
const NODES_SCRIPT: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #all, 2 do
  local expires, stats = string.match(all[i + 1], '^(%d+) (.*)$')
  if expires and tonumber(expires) > now then
    live[#live + 1] = all[i]
    live[#live + 1] = stats
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return live
";

/// Claims `KEYS[1]` for the holder `ARGV[1]` unless another holder has
/// it, alive for `ARGV[2]` ms; once it is the holder's, releases `KEYS[2]`
/// (if given) when the holder has it: a rename, in one step.
///
/// KEYS: claim, [claim replaced]. ARGV: holder, TTL in ms. Returns who
/// holds `KEYS[1]` now.
const CLAIM_SCRIPT: &str = r"
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then
  return held
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if KEYS[2] and redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
return ARGV[1]
";

/// Releases a claim if its holder has it.
///
/// KEYS: claim. ARGV: holder. Returns 1 if it was released.
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Keeps claims alive for `ARGV[1]` ms, taking back those Redis lost (it
/// restarted empty); a claim another holder took meanwhile stays theirs.
///
/// KEYS: claims. ARGV: TTL in ms, the holder of each claim in order.
/// Returns the (1-based) indexes of the claims another holder has.
const RENEW_SCRIPT: &str = r"
local lost = {}
for i = 1, #KEYS do
  local held = redis.call('GET', KEYS[i])
  if held == false or held == ARGV[i + 1] then
    redis.call('SET', KEYS[i], ARGV[i + 1], 'PX', ARGV[1])
  else
    lost[#lost + 1] = i
  end
end
return lost
";

/// Room messages one pipeline to Redis carries at most.
const MAX_BATCH: usize = 256;

/// Pipelines the publisher has sent and not yet seen answered, at most:
/// the next goes out while earlier ones wait for their replies, so a
/// message that comes during a round trip does not wait for it.
const MAX_IN_FLIGHT: usize = 4;

/// Subscription commands one round trip carries at most.
const MAX_SUBSCRIPTION_BATCH: usize = 256;

/// A pipeline of the publisher's on its way: its batch, and whether Redis
/// ran it.
type InFlight =
    Pin<Box<dyn Future<Output = (Vec<Publication>, Result<(), redis::RedisError>)> + Send>>;

/// Now, for [`Stages`], when they are kept (0 when not).
fn stamp(stages: Option<&Arc<Stages>>) -> u64 {
    stages.map_or(0, |_| now_ns())
}

/// Envelope bytes one call of the publish script carries at most (a
/// single larger message goes alone): Redis reads a command whole before
/// it runs it, into a bounded query buffer (`client-query-buffer-limit`,
/// 1 GiB by default), so a run of large messages is split over calls.
const MAX_RUN_BYTES: usize = 1 << 20;

/// `batch` in the commands the publisher sends it as, in order: each run
/// of consecutive room messages of one room (up to [`MAX_RUN_BYTES`]) is
/// one call of the publish script, each node message a `PUBLISH` of its
/// own.
fn runs(batch: &[Publication]) -> impl Iterator<Item = &[Publication]> {
    let mut rest = batch;
    std::iter::from_fn(move || {
        let mut len = 1;
        if let Publication::Room { room, wire, .. } = rest.first()? {
            let mut bytes = wire.len();
            for next in &rest[1..] {
                match next {
                    Publication::Room {
                        room: next_room,
                        wire,
                        ..
                    } if next_room == room && bytes + wire.len() <= MAX_RUN_BYTES => {
                        bytes += wire.len();
                        len += 1;
                    }
                    _ => break,
                }
            }
        }
        let (run, tail) = rest.split_at(len);
        rest = tail;
        Some(run)
    })
}

/// The stages of a pipeline's room messages, `replies` its reply (one per
/// command of [`runs`], in order: a run's last offset), `taken` when the
/// publisher took them.
fn published(stages: &Stages, batch: &[Publication], replies: &[u64], taken: u64) {
    let replied = now_ns();
    for (run, &last) in runs(batch).zip(replies) {
        let first = (last + 1).saturating_sub(run.len() as u64);
        for (i, publication) in (0..).zip(run) {
            if let Publication::Room { room, queued, .. } = publication {
                stages.push(Stamp::Published {
                    room: room.clone(),
                    // 0 for all without history.
                    offset: if last == 0 { 0 } else { first + i },
                    queued: *queued,
                    taken,
                    replied,
                });
            }
        }
    }
}

/// The subscription connection: this node's channels and the rooms held
/// here, on RESP3, so that Redis's messages on them come as pushes among
/// the connection's replies. The `redis` crate's task that reads the
/// connection hands each push to a callback as it decodes it, and the
/// callback delivers a room message (or a node message) there and then:
/// no channel and no second task between the socket and the hub. (A
/// RESP2 pub/sub connection of the `redis` crate queues each message for
/// the task reading its stream: one more wake-up and turn in the
/// executor's queue per batch read; BENCHMARKS.md, session 12: the
/// subscriber's hop.) Needs Redis 6 or later.
///
/// The publisher sends its pipelines on this connection too (RESP3 lets a
/// subscribed connection run any command): a node has one Redis socket for
/// its room traffic, so its own messages come back in the read that brings
/// the script's reply, and other nodes' messages on the socket and the
/// connection task it already watches (BENCHMARKS.md, session 13: the
/// cross-node tail). Once dropped (the subscriber gave it up), what still
/// comes on it is not delivered, even while the publisher's clone of the
/// connection keeps it open: the next subscription connection is the one
/// that delivers.
struct Subscription {
    connection: MultiplexedConnection,
    /// Notified once the connection is lost (its task ends).
    lost: Arc<Notify>,
    /// Set when this is dropped: its pushes are no longer delivered.
    retired: Arc<AtomicBool>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.retired.store(true, Ordering::Release);
    }
}

/// What a pipelined subscription request does to its channel.
#[derive(Debug, Clone, Copy)]
enum Change {
    Subscribe,
    Unsubscribe,
}

/// Sends `requests` on `sink`, each a command of its own, all of them in
/// order before any reply is awaited, then waits for every reply: one round
/// trip. The replies in the order of the requests.
///
/// The `redis` crate's connection queues a request for its connection
/// task when its future is first polled and resolves it with its reply;
/// so the futures are polled in order, each once, before any is awaited
/// again.
async fn pipelined(
    connection: &MultiplexedConnection,
    requests: Vec<(Change, String)>,
) -> Vec<redis::RedisResult<()>> {
    type Reply = Pin<Box<dyn Future<Output = redis::RedisResult<()>> + Send>>;
    let mut replies: Vec<Reply> = requests
        .into_iter()
        .map(|(change, channel)| {
            let mut connection = connection.clone();
            Box::pin(async move {
                match change {
                    Change::Subscribe => connection.subscribe(channel).await,
                    Change::Unsubscribe => connection.unsubscribe(channel).await,
                }
            }) as Reply
        })
        .collect();
    let mut done: Vec<Option<redis::RedisResult<()>>> = replies.iter().map(|_| None).collect();
    // Every reply before `first` is in.
    let mut first = 0;
    std::future::poll_fn(|cx| {
        for (reply, slot) in replies.iter_mut().zip(done.iter_mut()).skip(first) {
            if slot.is_none() {
                if let Poll::Ready(outcome) = reply.as_mut().poll(cx) {
                    *slot = Some(outcome);
                }
            }
        }
        while done.get(first).is_some_and(Option::is_some) {
            first += 1;
        }
        if first == done.len() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    done.into_iter().flatten().collect()
}

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
static REPORT: LazyLock<Script> = LazyLock::new(|| Script::new(REPORT_SCRIPT));
static NODES: LazyLock<Script> = LazyLock::new(|| Script::new(NODES_SCRIPT));
static CLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(CLAIM_SCRIPT));
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE_SCRIPT));
static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(RENEW_SCRIPT));

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

/// Loads the publish script on `connection`'s server, so that the
/// publisher calls it by SHA alone, pipelined (a restarted Redis breaks the
/// connection, and the publisher loads it again on the next).
async fn load_publish_script(connection: &MultiplexedConnection) -> redis::RedisResult<()> {
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(PUBLISH.body)
        .query_async(&mut connection.clone())
        .await?;
    if sha != PUBLISH.sha {
        tracing::warn!(
            sha,
            expected = PUBLISH.sha,
            "backplane: redis hashes scripts differently"
        );
    }
    Ok(())
}

/// Settings of a [`RedisBackplane`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RedisConfig {
    /// The server, as a `redis://HOST:PORT` URL.
    ///
    /// Default: `redis://127.0.0.1:6379`.
    pub url: String,
    /// The channel and key prefix
    /// ([`Channels`](storm_proto::backplane::Channels)): nodes of one service share
    /// it, other services sharing the server use another.
    ///
    /// Default: `storm`.
    pub prefix: String,
    /// Messages each room's history keeps at least (`XADD … MAXLEN ~`:
    /// Redis trims whole stream nodes, so up to `stream-node-max-entries`,
    /// 100 by default, more); 0 = no history: messages carry no position
    /// and nothing can be recovered.
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
    /// third of this): a dead node's members disappear within it, and its
    /// [claims](RedisBackplane::claim) with them.
    ///
    /// Default: 30 s.
    pub presence_ttl: Duration,
    /// Largest payload accepted from another node; larger envelopes are
    /// counted as [`invalid`](Stats::invalid) and dropped.
    ///
    /// Default: 16 MiB.
    pub max_payload: usize,
    /// Room messages waiting for the publisher; beyond it (Redis slow or
    /// down) a broadcast is not published to other nodes, and counted in
    /// [`publish_dropped`](Stats::publish_dropped).
    ///
    /// Default: 4096.
    pub publish_queue: usize,
    /// Delays between reconnect attempts of the publisher and the
    /// subscriber.
    ///
    /// Default: [`BackoffConfig::default`] (exponential from 100 ms, capped
    /// at 30 s, full jitter, unlimited).
    pub reconnect: BackoffConfig,
    /// A file to append each room message's stage times to, for measuring
    /// where its latency goes ([`crate::stages`]); `None`: none kept.
    ///
    /// Default: `None` (`storm chat` sets it from `--backplane-stages` or
    /// `STORM_BACKPLANE_STAGES`; the library reads no environment).
    pub stages: Option<PathBuf>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
            prefix: defaults::PREFIX.to_owned(),
            history_len: 1000,
            history_ttl: None,
            max_recover: 1000,
            presence_ttl: defaults::PRESENCE_TTL,
            max_payload: defaults::MAX_PAYLOAD,
            publish_queue: defaults::PUBLISH_QUEUE,
            reconnect: BackoffConfig::default(),
            stages: None,
        }
    }
}

/// What went wrong talking to Redis, or setting up.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// [`RedisConfig::prefix`] is not a valid prefix, or
    /// [`RedisConfig::reconnect`] not a valid backoff, or
    /// [`RedisConfig::publish_queue`] or [`RedisConfig::presence_ttl`] is zero.
    Config(ConfigError),
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
            Self::Config(e) => e.fmt(f),
            Self::Redis(e) => write!(f, "redis: {e}"),
            Self::AlreadyStarted => f.write_str("the backplane was started already"),
            Self::Reply(what) => write!(f, "unexpected reply from redis: {what}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Config(e) => Some(e),
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
        /// When it was queued ([`Stages`]; 0 when they are not kept).
        queued: u64,
    },
    /// A message to one node or every node: published on `channel` as it
    /// is.
    Node { channel: String, wire: Bytes },
}

impl Queued for Publication {
    fn ordered(&self) -> Option<(&str, &Message)> {
        match self {
            Self::Room {
                room,
                ordered: Some(message),
                ..
            } => Some((room, message)),
            _ => None,
        }
    }
}

pub use crate::{ConfigError, Deliver, OnNodeMessage, OnUnpublished, Recovery, Running, Stats};

/// What [`RedisBackplane::claim`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Claim {
    /// The name is the holder's (now, or it was already).
    Claimed,
    /// Another holder has the name.
    Taken {
        /// Who.
        holder: String,
    },
}

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
/// // On tokio; `start::<storm_smol::Smol>` on smol (and on std's threads).
/// let running = backplane.start::<storm_tokio::Tokio>(hub.clone()).await?; // subscribed when it returns
/// // … serve sessions on `hub`; group broadcasts now reach every node …
/// running.stop().await;
/// # Ok(())
/// # }
/// ```
pub struct RedisBackplane {
    /// What every backplane of a node has (its id, channels, queue,
    /// handlers, counters).
    node: Node<Publication>,
    config: RedisConfig,
    client: redis::Client,
    /// `client` on RESP3, for the subscription connection (see
    /// [`Subscription`]).
    subscriber_client: redis::Client,
    /// The command connection of `recover`, `position` and presence; `None`
    /// until first used or after it failed.
    commands: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// The rooms held here, whose channels the subscriber task subscribes
    /// to, and the joins waiting for a confirmation.
    subscriptions: Mutex<Subscriptions<oneshot::Sender<Ready>>>,
    /// Wakes the subscriber task when `subscriptions` has commands.
    subscriptions_changed: Notify,
    /// This node's presence entries, and what Redis has yet to hear of.
    presence: Mutex<PresenceState>,
    /// Wakes the presence task when `presence` changed.
    presence_changed: Notify,
    /// The subscription connection while it is up (`None` while the
    /// subscriber task reconnects): the publisher sends its pipelines on
    /// it too (see [`Subscription`]).
    connection: watch::Sender<Option<MultiplexedConnection>>,
    /// The publisher has a working connection (as far as it knows): while
    /// it has not, ordered messages fail at once instead of waiting.
    publisher_up: AtomicBool,
    /// The reconnect schedule each task starts from (a copy each).
    backoff: Backoff,
    /// Where each room message's stage times go, when measured
    /// ([`crate::stages`]).
    stages: Option<Arc<Stages>>,
}

impl fmt::Debug for RedisBackplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackplane")
            .field("node", &self.node.id)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// One presence entry: a room and a member.
type Entry = (String, String);

/// One claim: a name and its holder.
type Claimed = (String, String);

/// This node's presence (and claims) as the presence task keeps Redis
/// told of it.
#[derive(Debug, Default)]
struct PresenceState {
    /// Every entry of this node: written again every third of the TTL.
    entries: BTreeSet<Entry>,
    /// Every claim of this node's holders: kept alive every third of the
    /// TTL.
    claims: BTreeSet<Claimed>,
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
        let (node, backoff) = Node::new(&settings_of!(config)).map_err(Error::Config)?;
        let client = redis::Client::open(config.url.as_str())?;
        let mut resp3 = client.get_connection_info().clone();
        resp3.redis.protocol = ProtocolVersion::RESP3;
        let subscriber_client = redis::Client::open(resp3)?;
        let stages = config.stages.as_deref().and_then(Stages::start);
        Ok(Self {
            node,
            config,
            client,
            subscriber_client,
            commands: tokio::sync::Mutex::new(None),
            subscriptions: Mutex::new(Subscriptions::new()),
            subscriptions_changed: Notify::new(),
            presence: Mutex::new(PresenceState::default()),
            presence_changed: Notify::new(),
            connection: watch::Sender::new(None),
            publisher_up: AtomicBool::new(true),
            backoff,
            stages,
        })
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.node.id
    }

    /// The settings.
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.node.stats()
    }

    /// Connects and subscribes to this node's channels and those of the
    /// rooms held already, then runs, on runtime `R` (awaited inside it:
    /// its connections are `R`'s), the publisher, the subscriber (which
    /// delivers other nodes' room messages into `hub`'s groups, subscribing
    /// to each room while `hub`'s group has a local member) and the
    /// presence task. Returns once subscribed. Its other async methods
    /// ([`recover`](Self::recover), [`members`](Self::members),
    /// [`nodes`](Self::nodes), …) are awaited on `R` too.
    ///
    /// # Errors
    ///
    /// [`Error::Redis`] if the first connection or subscription fails;
    /// [`Error::AlreadyStarted`] on a second call.
    pub async fn start<R: Runtime>(self: &Arc<Self>, hub: Hub) -> Result<Running, Error> {
        self.start_with::<R>(hub, deliver_to_hub()).await
    }

    /// [`start`](Self::start), handing each room message to deliver to
    /// `deliver` instead of straight to `hub`'s group: where a service
    /// turns the message and its position into what its sessions get (the
    /// offset in a chat message, say), once per node.
    ///
    /// # Errors
    ///
    /// As for [`start`](Self::start).
    pub async fn start_with<R: Runtime>(
        self: &Arc<Self>,
        hub: Hub,
        deliver: Deliver,
    ) -> Result<Running, Error> {
        let pending = self.node.take_pending().ok_or(Error::AlreadyStarted)?;
        let rooms = Arc::new(Mutex::new(Subscriber::new(self.node.id)));
        let subscription = match self.subscribe(&hub, &deliver, &rooms).await {
            Ok(subscription) => subscription,
            Err(error) => {
                self.change_subscriptions(Subscriptions::disconnected);
                return Err(error.into());
            }
        };
        let publisher = subscription.connection.clone();
        if let Err(error) = load_publish_script(&publisher).await {
            self.connection.send_replace(None);
            return Err(error.into());
        }
        let (running, tasks) = Running::new();
        let this = || Arc::clone(self);
        R::spawn(tasks.task(this().run_subscriber::<R>(
            hub.clone(),
            deliver,
            rooms,
            subscription,
            tasks.stopped(),
        )));
        R::spawn(tasks.task(this().run_publisher(pending, publisher, tasks.stopped())));
        R::spawn(tasks.task(this().run_presence::<R>(hub, tasks.stopped())));
        Ok(running)
    }

    /// A new subscription connection: this node's channels, and every
    /// room held (the rooms' subscriptions confirmed when it returns),
    /// lent to the publisher (`self.connection`). What it receives is
    /// handed on as it is read, with `rooms` tracking the rooms' sequences
    /// (see [`Subscription`]).
    async fn subscribe(
        self: &Arc<Self>,
        hub: &Hub,
        deliver: &Deliver,
        rooms: &Arc<Mutex<Subscriber>>,
    ) -> Result<Subscription, redis::RedisError> {
        let lost = Arc::new(Notify::new());
        let retired = Arc::new(AtomicBool::new(false));
        let on_push = {
            let (this, hub, deliver) = (Arc::clone(self), hub.clone(), Arc::clone(deliver));
            let (rooms, lost) = (Arc::clone(rooms), Arc::clone(&lost));
            let retired = Arc::clone(&retired);
            move |push: PushInfo| -> Result<(), std::convert::Infallible> {
                match push.kind {
                    PushKind::Disconnection => lost.notify_one(),
                    PushKind::Message if !retired.load(Ordering::Acquire) => {
                        if let Some(message) = redis::Msg::from_push_info(push) {
                            this.receive(&hub, &deliver, &mut lock(&rooms), &message);
                        }
                    }
                    // Confirmations of (un)subscribe commands: their
                    // replies, which the commands' futures get.
                    _ => {}
                }
                Ok(())
            }
        };
        let config = AsyncConnectionConfig::new().set_push_sender(on_push);
        let connection = self
            .subscriber_client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        self.change_subscriptions(Subscriptions::connected);
        let own = [
            self.node.channels.node(self.node.id.tag()),
            self.node.channels.all_nodes(),
        ];
        self.run_subscription_commands(&connection, &own, None)
            .await?;
        bump(&self.node.counters.subscriptions, 1);
        // Lent to the publisher from now on (it loads its script there).
        self.connection.send_replace(Some(connection.clone()));
        Ok(Subscription {
            connection,
            lost,
            retired,
        })
    }

    /// Runs `change` on the room subscriptions, then wakes the joins it
    /// released and the subscriber task (for the commands it made).
    fn change_subscriptions<T>(
        &self,
        change: impl FnOnce(&mut Subscriptions<oneshot::Sender<Ready>>) -> T,
    ) -> T {
        let mut subscriptions = lock(&self.subscriptions);
        let out = change(&mut subscriptions);
        while let Some((waiter, ready)) = subscriptions.poll_released() {
            let _ = waiter.send(ready);
        }
        drop(subscriptions);
        self.subscriptions_changed.notify_one();
        out
    }

    /// Subscribes `sink` to `own` (this node's channels, on a new
    /// connection), then runs the room subscriptions' commands on it, in
    /// order, reporting each confirmed subscribe. Pipelined: up to
    /// [`MAX_SUBSCRIPTION_BATCH`] commands are written before any reply is
    /// awaited, so a resubscription to every held room takes one round trip
    /// (one per that many rooms), not one per room. Every channel still goes
    /// in a command of its own: the `redis` crate matches one reply to one
    /// command. A room's subscription is confirmed once Redis answered its
    /// own command (what it publishes on the channel from then on comes
    /// after that answer on the connection). A room unsubscribed is
    /// forgotten by `rooms` (the running subscriber's sequences), so that
    /// its next subscription starts a fresh sequence instead of reporting
    /// what it did not receive as missed.
    async fn run_subscription_commands(
        &self,
        connection: &MultiplexedConnection,
        own: &[String],
        rooms: Option<&Mutex<Subscriber>>,
    ) -> Result<(), redis::RedisError> {
        let mut own = own;
        loop {
            let commands: Vec<SubscriptionCommand> = {
                let mut subscriptions = lock(&self.subscriptions);
                std::iter::from_fn(|| subscriptions.poll_command())
                    .take(MAX_SUBSCRIPTION_BATCH)
                    .collect()
            };
            if commands.is_empty() && own.is_empty() {
                return Ok(());
            }
            let room = |room: &String| self.node.channels.room(room);
            let requests = own
                .iter()
                .map(|channel| (Change::Subscribe, channel.clone()))
                .chain(commands.iter().map(|command| match command {
                    SubscriptionCommand::Subscribe { room: r, .. } => (Change::Subscribe, room(r)),
                    SubscriptionCommand::Unsubscribe { room: r } => (Change::Unsubscribe, room(r)),
                }))
                .collect();
            let mut replies = pipelined(connection, requests).await.into_iter();
            for reply in replies.by_ref().take(own.len()) {
                reply?;
            }
            own = &[];
            // In order, up to the first failure (the connection broke:
            // nothing after it ran).
            let mut confirmed = Vec::new();
            let mut failed = Ok(());
            for (command, reply) in commands.into_iter().zip(replies) {
                if let Err(error) = reply {
                    failed = Err(error);
                    break;
                }
                match command {
                    SubscriptionCommand::Subscribe { room, id } => confirmed.push((room, id)),
                    SubscriptionCommand::Unsubscribe { room } => {
                        if let Some(rooms) = rooms {
                            lock(rooms).forget(&room);
                        }
                    }
                }
            }
            if !confirmed.is_empty() {
                self.change_subscriptions(|subscriptions| {
                    for (room, id) in &confirmed {
                        subscriptions.confirmed(room, *id);
                    }
                });
            }
            failed?;
        }
    }

    /// One more holder of `room` on this node (see [`RoomHold`]).
    fn hold_room(&self, room: &str) {
        self.change_subscriptions(|subscriptions| subscriptions.hold(room));
    }

    /// One holder of `room` fewer.
    fn release_room(&self, room: &str) {
        self.change_subscriptions(|subscriptions| subscriptions.release(room));
    }

    /// Holds `room` on this node until the returned [`RoomHold`] is
    /// dropped: the node subscribes to the room's channel (if nothing held
    /// it yet) and receives its messages while it is held. What a service
    /// takes for a session about to enter a room, before it reads the
    /// room's history: see [`RoomHold::subscribed`].
    pub fn hold(self: &Arc<Self>, room: &str) -> RoomHold {
        self.hold_room(room);
        RoomHold {
            backplane: Arc::clone(self),
            room: room.to_owned(),
        }
    }

    /// Waits until `room`'s subscription on this node is confirmed (see
    /// [`RoomHold::subscribed`]); [`Ready::Unheld`] at once if nothing
    /// holds it, [`Ready::Down`] if the subscription connection is down.
    pub fn subscribed(&self, room: &str) -> impl Future<Output = Ready> + Send + 'static {
        let (waiter, ready) = oneshot::channel();
        self.change_subscriptions(|subscriptions| subscriptions.wait(room, waiter));
        async move { ready.await.unwrap_or(Ready::Down) }
    }

    fn backoff(&self) -> Backoff {
        self.backoff.clone()
    }

    /// Waits the backoff's next delay, or returns `false` if stopped (or the
    /// backoff gave up) first.
    async fn wait_retry<R: Runtime>(
        backoff: &mut Backoff,
        stopped: &mut watch::Receiver<bool>,
    ) -> bool {
        let delay = match backoff.disconnected(Instant::now()) {
            BackoffStep::Retry { delay, .. } => delay,
            BackoffStep::GiveUp { attempts } => {
                tracing::error!(attempts, "backplane: giving up reconnecting to redis");
                return false;
            }
        };
        tokio::select! {
            () = R::sleep_until(Instant::now() + delay) => true,
            _ = stopped.wait_for(|stop| *stop) => false,
        }
    }

    async fn run_subscriber<R: Runtime>(
        self: Arc<Self>,
        hub: Hub,
        deliver: Deliver,
        rooms: Arc<Mutex<Subscriber>>,
        subscription: Subscription,
        mut stopped: watch::Receiver<bool>,
    ) {
        self.subscriber_loop::<R>(&hub, &deliver, &rooms, subscription, &mut stopped)
            .await;
        // Stopped: joins waiting for a subscription wait no more, and the
        // connection goes once the publisher is done with it.
        self.connection.send_replace(None);
        self.change_subscriptions(Subscriptions::disconnected);
    }

    /// Keeps a subscription connection up (resubscribing with the backoff
    /// when it is lost), lends it to the publisher (`self.connection`), and
    /// runs the room subscriptions' commands on it. What the connection
    /// receives does not come through here: its own task hands it on (see
    /// [`Subscription`]).
    async fn subscriber_loop<R: Runtime>(
        self: &Arc<Self>,
        hub: &Hub,
        deliver: &Deliver,
        rooms: &Arc<Mutex<Subscriber>>,
        subscription: Subscription,
        stopped: &mut watch::Receiver<bool>,
    ) {
        let mut backoff = self.backoff();
        let mut subscription = Some(subscription);
        loop {
            let current = match subscription.take() {
                Some(current) => current,
                None => match self.subscribe(hub, deliver, rooms).await {
                    Ok(current) => current,
                    Err(error) => {
                        self.change_subscriptions(Subscriptions::disconnected);
                        tracing::warn!(%error, "backplane: redis subscription failed");
                        if Self::wait_retry::<R>(&mut backoff, stopped).await {
                            continue;
                        }
                        return;
                    }
                },
            };
            backoff.connected(Instant::now());
            loop {
                // `false`: the connection is lost.
                let changed = tokio::select! {
                    () = current.lost.notified() => false,
                    () = self.subscriptions_changed.notified() => true,
                    _ = stopped.wait_for(|stop| *stop) => return,
                };
                if !changed {
                    break;
                }
                let commands =
                    self.run_subscription_commands(&current.connection, &[], Some(rooms));
                if let Err(error) = commands.await {
                    tracing::warn!(%error, "backplane: redis subscribe failed");
                    break;
                }
            }
            // Given up: from here on nothing it receives is delivered, even
            // while the publisher's clone keeps it open (the moment joins
            // learn the subscription is down).
            drop(current);
            self.connection.send_replace(None);
            self.change_subscriptions(Subscriptions::disconnected);
            tracing::warn!("backplane: redis subscription lost; resubscribing");
            if !Self::wait_retry::<R>(&mut backoff, stopped).await {
                return;
            }
        }
    }

    /// One message on a room channel (decode, classify, deliver) or on a
    /// node channel ([`on_node_message`](Self::on_node_message)'s).
    fn receive(&self, hub: &Hub, deliver: &Deliver, rooms: &mut Subscriber, message: &redis::Msg) {
        let received = stamp(self.stages.as_ref());
        let wire = Bytes::copy_from_slice(message.get_payload_bytes());
        let channel = message.get_channel_name();
        let same = |name: &str, room: &str| name == room;
        let Some(envelope) = self.node.receive(hub, channel, wire, same) else {
            return;
        };
        let room = envelope.name.as_str();
        if !lock(&self.subscriptions).is_held(room) {
            // On its way as the node unsubscribed: nobody here to deliver
            // to, and nothing to track (the next message after the room
            // is held again starts its sequence anew).
            bump(&self.node.counters.not_held, 1);
            rooms.forget(room);
            return;
        }
        self.node.deliver(hub, deliver, rooms, &envelope);
        if let (Some(stages), Some(at)) = (&self.stages, envelope.position) {
            stages.push(Stamp::Received {
                room: room.to_owned(),
                offset: at.offset,
                received,
                delivered: now_ns(),
            });
        }
    }

    /// Sends what is queued, in pipelines, on the subscription connection
    /// the subscriber task lends it (`self.connection`), starting with
    /// `connection` (the publish script loaded on it).
    async fn run_publisher(
        self: Arc<Self>,
        mut pending: mpsc::Receiver<Publication>,
        connection: MultiplexedConnection,
        mut stopped: watch::Receiver<bool>,
    ) {
        let mut lent = self.connection.subscribe();
        lent.mark_unchanged();
        let mut connection = Some(connection);
        // Pipelines sent and not yet answered, oldest first: Redis answers
        // a connection's commands in order, so they end in this order too.
        let mut in_flight: FuturesOrdered<InFlight> = FuturesOrdered::new();
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            // The first message waited for, then whatever else is queued:
            // one pipeline for all of them, sent while earlier ones still
            // wait for their replies (at most MAX_IN_FLIGHT of them).
            let closed = tokio::select! {
                taken = pending.recv_many(&mut batch, MAX_BATCH), if in_flight.len() < MAX_IN_FLIGHT => taken == 0,
                Some((done, appended)) = in_flight.next(), if !in_flight.is_empty() => {
                    self.appended(&mut connection, &done, appended);
                    continue;
                }
                _ = stopped.wait_for(|stop| *stop) => return,
            };
            if closed {
                // Every sender gone: what was sent is still heard of.
                while let Some((done, appended)) = in_flight.next().await {
                    self.appended(&mut connection, &done, appended);
                }
                return;
            }
            if lent.has_changed().unwrap_or(false) && lent.borrow().is_some() {
                // The subscriber has a new connection (it gave this one up):
                // the next pipeline goes there. While it has none, this one
                // is kept: if it is broken, the next pipeline fails at once
                // (counted, handed to the unpublished handler) instead of
                // waiting for Redis to come back.
                connection = None;
            }
            let conn = loop {
                if let Some(conn) = connection.as_mut() {
                    break conn;
                }
                match self.publisher_connection(&mut lent, &mut stopped).await {
                    Some(fresh) => {
                        connection = Some(fresh);
                        self.publisher_up.store(true, Ordering::Relaxed);
                    }
                    None => return,
                }
            };
            let taken = stamp(self.stages.as_ref());
            let pipeline = self.pipeline(&batch);
            let mut conn = conn.clone();
            // The batch goes with its pipeline; the next is gathered anew.
            let batch = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
            let stages = self.stages.clone();
            in_flight.push_back(Box::pin(async move {
                let appended = pipeline.query_async::<Vec<u64>>(&mut conn).await;
                if let (Some(stages), Ok(offsets)) = (&stages, &appended) {
                    published(stages, &batch, offsets, taken);
                }
                (batch, appended.map(drop))
            }));
        }
    }

    /// A pipeline's answer: counted, and its ordered messages handed to the
    /// unpublished handler if it failed. Not retried: the scripts may have
    /// run (a reply lost), and a second run would publish the messages
    /// twice. A failure drops the connection first, so that what its
    /// caller publishes next fails at once instead of waiting here for
    /// Redis (the pipelines still in flight on it fail too, in order).
    fn appended(
        &self,
        connection: &mut Option<MultiplexedConnection>,
        batch: &[Publication],
        appended: Result<(), redis::RedisError>,
    ) {
        if appended.is_err() {
            *connection = None;
            self.publisher_up.store(false, Ordering::Relaxed);
        }
        self.node.sent(batch, appended);
    }

    /// The connection `lent` holds, once the subscriber has one, with the
    /// publish script loaded on it again (a pipeline failed on it, or it is
    /// new: Redis may have lost the script). When that fails too, the
    /// connection is broken: waits for the subscriber's next (which
    /// reconnects with the backoff). `None` once stopped.
    async fn publisher_connection(
        &self,
        lent: &mut watch::Receiver<Option<MultiplexedConnection>>,
        stopped: &mut watch::Receiver<bool>,
    ) -> Option<MultiplexedConnection> {
        loop {
            let current = tokio::select! {
                current = lent.wait_for(Option::is_some) => current.ok()?.clone()?,
                _ = stopped.wait_for(|stop| *stop) => return None,
            };
            match load_publish_script(&current).await {
                Ok(()) => return Some(current),
                Err(error) => {
                    self.publisher_up.store(false, Ordering::Relaxed);
                    tracing::warn!(%error, "backplane: redis connection failed");
                }
            }
            tokio::select! {
                changed = lent.changed() => changed.ok()?,
                _ = stopped.wait_for(|stop| *stop) => return None,
            }
        }
    }

    /// The pipeline that appends and publishes `batch` in order: one
    /// command per run of [`runs`].
    fn pipeline(&self, batch: &[Publication]) -> redis::Pipeline {
        let mut pipeline = redis::pipe();
        for run in runs(batch) {
            let room = match &run[0] {
                Publication::Room { room, .. } => room,
                Publication::Node { channel, wire } => {
                    pipeline.cmd("PUBLISH").arg(channel).arg(&wire[..]);
                    continue;
                }
            };
            let mut tail = redis::Cmd::new();
            tail.arg(2)
                .arg(self.node.channels.meta(room))
                .arg(self.node.channels.history(room))
                .arg(&epoch_candidate()[..])
                .arg(self.config.history_len)
                .arg(self.node.channels.room(room))
                .arg(millis(self.config.history_ttl));
            for publication in run {
                if let Publication::Room { wire, .. } = publication {
                    tail.arg(&wire[..]);
                }
            }
            pipeline.add_command(PUBLISH.command(false, &tail));
        }
        pipeline
    }

    /// Keeps Redis told of this node's presence: what changed as soon as
    /// it changed ([`present`](Self::present), [`absent`](Self::absent)),
    /// every entry again every third of the TTL; and of this node's
    /// [`NodeStats`] (`hub`'s sessions and groups) at each of those turns,
    /// so [`nodes`](Self::nodes) sees them within a third of the TTL; and
    /// of this node's [claims](Self::claim), every third of the TTL. A
    /// write that fails is logged and made good by the next refresh; a
    /// removal that fails, by the entry's expiry. Stopped, it removes this
    /// node's stats.
    async fn run_presence<R: Runtime>(
        self: Arc<Self>,
        hub: Hub,
        mut stopped: watch::Receiver<bool>,
    ) {
        let period = self.config.presence_ttl / 3;
        let mut next_refresh = Instant::now();
        loop {
            // `None`: stopped.
            let turn = tokio::select! {
                () = R::sleep_until(next_refresh) => Some(true),
                () = self.presence_changed.notified() => Some(false),
                _ = stopped.wait_for(|stop| *stop) => None,
            };
            let Some(refresh) = turn else {
                let mut command = redis::cmd("HDEL");
                command
                    .arg(self.node.channels.node_stats())
                    .arg(self.node.id.to_string());
                if let Err(error) = self.query::<u64>(&command).await {
                    tracing::warn!(%error, "backplane: node stats removal failed");
                }
                return;
            };
            let (removed, written, claims) = {
                let mut state = lock(&self.presence);
                let removed = std::mem::take(&mut state.removed);
                let added = std::mem::take(&mut state.added);
                if refresh {
                    next_refresh = Instant::now() + period;
                    let claims: Vec<Claimed> = state.claims.iter().cloned().collect();
                    (removed, state.entries.clone(), claims)
                } else {
                    (removed, added, Vec::new())
                }
            };
            for (room, members) in by_room(removed) {
                let mut command = redis::cmd("ZREM");
                command
                    .arg(self.node.channels.presence(&room))
                    .arg(&members);
                if let Err(error) = self.query::<u64>(&command).await {
                    tracing::warn!(room, %error, "backplane: presence removal failed");
                }
            }
            for (room, members) in by_room(written) {
                if let Err(error) = self.touch(&room, &members).await {
                    tracing::warn!(room, %error, "backplane: presence write failed");
                }
            }
            if let Err(error) = self.renew(&claims).await {
                tracing::warn!(%error, "backplane: claims refresh failed");
            }
            let stats = NodeStats {
                sessions: u64::try_from(hub.session_count()).unwrap_or(u64::MAX),
                rooms: u64::try_from(hub.group_count()).unwrap_or(u64::MAX),
            };
            if let Err(error) = self.report(stats).await {
                tracing::warn!(%error, "backplane: node stats write failed");
            }
        }
    }

    /// Writes this node's `stats`, alive for the presence TTL.
    async fn report(&self, stats: NodeStats) -> Result<(), Error> {
        let mut tail = redis::Cmd::new();
        tail.arg(1)
            .arg(self.node.channels.node_stats())
            .arg(millis(Some(self.config.presence_ttl)))
            .arg(self.node.id.to_string())
            .arg(stats.to_string());
        self.query_script::<u64>(&REPORT, &tail).await.map(drop)
    }

    /// Every live node's [`NodeStats`] (this one's included), as each last
    /// wrote them: at each change of its presence and every third of
    /// [`RedisConfig::presence_ttl`]; a node that stopped or died drops
    /// out within the TTL. Sorted by node id. What a service sums for
    /// figures across nodes.
    ///
    /// # Errors
    ///
    /// [`Error::Redis`] if Redis is unreachable or refuses;
    /// [`Error::Reply`] for an entry no node writes.
    pub async fn nodes(&self) -> Result<Vec<(NodeId, NodeStats)>, Error> {
        let mut tail = redis::Cmd::new();
        tail.arg(1).arg(self.node.channels.node_stats());
        let flat: Vec<String> = self.query_script(&NODES, &tail).await?;
        let mut nodes = flat
            .chunks(2)
            .map(|pair| match pair {
                [node, stats] => node.parse().ok().zip(stats.parse().ok()),
                _ => None,
            })
            .collect::<Option<Vec<(NodeId, NodeStats)>>>()
            .ok_or_else(|| Error::Reply("a malformed node stats entry".to_owned()))?;
        nodes.sort_unstable_by_key(|(node, _)| *node);
        Ok(nodes)
    }

    /// Runs `command` on the command connection, connecting first if
    /// needed. When the connection turns out to be broken (Redis restarted
    /// since its last use), it reconnects and runs `command` once more:
    /// every command sent this way may safely run twice. The lock is held
    /// only to take (or make) the connection, not over the round trip: the
    /// connection pipelines the commands of every caller, so one caller
    /// never waits for another's reply (the joins of a big room read its
    /// position at once, not one round trip after another).
    async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, Error> {
        let mut retried = false;
        loop {
            let mut connection = {
                let mut slot = self.commands.lock().await;
                match slot.as_ref() {
                    Some(connection) => connection.clone(),
                    None => slot
                        .insert(self.client.get_multiplexed_async_connection().await?)
                        .clone(),
                }
            };
            match command.query_async(&mut connection).await {
                Ok(reply) => return Ok(reply),
                Err(error) => {
                    // The next command connects anew (a caller that failed
                    // on a connection replaced meanwhile costs one more).
                    *self.commands.lock().await = None;
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
            .arg(self.node.channels.meta(room))
            .arg(self.node.channels.history(room))
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
            .arg(self.node.channels.history(room))
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
            .arg(self.node.channels.presence(room))
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
        command.arg(self.node.channels.presence(room)).arg(member);
        self.query::<u64>(&command).await.map(drop)
    }

    /// Claims `name` for `holder` across nodes: it becomes the holder's
    /// unless another holder (of any node) has it, in one step in Redis,
    /// so of two holders claiming one name at once exactly one has it.
    /// With `replacing` (the name the holder had), that one is released in
    /// the same step once `name` is the holder's: a rename. Claiming a
    /// name the holder has already is [`Claim::Claimed`].
    ///
    /// A claim lives until it is [released](Self::release), or, once this
    /// node stops refreshing it (it stopped or died), for at most
    /// [`RedisConfig::presence_ttl`]: the presence task keeps every claim
    /// of this node alive with its presence, every third of the TTL (and
    /// claims again those Redis lost, restarted empty). Holders must be
    /// unique across nodes (a session's [`SessionAddr`](storm_proto::backplane::SessionAddr)
    /// string, say).
    ///
    /// # Errors
    ///
    /// [`Error::Redis`] if Redis is unreachable or refuses: then nothing is
    /// known of the name, and the claim may or may not have been made (if
    /// it was, it expires within the TTL: this node does not refresh it).
    pub async fn claim(
        &self,
        name: &str,
        holder: &str,
        replacing: Option<&str>,
    ) -> Result<Claim, Error> {
        let mut tail = redis::Cmd::new();
        tail.arg(1 + usize::from(replacing.is_some()))
            .arg(self.node.channels.claim(name));
        if let Some(old) = replacing {
            tail.arg(self.node.channels.claim(old));
        }
        tail.arg(holder).arg(millis(Some(self.config.presence_ttl)));
        let now: String = self.query_script(&CLAIM, &tail).await?;
        if now != holder {
            return Ok(Claim::Taken { holder: now });
        }
        let mut state = lock(&self.presence);
        if let Some(old) = replacing {
            state.claims.remove(&(old.to_owned(), holder.to_owned()));
        }
        state.claims.insert((name.to_owned(), holder.to_owned()));
        Ok(Claim::Claimed)
    }

    /// Releases `holder`'s claim of `name` (nothing if another holder has
    /// it): from now on any holder may claim it. This node stops
    /// refreshing it at once.
    ///
    /// # Errors
    ///
    /// [`Error::Redis`] if Redis is unreachable or refuses (the claim then
    /// expires within [`RedisConfig::presence_ttl`]).
    pub async fn release(&self, name: &str, holder: &str) -> Result<(), Error> {
        lock(&self.presence)
            .claims
            .remove(&(name.to_owned(), holder.to_owned()));
        let mut tail = redis::Cmd::new();
        tail.arg(1).arg(self.node.channels.claim(name)).arg(holder);
        self.query_script::<u64>(&RELEASE, &tail).await.map(drop)
    }

    /// Keeps `claims` alive for the TTL (taking back those Redis lost);
    /// logs those another holder has.
    async fn renew(&self, claims: &[Claimed]) -> Result<(), Error> {
        for batch in claims.chunks(MAX_BATCH) {
            let mut tail = redis::Cmd::new();
            tail.arg(batch.len());
            for (name, _) in batch {
                tail.arg(self.node.channels.claim(name));
            }
            tail.arg(millis(Some(self.config.presence_ttl)));
            for (_, holder) in batch {
                tail.arg(holder);
            }
            let lost: Vec<usize> = self.query_script(&RENEW, &tail).await?;
            for (name, holder) in lost.iter().filter_map(|i| batch.get(i.checked_sub(1)?)) {
                tracing::warn!(
                    name,
                    holder,
                    "backplane: a claim of this node is another's (redis lost it meanwhile)"
                );
            }
        }
        Ok(())
    }

    /// Who is present in `room`, on every node, sorted.
    ///
    /// # Errors
    ///
    /// [`Error::Redis`] if Redis is unreachable or refuses.
    pub async fn members(&self, room: &str) -> Result<Vec<String>, Error> {
        let mut tail = redis::Cmd::new();
        tail.arg(1).arg(self.node.channels.presence(room));
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
        let channel = self.node.channels.node(node);
        self.node
            .send_to_node(&node.to_string(), message, |wire| Publication::Node {
                channel,
                wire,
            })
    }

    /// Sends `message` to every other node's
    /// [`on_node_message`](Self::on_node_message) handler, as
    /// [`to_node`](Self::to_node) does.
    pub fn to_all_nodes(&self, message: &Message) -> bool {
        let channel = self.node.channels.all_nodes();
        self.node
            .send_to_node("all", message, |wire| Publication::Node { channel, wire })
    }

    /// Where messages to this node ([`to_node`](Self::to_node),
    /// [`to_all_nodes`](Self::to_all_nodes)) go. Set it before
    /// [`start`](Self::start); only the first call counts (`false` for
    /// the others). Without it they are counted as
    /// [`invalid`](Stats::invalid) and dropped.
    pub fn on_node_message(&self, handler: OnNodeMessage) -> bool {
        self.node.on_node_message(handler)
    }

    /// Where ordered messages that cannot be published go (see
    /// [`OnUnpublished`]). Set it before [`start`](Self::start); only the
    /// first call counts (`false` for the others). Without it they are
    /// counted and logged only.
    pub fn on_unpublished(&self, handler: OnUnpublished) -> bool {
        self.node.on_unpublished(handler)
    }

    /// Encodes once, queues for the publisher; counts and logs what cannot
    /// go, and hands the ordered ones that cannot to
    /// [`on_unpublished`](Self::on_unpublished)'s handler.
    fn enqueue(&self, room: &str, message: &Message, echo: bool) {
        let connected = self.publisher_up.load(Ordering::Relaxed);
        self.node
            .publish_room(room, message, echo, connected, |wire| Publication::Room {
                room: room.to_owned(),
                wire,
                ordered: echo.then(|| message.clone()),
                queued: stamp(self.stages.as_ref()),
            });
    }
}

impl Backplane for RedisBackplane {
    /// Encodes the message once and queues it for the publisher; never
    /// waits. A full queue drops it for other nodes (counted, logged).
    fn publish(&self, group: &str, message: &Message) {
        self.enqueue(group, message, false);
    }

    /// The group's room is held while it has a local member.
    fn group_opened(&self, group: &str) {
        self.hold_room(group);
    }

    fn group_closed(&self, group: &str) {
        self.release_room(group);
    }
}

/// A room held on this node ([`RedisBackplane::hold`]): its channel stays
/// subscribed until every hold of it is dropped and its hub group has no
/// local member.
#[derive(Debug)]
pub struct RoomHold {
    backplane: Arc<RedisBackplane>,
    room: String,
}

impl RoomHold {
    /// The room.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// Waits until the room's subscription is confirmed: the gap-free
    /// contract of a join. Every message published in the room after it
    /// resolves with [`Ready::Subscribed`] reaches this node, so a history
    /// read started after that (a [`recover`](RedisBackplane::recover), a
    /// [`position`](RedisBackplane::position)) meets the live stream without
    /// a gap: what both carry has the same position, and the overlap is
    /// told apart by it. [`Ready::Down`] when the subscription connection is
    /// down (or breaks first): messages may then be missed, and the join
    /// should say so.
    pub fn subscribed(&self) -> impl Future<Output = Ready> + Send + 'static {
        self.backplane.subscribed(&self.room)
    }
}

impl Drop for RoomHold {
    fn drop(&mut self) {
        self.backplane.release_room(&self.room);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_before_any_io() {
        // What both adapters check is tested in `node`; here the URL, and
        // that a shared check comes out as a Redis `Error`.
        let url = RedisConfig {
            url: "http://x".into(),
            ..RedisConfig::default()
        };
        assert!(matches!(RedisBackplane::new(url), Err(Error::Redis(_))));
        let zero = RedisConfig {
            presence_ttl: Duration::ZERO,
            ..RedisConfig::default()
        };
        assert!(matches!(
            RedisBackplane::new(zero),
            Err(Error::Config(ConfigError::Zero("presence TTL")))
        ));
        assert!(RedisBackplane::new(RedisConfig::default()).is_ok());
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
    fn a_run_is_one_room_s_consecutive_messages_up_to_the_byte_bound() {
        let room = |name: &str, len: usize| Publication::Room {
            room: name.to_owned(),
            wire: Bytes::from(vec![0; len]),
            ordered: None,
            queued: 0,
        };
        let node = || Publication::Node {
            channel: "n".to_owned(),
            wire: Bytes::new(),
        };
        let half = MAX_RUN_BYTES / 2;
        let batch = [
            room("a", 1),
            room("a", 1),
            room("b", 1),
            node(),
            node(),
            room("b", 1),
            room("c", half),
            room("c", half),
            room("c", 1),
            room("d", MAX_RUN_BYTES + 1),
        ];
        let lens: Vec<usize> = runs(&batch).map(<[Publication]>::len).collect();
        assert_eq!(lens, [2, 1, 1, 1, 1, 2, 1, 1]);
        assert!(runs(&[]).next().is_none());
    }

    #[test]
    fn the_publish_script_splices_the_position_where_the_envelope_has_it() {
        // The script keeps bytes 1..=21 (Lua counts from 1), writes 16, and
        // goes on from byte 38.
        assert_eq!(storm_proto::backplane::POSITION_RANGE, 21..37);
        assert!(
            PUBLISH_SCRIPT
                .contains("string.sub(ARGV[i], 1, 21) .. epoch .. struct.pack('>I8', offset) .. string.sub(ARGV[i], 38)")
        );
    }

    #[test]
    fn connections_to_redis_turn_nagle_off() {
        // `redis`'s `tcp_nodelay` feature (Cargo.toml says why): every
        // connection it makes, publisher and subscriber, gets TCP_NODELAY.
        let settings = format!("{:?}", redis::io::tcp::TcpSettings::default());
        assert!(settings.contains("nodelay: true"), "{settings}");
    }

    #[test]
    fn ttls_are_whole_milliseconds() {
        assert_eq!(millis(None), 0);
        assert_eq!(millis(Some(Duration::from_micros(10))), 1);
        assert_eq!(millis(Some(Duration::from_secs(2))), 2000);
    }
}
