//! Server side: validate the upgrade request, answer `101` or an error.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::{BufMut, Bytes, BytesMut};

use super::decision::{ACCEPT_RESERVED, Acceptance, Attached, Decision, Refused};
use super::{
    ConfigError, HeadBuffer, HeadError, Headers, accept_key, check_deflate, check_header,
    check_limits, check_subprotocols, httparse_reason, put_header, reason_phrase, single,
    write_closing_response,
};
use crate::ws::deflate::{DeflateConfig, DeflateParams};
use crate::ws::extensions::{self, Extension, ExtensionError, negotiate_deflate};

/// Headers a server response writes itself; [`PendingUpgrade::add_header`]
/// may not add them (it does not know yet which response it adds to).
const RESERVED: &[&str] = ACCEPT_RESERVED;

/// What a server accepts in opening handshakes. Share one between
/// connections with an [`Arc`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Supported subprotocols, most preferred first. By default the first of
    /// these that the client offered is selected. Default empty.
    pub subprotocols: Vec<String>,
    /// permessage-deflate to accept. Default `None` (offers are declined).
    pub deflate: Option<DeflateConfig>,
    /// Largest request header block, including the blank line; longer gets
    /// 431. Default 8 KiB (the most a pending handshake buffers).
    pub max_request_header_bytes: usize,
    /// Most request header fields; more gets 431. Default 64.
    pub max_headers: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            subprotocols: Vec::new(),
            deflate: None,
            max_request_header_bytes: 8 * 1024,
            max_headers: 64,
        }
    }
}

impl ServerConfig {
    /// Checks every field.
    ///
    /// # Errors
    ///
    /// The first field out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_subprotocols(&self.subprotocols)?;
        check_deflate(self.deflate.as_ref())?;
        check_limits(
            self.max_request_header_bytes,
            "max_request_header_bytes",
            self.max_headers,
        )
    }
}

