//! The application's answer to an upgrade request, as a value: accept
//! (with a subprotocol, response headers and a value to attach to the
//! connection) or reject (with a status, headers and a body). A server
//! hands it to [`PendingUpgrade::decide`](super::PendingUpgrade::decide),
//! which validates it and writes the response.
//!
//! The builder methods never fail: a header that is not a token, a value
//! with CR or LF, a header the handshake writes itself, a status outside
//! 300..=599, a body or header list over its bound, or a subprotocol the
//! client did not offer is remembered and reported by
//! [`Decision::validate`] and by `decide`, which then answers `500` without
//! any of the application's headers.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use super::ConfigError;

/// Most bytes a rejection's body may hold: 64 KiB.
pub const MAX_REJECT_BODY: usize = 64 * 1024;

/// Most headers a decision may add to its response.
pub const MAX_DECISION_HEADERS: usize = 64;

/// Most bytes of the headers (names and values) a decision may add.
pub const MAX_DECISION_HEADER_BYTES: usize = 8 * 1024;

/// Headers a `101` writes itself; an acceptance may not add them.
pub(super) const ACCEPT_RESERVED: &[&str] = &[
    "upgrade",
    "connection",
    "sec-websocket-accept",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "content-length",
    "transfer-encoding",
];

/// Headers every closing response writes itself; a rejection may not add
/// them. (`Content-Type` may be added: it replaces the default
/// `text/plain; charset=utf-8`.)
pub(super) const REJECT_RESERVED: &[&str] = &["connection", "content-length", "transfer-encoding"];

/// A value attached to a connection when its upgrade is accepted, for the
/// application to read from the connection's session later. Compared by
/// identity.
#[derive(Clone)]
pub struct Attached(Arc<dyn Any + Send + Sync>);

impl Attached {
    /// Attaches `value`.
    #[must_use]
    pub fn new<T: Any + Send + Sync>(value: T) -> Self {
        Self(Arc::new(value))
    }

    /// The value, when it is a `T`.
    #[must_use]
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.downcast_ref()
    }

    /// The shared value itself.
    #[must_use]
    pub fn into_inner(self) -> Arc<dyn Any + Send + Sync> {
        self.0
    }
}

impl fmt::Debug for Attached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Attached(..)")
    }
}

impl PartialEq for Attached {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Attached {}

/// Response headers a decision adds, checked as they are added; the first
/// mistake is kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct AddedHeaders {
    list: Vec<(String, String)>,
    bytes: usize,
}

impl AddedHeaders {
    fn add(&mut self, name: &str, value: &str, reserved: &[&str], error: &mut Option<ConfigError>) {
        if error.is_some() {
            return;
        }
        if let Err(e) = super::check_header(name, value, reserved) {
            *error = Some(e);
            return;
        }
        self.bytes += name.len() + value.len();
        if self.list.len() >= MAX_DECISION_HEADERS || self.bytes > MAX_DECISION_HEADER_BYTES {
            *error = Some(ConfigError::InvalidLimit("decision headers"));
            return;
        }
        self.list.push((name.to_owned(), value.to_owned()));
    }
}

/// An acceptance: see [`Decision::accept`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Acceptance {
    /// `None`: the server's default choice; `Some(None)`: no subprotocol;
    /// `Some(Some(p))`: `p`, which the client must have offered.
    pub(super) subprotocol: Option<Option<String>>,
    headers: AddedHeaders,
    pub(super) attached: Option<Attached>,
}

impl Acceptance {
    pub(super) fn headers(&self) -> &[(String, String)] {
        &self.headers.list
    }
}

/// A rejection: see [`Decision::reject`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rejection {
    status: u16,
    headers: AddedHeaders,
    body: Bytes,
}

impl Rejection {
    pub(super) fn status(&self) -> u16 {
        self.status
    }

    pub(super) fn headers(&self) -> &[(String, String)] {
        &self.headers.list
    }

    pub(super) fn body(&self) -> &[u8] {
        &self.body
    }
}

/// The application's answer to an upgrade request. Build it with
/// [`accept`](Self::accept) or [`reject`](Self::reject) and the chained
/// methods; check it early with [`validate`](Self::validate).
///
/// ```
/// use storm_proto::ws::handshake::Decision;
///
/// let no = Decision::reject(401)
///     .header("WWW-Authenticate", "Bearer")
///     .body("a token is needed\n");
/// assert!(no.validate().is_ok());
/// let yes = Decision::accept().subprotocol("chat.v2").header("X-Server", "storm");
/// assert!(yes.validate().is_ok());
/// assert!(Decision::accept().header("X-Bad", "a\r\nb").validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Decision {
    kind: Kind,
    /// The first mistake made while building, if any.
    error: Option<ConfigError>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Accept(Acceptance),
    Reject(Rejection),
}

