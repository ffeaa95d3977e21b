//! Settings from the environment (`storm-cli/src/environment.rs`) and
//! `--log-format`, through the real `storm` binary: options taken from
//! `STORM_…` variables, the command line winning over them, bad values
//! named, `--help` listing every variable, and JSON log lines. Each child
//! gets only the `STORM_…` variables its test gives it. Every wait is
//! bounded; nothing sleeps.

mod common;
use common::{connect, ended, lp_round_trip};

use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use storm_tests::process::{lines, output_within};

/// The most a test waits for a process, a line or a reply.
const WAIT: Duration = Duration::from_secs(20);

/// The options (command, long name) that take several values or repeat:
/// command-line only.
const COMMAND_LINE_ONLY: [(&str, &str); 13] = [
    ("echo", "tls"),
    ("json", "tls"),
    ("chat", "tls"),
    ("chat", "allow-origin"),
    ("gateway", "tls"),
    ("broker", "tls"),
    ("rpc", "tls"),
    ("cert", "name"),
    ("client rpc", "endpoint"),
    ("client ws", "endpoint"),
    ("client ws", "header"),
    ("client ws", "subprotocol"),
    ("client tcp", "endpoint"),
];

/// `storm ARGS` with the `STORM_…` variables of `env` and no others, its
/// standard streams piped.
fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_storm"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("STORM_") {
            command.env_remove(name);
        }
    }
    command
        .args(args)
        .env_remove("NO_COLOR")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Runs `storm ARGS` with `env` to its end, within [`WAIT`].
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let child = command(args, env).spawn().expect("storm starts");
    output_within(child, WAIT, &format!("storm {args:?} with {env:?}"))
}

/// A running `storm` server, killed (by its id) on drop.
struct Server {
    child: Child,
    /// The first stdout line ("… listening on SCHEME://ADDR").
    banner: String,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// `storm ARGS` with `env`, once it has printed its banner.
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = command(args, env).spawn().expect("storm starts");
        let stdout = lines(child.stdout.take().expect("stdout"));
        let stderr = lines(child.stderr.take().expect("stderr"));
        let Ok(banner) = stdout.recv_timeout(WAIT) else {
            // Killed, its stderr ends: what it said comes at once.
            let _ = child.kill();
            let _ = child.wait();
            let said: Vec<String> = stderr.iter().collect();
            panic!("no banner from storm {args:?} with {env:?}: {said:#?}")
        };
        Self {
            child,
            banner,
            stdout,
            stderr,
        }
    }

    /// The address in the banner.
    fn addr(&self) -> String {
        self.banner
            .rsplit("://")
            .next()
            .expect("an address in the banner")
            .to_owned()
    }

    /// The next stdout line, within [`WAIT`].
    fn next_stdout(&self) -> String {
        self.stdout.recv_timeout(WAIT).expect("a stdout line")
    }

    /// The stderr lines up to the first containing `text`, within
    /// [`WAIT`].
    fn stderr_until(&self, text: &str) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    let done = line.contains(text);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(_) => panic!("no stderr line with {text:?}; saw {seen:#?}"),
            }
        }
    }
}

/// That `echo` says it serves length-prefixed messages on smol on a
/// loopback port, and echoes one.
fn assert_serves_lp_on_smol(echo: &Server) {
    assert!(
        echo.banner
            .contains("(Lp, Smol runtime) listening on tcp://127.0.0.1:"),
        "{}",
        echo.banner
    );
    let mut client = connect(echo.addr());
    assert_eq!(lp_round_trip(&mut client, b"echoed"), b"echoed");
}

#[test]
fn echo_takes_its_options_from_the_environment() {
    let echo = Server::start(
        &["echo"],
        &[
            ("STORM_ADDR", "127.0.0.1:0"),
            ("STORM_PROTO", "lp"),
            ("STORM_RUNTIME", "smol"),
        ],
    );
    assert_serves_lp_on_smol(&echo);
}

#[test]
fn the_command_line_wins_over_the_environment() {
    let echo = Server::start(
        &["echo", "--addr", "127.0.0.1:0", "--proto", "lp"],
        &[
            ("STORM_ADDR", "not an address"),
            ("STORM_PROTO", "line"),
            ("STORM_RUNTIME", "smol"),
        ],
    );
    // --addr and --proto from the command line, --runtime from the
    // environment.
    assert_serves_lp_on_smol(&echo);
}

