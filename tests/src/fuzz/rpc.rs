//! Fuzz driver for the RPC envelope and its machines
//! (`fuzz/fuzz_targets/rpc_envelope.rs`).
//!
//! Input: byte 0 configures the run: bits 0–5 give `max_payload`
//! (0..=63 × 16 bytes), bit 6 turns compression on (threshold 0) for both
//! machines. The rest is a list of records `[len: u8][len bytes]` (the last
//! may be cut short); each record is one transport message.
//!
//! Every record goes to [`Envelope::decode`], to a server machine
//! ([`Serving`]) and to a client machine ([`Calls`]) that started four calls
//! (ids 1–4, deadlines 100–400 ms) before the input. The server answers
//! every request with an odd id at once, echoing its payload; the answer is
//! decoded again.
//!
//! Checked: no panic; a decoded envelope is within `max_payload` and
//! re-encodes to exactly the record; decoding is a pure function (the same
//! error twice); the server never holds more than `max_pending` requests,
//! hands out payloads within the limit, and everything it writes (answers,
//! refusals) is a valid envelope of the right kind for the right id; a
//! client event concerns a call that was pending and is not any more, with
//! at most one event per record; after the last deadline nothing is pending
//! and every timed-out call left a cancel envelope to send.

use std::time::{Duration, Instant};

use bytes::Bytes;
use storm_proto::rpc::{
    CallEvent, Calls, CallsConfig, CompressionConfig, Envelope, Fault, Incoming, Kind, Serving,
};

/// Requests the server machine may hold at once.
const MAX_PENDING: usize = 3;

/// How far one input got (lets the corpus replay check that its seeds reach
/// the paths they were written for).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Records that decoded as envelopes.
    pub decoded: usize,
    /// Requests the server handed to the application.
    pub requests: usize,
    /// Cancels the server honoured.
    pub cancels: usize,
    /// Requests the server refused itself.
    pub refused: usize,
    /// Client calls answered (response or error).
    pub answered: usize,
}

/// Runs one fuzz input; panics if an invariant breaks.
pub fn rpc_envelope(data: &[u8]) {
    let _ = rpc_envelope_outcome(data);
}

/// [`rpc_envelope`], reporting how far the input got.
pub fn rpc_envelope_outcome(data: &[u8]) -> Outcome {
    let Some((&cfg, mut rest)) = data.split_first() else {
        return Outcome::default();
    };
    let max_payload = usize::from(cfg & 0x3f) * 16;
    let mut config = CallsConfig::default();
    config.max_payload = max_payload;
    config.max_pending = MAX_PENDING;
    if cfg & 0x40 != 0 {
        config.compression = Some(CompressionConfig::default().with_threshold(0).with_level(6));
    }
    let mut outcome = Outcome::default();
    let mut server = Serving::new(config.clone()).expect("valid config");
    let mut client_config = config;
    client_config.max_pending = 8;
    let mut client = Calls::new(client_config).expect("valid config");
    let t0 = Instant::now();
    for i in 1..=4u64 {
        let (id, _) = client
            .start(
                t0,
                Some(Duration::from_millis(100 * i)),
                "m",
                Bytes::new(),
                false,
            )
            .expect("room for four calls");
        assert_eq!(id, i);
    }

    while let Some((&len, tail)) = rest.split_first() {
        let (record, next) = tail.split_at(usize::from(len).min(tail.len()));
        rest = next;
        let frame = Bytes::copy_from_slice(record);

        match Envelope::decode(frame.clone(), max_payload) {
            Ok(envelope) => {
                outcome.decoded += 1;
                assert!(envelope.payload.len() <= max_payload);
                assert_eq!(envelope.encoded_len(), record.len());
                let again = envelope.to_bytes().expect("a decoded envelope encodes");
                assert_eq!(&again[..], record, "re-encoding changed the bytes");
            }
            Err(error) => {
                assert!(!error.to_string().is_empty());
                assert_eq!(Envelope::decode(frame.clone(), max_payload), Err(error));
            }
        }

        serve(&mut server, frame.clone(), max_payload, &mut outcome);

        let pending: Vec<u64> = (1..=4).filter(|&id| client.is_pending(id)).collect();
        let _ = client.handle_frame(frame);
        let mut events = 0;
        while let Some(event) = client.poll_event() {
            events += 1;
            let id = match event {
                CallEvent::Response { id, payload } => {
                    assert!(payload.len() <= max_payload);
                    id
                }
                CallEvent::Failed { id, .. } => id,
                other => panic!("a reply produced {other:?}"),
            };
            assert!(pending.contains(&id), "event for call {id}, not pending");
            assert!(!client.is_pending(id));
            outcome.answered += 1;
        }
        assert!(events <= 1, "one record ended {events} calls");
    }

    let left = client.pending();
    client.handle_timeout(t0 + Duration::from_secs(1));
    assert_eq!(client.pending(), 0);
    assert_eq!(client.poll_timeout(), None);
    let mut timed_out = 0;
    while let Some(event) = client.poll_event() {
        assert!(matches!(event, CallEvent::TimedOut(_)), "{event:?}");
        timed_out += 1;
    }
    let mut cancels = 0;
    while let Some(frame) = client.poll_transmit() {
        let envelope = Envelope::decode(frame, 0).expect("a cancel decodes");
        assert_eq!(envelope.kind, Kind::Cancel);
        cancels += 1;
    }
    assert_eq!((timed_out, cancels), (left, left));
    outcome
}

/// Feeds one record to the server machine and checks what it writes.
fn serve(server: &mut Serving, frame: Bytes, max_payload: usize, outcome: &mut Outcome) {
    match server.handle_frame(frame) {
        Ok(Some(Incoming::Request(request))) => {
            outcome.requests += 1;
            assert!(request.payload.len() <= max_payload);
            assert!(server.in_flight() <= MAX_PENDING);
            assert!(server.is_in_flight(request.id));
            if request.id % 2 == 1 {
                let reply = server
                    .respond(request.id, Ok(request.payload.clone()))
                    .expect("an in-flight request gets its reply");
                assert!(!server.is_in_flight(request.id));
                let envelope = Envelope::decode(reply, max_payload).expect("the reply decodes");
                assert_eq!((envelope.kind, envelope.id), (Kind::Response, request.id));
                if !envelope.is_compressed() {
                    assert_eq!(envelope.payload, request.payload);
                }
                assert_eq!(server.respond(request.id, Ok(Bytes::new())), None);
            }
        }
        Ok(Some(Incoming::Cancel(id))) => {
            outcome.cancels += 1;
            assert!(!server.is_in_flight(id));
        }
        Ok(Some(other)) => panic!("unknown incoming {other:?}"),
        Ok(None) | Err(_) => {}
    }
    assert!(server.in_flight() <= MAX_PENDING);
    while let Some(refusal) = server.poll_transmit() {
        outcome.refused += 1;
        let envelope = Envelope::decode(refusal, usize::MAX).expect("a refusal decodes");
        assert_eq!(envelope.kind, Kind::Error);
        let fault = Fault::decode(&envelope.payload);
        assert!(
            matches!(
                fault.code,
                Fault::OVERLOADED | Fault::DUPLICATE_ID | Fault::TOO_LARGE | Fault::BAD_REQUEST
            ),
            "{fault}"
        );
    }
}
