//! The broker frame: a 24-byte header and a payload.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{ConfigError, RequestId, non_zero};

/// Length of the frame header in bytes.
pub const HEADER_LEN: usize = 24;

/// The only protocol version: the first byte of every frame.
pub const VERSION: u8 = 1;

/// Flag on a `Response` frame: more `Response` frames follow for the same
/// request. The last (or only) `Response` frame has it clear.
pub const FLAG_MORE: u16 = 0x0001;

/// The type of a frame (byte 1 of the header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FrameType {
    /// `1`: opens a request (or, as the first frame on a connection, carries
    /// the [`Registration`](super::Registration)).
    Start,
    /// `2`: a piece of request data.
    Chunk,
    /// `3`: the request is complete.
    End,
    /// `4`: (a piece of) the response; see [`FLAG_MORE`].
    Response,
    /// `5`: the request failed or was cancelled; payload is an
    /// [`ErrorPayload`](super::ErrorPayload).
    Error,
}

impl FrameType {
    /// The byte on the wire.
    #[must_use]
    pub const fn to_u8(self) -> u8 {
        match self {
            Self::Start => 1,
            Self::Chunk => 2,
            Self::End => 3,
            Self::Response => 4,
            Self::Error => 5,
        }
    }

    /// The type for a wire byte, `None` if it is not one.
    #[must_use]
    pub const fn from_u8(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Start),
            2 => Some(Self::Chunk),
            3 => Some(Self::End),
            4 => Some(Self::Response),
            5 => Some(Self::Error),
            _ => None,
        }
    }
}

/// One broker frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The frame type.
    pub frame_type: FrameType,
    /// The flags (see [`FLAG_MORE`]); unknown bits are carried unchanged.
    pub flags: u16,
    /// The request this frame belongs to.
    pub request_id: RequestId,
    /// The payload, shared without copying with the buffer it was cut from.
    pub payload: Bytes,
}

impl Frame {
    /// A frame with no flags.
    #[must_use]
    pub fn new(frame_type: FrameType, request_id: RequestId, payload: Bytes) -> Self {
        Self {
            frame_type,
            flags: 0,
            request_id,
            payload,
        }
    }

    /// True for a `Response` frame with [`FLAG_MORE`] set.
    #[must_use]
    pub fn has_more(&self) -> bool {
        self.frame_type == FrameType::Response && self.flags & FLAG_MORE != 0
    }

    /// Bytes this frame takes on the wire (header + payload, saturating).
    #[must_use]
    pub fn wire_len(&self) -> usize {
        HEADER_LEN.saturating_add(self.payload.len())
    }
}

/// Settings of a [`FrameCodec`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FrameConfig {
    /// The largest payload decoded or encoded. A peer declaring more gets
    /// [`FrameError::TooLarge`] as soon as the 24 header bytes arrive,
    /// before any of the payload is buffered. Between 1 and `u32::MAX`.
    ///
    /// Memory: a connection's read buffer needs up to `24 + max_payload`
    /// bytes (plus one socket read).
    ///
    /// Default: [`FrameConfig::DEFAULT_MAX_PAYLOAD`] (1 MiB).
    pub max_payload: usize,
}

impl FrameConfig {
    /// Default of [`max_payload`](Self::max_payload): 1 MiB.
    pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;
}

impl Default for FrameConfig {
    fn default() -> Self {
        Self {
            max_payload: Self::DEFAULT_MAX_PAYLOAD,
        }
    }
}

/// Decodes and encodes broker frames (the tokio-util codec shape, no I/O).
///
/// The caller keeps one read buffer per connection, appends what the socket
/// returned in any chunking and calls [`decode`](Self::decode) until it
/// returns `Ok(None)`. Payloads are cut out of the buffer with
/// `split_to`/`freeze`: no copy. The codec holds no state besides its limit,
/// so one codec can serve every connection.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_payload: usize,
}

impl FrameCodec {
    /// Builds a codec.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] if `max_payload` is zero or above `u32::MAX`.
    pub fn new(config: FrameConfig) -> Result<Self, ConfigError> {
        non_zero("max_payload", config.max_payload)?;
        if u32::try_from(config.max_payload).is_err() {
            return Err(ConfigError::TooLarge {
                field: "max_payload",
                value: config.max_payload,
                max: u32::MAX as usize,
            });
        }
        Ok(Self {
            max_payload: config.max_payload,
        })
    }

