//! The client and server handshake machines.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::wire::{self, ACK, EVENT_END, EVENT_ERROR, EVENT_HANDSHAKE, NACK, SYN, SYN_ACK};
use super::{ConfigError, Limits, NameError, RouteTable, truncate, validate_route_name};

/// Default handshake timeout: 10 seconds from the machine's creation.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The reason a server gives for a route it does not know.
pub const UNKNOWN_ROUTE_REASON: &str = "unknown route";

/// Longest peer-supplied text (an `SMError` or `NACK` reason) kept, in bytes.
const MAX_REASON_LEN: usize = 256;

/// What a server does with a client route that is not in its route table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnknownRoutePolicy {
    /// Answer the route with a `NACK` carrying the reason, leave it out of
    /// the negotiated set and continue the handshake. The default.
    #[default]
    Reject,
    /// Fail the whole handshake with [`HandshakeError::UnknownRoute`].
    Fail,
    /// Accept it: the negotiated set holds it and the [`Router`](super::Router)
    /// resolves it (the gateway finds a backend for it some other way).
    Accept,
}

/// Client configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// The route names the client means to use, sent in this order.
    /// Duplicates are sent once. Default: none.
    pub routes: Vec<String>,
    /// Limits; the client checks its own routes against them and never
    /// parses a longer server message. Default [`Limits::default`].
    pub limits: Limits,
    /// Time from [`ClientHandshake::new`] until the handshake fails with
    /// [`HandshakeError::Timeout`]; `None` waits forever. Default
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`] (10 s).
    pub handshake_timeout: Option<Duration>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            routes: Vec::new(),
            limits: Limits::default(),
            handshake_timeout: Some(DEFAULT_HANDSHAKE_TIMEOUT),
        }
    }
}

impl ClientConfig {
    /// Checks the limits and every route name against them.
    ///
    /// # Errors
    ///
    /// The first [`ConfigError`] found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.distinct_routes().map(drop)
    }

    fn distinct_routes(&self) -> Result<Vec<String>, ConfigError> {
        self.limits.validate()?;
        let mut seen = BTreeSet::new();
        let mut routes = Vec::new();
        for name in &self.routes {
            validate_route_name(name, self.limits.max_route_name_len).map_err(|error| {
                ConfigError::InvalidRouteName {
                    name: name.clone(),
                    error,
                }
            })?;
            if seen.insert(name.as_str()) {
                routes.push(name.clone());
            }
        }
        if routes.len() > self.limits.max_routes {
            return Err(ConfigError::TooManyRoutes {
                count: routes.len(),
                max: self.limits.max_routes,
            });
        }
        Ok(routes)
    }
}

/// Server (gateway) configuration, shared by every connection via [`Arc`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// The routes this gateway can serve (its config file). Default: none.
    pub routes: RouteTable,
    /// What to do with a client route not in `routes`. Default
    /// [`UnknownRoutePolicy::Reject`].
    pub unknown_routes: UnknownRoutePolicy,
    /// Limits on what a client may send. Default [`Limits::default`].
    pub limits: Limits,
    /// Time from [`ServerHandshake::new`] until the handshake fails with
    /// [`HandshakeError::Timeout`]; `None` waits forever. Default
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`] (10 s), set by [`ServerConfig::new`]
    /// and [`Default`].
    pub handshake_timeout: Option<Duration>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self::new(RouteTable::default())
    }
}

impl ServerConfig {
    /// A config with the given route table and every other field default.
    #[must_use]
    pub fn new(routes: RouteTable) -> Self {
        Self {
            routes,
            unknown_routes: UnknownRoutePolicy::default(),
            limits: Limits::default(),
            handshake_timeout: Some(DEFAULT_HANDSHAKE_TIMEOUT),
        }
    }

    /// Checks the limits and the route table against them.
    ///
    /// # Errors
    ///
    /// The first [`ConfigError`] found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.limits.validate()?;
        self.routes.check(&self.limits)
    }
}

/// A route the server refused, with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRoute {
    /// The route name.
    pub route: String,
    /// The server's reason (at most 256 bytes), e.g. `unknown route`.
    pub reason: String,
}

/// The result of a completed handshake; both sides compute the same one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Negotiated {
    routes: Vec<String>,
    rejected: Vec<RejectedRoute>,
}

impl Negotiated {
    /// The accepted routes, in the order the client sent them.
    #[must_use]
    pub fn routes(&self) -> &[String] {
        &self.routes
    }

