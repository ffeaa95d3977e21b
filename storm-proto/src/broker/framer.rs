//! Broker frames over a byte stream, as a [`Framer`]: lets any adapter's
//! framed TCP server or client carry broker frames unchanged.

use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};

use super::{ConfigError, EncodeError, Frame, FrameCodec, FrameConfig, FrameError, HEADER_LEN};
use crate::framing::Framing;
use crate::framing::{Framer, FramingError};

/// Offset of the 4-byte payload length in the header.
const LEN_OFFSET: usize = 20;

/// Cuts a byte stream into whole broker frames (24-byte header and payload,
/// as one message) and back.
///
/// This is only the cutting: the payload length (header bytes 20–23) is
/// checked against the maximum as soon as the header is complete, before
/// any of the payload is buffered; the rest of the header (version, type)
/// is checked by [`parse`](Self::parse), which turns a message into a
/// [`Frame`] without copying its payload. [`encode`](Framer::encode) takes
/// a message made by [`to_message`](Self::to_message) (a whole frame).
///
/// **A frame over the maximum is not a decode error**, unlike the other
/// framers: its 24-byte header alone is cut as a message, which `parse`
/// refuses with [`FrameError::TooLarge`] (so the receiver can answer the
/// frame under its request id, see
/// [`FrameCodec::peek_request_id`](super::FrameCodec::peek_request_id)),
/// and the declared payload is then skipped as it arrives — discarded,
/// never buffered — after which the stream goes on with the next frame.
/// The declared length is exact, so skipping keeps the stream in step; a
/// peer that keeps declaring huge frames costs reading time, never memory.
///
/// ```
/// use bytes::{Bytes, BytesMut};
/// use storm_proto::broker::{BrokerFramer, Frame, FrameType, RequestId};
/// use storm_proto::framing::Framer;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut framer = BrokerFramer::default();
/// let frame = Frame::new(FrameType::Chunk, RequestId::from_bytes([1; 16]), Bytes::from_static(b"data"));
/// let message = framer.to_message(&frame)?;
/// let mut wire = BytesMut::new();
/// framer.encode(&message, &mut wire)?;
/// let cut = framer.decode(&mut wire)?.ok_or("a whole frame")?;
/// assert_eq!(framer.parse(cut)?, frame);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct BrokerFramer {
    codec: FrameCodec,
    /// Payload bytes of an oversized frame still to skip.
    skip: usize,
}

impl BrokerFramer {
    /// A framer for payloads of at most `config.max_payload` bytes.
    ///
    /// # Errors
    ///
    /// As [`FrameCodec::new`].
    pub fn new(config: FrameConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            codec: FrameCodec::new(config)?,
            skip: 0,
        })
    }

    /// [`Framing::Custom`] building this framer for every connection, for
    /// the adapters' `TcpServer::bind` and `TcpClient::connect`.
    ///
    /// # Errors
    ///
    /// As [`FrameCodec::new`].
    pub fn framing(config: FrameConfig) -> Result<Framing, ConfigError> {
        let framer = Self::new(config)?;
        Ok(Framing::Custom(Arc::new(move || Box::new(framer.clone()))))
    }

    /// The codec underneath.
    #[must_use]
    pub fn codec(&self) -> &FrameCodec {
        &self.codec
    }

    /// Turns one message cut by [`decode`](Framer::decode) into a frame;
    /// the payload shares the message's buffer.
    ///
    /// # Errors
    ///
    /// [`FrameError`] for a bad version or type (the peer's fault: the
    /// stream cannot be trusted, close the connection), or
    /// [`FrameError::TooLarge`] for the header of a frame over the maximum
    /// (its payload is being skipped: the stream stays in step). A message
    /// shorter than the frame it declares (only possible when the message
    /// did not come from `decode`) is [`FrameError::TooLarge`] with the
    /// declared length too.
    pub fn parse(&self, message: Bytes) -> Result<Frame, FrameError> {
        let total = message.len();
        let mut buf = BytesMut::from(message);
        match self.codec.decode(&mut buf)? {
            Some(frame) if buf.is_empty() => Ok(frame),
            _ => Err(FrameError::TooLarge {
                len: declared_len(&buf).unwrap_or(total),
                max: total.saturating_sub(HEADER_LEN),
            }),
        }
    }

    /// The message for `frame`: its header and payload, ready for a
    /// session's `send` (the framer passes it through unchanged).
    ///
    /// # Errors
    ///
    /// [`EncodeError::PayloadTooLarge`] (local misuse).
    pub fn to_message(&self, frame: &Frame) -> Result<Bytes, EncodeError> {
        let mut out = BytesMut::with_capacity(frame.wire_len());
        self.codec.encode(frame, &mut out)?;
        Ok(out.freeze())
    }
}

