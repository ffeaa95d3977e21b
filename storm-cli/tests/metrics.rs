//! `--metrics-addr`: a real `storm` server, real clients, then a scrape of
//! its Prometheus text. Every read has a timeout, every child is killed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use storm_proto::route::{ClientConfig, ClientHandshake, Event as RouteEvent};
use storm_proto::ws::{CloseCode, Event};
use storm_std::ws;

mod child;
use child::Storm;

const WAIT: Duration = Duration::from_secs(10);

/// A running `storm` server with its service and metrics addresses,
/// killed on drop.
struct Server {
    storm: Storm,
    addr: String,
    metrics: String,
}

impl Server {
    /// The next stdout line containing `needle` (earlier ones skipped),
    /// within [`child::WAIT`].
    fn line(&self, needle: &str) -> String {
        self.storm.stdout_line(needle)
    }

    /// The address after `://` on the next stdout line containing
    /// `needle`.
    fn address(&self, needle: &str) -> String {
        let line = self.line(needle);
        let after = line.trim().rsplit("://").next().expect("an address");
        after
            .trim_end_matches("/metrics")
            .trim_end_matches('/')
            .to_owned()
    }
}

/// `storm ARGS --addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0` once it
/// says where it listens and where its metrics are.
fn start(args: &[&str]) -> Server {
    let mut server = Server {
        storm: Storm::spawn(
            &[
                args,
                &["--addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"],
            ]
            .concat(),
        ),
        addr: String::new(),
        metrics: String::new(),
    };
    server.addr = server.address("listening on");
    server.metrics = server.address("metrics at http://");
    server
}

/// `GET path` on `addr`: the status line and the body.
fn get(addr: &str, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics address");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head");
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, body.to_owned())
}

/// The value of `name{service="SERVICE"}` in a Prometheus text `body`.
fn value(body: &str, name: &str, service: &str) -> Option<f64> {
    labelled(body, name, &[("service", service)])
}

/// The value of the series `name` with (at least) `labels`.
fn labelled(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix('{'))
        .filter_map(|rest| rest.split_once("} "))
        .find(|(set, _)| {
            let set: Vec<&str> = set.split(',').collect();
            labels
                .iter()
                .all(|(k, v)| set.contains(&format!("{k}=\"{v}\"").as_str()))
        })
        .and_then(|(_, v)| v.trim().parse().ok())
}

/// Scrapes until `done` holds for the body, or panics after [`WAIT`]
/// with the last body (a closed connection leaves the open gauge a
/// moment after the client sees the close).
fn scrape_until(server: &Server, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = get(&server.metrics, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "never reached:\n{body}");
        std::thread::yield_now();
    }
}

fn ws_client(addr: &str) -> ws::WebSocket<TcpStream> {
    let (mut socket, _) =
        ws::connect(&format!("ws://{addr}/"), &ws::ConnectOptions::default()).expect("connect");
    socket
        .get_mut()
        .set_read_timeout(Some(WAIT))
        .expect("timeout");
    socket
}

#[test]
fn echo_serves_its_traffic_as_prometheus_text() {
    for runtime in ["tokio", "smol", "std"] {
        let server = start(&["echo", "--runtime", runtime]);
        // Two clients, three messages in and three echoed out, then both
        // close.
        let mut clients = [ws_client(&server.addr), ws_client(&server.addr)];
        for (i, client) in clients.iter_mut().enumerate() {
            for n in 0..=i {
                let text = format!("message {n}");
                client.send_text(&text).expect("send");
                assert!(
                    matches!(client.read().expect("echo"), Event::Text(t) if t.as_str() == text)
                );
            }
        }
        // A connection counts its messages into the metrics once per batch
        // of input (when the batch is handed out), so on std, whose writer
        // thread sends the echo while the reader finishes the batch, a
        // client can see its echo just before the count moves.
        let open = scrape_until(&server, |body| {
            value(body, "storm_connections_open", "echo") == Some(2.0)
                && value(body, "storm_messages_received_total", "echo") == Some(3.0)
        });
        let count = |name| value(&open, name, "echo");
        assert_eq!(
            count("storm_connections_total"),
            Some(2.0),
            "{runtime}:\n{open}"
        );
        assert_eq!(
            count("storm_messages_received_total"),
            Some(3.0),
            "{runtime}:\n{open}"
        );
        assert_eq!(
            count("storm_messages_sent_total"),
            Some(3.0),
            "{runtime}:\n{open}"
        );
        assert!(
            count("storm_bytes_received_total") > Some(0.0),
            "{runtime}:\n{open}"
        );
        assert!(
            count("storm_bytes_sent_total") > Some(0.0),
            "{runtime}:\n{open}"
        );
        assert_eq!(
            count("storm_messages_dropped_total"),
            Some(0.0),
            "{runtime}:\n{open}"
        );
        for mut client in clients {
            client.close(CloseCode::NORMAL, "done").expect("close");
            assert!(matches!(
                client.read().expect("close reply"),
                Event::Close(_)
            ));
        }
        let closed = scrape_until(&server, |body| {
            value(body, "storm_connections_open", "echo") == Some(0.0)
        });
        assert_eq!(
            value(&closed, "storm_connections_total", "echo"),
            Some(2.0),
            "{runtime}:\n{closed}"
        );
        // A request that is no upgrade: answered 400, counted as invalid.
        let mut bad = TcpStream::connect(&server.addr).expect("connect");
        bad.set_read_timeout(Some(WAIT)).expect("timeout");
        bad.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("request");
        let mut answer = String::new();
        let _ = bad.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{runtime}: {answer}");
        let failed = |body: &str, reason| {
            labelled(
                body,
                "storm_handshake_failures_total",
                &[("service", "echo"), ("reason", reason)],
            )
        };
        let body = scrape_until(&server, |body| failed(body, "invalid") == Some(1.0));
        assert_eq!(failed(&body, "timed_out"), Some(0.0), "{runtime}:\n{body}");
        assert_eq!(
            value(&body, "storm_connections_total", "echo"),
            Some(3.0),
            "{runtime}:\n{body}"
        );
    }
}

