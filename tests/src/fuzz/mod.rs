//! The fuzz targets' logic, shared by `fuzz/` (libFuzzer) and by
//! `tests/tests/fuzz_corpus.rs`, which replays the committed corpora in a
//! plain `cargo test`.
//!
//! Each function takes the raw fuzz input, interprets it as its doc says,
//! drives one `storm-proto` decoder or state machine with it, and panics
//! (through `assert!`) when an invariant breaks: a panic inside
//! `storm-proto`, more bytes buffered than the documented limit, an error
//! that is not final, or a round trip that does not give back what went in.
//! Any input is acceptable; inputs too short to hold the configuration
//! bytes are ignored.
//!
//! The functions are deterministic (fixed RNG seeds, chunk sizes derived
//! from the input) so a crash reproduces from its input alone.

pub mod backplane;
pub mod broker;
pub mod corpus;
pub mod route;
pub mod rpc;

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use rand::SeedableRng;
use rand::rngs::StdRng;
use storm_proto::framing::{
    DelimiterConfig, DelimiterFramer, Framer, FramingError, LengthPrefixConfig, LengthPrefixFramer,
    RawConfig, RawFramer,
};
use storm_proto::ws::deflate::{DeflateConfig, DeflateError, DeflateParams, PerMessageDeflate};
use storm_proto::ws::extensions::{deflate_response_params, negotiate_deflate, parse_extensions};
use storm_proto::ws::frame::{FrameHeader, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};
use storm_proto::ws::handshake::{
    ClientConfig, ClientHandshake, ClientStep, ServerConfig, ServerHandshake, ServerStep,
};
use storm_proto::ws::{CloseCode, Config, Connection, Event, ProtocolError, Side};

// ---- framing ------------------------------------------------------------------

