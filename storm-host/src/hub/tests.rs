#![allow(clippy::field_reassign_with_default)] // written as users outside the crate must
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;
use std::task::{Context, Poll, Wake};
use std::time::Duration;

use super::*;
use bytes::Bytes;
use storm_proto::Message;
use storm_proto::backpressure::{FlowChange, SlowConsumerPolicy};

/// A waker counting its wake-ups.
#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn counting_waker() -> (Arc<CountingWaker>, Waker) {
    let count = Arc::new(CountingWaker::default());
    (Arc::clone(&count), Waker::from(Arc::clone(&count)))
}

fn wakes(count: &CountingWaker) -> usize {
    count.0.load(Ordering::SeqCst)
}

fn hub_with(limit: usize, policy: SlowConsumerPolicy) -> Hub {
    let mut config = HubConfig::default();
    config.backpressure.max_pending_send_bytes = limit;
    config.backpressure.max_pending_receive_bytes = limit;
    config.backpressure.slow_consumer_policy = policy;
    config.broadcast_overflow_bytes = limit / 2;
    Hub::new(config, Instant::now()).unwrap()
}

fn connect(hub: &Hub) -> Arc<Outbox> {
    hub.register(hub.try_admit().unwrap(), Instant::now())
        .unwrap()
}

fn msg(len: usize) -> Message {
    Message::from(vec![7u8; len])
}

fn drain_all(session: &Outbox) -> Vec<Message> {
    let mut out = Vec::new();
    let drained = session.drain_into(&mut out, usize::MAX);
    session.on_written(drained.bytes);
    out
}

#[test]
fn ids_are_monotonic_and_registry_tracks_sessions() {
    let hub = hub_with(100, SlowConsumerPolicy::Wait);
    let a = connect(&hub);
    let b = connect(&hub);
    let c = connect(&hub);
    assert_eq!(
        [a.id(), b.id(), c.id()].map(SessionId::get),
        [1, 2, 3],
        "ids start at 1 and increase"
    );
    assert_eq!(hub.session_count(), 3);
    assert!(Arc::ptr_eq(&hub.session(b.id()).unwrap(), &b));
    let ids: Vec<_> = hub.sessions().iter().map(|s| s.id()).collect();
    assert_eq!(ids, [a.id(), b.id(), c.id()]);
    assert!(hub.disconnect(b.id()).is_some());
    assert!(hub.disconnect(b.id()).is_none());
    assert!(hub.session(b.id()).is_none());
    assert_eq!(b.state(), SessionState::Closed);
    assert_eq!(connect(&hub).id().get(), 4, "ids are never reused");
    assert_eq!(a.id().to_string(), "#1");
}

#[test]
fn max_connections_gate_counts_permits_until_disconnect() {
    let mut config = HubConfig::default();
    config.max_connections = 2;
    let hub = Hub::new(config, Instant::now()).unwrap();
    let p1 = hub.try_admit().unwrap();
    let p2 = hub.try_admit().unwrap();
    assert_eq!(hub.try_admit().unwrap_err().max_connections, 2);
    drop(p2); // handshake failed
    let session = hub
        .register(hub.try_admit().unwrap(), Instant::now())
        .unwrap();
    assert!(hub.try_admit().is_err());
    hub.disconnect(session.id());
    assert!(session.is_disconnected());
    let p3 = hub.try_admit().unwrap();
    let m = hub.metrics(Instant::now());
    assert_eq!(
        (
            m.connections,
            m.connections_accepted,
            m.connections_rejected
        ),
        (2, 4, 2)
    );
    drop((p1, p3));
    assert_eq!(hub.metrics(Instant::now()).connections, 0);

    let unlimited = Hub::new(HubConfig::default(), Instant::now()).unwrap();
    let permits: Vec<_> = (0..1000).map(|_| unlimited.try_admit().unwrap()).collect();
    assert_eq!(unlimited.metrics(Instant::now()).connections, permits.len());
    // A permit from another hub is refused, and released.
    assert_eq!(
        hub.register(unlimited.try_admit().unwrap(), Instant::now())
            .unwrap_err(),
        RegisterError::ForeignPermit
    );
    assert_eq!(unlimited.metrics(Instant::now()).connections, 1000);
}

#[test]
fn config_is_validated() {
    let mut config = HubConfig::default();
    config.max_group_name_len = 0;
    assert_eq!(
        Hub::new(config, Instant::now()).unwrap_err(),
        HubConfigError::ZeroMaxGroupNameLen
    );
    let mut config = HubConfig::default();
    config.max_groups_per_session = 0;
    assert!(config.validate().is_err());
    assert!(HubConfig::default().validate().is_ok());
}

#[test]
fn send_drain_write_and_metrics() {
    let start = Instant::now();
    let hub = Hub::new(HubConfig::default(), start).unwrap();
    let s = hub.register(hub.try_admit().unwrap(), start).unwrap();
    for len in [10, 20, 30] {
        assert_eq!(s.send(msg(len)), SendOutcome::Queued);
    }
    assert_eq!(s.queued_messages(), 3);
    let mut out = Vec::new();
    // 25 bytes: the first message only (10 + 20 > 25).
    let drained = s.drain_into(&mut out, 25);
    assert_eq!(
        (drained.messages, drained.bytes, drained.close),
        (1, 10, None)
    );
    // 0 bytes still moves one message, so a huge message cannot stall.
    let drained = s.drain_into(&mut out, 0);
    assert_eq!((drained.messages, drained.bytes), (1, 20));
    let drained = s.drain_into(&mut out, 1000);
    assert_eq!((drained.messages, drained.bytes), (1, 30));
    assert!(s.drain_into(&mut out, 1000).is_idle());
    assert_eq!(s.pending_send_bytes(), 60, "in flight until written");
    s.on_written(45);
    assert_eq!(s.pending_send_bytes(), 15);
    s.on_written(1000); // over-reporting is clamped to what is in flight
    assert_eq!(s.pending_send_bytes(), 0);

    assert_eq!(s.on_read(100), FlowChange::Unchanged);
    s.on_message_received();
    assert_eq!(s.on_consumed(100), FlowChange::Unchanged);

    let m = s.metrics();
    assert_eq!((m.bytes_sent, m.messages_sent), (60, 3));
    assert_eq!((m.bytes_received, m.messages_received), (100, 1));
    assert_eq!(
        m.uptime(start + Duration::from_secs(5)),
        Duration::from_secs(5)
    );
    assert_eq!(
        s.uptime(start + Duration::from_secs(2)),
        Duration::from_secs(2)
    );
    let t = hub.metrics(start + Duration::from_secs(9));
    assert_eq!(t.uptime, Duration::from_secs(9));
    assert_eq!((t.bytes_sent, t.messages_sent, t.sessions), (60, 3, 1));
    assert_eq!((t.bytes_received, t.messages_received), (100, 1));
}

