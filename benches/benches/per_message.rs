//! The per-message path (decode → event → handler → encode) without
//! sockets, per message: batches of 100 messages of 32 bytes, and of 4
//! messages of 64 KiB, echoed through a bare `storm_proto::link::Link`
//! (`link/…`) and through `storm_host::link::LinkDriver` with the
//! session's hub outbox (`driver/…`), as `storm_benches::per_message`
//! describes: WebSocket server side (masked client frames in, unmasked
//! frames out, no deflate), length-prefixed and raw. A batch arrives in
//! one read (raw: a read per message, raw has no boundaries); the
//! `…/one-per-read` cases take a read per message for WebSocket and
//! length-prefixed too, as a shallow pipeline does. The element
//! throughput is messages: criterion's time per element is the time per
//! message.
//!
//! Allocations on the same path: the `alloc_per_message` example.
//!
//! `cargo bench -p storm-benches --bench per_message`

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::hint::black_box;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use storm_benches::per_message::{Echo, SetupError, Wire};

type Build = fn(Wire, Instant) -> Result<Echo, SetupError>;

const PATHS: [(&str, Build); 2] = [("link", Echo::link), ("driver", Echo::driver)];

fn per_message(c: &mut Criterion) {
    let mut group = c.benchmark_group("per_message");
    for (count, size) in [(100, 32), (4, 64 * 1024)] {
        group.throughput(Throughput::Elements(count as u64));
        for (path, build) in PATHS {
            for wire in Wire::ALL {
                bench(&mut group, path, build, wire, (count, size), count, "");
            }
        }
    }
    group.throughput(Throughput::Elements(100));
    for (path, build) in PATHS {
        for wire in [Wire::WebSocket, Wire::LengthPrefixed] {
            bench(&mut group, path, build, wire, (100, 32), 1, "/one-per-read");
        }
    }
    group.finish();
}

/// One case: batches of `count` messages of `size` bytes, `per_read` in
/// each read.
fn bench(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    path: &str,
    build: Build,
    wire: Wire,
    (count, size): (usize, usize),
    per_read: usize,
    suffix: &str,
) {
    let reads = wire.reads(size, count, per_read);
    let now = Instant::now();
    let mut echo = build(wire, now).expect("default configuration");
    let expected = count * wire.encoded_len(size);
    assert_eq!(echo.batch(now, &reads).bytes, expected);
    let id = BenchmarkId::new(format!("{path}/{}{suffix}", wire.name()), size);
    group.bench_function(id, |b| b.iter(|| black_box(echo.batch(now, &reads))));
}

criterion_group!(benches, per_message);
criterion_main!(benches);
