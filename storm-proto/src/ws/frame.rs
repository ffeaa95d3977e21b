//! WebSocket frame header codec and masking (RFC 6455 section 5.2).
//!
//! This module knows the wire shape of one frame and nothing about the
//! connection around it: which RSV bits an extension allows, whether a side
//! must mask, and message reassembly are [`super::Connection`]'s business.
//!
//! ```
//! use bytes::BytesMut;
//! use storm_proto::ws::frame::{FrameHeader, OpCode};
//!
//! let mut wire = BytesMut::new();
//! FrameHeader::new(OpCode::Text, 5).encode(&mut wire);
//! wire.extend_from_slice(b"Hello");
//! assert_eq!(&wire[..], b"\x81\x05Hello"); // RFC 6455 5.7: unmasked "Hello"
//!
//! let (header, header_len) = FrameHeader::decode(&wire).unwrap().unwrap();
//! assert_eq!(header.opcode, OpCode::Text);
//! assert_eq!(header.payload_len, 5);
//! assert_eq!(header_len, 2);
//! ```

use std::fmt;
use std::ops::Range;

use bytes::{BufMut, BytesMut};

/// The longest a frame header can be: 2 fixed bytes, an 8-byte extended
/// length and a 4-byte masking key.
pub const MAX_HEADER_LEN: usize = 14;

/// The largest payload a control frame (close, ping, pong) may carry.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// A frame's opcode. Reserved opcodes are a decode error, so every value of
/// this type is one a peer may legally send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OpCode {
    /// Continues a fragmented text or binary message.
    Continuation = 0x0,
    /// First (or only) frame of a UTF-8 text message.
    Text = 0x1,
    /// First (or only) frame of a binary message.
    Binary = 0x2,
    /// Starts or answers the closing handshake.
    Close = 0x8,
    /// Asks the peer for a pong with the same payload.
    Ping = 0x9,
    /// Answers a ping (or serves as a unidirectional heartbeat).
    Pong = 0xA,
}

impl OpCode {
    /// The opcode for the low four bits of a frame's first byte, or `None`
    /// for the reserved values 0x3–0x7 and 0xB–0xF.
    #[must_use]
    pub const fn from_u8(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    /// Close, ping and pong are control frames: at most 125 bytes, never
    /// fragmented, allowed between the fragments of a message.
    #[must_use]
    pub const fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// A decoded (or to-be-encoded) frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Final fragment of a message.
    pub fin: bool,
    /// RSV1: "per-message compressed" under permessage-deflate.
    pub rsv1: bool,
    /// RSV2: no extension Storm knows uses it.
    pub rsv2: bool,
    /// RSV3: no extension Storm knows uses it.
    pub rsv3: bool,
    /// What the frame carries.
    pub opcode: OpCode,
    /// The masking key, present on every client-to-server frame.
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes (the wire allows up to 2^63 - 1).
    pub payload_len: u64,
}

impl FrameHeader {
    /// A final, unmasked header with no RSV bits.
    #[must_use]
    pub const fn new(opcode: OpCode, payload_len: u64) -> Self {
        Self {
            fin: true,
            rsv1: false,
            rsv2: false,
            rsv3: false,
            opcode,
            mask: None,
            payload_len,
        }
    }

    /// Decodes a header from the front of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` does not yet hold the whole header (read
    /// more and call again: nothing is consumed), or the header and its length
    /// in bytes. The payload follows at `buf[header_len..]`.
    ///
    /// # Errors
    ///
    /// A [`FrameError`] for what no valid frame can contain: a reserved opcode,
    /// a 64-bit length with its top bit set, a control frame that is
    /// fragmented or longer than 125 bytes. Each maps to close code 1002.
    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>, FrameError> {
        let [b0, b1, ..] = *buf else {
            return Ok(None);
        };
        let opcode = OpCode::from_u8(b0 & 0x0F).ok_or(FrameError::ReservedOpcode(b0 & 0x0F))?;
        let fin = b0 & 0x80 != 0;
        let masked = b1 & 0x80 != 0;
        let (payload_len, mut pos) = match b1 & 0x7F {
            126 => match buf.get(2..4) {
                Some(&[a, b]) => (u64::from(u16::from_be_bytes([a, b])), 4),
                _ => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(bytes) => {
                    let mut len = [0u8; 8];
                    len.copy_from_slice(bytes);
                    let len = u64::from_be_bytes(len);
                    if len >> 63 != 0 {
                        return Err(FrameError::LengthOverflow);
                    }
                    (len, 10)
                }
                None => return Ok(None),
            },
            len => (u64::from(len), 2),
        };
        if opcode.is_control() {
            if !fin {
                return Err(FrameError::FragmentedControl);
            }
            if payload_len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(FrameError::ControlTooLong(payload_len));
            }
        }
        let mask = if masked {
            match buf.get(pos..pos + 4) {
                Some(&[a, b, c, d]) => {
                    pos += 4;
                    Some([a, b, c, d])
                }
                _ => return Ok(None),
            }
        } else {
            None
        };
        let header = Self {
            fin,
            rsv1: b0 & 0x40 != 0,
            rsv2: b0 & 0x20 != 0,
            rsv3: b0 & 0x10 != 0,
            opcode,
            mask,
            payload_len,
        };
        Ok(Some((header, pos)))
    }

