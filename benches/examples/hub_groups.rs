//! What a room's fan-out costs the other rooms, and what one costs itself.
//!
//! `wait`: one thread fans a message out to a group of 10,000 sessions
//! over and over (`Hub::deliver_group`, the outboxes drained between
//! rounds); the main thread meanwhile, once during each fan-out (it starts
//! when the fan-out thread says one is under way), has one session join
//! and leave another group, and prints how long each join + leave took
//! (percentiles over all of them). Bounded: 300 pairs or 60 s, and the
//! fan-out thread stops when they are done. Wall clock, on two threads
//! that must both run: use a machine with two free cores, and alternate
//! with another build.
//!
//! `deliver ROUNDS MEMBERS`: `ROUNDS` fan-outs of one small message to a
//! group of `MEMBERS` sessions, each outbox drained after each round. For
//! instructions per fan-out, count two round numbers under callgrind and
//! take the difference (start-up and joins cancel out):
//!
//! ```text
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/hub_groups deliver 2000 1
//! ```
//!
//! `cargo run --release -p storm-benches --example hub_groups -- wait`

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use storm_host::hub::{Hub, HubConfig, Outbox};
use storm_proto::Message;

/// Members of the fanned-out group in `wait`.
const BIG: usize = 10_000;
/// Join + leave pairs timed in `wait`, each begun during another fan-out.
const PAIRS: usize = 300;

fn hub_with_group(members: usize) -> (Hub, Vec<Arc<Outbox>>) {
    let now = Instant::now();
    let hub = Hub::new(HubConfig::default(), now).expect("default config");
    let sessions: Vec<_> = (0..members)
        .map(|_| {
            let session = hub
                .register(hub.try_admit().expect("no limit"), now)
                .expect("own permit");
            hub.join(session.id(), "big").expect("join");
            session
        })
        .collect();
    (hub, sessions)
}

fn drain(sessions: &[Arc<Outbox>], batch: &mut Vec<Message>) {
    for session in sessions {
        batch.clear();
        let drained = session.drain_into(batch, usize::MAX);
        session.on_written(drained.bytes);
    }
}

fn wait() {
    let (hub, sessions) = hub_with_group(BIG);
    let other = hub
        .register(hub.try_admit().expect("no limit"), Instant::now())
        .expect("own permit");
    let done = Arc::new(AtomicBool::new(false));
    // Set while a fan-out is under way: each timed pair starts then.
    let fanning_out = Arc::new(AtomicBool::new(false));
    let fan_outs = Arc::new(AtomicU64::new(0));
    let fan_out = {
        let (hub, done) = (hub.clone(), Arc::clone(&done));
        let (fanning_out, fan_outs) = (Arc::clone(&fanning_out), Arc::clone(&fan_outs));
        std::thread::spawn(move || {
            let message = Message::from(vec![0x5a; 32]);
            let mut batch = Vec::new();
            let mut busy = Duration::ZERO;
            while !done.load(Ordering::SeqCst) {
                let start = Instant::now();
                fanning_out.store(true, Ordering::SeqCst);
                let report = hub.deliver_group("big", &message, None);
                fanning_out.store(false, Ordering::SeqCst);
                busy += start.elapsed();
                assert_eq!(report.delivered, BIG);
                fan_outs.fetch_add(1, Ordering::Relaxed);
                drain(&sessions, &mut batch);
            }
            busy
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut waits = Vec::with_capacity(PAIRS);
    while waits.len() < PAIRS && Instant::now() < deadline {
        // Start the pair while a fan-out is under way.
        while !fanning_out.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::hint::spin_loop();
        }
        let start = Instant::now();
        assert!(hub.join(other.id(), "other").expect("join"));
        assert!(hub.leave(other.id(), "other"));
        waits.push(start.elapsed());
        // The next pair in another fan-out.
        let now = fan_outs.load(Ordering::Relaxed);
        while fan_outs.load(Ordering::Relaxed) == now && Instant::now() < deadline {
            std::hint::spin_loop();
        }
    }
    done.store(true, Ordering::SeqCst);
    let busy = fan_out.join().expect("fan-out thread");
    let rounds = fan_outs.load(Ordering::Relaxed);
    waits.sort_unstable();
    let at = |q: f64| waits[((waits.len() - 1) as f64 * q) as usize];
    println!(
        "join+leave of another group begun during a fan-out to {BIG}: {} pairs, \
         p50 {:?} p90 {:?} p99 {:?} max {:?}; {rounds} fan-outs, {:?} each",
        waits.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0),
        busy / u32::try_from(rounds.max(1)).unwrap_or(u32::MAX),
    );
}

fn deliver(rounds: usize, members: usize) {
    let (hub, sessions) = hub_with_group(members);
    let message = Message::from(vec![0x5a; 32]);
    let mut batch = Vec::new();
    for _ in 0..rounds {
        let report = hub.deliver_group("big", &message, None);
        assert_eq!(std::hint::black_box(report).delivered, members);
        drain(&sessions, &mut batch);
    }
    println!("{rounds} fan-outs to {members} members");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize| -> usize {
        args.get(i)
            .and_then(|arg| arg.parse().ok())
            .unwrap_or_else(|| panic!("usage: hub_groups wait | deliver ROUNDS MEMBERS"))
    };
    match args.first().map(String::as_str) {
        Some("wait") => wait(),
        Some("deliver") => deliver(number(1), number(2)),
        _ => panic!("usage: hub_groups wait | deliver ROUNDS MEMBERS"),
    }
}