/// Splits `stream` into chunks of 1..=`max` bytes, sizes drawn from a tiny
/// generator seeded with `seed`.
fn seeded_chunks(stream: &[u8], seed: u8, max: u8) -> Vec<&[u8]> {
    let mut chunks = Vec::new();
    let mut rest = stream;
    let mut state = seed;
    while !rest.is_empty() {
        state = state.wrapping_mul(33).wrapping_add(7);
        let (chunk, tail) = rest.split_at(rest.len().min(usize::from(state % max) + 1));
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

/// What a framer made of a stream.
#[derive(Debug, PartialEq, Eq)]
struct FramerRun {
    /// Messages `decode` returned, each with the number of bytes it consumed.
    messages: Vec<(Bytes, usize)>,
    /// The error that ended decoding, if one did.
    error: Option<FramingError>,
    /// Messages `decode_eof` returned once the input was all fed.
    eof_messages: Vec<Bytes>,
    /// The error `decode_eof` returned, if any.
    eof_error: Option<FramingError>,
}

/// Feeds `chunks` to `framer` one by one, decoding after each, then decodes
/// at end of stream (unless an error came first).
///
/// Checks the [`Framer`] contract on the way: messages within the limit and
/// consuming input, fewer than one maximal frame buffered after `Ok(None)`,
/// remote errors that consume nothing and come back unchanged. Returns the
/// run and the most bytes left buffered after any `Ok(None)`.
fn run_framer<'a, F: Framer>(
    framer: &mut F,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> (FramerRun, usize) {
    /// Decodes until `Ok(None)` or an error; returns the error.
    fn drain<F: Framer>(
        framer: &mut F,
        buf: &mut BytesMut,
        eof: bool,
        out: &mut Vec<(Bytes, usize)>,
    ) -> Option<FramingError> {
        let max = framer.max_message_len();
        let bound = framer.encoded_len(max);
        let decode = |framer: &mut F, buf: &mut BytesMut| {
            if eof {
                framer.decode_eof(buf)
            } else {
                framer.decode(buf)
            }
        };
        loop {
            let before = buf.len();
            match decode(framer, buf) {
                Ok(Some(m)) => {
                    assert!(m.len() <= max, "message of {} over max {max}", m.len());
                    assert!(buf.len() < before, "a message consumed no input");
                    out.push((m, before - buf.len()));
                }
                Ok(None) => {
                    assert!(buf.len() < bound, "buffered {} >= {bound}", buf.len());
                    return None;
                }
                Err(e) => {
                    assert!(e.is_remote(), "decode returned local error {e:?}");
                    assert!(!e.to_string().is_empty());
                    assert_eq!(buf.len(), before, "an error consumed input");
                    assert_eq!(decode(framer, buf), Err(e.clone()), "errors are final");
                    return Some(e);
                }
            }
        }
    }

    let mut buf = BytesMut::new();
    let mut run = FramerRun {
        messages: Vec::new(),
        error: None,
        eof_messages: Vec::new(),
        eof_error: None,
    };
    let mut max_buffered = 0;
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        run.error = drain(framer, &mut buf, false, &mut run.messages);
        if run.error.is_some() {
            return (run, max_buffered);
        }
        max_buffered = max_buffered.max(buf.len());
    }
    let mut at_eof = Vec::new();
    run.eof_error = drain(framer, &mut buf, true, &mut at_eof);
    run.eof_messages = at_eof.into_iter().map(|(m, _)| m).collect();
    (run, max_buffered)
}

/// Fuzzes [`RawFramer`]: any bytes in any chunking come out unchanged, in
/// non-empty messages of at most the limit, and nothing stays buffered.
///
/// Input: byte 0 picks the max chunk length (1..=256), byte 1 seeds the
/// chunk sizes (1..=31 bytes), the rest is the stream.
pub fn framing_raw(data: &[u8]) {
    let [cfg, seed, stream @ ..] = data else {
        return;
    };
    let mut config = RawConfig::default();
    config.max_chunk_len = usize::from(*cfg) + 1;
    let Ok(mut framer) = RawFramer::new(config) else {
        return;
    };
    let (run, max_buffered) = run_framer(&mut framer, seeded_chunks(stream, *seed, 31));
    assert_eq!(max_buffered, 0, "raw framer left bytes buffered");
    assert_eq!(run.error, None);
    assert_eq!(run.eof_error, None);
    assert!(run.eof_messages.is_empty());
    let mut out = Vec::new();
    for (m, consumed) in &run.messages {
        assert!(!m.is_empty());
        assert_eq!(m.len(), *consumed);
        out.extend_from_slice(m);
    }
    assert_eq!(out, stream);
}

/// Checks what the length-prefix and delimiter framers share: every decoded
/// message re-encodes to exactly the bytes it consumed (when `reencodes`),
/// and the stream decodes the same fed whole, byte by byte, and in chunks
/// drawn from `seed`.
pub(crate) fn check_framer<F: Framer + Clone>(framer: F, stream: &[u8], seed: u8, reencodes: bool) {
    let (whole, _) = run_framer(&mut framer.clone(), [stream]);
    let (bytewise, _) = run_framer(&mut framer.clone(), stream.chunks(1));
    assert_eq!(whole, bytewise, "byte-by-byte input changed the result");
    let mut framer = framer;
    let (split, _) = run_framer(&mut framer, seeded_chunks(stream, seed, 31));
    assert_eq!(whole, split, "chunking changed the result");
    let mut reencoded = BytesMut::new();
    let mut consumed = 0;
    for (m, len) in &split.messages {
        consumed += len;
        if reencodes {
            assert_eq!(*len, framer.encoded_len(m.len()));
            assert!(framer.encode(m, &mut reencoded).is_ok());
        }
    }
    if reencodes {
        assert_eq!(&reencoded[..], &stream[..consumed]);
    }
}

/// Fuzzes [`LengthPrefixFramer`]: arbitrary bytes in arbitrary chunks never
/// panic, never leave a maximal frame's worth of bytes buffered, decode the
/// same as when fed whole or byte by byte, and every decoded message
/// re-encodes to exactly the bytes it consumed.
///
/// Input: byte 0 picks the max frame length (0..=1020, in steps of 4),
/// byte 1 seeds the chunk sizes, the rest is the stream.
pub fn framing_length_prefix(data: &[u8]) {
    let [cfg, seed, stream @ ..] = data else {
        return;
    };
    let mut config = LengthPrefixConfig::default();
    config.max_frame_len = usize::from(*cfg) * 4;
    let Ok(framer) = LengthPrefixFramer::new(config) else {
        return;
    };
    check_framer(framer, stream, *seed, true);
}

/// The delimiters [`framing_delimiter`] picks from: common ones and ones
/// whose prefixes overlap (to exercise the resumable search).
const DELIMITERS: [&[u8]; 8] = [
    b"\n",
    b"\r\n",
    b"\0",
    b"aa",
    b"aab",
    b"aba",
    b"\r\n\r\n",
    b"abcab",
];

/// Fuzzes [`DelimiterFramer`]: arbitrary bytes in arbitrary chunks never
/// panic, never leave a maximal frame's worth of bytes buffered, decode the
/// same as when fed whole or byte by byte, and (without `\r` stripping)
/// every decoded message re-encodes to exactly the bytes it consumed.
///
/// Input: byte 0 picks the delimiter (bits 0-2, from `\n`, `\r\n`, `\0`,
/// `aa`, `aab`, `aba`, `\r\n\r\n`, `abcab`) and `\r` stripping (bit 3),
/// byte 1 the max message length (0..=255), byte 2 seeds the chunk sizes,
/// the rest is the stream.
pub fn framing_delimiter(data: &[u8]) {
    let [cfg, max, seed, stream @ ..] = data else {
        return;
    };
    let mut config = DelimiterConfig::default();
    config.delimiter = DELIMITERS[usize::from(cfg & 7)].to_vec();
    config.strip_cr = cfg & 8 != 0;
    config.max_message_len = usize::from(*max);
    let strip_cr = config.strip_cr;
    let Ok(framer) = DelimiterFramer::new(config) else {
        return;
    };
    check_framer(framer, stream, *seed, !strip_cr);
}

// ---- WebSocket handshake ------------------------------------------------------

/// Fuzzes the server opening handshake with arbitrary request bytes, in
/// arbitrary chunks. It must never panic, never buffer past the header
/// limit, and every outcome must produce a writable response: a 101 whose
/// negotiated deflate windows are in 9..=15, or a 400, 426 or 431.
///
/// Input: byte 0 sets the chunk size (1..=256), the rest is fed to a
/// `ServerHandshake` with deflate and the subprotocols `chat` and
/// `superchat` enabled, a 2048-byte header limit and at most 32 headers.
pub fn ws_handshake_server(data: &[u8]) {
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk) + 1;
    let config = Arc::new(ServerConfig {
        subprotocols: vec!["chat".into(), "superchat".into()],
        deflate: Some(DeflateConfig::default()),
        max_request_header_bytes: 2048,
        max_headers: 32,
    });
    let Ok(mut hs) = ServerHandshake::new(config) else {
        return;
    };
    let mut out = BytesMut::new();
    for piece in input.chunks(chunk) {
        match hs.handle_input(piece) {
            Ok(ServerStep::NeedMore(next)) => {
                assert!(next.buffered() <= 2048);
                hs = next;
            }
            Ok(ServerStep::Request(pending)) => {
                let _ = pending.request().path();
                let accepted = pending.accept(&mut out);
                if let Some(params) = accepted.deflate {
                    assert!((9..=15).contains(&params.server_max_window_bits));
                    assert!((9..=15).contains(&params.client_max_window_bits));
                }
                assert!(out.starts_with(b"HTTP/1.1 101"));
                return;
            }
            Err(err) => {
                assert!(matches!(err.status(), 400 | 426 | 431));
                err.write_response(&mut out);
                assert!(!out.is_empty());
                return;
            }
        }
    }
}

