//! Option structs shared by every adapter, so switching runtime changes a
//! crate name and nothing else. Pure data with documented defaults; the
//! adapters apply the socket options.

use std::fmt;
#[cfg(feature = "tls")]
use std::sync::Arc;
use std::time::Duration;

use crate::link::LinkConfig;
use storm_proto::backpressure::BackpressureConfig;
use storm_proto::reconnect::BackoffConfig;
use storm_proto::ws;
use storm_proto::ws::deflate::DeflateConfig;

/// A type no value has: what a TLS configuration holds without the `tls`
/// feature, so that none can exist and no rustls is compiled.
#[cfg(not(feature = "tls"))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NoTls {}

/// A server's rustls configuration, as the runtimes take it: an
/// `Arc<rustls::ServerConfig>` (feature `tls`), the application's own
/// (`TlsServerOptions::from_config`) or one built from PEM. Without the
/// `tls` feature no value of this type can exist. Two are equal when they
/// share one configuration.
#[derive(Clone)]
pub struct TlsServerConfig {
    #[cfg(feature = "tls")]
    config: Arc<rustls::ServerConfig>,
    #[cfg(not(feature = "tls"))]
    none: NoTls,
}

/// A client's rustls configuration, as the runtimes take it: an
/// `Arc<rustls::ClientConfig>` (feature `tls`), the application's own
/// (`TlsClientOptions::from_config`) or one built from the options.
/// Without the `tls` feature no value of this type can exist. Two are
/// equal when they share one configuration.
#[derive(Clone)]
pub struct TlsClientConfig {
    #[cfg(feature = "tls")]
    config: Arc<rustls::ClientConfig>,
    #[cfg(not(feature = "tls"))]
    none: NoTls,
}

/// The shared parts of [`TlsServerConfig`] and [`TlsClientConfig`].
macro_rules! tls_config {
    ($name:ident, $rustls:ty) => {
        #[cfg(feature = "tls")]
        impl $name {
            /// Wraps a rustls configuration.
            #[must_use]
            pub fn new(config: Arc<$rustls>) -> Self {
                Self { config }
            }

            /// The rustls configuration.
            #[must_use]
            pub fn rustls(&self) -> &Arc<$rustls> {
                &self.config
            }
        }

        #[cfg(feature = "tls")]
        impl From<Arc<$rustls>> for $name {
            fn from(config: Arc<$rustls>) -> Self {
                Self::new(config)
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                #[cfg(feature = "tls")]
                return Arc::ptr_eq(&self.config, &other.config);
                #[cfg(not(feature = "tls"))]
                match (self.none, other.none) {}
            }
        }

        impl Eq for $name {}

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(..)"))
            }
        }
    };
}

tls_config!(TlsServerConfig, rustls::ServerConfig);
tls_config!(TlsClientConfig, rustls::ClientConfig);

/// TLS for a server: PEM data, or a rustls configuration of the
/// application's own (`from_config`, feature `tls`).
/// Each adapter builds its configuration from the PEM once, when the
/// server binds, and refuses to bind (an invalid-input error that says
/// what is wrong) when the PEM does not parse, the key does not fit the
/// certificate, or both PEM and a configuration are set.
///
/// The core reads no files; the adapters offer helpers that fill this from
/// PEM files.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TlsServerOptions {
    /// The server's certificate chain, PEM: the leaf certificate first, then
    /// any intermediates. Required.
    pub cert_chain_pem: Vec<u8>,
    /// The private key of the leaf certificate, PEM (PKCS#8, PKCS#1 or
    /// SEC1). Required. Never printed by `Debug`.
    pub key_pem: Vec<u8>,
    /// When set, clients must present a certificate signed by one of these
    /// CA certificates (PEM, one or more), or the TLS handshake fails.
    /// Default `None`: no client certificates are asked for.
    pub client_ca_pem: Option<Vec<u8>>,
    /// The application's own rustls configuration, used as it is (its
    /// certificates, client verifier, ALPN, resumption and crypto
    /// provider); the PEM fields must then be empty. Default `None`: built
    /// from the PEM fields.
    pub config: Option<TlsServerConfig>,
}

impl TlsServerOptions {
    /// A server identity from its PEM certificate chain and key, without
    /// client-certificate authentication.
    #[must_use]
    pub fn new(cert_chain_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        Self {
            cert_chain_pem: cert_chain_pem.into(),
            key_pem: key_pem.into(),
            client_ca_pem: None,
            config: None,
        }
    }

    /// The application's own rustls configuration, used as it is.
    #[cfg(feature = "tls")]
    #[must_use]
    pub fn from_config(config: Arc<rustls::ServerConfig>) -> Self {
        Self {
            config: Some(TlsServerConfig::new(config)),
            ..Self::default()
        }
    }

