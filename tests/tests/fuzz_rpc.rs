//! Replays the `rpc_envelope` fuzz corpus, every file and every prefix of
//! it, through the fuzz driver (so the corpus runs on stable, in CI), and
//! checks that the seeds reach the paths they were written for.

use storm_tests::fuzz::corpus::{corpus, replay};
use storm_tests::fuzz::rpc::{Outcome, rpc_envelope, rpc_envelope_outcome};

#[test]
fn rpc_envelope_corpus_replays() {
    replay("rpc_envelope", rpc_envelope);
}

#[test]
fn seeds_reach_their_paths() {
    let files = corpus("rpc_envelope");
    let outcome = |name: &str| -> Outcome {
        let (_, data) = files
            .iter()
            .find(|(file, _)| file == name)
            .expect("seed file");
        rpc_envelope_outcome(data)
    };
    let transcript = outcome("seed-transcript");
    assert_eq!(transcript.decoded, 6);
    assert_eq!((transcript.requests, transcript.cancels), (2, 1));
    assert_eq!(transcript.answered, 3);

    let compressed = outcome("seed-compressed");
    assert_eq!(compressed.requests, 1, "the compressed request inflated");
    assert_eq!(compressed.answered, 2, "one inflated response, one corrupt");

    let overload = outcome("seed-overload");
    assert_eq!((overload.requests, overload.refused), (3, 2));

    let malformed = outcome("seed-malformed");
    assert_eq!(malformed.decoded, 0);
    assert_eq!(malformed.answered, 0);
}
