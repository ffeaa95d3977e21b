//! `storm bench` as a real process: against every service started with
//! `--spawn` (child `storm` processes on 127.0.0.1:0), against echo
//! servers in this test's own runtime, failing against services of
//! another protocol, and refusing what it must refuse.
//! Every run is bounded by `--max-messages` and `--duration`, and every
//! child by a deadline.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

mod child;
use child::Storm;

use serde_json::Value;
use storm_host::options::{ServerOptions, WsOptions};
use storm_proto::Message;
use storm_proto::framing::Framing;
use storm_tokio::{Handler, Session, TcpServer, WsServer};

/// Longest a bench process may take in these tests.
const DEADLINE: Duration = Duration::from_secs(60);

/// What a finished `storm bench` left behind.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `storm bench ARGS` to completion (killed after [`DEADLINE`]).
fn bench(args: &[&str]) -> Finished {
    bench_with_env(args, &[])
}

/// Runs `storm bench ARGS` with these environment variables set.
fn bench_with_env(args: &[&str], env: &[(&str, &str)]) -> Finished {
    let mut child = Command::new(env!("CARGO_BIN_EXE_storm"))
        .arg("bench")
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("storm starts");
    let stdout = drain(&mut child, true);
    let stderr = drain(&mut child, false);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("storm bench {args:?} ran over {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Finished {
        status,
        stdout: stdout.join().expect("stdout"),
        stderr: stderr.join().expect("stderr"),
    }
}

/// Reads a child's stdout or stderr to the end on a thread.
fn drain(child: &mut Child, stdout: bool) -> std::thread::JoinHandle<String> {
    let mut pipe: Box<dyn Read + Send> = if stdout {
        Box::new(child.stdout.take().expect("stdout"))
    } else {
        Box::new(child.stderr.take().expect("stderr"))
    };
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// Runs a bench with `--json` and returns its summary, asserting success.
fn summary(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let done = bench(&all);
    assert!(
        done.status.success(),
        "storm bench {args:?}: {}\nstdout: {}\nstderr: {}",
        done.status,
        done.stdout,
        done.stderr
    );
    serde_json::from_str(done.stdout.trim())
        .unwrap_or_else(|e| panic!("summary is not JSON ({e}): {}", done.stdout))
}

/// The run ended on the cap: exactly `cap` answers, every one timed, with
/// round trips that are positive, ordered and well under the run's length.
fn assert_exact(summary: &Value, cap: u64) {
    assert_eq!(summary["error"], Value::Null, "{summary}");
    assert_eq!(summary["msgs"], cap, "{summary}");
    // No request beyond the cap was sent, and none is left unanswered.
    assert_eq!(summary["sent"], cap, "{summary}");
    let latency = &summary["latency_us"];
    assert_eq!(latency["samples"], cap, "{summary}");
    let us = |key: &str| {
        latency[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key}: {summary}"))
    };
    let (p50, p90, p99, max) = (us("p50"), us("p90"), us("p99"), us("max"));
    assert!(p50 > 0.0, "{summary}");
    assert!(p50 <= p90 && p90 <= p99 && p99 <= max, "{summary}");
    assert!(max < 20_000_000.0, "a round trip over 20 s: {summary}");
    let elapsed = summary["elapsed_s"].as_f64().expect("elapsed_s");
    assert!(elapsed > 0.0 && elapsed < 30.0, "{summary}");
    assert!(summary["msgs_per_s"].as_f64().expect("msgs_per_s") > 0.0);
}

/// A throughput run against `target` started by `--spawn` on `runtime`
/// (the service too), ended by the message cap.
fn spawned_throughput(target: &str, runtime: &str) {
    let s = summary(&[
        target,
        "--spawn",
        "--runtime",
        runtime,
        "--connections",
        "4",
        "--in-flight",
        "8",
        "--duration",
        "30",
        "--max-messages",
        "200",
    ]);
    assert_eq!(s["target"], target);
    assert_eq!(s["mode"], "throughput");
    assert_eq!(s["runtime"], runtime);
    assert_eq!(
        (s["connections"].as_u64(), s["in_flight"].as_u64()),
        (Some(4), Some(8))
    );
    assert_exact(&s, 200);
    if cfg!(target_os = "linux") {
        // CPU of both sides, from /proc.
        assert!(s["bench_cpu_pct"].is_number(), "{s}");
        assert!(s["service_cpu_pct"].is_number(), "{s}");
        assert!(s["service_cpu_us_per_msg"].is_number(), "{s}");
    }
    assert_stopped(&s);
}

/// A latency run against `target` started by `--spawn` on `runtime`:
/// one request in flight on each of two connections.
fn spawned_latency(target: &str, runtime: &str) {
    let s = summary(&[
        target,
        "--spawn",
        "--runtime",
        runtime,
        "--mode",
        "latency",
        "--connections",
        "2",
        "--size",
        "1000",
        "--duration",
        "30",
        "--max-messages",
        "100",
    ]);
    assert_eq!(s["mode"], "latency");
    assert_eq!(s["runtime"], runtime);
    assert_eq!(s["in_flight"], 1);
    assert_eq!(s["size"], 1000);
    assert_exact(&s, 100);
    assert_stopped(&s);
}

/// The service `--spawn` started is gone: its address refuses connections.
fn assert_stopped(summary: &Value) {
    let addr = summary["addr"].as_str().expect("addr");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "{addr} still accepts connections after the bench"
    );
}

