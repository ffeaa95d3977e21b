//! The length-prefixed JSON service (`storm json`; `storm client json` is
//! its client).
//!
//! Wire format: every message is a 4-byte big-endian length, then that many
//! bytes of UTF-8 JSON. The server answers
//!
//! | request `type` | reply `type` | reply fields |
//! |---|---|---|
//! | `ping` | `pong` | `ping_timestamp` (the ping's `timestamp`, as sent), `pong_timestamp`, `client_id` (`ip:port` of the client) |
//! | `echo` | `echo_response` | `content` (as sent), `timestamp`, `echoed_by` |
//! | `broadcast` | `broadcast_sent` | `recipients` (how many other clients got it), `timestamp` |
//! | `get_stats` | `server_stats` | `connected_clients`, `uptime_seconds`, `total_messages`, `server_start_time`, `current_time` |
//! | anything else, or none | `response` | `original_message` (the request object), `timestamp`, `from_server: true` |
//!
//! A broadcast reaches every *other* client as
//! `{"type": "broadcast", "from_client", "content", "timestamp"}`.
//!
//! A payload that is UTF-8 but not a JSON object (plain text, malformed
//! JSON, a bare number) is answered, as the reference server does, with
//! `{"type": "echo", "original_text", "timestamp", "from_server": true}`:
//! `original_text` is the parsed value for valid JSON and the text itself
//! otherwise. A payload that is not UTF-8 gets
//! `{"type": "error", "error", "timestamp"}`. In both cases the connection
//! stays open. A length prefix above the framer's limit closes that
//! connection at once, before anything is buffered; the server goes on. A
//! reply that would exceed that limit (the echo of a request near the
//! limit) is replaced by an `error` reply.
//!
//! [`JsonService`] serves the same protocol on every runtime: it decides
//! every reply once, over the `Session` and `Hub` every adapter shares, and is the handler
//! of storm-async (tokio and smol) and of storm-std alike, which only send
//! what it decides.
//!
//! Timestamps are UTC, ISO 8601 with milliseconds:
//! `2024-01-01T12:00:00.000Z`.
//!
//! `total_messages` counts the messages the server received from all
//! clients since it started, the `get_stats` request being answered
//! included. (The reference server counts only broadcast deliveries, which
//! leaves the figure at 0 for a server that answers thousands of pings.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{Map, Value, json};
use storm_host::hub::Hub;
use storm_host::session::Session;
use storm_proto::Message;

use crate::host::connection_error;

/// What a [`JsonService`] is configured with.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct JsonConfig {
    /// Greet every client with a `welcome` message when it connects, as the
    /// reference Python server does. Default off: the protocol document
    /// does not list it, and a strict request/response client would take it
    /// for the reply to its first request.
    pub welcome: bool,
    /// The framer's limit, which applies to replies too: a longer reply is
    /// replaced by an `error` reply. Default 1 MiB.
    pub max_message: usize,
}

impl Default for JsonConfig {
    fn default() -> Self {
        Self {
            welcome: false,
            max_message: 1 << 20,
        }
    }
}

impl storm_async::Handler for JsonService {
    async fn on_connect(&self, session: &storm_async::Session) {
        if let Some(welcome) = self.welcome(session) {
            let _ = session.send(welcome).await;
        }
    }

    async fn on_message(&self, session: &storm_async::Session, message: Message) {
        // A send fails only when the session is already closing.
        let _ = session.send(self.reply_to(session, &message)).await;
    }

    async fn on_error(&self, error: &(dyn std::error::Error + Send + Sync + 'static)) {
        connection_error(error);
    }
}

impl storm_std::Handler for JsonService {
    fn on_connect(&self, session: &storm_std::Session) {
        if let Some(welcome) = self.welcome(session) {
            let _ = session.send_blocking(welcome);
        }
    }

    fn on_message(&self, session: &storm_std::Session, message: Message) {
        let _ = session.send_blocking(self.reply_to(session, &message));
    }

    fn on_error(&self, error: &(dyn std::error::Error + Send + Sync + 'static)) {
        connection_error(error);
    }
}

/// The service itself, the same on every runtime: what to answer to each
/// message, over the [`Session`] and [`Hub`] every adapter's handlers
/// and servers share. It is the handler of both
/// storm-async's servers and storm-std's.
pub struct JsonService {
    hub: Hub,
    started: SystemTime,
    started_at: Instant,
    total_messages: AtomicU64,
    welcome: bool,
    /// The framer's limit, which applies to replies too.
    max_message: usize,
}

impl JsonService {
    /// The service for the server whose sessions `hub` holds (its
    /// broadcasts and `connected_clients` are that hub's).
    #[must_use]
    pub fn new(config: JsonConfig, hub: Hub) -> Self {
        Self {
            hub,
            started: SystemTime::now(),
            started_at: Instant::now(),
            total_messages: AtomicU64::new(0),
            welcome: config.welcome,
            max_message: config.max_message,
        }
    }

