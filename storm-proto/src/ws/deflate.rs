//! permessage-deflate (RFC 7692).
//!
//! The handshake ([`super::handshake`]) agrees on [`DeflateParams`]; the
//! connection then owns one [`PerMessageDeflate`] and calls
//! [`PerMessageDeflate::compress`] for every outgoing message it decides to
//! compress (RSV1 set) and [`PerMessageDeflate::decompress`] for every frame
//! payload of an incoming message whose first frame had RSV1 set.
//!
//! # Window bits
//!
//! * **Decompression always runs with a 32 KiB (15-bit) window**, whatever the
//!   peer negotiated. A window at least as large as the peer's is always
//!   correct, zlib-rs allocates the full 32 KiB for any window size anyway,
//!   and a 15-bit stream resets in place (a smaller one would be re-created,
//!   i.e. re-allocated, on every reset). So a peer that compresses with 8
//!   window bits is decoded correctly.
//! * **Compression uses exactly the window bits negotiated for our side**
//!   (`server_max_window_bits` when we are the server, `client_max_window_bits`
//!   when we are the client), never more, or the peer's decompressor could be
//!   handed back-references it cannot resolve. zlib cannot produce raw deflate
//!   with a 256-byte window, so **8 is not supported for our side**:
//!   [`PerMessageDeflate::new`] returns [`DeflateConfigError::WindowBits`].
//!   The handshake must therefore never agree to compress with 8 bits (a
//!   server declines an offer carrying `client_max_window_bits=8` only for
//!   the server direction, i.e. `server_max_window_bits=8`; a client declines
//!   a response carrying `client_max_window_bits=8`). The peer may use 8.
//!
//! # Memory per connection
//!
//! Both zlib streams are created lazily, on the first message in their
//! direction, so an idle connection or one that only ever receives pays for
//! one stream or none. Measured with zlib-rs 0.6 (flate2 1.1):
//!
//! | stream | 15 bits | 9 bits |
//! |---|---|---|
//! | decompressor | 46 KiB (32 KiB window + state) | same (always 15 bits) |
//! | compressor (zlib memLevel 8) | 371 KiB | 245 KiB |
//!
//! The compressor dominates: 2 × window (sliding buffer), a 2-byte chain
//! entry per window position, a fixed 128 KiB hash table and 112 KiB of
//! literal/pending buffers. Where `*_no_context_takeover` applies, the stream
//! holds no state between messages and
//! [`PerMessageDeflate::release_idle_streams`] frees it (to be re-created on
//! the next message), trading an allocation per message for memory on
//! mostly-idle connections.
//!
//! # Errors and close codes
//!
//! RFC 7692 says an endpoint that receives data it cannot decompress must
//! _Fail the WebSocket Connection_; the close code is ours to pick.
//! [`DeflateError::Corrupt`] maps to **1007** (invalid frame payload data),
//! [`DeflateError::MessageTooLarge`] to **1009** (message too big), and a
//! failure of our own compressor ([`DeflateError::Compress`], which zlib
//! never reports for valid use) to **1011** (internal error).

use std::fmt;
use std::mem::MaybeUninit;

use bytes::BytesMut;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::Side;

/// What this endpoint is willing to negotiate for permessage-deflate.
///
/// Off unless a connection's configuration carries one. The defaults offer
/// (client) or accept (server) the full 32 KiB window with context takeover
/// on both sides, which compresses best; the `*_no_context_takeover` flags
/// trade ratio for memory (no window kept between messages).
///
/// `#[non_exhaustive]`, so a new field is not a breaking change: start from
/// [`default`](Self::default) and chain the `with_*` methods; the fields
/// stay public, to read and to set on a value you own.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeflateConfig {
    /// Ask (client) or require (server) that the server resets its compressor
    /// after every message. Default `false`.
    pub server_no_context_takeover: bool,
    /// Ask (client) or require (server) that the client resets its compressor
    /// after every message. Default `false`.
    pub client_no_context_takeover: bool,
    /// Largest LZ77 window (as a power of two, 9..=15) the server may use when
    /// compressing. Default 15.
    pub server_max_window_bits: u8,
    /// Largest LZ77 window (9..=15) the client may use when compressing.
    /// Default 15.
    pub client_max_window_bits: u8,
    /// zlib compression level, 0 (store) ..= 9 (smallest). Default 6.
    pub compression_level: u32,
    /// Messages shorter than this are sent uncompressed (RSV1 clear). Default 0.
    pub min_compress_size: usize,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        Self {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
            compression_level: 6,
            min_compress_size: 0,
        }
    }
}

impl DeflateConfig {
    /// Ask (client) or require (server) that the server resets its
    /// compressor after every message (default `false`).
    #[must_use]
    pub const fn with_server_no_context_takeover(mut self, on: bool) -> Self {
        self.server_no_context_takeover = on;
        self
    }

    /// Ask (client) or require (server) that the client resets its
    /// compressor after every message (default `false`).
    #[must_use]
    pub const fn with_client_no_context_takeover(mut self, on: bool) -> Self {
        self.client_no_context_takeover = on;
        self
    }

    /// Largest LZ77 window (9..=15) the server may use (default 15).
    #[must_use]
    pub const fn with_server_max_window_bits(mut self, bits: u8) -> Self {
        self.server_max_window_bits = bits;
        self
    }

    /// Largest LZ77 window (9..=15) the client may use (default 15).
    #[must_use]
    pub const fn with_client_max_window_bits(mut self, bits: u8) -> Self {
        self.client_max_window_bits = bits;
        self
    }