/// Fuzzes the client opening handshake with arbitrary response bytes, in
/// arbitrary chunks. It must never panic nor buffer past the header limit;
/// an accepted response has status 101 and deflate windows within what was
/// offered.
///
/// Input: byte 0 sets the chunk size (1..=256), the rest is fed to a
/// `ClientHandshake` that offered the subprotocols `chat` and `superchat`
/// and permessage-deflate with `server_max_window_bits=12`, with the RFC
/// 6455 sample key (so `Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=`
/// is the matching answer) and a 2048-byte header limit.
pub fn ws_handshake_client(data: &[u8]) {
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk) + 1;
    let mut config = ClientConfig::new("server.example.com", "/chat");
    config.subprotocols = vec!["chat".into(), "superchat".into()];
    config.deflate = Some(DeflateConfig::default().with_server_max_window_bits(12));
    config.max_response_header_bytes = 2048;
    let mut out = BytesMut::new();
    let Ok(mut hs) = ClientHandshake::start_with_key(&config, *b"the sample nonce", &mut out)
    else {
        return;
    };
    for piece in input.chunks(chunk) {
        match hs.handle_input(piece) {
            Ok(ClientStep::NeedMore(next)) => {
                assert!(next.buffered() <= 2048);
                hs = next;
            }
            Ok(ClientStep::Done(up)) => {
                assert_eq!(up.status, 101);
                if let Some(params) = up.deflate {
                    assert!(params.server_max_window_bits <= 12);
                }
                return;
            }
            Err(err) => {
                assert!(!err.to_string().is_empty());
                return;
            }
        }
    }
}

