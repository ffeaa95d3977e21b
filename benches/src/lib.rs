//! Support code for Storm's benchmarks.