    /// The configured maximum payload.
    #[must_use]
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Cuts the next frame out of the front of `src`.
    ///
    /// Returns `Ok(None)` (leaving `src` untouched) while `src` holds less
    /// than a whole frame. The version and type are checked as soon as their
    /// byte is there, the declared length as soon as the header is complete,
    /// so after `Ok(None)` `src` holds less than `24 + max_payload` bytes.
    ///
    /// # Errors
    ///
    /// A [`FrameError`] (the peer's fault; close the connection). Errors are
    /// final: `src` is not consumed, so decoding again fails the same way.
    pub fn decode(&self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if let Some(&version) = src.first() {
            if version != VERSION {
                return Err(FrameError::UnsupportedVersion(version));
            }
        }
        let Some(&type_byte) = src.get(1) else {
            return Ok(None);
        };
        let frame_type = FrameType::from_u8(type_byte).ok_or(FrameError::UnknownType(type_byte))?;
        let Some(header) = src.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let [_, _, f0, f1, rest @ ..] = *header;
        let (id, len) = rest.split_at(16);
        let flags = u16::from_be_bytes([f0, f1]);
        let mut id_bytes = [0; 16];
        id_bytes.copy_from_slice(id);
        let mut len_bytes = [0; 4];
        len_bytes.copy_from_slice(len);
        let len = usize::try_from(u32::from_be_bytes(len_bytes)).unwrap_or(usize::MAX);
        if len > self.max_payload {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_payload,
            });
        }
        if src.len() - HEADER_LEN < len {
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        Ok(Some(Frame {
            frame_type,
            flags,
            request_id: RequestId::from_bytes(id_bytes),
            payload: src.split_to(len).freeze(),
        }))
    }

    /// The request id in the header at the front of `src`: `Some` when
    /// `src` holds a whole header of this [`VERSION`], whatever its type
    /// and declared length (another version's layout is unknown). Lets a
    /// receiver answer a frame it refuses under the frame's request id.
    #[must_use]
    pub fn peek_request_id(src: &[u8]) -> Option<RequestId> {
        match src.first_chunk::<HEADER_LEN>()? {
            [VERSION, _, _, _, rest @ ..] => {
                let mut id = [0; 16];
                id.copy_from_slice(rest.get(..16)?);
                Some(RequestId::from_bytes(id))
            }
            _ => None,
        }
    }

    /// Appends `frame` (header and payload) to `dst`.
    ///
    /// # Errors
    ///
    /// [`EncodeError::PayloadTooLarge`] (local misuse) if the payload is
    /// longer than the maximum; `dst` is then untouched.
    pub fn encode(&self, frame: &Frame, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let len = frame.payload.len();
        let too_large = EncodeError::PayloadTooLarge {
            len,
            max: self.max_payload,
        };
        if len > self.max_payload {
            return Err(too_large);
        }
        let declared = u32::try_from(len).map_err(|_| too_large)?;
        dst.reserve(frame.wire_len());
        dst.put_u8(VERSION);
        dst.put_u8(frame.frame_type.to_u8());
        dst.put_u16(frame.flags);
        dst.put_slice(&frame.request_id.to_bytes());
        dst.put_u32(declared);
        dst.put_slice(&frame.payload);
        Ok(())
    }
}

impl Default for FrameCodec {
    /// A codec with [`FrameConfig::default()`] (1 MiB payloads).
    fn default() -> Self {
        Self {
            max_payload: FrameConfig::DEFAULT_MAX_PAYLOAD,
        }
    }
}

/// Why bytes from the peer are not a valid frame. Always the peer's fault;
/// the stream cannot be re-synchronised, so close the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The version byte is not [`VERSION`].
    UnsupportedVersion(u8),
    /// The type byte is not one of the five frame types.
    UnknownType(u8),
    /// The declared payload length is above the configured maximum.
    TooLarge {
        /// The declared length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedVersion(v) => write!(f, "peer sent broker frame version {v}, not 1"),
            Self::UnknownType(t) => write!(f, "peer sent unknown broker frame type {t}"),
            Self::TooLarge { len, max } => write!(
                f,
                "peer declared a broker frame payload of {len} bytes, more than {max}"
            ),
        }
    }
}

