//! The gateway's route file: one INI section per backend endpoint.
//!
//! ```ini
//! ; comment lines start with ';' or '#'
//! [orders]
//! name = orders
//! host = 127.0.0.1
//! port = 9101
//! protocol = ws
//!
//! [audit]
//! name = audit
//! host = localhost
//! port = 9443
//! tls = on
//!
//! [Endpoint2]
//! Name = prices
//! Port = 9090
//! protocol = tcp
//! ```
//!
//! One `[section]` per endpoint: `Name` and `Port` (keys are
//! case-insensitive), and optionally `host`, `protocol` and `tls`:
//!
//! | key | meaning |
//! |---|---|
//! | `name` | the route name clients address (`ROUTENAME=<name>`); required, unique, a valid route name of at most 128 bytes, compared case-sensitively |
//! | `port` | the backend's TCP port, 1 to 65535; required |
//! | `host` | the backend's host name or IP address (IPv6 without brackets); default `127.0.0.1` |
//! | `protocol` | `ws` (WebSocket, `ws://host:port/`) or `tcp` (4-byte big-endian length prefix); default `ws` |
//! | `tls` | `on` to reach the backend over TLS (`wss://host:port/`, or TLS under the length prefix), its certificate checked against [`GatewayOptions::backend_tls`](super::GatewayOptions::backend_tls) and naming `host`; `off` (the default). Also `yes`/`no`, `true`/`false`, `1`/`0` |
//!
//! Keys, protocol and tls values ignore ASCII case; whitespace around keys,
//! values and section names is ignored; blank lines are fine. The section
//! name is a free label (unique); only `name` is the route. There are no
//! inline comments: `;` after a value is part of the value. Anything else
//! is an error naming the line: a line that is neither a section, a
//! `key = value` pair nor a comment, a key before the first section, an
//! unknown or repeated key, a section without `name` or `port` (reported at
//! its `[section]` line), a bad port, host, protocol or tls value, a route name that is
//! not valid or is used twice, or a file without any endpoint.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use storm_proto::route::{Limits, NameError, RouteTable, validate_route_name};

/// Largest route file read, in bytes (checked before reading it whole).
pub const MAX_CONFIG_LEN: u64 = 1 << 20;

/// Most endpoints one file may define (each is one backend connection).
pub const MAX_ENDPOINTS: usize = 1024;

/// Host used when a section has no `host` key.
pub const DEFAULT_HOST: &str = "127.0.0.1";

/// Longest host name accepted, in bytes (DNS names are at most 253).
const MAX_HOST_LEN: usize = 253;

/// How the gateway talks to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    /// WebSocket: the gateway connects to `ws://host:port/`. The default.
    #[default]
    Ws,
    /// Plain TCP, each message a 4-byte big-endian length and the payload.
    Tcp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ws => "ws",
            Self::Tcp => "tcp",
        })
    }
}

impl FromStr for Protocol {
    type Err = ConfigErrorKind;

    /// `ws` or `tcp`, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("ws") {
            Ok(Self::Ws)
        } else if s.eq_ignore_ascii_case("tcp") {
            Ok(Self::Tcp)
        } else {
            Err(ConfigErrorKind::InvalidProtocol(s.to_owned()))
        }
    }
}

/// One backend: the route clients name, and where it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The route name (`name` key).
    pub name: String,
    /// Host name or IP address (`host` key).
    pub host: String,
    /// TCP port (`port` key).
    pub port: u16,
    /// Wire protocol (`protocol` key).
    pub protocol: Protocol,
    /// Whether the connection runs over TLS (`tls` key). `false` for
    /// endpoints built with [`new`](Self::new).
    pub tls: bool,
    /// The section label (`[label]`); empty for endpoints built in code.
    pub section: String,
    /// 1-based line of the `[section]` header; 0 for endpoints built in code.
    pub line: usize,
}

