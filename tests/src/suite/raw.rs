//! Peers written by hand on blocking `std::net`, for what no well-behaved
//! adapter does: a WebSocket client that never reads or never pongs, one
//! that sends malformed frames, and a WebSocket server that never answers.
//! Every read has a timeout.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;

use bytes::BytesMut;
use storm_proto::ws::handshake::{ServerConfig, ServerHandshake, ServerStep};
use storm_proto::ws::{CloseFrame, Config, Connection, Event, Side};

use super::WAIT;

/// A request that upgrades (the RFC 6455 sample key).
pub const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

/// Opcodes, for [`frame`].
pub mod opcode {
    /// Text.
    pub const TEXT: u8 = 0x1;
    /// Binary.
    pub const BINARY: u8 = 0x2;
    /// Close.
    pub const CLOSE: u8 = 0x8;
    /// Ping.
    pub const PING: u8 = 0x9;
    /// A reserved non-control opcode.
    pub const RESERVED: u8 = 0x3;
}

/// One final frame with `opcode` and `payload`, masked (as a client must)
/// or not.
#[must_use]
pub fn frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        len @ 0..=125 => out.push(mask_bit | len as u8),
        len @ 126..=0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x12, 0x34, 0x56, 0x78];
        out.extend_from_slice(&key);
        out.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// Reads until the end of an HTTP header block; the block and what came
/// after it.
///
/// # Errors
///
/// The stream's read error; [`UnexpectedEof`](io::ErrorKind::UnexpectedEof)
/// when it ends first.
pub fn read_head(stream: &mut impl Read) -> io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads until EOF or a reset, within [`WAIT`], handing each read to
/// `sink`.
///
/// # Panics
///
/// When the peer keeps the connection open past [`WAIT`].
fn read_until_close(stream: &mut TcpStream, mut sink: impl FnMut(&[u8])) {
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => sink(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                panic!("the peer did not close within {WAIT:?}")
            }
            Err(_) => return,
        }
    }
}

/// Reads until EOF or a reset, within [`WAIT`]; every byte read.
///
/// # Panics
///
/// When the peer keeps the connection open past [`WAIT`].
#[must_use]
pub fn read_all(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    read_until_close(stream, |bytes| all.extend_from_slice(bytes));
    all
}

/// Reads until EOF or a reset, within [`WAIT`]; the number of bytes read.
///
/// # Panics
///
/// When the peer keeps the connection open past [`WAIT`].
pub fn read_to_close(stream: &mut TcpStream) -> usize {
    let mut total = 0;
    read_until_close(stream, |bytes| total += bytes.len());
    total
}

/// A hand-written WebSocket client on a raw socket.
#[derive(Debug)]
pub struct RawWs {
    /// The socket; write anything to it.
    pub stream: TcpStream,
    /// Decodes what the server sends (its pongs are never written).
    conn: Connection,
}

impl RawWs {
    /// Connects to `addr` and upgrades.
    ///
    /// # Panics
    ///
    /// When the server does not answer 101 in time.
    #[must_use]
    pub fn upgrade(addr: SocketAddr) -> Self {
        Self::upgraded(Self::request(addr)).expect("upgrade response")
    }

    /// Connects to `addr` and sends the upgrade request, without waiting
    /// for the answer ([`upgraded`](Self::upgraded) reads it).
    ///
    /// # Panics
    ///
    /// When the connection or the write fails.
    #[must_use]
    pub fn request(addr: SocketAddr) -> TcpStream {
        let mut stream = TcpStream::connect(addr).expect("raw connect");
        stream.set_read_timeout(Some(WAIT)).expect("read timeout");
        stream.write_all(UPGRADE).expect("raw upgrade request");
        stream
    }

    /// Reads the answer to [`request`](Self::request): the upgraded
    /// connection, or `None` if the connection ended before any answer.
    ///
    /// # Panics
    ///
    /// When nothing comes within [`WAIT`], or the answer is not a 101.
    #[must_use]
    pub fn upgraded(stream: TcpStream) -> Option<Self> {
        Self::upgraded_with_head(stream).map(|(_, raw)| raw)
    }

