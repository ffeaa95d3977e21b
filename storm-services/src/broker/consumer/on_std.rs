//! The consumer on storm-std: the same consumer (the core's `Requests`,
//! the waiters, cancellation, timeouts: all in `consumer.rs`) over
//! storm-std's blocking client, each call waiting on the caller's thread.

use std::time::Duration;

use bytes::Bytes;
use storm_proto::broker::{ChannelId, RequestId};

use super::super::BrokerError;
use super::super::client::Rt;
use super::ConsumerOptions;

/// A consumer connected to a broker on one channel, on plain threads:
/// storm-std's client (a reader and a writer thread), its frames handed
/// over by a thread of its own, and every call blocking the calling
/// thread until it is done. Cheap to clone; the connection closes when the
/// last clone is dropped (or on [`close`](Self::close)). Behaves as the
/// async [`Consumer`](super::Consumer) does, errors included. Do not call
/// it from an async task (it would block the executor's thread).
#[derive(Clone, Debug)]
pub struct Consumer(super::Consumer);

impl Consumer {
    /// Connects to the broker at `addr` (`host:port`) and registers as a
    /// consumer on `channel`, blocking until the broker acknowledges.
    ///
    /// # Errors
    ///
    /// As [`Consumer::connect`](super::Consumer::connect).
    pub fn connect(
        addr: &str,
        channel: ChannelId,
        options: ConsumerOptions,
    ) -> Result<Self, BrokerError> {
        smol::future::block_on(super::Consumer::open(Rt::std(), addr, channel, options)).map(Self)
    }

    /// Sends `payload` (any size: streamed in chunks, blocking whenever the
    /// connection is backpressured) and blocks until the whole response
    /// arrives, at most `timeout` from now.
    ///
    /// # Errors
    ///
    /// As [`Consumer::request`](super::Consumer::request).
    pub fn request(&self, payload: Bytes, timeout: Duration) -> Result<Bytes, BrokerError> {
        smol::future::block_on(self.0.request(payload, timeout))
    }

    /// Starts a streamed request (sends its `Start` frame); write the data
    /// piece by piece with [`RequestStream::write`], then
    /// [`RequestStream::finish`]. The whole exchange must end within
    /// `timeout` from now.
    ///
    /// # Errors
    ///
    /// As [`Consumer::request`](super::Consumer::request).
    pub fn stream(&self, timeout: Duration) -> Result<RequestStream, BrokerError> {
        smol::future::block_on(self.0.stream(timeout)).map(RequestStream)
    }

    /// Requests waiting for their response.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.0.pending()
    }

    /// Closes the connection; pending requests fail with
    /// [`BrokerError::Disconnected`].
    pub fn close(&self) {
        self.0.close();
    }
}

/// A request under way on a blocking [`Consumer`]: write its data, then
/// wait for the response. Dropping it before the response arrived cancels
/// the request at the broker (and the provider is told).
#[derive(Debug)]
#[must_use = "dropping a RequestStream cancels its request"]
pub struct RequestStream(super::RequestStream);

impl RequestStream {
    /// The request's id.
    #[must_use]
    pub fn id(&self) -> RequestId {
        self.0.id()
    }

    /// Sends `data` as `Chunk` frames of at most the frame size, blocking
    /// whenever the connection is backpressured; stops early with the
    /// request's error when the broker has already failed it.
    ///
    /// # Errors
    ///
    /// As [`Consumer::request`](super::Consumer::request).
    pub fn write(&mut self, data: Bytes) -> Result<(), BrokerError> {
        smol::future::block_on(self.0.write(data))
    }

    /// Ends the request (sends `End`) and blocks until the response.
    ///
    /// # Errors
    ///
    /// As [`Consumer::request`](super::Consumer::request).
    pub fn finish(self) -> Result<Bytes, BrokerError> {
        smol::future::block_on(self.0.finish())
    }

    /// Cancels the request: the broker and the provider are told.
    pub fn cancel(self) {
        self.0.cancel();
    }
}