impl Endpoint {
    /// An endpoint built in code (no section, no line).
    #[must_use]
    pub fn new(
        name: impl Into<String>,
        host: impl Into<String>,
        port: u16,
        protocol: Protocol,
    ) -> Self {
        Self {
            name: name.into(),
            host: host.into(),
            port,
            protocol,
            tls: false,
            section: String::new(),
            line: 0,
        }
    }

    /// `host:port`, with brackets around an IPv6 address.
    #[must_use]
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Where the gateway connects: `ws://host:port/` or `tcp://host:port`;
    /// over TLS `wss://host:port/` or `tls://host:port`.
    #[must_use]
    pub fn url(&self) -> String {
        match (self.protocol, self.tls) {
            (Protocol::Ws, false) => format!("ws://{}/", self.authority()),
            (Protocol::Ws, true) => format!("wss://{}/", self.authority()),
            (Protocol::Tcp, false) => format!("tcp://{}", self.authority()),
            (Protocol::Tcp, true) => format!("tls://{}", self.authority()),
        }
    }
}

/// A checked gateway configuration: at least one endpoint, unique valid
/// route names, valid ports, hosts and protocols.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    endpoints: Vec<Endpoint>,
}

impl GatewayConfig {
    /// Checks endpoints built in code.
    ///
    /// # Errors
    ///
    /// The first [`ConfigError`] (its line is the endpoint's `line`, or
    /// `None` when that is 0).
    pub fn new(endpoints: Vec<Endpoint>) -> Result<Self, ConfigError> {
        if endpoints.is_empty() {
            return Err(ConfigError::file(ConfigErrorKind::NoEndpoints));
        }
        if endpoints.len() > MAX_ENDPOINTS {
            return Err(ConfigError::file(ConfigErrorKind::TooManyEndpoints));
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        for endpoint in &endpoints {
            let at = |kind| ConfigError {
                line: (endpoint.line > 0).then_some(endpoint.line),
                kind,
            };
            check_name(&endpoint.name).map_err(at)?;
            check_host(&endpoint.host).map_err(at)?;
            if endpoint.port == 0 {
                return Err(at(ConfigErrorKind::InvalidPort("0".to_owned())));
            }
            if let Some(&first_line) = names.get(endpoint.name.as_str()) {
                return Err(at(ConfigErrorKind::DuplicateName {
                    name: endpoint.name.clone(),
                    first_line,
                }));
            }
            names.insert(&endpoint.name, endpoint.line);
        }
        Ok(Self { endpoints })
    }

    /// Parses a route file's text.
    ///
    /// # Errors
    ///
    /// The first [`ConfigError`], with the line that is wrong.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Parser::default().run(text)
    }

    /// Reads and parses a route file of at most [`MAX_CONFIG_LEN`] bytes.
    ///
    /// # Errors
    ///
    /// A [`LoadError`] naming the file, and for a bad file its line.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        let path = path.as_ref();
        let fail = |kind: LoadErrorKind| LoadError {
            path: path.to_owned(),
            kind,
        };
        let file = std::fs::File::open(path).map_err(|e| fail(LoadErrorKind::Io(e)))?;
        let mut bytes = Vec::new();
        file.take(MAX_CONFIG_LEN + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| fail(LoadErrorKind::Io(e)))?;
        if bytes.len() as u64 > MAX_CONFIG_LEN {
            return Err(fail(LoadErrorKind::TooLarge));
        }
        let text = std::str::from_utf8(&bytes).map_err(|e| {
            let line = 1 + bytes
                .get(..e.valid_up_to())
                .unwrap_or_default()
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            fail(LoadErrorKind::Config(ConfigError {
                line: Some(line),
                kind: ConfigErrorKind::NotUtf8,
            }))
        })?;
        Self::parse(text).map_err(|e| fail(LoadErrorKind::Config(e)))
    }

    /// The endpoints, in file order.
    #[must_use]
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The endpoint serving route `name`.
    #[must_use]
    pub fn endpoint(&self, name: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.name == name)
    }

    /// The route names as the core's route table.
    #[must_use]
    pub fn route_table(&self) -> RouteTable {
        let mut table = RouteTable::default();
        for endpoint in &self.endpoints {
            // Checked in `new` against a stricter limit than the table's.
            let _ = table.insert(endpoint.name.clone());
        }
        table
    }
}

