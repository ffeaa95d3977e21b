//! TLS configuration (feature `tls`): the shared option structs into
//! rustls configurations, and PEM files into those option structs.
//!
//! A configuration the application brings
//! ([`TlsServerOptions::from_config`], [`TlsClientOptions::from_config`])
//! is used as it is, with its own crypto provider. One built from PEM uses
//! the process's default provider when the application installed one
//! (`rustls::crypto::CryptoProvider::install_default`), else aws-lc-rs
//! (feature `aws-lc-rs`), else ring (feature `ring`, the adapters'
//! default); with none of them building from PEM fails with an error that
//! says so. A client trusts the web roots (Mozilla's, compiled in), the CAs
//! in `ca_pem`, or the operating system's store (`native_roots`, feature
//! `native-roots`).
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
//! use storm_host::options::{ServerOptions, TlsClientOptions};
//!
//! # fn main() -> std::io::Result<()> {
//! let server = ServerOptions::default()
//!     .with_tls(storm_host::tls::server_options_from_pem_files("cert.pem", "key.pem")?);
//! // A client that trusts a private CA instead of the web roots.
//! let client = TlsClientOptions::with_ca(storm_host::tls::read_pem_file("ca.pem")?);
//! # let _ = (server, client); Ok(()) }
//! ```

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::{PemObject, SectionKind};
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
/// [`TlsServerOptions::client_ca_pem`] for that). Each file is checked to
/// hold what it should (a certificate, a private key); the rest (do they
/// parse, do they fit) is checked when the server binds. Blocking: meant
/// for start-up.
///
/// # Errors
///
/// A file cannot be read, or does not hold what it should (the error names
/// the file and what it holds, and says the order when the two look
/// swapped).
pub fn server_options_from_pem_files(
    cert_chain: impl AsRef<Path>,
    key: impl AsRef<Path>,
) -> io::Result<TlsServerOptions> {
    let (cert_chain, key) = read_pair(cert_chain.as_ref(), key.as_ref())?;
    Ok(TlsServerOptions::new(cert_chain, key))
}

/// A client certificate from a PEM certificate chain file and a PEM private
/// key file, checked as [`server_options_from_pem_files`] checks them.
/// Blocking: meant for start-up.
///
/// # Errors
///
/// As [`server_options_from_pem_files`].
pub fn client_cert_from_pem_files(
    cert_chain: impl AsRef<Path>,
    key: impl AsRef<Path>,
) -> io::Result<TlsClientCert> {
    let (cert_chain, key) = read_pair(cert_chain.as_ref(), key.as_ref())?;
    Ok(TlsClientCert::new(cert_chain, key))
}

/// Reads a certificate chain file and its key file, each checked to hold
/// what it should.
fn read_pair(cert_chain: &Path, key: &Path) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let cert_pem = read_pem_file(cert_chain)?;
    let key_pem = read_pem_file(key)?;
    let what = |role: &str, path: &Path| format!("TLS {role} file {}", path.display());
    certificates(&cert_pem, &what("certificate chain", cert_chain), Pair::Yes)?;
    private_key(&key_pem, &what("private key", key), Pair::Yes)?;
    Ok((cert_pem, key_pem))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// The crypto provider of configurations built from PEM: the process's
/// default when the application installed one, else the one this crate's
/// features compile in (aws-lc-rs before ring).
fn provider() -> io::Result<Arc<CryptoProvider>> {
    if let Some(provider) = CryptoProvider::get_default() {
        return Ok(Arc::clone(provider));
    }
    #[cfg(feature = "aws-lc-rs")]
    return Ok(Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    #[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
    return Ok(Arc::new(rustls::crypto::ring::default_provider()));
    #[cfg(not(any(feature = "ring", feature = "aws-lc-rs")))]
    Err(invalid(
        "TLS from PEM needs a crypto provider: turn on the `ring` or `aws-lc-rs` feature, \
         install a process default (rustls::crypto::CryptoProvider::install_default), or \
         give a rustls configuration of your own"
            .to_owned(),
    ))
}

/// Whether a PEM is one of a certificate chain and private key pair (whose
/// files can be swapped) or on its own (a CA).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pair {
    Yes,
    No,
}

