//! The library side of the `storm` binary: services other programs and the
//! tests can embed. The binary (`src/main.rs`) is a thin command line over
//! these modules.

pub mod bench;
pub mod gateway;
