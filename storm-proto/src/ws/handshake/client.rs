//! Client side: write the upgrade request, validate the `101` response.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::{BufMut, Bytes, BytesMut};
use rand::RngCore;

use super::{
    ConfigError, HeadBuffer, HeadError, Headers, accept_key, check_deflate, check_header,
    check_limits, check_subprotocols, httparse_reason, is_header_value, put_header, single,
};
use crate::ws::deflate::{DeflateConfig, DeflateParams};
use crate::ws::extensions::{
    self, Extension, ExtensionError, PERMESSAGE_DEFLATE, deflate_offer, deflate_response_params,
};

/// Headers the client request writes itself; extra headers may not repeat
/// them.
const RESERVED: &[&str] = &[
    "host",
    "upgrade",
    "connection",
    "origin",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "content-length",
    "transfer-encoding",
];

/// What a client asks for in its opening handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// The `Host` value: the host name (IPv6 literals in brackets), with
    /// `:port` when the port is not the scheme's default; see
    /// [`ClientConfig::host_value`].
    pub host: String,
    /// The resource name: path and query, starting with `/`.
    pub resource: String,
    /// An `Origin` to send (browsers do; other clients usually do not).
    /// Default `None`.
    pub origin: Option<String>,
    /// Subprotocols to offer, most preferred first. Default empty.
    pub subprotocols: Vec<String>,
    /// Extra request headers, e.g. `Authorization`. Default empty.
    pub headers: Vec<(String, String)>,
    /// permessage-deflate to offer. Default `None` (not offered).
    pub deflate: Option<DeflateConfig>,
    /// Largest response header block accepted, including the blank line.
    /// Default 16 KiB (the most the handshake buffers).
    pub max_response_header_bytes: usize,
    /// Most response header fields accepted. Default 64.
    pub max_headers: usize,
}

impl ClientConfig {
    /// A config for `host` (the `Host` value) and `resource` (path and
    /// query), with every other field at its default.
    pub fn new(host: impl Into<String>, resource: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            resource: resource.into(),
            origin: None,
            subprotocols: Vec::new(),
            headers: Vec::new(),
            deflate: None,
            max_response_header_bytes: 16 * 1024,
            max_headers: 64,
        }
    }

    /// The `Host` value for `host` and `port`: the port is left out when it
    /// is the default for the scheme (80 for `ws`, 443 for `wss`), and an
    /// IPv6 literal is put in brackets.
    #[must_use]
    pub fn host_value(host: &str, port: u16, secure: bool) -> String {
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        if port == if secure { 443 } else { 80 } {
            host
        } else {
            format!("{host}:{port}")
        }
    }

    /// Checks every field.
    ///
    /// # Errors
    ///
    /// The first field that cannot be sent as is.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let host = self.host.as_bytes();
        if host.is_empty() || !host.iter().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::InvalidHost);
        }
        let res = self.resource.as_bytes();
        if res.first() != Some(&b'/') || !res.iter().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::InvalidResource);
        }
        if let Some(origin) = &self.origin {
            if origin.is_empty() || !is_header_value(origin.as_bytes()) {
                return Err(ConfigError::InvalidHeader("Origin".into()));
            }
        }
        check_subprotocols(&self.subprotocols)?;
        for (name, value) in &self.headers {
            check_header(name, value, RESERVED)?;
        }
        check_deflate(self.deflate.as_ref())?;
        check_limits(
            self.max_response_header_bytes,
            "max_response_header_bytes",
            self.max_headers,
        )
    }
}

/// A client waiting for the server's answer to its upgrade request.
///
/// Created by [`ClientHandshake::start`], which writes the request; feed
/// everything the server sends to [`ClientHandshake::handle_input`] until it
/// returns [`ClientStep::Done`].
#[derive(Debug)]
pub struct ClientHandshake {
    expected_accept: String,
    subprotocols: Vec<String>,
    deflate: Option<DeflateConfig>,
    max_headers: usize,
    head: HeadBuffer,
}

/// What [`ClientHandshake::handle_input`] made of the input so far.
#[derive(Debug)]
#[must_use]
pub enum ClientStep {
    /// The response header block is not complete yet: feed more bytes to
    /// this handshake.
    NeedMore(ClientHandshake),
    /// The server accepted the upgrade.
    Done(Upgraded),
}

/// A successful opening handshake, seen from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Upgraded {
    /// The response status (always 101).
    pub status: u16,
    /// All response headers.
    pub headers: Headers,
    /// The subprotocol the server selected, one of those offered.
    pub subprotocol: Option<String>,
    /// The negotiated permessage-deflate parameters, if any.
    pub deflate: Option<DeflateParams>,
    /// Bytes that followed the header block: the start of the WebSocket
    /// stream (frames may arrive in the same read). Feed them to the
    /// connection before anything read later.
    pub leftover: Bytes,
}