/// The hub's totals are kept in shards (by session id); its metrics add
/// up every session's traffic, over more sessions than there are shards,
/// including sessions already gone.
#[test]
fn hub_totals_add_up_every_session() {
    let hub = hub_with(1 << 20, SlowConsumerPolicy::Wait);
    let sessions: Vec<Arc<Outbox>> = (0..40).map(|_| connect(&hub)).collect();
    let mut expected = (0, 0, 0, 0);
    for (i, s) in sessions.iter().enumerate() {
        let n = i + 1;
        s.on_read_consumed(n);
        for _ in 0..n {
            s.on_message_received();
            assert_eq!(s.send(msg(n)), SendOutcome::Queued);
        }
        let drained = s.drain_written(usize::MAX, drop);
        assert_eq!(drained.messages, n);
        expected.0 += n;
        expected.1 += n;
        expected.2 += n * n;
        expected.3 += n;
    }
    assert!(hub.disconnect(sessions[0].id()).is_some());
    let t = hub.metrics(Instant::now());
    let as_u64 = |n: usize| u64::try_from(n).unwrap();
    assert_eq!(
        (
            t.bytes_received,
            t.messages_received,
            t.bytes_sent,
            t.messages_sent
        ),
        (
            as_u64(expected.0),
            as_u64(expected.1),
            as_u64(expected.2),
            as_u64(expected.3)
        )
    );
}

#[test]
fn receive_side_pauses_and_resumes_at_half() {
    let hub = hub_with(100, SlowConsumerPolicy::Wait);
    let s = connect(&hub);
    assert_eq!(s.on_read(60), FlowChange::Unchanged);
    assert_eq!(s.on_read(60), FlowChange::Paused);
    assert!(s.is_read_paused());
    assert_eq!(s.on_consumed(60), FlowChange::Unchanged); // 60 > 50
    assert_eq!(s.on_consumed(10), FlowChange::Resumed);
    assert!(!s.is_read_paused());
    assert_eq!(s.metrics().pending_receive_bytes, 50);
}

#[test]
fn writer_waker_is_woken_when_data_arrives() {
    let hub = hub_with(100, SlowConsumerPolicy::Wait);
    let s = connect(&hub);
    let (count, waker) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    let mut out = Vec::new();
    assert!(s.poll_drain(&mut cx, &mut out, 100).is_pending());
    assert_eq!(wakes(&count), 0);
    assert_eq!(s.send(msg(5)), SendOutcome::Queued);
    assert_eq!(wakes(&count), 1);
    assert_eq!(s.send(msg(5)), SendOutcome::Queued);
    assert_eq!(wakes(&count), 1, "woken once per registration");
    let Poll::Ready(drained) = s.poll_drain(&mut cx, &mut out, 100) else {
        panic!("data was queued");
    };
    assert_eq!(drained.messages, 2);
    // register_waker then send: woken too.
    s.register_waker(&waker);
    s.register_waker(&waker); // same waker: kept once
    hub.broadcast(&msg(1), None);
    assert_eq!(wakes(&count), 2);
    // Unregistered: a send queues without waking anyone.
    s.register_waker(&waker);
    s.unregister_waker();
    assert_eq!(s.send(msg(1)), SendOutcome::Queued);
    assert_eq!(wakes(&count), 2);
    // A close request wakes the writer as well.
    s.register_waker(&waker);
    s.request_close(CloseKind::Graceful);
    assert_eq!(wakes(&count), 3);
}

/// Issue #16: a writer that unregisters for its read path and registers
/// the same waker again (once per loop turn of a connection's task) keeps
/// the one waker in place: no drop and clone per turn (BASE dropped it at
/// `unregister_waker` and cloned it anew at `register_waker`, each under
/// the outbox's lock). Sends and closes while unregistered still wake no
/// one, and after the registration they wake it once.
#[test]
fn a_writer_unregistered_and_registered_again_keeps_its_waker() {
    let hub = hub_with(1000, SlowConsumerPolicy::Drop);
    let s = connect(&hub);
    let (count, waker) = counting_waker();
    s.register_waker(&waker);
    // `count` here, `waker`, and the one in the outbox.
    assert_eq!(Arc::strong_count(&count), 3);
    for turn in 0..3 {
        s.unregister_waker();
        assert_eq!(Arc::strong_count(&count), 3, "turn {turn}: kept");
        assert_eq!(s.send(msg(5)), SendOutcome::Queued);
        s.wake_writer();
        assert_eq!(wakes(&count), 0, "turn {turn}: unregistered");
        s.register_waker(&waker);
        assert_eq!(Arc::strong_count(&count), 3, "turn {turn}: not cloned");
        let _ = s.drain_into(&mut Vec::new(), usize::MAX);
    }
    assert_eq!(s.send(msg(5)), SendOutcome::Queued);
    assert_eq!(wakes(&count), 1);
    assert_eq!(Arc::strong_count(&count), 2, "taken to wake");
    // Unregistered, a close wakes no one; registered again, the writer
    // finds it when it looks (and a later wake-up reaches it).
    s.register_waker(&waker);
    s.unregister_waker();
    s.request_close(CloseKind::Graceful);
    assert_eq!(wakes(&count), 1);
    s.register_waker(&waker);
    assert_eq!(s.close_request(), Some(CloseKind::Graceful));
    s.wake_writer();
    assert_eq!(wakes(&count), 2);
}

