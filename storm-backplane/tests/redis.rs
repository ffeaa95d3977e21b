//! The Redis backplane against a real `redis-server`: two hubs in one
//! process are two nodes sharing rooms through it. Every scenario runs on
//! tokio and on smol (tests `tokio::NAME` and `smol::NAME`), the backplane
//! started on the runtime the test runs on; a program on std threads runs
//! it on smol.

mod common;

use std::future::poll_fn;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::RedisServer;
use storm_async::Runtime;
use storm_backplane::proto::{NodeStats, Position, Ready, Unrecoverable};
use storm_backplane::redis::{Claim, Deliver, Recovery, RedisBackplane, RedisConfig, Running};
use storm_backplane::stages::{FLUSH_EVERY, Stamp, now_ns};
use storm_host::hub::{Hub, HubConfig, Outbox};
use storm_proto::Message;
use storm_proto::reconnect::BackoffConfig;

/// Longest wait for one event (a message arriving, a reconnect).
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// One node: a hub whose group broadcasts go through a Redis backplane.
struct Node {
    backplane: Arc<RedisBackplane>,
    hub: Hub,
    running: Option<Running>,
}

impl Node {
    /// A node on `server`, its configuration changed by `edit`, delivering
    /// through `deliver` (the default when `None`).
    async fn start<R: Runtime>(
        server: &RedisServer,
        edit: impl FnOnce(&mut RedisConfig),
        deliver: Option<Deliver>,
    ) -> Self {
        let mut config = RedisConfig::default();
        config.url = server.url();
        config.prefix = "test".to_owned();
        config.reconnect = BackoffConfig::fixed(Duration::from_millis(20));
        edit(&mut config);
        let backplane = Arc::new(RedisBackplane::new(config).unwrap());
        let hub =
            Hub::with_backplane(HubConfig::default(), Instant::now(), backplane.clone()).unwrap();
        let running = match deliver {
            Some(deliver) => backplane.start_with::<R>(hub.clone(), deliver).await,
            None => backplane.start::<R>(hub.clone()).await,
        }
        .unwrap();
        Self {
            backplane,
            hub,
            running: Some(running),
        }
    }

    /// A session of this node in `room`, once the node's subscription to
    /// the room is confirmed (from then on, what any node publishes there
    /// reaches it).
    async fn join(&self, room: &str) -> Arc<Outbox> {
        let session = self.session();
        self.hub.join(session.id(), room).unwrap();
        assert_eq!(self.backplane.subscribed(room).await, Ready::Subscribed);
        session
    }

    /// A session of this node, in no room.
    fn session(&self) -> Arc<Outbox> {
        self.hub
            .register(self.hub.try_admit().unwrap(), Instant::now())
            .unwrap()
    }

    async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
    }
}

/// A fresh `redis-server` and two nodes of one service on it, both
/// configured by `edit` and delivering through what `deliver` makes (the
/// default for `None`); `None` (the test returns) without `redis-server`.
async fn two_nodes<R: Runtime>(
    edit: impl Fn(&mut RedisConfig),
    deliver: Option<fn() -> Deliver>,
) -> Option<(RedisServer, Node, Node)> {
    let server = RedisServer::start()?;
    let a = Node::start::<R>(&server, &edit, deliver.map(|make| make())).await;
    let b = Node::start::<R>(&server, &edit, deliver.map(|make| make())).await;
    Some((server, a, b))
}

/// The next message queued for `session`, within [`EVENT_TIMEOUT`].
async fn next<R: Runtime>(session: &Outbox) -> Message {
    let mut out = Vec::new();
    let drained = within::<R, _>(
        EVENT_TIMEOUT,
        poll_fn(|cx| session.poll_drain(cx, &mut out, 1)),
    )
    .await
    .expect("a message within the timeout");
    session.on_written(drained.bytes);
    assert_eq!(out.len(), 1);
    out.remove(0)
}

/// `future`'s output, or `None` when `timeout` passes first.
async fn within<R: Runtime, T>(timeout: Duration, future: impl Future<Output = T>) -> Option<T> {
    let timer = R::sleep_until(Instant::now() + timeout);
    ::smol::future::or(async { Some(future.await) }, async {
        timer.await;
        None
    })
    .await
}

/// Everything queued for `session` right now.
fn queued(session: &Outbox) -> Vec<Message> {
    let mut out = Vec::new();
    let drained = session.drain_into(&mut out, usize::MAX);
    session.on_written(drained.bytes);
    out
}

fn text(message: &Message) -> &str {
    std::str::from_utf8(message.as_bytes()).unwrap()
}

async fn a_room_message_reaches_another_node_exactly_once<R: Runtime>() {
    let Some((_server, a, b)) = two_nodes::<R>(|_| {}, None).await else {
        return;
    };
    let on_a = a.join("room").await;
    let on_b = b.join("room").await;
    let also_on_b = b.join("room").await;
    let elsewhere = b.join("other").await;

    let report = a.hub.broadcast_group("room", &Message::from("one"), None);
    assert_eq!(report.delivered, 1); // the local member
    assert_eq!(text(&next::<R>(&on_b).await), "one");
    a.hub.broadcast_group("room", &Message::from("two"), None);
    assert_eq!(text(&next::<R>(&on_b).await), "two");
    for message in ["one", "two"] {
        assert_eq!(text(&next::<R>(&also_on_b).await), message);
    }

    // B answers; Redis sends it to A after the echoes of A's own two
    // (one connection, in publish order), so once it is at A, they are too.
    b.hub.broadcast_group("room", &Message::from("three"), None);
    for message in ["one", "two", "three"] {
        assert_eq!(text(&next::<R>(&on_a).await), message);
    }

    // Nothing else arrived: no second copy anywhere, A's own publications
    // came back from Redis without reaching its member again, and nothing
    // leaked into another room.
    assert!(queued(&on_a).is_empty());
    assert!(queued(&elsewhere).is_empty());
    for session in [&on_b, &also_on_b] {
        let rest: Vec<_> = queued(session).iter().map(|m| text(m).to_owned()).collect();
        assert_eq!(rest, ["three"]); // B's own, delivered locally
    }

    // One append and publish per room message (the room's offset counts
    // them), one delivery per node: not one per session.
    assert_eq!(b.backplane.position("room").await.unwrap().offset, 3);
    let (sa, sb) = (a.backplane.stats(), b.backplane.stats());
    assert_eq!((sa.own, sa.delivered), (2, 1));
    assert_eq!((sb.delivered, sb.missed, sb.invalid), (2, 0, 0));
    a.stop().await;
    b.stop().await;
}

