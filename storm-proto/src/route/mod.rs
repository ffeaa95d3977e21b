//! The route handshake and route-addressed messages of the single-endpoint
//! gateway.
//!
//! A client connects to one WebSocket endpoint and, before any data, runs a
//! small handshake over WebSocket **text** messages that tells the gateway
//! which named routes (backends) it means to use. After the handshake every
//! message names its route in a `ROUTENAME=<name>` header line.
//!
//! # The handshake on the wire
//!
//! | # | from | message |
//! |---|---|---|
//! | 1 | client | `{"event":"SMHandshake","data":"SYN"}` |
//! | 2 | server | `{"event":"SMHandshake","data":"SYN/ACK"}` |
//! | 3 | client | `{"event":"SMHandshake","data":"ACK"}` |
//! | 4 | client | `{"event":"SMHandshake","data":"<route>"}`, once per route |
//! | 5 | server | per route, in order: `{"event":"SMHandshake","data":"ACK","route":"<route>"}`, or `{"event":"SMHandshake","data":"NACK","route":"<route>","error":"<why>"}` |
//! | 6 | client | `{"event":"SMHandshakeEnd"}` |
//! | 7 | server | `{"event":"SMHandshakeEnd","data":"ACK"}` — both sides are now ready |
//!
//! The client does not wait for the per-route acknowledgements: after the
//! `SYN/ACK` it sends `ACK`, every route and the end marker at once (the
//! WebSocket keeps them in order), so the handshake costs two round trips
//! whatever the number of routes. The server answers each route message in
//! order; the client pairs each answer with the oldest unanswered route.
//!
//! A side that fails the handshake (a malformed or out-of-order message, a
//! limit, a timeout) sends `{"event":"SMError","error":"<why>"}` and should
//! then close the WebSocket with [`HandshakeError::close_code`]. Receiving an
//! `SMError` fails the handshake with [`HandshakeError::PeerError`].
//!
//! **Liberal in what is accepted**: unknown extra JSON fields are ignored;
//! escapes in strings are fine; binary messages holding the same JSON are
//! accepted; the client also takes a route acknowledgement without the
//! `route` field, a bare `ACK` text message (servers that acknowledge with
//! the word alone), and `{"event":"SMHandshake","data":"ACK"}` or a bare
//! `ACK` as the final acknowledgement. **Strict in what is sent**: exactly
//! the messages in the table above.
//!
//! # Unknown routes
//!
//! The server knows its own route table (from the gateway config,
//! [`ServerConfig::routes`]). What happens to a client route that is not in
//! it is [`ServerConfig::unknown_routes`]: by default
//! ([`UnknownRoutePolicy::Reject`]) the route gets a `NACK` with the reason,
//! is left out of the negotiated set and the handshake continues, so one
//! missing backend does not take the client's other routes down with it.
//! [`UnknownRoutePolicy::Fail`] fails the whole handshake instead, and
//! [`UnknownRoutePolicy::Accept`] takes the client's word for it, for
//! gateways whose backends are resolved later. Either way a connection
//! routes the union of what it negotiated and the server's own table: a
//! configured route works even if the client did not announce it.
//!
//! # Route names
//!
//! A route name is 1 to [`Limits::max_route_name_len`] bytes of UTF-8
//! without control characters (so never a line break), compared exactly
//! (case-sensitive). `SYN`, `ACK`, `SYN/ACK` and `NACK` are reserved: they
//! are handshake words. See [`validate_route_name`].
//!
//! # After the handshake
//!
//! [`envelope`] defines the route-addressed message
//! (`ROUTENAME=<name>\n<payload>`, for text and binary messages alike),
//! the [`Router`] the gateway uses to resolve names against the negotiated
//! routes and its own table, and the error reply an unknown route gets.
//! [`backend`] defines how the gateway shares one connection per route
//! among many clients (the `CLIENT=<id>` header) and the error replies for a
//! backend that is down.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Instant;
//! use storm_proto::route::*;
//!
//! let now = Instant::now();
//! let server_config = Arc::new(ServerConfig {
//!     routes: RouteTable::new(["chat", "prices"])?,
//!     ..ServerConfig::default()
//! });
//! let mut server = ServerHandshake::new(server_config.clone(), now)?;
//! let mut client = ClientHandshake::new(
//!     &ClientConfig { routes: vec!["chat".into(), "video".into()], ..ClientConfig::default() },
//!     now,
//! )?;
//!
//! // Shuttle messages until both sides are ready.
//! let (mut client_ready, mut server_ready) = (None, None);
//! while client_ready.is_none() || server_ready.is_none() {
//!     while let Some(msg) = client.poll_transmit() {
//!         server.handle_message(now, &msg)?;
//!     }
//!     while let Some(msg) = server.poll_transmit() {
//!         client.handle_message(now, &msg)?;
//!     }
//!     if let Some(Event::Ready(n)) = client.poll_event() { client_ready = Some(n); }
//!     if let Some(Event::Ready(n)) = server.poll_event() { server_ready = Some(n); }
//! }
//! let (client_ready, server_ready) = (client_ready.unwrap(), server_ready.unwrap());
//! assert_eq!(client_ready.routes(), ["chat"]);
//! assert_eq!(client_ready.rejected()[0].route, "video");
//! assert_eq!(server_ready.routes(), client_ready.routes());
//!
//! // Route-addressed traffic.
//! let router = Router::new(server_config, &server_ready);
//! let msg = envelope::encode_text("chat", "hello")?;
//! assert_eq!(msg, "ROUTENAME=chat\nhello");
//! let addressed = router.resolve(msg.as_bytes())?;
//! assert_eq!((addressed.route, addressed.payload), ("chat", &b"hello"[..]));
//! let err = router.resolve(b"ROUTENAME=video\nhi").unwrap_err();
//! assert_eq!(
//!     err.error_reply(),
//!     r#"{"event":"SMError","route":"video","error":"unknown route"}"#
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;

