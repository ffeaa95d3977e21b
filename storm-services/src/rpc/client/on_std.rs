//! The RPC client on storm-std: the same client (endpoint choice, backoff,
//! deadlines, cancellation, resending idempotent calls: all in
//! `client.rs`) over storm-std's blocking connections, each call waiting
//! on the caller's thread.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::super::codec::{Codec, Json};
use super::super::{Endpoint, RpcError};
use super::{CallOptions, OnStd};

/// A request/response client over one or more endpoints on plain threads
/// (built with [`RpcClientBuilder::build_blocking`](super::RpcClientBuilder::build_blocking)):
/// storm-std's connections (a reader and a writer thread each), every call
/// blocking the calling thread until it ends. Behaves as the async
/// [`RpcClient`](super::RpcClient) does: a call's timeout covers
/// connecting, and cancelling its [`CancelToken`](super::CancelToken)
/// (from another thread) ends it at once and tells the server. Cheap to
/// clone; every clone shares the connections. Do not call it from an
/// async task (it would block the executor's thread).
pub struct RpcClient<C = Json>(pub(super) super::RpcClient<C, OnStd>);

impl<C> Clone for RpcClient<C> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<C> fmt::Debug for RpcClient<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<C: Codec> RpcClient<C> {
    /// Calls `method` with `params`, serialized by the codec, and
    /// deserializes the result, blocking until it ends; `timeout` covers
    /// everything, connecting included.
    ///
    /// # Errors
    ///
    /// As [`RpcClient::call`](super::RpcClient::call).
    pub fn call<Req, Resp>(
        &self,
        method: &str,
        params: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        self.call_with(method, params, CallOptions::new(timeout))
    }

    /// [`call`](Self::call) with [`CallOptions`] (idempotent, cancel
    /// token).
    ///
    /// # Errors
    ///
    /// As [`RpcClient::call_with`](super::RpcClient::call_with).
    pub fn call_with<Req, Resp>(
        &self,
        method: &str,
        params: &Req,
        options: CallOptions,
    ) -> Result<Resp, RpcError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let codec = &self.0.inner.codec;
        let payload = codec.encode(params).map_err(RpcError::Encode)?;
        let bytes = self.call_raw(method, payload, options)?;
        codec.decode(&bytes).map_err(RpcError::Decode)
    }

    /// Calls `method` with raw bytes and returns the raw result, blocking
    /// until it ends.
    ///
    /// # Errors
    ///
    /// As [`RpcClient::call_raw`](super::RpcClient::call_raw).
    pub fn call_raw(
        &self,
        method: &str,
        payload: Bytes,
        options: CallOptions,
    ) -> Result<Bytes, RpcError> {
        smol::future::block_on(self.0.call_on(method, payload, options))
    }

    /// Closes every connection gracefully and returns once they have
    /// closed, so what was queued on them (the cancels of calls just
    /// cancelled) has gone out; later calls fail with
    /// [`RpcError::Closed`].
    pub fn close(&self) {
        smol::future::block_on(self.0.close_on());
    }

    /// The endpoints, in list order.
    #[must_use]
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.0.inner.endpoints
    }
}