/// `on`/`off`, `yes`/`no`, `true`/`false`, `1`/`0`, ignoring ASCII case.
fn parse_switch(value: &str) -> Option<bool> {
    let is = |words: &[&str]| words.iter().any(|w| value.eq_ignore_ascii_case(w));
    if is(&["on", "yes", "true", "1"]) {
        Some(true)
    } else if is(&["off", "no", "false", "0"]) {
        Some(false)
    } else {
        None
    }
}

fn check_name(name: &str) -> Result<(), ConfigErrorKind> {
    validate_route_name(name, Limits::default().max_route_name_len).map_err(|error| {
        ConfigErrorKind::InvalidName {
            name: name.to_owned(),
            error,
        }
    })
}

fn check_host(host: &str) -> Result<(), ConfigErrorKind> {
    let ok = !host.is_empty()
        && host.len() <= MAX_HOST_LEN
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '%'));
    if ok {
        Ok(())
    } else {
        Err(ConfigErrorKind::InvalidHost(host.to_owned()))
    }
}

/// A route file that cannot be used, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line that is wrong; `None` when the whole file is (no
    /// endpoint at all, too many).
    pub line: Option<usize>,
    /// What is wrong.
    pub kind: ConfigErrorKind,
}

impl ConfigError {
    fn at(line: usize, kind: ConfigErrorKind) -> Self {
        Self {
            line: Some(line),
            kind,
        }
    }

    fn file(kind: ConfigErrorKind) -> Self {
        Self { line: None, kind }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.kind),
            None => self.kind.fmt(f),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ConfigErrorKind::InvalidName { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// What is wrong in a route file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// Neither `[section]`, `key = value`, a comment nor blank.
    Syntax,
    /// `[]` or a section name with `[` or `]` in it.
    InvalidSection,
    /// A section name used twice.
    DuplicateSection {
        /// The section name.
        section: String,
        /// Where it was first used.
        first_line: usize,
    },
    /// A `key = value` before the first `[section]`.
    KeyOutsideSection(String),
    /// A key other than `name`, `host`, `port`, `protocol`, `tls`.
    UnknownKey(String),
    /// A key given twice in one section.
    DuplicateKey {
        /// The key as written.
        key: String,
        /// Where it was first given.
        first_line: usize,
    },
    /// A section without `name`.
    MissingName(String),
    /// A section without `port`.
    MissingPort(String),
    /// A port that is not a number from 1 to 65535.
    InvalidPort(String),
    /// A protocol other than `ws` or `tcp`.
    InvalidProtocol(String),
    /// A `tls` value other than on/off, yes/no, true/false, 1/0.
    InvalidTls(String),
    /// An empty host, or one with characters no host name or IP address has.
    InvalidHost(String),
    /// A route name the core does not accept.
    InvalidName {
        /// The name.
        name: String,
        /// Why.
        error: NameError,
    },
    /// A route name used by two endpoints.
    DuplicateName {
        /// The name.
        name: String,
        /// Line of the section that used it first (0 if built in code).
        first_line: usize,
    },
    /// The file defines no endpoint.
    NoEndpoints,
    /// More than [`MAX_ENDPOINTS`] endpoints.
    TooManyEndpoints,
    /// The file is not UTF-8 (the line holds the first bad byte).
    NotUtf8,
}

impl fmt::Display for ConfigErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax => f.write_str(
                "expected `[section]`, `key = value`, a comment (`;` or `#`) or a blank line",
            ),
            Self::InvalidSection => {
                f.write_str("section name must be non-empty, without `[` or `]`")
            }
            Self::DuplicateSection {
                section,
                first_line,
            } => write!(
                f,
                "section [{section}] already defined on line {first_line}"
            ),
            Self::KeyOutsideSection(key) => {
                write!(f, "key {key:?} before the first [section]")
            }
            Self::UnknownKey(key) => write!(
                f,
                "unknown key {key:?} (expected name, host, port, protocol or tls)"
            ),
            Self::DuplicateKey { key, first_line } => {
                write!(f, "key {key:?} already given on line {first_line}")
            }
            Self::MissingName(section) => write!(f, "section [{section}] has no name"),
            Self::MissingPort(section) => write!(f, "section [{section}] has no port"),
            Self::InvalidPort(value) => {
                write!(f, "port {value:?} is not a number from 1 to 65535")
            }
            Self::InvalidProtocol(value) => {
                write!(f, "protocol {value:?} is not ws or tcp")
            }
            Self::InvalidTls(value) => {
                write!(f, "tls {value:?} is not on or off")
            }
            Self::InvalidHost(value) => {
                write!(f, "host {value:?} is not a host name or IP address")
            }
            Self::InvalidName { name, error } => write!(f, "route name {name:?}: {error}"),
            Self::DuplicateName { name, first_line } if *first_line > 0 => write!(
                f,
                "route name {name:?} already used by the section on line {first_line}"
            ),
            Self::DuplicateName { name, .. } => write!(f, "route name {name:?} used twice"),
            Self::NoEndpoints => {
                f.write_str("no endpoint defined (add a [section] with name and port)")
            }
            Self::TooManyEndpoints => write!(f, "more than {MAX_ENDPOINTS} endpoints"),
            Self::NotUtf8 => f.write_str("not UTF-8 text"),
        }
    }
}