/// Both modes against `target` on `runtime`.
fn spawned_both_modes(target: &str, runtime: &str) {
    spawned_throughput(target, runtime);
    spawned_latency(target, runtime);
}

/// Every target in both modes on one runtime (the bench's clients and the
/// service it starts), and `--tls-ca` on it.
macro_rules! on_runtime {
    ($($module:ident: $runtime:literal),* $(,)?) => {$(
        mod $module {
            use super::*;

            #[test]
            fn echo_raw() {
                spawned_both_modes("echo-raw", $runtime);
            }

            #[test]
            fn echo_lp() {
                spawned_both_modes("echo-lp", $runtime);
            }

            #[test]
            fn echo_line() {
                spawned_both_modes("echo-line", $runtime);
            }

            #[test]
            fn echo_ws() {
                spawned_both_modes("echo-ws", $runtime);
            }

            #[test]
            fn json() {
                spawned_both_modes("json", $runtime);
            }

            #[test]
            fn chat() {
                spawned_both_modes("chat", $runtime);
            }

            #[test]
            fn gateway() {
                spawned_both_modes("gateway", $runtime);
            }

            #[test]
            fn broker() {
                spawned_both_modes("broker", $runtime);
            }

            #[test]
            fn tls_ca() {
                tls_ca_on($runtime);
            }
        }
    )*};
}

on_runtime!(on_tokio: "tokio", on_smol: "smol", on_std: "std");

/// `STORM_RUNTIME` picks the runtime when `--runtime` is not given.
#[test]
fn the_runtime_can_come_from_storm_runtime() {
    let small = [
        "echo-lp",
        "--spawn",
        "--connections",
        "1",
        "--max-messages",
        "20",
        "--json",
    ];
    for (env, args, expected) in [
        ("smol", &[][..], "smol"),
        ("std", &[][..], "std"),
        ("std", &["--runtime", "tokio"][..], "tokio"),
    ] {
        let done = bench_with_env(&[&small[..], args].concat(), &[("STORM_RUNTIME", env)]);
        assert!(done.status.success(), "{env}: {}", done.stderr);
        let s: Value = serde_json::from_str(done.stdout.trim()).expect("JSON summary");
        assert_eq!(s["runtime"], expected, "{s}");
        assert_exact(&s, 20);
    }
    let done = bench_with_env(&small, &[("STORM_RUNTIME", "nope")]);
    assert_eq!(done.status.code(), Some(2), "{}", done.stderr);
}

/// On std the broker target runs a thread per open request: more than
/// 2048 (`--connections` × `--in-flight`) is refused, saying why; the
/// same numbers run on tokio.
#[test]
fn broker_on_std_refuses_more_than_2048_open_requests() {
    let done = bench(&[
        "broker",
        "--spawn",
        "--runtime",
        "std",
        "--connections",
        "100",
        "--in-flight",
        "21",
    ]);
    assert_eq!(done.status.code(), Some(2), "{}", done.stderr);
    assert!(
        done.stderr.contains(
            "--runtime std: broker runs a thread per open request, so --connections × \
             --in-flight must be at most 2048 (100 × 21 here)"
        ),
        "{}",
        done.stderr
    );
}

