//! `storm` as a child process with piped stdin, stdout and stderr, waited
//! on line by line with bounded timeouts (the tests of `storm cert`, of
//! the generic clients, and of every client's reconnects).

// Each test file that declares this module uses a part of it.
#![allow(dead_code)]

use std::io::Write;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use storm_tests::process::{lines, output_within};

/// The most a test waits for a line or an exit.
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// A running `storm`, killed on drop.
pub(crate) struct Storm {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    /// What `storm` was run with, for failure messages.
    args: String,
}

impl Storm {
    /// `storm ARGS`.
    pub(crate) fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_storm"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("storm starts");
        Self {
            stdin: child.stdin.take(),
            stdout: lines(child.stdout.take().expect("stdout")),
            stderr: lines(child.stderr.take().expect("stderr")),
            child: Some(child),
            args: args.join(" "),
        }
    }

    /// `storm SERVICE --addr ADDR ARGS` once its banner says where it
    /// listens, and that address (`host:port`).
    pub(crate) fn serve(service: &str, addr: &str, args: &[&str]) -> (Self, String) {
        let storm = Self::spawn(&[&[service, "--addr", addr], args].concat());
        let banner = storm.stdout_line("listening on");
        let addr = banner
            .rsplit("://")
            .next()
            .expect("address in the banner")
            .trim_end_matches('/')
            .to_owned();
        (storm, addr)
    }

    /// The next stdout line, within [`WAIT`].
    pub(crate) fn next_stdout(&self) -> String {
        self.stdout
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("no stdout line from storm {}", self.args))
    }

    /// The first stdout line from now on containing `text`, within
    /// [`WAIT`].
    pub(crate) fn stdout_line(&self, text: &str) -> String {
        wait_for(&self.stdout, text, &self.args, "stdout")
    }

    /// The first stderr line from now on containing `text`, within
    /// [`WAIT`].
    pub(crate) fn stderr_line(&self, text: &str) -> String {
        wait_for(&self.stderr, text, &self.args, "stderr")
    }

    /// Writes `line` and a newline to stdin.
    pub(crate) fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .expect("write to storm's stdin");
    }

    /// Ends stdin, then waits for the exit as [`exit`](Self::exit) does.
    pub(crate) fn finish(mut self) -> (ExitStatus, String) {
        self.close_stdin();
        self.exit()
    }

    /// Ends stdin; the process goes on (its output can still be read).
    pub(crate) fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for the exit (stdin stays open), within [`WAIT`]: its status,
    /// and every stderr line not read yet.
    pub(crate) fn exit(mut self) -> (ExitStatus, String) {
        let child = self.child.take().expect("not waited yet");
        // Its pipes are this value's: the output holds the status alone.
        let status = output_within(child, WAIT, &format!("storm {}", self.args)).status;
        // The pipe ends with the process: what is left comes at once.
        let stderr: Vec<String> = self.stderr.iter().collect();
        (status, stderr.join("\n"))
    }

    /// Sends the process SIGINT (what Ctrl-C sends), by its id.
    pub(crate) fn interrupt(&self) {
        let pid = self.child.as_ref().expect("still running").id().to_string();
        let status = Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -INT {pid}");
    }

    /// Kills the process (by its id) and waits for it.
    pub(crate) fn kill(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Storm {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wait_for(from: &Receiver<String>, text: &str, args: &str, which: &str) -> String {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match from.recv_timeout(left) {
            Ok(line) if line.contains(text) => return line,
            Ok(line) => seen.push(line),
            Err(_) => panic!("no {which} line with {text:?} from storm {args}; saw {seen:#?}"),
        }
    }
}
