//! Replays the committed fuzz corpora of the broker targets
//! (`fuzz/corpus/broker_*`) through the drivers: every file, and every
//! prefix of each seed, so truncated inputs are covered too; and the router
//! driver on a fixed-seed sweep of random inputs.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use storm_tests::fuzz::broker::{broker_assembler, broker_frame, broker_framer, broker_router};
use storm_tests::fuzz::corpus::replay;

#[test]
fn broker_frame_corpus() {
    replay("broker_frame", broker_frame);
}

#[test]
fn broker_assembler_corpus() {
    replay("broker_assembler", broker_assembler);
}

#[test]
fn broker_router_corpus() {
    replay("broker_router", broker_router);
}

/// The router driver's model checks (no request ends twice or hangs,
/// `next_hop` names where each frame goes) on more interleavings than the
/// seeds hold: a fixed-seed sweep of random operation lists, so plain
/// `cargo test` exercises them without libFuzzer.
#[test]
fn broker_router_random_inputs() {
    let mut rng = StdRng::seed_from_u64(0xb40c);
    for _ in 0..2000 {
        let ops = rng.random_range(0..200);
        let mut data = Vec::with_capacity(ops * 3);
        for _ in 0..ops {
            let [op, a, mut b] = rng.random::<[u8; 3]>();
            if op % 9 == 8 {
                // Short steps of time, so requests live long enough to
                // interleave (the driver's timeout is 1 s).
                b %= 10;
            }
            data.extend([op, a, b]);
        }
        broker_router(&data);
    }
}

#[test]
fn broker_framer_corpus() {
    replay("broker_framer", broker_framer);
}