    /// How many bytes [`encode`](Self::encode) writes for this header.
    #[must_use]
    pub const fn encoded_len(&self) -> usize {
        let len = match self.payload_len {
            0..=125 => 2,
            126..=0xFFFF => 4,
            _ => 10,
        };
        if self.mask.is_some() { len + 4 } else { len }
    }

    /// Appends the header (not the payload) to `dst`, using the shortest
    /// length encoding.
    pub fn encode(&self, dst: &mut BytesMut) {
        let (header, len) = self.to_bytes();
        dst.extend_from_slice(header.get(..len).unwrap_or_default());
    }

    /// The header's first byte: FIN, the RSV bits and the opcode.
    pub(crate) const fn first_byte(&self) -> u8 {
        self.opcode as u8
            | ((self.fin as u8) << 7)
            | ((self.rsv1 as u8) << 6)
            | ((self.rsv2 as u8) << 5)
            | ((self.rsv3 as u8) << 4)
    }

    /// The encoded header in a fixed buffer, and its length: built in
    /// registers, copied out once.
    fn to_bytes(self) -> ([u8; MAX_HEADER_LEN], usize) {
        let b0 = self.first_byte();
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut out = [0u8; MAX_HEADER_LEN];
        out[0] = b0;
        // The match arms bound each value, so the casts cannot truncate.
        let mut len = match self.payload_len {
            len @ 0..=125 => {
                out[1] = mask_bit | len as u8;
                2
            }
            len @ 126..=0xFFFF => {
                out[1] = mask_bit | 126;
                out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                4
            }
            len => {
                out[1] = mask_bit | 127;
                out[2..10].copy_from_slice(&len.to_be_bytes());
                10
            }
        };
        if let Some(mask) = self.mask {
            out[len..len + 4].copy_from_slice(&mask);
            len += 4;
        }
        (out, len)
    }
}

/// Appends one whole frame to `dst`: the header, then `payload`, masked with
/// `header.mask` if it has one. `header.payload_len` is set from `payload`.
pub fn encode_frame(mut header: FrameHeader, payload: &[u8], dst: &mut BytesMut) {
    if header.mask.is_none() && encode_short_unmasked(header.first_byte(), payload, dst) {
        return;
    }
    header.payload_len = payload.len() as u64;
    let (bytes, len) = header.to_bytes();
    dst.reserve(len + payload.len());
    dst.extend_from_slice(bytes.get(..len).unwrap_or_default());
    let start = dst.len();
    dst.extend_from_slice(payload);
    if let Some(mask) = header.mask {
        apply_mask(&mut dst[start..], mask, 0);
    }
}

/// Appends an unmasked frame whose header's first byte is `first_byte`
/// (FIN, RSV bits, opcode) carrying `payload`, when the payload fits the
/// 7-bit length (at most 125 bytes), and says whether it did; nothing is
/// appended otherwise. The usual server frame: two header bytes, then the
/// payload, with one capacity check.
#[inline]
pub(crate) fn encode_short_unmasked(first_byte: u8, payload: &[u8], dst: &mut BytesMut) -> bool {
    let Ok(len @ 0..=125) = u8::try_from(payload.len()) else {
        return false;
    };
    dst.reserve(2 + payload.len());
    dst.put_u16(u16::from_be_bytes([first_byte, len]));
    dst.extend_from_slice(payload);
    true
}

