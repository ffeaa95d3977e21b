//! `storm chat` as a real process on loopback ports: the JSON protocol with
//! three blocking WebSocket clients, the tick, the page over HTTP (and
//! HTTPS with `--tls`), and the admin console on stdin. Every wait is
//! bounded.

mod common;
use common::Inbox;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use storm_proto::ws::{CloseCode, Event};
use storm_std::ws::{self, WebSocket};
use storm_tests::process::lines;

/// Every runtime `storm chat` serves on; each test runs on each.
const RUNTIMES: [&str; 3] = ["tokio", "smol", "std"];

/// How long any single expected thing may take.
const WAIT: Duration = Duration::from_secs(10);

/// A running `storm chat`, killed on drop.
struct Server {
    child: Child,
    stdin: ChildStdin,
    /// Lines the server printed after its banner.
    out: mpsc::Receiver<String>,
    ws: String,
    http: String,
    runtime: &'static str,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(runtime: &'static str, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_storm"))
            .args(["chat", "--addr", "127.0.0.1:0", "--runtime", runtime])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("storm starts");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let out = lines(stdout);
        let mut server = Self {
            child,
            stdin,
            out,
            ws: String::new(),
            http: String::new(),
            runtime,
        };
        let tls = extra.contains(&"--tls");
        let scheme = if tls { "wss" } else { "ws" };
        let marker = format!("listening on {scheme}://");
        let banner = server.wait_line(&marker);
        assert!(
            banner
                .to_lowercase()
                .contains(&format!("({runtime} runtime)")),
            "{banner}"
        );
        server.ws = banner
            .split(&marker)
            .nth(1)
            .expect("address")
            .trim()
            .to_owned();
        server.http = server.expect_line(if tls {
            "page on https://"
        } else {
            "page on http://"
        });
        server
    }

    /// The address after `marker` in the next line that has it.
    fn expect_line(&self, marker: &str) -> String {
        let line = self.wait_line(marker);
        let rest = line.split(marker).nth(1).expect("marker");
        rest.trim().trim_end_matches('/').to_owned()
    }

    /// Waits until a line containing each of `needles` was printed, in any
    /// order (other lines are skipped).
    fn wait_lines(&self, needles: &[&str]) {
        let deadline = Instant::now() + WAIT;
        let mut missing: Vec<&str> = needles.to_vec();
        while !missing.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.out.recv_timeout(left) {
                Ok(line) => missing.retain(|needle| !line.contains(needle)),
                Err(e) => panic!(
                    "no lines with {missing:?} from storm chat on {}: {e}",
                    self.runtime
                ),
            }
        }
    }

    /// The next printed line containing `needle` (earlier lines are skipped).
    fn wait_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.out.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!(
                    "no line with {needle:?} from storm chat on {}: {e}",
                    self.runtime
                ),
            }
        }
    }

    fn console(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("console write");
        self.stdin.flush().expect("console flush");
    }

    fn client(&self) -> Client {
        let (socket, _) = ws::connect(
            &format!("ws://{}/", self.ws),
            &ws::ConnectOptions::default(),
        )
        .expect("connect");
        socket
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("read timeout");
        let mut client = Client { socket, id: 0 };
        let welcome = client.until("welcome").pop().expect("welcome");
        client.id = welcome["id"].as_u64().expect("id");
        assert_eq!(welcome["room"], "lobby");
        // Our own arrival in the lobby.
        client.until("joined");
        client
    }
}

struct Client {
    socket: WebSocket<TcpStream>,
    id: u64,
}

enum Next {
    Json(Value),
    Closed(CloseCode),
}

impl Client {
    fn send(&mut self, command: &Value) {
        self.socket
            .send_text(&command.to_string())
            .expect("send command");
    }