    /// The routes the server refused, in the order the client sent them.
    #[must_use]
    pub fn rejected(&self) -> &[RejectedRoute] {
        &self.rejected
    }

    #[cfg(test)]
    pub(crate) fn for_tests(routes: &[&str]) -> Self {
        Self {
            routes: routes.iter().map(|r| (*r).to_owned()).collect(),
            rejected: Vec::new(),
        }
    }

    /// Whether `route` was accepted.
    #[must_use]
    pub fn contains(&self, route: &str) -> bool {
        self.routes.iter().any(|r| r == route)
    }
}

/// What a handshake machine reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The handshake is complete. Every later message is route traffic (see
    /// [`envelope`](super::envelope)) and no longer goes to the handshake.
    Ready(Negotiated),
}

/// Why a handshake failed, or a misuse of a finished one.
///
/// Every variant except [`AlreadyFinished`](Self::AlreadyFinished) is final:
/// the machine stays failed, returns the same error again, and has queued an
/// `{"event":"SMError","error":...}` message for the peer (except for
/// [`PeerError`](Self::PeerError)); drain [`poll_transmit`] and close the
/// WebSocket with [`close_code`](Self::close_code).
///
/// [`poll_transmit`]: ServerHandshake::poll_transmit
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// Remote: a message longer than [`Limits::max_message_len`].
    MessageTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Remote: not a JSON object with a string `event` (and string `data`,
    /// `route`, `error` when present); the text is the parser's.
    Malformed(String),
    /// Remote: a well-formed message at the wrong step.
    UnexpectedMessage {
        /// What this step accepts.
        expected: &'static str,
        /// A short description of what came (event and data, truncated).
        got: String,
    },
    /// Remote: a route acknowledgement naming another route than the oldest
    /// unanswered one (client side).
    RouteMismatch {
        /// The route the acknowledgement should answer.
        expected: String,
        /// The route it names (truncated).
        got: String,
    },
    /// Remote: more route messages than [`Limits::max_routes`].
    TooManyRoutes {
        /// The limit.
        max: usize,
    },
    /// Remote: a route name that is not valid (see
    /// [`validate_route_name`](super::validate_route_name)).
    InvalidRouteName {
        /// The name (truncated to 64 bytes).
        name: String,
        /// What is wrong with it.
        error: NameError,
    },
    /// Remote: a route not in the server's table, under
    /// [`UnknownRoutePolicy::Fail`].
    UnknownRoute(String),
    /// Remote: the peer sent `SMError` with this text (truncated to 256
    /// bytes).
    PeerError(String),
    /// The handshake did not complete before its deadline.
    Timeout,
    /// Local misuse: a message was fed after [`Event::Ready`]; route traffic
    /// belongs to the [`Router`](super::Router) or
    /// [`envelope`](super::envelope). Not final.
    AlreadyFinished,
}

impl HandshakeError {
    /// The WebSocket close code to close with after sending the queued
    /// `SMError`: 1009 for a message too long, 1008 (policy violation) for
    /// every other failure, `None` for local misuse.
    #[must_use]
    pub fn close_code(&self) -> Option<u16> {
        match self {
            Self::AlreadyFinished => None,
            Self::MessageTooLong { .. } => Some(1009),
            _ => Some(1008),
        }
    }