/// The kinds of the PEM sections in `pem`, each once, in order (up to the
/// first section that does not parse).
fn section_kinds(pem: &[u8]) -> Vec<SectionKind> {
    let mut kinds = Vec::new();
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
        let Ok((kind, _)) = section else { break };
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    kinds
}

/// A section kind as errors name it: "a PRIVATE KEY".
fn section_name(kind: SectionKind) -> &'static str {
    match kind {
        SectionKind::Certificate => "a CERTIFICATE",
        SectionKind::PrivateKey => "a PRIVATE KEY",
        SectionKind::RsaPrivateKey => "an RSA PRIVATE KEY",
        SectionKind::EcPrivateKey => "an EC PRIVATE KEY",
        SectionKind::PublicKey => "a PUBLIC KEY",
        SectionKind::Csr => "a CERTIFICATE REQUEST",
        SectionKind::Crl => "an X509 CRL",
        _ => "another PEM section",
    }
}

/// Whether a PEM section is a private key, in any of its encodings.
fn is_private_key(kind: SectionKind) -> bool {
    matches!(
        kind,
        SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey
    )
}

/// `what` does not hold what it should (`expected`: a certificate or a
/// private key): says what it holds, and for one of a pair that holds the
/// other half, that the two look swapped and which comes first.
fn wrong_contents(what: &str, pem: &[u8], expected: SectionKind, pair: Pair) -> io::Error {
    let kinds = section_kinds(pem);
    let contents = match kinds.as_slice() {
        [] => "no PEM section".to_owned(),
        kinds => kinds
            .iter()
            .map(|&kind| section_name(kind))
            .collect::<Vec<_>>()
            .join(" and "),
    };
    let other_half = kinds.iter().any(|&kind| match is_private_key(expected) {
        true => kind == SectionKind::Certificate,
        false => is_private_key(kind),
    });
    let order = match (pair, other_half) {
        (Pair::Yes, true) => {
            ": the certificate chain (leaf first) comes first and its private key second; \
             are the two swapped?"
        }
        _ => "",
    };
    let expected = section_name(expected);
    invalid(format!("{what} holds {contents}, not {expected}{order}"))
}

/// Every certificate in `pem`; at least one. `what` names it in errors.
fn certificates(pem: &[u8], what: &str, pair: Pair) -> io::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(wrong_contents(what, pem, SectionKind::Certificate, pair));
    }
    Ok(certs)
}

/// The private key in `pem`. `what` names it in errors.
fn private_key(pem: &[u8], what: &str, pair: Pair) -> io::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            wrong_contents(what, pem, SectionKind::PrivateKey, pair)
        }
        e => invalid(format!("{what}: {e}")),
    })
}