    /// The next text message or close, within `WAIT`.
    fn next(&mut self, deadline: Instant) -> Next {
        loop {
            assert!(Instant::now() < deadline, "nothing within {WAIT:?}");
            match self.socket.read() {
                Ok(Event::Text(text)) => {
                    return Next::Json(serde_json::from_str(&text).expect("JSON from the server"));
                }
                Ok(Event::Close(frame)) => return Next::Closed(frame.code),
                Ok(_) => {}
                Err(ws::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Messages up to and including the first of type `ty`, ticks left out
    /// (unless `ty` is "tick").
    fn until(&mut self, ty: &str) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            match self.next(deadline) {
                Next::Json(v) => {
                    let this = v["type"] == ty;
                    if v["type"] != "tick" || this {
                        seen.push(v);
                    }
                    if this {
                        return seen;
                    }
                }
                Next::Closed(code) => panic!("closed ({code:?}) waiting for {ty}; saw {seen:?}"),
            }
        }
    }

    /// The first message of type `ty`.
    fn expect(&mut self, ty: &str) -> Value {
        self.until(ty).pop().expect("message")
    }

    /// Round-trips a `users` request; returns what came before the answer,
    /// so a test can check that something did NOT arrive, and the answer.
    fn sync(&mut self) -> (Vec<Value>, Value) {
        self.send(&json!({"type": "users"}));
        let mut seen = self.until("users");
        let users = seen.pop().expect("users");
        (seen, users)
    }

    fn closed(&mut self) -> CloseCode {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Next::Closed(code) = self.next(deadline) {
                return code;
            }
        }
    }
}

fn of_type<'a>(seen: &'a [Value], ty: &str) -> Vec<&'a Value> {
    seen.iter().filter(|v| v["type"] == ty).collect()
}

fn rename(client: &mut Client, name: &str) {
    client.send(&json!({"type": "name", "name": name}));
    // Others' renames in the room may come first.
    loop {
        let renamed = client.expect("renamed");
        if renamed["id"] == client.id {
            assert_eq!(renamed["name"], name);
            return;
        }
    }
}

fn join(client: &mut Client, room: &str) {
    client.send(&json!({"type": "join", "room": room}));
    loop {
        let joined = client.expect("joined");
        if joined["id"] == client.id {
            assert_eq!(joined["room"], room);
            return;
        }
    }
}