impl std::error::Error for ConfigErrorKind {}

/// A route file that could not be read or used.
#[derive(Debug)]
pub struct LoadError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub kind: LoadErrorKind,
}

/// What went wrong loading a route file.
#[derive(Debug)]
#[non_exhaustive]
pub enum LoadErrorKind {
    /// It could not be opened or read.
    Io(io::Error),
    /// It is larger than [`MAX_CONFIG_LEN`].
    TooLarge,
    /// Its contents are wrong.
    Config(ConfigError),
}

impl LoadError {
    /// The configuration error, when the file was read but is wrong.
    #[must_use]
    pub fn config_error(&self) -> Option<&ConfigError> {
        match &self.kind {
            LoadErrorKind::Config(e) => Some(e),
            _ => None,
        }
    }
}

impl fmt::Display for LoadError {
    /// `routes.ini:7: unknown key "hots" (...)`, the usual `file:line:` form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        match &self.kind {
            LoadErrorKind::Io(e) => write!(f, "{path}: {e}"),
            LoadErrorKind::TooLarge => write!(f, "{path}: larger than {MAX_CONFIG_LEN} bytes"),
            LoadErrorKind::Config(ConfigError {
                line: Some(line),
                kind,
            }) => write!(f, "{path}:{line}: {kind}"),
            LoadErrorKind::Config(ConfigError { line: None, kind }) => {
                write!(f, "{path}: {kind}")
            }
        }
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            LoadErrorKind::Io(e) => Some(e),
            LoadErrorKind::Config(e) => Some(e),
            LoadErrorKind::TooLarge => None,
        }
    }
}

/// One `[section]` being read.
#[derive(Default)]
struct Section {
    label: String,
    line: usize,
    /// Key (lower case) → (value, line).
    keys: HashMap<&'static str, (String, usize)>,
}

