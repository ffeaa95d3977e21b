//! `storm chat --backplane`: two `storm chat` processes sharing one real
//! `redis-server` behave as one server for room events: a chat message
//! crosses nodes once, with its position; a client back on the other node
//! with its last position gets exactly what it missed, or is told recovery
//! is impossible (history trimmed, Redis restarted empty). Every scenario
//! runs on each runtime (`--runtime tokio`, `smol`, `std`), with a fresh
//! `redis-server` each. Every wait is bounded.

#[path = "../../storm-backplane/tests/common/mod.rs"]
mod servers;

use std::io::Write;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use servers::RedisServer;
use storm_proto::ws::{CloseCode, Event};
use storm_std::ws::{self, WebSocket};
use storm_tests::process::lines;

/// How long any single expected thing may take.
const WAIT: Duration = Duration::from_secs(10);

/// A server nodes meet through.
trait BackplaneServer {
    /// Its `--backplane` URL.
    fn url(&self) -> String;
    /// Whether the backplane keeps each room's history through it (room
    /// messages then carry a position).
    fn keeps_history(&self) -> bool;
    /// Whether user names are unique across the nodes through it (else
    /// per node).
    fn unique_names(&self) -> bool;
}

impl BackplaneServer for RedisServer {
    fn url(&self) -> String {
        RedisServer::url(self)
    }

    fn keeps_history(&self) -> bool {
        true
    }

    fn unique_names(&self) -> bool {
        true
    }
}

/// The runtimes every scenario runs on.
const RUNTIMES: [&str; 3] = ["tokio", "smol", "std"];

/// Runs `scenario` on each runtime, with a fresh `redis-server` each (and
/// nothing, after saying so, without `redis-server`).
fn on_each_runtime(scenario: impl Fn(RedisServer, &str)) {
    for runtime in RUNTIMES {
        let Some(redis) = RedisServer::start() else {
            return;
        };
        println!("on {runtime}");
        scenario(redis, runtime);
    }
}

/// A running `storm chat --backplane`, killed on drop.
struct Node {
    child: Child,
    ws: String,
    /// Its stdout, line by line (read, so it never blocks on a full pipe).
    out: mpsc::Receiver<String>,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    fn start(server: &impl BackplaneServer, runtime: &str, extra: &[&str]) -> Self {
        Self::start_in(server, runtime, extra, &[])
    }

    /// [`start`](Self::start), with `env` added to its environment.
    fn start_in(
        server: &impl BackplaneServer,
        runtime: &str,
        extra: &[&str],
        env: &[(&str, &std::path::Path)],
    ) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_storm"))
            .envs(env.iter().copied())
            .args(["chat", "--addr", "127.0.0.1:0", "--no-http"])
            .args(["--backplane", &server.url()])
            .args(["--runtime", runtime])
            .args(if extra.contains(&"--tick-ms") {
                &[][..]
            } else {
                &["--tick-ms", "0"][..]
            })
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("storm starts");
        let out = lines(child.stdout.take().expect("stdout"));
        let deadline = Instant::now() + WAIT;
        let ws = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = out
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("storm chat's banner on {runtime}"));
            if let Some(addr) = line.split("listening on ws://").nth(1) {
                break addr.trim().to_owned();
            }
        };
        Self { child, ws, out }
    }

    /// Two nodes, started alike.
    fn two(server: &impl BackplaneServer, runtime: &str, extra: &[&str]) -> (Self, Self) {
        (
            Self::start(server, runtime, extra),
            Self::start(server, runtime, extra),
        )
    }

    /// The console's `/stats` on this node, which has one session: up to
    /// its last line, `N sessions on M nodes`.
    fn stats_of_one(&mut self) -> Vec<String> {
        let stats = self.console("/stats", |line| line.contains(" sessions on "));
        assert!(
            stats
                .iter()
                .any(|line| line.starts_with("this node: 1 sessions")),
            "{stats:?}"
        );
        stats
    }

    /// Runs `line` on the admin console; the lines it prints up to the
    /// first for which `last` holds.
    fn console(&mut self, line: &str, last: impl Fn(&str) -> bool) -> Vec<String> {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("console line");
        stdin.flush().expect("flush");
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.out.recv_timeout(left) {
                Ok(line) => {
                    let done = last(&line);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(_) => panic!("{line}: not within {WAIT:?}: {seen:?}"),
            }
        }
    }

    /// Kills the process (SIGKILL, by its pid: no goodbye to anyone).
    fn kill(&mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("reaped");
    }

    /// A client, welcomed and in the lobby (its own `joined` seen).
    fn client(&self) -> Client {
        let mut client = self.connect();
        client.own("joined");
        client
    }

    /// A client, welcomed.
    fn connect(&self) -> Client {
        let (socket, _) = ws::connect(
            &format!("ws://{}/", self.ws),
            &ws::ConnectOptions::default(),
        )
        .expect("connect");
        socket
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("read timeout");
        let mut client = Client {
            socket,
            id: Value::Null,
        };
        client.id = client.expect("welcome")["id"].clone();
        client
    }
}

