//! `ws://` and `wss://` URLs (RFC 6455 section 3).

use std::fmt;

/// A parsed WebSocket URL: where to connect and what to ask for.
///
/// ```
/// use storm_proto::ws::WsUrl;
///
/// let url: WsUrl = "wss://example.com/chat?room=1".parse().unwrap();
/// assert!(url.secure);
/// assert_eq!((url.host.as_str(), url.port), ("example.com", 443));
/// assert_eq!(url.resource, "/chat?room=1");
/// assert_eq!(url.host_header(), "example.com");
///
/// let url: WsUrl = "ws://[::1]:9001".parse().unwrap();
/// assert_eq!((url.host.as_str(), url.port, url.resource.as_str()), ("::1", 9001, "/"));
/// assert_eq!(url.host_header(), "[::1]:9001");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsUrl {
    /// `wss`: TLS.
    pub secure: bool,
    /// Host name or IP literal, without IPv6 brackets.
    pub host: String,
    /// Port, defaulting to 80 (`ws`) or 443 (`wss`).
    pub port: u16,
    /// Path and query, starting with `/`. Fragments are not allowed.
    pub resource: String,
}

impl WsUrl {
    /// The `Host` header value: brackets around IPv6 literals, the port only
    /// when it is not the scheme's default.
    #[must_use]
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == self.default_port() {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// `host:port` for a socket address lookup (IPv6 in brackets).
    #[must_use]
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    const fn default_port(&self) -> u16 {
        if self.secure { 443 } else { 80 }
    }
}

impl fmt::Display for WsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.secure { "wss" } else { "ws" };
        write!(
            f,
            "{scheme}://{}:{}{}",
            bracket(&self.host),
            self.port,
            self.resource
        )
    }
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// Why a string is not a WebSocket URL.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UrlError {
    /// The scheme is not `ws` or `wss`.
    Scheme,
    /// The host is empty or malformed.
    Host,
    /// The port is not a number from 1 to 65535.
    Port,
    /// WebSocket URLs may not have a fragment (`#...`).
    Fragment,
    /// User info (`user:pass@`) is not supported; send an `Authorization` header.
    UserInfo,
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Scheme => "URL scheme must be ws or wss",
            Self::Host => "URL has no valid host",
            Self::Port => "URL port must be 1..=65535",
            Self::Fragment => "WebSocket URLs may not have a fragment",
            Self::UserInfo => "user info in a WebSocket URL is not supported",
        })
    }
}

impl std::error::Error for UrlError {}

impl std::str::FromStr for WsUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, UrlError> {
        let (secure, rest) = if let Some(rest) = strip_prefix_ignore_case(s, "ws://") {
            (false, rest)
        } else if let Some(rest) = strip_prefix_ignore_case(s, "wss://") {
            (true, rest)
        } else {
            return Err(UrlError::Scheme);
        };
        if rest.contains('#') {
            return Err(UrlError::Fragment);
        }
        let (authority, resource) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(UrlError::UserInfo);
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or(UrlError::Host)?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or(UrlError::Host)?),
            };
            (host, port)
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '[' || c == ']') {
            return Err(UrlError::Host);
        }
        let port = match port {
            None => {
                if secure {
                    443
                } else {
                    80
                }
            }
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p != 0 => p,
                _ => return Err(UrlError::Port),
            },
        };
        let resource = if resource.starts_with('/') {
            resource.to_owned()
        } else {
            format!("/{resource}")
        };
        if resource.contains(|c: char| c.is_ascii_control() || c == ' ') {
            return Err(UrlError::Host);
        }
        Ok(Self {
            secure,
            host: host.to_owned(),
            port,
            resource,
        })
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Result<WsUrl, UrlError> {
        s.parse()
    }

    #[test]
    fn parses_the_usual_shapes() {
        let u = url("ws://127.0.0.1:9001/runCase?case=1&agent=storm").unwrap();
        assert_eq!(
            (u.secure, u.host.as_str(), u.port),
            (false, "127.0.0.1", 9001)
        );
        assert_eq!(u.resource, "/runCase?case=1&agent=storm");
        assert_eq!(u.host_header(), "127.0.0.1:9001");
        assert_eq!(u.authority(), "127.0.0.1:9001");
        let u = url("WS://host?x=1").unwrap();
        assert_eq!(
            (u.port, u.resource.as_str(), u.host_header().as_str()),
            (80, "/?x=1", "host")
        );
        let u = url("wss://[::1]/").unwrap();
        assert_eq!((u.port, u.authority().as_str()), (443, "[::1]:443"));
        assert_eq!(u.to_string(), "wss://[::1]:443/");
    }

    #[test]
    fn rejects_what_is_not_a_websocket_url() {
        assert_eq!(url("http://x/"), Err(UrlError::Scheme));
        assert_eq!(url("ws://"), Err(UrlError::Host));
        assert_eq!(url("ws://:80/"), Err(UrlError::Host));
        assert_eq!(url("ws://[::1/"), Err(UrlError::Host));
        assert_eq!(url("ws://h:0/"), Err(UrlError::Port));
        assert_eq!(url("ws://h:99999/"), Err(UrlError::Port));
        assert_eq!(url("ws://h/#frag"), Err(UrlError::Fragment));
        assert_eq!(url("ws://u:p@h/"), Err(UrlError::UserInfo));
        assert_eq!(url("ws://h/a b"), Err(UrlError::Host));
        assert_eq!(url("wß://h/"), Err(UrlError::Scheme));
    }
}