/// Fuzzes `Sec-WebSocket-Extensions` parsing and permessage-deflate
/// negotiation. A failed parse yields no offers; whatever the server agrees
/// to parses back on the client as one extension; accepted parameters keep
/// their windows in 9..=15.
///
/// Input: the whole input is one header value. It is parsed as a client's
/// offers (the server negotiates) and as a server's answer (the client
/// checks it).
pub fn ws_handshake_extensions(data: &[u8]) {
    let mut offers = Vec::new();
    if parse_extensions(data, &mut offers).is_err() {
        assert!(offers.is_empty());
        return;
    }
    let config = DeflateConfig::default();
    if let Some(agreement) = negotiate_deflate(&config, &offers) {
        let mut answer = Vec::new();
        assert!(parse_extensions(agreement.response.as_bytes(), &mut answer).is_ok());
        assert_eq!(answer.len(), 1);
    }
    for ext in &offers {
        if let Ok(params) = deflate_response_params(&config, ext) {
            assert!((9..=15).contains(&params.server_max_window_bits));
            assert!((9..=15).contains(&params.client_max_window_bits));
        }
    }
}

// ---- permessage-deflate ---------------------------------------------------------

/// The message limit [`ws_inflate`] decompresses under.
pub const WS_INFLATE_LIMIT: usize = 1 << 16;

/// Fuzzes permessage-deflate decompression (and compression round trips).
///
/// Input: one control byte, then records `[header][payload]`.
/// Control: bit 0 `server_no_context_takeover`, bit 1
/// `client_no_context_takeover`, bits 2..=6 pick `server_max_window_bits`
/// (9 + n % 7), bit 7 round-trip mode. Record header: bits 0..=6 payload
/// length (cut short at the end of input), bit 7 `fin`.
///
/// Inflate mode: each record is one frame payload of a compressed message
/// the client receives; the message limit is [`WS_INFLATE_LIMIT`] and must
/// never be exceeded, whatever the bytes; errors carry close code 1007 or
/// 1009 and are final. Round-trip mode: each record is a whole message the
/// server compresses and the client must get back unchanged.
pub fn ws_inflate(data: &[u8]) {
    let _ = ws_inflate_messages(data);
}

