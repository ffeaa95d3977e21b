//! The `storm rpc` binary over loopback: served and called by the
//! library and by `storm client rpc`, over TLS on every runtime, and an
//! outage longer than a call's timeout. The library's tests (`RpcClient`,
//! `RpcServer`) are storm-services'. Every wait is bounded by [`WAIT`];
//! nothing sleeps to synchronise (the outage test sleeps for the outage
//! itself).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use storm_proto::reconnect::BackoffConfig;
use storm_services::rpc::{Json, RpcClient, RpcError};
use tokio::time::timeout;

/// The most any test waits for one event.
const WAIT: Duration = Duration::from_secs(10);

/// One call of [`calls_through_an_outage`].
#[derive(Debug)]
struct Call {
    started: Instant,
    took: Duration,
    result: Result<u64, RpcError>,
}

/// The calls of one client in [`an_outage_costs_only_the_calls_whose_timeout_ran_out`].
struct Calls {
    /// Every call, in order.
    log: Arc<std::sync::Mutex<Vec<Call>>>,
    /// How many succeeded so far.
    ok: tokio::sync::watch::Receiver<usize>,
}

/// Most calls one client makes in the outage test.
const OUTAGE_MAX_CALLS: usize = 2_000;

/// Most calls one client of the outage test may lose with their
/// connection: the one in flight at the kill, one that reached the dying
/// server's listener, and one written before the client's reader saw the
/// connection end (the calls are sequential).
const MOST_LOST: usize = 3;

/// Sequential `sleep 20` calls with `call_timeout` each until `stop` is
/// set (or [`OUTAGE_MAX_CALLS`]), recorded in `log`; `ok` counts the
/// successes. Runs on any runtime.
async fn calls_through_an_outage<R: storm_async::Runtime>(
    client: RpcClient<Json, R>,
    call_timeout: Duration,
    stop: Arc<std::sync::atomic::AtomicBool>,
    log: Arc<std::sync::Mutex<Vec<Call>>>,
    ok: tokio::sync::watch::Sender<usize>,
) {
    for _ in 0..OUTAGE_MAX_CALLS {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let started = Instant::now();
        let result = client.call::<_, u64>("sleep", &20, call_timeout).await;
        if result.is_ok() {
            ok.send_modify(|n| *n += 1);
        }
        log.lock().unwrap().push(Call {
            started,
            took: started.elapsed(),
            result,
        });
    }
    client.close().await;
}

/// Waits (at most [`WAIT`]) until `calls` has `n` successes; whether it
/// got them.
async fn successes(calls: &mut Calls, n: usize) -> bool {
    timeout(WAIT, calls.ok.wait_for(|ok| *ok >= n))
        .await
        .is_ok_and(|seen| seen.is_ok())
}

