//! Shared scenario helpers for Storm's integration suite.

pub mod broker;
pub mod fuzz;
pub mod process;
pub mod suite;

/// The README's examples, compiled and run by `cargo test`.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// The READMEs of the published crates (crates.io shows them), compiled
/// and run by `cargo test` so their examples keep matching the API.
#[cfg(doctest)]
pub mod crate_readmes {
    #[doc = include_str!("../../storm-proto/README.md")]
    pub struct StormProto;
    #[doc = include_str!("../../storm-host/README.md")]
    pub struct StormHost;
    #[doc = include_str!("../../storm-async/README.md")]
    pub struct StormAsync;
    #[doc = include_str!("../../storm-tokio/README.md")]
    pub struct StormTokio;
    #[doc = include_str!("../../storm-smol/README.md")]
    pub struct StormSmol;
    #[doc = include_str!("../../storm-std/README.md")]
    pub struct StormStd;
    #[doc = include_str!("../../storm-services/README.md")]
    pub struct StormServices;
}