    /// The greeting for a new client, with `--welcome`.
    fn welcome(&self, session: &Session) -> Option<Message> {
        self.welcome.then(|| {
            encode(&json!({
                "type": "welcome",
                "client_id": session.remote_addr().to_string(),
                "message": "Welcome to storm json!",
                "timestamp": now(),
            }))
        })
    }

    /// The reply to one message (broadcasts go out on the way).
    fn reply_to(&self, session: &Session, message: &Message) -> Message {
        self.total_messages.fetch_add(1, Ordering::Relaxed);
        let reply = encode(&self.reply(session, message.as_bytes()));
        // An echo of a request near the limit can outgrow it; the framer
        // would refuse to send it, so say why instead.
        if reply.len() > self.max_message {
            encode(&json!({
                "type": "error",
                "error": format!("reply of {} bytes exceeds the {}-byte message limit", reply.len(), self.max_message),
                "timestamp": now(),
            }))
        } else {
            reply
        }
    }
}

impl JsonService {
    /// The answer to one payload; never fails, whatever the bytes.
    fn reply(&self, session: &Session, payload: &[u8]) -> Value {
        let Ok(text) = std::str::from_utf8(payload) else {
            return json!({
                "type": "error",
                "error": "message is not valid UTF-8",
                "timestamp": now(),
            });
        };
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(request)) => self.answer(session, request),
            Ok(other) => plain_echo(other),
            Err(_) => plain_echo(Value::String(text.to_owned())),
        }
    }

    /// The answer to a JSON object, by its `type`.
    fn answer(&self, session: &Session, request: Map<String, Value>) -> Value {
        let client_id = session.remote_addr().to_string();
        match request.get("type").and_then(Value::as_str) {
            Some("ping") => json!({
                "type": "pong",
                "ping_timestamp": request.get("timestamp").cloned().unwrap_or(Value::Null),
                "pong_timestamp": now(),
                "client_id": client_id,
            }),
            Some("echo") => json!({
                "type": "echo_response",
                "content": content(&request),
                "timestamp": now(),
                "echoed_by": "TCP Server",
            }),
            Some("broadcast") => {
                let relay = json!({
                    "type": "broadcast",
                    "from_client": client_id,
                    "content": content(&request),
                    "timestamp": now(),
                });
                let report = self.hub.broadcast(&encode(&relay), Some(session.id()));
                json!({
                    "type": "broadcast_sent",
                    "recipients": report.delivered,
                    "timestamp": now(),
                })
            }
            Some("get_stats") => json!({
                "type": "server_stats",
                "connected_clients": self.hub.session_count(),
                "uptime_seconds": self.started_at.elapsed().as_secs(),
                "total_messages": self.total_messages.load(Ordering::Relaxed),
                "server_start_time": iso8601(self.started),
                "current_time": now(),
            }),
            _ => json!({
                "type": "response",
                "original_message": Value::Object(request),
                "timestamp": now(),
                "from_server": true,
            }),
        }
    }
}

/// A request's `content`, or `""` when it has none.
fn content(request: &Map<String, Value>) -> Value {
    request
        .get("content")
        .cloned()
        .unwrap_or_else(|| Value::String(String::new()))
}

/// The reply to a payload that is not a JSON object.
fn plain_echo(original: Value) -> Value {
    json!({
        "type": "echo",
        "original_text": original,
        "timestamp": now(),
        "from_server": true,
    })
}

/// One message on the wire (the framer adds the length prefix).
#[must_use]
pub fn encode(value: &Value) -> Message {
    Message::from(Bytes::from(value.to_string()))
}

/// A received payload as JSON; text that is not JSON as a JSON string.
#[must_use]
pub fn decode(message: &Message) -> Value {
    serde_json::from_slice(message.as_bytes())
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(message.as_bytes()).into_owned()))
}

/// The current time as the protocol writes it (see [`iso8601`]).
#[must_use]
pub fn now() -> String {
    iso8601(SystemTime::now())
}

/// `t` in UTC as `YYYY-MM-DDTHH:MM:SS.mmmZ` (times before 1970 print as
/// 1970-01-01).
#[must_use]
pub fn iso8601(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01, counting in 400-year
/// eras that start on 1 March (so the leap day is the last of its year).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, millis: u64) -> String {
        iso8601(UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis))
    }

    #[test]
    fn timestamps_are_utc_iso8601_with_millis() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(1_704_110_400, 1), "2024-01-01T12:00:00.001Z");
        assert_eq!(at(951_782_400, 999), "2000-02-29T00:00:00.999Z");
        assert_eq!(at(951_868_799, 0), "2000-02-29T23:59:59.000Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000Z");
    }
}