#[test]
fn wait_policy_hands_back_and_wakes_when_writable() {
    let hub = hub_with(100, SlowConsumerPolicy::Wait);
    let s = connect(&hub);
    assert_eq!(s.send(msg(80)), SendOutcome::Queued);
    let big = msg(30);
    assert_eq!(s.send(big.clone()), SendOutcome::Wait(big.clone()));
    assert!(s.is_backpressured());
    let (count, waker) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    assert!(s.poll_writable(&mut cx).is_pending());
    assert!(s.poll_writable(&mut cx).is_pending()); // registered once
    let mut out = Vec::new();
    let _ = s.drain_into(&mut out, usize::MAX);
    s.on_written(20); // 60 pending: still over half
    assert_eq!(wakes(&count), 0);
    assert!(s.is_backpressured());
    assert_eq!(hub.metrics(Instant::now()).backpressure_episodes, 0);
    s.on_written(10); // 50: resumed
    assert_eq!(wakes(&count), 1);
    // One episode, counted as it ends; more writes do not count again.
    assert_eq!(hub.metrics(Instant::now()).backpressure_episodes, 1);
    s.on_written(10);
    assert_eq!(hub.metrics(Instant::now()).backpressure_episodes, 1);
    assert_eq!(s.poll_writable(&mut cx), Poll::Ready(Ok(())));
    assert_eq!(s.send(big), SendOutcome::Queued);
}

#[test]
fn waiting_senders_are_woken_by_close() {
    let hub = hub_with(10, SlowConsumerPolicy::Wait);
    let s = connect(&hub);
    assert_eq!(s.send(msg(10)), SendOutcome::Queued);
    let (count, waker) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    assert!(s.poll_writable(&mut cx).is_pending());
    hub.disconnect(s.id());
    assert_eq!(wakes(&count), 1);
    assert_eq!(s.poll_writable(&mut cx), Poll::Ready(Err(SessionClosed)));
    assert!(matches!(s.send(msg(1)), SendOutcome::Closed(_)));
}

#[test]
fn drop_and_disconnect_policies_on_send() {
    let hub = hub_with(10, SlowConsumerPolicy::Drop);
    let s = connect(&hub);
    assert_eq!(s.send(msg(8)), SendOutcome::Queued);
    assert!(matches!(s.send(msg(8)), SendOutcome::Dropped(m) if m.len() == 8));
    assert_eq!(s.metrics().messages_dropped, 1);
    assert_eq!(s.metrics().bytes_dropped, 8);
    assert_eq!(hub.metrics(Instant::now()).messages_dropped, 1);

    s.set_policy(SlowConsumerPolicy::Disconnect);
    assert_eq!(s.policy(), SlowConsumerPolicy::Disconnect);
    let (count, waker) = counting_waker();
    s.register_waker(&waker);
    assert!(matches!(s.send(msg(1)), SendOutcome::Disconnected(_)));
    assert_eq!(wakes(&count), 1, "the writer must see the abort");
    assert_eq!(s.state(), SessionState::Closing(CloseKind::Abort));
    // The writer discards the queue and closes at once.
    let mut out = Vec::new();
    let drained = s.drain_into(&mut out, usize::MAX);
    assert_eq!(drained.close, Some(CloseKind::Abort));
    assert!(out.is_empty());
    assert_eq!(s.queued_messages(), 0);
    assert_eq!(s.pending_send_bytes(), 0);
}

#[test]
fn graceful_close_drains_first_and_abort_wins() {
    let hub = hub_with(100, SlowConsumerPolicy::Wait);
    let s = connect(&hub);
    assert_eq!(s.send(msg(10)), SendOutcome::Queued);
    assert_eq!(s.send(msg(10)), SendOutcome::Queued);
    s.request_close(CloseKind::Graceful);
    assert!(matches!(s.send(msg(1)), SendOutcome::Closed(_)));
    let mut out = Vec::new();
    let first = s.drain_into(&mut out, 10);
    assert_eq!((first.messages, first.close), (1, None));
    let last = s.drain_into(&mut out, 10);
    assert_eq!((last.messages, last.close), (1, Some(CloseKind::Graceful)));
    s.request_close(CloseKind::Abort);
    s.request_close(CloseKind::Graceful);
    assert_eq!(s.close_request(), Some(CloseKind::Abort));

    let other = connect(&hub);
    hub.close_all(CloseKind::Graceful);
    assert_eq!(other.state(), SessionState::Closing(CloseKind::Graceful));
}

#[test]
fn oversized_message_is_sent_alone() {
    let hub = hub_with(10, SlowConsumerPolicy::Wait);
    let s = connect(&hub);
    assert_eq!(s.send(msg(50)), SendOutcome::Queued);
    assert!(s.is_backpressured());
    assert!(matches!(s.send(msg(1)), SendOutcome::Wait(_)));
    assert_eq!(drain_all(&s).len(), 1);
    assert!(!s.is_backpressured());
}

#[test]
fn broadcast_shares_one_allocation() {
    let hub = hub_with(1 << 20, SlowConsumerPolicy::Wait);
    let sessions: Vec<_> = (0..50).map(|_| connect(&hub)).collect();
    let message = Message::from(vec![1u8; 1024]);
    let report = hub.broadcast(&message, Some(sessions[3].id()));
    assert_eq!((report.delivered, report.recipients()), (49, 49));
    for (i, s) in sessions.iter().enumerate() {
        let out = drain_all(s);
        if i == 3 {
            assert!(out.is_empty(), "excluded");
        } else {
            assert_eq!(out.len(), 1);
            assert_eq!(
                out[0].as_bytes().as_ptr(),
                message.as_bytes().as_ptr(),
                "no copy for {i}"
            );
        }
    }
}

#[test]
fn broadcast_applies_each_sessions_policy_without_waiting() {
    let hub = hub_with(100, SlowConsumerPolicy::Wait); // overflow 50
    let fast = connect(&hub);
    let wait = connect(&hub);
    let drop = connect(&hub);
    let disconnect = connect(&hub);
    let closed = connect(&hub);
    drop.set_policy(SlowConsumerPolicy::Drop);
    disconnect.set_policy(SlowConsumerPolicy::Disconnect);
    closed.request_close(CloseKind::Graceful);
    for s in [&wait, &drop, &disconnect] {
        assert_eq!(s.send(msg(100)), SendOutcome::Queued); // now backpressured
    }
    let frame = msg(40);
    let report = hub.broadcast(&frame, None);
    // Wait: queued past the limit (140 <= 150); Drop: skipped; Disconnect: aborted.
    assert_eq!(
        (
            report.delivered,
            report.dropped,
            report.disconnected,
            report.closed
        ),
        (2, 1, 1, 1)
    );
    assert!(report.full.is_empty());
    assert_eq!(wait.pending_send_bytes(), 140);
    assert_eq!(disconnect.close_request(), Some(CloseKind::Abort));
    // A second broadcast would put the Wait session past its hard cap.
    let report = hub.broadcast(&frame, None);
    assert_eq!(report.full, [wait.id()]);
    assert_eq!((report.delivered, report.dropped), (1, 2));
    assert_eq!(wait.pending_send_bytes(), 140);
    assert_eq!(wait.metrics().messages_dropped, 1);
    assert_eq!(drain_all(&fast).len(), 2);
}

