//! The NATS backplane against a real `nats-server`: two hubs in one
//! process are two nodes sharing rooms through it.

#![cfg(feature = "nats")]

mod common;

use std::future::poll_fn;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::NatsServer;
use storm_backplane::nats::{NO_HISTORY, NatsBackplane, NatsConfig, Running};
use storm_backplane::proto::{Epoch, Position};
use storm_backplane::{OnNodeMessage, Recovery};
use storm_host::hub::{Hub, HubConfig, Outbox};
use storm_proto::Message;
use storm_proto::reconnect::BackoffConfig;

/// Longest wait for one event (a message arriving, a reconnect).
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// One node: a hub whose group broadcasts go through a NATS backplane.
struct Node {
    backplane: Arc<NatsBackplane>,
    hub: Hub,
    _running: Running,
}

impl Node {
    async fn start(server: &NatsServer, on_node: Option<OnNodeMessage>) -> Self {
        let mut config = NatsConfig::default();
        config.url = server.url();
        config.prefix = "test".to_owned();
        config.presence_ttl = Duration::from_millis(900);
        config.reconnect = BackoffConfig::fixed(Duration::from_millis(20));
        let backplane = Arc::new(NatsBackplane::new(config).unwrap());
        if let Some(handler) = on_node {
            backplane.on_node_message(handler);
        }
        let hub =
            Hub::with_backplane(HubConfig::default(), Instant::now(), backplane.clone()).unwrap();
        let running = backplane.start(hub.clone()).await.unwrap();
        Self {
            backplane,
            hub,
            _running: running,
        }
    }

    /// A session of this node in `room`.
    fn join(&self, room: &str) -> Arc<Outbox> {
        let session = self
            .hub
            .register(self.hub.try_admit().unwrap(), Instant::now())
            .unwrap();
        self.hub.join(session.id(), room).unwrap();
        session
    }
}

/// The next message queued for `session`, within [`EVENT_TIMEOUT`].
async fn next(session: &Outbox) -> String {
    let mut out = Vec::new();
    let drained = tokio::time::timeout(
        EVENT_TIMEOUT,
        poll_fn(|cx| session.poll_drain(cx, &mut out, 1)),
    )
    .await
    .expect("a message within the timeout");
    session.on_written(drained.bytes);
    String::from_utf8(out.remove(0).as_bytes().to_vec()).unwrap()
}

/// Polls `check` (presence, which no event announces) every 10 ms until
/// it holds, within [`EVENT_TIMEOUT`].
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {EVENT_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn room_messages_cross_once_per_message_whatever_the_room_name() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let (a, b) = (
        Node::start(&server, None).await,
        Node::start(&server, None).await,
    );
    // A name that is no NATS subject token, and a plain one.
    for room in ["two words.and*dots", "plain"] {
        let on_a = a.join(room);
        let on_b = [b.join(room), b.join(room)];
        let report = a.hub.broadcast_group(room, &Message::from("one"), None);
        assert_eq!(report.delivered, 1, "the local member at once");
        a.hub.broadcast_group(room, &Message::from("two"), None);
        for local in ["one", "two"] {
            assert_eq!(next(&on_a).await, local);
        }
        for session in &on_b {
            assert_eq!(next(session).await, "one");
            assert_eq!(next(session).await, "two");
        }
        b.hub.broadcast_group(room, &Message::from("back"), None);
        assert_eq!(next(&on_a).await, "back", "not its own two again first");
    }
    let (sa, sb) = (a.backplane.stats(), b.backplane.stats());
    // One publish per room message, not per session or node (presence and
    // hello messages count too: at least these 6, and none per session).
    assert!(sa.published >= 4 && sb.published >= 2, "{sa:?} {sb:?}");
    assert_eq!(sb.delivered, 4, "{sb:?}");
    assert_eq!(sa.own, 4, "A skips its own four: {sa:?}");
    assert_eq!(sa.invalid + sb.invalid, 0, "{sa:?} {sb:?}");
}

#[tokio::test]
async fn node_messages_presence_and_recovery() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let (heard, mut hear) = tokio::sync::mpsc::unbounded_channel();
    let on_node: OnNodeMessage = Arc::new(move |_: &Hub, m: &Message| {
        let _ = heard.send(m.clone());
    });
    let a = Node::start(&server, None).await;
    let b = Node::start(&server, Some(on_node)).await;
    assert!(
        a.backplane
            .to_node(b.backplane.node().tag(), &Message::from("to b"))
    );
    assert!(a.backplane.to_all_nodes(&Message::from("to all")));
    for expected in ["to b", "to all"] {
        let got = tokio::time::timeout(EVENT_TIMEOUT, hear.recv()).await;
        assert_eq!(
            got.expect("within the timeout"),
            Some(Message::from(expected))
        );
    }

    // Presence across nodes; a node that stops announcing drops out
    // within the TTL.
    a.backplane.present("", "alice");
    b.backplane.present("", "bob");
    eventually("both listed on B", || {
        b.backplane.members("") == ["alice", "bob"]
    })
    .await;
    eventually("both listed on A", || {
        a.backplane.members("") == ["alice", "bob"]
    })
    .await;
    a.backplane.absent("", "alice");
    eventually("alice left", || b.backplane.members("") == ["bob"]).await;
    a.backplane.present("", "carol");
    eventually("carol listed", || b.backplane.members("").len() == 2).await;
    drop(a); // its tasks stop: no more heartbeats
    let stopped = Instant::now();
    eventually("carol expired", || b.backplane.members("") == ["bob"]).await;
    assert!(stopped.elapsed() < EVENT_TIMEOUT);

    let since = Position::new(Epoch::new(7).unwrap(), 3);
    assert_eq!(
        b.backplane.recover("room", since),
        Recovery::NoHistory {
            unrecoverable: Some(NO_HISTORY)
        }
    );
}

#[tokio::test]
async fn nodes_reconnect_and_subscribe_again_after_a_restart() {
    let Some(mut server) = NatsServer::start() else {
        return;
    };
    let (a, b) = (
        Node::start(&server, None).await,
        Node::start(&server, None).await,
    );
    let (_on_a, on_b) = (a.join("room"), b.join("room"));
    a.hub
        .broadcast_group("room", &Message::from("before"), None);
    assert_eq!(next(&on_b).await, "before");

    server.start_again();
    // Both nodes reconnect on their backoff (20 ms here) and subscribe
    // again: a message crosses once both are back.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    for i in 0.. {
        assert!(
            Instant::now() < deadline,
            "nothing crossed after the restart"
        );
        let text = format!("after {i}");
        a.hub
            .broadcast_group("room", &Message::from(text.as_str()), None);
        let mut out = Vec::new();
        let crossed = tokio::time::timeout(
            Duration::from_millis(200),
            poll_fn(|cx| on_b.poll_drain(cx, &mut out, 1)),
        )
        .await;
        if let Ok(drained) = crossed {
            on_b.on_written(drained.bytes);
            assert!(out[0].as_bytes().starts_with(b"after "));
            break;
        }
    }
    for node in [&a, &b] {
        let stats = node.backplane.stats();
        assert!(stats.subscriptions >= 2, "connected again: {stats:?}");
    }
}
