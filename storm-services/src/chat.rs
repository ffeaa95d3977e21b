//! The chat service (`storm chat`): a WebSocket chat server with rooms, a JSON command protocol,
//! a periodic tick, heartbeats, an admin console on stdin, and a chat page
//! for browsers served over HTTP (HTTPS with `--tls`) on a second port.
//!
//! # Ports
//!
//! The WebSocket server listens on `--addr` (default `127.0.0.1:9002`). The
//! chat page is served by a tiny HTTP listener on `--http-addr` (default: the
//! same host, the WebSocket port + 1, or port 0 when `--addr` asks for port
//! 0); `--no-http` turns it off. The WebSocket port refuses plain HTTP
//! requests, so the page needs its own port. On start, two lines are printed:
//!
//! ```text
//! storm chat (Tokio runtime) listening on ws://127.0.0.1:9002
//! storm chat page on http://127.0.0.1:9003/
//! ```
//!
//! The page connects back to the WebSocket port on the host it was loaded
//! from (`?ws=ws://HOST:PORT/` overrides that, e.g. when it is opened as a
//! file). With `--tls CERT_PEM KEY_PEM` both ports speak TLS with that
//! certificate, on every runtime: the WebSocket port is `wss://`, the page
//! is served over HTTPS (`storm chat page on https://…/`; plain HTTP
//! requests to it fail) and connects with `wss://`. The TLS handshake of a
//! page request counts in its 10 s limit.
//!
//! # Who may connect
//!
//! Every runtime's upgrade hook runs one gate. A browser page may connect
//! only from the chat page's own origin (`http(s)://HOST:PAGE_PORT`, HOST
//! the host the WebSocket request names, which the page takes from the
//! address it was loaded from); any other `Origin` is refused with `403`
//! and the server prints `refused ADDR: origin … not allowed`. Without a
//! page (`--no-http`) no browser origin is allowed by default. A page
//! opened with `?ws=` pointing at another host is another origin to the
//! server: list it. [`ChatConfig::allowed_origins`] (`--allow-origin`,
//! repeatable) replaces the default with exactly the origins listed.
//! Clients without `Origin` (not browsers) are not checked by origin;
//! [`ChatConfig::token`] (`--token`) makes every client present a token
//! (`?token=` or `Authorization: Bearer`, else `401`) and serves the page
//! only at `/?token=TOKEN`; the page passes the token on.
//!
//! # Runtimes
//!
//! [`ChatConfig::runtime`] (`--runtime tokio|smol|std`, default tokio)
//! picks the adapter; the chat behaves the same on each. `Chat` is the
//! whole service, written once
//! over the [`Session`] and [`Hub`] every adapter shares; `on_async` (tokio and smol, one
//! generic path over storm-async) and `on_std` (threads) only send what it
//! returns, and run the tick and the page server.
//!
//! # Protocol
//!
//! Every message either way is one WebSocket text message holding one JSON
//! object with a `"type"` field. Names and room names are 1 to 32 characters
//! (leading and trailing spaces are trimmed), without control characters;
//! user names are unique (across nodes too, with Redis: see "Across
//! nodes"), and `guest-<number>` (the name a new user gets) is
//! reserved. Each user is in at most one room at a time, and
//! starts in `lobby`.
//!
//! Client to server:
//!
//! | message | effect |
//! |---|---|
//! | `{"type":"name","name":"alice"}` | rename; `renamed` goes to you and your room |
//! | `{"type":"chat","text":"hi"}` | `chat` to every member of your room, you included |
//! | `{"type":"whisper","to":"bob","text":"psst"}` | `whisper` to `bob` and a copy to you |
//! | `{"type":"join","room":"rust"}` | leave your room (`left` to it), join `rust` (`joined` to its members, you included) |
//! | `{"type":"leave"}` | leave your room (`left` to it and to you); you are then in no room |
//! | `{"type":"users"}` | `users` back to you |
//! | `{"type":"rooms"}` | `rooms` back to you |
//!
//! Server to client (`id` is the session id, as the admin console shows it):
//!
//! | message | when |
//! |---|---|
//! | `{"type":"welcome","id":1,"name":"guest-1","room":"lobby"}` | first, on connect |
//! | `{"type":"renamed","id":1,"old":"guest-1","name":"alice"}` | someone in your room (or you) was renamed |
//! | `{"type":"chat","room":"lobby","id":1,"from":"alice","text":"hi"}` | a chat in your room |
//! | `{"type":"whisper","from_id":1,"from":"alice","to_id":2,"to":"bob","text":"psst"}` | a whisper to you, or the copy of yours |
//! | `{"type":"joined","room":"rust","id":1,"name":"alice"}` | someone (or you) joined your room |
//! | `{"type":"left","room":"rust","id":1,"name":"alice"}` | someone left your room (or disconnected), or you left |
//! | `{"type":"users","users":[{"id":1,"name":"alice","room":"lobby"}]}` | answer to `users`; `room` is `null` when in none |
//! | `{"type":"rooms","rooms":[{"name":"lobby","members":2}]}` | answer to `rooms` |
//! | `{"type":"tick","time_ms":1700000000000,"users":2}` | every `--tick-ms` (default 1000; 0 = off), to everyone: Unix time in ms, users connected |
//! | `{"type":"broadcast","from":"admin","text":"hi"}` | the admin's `/broadcast` |
//! | `{"type":"error","error":"no user named bob"}` | a command failed or did not parse |
//!
//! Unknown fields in commands are ignored. Binary messages get an `error`.
//!
//! # Across nodes
//!
//! With [`ChatConfig::backplane`] (`--backplane redis://HOST:PORT`, on
//! every runtime; on std the backplane runs on smol's executor) every chat
//! node sharing the Redis server is one server for room
//! events: `chat`, `joined`, `left` and `renamed` go through the backplane's
//! ordered publish, reach the room's members on every node once, in one
//! order, and carry their position, `"epoch"` (16 hex digits) and
//! `"offset"`. A `join` may carry the last position seen,
//! `{"type":"join","room":"rust","epoch":"…","offset":42}` (both or
//! neither); the joining session then gets, before any other event of the
//! room, the missed events in order, or
//! `{"type":"unrecoverable","room":"rust","reason":"…"}` when they cannot
//! be had (history trimmed, epoch changed, backplane unreachable), then
//! `{"type":"position","room":"rust","epoch":"…","offset":42}`; live events
//! follow, none twice. Without a backplane `epoch` and `offset` are
//! ignored.
//!
//! Across nodes, session ids are `NODE-N` strings (`"0a1b2c3d-7"`, a
//! [`SessionAddr`]: the node's tag and the session's number there), unique
//! across the nodes, in every event, list and console line, and in guest
//! names (`guest-0a1b2c3d-7`). `users` and `rooms` list every node's users:
//! each node keeps its users in a directory in Redis (the backplane's
//! presence, refreshed every third of its TTL), so a dead node's users leave
//! the lists within [`RedisConfig::presence_ttl`](storm_backplane::redis::RedisConfig::presence_ttl).
//! User names are unique across the nodes: a rename claims its name in
//! Redis ([`RedisBackplane::claim`](storm_backplane::redis::RedisBackplane::claim):
//! set if free, releasing the old name in the same step) before it is
//! answered; a name a user of another node has gets the one-node answer
//! `the name alice is taken`. A name is free again when its user renames
//! or leaves, or within the presence TTL once its node died (each node
//! refreshes its users' claims with its directory entries). While Redis is
//! down a rename is refused (`names cannot be checked across nodes while
//! Redis is down`), never let through unchecked; one rename of a session
//! is checked at a time.
//! A `whisper` to a name of no local user goes to the user of that
//! name another node lists, through that node (a node message). A room
//! event the backplane cannot publish still reaches this node's members,
//! without a position, followed by
//! `{"type":"local_only","room":"rust","reason":"…"}`. The tick's `users`
//! counts every node's users: this node's as they are, the others' as each
//! last reported them with its directory entries (at each change, and
//! every third of the presence TTL); this node's alone when Redis cannot
//! be read.
//!
//! With NATS ([`BackplaneConfig::Nats`], `--backplane nats://HOST:PORT`)
//! all of the above holds but history and name claims, on every runtime
//! (`async-nats` needs tokio: a chat on smol or std runs it on one tokio
//! thread of its own). NATS core pub/sub keeps no
//! history, so
//! room events carry no `epoch` and `offset`, a fresh `join` gets no
//! `position`, and a `join` that carries a position is answered
//! `{"type":"unrecoverable","room":"rust","reason":"the NATS backplane keeps no history: …"}`
//! ([`NO_HISTORY`](storm_backplane::nats::NO_HISTORY)): the client may have
//! missed messages and starts over. The user directory is kept by
//! heartbeats (every third of
//! [`NatsConfig::presence_ttl`](storm_backplane::nats::NatsConfig::presence_ttl)).
//! Every node subscribes to every room (one wildcard subscription,
//! confirmed before the node serves), so a join needs no per-room
//! subscription. Each node reports its stats with its heartbeats, so the
//! tick's `users` and `/stats` count every node, as with Redis. Names are unique per node only with NATS (core pub/sub holds nothing
//! that could arbitrate a name between nodes): two nodes may each have an
//! `alice`, and a whisper from a third goes to the first one listed.
//!
//! # Admin console
//!
//! Lines on stdin: `/sessions`, `/kick <id>` (closes with 1008 "kicked"),
//! `/broadcast <text>`, `/rooms`, `/info <id>`, `/stats` (each node's sessions
//! and rooms, and the sum), `/stop` (closes every session
//! gracefully, aborts what is left after 5 s, exits 0), `/help`. Ids may be
//! written `3` or `#3`, across nodes `0a1b2c3d-3` or `#0a1b2c3d-3` too.
//! Across nodes `/sessions`, `/rooms`, `/info`, `/kick`, `/broadcast` and
//! `/stats` see and act on every node. End of input leaves the server running.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, BufRead};
use std::net::{SocketAddr, TcpListener};
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use storm_host::hub::{Hub, SendOutcome, SessionId};
use storm_host::link::CloseReason;
use storm_host::options::{ServerOptions, WsOptions};
use storm_host::session::{Registry as ServerRegistry, Session};
use storm_host::setup::{Decision, UpgradeInfo};
use storm_proto::Message;
use storm_proto::backplane::{Position, SessionAddr};
use storm_proto::ws::CloseCode;

