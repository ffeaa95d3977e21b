//! Replays the committed fuzz corpora of the broker targets
//! (`fuzz/corpus/broker_*`) through the drivers: every file, and every
//! prefix of each seed, so truncated inputs are covered too.

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

#[test]
fn broker_framer_corpus() {
    replay("broker_framer", broker_framer);
}