async fn a_client_recovers_exactly_the_range_it_missed<R: Runtime>() {
    let Some((_server, a, b)) = two_nodes::<R>(|c| c.history_len = 4, None).await else {
        return;
    };
    let on_b = b.join("room").await;
    let start = b.backplane.position("room").await.unwrap();
    assert_eq!(start.offset, 0);

    for i in 1..=6 {
        a.hub
            .broadcast_group("room", &Message::from(format!("m{i}")), None);
        assert_eq!(text(&next::<R>(&on_b).await), format!("m{i}"));
    }
    let top = b.backplane.position("room").await.unwrap();
    assert_eq!(top, Position::new(start.epoch, 6));

    // A client that saw m3 gets m4..m6, in order, with their positions.
    let Recovery::Recovered { messages, top: at } = b
        .backplane
        .recover("room", Position::new(start.epoch, 3))
        .await
        .unwrap()
    else {
        panic!("recoverable");
    };
    assert_eq!(at, top);
    let got: Vec<_> = messages
        .iter()
        .map(|(p, m)| (p.offset, text(m).to_owned()))
        .collect();
    assert_eq!(got, [(4, "m4".into()), (5, "m5".into()), (6, "m6".into())]);
    // Up to date: nothing.
    assert_eq!(
        b.backplane.recover("room", top).await.unwrap(),
        Recovery::Recovered {
            messages: Vec::new(),
            top
        }
    );
    // The history keeps at least 4, trimmed by whole stream nodes (`MAXLEN
    // ~`): six messages are one node, nothing is trimmed yet, and a client
    // that saw m1 gets m2..m6. (Trimming itself: the next scenario.)
    let Recovery::Recovered { messages, .. } = b
        .backplane
        .recover("room", Position::new(start.epoch, 1))
        .await
        .unwrap()
    else {
        panic!("m2 is still in the history");
    };
    let got: Vec<_> = messages.iter().map(|(p, _)| p.offset).collect();
    assert_eq!(got, [2, 3, 4, 5, 6]);
    a.stop().await;
    b.stop().await;
}

async fn recovery_stays_exact_as_the_history_is_trimmed<R: Runtime>() {
    const LEN: u64 = 4;
    // Redis's stream nodes hold at most 100 entries (its default): past
    // this many messages at least the first node is trimmed.
    const MESSAGES: u64 = 250;
    let Some((_server, a, b)) = two_nodes::<R>(|c| c.history_len = LEN as usize, None).await else {
        return;
    };
    let on_b = b.join("room").await;
    for i in 1..=MESSAGES {
        a.hub
            .broadcast_group("room", &Message::from(format!("m{i}")), None);
    }
    for i in 1..=MESSAGES {
        assert_eq!(text(&next::<R>(&on_b).await), format!("m{i}"));
    }
    let top = b.backplane.position("room").await.unwrap();
    assert_eq!(top.offset, MESSAGES);
    // From every position: exactly what was missed, in order, or told it
    // was trimmed; the trimmed ones all before the recoverable ones; the
    // last LEN always recoverable, the first message trimmed.
    let mut oldest_recoverable = None;
    for since in 0..=MESSAGES {
        match b
            .backplane
            .recover("room", Position::new(top.epoch, since))
            .await
            .unwrap()
        {
            Recovery::Recovered { messages, top: at } => {
                assert_eq!(at, top);
                let got: Vec<_> = messages
                    .iter()
                    .map(|(p, m)| (p.offset, text(m).to_owned()))
                    .collect();
                let missed: Vec<_> = (since + 1..=MESSAGES)
                    .map(|i| (i, format!("m{i}")))
                    .collect();
                assert_eq!(got, missed, "since {since}");
                oldest_recoverable.get_or_insert(since);
            }
            Recovery::Impossible { reason, top: at } => {
                assert_eq!(at, top);
                assert!(oldest_recoverable.is_none(), "since {since}: {reason:?}");
                let Unrecoverable::Trimmed { wanted, oldest } = reason else {
                    panic!("since {since}: {reason:?}");
                };
                assert_eq!(wanted, since + 1);
                assert!(oldest.is_none_or(|oldest| oldest > wanted), "{oldest:?}");
            }
            other @ Recovery::NoHistory { .. } => panic!("{other:?}"),
        }
    }
    let oldest = oldest_recoverable.expect("the last messages are recoverable");
    assert!((1..=MESSAGES - LEN).contains(&oldest), "{oldest}");
    a.stop().await;
    b.stop().await;
}

async fn each_stage_of_a_room_message_is_stamped_when_asked_for<R: Runtime>() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let file = |node: &str| server.dir().join(format!("{node}.stages"));
    let a = Node::start::<R>(&server, |c| c.stages = Some(file("a")), None).await;
    let b = Node::start::<R>(&server, |c| c.stages = Some(file("b")), None).await;
    let on_b = b.join("room").await;
    let before = now_ns();
    for text in ["one", "two", "three"] {
        a.hub.broadcast_group("room", &Message::from(text), None);
        next::<R>(&on_b).await;
    }
    // The stamps reach the files within a few of the writer's turns.
    let stamps = |node: &str| {
        std::fs::read_to_string(file(node))
            .unwrap_or_default()
            .lines()
            .map(|line| Stamp::parse(line).unwrap_or_else(|| panic!("{line:?}")))
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while stamps("a").len() < 3 || stamps("b").len() < 3 {
        assert!(
            Instant::now() < deadline,
            "{:?} {:?}",
            stamps("a"),
            stamps("b")
        );
        R::sleep_until(Instant::now() + FLUSH_EVERY).await;
    }
    let after = now_ns();
    // A's own messages as it published them; B's as it received them, in
    // order; each stage after the one before, all within the test.
    let offsets = |stamped: &[(u64, u64)]| {
        stamped
            .iter()
            .map(|(offset, _)| *offset)
            .collect::<Vec<_>>()
    };
    let mut published: Vec<_> = stamps("a")
        .into_iter()
        .map(|stamp| match stamp {
            Stamp::Published {
                room,
                offset,
                queued,
                taken,
                replied,
            } => {
                assert_eq!(room, "room");
                assert!(before <= queued && queued <= taken && taken <= replied);
                assert!(replied <= after);
                (offset, taken)
            }
            other => panic!("A received nothing it holds: {other:?}"),
        })
        .collect();
    // Written as each pipeline's reply came in: by offset.
    published.sort_unstable();
    assert_eq!(offsets(&published), [1, 2, 3]);
    let received: Vec<_> = stamps("b")
        .into_iter()
        .map(|stamp| match stamp {
            Stamp::Received {
                room,
                offset,
                received,
                delivered,
            } => {
                assert_eq!(room, "room");
                assert!(received <= delivered && delivered <= after);
                (offset, received)
            }
            other => panic!("B published nothing: {other:?}"),
        })
        .collect();
    assert_eq!(offsets(&received), [1, 2, 3]);
    for ((_, taken), (_, received)) in published.iter().zip(&received) {
        assert!(taken <= received, "received before it was sent");
    }
    a.stop().await;
    b.stop().await;
}

async fn redis_down_then_restarted_empty_changes_the_epoch<R: Runtime>() {
    let Some((mut server, a, b)) = two_nodes::<R>(|_| {}, None).await else {
        return;
    };
    let on_a = a.join("room").await;
    let on_b = b.join("room").await;
    a.hub
        .broadcast_group("room", &Message::from("before"), None);
    assert_eq!(text(&next::<R>(&on_b).await), "before");
    let before = b.backplane.position("room").await.unwrap();
    assert_eq!(before.offset, 1);

    // Redis goes down: local traffic goes on, nothing waits for it.
    server.kill();
    a.hub
        .broadcast_group("room", &Message::from("during"), None);
    let local: Vec<_> = queued(&on_a).iter().map(|m| text(m).to_owned()).collect();
    assert_eq!(local, ["before", "during"]);

    // It comes back empty.
    server.start_again();

    // The nodes reconnect by themselves: B resubscribes, and a message A
    // publishes after that reaches B again, from a new epoch. Until both
    // are back, a publish may fail (counted, never delivered twice) or go
    // out before B listens: publish again until one arrives.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let after = loop {
        assert!(
            Instant::now() < deadline,
            "a message crossed after the restart"
        );
        a.hub.broadcast_group("room", &Message::from("after"), None);
        if let Some(message) = within::<R, _>(Duration::from_millis(500), next::<R>(&on_b)).await {
            break message;
        }
    };
    // "during" never reached B (A's publish of it failed while Redis was
    // down, counted): what crossed first is "after".
    assert_eq!(text(&after), "after");
    let stats = b.backplane.stats();
    assert_eq!((stats.subscriptions, stats.epoch_changes), (2, 1));

    let now = b.backplane.position("room").await.unwrap();
    assert_ne!(now.epoch, before.epoch);
    assert_eq!(
        b.backplane.recover("room", before).await.unwrap(),
        Recovery::Impossible {
            reason: Unrecoverable::EpochChanged {
                was: before.epoch,
                now: now.epoch
            },
            top: now
        }
    );
    a.stop().await;
    b.stop().await;
}