use crate::host::{Bound, Runtime, Stop};

mod nodes;

pub use nodes::BackplaneConfig;
mod on_async;
mod on_std;

/// The page, with `__STORM_WS_PORT__` replaced by the WebSocket port and
/// `__STORM_WS_SCHEME__` by `ws` or `wss`.
const PAGE: &str = include_str!("chat.html");
/// The room every user starts in.
const LOBBY: &str = "lobby";
/// Longest user or room name, in characters.
const MAX_NAME_CHARS: usize = 32;
/// How long `/stop` waits for sessions to close before aborting them.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest HTTP request head the page server reads.
const MAX_HTTP_HEAD: usize = 8 * 1024;
/// How long the page server waits for a request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the chat page is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageAddr {
    /// Not at all.
    Off,
    /// The WebSocket host with the next port (port 0 when the WebSocket
    /// address asks for port 0).
    NextPort,
    /// This address.
    At(String),
}

/// What a chat server is configured with.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ChatConfig {
    /// The WebSocket listener: address, TLS (the page is then served over
    /// HTTPS with the same certificate), heartbeats.
    pub options: ServerOptions,
    /// WebSocket options: message limits, permessage-deflate.
    pub ws: WsOptions,
    /// Where the chat page is served. Default [`PageAddr::NextPort`].
    pub page: PageAddr,
    /// The period of the tick message to every client; `None` turns it
    /// off. Default 1 s.
    pub tick: Option<Duration>,
    /// The runtime to serve on. Default tokio.
    pub runtime: Runtime,
    /// The only origins whose pages may connect (`--allow-origin`,
    /// `scheme://host[:port]`). Default empty: only the chat page's own
    /// origin, `http(s)://HOST:PAGE_PORT` for the HOST the WebSocket
    /// request names (the host the page was loaded from); no page, no
    /// browser origin. A request without `Origin` (not a browser) is not
    /// checked: give a `token` to authenticate those.
    pub allowed_origins: Vec<String>,
    /// A token every client must present (`--token`): `?token=TOKEN` on the
    /// WebSocket URL or `Authorization: Bearer TOKEN`; the page is served
    /// only with `?token=TOKEN` and passes it on. Letters, digits, `-`,
    /// `.`, `_` and `~` only (it travels in URLs unescaped). Default
    /// `None`: no token.
    pub token: Option<String>,
    /// The backplane that makes chat nodes sharing it one server for room
    /// events (`--backplane redis://HOST:PORT`, on every runtime, or
    /// `nats://HOST:PORT`, on every runtime): see "Across nodes". Default
    /// `None`: this node alone.
    pub backplane: Option<BackplaneConfig>,
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self {
            options: ServerOptions::default(),
            ws: WsOptions::default(),
            page: PageAddr::NextPort,
            tick: Some(Duration::from_secs(1)),
            runtime: Runtime::Tokio,
            allowed_origins: Vec::new(),
            token: None,
            backplane: None,
        }
    }
}

impl ChatConfig {
    /// `ws` or `wss`.
    fn scheme(&self) -> &'static str {
        if self.options.tls.is_some() {
            "wss"
        } else {
            "ws"
        }
    }
}

/// Runs a chat server on `config.runtime` until `/stop` on the admin
/// console (stdin) or `stop`, printing its addresses and the console's
/// output on stdout.
///
/// # Errors
///
/// Unusable TLS material, a failed bind.
pub fn serve(config: ChatConfig, stop: &Stop) -> io::Result<()> {
    serve_with(config, stop, |_| ())
}

/// [`serve`], calling `bound` once the WebSocket server is bound and its
/// addresses printed, before the first session: to keep the hub (its
/// metrics, say) or announce the address.
///
/// # Errors
///
/// As [`serve`].
pub fn serve_with(config: ChatConfig, stop: &Stop, bound: impl FnOnce(&Bound)) -> io::Result<()> {
    storm_host::setup::check_origins(&config.allowed_origins)?;
    if let Some(token) = &config.token {
        let url_safe = |c: char| c.is_ascii_alphanumeric() || "-._~".contains(c);
        if token.is_empty() || !token.chars().all(url_safe) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "--token takes letters, digits, `-`, `.`, `_` and `~` only",
            ));
        }
    }
    // The page is served over TLS with the same certificate.
    let page_tls = config
        .options
        .tls
        .as_ref()
        .map(storm_host::tls::server_config)
        .transpose()?;
    match config.runtime {
        Runtime::Tokio => on_async::run::<storm_tokio::Tokio>(&config, stop, page_tls, bound),
        Runtime::Smol => on_async::run::<storm_smol::Smol>(&config, stop, page_tls, bound),
        Runtime::Std => on_std::run(&config, stop, page_tls, bound),
    }
}

/// The TLS configuration of the page server (`--tls`).
type PageTls = Option<Arc<rustls::ServerConfig>>;

/// The page server, ready to run: its listener, the page, and TLS.
struct PageServer {
    listener: TcpListener,
    page: Arc<Page>,
    tls: PageTls,
}

/// The chat page, and the token a request for it must carry.
struct Page {
    html: String,
    token: Option<String>,
}

/// Who may open a chat WebSocket, decided by every runtime's upgrade hook:
/// a browser page of an allowed origin (by default the chat page's own),
/// holding the token when there is one.
struct Gate {
    /// `--allow-origin`; empty: the page's own origin.
    allowed: Vec<String>,
    /// The page's scheme and port, when it is served.
    page: Option<(&'static str, u16)>,
    token: Option<String>,
}

impl Gate {
    fn new(config: &ChatConfig, page: Option<&PageServer>) -> io::Result<Self> {
        let page = match page {
            Some(page) => {
                let scheme = if page.tls.is_some() { "https" } else { "http" };
                Some((scheme, page.listener.local_addr()?.port()))
            }
            None => None,
        };
        Ok(Self {
            allowed: config.allowed_origins.clone(),
            page,
            token: config.token.clone(),
        })
    }

    fn decide(&self, info: &UpgradeInfo) -> Decision {
        if let Some(origin) = info.headers().get("Origin") {
            if !self.origin_allowed(origin, info.host()) {
                let origin = String::from_utf8_lossy(origin);
                println!(
                    "refused {}: origin {origin} not allowed",
                    info.remote_addr()
                );
                return Decision::reject(403).body("this page's origin may not use this chat\n");
            }
        }
        if let Some(token) = &self.token {
            let bearer = info
                .headers()
                .get("Authorization")
                .and_then(|value| value.strip_prefix(b"Bearer "))
                .map(|value| String::from_utf8_lossy(value.trim_ascii()).into_owned());
            let presented = info.query_param("token").or(bearer);
            if !presented.is_some_and(|presented| same_token(&presented, token)) {
                println!("refused {}: no valid token", info.remote_addr());
                return Decision::reject(401)
                    .header("WWW-Authenticate", "Bearer")
                    .body("a token is needed: ?token=TOKEN or Authorization: Bearer TOKEN\n");
            }
        }
        Decision::accept()
    }

    /// Whether a page of `origin` may connect through `host` (the request's
    /// `Host`): one of `--allow-origin`, or by default the chat page served
    /// from that host.
    fn origin_allowed(&self, origin: &[u8], host: &str) -> bool {
        let origin = String::from_utf8_lossy(origin.trim_ascii());
        if !self.allowed.is_empty() {
            return self
                .allowed
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(&origin));
        }
        let Some((scheme, port)) = self.page else {
            return false;
        };
        // `[::1]:9002` or `127.0.0.1:9002`: the host without its port.
        let name = match host.rsplit_once(':') {
            Some((name, after)) if !after.contains(']') => name,
            _ => host,
        };
        let default_port = matches!((scheme, port), ("http", 80) | ("https", 443));
        let page = match default_port {
            true => format!("{scheme}://{name}"),
            false => format!("{scheme}://{name}:{port}"),
        };
        page.eq_ignore_ascii_case(&origin)
    }
}