pub mod backend;
pub mod envelope;
pub mod gateway;
mod handshake;
mod wire;

pub use envelope::{Addressed, EnvelopeError, RouteError, Router};
pub use handshake::{
    ClientConfig, ClientHandshake, DEFAULT_HANDSHAKE_TIMEOUT, Event, HandshakeError, Negotiated,
    RejectedRoute, ServerConfig, ServerHandshake, UNKNOWN_ROUTE_REASON, UnknownRoutePolicy,
};

/// Handshake words that cannot be route names.
pub const RESERVED_NAMES: [&str; 4] = ["SYN", "ACK", "SYN/ACK", "NACK"];

/// Largest [`Limits::max_route_name_len`] a config may ask for: 4 KiB.
pub const MAX_ROUTE_NAME_LEN_LIMIT: usize = 4096;

/// Largest [`Limits::max_routes`] a config may ask for.
pub const MAX_ROUTES_LIMIT: usize = 65_536;

/// Largest [`Limits::max_message_len`] a config may ask for: 1 MiB.
pub const MAX_MESSAGE_LEN_LIMIT: usize = 1 << 20;

/// Limits of one handshake, the same on both sides.
///
/// Memory: a server keeps at most `max_routes * max_route_name_len` bytes of
/// route names per connection (8 KiB with the defaults) and never parses a
/// message longer than `max_message_len`.
///
/// `#[non_exhaustive]`, so a new limit is not a breaking change: start from
/// [`default`](Self::default) (or [`DEFAULT`](Self::DEFAULT) in a `const`)
/// and chain the `with_*` methods; the fields stay public, to read and to
/// set on a value you own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Most route messages a client may send in one handshake (duplicates
    /// and rejected routes count). Default 64.
    pub max_routes: usize,
    /// Longest route name, in bytes. Default 128.
    pub max_route_name_len: usize,
    /// Longest handshake message, in bytes, checked before it is parsed.
    /// Must leave room for a route name written with JSON escapes: at least
    /// `6 * max_route_name_len + 128`. Default 4096.
    pub max_message_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl Limits {
    /// The defaults, in a `const` context: 64 routes, names up to 128
    /// bytes, handshake messages up to 4096 bytes.
    pub const DEFAULT: Self = Self {
        max_routes: 64,
        max_route_name_len: 128,
        max_message_len: 4096,
    };

    /// Most route messages a client may send in one handshake (default
    /// 64).
    #[must_use]
    pub const fn with_max_routes(mut self, max_routes: usize) -> Self {
        self.max_routes = max_routes;
        self
    }

    /// Longest route name, in bytes (default 128).
    #[must_use]
    pub const fn with_max_route_name_len(mut self, max_route_name_len: usize) -> Self {
        self.max_route_name_len = max_route_name_len;
        self
    }

    /// Longest handshake message, in bytes, at least
    /// `6 * max_route_name_len + 128` (default 4096).
    #[must_use]
    pub const fn with_max_message_len(mut self, max_message_len: usize) -> Self {
        self.max_message_len = max_message_len;
        self
    }

    /// Checks the limits against each other and the hard caps.
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidLimits`] saying which limit is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_routes > MAX_ROUTES_LIMIT {
            return Err(ConfigError::InvalidLimits(
                "max_routes above MAX_ROUTES_LIMIT",
            ));
        }
        if self.max_route_name_len == 0 || self.max_route_name_len > MAX_ROUTE_NAME_LEN_LIMIT {
            return Err(ConfigError::InvalidLimits(
                "max_route_name_len must be 1..=MAX_ROUTE_NAME_LEN_LIMIT",
            ));
        }
        if self.max_message_len > MAX_MESSAGE_LEN_LIMIT {
            return Err(ConfigError::InvalidLimits(
                "max_message_len above MAX_MESSAGE_LEN_LIMIT",
            ));
        }
        if self.max_message_len < 6 * self.max_route_name_len + 128 {
            return Err(ConfigError::InvalidLimits(
                "max_message_len below 6 * max_route_name_len + 128",
            ));
        }
        Ok(())
    }
}

/// Why a string is not a valid route name.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    Empty,
    /// The name is longer than the limit.
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// [`Limits::max_route_name_len`].
        max: usize,
    },
    /// The name contains a control character (a line break, a NUL, ...).
    ControlCharacter,
    /// The name is one of [`RESERVED_NAMES`].
    Reserved,
    /// The name is not UTF-8 (only possible in an [`envelope`] header).
    NotUtf8,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("empty route name"),
            Self::TooLong { len, max } => {
                write!(f, "route name of {len} bytes is longer than {max}")
            }
            Self::ControlCharacter => f.write_str("route name contains a control character"),
            Self::Reserved => f.write_str("route name is a reserved handshake word"),
            Self::NotUtf8 => f.write_str("route name is not UTF-8"),
        }
    }
}

impl std::error::Error for NameError {}

/// Checks that `name` is a valid route name of at most `max_len` bytes
/// (see [the module docs](self#route-names)).
///
/// # Errors
///
/// The [`NameError`] saying what is wrong.
pub fn validate_route_name(name: &str, max_len: usize) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > max_len {
        return Err(NameError::TooLong {
            len: name.len(),
            max: max_len,
        });
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::ControlCharacter);
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(NameError::Reserved);
    }
    Ok(())
}

/// A gateway's own route table: the route names it can serve (from its
/// config file). Names are validated against [`MAX_ROUTE_NAME_LEN_LIMIT`]
/// here and against the configured [`Limits`] when a [`ServerConfig`] is
/// used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    names: std::collections::BTreeSet<String>,
}

impl RouteTable {
    /// Builds a table from route names (duplicates collapse).
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidRouteName`] for the first invalid name.
    pub fn new<I, S>(names: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut table = Self::default();
        for name in names {
            table.insert(name.into())?;
        }
        Ok(table)
    }

    /// Adds one route name.
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidRouteName`] if the name is not valid.
    pub fn insert(&mut self, name: String) -> Result<(), ConfigError> {
        validate_route_name(&name, MAX_ROUTE_NAME_LEN_LIMIT).map_err(|error| {
            ConfigError::InvalidRouteName {
                name: name.clone(),
                error,
            }
        })?;
        self.names.insert(name);
        Ok(())
    }

    /// Whether the table holds `name` (exact, case-sensitive).
    #[must_use]
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// The route names, in sorted order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// Number of routes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the table is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    fn check(&self, limits: &Limits) -> Result<(), ConfigError> {
        for name in &self.names {
            validate_route_name(name, limits.max_route_name_len).map_err(|error| {
                ConfigError::InvalidRouteName {
                    name: name.clone(),
                    error,
                }
            })?;
        }
        Ok(())
    }
}

/// A configuration that cannot be used (local misuse).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A [`Limits`] value is out of range; the text says which.
    InvalidLimits(&'static str),
    /// A configured route name is not valid.
    InvalidRouteName {
        /// The name.
        name: String,
        /// What is wrong with it.
        error: NameError,
    },
    /// The client lists more routes than [`Limits::max_routes`].
    TooManyRoutes {
        /// Distinct routes listed.
        count: usize,
        /// The limit.
        max: usize,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidLimits(what) => write!(f, "invalid route limits: {what}"),
            Self::InvalidRouteName { name, error } => {
                write!(f, "invalid route name {name:?}: {error}")
            }
            Self::TooManyRoutes { count, max } => {
                write!(f, "{count} routes configured, at most {max} allowed")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// Cuts `s` to at most `max` bytes on a char boundary (for error texts that
/// quote peer input).
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_names() {
        assert_eq!(validate_route_name("Endpoint1", 128), Ok(()));
        assert_eq!(validate_route_name("ünï côdé/x=y", 128), Ok(()));
        assert_eq!(validate_route_name("", 128), Err(NameError::Empty));
        assert_eq!(
            validate_route_name("abcd", 3),
            Err(NameError::TooLong { len: 4, max: 3 })
        );
        assert_eq!(validate_route_name("abc", 3), Ok(()));
        for bad in ["a\nb", "a\rb", "\0", "tab\t", "\u{85}"] {
            assert_eq!(
                validate_route_name(bad, 128),
                Err(NameError::ControlCharacter),
                "{bad:?}"
            );
        }
        for word in RESERVED_NAMES {
            assert_eq!(validate_route_name(word, 128), Err(NameError::Reserved));
        }
        // Reserved words are case-sensitive like every name.
        assert_eq!(validate_route_name("ack", 128), Ok(()));
    }

    #[test]
    fn limits_validation() {
        assert_eq!(Limits::default().validate(), Ok(()));
        let bad = [
            Limits {
                max_route_name_len: 0,
                ..Limits::default()
            },
            Limits {
                max_route_name_len: MAX_ROUTE_NAME_LEN_LIMIT + 1,
                ..Limits::default()
            },
            Limits {
                max_routes: MAX_ROUTES_LIMIT + 1,
                ..Limits::default()
            },
            Limits {
                max_message_len: MAX_MESSAGE_LEN_LIMIT + 1,
                ..Limits::default()
            },
            Limits {
                max_route_name_len: 1000,
                ..Limits::default()
            },
        ];
        for limits in bad {
            assert!(
                matches!(limits.validate(), Err(ConfigError::InvalidLimits(_))),
                "{limits:?}"
            );
        }
        let zero_routes = Limits {
            max_routes: 0,
            ..Limits::default()
        };
        assert_eq!(zero_routes.validate(), Ok(()));
    }

    #[test]
    fn route_table() {
        let table = RouteTable::new(["b", "a", "b"]).unwrap();
        assert_eq!(table.iter().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(table.len(), 2);
        assert!(table.contains("a") && !table.contains("A"));
        assert!(matches!(
            RouteTable::new(["ok", "bad\n"]),
            Err(ConfigError::InvalidRouteName {
                error: NameError::ControlCharacter,
                ..
            })
        ));
        assert!(RouteTable::default().is_empty());
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
