//! Micro-benchmarks of the broker core: frame encode and decode (small and
//! 64 KiB payloads; decoding cuts payloads out without copying) and router
//! throughput (a streamed request forwarded frame by frame to a provider
//! and its response routed back).
//!
//! `cargo bench -p storm-benches --bench broker`

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use storm_proto::broker::{
    ChannelId, ClientId, ConnId, Frame, FrameCodec, FrameType, Registration, RequestId, Role,
    Router, RouterConfig, Streamer,
};

const SIZES: [usize; 2] = [32, 64 << 10];

fn frame(size: usize, n: u8) -> Frame {
    Frame::new(
        FrameType::Chunk,
        RequestId::from_bytes([n; 16]),
        Bytes::from(vec![b'x'; size]),
    )
}

fn encode(c: &mut Criterion) {
    let codec = FrameCodec::default();
    let mut group = c.benchmark_group("broker_encode");
    for size in SIZES {
        let f = frame(size, 1);
        let mut out = BytesMut::with_capacity(size + 24);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("frame", size), &f, |b, f| {
            b.iter(|| {
                out.clear();
                codec.encode(black_box(f), &mut out).unwrap();
                black_box(out.len())
            });
        });
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let codec = FrameCodec::default();
    let mut group = c.benchmark_group("broker_decode");
    for (size, count) in [(32usize, 1000usize), (64 << 10, 16)] {
        let mut wire = BytesMut::new();
        for n in 0..count {
            codec.encode(&frame(size, n as u8), &mut wire).unwrap();
        }
        let wire = wire.freeze();
        group.throughput(Throughput::Bytes((size * count) as u64));
        group.bench_with_input(
            BenchmarkId::new(format!("{count}_frames"), size),
            &wire,
            |b, wire| {
                b.iter(|| {
                    let mut buf = BytesMut::from(&wire[..]);
                    let mut n = 0;
                    while let Some(f) = codec.decode(&mut buf).unwrap() {
                        n += f.payload.len();
                    }
                    black_box(n)
                });
            },
        );
    }
    group.finish();
}

fn register(r: &mut Router, conn: u64, role: Role, now: Instant) {
    r.handle_connect(ConnId(conn)).unwrap();
    let reg = Registration {
        role,
        client_id: ClientId::from_bytes([conn as u8; 16]),
        channel_id: ChannelId::from_bytes([1; 16]),
        timeout: Duration::ZERO,
    };
    let start = Frame::new(FrameType::Start, RequestId::default(), reg.encode());
    r.handle_frame(ConnId(conn), start, now).unwrap();
    while r.poll_transmit(ConnId(conn)).is_some() {}
}

fn router(c: &mut Criterion) {
    let mut group = c.benchmark_group("broker_router");
    // One consumer, four providers; each iteration streams one request of
    // `size` bytes in 16 KiB chunks and routes a small response back.
    for size in [0usize, 256 << 10] {
        let now = Instant::now();
        let mut r = Router::new(RouterConfig::default()).unwrap();
        register(&mut r, 0, Role::Consumer, now);
        for p in 1..=4 {
            register(&mut r, p, Role::Provider, now);
        }
        while r.poll_event().is_some() {}
        let payload = Bytes::from(vec![b'y'; size]);
        let response = Bytes::from_static(b"ok");
        let mut next = 0u128;
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::new("request_response", size), &size, |b, _| {
            b.iter(|| {
                next += 1;
                let id = RequestId::from_bytes(next.to_be_bytes());
                let streamer = Streamer::new(id, Bytes::new(), payload.clone(), 16 << 10).unwrap();
                for f in streamer {
                    r.handle_frame(ConnId(0), f, now).unwrap();
                }
                // Round-robin: the request went to exactly one provider.
                let mut to = None;
                for p in (1..=4).map(ConnId) {
                    while let Some(f) = r.poll_transmit(p) {
                        to = Some((p, f.request_id));
                    }
                }
                let (provider, rid) = to.unwrap();
                let reply = Frame::new(FrameType::Response, rid, response.clone());
                r.handle_frame(provider, reply, now).unwrap();
                while r.poll_event().is_some() {}
                black_box(r.poll_transmit(ConnId(0)).unwrap())
            });
        });
    }
    group.finish();
}

criterion_group!(benches, encode, decode, router);
criterion_main!(benches);
