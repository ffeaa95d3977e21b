//! Heap bytes per idle WebSocket connection of a storm-tokio `WsServer`
//! echo, counted by a global allocator (RSS also counts allocator slack
//! and thread stacks; this counts only what Storm and tokio allocate).
//!
//! Prints `listening on ws://ADDR`, then every second the live heap, the
//! session count and the allocation sizes that at least one live
//! allocation per session has (so, with 1000 idle sessions open by
//! `loadgen --mode idle`, what each connection holds, and how big each
//! piece is). Bounded: exits after `SECONDS` (default 30).
//!
//! `cargo run --release -p storm-e2e --bin heap_ws -- [ADDR] [SECONDS]`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use storm_host::options::{ServerOptions, WsOptions};
use storm_proto::Message;
use storm_tokio::{Handler, Session, WsServer};

/// The system allocator, counting live bytes, and live allocations by
/// exact size up to `MAX_EXACT` bytes.
struct Counting;

const MAX_EXACT: usize = 8192;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static BY_SIZE: [AtomicUsize; MAX_EXACT + 1] = [const { AtomicUsize::new(0) }; MAX_EXACT + 1];

fn count(size: usize, allocated: bool) {
    let slot = BY_SIZE.get(size);
    if allocated {
        LIVE.fetch_add(size, Ordering::Relaxed);
        slot.map(|n| n.fetch_add(1, Ordering::Relaxed));
    } else {
        LIVE.fetch_sub(size, Ordering::Relaxed);
        slot.map(|n| n.fetch_sub(1, Ordering::Relaxed));
    }
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the counters are only arithmetic on the side.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size(), true);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(layout.size(), false);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(layout.size(), false);
        count(new_size, true);
        // SAFETY: as for `alloc` and `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

struct Echo;

impl Handler for Echo {
    async fn on_message(&self, session: &Session, message: Message) {
        let _ = session.send(message).await;
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(30);
    let server = WsServer::bind(
        ServerOptions::default().with_addr(addr),
        WsOptions::default(),
    )
    .await?;
    println!("heap_ws listening on ws://{}", server.local_addr());
    let handle = server.handle();
    tokio::spawn(server.serve(Echo));
    for _ in 0..seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let sessions = handle.session_count();
        let sizes: Vec<String> = BY_SIZE
            .iter()
            .enumerate()
            .filter_map(|(size, n)| {
                let n = n.load(Ordering::Relaxed);
                (sessions > 0 && n >= sessions).then(|| format!("{size}x{n}"))
            })
            .collect();
        println!(
            "live_heap {} sessions {sessions} per_session_allocations {}",
            LIVE.load(Ordering::Relaxed),
            sizes.join(" ")
        );
    }
    Ok(())
}