/// [`ws_inflate`], returning what the client received in inflate mode: the
/// complete messages, and the error that ended the input, if any (nothing
/// in round-trip mode). The corpus test checks the seeds' outcomes with it.
#[must_use]
pub fn ws_inflate_messages(data: &[u8]) -> (Vec<Bytes>, Option<DeflateError>) {
    let mut received = Vec::new();
    let Some((&control, mut rest)) = data.split_first() else {
        return (received, None);
    };
    let params = DeflateParams {
        server_no_context_takeover: control & 1 != 0,
        client_no_context_takeover: control & 2 != 0,
        server_max_window_bits: 9 + (control >> 2) % 7,
        client_max_window_bits: 15,
    };
    let round_trip = control & 0x80 != 0;
    let config = DeflateConfig::default();
    let mut server =
        PerMessageDeflate::new(Side::Server, params, &config).expect("valid deflate params");
    let mut client =
        PerMessageDeflate::new(Side::Client, params, &config).expect("valid deflate params");
    let mut dst = BytesMut::new();
    while let Some((&header, tail)) = rest.split_first() {
        let len = usize::from(header & 0x7f).min(tail.len());
        let (payload, next) = tail.split_at(len);
        rest = next;
        if round_trip {
            let mut wire = BytesMut::new();
            assert_eq!(server.compress(payload, &mut wire), Ok(()));
            let mut out = BytesMut::new();
            assert_eq!(
                client.decompress(&wire, true, &mut out, WS_INFLATE_LIMIT),
                Ok(())
            );
            assert_eq!(&out[..], payload);
        } else {
            let fin = header & 0x80 != 0;
            let result = client.decompress(payload, fin, &mut dst, WS_INFLATE_LIMIT);
            assert!(dst.len() <= WS_INFLATE_LIMIT);
            if let Err(error) = result {
                assert!(matches!(error.close_code(), 1007 | 1009));
                assert_eq!(
                    client.decompress(&[], true, &mut dst, WS_INFLATE_LIMIT),
                    Err(error),
                    "errors are final"
                );
                return (received, Some(error));
            }
            if fin {
                received.push(dst.split().freeze());
            }
        }
    }
    (received, None)
}

// ---- WebSocket frames and connection ----------------------------------------------

/// Fuzzes [`FrameHeader::decode`] on arbitrary bytes.
///
/// Input: the bytes to decode (the front of a frame).
///
/// Checks: `Ok(None)` only while fewer than [`MAX_HEADER_LEN`] bytes are
/// there; a decoded header is at most [`MAX_HEADER_LEN`] bytes long, every
/// shorter prefix of it decodes to `Ok(None)`, it re-encodes to
/// [`FrameHeader::encoded_len`] bytes (no longer than the input's, and the
/// same bytes when the input used the shortest length encoding) that decode
/// to the same header; an error is the same whatever follows it.
pub fn ws_frame_header(data: &[u8]) {
    match FrameHeader::decode(data) {
        Ok(None) => assert!(
            data.len() < MAX_HEADER_LEN,
            "{} bytes not enough",
            data.len()
        ),
        Ok(Some((header, len))) => {
            assert!(len <= MAX_HEADER_LEN && len <= data.len());
            if header.opcode.is_control() {
                assert!(header.fin);
                assert!(header.payload_len <= MAX_CONTROL_PAYLOAD as u64);
            }
            assert!(header.payload_len >> 63 == 0);
            for short in 0..len {
                assert_eq!(FrameHeader::decode(&data[..short]), Ok(None));
            }
            let mut wire = BytesMut::new();
            header.encode(&mut wire);
            assert_eq!(wire.len(), header.encoded_len());
            assert!(wire.len() <= len);
            if wire.len() == len {
                assert_eq!(&wire[..], &data[..len]);
            }
            assert_eq!(FrameHeader::decode(&wire), Ok(Some((header, wire.len()))));
            wire.extend_from_slice(&data[len..]);
            assert_eq!(
                FrameHeader::decode(&wire),
                Ok(Some((header, header.encoded_len())))
            );
        }
        Err(error) => {
            assert!(!error.to_string().is_empty());
            let mut longer = data.to_vec();
            longer.extend_from_slice(&[0xff; MAX_HEADER_LEN]);
            assert_eq!(FrameHeader::decode(&longer), Err(error));
        }
    }
}

/// What [`ws_conn`]'s connection must have sent, as its peer sees it.
#[derive(Debug, PartialEq, Eq)]
enum Sent {
    /// The auto-pong for a ping.
    Pong(Bytes),
    /// The echo of a text message.
    Text(Bytes),
    /// The echo of a binary message.
    Binary(Bytes),
    /// A close frame with this code (or the transport's end, 1006).
    Close(CloseCode),
}

