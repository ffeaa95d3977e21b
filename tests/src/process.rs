//! Child processes of the tests (the `storm` binary, mostly), bounded in
//! time.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Output};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

/// Waits up to `wait` for `child` to end and returns its output (what it
/// wrote to the pipes it was given). Past `wait` the child is killed, by
/// its own id, and this panics naming it as `what`.
///
/// # Panics
///
/// When the child outlives `wait`, or its output cannot be read.
#[must_use]
pub fn output_within(child: Child, wait: Duration, what: &str) -> Output {
    let id = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(output) = rx.recv_timeout(wait) else {
        let _ = Command::new("kill").arg(id.to_string()).status();
        panic!("{what} did not finish within {wait:?}");
    };
    output.expect("the child's output")
}

/// Every line read from `from` (a child's stdout or stderr), on a thread
/// of its own, until it ends or the receiver is dropped: wait on them with
/// [`Receiver::recv_timeout`].
pub fn lines(from: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}