/// Why the server's response does not complete the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResponseError {
    /// The header block exceeded `max_response_header_bytes`.
    HeaderTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// More than `max_headers` header fields.
    TooManyHeaders {
        /// The configured limit.
        limit: usize,
    },
    /// The response is not valid HTTP/1.x.
    Malformed(&'static str),
    /// The server answered with a status other than 101 (e.g. 401, 403, 404,
    /// a redirect).
    Rejected {
        /// The status code.
        status: u16,
        /// The response headers.
        headers: Headers,
        /// Whatever body bytes arrived with the header block.
        body_start: Bytes,
    },
    /// The response is not HTTP/1.1.
    UnsupportedHttpVersion,
    /// `Upgrade: websocket` is missing.
    NotWebSocketUpgrade,
    /// `Connection` lacks the `upgrade` token.
    MissingConnectionUpgrade,
    /// `Sec-WebSocket-Accept` is missing, repeated or wrong.
    AcceptMismatch,
    /// The server selected a subprotocol that was not offered (or several).
    UnexpectedSubprotocol(String),
    /// `Sec-WebSocket-Extensions` is malformed or selects something not
    /// offered, or its permessage-deflate parameters are unacceptable.
    Extension(ExtensionError),
    /// The server answered with a TLS record (an alert), not HTTP: it
    /// speaks TLS, so the URL should be `wss://`. See
    /// [`tls_sniff`](crate::tls_sniff).
    ServerSpeaksTls,
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HeaderTooLarge { limit } => {
                write!(f, "response header block exceeds {limit} bytes")
            }
            Self::TooManyHeaders { limit } => write!(f, "more than {limit} response headers"),
            Self::Malformed(why) => write!(f, "malformed HTTP response: {why}"),
            Self::Rejected { status, .. } => {
                write!(f, "server refused the upgrade with status {status}")
            }
            Self::UnsupportedHttpVersion => f.write_str("response is not HTTP/1.1"),
            Self::NotWebSocketUpgrade => f.write_str("response lacks `Upgrade: websocket`"),
            Self::MissingConnectionUpgrade => f.write_str("response lacks `Connection: upgrade`"),
            Self::AcceptMismatch => f.write_str("wrong or missing Sec-WebSocket-Accept"),
            Self::UnexpectedSubprotocol(p) => {
                write!(
                    f,
                    "server selected subprotocol `{p}`, which was not offered"
                )
            }
            Self::Extension(e) => write!(f, "extension negotiation failed: {e}"),
            Self::ServerSpeaksTls => write!(
                f,
                "{}: use a wss:// URL",
                crate::tls_sniff::SERVER_SPEAKS_TLS
            ),
        }
    }
}

impl std::error::Error for ResponseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Extension(e) => Some(e),
            _ => None,
        }
    }
}

impl ClientHandshake {
    /// Validates `config`, draws a 16-byte key from `rng` and writes the
    /// upgrade request into `out`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when `config` is invalid; nothing is written then.
    pub fn start<R: RngCore + ?Sized>(
        config: &ClientConfig,
        rng: &mut R,
        out: &mut BytesMut,
    ) -> Result<Self, ConfigError> {
        let mut key = [0u8; 16];
        rng.fill_bytes(&mut key);
        Self::start_with_key(config, key, out)
    }

    /// As [`start`](Self::start), with a caller-chosen key (for transcripts
    /// and tests; a real client must use a fresh random key).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when `config` is invalid; nothing is written then.
    pub fn start_with_key(
        config: &ClientConfig,
        key: [u8; 16],
        out: &mut BytesMut,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let key = STANDARD.encode(key);
        out.put_slice(b"GET ");
        out.put_slice(config.resource.as_bytes());
        out.put_slice(b" HTTP/1.1\r\n");
        put_header(out, "Host", config.host.as_bytes());
        put_header(out, "Upgrade", b"websocket");
        put_header(out, "Connection", b"Upgrade");
        put_header(out, "Sec-WebSocket-Key", key.as_bytes());
        put_header(out, "Sec-WebSocket-Version", b"13");
        if let Some(origin) = &config.origin {
            put_header(out, "Origin", origin.as_bytes());
        }
        if !config.subprotocols.is_empty() {
            put_header(
                out,
                "Sec-WebSocket-Protocol",
                config.subprotocols.join(", ").as_bytes(),
            );
        }
        if let Some(deflate) = &config.deflate {
            put_header(
                out,
                "Sec-WebSocket-Extensions",
                deflate_offer(deflate).as_bytes(),
            );
        }
        for (name, value) in &config.headers {
            put_header(out, name, value.as_bytes());
        }
        out.put_slice(b"\r\n");
        Ok(Self {
            expected_accept: accept_key(key.as_bytes()),
            subprotocols: config.subprotocols.clone(),
            deflate: config.deflate.clone(),
            max_headers: config.max_headers,
            head: HeadBuffer::new(config.max_response_header_bytes),
        })
    }