    /// [`upgraded`](Self::upgraded), with the response's header block.
    ///
    /// # Panics
    ///
    /// As [`upgraded`](Self::upgraded).
    #[must_use]
    pub fn upgraded_with_head(mut stream: TcpStream) -> Option<(String, Self)> {
        let (head, rest) = match read_head(&mut stream) {
            Ok(answer) => answer,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                panic!("no upgrade response within {WAIT:?}")
            }
            Err(_) => return None,
        };
        assert!(head.starts_with("HTTP/1.1 101"), "not upgraded: {head}");
        let mut conn = Connection::new(Side::Client, Config::default());
        conn.handle_input(&rest);
        Some((head, Self { stream, conn }))
    }

    /// Connects to `addr` and sends an upgrade request for `target` with
    /// `headers` (whole lines, each ending in CRLF) added, without waiting
    /// for the answer.
    ///
    /// # Panics
    ///
    /// When the connection or the write fails.
    #[must_use]
    pub fn request_with(addr: SocketAddr, target: &str, headers: &str) -> TcpStream {
        let mut stream = TcpStream::connect(addr).expect("raw connect");
        stream.set_read_timeout(Some(WAIT)).expect("read timeout");
        let request = String::from_utf8_lossy(UPGRADE)
            .replacen("GET / ", &format!("GET {target} "), 1)
            .replacen("\r\n\r\n", &format!("\r\n{headers}\r\n"), 1);
        stream
            .write_all(request.as_bytes())
            .expect("raw upgrade request");
        stream
    }

    /// Writes one frame.
    ///
    /// # Panics
    ///
    /// When the write fails.
    pub fn send(&mut self, opcode: u8, payload: &[u8], masked: bool) {
        self.stream
            .write_all(&frame(opcode, payload, masked))
            .expect("raw write");
    }

    /// The next event the server's frames make (its messages, pings, pongs,
    /// close); `None` if the connection ended first.
    ///
    /// # Panics
    ///
    /// When nothing arrives within [`WAIT`], or the server sends an invalid
    /// frame.
    #[must_use]
    pub fn next_event(&mut self) -> Option<Event> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match self.conn.poll_event() {
                Ok(Some(event)) => return Some(event),
                Ok(None) => {}
                Err(e) => panic!("the server sent an invalid frame: {e}"),
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.conn.handle_input(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    panic!("nothing from the server within {WAIT:?}")
                }
                Err(_) => return None,
            }
        }
    }

    /// Reads until the server's close frame; `None` if the connection ended
    /// without one. Messages and pings before it are skipped.
    ///
    /// # Panics
    ///
    /// As [`next_event`](Self::next_event).
    #[must_use]
    pub fn close_frame(&mut self) -> Option<CloseFrame> {
        loop {
            if let Event::Close(frame) = self.next_event()? {
                return Some(frame);
            }
        }
    }
}

/// A hand-written WebSocket server: it upgrades, then does only what the
/// scenario does with the socket.
#[derive(Debug)]
pub struct RawWsServer {
    listener: TcpListener,
}

impl RawWsServer {
    /// Listens on a free loopback port.
    ///
    /// # Panics
    ///
    /// When it cannot bind.
    #[must_use]
    pub fn bind() -> Self {
        Self {
            listener: TcpListener::bind("127.0.0.1:0").expect("raw bind"),
        }
    }

    /// Its `ws://` URL.
    ///
    /// # Panics
    ///
    /// When the listener has no address.
    #[must_use]
    pub fn url(&self) -> String {
        format!("ws://{}/", self.listener.local_addr().expect("raw addr"))
    }

    /// Its address.
    ///
    /// # Panics
    ///
    /// When the listener has no address.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("raw addr")
    }

    /// Accepts one connection and answers its upgrade (the handshake from
    /// the core); returns the socket.
    ///
    /// # Panics
    ///
    /// When no valid upgrade arrives in time.
    #[must_use]
    pub fn accept(&self) -> TcpStream {
        let (mut stream, answer) = self.accept_request();
        stream.write_all(&answer).expect("upgrade response");
        stream
    }

    /// Accepts one connection and reads its whole upgrade request, without
    /// answering: the socket, and the 101 answer to write when the scenario
    /// wants the handshake to finish.
    ///
    /// # Panics
    ///
    /// When no valid upgrade request arrives in time.
    #[must_use]
    pub fn accept_request(&self) -> (TcpStream, BytesMut) {
        self.listener.set_nonblocking(false).expect("blocking");
        let (mut stream, _) = self.listener.accept().expect("raw accept");
        stream.set_read_timeout(Some(WAIT)).expect("read timeout");
        let mut state =
            ServerHandshake::new(Arc::new(ServerConfig::default())).expect("handshake config");
        let mut buf = [0u8; 4096];
        let pending = loop {
            let n = stream.read(&mut buf).expect("upgrade request");
            assert!(n > 0, "the client left before upgrading");
            match state
                .handle_input(&buf[..n])
                .expect("a valid upgrade request")
            {
                ServerStep::NeedMore(next) => state = next,
                ServerStep::Request(pending) => break pending,
            }
        };
        let mut answer = BytesMut::new();
        let _ = pending.accept(&mut answer);
        (stream, answer)
    }
}

/// A TLS client of `addr` (as `localhost`, the name it sends), past its
/// handshake, on a blocking socket whose reads time out after [`WAIT`].
///
/// # Errors
///
/// The connection's or the handshake's error.
pub fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("a name");
    let conn = rustls::ClientConnection::new(config, name).map_err(io::Error::other)?;
    let socket = TcpStream::connect(addr)?;
    socket.set_read_timeout(Some(WAIT))?;
    let mut tls = rustls::StreamOwned::new(conn, socket);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}
