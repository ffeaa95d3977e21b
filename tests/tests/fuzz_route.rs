//! Replays the `route_handshake` fuzz corpus, every file and every prefix of
//! it, through the fuzz driver (so the corpus runs on stable, in CI).

use storm_tests::fuzz::corpus::{corpus, replay};
use storm_tests::fuzz::route::{route_handshake, route_handshake_outcome};

#[test]
fn route_handshake_corpus_replays() {
    replay("route_handshake", route_handshake);
}

#[test]
fn seeds_reach_their_states() {
    let files = corpus("route_handshake");
    let outcome = |name: &str| {
        let (_, data) = files
            .iter()
            .find(|(file, _)| file == name)
            .expect("seed file");
        route_handshake_outcome(data)
    };
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
