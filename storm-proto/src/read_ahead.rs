//! The room a link reads the next message into at a message boundary,
//! before that message's length is known, while large messages flow: the
//! one rule for length-prefixed links and WebSocket connections.
//!
//! Without it, a read that starts at a boundary goes through the adapter's
//! shared buffer (16 KiB), is copied into the input buffer, and the rest
//! of the message needs a second read and often a second copy (the input
//! buffer moves when the rest is reserved). With it, a peer sending a
//! stream of 64 KiB messages has each read in one read, into an
//! allocation of its own, with no copy.

use bytes::buf::Limit;
use bytes::{BufMut, BytesMut};

use crate::ws::{DIRECT_READ_MIN, RESERVE_AHEAD};

/// What a link knows of the peer's large messages, to size a read at a
/// message boundary as one whole message of the last large one's length.
///
/// - A large message (at least [`DIRECT_READ_MIN`] still to come) whose
///   rest is read in place sets the size ([`large_message`](Self::large_message)):
///   its whole length on the wire, header included, at most
///   [`RESERVE_AHEAD`].
/// - At a boundary, [`room`](Self::room) reserves that much (less what is
///   buffered of the next message) and offers it: a stream of equal
///   messages is then read one message per read, each into its own
///   allocation (the one the application's message keeps).
/// - An in-place read that brought less than it was offered and less
///   than [`DIRECT_READ_MIN`] means the peer sends little now: the size
///   is forgotten and boundary reads go through the adapter's buffer
///   again ([`note_read`](Self::note_read)). So does the link's idle
///   release ([`forget`](Self::forget)).
///
/// Bounded: the room is never more than `RESERVE_AHEAD`, and only the
/// length of a message that was announced within the link's limits and
/// whose rest arrived at the rate of large reads.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ReadAhead {
    /// The wire length of the last large message read in place; 0 when
    /// none, or the peer's reads are small now.
    wire_len: u32,
    /// The room offered for the last read in place.
    offered: u32,
}

impl ReadAhead {
    /// A message of `wire_len` bytes on the wire (its header included)
    /// has its rest read in place: the next boundary read takes as much.
    pub(crate) fn large_message(&mut self, wire_len: usize) {
        self.wire_len = to_u32(wire_len.min(RESERVE_AHEAD));
    }

    /// The room for the next message at a message boundary: `input`
    /// holds nothing or the start of a message whose length is not known
    /// yet. `None` unless large messages flow.
    pub(crate) fn room<'a>(&mut self, input: &'a mut BytesMut) -> Option<Limit<&'a mut BytesMut>> {
        let want = (self.wire_len as usize)
            .checked_sub(input.len())
            .filter(|&n| n > 0)?;
        input.reserve(want);
        Some(self.offer(input, want))
    }

    /// Offers `input`'s room for `len` more bytes (reserved already) to
    /// a read in place, and remembers the offer.
    pub(crate) fn offer<'a>(
        &mut self,
        input: &'a mut BytesMut,
        len: usize,
    ) -> Limit<&'a mut BytesMut> {
        let len = len.min(input.capacity() - input.len());
        self.offered = to_u32(len);
        input.limit(len)
    }

    /// The room offered last.
    pub(crate) fn offered(&self) -> usize {
        self.offered as usize
    }

    /// Whether a boundary read would be offered room.
    pub(crate) fn is_flowing(&self) -> bool {
        self.wire_len > 0
    }

    /// A read in place brought `len` bytes.
    pub(crate) fn note_read(&mut self, len: usize) {
        if len < self.offered() && len < DIRECT_READ_MIN {
            self.wire_len = 0;
        }
    }

    /// Boundary reads go through the adapter's buffer again (an idle
    /// link's release).
    pub(crate) fn forget(&mut self) {
        *self = Self::default();
    }
}

/// `n` as a `u32`, saturating (the sizes here are at most
/// [`RESERVE_AHEAD`]).
fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_offered_before_a_large_message() {
        let mut ahead = ReadAhead::default();
        let mut input = BytesMut::new();
        assert!(ahead.room(&mut input).is_none());
        assert_eq!(input.capacity(), 0);
    }

    #[test]
    fn a_boundary_read_is_offered_the_last_large_messages_length_less_what_is_buffered() {
        let mut ahead = ReadAhead::default();
        ahead.large_message(65_550);
        let mut input = BytesMut::new();
        input.extend_from_slice(&[1, 2]);
        let room = ahead.room(&mut input).unwrap();
        assert_eq!(Limit::limit(&room), 65_548);
        assert_eq!(ahead.offered(), 65_548);
    }

    #[test]
    fn the_room_never_exceeds_reserve_ahead() {
        let mut ahead = ReadAhead::default();
        ahead.large_message(usize::MAX);
        let mut input = BytesMut::new();
        assert_eq!(
            Limit::limit(&ahead.room(&mut input).unwrap()),
            RESERVE_AHEAD
        );
        assert!(input.capacity() <= 2 * RESERVE_AHEAD);
    }

    #[test]
    fn a_short_read_that_did_not_fill_its_room_forgets_the_size() {
        let mut ahead = ReadAhead::default();
        ahead.large_message(20_000);
        let mut input = BytesMut::new();
        let _ = ahead.room(&mut input);
        // A short tail that fills what it was offered keeps it.
        ahead.offered = 100;
        ahead.note_read(100);
        assert!(ahead.is_flowing());
        // Large but partial keeps it.
        ahead.offered = 20_000;
        ahead.note_read(DIRECT_READ_MIN);
        assert!(ahead.is_flowing());
        ahead.note_read(DIRECT_READ_MIN - 1);
        assert!(!ahead.is_flowing());
        assert!(ahead.room(&mut BytesMut::new()).is_none());
    }
}