/// `command`'s reply from `server`, through a connection of the test's
/// own (not a node's); panics on any error.
async fn ask<T: redis::FromRedisValue>(server: &RedisServer, command: &redis::Cmd) -> T {
    let client = redis::Client::open(server.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    command.query_async(&mut connection).await.unwrap()
}

/// `INFO stats`' `total_reads_processed` of `server`: how many times it
/// read from its clients' connections since it started. A client that waits
/// for each reply before its next command costs one read per command; one
/// that pipelines them, about one per round trip.
async fn reads_processed(server: &RedisServer) -> u64 {
    let info: String = ask(server, redis::cmd("INFO").arg("stats")).await;
    info.lines()
        .find_map(|line| line.strip_prefix("total_reads_processed:"))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or_else(|| panic!("no total_reads_processed in {info}"))
}

async fn after_a_restart_the_held_rooms_are_subscribed_again_in_a_round_trip_or_two<R: Runtime>() {
    // More than one round trip carries (256 subscriptions): two of them.
    const ROOMS: usize = 300;
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let node = Node::start::<R>(&server, |_| {}, None).await;
    let rooms: Vec<String> = (0..ROOMS).map(|i| format!("r{i}")).collect();
    let holds: Vec<_> = rooms.iter().map(|room| node.backplane.hold(room)).collect();
    for hold in &holds {
        assert_eq!(hold.subscribed().await, Ready::Subscribed);
    }

    // Redis comes back empty: the node subscribes again to its own channels
    // and every held room (counted once it has, all of them confirmed).
    server.start_again();
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while node.backplane.stats().subscriptions < 2 {
        assert!(Instant::now() < deadline, "not subscribed again");
        ::smol::future::yield_now().await;
    }
    // Read before anything else talks to the new server: besides this
    // question, what it read is the subscriber's reconnection (its
    // connection's setup and its subscriptions), and whatever else of the
    // node's connections came back meanwhile (nothing here publishes, and
    // presence is written every 10 s).
    let reads = reads_processed(&server).await;
    println!("{ROOMS} held rooms subscribed again in {reads} reads by redis-server");
    // One read per room and a few more when each subscription waits for
    // the one before; pipelined, a few reads for them all (the requests
    // may reach Redis in more than one piece, none waiting for a reply).
    assert!(
        reads < ROOMS as u64 / 4,
        "{reads} reads for {ROOMS} rooms: one round trip per room"
    );

    // Each hold's join may go on: its room is subscribed, as Redis says.
    for hold in &holds {
        assert_eq!(hold.subscribed().await, Ready::Subscribed);
    }
    let channels: Vec<String> = rooms
        .iter()
        .map(|room| format!("test.room.{room}"))
        .collect();
    let channels: Vec<&str> = channels.iter().map(String::as_str).collect();
    assert_eq!(subscribers(&server, &channels).await, vec![1; ROOMS]);
    drop(holds);
    node.stop().await;
}

async fn presence_spans_nodes_and_expires_with_its_node<R: Runtime>() {
    // Long enough that a loaded machine does not miss two refreshes in a
    // row (one every third of it); the waits below are the TTL passing.
    let ttl = Duration::from_millis(900);
    let Some((_server, a, b)) = two_nodes::<R>(|c| c.presence_ttl = ttl, None).await else {
        return;
    };
    a.backplane.announce("room", "alice").await.unwrap();
    b.backplane.announce("room", "bob").await.unwrap();
    assert_eq!(b.backplane.members("room").await.unwrap(), ["alice", "bob"]);
    b.backplane.withdraw("room", "bob").await.unwrap();
    assert_eq!(a.backplane.members("room").await.unwrap(), ["alice"]);

    // Refreshed while A runs: still there after several TTLs.
    R::sleep_until(Instant::now() + ttl * 2).await;
    assert_eq!(b.backplane.members("room").await.unwrap(), ["alice"]);
    // A stops (as a killed node would): alice is gone within the TTL.
    a.stop().await;
    R::sleep_until(Instant::now() + ttl + Duration::from_millis(50)).await;
    assert!(b.backplane.members("room").await.unwrap().is_empty());
    b.stop().await;
}

async fn a_name_is_one_holder_s_across_nodes_until_released_or_its_node_dies<R: Runtime>() {
    let ttl = Duration::from_millis(900);
    let Some((_server, a, b)) = two_nodes::<R>(|c| c.presence_ttl = ttl, None).await else {
        return;
    };
    let taken = |holder: &str| {
        Ok::<_, String>(Claim::Taken {
            holder: holder.to_owned(),
        })
    };
    let claim =
        |node: &Node, name: &'static str, holder: &'static str, old: Option<&'static str>| {
            let backplane = Arc::clone(&node.backplane);
            async move {
                let claimed = backplane.claim(name, holder, old).await;
                claimed.map_err(|e| e.to_string())
            }
        };
    assert_eq!(claim(&a, "alice", "a-1", None).await, Ok(Claim::Claimed));
    assert_eq!(
        claim(&a, "alice", "a-1", None).await,
        Ok(Claim::Claimed),
        "its already"
    );
    assert_eq!(claim(&b, "alice", "b-1", None).await, taken("a-1"));
    // A rename: the new name the holder's and the old one free, in one step.
    assert_eq!(
        claim(&a, "alicia", "a-1", Some("alice")).await,
        Ok(Claim::Claimed)
    );
    assert_eq!(claim(&b, "alice", "b-1", None).await, Ok(Claim::Claimed));
    // A refused rename keeps the old name.
    assert_eq!(
        claim(&a, "alice", "a-1", Some("alicia")).await,
        taken("b-1")
    );
    assert_eq!(claim(&b, "alicia", "b-2", None).await, taken("a-1"));
    // Only its holder releases a claim.
    a.backplane.release("alice", "a-1").await.unwrap();
    assert_eq!(claim(&a, "alice", "a-2", None).await, taken("b-1"));
    b.backplane.release("alice", "b-1").await.unwrap();
    assert_eq!(claim(&a, "alice", "a-2", None).await, Ok(Claim::Claimed));

    // Kept alive while A runs: still its after several TTLs.
    R::sleep_until(Instant::now() + ttl * 2).await;
    assert_eq!(claim(&b, "alicia", "b-2", None).await, taken("a-1"));
    // A stops (as a killed node would): its names are free within the TTL.
    a.stop().await;
    let stopped = Instant::now();
    let deadline = stopped + EVENT_TIMEOUT;
    while claim(&b, "alicia", "b-2", None).await != Ok(Claim::Claimed) {
        assert!(Instant::now() < deadline, "still held");
        R::sleep_until(Instant::now() + Duration::from_millis(20)).await;
    }
    // Redis expires the claim a TTL after the last refresh, at the latest;
    // the margin is for a loaded machine.
    let free = stopped.elapsed();
    assert!(free <= ttl + Duration::from_secs(1), "{free:?}");
    b.stop().await;
}