/// The configuration [`ws_conn`] reads from its first byte: the side, the
/// limits, and permessage-deflate parameters if it is on.
fn ws_conn_setup(cfg: u8) -> (Side, Config, Option<DeflateParams>) {
    let side = if cfg & 1 == 0 {
        Side::Server
    } else {
        Side::Client
    };
    let window = (cfg >> 4) & 7;
    let deflate = (cfg & 2 != 0).then_some(DeflateParams {
        server_no_context_takeover: cfg & 4 != 0,
        client_no_context_takeover: cfg & 8 != 0,
        server_max_window_bits: 9 + window % 7,
        client_max_window_bits: 15 - window % 7,
    });
    let mut config = Config::default();
    if cfg & 0x80 == 0 {
        config.max_frame_size = 512;
        config.max_message_size = 2048;
        config.max_fragments = 16;
        config.send_fragment_size = 0;
    } else {
        config.max_frame_size = 16;
        config.max_message_size = 48;
        config.max_fragments = 3;
        config.send_fragment_size = 5;
    }
    (side, config, deflate)
}

/// A connection for `side` with a fixed masking-key seed (clients only: a
/// server built with an RNG would mask what it sends).
fn ws_conn_build(side: Side, config: Config, deflate: Option<DeflateParams>) -> Connection {
    let conn = match side {
        Side::Client => Connection::with_rng(side, config, StdRng::seed_from_u64(0x5eed)),
        Side::Server => Connection::new(side, config),
    };
    match deflate {
        Some(params) => conn
            .with_deflate(params, &DeflateConfig::default())
            .expect("windows 9..=15 are valid"),
        None => conn,
    }
}

/// Fuzzes the WebSocket [`Connection`] state machine with arbitrary bytes
/// from the peer, in arbitrary chunks, as an echo endpoint: every text or
/// binary message received is sent back.
///
/// Input: byte 0 configures the connection:
/// - bit 0: the side (0 server, so the input is what a client sends and
///   must be masked; 1 client, unmasked input);
/// - bit 1: permessage-deflate on, with bit 2 `server_no_context_takeover`,
///   bit 3 `client_no_context_takeover`, and bits 4..=6 as `n` giving
///   `server_max_window_bits = 9 + n % 7` and
///   `client_max_window_bits = 15 - n % 7`;
/// - bit 7: tight limits (`max_frame_size` 16, `max_message_size` 48,
///   `max_fragments` 3, and echoes sent in 5-byte fragments) instead of
///   roomy ones (512, 2048, 16, unfragmented).
///
/// Byte 1 seeds the chunk sizes (1..=64 bytes); the rest is fed with
/// `handle_input`, each chunk followed by draining `poll_event` and
/// `poll_transmit`, then the transport ends (`handle_eof`).
///
/// Checks: no panic; text and binary messages within `max_message_size`,
/// pings and pongs within 125 bytes; after an error, every later
/// `poll_event` returns the same error; nothing after [`Event::Close`];
/// the connection ends closed, with exactly one close or error. And what it
/// transmits is valid for its peer: a second connection of the other side
/// (same deflate parameters, default limits) decodes it without error into
/// exactly the echoes, a pong for the last ping before each transmit (after
/// what was queued before it), and a close frame echoing the peer's code
/// (or carrying the error's close code).
pub fn ws_conn(data: &[u8]) {
    let [cfg, seed, stream @ ..] = data else {
        return;
    };
    let (side, config, deflate) = ws_conn_setup(*cfg);
    let peer_side = match side {
        Side::Client => Side::Server,
        Side::Server => Side::Client,
    };
    let mut run = EchoRun {
        max_message: config.max_message_size,
        conn: ws_conn_build(side, config, deflate),
        peer: ws_conn_build(peer_side, Config::default(), deflate),
        sent: Vec::new(),
        pong: None,
        end: None,
        peer_got: Vec::new(),
    };
    for chunk in seeded_chunks(stream, *seed, 64) {
        run.conn.handle_input(chunk);
        run.drain();
    }
    run.conn.handle_eof();
    run.drain();
    assert!(
        run.end.is_some(),
        "the transport ended but the connection did not"
    );
    assert!(run.conn.is_closed());
    // A finished connection stays finished, whatever else arrives.
    run.conn.handle_input(stream);
    run.drain();
    assert!(!run.conn.has_transmit());

    // The peer saw our close frame, or (1006) the transport's end.
    run.peer.handle_eof();
    loop {
        match run.peer.poll_event() {
            Ok(Some(event)) => run.peer_got.push(event),
            Ok(None) => break,
            Err(error) => panic!("peer rejected what we sent: {error}"),
        }
    }
    let peer_got: Vec<Sent> = run
        .peer_got
        .into_iter()
        .map(|event| match event {
            Event::Pong(payload) => Sent::Pong(payload),
            Event::Text(text) => Sent::Text(text.into_bytes()),
            Event::Binary(bytes) => Sent::Binary(bytes),
            Event::Close(frame) => Sent::Close(frame.code),
            other => panic!("peer got {other:?}, which we never send"),
        })
        .collect();
    assert_eq!(peer_got, run.sent);
}