struct Client {
    socket: WebSocket<TcpStream>,
    /// As the welcome gave it.
    id: Value,
}

impl Client {
    fn send(&mut self, command: &Value) {
        self.socket
            .send_text(&command.to_string())
            .expect("send command");
    }

    /// The next event before `deadline` (read timeouts skipped).
    fn next_event(&mut self, deadline: Instant, seen: &[Value]) -> Event {
        self.event_before(deadline)
            .unwrap_or_else(|| panic!("not within {WAIT:?}: {seen:?}"))
    }

    /// The next event, or `None` once `deadline` passed (read timeouts
    /// skipped).
    fn event_before(&mut self, deadline: Instant) -> Option<Event> {
        while Instant::now() < deadline {
            match self.socket.read() {
                Ok(event) => return Some(event),
                Err(ws::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("read: {e}"),
            }
        }
        None
    }

    /// Messages up to and including the first for which `last` holds.
    fn until(&mut self, last: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            match self.next_event(deadline, &seen) {
                Event::Text(text) => {
                    let v: Value = serde_json::from_str(&text).expect("JSON");
                    let done = last(&v);
                    seen.push(v);
                    if done {
                        return seen;
                    }
                }
                Event::Close(frame) => panic!("closed ({:?}); saw {seen:?}", frame.code),
                _ => {}
            }
        }
    }

    /// Reads until the server closes; the close code and reason.
    fn closed(&mut self) -> (CloseCode, String) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Event::Close(frame) = self.next_event(deadline, &[]) {
                return (frame.code, frame.reason);
            }
        }
    }

    fn expect(&mut self, ty: &str) -> Value {
        self.until(|v| v["type"] == ty).pop().expect("message")
    }

    /// Up to this client's own event of type `ty`.
    fn own(&mut self, ty: &str) -> Vec<Value> {
        let id = self.id.clone();
        self.until(|v| v["type"] == ty && v["id"] == id)
    }

    /// Renames itself; up to its own `renamed`.
    fn name(&mut self, name: &str) {
        if let Err(error) = self.try_name(name) {
            panic!("{name}: {error}");
        }
    }

    /// Asks to be renamed `name`: `Ok` once its own `renamed` came, the
    /// error if one came first.
    fn try_name(&mut self, name: &str) -> Result<(), String> {
        self.send(&json!({"type": "name", "name": name}));
        let id = self.id.clone();
        let seen =
            self.until(|v| (v["type"] == "renamed" && v["id"] == id) || v["type"] == "error");
        let answer = seen.last().expect("an answer");
        match answer["error"].as_str() {
            Some(error) => Err(error.to_owned()),
            None => Ok(()),
        }
    }

    /// Renames itself `name` once no user has it any more (asking again
    /// while it is taken, within [`WAIT`]).
    fn name_when_free(&mut self, name: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.try_name(name) {
                Ok(()) => return,
                Err(error) if error == taken(name) && Instant::now() < deadline => {}
                Err(error) => panic!("{name}: {error}"),
            }
        }
    }

    /// The `users` list (across nodes).
    fn users(&mut self) -> Vec<Value> {
        self.send(&json!({"type": "users"}));
        let seen = self.until(|v| v["type"] == "users" || v["type"] == "error");
        let answer = seen.last().expect("an answer");
        assert_eq!(answer["type"], "users", "{seen:?}");
        answer["users"].as_array().expect("a list").clone()
    }

    /// Asks for `users` until `done` holds of the list; that list.
    fn users_until(&mut self, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let users = self.users();
            if done(&users) {
                return users;
            }
            assert!(Instant::now() < deadline, "not within {WAIT:?}: {users:?}");
        }
    }

    /// Joins `room` fresh; up to its own `joined`.
    fn join(&mut self, room: &str) {
        self.send(&json!({"type": "join", "room": room}));
        self.own("joined");
    }

    /// Says `text` and waits for it to come back: it is then published.
    fn say(&mut self, text: &str) -> Value {
        self.send(&json!({"type": "chat", "text": text}));
        self.until(|v| v["type"] == "chat" && v["text"] == text)
            .pop()
            .expect("chat")
    }
}