/// The payload length a complete header declares.
fn declared_len(src: &[u8]) -> Option<usize> {
    let bytes = src.get(LEN_OFFSET..HEADER_LEN)?;
    let mut len = [0; 4];
    len.copy_from_slice(bytes);
    Some(usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX))
}

impl Framer for BrokerFramer {
    /// Cuts the next whole frame; for a frame over the maximum, its header
    /// alone, then skips its payload (see [`BrokerFramer`]). Never an
    /// error: every header is a message, and [`BrokerFramer::parse`] judges
    /// it.
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FramingError> {
        if self.skip > 0 {
            let n = self.skip.min(src.len());
            src.advance(n);
            self.skip -= n;
            if self.skip > 0 {
                return Ok(None);
            }
        }
        let Some(len) = declared_len(src) else {
            return Ok(None);
        };
        let max = self.codec.max_payload();
        if len > max {
            self.skip = len;
            return Ok(Some(src.split_to(HEADER_LEN).freeze()));
        }
        let total = HEADER_LEN + len;
        if src.len() < total {
            return Ok(None);
        }
        Ok(Some(src.split_to(total).freeze()))
    }

    fn remaining(&self, src: &BytesMut) -> Option<usize> {
        if self.skip > 0 {
            return None;
        }
        let len = declared_len(src).filter(|&len| len <= self.codec.max_payload())?;
        (HEADER_LEN + len).checked_sub(src.len()).filter(|&n| n > 0)
    }

    /// Appends `msg`, which must be a whole frame (see
    /// [`BrokerFramer::to_message`]), unchanged.
    fn encode(&mut self, msg: &[u8], dst: &mut BytesMut) -> Result<(), FramingError> {
        let max = self.codec.max_payload();
        let payload = msg.len().saturating_sub(HEADER_LEN);
        if msg.len() < HEADER_LEN || payload > max || declared_len(msg) != Some(payload) {
            return Err(FramingError::MessageTooLarge {
                len: msg.len(),
                max: self.encoded_len(max),
            });
        }
        dst.extend_from_slice(msg);
        Ok(())
    }

    fn encoded_len(&self, msg_len: usize) -> usize {
        msg_len
    }

    fn max_message_len(&self) -> usize {
        HEADER_LEN.saturating_add(self.codec.max_payload())
    }

