//! `xnode`: one chat room across two `storm chat` nodes sharing a Redis
//! backplane, against the same room on one node alone (issue #18 item 7).
//!
//! It starts a real `redis-server` on a free loopback port in a temporary
//! directory (the backplane tests' helper), then makes two runs with the
//! same load, each on fresh `storm chat` processes:
//!
//! 1. **one node**: one `storm chat` without a backplane;
//! 2. **two nodes**: two `storm chat --backplane redis://…`.
//!
//! In each run `--sessions` WebSocket sessions (spread evenly over the
//! nodes) and `--publishers` more (spread the same way) are in one room,
//! the lobby, where every session starts (so no leave and join storms
//! besides the one `joined` per session). Once every session has seen its
//! own `joined` and a barrier message, the publishers send
//! `--rate` room messages per second in all for `--duration` seconds, each
//! text carrying its number and its send time. Every session records each
//! message once: its delivery latency (received − sent, one clock: the
//! sessions live in this process), counted as *same node* when the
//! publisher is on the session's node and *cross node* otherwise;
//! duplicates; and at the end what never came (lost). Around the load the
//! Redis server's `INFO commandstats` is read, so the report gives the
//! Redis publishes per room message, and `/proc` gives the CPU each process
//! spent.
//!
//! With `--stages`, the two nodes also stamp each room message at each
//! stage of the backplane (`storm_backplane::stages`: queued for the
//! publisher, taken into a pipeline, its reply in, received by each node's
//! subscriber, delivered there), and a second table gives the p50 and p99
//! of each stage from the client's send to its receipt, same-node and
//! cross-node, set against each other by the messages' offsets.
//!
//! Output: one table of both runs, the cross-node cost at p99 against the
//! one-node p99, the Redis figures, and a last line
//! `result: lost=N duplicates=N notices=N errors=N` (notices: the
//! backplane's `local_only` and `unrecoverable`, which say the room's order
//! across nodes broke). Exit code 0 when all four are 0; 1 otherwise (the
//! run still reports); 2 for a bad option; 3 when `redis-server` is not
//! installed (the line saying so is printed first).
//!
//! Bounded: every wait has a deadline, the samples kept are capped
//! (`--sessions` × messages ≤ [`MAX_SAMPLES`]), and every process it
//! started is stopped by its pid when the run ends, however it ends.
//! Loopback only.

#[path = "../../../../storm-backplane/tests/common/mod.rs"]
mod servers;

use std::borrow::Cow;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use clap::Parser;
use serde::Deserialize;
use servers::RedisServer;
use storm_backplane::stages::{self, Stamp};
use storm_e2e::stats::percentile_us;
use storm_e2e::sys::{USER_HZ, self_cpu_ticks, stat_cpu_ticks};
use storm_host::link::CloseReason;
use storm_host::options::{ClientOptions, WsOptions};
use storm_tokio::proto::Message;
use storm_tokio::{Client, Handler, Session, WsClient};
use tokio::sync::Semaphore;

/// The room every session is in: the one the chat puts it in on connect.
const ROOM: &str = "lobby";
/// Most sessions.
const MAX_SESSIONS: usize = 20_000;
/// The environment variable of `storm chat --backplane-stages`: how the
/// two nodes are told where their stamps go with `--stages` (through the
/// environment rather than the option, so that a `storm` from before the
/// option, which read it in the backplane library, is measured the same
/// way).
const STAGES_VAR: &str = "STORM_BACKPLANE_STAGES";
/// Most publishers.
const MAX_PUBLISHERS: usize = 64;
/// Most room messages per second.
const MAX_RATE: f64 = 100_000.0;
/// Longest load, in seconds.
const MAX_DURATION: f64 = 60.0;
/// Most latency samples one run keeps (8 bytes each: 160 MiB).
const MAX_SAMPLES: u64 = 20_000_000;
/// Most bytes all the nodes' session queues may hold in all
/// (`--sessions` × `--max-pending-bytes`).
const MAX_QUEUED_BYTES: u64 = 4 << 30;
/// Time a node has to print its banner, and a session to connect (nodes
/// busy with the joins of thousands of sessions are slow to answer).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Time every session has to be in the room and see the barrier.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(180);
/// Sessions connecting at once.
const CONNECT_AT_ONCE: usize = 64;
/// After the last send: how long the deliveries may stall before the rest
/// counts as lost, and how long they may take in all.
const DRAIN_STALL: Duration = Duration::from_secs(3);
const DRAIN_MAX: Duration = Duration::from_secs(60);
/// Descriptors the tool needs beside its sessions.
const SPARE_DESCRIPTORS: usize = 256;
/// Errors kept word for word (the rest are counted).
const MAX_ERRORS_KEPT: usize = 5;

