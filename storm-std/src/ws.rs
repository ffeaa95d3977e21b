//! A blocking WebSocket over any `Read + Write` stream.
//!
//! [`WebSocket`] runs the [`storm_proto::ws::Connection`] state machine on a
//! blocking stream: `read` blocks until the next event, and every call
//! writes what the machine queued (auto-pongs, close replies) before it
//! returns, so nothing is left unsent.
//!
//! ```no_run
//! use storm_std::ws::{self, WebSocket};
//! use storm_proto::ws::{Config, Event};
//!
//! # fn main() -> Result<(), storm_std::ws::Error> {
//! let (mut socket, _upgraded) = ws::connect("ws://127.0.0.1:9001/", &ws::ConnectOptions::default())?;
//! socket.send_text("hello")?;
//! while let Event::Text(reply) = socket.read()? {
//!     println!("{reply}");
//!     break;
//! }
//! socket.close(storm_proto::ws::CloseCode::NORMAL, "bye")?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use bytes::BytesMut;
use storm_proto::ws::deflate::{DeflateConfig, DeflateConfigError};
use storm_proto::ws::handshake::{
    Accepted, ClientConfig, ClientHandshake, ClientStep, ConfigError, Decision, HandshakeError,
    Refused, ResponseError, ServerConfig, ServerHandshake, ServerStep, UpgradeRequest, Upgraded,
};
use storm_proto::ws::{
    CloseCode, Config, Connection, Event, ProtocolError, SendError, Side, UrlError, WsUrl,
};

/// How much one `read` call asks the socket for.
const READ_CHUNK: usize = 16 * 1024;

/// A WebSocket connection on a blocking stream, after the handshake.
#[derive(Debug)]
pub struct WebSocket<S> {
    stream: S,
    conn: Connection,
    buf: Vec<u8>,
}

/// What [`connect`] needs besides the URL.
///
/// `#[non_exhaustive]`: start from [`default`](Self::default) and chain
/// the `with_*` methods; the fields stay public, to read and to set on a
/// value you own.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// Limits and behaviour of the connection. Default
    /// [`Config::default`].
    pub config: Config,
    /// permessage-deflate to offer. Default `None`.
    pub deflate: Option<DeflateConfig>,
    /// Subprotocols to offer, most preferred first. Default none.
    pub subprotocols: Vec<String>,
    /// Extra request headers, e.g. `Authorization`. Default none.
    pub headers: Vec<(String, String)>,
}

impl ConnectOptions {
    /// Limits and behaviour of the connection (default
    /// [`Config::default`]).
    #[must_use]
    pub fn with_config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Offers permessage-deflate (default: not offered).
    #[must_use]
    pub fn with_deflate(mut self, deflate: DeflateConfig) -> Self {
        self.deflate = Some(deflate);
        self
    }

    /// Subprotocols to offer, most preferred first (default none).
    #[must_use]
    pub fn with_subprotocols<S: Into<String>>(
        mut self,
        subprotocols: impl IntoIterator<Item = S>,
    ) -> Self {
        self.subprotocols = subprotocols.into_iter().map(Into::into).collect();
        self
    }