    /// zlib compression level, 0..=9 (default 6).
    #[must_use]
    pub const fn with_compression_level(mut self, level: u32) -> Self {
        self.compression_level = level;
        self
    }

    /// Messages shorter than this are sent uncompressed (default 0).
    #[must_use]
    pub const fn with_min_compress_size(mut self, bytes: usize) -> Self {
        self.min_compress_size = bytes;
        self
    }

    /// Checks the ranges documented on the fields.
    ///
    /// Call it when a configuration is built, so a bad value is reported to
    /// the user instead of surfacing in a handshake.
    ///
    /// # Errors
    ///
    /// [`DeflateConfigError::WindowBits`] if a window size is outside 9..=15,
    /// [`DeflateConfigError::Level`] if the level is above 9.
    pub fn validate(&self) -> Result<(), DeflateConfigError> {
        for bits in [self.server_max_window_bits, self.client_max_window_bits] {
            if !COMPRESS_WINDOW_BITS.contains(&bits) {
                return Err(DeflateConfigError::WindowBits { bits });
            }
        }
        if self.compression_level > 9 {
            return Err(DeflateConfigError::Level {
                level: self.compression_level,
            });
        }
        Ok(())
    }
}

/// The parameters both ends agreed on in the handshake.
///
/// Produced by the handshake ([`super::handshake`]) and consumed by the
/// connection's compressor and decompressor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// The server resets its compressor (and the client its decompressor)
    /// after every message.
    pub server_no_context_takeover: bool,
    /// The client resets its compressor (and the server its decompressor)
    /// after every message.
    pub client_no_context_takeover: bool,
    /// Window bits (9..=15) the server compresses with.
    pub server_max_window_bits: u8,
    /// Window bits (9..=15) the client compresses with.
    pub client_max_window_bits: u8,
}

/// Window sizes zlib can compress raw deflate with.
const COMPRESS_WINDOW_BITS: std::ops::RangeInclusive<u8> = 9..=15;
/// Window sizes RFC 7692 allows a peer to compress with (we decode them all).
const PEER_WINDOW_BITS: std::ops::RangeInclusive<u8> = 8..=15;
/// The empty stored block a sync flush ends with (RFC 7692 7.2.1 strips it,
/// 7.2.2 appends it again).
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// Smallest step by which the decompressor grows the output buffer.
const INFLATE_MIN_STEP: usize = 4 * 1024;

/// A configuration or negotiation result this codec cannot run with: local
/// misuse, reported when the codec (or a configuration) is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeflateConfigError {
    /// Window bits outside 9..=15 for our compressor (or outside 8..=15 for
    /// the peer's). zlib cannot compress raw deflate with 8 bits, so the
    /// handshake must not agree to it for our direction.
    WindowBits {
        /// The offending value.
        bits: u8,
    },
    /// Compression level above 9.
    Level {
        /// The offending value.
        level: u32,
    },
}

impl fmt::Display for DeflateConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WindowBits { bits } => write!(
                f,
                "permessage-deflate window bits {bits} unsupported (compress 9..=15, decompress 8..=15)"
            ),
            Self::Level { level } => {
                write!(f, "deflate compression level {level} is above 9")
            }
        }
    }
}

impl std::error::Error for DeflateConfigError {}

/// Why a message could not be compressed or decompressed.
///
/// Every variant is fatal for the connection: the shared LZ77 context is lost.
/// After a decompression error every later [`PerMessageDeflate::decompress`]
/// call returns the same error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeflateError {
    /// The peer sent data that is not a valid raw deflate stream (or refers
    /// back further than any message it sent). Close code 1007.
    Corrupt,
    /// The decompressed message would exceed the `max_output` limit. At most
    /// `limit` bytes were written. Close code 1009.
    MessageTooLarge {
        /// The limit that was hit, in bytes of decompressed payload.
        limit: usize,
    },
    /// Our own compressor failed; zlib does not do this for valid use.
    /// Close code 1011.
    Compress,
}

impl DeflateError {
    /// The WebSocket close code to send the peer: 1007, 1009 or 1011.
    #[must_use]
    pub fn close_code(&self) -> u16 {
        match self {
            Self::Corrupt => 1007,
            Self::MessageTooLarge { .. } => 1009,
            Self::Compress => 1011,
        }
    }
}

impl fmt::Display for DeflateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Corrupt => f.write_str("invalid permessage-deflate data"),
            Self::MessageTooLarge { limit } => {
                write!(f, "decompressed message exceeds {limit} bytes")
            }
            Self::Compress => f.write_str("permessage-deflate compressor failed"),
        }
    }
}

impl std::error::Error for DeflateError {}

/// One connection's permessage-deflate codec: a compressor for what we send
/// and a decompressor for what the peer sends, each created on first use and
/// reused (reset, not re-created) for the life of the connection.
///
/// Messages in each direction must be processed in order, one at a time; the
/// two directions are independent. A message sent or received uncompressed
/// (RSV1 clear) does not touch the codec.
#[derive(Debug)]
pub struct PerMessageDeflate {
    /// Window bits of our compressor (9..=15).
    compress_window_bits: u8,
    /// Our side's `*_no_context_takeover`: reset the compressor per message.
    reset_compressor: bool,
    /// The peer side's `*_no_context_takeover`: reset the decompressor per
    /// message.
    reset_decompressor: bool,
    level: Compression,
    min_compress_size: usize,
    compressor: Option<Compress>,
    decompressor: Option<Decompress>,
    /// Decompressed bytes produced so far for the incoming message.
    inflated: usize,
    /// An incoming message is between its first and its last frame.
    in_message: bool,
    /// The incoming message has had a non-empty frame payload.
    message_has_input: bool,
    /// The decompression error every later call repeats.
    failed: Option<DeflateError>,
}

