//! Concurrent joins, leaves, broadcasts and sends from several std threads,
//! with a writer thread draining every outbox: nothing deadlocks, no
//! message is lost or counted twice, and backpressure is fully released.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::task::{Context, Poll};
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use storm_host::hub::{Hub, HubConfig, Outbox, SendOutcome, thread_waker};
use storm_proto::Message;
use storm_proto::backpressure::SlowConsumerPolicy;

const SESSIONS: usize = 24;
const SENDERS: usize = 4;
const OPS: usize = 3_000;
const LEN: usize = 100;
const GROUPS: [&str; 3] = ["red", "green", "blue"];

#[derive(Default)]
struct Tally {
    queued: AtomicU64,
    dropped: AtomicU64,
    waits: AtomicU64,
}

fn run() {
    let mut config = HubConfig::default();
    // Small limits so backpressure, waiting and dropping all happen.
    config.backpressure.max_pending_send_bytes = 10 * LEN;
    config.broadcast_overflow_bytes = 5 * LEN;
    let hub = Hub::new(config, Instant::now()).unwrap();
    let sessions: Vec<Arc<Outbox>> = (0..SESSIONS)
        .map(|i| {
            let s = hub
                .register(hub.try_admit().unwrap(), Instant::now())
                .unwrap();
            if i % 3 == 1 {
                s.set_policy(SlowConsumerPolicy::Drop);
            }
            s
        })
        .collect();
    let tally = Arc::new(Tally::default());
    let done = Arc::new(AtomicBool::new(false));

    // The writer: drains every outbox and reports the bytes written. It
    // starts once a sender has waited (or all are done), so a waiting
    // sender is certain whatever the scheduling: with nothing drained, a
    // `Wait` session fills after ten sends.
    let writer = {
        let sessions = sessions.clone();
        let done = Arc::clone(&done);
        let tally = Arc::clone(&tally);
        thread::Builder::new()
            .name("writer".into())
            .spawn(move || {
                let mut batch = Vec::new();
                let mut written = 0u64;
                loop {
                    let finished = done.load(Ordering::Acquire);
                    if !finished && tally.waits.load(Ordering::Relaxed) == 0 {
                        thread::yield_now();
                        continue;
                    }
                    let mut idle = true;
                    for s in &sessions {
                        batch.clear();
                        let drained = s.drain_into(&mut batch, 4 * LEN);
                        assert_eq!(batch.iter().map(Message::len).sum::<usize>(), drained.bytes);
                        s.on_written(drained.bytes);
                        written += drained.messages as u64;
                        idle &= drained.is_idle();
                    }
                    // Senders are done: drain until every outbox is empty.
                    if finished && idle {
                        return written;
                    }
                    thread::yield_now();
                }
            })
            .unwrap()
    };

    let senders: Vec<_> = (0..SENDERS)
        .map(|t| {
            let hub = hub.clone();
            let sessions = sessions.clone();
            let tally = Arc::clone(&tally);
            thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(t as u64);
                let message = Message::from(vec![t as u8; LEN]);
                let waker = thread_waker(thread::current());
                let mut cx = Context::from_waker(&waker);
                for _ in 0..OPS {
                    let s = &sessions[rng.random_range(0..SESSIONS)];
                    let group = GROUPS[rng.random_range(0..GROUPS.len())];
                    match rng.random_range(0..10) {
                        0..=1 => {
                            let _ = hub.join(s.id(), group).unwrap();
                        }
                        2 => {
                            hub.leave(s.id(), group);
                        }
                        3 => {
                            let r = hub.broadcast_group(group, &message, Some(s.id()));
                            tally
                                .queued
                                .fetch_add(r.delivered as u64, Ordering::Relaxed);
                            tally.dropped.fetch_add(r.dropped as u64, Ordering::Relaxed);
                            assert_eq!(r.disconnected + r.closed, 0);
                        }
                        4 => {
                            let r = hub.broadcast(&message, None);
                            tally
                                .queued
                                .fetch_add(r.delivered as u64, Ordering::Relaxed);
                            tally.dropped.fetch_add(r.dropped as u64, Ordering::Relaxed);
                        }
                        _ => {
                            // A send; under Wait, block until writable and retry.
                            let mut pending = message.clone();
                            loop {
                                match s.send(pending) {
                                    SendOutcome::Queued => {
                                        tally.queued.fetch_add(1, Ordering::Relaxed);
                                        break;
                                    }
                                    SendOutcome::Dropped(_) => {
                                        tally.dropped.fetch_add(1, Ordering::Relaxed);
                                        break;
                                    }
                                    SendOutcome::Wait(back) => {
                                        pending = back;
                                        tally.waits.fetch_add(1, Ordering::Relaxed);
                                        while s.poll_writable(&mut cx) == Poll::Pending {
                                            thread::park_timeout(Duration::from_millis(50));
                                        }
                                    }
                                    other => panic!("unexpected {other:?}"),
                                }
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for sender in senders {
        sender.join().unwrap();
    }
    done.store(true, Ordering::Release);
    let written = writer.join().unwrap();

    // Accounting: every queued message was drained exactly once, every
    // written byte released, every drop counted once.
    let queued = tally.queued.load(Ordering::Relaxed);
    assert!(queued > 0 && tally.dropped.load(Ordering::Relaxed) > 0);
    assert!(
        tally.waits.load(Ordering::Relaxed) > 0,
        "no sender ever waited"
    );
    assert_eq!(written, queued);
    let metrics = hub.metrics(Instant::now());
    assert_eq!(metrics.messages_sent, queued);
    assert_eq!(metrics.bytes_sent, queued * LEN as u64);
    assert_eq!(
        metrics.messages_dropped,
        tally.dropped.load(Ordering::Relaxed)
    );
    let per_session: u64 = sessions.iter().map(|s| s.metrics().messages_dropped).sum();
    assert_eq!(per_session, metrics.messages_dropped);
    for s in &sessions {
        assert_eq!(
            s.pending_send_bytes(),
            0,
            "session {} still pending",
            s.id()
        );
        assert_eq!(s.queued_messages(), 0);
        assert!(!s.is_backpressured());
    }
    // Disconnecting everyone empties the groups and releases every permit.
    for s in &sessions {
        hub.disconnect(s.id());
    }
    assert_eq!(hub.group_count(), 0);
    assert_eq!(hub.metrics(Instant::now()).connections, 0);
}

#[test]
fn concurrent_use_never_deadlocks_or_loses_accounting() {
    let (tx, rx) = mpsc::channel();
    let worker = thread::spawn(move || {
        run();
        tx.send(()).unwrap();
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(()) => worker.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The scenario panicked: surface its message.
            worker.join().unwrap();
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("deadlock: the scenario did not finish"),
    }
}