impl Decision {
    /// Accept the upgrade: `101 Switching Protocols`, with the server's
    /// default subprotocol (the first of its supported ones the client
    /// offered) unless [`subprotocol`](Self::subprotocol) chooses.
    pub fn accept() -> Self {
        Self {
            kind: Kind::Accept(Acceptance::default()),
            error: None,
        }
    }

    /// Refuse the upgrade with `status` (300..=599; a 1xx or 2xx would
    /// not end the exchange), then close the connection.
    pub fn reject(status: u16) -> Self {
        let error = (!(300..=599).contains(&status)).then_some(ConfigError::InvalidStatus(status));
        Self {
            kind: Kind::Reject(Rejection {
                status,
                headers: AddedHeaders::default(),
                body: Bytes::new(),
            }),
            error,
        }
    }

    /// Announces `protocol` (an acceptance only; the client must have
    /// offered it, which [`PendingUpgrade::decide`](super::PendingUpgrade::decide)
    /// checks). On a rejection it is a mistake.
    pub fn subprotocol(self, protocol: &str) -> Self {
        self.choose(Some(protocol.to_owned()))
    }

    /// Announces no subprotocol, whatever the client offered (an
    /// acceptance only).
    pub fn no_subprotocol(self) -> Self {
        self.choose(None)
    }

    fn choose(mut self, protocol: Option<String>) -> Self {
        match &mut self.kind {
            Kind::Accept(a) => a.subprotocol = Some(protocol),
            Kind::Reject(_) => self.fail(ConfigError::InvalidDecision(
                "a rejection has no subprotocol",
            )),
        }
        self
    }

    /// Adds a response header (e.g. `Set-Cookie` on accept,
    /// `WWW-Authenticate` or `Location` on reject). Names must be tokens,
    /// values free of control characters other than tab; the headers the
    /// handshake writes itself (`Upgrade`, `Connection`, `Sec-WebSocket-*`
    /// on accept; `Content-Length`, `Transfer-Encoding`, `Connection`
    /// always) may not be added. At most [`MAX_DECISION_HEADERS`] headers
    /// of [`MAX_DECISION_HEADER_BYTES`] in all.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        match &mut self.kind {
            Kind::Accept(a) => a.headers.add(name, value, ACCEPT_RESERVED, &mut self.error),
            Kind::Reject(r) => r.headers.add(name, value, REJECT_RESERVED, &mut self.error),
        }
        self
    }

    /// The rejection's body (sent as `text/plain; charset=utf-8` unless a
    /// `Content-Type` header says otherwise), at most
    /// [`MAX_REJECT_BODY`] bytes. On an acceptance it is a mistake.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        let body = body.into();
        match &mut self.kind {
            Kind::Reject(_) if body.len() > MAX_REJECT_BODY => {
                self.fail(ConfigError::InvalidLimit("rejection body"));
            }
            Kind::Reject(r) => r.body = body,
            Kind::Accept(_) => self.fail(ConfigError::InvalidDecision("an acceptance has no body")),
        }
        self
    }

    /// Attaches `value` to the connection (an acceptance only), for the
    /// application to read from its session.
    pub fn attach<T: Any + Send + Sync>(mut self, value: T) -> Self {
        match &mut self.kind {
            Kind::Accept(a) => a.attached = Some(Attached::new(value)),
            Kind::Reject(_) => {
                self.fail(ConfigError::InvalidDecision("a rejection attaches nothing"))
            }
        }
        self
    }

    fn fail(&mut self, error: ConfigError) {
        self.error.get_or_insert(error);
    }

    /// Whether this accepts.
    #[must_use]
    pub fn is_accept(&self) -> bool {
        matches!(self.kind, Kind::Accept(_))
    }

    /// The status the response will carry: 101 for an acceptance.
    #[must_use]
    pub fn status(&self) -> u16 {
        match &self.kind {
            Kind::Accept(_) => 101,
            Kind::Reject(r) => r.status,
        }
    }

    /// The first mistake made while building this decision, if any. (That
    /// the client offered a chosen subprotocol is only known when it is
    /// [decided](super::PendingUpgrade::decide).)
    ///
    /// # Errors
    ///
    /// The [`ConfigError`] that makes the decision unusable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// The acceptance, or the rejection.
    pub(super) fn into_kind(self) -> Result<Acceptance, Rejection> {
        match self.kind {
            Kind::Accept(a) => Ok(a),
            Kind::Reject(r) => Err(r),
        }
    }
}