impl Section {
    fn finish(self) -> Result<Endpoint, ConfigError> {
        let at_section = |kind| ConfigError::at(self.line, kind);
        let (name, name_line) = self
            .keys
            .get("name")
            .cloned()
            .ok_or_else(|| at_section(ConfigErrorKind::MissingName(self.label.clone())))?;
        check_name(&name).map_err(|kind| ConfigError::at(name_line, kind))?;
        let (port, port_line) = self
            .keys
            .get("port")
            .ok_or_else(|| at_section(ConfigErrorKind::MissingPort(self.label.clone())))?;
        let port = match port.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => {
                return Err(ConfigError::at(
                    *port_line,
                    ConfigErrorKind::InvalidPort(port.clone()),
                ));
            }
        };
        let host = match self.keys.get("host") {
            Some((host, line)) => {
                check_host(host).map_err(|kind| ConfigError::at(*line, kind))?;
                host.clone()
            }
            None => DEFAULT_HOST.to_owned(),
        };
        let protocol = match self.keys.get("protocol") {
            Some((value, line)) => value.parse().map_err(|kind| ConfigError::at(*line, kind))?,
            None => Protocol::default(),
        };
        let tls = match self.keys.get("tls") {
            Some((value, line)) => parse_switch(value).ok_or_else(|| {
                ConfigError::at(*line, ConfigErrorKind::InvalidTls(value.clone()))
            })?,
            None => false,
        };
        Ok(Endpoint {
            name,
            host,
            port,
            protocol,
            tls,
            section: self.label,
            line: self.line,
        })
    }
}

#[derive(Default)]
struct Parser {
    endpoints: Vec<Endpoint>,
    sections: HashMap<String, usize>,
    names: HashMap<String, usize>,
    current: Option<Section>,
}

