//! TLS configuration (feature `tls`): the shared option structs into
//! rustls configurations (the `ring` provider), and PEM files into those
//! option structs.
//!
//! The option structs ([`TlsServerOptions`], [`TlsClientOptions`]) live in
//! [`options`](crate::options) as plain PEM bytes so that every adapter
//! shares them; this module is the one place that turns them into rustls
//! configurations, so every adapter accepts and refuses the same
//! certificates with the same messages. It does no network I/O: the
//! adapters run the TLS sessions on their own streams. Adapters build the
//! configuration once (servers at bind, clients at connect), so a bad
//! certificate or key fails there with an
//! [`InvalidInput`](io::ErrorKind::InvalidInput) error that names the field.
//!
//! The `*_from_pem_files` helpers read files: they are start-up helpers for
//! the application (and the only file access in this crate), never called
//! on a connection's path.
//!
//! ```no_run
//! use storm_proto::options::{ServerOptions, TlsClientOptions};
//!
//! # fn main() -> std::io::Result<()> {
//! let server = ServerOptions {
//!     tls: Some(storm_proto::tls::server_options_from_pem_files("cert.pem", "key.pem")?),
//!     ..ServerOptions::default()
//! };
//! // A client that trusts a private CA instead of the web roots.
//! let client = TlsClientOptions::with_ca(storm_proto::tls::read_pem_file("ca.pem")?);
//! # let _ = (server, client); Ok(()) }
//! ```

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::options::{TlsClientCert, TlsClientOptions, TlsServerOptions};

/// Reads a PEM file whole. Blocking: meant for start-up.
///
/// # Errors
///
/// The file cannot be read; the error names the path.
pub fn read_pem_file(path: impl AsRef<Path>) -> io::Result<Vec<u8>> {
    let path = path.as_ref();
    std::fs::read(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// Server TLS options from a PEM certificate chain file (leaf first) and a
/// PEM private key file, without client-certificate authentication (set
/// [`TlsServerOptions::client_ca_pem`] for that). The PEM is checked when the
/// server binds. Blocking: meant for start-up.
///
/// # Errors
///
/// A file cannot be read.
pub fn server_options_from_pem_files(
    cert_chain: impl AsRef<Path>,
    key: impl AsRef<Path>,
) -> io::Result<TlsServerOptions> {
    Ok(TlsServerOptions::new(
        read_pem_file(cert_chain)?,
        read_pem_file(key)?,
    ))
}

/// A client certificate from a PEM certificate chain file and a PEM private
/// key file. Blocking: meant for start-up.
///
/// # Errors
///
/// A file cannot be read.
pub fn client_cert_from_pem_files(
    cert_chain: impl AsRef<Path>,
    key: impl AsRef<Path>,
) -> io::Result<TlsClientCert> {
    Ok(TlsClientCert::new(
        read_pem_file(cert_chain)?,
        read_pem_file(key)?,
    ))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in `pem`; at least one.
fn certificates(pem: &[u8], field: &str) -> io::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("TLS {field}: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(format!("TLS {field}: no CERTIFICATE in the PEM")));
    }
    Ok(certs)
}

fn private_key(pem: &[u8], field: &str) -> io::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            invalid(format!("TLS {field}: no PRIVATE KEY in the PEM"))
        }
        e => invalid(format!("TLS {field}: {e}")),
    })
}