#[test]
fn json_is_labelled_json_and_other_paths_are_not_found() {
    let server = start(&["json"]);
    let client = TcpStream::connect(&server.addr).expect("connect");
    client.set_read_timeout(Some(WAIT)).expect("timeout");
    let body = scrape_until(&server, |body| {
        value(body, "storm_connections_total", "json") == Some(1.0)
    });
    assert_eq!(value(&body, "storm_connections_open", "json"), Some(1.0));
    let (status, _) = get(&server.metrics, "/");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    client.shutdown(std::net::Shutdown::Both).expect("shutdown");
}

/// Every runtime a `storm` server runs on.
const RUNTIMES: [&str; 3] = ["tokio", "smol", "std"];

/// The next text message on `client` that contains `needle` (others
/// skipped; each read bounded by the socket's timeout).
fn text_with(client: &mut ws::WebSocket<TcpStream>, needle: &str) -> String {
    loop {
        match client.read().expect("a message") {
            Event::Text(text) if text.as_str().contains(needle) => return text.as_str().to_owned(),
            Event::Text(_) => {}
            other => panic!("waiting for {needle:?}: {other:?}"),
        }
    }
}

/// A WebSocket upgrade of `addr` with `headers` (each ending in CRLF):
/// the answer's status line.
fn upgrade_status(addr: &str, headers: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
    )
    .expect("request");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.lines().next().unwrap_or_default().to_owned()
}

/// `storm_handshake_failures_total{service=SERVICE,reason=REASON}`.
fn failures(body: &str, service: &str, reason: &str) -> Option<f64> {
    labelled(
        body,
        "storm_handshake_failures_total",
        &[("service", service), ("reason", reason)],
    )
}

