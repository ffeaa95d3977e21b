//! `storm client ws` and `storm client tcp` as real processes against real
//! `storm echo` servers (and a hand-written WebSocket server where the test
//! must see the wire) on loopback: lines out and back, every framing, the
//! exit codes, headers, subprotocols, pings, failover and reconnecting
//! across a server restart.

mod child;
use child::Storm;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

use storm_proto::ws::handshake::{ServerConfig, ServerHandshake, ServerStep};
use storm_tests::suite::raw::{frame, opcode};

const SERVER_RUNTIMES: [&str; 3] = ["tokio", "smol", "std"];
const CLIENT_RUNTIMES: [&str; 3] = ["tokio", "smol", "std"];

/// Runs `test` for every server runtime at once (each mostly waits on
/// processes); a panic in any fails the test.
fn on_every_server_runtime(test: impl Fn(&str) + Sync) {
    std::thread::scope(|scope| {
        for runtime in SERVER_RUNTIMES {
            let test = &test;
            scope.spawn(move || test(runtime));
        }
    });
}

/// `storm client ARGS`, once it says it is connected.
fn connected(args: &[&str]) -> Storm {
    let client = Storm::spawn(&[&["client"], args].concat());
    client.stderr_line("connected to");
    client
}

/// A loopback address nothing listens on.
fn dead_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

#[test]
fn ws_lines_go_out_as_messages_and_come_back() {
    on_every_server_runtime(|runtime| {
        let (server, addr) = Storm::serve(
            "echo",
            "127.0.0.1:0",
            &["--proto", "ws", "--runtime", runtime],
        );
        let url = format!("ws://{addr}/");
        for client_runtime in CLIENT_RUNTIMES {
            for extra in [&[][..], &["--binary"]] {
                let mut client =
                    connected(&[&["ws", &url, "--runtime", client_runtime], extra].concat());
                for line in ["hello", "wörld", "", "a line with spaces"] {
                    client.send(line);
                    assert_eq!(
                        client.next_stdout(),
                        line,
                        "{runtime} {client_runtime} {extra:?}"
                    );
                }
                let (status, stderr) = client.finish();
                assert_eq!(
                    status.code(),
                    Some(0),
                    "{runtime} {client_runtime}: {stderr}"
                );
            }
        }
        drop(server);
    });
}

#[test]
fn tcp_lines_go_out_framed_and_come_back() {
    on_every_server_runtime(|runtime| {
        for proto in ["lp", "line", "raw"] {
            let (server, addr) = Storm::serve(
                "echo",
                "127.0.0.1:0",
                &["--proto", proto, "--runtime", runtime],
            );
            for client_runtime in CLIENT_RUNTIMES {
                let mut client =
                    connected(&["tcp", &addr, "--proto", proto, "--runtime", client_runtime]);
                for line in ["first", "second"] {
                    client.send(line);
                    // Raw: the bytes came back as sent, newline included.
                    assert_eq!(
                        client.next_stdout(),
                        line,
                        "{runtime} {proto} {client_runtime}"
                    );
                }
                let (status, stderr) = client.finish();
                assert_eq!(status.code(), Some(0), "{runtime} {proto}: {stderr}");
            }
            drop(server);
        }
    });
}

#[test]
fn exit_codes_say_why_the_client_stopped() {
    // 2: a bad option, before any connection.
    let (status, stderr) =
        Storm::spawn(&["client", "ws", "ws://127.0.0.1:1/", "--header", "no colon"]).exit();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--header \"no colon\""), "{stderr}");
    let (status, stderr) = Storm::spawn(&["client", "tcp", "no-port"]).exit();
    assert_eq!(status.code(), Some(2), "{stderr}");

    // 3: nothing to connect to (each endpoint tried once).
    let (dead, also_dead) = (dead_addr(), dead_addr());
    let (status, stderr) = Storm::spawn(&["client", "tcp", &dead, "--endpoint", &also_dead]).exit();
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(stderr.contains(&format!("tcp://{dead}")), "{stderr}");
    assert!(stderr.contains(&format!("tcp://{also_dead}")), "{stderr}");
    // With --reconnect, once every attempt is used up.
    let url = format!("ws://{dead}/");
    let (status, stderr) =
        Storm::spawn(&["client", "ws", &url, "--reconnect", "--max-attempts", "2"]).exit();
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("giving up"), "{stderr}");

    // 4: the server went away, and --reconnect is off.
    for client_runtime in CLIENT_RUNTIMES {
        let (server, addr) = Storm::serve("echo", "127.0.0.1:0", &["--proto", "line"]);
        let client = connected(&["tcp", &addr, "--runtime", client_runtime]);
        server.kill();
        let (status, stderr) = client.exit();
        assert_eq!(status.code(), Some(4), "{client_runtime}: {stderr}");
        assert!(stderr.contains("disconnected from"), "{stderr}");
    }
}

