//! What each bench target sends and how it recognises the answers.
//!
//! A target is one small [`Target`] impl: how to connect, an optional setup
//! exchange after connecting (a handshake, joining a room), and per
//! connection a [`Conn`] that builds the request and counts how many
//! requests a received message completes. Every target answers in order on
//! one connection, so round trips are matched first in, first out.

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::json;
use smol::channel::Receiver;
use smol::future::or;
use storm_proto::Message;
use storm_proto::framing::{DelimiterConfig, Framing, LengthPrefixConfig};
use storm_proto::route::envelope::{self, ErrorReply};
use storm_proto::route::{ClientConfig, ClientHandshake, Event, MAX_ROUTE_NAME_LEN_LIMIT};

/// How a target's clients connect.
#[derive(Clone)]
pub(crate) enum Transport {
    /// Plain TCP with this framing.
    Tcp(Framing),
    /// WebSocket, `ws://ADDR/`.
    Ws,
}

/// One connection's protocol: the request, and what answers look like.
pub(crate) trait Conn: Send + 'static {
    /// The next request to send.
    fn request(&mut self) -> Message;

    /// How many outstanding requests `message` completes: 0 for a message
    /// that is not an answer (a tick, a broadcast from someone else).
    ///
    /// # Errors
    ///
    /// A message that shows the service misbehaving (a wrong echo, an error
    /// reply): the run stops with it.
    fn answers(&mut self, message: &Message) -> Result<u64, String>;
}

/// A connected client as the setup exchange sees it, on whichever runtime
/// the run is on (`on_async.rs`, `on_std.rs`).
pub(crate) trait Wire: Sync {
    /// Sends `message`, waiting while the connection is backpressured.
    ///
    /// # Errors
    ///
    /// The connection is gone, as a sentence.
    fn send(&self, message: Message) -> impl Future<Output = Result<(), String>> + Send;

    /// Completes at `deadline`.
    fn sleep_until(deadline: Instant) -> impl Future<Output = ()> + Send;
}

/// The setup exchange of one fresh connection.
pub(crate) struct Setup<'a, W> {
    /// The connected client, to send with.
    pub(crate) wire: &'a W,
    /// Everything the connection received so far, in order; closed when
    /// the connection ends.
    pub(crate) inbox: &'a Receiver<Message>,
    /// Where this connection's setup must end.
    pub(crate) deadline: Instant,
    /// This connection's number in the run (0, 1, …).
    pub(crate) index: usize,
}

impl<W: Wire> Setup<'_, W> {
    /// Sends one setup message.
    pub(crate) async fn send(&self, message: impl Into<Message>) -> Result<(), String> {
        self.wire
            .send(message.into())
            .await
            .map_err(|e| format!("setup send: {e}"))
    }

    /// The next message received, before the deadline.
    pub(crate) async fn recv(&mut self) -> Result<Message, String> {
        let received = async { Some(self.inbox.recv().await) };
        let timeout = async {
            W::sleep_until(self.deadline).await;
            None
        };
        match or(received, timeout).await {
            Some(Ok(message)) => Ok(message),
            Some(Err(_)) => Err("the service closed the connection during setup".to_owned()),
            None => Err("setup timed out".to_owned()),
        }
    }
}

/// A service the bench can drive.
pub(crate) trait Target: Send + Sync + 'static {
    /// The per-connection protocol.
    type Conn: Conn;

    /// How clients connect.
    fn transport(&self) -> Transport;

    /// Runs the setup exchange of one connection and returns its protocol.
    fn setup<W: Wire>(
        &self,
        setup: Setup<'_, W>,
    ) -> impl Future<Output = Result<Self::Conn, String>> + Send;
}

/// `size` bytes of lowercase letters: valid UTF-8, valid JSON string
/// content, no line breaks, so every target can carry it.
pub(crate) fn payload(size: usize) -> Bytes {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

// ---------------------------------------------------------------- echo

/// Which `storm echo --proto` to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EchoProto {
    /// Raw TCP: the echo comes back in whatever chunks TCP makes.
    Raw,
    /// 4-byte big-endian length prefix.
    Lp,
    /// Newline-delimited lines.
    Line,
    /// WebSocket binary messages.
    Ws,
}