/// One chat room across two `storm chat` nodes sharing a Redis backplane,
/// against one node alone: delivery latency same-node and cross-node,
/// losses, duplicates, Redis publishes per room message.
#[derive(Debug, Parser)]
#[command(name = "xnode", about)]
struct Args {
    /// The `storm` binary to run [default: `storm` beside this program].
    #[arg(long)]
    storm: Option<PathBuf>,
    /// Sessions in the room (spread evenly over the nodes), at most 20000.
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// Sessions that publish (spread the same way; not among --sessions).
    #[arg(long, default_value_t = 2)]
    publishers: usize,
    /// Room messages per second, all publishers together.
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Seconds of load, at most 60; messages = rate × duration.
    #[arg(long, default_value_t = 2.0)]
    duration: f64,
    /// Each node's --max-pending-bytes: bytes queued for one session before
    /// the chat drops a room message for it (the chat's own default is
    /// 1 MiB; sessions × this must stay under 4 GiB).
    #[arg(long, default_value_t = 256 * 1024)]
    max_pending_bytes: u64,
    /// Also time each stage of a room message's way through the backplane
    /// (the nodes' stamps, through the STORM_BACKPLANE_STAGES variable) and
    /// report their p50 and p99.
    #[arg(long)]
    stages: bool,
}

/// A checked configuration.
#[derive(Debug, Clone)]
struct Config {
    storm: PathBuf,
    sessions: usize,
    publishers: usize,
    rate: f64,
    duration: f64,
    /// Room messages per run.
    messages: u64,
    max_pending_bytes: u64,
    stages: bool,
}

impl Config {
    fn from_args(args: Args) -> Result<Self, String> {
        let storm = match args.storm {
            Some(path) => path,
            None => std::env::current_exe()
                .map_err(|e| format!("where is this program: {e}"))?
                .with_file_name("storm"),
        };
        if !storm.is_file() {
            return Err(format!(
                "no storm binary at {} (cargo build [--release] -p storm-cli, or --storm PATH)",
                storm.display()
            ));
        }
        if !(1..=MAX_SESSIONS).contains(&args.sessions) {
            return Err(format!("--sessions must be 1..={MAX_SESSIONS}"));
        }
        if !(1..=MAX_PUBLISHERS).contains(&args.publishers) {
            return Err(format!("--publishers must be 1..={MAX_PUBLISHERS}"));
        }
        if !(args.rate > 0.0 && args.rate <= MAX_RATE) {
            return Err(format!("--rate must be in (0, {MAX_RATE}]"));
        }
        if !(args.duration > 0.0 && args.duration <= MAX_DURATION) {
            return Err(format!("--duration must be in (0, {MAX_DURATION}] seconds"));
        }
        let messages = (args.rate * args.duration).round() as u64;
        if messages == 0 {
            return Err("--rate × --duration must be at least one message".to_owned());
        }
        if messages * args.sessions as u64 > MAX_SAMPLES {
            return Err(format!(
                "--sessions × messages ({} × {messages}) is over {MAX_SAMPLES} samples: \
                 lower --sessions, --rate or --duration",
                args.sessions
            ));
        }
        if args.max_pending_bytes == 0
            || args.max_pending_bytes * args.sessions as u64 > MAX_QUEUED_BYTES
        {
            return Err(format!(
                "--max-pending-bytes must be at least 1 and at most {MAX_QUEUED_BYTES} / --sessions"
            ));
        }
        let needed = args.sessions + args.publishers + SPARE_DESCRIPTORS;
        match open_files_limit() {
            Some(limit) if limit < needed as u64 => {
                return Err(format!(
                    "{needed} descriptors needed, the limit is {limit}: run `ulimit -n {needed}` first"
                ));
            }
            _ => {}
        }
        Ok(Self {
            storm,
            sessions: args.sessions,
            publishers: args.publishers,
            rate: args.rate,
            duration: args.duration,
            messages,
            max_pending_bytes: args.max_pending_bytes,
            stages: args.stages,
        })
    }
}

/// The soft limit on open descriptors (`/proc/self/limits`), which the
/// nodes inherit; `None` where it cannot be read.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

// ------------------------------------------------------------------ nodes

/// A running `storm chat`, killed (by its pid) when dropped.
struct Node {
    child: Child,
    /// Its `ws://` URL.
    url: String,
}

impl Node {
    /// Starts `storm chat` on a free loopback port, with the backplane at
    /// `backplane` if given (stamping its stages into `stages` if given),
    /// and waits for its banner.
    fn start(
        config: &Config,
        backplane: Option<&str>,
        stages: Option<&std::path::Path>,
    ) -> Result<Self, String> {
        let mut command = Command::new(&config.storm);
        command
            .args([
                "chat",
                "--addr",
                "127.0.0.1:0",
                "--no-http",
                "--tick-ms",
                "0",
            ])
            .args(["--max-pending-bytes", &config.max_pending_bytes.to_string()]);
        if let Some(url) = backplane {
            command.args(["--backplane", url]);
        }
        if let Some(path) = stages {
            command.env(STAGES_VAR, path);
        }
        // stdin stays open: the chat reads its console there.
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{}: {e}", config.storm.display()))?;
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("storm chat: no stdout".to_owned());
        };
        let banner = banner(stdout, "listening on ws://");
        let mut node = Self {
            child,
            url: String::new(),
        };
        match banner.recv_timeout(START_TIMEOUT) {
            Ok(addr) => {
                node.url = format!("ws://{addr}/");
                Ok(node)
            }
            Err(_) => Err(format!(
                "storm chat printed no `listening on ws://` within {START_TIMEOUT:?}"
            )),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `from` line by line to its end on a thread of its own (so the
/// child never blocks on a full pipe); the text after `marker` on the
/// first line holding it goes to the receiver.
fn banner(from: impl Read + Send + 'static, marker: &'static str) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if let Some(rest) = line.split(marker).nth(1) {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(rest.trim().to_owned());
                }
            }
        }
    });
    rx
}

