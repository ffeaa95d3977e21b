//! The provider on storm-std: the same provider (the core's `Assembler`,
//! routing, refusals, cancellation, answers in pieces: all in
//! `provider.rs`) over storm-std's blocking client, with blocking handlers,
//! each on a thread of its own.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use storm_proto::broker::{ChannelId, ErrorPayload, RequestId, RoutingInfo};

use super::super::BrokerError;
use super::super::client::Rt;
use super::{Cancelled, ProviderHandle, ProviderOptions};

/// A provider registered on a channel, on plain threads: storm-std's
/// client (a reader and a writer thread), the serving loop on the thread
/// that calls [`serve`](Self::serve) or
/// [`serve_streamed`](Self::serve_streamed), and each request's blocking
/// handler on a thread of its own (at most `max_concurrent` at once).
/// Behaves as the async [`Provider`](super::Provider) does, with one
/// difference: a handler cannot be stopped while it runs, so when its
/// request is cancelled (by the consumer, or at the broker's timeout) it is
/// told ([`Request::is_cancelled`], [`Request::wait_cancelled`]) and its
/// answer is dropped once it returns. Do not use it from an async task (it
/// would block the executor's thread).
#[derive(Debug)]
pub struct Provider(super::Provider);

/// One request as a blocking handler ([`Provider::serve`]) gets it: as
/// the async [`Request`](super::Request), and whether it was cancelled.
#[derive(Debug)]
#[non_exhaustive]
pub struct Request {
    /// The id the broker gave it (not the consumer's).
    pub id: RequestId,
    /// Which consumer sent it, on which channel.
    pub from: RoutingInfo,
    /// The consumer's `Start` header (usually empty).
    pub header: Bytes,
    /// The data.
    pub payload: Bytes,
    cancelled: Arc<Cancelled>,
}

impl Request {
    /// Whether nobody waits for the answer any more: the consumer
    /// cancelled the request, the broker timed it out, or the connection
    /// ended. The answer of a cancelled request is dropped.
    #[must_use]
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.is_cancelled()
    }

    /// Blocks up to `limit`, returning early with `true` once the request
    /// is cancelled (as for [`is_cancelled`](Self::is_cancelled)): an
    /// interruptible sleep or poll interval.
    #[must_use]
    pub fn wait_cancelled(&self, limit: Duration) -> bool {
        self.cancelled.wait(limit)
    }
}

/// One request as a blocking streaming handler
/// ([`Provider::serve_streamed`]) gets it: who sent it and its header at
/// once, its data piece by piece as it arrives.
#[derive(Debug)]
#[non_exhaustive]
pub struct StreamedRequest {
    /// The id the broker gave it (not the consumer's).
    pub id: RequestId,
    /// Which consumer sent it, on which channel.
    pub from: RoutingInfo,
    /// The consumer's `Start` header (usually empty).
    pub header: Bytes,
    /// The data.
    pub body: RequestBody,
    cancelled: Arc<Cancelled>,
}

impl StreamedRequest {
    /// As [`Request::is_cancelled`] (a cancelled request's body also
    /// ends early).
    #[must_use]
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.is_cancelled()
    }

    /// As [`Request::wait_cancelled`].
    #[must_use]
    pub fn wait_cancelled(&self, limit: Duration) -> bool {
        self.cancelled.wait(limit)
    }
}

/// The data of a blocking [`StreamedRequest`], one `Chunk` payload at a
/// time (an [`Iterator`]); as for the async [`RequestBody`](super::RequestBody), at most
/// [`BODY_FRAMES`](super::BODY_FRAMES) pieces wait here, and while the
/// handler does not take them the provider stops reading its connection.
#[derive(Debug)]
pub struct RequestBody(super::RequestBody);

/// The pieces of data, in order, each waited for on the calling thread;
/// the end comes after the request's `End`, or once it was cancelled.
impl Iterator for RequestBody {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        smol::future::block_on(self.0.next())
    }
}

/// Sends the first part of a response while a blocking streaming handler
/// runs; what the handler returns ends it.
#[derive(Debug)]
pub struct Responder(super::Responder);

impl Responder {
    /// Sends `data` as the response's next pieces, blocking while the
    /// connection is backpressured. Empty data sends nothing.
    ///
    /// # Errors
    ///
    /// [`BrokerError::Disconnected`] if the connection is gone.
    pub fn write(&mut self, data: Bytes) -> Result<(), BrokerError> {
        smol::future::block_on(self.0.write(data))
    }
}

impl Provider {
    /// Connects to the broker at `addr` and registers on `channel`,
    /// blocking until the broker acknowledges.
    ///
    /// # Errors
    ///
    /// As [`Provider::connect`](super::Provider::connect).
    pub fn connect(
        addr: &str,
        channel: ChannelId,
        options: ProviderOptions,
    ) -> Result<Self, BrokerError> {
        smol::future::block_on(super::Provider::open(Rt::std(), addr, channel, options)).map(Self)
    }

    /// A handle that closes the provider (from any thread).
    #[must_use]
    pub fn handle(&self) -> ProviderHandle {
        self.0.handle()
    }

    /// Answers requests with `handler` until the connection ends, blocking
    /// the calling thread: each request, received whole, runs `handler` on
    /// a thread of its own; its `Ok` becomes the response, its `Err` an
    /// `Error` frame to the consumer.
    ///
    /// # Errors
    ///
    /// As [`Provider::serve`](super::Provider::serve).
    pub fn serve<F>(self, handler: F) -> Result<(), BrokerError>
    where
        F: Fn(Request) -> Result<Bytes, ErrorPayload> + Send + Sync + 'static,
    {
        let handler = Arc::new(handler);
        smol::future::block_on(self.0.serve_with(move |request, cancelled| {
            let handler = Arc::clone(&handler);
            let super::Request {
                id,
                from,
                header,
                payload,
            } = request;
            let request = Request {
                id,
                from,
                header,
                payload,
                cancelled,
            };
            async move { handler(request) }
        }))
    }

    /// Answers requests as streams until the connection ends, blocking the
    /// calling thread: `handler` runs on a thread of its own as soon as a
    /// request's `Start` arrives and reads the data piece by piece from
    /// [`StreamedRequest::body`]; as for the async
    /// [`serve_streamed`](super::Provider::serve_streamed), a request that
    /// starts while `max_concurrent` handlers run is answered `BUSY`.
    ///
    /// # Errors
    ///
    /// As [`Provider::serve`](super::Provider::serve).
    pub fn serve_streamed<F>(self, handler: F) -> Result<(), BrokerError>
    where
        F: Fn(StreamedRequest, Responder) -> Result<Bytes, ErrorPayload> + Send + Sync + 'static,
    {
        let handler = Arc::new(handler);
        smol::future::block_on(
            self.0
                .serve_streamed_with(move |request, responder, cancelled| {
                    let handler = Arc::clone(&handler);
                    let super::StreamedRequest {
                        id,
                        from,
                        header,
                        body,
                    } = request;
                    let request = StreamedRequest {
                        id,
                        from,
                        header,
                        body: RequestBody(body),
                        cancelled,
                    };
                    async move { handler(request, Responder(responder)) }
                }),
        )
    }
}