async fn claims_redis_lost_are_claimed_again<R: Runtime>() {
    let ttl = Duration::from_millis(900);
    let Some((mut server, a, b)) = two_nodes::<R>(|c| c.presence_ttl = ttl, None).await else {
        return;
    };
    let claimed = a.backplane.claim("alice", "a-1", None).await.unwrap();
    assert_eq!(claimed, Claim::Claimed);
    // Restarted empty: A's presence task claims its names again at its next
    // refresh (within a third of the TTL).
    server.start_again();
    let client = redis::Client::open(server.url()).unwrap();
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        // Connecting may fail while the server comes up: asked again.
        let holder: Option<String> = match client.get_multiplexed_async_connection().await {
            Ok(mut connection) => redis::cmd("GET")
                .arg("test.claim.alice")
                .query_async(&mut connection)
                .await
                .unwrap_or(None),
            Err(_) => None,
        };
        if holder.as_deref() == Some("a-1") {
            break;
        }
        assert!(Instant::now() < deadline, "not claimed again: {holder:?}");
        R::sleep_until(Instant::now() + Duration::from_millis(20)).await;
    }
    let again = b.backplane.claim("alice", "b-1", None).await.unwrap();
    assert_eq!(
        again,
        Claim::Taken {
            holder: "a-1".to_owned()
        }
    );
    a.stop().await;
    b.stop().await;
}

async fn without_history_messages_cross_unpositioned<R: Runtime>() {
    let Some((_server, a, b)) = two_nodes::<R>(|c| c.history_len = 0, None).await else {
        return;
    };
    let on_b = b.join("room").await;
    for message in ["x", "y"] {
        a.hub.broadcast_group("room", &Message::from(message), None);
        assert_eq!(text(&next::<R>(&on_b).await), message);
    }
    // Nothing kept: the room never moved past offset 0.
    let top = b.backplane.position("room").await.unwrap();
    assert_eq!(top.offset, 0);
    a.stop().await;
    b.stop().await;
}

async fn an_idle_rooms_history_expires_and_its_epoch_with_it<R: Runtime>() {
    // Long enough for the reads right after the message on a loaded
    // machine; the wait below is the TTL passing.
    let ttl = Duration::from_secs(1);
    let Some((_server, a, b)) = two_nodes::<R>(|c| c.history_ttl = Some(ttl), None).await else {
        return;
    };
    let on_b = b.join("room").await;
    a.hub.broadcast_group("room", &Message::from("m"), None);
    assert_eq!(text(&next::<R>(&on_b).await), "m"); // so it is appended
    let before = a.backplane.position("room").await.unwrap();
    assert_eq!(before.offset, 1);
    // The TTL passes with no message: history and epoch are gone.
    R::sleep_until(Instant::now() + ttl + Duration::from_millis(100)).await;
    let Recovery::Impossible { reason, top } = a.backplane.recover("room", before).await.unwrap()
    else {
        panic!("an expired history cannot be recovered from");
    };
    assert_eq!(
        reason,
        Unrecoverable::EpochChanged {
            was: before.epoch,
            now: top.epoch
        }
    );
    assert_eq!(top.offset, 0);
    a.stop().await;
    b.stop().await;
}

async fn ordered_messages_reach_every_node_in_one_order_with_their_offsets<R: Runtime>() {
    // What a chat would do: put the offset into what its sessions get.
    fn render() -> Deliver {
        Arc::new(
            |hub: &Hub, room: &str, at: Option<Position>, message: &Message| {
                let offset = at.map_or(0, |at| at.offset);
                let text = format!("{offset}:{}", text(message));
                hub.deliver_group(room, &Message::from(text), None);
            },
        )
    }
    let Some((_server, a, b)) = two_nodes::<R>(|_| {}, Some(render)).await else {
        return;
    };
    let on_a = a.join("room").await;
    let on_b = b.join("room").await;

    // Published from both nodes at once: whatever order Redis picks, both
    // nodes' members (the publishers' own included) see that one order,
    // each message once, with consecutive offsets.
    a.backplane.publish_ordered("room", &Message::from("x"));
    b.backplane.publish_ordered("room", &Message::from("y"));
    let mut seen_a = Vec::new();
    let mut seen_b = Vec::new();
    for _ in 0..2 {
        seen_a.push(text(&next::<R>(&on_a).await).to_owned());
        seen_b.push(text(&next::<R>(&on_b).await).to_owned());
    }
    assert_eq!(seen_a, seen_b);
    assert!(
        seen_a == ["1:x", "2:y"] || seen_a == ["1:y", "2:x"],
        "{seen_a:?}"
    );
    // A third message from A: each node delivers it once, after the two.
    a.backplane.publish_ordered("room", &Message::from("z"));
    assert_eq!(text(&next::<R>(&on_a).await), "3:z");
    assert_eq!(text(&next::<R>(&on_b).await), "3:z");
    assert!(queued(&on_a).is_empty() && queued(&on_b).is_empty());
    assert_eq!(a.backplane.stats().own, 0); // echoes are delivered, not skipped
    a.stop().await;
    b.stop().await;
}

async fn a_burst_crosses_in_order<R: Runtime>() {
    let Some((_server, a, b)) = two_nodes::<R>(|_| {}, None).await else {
        return;
    };
    let on_b = b.join("room").await;
    const BURST: usize = 500;
    // Queued faster than one round trip each: the publisher pipelines them.
    for i in 0..BURST {
        a.hub
            .broadcast_group("room", &Message::from(i.to_string()), None);
    }
    for i in 0..BURST {
        assert_eq!(text(&next::<R>(&on_b).await), i.to_string());
    }
    let top = b.backplane.position("room").await.unwrap();
    assert_eq!(top.offset, 500);
    let stats = b.backplane.stats();
    assert_eq!(
        (stats.delivered, stats.missed, stats.duplicates),
        (500, 0, 0)
    );
    a.stop().await;
    b.stop().await;
}

async fn node_messages_reach_the_named_node_or_every_other_one<R: Runtime>() {
    let Some((_server, a, b)) = two_nodes::<R>(|_| {}, None).await else {
        return;
    };
    for node in [&a, &b] {
        let to_everyone = |hub: &Hub, message: &Message| {
            hub.broadcast(message, None);
        };
        assert!(node.backplane.on_node_message(Arc::new(to_everyone)));
    }
    let (at_a, at_b) = (a.join("x").await, b.join("x").await);
    assert!(
        a.backplane
            .to_node(b.backplane.node().tag(), &Message::from("to b"))
    );
    assert_eq!(text(&next::<R>(&at_b).await), "to b");
    assert!(b.backplane.to_all_nodes(&Message::from("to all")));
    assert_eq!(text(&next::<R>(&at_a).await), "to all");
    // Each came once, to its node only: a marker after them is next.
    assert!(a.backplane.to_all_nodes(&Message::from("marker")));
    assert_eq!(text(&next::<R>(&at_b).await), "marker");
    assert!(queued(&at_a).is_empty(), "a skips its own");
    assert_eq!(b.backplane.stats().node_messages, 2);
    a.stop().await;
    b.stop().await;
}