#[test]
fn chat_serves_its_sessions_and_refusals_on_every_runtime() {
    for runtime in RUNTIMES {
        let server = start(&["chat", "--runtime", runtime, "--tick-ms", "0"]);
        // Two clients without Origin (not browsers: not checked), each
        // welcomed, each asking for the user list once.
        let mut clients = [ws_client(&server.addr), ws_client(&server.addr)];
        for client in &mut clients {
            text_with(client, r#""type":"welcome""#);
            client.send_text(r#"{"type":"users"}"#).expect("send");
            text_with(client, r#""type":"users""#);
        }
        let body = scrape_until(&server, |body| {
            value(body, "storm_connections_open", "chat") == Some(2.0)
                && value(body, "storm_messages_received_total", "chat") == Some(2.0)
        });
        assert_eq!(
            value(&body, "storm_connections_total", "chat"),
            Some(2.0),
            "{runtime}:\n{body}"
        );
        // Welcome, joined and users at least, to each.
        assert!(
            value(&body, "storm_messages_sent_total", "chat") >= Some(6.0),
            "{runtime}:\n{body}"
        );
        assert_eq!(failures(&body, "chat", "refused"), Some(0.0), "{runtime}");
        // A page of another origin: refused by the chat's gate, and counted.
        let status = upgrade_status(&server.addr, "Origin: http://elsewhere.example\r\n");
        assert!(status.starts_with("HTTP/1.1 403"), "{runtime}: {status}");
        server.line("origin http://elsewhere.example not allowed");
        let body = scrape_until(&server, |body| {
            failures(body, "chat", "refused") == Some(1.0)
        });
        // Accepted as a connection, refused at its upgrade.
        assert_eq!(
            value(&body, "storm_connections_total", "chat"),
            Some(3.0),
            "{runtime}:\n{body}"
        );
        assert_eq!(
            value(&body, "storm_connections_open", "chat"),
            Some(2.0),
            "{runtime}:\n{body}"
        );
        for mut client in clients {
            client.close(CloseCode::NORMAL, "done").expect("close");
        }
        scrape_until(&server, |body| {
            value(body, "storm_connections_open", "chat") == Some(0.0)
        });
    }
}

/// Runs the route handshake for `route` on `client`: how many messages
/// the client sent.
fn route_handshake(client: &mut ws::WebSocket<TcpStream>, route: &str) -> usize {
    let config = ClientConfig {
        routes: vec![route.to_owned()],
        ..ClientConfig::default()
    };
    let mut machine = ClientHandshake::new(&config, Instant::now()).expect("config");
    let mut sent = 0;
    loop {
        while let Some(text) = machine.poll_transmit() {
            client.send_text(&text).expect("send");
            sent += 1;
        }
        if let Some(RouteEvent::Ready(_)) = machine.poll_event() {
            return sent;
        }
        let reply = text_with(client, "");
        machine
            .handle_message(Instant::now(), reply.as_bytes())
            .expect("handshake step");
    }
}

#[test]
fn gateway_serves_its_clients_and_backends_on_every_runtime() {
    let dir = std::env::temp_dir().join(format!("storm-metrics-gateway-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for runtime in RUNTIMES {
        // The backend: `storm echo` over length-prefixed TCP, which sends
        // each message back with its CLIENT= header, so to its sender.
        let backend = start(&["echo", "--proto", "lp"]);
        let port = backend.addr.rsplit(':').next().expect("a port");
        let routes = dir.join(format!("{runtime}.ini"));
        std::fs::write(
            &routes,
            format!("[echo]\nname = echo\nport = {port}\nprotocol = tcp\n"),
        )
        .expect("route file");
        let routes = routes.to_str().expect("UTF-8 path");
        let server = start(&[
            "gateway",
            "--config",
            routes,
            "--runtime",
            runtime,
            "--max-backoff-ms",
            "100",
        ]);
        let up = |body: &str| {
            labelled(
                body,
                "storm_gateway_backend_up",
                &[("service", "gateway"), ("route", "echo")],
            )
        };
        scrape_until(&server, |body| up(body) == Some(1.0));
        let mut client = ws_client(&server.addr);
        let mut sent = route_handshake(&mut client, "echo");
        client.send_text("ROUTENAME=echo\nhello").expect("send");
        sent += 1;
        assert_eq!(text_with(&mut client, "hello"), "ROUTENAME=echo\nhello");
        let sent = f64::from(u32::try_from(sent).expect("a few"));
        let body = scrape_until(&server, |body| {
            value(body, "storm_connections_open", "gateway") == Some(1.0)
                && value(body, "storm_messages_received_total", "gateway") == Some(sent)
        });
        let count = |name| value(&body, name, "gateway");
        assert_eq!(
            count("storm_connections_total"),
            Some(1.0),
            "{runtime}:\n{body}"
        );
        assert!(
            count("storm_messages_sent_total") >= Some(2.0),
            "{runtime}:\n{body}"
        );
        assert!(
            count("storm_bytes_received_total") > Some(0.0),
            "{runtime}:\n{body}"
        );
        assert_eq!(
            count("storm_gateway_backends"),
            Some(1.0),
            "{runtime}:\n{body}"
        );
        assert_eq!(
            count("storm_gateway_backends_connected"),
            Some(1.0),
            "{runtime}:\n{body}"
        );
        assert_eq!(
            count("storm_gateway_dropped_replies_total"),
            Some(0.0),
            "{runtime}:\n{body}"
        );
        // The backend goes: the gateway says so.
        drop(backend);
        let body = scrape_until(&server, |body| up(body) == Some(0.0));
        assert_eq!(
            value(&body, "storm_gateway_backends_connected", "gateway"),
            Some(0.0),
            "{runtime}:\n{body}"
        );
        client.close(CloseCode::NORMAL, "done").expect("close");
    }
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn rpc_serves_its_calls_on_every_runtime() {
    for runtime in RUNTIMES {
        let server = start(&["rpc", "--runtime", runtime]);
        let endpoint = format!("ws://{}/", server.addr);
        // `storm client rpc`: each call has its timeout, so this ends.
        let call = Command::new(env!("CARGO_BIN_EXE_storm"))
            .args(["client", "rpc", "--endpoint", &endpoint, "--method", "name"])
            .args(["--count", "3", "--timeout-ms", "5000"])
            .stdin(Stdio::null())
            .output()
            .expect("storm client rpc runs");
        assert!(
            call.status.success(),
            "{runtime}: {}",
            String::from_utf8_lossy(&call.stderr)
        );
        let body = scrape_until(&server, |body| {
            value(body, "storm_messages_received_total", "rpc") == Some(3.0)
                && value(body, "storm_messages_sent_total", "rpc") == Some(3.0)
        });
        assert_eq!(
            value(&body, "storm_connections_total", "rpc"),
            Some(1.0),
            "{runtime}:\n{body}"
        );
        assert!(
            value(&body, "storm_bytes_sent_total", "rpc") > Some(0.0),
            "{runtime}:\n{body}"
        );
    }
}
