//! TLS with rustls on tokio streams (tokio-rustls).
//!
//! The certificates, keys and trust settings are the shared option structs
//! ([`TlsServerOptions`], [`TlsClientOptions`]); the core's
//! [`storm_proto::tls`] turns them into rustls configurations, the same way
//! for every adapter. This module re-exports its PEM-file helpers and wraps
//! the configurations for tokio.
//!
//! ```no_run
//! use storm_tokio::proto::options::{ServerOptions, TlsClientOptions};
//!
//! # fn main() -> std::io::Result<()> {
//! let server = ServerOptions {
//!     tls: Some(storm_tokio::tls::server_options_from_pem_files("cert.pem", "key.pem")?),
//!     ..ServerOptions::default()
//! };
//! // A client that trusts a private CA instead of the web roots.
//! let client = TlsClientOptions::with_ca(storm_tokio::tls::read_pem_file("ca.pem")?);
//! # let _ = (server, client); Ok(()) }
//! ```

use std::io;

use tokio_rustls::{TlsAcceptor, TlsConnector};

use storm_proto::options::{TlsClientOptions, TlsServerOptions};
pub use storm_proto::tls::{
    client_cert_from_pem_files, read_pem_file, server_options_from_pem_files,
};
pub(crate) use storm_proto::tls::{host_of, server_name};

/// The acceptor a server uses for every connection.
pub(crate) fn acceptor(options: &TlsServerOptions) -> io::Result<TlsAcceptor> {
    storm_proto::tls::server_config(options).map(TlsAcceptor::from)
}

/// The connector a client uses for every (re)connection.
pub(crate) fn connector(options: &TlsClientOptions) -> io::Result<TlsConnector> {
    storm_proto::tls::client_config(options).map(TlsConnector::from)
}