impl PerMessageDeflate {
    /// A codec for `side` running the negotiated `params`, compressing at the
    /// level and threshold of the local `config` (its negotiation fields are
    /// not used here: `params` is what was agreed).
    ///
    /// Allocates nothing; the zlib streams are created on first use.
    ///
    /// # Errors
    ///
    /// [`DeflateConfigError::WindowBits`] if our side's window bits are not in
    /// 9..=15 (in particular 8, which zlib cannot compress raw deflate with) or
    /// the peer's are not in 8..=15; [`DeflateConfigError::Level`] if the
    /// level is above 9.
    pub fn new(
        side: Side,
        params: DeflateParams,
        config: &DeflateConfig,
    ) -> Result<Self, DeflateConfigError> {
        let (ours, peers, reset_compressor, reset_decompressor) = match side {
            Side::Server => (
                params.server_max_window_bits,
                params.client_max_window_bits,
                params.server_no_context_takeover,
                params.client_no_context_takeover,
            ),
            Side::Client => (
                params.client_max_window_bits,
                params.server_max_window_bits,
                params.client_no_context_takeover,
                params.server_no_context_takeover,
            ),
        };
        if !COMPRESS_WINDOW_BITS.contains(&ours) {
            return Err(DeflateConfigError::WindowBits { bits: ours });
        }
        if !PEER_WINDOW_BITS.contains(&peers) {
            return Err(DeflateConfigError::WindowBits { bits: peers });
        }
        if config.compression_level > 9 {
            return Err(DeflateConfigError::Level {
                level: config.compression_level,
            });
        }
        Ok(Self {
            compress_window_bits: ours,
            reset_compressor,
            reset_decompressor,
            level: Compression::new(config.compression_level),
            min_compress_size: config.min_compress_size,
            compressor: None,
            decompressor: None,
            inflated: 0,
            in_message: false,
            message_has_input: false,
            failed: None,
        })
    }

    /// Whether a message of `len` bytes should be compressed, by the
    /// configured `min_compress_size`. Sending small messages uncompressed
    /// (RSV1 clear) is always allowed and leaves the context untouched.
    #[must_use]
    pub fn should_compress(&self, len: usize) -> bool {
        len >= self.min_compress_size
    }

    /// Compresses one whole outgoing message and appends the result, ready to
    /// be the payload of a frame (or frames) with RSV1 set, to `dst`.
    ///
    /// The output is the raw deflate stream up to a sync flush, with the final
    /// `00 00 ff ff` removed (RFC 7692 7.2.1); an empty message becomes the
    /// single byte `00` (7.2.3.6). When our side's no_context_takeover was
    /// negotiated the compressor is reset afterwards; otherwise the next
    /// message may refer back into this one.
    ///
    /// `dst` is grown once, by a worst-case bound of about
    /// `payload.len() + payload.len() / 1024 + 32`, so incompressible data
    /// needs no second allocation; nothing else is allocated, except the
    /// compressor itself on first use.
    ///
    /// # Errors
    ///
    /// [`DeflateError::Compress`] if zlib reports a failure (not expected for
    /// valid use). `dst` then holds partial output and the compressor is
    /// dropped; the connection must be failed with close code 1011.
    pub fn compress(&mut self, payload: &[u8], dst: &mut BytesMut) -> Result<(), DeflateError> {
        if payload.is_empty() {
            // An empty stored block's first byte; the peer's appended tail
            // completes it (7.2.3.6). Every message ends byte-aligned after
            // its sync flush, so this is valid in any context, and zlib would
            // refuse a second flush in a row without input anyway.
            dst.extend_from_slice(&[0x00]);
            return Ok(());
        }
        let (level, window_bits) = (self.level, self.compress_window_bits);
        let compressor = self
            .compressor
            .get_or_insert_with(|| Compress::new_with_window_bits(level, false, window_bits));
        let start = dst.len();
        match deflate_sync(compressor, payload, dst) {
            Ok(()) if dst.len() >= start + SYNC_TAIL.len() && dst.ends_with(&SYNC_TAIL) => {
                dst.truncate(dst.len() - SYNC_TAIL.len());
                if self.reset_compressor {
                    compressor.reset();
                }
                Ok(())
            }
            _ => {
                self.compressor = None;
                Err(DeflateError::Compress)
            }
        }
    }

