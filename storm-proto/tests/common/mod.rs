//! Helpers shared by storm-proto's integration tests (each `tests/*.rs`
//! declares `mod common;`).

use std::time::Instant;

/// The origin of virtual time: tests pass `epoch() + offset` as `now`, and
/// only the offsets matter. The crate bans clock reads (`.clippy.toml`); this
/// is the one its integration tests make.
#[allow(clippy::disallowed_methods)]
pub(crate) fn epoch() -> Instant {
    Instant::now()
}