/// `storm rpc` is killed while a client calls it, stays down longer than
/// a call's timeout and comes back on the same port: each client (one on
/// tokio, one on smol) loses only the calls sent to the server that died
/// and the calls whose own timeout ran out while it was down, each of
/// those after waiting that timeout (never a burst of instant failures),
/// and calls succeed once it is back.
///
/// A killed server's kernel still completes TCP handshakes on its
/// listening socket until the process is torn down, and resets them then:
/// a call made just after the one in flight was lost can connect, be sent
/// and be lost too. And a client learns that its connection ended only
/// when its reader sees the end: a call made after the kill but before
/// that (on a loaded machine the reader may not have run yet) is written
/// to the dead connection and lost with it. So the lost calls are the
/// client's first failures (at most [`MOST_LOST`]), not necessarily only
/// the first one, and none comes after a call failed for another reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_costs_only_the_calls_whose_timeout_ran_out() {
    // Longer than the default backoff's 1 s cap: a call made while the
    // server is back always finds it.
    let call_timeout = Duration::from_secs(2);
    // Longer than a call's timeout.
    let outage = Duration::from_millis(2_500);
    let (server, endpoint) = start_storm_rpc(&["--proto", "tcp", "--addr", "127.0.0.1:0"]).await;
    let addr = endpoint
        .strip_prefix("tcp://")
        .expect("a tcp endpoint")
        .to_owned();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let start_calls = || {
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (ok_tx, ok) = tokio::sync::watch::channel(0);
        let calls = Calls {
            log: Arc::clone(&log),
            ok,
        };
        (calls, log, ok_tx, Arc::clone(&stop))
    };
    // The default configuration, as `storm client rpc` has it.
    let (mut on_tokio, log, ok, stop_tokio) = start_calls();
    let tokio_client = RpcClient::builder([endpoint.as_str()])
        .expect("endpoints")
        .build()
        .expect("client");
    let tokio_task = tokio::spawn(calls_through_an_outage(
        tokio_client,
        call_timeout,
        stop_tokio,
        log,
        ok,
    ));
    let (mut on_smol, log, ok, stop_smol) = start_calls();
    let smol_client = RpcClient::builder([endpoint.as_str()])
        .expect("endpoints")
        .runtime::<storm_smol::Smol>()
        .build()
        .expect("client");
    let smol_thread = std::thread::spawn(move || {
        smol::block_on(calls_through_an_outage(
            smol_client,
            call_timeout,
            stop_smol,
            log,
            ok,
        ));
    });

    assert!(
        successes(&mut on_tokio, 3).await && successes(&mut on_smol, 3).await,
        "calls flow"
    );
    let dying_from = Instant::now();
    drop(server); // SIGKILL, by pid, and waits for the process to end
    // Its listening socket is closed: nothing reaches that server from now.
    let killed_at = Instant::now();
    tokio::time::sleep(outage).await; // the outage itself
    let (_restarted, again) = start_storm_rpc(&["--proto", "tcp", "--addr", &addr]).await;
    assert_eq!(again, endpoint, "back on the same port");
    let restarted_at = Instant::now();
    let back = [
        on_tokio.ok.borrow().to_owned() + 3,
        on_smol.ok.borrow().to_owned() + 3,
    ];
    let recovered = [
        successes(&mut on_tokio, back[0]).await,
        successes(&mut on_smol, back[1]).await,
    ];
    stop.store(true, Ordering::Relaxed);
    timeout(WAIT + call_timeout, tokio_task)
        .await
        .expect("bounded")
        .expect("task");
    tokio::task::spawn_blocking(move || smol_thread.join())
        .await
        .expect("join")
        .expect("smol thread");

    // Sequential calls that each waited their whole timeout fit this many
    // times into the time from the kill to the restart (plus the call in
    // flight).
    let down_for = restarted_at - killed_at;
    let span = restarted_at - dying_from;
    let most = 2 + (span.as_millis() / call_timeout.as_millis()) as usize;
    // The restarted server listens from this instant at the earliest.
    let back_from = killed_at + outage;
    for (runtime, calls, recovered) in [
        ("tokio", &on_tokio, recovered[0]),
        ("smol", &on_smol, recovered[1]),
    ] {
        let log = calls.log.lock().unwrap();
        let failed: Vec<&Call> = log.iter().filter(|call| call.result.is_err()).collect();
        let summary = format!(
            "{runtime}: {} calls, {} failed; down for {down_for:?}; failures: {failed:#?}",
            log.len(),
            failed.len()
        );
        // Lost with its connection; every other failure is a call whose
        // timeout ran out.
        let lost = |call: &Call| matches!(call.result, Err(RpcError::ConnectionLost { .. }));
        let ran_out = failed.iter().filter(|call| !lost(call)).count();
        assert!(ran_out <= most, "{summary}");
        // The first failure that was not a lost call: the client knew by
        // then that its connection had ended.
        let first_other = failed.iter().find(|call| !lost(call));
        let lost_calls = failed.len() - ran_out;
        assert!(
            lost_calls <= MOST_LOST,
            "{lost_calls} calls lost with their connection: {summary}"
        );
        for call in &failed {
            let ended = call.started + call.took;
            match &call.result {
                // Sent to the server that died (the call in flight, or one
                // on a connection its dying listener took): lost with its
                // connection.
                Err(RpcError::ConnectionLost { .. }) => assert!(
                    first_other.is_none_or(|other| call.started < other.started),
                    "a call was lost after the client knew its connection had ended: {summary}"
                ),
                // Sent to the server that died and the client never saw
                // the end, or sent to the restarted one too close to its
                // deadline.
                Err(RpcError::Timeout) => assert!(
                    call.started < killed_at || ended > back_from,
                    "a call timed out while no server could take it: {summary}"
                ),
                Err(error @ RpcError::NoEndpoint { .. }) => {
                    let text = error.to_string();
                    assert!(
                        text.contains(&endpoint) && text.contains("; last error: "),
                        "{text}"
                    );
                }
                other => panic!("{runtime}: unexpected failure {other:?}: {summary}"),
            }
            if !lost(call) {
                assert!(
                    call.took >= call_timeout,
                    "a call failed after {:?}, before its timeout: {summary}",
                    call.took
                );
            }
            assert!(
                call.started < restarted_at,
                "a call made with the server back failed: {summary}"
            );
        }
        assert!(
            recovered,
            "{runtime}: no calls went through after the restart: {summary}"
        );
    }
}

/// Kills the child process when dropped (also when a test fails).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_storm_binary_serves_and_calls() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let storm = env!("CARGO_BIN_EXE_storm");
    let mut server = Killed(
        Command::new(storm)
            .args(["rpc", "--proto", "tcp", "--addr", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start storm rpc"),
    );
    let stdout = server.0.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let line = timeout(WAIT, line)
        .await
        .expect("bounded")
        .expect("task")
        .expect("read");
    let endpoint = line
        .trim()
        .rsplit_once(" listening on ")
        .expect("listening line")
        .1
        .to_owned();

    // The library client against the binary's server.
    let client = RpcClient::builder([endpoint.as_str()])
        .expect("endpoints")
        .backoff(BackoffConfig::fixed(Duration::from_millis(50)))
        .build()
        .expect("client");
    let echoed: serde_json::Value = client
        .call("echo", &serde_json::json!({"a": [1, 2]}), WAIT)
        .await
        .expect("echo");
    assert_eq!(echoed, serde_json::json!({"a": [1, 2]}));
    assert_eq!(
        client
            .call::<_, u64>("sleep", &1000, Duration::from_millis(100))
            .await,
        Err(RpcError::Timeout)
    );

    // The binary's client.
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || Command::new(storm).args(args).output())
    };
    let output = timeout(
        WAIT,
        run([
            "client",
            "rpc",
            "--endpoint",
            &endpoint,
            "--method",
            "echo",
            "--params",
            "[7]",
            "--trace",
        ]
        .map(String::from)
        .to_vec()),
    )
    .await
    .expect("bounded")
    .expect("task")
    .expect("run storm client rpc");
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "[7]");
    let trace = String::from_utf8_lossy(&output.stderr);
    assert!(
        trace.contains("-> tcp://") && trace.contains("<- tcp://"),
        "{trace}"
    );
}

