//! The per-message path allocates nothing once its buffers are warm.
//!
//! Decoding small WebSocket frames allocates nothing per frame: payloads
//! are cut out of the input buffer (`split_to` + `freeze`), text is
//! validated in place, and events are handed out one at a time. And a
//! whole echo through a [`Link`] (input → events → [`Link::send`] →
//! [`Link::poll_transmit`], the writer dropping what it wrote, then the
//! writer's idle poll) allocates nothing per message either, for WebSocket
//! (server side, no deflate), length-prefixed and raw framing: the
//! handler here sends back the message it got, which asks for nothing.
//!
//! Counts allocations with a global allocator wrapper, per thread (the
//! tests of this binary run in parallel); its own test binary, so no
//! other test's allocations are counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use storm_proto::framing::{LengthPrefixFramer, RawFramer};
use storm_proto::link::{Link, LinkConfig, LinkEvent, Protocol};
use storm_proto::ws::frame::{FrameHeader, OpCode, encode_frame};
use storm_proto::ws::{Config, Connection, Event, Side};

mod common;
use common::epoch;

struct Counting;

thread_local! {
    /// Allocations (and reallocations) this thread made.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: a thread being torn down has no counter left.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const FRAMES: usize = 1000;

/// Messages per batch in the echo tests: one read's worth at a deep
/// pipeline (issue #16's 100 in flight).
const BATCH: usize = 100;
const SMALL: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

/// `count` masked client frames of `opcode` carrying `payload`.
fn ws_frames(opcode: OpCode, payload: &[u8], count: usize) -> Vec<u8> {
    let mut wire = BytesMut::new();
    for i in 0..count {
        let mut header = FrameHeader::new(opcode, 0);
        header.mask = Some(u32::try_from(i).unwrap_or(0).to_be_bytes());
        encode_frame(header, payload, &mut wire);
    }
    wire.to_vec()
}

fn decode(conn: &mut Connection, wire: &[u8]) -> usize {
    conn.handle_input(wire);
    let mut texts = 0;
    while let Some(event) = conn.poll_event().unwrap() {
        if let Event::Text(text) = event {
            assert_eq!(text.len(), 32);
            texts += 1;
        }
    }
    texts
}

#[test]
fn small_frames_decode_without_per_frame_allocation() {
    let wire = ws_frames(OpCode::Text, SMALL, FRAMES);
    let mut conn = Connection::new(Side::Server, Config::default());
    assert_eq!(decode(&mut conn, &wire), FRAMES); // warm up buffers
    let before = allocations();
    assert_eq!(decode(&mut conn, &wire), FRAMES);
    let allocations = allocations() - before;
    assert!(
        allocations <= 4,
        "{allocations} allocations for {FRAMES} frames"
    );
}

/// Allocations in each step of the per-message path, over one batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Steps {
    /// `handle_input`.
    input: usize,
    /// `poll_event` until `None`.
    events: usize,
    /// `send` of each message, and dropping it.
    send: usize,
    /// `poll_transmit`, the writer dropping what it wrote, and its idle
    /// `poll_transmit`.
    transmit: usize,
}

impl Steps {
    fn total(self) -> usize {
        self.input + self.events + self.send + self.transmit
    }
}

/// When the handler's replies reach the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// At once: each message is framed (and dropped) before the next read.
    AtOnce,
    /// When the writer comes, after every read of the batch: the messages
    /// outlive the reads after theirs, as in a framed link's outbox (or
    /// other sessions' outboxes after a broadcast).
    ByWriter,
}

/// What a link's connection task does with one batch of reads: each of
/// `reads` in, its messages out and echoed (`reply` says when), then
/// everything framed handed to the writer, which writes it and polls
/// again (idle). Returns the messages echoed and the bytes transmitted.
fn echo(
    link: &mut Link,
    now: Instant,
    reads: &[&[u8]],
    reply: Reply,
    out: &mut Vec<Bytes>,
    steps: &mut Steps,
) -> (usize, usize) {
    // The handler's own queue, allocated before counting.
    let mut held = Vec::with_capacity(reads.len() * BATCH);
    let mut messages = 0;
    for read in reads {
        let before = allocations();
        link.handle_input(now, read);
        steps.input += allocations() - before;
        loop {
            let before = allocations();
            let event = link.poll_event(now);
            steps.events += allocations() - before;
            let Some(event) = event else { break };
            let LinkEvent::Message(message) = event else {
                panic!("unexpected {event:?}");
            };
            messages += 1;
            match reply {
                Reply::AtOnce => {
                    let before = allocations();
                    link.send(&message);
                    drop(message);
                    steps.send += allocations() - before;
                }
                Reply::ByWriter => held.push(message),
            }
        }
    }
    let before = allocations();
    for message in held.drain(..) {
        link.send(&message);
    }
    steps.send += allocations() - before;
    let before = allocations();
    let transmit = link.poll_transmit(now, out);
    out.clear(); // written
    let idle = link.poll_transmit(now, out);
    steps.transmit += allocations() - before;
    assert!(!transmit.close && !idle.close && out.is_empty());
    (messages, transmit.bytes)
}