#[test]
fn groups_join_leave_and_names() {
    let hub = hub_with(100, SlowConsumerPolicy::Wait);
    let a = connect(&hub);
    let b = connect(&hub);
    assert_eq!(hub.join(a.id(), "red"), Ok(true));
    assert_eq!(hub.join(a.id(), "red"), Ok(false));
    assert_eq!(hub.join(a.id(), "blue"), Ok(true));
    assert_eq!(hub.join(b.id(), "red"), Ok(true));
    assert_eq!(hub.member_count("red"), 2);
    assert_eq!(hub.members("red"), [a.id(), b.id()]);
    assert_eq!(hub.group_names(), ["blue", "red"]);
    assert_eq!(hub.groups_of(a.id()), ["blue", "red"]);
    assert!(hub.leave(a.id(), "blue"));
    assert!(!hub.leave(a.id(), "blue"));
    assert_eq!(hub.group_names(), ["red"], "empty groups disappear");
    assert_eq!(hub.member_count("blue"), 0);
    let report = hub.broadcast_group("red", &msg(3), Some(b.id()));
    assert_eq!(report.delivered, 1);
    assert_eq!(drain_all(&a).len(), 1);
    assert!(drain_all(&b).is_empty());
    assert_eq!(hub.broadcast_group("nobody", &msg(3), None).recipients(), 0);
    hub.disconnect(a.id());
    assert_eq!(hub.members("red"), [b.id()]);
    assert!(hub.groups_of(a.id()).is_empty());
    assert_eq!(hub.leave_all(b.id()), 1);
    assert_eq!(hub.group_count(), 0);
}

#[test]
fn group_errors() {
    let mut config = HubConfig::default();
    config.max_group_name_len = 4;
    config.max_groups_per_session = 2;
    let hub = Hub::new(config, Instant::now()).unwrap();
    let s = connect(&hub);
    assert_eq!(hub.join(s.id(), ""), Err(GroupError::EmptyName));
    assert_eq!(
        hub.join(s.id(), "toolong"),
        Err(GroupError::NameTooLong { len: 7, max: 4 })
    );
    let ghost = SessionId::new(99);
    assert_eq!(hub.join(ghost, "a"), Err(GroupError::UnknownSession(ghost)));
    hub.join(s.id(), "a").unwrap();
    hub.join(s.id(), "b").unwrap();
    assert_eq!(
        hub.join(s.id(), "c"),
        Err(GroupError::TooManyGroups { max: 2 })
    );
    assert_eq!(hub.join(s.id(), "a"), Ok(false), "already a member is fine");
    hub.disconnect(s.id());
    assert_eq!(
        hub.join(s.id(), "a"),
        Err(GroupError::UnknownSession(s.id()))
    );
    assert!(
        GroupError::TooManyGroups { max: 2 }
            .to_string()
            .contains('2')
    );
}

#[derive(Default)]
struct RecordingBackplane(Mutex<Vec<(String, Message)>>);

impl Backplane for RecordingBackplane {
    fn publish(&self, group: &str, message: &Message) {
        self.0
            .lock()
            .unwrap()
            .push((group.to_owned(), message.clone()));
    }
}

#[test]
fn group_broadcast_goes_through_the_backplane() {
    let backplane = Arc::new(RecordingBackplane::default());
    let hub = Hub::with_backplane(HubConfig::default(), Instant::now(), backplane.clone()).unwrap();
    let s = connect(&hub);
    hub.join(s.id(), "room").unwrap();
    let message = Message::from(Bytes::from_static(b"hi"));
    assert_eq!(hub.broadcast_group("room", &message, None).delivered, 1);
    // Delivery of a message from another node does not publish it again.
    assert_eq!(hub.deliver_group("room", &message, None).delivered, 1);
    assert_eq!(*backplane.0.lock().unwrap(), [("room".to_owned(), message)]);
    assert_eq!(drain_all(&s).len(), 2);
}

/// Records which groups the hub says have local members.
#[derive(Default)]
struct OpenGroups(Mutex<Vec<String>>);

impl Backplane for OpenGroups {
    fn publish(&self, _: &str, _: &Message) {}

    fn group_opened(&self, group: &str) {
        self.0.lock().unwrap().push(format!("+{group}"));
    }

    fn group_closed(&self, group: &str) {
        self.0.lock().unwrap().push(format!("-{group}"));
    }
}

#[test]
fn the_backplane_hears_of_a_group_s_first_member_and_its_last() {
    let backplane = Arc::new(OpenGroups::default());
    let hub = Hub::with_backplane(HubConfig::default(), Instant::now(), backplane.clone()).unwrap();
    let (a, b) = (connect(&hub), connect(&hub));
    hub.join(a.id(), "room").unwrap();
    hub.join(b.id(), "room").unwrap();
    hub.join(a.id(), "room").unwrap(); // already in: nothing
    hub.join(b.id(), "other").unwrap();
    assert!(hub.leave(a.id(), "room"));
    assert!(!hub.leave(a.id(), "room"));
    hub.disconnect(b.id()); // leaves "room" and "other", each its last
    hub.join(a.id(), "room").unwrap();
    let mut heard = backplane.0.lock().unwrap().clone();
    // `leave_all` goes through a session's groups in no set order.
    heard[2..4].sort();
    assert_eq!(heard, ["+room", "+other", "-other", "-room", "+room"]);
}

