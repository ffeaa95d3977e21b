//! Decoding small WebSocket frames allocates nothing per frame: payloads are
//! cut out of the input buffer (`split_to` + `freeze`), text is validated in
//! place, and events are handed out one at a time.
//!
//! Counts allocations with a global allocator wrapper; its own test binary,
//! so no other test's allocations are counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use storm_proto::ws::frame::{FrameHeader, OpCode, encode_frame};
use storm_proto::ws::{Config, Connection, Event, Side};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const FRAMES: usize = 1000;

fn batch() -> Vec<u8> {
    let mut wire = bytes::BytesMut::new();
    for i in 0..FRAMES {
        let mut header = FrameHeader::new(OpCode::Text, 0);
        header.mask = Some((i as u32).to_be_bytes());
        encode_frame(header, b"0123456789abcdef0123456789abcdef", &mut wire);
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
    let wire = batch();
    let mut conn = Connection::new(Side::Server, Config::default());
    assert_eq!(decode(&mut conn, &wire), FRAMES); // warm up buffers
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    assert_eq!(decode(&mut conn, &wire), FRAMES);
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert!(
        allocations <= 4,
        "{allocations} allocations for {FRAMES} frames"
    );
}
