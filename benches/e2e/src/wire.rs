//! The load generator's side of the wire: writing many request frames into
//! one buffer, and counting (and checking) the echoed messages in whatever
//! chunks the socket returns them.
//!
//! Every message the load generator sends is the same payload of the chosen
//! size, so the echo can be checked byte for byte at the cost of a `memcmp`.

use std::fmt;

use bytes::{Buf, BufMut, BytesMut};

/// The largest message the load generator sends: 16 MiB.
pub const MAX_SIZE: usize = 16 << 20;

/// A wire protocol of the echo servers under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// Raw TCP: a message is `size` bytes of the stream; the echo is checked
    /// as a stream and counted in whole messages.
    Raw,
    /// Each message is preceded by its length as a 4-byte big-endian integer.
    Lp,
    /// WebSocket binary messages; client frames are masked (RFC 6455 5.3).
    Ws,
}

impl Proto {
    /// The name used on command lines and in results.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Lp => "lp",
            Self::Ws => "ws",
        }
    }
}

/// A small, fast generator (xorshift64*) for WebSocket masking keys and
/// handshake nonces.
///
/// RFC 6455 asks for unpredictable masks so that a hostile page cannot steer
/// the bytes a browser puts on the wire; a load generator that talks only to
/// a server on the same machine needs masks that are cheap and differ from
/// frame to frame, which this gives.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (any value; zero is replaced).
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// The payload every message carries: `size` bytes of a fixed pattern.
#[must_use]
pub fn payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8).collect()
}

/// Writes request frames carrying one payload.
#[derive(Debug, Clone)]
pub struct Encoder {
    proto: Proto,
    payload: Vec<u8>,
    /// For raw and length-prefixed frames, the whole frame (they never
    /// change); for WebSocket, the header without its masking key.
    prefix: Vec<u8>,
    rng: Rng,
}

impl Encoder {
    /// An encoder of `payload` in `proto`, masking WebSocket frames with keys
    /// drawn from `rng`.
    ///
    /// # Errors
    ///
    /// If the payload is longer than [`MAX_SIZE`].
    pub fn new(proto: Proto, payload: Vec<u8>, rng: Rng) -> Result<Self, WireError> {
        let len = payload.len();
        if len > MAX_SIZE {
            return Err(WireError::TooLarge(len));
        }
        let mut prefix = Vec::with_capacity(len + 14);
        match proto {
            Proto::Raw => prefix.extend_from_slice(&payload),
            Proto::Lp => {
                // MAX_SIZE fits in a u32.
                prefix.put_u32(len as u32);
                prefix.extend_from_slice(&payload);
            }
            Proto::Ws => {
                prefix.push(0x82); // FIN, binary
                if len < 126 {
                    prefix.push(0x80 | len as u8);
                } else if let Ok(short) = u16::try_from(len) {
                    prefix.push(0x80 | 126);
                    prefix.put_u16(short);
                } else {
                    prefix.push(0x80 | 127);
                    prefix.put_u64(len as u64);
                }
            }
        }
        Ok(Self {
            proto,
            payload,
            prefix,
            rng,
        })
    }

    /// The bytes one message takes on the wire.
    #[must_use]
    pub fn frame_len(&self) -> usize {
        match self.proto {
            Proto::Raw | Proto::Lp => self.prefix.len(),
            Proto::Ws => self.prefix.len() + 4 + self.payload.len(),
        }
    }

    /// Appends `count` request frames to `out`.
    pub fn encode(&mut self, count: usize, out: &mut BytesMut) {
        out.reserve(count * self.frame_len());
        for _ in 0..count {
            out.extend_from_slice(&self.prefix);
            if self.proto == Proto::Ws {
                // One 64-bit draw gives the key; the 8-byte pattern repeats it.
                let key = (self.rng.next_u64() as u32).to_be_bytes();
                out.extend_from_slice(&key);
                let start = out.len();
                out.extend_from_slice(&self.payload);
                mask(&mut out[start..], key);
            }
        }
    }
}

