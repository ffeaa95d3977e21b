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
}

/// The event for which `found` holds if it comes within `wait`, `None`
/// otherwise (a read timeout is not an answer).
fn within(client: &mut Client, wait: Duration, found: impl Fn(&Value) -> bool) -> Option<Value> {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        match client.socket.read() {
            Ok(Event::Text(text)) => {
                let v: Value = serde_json::from_str(&text).expect("JSON");
                if found(&v) {
                    return Some(v);
                }
            }
            Ok(Event::Close(frame)) => panic!("closed ({:?})", frame.code),
            Ok(_) => {}
            Err(ws::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    None
}

#[test]
fn nats_three_nodes_are_one_chat() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let mut nodes = [
        Node::start(&nats, "tokio", &[]),
        Node::start(&nats, "tokio", &[]),
        Node::start(&nats, "tokio", &[]),
    ];
    let mut clients: Vec<Client> = nodes.iter().map(Node::client).collect();
    for (client, name) in clients.iter_mut().zip(["alice", "bob", "carol"]) {
        client.name(name);
        client.join("rust");
    }
    // One user list, whichever node is asked (once every node's latest
    // presence message reached it: the others' renames and joins).
    for client in &mut clients {
        client.users_until(|users| {
            let mut listed = names(users);
            listed.sort_unstable();
            listed == ["alice", "bob", "carol"] && users.iter().all(|u| u["room"] == "rust")
        });
    }

    // A room message reaches every node's member exactly once, in the
    // publisher's order, without a position (NATS keeps no history).
    clients[0].send(&json!({"type": "chat", "text": "hello"}));
    clients[0].send(&json!({"type": "chat", "text": "after"}));
    for client in &mut clients {
        let seen = client.until(|v| v["type"] == "chat" && v["text"] == "after");
        assert_eq!(texts(&seen), ["hello", "after"], "{seen:?}");
        assert!(seen.iter().all(|v| v.get("offset").is_none()), "{seen:?}");
    }

    // A whisper to a user on another node; an unknown name is an error.
    let (alice_id, carol_id) = (clients[0].id.clone(), clients[2].id.clone());
    clients[0].send(&json!({"type": "whisper", "to": "carol", "text": "psst"}));
    let copy = clients[0].expect("whisper");
    let got = clients[2].expect("whisper");
    assert_eq!(got, copy);
    assert_eq!((&got["from_id"], &got["to_id"]), (&alice_id, &carol_id));
    clients[0].send(&json!({"type": "whisper", "to": "nobody", "text": "x"}));
    let error = clients[0].expect("error");
    assert!(
        error["error"]
            .as_str()
            .expect("error")
            .contains("no user named nobody"),
        "{error}"
    );

    // The admin console of one node sees and acts on every node.
    let bob_id = clients[1].id.as_str().expect("id").to_owned();
    let listed = nodes[0].console("/sessions", |line| line.contains(" carol "));
    assert!(listed.iter().any(|l| l == "3 sessions"), "{listed:?}");
    nodes[0].console(&format!("/kick #{bob_id}"), |line| {
        line.starts_with("kicking")
    });
    assert_eq!(
        clients[1].closed(),
        (CloseCode::POLICY_VIOLATION, "kicked".to_owned())
    );
    let left = clients[2].until(|v| v["type"] == "left");
    assert_eq!(left.last().expect("left")["id"], json!(bob_id));
    nodes[2].console("/broadcast to all", |line| line.starts_with("broadcast to"));
    for i in [0, 2] {
        let told = clients[i].expect("broadcast");
        assert_eq!(
            (&told["from"], &told["text"]),
            (&json!("admin"), &json!("to all"))
        );
    }
    let users = clients[0].users_until(|users| users.len() == 2);
    assert!(!names(&users).contains(&"bob"), "{users:?}");
}

#[test]
fn nats_a_killed_node_s_users_leave_within_the_ttl() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let ttl = Duration::from_millis(1500);
    let presence = ["--backplane-presence-ttl-ms", "1500"];
    let (mut a, b) = (
        Node::start(&nats, "tokio", &presence),
        Node::start(&nats, "tokio", &presence),
    );
    let (mut alice, mut bob) = (a.client(), b.client());
    alice.name("alice");
    bob.name("bob");
    bob.join("rust");
    let users = bob
        .users_until(|users| names(users) == ["alice", "bob"] || names(users) == ["bob", "alice"]);
    let alice_room = users.iter().find(|u| u["name"] == "alice");
    assert_eq!(alice_room.map(|u| &u["room"]), Some(&json!("lobby")));
    // Heartbeats keep it listed while its node runs: still there after
    // twice the TTL.
    let until = Instant::now() + 2 * ttl;
    while Instant::now() < until {
        assert!(names(&bob.users()).contains(&"alice"));
    }
    // Node A dies without a word: alice leaves B's list within the TTL
    // (bounded here by WAIT, for a loaded machine).
    a.kill();
    let killed = Instant::now();
    let users = bob.users_until(|users| !names(users).contains(&"alice"));
    assert_eq!(names(&users), ["bob"]);
    println!(
        "alice gone {:?} after the kill (TTL {ttl:?})",
        killed.elapsed()
    );
}

#[test]
fn nats_restarted_nodes_reconnect_and_traffic_flows_again() {
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let (a, b) = (
        Node::start(&nats, "tokio", &[]),
        Node::start(&nats, "tokio", &[]),
    );
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
    let (a, b) = (
        Node::start(&nats, "tokio", &[]),
        Node::start(&nats, "tokio", &[]),
    );
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
fn nats_off_tokio_is_refused_with_why() {
    // async-nats needs tokio: a chat on smol or std says so and exits,
    // before it connects to anything (no nats-server needed).
    for runtime in ["smol", "std"] {
        let child = Command::new(env!("CARGO_BIN_EXE_storm"))
            .args(["chat", "--addr", "127.0.0.1:0", "--no-http"])
            .args(["--backplane", "nats://127.0.0.1:1", "--runtime", runtime])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("storm chat");
        let out = storm_tests::process::output_within(child, WAIT, "storm chat");
        let (status, stderr) = (out.status, String::from_utf8_lossy(&out.stderr));
        assert!(!status.success(), "on {runtime}: {status:?}");
        assert!(
            stderr.contains("runs on --runtime tokio only"),
            "on {runtime}: {stderr}"
        );
    }
}

#[test]
fn nats_stats_say_the_other_nodes_are_not_reported() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let mut a = Node::start(&nats, "tokio", &[]);
    let b = Node::start(&nats, "tokio", &[]);
    let _here = a.client();
    let _there = (b.client(), b.client());
    // NATS nodes report no stats: this node's alone, and why.
    let stats = a.console("/stats", |line| line.contains(" sessions on "));
    assert!(
        stats.iter().any(|line| line
            == "the other nodes' stats are unknown: the NATS backplane does not report node stats"),
        "{stats:?}"
    );
    assert!(
        stats
            .iter()
            .any(|line| line.starts_with("this node: 1 sessions")),
        "{stats:?}"
    );
    assert_eq!(
        stats.last().map(String::as_str),
        Some("1 sessions on 1 nodes"),
        "{stats:?}"
    );
}
