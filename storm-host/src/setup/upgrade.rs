//! A server's WebSocket upgrade as the application sees it: the request
//! with the connection's address and TLS details ([`UpgradeInfo`]), the
//! `allowed_origins` check, and the application's
//! [`Decision`] turned into a response and a connection ([`ServerRequest`]).
//!
//! Every adapter's upgrade hook gets an [`UpgradeInfo`] and returns a
//! [`Decision`]; the adapter runs it between [`ServerUpgrade::handle_input`]
//! returning [`ServerUpgradeStep::Request`] and
//! [`ServerRequest::decide`], all within the server's handshake timeout.
//! Until the decision, the connection holds its permit under
//! `max_connections` and the request's bytes, nothing else: no session, no
//! link, no buffers.

use std::any::Any;
use std::io;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use storm_proto::ws::handshake::{
    Attached, Decision, Headers, PendingUpgrade, Refused, ServerHandshake, ServerStep,
    UpgradeRequest,
};
use storm_proto::ws::{Connection, Side};

use super::invalid;
use crate::link::Protocol;
use crate::options::WsOptions;

/// What TLS told about a connection before its upgrade.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsInfo {
    /// The server name the client asked for (SNI), if it sent one.
    pub sni: Option<String>,
    /// The application protocol agreed through ALPN, if any.
    pub alpn: Option<Vec<u8>>,
}

impl TlsInfo {
    /// TLS details from their parts.
    #[must_use]
    pub fn new(sni: Option<String>, alpn: Option<Vec<u8>>) -> Self {
        Self { sni, alpn }
    }

    /// What a rustls server connection knows after its handshake.
    #[cfg(feature = "tls")]
    #[must_use]
    pub fn of(connection: &rustls::ServerConnection) -> Self {
        Self {
            sni: connection.server_name().map(str::to_owned),
            alpn: connection.alpn_protocol().map(<[u8]>::to_vec),
        }
    }
}

/// An upgrade request and the connection it came on: what a server's
/// upgrade hook decides on. Dereferences to the [`UpgradeRequest`]
/// (`info.path()`, `info.headers().get("Cookie")`, `info.origin()`).
#[derive(Debug, Clone)]
pub struct UpgradeInfo {
    request: UpgradeRequest,
    remote: SocketAddr,
    tls: Option<TlsInfo>,
}

impl UpgradeInfo {
    /// The request: method, path, query, headers, `Origin`, offered
    /// subprotocols and extensions.
    #[must_use]
    pub fn request(&self) -> &UpgradeRequest {
        &self.request
    }

    /// The peer's address.
    #[must_use]
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }

    /// The TLS details (SNI, ALPN) when the connection is TLS; `None` on
    /// plain TCP.
    #[must_use]
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }
}

impl Deref for UpgradeInfo {
    type Target = UpgradeRequest;
    fn deref(&self) -> &UpgradeRequest {
        &self.request
    }
}

/// Checks a list of allowed origins (as
/// [`WsOptions::allowed_origins`] takes them): each is an origin as a
/// browser sends it, `scheme://host[:port]`, with no path, and no trailing
/// slash.
///
/// # Errors
///
/// [`InvalidInput`](io::ErrorKind::InvalidInput) naming the first entry
/// that is not an origin.
pub fn check_origins(origins: &[String]) -> io::Result<()> {
    for origin in origins {
        let well_formed = origin.split_once("://").is_some_and(|(scheme, rest)| {
            !scheme.is_empty()
                && !rest.is_empty()
                && !rest.contains(['/', '?', '#'])
                && !origin.contains(|c: char| c.is_whitespace() || c.is_control())
        });
        if !well_formed {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "allowed origin `{origin}` is not `scheme://host[:port]` \
                     (no path, no trailing slash)"
                ),
            ));
        }
    }
    Ok(())
}

/// Whether `options.allowed_origins` lets `request` in: any request when
/// the list is empty; else one without an `Origin` header (not a
/// browser's), or one whose `Origin` is in the list (ASCII
/// case-insensitively, as hosts are).
fn origin_allowed(options: &WsOptions, request: &UpgradeRequest) -> bool {
    if options.allowed_origins.is_empty() {
        return true;
    }
    match request.headers().get("Origin") {
        None => true,
        Some(origin) => options
            .allowed_origins
            .iter()
            .any(|allowed| allowed.as_bytes().eq_ignore_ascii_case(origin.trim_ascii())),
    }
}

