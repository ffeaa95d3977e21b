//! The server's side: requests in, cancels, replies out.

use std::collections::HashSet;
use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;

use super::calls::{CallsConfig, CallsConfigError};
use super::deflate::Deflate;
use super::envelope::{DecodeError, Envelope, FLAG_COMPRESSED, Fault, Kind};
use crate::Utf8Bytes;

/// A request for the application, payload inflated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingRequest {
    /// The id to answer with.
    pub id: u64,
    /// The method name.
    pub method: Utf8Bytes,
    /// The arguments.
    pub payload: Bytes,
    /// How long the client waits (`None`: no deadline). A server gives up
    /// when it passes: nobody is listening any more.
    pub timeout: Option<Duration>,
    /// The client marked it safe to run twice.
    pub idempotent: bool,
}

/// What a message from a client asks the server to do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Incoming {
    /// Run a request, then [`Serving::respond`].
    Request(IncomingRequest),
    /// Stop working on the request `id` (it was in flight; no reply is
    /// wanted any more, and `respond` will return `None`).
    Cancel(u64),
}

impl Incoming {
    /// The request id it concerns.
    #[must_use]
    pub fn id(&self) -> u64 {
        match self {
            Self::Request(request) => request.id,
            Self::Cancel(id) => *id,
        }
    }
}

/// Counters of a [`Serving`] machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServingStats {
    /// Requests handed to the application.
    pub requests: u64,
    /// Replies encoded (responses and errors).
    pub replies: u64,
    /// Requests cancelled by the client while in flight.
    pub cancelled: u64,
    /// Requests refused without the application (overload, duplicate id,
    /// bad payload).
    pub refused: u64,
}

/// Request handling for one server connection.
///
/// Every message from the client goes to
/// [`handle_frame`](Self::handle_frame): a request comes out as
/// [`Incoming::Request`] and is in flight until
/// [`respond`](Self::respond) encodes its reply; a cancel for a request in
/// flight comes out as [`Incoming::Cancel`] and takes it out of flight (its
/// reply is then dropped). Requests refused without the application (more
/// than `max_pending` in flight, a duplicate id, a payload that does not
/// inflate) are answered by the machine itself: drain
/// [`poll_transmit`](Self::poll_transmit) after each input.
///
/// `max_pending` of the [`CallsConfig`] is the most requests in flight at
/// once; `compression` compresses replies.
#[derive(Debug)]
pub struct Serving {
    config: CallsConfig,
    deflate: Deflate,
    in_flight: HashSet<u64>,
    transmit: VecDeque<Bytes>,
    stats: ServingStats,
}

impl Serving {
    /// Builds the machine.
    ///
    /// # Errors
    ///
    /// As for [`Calls::new`](super::Calls::new).
    pub fn new(config: CallsConfig) -> Result<Self, CallsConfigError> {
        if config.max_pending == 0 {
            return Err(CallsConfigError::ZeroPending);
        }
        let deflate = Deflate::new(config.compression).map_err(CallsConfigError::Compression)?;
        Ok(Self {
            config,
            deflate,
            in_flight: HashSet::new(),
            transmit: VecDeque::new(),
            stats: ServingStats::default(),
        })
    }

    /// Takes one message from a client. `Ok(None)`: nothing for the
    /// application (a refused request, whose error reply is queued in
    /// [`poll_transmit`](Self::poll_transmit), or a cancel for a request
    /// not in flight).
    ///
    /// # Errors
    ///
    /// [`DecodeError`] when it is not a valid envelope, or is a response or
    /// error (clients send neither): the client broke the protocol and the
    /// connection should be dropped.
    pub fn handle_frame(&mut self, frame: Bytes) -> Result<Option<Incoming>, DecodeError> {
        let envelope = Envelope::decode(frame, self.config.max_payload)?;
        match envelope.kind {
            Kind::Request => {}
            Kind::Cancel => {
                if self.in_flight.remove(&envelope.id) {
                    self.stats.cancelled += 1;
                    return Ok(Some(Incoming::Cancel(envelope.id)));
                }
                return Ok(None);
            }
            other => return Err(DecodeError::UnknownKind(other.to_byte())),
        }
        let id = envelope.id;
        if self.in_flight.contains(&id) {
            self.refuse(id, Fault::DUPLICATE_ID, "request id already in flight");
            return Ok(None);
        }
        if self.in_flight.len() >= self.config.max_pending {
            self.refuse(id, Fault::OVERLOADED, "too many requests in flight");
            return Ok(None);
        }
        let payload = if envelope.is_compressed() {
            match self
                .deflate
                .decompress(&envelope.payload, self.config.max_payload)
            {
                Ok(payload) => payload,
                Err(error) => {
                    let code = match error {
                        DecodeError::PayloadTooLarge { .. } => Fault::TOO_LARGE,
                        _ => Fault::BAD_REQUEST,
                    };
                    self.refuse(id, code, &error.to_string());
                    return Ok(None);
                }
            }
        } else {
            envelope.payload.clone()
        };
        self.in_flight.insert(id);
        self.stats.requests += 1;
        Ok(Some(Incoming::Request(IncomingRequest {
            id,
            timeout: envelope.timeout(),
            idempotent: envelope.is_idempotent(),
            method: envelope.method,
            payload,
        })))
    }

    /// Encodes the reply to request `id`: a response with the payload
    /// (compressed if configured and worth it), or an error envelope with
    /// the fault. A payload over `max_payload` becomes a
    /// [`Fault::TOO_LARGE`] error. `None` if `id` is not in flight (it was
    /// cancelled, or answered already).
    pub fn respond(&mut self, id: u64, result: Result<Bytes, Fault>) -> Option<Bytes> {
        if !self.in_flight.remove(&id) {
            return None;
        }
        self.stats.replies += 1;
        let envelope = match result {
            Ok(payload) if payload.len() > self.config.max_payload => {
                let fault = Fault::new(
                    Fault::TOO_LARGE,
                    format!(
                        "response of {} bytes over the limit of {}",
                        payload.len(),
                        self.config.max_payload
                    ),
                );
                Envelope::reply(Kind::Error, id, fault.encode())
            }
            Ok(payload) => {
                let (payload, compressed) = self.deflate.compress(payload);
                let mut envelope = Envelope::reply(Kind::Response, id, payload);
                if compressed {
                    envelope.flags = FLAG_COMPRESSED;
                }
                envelope
            }
            Err(fault) => Envelope::reply(Kind::Error, id, fault.encode()),
        };
        envelope.to_bytes().ok()
    }

    /// Whether request `id` is in flight.
    #[must_use]
    pub fn is_in_flight(&self, id: u64) -> bool {
        self.in_flight.contains(&id)
    }

    /// Requests in flight.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The next reply the machine wrote itself (refusals).
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmit.pop_front()
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> ServingStats {
        self.stats
    }

    fn refuse(&mut self, id: u64, code: u16, message: &str) {
        self.stats.refused += 1;
        let fault = Fault::new(code, message);
        if let Ok(frame) = Envelope::reply(Kind::Error, id, fault.encode()).to_bytes() {
            self.transmit.push_back(frame);
        }
    }
}
