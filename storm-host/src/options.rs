//! Option structs shared by every adapter, so switching runtime changes a
//! crate name and nothing else. Pure data with documented defaults; the
//! adapters apply the socket options.

use std::fmt;
use std::time::Duration;

use crate::link::LinkConfig;
use storm_proto::backpressure::BackpressureConfig;
/// How a plain TCP connection frames messages: storm-proto's, named here
/// too because every server and client option takes one.
pub use storm_proto::framing::Framing;
use storm_proto::reconnect::BackoffConfig;
use storm_proto::ws;
use storm_proto::ws::deflate::DeflateConfig;

/// TLS for a server, as runtime-neutral PEM data: each adapter builds its
/// TLS library's configuration from it once, when the server binds, and
/// refuses to bind (an invalid-input error that says what is wrong) when
/// the PEM does not parse or the key does not fit the certificate.
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

/// TLS for a client, as runtime-neutral PEM data; the adapter builds its TLS
/// library's configuration from it once, when the client starts. The
/// default trusts the usual public web roots and sends no certificate.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TlsClientOptions {
    /// CA certificates to trust (PEM, one or more), instead of the public
    /// web roots. Default `None`: the web roots (Mozilla's list) are trusted.
    pub ca_pem: Option<Vec<u8>>,
    /// A certificate to present when the server asks for one. Default `None`.
    pub client_cert: Option<TlsClientCert>,
    /// The name the server's certificate must carry (and the SNI sent), a
    /// DNS name or an IP address. Default `None`: the host of the URL or
    /// address the client connects to.
    pub server_name: Option<String>,
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
}

impl fmt::Debug for TlsClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClientOptions")
            .field("ca_pem", &self.ca_pem.as_ref().map(|pem| Bytes(pem.len())))
            .field("client_cert", &self.client_cert)
            .field("server_name", &self.server_name)
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
        assert_eq!(client.client_cert, None);
        assert_eq!(client.server_name, None);
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
