//! Micro-benchmarks of the WebSocket core: frame decode (unmask + UTF-8
//! validation included), masking next to a plain memcpy of the same buffer
//! (the physical limit), and encoding one broadcast frame.
//!
//! `cargo bench -p storm-benches --bench ws`

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use storm_proto::ws::frame::{FrameHeader, OpCode, apply_mask, encode_frame};
use storm_proto::ws::{Config, Connection, Event, Side};

/// `count` masked client text frames of `size` bytes each, back to back.
fn client_frames(size: usize, count: usize) -> Vec<u8> {
    let payload = "a".repeat(size);
    let mut wire = BytesMut::new();
    for i in 0..count {
        let mut header = FrameHeader::new(OpCode::Text, 0);
        header.mask = Some((i as u32).to_le_bytes());
        encode_frame(header, payload.as_bytes(), &mut wire);
    }
    wire.to_vec()
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("ws_decode");
    for (size, count) in [(32usize, 1000usize), (64 << 10, 16)] {
        let wire = client_frames(size, count);
        group.throughput(Throughput::Elements(count as u64));
        group.bench_with_input(
            BenchmarkId::new("server_text_frames", size),
            &wire,
            |b, wire| {
                let mut conn = Connection::new(Side::Server, Config::default());
                b.iter(|| {
                    conn.handle_input(wire);
                    let mut n = 0;
                    while let Some(event) = conn.poll_event().unwrap() {
                        if let Event::Text(text) = event {
                            n += text.len();
                        }
                    }
                    black_box(n)
                });
            },
        );
    }
    group.finish();
}

fn masking(c: &mut Criterion) {
    let mut group = c.benchmark_group("ws_mask");
    for size in [32usize, 1500, 64 << 10] {
        let src = vec![0x5Au8; size];
        let mut dst = vec![0u8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("apply_mask", size), &size, |b, _| {
            b.iter(|| apply_mask(black_box(&mut dst), [1, 2, 3, 4], 0));
        });
        group.bench_with_input(BenchmarkId::new("memcpy", size), &size, |b, _| {
            b.iter(|| black_box(&mut dst).copy_from_slice(black_box(&src)));
        });
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("ws_encode");
    for size in [32usize, 64 << 10] {
        let payload = vec![b'x'; size];
        let mut out = BytesMut::with_capacity(size + 16);
        group.throughput(Throughput::Bytes(size as u64));
        // A broadcast frame is encoded once (server side, unmasked) and its
        // `Bytes` shared by every session.
        group.bench_with_input(
            BenchmarkId::new("broadcast_frame", size),
            &payload,
            |b, payload| {
                b.iter(|| {
                    out.clear();
                    encode_frame(FrameHeader::new(OpCode::Binary, 0), payload, &mut out);
                    black_box(out.split().freeze())
                });
            },
        );
        group.bench_with_input(
            BenchmarkId::new("client_send_masked", size),
            &payload,
            |b, payload| {
                let mut conn = Connection::new(Side::Client, Config::default());
                b.iter(|| {
                    conn.send_binary(payload).unwrap();
                    black_box(conn.poll_transmit())
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, decode, masking, encode);
criterion_main!(benches);