/// Compares tokens in time that depends on their lengths only.
fn same_token(presented: &str, token: &str) -> bool {
    presented.len() == token.len()
        && presented
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

/// What every runtime does once its WebSocket server is bound: binds the
/// page listener (blocking, unless `--no-http`), prints the addresses, and
/// returns the page server.
fn announce(
    config: &ChatConfig,
    ws_addr: SocketAddr,
    tls: PageTls,
) -> io::Result<Option<PageServer>> {
    let http = match &config.page {
        PageAddr::Off => None,
        PageAddr::NextPort => Some(TcpListener::bind(default_http_addr(
            &config.options.addr,
            ws_addr,
        )?)?),
        PageAddr::At(addr) => Some(TcpListener::bind(addr)?),
    };
    println!(
        "storm chat ({:?} runtime) listening on {}://{ws_addr}",
        config.runtime,
        config.scheme()
    );
    if let Some(listener) = &http {
        let scheme = if tls.is_some() { "https" } else { "http" };
        println!("storm chat page on {scheme}://{}/", listener.local_addr()?);
    }
    println!("console: /sessions  /kick <id>  /broadcast <msg>  /rooms  /info <id>  /stats  /stop");
    Ok(http.map(|listener| {
        let html = PAGE
            .replace("__STORM_WS_PORT__", &ws_addr.port().to_string())
            .replace("__STORM_WS_SCHEME__", config.scheme());
        PageServer {
            listener,
            page: Arc::new(Page {
                html,
                token: config.token.clone(),
            }),
            tls,
        }
    }))
}

/// The page's default address: the WebSocket host, next port.
fn default_http_addr(requested: &str, ws_addr: SocketAddr) -> io::Result<SocketAddr> {
    let asked_zero = requested
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>() == Ok(0));
    let port = if asked_zero {
        0
    } else {
        ws_addr.port().checked_add(1).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "no port after 65535 for the page: give --http-addr",
            )
        })?
    };
    Ok(SocketAddr::new(ws_addr.ip(), port))
}

/// One connected user.
struct User {
    name: String,
    room: Option<String>,
    session: Session,
    /// Across nodes: keeps this node subscribed to `room` while the user
    /// is in it (the hub's groups do not tell the backplane).
    held: Option<storm_backplane::redis::RoomHold>,
    /// Across nodes: a rename waits for its claim of the name (one at a
    /// time: see [`claim_name`]).
    renaming: bool,
}

/// Users by session id, and ids by name.
#[derive(Default)]
struct Registry {
    users: HashMap<SessionId, User>,
    names: HashMap<String, SessionId>,
    /// Sessions joining a room across nodes, until their recovery ends.
    pending: HashMap<SessionId, nodes::Pending>,
    /// Sessions whose pending entry may be [`ready`](nodes::Pending::ready)
    /// to enter its group (checked against the entry).
    ready: Vec<SessionId>,
}

impl Registry {
    /// Whether user `id` may take `name` as far as this node knows:
    /// `false` when it has it already; an error when another user here
    /// has it.
    fn free_for(&self, id: SessionId, name: &str) -> Result<bool, String> {
        match self.names.get(name) {
            Some(&owner) if owner == id => Ok(false),
            Some(_) => Err(taken(name)),
            None => Ok(true),
        }
    }
}

/// A server's sessions as the chat needs them, whatever the runtime:
/// every adapter's `ServerHandle` dereferences to the core's
/// [`Registry`](ServerRegistry).
trait Server: Send + Sync + 'static {
    /// The hub: broadcast, groups, session count.
    fn hub(&self) -> &Hub;
    /// The connected sessions, by id.
    fn sessions(&self) -> Vec<Session>;
    /// One session by id.
    fn session(&self, id: SessionId) -> Option<Session>;
}

impl<H> Server for H
where
    H: Deref<Target = ServerRegistry> + Send + Sync + 'static,
{
    fn hub(&self) -> &Hub {
        let registry: &ServerRegistry = self;
        registry.hub()
    }

    fn sessions(&self) -> Vec<Session> {
        let registry: &ServerRegistry = self;
        registry.sessions()
    }

    fn session(&self, id: SessionId) -> Option<Session> {
        let registry: &ServerRegistry = self;
        registry.session(id)
    }
}

/// The chat itself, the same on every runtime: users and rooms, what each
/// command does, the console, the tick. The per-runtime handlers only send
/// the replies it returns.
struct Chat {
    server: Box<dyn Server>,
    registry: Mutex<Registry>,
    /// Held while a room event from the backplane is buffered for the
    /// sessions joining its room and queued for the room's group
    /// ([`deliver`](Self::deliver)), and while joining sessions that are
    /// ready enter their groups ([`enter_ready`](Self::enter_ready)): so an
    /// event reaches a joining session exactly once (buffered, or through
    /// the group), and events reach each member in the order they were
    /// delivered. The registry lock is taken inside it, never the other
    /// way round, and only for the buffering: a group's fan-out runs
    /// without it, so connects, commands and joins never wait for a
    /// fan-out. Only deliveries wait for it: a joining session that finds
    /// it taken leaves its entering to the delivery under way.
    fanout: Mutex<()>,
    /// The backplane, when the chat runs across nodes.
    nodes: Option<nodes::Nodes>,
    /// This chat, for the tasks it spawns.
    me: Weak<Chat>,
    /// The last join ticket given out.
    tickets: AtomicU64,
}

