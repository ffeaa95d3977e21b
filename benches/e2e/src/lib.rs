//! End-to-end echo benchmarks for Storm.
//!
//! This crate holds the `loadgen` binary (a tokio load generator for echo
//! servers speaking raw TCP, 4-byte length-prefixed frames or WebSocket) and
//! a few peer echo servers built on other crates (`peer_*`), so that Storm's
//! servers can be compared with them under the same load. `run.sh` beside
//! this crate's `Cargo.toml` runs the whole comparison; the README explains
//! what is measured. `xnode` measures one chat room across two `storm chat`
//! nodes sharing a Redis backplane against one node alone.
//!
//! The library part is what the binaries share: the wire formats as the load
//! generator writes and checks them ([`wire`]), the WebSocket opening
//! handshake on both sides ([`handshake`]), percentiles ([`stats`]), and the
//! loopback-only address rule and process accounting ([`sys`]). Every target is on this machine:
//! [`sys::loopback_addr`] refuses anything but a loopback address.

pub mod handshake;
pub mod peer;
pub mod stats;
/// Loopback-only addresses and `/proc` CPU accounting, shared with
/// `storm bench`.
pub use storm_services::sys;
pub mod wire;
