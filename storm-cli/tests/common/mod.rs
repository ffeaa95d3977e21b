//! What several of the binary's test files use.

// Each test file that declares this module uses a part of it.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::mpsc;

use storm_tests::suite::WAIT;

use storm_proto::Message;

/// A storm-std client handler that forwards every message it receives.
pub(crate) struct Inbox(pub(crate) mpsc::Sender<Message>);

impl storm_std::Handler for Inbox {
    fn on_message(&self, _: &storm_std::Session, message: Message) {
        let _ = self.0.send(message);
    }
}

/// A TCP connection with reads and writes bounded by [`WAIT`].
pub(crate) fn connect(addr: impl ToSocketAddrs) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    stream.set_write_timeout(Some(WAIT)).expect("write timeout");
    stream
}

/// Whether the server ended the connection (EOF or a reset) within
/// [`WAIT`], rather than keeping it open.
pub(crate) fn ended(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// One length-prefixed message (4-byte big-endian length, then the bytes).
pub(crate) fn lp(payload: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(payload.len())
        .expect("short")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(payload);
    out
}

/// Sends one length-prefixed message and reads one back: its payload.
pub(crate) fn lp_round_trip(stream: &mut TcpStream, payload: &[u8]) -> Vec<u8> {
    stream.write_all(&lp(payload)).expect("write");
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).expect("a reply's length");
    let mut reply = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut reply).expect("a reply");
    reply
}
