//! Shared scenario helpers for Storm's integration suite.

pub mod fuzz;