impl Chat {
    fn new(server: impl Server, nodes: Option<nodes::Nodes>) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            server: Box::new(server),
            registry: Mutex::default(),
            fanout: Mutex::default(),
            nodes,
            me: me.clone(),
            tickets: AtomicU64::new(0),
        })
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The id the chat shows for this node's session `id`.
    fn id_of(&self, id: SessionId) -> ChatId {
        match &self.nodes {
            Some(nodes) => ChatId::Node(SessionAddr::new(nodes.tag(), id.get())),
            None => ChatId::Local(id.get()),
        }
    }

    /// The user `id` as `users` lists it.
    fn info(&self, id: SessionId, user: &User) -> UserInfo {
        UserInfo {
            id: self.id_of(id),
            name: user.name.clone(),
            room: user.room.clone(),
        }
    }

    /// Across nodes, tells the directory that user `id` was `before` and
    /// is now `after` (`None`: not there); called with the registry lock
    /// held, so the directory hears of a user's changes in their order.
    fn relist(&self, before: Option<&UserInfo>, after: Option<&UserInfo>) {
        if let Some(nodes) = &self.nodes {
            if before != after {
                nodes.relist(before, after);
            }
        }
    }

    /// Every user on every node, by id (this node's as of now, the others'
    /// as the directory holds them); with why the others' are missing if
    /// the directory cannot be read.
    async fn all_users(&self) -> (Vec<UserInfo>, Option<String>) {
        let others = match &self.nodes {
            Some(nodes) => nodes.others().await,
            None => Ok(Vec::new()),
        };
        let mut users = self.local_users();
        let error = match others {
            Ok(others) => {
                users.extend(others);
                users.sort_by_key(|user| user.id);
                None
            }
            Err(error) => Some(error),
        };
        (users, error)
    }

    /// [`all_users`](Self::all_users), for the console's thread: waits for
    /// the directory there.
    fn all_users_blocking(&self) -> Vec<UserInfo> {
        let (users, error) = match (&self.nodes, self.me.upgrade()) {
            (Some(nodes), Some(me)) => nodes
                .block_on(async move { me.all_users().await })
                .unwrap_or_else(|| (self.local_users(), Some("the node is stopping".to_owned()))),
            _ => (self.local_users(), None),
        };
        if let Some(error) = error {
            println!("the users of other nodes are unknown: {error}");
        }
        users
    }

    /// This node's users, by id.
    fn local_users(&self) -> Vec<UserInfo> {
        let registry = self.registry();
        let mut users: Vec<UserInfo> = registry
            .users
            .iter()
            .map(|(&id, user)| self.info(id, user))
            .collect();
        users.sort_by_key(|user| user.id);
        users
    }

    /// Sends `event` to the members of `room`.
    fn to_room(&self, room: &str, event: &Out<'_>) {
        self.to_group(room, &encode(event));
    }

    /// Sends `message` to the members of `room`: on this node, or on every
    /// node (in the room's one order) with a backplane.
    fn to_group(&self, room: &str, message: &Message) {
        match &self.nodes {
            Some(nodes) => nodes.publish(room, message),
            None => {
                self.server.hub().broadcast_group(room, message, None);
            }
        }
    }

    /// The order of room events (see [`fanout`](Self::fanout)).
    fn fanout(&self) -> MutexGuard<'_, ()> {
        self.fanout.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A room event from the backplane (any node's, this one's too): with
    /// its position added, to the sessions joining `room` and to its group.
    /// The registry lock is held only to buffer it for the joining
    /// sessions; the group's fan-out runs under [`fanout`](Self::fanout)
    /// alone.
    fn deliver(&self, hub: &Hub, room: &str, position: Option<Position>, message: &Message) {
        {
            let _order = self.fanout();
            self.deliver_in_order(hub, room, position, message);
        }
        // Sessions that got ready during the fan-out enter now.
        self.enter_ready();
    }

    /// [`deliver`](Self::deliver), under [`fanout`](Self::fanout).
    fn deliver_in_order(
        &self,
        hub: &Hub,
        room: &str,
        position: Option<Position>,
        message: &Message,
    ) {
        let message = {
            let mut registry = self.registry();
            // Ready sessions get this event through their group.
            self.enter_ready_locked(&mut registry);
            let joining = registry.pending.values().any(|p| p.room == room);
            if !joining && hub.member_count(room) == 0 {
                return;
            }
            let message = nodes::positioned(message, position);
            for pending in registry.pending.values_mut() {
                if pending.room == room {
                    if pending.buffer.len() < nodes::MAX_PENDING {
                        pending.buffer.push((position, message.clone()));
                    } else {
                        pending.overflow = true;
                    }
                }
            }
            message
        };
        hub.deliver_group(room, &message, None);
    }

    /// Has the joining sessions that are ready enter their rooms' groups,
    /// unless a delivery holds [`fanout`](Self::fanout): that one has them
    /// enter before its next event, or after its fan-out. Never waits.
    fn enter_ready(&self) {
        loop {
            let order = match self.fanout.try_lock() {
                Ok(order) => order,
                Err(std::sync::TryLockError::Poisoned(order)) => order.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return,
            };
            let mut registry = self.registry();
            self.enter_ready_locked(&mut registry);
            drop(registry);
            drop(order);
            // One that got ready after the check above, while the lock was
            // held, found it taken: it is this call's to do.
            if self.registry().ready.is_empty() {
                return;
            }
        }
    }

    /// [`enter_ready`](Self::enter_ready), under [`fanout`](Self::fanout)
    /// and the registry lock: each ready session enters its group, and its
    /// pending entry's hold of the room goes to the user (the room stays
    /// subscribed while the user is in it).
    fn enter_ready_locked(&self, registry: &mut Registry) {
        for id in std::mem::take(&mut registry.ready) {
            if !registry.pending.get(&id).is_some_and(|p| p.ready) {
                continue; // left, or joining elsewhere now
            }
            let Some(pending) = registry.pending.remove(&id) else {
                continue;
            };
            let Some(user) = registry.users.get_mut(&id) else {
                continue;
            };
            user.held = pending.hold;
            if let Err(error) = user.session.join(&pending.room) {
                let _ = user.session.try_send(encode(&Out::Error {
                    error: &error.to_string(),
                }));
            }
        }
    }

    /// A room event the backplane could not publish (Redis down, its queue
    /// full): delivered here without a position all the same, followed by
    /// `local_only`, so this node's members know the other nodes' did not
    /// get it.
    fn unpublished(&self, room: &str, message: &Message) {
        let hub = self.server.hub();
        self.deliver(hub, room, None, message);
        let notice = Out::LocalOnly {
            room,
            reason: "the backplane could not take the event: members on other nodes did not get it",
        };
        self.deliver(hub, room, None, &encode(&notice));
    }

    /// Ends the join `ticket` of `session` to `room`: sends what its
    /// recovery found, then the events buffered since, then has it enter
    /// the room's group (see `nodes` and [`send_joining`](Self::send_joining)).
    fn finish_join(
        &self,
        session: &Session,
        room: &str,
        ticket: u64,
        outcome: Result<storm_backplane::redis::Recovery, String>,
    ) {
        let messages = {
            let mut registry = self.registry();
            let pending = registry.pending.get_mut(&session.id());
            let Some(pending) = pending.filter(|p| p.ticket == ticket) else {
                return; // left, joined elsewhere, or gone meanwhile
            };
            nodes::finish_messages(room, pending, outcome)
        };
        self.send_joining(session.clone(), room.to_owned(), ticket, messages.into());
    }

    /// Sends the joining session `queue`, then what its pending entry
    /// buffered meanwhile, until nothing more came; then, under the
    /// registry lock, it enters the room's group. When its outbox says wait
    /// (`--slow-consumer wait`), a task goes on once it is writable: a slow
    /// session gets its whole recovery, and the room's events past it stay
    /// buffered (bounded: past [`nodes::MAX_PENDING`] it is told
    /// `unrecoverable`). Other policies apply as to every send.
    fn send_joining(
        &self,
        session: Session,
        room: String,
        ticket: u64,
        mut queue: VecDeque<Message>,
    ) {
        let id = session.id();
        loop {
            while let Some(message) = queue.pop_front() {
                if let SendOutcome::Wait(message) = session.try_send(message) {
                    queue.push_front(message);
                    if let (Some(nodes), Some(me)) = (&self.nodes, self.me.upgrade()) {
                        nodes.spawn(async move {
                            let writable = std::future::poll_fn(|cx| session.poll_writable(cx));
                            if writable.await.is_ok() {
                                me.send_joining(session, room, ticket, queue);
                            }
                        });
                    }
                    return;
                }
            }
            let mut registry = self.registry();
            let pending = registry.pending.get_mut(&id);
            let Some(pending) = pending.filter(|p| p.ticket == ticket) else {
                return;
            };
            let more = nodes::buffered(&room, pending);
            if more.is_empty() {
                pending.ready = true;
                registry.ready.push(id);
                drop(registry);
                self.enter_ready();
                return;
            }
            drop(registry);
            queue.extend(more);
        }
    }

    /// Registers a new user; the welcome to send it before anything else.
    fn connect(&self, session: &Session) -> Message {
        let id = session.id();
        let name = format!("guest-{}", self.id_of(id));
        println!(
            "connect #{} {name} from {}",
            self.id_of(id),
            session.remote_addr()
        );
        {
            let mut registry = self.registry();
            let user = User {
                name: name.clone(),
                room: None,
                session: session.clone(),
                held: None,
                renaming: false,
            };
            self.relist(None, Some(&self.info(id, &user)));
            registry.names.insert(name.clone(), id);
            registry.users.insert(id, user);
        }
        encode(&Out::Welcome {
            id: self.id_of(id),
            name: &name,
            room: LOBBY,
        })
    }

    /// Puts a new user (welcomed) in the lobby; an error to send it if
    /// that failed.
    fn enter_lobby(&self, session: &Session) -> Option<Message> {
        join(self, session, LOBBY, None)
            .err()
            .map(|error| encode(&Out::Error { error: &error }))
    }

    /// Runs one message from a client; the reply for it alone, if any.
    fn on_message(&self, session: &Session, message: &Message) -> Option<Message> {
        let reply = match message {
            Message::Text(text) => match serde_json::from_str::<Command>(text.as_str()) {
                Ok(command) => handle(self, session, command),
                Err(e) => Err(format!("bad command: {e}")),
            },
            _ => Err("commands are JSON text messages".to_owned()),
        };
        match reply {
            Ok(reply) => reply,
            Err(error) => Some(encode(&Out::Error { error: &error })),
        }
    }

    /// Forgets a user that left, telling its room.
    fn disconnect(&self, session: &Session, reason: &CloseReason) {
        let id = session.id();
        let user = {
            let mut registry = self.registry();
            let user = registry.users.remove(&id);
            registry.pending.remove(&id);
            if let Some(user) = &user {
                registry.names.remove(&user.name);
                self.release_name(id, &user.name);
                self.relist(Some(&self.info(id, user)), None);
            }
            user
        };
        let Some(user) = user else { return };
        if let Some(room) = &user.room {
            session.leave(room);
            let left = Out::Left {
                room,
                id: self.id_of(id),
                name: &user.name,
            };
            self.to_room(room, &left);
        }
        println!("disconnect #{} {} ({reason})", self.id_of(id), user.name);
    }

    /// Across nodes, releases the claim of this node's session `id` to
    /// `name` (guest names are never claimed: unique by their shape).
    fn release_name(&self, id: SessionId, name: &str) {
        if let (Some(nodes), ChatId::Node(addr)) = (&self.nodes, self.id_of(id)) {
            if !is_guest_name(name) {
                nodes.release(name, addr);
            }
        }
    }

    /// What another node asks of this one (across nodes).
    fn on_ask(&self, hub: &Hub, ask: nodes::Ask) {
        match ask {
            nodes::Ask::Send { to, event } => {
                if let Some(session) = self.server.session(SessionId::new(to)) {
                    let _ = session.try_send(Message::from(event));
                }
            }
            nodes::Ask::Kick { to } => {
                let id = SessionId::new(to);
                if let Some(session) = self.server.session(id) {
                    session.close_with(CloseCode::POLICY_VIOLATION, "kicked");
                    println!("kicked #{} (asked by another node)", self.id_of(id));
                }
            }
            nodes::Ask::Broadcast { event } => {
                hub.broadcast(&Message::from(event), None);
            }
        }
    }

    /// Sends the tick to everyone: across nodes, with every node's users
    /// (the other nodes' as they last reported them: see
    /// [`nodes::Nodes::other_sessions`]; this node's alone when they cannot
    /// be read).
    fn tick(&self) {
        match (&self.nodes, self.me.upgrade()) {
            (Some(nodes), Some(me)) => nodes.spawn(async move {
                let Some(nodes) = &me.nodes else { return };
                let others = nodes.other_sessions().await.unwrap_or_else(|error| {
                    tracing::debug!(%error, "chat: the other nodes' users are unknown");
                    0
                });
                me.send_tick(others);
            }),
            _ => self.send_tick(0),
        }
    }

    /// Sends the tick with this node's users and `others`.
    fn send_tick(&self, others: u64) {
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let here = u64::try_from(self.registry().users.len()).unwrap_or(u64::MAX);
        let users = here.saturating_add(others);
        self.server
            .hub()
            .broadcast(&encode(&Out::Tick { time_ms, users }), None);
    }
}

