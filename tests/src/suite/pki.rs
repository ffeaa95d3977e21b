//! Certificates made at test time with rcgen: a CA, a server certificate it
//! signed for `localhost` and `127.0.0.1`, and a client certificate it
//! signed (for client-certificate authentication). Shared by the suite and
//! the adapters' own TLS tests.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use storm_host::options::{TlsClientCert, TlsClientOptions, TlsServerOptions};

/// A CA and what it signed, as PEM.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA certificate.
    pub ca_pem: String,
    /// The server certificate (for `localhost` and `127.0.0.1`).
    pub server_cert_pem: String,
    /// The server's private key.
    pub server_key_pem: String,
    /// A client certificate (client authentication).
    pub client_cert_pem: String,
    /// The client's private key.
    pub client_key_pem: String,
}

impl Pki {
    /// A fresh CA named "storm suite CA" and its certificates.
    #[must_use]
    pub fn new() -> Self {
        Self::named("storm suite CA")
    }

    /// A fresh CA with this common name (two CAs that must not trust each
    /// other are easier to tell apart in failures) and its certificates.
    ///
    /// # Panics
    ///
    /// When rcgen fails (it does not, for these parameters).
    #[must_use]
    pub fn named(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let leaf = |names: Vec<String>, usage| {
            let mut params = CertificateParams::new(names).expect("leaf params");
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().expect("leaf key");
            let cert = params.signed_by(&key, &*ca).expect("leaf certificate");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert_pem, server_key_pem) = leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert_pem, client_key_pem) =
            leaf(vec!["client".into()], ExtendedKeyUsagePurpose::ClientAuth);
        Self {
            ca_pem: ca.pem(),
            server_cert_pem,
            server_key_pem,
            client_cert_pem,
            client_key_pem,
        }
    }

    /// The server's TLS options.
    #[must_use]
    pub fn server(&self) -> TlsServerOptions {
        TlsServerOptions::new(self.server_cert_pem.clone(), self.server_key_pem.clone())
    }

    /// Client TLS options trusting only this CA.
    #[must_use]
    pub fn client(&self) -> TlsClientOptions {
        TlsClientOptions::with_ca(self.ca_pem.clone())
    }

    /// The server certificate and key and the CA certificate written to
    /// PEM files in a fresh temporary directory, for programs that take
    /// file names (`storm <service> --tls CERT KEY`). The directory is
    /// removed when the returned value is dropped.
    ///
    /// # Panics
    ///
    /// When the files cannot be written.
    #[must_use]
    pub fn pem_files(&self) -> PemFiles {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "storm-pki-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("PEM file");
            path
        };
        PemFiles {
            cert: write("cert.pem", &self.server_cert_pem),
            key: write("key.pem", &self.server_key_pem),
            ca: write("ca.pem", &self.ca_pem),
            dir,
        }
    }

    /// The client certificate, for client TLS options.
    #[must_use]
    pub fn client_cert(&self) -> TlsClientCert {
        TlsClientCert::new(self.client_cert_pem.clone(), self.client_key_pem.clone())
    }

    /// The server's rustls configuration, built the way an application
    /// builds its own: offering `alpn` (in preference order), and, when
    /// `client_auth`, requiring a client certificate this CA signed.
    ///
    /// # Panics
    ///
    /// When rustls refuses the certificates (it does not, for these).
    #[must_use]
    pub fn server_config(&self, alpn: &[&[u8]], client_auth: bool) -> Arc<ServerConfig> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions");
        let builder = match client_auth {
            true => builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()), provider())
                    .build()
                    .expect("client verifier"),
            ),
            false => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs(&self.server_cert_pem), key(&self.server_key_pem))
            .expect("server certificate");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// A client's rustls configuration trusting this CA, built the way an
    /// application builds its own; presenting the client certificate when
    /// `with_cert`, and offering `alpn`.
    ///
    /// # Panics
    ///
    /// When rustls refuses the certificates (it does not, for these).
    #[must_use]
    pub fn client_config(&self, with_cert: bool, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(self.roots());
        let mut config = match with_cert {
            true => builder
                .with_client_auth_cert(certs(&self.client_cert_pem), key(&self.client_key_pem))
                .expect("client certificate"),
            false => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// This CA alone, as rustls roots.
    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        for cert in certs(&self.ca_pem) {
            roots.add(cert).expect("CA certificate");
        }
        roots
    }
}

/// The crypto provider the test configurations use (ring, as the
/// adapters' PEM configurations do by default).
#[must_use]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM chain.
///
/// # Panics
///
/// When `pem` holds none.
#[must_use]
pub fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("PEM certificates");
    assert!(!certs.is_empty(), "no certificate in the PEM");
    certs
}

fn key(pem: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("PEM private key")
}

/// A certificate made the common way (`openssl req -x509 -newkey rsa:2048
/// -nodes -subj /CN=localhost` makes a self-signed CA certificate), for
/// `localhost` and `127.0.0.1`, and its key, as PEM: what a server should
/// not use as its own, and what clients refuse (rustls:
/// `CaUsedAsEndEntity`).
///
/// # Panics
///
/// When rcgen fails (it does not, for these parameters).
#[must_use]
pub fn self_signed_ca_for_localhost() -> (String, String) {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let mut params = CertificateParams::new(names).expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("certificate");
    (cert.pem(), key.serialize_pem())
}

/// A [`Pki`]'s PEM files on disk; removed on drop.
#[derive(Debug)]
pub struct PemFiles {
    /// The server certificate chain.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
    /// The CA certificate.
    pub ca: PathBuf,
    dir: PathBuf,
}

impl PemFiles {
    /// `["--tls", CERT, KEY]`, the server option of every `storm` service.
    #[must_use]
    pub fn tls_args(&self) -> [&str; 3] {
        ["--tls", path_str(&self.cert), path_str(&self.key)]
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

impl Drop for PemFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}