/// Appends `payload` as one data message: one frame with `first`'s header,
/// or, when `fragment` is non-zero and the payload longer, fragments of at
/// most `fragment` bytes, the first with `first`'s header, the rest
/// continuations, the last with `fin`. Each frame is masked with the key
/// `mask` gives, if it gives one (a client's fresh key per frame).
pub fn encode_message(
    first: FrameHeader,
    payload: &[u8],
    fragment: usize,
    mut mask: impl FnMut() -> Option<[u8; 4]>,
    dst: &mut BytesMut,
) {
    if fragment == 0 || payload.len() <= fragment {
        encode_frame(
            FrameHeader {
                mask: mask(),
                ..first
            },
            payload,
            dst,
        );
        return;
    }
    for (mut header, range) in message_frames(first, payload.len(), fragment) {
        header.mask = mask();
        encode_frame(header, payload.get(range).unwrap_or_default(), dst);
    }
}

/// The frames [`encode_message`] cuts a data message of `len` payload
/// bytes into: each frame's header (as `first` says, unmasked, its
/// `payload_len` not yet set) and the range of the payload it carries.
pub(crate) fn message_frames(
    first: FrameHeader,
    len: usize,
    fragment: usize,
) -> impl Iterator<Item = (FrameHeader, Range<usize>)> {
    let step = if fragment == 0 || len <= fragment {
        len.max(1)
    } else {
        fragment
    };
    let count = len.div_ceil(step).max(1);
    (0..count).map(move |i| {
        let mut header = if i == 0 {
            first
        } else {
            FrameHeader::new(OpCode::Continuation, 0)
        };
        if count > 1 {
            header.fin = i + 1 == count;
        }
        let start = i * step;
        (header, start..len.min(start + step))
    })
}

/// XORs `buf` with the masking key, as if `buf` began `offset` bytes into the
/// payload (so a payload can be unmasked piece by piece as it arrives).
/// Masking and unmasking are the same operation.
///
/// Works a machine word at a time; on x86-64 the compiler vectorises the
/// inner loop.
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    // The key as it stands `offset` bytes in: rotating the little-endian
    // word right by a byte moves the key's next byte to the front.
    let key = u32::from_le_bytes(mask).rotate_right(8 * (offset % 4) as u32);
    let word = u64::from(key) | (u64::from(key) << 32);
    let mut blocks = buf.chunks_exact_mut(32);
    for block in &mut blocks {
        for lane in block.chunks_exact_mut(8) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(lane);
            lane.copy_from_slice(&(u64::from_le_bytes(bytes) ^ word).to_le_bytes());
        }
    }
    let rest = blocks.into_remainder();
    let mut words = rest.chunks_exact_mut(8);
    for lane in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(lane);
        lane.copy_from_slice(&(u64::from_le_bytes(bytes) ^ word).to_le_bytes());
    }
    for (byte, key) in words
        .into_remainder()
        .iter_mut()
        .zip(key.to_le_bytes().into_iter().cycle())
    {
        *byte ^= key;
    }
}

/// [`apply_mask`] from the payload's start, and whether every byte it
/// wrote is ASCII (a text payload that is needs no other UTF-8 check).
///
/// A small payload is unmasked and checked in one pass, a word at a time:
/// each unmasked word passes through a register anyway, so the check
/// costs an OR. A larger one takes `apply_mask`'s vectorised loop, then
/// `is_ascii`: the one pass's OR keeps the compiler from vectorising it.
pub(crate) fn unmask_ascii(buf: &mut [u8], mask: [u8; 4]) -> bool {
    if buf.len() > ONE_PASS_MAX {
        apply_mask(buf, mask, 0);
        return buf.is_ascii();
    }
    let word = u64::from(u32::from_le_bytes(mask)) * 0x1_0000_0001;
    // Every byte written, ORed together: its high bits say whether any of
    // them was not ASCII.
    let mut seen = 0u64;
    let mut rest = buf;
    while rest.len() >= 32 {
        let (block, tail) = std::mem::take(&mut rest).split_at_mut(32);
        for lane in block.chunks_exact_mut(8) {
            seen |= xor_lane(lane, word);
        }
        rest = tail;
    }
    while rest.len() >= 8 {
        let (lane, tail) = std::mem::take(&mut rest).split_at_mut(8);
        seen |= xor_lane(lane, word);
        rest = tail;
    }
    // Fewer than 8 bytes left, a whole number of words in: the key's
    // phase is `word`'s first byte again.
    for (byte, key) in rest.iter_mut().zip(word.to_le_bytes()) {
        *byte ^= key;
        seen |= u64::from(*byte);
    }
    seen & 0x8080_8080_8080_8080 == 0
}

/// The largest payload [`unmask_ascii`] unmasks and checks in one pass.
const ONE_PASS_MAX: usize = 256;

