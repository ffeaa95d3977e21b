//! Shared scenario helpers for Storm's integration suite.

pub mod fuzz;
pub mod process;
pub mod suite;

/// The README's examples, compiled and run by `cargo test`.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