async fn presence_changes_reach_redis_in_their_order_without_waiting<R: Runtime>() {
    let Some((_server, a, b)) = two_nodes::<R>(|_| {}, None).await else {
        return;
    };
    a.backplane.present("room", "x");
    a.backplane.absent("room", "x");
    a.backplane.present("room", "y");
    a.backplane.present("room", "x");
    a.backplane.absent("room", "y");
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let members = b.backplane.members("room").await.unwrap();
        if members == ["x"] {
            break;
        }
        assert!(Instant::now() < deadline, "{members:?}");
    }
    a.stop().await;
    b.stop().await;
}

/// On tokio the node's Redis connections are tokio's: `redis`, built for
/// tokio and smol, drives a connection made inside a tokio runtime on it
/// (on smol, its connections would need no tokio task). The smol
/// scenarios show the other side: a tokio connection there would find no
/// tokio runtime and panic.
#[test]
fn a_tokio_node_drives_its_connections_on_tokio() {
    let runtime = ::tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let tasks = || {
            ::tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        assert_eq!(tasks(), 0);
        let node = Node::start::<storm_tokio::Tokio>(&server, |_| {}, None).await;
        // The backplane's three tasks (subscriber, publisher, presence),
        // and the driver of its one connection for room traffic (the
        // subscription, which the publisher's pipelines share).
        assert_eq!(tasks(), 4);
        node.stop().await;
    });
}

/// `CLIENT LIST` of `server`: one line per connection, `name=value` pairs.
async fn client_list(server: &RedisServer) -> String {
    ask(server, redis::cmd("CLIENT").arg("LIST")).await
}

async fn the_subscription_connection_gets_messages_as_resp3_pushes<R: Runtime>() {
    let Some((server, a, b)) = two_nodes::<R>(|_| {}, None).await else {
        return;
    };
    let on_b = b.join("lobby").await;
    // Each node subscribes on one connection, on RESP3: what Redis sends
    // there comes as pushes, which the `redis` crate's task reading the
    // connection hands to the backplane as it reads them (no pub/sub
    // stream, no second task on the way to the hub).
    let list = client_list(&server).await;
    let subscribed: Vec<&str> = list
        .lines()
        .filter(|line| !line.contains(" sub=0 ") || !line.contains(" psub=0 "))
        .collect();
    assert_eq!(subscribed.len(), 2, "{list}");
    for line in &subscribed {
        assert!(line.contains(" resp=3"), "{line}");
    }
    // And what they receive gets through.
    a.hub.broadcast_group("lobby", &Message::from("over"), None);
    assert_eq!(text(&next::<R>(&on_b).await), "over");
    a.stop().await;
    b.stop().await;
}

async fn a_node_publishes_on_its_subscription_connection<R: Runtime>() {
    let Some((server, a, b)) = two_nodes::<R>(|_| {}, None).await else {
        return;
    };
    let on_a = a.join("lobby").await;
    let on_b = b.join("lobby").await;
    // The publisher's pipelines go on the node's subscription connection:
    // the script's reply and the node's own copy of the message come on one
    // socket, read by one task, and the node has one Redis connection for
    // its room traffic instead of two.
    a.backplane
        .publish_ordered("lobby", &Message::from("one socket"));
    assert_eq!(text(&next::<R>(&on_a).await), "one socket");
    assert_eq!(text(&next::<R>(&on_b).await), "one socket");
    let list = client_list(&server).await;
    let published: Vec<&str> = list
        .lines()
        .filter(|line| line.contains(" cmd=evalsha "))
        .collect();
    assert!(
        published
            .iter()
            .any(|line| line.contains(" resp=3") && !line.contains(" sub=0 ")),
        "{list}"
    );
    a.stop().await;
    b.stop().await;
}

/// How many connections subscribe to each of `channels`, as Redis counts
/// them (`PUBSUB NUMSUB`), through a connection of the test's own.
async fn subscribers(server: &RedisServer, channels: &[&str]) -> Vec<u64> {
    let counts: Vec<(String, u64)> =
        ask(server, redis::cmd("PUBSUB").arg("NUMSUB").arg(channels)).await;
    counts.into_iter().map(|(_, count)| count).collect()
}

/// Asks Redis until `channels` have `expected` subscribers, within
/// [`EVENT_TIMEOUT`] (an unsubscribe is not waited for by anyone).
async fn wait_for_subscribers(server: &RedisServer, channels: &[&str], expected: &[u64]) {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let counts = subscribers(server, channels).await;
        if counts == expected {
            return;
        }
        assert!(Instant::now() < deadline, "{channels:?}: {counts:?}");
        ::smol::future::yield_now().await;
    }
}

async fn a_node_receives_only_the_rooms_it_has_members_in<R: Runtime>() {
    let Some((server, a, b)) = two_nodes::<R>(|_| {}, None).await else {
        return;
    };
    let on_a = a.join("busy").await;
    let on_b = b.join("marker").await;
    // Each room's channel has one subscriber: the node with a member.
    let channels = ["test.room.busy", "test.room.marker", "test.room.empty"];
    assert_eq!(subscribers(&server, &channels).await, [1, 1, 0]);

    // A publishes in rooms B has no member in, then in B's: Redis sends
    // them to B in that order, so once the last is at B, the others would
    // have been too.
    for i in 0..50 {
        a.hub
            .broadcast_group("busy", &Message::from(format!("b{i}")), None);
        a.hub
            .broadcast_group("empty", &Message::from(format!("e{i}")), None);
    }
    a.hub
        .broadcast_group("marker", &Message::from("last"), None);
    assert_eq!(text(&next::<R>(&on_b).await), "last");
    let stats = b.backplane.stats();
    assert_eq!((stats.received, stats.delivered), (1, 1), "{stats:?}");
    assert_eq!(queued(&on_a).len(), 50); // A's own member, locally

    // B's last member leaves: B unsubscribes; a member joins again: B
    // subscribes again and receives the room once more.
    b.hub.disconnect(on_b.id());
    wait_for_subscribers(&server, &channels, &[1, 0, 0]).await;
    // Published while B is away (appended before B is back).
    a.hub
        .broadcast_group("marker", &Message::from("away"), None);
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while a.backplane.position("marker").await.unwrap().offset < 2 {
        assert!(Instant::now() < deadline, "A publishes");
        ::smol::future::yield_now().await;
    }
    let again = b.join("marker").await;
    assert_eq!(subscribers(&server, &channels).await, [1, 1, 0]);
    a.hub
        .broadcast_group("marker", &Message::from("again"), None);
    assert_eq!(text(&next::<R>(&again).await), "again");
    let stats = b.backplane.stats();
    // Not received while away, and not taken for missed once back: the
    // new subscription starts the room's sequence anew.
    assert_eq!((stats.received, stats.missed), (2, 0), "{stats:?}");
    a.stop().await;
    b.stop().await;
}