fn roots(pem: &[u8], field: &str) -> io::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(pem, &format!("TLS {field}"), Pair::No)? {
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
    if let Some(config) = &options.config {
        let pem = !options.cert_chain_pem.is_empty()
            || !options.key_pem.is_empty()
            || options.client_ca_pem.is_some();
        return match pem {
            true => Err(invalid(
                "TLS: both a rustls config and PEM (cert_chain_pem, key_pem, client_ca_pem) \
                 are set: the config has its own certificates; set one or the other"
                    .to_owned(),
            )),
            false => Ok(Arc::clone(config.rustls())),
        };
    }
    let certs = certificates(&options.cert_chain_pem, "TLS cert_chain_pem", Pair::Yes)?;
    let key = private_key(&options.key_pem, "TLS key_pem", Pair::Yes)?;
    let provider = provider()?;
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
/// application's own when `options` holds one; else built with the web
/// roots, unless `options` names a CA or the system's store.
///
/// # Errors
///
/// [`InvalidInput`](io::ErrorKind::InvalidInput), naming the field, when the
/// CA or the client certificate does not parse or does not fit, when
/// fields that exclude each other are set, or when the system's store
/// cannot be read or holds no usable certificate.
pub fn client_config(options: &TlsClientOptions) -> io::Result<Arc<ClientConfig>> {
    if let Some(config) = &options.config {
        let built =
            options.ca_pem.is_some() || options.native_roots || options.client_cert.is_some();
        return match built {
            true => Err(invalid(
                "TLS: both a rustls config and ca_pem, native_roots or client_cert are set: \
                 the config has its own roots and certificate; set one or the other"
                    .to_owned(),
            )),
            false => Ok(Arc::clone(config.rustls())),
        };
    }
    let roots = match (&options.ca_pem, options.native_roots) {
        (Some(_), true) => {
            return Err(invalid(
                "TLS: ca_pem and native_roots are both set: trust one or the other".to_owned(),
            ));
        }
        (Some(pem), false) => roots(pem, "ca_pem")?,
        (None, true) => native_roots()?,
        (None, false) => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let builder = ClientConfig::builder_with_provider(provider()?)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS: {e}")))?
        .with_root_certificates(roots);
    let config = match &options.client_cert {
        None => builder.with_no_client_auth(),
        Some(cert) => {
            let certs = certificates(
                &cert.cert_chain_pem,
                "TLS client_cert.cert_chain_pem",
                Pair::Yes,
            )?;
            let key = private_key(&cert.key_pem, "TLS client_cert.key_pem", Pair::Yes)?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| invalid(format!("TLS client_cert: {e}")))?
        }
    };
    Ok(Arc::new(config))
}

/// The operating system's trust store (read now: once per client).
#[cfg(feature = "native-roots")]
fn native_roots() -> io::Result<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _unusable) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        return Err(invalid(format!(
            "TLS native_roots: the system's certificate store has no usable certificate{}",
            match errors.is_empty() {
                true => String::new(),
                false => format!(" ({})", errors.join("; ")),
            }
        )));
    }
    Ok(roots)
}

#[cfg(not(feature = "native-roots"))]
fn native_roots() -> io::Result<RootCertStore> {
    Err(invalid(
        "TLS native_roots needs the `native-roots` feature (of storm-host, or of the adapter)"
            .to_owned(),
    ))
}

/// Why a client's TLS handshake failed, as a sentence that names the
/// cause and the fix; `None` when there is nothing to add to `error`'s own
/// words. `error` is what a TLS connect returned: rustls' error inside an
/// I/O error (a certificate refused, an alert from the server, a reply
/// that is not TLS), or the end of the stream. Every adapter's
/// [`ClientError::Tls`](crate::session::ClientError::Tls) shows it.
#[must_use]
pub fn client_hint(error: &io::Error) -> Option<String> {
    let rustls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(e) => rustls_hint(e),
        None => match error.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => Some(
                "the server closed the connection during the TLS handshake: it may not speak \
                 TLS on this port (connect without TLS, or start the server with TLS), or it \
                 refused this client"
                    .to_owned(),
            ),
            _ => None,
        },
    }
}

/// [`client_hint`] for rustls' error.
fn rustls_hint(error: &rustls::Error) -> Option<String> {
    use rustls::AlertDescription as Alert;
    use rustls::Error;
    use rustls::InvalidMessage;
    Some(match error {
        Error::InvalidCertificate(e) => certificate_hint(e)?,
        Error::InvalidMessage(
            InvalidMessage::InvalidContentType | InvalidMessage::UnknownProtocolVersion,
        )
        | Error::PeerSentOversizedRecord => "the server's reply is not TLS: it does not speak TLS \
             on this port (connect without TLS: ws:// or tcp://, no --tls-ca; or start the \
             server with --tls)"
            .to_owned(),
        Error::AlertReceived(Alert::CertificateRequired) => {
            "the server requires a client certificate: give this client one signed by a CA \
             the server trusts (TlsClientOptions::client_cert)"
                .to_owned()
        }
        Error::AlertReceived(
            alert @ (Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::CertificateUnknown
            | Alert::CertificateExpired
            | Alert::CertificateRevoked
            | Alert::UnsupportedCertificate),
        ) => format!(
            "the server refused this client's certificate ({alert:?}): use a client \
             certificate signed by a CA the server trusts, valid now"
        ),
        Error::AlertReceived(
            alert
            @ (Alert::HandshakeFailure | Alert::ProtocolVersion | Alert::InsufficientSecurity),
        ) => format!(
            "the server and this client share no TLS version, cipher suite or key type \
             ({alert:?}): Storm speaks TLS 1.2 and 1.3 with rustls' safe defaults"
        ),
        _ => return None,
    })
}

