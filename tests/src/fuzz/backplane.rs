//! Fuzz driver for the backplane envelope and the subscriber's ordering
//! (`fuzz/fuzz_targets/backplane_envelope.rs`).
//!
//! Input: byte 0 gives `max_payload` (its low 6 bits × 4 bytes). The rest
//! is a list of records `[len: u8][len bytes]` (the last may be cut short);
//! each record is one pub/sub message as a node receives it.
//!
//! Every record goes to [`Envelope::decode`]; what decodes goes to a
//! [`Subscriber`] of node 1 (so envelopes whose origin is 1 are its own).
//!
//! Checked: no panic; a decoded envelope is within `max_payload`, re-encodes
//! to exactly the record, and takes any position the store writes into it;
//! decoding is a pure function (the same error twice); per room and epoch,
//! the offsets the subscriber lets through (delivered or own) strictly grow,
//! a gap names exactly the offsets between the last one and this one, a
//! duplicate is never delivered, and the node's own envelopes are
//! delivered exactly when they are echoes.

use std::collections::HashMap;

use bytes::Bytes;
use storm_proto::backplane::{Envelope, Epoch, NodeId, Order, Position, Subscriber};

/// How far one input got (lets the corpus replay check that its seeds reach
/// the paths they were written for).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Records that decoded as envelopes.
    pub decoded: usize,
    /// Envelopes the subscriber would deliver.
    pub delivered: usize,
    /// The node's own envelopes (delivered too when they are echoes).
    pub own: usize,
    /// Duplicates skipped.
    pub duplicates: usize,
    /// Gaps reported.
    pub gaps: usize,
    /// Epoch changes reported.
    pub epoch_changes: usize,
}

/// Runs one fuzz input; panics if an invariant breaks.
pub fn backplane_envelope(data: &[u8]) {
    let _ = backplane_envelope_outcome(data);
}

/// [`backplane_envelope`], reporting how far the input got.
pub fn backplane_envelope_outcome(data: &[u8]) -> Outcome {
    let Some((&cfg, mut rest)) = data.split_first() else {
        return Outcome::default();
    };
    let max_payload = usize::from(cfg & 0x3f) * 4;
    let mut subscriber = Subscriber::new(NodeId::from_u128(1));
    let mut last: HashMap<String, Position> = HashMap::new();
    let mut outcome = Outcome::default();
    while let Some((&len, tail)) = rest.split_first() {
        let take = usize::from(len).min(tail.len());
        let (record, next) = tail.split_at(take);
        rest = next;
        let decoded = Envelope::decode(Bytes::copy_from_slice(record), max_payload);
        let envelope = match decoded {
            Ok(envelope) => envelope,
            Err(error) => {
                let again = Envelope::decode(Bytes::copy_from_slice(record), max_payload);
                assert_eq!(again, Err(error), "decoding is a pure function");
                continue;
            }
        };
        outcome.decoded += 1;
        assert!(envelope.message.len() <= max_payload);
        let wire = envelope.to_bytes().expect("a decoded envelope encodes");
        assert_eq!(&wire[..], record, "one wire form per envelope");
        if envelope.position.is_some() {
            let mut moved = record.to_vec();
            let at = Position::new(Epoch::new(7).expect("non-zero"), 9);
            assert!(Envelope::write_position(&mut moved, at));
            let repositioned = Envelope::decode(moved.into(), max_payload).expect("still valid");
            assert_eq!(repositioned.position, Some(at));
        }

        let inbound = subscriber.handle(&envelope);
        let room = envelope.name.as_str();
        match (inbound.order, envelope.position) {
            (Order::Unpositioned, None) => {}
            (order, Some(at)) => {
                let before = last.get(room).copied();
                match order {
                    Order::First => assert_eq!(before, None),
                    Order::EpochChanged { was } => {
                        assert_eq!(Some(was), before);
                        assert_ne!(was.epoch, at.epoch);
                        outcome.epoch_changes += 1;
                    }
                    Order::Next => {
                        let was = before.expect("a last position");
                        assert_eq!((was.epoch, was.offset + 1), (at.epoch, at.offset));
                    }
                    Order::Gap { first, last: end } => {
                        let was = before.expect("a last position");
                        assert_eq!(was.epoch, at.epoch);
                        assert_eq!((first, end), (was.offset + 1, at.offset - 1));
                        assert!(first <= end);
                        outcome.gaps += 1;
                    }
                    Order::Duplicate => {
                        let was = before.expect("a last position");
                        assert_eq!(was.epoch, at.epoch);
                        assert!(at.offset <= was.offset);
                        assert!(!inbound.deliver());
                        assert_eq!(subscriber.last(room), Some(was));
                        outcome.duplicates += 1;
                        continue;
                    }
                    Order::Unpositioned => panic!("a positioned envelope taken as unpositioned"),
                }
                last.insert(room.to_owned(), at);
                assert_eq!(subscriber.last(room), Some(at));
            }
            (order, None) => panic!("{order:?} for an unpositioned envelope"),
        }
        if inbound.order != Order::Duplicate {
            assert_eq!(inbound.deliver(), !inbound.own || envelope.echo);
        }
        if inbound.own {
            outcome.own += 1;
        }
        if inbound.deliver() {
            outcome.delivered += 1;
        }
    }
    outcome
}