/// Everything a [`Connection`] did with one input: its events (or the
/// error that ended them) and the bytes it transmitted.
#[derive(Debug, PartialEq)]
struct ConnRun {
    events: Vec<Result<Event, ProtocolError>>,
    transmitted: Vec<u8>,
}

impl ConnRun {
    /// Drains `conn`'s events (up to and including an error) and transmit
    /// queue into the run.
    fn drain(&mut self, conn: &mut Connection) {
        if !matches!(self.events.last(), Some(Err(_))) {
            loop {
                match conn.poll_event() {
                    Ok(Some(event)) => self.events.push(Ok(event)),
                    Ok(None) => break,
                    Err(error) => {
                        self.events.push(Err(error));
                        break;
                    }
                }
            }
        }
        while let Some(bytes) = conn.poll_transmit() {
            self.transmitted.extend_from_slice(&bytes);
        }
    }
}

/// Fuzzes [`Connection::fill_input`], the read straight into the input
/// buffer while a large frame arrives, against `handle_input`: the same
/// peer bytes in the same chunks, fed one way to one connection and the
/// other way to a second, must give the same events, the same error and
/// the same transmitted bytes.
///
/// Input: byte 0 bit 0 picks the side (0 server, so the input is what a
/// client sends; 1 client); byte 1 seeds the chunk sizes (1..=255 bytes);
/// the rest is the peer's bytes. The limits are roomy (1 MiB frames and
/// messages), so a header that declares a long frame leaves the rest of it
/// to `fill_input` whatever the input's length.
///
/// Checks also that `fill_input` offers only room already reserved (the
/// input buffer never grows in it) and reports exactly what was appended.
pub fn ws_conn_in_place(data: &[u8]) {
    let [cfg, seed, stream @ ..] = data else {
        return;
    };
    let side = if cfg & 1 == 0 {
        Side::Server
    } else {
        Side::Client
    };
    let config = Config::default()
        .with_max_frame_size(1 << 20)
        .with_max_message_size(1 << 20);
    let mut copied = ws_conn_build(side, config.clone(), None);
    let mut in_place = ws_conn_build(side, config, None);
    let mut expected = ConnRun {
        events: Vec::new(),
        transmitted: Vec::new(),
    };
    let mut got = ConnRun {
        events: Vec::new(),
        transmitted: Vec::new(),
    };
    for chunk in seeded_chunks(stream, *seed, 255) {
        copied.handle_input(chunk);
        expected.drain(&mut copied);
        let mut rest = chunk;
        while !rest.is_empty() {
            let read = in_place.fill_input(|buf| {
                let room = buf.get_ref().capacity();
                let n = rest.len().min(buf.remaining_mut());
                buf.put_slice(&rest[..n]);
                assert_eq!(buf.get_ref().capacity(), room, "the read grew the buffer");
                n
            });
            match read {
                Some((n, appended)) => {
                    assert_eq!(n, appended, "fill_input reports what was appended");
                    assert!(n > 0, "fill_input offers room");
                    rest = &rest[n..];
                }
                None => {
                    in_place.handle_input(rest);
                    rest = &[];
                }
            }
            got.drain(&mut in_place);
        }
    }
    for (conn, run) in [(&mut copied, &mut expected), (&mut in_place, &mut got)] {
        conn.handle_eof();
        run.drain(conn);
    }
    assert_eq!(got, expected);
}