    /// Requires client certificates signed by the CA certificates in
    /// `client_ca_pem`.
    #[must_use]
    pub fn with_client_ca(mut self, client_ca_pem: impl Into<Vec<u8>>) -> Self {
        self.client_ca_pem = Some(client_ca_pem.into());
        self
    }
}

impl fmt::Debug for TlsServerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsServerOptions")
            .field("cert_chain_pem", &Bytes(self.cert_chain_pem.len()))
            .field("key_pem", &Redacted)
            .field(
                "client_ca_pem",
                &self.client_ca_pem.as_ref().map(|pem| Bytes(pem.len())),
            )
            .field("config", &self.config)
            .finish()
    }
}

/// A client certificate and its key, for servers that authenticate clients.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TlsClientCert {
    /// The client's certificate chain, PEM, leaf first.
    pub cert_chain_pem: Vec<u8>,
    /// The leaf certificate's private key, PEM. Never printed by `Debug`.
    pub key_pem: Vec<u8>,
}

impl TlsClientCert {
    /// A client identity from its PEM certificate chain and key.
    #[must_use]
    pub fn new(cert_chain_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        Self {
            cert_chain_pem: cert_chain_pem.into(),
            key_pem: key_pem.into(),
        }
    }
}

impl fmt::Debug for TlsClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClientCert")
            .field("cert_chain_pem", &Bytes(self.cert_chain_pem.len()))
            .field("key_pem", &Redacted)
            .finish()
    }
}

/// TLS for a client: what to trust and what to present, as PEM data, or a
/// rustls configuration of the application's own
/// (`from_config`, feature `tls`); the adapter builds
/// its configuration once, when the client starts. The default trusts the
/// usual public web roots and sends no certificate.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TlsClientOptions {
    /// CA certificates to trust (PEM, one or more), instead of the public
    /// web roots. Default `None`: the web roots (Mozilla's list) are trusted.
    pub ca_pem: Option<Vec<u8>>,
    /// Trust the operating system's certificate store instead of the public
    /// web roots (feature `native-roots`; read once, when the client
    /// starts). Not with `ca_pem`. Default `false`.
    pub native_roots: bool,
    /// A certificate to present when the server asks for one. Default `None`.
    pub client_cert: Option<TlsClientCert>,
    /// The name the server's certificate must carry (and the SNI sent), a
    /// DNS name or an IP address. Default `None`: the host of the URL or
    /// address the client connects to. It applies to a
    /// [`config`](Self::config) of the application's own too.
    pub server_name: Option<String>,
    /// The application's own rustls configuration, used as it is (its
    /// roots and verifier, client certificate, ALPN, resumption and crypto
    /// provider); `ca_pem`, `native_roots` and `client_cert` must then be
    /// unset. Default `None`: built from those fields.
    pub config: Option<TlsClientConfig>,
}

impl TlsClientOptions {
    /// Trusts only the CA certificates in `ca_pem`.
    #[must_use]
    pub fn with_ca(ca_pem: impl Into<Vec<u8>>) -> Self {
        Self {
            ca_pem: Some(ca_pem.into()),
            ..Self::default()
        }
    }

    /// Trusts the operating system's certificate store (feature
    /// `native-roots`).
    #[must_use]
    pub fn with_native_roots() -> Self {
        Self {
            native_roots: true,
            ..Self::default()
        }
    }

    /// The application's own rustls configuration, used as it is.
    #[cfg(feature = "tls")]
    #[must_use]
    pub fn from_config(config: Arc<rustls::ClientConfig>) -> Self {
        Self {
            config: Some(TlsClientConfig::new(config)),
            ..Self::default()
        }
    }
}

impl fmt::Debug for TlsClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClientOptions")
            .field("ca_pem", &self.ca_pem.as_ref().map(|pem| Bytes(pem.len())))
            .field("native_roots", &self.native_roots)
            .field("client_cert", &self.client_cert)
            .field("server_name", &self.server_name)
            .field("config", &self.config)
            .finish()
    }
}

/// `Debug` for PEM data: its size, not its contents.
struct Bytes(usize);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.0)
    }
}

