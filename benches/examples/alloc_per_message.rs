//! Allocations on the per-message path, counted: for each wire format and
//! message size, through a bare `Link` and through a `LinkDriver` with its
//! hub outbox (see `storm_benches::per_message`), the allocations of the
//! first batch of a fresh connection (its buffers growing), of the first
//! batch after an idle connection returned its buffers, and of ten warm
//! batches against the messages they carried. Deterministic: the counts
//! do not depend on the machine.
//!
//! `cargo run --release -p storm-benches --example alloc_per_message`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use storm_benches::per_message::{Echo, Wire};

struct Counting;

/// Allocations and reallocations so far (one thread runs here).
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
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

/// Allocations `f` makes.
fn counted<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let value = f();
    (value, ALLOCATIONS.load(Ordering::Relaxed) - before)
}

/// Warm batches measured per path and size.
const MEASURED: usize = 10;

fn main() {
    println!(
        "| path | wire | messages per batch × size | messages per read | first batch | after idle release | warm: allocations / messages |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (path, build) in [
        ("Link", Echo::link as fn(Wire, Instant) -> _),
        ("LinkDriver + outbox", Echo::driver),
    ] {
        for (count, size, per_read) in [(100, 32, 100), (100, 32, 1), (4, 64 * 1024, 4)] {
            for wire in Wire::ALL {
                if per_read == 1 && wire == Wire::Raw {
                    continue; // raw always takes a read per message
                }
                let start = Instant::now();
                let reads = wire.reads(size, count, per_read);
                let mut echo = build(wire, start).expect("default configuration");
                let expected = count * wire.encoded_len(size);
                let (echoed, first) = counted(|| echo.batch(start, &reads));
                assert_eq!((echoed.messages, echoed.bytes), (count, expected));
                // The first idle moment returned the buffers; later ones
                // keep them for `release_after` (1 s) at this clock.
                let later = start + Duration::from_secs(2);
                echo.batch(later, &reads); // idles at `later`: returns them
                let (_, released) = counted(|| echo.batch(later, &reads));
                for _ in 0..3 {
                    echo.batch(later, &reads);
                }
                let ((), warm) = counted(|| {
                    for _ in 0..MEASURED {
                        assert_eq!(echo.batch(later, &reads), echoed);
                    }
                });
                let messages = MEASURED * count;
                let per_read = if wire == Wire::Raw { 1 } else { per_read };
                println!(
                    "| {path} | {} | {count} × {size} B | {per_read} | {first} | {released} | {warm} / {messages} |",
                    wire.name()
                );
            }
        }
    }
}
