//! TLS with rustls on blocking sockets.
//!
//! The certificates, keys and trust settings are the shared option structs
//! ([`TlsServerOptions`](storm_host::options::TlsServerOptions),
//! [`TlsClientOptions`](storm_host::options::TlsClientOptions)); the core's
//! [`storm_host::tls`] turns them into rustls configurations, the same way
//! for every adapter. This module re-exports its PEM-file helpers, the same
//! ones `storm_tokio::tls` offers.
//!
//! ```no_run
//! use storm_std::host::options::{ServerOptions, TlsClientOptions};
//!
//! # fn main() -> std::io::Result<()> {
//! let server = ServerOptions::default()
//!     .with_tls(storm_std::tls::server_options_from_pem_files("cert.pem", "key.pem")?);
//! // A client that trusts a private CA instead of the web roots.
//! let client = TlsClientOptions::with_ca(storm_std::tls::read_pem_file("ca.pem")?);
//! # let _ = (server, client); Ok(()) }
//! ```
//!
//! # How a TLS connection runs
//!
//! The handshake runs to its end on the thread that accepted or connected,
//! bounded by the handshake (or connect) timeout, and so does the WebSocket
//! upgrade over it. Then the connection's two threads share the one rustls
//! connection behind a mutex, and neither ever holds the lock while it
//! blocks on the socket:
//!
//! - the **reader** reads ciphertext from the socket without the lock, then
//!   locks to hand it to rustls, decrypt it and take the plaintext out, and
//!   feeds the plaintext to the link after unlocking. When rustls has
//!   something of its own to send in reply (an alert) the reader wakes the
//!   writer: only the writer writes to the socket, so TLS records always
//!   leave in the order rustls made them. (rustls holds its answer to a
//!   TLS 1.3 key update until the next record it sends, as RFC 8446
//!   allows.)
//! - the **writer** locks to encrypt a batch (at most rustls' 64 KiB
//!   outgoing-buffer limit at a time) and take the records out, then writes
//!   them without the lock. A graceful close ends with `close_notify`; an
//!   abort does not.
//!
//! The lock is held for the memory work only (copying and AEAD over at
//! most one read or one 64 KiB batch), so a writer stuck on a slow peer
//! never stops its reader.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use rustls::{Connection, ConnectionCommon, SideData};

use storm_host::hub::{CloseKind, Outbox};
use storm_host::link::LinkDriver;
pub use storm_host::tls::{
    client_cert_from_pem_files, read_pem_file, server_options_from_pem_files,
};

use crate::deadline::Deadlined;
use crate::driver::{
    ReadHalf, Received, Transport, WriteHalf, advance, io_slices, lock, prepare, retry_or_give_up,
};

/// Runs the TLS handshake to its end (including the last flight, or the
/// server's session tickets) on `io`.
///
/// # Errors
///
/// A TLS failure ([`InvalidData`](io::ErrorKind::InvalidData) around the
/// [`rustls::Error`]; the alert has been sent if it could be), the peer
/// closing, or the deadline passing.
pub(crate) fn handshake<S: SideData>(
    conn: &mut ConnectionCommon<S>,
    io: &mut Deadlined<'_>,
) -> io::Result<()> {
    while conn.is_handshaking() {
        let (read, written) = conn.complete_io(io)?;
        if read == 0 && written == 0 && conn.is_handshaking() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed the connection during the TLS handshake",
            ));
        }
    }
    while conn.wants_write() {
        conn.write_tls(io)?;
    }
    Ok(())
}

/// `leftover` (what the WebSocket upgrade read past its end), followed by
/// any plaintext rustls already decrypted: what the link must see first.
pub(crate) fn initial_input<S: SideData>(
    conn: &mut ConnectionCommon<S>,
    leftover: Bytes,
) -> io::Result<Bytes> {
    let mut decrypted = Vec::new();
    take_plaintext(conn.reader(), &mut decrypted)?;
    if decrypted.is_empty() {
        return Ok(leftover);
    }
    let mut initial = leftover.to_vec();
    initial.append(&mut decrypted);
    Ok(Bytes::from(initial))
}