fn roots(pem: &[u8], field: &str) -> io::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(pem, field)? {
        roots
            .add(cert)
            .map_err(|e| invalid(format!("TLS {field}: not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// The rustls configuration a server uses for every connection.
///
/// # Errors
///
/// [`InvalidInput`](io::ErrorKind::InvalidInput), naming the field, when a
/// certificate, key or CA does not parse or does not fit.
pub fn server_config(options: &TlsServerOptions) -> io::Result<Arc<ServerConfig>> {
    let certs = certificates(&options.cert_chain_pem, "cert_chain_pem")?;
    let key = private_key(&options.key_pem, "key_pem")?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS: {e}")))?;
    let builder = match &options.client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let roots = roots(pem, "client_ca_pem")?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| invalid(format!("TLS client_ca_pem: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| invalid(format!("TLS cert_chain_pem/key_pem: {e}")))?;
    Ok(Arc::new(config))
}

/// The rustls configuration a client uses for every (re)connection: the
/// web roots unless `options` names a CA.
///
/// # Errors
///
/// [`InvalidInput`](io::ErrorKind::InvalidInput), naming the field, when the
/// CA or the client certificate does not parse or does not fit.
pub fn client_config(options: &TlsClientOptions) -> io::Result<Arc<ClientConfig>> {
    let roots = match &options.ca_pem {
        Some(pem) => roots(pem, "ca_pem")?,
        None => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS: {e}")))?
        .with_root_certificates(roots);
    let config = match &options.client_cert {
        None => builder.with_no_client_auth(),
        Some(cert) => {
            let certs = certificates(&cert.cert_chain_pem, "client_cert.cert_chain_pem")?;
            let key = private_key(&cert.key_pem, "client_cert.key_pem")?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| invalid(format!("TLS client_cert: {e}")))?
        }
    };
    Ok(Arc::new(config))
}

/// The name the server's certificate must carry: `server_name` when set,
/// else `host` (a DNS name or an IP address, IPv6 with or without brackets).
///
/// # Errors
///
/// [`InvalidInput`](io::ErrorKind::InvalidInput) when the name is neither.
pub fn server_name(options: &TlsClientOptions, host: &str) -> io::Result<ServerName<'static>> {
    let name = options.server_name.as_deref().unwrap_or(host);
    let bare = name
        .strip_prefix('[')
        .and_then(|name| name.strip_suffix(']'))
        .unwrap_or(name);
    ServerName::try_from(bare.to_owned())
        .map_err(|_| invalid(format!("TLS: {name:?} is not a valid server name")))
}

/// The host part of `host:port` (IPv6 in brackets keeps its brackets).
pub fn host_of(addr: &str) -> &str {
    match addr.rsplit_once(':') {
        // A bare IPv6 address has more colons and no port to strip.
        Some((host, _)) if addr.starts_with('[') || !host.contains(':') => host,
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_server_names() {
        assert_eq!(host_of("localhost:9001"), "localhost");
        assert_eq!(host_of("127.0.0.1:9001"), "127.0.0.1");
        assert_eq!(host_of("[::1]:9001"), "[::1]");
        assert_eq!(host_of("::1"), "::1");
        assert_eq!(host_of("example.com"), "example.com");
        let none = TlsClientOptions::default();
        assert!(matches!(
            server_name(&none, "[::1]").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name(&none, "127.0.0.1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name(&none, "localhost").unwrap(),
            ServerName::DnsName(_)
        ));
        let named = TlsClientOptions {
            server_name: Some("example.com".into()),
            ..TlsClientOptions::default()
        };
        assert_eq!(
            server_name(&named, "127.0.0.1").unwrap(),
            ServerName::try_from("example.com").unwrap()
        );
        let err = server_name(&none, "bad name!").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn bad_pem_is_invalid_input_naming_the_field() {
        let cases = [
            (TlsServerOptions::new("", ""), "cert_chain_pem"),
            (TlsServerOptions::new("not pem", ""), "cert_chain_pem"),
            (
                TlsServerOptions::new("-----BEGIN CERTIFICATE-----\nAAAA\n", ""),
                "cert_chain_pem",
            ),
        ];
        for (options, field) in cases {
            let err = server_config(&options).map(|_| ()).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            assert!(err.to_string().contains(field), "{err}");
        }
        let err = client_config(&TlsClientOptions::with_ca("nothing here"))
            .map(|_| ())
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("ca_pem"), "{err}");
    }

    #[test]
    fn the_default_client_trusts_the_web_roots() {
        assert!(client_config(&TlsClientOptions::default()).is_ok());
    }

    #[test]
    fn missing_files_name_the_path() {
        let err = server_options_from_pem_files("/nonexistent/cert.pem", "/nonexistent/key.pem")
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
    }
}
