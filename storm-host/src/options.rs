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
///
/// `#[non_exhaustive]`: build it with [`new`](Self::new) or
/// `from_config` (feature `tls`) and the `with_*` methods; the fields
/// stay public to read, and to set on a value you own.
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
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
///
/// `#[non_exhaustive]`: build it with [`new`](Self::new); the fields stay
/// public to read.
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
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
///
/// `#[non_exhaustive]`: build it from [`default`](Self::default),
/// [`with_ca`](Self::with_ca), [`with_native_roots`](Self::with_native_roots)
/// or `from_config` (feature `tls`) and the chainable methods
/// ([`with_client_cert`](Self::with_client_cert),
/// [`with_server_name`](Self::with_server_name));
/// the fields stay public to read, and to set on a value you own.
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
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

    /// Presents `cert` when the server asks for a client certificate
    /// (default: none).
    #[must_use]
    pub fn with_client_cert(mut self, cert: TlsClientCert) -> Self {
        self.client_cert = Some(cert);
        self
    }

    /// Expects `name` (a DNS name or an IP address) in the server's
    /// certificate and sends it as SNI (default: the host the client
    /// connects to).
    #[must_use]
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
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
///
/// `#[non_exhaustive]`, so a new option is not a breaking change: start
/// from [`default`](Self::default) and chain the `with_*` methods. The
/// fields stay public, to read and to set on a value you own:
///
/// ```
/// use std::time::Duration;
/// use storm_host::options::ServerOptions;
///
/// let mut options = ServerOptions::default()
///     .with_addr("127.0.0.1:9001")
///     .with_max_connections(10_000);
/// options.handshake_timeout = Duration::from_secs(5);
/// assert_eq!(options.backlog, 1024);
/// ```
///
/// A struct literal does not compile outside this crate:
///
/// ```compile_fail
/// use storm_host::options::ServerOptions;
///
/// let options = ServerOptions {
///     addr: "127.0.0.1:9001".into(),
///     ..ServerOptions::default()
/// };
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
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

impl ServerOptions {
    /// Listens on `addr`, e.g. `127.0.0.1:9001` or `[::1]:9001` (default
    /// `127.0.0.1:0`).
    #[must_use]
    pub fn with_addr(mut self, addr: impl Into<String>) -> Self {
        self.addr = addr.into();
        self
    }

    /// The listen backlog (default 1024).
    #[must_use]
    pub fn with_backlog(mut self, backlog: u32) -> Self {
        self.backlog = backlog;
        self
    }

    /// `TCP_NODELAY` on accepted sockets (default `true`).
    #[must_use]
    pub fn with_nodelay(mut self, nodelay: bool) -> Self {
        self.nodelay = nodelay;
        self
    }

    /// TCP keep-alive on accepted sockets (default `true`).
    #[must_use]
    pub fn with_keepalive(mut self, keepalive: bool) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// `SO_RCVBUF` of accepted sockets (default: the system's).
    #[must_use]
    pub fn with_recv_buffer_size(mut self, bytes: u32) -> Self {
        self.recv_buffer_size = Some(bytes);
        self
    }

    /// `SO_SNDBUF` of accepted sockets (default: the system's).
    #[must_use]
    pub fn with_send_buffer_size(mut self, bytes: u32) -> Self {
        self.send_buffer_size = Some(bytes);
        self
    }

    /// Most concurrent connections, 0 = unlimited (default 0).
    #[must_use]
    pub fn with_max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// Time a new connection has to finish its handshakes (default 10 s).
    #[must_use]
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Pending-send limits and the slow-consumer policy of each session
    /// (default [`BackpressureConfig::default`]).
    #[must_use]
    pub fn with_backpressure(mut self, backpressure: BackpressureConfig) -> Self {
        self.backpressure = backpressure;
        self
    }

