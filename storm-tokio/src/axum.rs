//! Storm behind axum and hyper 1.x (feature `axum`): one HTTP server
//! serves your routes and Storm's WebSockets on the same port.
//!
//! [`StormUpgrade`] is an axum extractor (like axum's `WebSocketUpgrade`)
//! and, through [`StormUpgrade::from_request`], a plain hyper helper. It
//! answers the upgrade with the core's own handshake (validation, the
//! accept key, permessage-deflate and subprotocol negotiation, refusals
//! with 400, 403, 426, 431 or 503), lets hyper send that response, and
//! once hyper hands the connection over, either
//!
//! - gives your callback a [`WebSocket`], the `Stream + Sink` socket of
//!   [`websocket`](crate::websocket) ([`StormUpgrade::on_upgrade`]), or
//! - runs a full Storm [`Session`](crate::Session) with your
//!   [`Handler`] on a [detached](storm_async::WsServer::detached) server's
//!   hub: groups, broadcast, heartbeat, backpressure, the slow-consumer
//!   policy and shutdown, as on Storm's own servers
//!   ([`StormUpgrade::serve`]).
//!
//! ```no_run
//! use std::sync::Arc;
//! use axum::{Router, extract::State, response::Response, routing::get};
//! use futures_util::{SinkExt, StreamExt};
//! use storm_tokio::axum::StormUpgrade;
//! use storm_tokio::host::options::{ServerOptions, WsOptions};
//! use storm_tokio::proto::Message;
//! use storm_tokio::{Decision, Handler, ServerHandle, Session, WsServer};
//!
//! struct Echo;
//! impl Handler for Echo {
//!     async fn on_message(&self, session: &Session, message: Message) {
//!         let _ = session.send(message).await;
//!     }
//! }
//!
//! // A stream per connection, driven by your own task:
//! async fn stream(upgrade: StormUpgrade) -> Response {
//!     upgrade.on_upgrade(|mut ws| async move {
//!         while let Some(Ok(message)) = ws.next().await {
//!             if ws.send(message).await.is_err() {
//!                 break;
//!             }
//!         }
//!     })
//! }
//!
//! // A Storm session on the hub (`hub.broadcast`, groups, ...):
//! async fn session(State((hub, echo)): State<(ServerHandle, Arc<Echo>)>, upgrade: StormUpgrade) -> Response {
//!     upgrade.serve(&hub, echo).await
//! }
//!
//! # #[tokio::main] async fn main() -> std::io::Result<()> {
//! // The same upgrade hook a listening server takes, here refusing a
//! // request without a token (it runs for `serve`, within the server's
//! // handshake timeout):
//! let hub = WsServer::detached(ServerOptions::default(), WsOptions::default())?
//!     .on_upgrade(|request| async move {
//!         match request.query_param("token") {
//!             Some(_) => Decision::accept(),
//!             None => Decision::reject(401).body("a token, please\n"),
//!         }
//!     })?;
//! let app = Router::new()
//!     .route("/stream", get(stream))
//!     .route("/session", get(session))
//!     .with_state((hub, Arc::new(Echo)));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await
//! # }
//! ```
//!
//! The peer address a session reports is axum's `ConnectInfo<SocketAddr>`
//! when the router is served with
//! `into_make_service_with_connect_info::<SocketAddr>()` (set it with
//! [`StormUpgrade::remote_addr`] otherwise), else `0.0.0.0:0`. TLS, if any,
//! is the HTTP server's.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use ::axum::body::Body;
use ::axum::extract::{ConnectInfo, FromRequestParts};
use ::axum::http::request::Parts;
use ::axum::http::{
    Extensions, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version,
};
use ::axum::response::Response;
use bytes::Bytes;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use storm_proto::heartbeat::Heartbeat;
use storm_proto::ws::handshake::MAX_DECISION_HEADERS;

use crate::runtime::Io;
use crate::websocket::StreamConfig;
use crate::{Decision, Handler, ServerHandle, WebSocketStream};

/// The socket [`StormUpgrade::on_upgrade`] gives: a `Stream + Sink`
/// WebSocket over hyper's upgraded connection.
pub type WebSocket = WebSocketStream<TokioIo<Upgraded>>;