    /// Decompresses one frame payload of an incoming compressed message and
    /// appends the output to `dst`.
    ///
    /// Call it for every frame of the message in order (the first with RSV1
    /// set, then its continuation frames), with `fin` set on the last; an
    /// empty payload is fine. On `fin` the stripped `00 00 ff ff` is fed
    /// (RFC 7692 7.2.2) and, when the peer's no_context_takeover was
    /// negotiated, the decompressor is reset.
    ///
    /// `max_output` is the limit on the decompressed size of the whole message
    /// (the connection's message size limit; pass the same value for every
    /// frame of a message). This method counts across frames; at most
    /// `max_output` bytes of the message are ever written to `dst`. The output
    /// buffer is grown in steps (doubling with the message, at least 4 KiB,
    /// never by more than the limit still allows), not by any size the peer
    /// declares. `dst` may hold other data before the message; only bytes
    /// appended by this method count.
    ///
    /// A message whose payload is empty altogether (no bytes in any frame)
    /// is the empty message and leaves the stream untouched: the tail alone
    /// would not be valid after a flushed message, and some senders (flate2's
    /// `DeflateEncoder`, for one) emit nothing for an empty message instead
    /// of the single `00` byte of RFC 7692 7.2.3.6.
    ///
    /// A deflate block with BFINAL set ends the deflate stream; decoding
    /// continues with a fresh stream (RFC 7692 7.2.3.4). The window does not
    /// survive that, so a later back-reference across it is
    /// [`DeflateError::Corrupt`].
    ///
    /// # Errors
    ///
    /// [`DeflateError::MessageTooLarge`] (close 1009) when the message would
    /// decompress to more than `max_output` bytes, [`DeflateError::Corrupt`]
    /// (close 1007) on invalid deflate data. Either error is final: this and
    /// every later call return it, and the connection must be failed.
    pub fn decompress(
        &mut self,
        input: &[u8],
        fin: bool,
        dst: &mut BytesMut,
        max_output: usize,
    ) -> Result<(), DeflateError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        self.in_message = true;
        self.message_has_input |= !input.is_empty();
        let decompressor = self
            .decompressor
            .get_or_insert_with(|| Decompress::new(false));
        let mut result = inflate(decompressor, input, dst, max_output, &mut self.inflated);
        if fin && result.is_ok() && self.message_has_input {
            result = inflate(
                decompressor,
                &SYNC_TAIL,
                dst,
                max_output,
                &mut self.inflated,
            );
        }
        match result {
            Ok(()) => {
                if fin {
                    self.inflated = 0;
                    self.in_message = false;
                    self.message_has_input = false;
                    if self.reset_decompressor {
                        decompressor.reset(false);
                    }
                }
                Ok(())
            }
            Err(error) => {
                self.failed = Some(error);
                self.decompressor = None;
                Err(error)
            }
        }
    }

    /// Frees the zlib streams that hold no context right now: the compressor
    /// if our side resets it after every message, the decompressor if the
    /// peer's side does and no message is being received. They are re-created
    /// (one allocation each) on the next message.
    ///
    /// For servers with many mostly-idle connections; see the module docs for
    /// what each stream costs. Does nothing under context takeover.
    pub fn release_idle_streams(&mut self) {
        if self.reset_compressor {
            self.compressor = None;
        }
        if self.reset_decompressor && !self.in_message {
            self.decompressor = None;
        }
    }
}

/// Worst-case raw deflate size of `len` bytes ending in a sync flush: zlib
/// falls back to stored blocks (5 bytes of header per block of at least a
/// few KiB) for incompressible data, plus the flush marker and the bits
/// pending from the previous message.
fn deflate_bound(len: usize) -> usize {
    len.saturating_add(len >> 10).saturating_add(32)
}

/// Runs `compressor` over `input` with a sync flush, appending to `dst`.
fn deflate_sync(
    compressor: &mut Compress,
    mut input: &[u8],
    dst: &mut BytesMut,
) -> Result<(), DeflateError> {
    loop {
        let want = deflate_bound(input.len());
        if dst.capacity() - dst.len() < want {
            dst.reserve(want);
        }
        let before_in = compressor.total_in();
        let (space, written, status) = write_spare(dst, usize::MAX, |out| {
            let before_out = compressor.total_out();
            let status = compressor.compress_uninit(input, out, FlushCompress::Sync);
            (compressor.total_out() - before_out, status)
        });
        status.map_err(|_| DeflateError::Compress)?;
        let consumed = progress(compressor.total_in() - before_in, input.len());
        input = input.get(consumed..).unwrap_or_default();
        // The flush is complete once zlib stops with output space left.
        if input.is_empty() && written < space {
            return Ok(());
        }
        if consumed == 0 && written == 0 {
            // No progress although input and space were offered: zlib never
            // does this; fail rather than spin.
            return Err(DeflateError::Compress);
        }
    }
}

/// Feeds `input` to `decompressor` until it is consumed and all the output
/// it implies is written, keeping `*inflated` (bytes of this message so far)
/// within `limit`.
fn inflate(
    decompressor: &mut Decompress,
    mut input: &[u8],
    dst: &mut BytesMut,
    limit: usize,
    inflated: &mut usize,
) -> Result<(), DeflateError> {
    loop {
        let room = limit.saturating_sub(*inflated);
        let before_in = decompressor.total_in();
        let before_out = decompressor.total_out();
        let (space, written, status) = if room == 0 {
            // At the limit: probe with one byte on the stack to tell "more
            // output follows" (too large) from "only the flush marker or
            // empty blocks left" (exactly at the limit).
            let mut probe = [0u8; 1];
            let status = decompressor.decompress(input, &mut probe, FlushDecompress::None);
            if decompressor.total_out() != before_out {
                return Err(DeflateError::MessageTooLarge { limit });
            }
            (probe.len(), 0, status)
        } else {
            if dst.capacity() - dst.len() < room.min(INFLATE_MIN_STEP) {
                // Grow with the message (doubling), never past the limit.
                let step = (*inflated)
                    .max(input.len().saturating_mul(2))
                    .max(INFLATE_MIN_STEP)
                    .min(room);
                dst.reserve(step);
            }
            write_spare(dst, room, |out| {
                let status = decompressor.decompress_uninit(input, out, FlushDecompress::None);
                (decompressor.total_out() - before_out, status)
            })
        };
        *inflated += written;
        let status = status.map_err(|_| DeflateError::Corrupt)?;
        let consumed = progress(decompressor.total_in() - before_in, input.len());
        input = input.get(consumed..).unwrap_or_default();
        match status {
            Status::StreamEnd => {
                // A block with BFINAL set ended the stream (RFC 7692
                // 7.2.3.4); whatever follows starts a new one.
                decompressor.reset(false);
                if input.is_empty() {
                    return Ok(());
                }
            }
            Status::Ok | Status::BufError => {
                if written < space {
                    if input.is_empty() {
                        return Ok(());
                    }
                    if consumed == 0 {
                        // Stuck with input and space: never for valid zlib
                        // use; treat as bad data rather than spin.
                        return Err(DeflateError::Corrupt);
                    }
                }
            }
        }
    }
}