/// Why a request is not a valid WebSocket upgrade, and which HTTP status the
/// client gets for it ([`status`](Self::status),
/// [`write_response`](Self::write_response)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The header block exceeded `max_request_header_bytes` (431).
    HeaderTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// More than `max_headers` header fields (431).
    TooManyHeaders {
        /// The configured limit.
        limit: usize,
    },
    /// Not valid HTTP/1.x (400).
    Malformed(&'static str),
    /// The method is not `GET` (400).
    MethodNotGet,
    /// The request is not HTTP/1.1 (400).
    UnsupportedHttpVersion,
    /// `Host` is missing, empty or repeated (400).
    MissingHost,
    /// `Upgrade` lacks the `websocket` token (400).
    NotWebSocketUpgrade,
    /// `Connection` lacks the `upgrade` token (400).
    MissingConnectionUpgrade,
    /// `Sec-WebSocket-Version` is missing or not 13 (426, with
    /// `Sec-WebSocket-Version: 13`).
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` is missing, repeated, or not base64 of 16 bytes
    /// (400).
    InvalidKey,
    /// `Sec-WebSocket-Protocol` holds something that is not a token (400).
    InvalidSubprotocols,
    /// `Sec-WebSocket-Extensions` does not parse (400).
    InvalidExtensions(ExtensionError),
    /// The request declares a body (`Content-Length` other than 0, or
    /// `Transfer-Encoding`) (400).
    UnexpectedBody,
    /// The client opened with a TLS record (its ClientHello), not an HTTP
    /// request: it speaks TLS and this server does not (400, which the
    /// client's TLS reports as a reply that is not TLS). See
    /// [`tls_sniff`](crate::tls_sniff).
    ClientSpeaksTls,
}

impl HandshakeError {
    /// The HTTP status the client should get.
    #[must_use]
    pub fn status(&self) -> u16 {
        match self {
            Self::HeaderTooLarge { .. } | Self::TooManyHeaders { .. } => 431,
            Self::UnsupportedVersion => 426,
            _ => 400,
        }
    }

    /// Writes the complete error response (with `Content-Length`,
    /// `Connection: close` and a short plain-text body) into `out`. Close the
    /// connection once it is written.
    pub fn write_response(&self, out: &mut BytesMut) {
        let body = format!("{self}\n");
        let extra: &[(&str, &str)] = match self {
            Self::UnsupportedVersion => &[("Sec-WebSocket-Version", "13")],
            _ => &[],
        };
        write_closing_response(out, self.status(), extra, body.as_bytes());
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HeaderTooLarge { limit } => {
                write!(f, "request header block exceeds {limit} bytes")
            }
            Self::TooManyHeaders { limit } => write!(f, "more than {limit} request headers"),
            Self::Malformed(why) => write!(f, "malformed HTTP request: {why}"),
            Self::MethodNotGet => f.write_str("WebSocket upgrade must use GET"),
            Self::UnsupportedHttpVersion => f.write_str("WebSocket upgrade requires HTTP/1.1"),
            Self::MissingHost => f.write_str("missing or repeated Host header"),
            Self::NotWebSocketUpgrade => f.write_str("missing `Upgrade: websocket`"),
            Self::MissingConnectionUpgrade => f.write_str("missing `Connection: upgrade`"),
            Self::UnsupportedVersion => f.write_str("unsupported Sec-WebSocket-Version"),
            Self::InvalidKey => f.write_str("invalid Sec-WebSocket-Key"),
            Self::InvalidSubprotocols => f.write_str("invalid Sec-WebSocket-Protocol"),
            Self::InvalidExtensions(e) => write!(f, "invalid Sec-WebSocket-Extensions: {e}"),
            Self::UnexpectedBody => f.write_str("upgrade request must not have a body"),
            Self::ClientSpeaksTls => f.write_str(crate::tls_sniff::CLIENT_SPEAKS_TLS),
        }
    }
}

impl std::error::Error for HandshakeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::InvalidExtensions(e) => Some(e),
            _ => None,
        }
    }
}

/// A server waiting for a client's upgrade request.
///
/// Feed everything the client sends to [`handle_input`](Self::handle_input)
/// until it returns [`ServerStep::Request`].
#[derive(Debug)]
pub struct ServerHandshake {
    config: Arc<ServerConfig>,
    head: HeadBuffer,
}

/// What [`ServerHandshake::handle_input`] made of the input so far.
#[derive(Debug)]
#[must_use]
pub enum ServerStep {
    /// The request header block is not complete yet: feed more bytes to this
    /// handshake.
    NeedMore(ServerHandshake),
    /// A valid upgrade request, waiting for the application's decision.
    Request(PendingUpgrade),
}

/// A validated upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRequest {
    path: String,
    host: String,
    headers: Headers,
    subprotocols: Vec<String>,
    extensions: Vec<Extension>,
    key: Bytes,
}

impl UpgradeRequest {
    /// The request method: always `GET` (anything else is refused
    /// before the application sees the request).
    #[must_use]
    pub fn method(&self) -> &str {
        "GET"
    }

    /// The request target as sent: path and query, e.g. `/chat?room=1`.
    #[must_use]
    pub fn target(&self) -> &str {
        &self.path
    }

    /// The path of the target, without its query: `/chat` for
    /// `/chat?room=1`.
    #[must_use]
    pub fn path(&self) -> &str {
        self.path
            .split_once('?')
            .map_or(&self.path, |(path, _)| path)
    }

    /// The query of the target, without its `?`: `room=1` for
    /// `/chat?room=1`; `None` when the target has no `?`. Not decoded.
    #[must_use]
    pub fn query(&self) -> Option<&str> {
        self.path.split_once('?').map(|(_, query)| query)
    }

    /// The first value of the query parameter `name`, percent-decoded
    /// (`+` as a space; `None` when absent or not UTF-8 once decoded).
    #[must_use]
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query()?
            .split('&')
            .filter_map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(key)? == name).then(|| percent_decode(value))
            })
            .next()
            .flatten()
    }

    /// The `Host` value (lossily decoded if not UTF-8).
    #[must_use]
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The `Origin` value, if present and UTF-8.
    #[must_use]
    pub fn origin(&self) -> Option<&str> {
        self.headers
            .get("Origin")
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// All request headers (e.g. `Authorization`, `Cookie`), looked up
    /// case-insensitively.
    #[must_use]
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The subprotocols the client offered, in its order.
    #[must_use]
    pub fn subprotocols(&self) -> &[String] {
        &self.subprotocols
    }

    /// The extensions the client offered, in its order.
    #[must_use]
    pub fn extensions(&self) -> &[Extension] {
        &self.extensions
    }
}

/// A valid upgrade request the application has not answered yet. It only
/// offers [`accept`](Self::accept) and [`reject`](Self::reject) (plus
/// choosing a subprotocol and adding response headers first).
#[derive(Debug)]
pub struct PendingUpgrade {
    request: UpgradeRequest,
    leftover: Bytes,
    config: Arc<ServerConfig>,
    subprotocol: Option<String>,
    response_headers: Vec<(String, String)>,
}

/// A completed opening handshake, seen from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Accepted {
    /// The request that was accepted.
    pub request: UpgradeRequest,
    /// The subprotocol announced in the response.
    pub subprotocol: Option<String>,
    /// The negotiated permessage-deflate parameters, if any.
    pub deflate: Option<DeflateParams>,
    /// Bytes the client sent after its request (it may pipeline its first
    /// frames): feed them to the connection before anything read later.
    pub leftover: Bytes,
    /// What the application's [`Decision::attach`] attached, if anything.
    pub attached: Option<Attached>,
}

impl ServerHandshake {
    /// A handshake that accepts according to `config`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when `config` is invalid.
    pub fn new(config: Arc<ServerConfig>) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            head: HeadBuffer::new(config.max_request_header_bytes),
            config,
        })
    }

    /// Feeds bytes the client sent (any chunking). Call until it returns
    /// [`ServerStep::Request`]; bytes past the header block end up in
    /// [`Accepted::leftover`].
    ///
    /// Total work is linear in the bytes fed; at most
    /// `max_request_header_bytes` are buffered.
    ///
    /// # Errors
    ///
    /// [`HandshakeError`] when the request is not a valid upgrade: write
    /// [`HandshakeError::write_response`] and close the connection.
    pub fn handle_input(mut self, data: &[u8]) -> Result<ServerStep, HandshakeError> {
        let limit = self.head.limit;
        let Some((head, leftover)) = self.head.push(data).map_err(|e| match e {
            HeadError::TooLarge => HandshakeError::HeaderTooLarge { limit },
            HeadError::Tls => HandshakeError::ClientSpeaksTls,
        })?
        else {
            return Ok(ServerStep::NeedMore(self));
        };
        let request = parse_request(&head, self.config.max_headers)?;
        let subprotocol = self
            .config
            .subprotocols
            .iter()
            .find(|p| request.subprotocols.contains(p))
            .cloned();
        Ok(ServerStep::Request(PendingUpgrade {
            request,
            leftover,
            config: self.config,
            subprotocol,
            response_headers: Vec::new(),
        }))
    }

    /// Bytes of an incomplete header block buffered so far (never more than
    /// `max_request_header_bytes`).
    #[must_use]
    pub fn buffered(&self) -> usize {
        self.head.buffered()
    }
}

fn parse_request(head: &[u8], max_headers: usize) -> Result<UpgradeRequest, HandshakeError> {
    let mut slots = vec![httparse::EMPTY_HEADER; max_headers];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(HandshakeError::Malformed("incomplete header block"));
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HandshakeError::TooManyHeaders { limit: max_headers });
        }
        Err(e) => return Err(HandshakeError::Malformed(httparse_reason(e))),
    }
    if req.method != Some("GET") {
        return Err(HandshakeError::MethodNotGet);
    }
    if req.version != Some(1) {
        return Err(HandshakeError::UnsupportedHttpVersion);
    }
    let path = req.path.unwrap_or_default().to_owned();
    let headers = Headers::from_httparse(req.headers);

    let host = match single(&headers, "Host") {
        Some(h) if !h.is_empty() => String::from_utf8_lossy(h).into_owned(),
        _ => return Err(HandshakeError::MissingHost),
    };
    if !headers.has_token("Upgrade", "websocket") {
        return Err(HandshakeError::NotWebSocketUpgrade);
    }
    if !headers.has_token("Connection", "upgrade") {
        return Err(HandshakeError::MissingConnectionUpgrade);
    }
    if single(&headers, "Sec-WebSocket-Version") != Some(b"13") {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let key = match single(&headers, "Sec-WebSocket-Key") {
        // 24 base64 characters encode 16 bytes; checking the length first
        // bounds the decode.
        Some(k) if k.len() == 24 => k,
        _ => return Err(HandshakeError::InvalidKey),
    };
    match STANDARD.decode(key) {
        Ok(raw) if raw.len() == 16 => {}
        _ => return Err(HandshakeError::InvalidKey),
    }
    let key = Bytes::copy_from_slice(key);
    if headers.get("Transfer-Encoding").is_some()
        || headers
            .get_all("Content-Length")
            .any(|v| v.trim_ascii() != b"0")
    {
        return Err(HandshakeError::UnexpectedBody);
    }
    let mut subprotocols = Vec::new();
    for item in headers.list_items("Sec-WebSocket-Protocol") {
        if !extensions::is_token(item) {
            return Err(HandshakeError::InvalidSubprotocols);
        }
        subprotocols.push(String::from_utf8_lossy(item).into_owned());
    }
    let mut offered = Vec::new();
    for value in headers.get_all("Sec-WebSocket-Extensions") {
        extensions::parse_extensions(value, &mut offered)
            .map_err(HandshakeError::InvalidExtensions)?;
    }
    Ok(UpgradeRequest {
        path,
        host,
        headers,
        subprotocols,
        extensions: offered,
        key,
    })
}

impl PendingUpgrade {
    /// The request, for the application to inspect (path, `Authorization`,
    /// `Origin`, offered subprotocols) before deciding.
    #[must_use]
    pub fn request(&self) -> &UpgradeRequest {
        &self.request
    }

    /// The subprotocol [`accept`](Self::accept) will announce: by default the
    /// first of the server's supported ones that the client offered.
    #[must_use]
    pub fn subprotocol(&self) -> Option<&str> {
        self.subprotocol.as_deref()
    }

    /// Chooses the subprotocol to announce (`None` for none).
    ///
    /// # Errors
    ///
    /// [`ConfigError::SubprotocolNotOffered`] when the client did not offer
    /// it; the previous choice stays.
    pub fn select_subprotocol(&mut self, protocol: Option<&str>) -> Result<(), ConfigError> {
        match protocol {
            None => self.subprotocol = None,
            Some(p) if self.request.subprotocols.iter().any(|q| q == p) => {
                self.subprotocol = Some(p.to_owned());
            }
            Some(p) => return Err(ConfigError::SubprotocolNotOffered(p.to_owned())),
        }
        Ok(())
    }

    /// Adds a header to the response, whichever it will be (e.g.
    /// `Set-Cookie` on accept, `WWW-Authenticate` or `Location` on reject).
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidHeader`] for a name that is not a token or a
    /// value with control characters, [`ConfigError::ReservedHeader`] for one
    /// the handshake writes itself.
    pub fn add_header(&mut self, name: &str, value: &str) -> Result<(), ConfigError> {
        check_header(name, value, RESERVED)?;
        self.response_headers
            .push((name.to_owned(), value.to_owned()));
        Ok(())
    }

    /// Accepts the upgrade: writes the `101 Switching Protocols` response
    /// (with `Sec-WebSocket-Accept`, the selected subprotocol, the negotiated
    /// `Sec-WebSocket-Extensions` and the added headers) into `out`.
    pub fn accept(mut self, out: &mut BytesMut) -> Accepted {
        let headers = std::mem::take(&mut self.response_headers);
        self.write_accept(&headers, None, out)
    }

    fn write_accept(
        self,
        headers: &[(String, String)],
        attached: Option<Attached>,
        out: &mut BytesMut,
    ) -> Accepted {
        let agreement = self
            .config
            .deflate
            .as_ref()
            .and_then(|c| negotiate_deflate(c, &self.request.extensions));
        out.put_slice(b"HTTP/1.1 101 ");
        out.put_slice(reason_phrase(101).as_bytes());
        out.put_slice(b"\r\n");
        put_header(out, "Upgrade", b"websocket");
        put_header(out, "Connection", b"Upgrade");
        put_header(
            out,
            "Sec-WebSocket-Accept",
            accept_key(&self.request.key).as_bytes(),
        );
        if let Some(p) = &self.subprotocol {
            put_header(out, "Sec-WebSocket-Protocol", p.as_bytes());
        }
        if let Some(a) = &agreement {
            put_header(out, "Sec-WebSocket-Extensions", a.response.as_bytes());
        }
        for (name, value) in headers {
            put_header(out, name, value.as_bytes());
        }
        out.put_slice(b"\r\n");
        Accepted {
            request: self.request,
            subprotocol: self.subprotocol,
            deflate: agreement.map(|a| a.params),
            leftover: self.leftover,
            attached,
        }
    }

    /// Refuses the upgrade: writes a complete HTTP response with `status`,
    /// the added headers, `Content-Length`, `Connection: close` and `body`
    /// into `out`. Close the connection once it is written.
    ///
    /// `status` should be 3xx, 4xx or 5xx; anything outside 300..=599 is
    /// written as 500 (a 1xx or 2xx would not end the exchange).
    pub fn reject(self, status: u16, body: &[u8], out: &mut BytesMut) {
        let status = if (300..=599).contains(&status) {
            status
        } else {
            500
        };
        write_closing_response(out, status, &self.response_headers, body);
    }

    /// Answers with the application's `decision` (which replaces the
    /// choices made through [`select_subprotocol`](Self::select_subprotocol)
    /// and [`add_header`](Self::add_header)): an acceptance writes the
    /// `101` and returns the [`Accepted`] handshake; a rejection writes its
    /// closing response. Close the connection after writing a refusal.
    ///
    /// # Errors
    ///
    /// [`Refused::Rejected`] for a rejection; [`Refused::InvalidDecision`]
    /// for a decision [`Decision::validate`] finds a mistake in, or one that
    /// chooses a subprotocol the client did not offer: a bare `500` was
    /// written then, without the decision's headers.
    pub fn decide(mut self, decision: Decision, out: &mut BytesMut) -> Result<Accepted, Refused> {
        let checked = decision.validate();
        let kind = decision.into_kind();
        let checked = checked.and_then(|()| match &kind {
            Ok(Acceptance {
                subprotocol: Some(p),
                ..
            }) => self.select_subprotocol(p.as_deref()),
            _ => Ok(()),
        });
        if let Err(e) = checked {
            write_closing_response(
                out,
                500,
                &[] as &[(&str, &str)],
                b"invalid upgrade decision\n",
            );
            return Err(Refused::InvalidDecision(e));
        }
        match kind {
            Ok(mut acceptance) => {
                let attached = acceptance.attached.take();
                Ok(self.write_accept(acceptance.headers(), attached, out))
            }
            Err(rejection) => {
                let status = rejection.status();
                write_closing_response(out, status, rejection.headers(), rejection.body());
                Err(Refused::Rejected(status))
            }
        }
    }
}

/// Decodes `%XX` escapes and `+` (a space) of a query component; `None`
/// for a bad escape or a result that is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        match b {
            b'+' => bytes.push(b' '),
            b'%' => {
                let (hex, tail) = rest.split_at_checked(2)?;
                let hex = std::str::from_utf8(hex).ok()?;
                bytes.push(u8::from_str_radix(hex, 16).ok()?);
                rest = tail;
            }
            _ => bytes.push(b),
        }
    }
    String::from_utf8(bytes).ok()
}