/// Appends every plaintext byte rustls holds to `plain`.
fn take_plaintext(mut reader: rustls::Reader<'_>, plain: &mut Vec<u8>) -> io::Result<()> {
    match reader.read_to_end(plain) {
        // Ok: the peer sent close_notify (the caller learns it from the
        // connection's state); WouldBlock: nothing more for now.
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

/// A rustls error as an I/O error (the shape rustls' own I/O helpers use,
/// so a client can tell a TLS failure by downcasting).
fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// A TCP stream with an established TLS session.
pub(crate) struct TlsStream {
    stream: TcpStream,
    conn: Connection,
}

impl TlsStream {
    /// `conn` must have finished its handshake on `stream`.
    pub(crate) fn new(stream: TcpStream, conn: impl Into<Connection>) -> Self {
        Self {
            stream,
            conn: conn.into(),
        }
    }
}

impl Transport for TlsStream {
    type Reader = TlsReader;
    type Writer = TlsWriter;

    fn split(self) -> io::Result<(TlsReader, TlsWriter)> {
        prepare(&self.stream)?;
        let writer = self.stream.try_clone()?;
        let conn = Arc::new(Mutex::new(self.conn));
        Ok((
            TlsReader {
                stream: self.stream,
                conn: Arc::clone(&conn),
                plain: Vec::new(),
            },
            TlsWriter {
                stream: writer,
                conn,
                out: Vec::new(),
            },
        ))
    }
}

/// The reader thread's half of a TLS connection.
pub(crate) struct TlsReader {
    stream: TcpStream,
    conn: Arc<Mutex<Connection>>,
    /// Plaintext from one socket read: at most the read plus one record
    /// it completed.
    plain: Vec<u8>,
}

impl ReadHalf for TlsReader {
    fn socket(&self) -> &TcpStream {
        &self.stream
    }

    fn read(&mut self, link: &Mutex<Box<LinkDriver>>, buf: &mut [u8]) -> io::Result<Received> {
        let n = (&self.stream).read(buf)?;
        if n == 0 {
            return Ok(Received::Eof);
        }
        // Ciphertext.
        let mut input = buf.get(..n).unwrap_or_default();
        self.plain.clear();
        let (result, answer) = {
            let mut conn = lock(&self.conn);
            let result = decrypt(&mut conn, &mut input, &mut self.plain);
            (result, conn.wants_write())
        };
        // Outside the lock: the writer keeps encrypting meanwhile.
        if !self.plain.is_empty() {
            lock(link).handle_input(Instant::now(), &self.plain);
        }
        Ok(match result? {
            true => Received::Eof,
            false if answer => Received::InputAndOutput,
            false => Received::Input,
        })
    }
}

/// Hands `input` to rustls and appends the plaintext to `plain`. `true`
/// once the peer sent `close_notify`.
fn decrypt(conn: &mut Connection, input: &mut &[u8], plain: &mut Vec<u8>) -> io::Result<bool> {
    // rustls takes a few KiB per call; the plaintext is taken out after
    // each, so its (16 KiB) plaintext buffer never fills.
    while !input.is_empty() {
        if conn.read_tls(input)? == 0 {
            return Ok(true);
        }
        let state = conn.process_new_packets().map_err(tls_error)?;
        take_plaintext(conn.reader(), plain)?;
        if state.peer_has_closed() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The writer thread's half of a TLS connection.
pub(crate) struct TlsWriter {
    stream: TcpStream,
    conn: Arc<Mutex<Connection>>,
    /// Ciphertext for one socket write.
    out: Vec<u8>,
}

impl WriteHalf for TlsWriter {
    fn socket(&self) -> &TcpStream {
        &self.stream
    }

    fn has_output(&self) -> bool {
        lock(&self.conn).wants_write()
    }

    fn write(
        &mut self,
        bufs: &mut Vec<Bytes>,
        outbox: &Outbox,
        stop: &AtomicBool,
    ) -> io::Result<()> {
        let mut first = 0;
        loop {
            self.out.clear();
            {
                let mut conn = lock(&self.conn);
                // rustls takes plaintext up to its outgoing-buffer limit
                // (64 KiB), then 0 until the records are taken out.
                while first < bufs.len() {
                    let n = conn.writer().write_vectored(&io_slices(bufs, first))?;
                    let before = first;
                    advance(bufs, &mut first, n);
                    if n == 0 && first == before {
                        break;
                    }
                }
                while conn.wants_write() {
                    conn.write_tls(&mut self.out)?;
                }
            }
            if self.out.is_empty() {
                break;
            }
            write_fully(&self.stream, &self.out, outbox, stop)?;
            if first >= bufs.len() {
                // What the reader queues meanwhile, `has_output` tells.
                break;
            }
        }
        bufs.clear();
        Ok(())
    }

    fn finish(&mut self, outbox: &Outbox, stop: &AtomicBool) -> io::Result<()> {
        if outbox.close_request() == Some(CloseKind::Abort) {
            return Ok(());
        }
        lock(&self.conn).send_close_notify();
        self.write(&mut Vec::new(), outbox, stop)
    }
}

/// Writes all of `out`, giving up as [`retry_or_give_up`] says.
fn write_fully(
    mut stream: &TcpStream,
    mut out: &[u8],
    outbox: &Outbox,
    stop: &AtomicBool,
) -> io::Result<()> {
    while !out.is_empty() {
        match stream.write(out) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => out = out.get(n..).unwrap_or_default(),
            Err(e) => retry_or_give_up(e, outbox, stop)?,
        }
    }
    Ok(())
}