/// A command from a client.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Command {
    Name {
        name: String,
    },
    Chat {
        text: String,
    },
    Whisper {
        to: String,
        text: String,
    },
    Join {
        room: String,
        /// With `offset`: the client's last position in `room`.
        #[serde(default)]
        epoch: Option<String>,
        #[serde(default)]
        offset: Option<u64>,
    },
    Leave,
    Users,
    Rooms,
}

/// A message to clients.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Out<'a> {
    Welcome {
        id: ChatId,
        name: &'a str,
        room: &'a str,
    },
    Renamed {
        id: ChatId,
        old: &'a str,
        name: &'a str,
    },
    Chat {
        room: &'a str,
        id: ChatId,
        from: &'a str,
        text: &'a str,
    },
    Whisper {
        from_id: ChatId,
        from: &'a str,
        to_id: ChatId,
        to: &'a str,
        text: &'a str,
    },
    Joined {
        room: &'a str,
        id: ChatId,
        name: &'a str,
    },
    Left {
        room: &'a str,
        id: ChatId,
        name: &'a str,
    },
    Users {
        users: Vec<UserInfo>,
    },
    Rooms {
        rooms: Vec<RoomInfo>,
    },
    Tick {
        time_ms: u64,
        users: u64,
    },
    Broadcast {
        from: &'a str,
        text: &'a str,
    },
    Error {
        error: &'a str,
    },
    /// Across nodes: the room's position once the joining session has
    /// what it missed; events after it follow.
    Position {
        room: &'a str,
        epoch: &'a str,
        offset: u64,
    },
    /// Across nodes: the joining session cannot have what it missed.
    Unrecoverable {
        room: &'a str,
        reason: &'a str,
    },
    /// Across nodes: the room event before it reached this node's members
    /// only.
    LocalOnly {
        room: &'a str,
        reason: &'a str,
    },
}

/// One user as `users` lists it (and, across nodes, as the directory
/// holds it: see `nodes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct UserInfo {
    id: ChatId,
    name: String,
    room: Option<String>,
}

#[derive(Debug, Serialize)]
struct RoomInfo {
    name: String,
    members: usize,
}

/// A session's id as the chat shows it and takes it back: on one node the
/// hub's number (`7`, a JSON number); across nodes `NODE-N` (a
/// [`SessionAddr`], a JSON string such as `"0a1b2c3d-7"`), unique among
/// every node's sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum ChatId {
    Local(u64),
    Node(SessionAddr),
}

impl Serialize for ChatId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Local(n) => serializer.serialize_u64(*n),
            Self::Node(addr) => serializer.collect_str(addr),
        }
    }
}

impl std::fmt::Display for ChatId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local(n) => write!(f, "{n}"),
            Self::Node(addr) => write!(f, "{addr}"),
        }
    }
}

fn encode(event: &Out<'_>) -> Message {
    // Serializing these plain structs cannot fail; an empty object is a
    // harmless fallback.
    Message::from(serde_json::to_string(event).unwrap_or_else(|_| "{}".to_owned()))
}

/// Whether `name` has the shape of the names new users get (`guest-` and
/// a session id: `guest-7`, across nodes `guest-0a1b2c3d-7`); those are
/// reserved, so a later connection's default name is never taken.
fn is_guest_name(name: &str) -> bool {
    name.strip_prefix("guest-").is_some_and(|n| {
        (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) || n.parse::<SessionAddr>().is_ok()
    })
}