/// What a server answered a client's WebSocket upgrade with: read it from
/// the client's session with
/// [`Session::attached::<UpgradeResponse>()`](crate::session::Session::attached)
/// (each connection, reconnections included, carries its own).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UpgradeResponse {
    /// The subprotocol the server chose, one of those offered.
    pub subprotocol: Option<String>,
    /// Every header of the `101` response (case-insensitive lookup).
    pub headers: Headers,
}

/// A server's WebSocket upgrade waiting for the client's request.
#[derive(Debug)]
#[must_use]
pub struct ServerUpgrade<'a> {
    state: ServerHandshake,
    ws: &'a WsOptions,
}

/// What the request bytes so far made of a [`ServerUpgrade`].
#[derive(Debug)]
#[must_use]
pub enum ServerUpgradeStep<'a> {
    /// The request is not complete: read more.
    NeedMore(ServerUpgrade<'a>),
    /// A valid request from an allowed origin: decide on it (run the
    /// application's hook), then send what [`ServerRequest::decide`]
    /// answers.
    Request(ServerRequest<'a>),
    /// Refused already (a malformed request: 400, 426 or 431; an origin
    /// not allowed: 403): send the response and close.
    Done(Answer),
}

/// The response to send for an upgrade request, and what follows it.
#[derive(Debug)]
#[must_use]
#[non_exhaustive]
pub struct Answer {
    /// The response to send: the `101`, or a refusal.
    pub response: Bytes,
    /// The connection to speak after the `101`; or why the upgrade was
    /// refused (send the refusal, then close; a failed send of it does
    /// not matter then).
    pub opened: io::Result<Opened>,
}

/// A connection past its handshake, before it is a session.
#[derive(Debug)]
#[non_exhaustive]
pub struct Opened {
    /// The WebSocket connection (with permessage-deflate when agreed).
    pub protocol: Protocol,
    /// Bytes the client sent after its request.
    pub leftover: Bytes,
    /// The subprotocol the `101` announced, if any.
    pub subprotocol: Option<String>,
    /// What the application attached when it accepted.
    pub attached: Option<Arc<dyn Any + Send + Sync>>,
}

impl Opened {
    /// A connection that speaks `protocol` at once (a TCP server's), with
    /// nothing read ahead and nothing attached.
    #[must_use]
    pub fn new(protocol: Protocol) -> Self {
        Self {
            protocol,
            leftover: Bytes::new(),
            subprotocol: None,
            attached: None,
        }
    }
}

impl<'a> ServerUpgrade<'a> {
    pub(super) fn new(state: ServerHandshake, ws: &'a WsOptions) -> Self {
        Self { state, ws }
    }

    /// Feeds request bytes (at least one: an empty read is the end of the
    /// stream, for the caller to report).
    pub fn handle_input(self, input: &[u8]) -> ServerUpgradeStep<'a> {
        let mut out = BytesMut::new();
        match self.state.handle_input(input) {
            Ok(ServerStep::NeedMore(state)) => ServerUpgradeStep::NeedMore(Self { state, ..self }),
            Ok(ServerStep::Request(pending)) if !origin_allowed(self.ws, pending.request()) => {
                let error = format!(
                    "origin `{}` is not among the allowed origins: refused with 403",
                    pending.request().origin().unwrap_or("(not UTF-8)")
                );
                pending.reject(
                    403,
                    b"this origin may not open a WebSocket here\n",
                    &mut out,
                );
                ServerUpgradeStep::Done(Answer {
                    response: out.freeze(),
                    opened: Err(io::Error::new(io::ErrorKind::PermissionDenied, error)),
                })
            }
            Ok(ServerStep::Request(pending)) => ServerUpgradeStep::Request(ServerRequest {
                pending: Box::new(pending),
                ws: self.ws,
            }),
            Err(e) => {
                e.write_response(&mut out);
                ServerUpgradeStep::Done(Answer {
                    response: out.freeze(),
                    opened: Err(invalid(e)),
                })
            }
        }
    }
}

/// A valid upgrade request waiting for the application's [`Decision`].
#[derive(Debug)]
#[must_use]
pub struct ServerRequest<'a> {
    /// Boxed: a step that may hold it is in every connection task's
    /// future while the handshake runs.
    pending: Box<PendingUpgrade>,
    ws: &'a WsOptions,
}