    /// Whether this is local misuse rather than a failed handshake.
    #[must_use]
    pub fn is_local(&self) -> bool {
        matches!(self, Self::AlreadyFinished)
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MessageTooLong { len, max } => {
                write!(f, "handshake message of {len} bytes is longer than {max}")
            }
            Self::Malformed(why) => write!(f, "malformed handshake message: {why}"),
            Self::UnexpectedMessage { expected, got } => {
                write!(
                    f,
                    "unexpected handshake message: expected {expected}, got {got}"
                )
            }
            Self::RouteMismatch { expected, got } => {
                write!(
                    f,
                    "acknowledgement for route {got:?}, expected {expected:?}"
                )
            }
            Self::TooManyRoutes { max } => write!(f, "more than {max} routes"),
            Self::InvalidRouteName { name, error } => {
                write!(f, "invalid route name {name:?}: {error}")
            }
            Self::UnknownRoute(name) => write!(f, "{UNKNOWN_ROUTE_REASON} {name:?}"),
            Self::PeerError(why) => write!(f, "peer failed the handshake: {why}"),
            Self::Timeout => f.write_str("route handshake timed out"),
            Self::AlreadyFinished => f.write_str("the route handshake is already complete"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// Checks the size, parses, and turns an `SMError` into [`PeerError`].
///
/// [`PeerError`]: HandshakeError::PeerError
fn parse(msg: &[u8], limits: Limits) -> Result<wire::Message<'_>, HandshakeError> {
    if msg.len() > limits.max_message_len {
        return Err(HandshakeError::MessageTooLong {
            len: msg.len(),
            max: limits.max_message_len,
        });
    }
    let parsed =
        wire::parse(msg).map_err(|wire::ParseError::Json(why)| HandshakeError::Malformed(why))?;
    if parsed.event == EVENT_ERROR {
        let why = parsed.error.as_deref().unwrap_or("no reason given");
        return Err(HandshakeError::PeerError(
            truncate(why, MAX_REASON_LEN).to_owned(),
        ));
    }
    Ok(parsed)
}

fn unexpected(expected: &'static str, got: &wire::Message<'_>) -> HandshakeError {
    HandshakeError::UnexpectedMessage {
        expected,
        got: got.to_string(),
    }
}

/// Queue, deadline and failure handling shared by both sides.
#[derive(Debug)]
struct Common {
    limits: Limits,
    deadline: Option<Instant>,
    transmit: VecDeque<String>,
    event: Option<Event>,
    done: Option<Result<(), HandshakeError>>,
}

impl Common {
    fn new(limits: Limits, timeout: Option<Duration>, now: Instant) -> Self {
        Self {
            limits,
            // A deadline too far to represent is no deadline.
            deadline: timeout.and_then(|t| now.checked_add(t)),
            transmit: VecDeque::new(),
            event: None,
            done: None,
        }
    }

    /// The error to return before handling input, if any: the sticky
    /// failure, misuse after Ready, or an expired deadline.
    fn precheck(&mut self, now: Instant) -> Result<(), HandshakeError> {
        match &self.done {
            Some(Ok(())) => Err(HandshakeError::AlreadyFinished),
            Some(Err(err)) => Err(err.clone()),
            None => match self.deadline {
                Some(deadline) if now >= deadline => Err(self.fail(HandshakeError::Timeout)),
                _ => Ok(()),
            },
        }
    }

    fn fail(&mut self, err: HandshakeError) -> HandshakeError {
        if !err.is_local() && self.done.is_none() {
            if !matches!(err, HandshakeError::PeerError(_)) {
                self.transmit.push_back(wire::error(&err.to_string()));
            }
            self.done = Some(Err(err.clone()));
        }
        err
    }

    fn ready(&mut self, negotiated: Negotiated) {
        self.done = Some(Ok(()));
        self.event = Some(Event::Ready(negotiated));
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match self.done {
            None => self.deadline,
            Some(_) => None,
        }
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), HandshakeError> {
        match (&self.done, self.deadline) {
            (None, Some(deadline)) if now >= deadline => Err(self.fail(HandshakeError::Timeout)),
            _ => Ok(()),
        }
    }

    fn error(&self) -> Option<&HandshakeError> {
        match &self.done {
            Some(Err(err)) => Some(err),
            _ => None,
        }
    }
}

/// The client side of the route handshake.
///
/// Created with the time the WebSocket opened; it queues the `SYN` at once.
/// After creation and after every [`handle_message`](Self::handle_message)
/// or [`handle_timeout`](Self::handle_timeout), drain
/// [`poll_transmit`](Self::poll_transmit) (send each string as a WebSocket
/// text message, in order), then [`poll_event`](Self::poll_event), then
/// re-arm the timer from [`poll_timeout`](Self::poll_timeout).
#[derive(Debug)]
pub struct ClientHandshake {
    common: Common,
    state: ClientState,
    routes: Vec<String>,
    accepted: Vec<String>,
    rejected: Vec<RejectedRoute>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientState {
    AwaitSynAck,
    /// `next` indexes the oldest unanswered route; when it equals the
    /// number of routes the final acknowledgement is next.
    AwaitAcks {
        next: usize,
    },
}

impl ClientHandshake {
    /// Starts a handshake at `now` and queues the `SYN`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] if the config does not validate.
    pub fn new(config: &ClientConfig, now: Instant) -> Result<Self, ConfigError> {
        let routes = config.distinct_routes()?;
        let mut common = Common::new(config.limits, config.handshake_timeout, now);
        common.transmit.push_back(wire::handshake(SYN));
        Ok(Self {
            common,
            state: ClientState::AwaitSynAck,
            routes,
            accepted: Vec::new(),
            rejected: Vec::new(),
        })
    }

    /// Feeds one whole WebSocket message (text or binary) from the server.
    ///
    /// # Errors
    ///
    /// A [`HandshakeError`]; see its docs for which are final. A message
    /// arriving at or after the deadline fails with
    /// [`HandshakeError::Timeout`].
    pub fn handle_message(
        &mut self,
        now: Instant,
        msg: impl AsRef<[u8]>,
    ) -> Result<(), HandshakeError> {
        self.common.precheck(now)?;
        let result = self.step(msg.as_ref());
        result.map_err(|err| self.common.fail(err))
    }

    fn step(&mut self, msg: &[u8]) -> Result<(), HandshakeError> {
        let msg = parse(msg, self.common.limits)?;
        match self.state {
            ClientState::AwaitSynAck => {
                if !msg.is_handshake(SYN_ACK) {
                    return Err(unexpected("SYN/ACK", &msg));
                }
                let out = &mut self.common.transmit;
                out.push_back(wire::handshake(ACK));
                out.extend(self.routes.iter().map(|route| wire::handshake(route)));
                out.push_back(wire::end());
                self.state = ClientState::AwaitAcks { next: 0 };
                Ok(())
            }
            ClientState::AwaitAcks { next } => match self.routes.get(next) {
                Some(route) => {
                    let nack = msg.is_handshake(NACK);
                    if !nack && !msg.is_handshake(ACK) {
                        return Err(unexpected("ACK or NACK for a route", &msg));
                    }
                    if let Some(got) = msg.route.as_deref().filter(|got| got != route) {
                        return Err(HandshakeError::RouteMismatch {
                            expected: route.clone(),
                            got: truncate(got, 64).to_owned(),
                        });
                    }
                    if nack {
                        let reason = msg.error.as_deref().unwrap_or("rejected");
                        self.rejected.push(RejectedRoute {
                            route: route.clone(),
                            reason: truncate(reason, MAX_REASON_LEN).to_owned(),
                        });
                    } else {
                        self.accepted.push(route.clone());
                    }
                    self.state = ClientState::AwaitAcks { next: next + 1 };
                    Ok(())
                }
                None => {
                    let end_ack = msg.event == EVENT_END
                        && msg.data.as_deref().is_none_or(|data| data == ACK);
                    let bare_ack = msg.is_handshake(ACK) && msg.route.is_none();
                    if !end_ack && !bare_ack {
                        return Err(unexpected("SMHandshakeEnd ACK", &msg));
                    }
                    self.common.ready(Negotiated {
                        routes: std::mem::take(&mut self.accepted),
                        rejected: std::mem::take(&mut self.rejected),
                    });
                    Ok(())
                }
            },
        }
    }

    /// Fails the handshake with [`HandshakeError::Timeout`] (and queues the
    /// `SMError`) if it is still running and `now` is at or past the
    /// deadline. Afterwards [`poll_timeout`](Self::poll_timeout) is `None`.
    ///
    /// # Errors
    ///
    /// [`HandshakeError::Timeout`] when it fires; `Ok` otherwise.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), HandshakeError> {
        self.common.handle_timeout(now)
    }

    /// The handshake deadline while it runs; `None` once ready or failed.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.common.poll_timeout()
    }

    /// The next text message to send to the server.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<String> {
        self.common.transmit.pop_front()
    }