/// The state of one [`ws_conn`] run.
struct EchoRun {
    /// The connection under test.
    conn: Connection,
    /// Its peer, fed everything `conn` transmits.
    peer: Connection,
    /// `conn`'s `max_message_size`.
    max_message: usize,
    /// What `conn` should have transmitted so far, in order.
    sent: Vec<Sent>,
    /// The pong `conn` should have waiting: the latest ping's since the
    /// last transmit. It goes out with the next transmit, or before
    /// `conn`'s close frame.
    pong: Option<Bytes>,
    /// How `conn` ended: the close code it reported, or its error.
    end: Option<Result<CloseCode, ProtocolError>>,
    /// What the peer decoded so far.
    peer_got: Vec<Event>,
}

impl EchoRun {
    /// Drains `conn`'s events (echoing messages) and transmit queue, and
    /// feeds what it transmitted to the peer.
    fn drain(&mut self) {
        let conn = &mut self.conn;
        loop {
            let polled = conn.poll_event();
            match (&self.end, polled) {
                (None, Ok(None)) => break,
                (None, Ok(Some(event))) => match event {
                    Event::Text(text) => {
                        assert!(text.len() <= self.max_message, "text of {}", text.len());
                        assert_eq!(conn.send_text(&text), Ok(()));
                        self.sent.push(Sent::Text(text.into_bytes()));
                    }
                    Event::Binary(bytes) => {
                        assert!(bytes.len() <= self.max_message, "binary of {}", bytes.len());
                        assert_eq!(conn.send_binary(&bytes), Ok(()));
                        self.sent.push(Sent::Binary(bytes));
                    }
                    Event::Ping(payload) => {
                        assert!(payload.len() <= MAX_CONTROL_PAYLOAD);
                        self.pong = Some(payload);
                    }
                    Event::Pong(payload) => assert!(payload.len() <= MAX_CONTROL_PAYLOAD),
                    Event::Close(frame) => {
                        assert!(conn.is_closed() && !conn.is_open());
                        // Our reply echoes the code (none if the peer sent
                        // none, which reads back as 1005); after the
                        // transport ended (1006) nothing is sent, and our
                        // peer sees the end too.
                        self.sent.extend(self.pong.take().map(Sent::Pong));
                        self.sent.push(Sent::Close(frame.code));
                        self.end = Some(Ok(frame.code));
                    }
                    other => panic!("unknown event {other:?}"),
                },
                (None, Err(error)) => {
                    assert!(conn.is_closed() && !conn.is_open());
                    assert!(!error.to_string().is_empty());
                    self.sent.extend(self.pong.take().map(Sent::Pong));
                    self.sent.push(Sent::Close(error.close_code()));
                    self.end = Some(Err(error));
                }
                (Some(Ok(_)), after) => {
                    assert_eq!(after, Ok(None), "an event after Close");
                    break;
                }
                (Some(Err(error)), after) => {
                    assert_eq!(after.as_ref(), Err(error), "errors are final");
                    break;
                }
            }
        }
        // The transmit sends the waiting pong after what came before it.
        self.sent.extend(self.pong.take().map(Sent::Pong));
        loop {
            let pending = conn.has_transmit();
            let Some(bytes) = conn.poll_transmit() else {
                assert!(!pending, "has_transmit but nothing to transmit");
                break;
            };
            assert!(pending && !bytes.is_empty());
            self.peer.handle_input(&bytes);
        }
        loop {
            match self.peer.poll_event() {
                Ok(Some(event)) => self.peer_got.push(event),
                Ok(None) => break,
                Err(error) => panic!("peer rejected what we sent: {error}"),
            }
        }
    }
}