/// CPU time of process `pid` so far, in [`USER_HZ`] ticks (0 if gone).
fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat_cpu_ticks(&stat))
        .unwrap_or(0)
}

// ------------------------------------------------------------------ Redis

/// One `INFO` section of the Redis server at `addr` (`127.0.0.1:PORT`),
/// through a plain RESP request.
fn redis_info(addr: &str, section: &str) -> Result<String, String> {
    let fail = |e: std::io::Error| format!("INFO {section} from {addr}: {e}");
    let mut stream = TcpStream::connect(addr).map_err(fail)?;
    stream.set_read_timeout(Some(START_TIMEOUT)).map_err(fail)?;
    let request = format!("*2\r\n$4\r\nINFO\r\n${}\r\n{section}\r\n", section.len());
    stream.write_all(request.as_bytes()).map_err(fail)?;
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    reader.read_line(&mut head).map_err(fail)?;
    let len: usize = head
        .strip_prefix('$')
        .and_then(|n| n.trim().parse().ok())
        .filter(|&n| n <= 1 << 20)
        .ok_or_else(|| format!("INFO {section}: unexpected reply {head:?}"))?;
    let mut body = vec![0; len];
    reader.read_exact(&mut body).map_err(fail)?;
    String::from_utf8(body).map_err(|e| format!("INFO {section}: {e}"))
}

/// The `calls=` of command `name` in an `INFO commandstats` text (0 when
/// it was never called).
fn command_calls(info: &str, name: &str) -> u64 {
    let key = format!("cmdstat_{name}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(&key))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A numeric field `name:` of an `INFO` text.
fn info_field(info: &str, name: &str) -> Option<u64> {
    let key = format!("{name}:");
    info.lines()
        .find_map(|line| line.strip_prefix(&key))
        .and_then(|n| n.trim().parse().ok())
}

/// The Redis commands a room message costs.
#[derive(Debug, Clone, Copy, Default)]
struct RedisCalls {
    publish: u64,
    /// `EVALSHA`/`EVAL`: the script that numbers and publishes.
    scripts: u64,
    xadd: u64,
    /// Every command.
    total: u64,
}

impl RedisCalls {
    fn read(addr: &str) -> Result<Self, String> {
        let info = redis_info(addr, "commandstats")?;
        let stats = redis_info(addr, "stats")?;
        Ok(Self {
            publish: command_calls(&info, "publish"),
            scripts: command_calls(&info, "evalsha") + command_calls(&info, "eval"),
            xadd: command_calls(&info, "xadd"),
            total: info_field(&stats, "total_commands_processed").unwrap_or(0),
        })
    }

    fn since(self, before: Self) -> Self {
        Self {
            publish: self.publish.saturating_sub(before.publish),
            scripts: self.scripts.saturating_sub(before.scripts),
            xadd: self.xadd.saturating_sub(before.xadd),
            total: self.total.saturating_sub(before.total),
        }
    }
}

// --------------------------------------------------------------- sessions

/// What every session of a run shares.
struct Shared {
    /// The clock of every send and receive time.
    t0: Instant,
    /// `t0` on the system clock (ns since the Unix epoch): the clock of the
    /// nodes' stage stamps.
    t0_system_ns: u64,
    /// Whether sessions keep their [`Arrival`]s.
    stages: bool,
    messages: u64,
    publishers: usize,
    nodes: usize,
    /// Sessions that saw their own `joined`.
    ready: AtomicUsize,
    /// Sessions that saw the barrier.
    barrier: AtomicUsize,
    /// First deliveries of load messages, every session together.
    received: AtomicU64,
    /// `local_only` and `unrecoverable` notices.
    notices: AtomicU64,
    /// Set before the run closes its sessions: disconnects are then no
    /// error.
    closing: AtomicBool,
    errors: Mutex<Errors>,
}

#[derive(Default)]
struct Errors {
    count: u64,
    kept: Vec<String>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.t0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn error(&self, error: String) {
        let mut errors = lock(&self.errors);
        errors.count += 1;
        if errors.kept.len() < MAX_ERRORS_KEPT {
            errors.kept.push(error);
        }
    }

    /// The node of the publisher of message `id`.
    fn publisher_node(&self, id: u64) -> usize {
        (id % self.publishers as u64) as usize % self.nodes
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One session: a member of the room on node `node`.
struct Member {
    shared: Arc<Shared>,
    node: usize,
    /// Whether it records the load (publishers do not).
    records: bool,
    tally: Mutex<Tally>,
}

/// What one session saw.
#[derive(Default)]
struct Tally {
    /// Its id from `welcome` (a number on one node, `NODE-N` across nodes).
    id: Option<serde_json::Value>,
    ready: bool,
    barrier: bool,
    /// One bit per load message: received.
    seen: Vec<u64>,
    /// Latencies (ns) of messages from a publisher on its node, and on
    /// the other.
    same: Vec<u64>,
    cross: Vec<u64>,
    duplicates: u64,
    /// Every first delivery, with `--stages`.
    arrivals: Vec<Arrival>,
}

/// One first delivery of a load message to a session, for the stages.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    id: u64,
    /// Its room offset, as the chat event says.
    offset: u64,
    /// The receiving session's node.
    node: usize,
    /// Sent and received, on the system clock (ns since the Unix epoch).
    sent: u64,
    received: u64,
}

/// The fields of a chat event this tool reads on every message.
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default)]
    offset: Option<u64>,
}