/// `Debug` for keys.
struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Socket and session options every server has.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Where to listen, e.g. `127.0.0.1:9001` or `[::1]:9001`. Default
    /// `127.0.0.1:0` (a free port; ask the server for its address).
    pub addr: String,
    /// Listen backlog. Default 1024.
    pub backlog: u32,
    /// `TCP_NODELAY` on accepted sockets. Default `true`.
    pub nodelay: bool,
    /// TCP keep-alive on accepted sockets. Default `true`.
    pub keepalive: bool,
    /// `SO_RCVBUF` / `SO_SNDBUF`; `None` keeps the system's. Default `None`.
    pub recv_buffer_size: Option<u32>,
    /// See `recv_buffer_size`.
    pub send_buffer_size: Option<u32>,
    /// Most concurrent connections; more are closed at accept, before any
    /// handshake. 0 = unlimited. Default 0.
    pub max_connections: usize,
    /// Time a new connection has to finish its handshake (WebSocket upgrade,
    /// TLS). Default 10 s.
    pub handshake_timeout: Duration,
    /// Pending-send limits and the slow-consumer policy of each session.
    pub backpressure: BackpressureConfig,
    /// Heartbeat, close timeout, middleware, idle buffer release.
    pub link: LinkConfig,
    /// Most bytes of queued messages one write gathers. Default 64 KiB.
    pub write_batch: usize,
    /// TLS on every accepted connection (the handshake runs under
    /// `handshake_timeout`, before the WebSocket upgrade). Default `None`:
    /// plain TCP.
    pub tls: Option<TlsServerOptions>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:0".to_owned(),
            backlog: 1024,
            nodelay: true,
            keepalive: true,
            recv_buffer_size: None,
            send_buffer_size: None,
            max_connections: 0,
            handshake_timeout: Duration::from_secs(10),
            backpressure: BackpressureConfig::default(),
            link: LinkConfig::default(),
            write_batch: 64 * 1024,
            tls: None,
        }
    }
}

/// WebSocket specifics, for servers and clients.
#[derive(Debug, Clone, Default)]
pub struct WsOptions {
    /// Frame and message limits, auto-pong, fragmentation.
    pub config: ws::Config,
    /// permessage-deflate to accept (server) or offer (client). Default off.
    pub deflate: Option<DeflateConfig>,
    /// Subprotocols: supported in preference order (server) or offered
    /// (client). Default none.
    pub subprotocols: Vec<String>,
    /// Server only: the origins whose pages may open a WebSocket, exactly
    /// as browsers send them in `Origin` (`https://example.com`,
    /// `http://127.0.0.1:8080`: scheme, host, port if not the default; no
    /// path, no trailing slash), compared ASCII case-insensitively. A
    /// request with another `Origin` is refused with `403 Forbidden` before
    /// any upgrade hook runs. A request without `Origin` is allowed: only
    /// browsers send one, and a non-browser client (a CLI, a server) could
    /// send any value it likes, so authenticate those otherwise (a token
    /// through the upgrade hook). Default empty: every origin is allowed.
    pub allowed_origins: Vec<String>,
}

/// Options every client has.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Time to connect (TCP and handshakes). Default 10 s.
    pub connect_timeout: Duration,
    /// `TCP_NODELAY`. Default `true`.
    pub nodelay: bool,
    /// Reconnect after an unexpected disconnect, with this backoff; `None`
    /// turns reconnecting off. Default `None`.
    pub reconnect: Option<BackoffConfig>,
    /// Pending-send limits and slow-consumer policy.
    pub backpressure: BackpressureConfig,
    /// Heartbeat, close timeout, middleware, idle buffer release.
    pub link: LinkConfig,
    /// Extra handshake headers (WebSocket), e.g. `Authorization`.
    pub headers: Vec<(String, String)>,
    /// Most bytes of queued messages one write gathers. Default 64 KiB.
    pub write_batch: usize,
    /// TLS for the connection. Default `None`: plain TCP, except that a
    /// `wss://` URL always uses TLS (with [`TlsClientOptions::default`] when
    /// this is `None`). A `ws://` URL with TLS set is refused: the URL and
    /// the options must agree.
    pub tls: Option<TlsClientOptions>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            nodelay: true,
            reconnect: None,
            backpressure: BackpressureConfig::default(),
            link: LinkConfig::default(),
            headers: Vec::new(),
            write_batch: 64 * 1024,
            tls: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_plain_tcp() {
        assert_eq!(ServerOptions::default().tls, None);
        assert_eq!(ClientOptions::default().tls, None);
        let client = TlsClientOptions::default();
        assert_eq!(client.ca_pem, None);
        assert!(!client.native_roots);
        assert_eq!(client.client_cert, None);
        assert_eq!(client.server_name, None);
        assert_eq!(client.config, None);
        assert_eq!(TlsServerOptions::new("CERT", "KEY").config, None);
    }

    #[test]
    fn debug_never_prints_keys() {
        let server = TlsServerOptions::new("CERT", "SECRET-KEY").with_client_ca("CA");
        let client = TlsClientOptions {
            client_cert: Some(TlsClientCert::new("CERT", "SECRET-KEY")),
            ..TlsClientOptions::with_ca("CA")
        };
        for text in [
            format!("{server:?}"),
            format!("{client:?}"),
            format!(
                "{:?}",
                ServerOptions {
                    tls: Some(server.clone()),
                    ..ServerOptions::default()
                }
            ),
        ] {
            assert!(!text.contains("SECRET"), "{text}");
            assert!(text.contains("<redacted>"), "{text}");
        }
        assert_eq!(server.client_ca_pem.as_deref(), Some(&b"CA"[..]));
        assert_eq!(client.ca_pem.as_deref(), Some(&b"CA"[..]));
    }
}