/// A user or room name, trimmed, or why it is refused.
fn valid_name(name: &str, what: &str) -> Result<String, String> {
    let name = name.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS {
        return Err(format!("{what} must be 1 to {MAX_NAME_CHARS} characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("{what} must not contain control characters"));
    }
    Ok(name.to_owned())
}

/// Runs one command; the reply for the sender alone, if any.
fn handle(chat: &Chat, session: &Session, command: Command) -> Result<Option<Message>, String> {
    let id = session.id();
    match command {
        Command::Name { name } => {
            let name = valid_name(&name, "name")?;
            if is_guest_name(&name) {
                return Err("names guest-<number> are given out by the server".to_owned());
            }
            match (&chat.nodes, chat.me.upgrade()) {
                (Some(nodes), Some(me)) if nodes.unique_names() => claim_name(me, session, name),
                _ => rename(chat, session, &name),
            }
        }
        Command::Chat { text } => {
            let (name, room) = {
                let registry = chat.registry();
                let user = registry.users.get(&id).ok_or("not registered")?;
                (user.name.clone(), user.room.clone())
            };
            let room = room.ok_or("you are in no room: join one first")?;
            let event = Out::Chat {
                room: &room,
                id: chat.id_of(id),
                from: &name,
                text: &text,
            };
            chat.to_room(&room, &event);
            Ok(None)
        }
        Command::Whisper { to, text } => {
            let to = to.trim();
            let (from, target) = {
                let registry = chat.registry();
                let from = registry
                    .users
                    .get(&id)
                    .ok_or("not registered")?
                    .name
                    .clone();
                let target = registry
                    .names
                    .get(to)
                    .and_then(|tid| registry.users.get(tid))
                    .map(|user| user.session.clone());
                (from, target)
            };
            let Some(target) = target else {
                return whisper_elsewhere(chat, session, from, to, text);
            };
            if target.id() == id {
                return Err("you cannot whisper to yourself".to_owned());
            }
            let event = encode(&Out::Whisper {
                from_id: chat.id_of(id),
                from: &from,
                to_id: chat.id_of(target.id()),
                to,
                text: &text,
            });
            let _ = target.try_send(event.clone());
            Ok(Some(event))
        }
        Command::Join {
            room,
            epoch,
            offset,
        } => {
            let room = valid_name(&room, "room name")?;
            let since = nodes::since(epoch.as_deref(), offset)?;
            join(chat, session, &room, since)?;
            Ok(None)
        }
        Command::Leave => {
            let (name, room) = {
                let mut registry = chat.registry();
                let user = registry.users.get_mut(&id).ok_or("not registered")?;
                let before = chat.info(id, user);
                let left = (user.name.clone(), user.room.take());
                user.held = None;
                chat.relist(Some(&before), Some(&chat.info(id, user)));
                registry.pending.remove(&id);
                left
            };
            let room = room.ok_or("you are in no room")?;
            let left = encode(&Out::Left {
                room: &room,
                id: chat.id_of(id),
                name: &name,
            });
            session.leave(&room);
            chat.to_group(&room, &left);
            Ok(Some(left))
        }
        Command::Users | Command::Rooms => {
            let rooms = matches!(command, Command::Rooms);
            match (&chat.nodes, chat.me.upgrade()) {
                (Some(nodes), Some(me)) => {
                    let session = session.clone();
                    nodes.spawn(async move {
                        let (users, error) = me.all_users().await;
                        if let Some(error) = error {
                            let error = format!("the users of other nodes are unknown: {error}");
                            let _ = session.try_send(encode(&Out::Error { error: &error }));
                        }
                        let _ = session.try_send(listing(users, rooms));
                    });
                    Ok(None)
                }
                _ => Ok(Some(listing(chat.local_users(), rooms))),
            }
        }
    }
}

/// Renames `session`'s user to `name` unless a user of this node has it;
/// the reply for the sender alone, if any (`renamed` goes to its room).
fn rename(chat: &Chat, session: &Session, name: &str) -> Result<Option<Message>, String> {
    let id = session.id();
    let (old, room) = {
        let mut registry = chat.registry();
        if !registry.free_for(id, name)? {
            return Ok(None);
        }
        let user = registry.users.get_mut(&id).ok_or("not registered")?;
        let before = chat.info(id, user);
        let old = std::mem::replace(&mut user.name, name.to_owned());
        let room = user.room.clone();
        chat.relist(Some(&before), Some(&chat.info(id, user)));
        registry.names.remove(&old);
        registry.names.insert(name.to_owned(), id);
        (old, room)
    };
    println!("rename #{} {old} -> {name}", chat.id_of(id));
    let renamed = encode(&Out::Renamed {
        id: chat.id_of(id),
        old: &old,
        name,
    });
    match room {
        Some(room) => {
            chat.to_group(&room, &renamed);
            Ok(None)
        }
        None => Ok(Some(renamed)),
    }
}

/// A rename across nodes (Redis): refused at once if a user of this node
/// has `name`; else a task claims it across nodes, in place of the user's
/// claimed name ([`nodes::Nodes::claim`]), then [`rename`]s, or answers
/// `the name … is taken` (a user of another node has it) or why names
/// cannot be checked (Redis down: refused rather than risk two users of
/// one name). One rename of a session at a time: its claim replaces the
/// name it had when it started.
fn claim_name(me: Arc<Chat>, session: &Session, name: String) -> Result<Option<Message>, String> {
    let id = session.id();
    let (Some(nodes), ChatId::Node(holder)) = (&me.nodes, me.id_of(id)) else {
        return rename(&me, session, &name);
    };
    let old = {
        let mut registry = me.registry();
        if !registry.free_for(id, &name)? {
            return Ok(None);
        }
        let user = registry.users.get_mut(&id).ok_or("not registered")?;
        if user.renaming {
            return Err("your last rename is still being checked: wait for its answer".to_owned());
        }
        user.renaming = true;
        user.name.clone()
    };
    let session = session.clone();
    nodes.spawn({
        let me = Arc::clone(&me);
        async move {
            let Some(nodes) = &me.nodes else { return };
            let replacing = (!is_guest_name(&old)).then_some(old.as_str());
            let claimed = nodes.claim(&name, holder, replacing).await;
            if let Some(user) = me.registry().users.get_mut(&id) {
                user.renaming = false;
            }
            let reply = match claimed {
                Ok(true) => rename(&me, &session, &name).inspect_err(|_| {
                    // Not renamed (the user left meanwhile): the claim goes.
                    nodes.release(&name, holder);
                }),
                Ok(false) => Err(taken(&name)),
                Err(error) => Err(error),
            };
            let reply = reply.unwrap_or_else(|error| Some(encode(&Out::Error { error: &error })));
            if let Some(reply) = reply {
                let _ = session.try_send(reply);
            }
        }
    });
    Ok(None)
}

/// The answer to a rename to a name another user has.
fn taken(name: &str) -> String {
    format!("the name {name} is taken")
}

/// A whisper to `to`, a user of no session of this node: across nodes,
/// to the user of that name the directory lists on another node (the
/// first one listed, with NATS, where names are unique per node only),
/// the copy to the sender once it is on its way; else `no user named`.
fn whisper_elsewhere(
    chat: &Chat,
    session: &Session,
    from: String,
    to: &str,
    text: String,
) -> Result<Option<Message>, String> {
    let (Some(nodes), Some(me)) = (&chat.nodes, chat.me.upgrade()) else {
        return Err(format!("no user named {to}"));
    };
    let (session, to) = (session.clone(), to.to_owned());
    let from_id = chat.id_of(session.id());
    nodes.spawn(async move {
        let Some(nodes) = &me.nodes else { return };
        let target = match nodes.others().await {
            Ok(others) => others
                .into_iter()
                .find(|user| user.name == to)
                .ok_or_else(|| format!("no user named {to}")),
            Err(error) => Err(format!("the users of other nodes are unknown: {error}")),
        };
        let reply = target.and_then(|target| {
            let ChatId::Node(addr) = target.id else {
                return Err(format!("no user named {to}"));
            };
            let event = serde_json::to_string(&Out::Whisper {
                from_id,
                from: &from,
                to_id: target.id,
                to: &to,
                text: &text,
            })
            .unwrap_or_default();
            let ask = nodes::Ask::Send {
                to: addr.session,
                event: event.clone(),
            };
            if nodes.ask(addr.node, &ask) {
                Ok(Message::from(event))
            } else {
                Err(format!("the whisper to {to} cannot go now: try again"))
            }
        });
        let reply = reply.unwrap_or_else(|error| encode(&Out::Error { error: &error }));
        let _ = session.try_send(reply);
    });
    Ok(None)
}

/// `users`, or `rooms` when `rooms`, of `users`.
fn listing(users: Vec<UserInfo>, rooms: bool) -> Message {
    if !rooms {
        return encode(&Out::Users { users });
    }
    encode(&Out::Rooms {
        rooms: rooms_of(&users)
            .into_iter()
            .map(|(name, members)| RoomInfo {
                members: members.len(),
                name,
            })
            .collect(),
    })
}

/// Moves `session` from its room (if any) to `room`, telling both rooms.
/// Across nodes, `session` enters `room` once it has what it missed since
/// `since` (ignored on one node: there is no history).
fn join(chat: &Chat, session: &Session, room: &str, since: Option<Position>) -> Result<(), String> {
    let id = session.id();
    let ticket = chat.tickets.fetch_add(1, Ordering::Relaxed);
    let mut subscribed = None;
    let (name, old) = {
        let mut registry = chat.registry();
        let user = registry.users.get_mut(&id).ok_or("not registered")?;
        if user.room.as_deref() == Some(room) {
            return Err(format!("you are already in {room}"));
        }
        if chat.nodes.is_none() {
            session.join(room).map_err(|e| e.to_string())?;
        }
        let before = chat.info(id, user);
        let moved = (user.name.clone(), user.room.replace(room.to_owned()));
        user.held = None;
        chat.relist(Some(&before), Some(&chat.info(id, user)));
        if let Some(nodes) = &chat.nodes {
            let pending = nodes.pending(room, ticket);
            subscribed = Some(nodes.subscribed(&pending));
            registry.pending.insert(id, pending);
        }
        moved
    };
    if let Some(old) = old {
        session.leave(&old);
        let left = Out::Left {
            room: &old,
            id: chat.id_of(id),
            name: &name,
        };
        chat.to_room(&old, &left);
    }
    let joined = Out::Joined {
        room,
        id: chat.id_of(id),
        name: &name,
    };
    match (&chat.nodes, chat.me.upgrade(), subscribed) {
        (Some(nodes), Some(me), Some(subscribed)) => {
            let joined = encode(&joined);
            let room = room.to_owned();
            nodes.sync(me, session.clone(), room, since, ticket, joined, subscribed);
        }
        _ => chat.to_room(room, &joined),
    }
    Ok(())
}

/// The rooms of `users`, with their members' names, sorted.
fn rooms_of(users: &[UserInfo]) -> BTreeMap<String, Vec<String>> {
    let mut rooms: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for user in users {
        if let Some(room) = &user.room {
            rooms
                .entry(room.clone())
                .or_default()
                .push(user.name.clone());
        }
    }
    for members in rooms.values_mut() {
        members.sort();
    }
    rooms
}

/// The signal the chat stops on: raised by `stop`, and by `/stop` on the
/// console once [`read_console`] runs. (A signal of its own, so that
/// `/stop` does not raise the caller's `stop`.)
fn stopping(stop: &Stop) -> Stop {
    let stopping = Stop::new();
    let (stop, raise) = (stop.clone(), stopping.clone());
    std::thread::spawn(move || {
        stop.wait();
        raise.raise();
    });
    stopping
}

/// The admin console, on every runtime: reads stdin on a thread of its own
/// (no runtime has stdin here) and runs each line at once; `/stop` raises
/// `stopping`.
fn read_console(stopping: &Stop, chat: Arc<Chat>) {
    let stopping = stopping.clone();
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if console(&chat, &line) == Console::Stop {
                stopping.raise();
                break;
            }
        }
    });
}

/// What the console does after a line.
#[derive(Debug, PartialEq, Eq)]
enum Console {
    Continue,
    /// `/stop`: shut the server down.
    Stop,
}

/// Runs one admin console line.
fn console(chat: &Chat, line: &str) -> Console {
    let line = line.trim();
    if line.is_empty() {
        return Console::Continue;
    }
    let (command, rest) = line.split_once(' ').unwrap_or((line, ""));
    let rest = rest.trim();
    match command {
        "/sessions" => list_sessions(chat),
        "/kick" => match target_arg(chat, rest) {
            Ok(Target::Here(session)) => {
                session.close_with(CloseCode::POLICY_VIOLATION, "kicked");
                println!("kicked #{}", chat.id_of(session.id()));
            }
            Ok(Target::Elsewhere(nodes, addr)) => {
                let kick = nodes::Ask::Kick { to: addr.session };
                if nodes.ask(addr.node, &kick) {
                    println!("kicking #{addr} on its node");
                } else {
                    println!("cannot reach #{addr}'s node now: try again");
                }
            }
            Err(e) => println!("{e}"),
        },
        "/broadcast" if !rest.is_empty() => {
            let event = Out::Broadcast {
                from: "admin",
                text: rest,
            };
            let event = encode(&event);
            let report = chat.server.hub().broadcast(&event, None);
            match &chat.nodes {
                Some(nodes) => {
                    let text = match &event {
                        Message::Text(text) => text.as_str().to_owned(),
                        _ => String::new(),
                    };
                    let sent = nodes.ask_all(&nodes::Ask::Broadcast { event: text });
                    println!(
                        "broadcast to {} sessions here{}",
                        report.delivered,
                        if sent {
                            " and to every other node"
                        } else {
                            "; the other nodes cannot be reached now"
                        }
                    );
                }
                None => println!("broadcast to {} sessions", report.delivered),
            }
        }
        "/rooms" => {
            let rooms = rooms_of(&chat.all_users_blocking());
            println!("{} rooms", rooms.len());
            for (room, members) in rooms {
                println!("  {room}: {} ({})", members.len(), members.join(", "));
            }
        }
        "/info" => match target_arg(chat, rest) {
            Ok(Target::Here(session)) => info(chat, &session),
            Ok(Target::Elsewhere(_, addr)) => match chat
                .all_users_blocking()
                .into_iter()
                .find(|user| user.id == ChatId::Node(addr))
            {
                Some(user) => println!(
                    "#{addr} {} room={} on another node",
                    user.name,
                    user.room.as_deref().unwrap_or("-")
                ),
                None => println!("no session #{addr}"),
            },
            Err(e) => println!("{e}"),
        },
        "/stats" => print_stats(chat),
        "/stop" => {
            println!(
                "stopping: closing {} sessions",
                chat.server.hub().session_count()
            );
            return Console::Stop;
        }
        _ => {
            println!(
                "commands: /sessions  /kick <id>  /broadcast <msg>  /rooms  /info <id>  /stats  /stop"
            )
        }
    }
    Console::Continue
}