    /// Feeds bytes the server sent (any chunking). Call until it returns
    /// [`ClientStep::Done`]; bytes past the header block end up in
    /// [`Upgraded::leftover`].
    ///
    /// Total work is linear in the bytes fed; at most
    /// `max_response_header_bytes` are buffered.
    ///
    /// # Errors
    ///
    /// [`ResponseError`] when the response is malformed, too large, not a
    /// 101 ([`ResponseError::Rejected`]) or does not match the request. The
    /// connection should then be closed.
    pub fn handle_input(mut self, data: &[u8]) -> Result<ClientStep, ResponseError> {
        let limit = self.head.limit;
        let Some((head, leftover)) = self.head.push(data).map_err(|e| match e {
            HeadError::TooLarge => ResponseError::HeaderTooLarge { limit },
            HeadError::Tls => ResponseError::ServerSpeaksTls,
        })?
        else {
            return Ok(ClientStep::NeedMore(self));
        };
        self.finish(&head, leftover).map(ClientStep::Done)
    }

    /// Bytes of an incomplete header block buffered so far (never more than
    /// `max_response_header_bytes`).
    #[must_use]
    pub fn buffered(&self) -> usize {
        self.head.buffered()
    }

    fn finish(self, head: &[u8], leftover: Bytes) -> Result<Upgraded, ResponseError> {
        let mut slots = vec![httparse::EMPTY_HEADER; self.max_headers];
        let mut resp = httparse::Response::new(&mut slots);
        match resp.parse(head) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => {
                return Err(ResponseError::Malformed("incomplete header block"));
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ResponseError::TooManyHeaders {
                    limit: self.max_headers,
                });
            }
            Err(e) => return Err(ResponseError::Malformed(httparse_reason(e))),
        }
        let status = resp.code.unwrap_or_default();
        let headers = Headers::from_httparse(resp.headers);
        if status != 101 {
            return Err(ResponseError::Rejected {
                status,
                headers,
                body_start: leftover,
            });
        }
        if resp.version != Some(1) {
            return Err(ResponseError::UnsupportedHttpVersion);
        }
        if !headers.has_token("Upgrade", "websocket") {
            return Err(ResponseError::NotWebSocketUpgrade);
        }
        if !headers.has_token("Connection", "upgrade") {
            return Err(ResponseError::MissingConnectionUpgrade);
        }
        if single(&headers, "Sec-WebSocket-Accept")
            .is_none_or(|v| v != self.expected_accept.as_bytes())
        {
            return Err(ResponseError::AcceptMismatch);
        }
        let subprotocol = self.selected_subprotocol(&headers)?;
        let deflate = self
            .negotiated_deflate(&headers)
            .map_err(ResponseError::Extension)?;
        Ok(Upgraded {
            status,
            headers,
            subprotocol,
            deflate,
            leftover,
        })
    }

    fn selected_subprotocol(&self, headers: &Headers) -> Result<Option<String>, ResponseError> {
        let mut values = headers.get_all("Sec-WebSocket-Protocol");
        let (value, extra) = (values.next(), values.next());
        let Some(value) = value else { return Ok(None) };
        let value = value.trim_ascii();
        let lossy = || String::from_utf8_lossy(value).into_owned();
        if extra.is_some() {
            return Err(ResponseError::UnexpectedSubprotocol(lossy()));
        }
        self.subprotocols
            .iter()
            .find(|p| p.as_bytes() == value)
            .map(|p| Some(p.clone()))
            .ok_or_else(|| ResponseError::UnexpectedSubprotocol(lossy()))
    }

    fn negotiated_deflate(
        &self,
        headers: &Headers,
    ) -> Result<Option<DeflateParams>, ExtensionError> {
        let mut selected: Vec<Extension> = Vec::new();
        for value in headers.get_all("Sec-WebSocket-Extensions") {
            extensions::parse_extensions(value, &mut selected)?;
        }
        let mut params = None;
        for ext in &selected {
            let Some(config) = self
                .deflate
                .as_ref()
                .filter(|_| ext.name.eq_ignore_ascii_case(PERMESSAGE_DEFLATE))
            else {
                return Err(ExtensionError::NotOffered(ext.name.clone()));
            };
            if params.is_some() {
                return Err(ExtensionError::DuplicateExtension(ext.name.clone()));
            }
            params = Some(deflate_response_params(config, ext)?);
        }
        Ok(params)
    }
}