/// Runs `warm_up` batches, then `measured` batches, through a fresh link
/// speaking `protocol`: the allocations of each step of the measured
/// batches. `echoed`: the messages and bytes each batch echoes.
fn measure(
    protocol: Protocol,
    reads: &[&[u8]],
    reply: Reply,
    (warm_up, measured): (usize, usize),
    echoed: (usize, usize),
) -> Steps {
    // One clock reading, all batches at it: the link returns its buffers
    // at the first idle moment (in the warm-up), then keeps them for
    // `release_after`.
    let now = epoch();
    let mut link = Link::new(protocol, &LinkConfig::default(), now).unwrap();
    let mut out = Vec::new();
    for _ in 0..warm_up {
        let mut steps = Steps::default();
        let batch = echo(&mut link, now, reads, reply, &mut out, &mut steps);
        assert_eq!(batch, echoed);
    }
    let mut steps = Steps::default();
    for _ in 0..measured {
        let batch = echo(&mut link, now, reads, reply, &mut out, &mut steps);
        assert_eq!(batch, echoed);
    }
    steps
}

/// One batch, after warming up: replies at once.
fn measure_one(protocol: Protocol, reads: &[&[u8]], echoed: (usize, usize)) -> Steps {
    measure(protocol, reads, Reply::AtOnce, (3, 1), echoed)
}

fn assert_no_allocation(name: &str, steps: Steps) {
    assert_eq!(
        steps.total(),
        0,
        "{name}: allocations per {BATCH} messages, by step: {steps:?}"
    );
}

#[test]
fn websocket_echo_allocates_nothing_per_message() {
    for opcode in [OpCode::Text, OpCode::Binary] {
        let wire = ws_frames(opcode, SMALL, BATCH);
        let conn = Connection::new(Side::Server, Config::default());
        let steps = measure_one(
            Protocol::WebSocket(Box::new(conn)),
            &[&wire],
            (BATCH, BATCH * (2 + SMALL.len())),
        );
        assert_no_allocation(&format!("ws {opcode:?}"), steps);
    }
}

#[test]
fn length_prefixed_echo_allocates_nothing_per_message() {
    let mut wire = Vec::new();
    for _ in 0..BATCH {
        wire.extend_from_slice(&u32::try_from(SMALL.len()).unwrap().to_be_bytes());
        wire.extend_from_slice(SMALL);
    }
    let framer = LengthPrefixFramer::default();
    let steps = measure_one(
        Protocol::Framed(Box::new(framer)),
        &[&wire],
        (BATCH, BATCH * (4 + SMALL.len())),
    );
    assert_no_allocation("lp", steps);
}

/// Raw framing has no boundaries: a message is what one read brought, so
/// the batch is `BATCH` reads of one message each.
#[test]
fn raw_echo_allocates_nothing_per_message() {
    let reads = [&SMALL[..]; BATCH];
    let steps = measure_one(
        Protocol::Framed(Box::new(RawFramer::default())),
        &reads,
        (BATCH, BATCH * SMALL.len()),
    );
    assert_no_allocation("raw", steps);
}

/// The wire bytes of `BATCH` small messages: masked client frames for
/// `Some(opcode)`, length-prefixed frames for `None`.
fn small_frames(opcode: Option<OpCode>) -> Vec<u8> {
    match opcode {
        Some(opcode) => ws_frames(opcode, SMALL, BATCH),
        None => {
            let mut wire = Vec::new();
            for _ in 0..BATCH {
                wire.extend_from_slice(&u32::try_from(SMALL.len()).unwrap().to_be_bytes());
                wire.extend_from_slice(SMALL);
            }
            wire
        }
    }
}

/// A message that outlives the next read pins the input buffer's space
/// behind it, so that read needs a new buffer (and its shared header):
/// those come twice as large each time, up to 16 KiB ahead, so small
/// messages arriving one per read cost two allocations per 16 KiB or so
/// of reads, not two per message.
#[test]
fn messages_held_across_reads_cost_few_allocations() {
    const BATCHES: usize = 10;
    let ws = small_frames(Some(OpCode::Binary));
    let lp = small_frames(None);
    let cases: [(&str, Protocol, &[u8]); 3] = [
        (
            "ws",
            Protocol::WebSocket(Box::new(Connection::new(Side::Server, Config::default()))),
            &ws,
        ),
        (
            "lp",
            Protocol::Framed(Box::new(LengthPrefixFramer::default())),
            &lp,
        ),
        (
            "raw",
            Protocol::Framed(Box::new(RawFramer::default())),
            &SMALL[..],
        ),
    ];
    for (name, protocol, wire) in cases {
        // One message per read.
        let frame = wire.len() / if name == "raw" { 1 } else { BATCH };
        let reads: Vec<&[u8]> = if name == "raw" {
            vec![wire; BATCH]
        } else {
            wire.chunks(frame).collect()
        };
        let sent = BATCH * (frame - usize::from(name == "ws") * 4);
        let steps = measure(
            protocol,
            &reads,
            Reply::ByWriter,
            (BATCHES, BATCHES),
            (BATCH, sent),
        );
        let read = BATCHES * BATCH * frame;
        assert!(
            steps.total() <= 2 * read.div_ceil(8 * 1024),
            "{name}: {steps:?} allocations for {} messages in {read} bytes of reads",
            BATCHES * BATCH
        );
    }
}