/// `/stats`: each node's sessions and rooms (this one's as they are now,
/// the others' as they last reported them), and the sum.
fn print_stats(chat: &Chat) {
    let hub = chat.server.hub();
    let here = storm_proto::backplane::NodeStats {
        sessions: u64::try_from(hub.session_count()).unwrap_or(u64::MAX),
        rooms: u64::try_from(hub.group_count()).unwrap_or(u64::MAX),
    };
    let mut nodes = vec![(String::from("this node"), here)];
    if let (Some(backplane), Some(me)) = (&chat.nodes, chat.me.upgrade()) {
        let others = backplane.block_on(async move {
            match &me.nodes {
                Some(nodes) => nodes.other_nodes().await,
                None => Ok(Vec::new()),
            }
        });
        match others.unwrap_or_else(|| Err("the node is stopping".to_owned())) {
            Ok(others) => nodes.extend(
                others
                    .into_iter()
                    .map(|(tag, stats)| (format!("node {tag}"), stats)),
            ),
            Err(error) => println!("the other nodes' stats are unknown: {error}"),
        }
    }
    for (node, stats) in &nodes {
        println!("{node}: {} sessions, {} rooms", stats.sessions, stats.rooms);
    }
    let sessions: u64 = nodes.iter().map(|(_, stats)| stats.sessions).sum();
    println!("{sessions} sessions on {} nodes", nodes.len());
}

/// A session the console names.
enum Target<'a> {
    /// On this node.
    Here(Session),
    /// On another node (which may not have it).
    Elsewhere(&'a nodes::Nodes, SessionAddr),
}

/// The session named by a console argument: `3` or `#3`, and across
/// nodes `0a1b2c3d-3` or `#0a1b2c3d-3` too (on any node).
fn target_arg<'a>(chat: &'a Chat, arg: &str) -> Result<Target<'a>, String> {
    let bare = arg.strip_prefix('#').unwrap_or(arg);
    let number = match (
        bare.parse::<u64>(),
        bare.parse::<SessionAddr>(),
        &chat.nodes,
    ) {
        (Ok(number), _, _) => number,
        (_, Ok(addr), Some(nodes)) if addr.node == nodes.tag() => addr.session,
        (_, Ok(addr), Some(nodes)) => return Ok(Target::Elsewhere(nodes, addr)),
        _ => return Err(format!("not a session id: {arg:?}")),
    };
    let id = SessionId::new(number);
    chat.server
        .session(id)
        .map(Target::Here)
        .ok_or_else(|| format!("no session #{}", chat.id_of(id)))
}

/// `/sessions`: this node's, then (across nodes) the other nodes'.
fn list_sessions(chat: &Chat) {
    let sessions = chat.server.sessions();
    let others: Vec<UserInfo> = match &chat.nodes {
        Some(nodes) => {
            let mine =
                |user: &UserInfo| matches!(user.id, ChatId::Node(a) if a.node == nodes.tag());
            let mut users = chat.all_users_blocking();
            users.retain(|user| !mine(user));
            users
        }
        None => Vec::new(),
    };
    println!("{} sessions", sessions.len() + others.len());
    for user in &others {
        println!(
            "  #{} {} room={} on another node",
            user.id,
            user.name,
            user.room.as_deref().unwrap_or("-")
        );
    }
    let registry = chat.registry();
    for session in sessions {
        let (name, room) = registry
            .users
            .get(&session.id())
            .map_or(("?", None), |user| {
                (user.name.as_str(), user.room.as_deref())
            });
        println!(
            "  #{} {name} room={} from {} up {}s",
            chat.id_of(session.id()),
            room.unwrap_or("-"),
            session.remote_addr(),
            session.uptime().as_secs()
        );
    }
}

fn info(chat: &Chat, session: &Session) {
    let (name, room) = chat
        .registry()
        .users
        .get(&session.id())
        .map_or(("?".to_owned(), None), |user| {
            (user.name.clone(), user.room.clone())
        });
    let metrics = session.metrics();
    println!(
        "#{} {name} room={} from {} up {:.1}s state {:?}",
        chat.id_of(session.id()),
        room.as_deref().unwrap_or("-"),
        session.remote_addr(),
        session.uptime().as_secs_f64(),
        session.state(),
    );
    println!(
        "  in {} msgs / {} B, out {} msgs / {} B, dropped {}",
        metrics.messages_received,
        metrics.bytes_received,
        metrics.messages_sent,
        metrics.bytes_sent,
        metrics.messages_dropped
    );
}

/// One page request as it is read, the same on every runtime: the I/O
/// loop feeds it what it reads until it has the response.
#[derive(Default)]
struct PageRequest {
    head: Vec<u8>,
    /// How much of `head` was searched for its end.
    scanned: usize,
}

impl PageRequest {
    /// Takes the bytes just read; the whole response once the request
    /// head is complete (or too large), after which the connection closes.
    fn push(&mut self, bytes: &[u8], page: &Page) -> Option<String> {
        if self.head.len() + bytes.len() > MAX_HTTP_HEAD {
            return Some(response("431 Request Header Fields Too Large", "", false));
        }
        self.head.extend_from_slice(bytes);
        // Only the new bytes (and the 3 before them) can complete "\r\n\r\n".
        let from = self.scanned.saturating_sub(3);
        self.scanned = self.head.len();
        let complete = self
            .head
            .get(from..)
            .is_some_and(|tail| tail.windows(4).any(|w| w == b"\r\n\r\n"));
        complete.then(|| self.answer(page))
    }

    fn answer(&self, page: &Page) -> String {
        let request_line = self.head.split(|&b| b == b'\r').next().unwrap_or_default();
        let request_line = String::from_utf8_lossy(request_line);
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap_or_default();
        let target = parts.next().unwrap_or_default();
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        // The token is URL-safe (checked at start), so it is compared as sent.
        let token_ok = page.token.as_deref().is_none_or(|token| {
            query.split('&').any(|pair| {
                pair.strip_prefix("token=")
                    .is_some_and(|t| same_token(t, token))
            })
        });
        match (method, path) {
            ("GET" | "HEAD", "/" | "/index.html") if !token_ok => response(
                "401 Unauthorized",
                "open the chat page with ?token=TOKEN\n",
                method == "HEAD",
            ),
            ("GET" | "HEAD", "/" | "/index.html") => {
                response("200 OK", &page.html, method == "HEAD")
            }
            ("GET" | "HEAD", _) => response("404 Not Found", "not found\n", method == "HEAD"),
            _ => response("405 Method Not Allowed", "", false),
        }
    }
}

