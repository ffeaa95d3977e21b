//! One connection's user-space work per echoed message, without sockets:
//! a [`LinkDriver`] takes a batch of 16 requests of 32 bytes (one read's worth),
//! hands out the messages, queues each back, frames the batch for the
//! writer (`poll_transmit`) and goes idle (`poll_transmit` again with
//! nothing to write), as the adapters' connection tasks do per read.
//!
//! For length-prefixed framing and for WebSocket (masked client frames in,
//! server frames out), each with `release_after` at its default (1 s: a
//! busy connection keeps its buffers between bursts) and at zero (the
//! buffers go back at every idle moment and are allocated again for the
//! next burst). Divide by 16 (or read the element throughput) for the cost
//! per message.
//!
//! `link_echo_64k`: one 64 KiB WebSocket message arriving in 16 KiB reads,
//! echoed, either read through a per-thread buffer and copied in
//! (`handle_input`, what every read did before session 5) or read straight
//! into the connection's input buffer (`input_buffer`). A `memcpy` from a
//! source buffer stands in for the kernel's copy in both.
//!
//! `cargo bench -p storm-benches --bench link`

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use storm_host::hub::{Hub, HubConfig, Outbox};
use storm_host::link::{LinkConfig, LinkDriver, LinkEvent, Protocol};
use storm_proto::framing::LengthPrefixFramer;
use storm_proto::ws::frame::{FrameHeader, OpCode, encode_frame};
use storm_proto::ws::{Config, Connection, Side};

const BATCH: usize = 16;
const SIZE: usize = 32;

/// A read's worth of requests in `proto`'s wire format.
fn batch(proto: &str) -> Vec<u8> {
    let payload = [b'x'; SIZE];
    let one = match proto {
        "lp" => {
            let mut frame = u32::try_from(SIZE).unwrap().to_be_bytes().to_vec();
            frame.extend_from_slice(&payload);
            frame
        }
        _ => {
            let mut header = FrameHeader::new(OpCode::Binary, 0);
            header.mask = Some([1, 2, 3, 4]);
            let mut out = BytesMut::new();
            encode_frame(header, &payload, &mut out);
            out.to_vec()
        }
    };
    one.repeat(BATCH)
}

/// A connection's outbox (where the application sends) and its driver.
struct Conn {
    outbox: Arc<Outbox>,
    link: LinkDriver,
}

fn link(proto: &str, release_after: Duration, hub: &Hub, now: Instant) -> Conn {
    let protocol = match proto {
        "lp" => Protocol::Framed(Box::new(LengthPrefixFramer::default())),
        _ => Protocol::WebSocket(Box::new(Connection::new(Side::Server, Config::default()))),
    };
    let session = hub.register(hub.try_admit().unwrap(), now).unwrap();
    let config = LinkConfig::default().with_release_after(release_after);
    let link = LinkDriver::new(Arc::clone(&session), protocol, &config, now).unwrap();
    Conn {
        outbox: session,
        link,
    }
}

/// One read's batch through the link and back out; the bytes written.
fn echo_batch(conn: &mut Conn, input: &[u8], now: Instant, out: &mut Vec<Bytes>) -> usize {
    let link = &mut conn.link;
    link.handle_input(now, input);
    while let Some(event) = link.poll_event(now) {
        if let LinkEvent::Message(message) = event {
            let _ = conn.outbox.send(message);
        }
    }
    let written = link.poll_transmit(now, out, 64 * 1024).bytes;
    out.clear();
    // The writer's idle poll, once the batch is written.
    let _ = link.poll_transmit(now, out, 64 * 1024);
    written
}

fn echo(c: &mut Criterion) {
    let mut group = c.benchmark_group("link_echo_batch");
    group.throughput(Throughput::Elements(BATCH as u64));
    for proto in ["lp", "ws"] {
        let input = batch(proto);
        for (name, release_after) in [
            ("keep_1s", LinkConfig::default().release_after),
            ("release_0", Duration::ZERO),
        ] {
            let now = Instant::now();
            let hub = Hub::new(HubConfig::default(), now).unwrap();
            let mut conn = link(proto, release_after, &hub, now);
            let mut out = Vec::new();
            group.bench_with_input(BenchmarkId::new(name, proto), &input, |b, input| {
                b.iter(|| black_box(echo_batch(&mut conn, input, now, &mut out)));
            });
        }
    }
    group.finish();
}

const LARGE: usize = 64 * 1024;
const READ: usize = 16 * 1024;

/// One 64 KiB message through the link, read `READ` bytes at a time, and
/// back out; the bytes written.
fn echo_large(
    conn: &mut Conn,
    input: &[u8],
    in_place: bool,
    read_buffer: &mut [u8],
    now: Instant,
    out: &mut Vec<Bytes>,
) -> usize {
    let link = &mut conn.link;
    let mut rest = input;
    let mut written = 0;
    while !rest.is_empty() {
        let direct = in_place
            .then(|| {
                let mut room = link.input_buffer()?;
                let n = rest.len().min(room.remaining_mut()).min(READ);
                room.put_slice(&rest[..n]);
                link.input_filled(now, n);
                Some(n)
            })
            .flatten();
        let n = match direct {
            Some(n) => n,
            None => {
                let n = rest.len().min(READ);
                read_buffer[..n].copy_from_slice(&rest[..n]);
                link.handle_input(now, &read_buffer[..n]);
                n
            }
        };
        rest = &rest[n..];
        while let Some(event) = link.poll_event(now) {
            if let LinkEvent::Message(message) = event {
                let _ = conn.outbox.send(message);
            }
        }
        written += link.poll_transmit(now, out, 256 * 1024).bytes;
        out.clear();
    }
    written
}

fn echo_64k(c: &mut Criterion) {
    let mut group = c.benchmark_group("link_echo_64k");
    group.throughput(Throughput::Bytes(LARGE as u64));
    let mut header = FrameHeader::new(OpCode::Binary, 0);
    header.mask = Some([1, 2, 3, 4]);
    let mut frame = BytesMut::new();
    encode_frame(header, &vec![b'x'; LARGE], &mut frame);
    for (name, in_place) in [("copied", false), ("in_place", true)] {
        let now = Instant::now();
        let hub = Hub::new(HubConfig::default(), now).unwrap();
        let mut conn = link("ws", LinkConfig::default().release_after, &hub, now);
        let mut read_buffer = vec![0u8; READ];
        let mut out = Vec::new();
        group.bench_function(name, |b| {
            b.iter(|| {
                black_box(echo_large(
                    &mut conn,
                    &frame,
                    in_place,
                    &mut read_buffer,
                    now,
                    &mut out,
                ))
            });
        });
    }
    group.finish();
}

criterion_group!(benches, echo, echo_64k);
criterion_main!(benches);