#[test]
fn rooms_chat_whisper_and_lists() {
    for runtime in RUNTIMES {
        let server = Server::start(runtime, &["--tick-ms", "0"]);
        let mut a = server.client();
        let mut b = server.client();
        let mut c = server.client();
        rename(&mut a, "alice");
        rename(&mut b, "bob");
        rename(&mut c, "carol");

        // Names are unique and checked.
        c.send(&json!({"type": "name", "name": "alice"}));
        assert!(
            c.expect("error")["error"]
                .as_str()
                .unwrap()
                .contains("taken")
        );
        c.send(&json!({"type": "name", "name": ""}));
        c.expect("error");
        c.send(&json!({"type": "name", "name": "guest-99"}));
        c.expect("error");

        join(&mut a, "rust");
        join(&mut b, "rust");
        // alice sees bob arrive.
        let joined = a.expect("joined");
        assert_eq!(
            (&joined["name"], &joined["room"]),
            (&json!("bob"), &json!("rust"))
        );

        // A chat reaches the room, the sender included, and no one else.
        a.send(&json!({"type": "chat", "text": "hello rust"}));
        for client in [&mut a, &mut b] {
            let chat = client.expect("chat");
            assert_eq!(chat["text"], "hello rust");
            assert_eq!(chat["from"], "alice");
            assert_eq!(chat["room"], "rust");
        }
        let (seen, _) = c.sync();
        assert!(of_type(&seen, "chat").is_empty(), "carol got {seen:?}");

        // carol chats in the lobby: only she is there.
        c.send(&json!({"type": "chat", "text": "anyone?"}));
        assert_eq!(c.expect("chat")["room"], "lobby");
        let (seen, _) = a.sync();
        assert!(of_type(&seen, "chat").is_empty(), "alice got {seen:?}");

        // A whisper reaches its target, with a copy to the sender, no one else.
        a.send(&json!({"type": "whisper", "to": "carol", "text": "psst"}));
        let whisper = c.expect("whisper");
        assert_eq!(
            (&whisper["from"], &whisper["to"], &whisper["text"]),
            (&json!("alice"), &json!("carol"), &json!("psst"))
        );
        assert_eq!(whisper["from_id"], a.id);
        assert_eq!(a.expect("whisper")["to_id"], c.id);
        let (seen, _) = b.sync();
        assert!(of_type(&seen, "whisper").is_empty(), "bob got {seen:?}");
        a.send(&json!({"type": "whisper", "to": "nobody", "text": "x"}));
        assert!(
            a.expect("error")["error"]
                .as_str()
                .unwrap()
                .contains("nobody")
        );

        // Lists.
        let (_, users) = c.sync();
        let users: Vec<(String, Value)> = users["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| (u["name"].as_str().unwrap().to_owned(), u["room"].clone()))
            .collect();
        assert_eq!(
            users,
            [
                ("alice".to_owned(), json!("rust")),
                ("bob".to_owned(), json!("rust")),
                ("carol".to_owned(), json!("lobby")),
            ]
        );
        c.send(&json!({"type": "rooms"}));
        assert_eq!(
            c.expect("rooms")["rooms"],
            json!([{"name": "lobby", "members": 1}, {"name": "rust", "members": 2}])
        );

        // Leaving: bob and alice hear it; then bob is in no room.
        b.send(&json!({"type": "leave"}));
        assert_eq!(b.expect("left")["id"], b.id);
        let left = a.expect("left");
        assert_eq!(
            (&left["name"], &left["room"]),
            (&json!("bob"), &json!("rust"))
        );
        b.send(&json!({"type": "chat", "text": "void"}));
        assert!(
            b.expect("error")["error"]
                .as_str()
                .unwrap()
                .contains("no room")
        );

        // A disconnect is a leave for the room. The server learns of it
        // when it reads the end of carol's connection, which races with
        // bob's requests: ask again until it has (bounded).
        drop(c);
        b.send(&json!({"type": "join", "room": "lobby"}));
        b.expect("joined");
        let deadline = Instant::now() + WAIT;
        loop {
            let (_, users) = b.sync();
            if users["users"].as_array().unwrap().len() == 2 {
                break;
            }
            assert!(Instant::now() < deadline, "carol never left: {users}");
        }

        // Garbage gets an error, and the session stays usable.
        a.send(&json!({"type": "fly"}));
        a.expect("error");
        a.socket.send_text("not json").unwrap();
        a.expect("error");
        a.socket.send_binary(b"\x00").unwrap();
        a.expect("error");
        a.sync();
    }
}

#[test]
fn tick_reaches_everyone() {
    for runtime in RUNTIMES {
        let server = Server::start(runtime, &["--tick-ms", "100"]);
        let mut a = server.client();
        let mut b = server.client();
        for client in [&mut a, &mut b] {
            // Skip a tick sent before both were connected.
            let tick = loop {
                let tick = client.expect("tick");
                if tick["users"] == 2 {
                    break tick;
                }
            };
            assert!(
                tick["time_ms"].as_u64().unwrap() > 1_600_000_000_000,
                "{tick}"
            );
        }
    }
}

/// The whole response of the page server at `http` to a GET of `path`.
fn get_page(http: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(http).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn page_over_http() {
    for runtime in RUNTIMES {
        let server = Server::start(runtime, &["--tick-ms", "0"]);
        let get = |path: &str| get_page(&server.http, path);
        let page = get("/");
        assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
        assert!(page.contains("Content-Type: text/html"));
        let port = server.ws.rsplit(':').next().unwrap();
        assert!(
            page.contains(&format!("content=\"{port}\"")),
            "the page names the WebSocket port"
        );
        assert!(get("/?x=1").starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(get("/nope").starts_with("HTTP/1.1 404 "));
    }
}

/// Threads of process `pid`, and how many of them are named `name`.
#[cfg(target_os = "linux")]
fn threads(pid: u32, name: &str) -> (usize, usize) {
    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the server's threads")
        .filter_map(Result::ok)
        .collect();
    let named = tasks
        .iter()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.trim_end() == name)
        })
        .count();
    (tasks.len(), named)
}