/// XORs `data` with the 4-byte masking `key`, 8 bytes at a time.
pub fn mask(data: &mut [u8], key: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (byte, k) in chunks.into_remainder().iter_mut().zip(key) {
        *byte ^= k;
    }
}

/// What was wrong with the echo.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// A message longer than [`MAX_SIZE`] was asked for.
    TooLarge(usize),
    /// An echoed message has another length than the one sent.
    Length {
        /// The length sent.
        expected: usize,
        /// The length the server declared.
        got: u64,
    },
    /// Echoed bytes differ from the payload sent.
    Corrupt,
    /// The server sent a masked frame, RSV bits, or an unknown opcode.
    BadFrame(&'static str),
    /// The server sent a WebSocket close frame.
    Closed,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge(len) => write!(f, "message of {len} bytes is over {MAX_SIZE}"),
            Self::Length { expected, got } => {
                write!(f, "echoed message has {got} bytes, sent {expected}")
            }
            Self::Corrupt => write!(f, "echoed bytes differ from the bytes sent"),
            Self::BadFrame(why) => write!(f, "bad frame from server: {why}"),
            Self::Closed => write!(f, "server sent a close frame"),
        }
    }
}

impl std::error::Error for WireError {}

/// Counts echoed messages, checking each against the payload sent.
#[derive(Debug, Clone)]
pub struct Decoder {
    proto: Proto,
    payload: Vec<u8>,
    /// Raw: bytes of the current message already seen. WebSocket: bytes of
    /// the current fragmented message already seen.
    offset: usize,
}

impl Decoder {
    /// A decoder for echoes of `payload` in `proto`.
    #[must_use]
    pub fn new(proto: Proto, payload: Vec<u8>) -> Self {
        Self {
            proto,
            payload,
            offset: 0,
        }
    }

    /// Consumes every complete frame at the front of `input` and returns how
    /// many whole messages they completed. An incomplete frame stays in
    /// `input` (raw bytes are always consumed: they are checked as they
    /// come). WebSocket pings and pongs are skipped.
    ///
    /// # Errors
    ///
    /// When the echo is not what was sent; see [`WireError`].
    pub fn decode(&mut self, input: &mut BytesMut) -> Result<usize, WireError> {
        match self.proto {
            Proto::Raw => self.decode_raw(input),
            Proto::Lp => self.decode_lp(input),
            Proto::Ws => self.decode_ws(input),
        }
    }

    fn decode_raw(&mut self, input: &mut BytesMut) -> Result<usize, WireError> {
        let size = self.payload.len();
        if size == 0 {
            // Nothing is sent, so nothing can come back as a message.
            input.clear();
            return Ok(0);
        }
        let mut done = 0;
        let mut rest = &input[..];
        while !rest.is_empty() {
            let take = rest.len().min(size - self.offset);
            let (now, later) = rest.split_at(take);
            if now != &self.payload[self.offset..self.offset + take] {
                return Err(WireError::Corrupt);
            }
            self.offset += take;
            if self.offset == size {
                self.offset = 0;
                done += 1;
            }
            rest = later;
        }
        input.clear();
        Ok(done)
    }

    fn decode_lp(&mut self, input: &mut BytesMut) -> Result<usize, WireError> {
        let size = self.payload.len();
        let mut done = 0;
        let mut at = 0;
        while let Some(head) = input.get(at..at + 4) {
            let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            if len as usize != size {
                return Err(WireError::Length {
                    expected: size,
                    got: u64::from(len),
                });
            }
            let Some(body) = input.get(at + 4..at + 4 + size) else {
                break;
            };
            if body != self.payload.as_slice() {
                return Err(WireError::Corrupt);
            }
            at += 4 + size;
            done += 1;
        }
        input.advance(at);
        Ok(done)
    }

