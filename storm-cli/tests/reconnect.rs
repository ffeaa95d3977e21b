//! The clients of one server across its restart, through the real binary
//! on loopback: `storm client json` and `storm client broker provider` with
//! `--reconnect` connect (and register) again; and Ctrl-C during
//! `storm client rpc` cancels the call in flight at the server.

mod child;
use child::Storm;

/// `storm client json --mode interactive --reconnect` to `addr`, with
/// `extra` flags.
fn interactive_json_client(addr: &str, extra: &[&str]) -> Storm {
    let args = [
        "client",
        "json",
        "--addr",
        addr,
        "--mode",
        "interactive",
        "--reconnect",
    ];
    Storm::spawn(&[&args[..], extra].concat())
}

/// Waits for the interactive client's next reply, and checks it is the
/// server's echo of `content`. (The client prints its own request first,
/// `-> {..."content":"..."}`, before sending it: a wait for the content
/// alone would end before the request has even left.)
fn echoed(client: &Storm, content: &str) {
    let reply = client.stdout_line("<- ");
    assert!(
        reply.contains("\"echo_response\"") && reply.contains(&format!("\"{content}\"")),
        "not the echo of {content:?}: {reply}"
    );
}

/// Every runtime the clients run on; each test runs its client and its
/// server on each.
const RUNTIMES: [&str; 3] = ["tokio", "smol", "std"];

/// `storm json` is stopped and started again on the same port: the
/// interactive client says it lost the connection, connects again, and
/// goes on.
#[test]
fn json_client_reconnects_across_a_server_restart() {
    for runtime in RUNTIMES {
        let on = ["--runtime", runtime];
        let (server, addr) = Storm::serve("json", "127.0.0.1:0", &on);
        let mut client = interactive_json_client(&addr, &on);
        client.send("/echo before");
        // Answered: nothing is in flight when the server dies, so the
        // client learns of it from the closed connection (not from a send).
        echoed(&client, "before");

        server.kill();
        client.stderr_line("disconnected: the server closed the connection; reconnecting in");
        let (server, again) = Storm::serve("json", &addr, &on);
        assert_eq!(again, addr, "{runtime}");
        client.stderr_line("storm client json: reconnected");
        client.send("/echo after");
        echoed(&client, "after");
        client.send("/exit");
        let (status, stderr) = client.exit();
        assert_eq!(status.code(), Some(0), "{runtime}: {stderr}");
        drop(server);
    }
}

/// With `--max-attempts 2` against a server that stays away, the client
/// gives up after two attempts and fails (exit code 1).
#[test]
fn json_client_gives_up_after_max_attempts() {
    for runtime in RUNTIMES {
        let on = ["--runtime", runtime];
        let (server, addr) = Storm::serve("json", "127.0.0.1:0", &on);
        let mut client =
            interactive_json_client(&addr, &[&on[..], &["--max-attempts", "2"]].concat());
        client.send("/ping");
        client.stdout_line("pong");
        server.kill();
        client.stderr_line("giving up after 2 attempts");
        let (status, stderr) = client.exit();
        assert_eq!(status.code(), Some(1), "{runtime}: {stderr}");
    }
}

/// The broker restarts: the provider registers on its channel again, and
/// a request through the new broker is answered; the broker and its
/// clients on each runtime.
#[test]
fn broker_provider_serves_again_after_the_broker_restarts() {
    for runtime in RUNTIMES {
        let on = ["--runtime", runtime];
        let (broker, addr) = Storm::serve("broker", "127.0.0.1:0", &on);
        let provider = Storm::spawn(&[
            "client",
            "broker",
            "provider",
            "--addr",
            &addr,
            "--channel",
            "7",
            "--mode",
            "upper",
            "--reconnect",
            "--runtime",
            runtime,
        ]);
        provider.stdout_line("registered at");

        broker.kill();
        provider.stderr_line("disconnected from the broker");
        let (broker, again) = Storm::serve("broker", &addr, &on);
        assert_eq!(again, addr, "{runtime}");
        provider.stdout_line("registered at");
        provider.stderr_line("reconnected");
        let request = Storm::spawn(&[
            "client",
            "broker",
            "request",
            "--addr",
            &addr,
            "--channel",
            "7",
            "--data",
            "again",
            "--runtime",
            runtime,
        ]);
        assert_eq!(request.next_stdout(), "AGAIN", "{runtime}");
        let (status, stderr) = request.exit();
        assert_eq!(status.code(), Some(0), "{runtime}: {stderr}");
        drop((provider, broker));
    }
}

/// Ctrl-C while a slow call runs: the client cancels it (the server counts
/// a cancel from its client, not a dropped connection) and exits 130; the
/// client and the server on each runtime.
#[test]
fn ctrl_c_cancels_the_rpc_call_in_flight() {
    for runtime in RUNTIMES {
        let (server, addr) = Storm::serve("rpc", "127.0.0.1:0", &["--runtime", runtime]);
        let client = Storm::spawn(&[
            "client",
            "rpc",
            "--endpoint",
            &format!("ws://{addr}/"),
            "--method",
            "sleep",
            "--params",
            "30000",
            "--timeout-ms",
            "60000",
            "--trace",
            "--runtime",
            runtime,
        ]);
        // The request went out.
        client.stderr_line("-> ");
        client.interrupt();
        client.stderr_line("interrupted: the calls in flight were cancelled");
        let (status, stderr) = client.exit();
        assert_eq!(status.code(), Some(130), "{runtime}: {stderr}");
        server.interrupt();
        let stopped = server.stdout_line("storm rpc stopped:");
        assert!(
            stopped.contains("1 requests") && stopped.contains(", 1 cancelled"),
            "{runtime}: {stopped}"
        );
    }
}