/// Lets `fill` write into at most `max` bytes of `dst`'s spare capacity and
/// commits the bytes it reports as written. Returns the space offered, the
/// bytes committed, and `fill`'s result.
///
/// This is how zlib writes straight into the caller's buffer without zeroing
/// it first (flate2's `*_uninit` calls), like flate2's own `*_vec` methods.
fn write_spare<T>(
    dst: &mut BytesMut,
    max: usize,
    fill: impl FnOnce(&mut [MaybeUninit<u8>]) -> (u64, T),
) -> (usize, usize, T) {
    let spare = dst.spare_capacity_mut();
    let space = spare.len().min(max);
    let (out, _) = spare.split_at_mut(space);
    let (reported, value) = fill(out);
    let written = usize::try_from(reported).map_or(space, |n| n.min(space));
    // SAFETY: `fill` is a zlib call that initialised the first `reported`
    // bytes of `out`, which is the start of `dst`'s spare capacity;
    // `written <= reported` and `written <= space <= spare capacity`, so the
    // new length covers only initialised bytes within the allocation.
    unsafe { dst.set_len(dst.len() + written) };
    (space, written, value)
}

/// Bytes of input consumed, from a zlib `total_in` difference.
fn progress(delta: u64, len: usize) -> usize {
    usize::try_from(delta).map_or(len, |n| n.min(len))
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use proptest::prelude::*;

    use super::*;

    const HELLO: &[u8] = b"Hello";
    const LIMIT: usize = 1 << 20;

    fn params(nct: bool, bits: u8) -> DeflateParams {
        DeflateParams {
            server_no_context_takeover: nct,
            client_no_context_takeover: nct,
            server_max_window_bits: bits,
            client_max_window_bits: bits,
        }
    }

    fn codec(side: Side, params: DeflateParams, level: u32) -> PerMessageDeflate {
        let config = DeflateConfig {
            compression_level: level,
            ..DeflateConfig::default()
        };
        PerMessageDeflate::new(side, params, &config).unwrap()
    }

    /// A client decoding what a server (15 bits, context takeover) sends.
    fn client() -> PerMessageDeflate {
        codec(Side::Client, params(false, 15), 6)
    }

    fn inflate_whole(codec: &mut PerMessageDeflate, data: &[u8]) -> Result<Vec<u8>, DeflateError> {
        let mut dst = BytesMut::new();
        codec.decompress(data, true, &mut dst, LIMIT)?;
        Ok(dst.to_vec())
    }

    fn inflate_frames(
        codec: &mut PerMessageDeflate,
        frames: &[&[u8]],
        limit: usize,
    ) -> Result<BytesMut, DeflateError> {
        let mut dst = BytesMut::new();
        for (i, frame) in frames.iter().enumerate() {
            codec.decompress(frame, i + 1 == frames.len(), &mut dst, limit)?;
        }
        Ok(dst)
    }

    fn deflate(codec: &mut PerMessageDeflate, payload: &[u8]) -> Vec<u8> {
        let mut dst = BytesMut::new();
        codec.compress(payload, &mut dst).unwrap();
        dst.to_vec()
    }

    /// Splits `data` at the (sorted, clamped) `cuts`.
    fn split_at_cuts<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        cuts.sort_unstable();
        let mut frames = Vec::new();
        let mut from = 0;
        for cut in cuts {
            frames.push(&data[from..cut]);
            from = cut;
        }
        frames.push(&data[from..]);
        frames
    }

    // ---- RFC 7692 section 7.2.3 examples -------------------------------

    #[test]
    fn rfc_7_2_3_1_hello() {
        let data = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inflate_whole(&mut client(), &data).unwrap(), HELLO);
        // 7.2.1: the same message in two fragments.
        let mut codec = client();
        let dst = inflate_frames(&mut codec, &[&data[..3], &data[3..]], LIMIT).unwrap();
        assert_eq!(&dst[..], HELLO);
        // zlib produces exactly the RFC's bytes for a first message.
        let mut server = codec_for(Side::Server);
        assert_eq!(deflate(&mut server, HELLO), data);
    }

    fn codec_for(side: Side) -> PerMessageDeflate {
        codec(side, params(false, 15), 6)
    }

    #[test]
    fn rfc_7_2_3_2_context_takeover() {
        let mut codec = client();
        let first = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        let second = [0xf2, 0x00, 0x11, 0x00, 0x01, 0x00];
        assert_eq!(inflate_whole(&mut codec, &first).unwrap(), HELLO);
        assert_eq!(inflate_whole(&mut codec, &second).unwrap(), HELLO);

        // With server_no_context_takeover the client resets its decompressor,
        // so the back-reference in the second message has nothing to refer to.
        let mut reset = codec_with(Side::Client, true, false);
        assert_eq!(inflate_whole(&mut reset, &first).unwrap(), HELLO);
        assert_eq!(
            inflate_whole(&mut reset, &second),
            Err(DeflateError::Corrupt)
        );

        // And our compressor keeps the context too: the second "Hello" is a
        // pure back-reference, shorter than the first.
        let mut server = codec_for(Side::Server);
        let a = deflate(&mut server, HELLO);
        let b = deflate(&mut server, HELLO);
        assert!(b.len() < a.len(), "{a:02x?} then {b:02x?}");
        assert_eq!(inflate_whole(&mut codec, &a).unwrap(), HELLO);
        assert_eq!(inflate_whole(&mut codec, &b).unwrap(), HELLO);
    }

    /// A codec for `side` with the given no_context_takeover flags.
    fn codec_with(side: Side, server_nct: bool, client_nct: bool) -> PerMessageDeflate {
        let params = DeflateParams {
            server_no_context_takeover: server_nct,
            client_no_context_takeover: client_nct,
            ..params(false, 15)
        };
        codec(side, params, 6)
    }

    #[test]
    fn rfc_7_2_3_3_to_6() {
        // 7.2.3.3 stored block.
        let stored = [
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ];
        // 7.2.3.4 BFINAL set, with a trailing byte.
        let bfinal = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
        // 7.2.3.5 two blocks in one message.
        let two = [
            0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00,
        ];
        let mut codec = client();
        for data in [&stored[..], &bfinal, &two, &bfinal, &stored] {
            assert_eq!(
                inflate_whole(&mut codec, data).unwrap(),
                HELLO,
                "{data:02x?}"
            );
        }
        // 7.2.3.6 empty message, both ways.
        assert_eq!(inflate_whole(&mut codec, &[0x00]).unwrap(), b"");
        assert_eq!(deflate(&mut codec_for(Side::Server), b""), [0x00]);
        // Also after a message (context kept).
        let mut server = codec_for(Side::Server);
        let _ = deflate(&mut server, HELLO);
        let empty = deflate(&mut server, b"");
        assert_eq!(inflate_whole(&mut codec, &empty).unwrap(), b"");
    }

    // ---- interop with flate2's own raw deflate -------------------------

    #[test]
    fn decodes_flate2_deflate_encoder_with_context() {
        let messages: [&[u8]; 4] = [
            b"{\"op\":\"publish\",\"room\":\"lobby\",\"body\":\"hi\"}",
            b"{\"op\":\"publish\",\"room\":\"lobby\",\"body\":\"hello again\"}",
            b"",
            &[7u8; 100_000],
        ];
        let mut encoder =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        let mut codec = client();
        for message in messages {
            encoder.write_all(message).unwrap();
            encoder.flush().unwrap(); // sync flush
            let out = std::mem::take(encoder.get_mut());
            // flate2 writes nothing at all for an empty message; we take an
            // empty payload as the empty message.
            let stripped = out.strip_suffix(&SYNC_TAIL).unwrap_or(&out);
            assert_eq!(stripped.is_empty(), message.is_empty());
            assert_eq!(inflate_whole(&mut codec, stripped).unwrap(), message);
        }
    }

    #[test]
    fn flate2_decodes_our_output() {
        let mut server = codec_for(Side::Server);
        let mut reference = Decompress::new(false);
        for message in [&b"abcabcabc"[..], b"abcabcabcabc", b"", &[1u8; 70_000]] {
            let mut wire = deflate(&mut server, message);
            wire.extend_from_slice(&SYNC_TAIL);
            let mut out = Vec::with_capacity(message.len() + 16);
            reference
                .decompress_vec(&wire, &mut out, FlushDecompress::Sync)
                .unwrap();
            assert_eq!(out, message);
        }
    }

    // ---- round trips over every parameter combination ------------------

    /// Decodes `wire` (one message, tail stripped) with a zlib stream whose
    /// window is exactly `bits`: proves we never exceed the negotiated window.
    fn reference_inflate(reference: &mut Decompress, wire: &[u8]) -> Vec<u8> {
        let mut input = wire.to_vec();
        input.extend_from_slice(&SYNC_TAIL);
        let mut out = Vec::with_capacity(1 << 16);
        let mut rest = &input[..];
        loop {
            let before = reference.total_in();
            out.reserve(1 << 16);
            reference
                .decompress_vec(rest, &mut out, FlushDecompress::Sync)
                .unwrap();
            rest = &rest[(reference.total_in() - before) as usize..];
            if rest.is_empty() && out.len() < out.capacity() {
                return out;
            }
        }
    }

    fn sample_messages() -> Vec<Vec<u8>> {
        let text: Vec<u8> = (0..3000u32)
            .flat_map(|i| format!("msg {} value {} ", i % 97, i * 7 % 13).into_bytes())
            .collect();
        let noise: Vec<u8> = (0..5000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        vec![
            text[..2000].to_vec(),
            text[500..2500].to_vec(),
            Vec::new(),
            noise,
            text.clone(),
            b"x".to_vec(),
            text[..2000].to_vec(),
        ]
    }

    #[test]
    fn every_combination_round_trips_within_the_window() {
        let messages = sample_messages();
        for side in [Side::Server, Side::Client] {
            let peer = match side {
                Side::Server => Side::Client,
                Side::Client => Side::Server,
            };
            for nct in [false, true] {
                for bits in 9..=15u8 {
                    for level in 0..=9u32 {
                        let p = params(nct, bits);
                        let mut tx = codec(side, p, level);
                        let mut rx = codec(peer, p, level);
                        let mut reference = Decompress::new_with_window_bits(false, bits);
                        let mut first_len = None;
                        for message in &messages {
                            let wire = deflate(&mut tx, message);
                            assert_eq!(
                                &inflate_whole(&mut rx, &wire).unwrap(),
                                message,
                                "{side:?} nct {nct} bits {bits} level {level}"
                            );
                            assert_eq!(&reference_inflate(&mut reference, &wire), message);
                            if nct {
                                reference.reset(false);
                                // A reset compressor gives the same bytes for
                                // the same message each time.
                                if message == &messages[0] {
                                    let len = *first_len.get_or_insert(wire.len());
                                    assert_eq!(len, wire.len());
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn message_strategy() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            // Compressible: a short pattern from a small alphabet, repeated.
            (
                prop::collection::vec(prop::sample::select(b"ab{}\":, 01".to_vec()), 0..64),
                1..200usize
            )
                .prop_map(|(pattern, times)| pattern.repeat(times)),
            prop::collection::vec(any::<u8>(), 0..3000),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn prop_round_trip_any_chunking(
            server_nct in any::<bool>(),
            client_nct in any::<bool>(),
            server_bits in 9..=15u8,
            client_bits in 9..=15u8,
            level in 0..=9u32,
            messages in prop::collection::vec(message_strategy(), 1..8),
            cuts in prop::collection::vec(any::<usize>(), 0..6),
        ) {
            let p = DeflateParams {
                server_no_context_takeover: server_nct,
                client_no_context_takeover: client_nct,
                server_max_window_bits: server_bits,
                client_max_window_bits: client_bits,
            };
            let mut server = codec(Side::Server, p, level);
            let mut client = codec(Side::Client, p, level);
            for message in &messages {
                // Server to client, received in arbitrary frames.
                let wire = deflate(&mut server, message);
                let frames = split_at_cuts(&wire, &cuts);
                let got = inflate_frames(&mut client, &frames, LIMIT).unwrap();
                prop_assert_eq!(&got[..], &message[..]);
                // Client to server, whole.
                let wire = deflate(&mut client, message);
                prop_assert_eq!(&inflate_whole(&mut server, &wire).unwrap(), message);
            }
        }

        #[test]
        fn prop_arbitrary_input_never_panics_or_overflows(
            frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..6),
            limit in 0..4096usize,
        ) {
            let mut codec = client();
            let mut dst = BytesMut::from(&b"prefix"[..]);
            let mut first_error = None;
            for (i, frame) in frames.iter().enumerate() {
                let result = codec.decompress(frame, i + 1 == frames.len(), &mut dst, limit);
                prop_assert!(dst.len() - 6 <= limit);
                match (first_error, result) {
                    (None, Err(e)) => first_error = Some(e),
                    (Some(e), r) => prop_assert_eq!(r, Err(e)),
                    (None, Ok(())) => {}
                }
            }
        }
    }

    // ---- limits ------------------------------------------------------------

    fn zeros_bomb() -> Vec<u8> {
        let mut server = codec(Side::Server, params(false, 15), 9);
        let wire = deflate(&mut server, &vec![0u8; 10 << 20]);
        assert!(wire.len() < 12 * 1024, "{}", wire.len());
        wire
    }

    #[test]
    fn bomb_stops_at_the_limit_with_bounded_memory() {
        let wire = zeros_bomb();
        let limit = 1 << 20;
        for frame_size in [wire.len(), 1000, 7] {
            let mut codec = client();
            let mut dst = BytesMut::new();
            let mut result = Ok(());
            let frames: Vec<&[u8]> = wire.chunks(frame_size).collect();
            for (i, frame) in frames.iter().enumerate() {
                result = codec.decompress(frame, i + 1 == frames.len(), &mut dst, limit);
                if result.is_err() {
                    break;
                }
            }
            assert_eq!(result, Err(DeflateError::MessageTooLarge { limit }));
            assert_eq!(DeflateError::MessageTooLarge { limit }.close_code(), 1009);
            assert!(dst.len() <= limit);
            // BytesMut may round its growth up, never past twice the limit.
            assert!(dst.capacity() <= 2 * limit, "capacity {}", dst.capacity());
            assert!(dst.iter().all(|&b| b == 0));
            // Final: the next frame gets the same answer.
            assert_eq!(codec.decompress(&[0x00], true, &mut dst, limit), result);
        }
    }

    #[test]
    fn limit_is_exact_and_counts_across_frames() {
        let message = vec![b'z'; 10_000];
        let mut server = codec_for(Side::Server);
        let wire = deflate(&mut server, &message);
        let (a, b) = wire.split_at(wire.len() / 2);

        let got = inflate_frames(&mut client(), &[a, b], message.len()).unwrap();
        assert_eq!(&got[..], &message[..]);
        assert_eq!(
            inflate_frames(&mut client(), &[a, b], message.len() - 1),
            Err(DeflateError::MessageTooLarge { limit: 9_999 })
        );
        // A limit of zero still accepts the empty message.
        assert_eq!(
            &inflate_frames(&mut client(), &[&[0x00]], 0).unwrap()[..],
            b""
        );
        // The count restarts with each message.
        let mut codec = client();
        for _ in 0..3 {
            let mut server = codec_with(Side::Server, true, false);
            let wire = deflate(&mut server, &message);
            let mut rx = codec_with(Side::Client, true, false);
            assert_eq!(
                inflate_frames(&mut rx, &[&wire], 10_000).unwrap().len(),
                10_000
            );
            let wire = deflate(&mut codec_for(Side::Server), HELLO);
            let _ = &mut codec;
            assert_eq!(inflate_frames(&mut client(), &[&wire], 5).unwrap().len(), 5);
        }
    }

    #[test]
    fn corrupt_input_is_a_typed_final_error() {
        let mut codec = client();
        // BTYPE 11 is reserved.
        let mut dst = BytesMut::new();
        let err = codec
            .decompress(&[0xff, 0xff, 0xff], true, &mut dst, LIMIT)
            .unwrap_err();
        assert_eq!(err, DeflateError::Corrupt);
        assert_eq!(err.close_code(), 1007);
        assert!(!err.to_string().is_empty());
        assert_eq!(
            codec.decompress(
                &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
                true,
                &mut dst,
                LIMIT
            ),
            Err(DeflateError::Corrupt)
        );
        // A distance beyond anything sent.
        assert_eq!(
            inflate_whole(&mut client(), &[0xf2, 0x00, 0x11, 0x00, 0x01, 0x00]),
            Err(DeflateError::Corrupt)
        );
    }

    // ---- configuration -------------------------------------------------------

    #[test]
    fn window_bits_and_level_are_checked() {
        let config = DeflateConfig::default();
        assert_eq!(config.validate(), Ok(()));
        let p = DeflateParams {
            server_max_window_bits: 8,
            ..params(false, 15)
        };
        // We cannot compress with 8 bits as the server ...
        assert_eq!(
            PerMessageDeflate::new(Side::Server, p, &config).unwrap_err(),
            DeflateConfigError::WindowBits { bits: 8 }
        );
        // ... but decode a server that does, as the client.
        assert!(PerMessageDeflate::new(Side::Client, p, &config).is_ok());
        let p = params(false, 16);
        assert!(PerMessageDeflate::new(Side::Client, p, &config).is_err());
        let bad_level = DeflateConfig {
            compression_level: 10,
            ..DeflateConfig::default()
        };
        assert_eq!(
            bad_level.validate(),
            Err(DeflateConfigError::Level { level: 10 })
        );
        assert!(PerMessageDeflate::new(Side::Client, params(false, 15), &bad_level).is_err());
        let bad_bits = DeflateConfig {
            client_max_window_bits: 8,
            ..DeflateConfig::default()
        };
        assert_eq!(
            bad_bits.validate(),
            Err(DeflateConfigError::WindowBits { bits: 8 })
        );
        assert!(
            !DeflateConfigError::WindowBits { bits: 8 }
                .to_string()
                .is_empty()
        );
    }

    #[test]
    fn min_compress_size_and_release() {
        let config = DeflateConfig {
            min_compress_size: 64,
            ..DeflateConfig::default()
        };
        let p = DeflateParams {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            ..params(false, 15)
        };
        let mut server = PerMessageDeflate::new(Side::Server, p, &config).unwrap();
        assert!(!server.should_compress(63));
        assert!(server.should_compress(64));
        let mut client = PerMessageDeflate::new(Side::Client, p, &config).unwrap();
        for _ in 0..3 {
            let wire = deflate(&mut server, HELLO);
            server.release_idle_streams();
            assert!(server.compressor.is_none());
            // Mid-message the decompressor is kept.
            let mut dst = BytesMut::new();
            client
                .decompress(&wire[..2], false, &mut dst, LIMIT)
                .unwrap();
            client.release_idle_streams();
            assert!(client.decompressor.is_some());
            client
                .decompress(&wire[2..], true, &mut dst, LIMIT)
                .unwrap();
            client.release_idle_streams();
            assert!(client.decompressor.is_none());
            assert_eq!(&dst[..], HELLO);
        }
        // Under context takeover nothing is released.
        let mut keep = codec_for(Side::Server);
        let _ = deflate(&mut keep, HELLO);
        keep.release_idle_streams();
        assert!(keep.compressor.is_some());
    }

    #[test]
    fn streams_are_created_lazily() {
        let codec = client();
        assert!(codec.compressor.is_none() && codec.decompressor.is_none());
    }

    // ---- fuzz corpus replay ----------------------------------------------------

    /// The same interpretation as `fuzz/fuzz_targets/ws_inflate.rs` (see
    /// its doc for the layout), with the same assertions. Returns the
    /// messages received in inflate mode and the error that ended it.
    fn fuzz_one(data: &[u8]) -> (Vec<Vec<u8>>, Option<DeflateError>) {
        let mut received = Vec::new();
        let Some((&control, mut rest)) = data.split_first() else {
            return (received, None);
        };
        let p = DeflateParams {
            server_no_context_takeover: control & 1 != 0,
            client_no_context_takeover: control & 2 != 0,
            server_max_window_bits: 9 + (control >> 2) % 7,
            client_max_window_bits: 15,
        };
        let round_trip = control & 0x80 != 0;
        let limit = 1 << 16;
        let config = DeflateConfig::default();
        let mut server = PerMessageDeflate::new(Side::Server, p, &config).unwrap();
        let mut client = PerMessageDeflate::new(Side::Client, p, &config).unwrap();
        let mut dst = BytesMut::new();
        while let Some((&header, tail)) = rest.split_first() {
            let len = usize::from(header & 0x7f).min(tail.len());
            let (payload, next) = tail.split_at(len);
            rest = next;
            if round_trip {
                let mut wire = BytesMut::new();
                server.compress(payload, &mut wire).unwrap();
                let mut out = BytesMut::new();
                client.decompress(&wire, true, &mut out, limit).unwrap();
                assert_eq!(&out[..], payload);
            } else {
                let fin = header & 0x80 != 0;
                let result = client.decompress(payload, fin, &mut dst, limit);
                assert!(dst.len() <= limit);
                if let Err(error) = result {
                    assert!(matches!(error.close_code(), 1007 | 1009));
                    assert_eq!(client.decompress(&[], true, &mut dst, limit), Err(error));
                    return (received, Some(error));
                }
                if fin {
                    received.push(dst.split().to_vec());
                }
            }
        }
        (received, None)
    }

    proptest! {
        #[test]
        fn prop_fuzz_harness_never_panics(data in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = fuzz_one(&data);
        }
    }
}