    fn decode_ws(&mut self, input: &mut BytesMut) -> Result<usize, WireError> {
        let size = self.payload.len();
        let mut done = 0;
        let mut at = 0;
        while let Some(&[b0, b1]) = input.get(at..at + 2) {
            if b0 & 0x70 != 0 {
                return Err(WireError::BadFrame("RSV bits set"));
            }
            if b1 & 0x80 != 0 {
                return Err(WireError::BadFrame("server frame is masked"));
            }
            let (len, head) = match b1 & 0x7F {
                126 => match input.get(at + 2..at + 4) {
                    Some(&[a, b]) => (u64::from(u16::from_be_bytes([a, b])), 4),
                    _ => break,
                },
                127 => match input.get(at + 2..at + 10) {
                    Some(bytes) => {
                        let mut word = [0u8; 8];
                        word.copy_from_slice(bytes);
                        (u64::from_be_bytes(word), 10)
                    }
                    None => break,
                },
                short => (u64::from(short), 2),
            };
            let fin = b0 & 0x80 != 0;
            let opcode = b0 & 0x0F;
            let data = matches!(opcode, 0x0..=0x2);
            // Checked before the frame is waited for, so that a wrong length
            // never makes the buffer grow.
            let limit = if data { size - self.offset } else { 125 };
            if len > limit as u64 {
                return Err(WireError::Length {
                    expected: size,
                    got: len,
                });
            }
            let len = len as usize;
            let Some(body) = input.get(at + head..at + head + len) else {
                break;
            };
            match opcode {
                0x0..=0x2 => {
                    if (opcode == 0) != (self.offset > 0) {
                        return Err(WireError::BadFrame("unexpected continuation"));
                    }
                    if body != &self.payload[self.offset..self.offset + len] {
                        return Err(WireError::Corrupt);
                    }
                    self.offset += len;
                    if fin {
                        if self.offset != size {
                            return Err(WireError::Length {
                                expected: size,
                                got: self.offset as u64,
                            });
                        }
                        self.offset = 0;
                        done += 1;
                    }
                }
                0x8 => return Err(WireError::Closed),
                0x9 | 0xA => {}
                _ => return Err(WireError::BadFrame("unknown opcode")),
            }
            at += head + len;
        }
        input.advance(at);
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a server sends back for `frames` (WebSocket: unmasked).
    fn echo_of(proto: Proto, data: &[u8], count: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..count {
            match proto {
                Proto::Raw => {}
                Proto::Lp => out.extend_from_slice(&(data.len() as u32).to_be_bytes()),
                Proto::Ws => {
                    out.push(0x82);
                    if data.len() < 126 {
                        out.push(data.len() as u8);
                    } else if data.len() <= 0xFFFF {
                        out.push(126);
                        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
                    } else {
                        out.push(127);
                        out.extend_from_slice(&(data.len() as u64).to_be_bytes());
                    }
                }
            }
            out.extend_from_slice(data);
        }
        out
    }

    fn decode_chunked(proto: Proto, size: usize, wire: &[u8], chunk: usize) -> usize {
        let mut decoder = Decoder::new(proto, payload(size));
        let mut input = BytesMut::new();
        let mut total = 0;
        for piece in wire.chunks(chunk) {
            input.extend_from_slice(piece);
            total += decoder.decode(&mut input).unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(input.is_empty());
        total
    }

    #[test]
    fn echoes_count_in_any_chunking() {
        for proto in [Proto::Raw, Proto::Lp, Proto::Ws] {
            for size in [1, 32, 125, 126, 300, 70_000] {
                let wire = echo_of(proto, &payload(size), 5);
                for chunk in [1, 3, 64, 1 << 20] {
                    if chunk == 1 && size > 300 {
                        continue;
                    }
                    assert_eq!(
                        decode_chunked(proto, size, &wire, chunk),
                        5,
                        "{proto:?} {size} {chunk}"
                    );
                }
            }
        }
    }

    #[test]
    fn client_frames_unmask_to_payload() {
        for size in [0, 5, 125, 126, 65_535, 65_536] {
            let mut encoder = Encoder::new(Proto::Ws, payload(size), Rng::new(3))
                .unwrap_or_else(|e| panic!("{e}"));
            let mut out = BytesMut::new();
            encoder.encode(3, &mut out);
            assert_eq!(out.len(), 3 * encoder.frame_len());
            let frame = &out[..encoder.frame_len()];
            let head = encoder.frame_len() - size - 4;
            assert_eq!(frame[0], 0x82);
            assert_ne!(frame[1] & 0x80, 0, "client frames are masked");
            let mut key = [0; 4];
            key.copy_from_slice(&frame[head..head + 4]);
            let mut body = frame[head + 4..].to_vec();
            mask(&mut body, key);
            assert_eq!(body, payload(size));
            if size > 0 {
                assert_ne!(
                    out[..encoder.frame_len()],
                    out[encoder.frame_len()..][..encoder.frame_len()]
                );
            }
        }
    }

    #[test]
    fn lp_and_raw_frames() {
        let mut out = BytesMut::new();
        let mut lp =
            Encoder::new(Proto::Lp, payload(3), Rng::new(1)).unwrap_or_else(|e| panic!("{e}"));
        lp.encode(2, &mut out);
        assert_eq!(&out[..], &[0, 0, 0, 3, 0, 1, 2, 0, 0, 0, 3, 0, 1, 2]);
        out.clear();
        let mut raw =
            Encoder::new(Proto::Raw, payload(3), Rng::new(1)).unwrap_or_else(|e| panic!("{e}"));
        raw.encode(2, &mut out);
        assert_eq!(&out[..], &[0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn fragmented_echo_counts_once() {
        let data = payload(10);
        let mut wire = vec![0x02, 4];
        wire.extend_from_slice(&data[..4]);
        wire.extend_from_slice(&[0x89, 0]); // a ping between fragments
        wire.extend_from_slice(&[0x80, 6]);
        wire.extend_from_slice(&data[4..]);
        for chunk in [1, 2, 100] {
            assert_eq!(decode_chunked(Proto::Ws, 10, &wire, chunk), 1);
        }
    }

    #[test]
    fn wrong_echoes_are_errors() {
        let mut decoder = Decoder::new(Proto::Ws, payload(4));
        let mut input = BytesMut::from(&[0x82, 5, 0, 1, 2, 3, 4][..]);
        assert!(matches!(
            decoder.decode(&mut input),
            Err(WireError::Length { .. })
        ));
        // A huge declared length is refused from the header alone.
        let mut input = BytesMut::from(&[0x82, 127, 0xFF, 0, 0, 0, 0, 0, 0, 0][..]);
        assert!(matches!(
            decoder.decode(&mut input),
            Err(WireError::Length { .. })
        ));
        let mut input = BytesMut::from(&[0x82, 4, 0, 1, 2, 9][..]);
        assert_eq!(decoder.decode(&mut input), Err(WireError::Corrupt));
        let mut input = BytesMut::from(&[0x88, 0][..]);
        assert_eq!(decoder.decode(&mut input), Err(WireError::Closed));
        let mut input = BytesMut::from(&[0x82, 0x84, 0, 0, 0, 0][..]);
        assert!(matches!(
            decoder.decode(&mut input),
            Err(WireError::BadFrame(_))
        ));

        let mut lp = Decoder::new(Proto::Lp, payload(4));
        let mut input = BytesMut::from(&[0xFF, 0xFF, 0xFF, 0xFF][..]);
        assert!(matches!(
            lp.decode(&mut input),
            Err(WireError::Length { .. })
        ));

        let mut raw = Decoder::new(Proto::Raw, payload(4));
        let mut input = BytesMut::from(&[0, 1, 2, 3, 0, 7][..]);
        assert_eq!(raw.decode(&mut input), Err(WireError::Corrupt));
    }
}