/// Starts `storm rpc` with `args` and returns it with the endpoint its
/// banner names.
async fn start_storm_rpc(args: &[&str]) -> (Killed, String) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let mut server = Killed(
        Command::new(env!("CARGO_BIN_EXE_storm"))
            .arg("rpc")
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start storm rpc"),
    );
    let stdout = server.0.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let line = timeout(WAIT, line)
        .await
        .expect("bounded")
        .expect("task")
        .expect("read");
    let endpoint = line
        .trim()
        .rsplit_once(" listening on ")
        .unwrap_or_else(|| panic!("no listening line: {line:?}"))
        .1
        .to_owned();
    (server, endpoint)
}

/// Ctrl-C stops `server` and it exits 0, within [`WAIT`].
async fn interrupt(mut server: Killed, what: &str) {
    let pid = server.0.id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || server.0.wait());
    let exit = timeout(WAIT, exit)
        .await
        .unwrap_or_else(|_| panic!("{what}: still running after Ctrl-C"))
        .expect("task")
        .expect("wait");
    assert!(exit.success(), "{what}: {exit}");
}

/// `storm rpc --tls` on every runtime, over `wss://` and `tls://`: a
/// client that trusts the test CA gets answers (the library client and
/// `storm client rpc --tls-ca`, on the server's runtime), one that does
/// not cannot connect, and
/// Ctrl-C stops the server cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_storm_binary_serves_tls_on_every_runtime() {
    let pki = storm_tests::suite::pki::Pki::new();
    let dir = std::env::temp_dir().join(format!("storm-rpc-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (cert, key, ca) = (
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("ca.pem"),
    );
    std::fs::write(&cert, &pki.server_cert_pem).expect("write");
    std::fs::write(&key, &pki.server_key_pem).expect("write");
    std::fs::write(&ca, &pki.ca_pem).expect("write");
    let (cert, key, ca) = (
        cert.to_str().expect("utf-8 path"),
        key.to_str().expect("utf-8 path"),
        ca.to_str().expect("utf-8 path"),
    );
    for runtime in ["tokio", "smol", "std"] {
        for (proto, scheme) in [("ws", "wss://"), ("tcp", "tls://")] {
            let what = format!("{runtime} {proto}");
            let (server, endpoint) = start_storm_rpc(&[
                "--runtime",
                runtime,
                "--proto",
                proto,
                "--addr",
                "127.0.0.1:0",
                "--tls",
                cert,
                key,
            ])
            .await;
            assert!(endpoint.starts_with(scheme), "{what}: {endpoint}");

            let trusting = RpcClient::builder([endpoint.as_str()])
                .expect("endpoints")
                .tls(pki.client())
                .build()
                .expect("client");
            let echoed: serde_json::Value = trusting
                .call("echo", &serde_json::json!(["over", runtime]), WAIT)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(echoed, serde_json::json!(["over", runtime]), "{what}");
            // The demo's sleep stops at the call's deadline on every runtime.
            assert_eq!(
                trusting
                    .call::<_, u64>("sleep", &10_000, Duration::from_millis(100))
                    .await,
                Err(RpcError::Timeout),
                "{what}"
            );
            trusting.close().await;

            // Without the test CA the server is not trusted.
            let doubting = RpcClient::builder([endpoint.as_str()])
                .expect("endpoints")
                .build()
                .expect("client");
            // Retried until the call's time runs out.
            let refused = doubting
                .call::<_, String>("name", &(), Duration::from_millis(300))
                .await;
            assert!(
                matches!(refused, Err(RpcError::NoEndpoint { .. })),
                "{what}: {refused:?}"
            );

            let args: Vec<String> = [
                "client",
                "rpc",
                "--endpoint",
                &endpoint,
                "--tls-ca",
                ca,
                "--method",
                "name",
                // The client on the server's runtime.
                "--runtime",
                runtime,
            ]
            .map(String::from)
            .to_vec();
            let output = tokio::task::spawn_blocking(move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_storm"))
                    .args(args)
                    .output()
            });
            let output = timeout(WAIT, output)
                .await
                .expect("bounded")
                .expect("task")
                .expect("run storm client rpc");
            assert!(output.status.success(), "{what}: {output:?}");
            assert_eq!(
                String::from_utf8_lossy(&output.stdout).trim(),
                "\"storm\"",
                "{what}"
            );

            interrupt(server, &what).await;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