/// [`client_hint`] for a server certificate rustls refused.
fn certificate_hint(error: &rustls::CertificateError) -> Option<String> {
    use rustls::CertificateError as E;
    Some(match error {
        E::Other(other) => match other.0.to_string().as_str() {
            // rustls-webpki's errors, which rustls passes on as `Other`;
            // their Display is the variant's name.
            "CaUsedAsEndEntity" => "the server's certificate is a CA certificate (basic \
                 constraints CA:TRUE) used as the server's own, which `openssl req -x509` \
                 makes unless told otherwise: give the server a leaf certificate (CA:FALSE) \
                 with a subjectAltName for its name, signed by a CA the client trusts \
                 (--tls-ca CA_PEM): `storm cert --out DIR` makes both; or, self-signed, add \
                 `-addext \
                 basicConstraints=critical,CA:FALSE -addext \
                 subjectAltName=DNS:localhost,IP:127.0.0.1` to that openssl command"
                .to_owned(),
            "EndEntityUsedAsCa" => "a certificate that signed another in the server's chain is \
                 not a CA certificate (basic constraints CA:FALSE): sign the server's \
                 certificate with a CA certificate"
                .to_owned(),
            "UnsupportedCertVersion" => "the server's certificate is X.509 v1; only v3 is \
                 accepted: reissue it with extensions (a subjectAltName), which makes it v3"
                .to_owned(),
            _ => return None,
        },
        E::UnknownIssuer => "the server's certificate is not signed by a CA this client \
             trusts: give the client the CA that signed it (--tls-ca CA_PEM, \
             TlsClientOptions::with_ca), and have the server send its whole chain (leaf \
             first, then any intermediates)"
            .to_owned(),
        E::NotValidForName => "the server's certificate does not carry the name this client \
             connected to: connect with a name it carries, set the client's server_name, or \
             reissue it with that name in its subjectAltName (the common name does not count)"
            .to_owned(),
        E::NotValidForNameContext {
            expected,
            presented,
        } => format!(
            "the server's certificate is not valid for {:?} (it carries {}): connect with a \
             name it carries, set the client's server_name, or reissue it with {:?} in its \
             subjectAltName (the common name does not count)",
            expected.to_str(),
            match presented.as_slice() {
                [] => "no subjectAltName".to_owned(),
                names => names
                    .iter()
                    .map(|name| presented_name(name))
                    .collect::<Vec<_>>()
                    .join(", "),
            },
            expected.to_str(),
        ),
        E::Expired | E::ExpiredContext { .. } => "the server's certificate has expired: renew \
             it (or check this machine's clock)"
            .to_owned(),
        E::NotValidYet | E::NotValidYetContext { .. } => "the server's certificate is not \
             valid yet: check this machine's clock, or the certificate's start date"
            .to_owned(),
        E::BadSignature => "the server's certificate's signature does not verify with its \
             issuer's key: the certificate and the CA given to the client do not belong \
             together (was one of them made again?)"
            .to_owned(),
        E::BadEncoding => {
            "the server's certificate is malformed (not valid DER): reissue it".to_owned()
        }
        E::InvalidPurpose | E::InvalidPurposeContext { .. } => "the server's certificate is \
             not for server authentication (its extended key usage lacks serverAuth): \
             reissue it with extendedKeyUsage = serverAuth"
            .to_owned(),
        E::Revoked => {
            "the server's certificate has been revoked: the server needs a new one".to_owned()
        }
        E::UnhandledCriticalExtension => "the server's certificate has a critical extension \
             this client does not understand: reissue it without"
            .to_owned(),
        E::UnsupportedSignatureAlgorithmContext { .. }
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => "the server's \
             certificate is signed with an algorithm this client does not accept: reissue it \
             with ECDSA (P-256, P-384), Ed25519, or RSA with SHA-256 or better"
            .to_owned(),
        _ => return None,
    })
}