#[test]
fn a_hub_has_a_backplane_only_when_given_one() {
    assert!(
        Hub::new(HubConfig::default(), Instant::now())
            .unwrap()
            .backplane()
            .is_none()
    );
    let recording = Arc::new(RecordingBackplane::default());
    let backplane: Arc<dyn Backplane> = recording.clone();
    let hub = Hub::with_backplane(HubConfig::default(), Instant::now(), backplane.clone()).unwrap();
    assert!(Arc::ptr_eq(hub.backplane().unwrap(), &backplane));
    // One publish per group broadcast, whatever the number of local members
    // (none too: the members may all be on other nodes).
    let (a, b) = (connect(&hub), connect(&hub));
    hub.join(a.id(), "room").unwrap();
    hub.join(b.id(), "room").unwrap();
    hub.broadcast_group("room", &msg(1), None);
    hub.broadcast_group("elsewhere", &msg(2), None);
    let published: Vec<_> = recording
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|(group, _)| group.clone())
        .collect();
    assert_eq!(published, ["room", "elsewhere"]);
}

#[test]
fn thread_waker_unparks() {
    let hub = hub_with(100, SlowConsumerPolicy::Wait);
    let s = connect(&hub);
    let waker = thread_waker(std::thread::current());
    let mut cx = Context::from_waker(&waker);
    let mut out = Vec::new();
    assert!(s.poll_drain(&mut cx, &mut out, 100).is_pending());
    assert_eq!(s.send(msg(1)), SendOutcome::Queued); // unparks us: park returns
    std::thread::park_timeout(Duration::from_secs(5));
    assert!(s.poll_drain(&mut cx, &mut out, 100).is_ready());
}

#[test]
fn hub_and_session_are_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Hub>();
    check::<Outbox>();
    check::<ConnectionPermit>();
    check::<MiddlewareChain>();
}

#[cfg(feature = "metrics")]
#[test]
fn metrics_are_recorded_under_their_names_and_service() {
    let hub = hub_with(100, SlowConsumerPolicy::Drop);
    let s = connect(&hub);
    let _other = connect(&hub);
    s.on_read_consumed(7);
    s.on_message_received();
    assert_eq!(s.send(msg(60)), SendOutcome::Queued);
    assert!(matches!(s.send(msg(60)), SendOutcome::Dropped(_)));
    let _ = s.drain_written(usize::MAX, drop);
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let render = recorder.handle();
    ::metrics::with_local_recorder(&recorder, || {
        hub.metrics(Instant::now()).record("unit");
    });
    let text = render.render();
    let value = |name: &str| {
        let series = format!("{name}{{service=\"unit\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&series))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} in\n{text}"))
    };
    assert_eq!(value(metric_names::CONNECTIONS_OPEN), 2.0);
    assert_eq!(value(metric_names::CONNECTIONS_TOTAL), 2.0);
    assert_eq!(value(metric_names::CONNECTIONS_REJECTED), 0.0);
    assert_eq!(value(metric_names::MESSAGES_RECEIVED), 1.0);
    assert_eq!(value(metric_names::BYTES_RECEIVED), 7.0);
    assert_eq!(value(metric_names::MESSAGES_SENT), 1.0);
    assert_eq!(value(metric_names::BYTES_SENT), 60.0);
    assert_eq!(value(metric_names::MESSAGES_DROPPED), 1.0);
    // 60 of 100 pending, then the refused send paused the budget; the
    // write drained it to 0: one episode.
    assert_eq!(value(metric_names::BACKPRESSURE_EPISODES), 1.0);
    assert!(text.contains("storm_handshake_failures_total{service=\"unit\",reason=\"tls\"} 0"));
}

#[test]
fn handshake_failures_are_counted_by_reason() {
    use std::io::{Error, ErrorKind};
    let hub = hub_with(0, SlowConsumerPolicy::Wait);
    let cases = [
        (Error::from(ErrorKind::TimedOut), HandshakeFailure::TimedOut),
        (
            Error::from(ErrorKind::PermissionDenied),
            HandshakeFailure::Refused,
        ),
        (
            crate::setup::tls_handshake_failed(Error::from(ErrorKind::InvalidData)),
            HandshakeFailure::Tls,
        ),
        (
            Error::from(ErrorKind::InvalidData),
            HandshakeFailure::Invalid,
        ),
        (
            Error::from(ErrorKind::UnexpectedEof),
            HandshakeFailure::Closed,
        ),
        (
            Error::from(ErrorKind::ConnectionReset),
            HandshakeFailure::Closed,
        ),
        (
            Error::from(ErrorKind::ConnectionAborted),
            HandshakeFailure::Aborted,
        ),
        (Error::other("socket option"), HandshakeFailure::Other),
    ];
    for (error, why) in &cases {
        assert_eq!(hub.handshake_failed(error), *why, "{error}");
    }
    // A TLS handshake that timed out is a timeout, with its own text.
    let timed_out = crate::setup::tls_handshake_failed(Error::from(ErrorKind::TimedOut));
    assert_eq!(HandshakeFailure::of(&timed_out), HandshakeFailure::TimedOut);
    let tls = crate::setup::tls_handshake_failed(Error::new(ErrorKind::InvalidData, "bad cert"));
    assert_eq!(tls.to_string(), "TLS handshake failed: bad cert");
    let counted = hub.metrics(Instant::now()).handshake_failures;
    assert_eq!(counted.get(HandshakeFailure::Closed), 2);
    assert_eq!(counted.get(HandshakeFailure::Tls), 1);
    assert_eq!(counted.total(), 8);
    let names: std::collections::HashSet<_> =
        HandshakeFailure::ALL.iter().map(|why| why.name()).collect();
    assert_eq!(names.len(), HandshakeFailure::ALL.len());
}

/// An outbox that frames as messages are sent, length-prefixed, under a
/// send limit of `limit` bytes (policy Drop).
fn encoding(limit: usize) -> (Hub, Arc<Outbox>, storm_proto::link::Encoder) {
    use storm_proto::framing::LengthPrefixFramer;
    use storm_proto::link::{Link, LinkConfig, Protocol};
    let hub = hub_with(limit, SlowConsumerPolicy::Drop);
    let outbox = connect(&hub);
    let framer = Box::new(LengthPrefixFramer::default());
    let link = Link::new(
        Protocol::Framed(framer),
        &LinkConfig::default(),
        Instant::now(),
    )
    .unwrap();
    outbox.encode_with(link.encoder().unwrap());
    (hub, outbox, link.encoder().unwrap())
}