/// `storm echo`: sends `size` bytes, expects them back unchanged.
pub(crate) struct Echo {
    pub(crate) proto: EchoProto,
    pub(crate) size: usize,
}

/// Largest echo message: the echo server's default `--max-message`
/// (lines: the line framer's default limit,
/// [`DelimiterConfig::DEFAULT_MAX_MESSAGE_LEN`]).
pub(crate) const ECHO_MAX: usize = 16 << 20;

impl Target for Echo {
    type Conn = EchoConn;

    fn transport(&self) -> Transport {
        match self.proto {
            EchoProto::Raw => Transport::Tcp(Framing::Raw(Default::default())),
            EchoProto::Lp => {
                let mut config = LengthPrefixConfig::default();
                config.max_frame_len = ECHO_MAX;
                Transport::Tcp(Framing::LengthPrefixWith(config))
            }
            EchoProto::Line => Transport::Tcp(Framing::Delimiter(DelimiterConfig::default())),
            EchoProto::Ws => Transport::Ws,
        }
    }

    async fn setup<W: Wire>(&self, _setup: Setup<'_, W>) -> Result<EchoConn, String> {
        Ok(EchoConn {
            payload: payload(self.size),
            raw: self.proto == EchoProto::Raw,
            partial: 0,
        })
    }
}

/// One echo connection.
pub(crate) struct EchoConn {
    payload: Bytes,
    /// Raw TCP: count bytes, not messages.
    raw: bool,
    /// Raw TCP: bytes of an echo not yet complete.
    partial: usize,
}

impl Conn for EchoConn {
    fn request(&mut self) -> Message {
        Message::Binary(self.payload.clone())
    }

    fn answers(&mut self, message: &Message) -> Result<u64, String> {
        let got = message.as_bytes();
        if self.raw {
            // The stream is the payload over and over; check each byte
            // against where it falls in the payload.
            let size = self.payload.len();
            for (i, &byte) in got.iter().enumerate() {
                if self.payload.get((self.partial + i) % size) != Some(&byte) {
                    return Err("the echo differs from what was sent".to_owned());
                }
            }
            let total = self.partial + got.len();
            self.partial = total % size;
            return Ok((total / size) as u64);
        }
        if got != &self.payload[..] {
            return Err(format!(
                "the echo differs from what was sent ({} bytes back, {} sent)",
                got.len(),
                self.payload.len()
            ));
        }
        Ok(1)
    }
}

// ---------------------------------------------------------------- json

/// `storm json`: `{"type":"echo","content":"<size letters>"}`, expects an
/// `echo_response` with the same content.
pub(crate) struct Json {
    pub(crate) size: usize,
}

/// The `storm json` server's default `--max-message`, less room for the
/// JSON around the content.
pub(crate) const JSON_MAX: usize = (1 << 20) - 256;

impl Target for Json {
    type Conn = JsonConn;

    fn transport(&self) -> Transport {
        Transport::Tcp(Framing::LengthPrefix)
    }

    async fn setup<W: Wire>(&self, _setup: Setup<'_, W>) -> Result<JsonConn, String> {
        let content = String::from_utf8_lossy(&payload(self.size)).into_owned();
        let request = json!({"type": "echo", "content": content}).to_string();
        Ok(JsonConn {
            request: Bytes::from(request),
            size: self.size,
        })
    }
}

/// One `storm json` connection.
pub(crate) struct JsonConn {
    request: Bytes,
    size: usize,
}

/// The fields of a `storm json` or `storm chat` message the bench reads.
#[derive(Deserialize)]
struct Reply<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default, borrow)]
    content: Option<&'a str>,
    #[serde(default, borrow)]
    text: Option<&'a str>,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default, borrow)]
    room: Option<&'a str>,
    #[serde(default)]
    error: Option<String>,
}

fn parse(message: &Message) -> Result<Reply<'_>, String> {
    serde_json::from_slice(message.as_bytes())
        .map_err(|e| format!("reply is not the JSON expected: {e}"))
}

impl Conn for JsonConn {
    fn request(&mut self) -> Message {
        Message::Binary(self.request.clone())
    }

