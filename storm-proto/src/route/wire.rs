//! The JSON handshake messages: parsing (liberal) and writing (strict).

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use serde::Deserialize;

pub(crate) const EVENT_HANDSHAKE: &str = "SMHandshake";
pub(crate) const EVENT_END: &str = "SMHandshakeEnd";
pub(crate) const EVENT_ERROR: &str = "SMError";

pub(crate) const SYN: &str = "SYN";
pub(crate) const SYN_ACK: &str = "SYN/ACK";
pub(crate) const ACK: &str = "ACK";
pub(crate) const NACK: &str = "NACK";

/// One received handshake message, as JSON fields. Unknown fields are
/// ignored; `data`, `route` and `error` must be strings when present.
#[derive(Debug, Deserialize)]
pub(crate) struct Message<'a> {
    #[serde(borrow)]
    pub(crate) event: Cow<'a, str>,
    #[serde(borrow, default)]
    pub(crate) data: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) route: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) error: Option<Cow<'a, str>>,
}

impl Message<'_> {
    /// Whether this is `{"event":"SMHandshake","data":<data>}`.
    pub(crate) fn is_handshake(&self, data: &str) -> bool {
        self.event == EVENT_HANDSHAKE && self.data.as_deref() == Some(data)
    }
}

impl fmt::Display for Message<'_> {
    /// A short description for error texts (peer input, so truncated).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(super::truncate(&self.event, 32))?;
        if let Some(data) = &self.data {
            write!(f, " {:?}", super::truncate(data, 64))?;
        }
        Ok(())
    }
}

/// Why a message could not be parsed.
pub(crate) enum ParseError {
    Json(String),
}

/// Parses one handshake message. A bare `ACK` text (without JSON) is
/// accepted as `{"event":"SMHandshake","data":"ACK"}`, for servers that
/// acknowledge with the word alone; surrounding whitespace is ignored.
pub(crate) fn parse(msg: &[u8]) -> Result<Message<'_>, ParseError> {
    if msg.trim_ascii() == ACK.as_bytes() {
        return Ok(Message {
            event: Cow::Borrowed(EVENT_HANDSHAKE),
            data: Some(Cow::Borrowed(ACK)),
            route: None,
            error: None,
        });
    }
    serde_json::from_slice(msg).map_err(|e| ParseError::Json(e.to_string()))
}

/// Writes `{"k":"v",...}` with the keys in the given order (fixed, so the
/// output matches the documented shape byte for byte).
fn object(fields: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(
        2 + fields
            .iter()
            .map(|(k, v)| k.len() + v.len() + 6)
            .sum::<usize>(),
    );
    out.push('{');
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(&mut out, key);
        out.push(':');
        push_json_string(&mut out, value);
    }
    out.push('}');
    out
}

/// Appends `s` as a JSON string literal (RFC 8259 section 7).
pub(crate) fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

pub(crate) fn handshake(data: &str) -> String {
    object(&[("event", EVENT_HANDSHAKE), ("data", data)])
}

pub(crate) fn route_ack(route: &str) -> String {
    object(&[("event", EVENT_HANDSHAKE), ("data", ACK), ("route", route)])
}

pub(crate) fn route_nack(route: &str, error: &str) -> String {
    object(&[
        ("event", EVENT_HANDSHAKE),
        ("data", NACK),
        ("route", route),
        ("error", error),
    ])
}

pub(crate) fn end() -> String {
    object(&[("event", EVENT_END)])
}

pub(crate) fn end_ack() -> String {
    object(&[("event", EVENT_END), ("data", ACK)])
}

pub(crate) fn error(error: &str) -> String {
    object(&[("event", EVENT_ERROR), ("error", error)])
}

pub(crate) fn route_error(route: &str, error: &str) -> String {
    object(&[("event", EVENT_ERROR), ("route", route), ("error", error)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_shapes() {
        assert_eq!(handshake(SYN), r#"{"event":"SMHandshake","data":"SYN"}"#);
        assert_eq!(
            route_ack("a\"b"),
            r#"{"event":"SMHandshake","data":"ACK","route":"a\"b"}"#
        );
        assert_eq!(end(), r#"{"event":"SMHandshakeEnd"}"#);
        assert_eq!(end_ack(), r#"{"event":"SMHandshakeEnd","data":"ACK"}"#);
        assert_eq!(
            route_error("x", "no"),
            r#"{"event":"SMError","route":"x","error":"no"}"#
        );
    }

    #[test]
    fn json_strings_round_trip_through_serde() {
        let nasty = "q\"b\\s\n\r\t\u{0}\u{1f}\u{7f}é😀/";
        let text = object(&[("event", nasty), ("data", nasty)]);
        let msg = parse(text.as_bytes()).ok().unwrap();
        assert_eq!(msg.event, nasty);
        assert_eq!(msg.data.as_deref(), Some(nasty));
    }

    #[test]
    fn liberal_parsing() {
        let msg = parse(br#" {"data":"SYN","x":[1,{"y":null}],"event":"SMHandshake"} "#)
            .ok()
            .unwrap();
        assert!(msg.is_handshake(SYN));
        let msg = parse(b" ACK\r\n").ok().unwrap();
        assert!(msg.is_handshake(ACK));
        let msg = parse(br#"{"event":"SMHandshake","data":"\u0053YN"}"#)
            .ok()
            .unwrap();
        assert!(msg.is_handshake(SYN));
        for bad in [
            &b"{event: SMHandshake, data: SYN}"[..],
            b"",
            b"null",
            b"[]",
            br#"{"data":"SYN"}"#,
            br#"{"event":"SMHandshake","data":1}"#,
            br#"{"event":"SMHandshake","event":"SMHandshake"}"#,
            b"\xff",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