// On two threads (tokio's; smol's tasks run on its executor's thread, the
// joins on the test's): the join, the publisher and the subscriber run at
// once.
async fn a_join_meets_the_live_stream_without_a_gap_or_a_duplicate<R: Runtime>() {
    // B's deliveries, with their rooms and offsets, as they come.
    type Delivered = (String, u64, String);
    let (live, mut arrived) = ::tokio::sync::mpsc::unbounded_channel::<Delivered>();
    let record: Deliver = Arc::new(
        move |_: &Hub, room: &str, at: Option<Position>, message: &Message| {
            let offset = at.expect("history is on").offset;
            let _ = live.send((room.to_owned(), offset, text(message).to_owned()));
        },
    );
    let Some(server) = RedisServer::start() else {
        return;
    };
    let a = Node::start::<R>(&server, |_| {}, None).await;
    let b = Node::start::<R>(&server, |_| {}, Some(record)).await;

    // A publishes in every room without pause (bounded) while clients of B
    // come back to one room after another with the position they last
    // saw: each join meets its room's stream somewhere inside it.
    const ROOMS: [&str; 5] = ["r0", "r1", "r2", "r3", "r4"];
    const MOST: u64 = 20_000;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (published, publishing) = ::tokio::sync::oneshot::channel();
    {
        let (hub, done) = (a.hub.clone(), done.clone());
        R::spawn(async move {
            for i in 1..=MOST {
                for room in ROOMS {
                    hub.broadcast_group(room, &Message::from(format!("m{i}")), None);
                }
                if done.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                if i % 8 == 0 {
                    ::smol::future::yield_now().await;
                }
            }
            let _ = published.send(());
        });
    }
    let mut holds = Vec::new();
    for room in ROOMS {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        let since = loop {
            let at = b.backplane.position(room).await.unwrap();
            if at.offset >= 10 {
                break at;
            }
            assert!(Instant::now() < deadline, "A publishes");
            ::smol::future::yield_now().await;
        };
        // The join: hold the room, wait for its subscription, then read
        // what was missed; live messages past the recovery's top follow.
        let hold = b.backplane.hold(room);
        assert_eq!(hold.subscribed().await, Ready::Subscribed);
        let Recovery::Recovered { messages, top } = b.backplane.recover(room, since).await.unwrap()
        else {
            panic!("recoverable");
        };
        holds.push(hold);
        let mut got: Vec<(u64, String)> = messages
            .iter()
            .map(|(at, m)| (at.offset, text(m).to_owned()))
            .collect();
        let boundary = top.offset;
        // Up to 100 past the boundary, live.
        while got.last().map_or(since.offset, |(offset, _)| *offset) < boundary + 100 {
            let (from, offset, message) = within::<R, _>(EVENT_TIMEOUT, arrived.recv())
                .await
                .expect("the live stream goes on")
                .expect("B runs");
            if from == room && offset > boundary {
                got.push((offset, message));
            }
        }
        // Every offset once, in order, from the client's position on (A's
        // publications beyond its queue are dropped before they get one),
        // each with a later message than the one before: the first that is
        // not where it should be, if any (a gap or a duplicate).
        let number = |message: &str| message[1..].parse::<u64>().unwrap();
        let wrong = got
            .iter()
            .zip(since.offset + 1..)
            .zip(got.iter().skip(1))
            .find(|(((offset, message), i), (_, next))| {
                *offset != *i || number(message) >= number(next)
            });
        assert_eq!(
            wrong, None,
            "{room} from {since}, recovered up to {boundary}"
        );
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    within::<R, _>(EVENT_TIMEOUT, publishing)
        .await
        .expect("A stops publishing")
        .expect("A's publishing ran to its end");
    let stats = b.backplane.stats();
    assert_eq!(stats.missed, 0, "{stats:?}");
    drop(holds);
    a.stop().await;
    b.stop().await;
}

/// A loopback TCP proxy to a Redis server whose replies can be held: what
/// a Redis that runs commands at once but answers late looks like to its
/// clients. Requests always pass at once.
struct Gate {
    addr: std::net::SocketAddr,
    /// Whether replies pass; the condvar wakes the held ones.
    open: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    stopped: Arc<std::sync::atomic::AtomicBool>,
}

impl Gate {
    /// A proxy to `server`, open.
    fn to(server: &RedisServer) -> Self {
        use std::io::{Read, Write};
        use std::net::{Shutdown, TcpListener, TcpStream};
        let upstream = server.url().replace("redis://", "");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new((std::sync::Mutex::new(true), std::sync::Condvar::new()));
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (gate, stop) = (open.clone(), stopped.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let (mut up_from, mut up_to) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut up_from, &mut up_to);
                    let _ = up_to.shutdown(Shutdown::Write);
                });
                let (mut down_from, mut down_to, gate) = (server, client, gate.clone());
                std::thread::spawn(move || {
                    let mut buffer = [0; 16 * 1024];
                    while let Ok(n @ 1..) = down_from.read(&mut buffer) {
                        let (open, changed) = &*gate;
                        let open = open.lock().unwrap();
                        drop(changed.wait_while(open, |open| !*open).unwrap());
                        if down_to.write_all(&buffer[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = down_to.shutdown(Shutdown::Both);
                });
            }
        });
        Self {
            addr,
            open,
            stopped,
        }
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Holds Redis's replies (`false`), or lets them and the held ones
    /// pass (`true`).
    fn set_open(&self, open: bool) {
        let (state, changed) = &*self.open;
        *state.lock().unwrap() = open;
        changed.notify_all();
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.set_open(true);
        self.stopped
            .store(true, std::sync::atomic::Ordering::Relaxed);
        // Wakes the accepting thread, which then sees it is stopped.
        let _ = std::net::TcpStream::connect(self.addr);
    }
}

/// `EVALSHA`s Redis has run so far (`INFO commandstats`), through a
/// connection of the test's own.
async fn evalsha_calls(server: &RedisServer) -> u64 {
    command_calls(server, "evalsha").await
}

/// A node's reads of Redis (the position a join starts from, presence,
/// listings) do not wait for each other's replies: the many joins of a big
/// room are one round trip each at once, not one after another. Here
/// Redis answers nothing until every read reached it.
async fn reads_do_not_wait_for_each_other_s_replies<R: Runtime>() {
    const READS: u64 = 16;
    let Some(server) = RedisServer::start() else {
        return;
    };
    let gate = Gate::to(&server);
    let mut config = RedisConfig::default();
    config.url = gate.url();
    config.prefix = "test".to_owned();
    let backplane = Arc::new(RedisBackplane::new(config).unwrap());
    // Connected, and the script loaded, with the replies passing.
    let at = backplane.position("big").await.unwrap();
    let before = evalsha_calls(&server).await;
    gate.set_open(false);
    let (read, mut reads) = ::tokio::sync::mpsc::unbounded_channel();
    for _ in 0..READS {
        let (backplane, read) = (backplane.clone(), read.clone());
        R::spawn(async move {
            let _ = read.send(backplane.position("big").await);
        });
    }
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let reached = evalsha_calls(&server).await - before;
        if reached == READS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{reached} of {READS} reads reached Redis while none was answered"
        );
        ::smol::future::yield_now().await;
    }
    gate.set_open(true);
    for _ in 0..READS {
        let position = within::<R, _>(EVENT_TIMEOUT, reads.recv())
            .await
            .expect("every read answered")
            .expect("the readers run");
        assert_eq!(position.unwrap(), at);
    }
}

/// The publisher sends the next messages while earlier ones still wait
/// for their replies: a room message that comes during a round trip does
/// not wait for it. Here Redis answers node A nothing (its replies are
/// held); node B, not behind the gate, sees what A's pipelines publish.
async fn publishes_do_not_wait_for_each_other_s_replies<R: Runtime>() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let gate = Gate::to(&server);
    let url = gate.url();
    let a = Node::start::<R>(&server, move |config| config.url = url, None).await;
    let b = Node::start::<R>(&server, |_| {}, None).await;
    let on_b = b.join("room").await;
    // Connected, and the script loaded, with the replies passing.
    a.hub.broadcast_group("room", &Message::from("0"), None);
    assert_eq!(text(&next::<R>(&on_b).await), "0");
    gate.set_open(false);
    // "1" reached Redis (B has it); its reply is held. "2" goes after it.
    a.hub.broadcast_group("room", &Message::from("1"), None);
    assert_eq!(text(&next::<R>(&on_b).await), "1");
    a.hub.broadcast_group("room", &Message::from("2"), None);
    // "2" did not wait for "1"'s reply.
    assert_eq!(text(&next::<R>(&on_b).await), "2");
    gate.set_open(true);
    a.stop().await;
    b.stop().await;
}