    /// The next event ([`Event::Ready`], once).
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.common.event.take()
    }

    /// Whether the handshake completed.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        matches!(self.common.done, Some(Ok(())))
    }

    /// The error the handshake failed with, if it did.
    #[must_use]
    pub fn error(&self) -> Option<&HandshakeError> {
        self.common.error()
    }
}

/// The server (gateway) side of the route handshake.
///
/// Created with the time the WebSocket opened. After every
/// [`handle_message`](Self::handle_message) or
/// [`handle_timeout`](Self::handle_timeout), drain
/// [`poll_transmit`](Self::poll_transmit) (send each string as a WebSocket
/// text message, in order), then [`poll_event`](Self::poll_event), then
/// re-arm the timer from [`poll_timeout`](Self::poll_timeout). Once
/// [`Event::Ready`] came, hand the [`Negotiated`] routes to a
/// [`Router`](super::Router) and feed it every later message.
#[derive(Debug)]
pub struct ServerHandshake {
    config: Arc<ServerConfig>,
    common: Common,
    state: ServerState,
    seen: BTreeSet<String>,
    accepted: Vec<String>,
    rejected: Vec<RejectedRoute>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerState {
    AwaitSyn,
    AwaitAck,
    Routes { received: usize },
}

impl ServerHandshake {
    /// Starts waiting for a client's `SYN` at `now`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] if the config does not validate.
    pub fn new(config: Arc<ServerConfig>, now: Instant) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            common: Common::new(config.limits, config.handshake_timeout, now),
            config,
            state: ServerState::AwaitSyn,
            seen: BTreeSet::new(),
            accepted: Vec::new(),
            rejected: Vec::new(),
        })
    }

    /// Feeds one whole WebSocket message (text or binary) from the client.
    ///
    /// # Errors
    ///
    /// A [`HandshakeError`]; see its docs for which are final. A message
    /// arriving at or after the deadline fails with
    /// [`HandshakeError::Timeout`].
    pub fn handle_message(
        &mut self,
        now: Instant,
        msg: impl AsRef<[u8]>,
    ) -> Result<(), HandshakeError> {
        self.common.precheck(now)?;
        let result = self.step(msg.as_ref());
        result.map_err(|err| self.common.fail(err))
    }

    fn step(&mut self, msg: &[u8]) -> Result<(), HandshakeError> {
        let msg = parse(msg, self.common.limits)?;
        match self.state {
            ServerState::AwaitSyn => {
                if !msg.is_handshake(SYN) {
                    return Err(unexpected("SYN", &msg));
                }
                self.common.transmit.push_back(wire::handshake(SYN_ACK));
                self.state = ServerState::AwaitAck;
            }
            ServerState::AwaitAck => {
                if !msg.is_handshake(ACK) {
                    return Err(unexpected("ACK", &msg));
                }
                self.state = ServerState::Routes { received: 0 };
            }
            ServerState::Routes { received } => {
                if msg.event == EVENT_END {
                    self.common.transmit.push_back(wire::end_ack());
                    self.common.ready(Negotiated {
                        routes: std::mem::take(&mut self.accepted),
                        rejected: std::mem::take(&mut self.rejected),
                    });
                    return Ok(());
                }
                let (EVENT_HANDSHAKE, Some(name)) = (&*msg.event, msg.data.as_deref()) else {
                    return Err(unexpected("a route name or SMHandshakeEnd", &msg));
                };
                let limits = &self.common.limits;
                if received >= limits.max_routes {
                    return Err(HandshakeError::TooManyRoutes {
                        max: limits.max_routes,
                    });
                }
                validate_route_name(name, limits.max_route_name_len).map_err(|error| {
                    HandshakeError::InvalidRouteName {
                        name: truncate(name, 64).to_owned(),
                        error,
                    }
                })?;
                self.state = ServerState::Routes {
                    received: received + 1,
                };
                let known = self.config.routes.contains(name);
                if known || self.config.unknown_routes == UnknownRoutePolicy::Accept {
                    if self.seen.insert(name.to_owned()) {
                        self.accepted.push(name.to_owned());
                    }
                    self.common.transmit.push_back(wire::route_ack(name));
                } else if self.config.unknown_routes == UnknownRoutePolicy::Fail {
                    return Err(HandshakeError::UnknownRoute(name.to_owned()));
                } else {
                    if self.seen.insert(name.to_owned()) {
                        self.rejected.push(RejectedRoute {
                            route: name.to_owned(),
                            reason: UNKNOWN_ROUTE_REASON.to_owned(),
                        });
                    }
                    self.common
                        .transmit
                        .push_back(wire::route_nack(name, UNKNOWN_ROUTE_REASON));
                }
            }
        }
        Ok(())
    }

    /// Fails the handshake with [`HandshakeError::Timeout`] (and queues the
    /// `SMError`) if it is still running and `now` is at or past the
    /// deadline. Afterwards [`poll_timeout`](Self::poll_timeout) is `None`.
    ///
    /// # Errors
    ///
    /// [`HandshakeError::Timeout`] when it fires; `Ok` otherwise.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), HandshakeError> {
        self.common.handle_timeout(now)
    }

    /// The handshake deadline while it runs; `None` once ready or failed.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.common.poll_timeout()
    }

    /// The next text message to send to the client.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<String> {
        self.common.transmit.pop_front()
    }

    /// The next event ([`Event::Ready`], once).
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.common.event.take()
    }

    /// Whether the handshake completed.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        matches!(self.common.done, Some(Ok(())))
    }

    /// The error the handshake failed with, if it did.
    #[must_use]
    pub fn error(&self) -> Option<&HandshakeError> {
        self.common.error()
    }

    /// The configuration this machine runs with.
    #[must_use]
    pub fn config(&self) -> &Arc<ServerConfig> {
        &self.config
    }
}

#[cfg(test)]
mod tests;