impl std::error::Error for FrameError {}

/// Why a frame could not be encoded (local misuse).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The payload is longer than the codec's maximum.
    PayloadTooLarge {
        /// The payload's length.
        len: usize,
        /// The codec's maximum.
        max: usize,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PayloadTooLarge { len, max } => write!(
                f,
                "broker frame payload of {len} bytes is too large to send (at most {max})"
            ),
        }
    }
}

impl std::error::Error for EncodeError {}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn codec(max: usize) -> FrameCodec {
        FrameCodec::new(FrameConfig { max_payload: max }).expect("valid")
    }

    fn frame(t: FrameType, flags: u16, id: u8, payload: &[u8]) -> Frame {
        Frame {
            frame_type: t,
            flags,
            request_id: RequestId::from_bytes([id; 16]),
            payload: Bytes::copy_from_slice(payload),
        }
    }

    #[test]
    fn header_layout_is_as_documented() {
        let mut out = BytesMut::new();
        let f = frame(FrameType::Response, 0x0102, 9, b"xyz");
        FrameCodec::default().encode(&f, &mut out).expect("fits");
        let mut expected = vec![1, 4, 1, 2];
        expected.extend_from_slice(&[9; 16]);
        expected.extend_from_slice(&[0, 0, 0, 3]);
        expected.extend_from_slice(b"xyz");
        assert_eq!(&out[..], &expected[..]);
        assert_eq!(f.wire_len(), 27);
    }

    #[test]
    fn frame_type_bytes_round_trip() {
        for b in 0..=255u8 {
            match FrameType::from_u8(b) {
                Some(t) => assert_eq!(t.to_u8(), b),
                None => assert!(b == 0 || b > 5),
            }
        }
    }

    #[test]
    fn whole_bytewise_and_trailing() {
        let c = FrameCodec::default();
        let frames = [
            frame(FrameType::Start, 0, 1, b""),
            frame(FrameType::Chunk, 0, 1, b"data"),
            frame(FrameType::End, 0, 1, b""),
            frame(FrameType::Response, FLAG_MORE, 2, b"r"),
            frame(FrameType::Error, 0, 3, b"\0\x01no"),
        ];
        let mut wire = BytesMut::new();
        for f in &frames {
            c.encode(f, &mut wire).expect("fits");
        }
        wire.extend_from_slice(&[1, 2, 0]); // start of another frame
        let mut buf = wire.clone();
        let mut got = Vec::new();
        while let Some(f) = c.decode(&mut buf).expect("valid") {
            got.push(f);
        }
        assert_eq!(got, frames);
        assert_eq!(&buf[..], &[1, 2, 0]);

        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in &wire[..] {
            buf.extend_from_slice(&[b]);
            while let Some(f) = c.decode(&mut buf).expect("valid") {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
        assert!(got[3].has_more() && !got[1].has_more());
    }

    #[test]
    fn version_and_type_are_checked_early_and_errors_are_final() {
        let c = FrameCodec::default();
        let mut buf = BytesMut::from(&[2u8][..]);
        assert_eq!(c.decode(&mut buf), Err(FrameError::UnsupportedVersion(2)));
        assert_eq!(c.decode(&mut buf), Err(FrameError::UnsupportedVersion(2)));
        assert_eq!(buf.len(), 1);
        let mut buf = BytesMut::from(&[1u8, 0][..]);
        assert_eq!(c.decode(&mut buf), Err(FrameError::UnknownType(0)));
        let mut buf = BytesMut::from(&[1u8, 6][..]);
        assert_eq!(c.decode(&mut buf), Err(FrameError::UnknownType(6)));
        let mut buf = BytesMut::from(&[1u8][..]);
        assert_eq!(c.decode(&mut buf), Ok(None));
        assert!(FrameError::UnknownType(6).to_string().contains('6'));
        assert!(FrameError::UnsupportedVersion(2).to_string().contains('2'));
    }

    #[test]
    fn declared_length_over_max_is_refused_before_buffering() {
        let c = codec(10);
        let mut header = vec![1, 2, 0, 0];
        header.extend_from_slice(&[0; 16]);
        header.extend_from_slice(&11u32.to_be_bytes());
        let mut buf = BytesMut::from(&header[..]);
        let err = c.decode(&mut buf).expect_err("too large");
        assert_eq!(err, FrameError::TooLarge { len: 11, max: 10 });
        assert!(err.to_string().contains("11"));
        let mut header = header.clone();
        header.splice(20..24, u32::MAX.to_be_bytes());
        let mut buf = BytesMut::from(&header[..]);
        assert!(matches!(
            c.decode(&mut buf),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn request_ids_are_peeked_from_any_version_1_header() {
        let mut header = vec![1, 9, 0, 0];
        header.extend_from_slice(&[7; 16]);
        header.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            FrameCodec::peek_request_id(&header),
            Some(RequestId::from_bytes([7; 16]))
        );
        assert_eq!(FrameCodec::peek_request_id(&header[..23]), None);
        header[0] = 2;
        assert_eq!(FrameCodec::peek_request_id(&header), None);
    }

    #[test]
    fn encode_refuses_payloads_over_max() {
        let c = codec(3);
        let mut out = BytesMut::new();
        let err = c
            .encode(&frame(FrameType::Chunk, 0, 0, b"abcd"), &mut out)
            .expect_err("too large");
        assert_eq!(err, EncodeError::PayloadTooLarge { len: 4, max: 3 });
        assert!(err.to_string().contains('4'));
        assert!(out.is_empty());
        c.encode(&frame(FrameType::Chunk, 0, 0, b"abc"), &mut out)
            .expect("fits");
    }

    #[test]
    fn config_is_validated() {
        assert_eq!(
            FrameCodec::new(FrameConfig { max_payload: 0 }).err(),
            Some(ConfigError::Zero {
                field: "max_payload"
            })
        );
        if let Some(max) = (u32::MAX as usize).checked_add(1) {
            assert!(FrameCodec::new(FrameConfig { max_payload: max }).is_err());
        }
        assert_eq!(FrameCodec::default().max_payload(), 1 << 20);
        assert_eq!(
            FrameCodec::new(FrameConfig::default())
                .expect("valid")
                .max_payload(),
            1 << 20
        );
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        (
            1u8..=5,
            any::<u16>(),
            any::<[u8; 16]>(),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(t, flags, id, payload)| Frame {
                frame_type: FrameType::from_u8(t).expect("1..=5"),
                flags,
                request_id: RequestId::from_bytes(id),
                payload: Bytes::from(payload),
            })
    }

    proptest! {
        #[test]
        fn round_trip_any_chunking(
            frames in proptest::collection::vec(arb_frame(), 0..8),
            cuts in proptest::collection::vec(any::<usize>(), 0..20),
        ) {
            let c = codec(300);
            let mut wire = BytesMut::new();
            for f in &frames {
                c.encode(f, &mut wire).expect("fits");
            }
            let mut points: Vec<usize> = cuts.iter().map(|x| x % (wire.len() + 1)).collect();
            points.extend([0, wire.len()]);
            points.sort_unstable();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for w in points.windows(2) {
                buf.extend_from_slice(&wire[w[0]..w[1]]);
                while let Some(f) = c.decode(&mut buf).expect("valid") {
                    got.push(f);
                }
            }
            prop_assert_eq!(got, frames);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic_nor_overbuffer(
            data in proptest::collection::vec(any::<u8>(), 0..400),
            step in 1usize..50,
            max in 1usize..64,
        ) {
            let c = codec(max);
            let mut buf = BytesMut::new();
            'outer: for chunk in data.chunks(step) {
                buf.extend_from_slice(chunk);
                loop {
                    match c.decode(&mut buf) {
                        Ok(Some(f)) => prop_assert!(f.payload.len() <= max),
                        Ok(None) => {
                            prop_assert!(buf.len() < HEADER_LEN + max);
                            break;
                        }
                        Err(_) => break 'outer,
                    }
                }
            }
        }
    }
}