/// A WebSocket upgrade request, read by axum or hyper, to answer with
/// Storm: an axum extractor (it never rejects: a request that is no valid
/// upgrade is refused when answered, with the core's status and reason).
///
/// Choose the options with [`config`](Self::config) (limits,
/// permessage-deflate, subprotocols, heartbeat; for
/// [`on_upgrade`](Self::on_upgrade)) and the application's say with
/// [`decision`](Self::decision) (a subprotocol, response headers, an
/// attached value, or a refusal), then answer with
/// [`on_upgrade`](Self::on_upgrade) or [`serve`](Self::serve) and return
/// the response they give.
#[derive(Debug)]
#[must_use]
pub struct StormUpgrade {
    /// The request's header block as HTTP/1.1 bytes, as the core's
    /// handshake reads it.
    head: Vec<u8>,
    /// hyper's handle on the connection once it is upgraded; `None` when
    /// the connection cannot be (no `Upgrade` header, HTTP/2).
    on_upgrade: Option<OnUpgrade>,
    remote: SocketAddr,
    config: StreamConfig,
    /// The caller's decision; `None`: the server's hook decides (for
    /// `serve`), or accept.
    decision: Option<Decision>,
}

impl StormUpgrade {
    /// The upgrade request `request` (a hyper service's): takes hyper's
    /// upgrade handle out of its extensions.
    pub fn from_request<B>(request: &mut Request<B>) -> Self {
        let head = head(
            request.method(),
            request.uri(),
            request.version(),
            request.headers(),
        );
        Self::new(head, request.extensions_mut())
    }

    fn new(head: Vec<u8>, extensions: &mut Extensions) -> Self {
        let remote = extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |info| info.0);
        Self {
            head,
            on_upgrade: extensions.remove::<OnUpgrade>(),
            remote,
            config: StreamConfig::new(),
            decision: None,
        }
    }

    /// The options of the [`WebSocket`] [`on_upgrade`](Self::on_upgrade)
    /// gives (default [`StreamConfig::new`]: no deflate, 64 MiB messages).
    /// [`serve`](Self::serve) takes the detached server's instead.
    pub fn config(mut self, config: StreamConfig) -> Self {
        self.config = config;
        self
    }

    /// The application's decision on this request, made by the route
    /// itself: a subprotocol, response headers and an attached value on
    /// accept (a session reads it with `session.attached::<T>()`, a
    /// [`WebSocket`] with `ws.attached::<T>()` and `ws.subprotocol()`), or
    /// a status, headers and body to refuse with. It applies once the
    /// request passed the handshake's checks, and for
    /// [`serve`](Self::serve) it replaces the server's upgrade hook
    /// ([`ServerHandle::on_upgrade`](storm_async::ServerHandle::on_upgrade))
    /// for this request. Without it, [`on_upgrade`](Self::on_upgrade)
    /// accepts and `serve` lets the server's hook decide (accepting when
    /// it has none).
    pub fn decision(mut self, decision: Decision) -> Self {
        self.decision = Some(decision);
        self
    }

    /// The peer's address a session reports (default: axum's
    /// `ConnectInfo<SocketAddr>`, else `0.0.0.0:0`).
    pub fn remote_addr(mut self, remote: SocketAddr) -> Self {
        self.remote = remote;
        self
    }

    /// Answers the request with [`config`](Self::config) and runs
    /// `callback` on the [`WebSocket`] in a task of its own once hyper has
    /// sent the `101` and handed the connection over. Return the response
    /// from your handler: the `101`, or the refusal (400, 403, 426, 431;
    /// 500 for an invalid configuration or decision), in which case
    /// `callback` never runs. A connection that ends before hyper hands it
    /// over ends there too.
    pub fn on_upgrade<C, Fut>(self, callback: C) -> Response
    where
        C: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        // Checked before the `101`: after it, a socket that cannot be made
        // could only be dropped.
        if let Err(e) = Heartbeat::new(self.config.link.heartbeat.clone(), Instant::now()) {
            return plain(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"));
        }
        let decision = self.decision.unwrap_or_else(Decision::accept);
        let answer = storm_async::websocket::answer_upgrade(&self.head, &self.config, decision);
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => return plain(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        };
        let response = response(&answer.response);
        if let Ok(opened) = answer.opened {
            let Some(on_upgrade) = self.on_upgrade else {
                return not_upgradable();
            };
            let config = self.config;
            tokio::spawn(async move {
                // An error here is the connection ending before the
                // upgrade: there is no socket to give.
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let io = Io(TokioIo::new(upgraded));
                if let Ok(ws) = WebSocket::from_opened(io, opened, &config) {
                    callback(ws).await;
                }
            });
        }
        response
    }

    /// Answers the request on `server` (from
    /// [`WsServer::detached`](crate::WsServer::detached)) as a listening
    /// server answers it and, once hyper hands the connection over, runs
    /// it as a Storm session with `handler`, in a task of its own: the
    /// server's limits, permessage-deflate, subprotocols and
    /// `allowed_origins`, its `max_connections` (503 when full), its
    /// upgrade hook ([`ServerHandle::on_upgrade`](storm_async::ServerHandle::on_upgrade);
    /// unless [`decision`](Self::decision) decided) and its hub. Await it
    /// in your handler and return the response. A refusal, a hook or an
    /// upgrade that does not finish within the server's
    /// `handshake_timeout`, and the session's errors go to
    /// `handler.on_error`.
    ///
    /// **Cancel safety**: dropped while the hook runs (axum drops a
    /// handler whose connection ended), nothing is answered and the place
    /// under `max_connections` is given back.
    pub async fn serve<H: Handler>(self, server: &ServerHandle, handler: Arc<H>) -> Response {
        let answer = server.upgrade(&self.head, self.remote, self.decision).await;
        let response = match answer.response.is_empty() {
            true => plain(StatusCode::INTERNAL_SERVER_ERROR, "no upgrade response\n"),
            false => response(&answer.response),
        };
        match answer.session {
            Ok(pending) => {
                // Dropping `pending` gives its place back.
                let Some(on_upgrade) = self.on_upgrade else {
                    return not_upgradable();
                };
                let upgraded = async move {
                    let upgraded = on_upgrade.await.map_err(|e| {
                        io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            format!("the HTTP connection ended before its upgrade: {e}"),
                        )
                    })?;
                    let (reader, writer) = tokio::io::split(TokioIo::new(upgraded));
                    Ok((Io(reader), Io(writer)))
                };
                tokio::spawn(pending.serve(upgraded, handler));
            }
            Err(e) => {
                tokio::spawn(async move { handler.on_error(&e).await });
            }
        }
        response
    }
}