#[test]
fn a_large_message_is_queued_as_its_own_bytes_behind_its_header() {
    let (_hub, outbox, _) = encoding(1 << 20);
    let big = Bytes::from(vec![3u8; 64 * 1024]);
    assert_eq!(
        outbox.send(Message::Binary(big.clone())),
        SendOutcome::Queued
    );
    // The limit counts the frame, header included.
    assert_eq!(outbox.pending_send_bytes(), 4 + big.len());
    let mut out = Vec::new();
    let drained = outbox.drain_with(usize::MAX, |output| {
        if let Output::Encoded(bytes) = output {
            out.push(bytes);
        }
    });
    assert_eq!((drained.messages, drained.bytes), (1, 4 + big.len()));
    assert_eq!(out.len(), 2);
    assert_eq!(&out[0][..], &[0, 1, 0, 0]);
    // No copy: the sender's allocation itself.
    assert_eq!(out[1].as_ptr(), big.as_ptr());
    assert_eq!(out[1].len(), big.len());
}

/// A ping-pong through an encoding outbox: each reply is drained before
/// the next is sent, and held a while, as a writer holds what it took
/// until it is written. After each drain the queue keeps room for the next
/// small frame, so a reply does not reserve (reclaim or allocate) the
/// buffer for itself; and no later frame overwrites a reply still held.
/// (Fails at reply 0 when the drain leaves the buffer no room.)
#[test]
fn a_drained_encoding_queue_keeps_room_for_the_next_reply() {
    let (_hub, outbox, mut encoder) = encoding(1 << 20);
    let mut held: Vec<(Bytes, bytes::BytesMut)> = Vec::new();
    for i in 0..200u8 {
        let message = Message::from(vec![i; 32]);
        let mut frame = bytes::BytesMut::new();
        encoder.encode(&message, &mut frame).unwrap();
        assert_eq!(outbox.send(message), SendOutcome::Queued);
        let drained = outbox.drain_written(usize::MAX, |output| {
            let Output::Encoded(bytes) = output else {
                panic!("a message")
            };
            held.push((bytes, frame.clone()));
        });
        assert_eq!((drained.messages, drained.bytes), (1, frame.len()));
        assert!(
            outbox.outbox_capacity() >= frame.len(),
            "reply {i}: no room left for the next"
        );
        // Written now and then: some replies go before the next is framed,
        // some stay held across several.
        if i % 7 == 0 {
            held.clear();
        }
        for (bytes, frame) in &held {
            assert_eq!(bytes[..], frame[..], "reply {i}: a held reply changed");
        }
    }
    assert_eq!(outbox.pending_send_bytes(), 0);
}

/// What the writer does to an outbox.
#[derive(Debug, Clone)]
enum Op {
    /// Send a message of this length.
    Send(usize),
    /// Drain at most this many bytes, and write them.
    Drain(usize),
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        3 => prop_oneof![0usize..100, 16_000usize..17_000, 30_000usize..70_000].prop_map(Op::Send),
        1 => prop_oneof![1usize..10, 1usize..70_000, Just(usize::MAX)].prop_map(Op::Drain),
    ]
}

proptest::proptest! {
    /// Any mix of small and large messages, drained in any pieces (a
    /// writer's partial writes), gives exactly the frames of the messages
    /// the limit admitted, in order, each drain within its bound; every
    /// message is counted once and the limit is released to nothing.
    #[test]
    fn an_encoding_outbox_hands_out_exactly_the_admitted_frames_in_order(
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let (_hub, outbox, mut encoder) = encoding(150_000);
        let (mut wire, mut expected, mut admitted, mut counted) = (Vec::new(), Vec::new(), 0, 0);
        let drain = |outbox: &Outbox, max: usize, wire: &mut Vec<u8>| {
            let (mut pieces, mut last) = (0, 0);
            let drained = outbox.drain_with(max, |output| {
                let Output::Encoded(bytes) = output else { panic!("a message") };
                pieces += bytes.len();
                last = bytes.len();
                wire.extend_from_slice(&bytes);
            });
            outbox.on_written(drained.bytes);
            assert_eq!(pieces, drained.bytes);
            // Within the batch, but for a large payload begun within it,
            // which goes whole.
            assert!(
                drained.bytes <= max.max(1)
                    || (last >= storm_proto::link::LARGE_MESSAGE && pieces - last < max),
                "{} bytes drained for {max}",
                drained.bytes
            );
            drained.messages
        };
        for op in ops {
            match op {
                Op::Send(len) => {
                    let message = Message::from(vec![u8::try_from(len % 251).unwrap(); len]);
                    let mut frame = bytes::BytesMut::new();
                    encoder.encode(&message, &mut frame).unwrap();
                    match outbox.send(message) {
                        SendOutcome::Queued => {
                            expected.extend_from_slice(&frame);
                            admitted += 1;
                        }
                        SendOutcome::Dropped(_) => {}
                        other => panic!("{other:?}"),
                    }
                }
                Op::Drain(max) => counted += drain(&outbox, max, &mut wire),
            }
        }
        counted += drain(&outbox, usize::MAX, &mut wire);
        proptest::prop_assert_eq!(wire, expected);
        proptest::prop_assert_eq!(counted, admitted);
        proptest::prop_assert_eq!(outbox.pending_send_bytes(), 0);
        proptest::prop_assert_eq!(outbox.queued_messages(), 0);
    }
}

/// How long a test waits for another thread before it fails (a bound on
/// an event, never a measure: each waits for something that, right, takes
/// microseconds).
const PATIENCE: Duration = Duration::from_secs(10);

/// A writer's waker that notes, when woken, whose it is: a fan-out wakes
/// its members' writers in the order it queued the message for them.
struct VisitWaker {
    id: SessionId,
    visits: Arc<Mutex<Vec<SessionId>>>,
}

impl Wake for VisitWaker {
    fn wake(self: Arc<Self>) {
        self.visits.lock().unwrap().push(self.id);
    }
}