    fn encoder(&self) -> Option<Box<dyn Framer + Send>> {
        Some(Box::new(self.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{FrameType, RequestId};

    fn frames() -> Vec<Frame> {
        let id = RequestId::from_bytes([3; 16]);
        vec![
            Frame::new(FrameType::Start, id, Bytes::new()),
            Frame::new(FrameType::Chunk, id, Bytes::from_static(b"hello")),
            Frame::new(FrameType::End, id, Bytes::new()),
        ]
    }

    #[test]
    fn remaining_is_what_the_front_frame_still_needs() {
        let framer = BrokerFramer::default();
        let id = RequestId::from_bytes([3; 16]);
        let frame = Frame::new(FrameType::Chunk, id, Bytes::from(vec![7u8; 100]));
        let wire = framer.to_message(&frame).expect("fits");
        for cut in 0..wire.len() {
            let buf = BytesMut::from(&wire[..cut]);
            let want = (cut >= HEADER_LEN).then(|| wire.len() - cut);
            assert_eq!(framer.remaining(&buf), want, "cut {cut}");
        }
        assert_eq!(framer.remaining(&BytesMut::from(&wire[..])), None);
    }

    #[test]
    fn whole_bytewise_and_trailing() {
        let mut framer = BrokerFramer::default();
        let mut wire = BytesMut::new();
        for f in frames() {
            let m = framer.to_message(&f).expect("fits");
            framer.encode(&m, &mut wire).expect("whole frame");
        }
        wire.extend_from_slice(&[1, 2]);
        let mut buf = wire.clone();
        let mut got = Vec::new();
        while let Some(m) = framer.decode(&mut buf).expect("valid") {
            got.push(framer.parse(m).expect("valid"));
        }
        assert_eq!(got, frames());
        assert_eq!(&buf[..], &[1, 2]);

        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in &wire[..] {
            buf.extend_from_slice(&[*b]);
            while let Some(m) = framer.decode(&mut buf).expect("valid") {
                got.push(framer.parse(m).expect("valid"));
            }
        }
        assert_eq!(got, frames());
    }

    #[test]
    fn a_frame_over_max_is_cut_as_its_header_and_its_payload_skipped() {
        let mut framer = BrokerFramer::new(FrameConfig { max_payload: 4 }).expect("valid");
        let id = RequestId::from_bytes([5; 16]);
        let mut header = vec![1, 2, 0, 0];
        header.extend_from_slice(&id.to_bytes());
        header.extend_from_slice(&9u32.to_be_bytes());
        let next = framer
            .to_message(&Frame::new(FrameType::End, id, Bytes::new()))
            .expect("fits");
        let mut wire = header.clone();
        wire.extend_from_slice(b"123456789");
        wire.extend_from_slice(&next);
        // Byte by byte: the header comes out as soon as it is whole, the
        // payload never stays buffered, the next frame is cut in step.
        let mut buf = BytesMut::new();
        let mut cut = Vec::new();
        for b in &wire {
            buf.extend_from_slice(&[*b]);
            while let Some(m) = framer.decode(&mut buf).expect("never an error") {
                cut.push(m);
            }
            assert!(buf.len() < HEADER_LEN, "buffered {}", buf.len());
        }
        assert_eq!(cut, [Bytes::from(header), next.clone()]);
        assert_eq!(
            framer.parse(cut[0].clone()),
            Err(FrameError::TooLarge { len: 9, max: 4 })
        );
        assert_eq!(
            crate::broker::FrameCodec::peek_request_id(&cut[0]),
            Some(id)
        );
        assert_eq!(framer.parse(next).map(|f| f.frame_type), Ok(FrameType::End));
        assert_eq!(framer.max_message_len(), 28);
    }

    #[test]
    fn bad_headers_are_caught_by_parse_and_encode_checks_its_input() {
        let mut framer = BrokerFramer::default();
        let mut bad = vec![9u8, 2, 0, 0];
        bad.extend_from_slice(&[0; 20]);
        let mut buf = BytesMut::from(&bad[..]);
        let message = framer.decode(&mut buf).expect("cut").expect("whole");
        assert_eq!(
            framer.parse(message),
            Err(FrameError::UnsupportedVersion(9))
        );
        let mut out = BytesMut::new();
        assert!(framer.encode(b"short", &mut out).is_err());
        let mut lying = framer.to_message(&frames()[1]).expect("fits").to_vec();
        lying.push(0);
        assert!(framer.encode(&lying, &mut out).is_err());
        assert!(out.is_empty());
        assert!(framer.parse(Bytes::from(lying[..26].to_vec())).is_err());
        assert!(matches!(
            BrokerFramer::framing(FrameConfig::default()),
            Ok(Framing::Custom(_))
        ));
    }
}