    fn answers(&mut self, message: &Message) -> Result<u64, String> {
        let reply = parse(message)?;
        match reply.kind {
            "echo_response" if reply.content.map(str::len) == Some(self.size) => Ok(1),
            "echo_response" => Err("echo_response content differs from what was sent".to_owned()),
            "error" => Err(format!("error reply: {}", reply.error.unwrap_or_default())),
            // Broadcasts from other clients, a welcome.
            "broadcast" | "welcome" => Ok(0),
            other => Err(format!("unexpected reply of type {other:?}")),
        }
    }
}

// ---------------------------------------------------------------- chat

/// `storm chat`: every connection joins a room of its own
/// (`bench-<run>-<n>`), then sends `{"type":"chat","text":"<size
/// letters>"}` and expects its own `chat` back from the room.
pub(crate) struct Chat {
    pub(crate) size: usize,
    /// Distinguishes this run's rooms from other runs'.
    pub(crate) run: u32,
}

/// The chat server's default `--max-message` (64 KiB), less room for the
/// JSON around the text.
pub(crate) const CHAT_MAX: usize = 64 * 1024 - 256;

impl Target for Chat {
    type Conn = ChatConn;

    fn transport(&self) -> Transport {
        Transport::Ws
    }

    async fn setup<W: Wire>(&self, mut setup: Setup<'_, W>) -> Result<ChatConn, String> {
        let id = loop {
            let message = setup.recv().await?;
            let reply = parse(&message)?;
            if reply.kind == "welcome" {
                break reply.id.ok_or("welcome without an id")?;
            }
        };
        let room = format!("bench-{:08x}-{}", self.run, setup.index);
        setup
            .send(json!({"type": "join", "room": room}).to_string())
            .await?;
        loop {
            let message = setup.recv().await?;
            let reply = parse(&message)?;
            match reply.kind {
                "joined" if reply.id == Some(id) && reply.room == Some(&room) => break,
                "error" => {
                    return Err(format!("join refused: {}", reply.error.unwrap_or_default()));
                }
                _ => {}
            }
        }
        let text = String::from_utf8_lossy(&payload(self.size)).into_owned();
        let request = json!({"type": "chat", "text": text}).to_string();
        Ok(ChatConn {
            request: Message::from(request),
            id,
            size: self.size,
        })
    }
}

/// One chat connection, alone in its room.
pub(crate) struct ChatConn {
    request: Message,
    id: u64,
    size: usize,
}

impl Conn for ChatConn {
    fn request(&mut self) -> Message {
        self.request.clone()
    }

    fn answers(&mut self, message: &Message) -> Result<u64, String> {
        let reply = parse(message)?;
        match reply.kind {
            "chat" if reply.id == Some(self.id) => {
                if reply.text.map(str::len) == Some(self.size) {
                    Ok(1)
                } else {
                    Err("chat text differs from what was sent".to_owned())
                }
            }
            "error" => Err(format!("error reply: {}", reply.error.unwrap_or_default())),
            // Ticks, admin broadcasts, someone joining the room.
            _ => Ok(0),
        }
    }
}

// ---------------------------------------------------------------- gateway

/// `storm gateway`: the route handshake for one route, then
/// `ROUTENAME=<route>\n<size letters>`, expecting the same envelope back
/// (the route's backend must echo, as `storm echo --proto lp|ws` does).
pub(crate) struct Gateway {
    pub(crate) route: String,
    pub(crate) size: usize,
}

/// The gateway's default largest message, less room for the envelope.
pub(crate) const GATEWAY_MAX: usize = (1 << 20) - 256;

impl Target for Gateway {
    type Conn = GatewayConn;

    fn transport(&self) -> Transport {
        Transport::Ws
    }