/// XORs an 8-byte lane with `word` in place; the lane's new value.
#[inline(always)]
fn xor_lane(lane: &mut [u8], word: u64) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(lane);
    let value = u64::from_le_bytes(bytes) ^ word;
    lane.copy_from_slice(&value.to_le_bytes());
    value
}

/// A frame header no valid frame can have. Every variant is the peer's
/// fault and closes the connection with 1002 (protocol error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// Opcodes 0x3–0x7 and 0xB–0xF are reserved.
    ReservedOpcode(u8),
    /// A 64-bit payload length must have its most significant bit clear.
    LengthOverflow,
    /// Control frames may not be fragmented.
    FragmentedControl,
    /// Control frames carry at most 125 bytes; this one declared more.
    ControlTooLong(u64),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReservedOpcode(op) => write!(f, "reserved opcode {op:#x}"),
            Self::LengthOverflow => f.write_str("64-bit payload length with the top bit set"),
            Self::FragmentedControl => f.write_str("fragmented control frame"),
            Self::ControlTooLong(len) => {
                write!(
                    f,
                    "control frame of {len} bytes (limit {MAX_CONTROL_PAYLOAD})"
                )
            }
        }
    }
}

impl std::error::Error for FrameError {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(buf: &[u8]) -> (FrameHeader, usize) {
        FrameHeader::decode(buf).unwrap().unwrap()
    }