/// axum's extractor: never rejects (see [`StormUpgrade`]).
impl<S: Send + Sync> FromRequestParts<S> for StormUpgrade {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        let head = head(&parts.method, &parts.uri, parts.version, &parts.headers);
        Ok(Self::new(head, &mut parts.extensions))
    }
}

/// The request's header block as HTTP/1.1 bytes: request line, headers
/// as hyper parsed them (values are never CR or LF), blank line. A version
/// other than 1.1 is written as HTTP/1.0, which the handshake refuses
/// ("requires HTTP/1.1"). Its size is bounded by hyper's own limit on
/// the head it read.
fn head(method: &Method, uri: &Uri, version: Version, headers: &HeaderMap) -> Vec<u8> {
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let version = match version {
        Version::HTTP_11 => "HTTP/1.1",
        _ => "HTTP/1.0",
    };
    let mut head = Vec::with_capacity(256);
    for part in [method.as_str(), " ", target, " ", version, "\r\n"] {
        head.extend_from_slice(part.as_bytes());
    }
    for (name, value) in headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// The core's response bytes (a `101` or a complete refusal) as the
/// response hyper sends. The core wrote them, so they parse; a 500 says
/// so if they ever did not.
fn response(bytes: &Bytes) -> Response {
    // The handshake's own headers, and at most MAX_DECISION_HEADERS more.
    let mut slots = vec![httparse::EMPTY_HEADER; MAX_DECISION_HEADERS + 16];
    let mut parsed = httparse::Response::new(&mut slots);
    let Ok(httparse::Status::Complete(length)) = parsed.parse(bytes) else {
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "unreadable upgrade response\n",
        );
    };
    let Some(status) = parsed.code.and_then(|c| StatusCode::from_u16(c).ok()) else {
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "unreadable upgrade response\n",
        );
    };
    let mut response = Response::new(Body::from(bytes.slice(length..)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    for header in parsed.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(header.name.as_bytes()),
            HeaderValue::from_bytes(header.value),
        ) else {
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "unreadable upgrade response\n",
            );
        };
        headers.append(name, value);
    }
    response
}

/// A valid upgrade request on a connection hyper cannot upgrade (its
/// upgrade handle is gone): 426, as axum's own `WebSocketUpgrade` answers.
fn not_upgradable() -> Response {
    let mut response = plain(
        StatusCode::UPGRADE_REQUIRED,
        "this connection cannot be upgraded to a WebSocket\n",
    );
    response.headers_mut().insert(
        HeaderName::from_static("upgrade"),
        HeaderValue::from_static("websocket"),
    );
    response
}

/// A plain-text response.
fn plain(status: StatusCode, body: impl Into<String>) -> Response {
    let mut response = Response::new(Body::from(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        HeaderName::from_static("content-type"),
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
