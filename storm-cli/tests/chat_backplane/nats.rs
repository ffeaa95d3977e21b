//! `storm chat --backplane nats://`: chat nodes sharing one real
//! `nats-server` behave as one server for rooms, user lists, whispers and
//! the console; a killed node's users leave within the presence TTL; a
//! restarted nats-server is reconnected to; and since NATS core keeps no
//! history, a join with a position is told, explicitly, that what it
//! missed cannot be recovered. Every wait is bounded.

use super::servers::NatsServer;

use super::*;

impl BackplaneServer for NatsServer {
    fn url(&self) -> String {
        NatsServer::url(self)
    }

    fn keeps_history(&self) -> bool {
        false
    }

    fn unique_names(&self) -> bool {
        false
    }
}

/// The event for which `found` holds if it comes within `wait`, `None`
/// otherwise (a read timeout is not an answer).
fn within(client: &mut Client, wait: Duration, found: impl Fn(&Value) -> bool) -> Option<Value> {
    let deadline = Instant::now() + wait;
    while let Some(event) = client.event_before(deadline) {
        match event {
            Event::Text(text) => {
                let v: Value = serde_json::from_str(&text).expect("JSON");
                if found(&v) {
                    return Some(v);
                }
            }
            Event::Close(frame) => panic!("closed ({:?})", frame.code),
            _ => {}
        }
    }
    None
}

#[test]
fn nats_three_nodes_are_one_chat() {
    if let Some(nats) = NatsServer::start() {
        three_nodes(&nats, ["tokio"; 3]);
    }
}

#[test]
fn nats_a_killed_node_s_users_leave_within_the_ttl() {
    if let Some(nats) = NatsServer::start() {
        a_killed_node_s_users_leave(&nats, "tokio");
    }
}

#[test]
fn nats_restarted_nodes_reconnect_and_traffic_flows_again() {
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let (a, b) = Node::two(&nats, "tokio", &[]);
    let (mut alice, mut bob) = (a.client(), b.client());
    alice.join("rust");
    bob.join("rust");
    alice.say("before");
    bob.until(|v| v["type"] == "chat" && v["text"] == "before");

    // NATS gone: local traffic goes on, and alice is told the other nodes
    // did not get what she said.
    nats.kill();
    alice.send(&json!({"type": "chat", "text": "during"}));
    let seen = alice.until(|v| v["type"] == "local_only");
    assert!(
        seen.iter().any(|v| v["text"] == "during"),
        "delivered here all the same: {seen:?}"
    );

    // Back: both nodes reconnect and subscribe again; a message crosses.
    nats.start_again();
    let deadline = Instant::now() + 3 * WAIT;
    for i in 0.. {
        assert!(
            Instant::now() < deadline,
            "no message crossed after the restart"
        );
        let text = format!("after {i}");
        alice.send(&json!({"type": "chat", "text": text}));
        let crossed = within(&mut bob, Duration::from_secs(1), |v| {
            v["type"] == "chat" && v["text"] == text
        });
        if crossed.is_some() {
            break;
        }
    }
    // And the other way, with the user lists whole again.
    bob.say("from b");
    alice.until(|v| v["type"] == "chat" && v["text"] == "from b");
    let users = alice.users_until(|users| users.len() == 2);
    assert_eq!(users.len(), 2, "{users:?}");
}

#[test]
fn nats_a_join_with_a_position_is_told_recovery_is_impossible() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let (a, b) = Node::two(&nats, "tokio", &[]);
    let (mut alice, mut bob) = (a.client(), b.client());
    alice.join("rust");
    alice.say("m1");
    // A position as a Redis backplane would have given it: NATS has no
    // history to find it in, and says so, before any event of the room.
    bob.send(&json!({
        "type": "join", "room": "rust", "epoch": "00000000000000ab", "offset": 1,
    }));
    let seen = bob.until(|v| v["type"] == "unrecoverable");
    let told = seen.last().expect("unrecoverable");
    assert_eq!(told["room"], "rust", "{told}");
    let reason = told["reason"].as_str().expect("a reason");
    assert!(
        reason.contains("NATS backplane keeps no history"),
        "{reason}"
    );
    assert!(
        texts(&seen).is_empty(),
        "no silent gap, no replay: {seen:?}"
    );
    // Then live, without positions; a fresh join is not told anything.
    bob.own("joined");
    alice.say("m2");
    let live = bob.until(|v| v["type"] == "chat" && v["text"] == "m2");
    assert_eq!(texts(&live), ["m2"], "{live:?}");
    let mut carol = b.client();
    carol.send(&json!({"type": "join", "room": "rust"}));
    let fresh = carol.own("joined");
    assert!(
        !fresh
            .iter()
            .any(|v| v["type"] == "unrecoverable" || v["type"] == "position"),
        "{fresh:?}"
    );
}

#[test]
fn nats_three_nodes_on_three_runtimes_are_one_chat() {
    // Off tokio, async-nats runs on a tokio thread of the node's own.
    if let Some(nats) = NatsServer::start() {
        three_nodes(&nats, ["tokio", "smol", "std"]);
    }
}

#[test]
fn nats_the_tick_and_the_console_count_every_node_s_users() {
    if let Some(nats) = NatsServer::start() {
        count_every_node_s_users(&nats, "tokio");
    }
}