/// Why [`PendingUpgrade::decide`](super::PendingUpgrade::decide) did not
/// upgrade: the response it wrote closes the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refused {
    /// The application rejected the upgrade with this status.
    Rejected(u16),
    /// The application's decision was unusable; a `500` was written.
    InvalidDecision(ConfigError),
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected(status) => {
                write!(f, "upgrade rejected with {status} by the application")
            }
            Self::InvalidDecision(e) => {
                write!(f, "the application's upgrade decision is invalid: {e}")
            }
        }
    }
}

impl std::error::Error for Refused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::InvalidDecision(e) => Some(e),
            Self::Rejected(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::BytesMut;
    use proptest::prelude::*;

    use super::super::{PendingUpgrade, ServerConfig, ServerHandshake, ServerStep};
    use super::*;

    const REQUEST: &str = "GET /chat?room=a%20b&token=s+t HTTP/1.1\r\n\
        Host: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
        Origin: http://example.com\r\nCookie: id=7\r\nauthorization: Bearer x\r\n\
        Sec-WebSocket-Protocol: chat, superchat\r\n\r\n";

    fn pending() -> PendingUpgrade {
        let config = Arc::new(ServerConfig {
            subprotocols: vec!["superchat".into()],
            ..ServerConfig::default()
        });
        let Ok(handshake) = ServerHandshake::new(config) else {
            panic!("the default config is valid")
        };
        match handshake.handle_input(REQUEST.as_bytes()) {
            Ok(ServerStep::Request(pending)) => pending,
            other => panic!("{other:?}"),
        }
    }

    /// `decision` decided on the sample request: the outcome and the
    /// response written.
    fn decide(decision: Decision) -> (Result<super::super::Accepted, Refused>, String) {
        let mut out = BytesMut::new();
        let outcome = pending().decide(decision, &mut out);
        (outcome, String::from_utf8_lossy(&out).into_owned())
    }

    #[test]
    fn the_request_shows_method_path_query_and_headers() {
        let pending = pending();
        let request = pending.request();
        assert_eq!(request.method(), "GET");
        assert_eq!(request.target(), "/chat?room=a%20b&token=s+t");
        assert_eq!(request.path(), "/chat");
        assert_eq!(request.query(), Some("room=a%20b&token=s+t"));
        assert_eq!(request.query_param("room").as_deref(), Some("a b"));
        assert_eq!(request.query_param("token").as_deref(), Some("s t"));
        assert_eq!(request.query_param("nope"), None);
        assert_eq!(request.headers().get("COOKIE"), Some(&b"id=7"[..]));
        assert_eq!(
            request.headers().get("Authorization"),
            Some(&b"Bearer x"[..])
        );
        assert_eq!(request.origin(), Some("http://example.com"));
        assert_eq!(request.subprotocols(), ["chat", "superchat"]);
    }

    #[test]
    fn an_acceptance_chooses_adds_headers_and_attaches() {
        let (outcome, response) = decide(
            Decision::accept()
                .subprotocol("chat")
                .header("Set-Cookie", "a=b")
                .attach(7u32),
        );
        let Ok(accepted) = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(accepted.subprotocol.as_deref(), Some("chat"));
        assert_eq!(
            accepted.attached.as_ref().and_then(Attached::get),
            Some(&7u32)
        );
        assert!(response.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(response.contains("\r\nSec-WebSocket-Protocol: chat\r\n"));
        assert!(
            response.ends_with("\r\nSet-Cookie: a=b\r\n\r\n"),
            "{response}"
        );
        // The server's default, or none at all.
        let (outcome, _) = decide(Decision::accept());
        assert_eq!(outcome.map(|a| a.subprotocol), Ok(Some("superchat".into())));
        let (outcome, response) = decide(Decision::accept().no_subprotocol());
        assert_eq!(outcome.map(|a| a.subprotocol), Ok(None));
        assert!(!response.contains("Sec-WebSocket-Protocol"));
    }

    #[test]
    fn a_rejection_is_written_exactly() {
        let (outcome, response) = decide(
            Decision::reject(401)
                .header("WWW-Authenticate", "Bearer")
                .body("no token\n"),
        );
        assert_eq!(outcome.err(), Some(Refused::Rejected(401)));
        assert_eq!(
            response,
            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Length: 9\r\n\
             Connection: close\r\n\r\nno token\n"
        );
        let (_, response) = decide(
            Decision::reject(403)
                .header("Content-Type", "application/json")
                .body("{}"),
        );
        assert_eq!(
            response,
            "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n\
             Content-Length: 2\r\nConnection: close\r\n\r\n{}"
        );
    }

    #[test]
    fn a_mistaken_decision_answers_500_without_its_headers() {
        let big = vec![b'x'; MAX_REJECT_BODY + 1];
        let many = (0..=MAX_DECISION_HEADERS)
            .fold(Decision::accept(), |d, i| d.header(&format!("X-{i}"), "v"));
        let cases = [
            (
                Decision::accept().header("X-Evil", "a\r\nSet-Cookie: b"),
                ConfigError::InvalidHeader("X-Evil".into()),
            ),
            (
                Decision::accept().header("Sec-WebSocket-Accept", "x"),
                ConfigError::ReservedHeader("Sec-WebSocket-Accept".into()),
            ),
            (
                Decision::reject(400).header("Content-Length", "1"),
                ConfigError::ReservedHeader("Content-Length".into()),
            ),
            (
                Decision::accept().header("Bad Name", "x"),
                ConfigError::InvalidHeader("Bad Name".into()),
            ),
            (
                Decision::accept().subprotocol("other"),
                ConfigError::SubprotocolNotOffered("other".into()),
            ),
            (Decision::reject(200), ConfigError::InvalidStatus(200)),
            (Decision::reject(101), ConfigError::InvalidStatus(101)),
            (
                Decision::reject(400).body(big),
                ConfigError::InvalidLimit("rejection body"),
            ),
            (many, ConfigError::InvalidLimit("decision headers")),
            (
                Decision::accept().body("x"),
                ConfigError::InvalidDecision("an acceptance has no body"),
            ),
            (
                Decision::reject(403).attach(1u8),
                ConfigError::InvalidDecision("a rejection attaches nothing"),
            ),
        ];
        for (decision, error) in cases {
            let (outcome, response) = decide(decision);
            assert_eq!(outcome.err(), Some(Refused::InvalidDecision(error)));
            assert!(response.starts_with("HTTP/1.1 500 "), "{response}");
            assert!(!response.contains("X-") && !response.contains("Set-Cookie"));
        }
        // The status line stays the server's own whatever was asked.
        assert_eq!(Decision::reject(404).validate(), Ok(()));
        assert_eq!(Decision::reject(404).status(), 404);
        assert!(Decision::accept().is_accept());
    }

    /// Header fields as `(name, value)`.
    type Fields = Vec<(String, Vec<u8>)>;

    /// A response parsed back: status, headers, body.
    fn parse(response: &[u8]) -> (u16, Fields, Vec<u8>) {
        let mut slots = [httparse::EMPTY_HEADER; 80];
        let mut parsed = httparse::Response::new(&mut slots);
        let Ok(httparse::Status::Complete(end)) = parsed.parse(response) else {
            panic!(
                "not a complete response: {:?}",
                String::from_utf8_lossy(response)
            )
        };
        let headers = parsed
            .headers
            .iter()
            .map(|h| (h.name.to_owned(), h.value.to_vec()))
            .collect();
        (parsed.code.unwrap_or(0), headers, response[end..].to_vec())
    }

    proptest! {
        /// Whatever the application asks for, the response is one
        /// well-formed HTTP/1.1 message: the headers it added and no
        /// other, a body exactly `Content-Length` long; or a bare 500.
        #[test]
        fn any_decision_renders_one_well_formed_response(
            accept in any::<bool>(),
            status in 0u16..700,
            headers in proptest::collection::vec(("[ -~\r\n]{0,12}", "[\t -~\r\n\u{80}-\u{ff}]{0,24}"), 0..6),
            body in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut decision = if accept { Decision::accept() } else { Decision::reject(status).body(body.clone()) };
            for (name, value) in &headers {
                decision = decision.header(name, value);
            }
            let valid = decision.validate().is_ok();
            let mut out = BytesMut::new();
            let outcome = pending().decide(decision, &mut out);
            let (code, parsed, rest) = parse(&out);
            if !valid {
                prop_assert_eq!(code, 500);
                prop_assert!(matches!(outcome, Err(Refused::InvalidDecision(_))));
                return Ok(());
            }
            let mine: Vec<_> = parsed
                .iter()
                .filter(|(n, _)| headers.iter().any(|(h, _)| h == n))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect();
            // Leading and trailing spaces and tabs are not part of a field
            // value (RFC 9110 section 5.5): a parser drops them.
            let asked: Vec<_> = headers
                .iter()
                .map(|(n, v)| (n.clone(), v.trim_matches([' ', '\t']).as_bytes().to_vec()))
                .collect();
            prop_assert_eq!(mine, asked);
            if accept {
                prop_assert_eq!(code, 101);
                prop_assert!(outcome.is_ok());
                prop_assert!(rest.is_empty());
            } else {
                prop_assert_eq!(code, status);
                prop_assert_eq!(outcome.err(), Some(Refused::Rejected(status)));
                prop_assert_eq!(rest, body);
            }
        }
    }
}