/// `--tls-ca` on `runtime`: the bench's clients trust the test CA and
/// drive TLS services (started on the same runtime) over TLS (json,
/// echo-lp) and wss:// (echo-ws, chat), every request answered.
fn tls_ca_on(runtime: &str) {
    let pki = storm_tests::suite::pki::Pki::new();
    let files = pki.pem_files();
    let ca = files.ca.to_str().expect("temporary paths are UTF-8");
    let serve = [&files.tls_args()[..], &["--runtime", runtime]].concat();
    for (target, service, args) in [
        ("json", "json", &[][..]),
        ("echo-lp", "echo", &["--proto", "lp"][..]),
        ("echo-ws", "echo", &["--proto", "ws"][..]),
        ("chat", "chat", &["--no-http"][..]),
    ] {
        let (server, addr) = Storm::serve(service, "127.0.0.1:0", &[args, &serve[..]].concat());
        let s = summary(&[
            target,
            "--addr",
            &addr,
            "--tls-ca",
            ca,
            "--runtime",
            runtime,
            "--connections",
            "2",
            "--max-messages",
            "50",
            "--duration",
            "30",
        ]);
        assert_eq!(s["runtime"], runtime, "{target}: {s}");
        assert_exact(&s, 50);
        drop(server);
    }
}

#[test]
fn echo_ws_with_deflate_counts_exactly_the_cap() {
    // storm echo --proto ws accepts permessage-deflate by default.
    let s = summary(&[
        "echo-ws",
        "--spawn",
        "--deflate",
        "--size",
        "4096",
        "--duration",
        "30",
        "--max-messages",
        "300",
    ]);
    assert_exact(&s, 300);
}

#[test]
fn broker_channel_without_provider_fails_the_run() {
    for runtime in ["tokio", "smol", "std"] {
        let done = bench(&[
            "broker",
            "--spawn",
            "--runtime",
            runtime,
            "--channel",
            "5",
            "--duration",
            "30",
            "--max-messages",
            "10",
        ]);
        assert_eq!(done.status.code(), Some(1), "{runtime}: {}", done.stdout);
        assert!(
            done.stdout.contains("ERROR: consumer ") && done.stdout.contains("0 msgs"),
            "{runtime}: {}",
            done.stdout
        );
    }
}

/// Echoes every message back.
struct Echo;

impl Handler for Echo {
    async fn on_message(&self, session: &Session, message: Message) {
        let _ = session.send(message).await;
    }
}

/// An echo server in this process, WebSocket if `ws`, else
/// length-prefixed TCP, on a runtime that lives as long as the returned
/// value.
fn in_process_echo(ws: bool) -> (tokio::runtime::Runtime, String) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let addr = runtime.block_on(async {
        let options = ServerOptions::default();
        if ws {
            let server = WsServer::bind(options, WsOptions::default()).await;
            let server = server.expect("bind");
            let addr = server.local_addr();
            tokio::spawn(server.serve(Echo));
            addr
        } else {
            let server = TcpServer::bind(options, Framing::LengthPrefix).await;
            let server = server.expect("bind");
            let addr = server.local_addr();
            tokio::spawn(server.serve(Echo));
            addr
        }
    });
    (runtime, addr.to_string())
}

/// The run failed (exit 1) with `0 msgs` and an error containing every
/// one of `expected`.
fn assert_failed_without_answers(done: &Finished, expected: &[&str]) {
    assert_eq!(
        done.status.code(),
        Some(1),
        "{}\n{}",
        done.stdout,
        done.stderr
    );
    let line = done.stdout.trim();
    assert!(line.contains(": 0 msgs in "), "{line}");
    let error = line
        .split_once("; ERROR: ")
        .unwrap_or_else(|| panic!("no error: {line}"))
        .1;
    for part in expected {
        assert!(error.contains(part), "{part:?} not in {error:?}");
    }
}