async fn every_node_s_stats_are_seen_from_every_node<R: Runtime>() {
    // Stats are written with each presence refresh (every 300 ms here);
    // long enough that a loaded machine does not miss two in a row.
    let ttl = Duration::from_millis(900);
    let Some((_server, a, b)) = two_nodes::<R>(|c| c.presence_ttl = ttl, None).await else {
        return;
    };
    let _on_a = a.join("x").await;
    let _on_b = (b.join("x").await, b.join("y").await, b.session());
    let expected = {
        let mut both = vec![
            (
                a.backplane.node(),
                NodeStats {
                    sessions: 1,
                    rooms: 1,
                },
            ),
            (
                b.backplane.node(),
                NodeStats {
                    sessions: 3,
                    rooms: 2,
                },
            ),
        ];
        both.sort_unstable_by_key(|(node, _)| *node);
        both
    };
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let seen = a.backplane.nodes().await.unwrap();
        if seen == expected {
            break;
        }
        assert!(Instant::now() < deadline, "{seen:?}");
        ::smol::future::yield_now().await;
    }
    assert_eq!(b.backplane.nodes().await.unwrap(), expected);
    // A node that stops takes its stats with it.
    let gone = b.backplane.node();
    b.stop().await;
    let left = a.backplane.nodes().await.unwrap();
    assert!(left.iter().all(|(node, _)| *node != gone), "{left:?}");
    a.stop().await;
}

/// A way to run a scenario to its end from the test's thread.
trait BlockOn: Runtime {
    /// Runs `scenario` with its tasks on `threads` threads, where the
    /// runtime lets the test choose (tokio: one is the test's own);
    /// smol's spawned tasks run on its global executor's thread.
    fn block_on(threads: usize, scenario: impl Future<Output = ()>);
}

impl BlockOn for storm_tokio::Tokio {
    fn block_on(threads: usize, scenario: impl Future<Output = ()>) {
        let mut builder = match threads {
            1 => ::tokio::runtime::Builder::new_current_thread(),
            _ => {
                let mut builder = ::tokio::runtime::Builder::new_multi_thread();
                builder.worker_threads(threads);
                builder
            }
        };
        builder
            .enable_all()
            .build()
            .expect("a tokio runtime")
            .block_on(scenario);
    }
}

impl BlockOn for storm_smol::Smol {
    fn block_on(_threads: usize, scenario: impl Future<Output = ()>) {
        ::smol::block_on(scenario);
    }
}

/// Each scenario `fn NAME<R: Runtime>()` as tests `tokio::NAME` and
/// `smol::NAME`: those before the `;` on one thread, those after it on two.
macro_rules! on_runtimes {
    ($($scenario:ident),* $(,)? ; $($threaded:ident),* $(,)?) => {
        mod tokio {
            $(
                #[test]
                fn $scenario() {
                    use super::BlockOn;
                    storm_tokio::Tokio::block_on(1, super::$scenario::<storm_tokio::Tokio>());
                }
            )*
            $(
                #[test]
                fn $threaded() {
                    use super::BlockOn;
                    storm_tokio::Tokio::block_on(2, super::$threaded::<storm_tokio::Tokio>());
                }
            )*
        }
        mod smol {
            $(
                #[test]
                fn $scenario() {
                    use super::BlockOn;
                    storm_smol::Smol::block_on(1, super::$scenario::<storm_smol::Smol>());
                }
            )*
            $(
                #[test]
                fn $threaded() {
                    use super::BlockOn;
                    storm_smol::Smol::block_on(2, super::$threaded::<storm_smol::Smol>());
                }
            )*
        }
    };
}

on_runtimes!(
    a_room_message_reaches_another_node_exactly_once,
    a_client_recovers_exactly_the_range_it_missed,
    recovery_stays_exact_as_the_history_is_trimmed,
    each_stage_of_a_room_message_is_stamped_when_asked_for,
    redis_down_then_restarted_empty_changes_the_epoch,
    presence_spans_nodes_and_expires_with_its_node,
    a_name_is_one_holder_s_across_nodes_until_released_or_its_node_dies,
    claims_redis_lost_are_claimed_again,
    without_history_messages_cross_unpositioned,
    an_idle_rooms_history_expires_and_its_epoch_with_it,
    ordered_messages_reach_every_node_in_one_order_with_their_offsets,
    a_burst_crosses_in_order,
    node_messages_reach_the_named_node_or_every_other_one,
    presence_changes_reach_redis_in_their_order_without_waiting,
    a_node_receives_only_the_rooms_it_has_members_in,
    every_node_s_stats_are_seen_from_every_node,
    after_a_restart_the_held_rooms_are_subscribed_again_in_a_round_trip_or_two,
    reads_do_not_wait_for_each_other_s_replies,
    publishes_do_not_wait_for_each_other_s_replies,
    the_subscription_connection_gets_messages_as_resp3_pushes,
    a_node_publishes_on_its_subscription_connection,
    a_room_s_messages_taken_together_are_one_script_call;
    a_join_meets_the_live_stream_without_a_gap_or_a_duplicate,
);

/// Calls of `command` (lower case) Redis has run so far, scripts' own
/// calls included (`INFO commandstats`), through a connection of the
/// test's own.
async fn command_calls(server: &RedisServer, command: &str) -> u64 {
    let info: String = ask(server, redis::cmd("INFO").arg("commandstats")).await;
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().unwrap())
}

/// A run of one room's messages that the publisher takes together is
/// appended by one call of the publish script (one `HINCRBY` of the
/// room's offset), each message still published once, in order, with
/// offsets one after another. Here a node's broadcasts wait in its queue
/// until it starts, so its publisher takes them in one batch.
async fn a_room_s_messages_taken_together_are_one_script_call<R: Runtime>() {
    const RUN: u64 = 20;
    let Some(server) = RedisServer::start() else {
        return;
    };
    let b = Node::start::<R>(&server, |_| {}, None).await;
    let on_b = b.join("room").await;
    let mut config = RedisConfig::default();
    config.url = server.url();
    config.prefix = "test".to_owned();
    let backplane = Arc::new(RedisBackplane::new(config).unwrap());
    let hub = Hub::with_backplane(HubConfig::default(), Instant::now(), backplane.clone()).unwrap();
    for i in 0..RUN {
        hub.broadcast_group("room", &Message::from(i.to_string()), None);
    }
    // Another room's message ends the run; then the room's again.
    hub.broadcast_group("other", &Message::from("x"), None);
    hub.broadcast_group("room", &Message::from(RUN.to_string()), None);
    let (increments, publishes) = (
        command_calls(&server, "hincrby").await,
        command_calls(&server, "publish").await,
    );
    let a = Node {
        backplane: backplane.clone(),
        running: Some(backplane.start::<R>(hub.clone()).await.unwrap()),
        hub,
    };
    for i in 0..=RUN {
        assert_eq!(text(&next::<R>(&on_b).await), i.to_string());
    }
    assert_eq!(b.backplane.position("room").await.unwrap().offset, RUN + 1);
    let stats = b.backplane.stats();
    assert_eq!(
        (stats.delivered, stats.missed, stats.duplicates),
        (RUN + 1, 0, 0)
    );
    // Three runs: "room" × RUN, "other", "room"; every message published.
    assert_eq!(command_calls(&server, "hincrby").await - increments, 3);
    assert_eq!(command_calls(&server, "publish").await - publishes, RUN + 2);
    a.stop().await;
    b.stop().await;
}