/// The error of a rename to a name another user has.
fn taken(name: &str) -> String {
    format!("the name {name} is taken")
}

/// The names in a `users` list.
fn names(users: &[Value]) -> Vec<&str> {
    users.iter().filter_map(|u| u["name"].as_str()).collect()
}

/// The chat messages' texts among `seen`.
fn texts(seen: &[Value]) -> Vec<&str> {
    seen.iter()
        .filter(|v| v["type"] == "chat")
        .filter_map(|v| v["text"].as_str())
        .collect()
}

#[test]
fn a_room_message_crosses_nodes_once_with_its_position() {
    on_each_runtime(|redis, runtime| {
        let (a, b) = Node::two(&redis, runtime, &[]);
        let (mut alice, mut bob) = (a.client(), b.client());
        alice.join("rust");
        bob.join("rust");
        let sent = alice.say("one");
        let epoch = sent["epoch"].as_str().expect("an epoch");
        assert_eq!(epoch.len(), 16, "{sent}");
        assert!(sent["offset"].as_u64().expect("an offset") > 0, "{sent}");
        alice.say("two");
        let seen = bob.until(|v| v["type"] == "chat" && v["text"] == "two");
        assert_eq!(texts(&seen), ["one", "two"], "{seen:?}");
        let one = seen.iter().find(|v| v["text"] == "one").expect("one");
        assert_eq!(one["epoch"], sent["epoch"]);
        assert_eq!(
            one["offset"], sent["offset"],
            "the same position on both nodes"
        );
        assert_eq!(one["from"], sent["from"]);
    });
}