#[test]
fn a_service_that_never_answers_fails_the_run() {
    // `storm json` speaks length-prefixed TCP; a WebSocket server waits for
    // an HTTP request and says nothing.
    let (_runtime, addr) = in_process_echo(true);
    for runtime in ["tokio", "smol", "std"] {
        let done = bench(&[
            "json",
            "--addr",
            &addr,
            "--runtime",
            runtime,
            "--duration",
            "1",
            "--connections",
            "2",
        ]);
        assert_failed_without_answers(
            &done,
            &[
                "no request was answered in ",
                &format!("is {addr} running `storm json`?"),
            ],
        );
    }
    // The same for raw bytes, which a WebSocket server never answers
    // either; the JSON summary carries the error.
    let done = bench(&["echo-raw", "--addr", &addr, "--duration", "1", "--json"]);
    assert_eq!(done.status.code(), Some(1), "{}", done.stdout);
    let s: Value = serde_json::from_str(done.stdout.trim()).expect("JSON summary");
    assert_eq!(s["msgs"], 0, "{s}");
    let error = s["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error: {s}"));
    assert!(error.contains("`storm echo --proto raw`"), "{error}");
}

#[test]
fn a_service_of_another_protocol_is_named_in_the_error() {
    // A WebSocket target against a length-prefixed echo server: the
    // upgrade fails, and the error says what was expected there.
    let (_runtime, addr) = in_process_echo(false);
    let done = bench(&["echo-ws", "--addr", &addr, "--duration", "5"]);
    assert_failed_without_answers(
        &done,
        &[
            &format!("connecting to {addr}: "),
            &format!("(is {addr} running `storm echo --proto ws`?)"),
        ],
    );
}

#[test]
fn human_summary_against_a_server_in_this_process() {
    let (_runtime, addr) = in_process_echo(false);
    let done = bench(&[
        "echo-lp",
        "--addr",
        &addr,
        "--connections",
        "3",
        "--in-flight",
        "5",
        "--duration",
        "30",
        "--max-messages",
        "150",
    ]);
    assert!(done.status.success(), "{}\n{}", done.stdout, done.stderr);
    let line = done.stdout.trim();
    assert!(
        line.starts_with(&format!(
            "echo-lp throughput {addr} (tokio): 3 conns x 5 in flight x 32 B: 150 msgs in "
        )),
        "{line}"
    );
    assert!(
        line.contains(" msgs/s, ") && line.contains(" MiB/s"),
        "{line}"
    );
    assert!(
        line.contains("; round trip p50 ") && line.contains(" us, max "),
        "{line}"
    );
    assert!(!line.contains("ERROR"), "{line}");
}

#[test]
fn a_run_ends_at_its_duration_with_a_progress_line_per_second() {
    let (_runtime, addr) = in_process_echo(false);
    let s = summary(&[
        "echo-lp",
        "--addr",
        &addr,
        "--mode",
        "latency",
        "--duration",
        "1.5",
        "--max-messages",
        "1000000000",
    ]);
    let elapsed = s["elapsed_s"].as_f64().expect("elapsed");
    assert!((1.5..5.0).contains(&elapsed), "{s}");
    let msgs = s["msgs"].as_u64().expect("msgs");
    assert!(msgs > 0 && msgs < 1_000_000_000, "{s}");
    assert_eq!(s["error"], Value::Null);
    // Not started by the bench: no service CPU to report.
    assert_eq!(s["service_cpu_pct"], Value::Null, "{s}");
}

/// On every runtime: one progress line a second, on stderr as plain
/// lines, and the run ends at its duration.
#[test]
fn progress_goes_to_stderr_as_plain_lines_off_a_terminal() {
    let (_runtime, addr) = in_process_echo(false);
    for runtime in ["tokio", "smol", "std"] {
        let done = bench(&[
            "echo-lp",
            "--addr",
            &addr,
            "--runtime",
            runtime,
            "--duration",
            "1.5",
            "--connections",
            "2",
            "--json",
        ]);
        assert!(done.status.success(), "{runtime}: {}", done.stderr);
        let progress: Vec<&str> = done.stderr.lines().collect();
        assert_eq!(progress.len(), 1, "{runtime}: {}", done.stderr);
        assert!(
            progress[0].starts_with("storm bench echo-lp: 1 s, ")
                && progress[0].contains(" msgs/s"),
            "{runtime}: {}",
            done.stderr
        );
        assert!(!done.stderr.contains('\r'));
        assert_eq!(done.stdout.lines().count(), 1, "{}", done.stdout);
        let s: Value = serde_json::from_str(done.stdout.trim()).expect("JSON summary");
        assert_eq!(s["runtime"], runtime, "{s}");
        let elapsed = s["elapsed_s"].as_f64().expect("elapsed");
        assert!((1.5..5.0).contains(&elapsed), "{s}");
        assert!(s["msgs"].as_u64() > Some(0), "{s}");
    }
}

