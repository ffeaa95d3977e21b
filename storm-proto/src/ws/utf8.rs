//! Incremental UTF-8 validation for text messages that arrive in pieces.
//!
//! A text message may be split across frames and a frame across reads; a
//! code point may be split anywhere. The validator keeps at most three bytes
//! of an unfinished code point and fails at the first byte that no valid
//! continuation could follow, so an invalid message is rejected as soon as its
//! bad byte arrives rather than when the message ends.

/// Validates UTF-8 fed in arbitrary pieces.
#[derive(Debug, Default, Clone)]
pub(crate) struct Utf8Validator {
    pending: [u8; 4],
    pending_len: usize,
}

/// The input can no longer be valid UTF-8, whatever follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InvalidUtf8;

/// How many bytes a code point starting with `first` has (0 for a byte that
/// cannot start one).
const fn char_width(first: u8) -> usize {
    match first {
        0x00..=0x7F => 1,
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 0,
    }
}

impl Utf8Validator {
    /// Checks the next piece. `Ok` means "valid so far".
    pub(crate) fn feed(&mut self, mut data: &[u8]) -> Result<(), InvalidUtf8> {
        if self.pending_len > 0 {
            let width = char_width(self.pending[0]);
            let take = (width - self.pending_len).min(data.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&data[..take]);
            self.pending_len += take;
            data = &data[take..];
            match std::str::from_utf8(&self.pending[..self.pending_len]) {
                Ok(_) => self.pending_len = 0,
                Err(e) if e.error_len().is_some() => return Err(InvalidUtf8),
                // Still a valid prefix of a code point, and `data` is used up.
                Err(_) => return Ok(()),
            }
        }
        // ASCII, the usual text, in words (`from_utf8` goes byte by byte
        // over short or unaligned input).
        if data.is_ascii() {
            return Ok(());
        }
        match std::str::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(InvalidUtf8),
            Err(e) => {
                let rest = &data[e.valid_up_to()..];
                self.pending[..rest.len()].copy_from_slice(rest);
                self.pending_len = rest.len();
                Ok(())
            }
        }
    }

    /// Checks that the input ended on a code point boundary, and resets the
    /// validator for the next message.
    pub(crate) fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let complete = self.pending_len == 0;
        self.pending_len = 0;
        if complete { Ok(()) } else { Err(InvalidUtf8) }
    }

    /// Forgets any unfinished code point.
    pub(crate) fn reset(&mut self) {
        self.pending_len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check_in_pieces(data: &[u8], cuts: &[usize]) -> Result<(), InvalidUtf8> {
        let mut v = Utf8Validator::default();
        let mut start = 0;
        for &cut in cuts {
            let cut = cut.clamp(start, data.len());
            v.feed(&data[start..cut])?;
            start = cut;
        }
        v.feed(&data[start..])?;
        v.finish()
    }

    #[test]
    fn fails_at_first_impossible_byte() {
        // U+10FFFF + 1 starts F4 90: no continuation can rescue it.
        let mut v = Utf8Validator::default();
        v.feed(b"ok ").unwrap();
        assert_eq!(v.feed(&[0xF4]), Ok(()));
        assert_eq!(v.feed(&[0x90]), Err(InvalidUtf8));
        // An unfinished but possible sequence is only wrong at the end.
        let mut v = Utf8Validator::default();
        v.feed(&[0xE2, 0x82]).unwrap();
        assert_eq!(v.finish(), Err(InvalidUtf8));
    }

    #[test]
    fn surrogates_and_overlongs_are_rejected() {
        for bad in [
            &[0xED, 0xA0, 0x80][..],
            &[0xC0, 0x80],
            &[0xE0, 0x80, 0x80],
            &[0xFF],
        ] {
            assert_eq!(check_in_pieces(bad, &[]), Err(InvalidUtf8), "{bad:x?}");
            assert_eq!(check_in_pieces(bad, &[1, 2]), Err(InvalidUtf8), "{bad:x?}");
        }
    }

    /// Sequences no valid text contains: overlong encodings, surrogates,
    /// code points past U+10FFFF, stray continuation bytes, bytes that
    /// never occur, a lead byte followed by ASCII.
    const INVALID: &[&[u8]] = &[
        &[0xC0, 0x80],
        &[0xC1, 0xBF],
        &[0xE0, 0x80, 0x80],
        &[0xE0, 0x9F, 0xBF],
        &[0xF0, 0x80, 0x80, 0x80],
        &[0xF0, 0x8F, 0xBF, 0xBF],
        &[0xED, 0xA0, 0x80],
        &[0xED, 0xBF, 0xBF],
        &[0xF4, 0x90, 0x80, 0x80],
        &[0xF5, 0x80, 0x80, 0x80],
        &[0x80],
        &[0xBF],
        &[0xFE],
        &[0xFF],
        &[0xC3, b'a'],
        &[0xE2, 0x82, b'a'],
    ];

    /// Valid multi-byte code points, each at the edge of its width or of a
    /// forbidden range.
    const VALID: &[&[u8]] = &[
        &[0xC2, 0x80],
        &[0xDF, 0xBF],
        &[0xE0, 0xA0, 0x80],
        &[0xED, 0x9F, 0xBF],
        &[0xEE, 0x80, 0x80],
        &[0xF0, 0x90, 0x80, 0x80],
        &[0xF4, 0x8F, 0xBF, 0xBF],
    ];

    #[test]
    fn sequences_at_every_position_and_cut_agree_with_std() {
        // Each sequence behind 0..17 ASCII bytes (so it straddles every
        // 8-byte boundary) with ASCII after it, fed whole, in two pieces
        // cut anywhere, and byte by byte.
        for &sequence in INVALID.iter().chain(VALID) {
            for lead in 0..17 {
                let mut data = vec![b'x'; lead];
                data.extend_from_slice(sequence);
                data.extend_from_slice(b"tail");
                let expected = std::str::from_utf8(&data).is_ok();
                assert_eq!(expected, VALID.contains(&sequence));
                assert_eq!(check_in_pieces(&data, &[]).is_ok(), expected, "{data:x?}");
                for cut in 0..=data.len() {
                    assert_eq!(
                        check_in_pieces(&data, &[cut]).is_ok(),
                        expected,
                        "{data:x?} cut {cut}"
                    );
                }
                let every: Vec<usize> = (0..data.len()).collect();
                assert_eq!(
                    check_in_pieces(&data, &every).is_ok(),
                    expected,
                    "{data:x?}"
                );
            }
        }
    }

    #[test]
    fn a_code_point_cut_off_at_the_end_fails_only_at_finish() {
        for &sequence in VALID {
            for keep in 1..sequence.len() {
                for lead in 0..9 {
                    let mut data = vec![b'x'; lead];
                    data.extend_from_slice(&sequence[..keep]);
                    let mut v = Utf8Validator::default();
                    // Any piece boundary: valid so far, wrong at the end.
                    for cut in 0..=data.len() {
                        v.reset();
                        assert_eq!(v.feed(&data[..cut]), Ok(()));
                        assert_eq!(v.feed(&data[cut..]), Ok(()));
                        assert_eq!(v.finish(), Err(InvalidUtf8), "{data:x?} cut {cut}");
                    }
                }
            }
        }
    }

    proptest! {
        #[test]
        fn pieces_agree_with_std(data in prop::collection::vec(any::<u8>(), 0..64), cuts in prop::collection::vec(0usize..64, 0..8)) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            let expected = std::str::from_utf8(&data).is_ok();
            prop_assert_eq!(check_in_pieces(&data, &cuts).is_ok(), expected);
        }

        #[test]
        fn valid_text_in_any_pieces(text in "\\PC{0,40}", cuts in prop::collection::vec(0usize..200, 0..8)) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            prop_assert_eq!(check_in_pieces(text.as_bytes(), &cuts), Ok(()));
        }
    }
}
