//! Broadcast fan-out through the hub: one pre-encoded message (32 bytes and
//! 1 KiB) queued for 10,000 sessions. Only the broadcast is timed; the
//! outboxes are drained between iterations, untimed. Divide the time by
//! 10,000 (or read the element throughput) for the cost per session.
//!
//! Also the per-message counters (`hub_counters`): sessions counting
//! received messages and bytes, on one thread and on two threads at once
//! (each its own session), per counted message. Every session also feeds
//! the hub's totals, so two busy sessions on two cores can contend on them.
//!
//! `cargo bench -p storm-benches --bench hub`

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use storm_host::hub::{Hub, HubConfig, Outbox};
use storm_proto::Message;

const SESSIONS: usize = 10_000;

fn broadcast(c: &mut Criterion) {
    let hub = Hub::new(HubConfig::default(), Instant::now()).unwrap();
    let sessions: Vec<Arc<Outbox>> = (0..SESSIONS)
        .map(|_| {
            hub.register(hub.try_admit().unwrap(), Instant::now())
                .unwrap()
        })
        .collect();
    for s in &sessions {
        hub.join(s.id(), "room").unwrap();
    }
    let mut batch = Vec::with_capacity(16);
    let drain = |batch: &mut Vec<Message>| {
        for s in &sessions {
            batch.clear();
            let drained = s.drain_into(batch, usize::MAX);
            s.on_written(drained.bytes);
        }
    };

    let mut group = c.benchmark_group("hub_broadcast");
    group.throughput(Throughput::Elements(SESSIONS as u64));
    for size in [32usize, 1024] {
        // Encoded once, shared by every outbox.
        let frame = Message::from(vec![0x5a; size]);
        for (name, to_group) in [("all", false), ("group", true)] {
            group.bench_with_input(BenchmarkId::new(name, size), &frame, |b, frame| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let start = Instant::now();
                        let report = if to_group {
                            hub.broadcast_group("room", frame, None)
                        } else {
                            hub.broadcast(frame, None)
                        };
                        total += start.elapsed();
                        assert_eq!(black_box(report).delivered, SESSIONS);
                        drain(&mut batch);
                    }
                    total
                });
            });
        }
    }
    group.finish();
}

/// Messages each thread counts per iteration.
const COUNTED: u64 = 100_000;

fn counters(c: &mut Criterion) {
    let hub = Hub::new(HubConfig::default(), Instant::now()).unwrap();
    let sessions: Vec<Arc<Outbox>> = (0..2)
        .map(|_| {
            hub.register(hub.try_admit().unwrap(), Instant::now())
                .unwrap()
        })
        .collect();
    let count = |session: &Outbox| {
        for _ in 0..COUNTED {
            session.on_read_consumed(32);
            session.on_message_received();
        }
    };
    let mut group = c.benchmark_group("hub_counters");
    for threads in [1usize, 2] {
        group.throughput(Throughput::Elements(COUNTED * threads as u64));
        group.bench_function(BenchmarkId::new("threads", threads), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    std::thread::scope(|scope| {
                        for session in sessions.iter().take(threads) {
                            scope.spawn(|| count(session));
                        }
                    });
                }
                start.elapsed()
            });
        });
    }
    group.finish();
}

criterion_group!(benches, broadcast, counters);
criterion_main!(benches);