#[test]
fn stage_stamps_go_to_the_file_the_option_or_its_variable_names() {
    // The CLI's wiring of `--backplane-stages` (the backplane library reads
    // no environment): the same on every runtime, so on tokio alone.
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (by_option, by_variable) = (redis.dir().join("a.stages"), redis.dir().join("b.stages"));
    let option = by_option.to_str().expect("a UTF-8 path");
    let a = Node::start(&redis, "tokio", &["--backplane-stages", option]);
    let b = Node::start_in(
        &redis,
        "tokio",
        &[],
        &[("STORM_BACKPLANE_STAGES", by_variable.as_path())],
    );
    let (mut alice, mut bob) = (a.client(), b.client());
    alice.join("rust");
    bob.join("rust");
    alice.say("stamped");
    bob.until(|v| v["type"] == "chat" && v["text"] == "stamped");
    // A stamps the message it published, B the one it received; each
    // node's writer appends them every 100 ms.
    let stamped = |file: &std::path::Path, kind: &str| {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .any(|line| line.starts_with(&format!("{kind} rust ")))
    };
    let deadline = Instant::now() + WAIT;
    while !(stamped(&by_option, "p") && stamped(&by_variable, "r")) {
        assert!(Instant::now() < deadline, "no stamps within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_client_back_on_the_other_node_gets_exactly_what_it_missed() {
    on_each_runtime(|redis, runtime| {
        let (a, b) = Node::two(&redis, runtime, &[]);
        let mut alice = a.client();
        let last = last_seen_before_leaving(&mut alice, b.client(), "m1");
        alice.until(|v| v["type"] == "left");
        for text in ["m2", "m3", "m4"] {
            alice.say(text);
        }
        // Back, on node A this time.
        let mut back = a.client();
        back.send(&json!({
            "type": "join", "room": "rust", "epoch": last["epoch"], "offset": last["offset"],
        }));
        let recovered = back.until(|v| v["type"] == "position");
        assert_eq!(texts(&recovered), ["m2", "m3", "m4"], "{recovered:?}");
        let offsets: Vec<u64> = recovered
            .iter()
            .filter(|v| v["type"] != "position")
            .filter_map(|v| v["offset"].as_u64())
            .collect();
        let first = last["offset"].as_u64().expect("offset") + 1;
        let expected: Vec<u64> = (first..first + offsets.len() as u64).collect();
        assert_eq!(offsets, expected, "no gap, no duplicate: {recovered:?}");
        assert!(!recovered.iter().any(|v| v["type"] == "unrecoverable"));
        // Then live, once each.
        back.own("joined");
        alice.say("m5");
        let live = back.until(|v| v["type"] == "chat" && v["text"] == "m5");
        assert_eq!(texts(&live), ["m5"], "{live:?}");
    });
}

/// `speaker` and `listener` join `rust`, `speaker` says `text`: the
/// listener's copy of it (with its position); the listener then leaves.
fn last_seen_before_leaving(speaker: &mut Client, mut listener: Client, text: &str) -> Value {
    speaker.join("rust");
    listener.join("rust");
    speaker.say(text);
    listener
        .until(|v| v["type"] == "chat" && v["text"] == text)
        .pop()
        .unwrap_or_else(|| panic!("{text}"))
}

/// Joins `room` with the position of `last`; the `unrecoverable` reason.
fn rejoin_unrecoverable(client: &mut Client, room: &str, last: &Value) -> String {
    client.send(&json!({
        "type": "join", "room": room, "epoch": last["epoch"], "offset": last["offset"],
    }));
    let seen = client.until(|v| v["type"] == "unrecoverable" || v["type"] == "position");
    let told = seen.last().expect("an answer");
    assert_eq!(told["type"], "unrecoverable", "{seen:?}");
    assert!(texts(&seen).is_empty(), "{seen:?}");
    told["reason"].as_str().expect("a reason").to_owned()
}

#[test]
fn recovery_is_impossible_after_trimming_and_after_a_redis_restart() {
    on_each_runtime(|mut redis, runtime| {
        let history = ["--backplane-history", "2"];
        let (a, b) = Node::two(&redis, runtime, &history);
        let mut alice = a.client();
        let last = last_seen_before_leaving(&mut alice, b.client(), "m1");
        // The history keeps at least 2 and is trimmed by whole stream nodes
        // (`MAXLEN ~`; Redis's hold at most 100 entries): past that many
        // more, m2 is gone.
        for i in 2..=120 {
            alice.send(&json!({"type": "chat", "text": format!("m{i}")}));
        }
        alice.until(|v| v["type"] == "chat" && v["text"] == "m120");
        let mut back = a.client();
        let reason = rejoin_unrecoverable(&mut back, "rust", &last);
        assert!(reason.contains("trimmed"), "{reason}");
        back.expect("position");

        // Redis restarted empty: the room's history starts over in a new epoch.
        let before = alice.say("m6");
        redis.start_again();
        let mut later = b.connect();
        // Its lobby join ends either way (the node may not have noticed yet).
        later.until(|v| v["type"] == "position" || v["type"] == "unrecoverable");
        let deadline = Instant::now() + WAIT;
        loop {
            let reason = rejoin_unrecoverable(&mut later, "rust", &before);
            if reason.contains("started over") {
                break;
            }
            // The node had not noticed the restart yet: it said so; again.
            assert!(reason.contains("unreachable"), "{reason}");
            assert!(Instant::now() < deadline, "still {reason}");
            later.send(&json!({"type": "leave"}));
            later.own("left");
        }
    });
}

#[test]
fn session_ids_are_unique_across_nodes() {
    on_each_runtime(|redis, runtime| {
        let (a, b) = Node::two(&redis, runtime, &[]);
        let (mut alice, mut bob) = (a.connect(), b.connect());
        // Both are their node's first session: `NODE-1`, the nodes differ.
        let (ida, idb) = (alice.id.clone(), bob.id.clone());
        let parts = |id: &Value| -> (String, String) {
            let id = id.as_str().unwrap_or_else(|| panic!("a string id: {id}"));
            let (node, n) = id.split_once('-').expect("NODE-N");
            assert_eq!(node.len(), 8, "{id}");
            (node.to_owned(), n.to_owned())
        };
        let ((node_a, na), (node_b, nb)) = (parts(&ida), parts(&idb));
        assert_eq!((na.as_str(), nb.as_str()), ("1", "1"));
        assert_ne!(node_a, node_b, "{ida} {idb}");
        // The same ids in room events and lists, on both nodes.
        alice.own("joined");
        bob.own("joined");
        alice.say("hi");
        let seen = bob.until(|v| v["type"] == "chat" && v["text"] == "hi");
        assert_eq!(seen.last().expect("chat")["id"], ida);
        let users = bob.users_until(|users| users.len() == 2);
        let ids: Vec<&Value> = users.iter().map(|u| &u["id"]).collect();
        assert!(ids.contains(&&ida) && ids.contains(&&idb), "{users:?}");
        // Guest names carry the id too: no two nodes give out the same one.
        assert_eq!(
            users.iter().find(|u| u["id"] == ida).expect("alice")["name"],
            format!("guest-{}", ida.as_str().unwrap())
        );
    });
}

#[test]
fn user_lists_span_nodes_and_a_killed_node_s_users_leave_within_the_ttl() {
    on_each_runtime(|redis, runtime| a_killed_node_s_users_leave(&redis, runtime));
}

/// Two nodes on `runtime` list each other's users and rooms (the console
/// too); once one is killed, its users leave the other's list within the
/// presence TTL.
fn a_killed_node_s_users_leave(server: &impl BackplaneServer, runtime: &str) {
    let ttl = Duration::from_millis(1500);
    let presence = ["--backplane-presence-ttl-ms", "1500"];
    let (mut a, b) = Node::two(server, runtime, &presence);
    let (mut alice, mut bob) = (a.client(), b.client());
    alice.name("alice");
    bob.name("bob");
    bob.join("rust");
    let users = bob
        .users_until(|users| names(users) == ["alice", "bob"] || names(users) == ["bob", "alice"]);
    // One user of each name, whichever node they are on.
    if server.unique_names() {
        assert_eq!(bob.try_name("alice"), Err(taken("alice")));
    }
    let room_of = |name: &str| {
        users
            .iter()
            .find(|u| u["name"] == name)
            .map(|u| u["room"].clone())
    };
    assert_eq!(room_of("alice"), Some(json!("lobby")));
    assert_eq!(room_of("bob"), Some(json!("rust")));
    // B's directory entry for bob reaches the other node on its own time,
    // not before bob's `joined`: A lists bob in his room once it has.
    alice.users_until(|users| {
        users
            .iter()
            .any(|u| u["name"] == "bob" && u["room"] == "rust")
    });
    alice.send(&json!({"type": "rooms"}));
    let rooms = alice.expect("rooms");
    assert_eq!(
        rooms["rooms"],
        json!([{"name": "lobby", "members": 1}, {"name": "rust", "members": 1}]),
        "{rooms}"
    );
    // The console sees every node's sessions and rooms.
    let bob_id = bob.id.as_str().expect("id").to_owned();
    let listed = a.console("/sessions", |line| line.contains(" bob "));
    assert!(listed.iter().any(|l| l == "2 sessions"), "{listed:?}");
    assert!(
        listed
            .last()
            .expect("bob")
            .starts_with(&format!("  #{bob_id} bob room=rust")),
        "{listed:?}"
    );
    let rooms = a.console("/rooms", |line| line.starts_with("  rust"));
    assert_eq!(rooms.last().expect("rust"), "  rust: 1 (bob)", "{rooms:?}");

    // Kept alive while its node runs: still listed after twice the TTL.
    let until = Instant::now() + 2 * ttl;
    while Instant::now() < until {
        assert!(names(&bob.users()).contains(&"alice"));
    }
    // Node A dies without a word: alice leaves B's list within the TTL
    // (bounded here by WAIT, for a loaded machine).
    a.kill();
    let killed = Instant::now();
    let users = bob.users_until(|users| !names(users).contains(&"alice"));
    assert_eq!(names(&users), ["bob"]);
    println!(
        "alice gone {:?} after the kill (TTL {ttl:?})",
        killed.elapsed()
    );
    // And her name is free again, within the same bound.
    bob.name_when_free("alice");
    println!(
        "her name free {:?} after the kill (TTL {ttl:?})",
        killed.elapsed()
    );
}

#[test]
fn names_are_unique_across_nodes() {
    on_each_runtime(|redis, runtime| {
        let (a, b) = Node::two(&redis, runtime, &[]);
        let (mut alice, mut bob) = (a.client(), b.client());
        alice.name("alice");
        // Held on another node: the answer a single node gives.
        assert_eq!(bob.try_name("alice"), Err(taken("alice")));
        // Renamed: the old name is free as the rename is answered.
        alice.name("alicia");
        bob.name("alice");
        assert_eq!(alice.try_name("alice"), Err(taken("alice")));
        // Gone: free once its node released it.
        drop(bob);
        alice.name_when_free("alice");
        let users = alice.users_until(|users| users.len() == 1);
        assert_eq!(names(&users), ["alice"]);
    });
}

#[test]
fn three_nodes_are_one_chat() {
    on_each_runtime(|redis, runtime| three_nodes(&redis, [runtime; 3]));
}

#[test]
fn three_nodes_on_three_runtimes_are_one_chat() {
    if let Some(redis) = RedisServer::start() {
        three_nodes(&redis, RUNTIMES);
    }
}

/// Three nodes, on `runtimes`, are one chat: one user list, room messages
/// in one order everywhere (at one position, where the server keeps
/// history; without one where it does not), whispers, kicks and the
/// console across them.
fn three_nodes(server: &impl BackplaneServer, runtimes: [&str; 3]) {
    let mut nodes = runtimes.map(|runtime| Node::start(server, runtime, &[]));
    let mut clients: Vec<Client> = nodes.iter().map(Node::client).collect();
    for (client, name) in clients.iter_mut().zip(["alice", "bob", "carol"]) {
        client.name(name);
        client.join("rust");
    }
    // One user list, whichever node is asked (once every node's latest
    // presence reached it: the others' renames and joins).
    for client in &mut clients {
        client.users_until(|users| {
            let mut listed = names(users);
            listed.sort_unstable();
            listed == ["alice", "bob", "carol"] && users.iter().all(|u| u["room"] == "rust")
        });
    }

    // A room message reaches every node's member exactly once, in the
    // publisher's order, at one position (or none, without history).
    clients[0].send(&json!({"type": "chat", "text": "hello"}));
    clients[0].send(&json!({"type": "chat", "text": "after"}));
    let mut positions = Vec::new();
    for client in &mut clients {
        let seen = client.until(|v| v["type"] == "chat" && v["text"] == "after");
        assert_eq!(texts(&seen), ["hello", "after"], "{seen:?}");
        let hello = seen.iter().find(|v| v["text"] == "hello").expect("hello");
        positions.push((hello["epoch"].clone(), hello["offset"].clone()));
    }
    assert!(
        positions.iter().all(|p| *p == positions[0]),
        "{positions:?}"
    );
    assert_eq!(
        positions[0].1.as_u64().is_some(),
        server.keeps_history(),
        "{positions:?}"
    );

    // A whisper to a user on another node; an unknown name is an error.
    let (alice_id, carol_id) = (clients[0].id.clone(), clients[2].id.clone());
    clients[0].send(&json!({"type": "whisper", "to": "carol", "text": "psst"}));
    let copy = clients[0].expect("whisper");
    let got = clients[2].expect("whisper");
    assert_eq!(got, copy);
    assert_eq!((&got["from_id"], &got["to_id"]), (&alice_id, &carol_id));
    assert_eq!(
        (&got["from"], &got["text"]),
        (&json!("alice"), &json!("psst"))
    );
    clients[0].send(&json!({"type": "whisper", "to": "nobody", "text": "x"}));
    let error = clients[0].expect("error");
    assert!(
        error["error"]
            .as_str()
            .expect("error")
            .contains("no user named nobody"),
        "{error}"
    );

    // The admin console of one node sees and acts on every node.
    let bob_id = clients[1].id.as_str().expect("id").to_owned();
    let listed = nodes[0].console("/sessions", |line| line.contains(" carol "));
    assert!(listed.iter().any(|l| l == "3 sessions"), "{listed:?}");
    nodes[0].console(&format!("/kick #{bob_id}"), |line| {
        line.starts_with("kicking")
    });
    assert_eq!(
        clients[1].closed(),
        (CloseCode::POLICY_VIOLATION, "kicked".to_owned())
    );
    let left = clients[2].until(|v| v["type"] == "left");
    assert_eq!(left.last().expect("left")["id"], json!(bob_id));
    nodes[2].console("/broadcast to all", |line| line.starts_with("broadcast to"));
    for i in [0, 2] {
        let told = clients[i].expect("broadcast");
        assert_eq!(
            (&told["from"], &told["text"]),
            (&json!("admin"), &json!("to all"))
        );
    }
    let users = clients[0].users_until(|users| users.len() == 2);
    assert!(!names(&users).contains(&"bob"), "{users:?}");
}

#[test]
fn an_event_redis_cannot_take_still_reaches_its_node_s_members_with_a_notice() {
    on_each_runtime(|mut redis, runtime| {
        let a = Node::start(&redis, runtime, &[]);
        let (mut alice, mut carol) = (a.client(), a.client());
        alice.join("rust");
        carol.join("rust");
        alice.say("before");
        redis.kill();
        for text in ["lost?", "still here?"] {
            alice.send(&json!({"type": "chat", "text": text}));
            for client in [&mut alice, &mut carol] {
                let seen = client.until(|v| v["type"] == "local_only");
                let said = seen.iter().find(|v| v["text"] == text);
                let said = said.unwrap_or_else(|| panic!("{text}: {seen:?}"));
                assert!(said.get("offset").is_none(), "not in the history: {said}");
                let notice = seen.last().expect("notice");
                assert_eq!(notice["room"], "rust", "{notice}");
            }
        }
        // Names cannot be checked across nodes: a rename is refused.
        let error = alice.try_name("alicia").expect_err("refused");
        assert!(
            error.starts_with("names cannot be checked across nodes while Redis is down"),
            "{error}"
        );
    });
}

#[test]
fn a_slow_session_gets_its_whole_recovery() {
    on_each_runtime(|redis, runtime| {
        // A 600-byte outbox under --slow-consumer wait (the default): a
        // recovery of 30 events of 200-odd bytes does not fit at once.
        let a = Node::start(&redis, runtime, &["--max-pending-bytes", "600"]);
        let b = Node::start(&redis, runtime, &[]);
        let mut alice = b.client();
        let last = last_seen_before_leaving(&mut alice, a.client(), "m0");
        let said: Vec<String> = (1..=30)
            .map(|i| format!("{i:03} {}", "x".repeat(200)))
            .collect();
        for text in &said {
            alice.say(text);
        }
        let mut back = a.client();
        back.send(&json!({
            "type": "join", "room": "rust", "epoch": last["epoch"], "offset": last["offset"],
        }));
        let recovered = back.until(|v| v["type"] == "position" || v["type"] == "unrecoverable");
        assert_eq!(
            recovered.last().expect("end")["type"],
            "position",
            "{recovered:?}"
        );
        assert_eq!(texts(&recovered), said, "every missed event, in order");
        back.own("joined");
        alice.say("live");
        back.until(|v| v["type"] == "chat" && v["text"] == "live");
    });
}

#[test]
fn the_tick_and_the_console_count_every_node_s_users() {
    on_each_runtime(|redis, runtime| count_every_node_s_users(&redis, runtime));
}

/// One user on node A, two on B: A's tick says three once B has reported
/// (with its presence: at each change, and every 300 ms here), never more,
/// and A's `/stats` sums both nodes.
fn count_every_node_s_users(server: &impl BackplaneServer, runtime: &str) {
    let extra = ["--tick-ms", "100", "--backplane-presence-ttl-ms", "900"];
    let (mut a, b) = Node::two(server, runtime, &extra);
    let mut on_a = a.client();
    let _on_b = (b.client(), b.client());
    let ticks = on_a.until(|v| v["type"] == "tick" && v["users"] == 3);
    assert!(
        ticks
            .iter()
            .all(|v| v["type"] != "tick" || v["users"].as_u64() <= Some(3)),
        "{ticks:?}"
    );
    let stats = a.stats_of_one();
    assert_eq!(
        stats.last().map(String::as_str),
        Some("3 sessions on 2 nodes"),
        "{stats:?}"
    );
}

/// The same chat through NATS (`--backplane nats://`).
#[path = "chat_backplane/nats.rs"]
mod nats;
