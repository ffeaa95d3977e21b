//! Replays the `backplane_envelope` fuzz corpus, every file and every prefix
//! of it, through the fuzz driver (so the corpus runs on stable, in CI), and
//! checks that the seeds reach the paths they were written for.

use storm_tests::fuzz::backplane::{Outcome, backplane_envelope, backplane_envelope_outcome};
use storm_tests::fuzz::corpus::{corpus, replay};

#[test]
fn backplane_envelope_corpus_replays() {
    replay("backplane_envelope", backplane_envelope);
}

#[test]
fn seeds_reach_their_paths() {
    let files = corpus("backplane_envelope");
    let outcome = |name: &str| -> Outcome {
        let (_, data) = files
            .iter()
            .find(|(file, _)| file == name)
            .expect("seed file");
        backplane_envelope_outcome(data)
    };
    assert_eq!(
        outcome("seed-rooms"),
        Outcome {
            decoded: 9,
            delivered: 7,
            own: 1,
            duplicates: 1,
            gaps: 1,
            epoch_changes: 1,
        }
    );
    assert_eq!(
        outcome("seed-echo"),
        Outcome {
            decoded: 4,
            delivered: 2,
            own: 2,
            duplicates: 1,
            gaps: 0,
            epoch_changes: 0,
        }
    );
    // A node-to-node envelope (whispers, kicks): no position, delivered.
    assert_eq!(
        outcome("seed-node"),
        Outcome {
            decoded: 1,
            delivered: 1,
            ..Outcome::default()
        }
    );
    assert_eq!(outcome("seed-malformed"), Outcome::default());
}
