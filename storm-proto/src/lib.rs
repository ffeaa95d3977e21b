//! The sans-IO protocol core of Storm.
//!
//! Every protocol here is a state machine that is driven, never drives: the
//! caller feeds it the bytes a socket returned (`handle_input`), drains what it
//! produced (`poll_event`, `poll_transmit`) and tells it the time
//! (`handle_timeout`). Nothing in this crate opens a socket, spawns a thread,
//! sleeps or reads a clock, so the same machines run under tokio, smol, plain
//! threads, or a deterministic test simulator.
#![warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod framing;
pub mod ws;
