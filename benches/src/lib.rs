//! Support code for Storm's benchmarks.

pub mod per_message;