#[test]
fn non_loopback_addresses_are_refused() {
    for addr in ["10.1.2.3:9001", "192.0.2.7:80", "[2001:db8::1]:9001"] {
        let done = bench(&["echo-ws", "--addr", addr, "--duration", "1"]);
        assert_eq!(done.status.code(), Some(2), "{addr}: {}", done.stderr);
        assert!(
            done.stderr.contains("is not a loopback address"),
            "{addr}: {}",
            done.stderr
        );
        assert!(done.stdout.is_empty(), "{}", done.stdout);
    }
}

#[test]
fn bad_flags_are_refused() {
    for args in [
        &["echo-ws", "--spawn", "--connections", "0"][..],
        &["echo-ws", "--spawn", "--duration", "0"],
        &["echo-ws", "--spawn", "--duration", "7200"],
        &[
            "echo-ws",
            "--spawn",
            "--mode",
            "latency",
            "--in-flight",
            "2",
        ],
        &["echo-ws"],
        &["echo-ws", "--spawn", "--size", "0"],
        &["chat", "--spawn", "--size", "70000"],
        &["echo-line", "--spawn", "--size", "70000"],
        &["broker", "--spawn", "--in-flight", "2000"],
        &["gateway", "--spawn", "--route", "no\nline"],
        &["broker", "--spawn", "--channel", "not-a-channel"],
    ] {
        let done = bench(args);
        assert_eq!(done.status.code(), Some(2), "{args:?}: {}", done.stderr);
    }
}

#[test]
fn a_wrong_answer_fails_the_run() {
    // An echo server is not a JSON service: the echo of a request is not an
    // echo_response.
    let (_runtime, addr) = in_process_echo(false);
    for runtime in ["tokio", "smol", "std"] {
        let done = bench(&[
            "json",
            "--addr",
            &addr,
            "--runtime",
            runtime,
            "--duration",
            "30",
            "--max-messages",
            "50",
        ]);
        assert_eq!(done.status.code(), Some(1), "{runtime}: {}", done.stdout);
        assert!(
            done.stdout.contains("ERROR: connection ") && done.stdout.contains("unexpected reply"),
            "{runtime}: {}",
            done.stdout
        );
    }
}

#[test]
fn nothing_listening_fails_the_run() {
    // A port that was free a moment ago.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let done = bench(&["echo-lp", "--addr", &addr, "--duration", "5"]);
    assert_eq!(done.status.code(), Some(1), "{}", done.stdout);
    assert!(
        done.stdout.contains("ERROR: connecting to"),
        "{}",
        done.stdout
    );
}

/// On every runtime (the service on the same one).
#[cfg(unix)]
#[test]
fn ctrl_c_ends_the_run_early_with_a_summary_and_stops_the_service() {
    for runtime in ["tokio", "smol", "std"] {
        ctrl_c_on(runtime);
    }
}

#[cfg(unix)]
fn ctrl_c_on(runtime: &str) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_storm"))
        .args([
            "bench",
            "echo-lp",
            "--spawn",
            "--runtime",
            runtime,
            "--mode",
            "latency",
            "--duration",
            "50",
            "--json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("storm starts");
    let stdout = drain(&mut child, true);
    // The first progress line says the load is running.
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    stderr.read_line(&mut line).expect("progress line");
    assert!(line.starts_with("storm bench echo-lp: 1 s, "), "{line}");
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("storm bench did not stop on SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let out = stdout.join().expect("stdout");
    let s: Value = serde_json::from_str(out.trim()).expect("JSON summary");
    assert_eq!(s["interrupted"], true, "{s}");
    assert_eq!(s["runtime"], runtime, "{s}");
    assert_eq!(s["error"], Value::Null, "{s}");
    let elapsed = s["elapsed_s"].as_f64().expect("elapsed");
    assert!((1.0..20.0).contains(&elapsed), "{s}");
    assert!(s["msgs"].as_u64() > Some(0), "{s}");
    assert_stopped(&s);
}
