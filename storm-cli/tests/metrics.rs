//! `--metrics-addr`: a real `storm` server, real clients, then a scrape of
//! its Prometheus text. Every read has a timeout, every child is killed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use storm_proto::ws::{CloseCode, Event};
use storm_std::ws;

const WAIT: Duration = Duration::from_secs(10);

/// A running `storm` server with its service and metrics addresses,
/// killed on drop.
struct Server {
    child: Child,
    addr: String,
    metrics: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address after `://` on the next line of `stdout`, which must
/// contain `expect`.
fn address_line(stdout: &mut BufReader<ChildStdout>, expect: &str) -> String {
    let mut line = String::new();
    stdout.read_line(&mut line).expect("a line");
    assert!(line.contains(expect), "{expect}: {line}");
    let after = line.trim().rsplit("://").next().expect("an address");
    after.trim_end_matches("/metrics").to_owned()
}

fn start(args: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_storm"))
        .args(args)
        .args(["--addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("storm starts");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let addr = address_line(&mut stdout, "listening on");
    let metrics = address_line(&mut stdout, "metrics at http://");
    Server {
        child,
        addr,
        metrics,
    }
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

#[test]
fn a_command_that_cannot_serve_metrics_refuses_the_flag() {
    let output = Command::new(env!("CARGO_BIN_EXE_storm"))
        .args([
            "chat",
            "--addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("storm runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--metrics-addr 127.0.0.1:0: not served"),
        "{stderr}"
    );
}
