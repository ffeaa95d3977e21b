//! Per-message payload compression: raw deflate, every message on its own.

use std::fmt;

use bytes::{Bytes, BytesMut};

use super::envelope::DecodeError;
use crate::ws::Side;
use crate::ws::deflate::{DeflateConfig, DeflateParams, PerMessageDeflate};

/// When and how hard to compress payloads.
///
/// `#[non_exhaustive]`, so a new field is not a breaking change: start from
/// [`default`](Self::default) and chain the `with_*` methods; the fields
/// stay public, to read and to set on a value you own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompressionConfig {
    /// Payloads shorter than this are sent as they are. Default 1024 bytes.
    pub threshold: usize,
    /// zlib level 0..=9. Default 6.
    pub level: u32,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self {
            threshold: 1024,
            level: 6,
        }
    }
}

impl CompressionConfig {
    /// Payloads shorter than this are sent as they are (default 1024
    /// bytes).
    #[must_use]
    pub const fn with_threshold(mut self, threshold: usize) -> Self {
        self.threshold = threshold;
        self
    }

    /// zlib level 0..=9 (default 6).
    #[must_use]
    pub const fn with_level(mut self, level: u32) -> Self {
        self.level = level;
        self
    }
}

/// The compression level is above 9 (local misuse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompressionConfigError {
    /// The level given.
    pub level: u32,
}

impl fmt::Display for CompressionConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "compression level {} is above 9", self.level)
    }
}

impl std::error::Error for CompressionConfigError {}

/// Compresses and inflates payloads, each on its own (no shared window, so
/// any message can be inflated alone and a corrupt one spoils nothing
/// else). The compressed form is raw deflate up to a sync flush, as
/// permessage-deflate (RFC 7692) writes it; this reuses that codec with
/// no-context-takeover on both sides.
///
/// Inflating may always be done (a peer may compress whatever it likes);
/// compressing happens only with a [`CompressionConfig`], for payloads at
/// or above its threshold, and only when it makes the payload smaller.
#[derive(Debug)]
pub struct Deflate {
    compression: Option<CompressionConfig>,
    codec: PerMessageDeflate,
}

fn codec(level: u32) -> Result<PerMessageDeflate, CompressionConfigError> {
    let params = DeflateParams {
        server_no_context_takeover: true,
        client_no_context_takeover: true,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    };
    let config = DeflateConfig {
        compression_level: level,
        ..DeflateConfig::default()
    };
    // Both directions reset per message; the side only picks which flag is
    // "ours", and both are set.
    PerMessageDeflate::new(Side::Client, params, &config)
        .map_err(|_| CompressionConfigError { level })
}

impl Deflate {
    /// A codec that compresses by `compression` (`None`: never compresses,
    /// still inflates).
    ///
    /// # Errors
    ///
    /// [`CompressionConfigError`] if the level is above 9.
    pub fn new(compression: Option<CompressionConfig>) -> Result<Self, CompressionConfigError> {
        let level = compression.map_or(6, |c| c.level);
        Ok(Self {
            compression,
            codec: codec(level)?,
        })
    }

    /// The payload to send and whether it is compressed: compressed when
    /// compression is on, `payload` is at least the threshold, and the
    /// result is smaller; otherwise `payload` itself.
    pub fn compress(&mut self, payload: Bytes) -> (Bytes, bool) {
        let Some(config) = self.compression else {
            return (payload, false);
        };
        if payload.len() < config.threshold || payload.is_empty() {
            return (payload, false);
        }
        let mut out = BytesMut::new();
        match self.codec.compress(&payload, &mut out) {
            Ok(()) if out.len() < payload.len() => (out.freeze(), true),
            Ok(()) => (payload, false),
            Err(_) => {
                // zlib failed (not expected); start afresh and send plain.
                if let Ok(fresh) = codec(config.level) {
                    self.codec = fresh;
                }
                (payload, false)
            }
        }
    }

    /// Inflates a compressed payload to at most `max` bytes.
    ///
    /// # Errors
    ///
    /// [`DecodeError::PayloadTooLarge`] when it would inflate past `max`
    /// (nothing beyond `max` is ever buffered), [`DecodeError::Corrupt`]
    /// for invalid deflate data. The codec is ready for the next message
    /// either way.
    pub fn decompress(&mut self, payload: &[u8], max: usize) -> Result<Bytes, DecodeError> {
        let mut out = BytesMut::new();
        match self.codec.decompress(payload, true, &mut out, max) {
            Ok(()) => Ok(out.freeze()),
            Err(error) => {
                let level = self.compression.map_or(6, |c| c.level);
                if let Ok(fresh) = codec(level) {
                    self.codec = fresh;
                }
                Err(match error {
                    crate::ws::deflate::DeflateError::MessageTooLarge { .. } => {
                        DecodeError::PayloadTooLarge {
                            len: max.saturating_add(1),
                            max,
                        }
                    }
                    _ => DecodeError::Corrupt,
                })
            }
        }
    }
}