/// Applies ACL `rules` to `server`'s user `name` (`ACL SETUSER`).
async fn acl_setuser(server: &RedisServer, name: &str, rules: &[&str]) {
    let () = ask(
        server,
        redis::cmd("ACL").arg("SETUSER").arg(name).arg(rules),
    )
    .await;
}

/// Whether `server`'s `ACL LOG` has an entry for `reason` (`auth`: a
/// refused login, `channel`: a refused channel).
async fn acl_logged(server: &RedisServer, reason: &str) -> bool {
    let log: Vec<std::collections::HashMap<String, redis::Value>> =
        ask(server, redis::cmd("ACL").arg("LOG")).await;
    log.iter().any(|entry| {
        entry.get("reason").is_some_and(|logged| {
            redis::from_redis_value::<String>(logged).is_ok_and(|logged| logged == reason)
        })
    })
}

/// The ids of the connections of ACL user `user` subscribed to a channel.
async fn subscribed_connections(server: &RedisServer, user: &str) -> Vec<String> {
    let list = client_list(server).await;
    list.lines()
        .filter(|line| line.contains(&format!(" user={user} ")) && !line.contains(" sub=0 "))
        .filter_map(|line| line.split(' ').find_map(|pair| pair.strip_prefix("id=")))
        .map(str::to_owned)
        .collect()
}

/// The subscriber gives up a connection that is still open: Redis refuses
/// a room's `SUBSCRIBE` on it (an ACL user without that channel), so the
/// subscriber drops it (after the backoff's first delay) and subscribes
/// anew, with the backoff, until Redis lets it. The connection stays open
/// meanwhile (the publisher keeps its clone until it next publishes) and
/// still subscribed: what it receives once dropped is not delivered
/// (`retired`). So the node resubscribes
/// once it may; the room messages published while it could not are
/// counted missed when the next one comes (the recovery rules: a gap),
/// not delivered late through the old connection; none comes twice; and
/// a client recovers exactly what came after what it saw.
async fn a_subscription_given_up_on_an_open_connection_is_made_again_and_its_gap_counted<
    R: Runtime,
>() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    // Node B's user may use its node channels and the room "lobby" only.
    let lobby_only = [
        "on",
        ">b",
        "~*",
        "+@all",
        "&test.node.*",
        "&test.room.lobby",
    ];
    acl_setuser(&server, "b", &lobby_only).await;
    let as_b = server.url().replacen("redis://", "redis://b:b@", 1);
    let a = Node::start::<R>(&server, |_| {}, None).await;
    let b = Node::start::<R>(&server, |config| config.url = as_b.clone(), None).await;
    let on_b = b.join("lobby").await;
    a.hub.broadcast_group("lobby", &Message::from("1"), None);
    assert_eq!(text(&next::<R>(&on_b).await), "1");
    let seen = b.backplane.position("lobby").await.unwrap();
    assert_eq!(seen.offset, 1);
    let first = subscribed_connections(&server, "b").await;
    assert_eq!(first.len(), 1, "B subscribes on one connection");

    // B's user can no longer log in (its open connections go on), so no
    // attempt of B's to subscribe anew gets as far as "lobby" for now.
    acl_setuser(&server, "b", &["off"]).await;
    // A session of B enters a room B's user may not subscribe to: Redis
    // refuses, on the open connection, and B gives the connection up.
    let refused = b.session();
    b.hub.join(refused.id(), "closed").unwrap();
    let ready = within::<R, _>(EVENT_TIMEOUT, b.backplane.subscribed("closed")).await;
    assert_eq!(ready, Some(Ready::Down));
    assert!(acl_logged(&server, "channel").await);
    // It is dropped before B's next attempt to subscribe (refused: B's
    // user is off), but still open, still subscribed to "lobby": it
    // receives what follows.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while !acl_logged(&server, "auth").await {
        assert!(Instant::now() < deadline, "B tried to log in again");
        ::smol::future::yield_now().await;
    }
    assert!(
        subscribed_connections(&server, "b")
            .await
            .contains(&first[0])
    );
    a.hub.broadcast_group("lobby", &Message::from("2"), None);
    a.hub.broadcast_group("lobby", &Message::from("3"), None);
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while a.backplane.position("lobby").await.unwrap().offset < 3 {
        assert!(Instant::now() < deadline, "A published 2 and 3");
        ::smol::future::yield_now().await;
    }

    // B's user may log in and have "closed": B's next attempt subscribes.
    acl_setuser(&server, "b", &["on", "&test.room.closed"]).await;
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let ready = within::<R, _>(EVENT_TIMEOUT, b.backplane.subscribed("closed")).await;
        if ready == Some(Ready::Subscribed) {
            break;
        }
        assert!(Instant::now() < deadline, "B subscribed again: {ready:?}");
        within::<R, _>(Duration::from_millis(20), std::future::pending::<()>()).await;
    }
    assert!(
        subscribed_connections(&server, "b")
            .await
            .contains(&first[0]),
        "the connection given up is still open"
    );
    a.hub.broadcast_group("lobby", &Message::from("4"), None);
    let mut during = Vec::new();
    loop {
        let message = next::<R>(&on_b).await;
        if text(&message) == "4" {
            break;
        }
        during.push(text(&message).to_owned());
    }
    let stats = b.backplane.stats();
    // 2 and 3 reached B only on the connection it gave up: not delivered,
    // and counted missed as 4 came (the gap 2..=3).
    assert!(during.is_empty(), "delivered {during:?}");
    assert_eq!(stats.missed, 2, "{stats:?}");
    // Nothing twice: the connection given up (subscribed to "lobby"
    // still) delivered neither 2, 3 nor 4.
    assert_eq!((stats.duplicates, stats.subscriptions), (0, 2), "{stats:?}");
    assert!(queued(&on_b).is_empty());
    let Recovery::Recovered { messages, .. } = b.backplane.recover("lobby", seen).await.unwrap()
    else {
        panic!("2, 3 and 4 are in the history");
    };
    let recovered: Vec<_> = messages
        .iter()
        .map(|(at, m)| (at.offset, text(m)))
        .collect();
    assert_eq!(recovered, [(2, "2"), (3, "3"), (4, "4")]);
    a.stop().await;
    b.stop().await;
}

/// [`a_subscription_given_up_on_an_open_connection_is_made_again_and_its_gap_counted`]
/// on each runtime (outside `on_runtimes!`, whose list other scenarios
/// grow).
mod given_up {
    use super::BlockOn;

    #[test]
    fn on_tokio() {
        storm_tokio::Tokio::block_on(
            1,
            super::a_subscription_given_up_on_an_open_connection_is_made_again_and_its_gap_counted::<
                storm_tokio::Tokio,
            >(),
        );
    }

    #[test]
    fn on_smol() {
        storm_smol::Smol::block_on(
            1,
            super::a_subscription_given_up_on_an_open_connection_is_made_again_and_its_gap_counted::<
                storm_smol::Smol,
            >(),
        );
    }
}
