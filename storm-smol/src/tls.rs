//! TLS with rustls on smol streams (futures-rustls).
//!
//! The certificates, keys and trust settings are the shared option structs
//! ([`TlsServerOptions`](storm_host::options::TlsServerOptions),
//! [`TlsClientOptions`](storm_host::options::TlsClientOptions)); the
//! core's [`storm_host::tls`] turns them into rustls configurations, the
//! same way for every adapter. This module re-exports its PEM-file helpers.
//!
//! ```no_run
//! use storm_smol::host::options::{ServerOptions, TlsClientOptions};
//!
//! # fn main() -> std::io::Result<()> {
//! let server = ServerOptions::default()
//!     .with_tls(storm_smol::tls::server_options_from_pem_files("cert.pem", "key.pem")?);
//! // A client that trusts a private CA instead of the web roots.
//! let client = TlsClientOptions::with_ca(storm_smol::tls::read_pem_file("ca.pem")?);
//! # let _ = (server, client); Ok(()) }
//! ```

pub use storm_host::tls::{
    client_cert_from_pem_files, read_pem_file, server_options_from_pem_files,
};