impl Parser {
    fn run(mut self, text: &str) -> Result<GatewayConfig, ConfigError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
                continue;
            }
            if let Some(rest) = line.strip_prefix('[') {
                let label = rest
                    .strip_suffix(']')
                    .ok_or_else(|| ConfigError::at(n, ConfigErrorKind::Syntax))?
                    .trim();
                if label.is_empty() || label.contains(['[', ']']) {
                    return Err(ConfigError::at(n, ConfigErrorKind::InvalidSection));
                }
                if let Some(&first_line) = self.sections.get(label) {
                    return Err(ConfigError::at(
                        n,
                        ConfigErrorKind::DuplicateSection {
                            section: label.to_owned(),
                            first_line,
                        },
                    ));
                }
                self.sections.insert(label.to_owned(), n);
                self.finish_section()?;
                self.current = Some(Section {
                    label: label.to_owned(),
                    line: n,
                    keys: HashMap::new(),
                });
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| ConfigError::at(n, ConfigErrorKind::Syntax))?;
            let (key, value) = (key.trim(), value.trim());
            if key.is_empty() {
                return Err(ConfigError::at(n, ConfigErrorKind::Syntax));
            }
            let Some(section) = &mut self.current else {
                return Err(ConfigError::at(
                    n,
                    ConfigErrorKind::KeyOutsideSection(key.to_owned()),
                ));
            };
            let canonical = ["name", "host", "port", "protocol", "tls"]
                .into_iter()
                .find(|known| key.eq_ignore_ascii_case(known))
                .ok_or_else(|| ConfigError::at(n, ConfigErrorKind::UnknownKey(key.to_owned())))?;
            if let Some((_, first_line)) = section.keys.get(canonical) {
                return Err(ConfigError::at(
                    n,
                    ConfigErrorKind::DuplicateKey {
                        key: key.to_owned(),
                        first_line: *first_line,
                    },
                ));
            }
            section.keys.insert(canonical, (value.to_owned(), n));
        }
        self.finish_section()?;
        if self.endpoints.is_empty() {
            return Err(ConfigError::file(ConfigErrorKind::NoEndpoints));
        }
        Ok(GatewayConfig {
            endpoints: self.endpoints,
        })
    }

    fn finish_section(&mut self) -> Result<(), ConfigError> {
        let Some(section) = self.current.take() else {
            return Ok(());
        };
        let name_line = section.keys.get("name").map_or(section.line, |(_, l)| *l);
        let endpoint = section.finish()?;
        if let Some(&first_line) = self.names.get(&endpoint.name) {
            return Err(ConfigError::at(
                name_line,
                ConfigErrorKind::DuplicateName {
                    name: endpoint.name,
                    first_line,
                },
            ));
        }
        if self.endpoints.len() >= MAX_ENDPOINTS {
            return Err(ConfigError::at(
                endpoint.line,
                ConfigErrorKind::TooManyEndpoints,
            ));
        }
        self.names.insert(endpoint.name.clone(), endpoint.line);
        self.endpoints.push(endpoint);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ConfigError {
        GatewayConfig::parse(text).expect_err("config is rejected")
    }

    #[test]
    fn sections_with_name_and_port_alone_parse() {
        let config = GatewayConfig::parse(
            "[Endpoint1]\nName = endpoint1\nPort = 8080\n\n[Endpoint2]\nName = endpoint2\nPort = 9090\n",
        )
        .unwrap();
        let e = config.endpoints();
        assert_eq!(e.len(), 2);
        assert_eq!(
            (
                e[0].name.as_str(),
                e[0].port,
                e[0].host.as_str(),
                e[0].protocol
            ),
            ("endpoint1", 8080, DEFAULT_HOST, Protocol::Ws)
        );
        assert_eq!((e[1].section.as_str(), e[1].line), ("Endpoint2", 5));
        assert_eq!(e[0].url(), "ws://127.0.0.1:8080/");
    }

    #[test]
    fn the_extended_shape_parses() {
        let text = "\u{feff}; routes\r\n# more\r\n[orders]\r\nname=orders\r\nhost=127.0.0.1\r\n\
                    port=9101\r\nprotocol=ws\r\n[ prices ]\r\n  NAME =prices  \r\nhost = ::1\r\n\
                    PORT= 9102\r\nProtocol = TCP\r\n";
        let config = GatewayConfig::parse(text).unwrap();
        let prices = config.endpoint("prices").unwrap();
        assert_eq!(prices.protocol, Protocol::Tcp);
        assert_eq!(prices.section, "prices");
        assert_eq!(prices.authority(), "[::1]:9102");
        assert_eq!(prices.url(), "tcp://[::1]:9102");
        assert!(!prices.tls);
        assert_eq!(
            config.route_table().iter().collect::<Vec<_>>(),
            ["orders", "prices"]
        );
    }

    #[test]
    fn the_example_file_parses() {
        let config = GatewayConfig::parse(include_str!("../../routes.example.ini")).unwrap();
        let audit = config.endpoint("audit").unwrap();
        assert_eq!(audit.url(), "wss://localhost:9443/");
        assert_eq!(config.endpoints().len(), 4);
    }

    #[test]
    fn the_tls_key_switches_backends_to_tls() {
        let config = GatewayConfig::parse(
            "[a]\nname=a\nport=1\ntls=ON\n[b]\nname=b\nport=2\nprotocol=tcp\nTLS = yes\n\
             [c]\nname=c\nport=3\ntls=0\n",
        )
        .unwrap();
        let urls: Vec<_> = config.endpoints().iter().map(Endpoint::url).collect();
        assert_eq!(
            urls,
            [
                "wss://127.0.0.1:1/",
                "tls://127.0.0.1:2",
                "ws://127.0.0.1:3/"
            ]
        );
    }

    #[test]
    fn errors_name_the_line() {
        use ConfigErrorKind::*;
        let cases: &[(&str, usize, ConfigErrorKind)] = &[
            ("[a]\nname=a\nport=1\nUsage\n", 4, Syntax),
            ("[a\nname=a\nport=1\n", 1, Syntax),
            ("[a]\nname=a\n=1\n", 3, Syntax),
            ("[]\n", 1, InvalidSection),
            ("name=a\n[a]\n", 1, KeyOutsideSection("name".into())),
            (
                "[a]\nname=a\nhots=x\nport=1\n",
                3,
                UnknownKey("hots".into()),
            ),
            (
                "[a]\nname=a\nport=1\nPort=2\n",
                4,
                DuplicateKey {
                    key: "Port".into(),
                    first_line: 3,
                },
            ),
            ("\n[a]\nport=1\n", 2, MissingName("a".into())),
            (
                "[a]\nname=a\n[b]\nname=b\nport=2\n",
                1,
                MissingPort("a".into()),
            ),
            ("[a]\nname=a\nport=0\n", 3, InvalidPort("0".into())),
            ("[a]\nname=a\nport=65536\n", 3, InvalidPort("65536".into())),
            ("[a]\nname=a\nport=x\n", 3, InvalidPort("x".into())),
            ("[a]\nname=a\nport=\n", 3, InvalidPort(String::new())),
            (
                "[a]\nname=a\nport=1\nprotocol=udp\n",
                4,
                InvalidProtocol("udp".into()),
            ),
            (
                "[a]\nname=a\nport=1\ntls=maybe\n",
                4,
                InvalidTls("maybe".into()),
            ),
            (
                "[a]\nname=a\nport=1\nhost=a b\n",
                4,
                InvalidHost("a b".into()),
            ),
            (
                "[a]\nname=a\nport=1\nhost=\n",
                4,
                InvalidHost(String::new()),
            ),
            (
                "[a]\nport=1\nname=SYN\n",
                3,
                InvalidName {
                    name: "SYN".into(),
                    error: NameError::Reserved,
                },
            ),
            (
                "[a]\nport=1\nname=\n",
                3,
                InvalidName {
                    name: String::new(),
                    error: NameError::Empty,
                },
            ),
            (
                "[a]\nname=x\nport=1\n[b]\nport=2\nname=x\n",
                6,
                DuplicateName {
                    name: "x".into(),
                    first_line: 1,
                },
            ),
            (
                "[a]\nname=x\nport=1\n[a]\nname=y\nport=2\n",
                4,
                DuplicateSection {
                    section: "a".into(),
                    first_line: 1,
                },
            ),
        ];
        for (text, line, kind) in cases {
            let e = err(text);
            assert_eq!((e.line, &e.kind), (Some(*line), kind), "{text:?}");
        }
        assert_eq!(err(""), ConfigError::file(NoEndpoints));
        assert_eq!(err("; only a comment\n"), ConfigError::file(NoEndpoints));
    }

    #[test]
    fn error_texts_say_what_and_where() {
        let e = err("[a]\nname=a\nhots=x\n");
        assert_eq!(
            e.to_string(),
            r#"line 3: unknown key "hots" (expected name, host, port, protocol or tls)"#
        );
        let e = err("[a]\nname=x\nport=1\n[b]\nname=x\nport=2\n");
        assert_eq!(
            e.to_string(),
            r#"line 5: route name "x" already used by the section on line 1"#
        );
    }

    #[test]
    fn endpoints_built_in_code_are_checked() {
        let ok = GatewayConfig::new(vec![Endpoint::new("a", "localhost", 1, Protocol::Tcp)]);
        assert!(ok.is_ok());
        let dup = GatewayConfig::new(vec![
            Endpoint::new("a", "h", 1, Protocol::Ws),
            Endpoint::new("a", "h", 2, Protocol::Ws),
        ]);
        assert!(matches!(
            dup.unwrap_err().kind,
            ConfigErrorKind::DuplicateName { .. }
        ));
        assert!(GatewayConfig::new(vec![Endpoint::new("a", "h", 0, Protocol::Ws)]).is_err());
        assert_eq!(
            GatewayConfig::new(Vec::new()).unwrap_err(),
            ConfigError::file(ConfigErrorKind::NoEndpoints)
        );
    }

    #[test]
    fn load_reports_the_file_and_line() {
        let dir = std::env::temp_dir().join(format!("storm-gateway-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("routes.ini");
        std::fs::write(&path, "[a]\nname=a\nport=1\nprotocol=quic\n").unwrap();
        let e = GatewayConfig::load(&path).unwrap_err();
        assert_eq!(e.config_error().and_then(|e| e.line), Some(4));
        assert!(
            e.to_string()
                .ends_with(r#"routes.ini:4: protocol "quic" is not ws or tcp"#)
        );
        std::fs::write(&path, b"[a]\nname=\xff\nport=1\n").unwrap();
        let e = GatewayConfig::load(&path).unwrap_err();
        assert_eq!(e.config_error().and_then(|e| e.line), Some(2));
        let missing = GatewayConfig::load(dir.join("nope.ini")).unwrap_err();
        assert!(matches!(missing.kind, LoadErrorKind::Io(_)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
