//! permessage-deflate (RFC 7692).

/// What this endpoint is willing to negotiate for permessage-deflate.
///
/// Off unless a connection's configuration carries one. The defaults offer
/// (client) or accept (server) the full 32 KiB window with context takeover
/// on both sides, which compresses best; the `*_no_context_takeover` flags
/// trade ratio for memory (no window kept between messages).
#[derive(Debug, Clone, PartialEq, Eq)]
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

// TEMPORARY stub so the connection compiles before the codec lands.
#[doc(hidden)]
#[derive(Debug)]
pub struct PerMessageDeflate;
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeflateError;
impl std::fmt::Display for DeflateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deflate")
    }
}
impl std::error::Error for DeflateError {}
#[allow(missing_docs)]
impl DeflateError {
    pub fn close_code(&self) -> u16 {
        1007
    }
}
#[allow(missing_docs)]
impl PerMessageDeflate {
    pub fn new(_: DeflateParams, _: super::Side, _: &DeflateConfig) -> Self {
        Self
    }
    pub fn should_compress(&self, _: usize) -> bool {
        false
    }
    pub fn compress(&mut self, _: &[u8], _: &mut bytes::BytesMut) -> Result<(), DeflateError> {
        Err(DeflateError)
    }
    pub fn decompress(
        &mut self,
        _: &[u8],
        _: bool,
        _: &mut bytes::BytesMut,
        _: usize,
    ) -> Result<(), DeflateError> {
        Err(DeflateError)
    }
}