/// Issue #18: a fan-out holds its own group only. While a fan-out to a
/// group is stuck inside (its last member's outbox is locked by a writer
/// draining it), another session joins another group, gets a message
/// there and leaves it. (It waited: the fan-out held the hub-wide groups
/// lock, which a join or leave of any group needs.)
#[test]
fn a_group_s_fan_out_does_not_hold_up_joins_and_leaves_of_other_groups() {
    const MEMBERS: usize = 64;
    let hub = hub_with(1 << 20, SlowConsumerPolicy::Wait);
    let members: Vec<_> = (0..MEMBERS).map(|_| connect(&hub)).collect();
    let visits = Arc::new(Mutex::new(Vec::new()));
    for member in &members {
        hub.join(member.id(), "big").unwrap();
        member.register_waker(&Waker::from(Arc::new(VisitWaker {
            id: member.id(),
            visits: Arc::clone(&visits),
        })));
    }
    // A first fan-out shows the order the group's members are visited in.
    assert_eq!(hub.deliver_group("big", &msg(1), None).delivered, MEMBERS);
    let last = *visits.lock().unwrap().last().unwrap();
    let last = Arc::clone(members.iter().find(|m| m.id() == last).unwrap());
    for member in &members {
        assert_eq!(drain_all(member), [msg(1)]);
    }

    // The last member's writer drains it and holds its outbox meanwhile.
    assert_eq!(last.send(msg(2)), SendOutcome::Queued);
    let (held, is_held) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let writer = {
        let last = Arc::clone(&last);
        std::thread::spawn(move || {
            last.drain_with(usize::MAX, |_| {
                held.send(()).unwrap();
                // Longer than the test waits for the joiner below.
                let _ = released.recv_timeout(3 * PATIENCE);
            })
        })
    };
    is_held.recv_timeout(PATIENCE).unwrap();
    let fan_out = {
        let hub = hub.clone();
        std::thread::spawn(move || hub.deliver_group("big", &msg(3), None))
    };
    // Every other member has the message: the fan-out waits for the last
    // one's outbox, inside.
    let deadline = Instant::now() + PATIENCE;
    while members
        .iter()
        .any(|m| m.id() != last.id() && m.queued_messages() == 0)
    {
        assert!(Instant::now() < deadline, "the fan-out did not start");
        std::thread::yield_now();
    }

    let (other, bystander) = (connect(&hub), connect(&hub));
    let (done, is_done) = std::sync::mpsc::channel();
    let joiner = {
        let (hub, other, bystander) = (hub.clone(), other.id(), bystander.id());
        std::thread::spawn(move || {
            hub.join(bystander, "small").unwrap();
            let joined = hub.join(other, "small").unwrap();
            let delivered = hub.deliver_group("small", &msg(4), None).delivered;
            let left = hub.leave(other, "small");
            done.send((joined, delivered, left)).unwrap();
        })
    };
    let during = is_done.recv_timeout(PATIENCE);
    release.send(()).unwrap();
    assert_eq!(writer.join().unwrap().messages, 1);
    assert_eq!(fan_out.join().unwrap().delivered, MEMBERS);
    assert_eq!(
        during.expect("a join of another group waited for a fan-out"),
        (true, 2, true)
    );
    joiner.join().unwrap();
    for member in &members {
        assert_eq!(drain_all(member), [msg(3)]);
    }
    assert_eq!(drain_all(&other), [msg(4)]);
    assert_eq!(drain_all(&bystander), [msg(4)]);
    assert_eq!(hub.groups_of(other.id()), Vec::<String>::new());
    assert_eq!(hub.members("small"), [bystander.id()]);
}

/// Groups in the concurrent model test.
const MODEL_GROUPS: usize = 3;
/// Messages delivered to each of them, one delivering thread per group.
const MODEL_DELIVERIES: u32 = 150;
/// Threads changing memberships, and the sessions each owns.
const MODEL_OWNERS: usize = 2;
const MODEL_SESSIONS: usize = 2;

/// What an owning thread has one of its sessions do.
#[derive(Debug, Clone, Copy)]
enum Membership {
    Join(usize),
    Leave(usize),
    LeaveAll,
}

fn membership() -> impl proptest::strategy::Strategy<Value = (usize, Membership)> {
    use proptest::prelude::*;
    let change = prop_oneof![
        4 => (0..MODEL_GROUPS).prop_map(Membership::Join),
        3 => (0..MODEL_GROUPS).prop_map(Membership::Leave),
        1 => Just(Membership::LeaveAll),
    ];
    (0..MODEL_SESSIONS, change)
}

/// Where each group's delivering thread is: the last message whose
/// `deliver_group` began, and the last that returned.
#[derive(Default)]
struct Progress {
    started: [AtomicU64; MODEL_GROUPS],
    done: [AtomicU64; MODEL_GROUPS],
}

impl Progress {
    fn started(&self, group: usize) -> u64 {
        self.started[group].load(Ordering::SeqCst)
    }
    fn done(&self, group: usize) -> u64 {
        self.done[group].load(Ordering::SeqCst)
    }
}

/// One stretch of a session's membership of a group, in the delivering
/// thread's numbers: the messages done before the join began, and begun
/// by the time it returned; the same around the leave (`None`: still in).
#[derive(Debug, Clone, Copy)]
struct Stretch {
    group: usize,
    joined: (u64, u64),
    left: Option<(u64, u64)>,
}

impl Stretch {
    /// The member may have got message `seq`: it began after the join
    /// began ... and before the leave returned.
    fn allows(&self, seq: u64) -> bool {
        seq > self.joined.0 && self.left.is_none_or(|(_, after)| seq <= after)
    }

    /// The member must have got message `seq`: it began after the join
    /// returned and was done before the leave began.
    fn requires(&self, seq: u64, last: u64) -> bool {
        seq > self.joined.1 && seq <= self.left.map_or(last, |(before, _)| before)
    }
}