/// The first connection to `listener`, within [`child::WAIT`].
fn accept_within(listener: TcpListener) -> TcpStream {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(listener.accept().map(|(stream, _)| stream));
    });
    rx.recv_timeout(child::WAIT)
        .expect("the client connects")
        .expect("accept")
}

/// Reads one small client frame (masked, payload under 126 bytes): its
/// opcode and payload.
fn read_client_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).expect("frame header");
    let len = usize::from(head[1] & 0x7f);
    assert!(head[1] & 0x80 != 0 && len < 126, "a small masked frame");
    let mut mask = [0u8; 4];
    stream.read_exact(&mut mask).expect("mask");
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).expect("payload");
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
    (head[0] & 0x0f, payload)
}

/// A hand-written server sees the client's extra header, its subprotocols
/// and its pings; the client takes the subprotocol the server picks, prints
/// what it sends, and exits 5 when the server breaks the protocol.
#[test]
fn headers_subprotocols_and_pings_reach_the_server() {
    for client_runtime in CLIENT_RUNTIMES {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("ws://{}/", listener.local_addr().unwrap());
        let client = Storm::spawn(&[
            "client",
            "ws",
            &url,
            "--header",
            "X-Token: abc:def",
            "--subprotocol",
            "chat.v1",
            "--subprotocol",
            "chat.v2",
            "--ping",
            "1",
            "--runtime",
            client_runtime,
        ]);
        let mut stream = accept_within(listener);
        stream.set_read_timeout(Some(child::WAIT)).unwrap();
        let config = ServerConfig {
            subprotocols: vec!["chat.v2".into()],
            ..ServerConfig::default()
        };
        let mut state = ServerHandshake::new(Arc::new(config)).unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        let pending = loop {
            let n = stream.read(&mut buf).expect("upgrade request");
            assert!(n > 0, "the client left before upgrading");
            request.extend_from_slice(&buf[..n]);
            match state
                .handle_input(&buf[..n])
                .expect("a valid upgrade request")
            {
                ServerStep::NeedMore(next) => state = next,
                ServerStep::Request(pending) => break pending,
            }
        };
        let request = String::from_utf8_lossy(&request).to_ascii_lowercase();
        assert!(request.contains("\r\nx-token: abc:def\r\n"), "{request}");
        assert!(
            request.contains("\r\nsec-websocket-protocol: chat.v1, chat.v2\r\n"),
            "{request}"
        );
        let mut answer = bytes::BytesMut::new();
        let _ = pending.accept(&mut answer);
        assert!(
            String::from_utf8_lossy(&answer).contains("chat.v2"),
            "the server picked chat.v2"
        );
        stream.write_all(&answer).unwrap();
        client.stderr_line("connected to");

        stream
            .write_all(&frame(opcode::TEXT, b"from the server", false))
            .unwrap();
        assert_eq!(client.next_stdout(), "from the server");
        // --ping 1: a ping comes; answer it (3 missed would drop the
        // connection).
        let (op, payload) = read_client_frame(&mut stream);
        assert_eq!(op, opcode::PING, "{client_runtime}");
        stream.write_all(&frame(0xA, &payload, false)).unwrap();

        stream
            .write_all(&frame(opcode::RESERVED, b"", false))
            .unwrap();
        let (status, stderr) = client.exit();
        assert_eq!(status.code(), Some(5), "{client_runtime}: {stderr}");
        assert!(stderr.contains("protocol error"), "{stderr}");
    }
}