/// A name rustls says a certificate carries (`DnsName("localhost")`,
/// `IpAddress(127.0.0.1)`) as the name alone.
fn presented_name(name: &str) -> &str {
    name.strip_prefix("DnsName(\"")
        .and_then(|rest| rest.strip_suffix("\")"))
        .or_else(|| {
            name.strip_prefix("IpAddress(")
                .and_then(|rest| rest.strip_suffix(')'))
        })
        .unwrap_or(name)
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
    fn a_config_of_ones_own_is_used_as_it_is() {
        let (ca_pem, ca_key, ca_params) = certificate(&[], true, None, |_| {});
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let (leaf, leaf_key, _) = certificate(&["localhost"], false, Some(&issuer), |_| {});
        let pem = TlsServerOptions::new(leaf, leaf_key.serialize_pem());
        let own = server_config(&pem).unwrap();
        let options = TlsServerOptions::from_config(Arc::clone(&own));
        assert!(Arc::ptr_eq(&server_config(&options).unwrap(), &own));
        assert_eq!(options, TlsServerOptions::from_config(Arc::clone(&own)));

        let own = client_config(&TlsClientOptions::with_ca(ca_pem.clone())).unwrap();
        let options = TlsClientOptions {
            server_name: Some("localhost".into()),
            ..TlsClientOptions::from_config(Arc::clone(&own))
        };
        assert!(Arc::ptr_eq(&client_config(&options).unwrap(), &own));
        // The config and PEM that would make another: refused, not ignored.
        let both = TlsServerOptions {
            client_ca_pem: Some(ca_pem.clone().into_bytes()),
            ..TlsServerOptions::from_config(server_config(&pem).unwrap())
        };
        let both_client = [
            TlsClientOptions {
                ca_pem: Some(ca_pem.into_bytes()),
                ..options.clone()
            },
            TlsClientOptions {
                native_roots: true,
                ..options.clone()
            },
            TlsClientOptions {
                client_cert: Some(TlsClientCert::new(CERT, KEY)),
                ..options
            },
        ];
        let mut errors = vec![server_config(&both).map(|_| ()).unwrap_err()];
        errors.extend(
            both_client
                .iter()
                .map(|o| client_config(o).map(|_| ()).unwrap_err()),
        );
        for err in errors {
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            assert!(err.to_string().contains("set one or the other"), "{err}");
        }
    }

    #[test]
    fn native_roots_and_a_ca_exclude_each_other() {
        let options = TlsClientOptions {
            native_roots: true,
            ..TlsClientOptions::with_ca(CERT)
        };
        let err = client_config(&options).map(|_| ()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("ca_pem and native_roots"), "{err}");
    }

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";

    #[test]
    fn a_swapped_certificate_and_key_say_so() {
        let err = server_config(&TlsServerOptions::new(KEY, CERT))
            .map(|_| ())
            .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(
            text.contains("cert_chain_pem holds a PRIVATE KEY, not a CERTIFICATE"),
            "{text}"
        );
        assert!(
            text.contains("comes first") && text.contains("swapped"),
            "{text}"
        );
        // A certificate where the key belongs (the chain is right).
        let err = server_config(&TlsServerOptions::new(CERT, CERT))
            .map(|_| ())
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("key_pem holds a CERTIFICATE, not a PRIVATE KEY"),
            "{text}"
        );
        // A CA file with a key in it: no pair, so no order to give.
        let err = client_config(&TlsClientOptions::with_ca(KEY))
            .map(|_| ())
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("ca_pem holds a PRIVATE KEY, not a CERTIFICATE"),
            "{text}"
        );
        assert!(!text.contains("swapped"), "{text}");
    }

    #[test]
    fn swapped_files_are_named_with_what_they_hold() {
        let dir = std::env::temp_dir().join(format!("storm-proto-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, CERT).unwrap();
        std::fs::write(&key, KEY).unwrap();
        let swapped = server_options_from_pem_files(&key, &cert).unwrap_err();
        let client = client_cert_from_pem_files(&key, &cert).unwrap_err();
        let right = server_options_from_pem_files(&cert, &key);
        std::fs::remove_dir_all(&dir).unwrap();
        for err in [swapped, client] {
            let text = err.to_string();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            assert!(
                text.contains(&format!("certificate chain file {}", key.display())),
                "{text}"
            );
            assert!(
                text.contains("holds a PRIVATE KEY, not a CERTIFICATE"),
                "{text}"
            );
            assert!(text.contains("comes first"), "{text}");
        }
        // The right order reads; the contents are checked at bind.
        assert!(right.is_ok());
    }

    /// A certificate for `names` and its key, signed by `issuer` (self-signed
    /// without one); `ca` makes it a CA certificate.
    fn certificate(
        names: &[&str],
        ca: bool,
        issuer: Option<&rcgen::Issuer<'_, rcgen::KeyPair>>,
        edit: impl FnOnce(&mut rcgen::CertificateParams),
    ) -> (String, rcgen::KeyPair, rcgen::CertificateParams) {
        let names: Vec<String> = names.iter().map(|&n| n.to_owned()).collect();
        let common_name = names.first().map_or("storm test CA", String::as_str);
        let mut params = rcgen::CertificateParams::new(names.clone()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        if ca {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        edit(&mut params);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = match issuer {
            Some(issuer) => params.signed_by(&key, issuer).unwrap(),
            None => params.self_signed(&key).unwrap(),
        };
        (cert.pem(), key, params)
    }

    /// A TLS handshake between a server and a client over memory buffers:
    /// the client's error as a TLS connect reports it (rustls' error in an
    /// I/O error), after the server's alert if the server failed.
    fn connect(server: &TlsServerOptions, client: &TlsClientOptions, host: &str) -> io::Result<()> {
        let tls = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        let mut server = rustls::ServerConnection::new(server_config(server)?).map_err(tls)?;
        let name = server_name(client, host)?;
        let mut client =
            rustls::ClientConnection::new(client_config(client)?, name).map_err(tls)?;
        for _ in 0..8 {
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire)?;
            }
            server.read_tls(&mut &wire[..])?;
            let failed = server.process_new_packets().is_err();
            let mut wire = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut wire)?;
            }
            client.read_tls(&mut &wire[..])?;
            client.process_new_packets().map_err(tls)?;
            if failed {
                return Err(io::Error::other("the server failed, the client did not"));
            }
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
        }
        Err(io::Error::other("the handshake did not finish"))
    }

    fn hint_of(result: io::Result<()>) -> String {
        let err = result.unwrap_err();
        let hint = client_hint(&err).unwrap_or_else(|| panic!("no hint for {err}"));
        assert!(!hint.is_empty());
        hint
    }

    #[test]
    fn refused_server_certificates_are_explained() {
        // The common mistake: a self-signed CA certificate as the server's.
        let (ca_as_leaf, key, _) = certificate(&["localhost"], true, None, |_| {});
        let server = TlsServerOptions::new(ca_as_leaf.clone(), key.serialize_pem());
        let hint = hint_of(connect(
            &server,
            &TlsClientOptions::with_ca(ca_as_leaf),
            "localhost",
        ));
        assert!(
            hint.contains("is a CA certificate") && hint.contains("leaf"),
            "{hint}"
        );
        assert!(hint.contains("subjectAltName"), "{hint}");
        assert!(hint.contains("`storm cert --out DIR` makes both"), "{hint}");

        // A proper CA and leaf, and what goes wrong with them.
        let (ca_pem, ca_key, ca_params) = certificate(&[], true, None, |_| {});
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let (leaf, leaf_key, _) = certificate(&["localhost"], false, Some(&issuer), |_| {});
        let server = TlsServerOptions::new(leaf, leaf_key.serialize_pem());
        let trusting = TlsClientOptions::with_ca(ca_pem.clone());
        assert!(connect(&server, &trusting, "localhost").is_ok());

        let hint = hint_of(connect(&server, &trusting, "example.com"));
        assert!(hint.contains("not valid for \"example.com\""), "{hint}");
        assert!(hint.contains("it carries localhost"), "{hint}");

        let (other_ca, _, _) = certificate(&[], true, None, |p| {
            p.distinguished_name = rcgen::DistinguishedName::new();
            p.distinguished_name
                .push(rcgen::DnType::CommonName, "another CA");
        });
        let hint = hint_of(connect(
            &server,
            &TlsClientOptions::with_ca(other_ca),
            "localhost",
        ));
        assert!(
            hint.contains("not signed by a CA this client trusts"),
            "{hint}"
        );
        // A CA made again: the same name, another key.
        let (remade_ca, _, _) = certificate(&[], true, None, |_| {});
        let hint = hint_of(connect(
            &server,
            &TlsClientOptions::with_ca(remade_ca),
            "localhost",
        ));
        assert!(hint.contains("do not belong together"), "{hint}");

        let (expired, expired_key, _) = certificate(&["localhost"], false, Some(&issuer), |p| {
            p.not_before = rcgen::date_time_ymd(2000, 1, 1);
            p.not_after = rcgen::date_time_ymd(2001, 1, 1);
        });
        let server = TlsServerOptions::new(expired, expired_key.serialize_pem());
        let hint = hint_of(connect(&server, &trusting, "localhost"));
        assert!(hint.contains("has expired"), "{hint}");

        let (client_only, client_key, _) = certificate(&["localhost"], false, Some(&issuer), |p| {
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        });
        let server = TlsServerOptions::new(client_only, client_key.serialize_pem());
        let hint = hint_of(connect(&server, &trusting, "localhost"));
        assert!(hint.contains("serverAuth"), "{hint}");
    }

    #[test]
    fn a_refused_client_and_a_server_without_tls_are_explained() {
        let (ca_pem, ca_key, ca_params) = certificate(&[], true, None, |_| {});
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let (leaf, leaf_key, _) = certificate(&["localhost"], false, Some(&issuer), |_| {});
        let mut server = TlsServerOptions::new(leaf, leaf_key.serialize_pem());
        server.client_ca_pem = Some(ca_pem.clone().into_bytes());
        let hint = hint_of(connect(
            &server,
            &TlsClientOptions::with_ca(ca_pem),
            "localhost",
        ));
        assert!(hint.contains("requires a client certificate"), "{hint}");

        // What a plain server's reply (an HTTP 400) makes of a TLS client.
        let mut client =
            rustls::ClientConnection::new(client_config(&TlsClientOptions::default()).unwrap(), {
                server_name(&TlsClientOptions::default(), "localhost").unwrap()
            })
            .unwrap();
        client
            .read_tls(&mut &b"HTTP/1.1 400 Bad Request\r\n\r\n"[..])
            .unwrap();
        let err = io::Error::new(
            io::ErrorKind::InvalidData,
            client.process_new_packets().unwrap_err(),
        );
        let hint = client_hint(&err).unwrap_or_default();
        assert!(hint.contains("not TLS"), "{hint}");
        // A plain server that closes at the ClientHello.
        let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "tls handshake eof");
        let hint = client_hint(&eof).unwrap_or_default();
        assert!(
            hint.contains("closed the connection during the TLS handshake"),
            "{hint}"
        );
        // Nothing to add to other failures.
        assert_eq!(client_hint(&io::Error::other("something else")), None);
    }

    #[test]
    fn missing_files_name_the_path() {
        let err = server_options_from_pem_files("/nonexistent/cert.pem", "/nonexistent/key.pem")
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
    }
}