/// Runs one owner's changes on its sessions, checking each answer against
/// what the session is in, and returns each session's stretches.
fn change_memberships(
    hub: &Hub,
    sessions: &[Arc<Outbox>],
    changes: &[(usize, Membership)],
    progress: &Progress,
) -> Vec<Vec<Stretch>> {
    let mut stretches: Vec<Vec<Stretch>> = vec![Vec::new(); sessions.len()];
    let open = |stretches: &[Stretch], group: usize| {
        stretches
            .iter()
            .position(|s| s.group == group && s.left.is_none())
    };
    for &(which, change) in changes {
        let (id, mine) = (sessions[which].id(), &mut stretches[which]);
        match change {
            Membership::Join(group) => {
                let before = progress.done(group);
                let joined = hub.join(id, &format!("g{group}")).unwrap();
                let after = progress.started(group);
                assert_eq!(joined, open(mine, group).is_none(), "join of g{group}");
                if joined {
                    mine.push(Stretch {
                        group,
                        joined: (before, after),
                        left: None,
                    });
                }
            }
            Membership::Leave(group) => {
                let before = progress.done(group);
                let left = hub.leave(id, &format!("g{group}"));
                let after = progress.started(group);
                let stretch = open(mine, group);
                assert_eq!(left, stretch.is_some(), "leave of g{group}");
                if let Some(stretch) = stretch {
                    mine[stretch].left = Some((before, after));
                }
            }
            Membership::LeaveAll => {
                let before: Vec<_> = (0..MODEL_GROUPS).map(|g| progress.done(g)).collect();
                let left = hub.leave_all(id);
                let after: Vec<_> = (0..MODEL_GROUPS).map(|g| progress.started(g)).collect();
                let mut open_ones = 0;
                for stretch in mine.iter_mut().filter(|s| s.left.is_none()) {
                    stretch.left = Some((before[stretch.group], after[stretch.group]));
                    open_ones += 1;
                }
                assert_eq!(left, open_ones, "leave_all");
            }
        }
    }
    stretches
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

    /// Sessions join and leave a few groups from two threads while a
    /// thread per group delivers numbered messages to it. Each member
    /// gets exactly the messages delivered while it was in, each once and
    /// in delivery order: none after its `leave` returned, none lost by a
    /// join racing with the removal of the emptied group; afterwards
    /// `members`, `groups_of` and the group count agree with what each
    /// session is in, empty groups are gone, and the backplane heard each
    /// group open and close in turn.
    #[test]
    fn concurrent_joins_leaves_and_fan_outs_keep_every_member_s_messages(
        changes in proptest::collection::vec(
            proptest::collection::vec(membership(), 1..60),
            MODEL_OWNERS,
        ),
    ) {
        let backplane = Arc::new(OpenGroups::default());
        let mut config = HubConfig::default();
        config.backpressure.max_pending_send_bytes = 1 << 20;
        let hub = Hub::with_backplane(config, Instant::now(), backplane.clone()).unwrap();
        let sessions: Vec<Vec<Arc<Outbox>>> = (0..MODEL_OWNERS)
            .map(|_| (0..MODEL_SESSIONS).map(|_| connect(&hub)).collect())
            .collect();
        let progress = Progress::default();
        let start = std::sync::Barrier::new(MODEL_OWNERS + MODEL_GROUPS);
        let stretches: Vec<Vec<Vec<Stretch>>> = std::thread::scope(|scope| {
            for group in 0..MODEL_GROUPS {
                let (hub, progress, start) = (&hub, &progress, &start);
                scope.spawn(move || {
                    start.wait();
                    for seq in 1..=MODEL_DELIVERIES {
                        let mut message = vec![u8::try_from(group).unwrap()];
                        message.extend_from_slice(&seq.to_le_bytes());
                        progress.started[group].store(seq.into(), Ordering::SeqCst);
                        hub.deliver_group(&format!("g{group}"), &Message::from(message), None);
                        progress.done[group].store(seq.into(), Ordering::SeqCst);
                    }
                });
            }
            let owners: Vec<_> = sessions
                .iter()
                .zip(&changes)
                .map(|(mine, changes)| {
                    let (hub, progress, start) = (&hub, &progress, &start);
                    scope.spawn(move || {
                        start.wait();
                        change_memberships(hub, mine, changes, progress)
                    })
                })
                .collect();
            owners.into_iter().map(|owner| owner.join().unwrap()).collect()
        });

        let last = u64::from(MODEL_DELIVERIES);
        let mut in_group = vec![Vec::new(); MODEL_GROUPS];
        for (session, stretches) in sessions.iter().flatten().zip(stretches.iter().flatten()) {
            let mut got: Vec<Vec<u64>> = vec![Vec::new(); MODEL_GROUPS];
            for message in drain_all(session) {
                let message = message.as_bytes();
                let group = usize::from(message[0]);
                let seq = u32::from_le_bytes(message[1..5].try_into().unwrap());
                got[group].push(seq.into());
            }
            for (group, got) in got.iter().enumerate() {
                let mine: Vec<_> = stretches.iter().filter(|s| s.group == group).collect();
                proptest::prop_assert!(
                    got.windows(2).all(|w| w[0] < w[1]),
                    "{} got g{group}'s messages out of order or twice: {got:?}", session.id()
                );
                for &seq in got {
                    proptest::prop_assert!(
                        mine.iter().any(|s| s.allows(seq)),
                        "{} got g{group}'s #{seq} outside its membership {mine:?}", session.id()
                    );
                }
                for seq in 1..=last {
                    if mine.iter().any(|s| s.requires(seq, last)) {
                        proptest::prop_assert!(
                            got.binary_search(&seq).is_ok(),
                            "{} lost g{group}'s #{seq} in {mine:?}", session.id()
                        );
                    }
                }
                if mine.iter().any(|s| s.left.is_none()) {
                    in_group[group].push(session.id());
                }
            }
            let expected: Vec<String> = (0..MODEL_GROUPS)
                .filter(|&g| stretches.iter().any(|s| s.group == g && s.left.is_none()))
                .map(|g| format!("g{g}"))
                .collect();
            proptest::prop_assert_eq!(hub.groups_of(session.id()), expected);
        }
        let mut open = Vec::new();
        for (group, mut ids) in in_group.into_iter().enumerate() {
            ids.sort_unstable();
            let name = format!("g{group}");
            proptest::prop_assert_eq!(hub.members(&name), ids.clone());
            proptest::prop_assert_eq!(hub.member_count(&name), ids.len());
            if !ids.is_empty() {
                open.push(name);
            }
        }
        proptest::prop_assert_eq!(hub.group_names(), open.clone());
        proptest::prop_assert_eq!(hub.group_count(), open.len());
        let heard = backplane.0.lock().unwrap().clone();
        for group in 0..MODEL_GROUPS {
            let name = format!("g{group}");
            let turns: Vec<bool> = heard
                .iter()
                .filter(|change| change[1..] == name)
                .map(|change| change.starts_with('+'))
                .collect();
            proptest::prop_assert!(
                turns.iter().enumerate().all(|(i, &opened)| opened == (i % 2 == 0)),
                "{name} opened and closed out of turn: {turns:?}"
            );
            proptest::prop_assert_eq!(turns.len() % 2 == 1, open.contains(&name));
        }
    }
}
