//! A tiny run of `xnode` (20 sessions, 200 room messages, on the `storm`
//! binary beside it and a real `redis-server`), so that the cross-node
//! benchmark keeps working between benchmark runs: every message reaches
//! every session exactly once, on one node and across two, and the
//! backplane publishes once per room message. Nothing here is timed.
//!
//! Skipped, with a line saying so, only where `redis-server` is not
//! installed and `CI` is not set (the backplane tests' rule: CI installs
//! it, and there a missing server fails).

use std::process::{Command, Stdio};

/// `xnode`'s exit code when `redis-server` is not installed.
const NO_REDIS: i32 = 3;

#[test]
fn a_small_room_across_two_nodes_loses_and_duplicates_nothing() {
    let output = Command::new(env!("CARGO_BIN_EXE_xnode"))
        .args(["--sessions", "20", "--publishers", "2"])
        .args(["--rate", "1000", "--duration", "0.2"])
        // Its progress, and the line saying Redis is missing, are seen.
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("xnode: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    if output.status.code() == Some(NO_REDIS) {
        return; // xnode said why, on a line of its own
    }
    assert!(output.status.success(), "xnode failed:\n{stdout}");
    assert!(
        stdout.contains("result: lost=0 duplicates=0 notices=0 errors=0"),
        "{stdout}"
    );
    // 200 messages to 20 sessions, on both runs; same-node and cross-node
    // receivers on two nodes.
    assert!(
        stdout.contains("(200 messages, 4000 deliveries per run)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("| one node | same node | 4000 |"),
        "{stdout}"
    );
    assert!(
        stdout.contains("| two nodes | same node | 2000 |"),
        "{stdout}"
    );
    assert!(
        stdout.contains("| two nodes | cross node | 2000 |"),
        "{stdout}"
    );
    assert!(
        stdout.contains("two nodes: Redis PUBLISH 200 for 200 room messages"),
        "one publish per room message, whatever the sessions:\n{stdout}"
    );
}
