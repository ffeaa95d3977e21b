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

use proptest::prelude::*;

/// The origin of virtual time: tests pass `epoch() + offset` as `now`, and
/// only the offsets matter. The crate bans clock reads (`.clippy.toml`); this
/// is the one its unit tests make.
#[allow(clippy::disallowed_methods)]
pub(crate) fn epoch() -> Instant {
    Instant::now()
}

/// A frame's bytes, built independently of `Connection`'s own encoder:
/// `first`, the payload length in the shortest encoding at least `width`
/// wide (0: 7 bits, 1: 16 bits, 2: 64 bits; wider than needed is legal),
/// the masking key if any, the payload (masked with it).
pub(crate) fn frame_bytes(first: u8, payload: &[u8], key: Option<[u8; 4]>, width: u8) -> Vec<u8> {
    let mask_bit = if key.is_some() { 0x80 } else { 0 };
    let mut out = vec![first];
    match (width, payload.len()) {
        (0, n @ 0..=125) => out.push(mask_bit | n as u8),
        (0 | 1, n @ 0..=0xFFFF) => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        (_, n) => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match key {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// One frame as a peer might send it, valid or not: any first byte
/// (mostly final text or binary), masked or not, the payload length in
/// any of the three encodings (not always the shortest), and a payload
/// that is ASCII, any UTF-8, or any bytes.
pub(crate) fn any_frame() -> impl Strategy<Value = Vec<u8>> {
    let first = prop_oneof![
        4 => Just(0x81u8),
        3 => Just(0x82u8),
        1 => prop::sample::select(vec![0x01u8, 0x00, 0x80, 0x89, 0x8A, 0x88, 0xC1, 0x91, 0x83]),
        1 => any::<u8>(),
    ];
    let payload = prop_oneof![
        "[ -~]{0,140}".prop_map(String::into_bytes),
        "\\PC{0,60}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..140),
        // ASCII with one byte anywhere replaced.
        ("[ -~]{1,70}", any::<prop::sample::Index>(), 0x80u8..=0xFF).prop_map(|(s, at, b)| {
            let mut bytes = s.into_bytes();
            let at = at.index(bytes.len());
            bytes[at] = b;
            bytes
        }),
    ];
    let masked = prop_oneof![4 => Just(true), 1 => Just(false)];
    (first, payload, masked, any::<[u8; 4]>(), 0u8..3).prop_map(
        |(first, payload, masked, key, width)| {
            frame_bytes(first, &payload, masked.then_some(key), width)
        },
    )
}