    // RFC 6455 section 5.7 examples.
    const UNMASKED_HELLO: &[u8] = &[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
    const MASKED_HELLO: &[u8] = &[
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    const FRAGMENTED_HEL: &[u8] = &[0x01, 0x03, 0x48, 0x65, 0x6c];
    const FRAGMENTED_LO: &[u8] = &[0x80, 0x02, 0x6c, 0x6f];
    const UNMASKED_PING: &[u8] = &[0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
    const MASKED_PONG: &[u8] = &[
        0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];

    #[test]
    fn rfc_5_7_unmasked_text() {
        let (h, n) = decode_all(UNMASKED_HELLO);
        assert_eq!(
            (h.fin, h.opcode, h.mask, h.payload_len, n),
            (true, OpCode::Text, None, 5, 2)
        );
        assert_eq!(&UNMASKED_HELLO[n..], b"Hello");
    }

    #[test]
    fn rfc_5_7_masked_text() {
        let (h, n) = decode_all(MASKED_HELLO);
        assert_eq!(h.mask, Some([0x37, 0xfa, 0x21, 0x3d]));
        let mut payload = MASKED_HELLO[n..].to_vec();
        apply_mask(&mut payload, h.mask.unwrap(), 0);
        assert_eq!(payload, b"Hello");
        // And encoding the same frame reproduces the bytes exactly.
        let mut out = BytesMut::new();
        encode_frame(h, b"Hello", &mut out);
        assert_eq!(&out[..], MASKED_HELLO);
    }

    #[test]
    fn rfc_5_7_fragments_and_control() {
        let (h, _) = decode_all(FRAGMENTED_HEL);
        assert_eq!((h.fin, h.opcode), (false, OpCode::Text));
        let (h, _) = decode_all(FRAGMENTED_LO);
        assert_eq!((h.fin, h.opcode), (true, OpCode::Continuation));
        let (h, _) = decode_all(UNMASKED_PING);
        assert_eq!((h.opcode, h.payload_len), (OpCode::Ping, 5));
        let (h, n) = decode_all(MASKED_PONG);
        assert_eq!((h.opcode, n), (OpCode::Pong, 6));
    }

    #[test]
    fn rfc_5_7_extended_lengths() {
        // 256 bytes binary in a single unmasked frame: 0x82 0x7E 0x0100.
        let (h, n) = decode_all(&[0x82, 0x7E, 0x01, 0x00]);
        assert_eq!((h.opcode, h.payload_len, n), (OpCode::Binary, 256, 4));
        // 64 KiB: 0x82 0x7F 0x0000000000010000.
        let (h, n) = decode_all(&[0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!((h.payload_len, n), (65536, 10));
    }

    #[test]
    fn every_prefix_is_need_more_data() {
        for frame in [
            MASKED_HELLO,
            &[0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4],
        ] {
            let (_, n) = decode_all(frame);
            for cut in 0..n {
                assert_eq!(FrameHeader::decode(&frame[..cut]), Ok(None), "cut at {cut}");
            }
        }
    }

    #[test]
    fn invalid_headers() {
        for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            assert_eq!(
                FrameHeader::decode(&[0x80 | op, 0]),
                Err(FrameError::ReservedOpcode(op))
            );
        }
        assert_eq!(
            FrameHeader::decode(&[0x09, 0]),
            Err(FrameError::FragmentedControl)
        );
        assert_eq!(
            FrameHeader::decode(&[0x88, 126, 0, 126]),
            Err(FrameError::ControlTooLong(126))
        );
        assert_eq!(
            FrameHeader::decode(&[0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0]),
            Err(FrameError::LengthOverflow)
        );
    }

    #[test]
    fn mask_matches_bytewise_at_every_offset_and_length() {
        let mask = [0x11, 0x22, 0x44, 0x88];
        let data: Vec<u8> = (0..=255u8).cycle().take(300).collect();
        for len in 0..100 {
            for offset in 0..8 {
                let mut fast = data[..len].to_vec();
                apply_mask(&mut fast, mask, offset);
                let slow: Vec<u8> = data[..len]
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ mask[(i + offset) % 4])
                    .collect();
                assert_eq!(fast, slow, "len {len} offset {offset}");
            }
        }
    }

    #[test]
    fn unmask_ascii_unmasks_and_tells_ascii_at_every_alignment_and_length() {
        let mask = [0x11, 0x22, 0x44, 0x08];
        for len in (0..=64).chain([255, 256, 257, 300]) {
            // The payload at every alignment in memory: `start` bytes into
            // a buffer.
            for start in 0..8 {
                // ASCII, then with one non-ASCII byte at each position.
                let mut plains = vec![vec![b'a'; len]];
                plains.extend((0..len).map(|at| {
                    let mut plain = vec![b'a'; len];
                    plain[at] = 0x80 | (at as u8);
                    plain
                }));
                for plain in plains {
                    let mut buf = vec![0u8; start];
                    buf.extend_from_slice(&plain);
                    apply_mask(&mut buf[start..], mask, 0);
                    let ascii = unmask_ascii(&mut buf[start..], mask);
                    assert_eq!(&buf[start..], &plain[..], "len {len} start {start}");
                    assert_eq!(
                        ascii,
                        plain.is_ascii(),
                        "len {len} start {start} {plain:x?}"
                    );
                }
            }
        }
    }

    fn any_header() -> impl Strategy<Value = FrameHeader> {
        let opcode = prop::sample::select(vec![
            OpCode::Continuation,
            OpCode::Text,
            OpCode::Binary,
            OpCode::Close,
            OpCode::Ping,
            OpCode::Pong,
        ]);
        let len = prop_oneof![0..=125u64, 126..=0xFFFFu64, 0x10000..=(u64::MAX >> 1)];
        (any::<[bool; 4]>(), opcode, any::<Option<[u8; 4]>>(), len).prop_map(
            |([fin, rsv1, rsv2, rsv3], opcode, mask, payload_len)| {
                let (fin, payload_len) = if opcode.is_control() {
                    (true, payload_len % 126)
                } else {
                    (fin, payload_len)
                };
                FrameHeader {
                    fin,
                    rsv1,
                    rsv2,
                    rsv3,
                    opcode,
                    mask,
                    payload_len,
                }
            },
        )
    }

    proptest! {
        #[test]
        fn header_round_trips(header in any_header(), trailing in prop::collection::vec(any::<u8>(), 0..20)) {
            let mut buf = BytesMut::new();
            header.encode(&mut buf);
            prop_assert_eq!(buf.len(), header.encoded_len());
            let n = buf.len();
            buf.extend_from_slice(&trailing);
            prop_assert_eq!(FrameHeader::decode(&buf), Ok(Some((header, n))));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..32)) {
            if let Ok(Some((header, n))) = FrameHeader::decode(&bytes) {
                prop_assert!(n <= MAX_HEADER_LEN && n <= bytes.len());
                prop_assert!(!header.opcode.is_control() || header.payload_len <= 125);
            }
        }

        #[test]
        fn split_masking_equals_whole(data in prop::collection::vec(any::<u8>(), 0..200), mask in any::<[u8; 4]>(), cut in 0usize..200) {
            let cut = cut.min(data.len());
            let mut whole = data.clone();
            apply_mask(&mut whole, mask, 0);
            let mut parts = data.clone();
            let (a, b) = parts.split_at_mut(cut);
            apply_mask(a, mask, 0);
            apply_mask(b, mask, cut);
            prop_assert_eq!(whole, parts);
        }
    }
}
