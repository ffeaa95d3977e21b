//! Replays the `route_handshake` fuzz corpus, every file and every prefix of
//! it, through the fuzz driver (so the corpus runs on stable, in CI).

use std::path::Path;

use storm_tests::fuzz_route::{route_handshake, route_handshake_outcome};

#[test]
fn route_handshake_corpus_replays() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/route_handshake");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory") {
        let data = std::fs::read(entry.expect("dir entry").path()).expect("corpus file");
        for end in 0..=data.len() {
            route_handshake(&data[..end]);
        }
        files += 1;
    }
    assert!(files > 0, "empty corpus at {}", dir.display());
}

#[test]
fn seeds_reach_their_states() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/route_handshake");
    let outcome =
        |name: &str| route_handshake_outcome(&std::fs::read(dir.join(name)).expect("seed file"));
    assert!(outcome("seed-client-transcript").server_ready);
    assert!(outcome("seed-server-transcript").client_ready);
    for failing in [
        "seed-fail-policy",
        "seed-out-of-order",
        "seed-malformed",
        "seed-too-many-routes",
        "seed-long-name",
        "seed-timeout",
        "seed-peer-error",
    ] {
        let o = outcome(failing);
        assert!(o.server_failed && !o.server_ready, "{failing}: {o:?}");
    }
}