impl ServerRequest<'_> {
    /// The request.
    #[must_use]
    pub fn request(&self) -> &UpgradeRequest {
        self.pending.request()
    }

    /// The request with the connection's address and TLS details, owned,
    /// for a hook (a copy of the request: made only when a hook runs).
    #[must_use]
    pub fn info(&self, remote: SocketAddr, tls: Option<TlsInfo>) -> UpgradeInfo {
        UpgradeInfo {
            request: self.pending.request().clone(),
            remote,
            tls,
        }
    }

    /// Answers as the server does without a hook: accepts, with the
    /// server's preferred subprotocol among the offered ones.
    pub fn accept(self) -> Answer {
        self.decide(Decision::accept())
    }

    /// Answers with the application's `decision`: the `101` and the
    /// connection, or the refusal ([`PermissionDenied`](io::ErrorKind::PermissionDenied)
    /// for a rejection, [`InvalidInput`](io::ErrorKind::InvalidInput) for
    /// a decision with a mistake, answered `500`; the error's source is
    /// the [`Refused`]).
    pub fn decide(self, decision: Decision) -> Answer {
        let mut out = BytesMut::new();
        let opened = match self.pending.decide(decision, &mut out) {
            Ok(accepted) => {
                let conn = Connection::new(Side::Server, self.ws.config.clone());
                let conn = match (accepted.deflate, &self.ws.deflate) {
                    (Some(params), Some(deflate)) => {
                        conn.with_deflate(params, deflate).map_err(invalid)
                    }
                    _ => Ok(conn),
                };
                conn.map(|conn| Opened {
                    protocol: Protocol::WebSocket(Box::new(conn)),
                    leftover: accepted.leftover,
                    subprotocol: accepted.subprotocol,
                    attached: accepted.attached.map(Attached::into_inner),
                })
            }
            Err(refused @ Refused::Rejected(_)) => {
                Err(io::Error::new(io::ErrorKind::PermissionDenied, refused))
            }
            Err(refused) => Err(invalid(refused)),
        };
        Answer {
            response: out.freeze(),
            opened,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::ServerOptions;
    use crate::setup::{ServerOpen, ServerSetup};

    fn request(origin: Option<&str>) -> String {
        let origin = origin
            .map(|o| format!("Origin: {o}\r\n"))
            .unwrap_or_default();
        format!(
            "GET /chat?token=t HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n{origin}\r\n"
        )
    }

    /// What a server allowing `allowed` answers a request from `origin`:
    /// the response's status line, and whether it upgraded.
    fn answer(allowed: &[&str], origin: Option<&str>) -> io::Result<(String, bool)> {
        let ws = WsOptions {
            allowed_origins: allowed.iter().map(|o| (*o).to_owned()).collect(),
            ..WsOptions::default()
        };
        let setup = ServerSetup::ws(&ServerOptions::default(), ws)?;
        let ServerOpen::Upgrade(upgrade) = setup.open()? else {
            return Err(io::Error::other("a WebSocket server upgrades"));
        };
        let answer = match upgrade.handle_input(request(origin).as_bytes()) {
            ServerUpgradeStep::Request(request) => request.accept(),
            ServerUpgradeStep::Done(answer) => answer,
            ServerUpgradeStep::NeedMore(_) => return Err(io::Error::other("the request is whole")),
        };
        let status = String::from_utf8_lossy(&answer.response);
        let line = status.lines().next().unwrap_or_default().to_owned();
        Ok((line, answer.opened.is_ok()))
    }

    #[test]
    fn allowed_origins_refuse_other_pages_with_403() -> io::Result<()> {
        let ok = ("HTTP/1.1 101 Switching Protocols".to_owned(), true);
        let forbidden = ("HTTP/1.1 403 Forbidden".to_owned(), false);
        let page = "http://127.0.0.1:8080";
        assert_eq!(answer(&[], Some("https://evil.example"))?, ok);
        assert_eq!(answer(&[page], Some(page))?, ok);
        assert_eq!(answer(&[page], Some("HTTP://127.0.0.1:8080"))?, ok);
        assert_eq!(answer(&[page], None)?, ok);
        assert_eq!(answer(&[page], Some("https://evil.example"))?, forbidden);
        assert_eq!(answer(&[page], Some("http://127.0.0.1:8081"))?, forbidden);
        assert_eq!(answer(&[page], Some("null"))?, forbidden);
        Ok(())
    }

    #[test]
    fn an_allowed_origin_must_be_an_origin() {
        for bad in ["http://h/", "h", "http://", "http://h/path", "http://h x"] {
            let ws = WsOptions {
                allowed_origins: vec![bad.to_owned()],
                ..WsOptions::default()
            };
            let setup = ServerSetup::ws(&ServerOptions::default(), ws);
            assert_eq!(
                setup.map(|_| ()).map_err(|e| e.kind()),
                Err(io::ErrorKind::InvalidInput),
                "{bad}"
            );
        }
    }
}
