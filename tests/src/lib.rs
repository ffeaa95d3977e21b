//! Shared scenario helpers for Storm's integration suite.

pub mod fuzz;
pub mod fuzz_route;
pub mod fuzz_broker;