/// The text of a load message: `xn ID SENT_NS`; of the barrier: `xn barrier`.
fn load_text(id: u64, sent_ns: u64) -> String {
    format!("{{\"type\":\"chat\",\"text\":\"xn {id} {sent_ns}\"}}")
}
const BARRIER: &str = r#"{"type":"chat","text":"xn barrier"}"#;

/// What a chat text of this tool says.
#[derive(Debug, PartialEq, Eq)]
enum Load {
    Barrier,
    Message { id: u64, sent_ns: u64 },
}

fn parse_load(text: &str) -> Option<Load> {
    let rest = text.strip_prefix("xn ")?;
    if rest == "barrier" {
        return Some(Load::Barrier);
    }
    let (id, sent) = rest.split_once(' ')?;
    Some(Load::Message {
        id: id.parse().ok()?,
        sent_ns: sent.parse().ok()?,
    })
}

impl Member {
    fn receive(&self, message: &Message) {
        let shared = &self.shared;
        // Every session's join reaches every member: S²/2 of them for a
        // room of S. Once in the room, a session skips them unparsed (the
        // chat writes `type` first; anything else takes the full way).
        let bytes = message.as_bytes();
        if (bytes.starts_with(br#"{"type":"joined""#) || bytes.starts_with(br#"{"type":"left""#))
            && lock(&self.tally).ready
        {
            return;
        }
        let event: Event<'_> = match serde_json::from_slice(message.as_bytes()) {
            Ok(event) => event,
            Err(e) => return shared.error(format!("a chat event that is not JSON: {e}")),
        };
        match event.kind.as_ref() {
            "chat" => match event.text.as_deref().and_then(parse_load) {
                Some(Load::Message { id, sent_ns }) => self.record(id, sent_ns, event.offset),
                Some(Load::Barrier) => {
                    let mut tally = lock(&self.tally);
                    if !std::mem::replace(&mut tally.barrier, true) {
                        shared.barrier.fetch_add(1, Ordering::Relaxed);
                    }
                }
                None => shared.error(format!("a chat text not of this run: {:?}", event.text)),
            },
            "welcome" | "joined" => self.setup_event(message),
            // The room's order across nodes was broken: counted, not kept.
            "local_only" | "unrecoverable" => {
                shared.notices.fetch_add(1, Ordering::Relaxed);
            }
            "error" => shared.error(format!(
                "error event: {}",
                String::from_utf8_lossy(message.as_bytes())
            )),
            // left, position, renamed, …
            _ => {}
        }
    }

    fn record(&self, id: u64, sent_ns: u64, offset: Option<u64>) {
        let shared = &self.shared;
        if !self.records {
            return;
        }
        if id >= shared.messages {
            return shared.error(format!("message {id} was never sent"));
        }
        let received_ns = shared.now_ns();
        let latency = received_ns.saturating_sub(sent_ns);
        let mut tally = lock(&self.tally);
        let (word, bit) = ((id / 64) as usize, 1u64 << (id % 64));
        if tally.seen[word] & bit != 0 {
            tally.duplicates += 1;
            return;
        }
        tally.seen[word] |= bit;
        if let (true, Some(offset)) = (shared.stages, offset) {
            tally.arrivals.push(Arrival {
                id,
                offset,
                node: self.node,
                sent: shared.t0_system_ns + sent_ns,
                received: shared.t0_system_ns + received_ns,
            });
        }
        if shared.publisher_node(id) == self.node {
            tally.same.push(latency);
        } else {
            tally.cross.push(latency);
        }
        drop(tally);
        shared.received.fetch_add(1, Ordering::Relaxed);
    }

    /// `welcome` (its id) and `joined` (its own: it is in the room).
    fn setup_event(&self, message: &Message) {
        let Ok(event) = serde_json::from_slice::<serde_json::Value>(message.as_bytes()) else {
            return;
        };
        let mut tally = lock(&self.tally);
        match event["type"].as_str() {
            Some("welcome") => tally.id = Some(event["id"].clone()),
            Some("joined") => {
                let own = tally.id.as_ref() == Some(&event["id"]);
                if own && event["room"] == ROOM && !tally.ready {
                    tally.ready = true;
                    self.shared.ready.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {}
        }
    }
}

/// The storm client's handler of one session.
struct MemberHandler(Arc<Member>);

impl Handler for MemberHandler {
    fn on_message(&self, _session: &Session, message: Message) -> impl Future<Output = ()> + Send {
        self.0.receive(&message);
        async {}
    }

    fn on_disconnect(
        &self,
        _session: &Session,
        reason: &CloseReason,
    ) -> impl Future<Output = ()> + Send {
        let shared = &self.0.shared;
        if !shared.closing.load(Ordering::Relaxed) {
            shared.error(format!("a session was disconnected: {reason}"));
        }
        async {}
    }
}

// -------------------------------------------------------------------- run

/// Latencies of one kind of receiver in one run.
#[derive(Default)]
struct Latencies(Vec<u64>);

impl Latencies {
    /// Its table cells: count, p50, p99 and max in µs.
    fn cells(&self) -> [String; 4] {
        let s = &self.0;
        if s.is_empty() {
            return [
                "0".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
            ];
        }
        let us = |q: f64| format!("{:.0}", percentile_us(s, q));
        [s.len().to_string(), us(0.50), us(0.99), us(1.0)]
    }

    fn p99_us(&self) -> Option<f64> {
        (!self.0.is_empty()).then(|| percentile_us(&self.0, 0.99))
    }
}

/// What one run measured.
struct Outcome {
    label: &'static str,
    same: Latencies,
    cross: Latencies,
    lost: u64,
    duplicates: u64,
    notices: u64,
    errors: Errors,
    /// Seconds from the first due send to the last send.
    send_secs: f64,
    /// Seconds from connecting the first session to the barrier.
    setup_secs: f64,
    /// CPU seconds in the load window: each node, Redis, this tool.
    cpu: Vec<(String, f64)>,
    redis: Option<RedisCalls>,
    /// Every first delivery, with `--stages`.
    arrivals: Vec<Arrival>,
}

/// Runs the load on `nodes` (started already) and stops them.
async fn run(
    config: &Config,
    label: &'static str,
    nodes: Vec<Node>,
    redis_addr: Option<&str>,
) -> Result<Outcome, String> {
    let shared = Arc::new(Shared {
        t0: Instant::now(),
        t0_system_ns: stages::now_ns(),
        stages: config.stages,
        messages: config.messages,
        publishers: config.publishers,
        nodes: nodes.len(),
        ready: AtomicUsize::new(0),
        barrier: AtomicUsize::new(0),
        received: AtomicU64::new(0),
        notices: AtomicU64::new(0),
        closing: AtomicBool::new(false),
        errors: Mutex::new(Errors::default()),
    });
    let total = config.sessions + config.publishers;
    let words = config.messages.div_ceil(64) as usize;
    // Sessions 0..sessions record; the publishers come after them.
    let members: Vec<Arc<Member>> = (0..total)
        .map(|i| {
            let records = i < config.sessions;
            let node = if records { i } else { i - config.sessions } % nodes.len();
            Arc::new(Member {
                shared: Arc::clone(&shared),
                node,
                records,
                tally: Mutex::new(Tally {
                    seen: if records { vec![0; words] } else { Vec::new() },
                    ..Tally::default()
                }),
            })
        })
        .collect();

    let setup_start = Instant::now();
    let gate = Arc::new(Semaphore::new(CONNECT_AT_ONCE));
    let mut connecting = Vec::with_capacity(total);
    for member in &members {
        let url = nodes[member.node].url.clone();
        let (member, gate) = (Arc::clone(member), Arc::clone(&gate));
        connecting.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await;
            let options = ClientOptions::default().with_connect_timeout(START_TIMEOUT);
            WsClient::connect(&url, options, WsOptions::default(), MemberHandler(member))
                .await
                .map_err(|e| format!("connecting to {url}: {e}"))
        }));
    }
    let mut clients = Vec::with_capacity(total);
    for task in connecting {
        match task.await {
            Ok(Ok(client)) => clients.push(client),
            Ok(Err(e)) => shared.error(e),
            Err(e) => shared.error(format!("a connecting task failed: {e}")),
        }
    }
    let outcome = if clients.len() == total {
        load(
            config,
            label,
            &shared,
            &members,
            &clients,
            &nodes,
            redis_addr,
            setup_start,
        )
        .await
    } else {
        let errors = lock(&shared.errors);
        Err(format!(
            "{} of {total} sessions connected; first errors: {:?}",
            clients.len(),
            errors.kept
        ))
    };
    if config.stages {
        // The nodes' last stamps reach their files.
        tokio::time::sleep(stages::FLUSH_EVERY * 3).await;
    }
    shared.closing.store(true, Ordering::Relaxed);
    for client in &clients {
        client.close();
    }
    drop(nodes);
    outcome
}