#[test]
fn a_flag_from_the_environment_gives_way_to_an_option_it_conflicts_with() {
    // STORM_NO_HTTP=1 alone: no chat page.
    let chat = Server::start(
        &["chat", "--addr", "127.0.0.1:0"],
        &[("STORM_NO_HTTP", "1")],
    );
    let next = chat.next_stdout();
    assert!(next.starts_with("console:"), "a page was served: {next}");
    drop(chat);
    // With --http-addr on the command line (which conflicts with
    // --no-http), the command line wins: the page is served.
    let chat = Server::start(
        &[
            "chat",
            "--addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ],
        &[("STORM_NO_HTTP", "1")],
    );
    let next = chat.next_stdout();
    assert!(next.starts_with("storm chat page on http://"), "{next}");
}

#[test]
fn max_connections_from_the_environment_refuses_the_second_client() {
    let echo = Server::start(
        &["echo", "--proto", "lp", "--addr", "127.0.0.1:0"],
        &[("STORM_MAX_CONNECTIONS", "1")],
    );
    let mut first = connect(echo.addr());
    // A reply: the first client has been admitted.
    assert_eq!(lp_round_trip(&mut first, b"one"), b"one");
    let mut second = connect(echo.addr());
    assert!(ended(&mut second), "a second client was let in");
    assert_eq!(lp_round_trip(&mut first, b"still"), b"still");
}

#[test]
fn a_bad_value_in_the_environment_exits_2_naming_its_variable() {
    for (args, env, says) in [
        (
            &["echo", "--addr", "127.0.0.1:0"][..],
            &[("STORM_MAX_CONNECTIONS", "lots")][..],
            &[
                "error: invalid value 'lots' for '--max-connections <N>'",
                "tip: --max-connections came from the environment: STORM_MAX_CONNECTIONS=lots",
            ][..],
        ),
        (
            &["echo", "--addr", "127.0.0.1:0"],
            &[("STORM_PROTO", "nope")],
            &[
                "error: invalid value 'nope' for '--proto <PROTO>'",
                "tip: --proto came from the environment: STORM_PROTO=nope",
            ],
        ),
        (
            &["echo", "--addr", "127.0.0.1:0"],
            &[("STORM_NO_DEFLATE", "maybe")],
            &[
                "error: invalid value 'maybe' for '--no-deflate'",
                "tip: --no-deflate came from the environment: STORM_NO_DEFLATE=maybe",
            ],
        ),
        // Two variables that conflict: neither wins; both are named.
        (
            &["chat", "--addr", "127.0.0.1:0"],
            &[
                ("STORM_NO_HTTP", "true"),
                ("STORM_HTTP_ADDR", "127.0.0.1:0"),
            ],
            &[
                "cannot be used with",
                "tip: --no-http came from the environment: STORM_NO_HTTP=true",
                "tip: --http-addr came from the environment: STORM_HTTP_ADDR=127.0.0.1:0",
            ],
        ),
    ] {
        let output = run(args, env);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{env:?}: {stderr}");
        for text in says {
            assert!(stderr.contains(text), "{env:?}: {text:?} not in {stderr}");
        }
    }
}

/// The commands under `storm PATH`, from the "Commands:" section of its
/// `--help` (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| *line != "Commands:")
        .skip(1)
        .take_while(|line| !line.is_empty())
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// Each option in a `--help` text, as its long name and its entry (the
/// option's line and the indented lines under it).
fn options(help: &str) -> Vec<(String, String)> {
    let mut options: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        let head = line.trim_start();
        let indent = line.len() - head.len();
        let long = head
            .strip_prefix("--")
            .or_else(|| head.split_once(", --").map(|(_, long)| long));
        match long {
            Some(long) if (2..=6).contains(&indent) => {
                let name = long.split([' ', '=']).next().unwrap_or(long);
                options.push((name.to_owned(), line.to_owned()));
            }
            _ if indent > 6 || line.is_empty() => {
                if let Some((_, entry)) = options.last_mut() {
                    entry.push('\n');
                    entry.push_str(line);
                }
            }
            _ => {}
        }
    }
    options
}

#[test]
fn help_lists_the_variable_of_every_option_that_takes_one_value() {
    let mut to_visit: Vec<Vec<String>> = vec![Vec::new()];
    let mut seen_options = 0;
    let mut wrong = Vec::new();
    while let Some(path) = to_visit.pop() {
        let args: Vec<&str> = path.iter().map(String::as_str).chain(["--help"]).collect();
        let output = run(&args, &[]);
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "storm {args:?}: {help}");
        for sub in subcommands(&help) {
            to_visit.push([&path[..], &[sub]].concat());
        }
        let command = path.join(" ");
        for (long, entry) in options(&help) {
            seen_options += 1;
            let variable = format!("STORM_{}", long.to_uppercase().replace('-', "_"));
            let none = ["help", "version"].contains(&long.as_str())
                || COMMAND_LINE_ONLY.contains(&(command.as_str(), long.as_str()));
            let listed = entry.contains(&format!("[env: {variable}]"));
            if listed == none || (none && entry.contains("[env:")) {
                wrong.push(format!("storm {command} --{long}: {entry}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // Every command's options were read (over a hundred in all).
    assert!(seen_options > 100, "{seen_options} options seen");
}

#[test]
fn log_lines_are_json_objects_with_log_format_json_and_never_coloured() {
    for (args, env) in [
        (
            &["echo", "--addr", "127.0.0.1:0", "--log-format", "json"][..],
            &[("STORM_LOG", "info")][..],
        ),
        (
            &["echo", "--addr", "127.0.0.1:0"],
            &[("STORM_LOG", "info"), ("STORM_LOG_FORMAT", "json")],
        ),
    ] {
        let echo = Server::start(args, env);
        let logged = echo.stderr_until("echo listening");
        for line in &logged {
            assert!(!line.contains('\u{1b}'), "{env:?}: {line:?}");
            let object: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{args:?} {env:?}: not JSON ({e}): {line}"));
            assert!(object["timestamp"].is_string(), "{line}");
            assert!(object["target"].is_string(), "{line}");
        }
        let last: serde_json::Value =
            serde_json::from_str(logged.last().expect("a line")).expect("JSON");
        assert_eq!(last["level"], "INFO", "{last}");
        assert_eq!(last["fields"]["message"], "echo listening", "{last}");
        assert_eq!(last["fields"]["addr"], echo.addr().as_str(), "{last}");
    }
}

#[test]
fn text_log_lines_to_a_pipe_are_plain_text() {
    let echo = Server::start(
        &["echo", "--addr", "127.0.0.1:0", "--log-format", "text"],
        &[("STORM_LOG", "info")],
    );
    let logged = echo.stderr_until("echo listening");
    let last = logged.last().expect("a line");
    assert!(!last.contains('\u{1b}'), "{last:?}");
    assert!(last.contains(" INFO "), "{last:?}");
    assert!(
        serde_json::from_str::<serde_json::Value>(last).is_err(),
        "{last}"
    );
}