    /// Adds a request header, e.g. `Authorization` (default none).
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// Everything that can go wrong on a blocking WebSocket.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The transport failed.
    Io(io::Error),
    /// The URL is not a WebSocket URL.
    Url(UrlError),
    /// `wss://` needs TLS, which this entry point does not provide.
    TlsUnsupported,
    /// A configuration value is out of range.
    Config(ConfigError),
    /// The negotiated deflate parameters cannot be used.
    Deflate(DeflateConfigError),
    /// The client's upgrade request was refused (the response is sent).
    Handshake(HandshakeError),
    /// The application's decision refused the upgrade, or was unusable
    /// (the response is sent).
    Refused(Refused),
    /// The server's upgrade response was refused.
    Response(ResponseError),
    /// The transport closed during the handshake.
    HandshakeEof,
    /// The peer broke the protocol; the close frame was sent.
    Protocol(ProtocolError),
    /// A send was refused.
    Send(SendError),
    /// The connection is closed; [`WebSocket::read`] already returned the
    /// close event.
    Closed,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "I/O error: {e}"),
            Self::Url(e) => e.fmt(f),
            Self::TlsUnsupported => f.write_str("wss:// needs a TLS stream"),
            Self::Config(e) => write!(f, "configuration: {e}"),
            Self::Deflate(e) => write!(f, "permessage-deflate: {e}"),
            Self::Handshake(e) => write!(f, "upgrade request refused: {e}"),
            Self::Refused(e) => e.fmt(f),
            Self::Response(e) => write!(f, "upgrade response refused: {e}"),
            Self::HandshakeEof => f.write_str("connection closed during the handshake"),
            Self::Protocol(e) => write!(f, "protocol error: {e}"),
            Self::Send(e) => e.fmt(f),
            Self::Closed => f.write_str("connection closed"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            Self::Protocol(e) => Some(e),
            Self::Refused(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<SendError> for Error {
    fn from(e: SendError) -> Self {
        Self::Send(e)
    }
}

/// Connects to a `ws://` URL over TCP (`TCP_NODELAY` on) and performs the
/// client handshake.
///
/// # Errors
///
/// [`Error::Url`] for a bad URL, [`Error::TlsUnsupported`] for `wss://`,
/// I/O and handshake errors otherwise.
pub fn connect(
    url: &str,
    options: &ConnectOptions,
) -> Result<(WebSocket<TcpStream>, Upgraded), Error> {
    let url: WsUrl = url.parse().map_err(Error::Url)?;
    if url.secure {
        return Err(Error::TlsUnsupported);
    }
    let stream = TcpStream::connect(url.authority())?;
    stream.set_nodelay(true)?;
    let mut handshake = ClientConfig::new(url.host_header(), url.resource.clone());
    handshake.deflate.clone_from(&options.deflate);
    handshake.subprotocols.clone_from(&options.subprotocols);
    handshake.headers.clone_from(&options.headers);
    WebSocket::client(stream, &handshake, options.config.clone())
}

impl<S: Read + Write> WebSocket<S> {
    /// Performs the client handshake on `stream` and returns the open
    /// connection with what the server agreed to.
    ///
    /// # Errors
    ///
    /// I/O errors, an invalid `handshake` config, or a response that does
    /// not complete the upgrade.
    pub fn client(
        mut stream: S,
        handshake: &ClientConfig,
        config: Config,
    ) -> Result<(Self, Upgraded), Error> {
        let mut out = BytesMut::new();
        let mut rng = rand::rng();
        let mut state =
            ClientHandshake::start(handshake, &mut rng, &mut out).map_err(Error::Config)?;
        stream.write_all(&out)?;
        stream.flush()?;
        let mut buf = vec![0u8; READ_CHUNK];
        let upgraded = loop {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                return Err(Error::HandshakeEof);
            }
            match state.handle_input(&buf[..n]).map_err(Error::Response)? {
                ClientStep::NeedMore(next) => state = next,
                ClientStep::Done(upgraded) => break upgraded,
            }
        };
        let mut conn = Connection::new(Side::Client, config);
        if let (Some(params), Some(deflate)) = (upgraded.deflate, &handshake.deflate) {
            conn = conn.with_deflate(params, deflate).map_err(Error::Deflate)?;
        }
        conn.handle_input(&upgraded.leftover);
        Ok((Self { stream, conn, buf }, upgraded))
    }

    /// Performs the server handshake on `stream`, accepting every valid
    /// upgrade request. An invalid request gets its HTTP error response.
    /// [`accept_with`](Self::accept_with) lets the application decide.
    ///
    /// # Errors
    ///
    /// I/O errors, or [`Error::Handshake`] for a request that was refused.
    pub fn accept(
        stream: S,
        handshake: &Arc<ServerConfig>,
        config: Config,
    ) -> Result<(Self, Accepted), Error> {
        Self::accept_with(stream, handshake, config, |_| Decision::accept())
    }

    /// [`accept`](Self::accept), with `decide` answering the valid request
    /// (path, query, headers, `Origin`, offered subprotocols): accept with
    /// a subprotocol, response headers and an attached value (in
    /// [`Accepted::attached`]), or reject with a status, headers and a body
    /// (the `WsServer` hook's [`Decision`]). `decide` runs on the calling
    /// thread; bound the whole handshake with the stream's timeouts.
    ///
    /// # Errors
    ///
    /// I/O errors, [`Error::Handshake`] for an invalid request, or
    /// [`Error::Refused`] when `decide` rejected (or made a mistake, answered
    /// `500`).
    pub fn accept_with(
        mut stream: S,
        handshake: &Arc<ServerConfig>,
        config: Config,
        decide: impl FnOnce(&UpgradeRequest) -> Decision,
    ) -> Result<(Self, Accepted), Error> {
        let mut state = ServerHandshake::new(Arc::clone(handshake)).map_err(Error::Config)?;
        let mut buf = vec![0u8; READ_CHUNK];
        let mut out = BytesMut::new();
        let pending = loop {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                return Err(Error::HandshakeEof);
            }
            match state.handle_input(&buf[..n]) {
                Ok(ServerStep::NeedMore(next)) => state = next,
                Ok(ServerStep::Request(pending)) => break pending,
                Err(e) => {
                    e.write_response(&mut out);
                    // Best effort: the peer may already be gone.
                    let _ = stream.write_all(&out).and_then(|()| stream.flush());
                    return Err(Error::Handshake(e));
                }
            }
        };
        let decision = decide(pending.request());
        let accepted = match pending.decide(decision, &mut out) {
            Ok(accepted) => accepted,
            Err(refused) => {
                // Best effort: the peer may already be gone.
                let _ = stream.write_all(&out).and_then(|()| stream.flush());
                return Err(Error::Refused(refused));
            }
        };
        stream.write_all(&out)?;
        stream.flush()?;
        let mut conn = Connection::new(Side::Server, config);
        if let (Some(params), Some(deflate)) = (accepted.deflate, &handshake.deflate) {
            conn = conn.with_deflate(params, deflate).map_err(Error::Deflate)?;
        }
        conn.handle_input(&accepted.leftover);
        Ok((Self { stream, conn, buf }, accepted))
    }

    /// Blocks until the next event. Auto-pongs and close replies are written
    /// before it returns. After [`Event::Close`] the connection is finished:
    /// drop the stream (a server closes the TCP connection first, RFC 6455
    /// section 7.1.1), and further calls return [`Error::Closed`].
    ///
    /// # Errors
    ///
    /// [`Error::Protocol`] when the peer broke the protocol (the close frame
    /// with the matching code has been sent), I/O errors, [`Error::Closed`].
    pub fn read(&mut self) -> Result<Event, Error> {
        loop {
            match self.conn.poll_event() {
                Ok(Some(event)) => {
                    self.flush()?;
                    return Ok(event);
                }
                Ok(None) => {}
                Err(e) => {
                    // Send the close frame that says why; the peer may be gone.
                    let _ = self.flush();
                    return Err(Error::Protocol(e));
                }
            }
            if self.conn.is_closed() {
                return Err(Error::Closed);
            }
            let n = match self.stream.read(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                self.conn.handle_eof();
                continue;
            }
            self.conn.handle_input(&self.buf[..n]);
        }
    }

    /// Sends a text message.
    ///
    /// # Errors
    ///
    /// [`Error::Send`] after the close handshake started; I/O errors.
    pub fn send_text(&mut self, text: &str) -> Result<(), Error> {
        self.conn.send_text(text)?;
        self.flush()
    }

    /// Sends a binary message.
    ///
    /// # Errors
    ///
    /// As for [`send_text`](Self::send_text).
    pub fn send_binary(&mut self, data: &[u8]) -> Result<(), Error> {
        self.conn.send_binary(data)?;
        self.flush()
    }

    /// Sends a ping.
    ///
    /// # Errors
    ///
    /// As for [`send_text`](Self::send_text), and over 125 bytes.
    pub fn send_ping(&mut self, payload: &[u8]) -> Result<(), Error> {
        self.conn.send_ping(payload)?;
        self.flush()
    }

    /// Starts the closing handshake. Keep calling [`read`](Self::read) until
    /// it returns [`Event::Close`] (the peer's reply).
    ///
    /// # Errors
    ///
    /// As for [`send_text`](Self::send_text).
    pub fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), Error> {
        self.conn.close(code, reason)?;
        self.flush()
    }

    /// Writes everything the connection has queued.
    ///
    /// # Errors
    ///
    /// I/O errors.
    pub fn flush(&mut self) -> Result<(), Error> {
        while let Some(bytes) = self.conn.poll_transmit() {
            self.stream.write_all(&bytes)?;
        }
        self.stream.flush()?;
        Ok(())
    }

    /// The state machine underneath.
    #[must_use]
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The stream underneath.
    #[must_use]
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The stream underneath, mutably (e.g. to set timeouts).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }
}
