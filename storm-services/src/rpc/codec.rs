//! Pluggable serialization.

use std::fmt;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Fault;

/// How call parameters and results become bytes. Implement it for any
/// serde format (MessagePack, CBOR, bincode…); both ends must agree.
pub trait Codec: Send + Sync + 'static {
    /// Serializes a value.
    ///
    /// # Errors
    ///
    /// When the format cannot represent the value.
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Bytes, CodecError>;

    /// Deserializes a value.
    ///
    /// # Errors
    ///
    /// When the bytes are not a `T` in this format.
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError>;

    /// Serializes a handler's result; a failure is a [`Fault::INTERNAL`].
    ///
    /// # Errors
    ///
    /// The fault to answer with.
    fn reply<T: Serialize + ?Sized>(&self, value: &T) -> Result<Bytes, Fault> {
        self.encode(value)
            .map_err(|e| Fault::new(Fault::INTERNAL, format!("cannot encode the result: {e}")))
    }
}

/// A value that did not (de)serialize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecError(pub String);

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CodecError {}

/// JSON through `serde_json`: the default codec.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Json;

impl Codec for Json {
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Bytes, CodecError> {
        serde_json::to_vec(value)
            .map(Bytes::from)
            .map_err(|e| CodecError(e.to_string()))
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        serde_json::from_slice(bytes).map_err(|e| CodecError(e.to_string()))
    }
}
