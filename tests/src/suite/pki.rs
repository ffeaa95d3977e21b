//! Certificates made at test time with rcgen: a CA, and a server
//! certificate it signed for `localhost` and `127.0.0.1`.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use storm_proto::options::{TlsClientOptions, TlsServerOptions};

/// A CA and the server certificate it signed, as PEM.
#[derive(Debug, Clone)]
pub struct Pki {
    ca_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
}

impl Pki {
    /// A fresh CA and server certificate.
    ///
    /// # Panics
    ///
    /// When rcgen fails (it does not, for these parameters).
    #[must_use]
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(DnType::CommonName, "storm suite CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let mut params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("server params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &*ca).expect("server certificate");
        Self {
            ca_pem: ca.pem(),
            server_cert_pem: cert.pem(),
            server_key_pem: key.serialize_pem(),
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
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}
