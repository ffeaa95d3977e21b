//! The WebSocket opening handshake (RFC 6455 section 4), both sides, as
//! little as the benchmark needs: the load generator's request and the check
//! of the server's answer, and the server side for peers whose crate has no
//! handshake of its own without an HTTP server.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha1::{Digest, Sha1};

/// The most header bytes either side reads before giving up.
pub const MAX_HEAD: usize = 8 * 1024;

/// How many headers either side parses at most.
const MAX_HEADERS: usize = 32;

/// A handshake that cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The head is not valid HTTP/1.1.
    Malformed(String),
    /// The head did not end within [`MAX_HEAD`] bytes.
    TooLong,
    /// The server answered with another status than 101.
    Status(u16),
    /// A header required for the upgrade is missing or wrong.
    Header(&'static str),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(why) => write!(f, "malformed HTTP head: {why}"),
            Self::TooLong => write!(f, "HTTP head longer than {MAX_HEAD} bytes"),
            Self::Status(code) => write!(f, "server answered {code} instead of 101"),
            Self::Header(name) => write!(f, "missing or wrong {name} header"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// The `Sec-WebSocket-Accept` value for a `Sec-WebSocket-Key`.
#[must_use]
pub fn accept_key(key: &[u8]) -> String {
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    STANDARD.encode(sha.finalize())
}

/// A `Sec-WebSocket-Key` from 16 bytes of the caller's randomness.
#[must_use]
pub fn client_key(nonce: [u8; 16]) -> String {
    STANDARD.encode(nonce)
}

/// The client's upgrade request for `path` on `host` (no extensions, so a
/// server that offers permessage-deflate does not use it).
#[must_use]
pub fn client_request(host: &str, path: &str, key: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
}

fn header<'h>(headers: &'h [httparse::Header<'_>], name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

fn has_token(value: Option<&[u8]>, token: &str) -> bool {
    value.is_some_and(|v| {
        v.split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Checks the server's answer to a request made with `key`.
///
/// Returns `Ok(None)` while the head is incomplete, and `Ok(Some(len))` with
/// the head's length once it is complete and right; bytes after it already
/// belong to the WebSocket stream.
///
/// # Errors
///
/// When the head is malformed, too long, not a 101, or has a wrong
/// `Upgrade`, `Connection` or `Sec-WebSocket-Accept` header.
pub fn check_response(head: &[u8], key: &str) -> Result<Option<usize>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(head) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if head.len() >= MAX_HEAD => {
            return Err(HandshakeError::TooLong);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HandshakeError::Malformed(e.to_string())),
    };
    if response.code != Some(101) {
        return Err(HandshakeError::Status(response.code.unwrap_or(0)));
    }
    if !has_token(header(response.headers, "upgrade"), "websocket") {
        return Err(HandshakeError::Header("Upgrade"));
    }
    if !has_token(header(response.headers, "connection"), "upgrade") {
        return Err(HandshakeError::Header("Connection"));
    }
    let expected = accept_key(key.as_bytes());
    if header(response.headers, "sec-websocket-accept") != Some(expected.as_bytes()) {
        return Err(HandshakeError::Header("Sec-WebSocket-Accept"));
    }
    Ok(Some(len))
}

/// Server side: parses a client's upgrade request.
///
/// Returns `Ok(None)` while the head is incomplete, and
/// `Ok(Some((len, response)))` with the head's length and the complete
/// `101 Switching Protocols` answer to write.
///
/// # Errors
///
/// When the head is malformed or too long, is not a `GET`, or lacks the
/// `Upgrade`, `Connection`, `Sec-WebSocket-Version: 13` or
/// `Sec-WebSocket-Key` headers.
pub fn server_response(head: &[u8]) -> Result<Option<(usize, String)>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(head) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if head.len() >= MAX_HEAD => {
            return Err(HandshakeError::TooLong);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HandshakeError::Malformed(e.to_string())),
    };
    if request.method != Some("GET") {
        return Err(HandshakeError::Malformed("method is not GET".to_owned()));
    }
    if !has_token(header(request.headers, "upgrade"), "websocket") {
        return Err(HandshakeError::Header("Upgrade"));
    }
    if !has_token(header(request.headers, "connection"), "upgrade") {
        return Err(HandshakeError::Header("Connection"));
    }
    if header(request.headers, "sec-websocket-version") != Some(b"13") {
        return Err(HandshakeError::Header("Sec-WebSocket-Version"));
    }
    let key = header(request.headers, "sec-websocket-key")
        .ok_or(HandshakeError::Header("Sec-WebSocket-Key"))?;
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key)
    );
    Ok(Some((len, response)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_example_accept() {
        // RFC 6455 section 1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn client_and_server_agree() {
        let key = client_key([7; 16]);
        let request = client_request("127.0.0.1:9001", "/", &key);
        let bytes = request.as_bytes();
        for cut in 0..bytes.len() {
            assert_eq!(server_response(&bytes[..cut]), Ok(None));
        }
        let Ok(Some((len, response))) = server_response(bytes) else {
            panic!("request refused");
        };
        assert_eq!(len, bytes.len());
        let mut answer = response.clone().into_bytes();
        answer.extend_from_slice(b"\x82\x00");
        for cut in 0..response.len() {
            assert_eq!(check_response(&answer[..cut], &key), Ok(None));
        }
        assert_eq!(check_response(&answer, &key), Ok(Some(response.len())));
        assert_eq!(
            check_response(&answer, &client_key([8; 16])),
            Err(HandshakeError::Header("Sec-WebSocket-Accept"))
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(
            check_response(b"HTTP/1.1 404 Not Found\r\n\r\n", "k"),
            Err(HandshakeError::Status(404))
        );
        assert!(matches!(
            server_response(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"),
            Err(HandshakeError::Header("Connection"))
        ));
        assert!(matches!(
            server_response(b"\x00\x01\r\n\r\n"),
            Err(HandshakeError::Malformed(_))
        ));
        let long = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(
            server_response(long.as_bytes()),
            Err(HandshakeError::TooLong)
        );
    }
}