    /// Heartbeat, close timeout, middleware, idle buffer release (default
    /// [`LinkConfig::default`]).
    #[must_use]
    pub fn with_link(mut self, link: LinkConfig) -> Self {
        self.link = link;
        self
    }

    /// Most bytes of queued messages one write gathers (default 64 KiB).
    #[must_use]
    pub fn with_write_batch(mut self, bytes: usize) -> Self {
        self.write_batch = bytes;
        self
    }

    /// TLS on every accepted connection (default: plain TCP).
    #[must_use]
    pub fn with_tls(mut self, tls: TlsServerOptions) -> Self {
        self.tls = Some(tls);
        self
    }
}

/// WebSocket specifics, for servers and clients.
///
/// `#[non_exhaustive]`: start from [`default`](Self::default) and chain
/// the `with_*` methods; the fields stay public, to read and to set on a
/// value you own.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
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

impl WsOptions {
    /// Frame and message limits, auto-pong, fragmentation (default
    /// [`ws::Config::default`]).
    #[must_use]
    pub fn with_config(mut self, config: ws::Config) -> Self {
        self.config = config;
        self
    }

    /// permessage-deflate to accept (server) or offer (client) (default
    /// off).
    #[must_use]
    pub fn with_deflate(mut self, deflate: DeflateConfig) -> Self {
        self.deflate = Some(deflate);
        self
    }

    /// Subprotocols: supported in preference order (server) or offered
    /// (client) (default none).
    #[must_use]
    pub fn with_subprotocols<S: Into<String>>(
        mut self,
        subprotocols: impl IntoIterator<Item = S>,
    ) -> Self {
        self.subprotocols = subprotocols.into_iter().map(Into::into).collect();
        self
    }

    /// Server only: the origins whose pages may open a WebSocket (see
    /// [`allowed_origins`](Self::allowed_origins); default: every origin).
    #[must_use]
    pub fn with_allowed_origins<S: Into<String>>(
        mut self,
        origins: impl IntoIterator<Item = S>,
    ) -> Self {
        self.allowed_origins = origins.into_iter().map(Into::into).collect();
        self
    }
}

/// Options every client has.
///
/// `#[non_exhaustive]`: start from [`default`](Self::default) and chain
/// the `with_*` methods; the fields stay public, to read and to set on a
/// value you own.
#[derive(Debug, Clone)]
#[non_exhaustive]
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

impl ClientOptions {
    /// Time to connect, TCP and handshakes (default 10 s).
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// `TCP_NODELAY` (default `true`).
    #[must_use]
    pub fn with_nodelay(mut self, nodelay: bool) -> Self {
        self.nodelay = nodelay;
        self
    }

    /// Reconnects after an unexpected disconnect, with this backoff
    /// (default: no reconnecting).
    #[must_use]
    pub fn with_reconnect(mut self, backoff: BackoffConfig) -> Self {
        self.reconnect = Some(backoff);
        self
    }

    /// Pending-send limits and slow-consumer policy (default
    /// [`BackpressureConfig::default`]).
    #[must_use]
    pub fn with_backpressure(mut self, backpressure: BackpressureConfig) -> Self {
        self.backpressure = backpressure;
        self
    }

    /// Heartbeat, close timeout, middleware, idle buffer release (default
    /// [`LinkConfig::default`]).
    #[must_use]
    pub fn with_link(mut self, link: LinkConfig) -> Self {
        self.link = link;
        self
    }

    /// Adds a handshake header (WebSocket), e.g. `Authorization` (default
    /// none).
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Most bytes of queued messages one write gathers (default 64 KiB).
    #[must_use]
    pub fn with_write_batch(mut self, bytes: usize) -> Self {
        self.write_batch = bytes;
        self
    }

    /// TLS for the connection (default: plain TCP, or
    /// [`TlsClientOptions::default`] for a `wss://` URL).
    #[must_use]
    pub fn with_tls(mut self, tls: TlsClientOptions) -> Self {
        self.tls = Some(tls);
        self
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