/// Waits (looking every 20 ms) until `done` holds, for at most `timeout`;
/// says what it waits for every 5 s.
async fn wait_until(
    what: &str,
    timeout: Duration,
    done: impl Fn() -> (bool, String),
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut next_note = Instant::now() + Duration::from_secs(5);
    loop {
        let (ok, state) = done();
        if ok {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("{what}: not within {timeout:?} ({state})"));
        }
        if Instant::now() >= next_note {
            eprintln!("xnode: waiting for {what}: {state}");
            next_note += Duration::from_secs(5);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[allow(clippy::too_many_arguments, reason = "one run's parts, named")]
async fn load(
    config: &Config,
    label: &'static str,
    shared: &Arc<Shared>,
    members: &[Arc<Member>],
    clients: &[Client],
    nodes: &[Node],
    redis_addr: Option<&str>,
    setup_start: Instant,
) -> Result<Outcome, String> {
    let total = members.len();
    wait_until("every session in the room", SETTLE_TIMEOUT, || {
        let ready = shared.ready.load(Ordering::Relaxed);
        (ready == total, format!("{ready} of {total}"))
    })
    .await?;
    // Everything the joins sent is ahead of the barrier in the room's order.
    clients[config.sessions]
        .send(BARRIER)
        .await
        .map_err(|e| format!("barrier: {e}"))?;
    wait_until("the barrier at every session", SETTLE_TIMEOUT, || {
        let seen = shared.barrier.load(Ordering::Relaxed);
        (seen == total, format!("{seen} of {total}"))
    })
    .await?;
    let setup_secs = setup_start.elapsed().as_secs_f64();

    let mut pids: Vec<(String, u32)> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| (format!("node {i}"), node.pid()))
        .collect();
    if let Some(addr) = redis_addr {
        let info = redis_info(addr, "server")?;
        if let Some(pid) = info_field(&info, "process_id") {
            pids.push(("redis".to_owned(), pid as u32));
        }
    }
    let cpu_before: Vec<u64> = pids.iter().map(|(_, pid)| cpu_ticks(*pid)).collect();
    let self_before = self_cpu_ticks().unwrap_or(0);
    let redis_before = redis_addr.map(RedisCalls::read).transpose()?;

    // The load: message j is due at start + j / rate, sent by publisher
    // j mod publishers.
    let start = Instant::now() + Duration::from_millis(10);
    let mut publishing = Vec::with_capacity(config.publishers);
    for p in 0..config.publishers {
        let client = clients[config.sessions + p].clone();
        let shared = Arc::clone(shared);
        let (rate, step) = (config.rate, config.publishers as u64);
        publishing.push(tokio::spawn(async move {
            let due = |j: u64| start + Duration::from_secs_f64(j as f64 / rate);
            let mut j = p as u64;
            while j < shared.messages {
                tokio::time::sleep_until(due(j).into()).await;
                let now = Instant::now();
                while j < shared.messages && due(j) <= now {
                    let text = load_text(j, shared.now_ns());
                    client
                        .send(text)
                        .await
                        .map_err(|e| format!("publisher {p}: {e}"))?;
                    j += step;
                }
            }
            Ok::<Instant, String>(Instant::now())
        }));
    }
    let mut last_send = start;
    for task in publishing {
        match task.await {
            Ok(Ok(done)) => last_send = last_send.max(done),
            Ok(Err(e)) => shared.error(e),
            Err(e) => shared.error(format!("a publisher failed: {e}")),
        }
    }
    let send_secs = last_send.saturating_duration_since(start).as_secs_f64();

    // The rest arrives, or stalls.
    let expected = config.messages * config.sessions as u64;
    let drain_end = Instant::now() + DRAIN_MAX;
    let (mut last, mut last_change) = (0, Instant::now());
    loop {
        let received = shared.received.load(Ordering::Relaxed);
        if received >= expected {
            break;
        }
        if received != last {
            (last, last_change) = (received, Instant::now());
        }
        if last_change.elapsed() >= DRAIN_STALL || Instant::now() >= drain_end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let redis_calls = match (redis_addr, redis_before) {
        (Some(addr), Some(before)) => Some(RedisCalls::read(addr)?.since(before)),
        _ => None,
    };
    let ticks = |after: u64, before: u64| after.saturating_sub(before) as f64 / USER_HZ as f64;
    let mut cpu: Vec<(String, f64)> = pids
        .iter()
        .zip(&cpu_before)
        .map(|((name, pid), &before)| (name.clone(), ticks(cpu_ticks(*pid), before)))
        .collect();
    cpu.push((
        "xnode".to_owned(),
        ticks(self_cpu_ticks().unwrap_or(0), self_before),
    ));

    let (mut same, mut cross, mut duplicates) = (Vec::new(), Vec::new(), 0);
    let mut arrivals = Vec::new();
    for member in members {
        let mut tally = lock(&member.tally);
        same.append(&mut tally.same);
        cross.append(&mut tally.cross);
        arrivals.append(&mut tally.arrivals);
        duplicates += tally.duplicates;
    }
    same.sort_unstable();
    cross.sort_unstable();
    let received = shared.received.load(Ordering::Relaxed);
    Ok(Outcome {
        label,
        same: Latencies(same),
        cross: Latencies(cross),
        lost: expected.saturating_sub(received),
        duplicates,
        notices: shared.notices.load(Ordering::Relaxed),
        errors: std::mem::take(&mut *lock(&shared.errors)),
        send_secs,
        setup_secs,
        cpu,
        redis: redis_calls,
        arrivals,
    })
}

// ----------------------------------------------------------------- stages

/// One node's stamps of the room's messages, by offset.
#[derive(Default)]
struct NodeStamps {
    /// Published here: queued, taken, replied.
    published: std::collections::HashMap<u64, [u64; 3]>,
    /// Received here: received, delivered.
    received: std::collections::HashMap<u64, [u64; 2]>,
}

/// The stamps node `i` wrote under `dir` (the room's only).
fn node_stamps(dir: &std::path::Path, i: usize) -> Result<NodeStamps, String> {
    let path = dir.join(format!("node-{i}.stages"));
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut stamps = NodeStamps::default();
    for line in text.lines() {
        if line.starts_with("dropped ") {
            return Err(format!("{}: {line} stamps", path.display()));
        }
        match Stamp::parse(line) {
            Some(Stamp::Published {
                room,
                offset,
                queued,
                taken,
                replied,
            }) if room == ROOM => {
                stamps.published.insert(offset, [queued, taken, replied]);
            }
            Some(Stamp::Received {
                room,
                offset,
                received,
                delivered,
            }) if room == ROOM => {
                stamps.received.insert(offset, [received, delivered]);
            }
            Some(_) => {}
            None => return Err(format!("{}: not a stages line: {line:?}", path.display())),
        }
    }
    Ok(stamps)
}

/// The stages of the way from a publisher's send to a session's receipt.
const STAGES: [&str; 7] = [
    "client send → queued at the publisher's node (WebSocket, chat)",
    "queued → taken into a pipeline (publisher queue)",
    "taken → the pipeline's reply parsed (round trip, for reference)",
    "taken → received by the node's subscriber (Redis, pub/sub)",
    "received → delivered to the room's sessions (the subscription connection's reading task)",
    "delivered → client receipt (session queues, WebSocket)",
    "all: client send → client receipt",
];

/// The p50/p99 of each of [`STAGES`] in the two-node run, same-node and
/// cross-node, from the nodes' stamps under `dir` and the run's arrivals;
/// a message's stages 1–3 count once per receiving node, 4–5 once per
/// message and node, 6 and the whole once per delivery.
fn stage_table(dir: &std::path::Path, two: &Outcome) -> Result<String, String> {
    let nodes = [node_stamps(dir, 0)?, node_stamps(dir, 1)?];
    // [same, cross] × stage: samples in ns.
    let mut samples: [[Vec<u64>; STAGES.len()]; 2] = Default::default();
    let mut per_node_seen = std::collections::HashSet::new();
    let mut unmatched = 0u64;
    for arrival in &two.arrivals {
        let Some((publisher, [queued, taken, replied])) = nodes
            .iter()
            .enumerate()
            .find_map(|(i, n)| Some((i, *n.published.get(&arrival.offset)?)))
        else {
            unmatched += 1;
            continue;
        };
        let Some(&[received, delivered]) = nodes[arrival.node].received.get(&arrival.offset) else {
            unmatched += 1;
            continue;
        };
        let kind = usize::from(publisher != arrival.node);
        let s = &mut samples[kind];
        if per_node_seen.insert((arrival.id, arrival.node)) {
            s[0].push(queued.saturating_sub(arrival.sent));
            s[1].push(taken.saturating_sub(queued));
            s[2].push(replied.saturating_sub(taken));
            s[3].push(received.saturating_sub(taken));
            s[4].push(delivered.saturating_sub(received));
        }
        s[5].push(arrival.received.saturating_sub(delivered));
        s[6].push(arrival.received.saturating_sub(arrival.sent));
    }
    let mut out = String::from(
        "| stage (two nodes) | same node p50 / p99 µs | cross node p50 / p99 µs |\n|---|---:|---:|\n",
    );
    for (i, stage) in STAGES.iter().enumerate() {
        let cell = |kind: usize| {
            let mut v = samples[kind][i].clone();
            v.sort_unstable();
            if v.is_empty() {
                "-".to_owned()
            } else {
                format!(
                    "{:.0} / {:.0}",
                    percentile_us(&v, 0.50),
                    percentile_us(&v, 0.99)
                )
            }
        };
        out.push_str(&format!("| {stage} | {} | {} |\n", cell(0), cell(1)));
    }
    if unmatched > 0 {
        out.push_str(&format!(
            "({unmatched} deliveries without the nodes' stamps left out)\n"
        ));
    }
    Ok(out)
}

// ----------------------------------------------------------------- report

fn report(config: &Config, outcomes: &[Outcome]) -> bool {
    println!(
        "xnode: {} sessions + {} publishers in one room, {} room messages/s for {} s \
         ({} messages, {} deliveries per run); storm: {}",
        config.sessions,
        config.publishers,
        config.rate,
        config.duration,
        config.messages,
        config.messages * config.sessions as u64,
        config.storm.display()
    );
    println!();
    println!(
        "| run | receivers | delivered | p50 µs | p99 µs | max µs |\n|---|---|---:|---:|---:|---:|"
    );
    for outcome in outcomes {
        for (kind, latencies) in [("same node", &outcome.same), ("cross node", &outcome.cross)] {
            if latencies.0.is_empty() && kind == "cross node" {
                continue;
            }
            let [n, p50, p99, max] = latencies.cells();
            println!(
                "| {} | {kind} | {n} | {p50} | {p99} | {max} |",
                outcome.label
            );
        }
    }
    println!();
    let one = outcomes.first();
    let two = outcomes.get(1);
    if let (Some(one), Some(two)) = (one, two) {
        if let (Some(base), Some(cross)) = (one.same.p99_us(), two.cross.p99_us()) {
            println!(
                "cross-node p99 {cross:.0} µs against one node's {base:.0} µs: {:+.0} µs \
                 (target: at most +1000 µs), × {:.2}",
                cross - base,
                cross / base.max(1.0)
            );
        }
        if let (Some(base), Some(same)) = (one.same.p99_us(), two.same.p99_us()) {
            println!(
                "same-node p99 with the backplane {same:.0} µs: {:+.0} µs, × {:.2}",
                same - base,
                same / base.max(1.0)
            );
        }
    }
    let mut clean = true;
    for outcome in outcomes {
        let sent_rate = config.messages as f64 / outcome.send_secs.max(1e-9);
        let cpu: Vec<String> = outcome
            .cpu
            .iter()
            .map(|(name, secs)| {
                format!(
                    "{name} {secs:.2} s ({:.1} µs/room message)",
                    secs * 1e6 / config.messages as f64
                )
            })
            .collect();
        println!(
            "{}: setup {:.1} s; sent at {sent_rate:.0}/s; lost {}, duplicates {}, \
             notices {}, errors {}; CPU in the load: {}",
            outcome.label,
            outcome.setup_secs,
            outcome.lost,
            outcome.duplicates,
            outcome.notices,
            outcome.errors.count,
            cpu.join(", ")
        );
        for error in &outcome.errors.kept {
            println!("  error: {error}");
        }
        if let Some(calls) = outcome.redis {
            let per = |n: u64| n as f64 / config.messages as f64;
            println!(
                "{}: Redis PUBLISH {} for {} room messages ({:.3} per room message, \
                 {} sessions); scripts {} ({:.3}), XADD {} ({:.3}), all commands {} ({:.3})",
                outcome.label,
                calls.publish,
                config.messages,
                per(calls.publish),
                config.sessions,
                calls.scripts,
                per(calls.scripts),
                calls.xadd,
                per(calls.xadd),
                calls.total,
                per(calls.total)
            );
        }
        clean &= outcome.lost == 0
            && outcome.duplicates == 0
            && outcome.notices == 0
            && outcome.errors.count == 0;
    }
    clean
}

fn main() -> ExitCode {
    let config = match Config::from_args(Args::parse()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("xnode: {e}");
            return ExitCode::from(2);
        }
    };
    // Says so on a line of its own when redis-server is missing.
    let Some(redis) = RedisServer::start() else {
        return ExitCode::from(3);
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("xnode: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut outcomes = Vec::new();
    let failure = runtime
        .block_on(async {
            let one = Node::start(&config, None, None)?;
            eprintln!("xnode: one node: {}", one.url);
            outcomes.push(run(&config, "one node", vec![one], None).await?);
            let url = redis.url();
            let stamps = |i: usize| {
                config
                    .stages
                    .then(|| redis.dir().join(format!("node-{i}.stages")))
            };
            let a = Node::start(&config, Some(&url), stamps(0).as_deref())?;
            let b = Node::start(&config, Some(&url), stamps(1).as_deref())?;
            eprintln!("xnode: two nodes: {} {}, backplane {url}", a.url, b.url);
            let addr = url.trim_start_matches("redis://");
            outcomes.push(run(&config, "two nodes", vec![a, b], Some(addr)).await?);
            Ok::<_, String>(())
        })
        .err();
    // Every session's task ends with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(5));
    // The stamps are in the server's directory, which goes with it.
    let stages = match (config.stages, outcomes.get(1)) {
        (true, Some(two)) => Some(stage_table(redis.dir(), two)),
        _ => None,
    };
    drop(redis);
    // What was measured is reported, also when a later run failed.
    let clean = report(&config, &outcomes);
    if let Some(stages) = stages {
        println!();
        match stages {
            Ok(table) => print!("{table}"),
            Err(e) => println!("stages: {e}"),
        }
    }
    match failure {
        None => {
            let sum = |f: fn(&Outcome) -> u64| outcomes.iter().map(f).sum::<u64>();
            println!(
                "result: lost={} duplicates={} notices={} errors={}",
                sum(|o| o.lost),
                sum(|o| o.duplicates),
                sum(|o| o.notices),
                sum(|o| o.errors.count)
            );
            if clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Some(e) => {
            println!("xnode: FAILED: {e}");
            println!("result: failed");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_texts_parse_back() {
        let event: serde_json::Value =
            serde_json::from_str(&load_text(42, 123_456)).unwrap_or_default();
        let text = event["text"].as_str().unwrap_or_default();
        assert_eq!(
            parse_load(text),
            Some(Load::Message {
                id: 42,
                sent_ns: 123_456
            })
        );
        let barrier: serde_json::Value = serde_json::from_str(BARRIER).unwrap_or_default();
        assert_eq!(
            parse_load(barrier["text"].as_str().unwrap_or_default()),
            Some(Load::Barrier)
        );
        assert_eq!(parse_load("hi"), None);
        assert_eq!(parse_load("xn 1"), None);
        assert_eq!(parse_load("xn a 2"), None);
    }

    #[test]
    fn redis_info_fields() {
        let info = "# Commandstats\r\ncmdstat_publish:calls=12,usec=30,usec_per_call=2.50\r\n\
                    cmdstat_evalsha:calls=7,usec=1\r\n";
        assert_eq!(command_calls(info, "publish"), 12);
        assert_eq!(command_calls(info, "evalsha"), 7);
        assert_eq!(command_calls(info, "xadd"), 0);
        let stats = "total_commands_processed:99\r\nprocess_id:4242\r\n";
        assert_eq!(info_field(stats, "total_commands_processed"), Some(99));
        assert_eq!(info_field(stats, "process_id"), Some(4242));
    }
}
