//! Splitting a provider's response into `Response` frames.

use bytes::Bytes;

use super::{FLAG_MORE, Frame, FrameType, RequestId, StreamerError};

/// Splits a response of any size into `Response` frames of at most
/// `chunk_size` bytes, [`FLAG_MORE`] on all but the last; an empty
/// response is one empty frame. The provider's side of
/// [`Streamer`](super::Streamer): an iterator, so frames can be sent one at
/// a time as the connection has room; nothing is copied.
///
/// ```
/// use bytes::Bytes;
/// use storm_proto::broker::{RequestId, ResponseStreamer};
///
/// let frames: Vec<_> = ResponseStreamer::new(RequestId::default(), Bytes::from_static(b"abcde"), 2)?
///     .collect();
/// assert_eq!(frames.len(), 3);
/// assert!(frames[0].has_more() && frames[1].has_more() && !frames[2].has_more());
/// # Ok::<(), storm_proto::broker::StreamerError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ResponseStreamer {
    request_id: RequestId,
    payload: Bytes,
    chunk_size: usize,
    done: bool,
}

impl ResponseStreamer {
    /// A streamer for one response.
    ///
    /// # Errors
    ///
    /// [`StreamerError::ZeroChunkSize`].
    pub fn new(
        request_id: RequestId,
        payload: Bytes,
        chunk_size: usize,
    ) -> Result<Self, StreamerError> {
        if chunk_size == 0 {
            return Err(StreamerError::ZeroChunkSize);
        }
        Ok(Self {
            request_id,
            payload,
            chunk_size,
            done: false,
        })
    }
}

impl Iterator for ResponseStreamer {
    type Item = Frame;

    fn next(&mut self) -> Option<Frame> {
        if self.done {
            return None;
        }
        let n = self.chunk_size.min(self.payload.len());
        let piece = self.payload.split_to(n);
        let mut frame = Frame::new(FrameType::Response, self.request_id, piece);
        if self.payload.is_empty() {
            self.done = true;
        } else {
            frame.flags = FLAG_MORE;
        }
        Some(frame)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = if self.done {
            0
        } else {
            self.payload.len().div_ceil(self.chunk_size).max(1)
        };
        (n, Some(n))
    }
}

impl ExactSizeIterator for ResponseStreamer {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_flags_and_sizes() {
        let id = RequestId::from_bytes([1; 16]);
        let s = ResponseStreamer::new(id, Bytes::from_static(b"abcdef"), 3).expect("valid");
        assert_eq!(s.len(), 2);
        let frames: Vec<_> = s.collect();
        assert_eq!(frames.len(), 2);
        assert_eq!(&frames[0].payload[..], b"abc");
        assert!(frames[0].has_more() && !frames[1].has_more());
        assert!(frames.iter().all(|f| f.request_id == id));

        let empty: Vec<_> = ResponseStreamer::new(id, Bytes::new(), 3)
            .expect("valid")
            .collect();
        assert_eq!(empty.len(), 1);
        assert!(empty[0].payload.is_empty() && !empty[0].has_more());
        assert!(ResponseStreamer::new(id, Bytes::new(), 0).is_err());
    }
}