fn response(status: &str, body: &str, head_only: bool) -> String {
    let content_type = if body.starts_with('<') {
        "text/html; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nAllow: GET, HEAD\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        response.push_str(body);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        let parsed: Command =
            serde_json::from_str(r#"{"type":"whisper","to":"bob","text":"x"}"#).unwrap();
        assert!(matches!(parsed, Command::Whisper { ref to, .. } if to == "bob"));
        let parsed: Command = serde_json::from_str(r#"{"type":"leave","extra":1}"#).unwrap();
        assert!(matches!(parsed, Command::Leave));
        assert!(serde_json::from_str::<Command>(r#"{"type":"nope"}"#).is_err());
        assert!(serde_json::from_str::<Command>(r#"{"type":"chat"}"#).is_err());
        let parsed: Command = serde_json::from_str(
            r#"{"type":"join","room":"r","epoch":"00000000000000ab","offset":4}"#,
        )
        .unwrap();
        assert!(matches!(
            parsed,
            Command::Join { ref epoch, offset: Some(4), .. } if epoch.as_deref() == Some("00000000000000ab")
        ));
        let parsed: Command = serde_json::from_str(r#"{"type":"join","room":"r"}"#).unwrap();
        assert!(matches!(
            parsed,
            Command::Join {
                epoch: None,
                offset: None,
                ..
            }
        ));
    }

    #[test]
    fn events_serialize() {
        let text = serde_json::to_string(&Out::Tick {
            time_ms: 5,
            users: 2,
        })
        .unwrap();
        assert_eq!(text, r#"{"type":"tick","time_ms":5,"users":2}"#);
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(valid_name("  ann ", "name").unwrap(), "ann");
        assert!(valid_name("", "name").is_err());
        assert!(valid_name("a\nb", "name").is_err());
        assert!(valid_name(&"x".repeat(33), "name").is_err());
        assert!(valid_name(&"é".repeat(32), "name").is_ok());
        assert!(is_guest_name("guest-12"));
        assert!(!is_guest_name("guest-"));
        assert!(!is_guest_name("guest-x1"));
    }

    fn page(html: &str) -> Page {
        Page {
            html: html.to_owned(),
            token: None,
        }
    }

    #[test]
    fn the_gate_lets_in_the_page_s_own_origin_only() {
        let gate = Gate {
            allowed: Vec::new(),
            page: Some(("http", 9003)),
            token: None,
        };
        let allowed = |origin: &str, host: &str| gate.origin_allowed(origin.as_bytes(), host);
        assert!(allowed("http://127.0.0.1:9003", "127.0.0.1:9002"));
        assert!(allowed("http://localhost:9003", "localhost:9002"));
        assert!(allowed("http://[::1]:9003", "[::1]:9002"));
        assert!(!allowed("http://127.0.0.1:9003", "localhost:9002"));
        assert!(!allowed("https://127.0.0.1:9003", "127.0.0.1:9002"));
        assert!(!allowed("http://127.0.0.1:8000", "127.0.0.1:9002"));
        assert!(!allowed("https://evil.example", "127.0.0.1:9002"));
        assert!(!allowed("null", "127.0.0.1:9002"));
        let listed = Gate {
            allowed: vec!["https://chat.example".to_owned()],
            ..gate
        };
        assert!(listed.origin_allowed(b"https://chat.example", "127.0.0.1:9002"));
        assert!(!listed.origin_allowed(b"http://127.0.0.1:9003", "127.0.0.1:9002"));
        let no_page = Gate {
            allowed: Vec::new(),
            page: None,
            token: None,
        };
        assert!(!no_page.origin_allowed(b"http://127.0.0.1:9003", "127.0.0.1:9002"));
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abd", "abc") && !same_token("ab", "abc"));
    }

    #[test]
    fn a_token_guards_the_page() {
        let page = Page {
            html: "<p>page".to_owned(),
            token: Some("s3cret".to_owned()),
        };
        let answer = |request: &[u8]| PageRequest::default().push(request, &page).unwrap();
        assert!(answer(b"GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 401 "));
        assert!(answer(b"GET /?token=nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 401 "));
        let ok = answer(b"GET /?ws=x&token=s3cret HTTP/1.1\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK") && ok.ends_with("<p>page"));
    }

    #[test]
    fn page_requests_whole_byte_by_byte_and_too_large() {
        let request = b"GET /?ws=x HTTP/1.1\r\nHost: h\r\n\r\n";
        let mut whole = PageRequest::default();
        let response = whole.push(request, &page("<p>page")).unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.ends_with("<p>page"));
        let mut one_by_one = PageRequest::default();
        let mut answered = None;
        for (i, byte) in request.iter().enumerate() {
            answered = one_by_one.push(std::slice::from_ref(byte), &page("<p>page"));
            assert_eq!(answered.is_some(), i == request.len() - 1, "byte {i}");
        }
        assert_eq!(answered.as_deref(), Some(response.as_str()));
        let head = PageRequest::default()
            .push(b"HEAD / HTTP/1.1\r\n\r\n", &page("<p>page"))
            .unwrap();
        assert!(head.ends_with("\r\n\r\n") && head.contains("Content-Length: 7"));
        let missing = PageRequest::default().push(b"GET /x HTTP/1.1\r\n\r\n", &page(""));
        assert!(missing.unwrap().starts_with("HTTP/1.1 404 "));
        let post = PageRequest::default().push(b"POST / HTTP/1.1\r\n\r\n", &page(""));
        assert!(post.unwrap().starts_with("HTTP/1.1 405 "));
        let mut endless = PageRequest::default();
        let chunk = [b'a'; 1000];
        let too_large = (0..10).find_map(|_| endless.push(&chunk, &page("")));
        assert!(too_large.unwrap().starts_with("HTTP/1.1 431 "));
        assert!(endless.head.len() <= MAX_HTTP_HEAD);
    }

    #[test]
    fn default_page_port() {
        let ws: SocketAddr = "127.0.0.1:9002".parse().unwrap();
        assert_eq!(
            default_http_addr("127.0.0.1:9002", ws).unwrap().port(),
            9003
        );
        let ws: SocketAddr = "127.0.0.1:41234".parse().unwrap();
        assert_eq!(default_http_addr("127.0.0.1:0", ws).unwrap().port(), 0);
        let ws: SocketAddr = "127.0.0.1:65535".parse().unwrap();
        assert!(default_http_addr("127.0.0.1:65535", ws).is_err());
    }

    /// A chat over a bare hub, as `deliver` sees it: no server sessions.
    struct BareHub(Hub);

    impl Server for BareHub {
        fn hub(&self) -> &Hub {
            &self.0
        }
        fn sessions(&self) -> Vec<Session> {
            Vec::new()
        }
        fn session(&self, _: SessionId) -> Option<Session> {
            None
        }
    }

    /// A chat on a fresh hub with `members` sessions in `room` (their
    /// outboxes, which queue messages as they are).
    fn chat_with_room(
        room: &str,
        members: usize,
    ) -> (Arc<Chat>, Vec<Arc<storm_host::hub::Outbox>>) {
        let now = std::time::Instant::now();
        let hub = Hub::new(storm_host::hub::HubConfig::default(), now).unwrap();
        let outboxes: Vec<_> = (0..members)
            .map(|_| {
                let outbox = hub.register(hub.try_admit().unwrap(), now).unwrap();
                hub.join(outbox.id(), room).unwrap();
                outbox
            })
            .collect();
        (Chat::new(BareHub(hub), None), outboxes)
    }

    /// A writer's waker that, when a room event wakes it (inside the
    /// fan-out), notes whether the chat's registry could be taken then.
    struct Probe {
        chat: Weak<Chat>,
        registry_free: Mutex<Vec<bool>>,
    }

    impl std::task::Wake for Probe {
        fn wake(self: Arc<Self>) {
            let chat = self.chat.upgrade().unwrap();
            let free = chat.registry.try_lock().is_ok();
            self.registry_free.lock().unwrap().push(free);
        }
    }

    /// What a room's fan-out across nodes blocks: while a room event is
    /// queued for the room's members (and their writers woken), the chat's
    /// registry is free, so connects, commands and joins of this room or
    /// any other go on. (It held the registry for the whole fan-out.)
    #[test]
    fn a_room_s_fan_out_does_not_hold_the_registry() {
        let (chat, outboxes) = chat_with_room("big", 200);
        let probe = Arc::new(Probe {
            chat: Arc::downgrade(&chat),
            registry_free: Mutex::default(),
        });
        let waker = std::task::Waker::from(Arc::clone(&probe));
        for outbox in &outboxes {
            outbox.register_waker(&waker);
        }
        let event = encode(&Out::Broadcast {
            from: "admin",
            text: "x",
        });
        chat.deliver(chat.server.hub(), "big", None, &event);
        let free = probe.registry_free.lock().unwrap().clone();
        assert_eq!(free.len(), 200, "every member's writer was woken");
        assert!(
            free.iter().all(|&free| free),
            "the registry was held during the fan-out for {} of 200 wake-ups",
            free.iter().filter(|&&free| !free).count()
        );
        for outbox in &outboxes {
            let mut queued = Vec::new();
            let _ = outbox.drain_into(&mut queued, usize::MAX);
            assert_eq!(queued, std::slice::from_ref(&event));
        }
    }

    /// A room's events delivered from two threads at once reach every
    /// member in one and the same order, each once: the fan-out outside
    /// the registry lock keeps the order of deliveries.
    #[test]
    fn concurrent_room_events_reach_every_member_in_one_order() {
        const EACH: usize = 300;
        let (chat, outboxes) = chat_with_room("room", 40);
        let deliverers: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|from| {
                let chat = Arc::clone(&chat);
                std::thread::spawn(move || {
                    for n in 0..EACH {
                        let text = n.to_string();
                        let event = encode(&Out::Broadcast { from, text: &text });
                        chat.deliver(chat.server.hub(), "room", None, &event);
                    }
                })
            })
            .collect();
        for deliverer in deliverers {
            deliverer.join().unwrap();
        }
        let mut first: Option<Vec<Message>> = None;
        for outbox in &outboxes {
            let mut queued = Vec::new();
            let _ = outbox.drain_into(&mut queued, usize::MAX);
            assert_eq!(queued.len(), 2 * EACH);
            match &first {
                None => first = Some(queued),
                Some(first) => assert!(first == &queued, "two members saw different orders"),
            }
        }
    }
}
