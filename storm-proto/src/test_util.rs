//! Helpers shared by the crate's unit tests.
//!
//! # Test layout
//!
//! - A file's unit tests live at its bottom, in `#[cfg(test)] mod tests {}`.
//! - When they outgrow it (several hundred lines), the module becomes a
//!   directory, `foo/mod.rs`, and its tests move to `foo/tests.rs`, declared
//!   `#[cfg(test)] mod tests;` at the end of `foo/mod.rs`. The tests of a
//!   directory module that only re-exports (`rpc`) live there too: they drive
//!   its parts together through the module's API. No `#[path]`.
//! - A helper used by the tests of one module lives in that module
//!   (`framing/test_util.rs`); one used across modules lives here.
//! - `tests/*.rs` are integration tests: the public API only; their shared
//!   helpers live in `tests/common/mod.rs`.
//!
//! The same rule holds in storm-host.

use std::time::Instant;

/// The origin of virtual time: tests pass `epoch() + offset` as `now`, and
/// only the offsets matter. The crate bans clock reads (`.clippy.toml`); this
/// is the one its unit tests make.
#[allow(clippy::disallowed_methods)]
pub(crate) fn epoch() -> Instant {
    Instant::now()
}