/// On std the page is served by a fixed set of threads (8, as in
/// `src/chat/on_std.rs`). Clients that connect and never finish their
/// request hold all of them; a further request, and more stalled clients,
/// get no thread of their own: the request waits in the listener's backlog
/// and is answered as soon as one stalled client leaves. (With a thread
/// per request it was answered at once, and every stalled client added a
/// thread.)
#[cfg(target_os = "linux")]
#[test]
fn std_page_server_uses_a_fixed_number_of_threads() {
    const PAGE_THREADS: usize = 8;
    let server = Server::start("std", &["--tick-ms", "0"]);
    let pid = server.child.id();
    // The WebSocket side runs (its accept thread and one session's), so
    // from here on only the page server could add threads.
    let _client = server.client();
    let deadline = Instant::now() + WAIT;
    while threads(pid, "storm-chat-page").1 != PAGE_THREADS {
        assert!(
            Instant::now() < deadline,
            "page threads: {:?}",
            threads(pid, "storm-chat-page")
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (before, _) = threads(pid, "storm-chat-page");

    let stall = || {
        let mut stream = TcpStream::connect(&server.http).unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        stream
    };
    let mut stalled: Vec<TcpStream> = (0..PAGE_THREADS).map(|_| stall()).collect();
    let mut waiting = TcpStream::connect(&server.http).unwrap();
    waiting
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    stalled.extend((0..PAGE_THREADS).map(|_| stall()));

    // Not answered while every page thread holds a stalled client (a
    // bounded look: a thread per request answers within microseconds).
    waiting
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let early = waiting.read(&mut [0; 64]);
    assert!(
        early.as_ref().is_err_and(|e| matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )),
        "answered while every page thread was busy: {early:?}"
    );
    assert_eq!(threads(pid, "storm-chat-page"), (before, PAGE_THREADS));

    // The first stalled client leaves: its thread takes the next request.
    let started = Instant::now();
    drop(stalled.remove(0));
    waiting.set_read_timeout(Some(WAIT)).unwrap();
    let mut response = String::new();
    waiting.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    eprintln!(
        "page answered {:?} after a thread was free",
        started.elapsed()
    );
    assert_eq!(threads(pid, "storm-chat-page"), (before, PAGE_THREADS));
}

#[test]
fn chat_over_wss() {
    let pki = storm_tests::suite::pki::Pki::new();
    let files = pki.pem_files();
    for runtime in RUNTIMES {
        let mut extra = vec!["--tick-ms", "0"];
        extra.extend(files.tls_args());
        let server = Server::start(runtime, &extra);
        let options = storm_host::options::ClientOptions::default().with_tls(pki.client());
        let (tx, rx) = mpsc::channel();
        let client = storm_std::WsClient::connect(
            &format!("wss://{}/", server.ws),
            options,
            storm_host::options::WsOptions::default(),
            Inbox(tx),
        )
        .unwrap_or_else(|e| panic!("{runtime}: {e}"));
        let next = || -> Value {
            serde_json::from_slice(rx.recv_timeout(WAIT).expect("a message").as_bytes())
                .expect("JSON from the server")
        };
        assert_eq!(next()["type"], "welcome", "{runtime}");
        client
            .send(storm_proto::Message::from(
                json!({"type": "users"}).to_string(),
            ))
            .unwrap();
        let users = std::iter::repeat_with(next)
            .find(|v| v["type"] == "users")
            .expect("users");
        assert_eq!(users["users"].as_array().map(Vec::len), Some(1), "{users}");
        client.close();
    }
}

/// With `--tls` the page is served over HTTPS with the same certificate:
/// a rustls client that trusts the test CA gets it, with the `wss` scheme
/// filled in, and the TLS connection ends with `close_notify`. A plain
/// HTTP request to that port gets no page.
#[test]
fn page_over_https() {
    let pki = storm_tests::suite::pki::Pki::new();
    let files = pki.pem_files();
    let trust = pki.client();
    let config = storm_host::tls::client_config(&trust).expect("client config");
    for runtime in RUNTIMES {
        let mut extra = vec!["--tick-ms", "0"];
        extra.extend(files.tls_args());
        let server = Server::start(runtime, &extra);
        let get = |path: &str| {
            let name = storm_host::tls::server_name(&trust, "127.0.0.1").expect("name");
            let connection =
                rustls::ClientConnection::new(Arc::clone(&config), name).expect("connection");
            let socket = TcpStream::connect(&server.http).unwrap();
            socket.set_read_timeout(Some(WAIT)).unwrap();
            socket.set_write_timeout(Some(WAIT)).unwrap();
            let mut stream = rustls::StreamOwned::new(connection, socket);
            write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            stream.flush().unwrap();
            let mut response = String::new();
            stream
                .read_to_string(&mut response)
                .unwrap_or_else(|e| panic!("{runtime}: {e}"));
            response
        };
        let page = get("/");
        assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{runtime}: {page}");
        assert!(
            page.contains(r#"name="storm-ws-scheme" content="wss""#),
            "{runtime}: the page connects with wss://"
        );
        let port = server.ws.rsplit(':').next().unwrap();
        assert!(page.contains(&format!("content=\"{port}\"")), "{runtime}");
        assert!(get("/nope").starts_with("HTTP/1.1 404 "), "{runtime}");

        let mut plain = TcpStream::connect(&server.http).unwrap();
        plain.set_read_timeout(Some(WAIT)).unwrap();
        write!(plain, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut answer = Vec::new();
        let read = plain.read_to_end(&mut answer);
        assert!(
            !answer.starts_with(b"HTTP/"),
            "{runtime}: plain HTTP answered: {read:?} {:?}",
            String::from_utf8_lossy(&answer)
        );
        // Refused at once (rustls answers with a 7-byte alert record and
        // closes, on every runtime), not left open.
        assert!(
            !read.as_ref().is_err_and(|e| matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )),
            "{runtime}: the plain connection stayed open"
        );
    }
}

#[test]
fn admin_console() {
    for runtime in RUNTIMES {
        let mut server = Server::start(runtime, &["--tick-ms", "0"]);
        let mut a = server.client();
        let mut b = server.client();
        let mut c = server.client();
        rename(&mut a, "alice");
        server.wait_line("-> alice");

        server.console("/sessions");
        server.wait_line("3 sessions");
        server.wait_line("alice room=lobby");
        server.console("/rooms");
        server.wait_line("lobby: 3");
        server.console(&format!("/info {}", a.id));
        server.wait_line(&format!("#{} alice room=lobby", a.id));
        server.console("/info 999999");
        server.wait_line("no session #999999");

        // /kick closes that client, with 1008.
        server.console(&format!("/kick #{}", c.id));
        assert_eq!(c.closed(), CloseCode::POLICY_VIOLATION);
        // The console's "kicked" and the disconnect race: either may print
        // first.
        server.wait_lines(&[
            &format!("kicked #{}", c.id),
            &format!("disconnect #{}", c.id),
        ]);

        // /broadcast reaches everyone left.
        server.console("/broadcast hi all");
        server.wait_line("broadcast to 2 sessions");
        for client in [&mut a, &mut b] {
            let broadcast = client.expect("broadcast");
            assert_eq!(broadcast["text"], "hi all");
            assert_eq!(broadcast["from"], "admin");
        }

        // /stop closes the clients gracefully and exits 0.
        server.console("/stop");
        assert_eq!(a.closed(), CloseCode::NORMAL);
        assert_eq!(b.closed(), CloseCode::NORMAL);
        server.wait_line("storm chat stopped");
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "storm chat did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{status}");
    }
}

#[test]
fn ctrl_c_closes_sessions_and_exits_zero() {
    for runtime in RUNTIMES {
        let mut server = Server::start(runtime, &["--tick-ms", "0"]);
        let mut a = server.client();
        let status = Command::new("kill")
            .args(["-INT", &server.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        assert_eq!(a.closed(), CloseCode::NORMAL, "{runtime}");
        server.wait_line("storm chat stopped");
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = server.child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{runtime}: still running after Ctrl-C"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{runtime}: {status}");
    }
}

/// The status line the WebSocket port answers an upgrade request for
/// `target` with `headers` (whole lines) added.
fn upgrade_status(ws: &str, target: &str, headers: &str) -> String {
    let mut stream = TcpStream::connect(ws).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {ws}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).trim_end().to_owned()
}

/// By default only the chat page's own origin may connect: a page of
/// another origin is refused with 403, the page's origin and a client
/// without `Origin` get in; `--allow-origin` replaces the default.
#[test]
fn only_the_page_s_own_origin_may_connect() {
    for runtime in RUNTIMES {
        let server = Server::start(runtime, &["--tick-ms", "0"]);
        let page_origin = format!("Origin: http://{}\r\n", server.http);
        let foreign = "Origin: https://evil.example\r\n";
        assert_eq!(
            upgrade_status(&server.ws, "/", foreign),
            "HTTP/1.1 403 Forbidden"
        );
        server.wait_line("origin https://evil.example not allowed");
        assert_eq!(
            upgrade_status(&server.ws, "/", &page_origin),
            "HTTP/1.1 101 Switching Protocols"
        );
        drop(server.client());
        let listed = Server::start(
            runtime,
            &["--tick-ms", "0", "--allow-origin", "https://chat.example"],
        );
        let page_origin = format!("Origin: http://{}\r\n", listed.http);
        assert_eq!(
            upgrade_status(&listed.ws, "/", "Origin: https://chat.example\r\n"),
            "HTTP/1.1 101 Switching Protocols"
        );
        assert_eq!(
            upgrade_status(&listed.ws, "/", &page_origin),
            "HTTP/1.1 403 Forbidden"
        );
    }
}

/// `--token`: clients without it get 401, with it (query or bearer
/// header) they chat; the page is served only with the token.
#[test]
fn a_token_is_required_when_given() {
    for runtime in RUNTIMES {
        let server = Server::start(runtime, &["--tick-ms", "0", "--token", "s3cret"]);
        let refused = ws::connect(
            &format!("ws://{}/", server.ws),
            &ws::ConnectOptions::default(),
        );
        let error = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("401"), "{error}");
        assert_eq!(
            upgrade_status(&server.ws, "/?token=wrong", ""),
            "HTTP/1.1 401 Unauthorized"
        );
        assert_eq!(
            upgrade_status(&server.ws, "/?token=s3cret", ""),
            "HTTP/1.1 101 Switching Protocols"
        );
        let options = ws::ConnectOptions::default().with_header("Authorization", "Bearer s3cret");
        let (mut socket, _) =
            ws::connect(&format!("ws://{}/", server.ws), &options).expect("token accepted");
        socket.get_mut().set_read_timeout(Some(WAIT)).unwrap();
        assert!(matches!(socket.read(), Ok(Event::Text(welcome)) if welcome.contains("welcome")));
        assert!(get_page(&server.http, "/").starts_with("HTTP/1.1 401 "));
        let page = get_page(&server.http, "/?token=s3cret");
        assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    }
}
