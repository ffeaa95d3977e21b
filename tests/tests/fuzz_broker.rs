//! Replays the committed fuzz corpora of the broker targets
//! (`fuzz/corpus/broker_*`) through the drivers: every file, and every
//! prefix of it, so a truncated input is covered too.

use storm_tests::fuzz_broker::{broker_assembler, broker_frame, broker_router};

fn replay(target: &str, driver: fn(&[u8])) {
    let dir = format!("{}/../fuzz/corpus/{target}", env!("CARGO_MANIFEST_DIR"));
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}"));
    let mut files = 0;
    for entry in entries {
        let path = entry.expect("dir entry").path();
        let data = std::fs::read(&path).expect("corpus file");
        for end in 0..=data.len() {
            driver(&data[..end]);
        }
        files += 1;
    }
    assert!(files > 0, "no corpus files in {dir}");
}

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