/// A line server that answers only once the client has ended its side:
/// it reads to the end, then sends `got LINE` for each line; then, if
/// `hang_up`, it ends its own side, else it hands the connection back
/// open.
fn answers_after_the_clients_end(
    listener: TcpListener,
    hang_up: bool,
) -> std::thread::JoinHandle<Option<TcpStream>> {
    std::thread::spawn(move || {
        let mut stream = accept_within(listener);
        stream.set_read_timeout(Some(child::WAIT)).unwrap();
        let mut input = Vec::new();
        stream
            .read_to_end(&mut input)
            .expect("the client ends its side");
        for line in String::from_utf8(input).unwrap().lines() {
            stream
                .write_all(format!("got {line}\n").as_bytes())
                .unwrap();
        }
        (!hang_up).then_some(stream)
    })
}

/// At stdin's end a TCP client shuts down its sending side and prints
/// what the server sends after that, until the server ends the
/// connection; a server that never does is waited for --close-timeout.
#[test]
fn tcp_half_closes_at_the_end_of_stdin_and_prints_the_late_replies() {
    for client_runtime in CLIENT_RUNTIMES {
        for hang_up in [true, false] {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let server = answers_after_the_clients_end(listener, hang_up);
            let mut client = connected(&[
                "tcp",
                &addr,
                "--proto",
                "line",
                "--close-timeout",
                "1",
                "--runtime",
                client_runtime,
            ]);
            client.send("one");
            client.send("two");
            client.close_stdin();
            assert_eq!(
                client.next_stdout(),
                "got one",
                "{client_runtime} {hang_up}"
            );
            assert_eq!(
                client.next_stdout(),
                "got two",
                "{client_runtime} {hang_up}"
            );
            // Open until the client gives up waiting, after 1 s.
            let open = server.join().expect("the server saw the client's end");
            let (status, stderr) = client.exit();
            assert_eq!(
                status.code(),
                Some(0),
                "{client_runtime} {hang_up}: {stderr}"
            );
            drop(open);
        }
    }
}

#[test]
fn the_next_endpoint_takes_over() {
    let (a, a_addr) = Storm::serve("echo", "127.0.0.1:0", &["--proto", "ws"]);
    let (b, b_addr) = Storm::serve("echo", "127.0.0.1:0", &["--proto", "ws"]);
    let (a_url, b_url) = (format!("ws://{a_addr}/"), format!("ws://{b_addr}/"));
    let dead = format!("ws://{}/", dead_addr());

    // A dead first endpoint: the second one serves.
    let mut client = Storm::spawn(&["client", "ws", &dead, "--endpoint", &a_url]);
    assert!(client.stderr_line("connected to").contains(&a_url));
    client.send("via a");
    assert_eq!(client.next_stdout(), "via a");
    assert_eq!(client.finish().0.code(), Some(0));

    // With --reconnect, the first endpoint going away moves the client to
    // the next one.
    let mut client = Storm::spawn(&["client", "ws", &a_url, "--endpoint", &b_url, "--reconnect"]);
    assert!(client.stderr_line("connected to").contains(&a_url));
    a.kill();
    assert!(client.stderr_line("connected to").contains(&b_url));
    client.send("via b");
    assert_eq!(client.next_stdout(), "via b");
    assert_eq!(client.finish().0.code(), Some(0));
    drop(b);
}

/// The server stops and starts again on the same port: the client
/// reconnects, and a line typed while it was away is sent once it is back.
#[test]
fn reconnect_across_a_server_restart() {
    for (client_runtime, server_runtime) in [("tokio", "std"), ("smol", "tokio"), ("std", "smol")] {
        let (server, addr) = Storm::serve(
            "echo",
            "127.0.0.1:0",
            &["--proto", "ws", "--runtime", server_runtime],
        );
        let url = format!("ws://{addr}/");
        let mut client = connected(&["ws", &url, "--reconnect", "--runtime", client_runtime]);
        client.send("before");
        assert_eq!(client.next_stdout(), "before");

        server.kill();
        client.stderr_line("reconnecting");
        client.send("while away");
        let (server, again) = Storm::serve(
            "echo",
            &addr,
            &["--proto", "ws", "--runtime", server_runtime],
        );
        assert_eq!(again, addr);
        client.stderr_line("connected to");
        assert_eq!(client.next_stdout(), "while away", "{client_runtime}");
        client.send("after");
        assert_eq!(client.next_stdout(), "after");
        let (status, stderr) = client.finish();
        assert_eq!(status.code(), Some(0), "{client_runtime}: {stderr}");
        drop(server);
    }
}