    async fn setup<W: Wire>(&self, mut setup: Setup<'_, W>) -> Result<GatewayConn, String> {
        let config = ClientConfig {
            routes: vec![self.route.clone()],
            handshake_timeout: Some(setup.deadline.saturating_duration_since(Instant::now())),
            ..ClientConfig::default()
        };
        let mut handshake =
            ClientHandshake::new(&config, Instant::now()).map_err(|e| format!("--route: {e}"))?;
        let negotiated = loop {
            while let Some(text) = handshake.poll_transmit() {
                setup.send(text).await?;
            }
            if let Some(Event::Ready(negotiated)) = handshake.poll_event() {
                break negotiated;
            }
            if let Some(e) = handshake.error() {
                return Err(format!("route handshake: {e}"));
            }
            let message = setup.recv().await?;
            handshake
                .handle_message(Instant::now(), message.as_bytes())
                .map_err(|e| format!("route handshake: {e}"))?;
        };
        if !negotiated.contains(&self.route) {
            let why = negotiated
                .rejected()
                .first()
                .map_or("rejected", |r| r.reason.as_str());
            return Err(format!("the gateway refused route {}: {why}", self.route));
        }
        let mut request = BytesMut::new();
        envelope::encode(&self.route, &payload(self.size), &mut request)
            .map_err(|e| format!("--route: {e}"))?;
        Ok(GatewayConn {
            request: request.freeze(),
            route: self.route.clone(),
            size: self.size,
        })
    }
}

/// One gateway connection, past the handshake.
pub(crate) struct GatewayConn {
    request: Bytes,
    route: String,
    size: usize,
}

impl Conn for GatewayConn {
    fn request(&mut self) -> Message {
        Message::Binary(self.request.clone())
    }

    fn answers(&mut self, message: &Message) -> Result<u64, String> {
        let bytes = message.as_bytes();
        let addressed = match envelope::decode(bytes, MAX_ROUTE_NAME_LEN_LIMIT) {
            Ok(addressed) => addressed,
            Err(e) => {
                return Err(match ErrorReply::parse(bytes) {
                    Some(error) => format!("gateway error: {}", error.error),
                    None => format!("gateway reply: {e}"),
                });
            }
        };
        if addressed.route != self.route {
            // A push on another route is not an answer.
            return Ok(0);
        }
        if addressed.payload.len() != self.size {
            return Err("the echo through the gateway differs from what was sent".to_owned());
        }
        Ok(1)
    }
}

/// The time a setup exchange may take.
pub(crate) const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_echo_counts_bytes_across_chunks() {
        let payload = payload(5);
        let mut conn = EchoConn {
            payload: payload.clone(),
            raw: true,
            partial: 0,
        };
        let stream: Vec<u8> = payload.iter().chain(payload.iter()).copied().collect();
        let chunk = |r: std::ops::Range<usize>| Message::from(stream[r].to_vec());
        assert_eq!(conn.answers(&chunk(0..3)), Ok(0));
        assert_eq!(conn.answers(&chunk(3..7)), Ok(1));
        assert_eq!(conn.answers(&chunk(7..10)), Ok(1));
        assert!(conn.answers(&Message::from(b"zz".to_vec())).is_err());
    }

    fn conn_answer(conn: &mut JsonConn, v: serde_json::Value) -> Result<u64, String> {
        conn.answers(&Message::from(v.to_string()))
    }

    #[test]
    fn json_replies() {
        let mut conn = JsonConn {
            request: Bytes::new(),
            size: 3,
        };
        assert_eq!(
            conn_answer(
                &mut conn,
                json!({"type": "echo_response", "content": "abc"})
            ),
            Ok(1)
        );
        assert_eq!(
            conn_answer(&mut conn, json!({"type": "broadcast", "content": "x"})),
            Ok(0)
        );
        assert!(conn_answer(&mut conn, json!({"type": "echo", "content": "abc"})).is_err());
        assert!(conn_answer(&mut conn, json!({"type": "echo_response", "content": "ab"})).is_err());
        assert!(conn_answer(&mut conn, json!({"type": "error", "error": "no"})).is_err());
    }

    #[test]
    fn gateway_replies() {
        let mut conn = GatewayConn {
            request: Bytes::new(),
            route: "echo".to_owned(),
            size: 2,
        };
        assert_eq!(conn.answers(&Message::from("ROUTENAME=echo\nab")), Ok(1));
        assert_eq!(conn.answers(&Message::from("ROUTENAME=other\nabc")), Ok(0));
        assert!(
            conn.answers(&Message::from(
                r#"{"event":"SMError","route":"echo","error":"backend unavailable"}"#
            ))
            .is_err()
        );
    }
}
