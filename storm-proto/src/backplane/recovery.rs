//! The recovery rule: what a client that comes back with its last position
//! missed, or why that cannot be known.

use std::fmt;
use std::ops::RangeInclusive;

use super::{Epoch, Position};

/// Why a client's missed messages cannot be given to it: it must start over
/// (reload the room's state), knowing it may have missed messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unrecoverable {
    /// The room's history started over since the client's position (its
    /// store restarted empty, its keys expired).
    EpochChanged {
        /// The client's epoch.
        was: Epoch,
        /// The room's epoch now.
        now: Epoch,
    },
    /// The client claims an offset the room never reached in this epoch.
    Ahead {
        /// The client's offset.
        since: u64,
        /// The room's last offset.
        top: u64,
    },
    /// The first missed message is no longer in the history (trimmed by
    /// length or age).
    Trimmed {
        /// The first offset the client needs.
        wanted: u64,
        /// The oldest offset the history still has, if any.
        oldest: Option<u64>,
    },
    /// The history skips an offset after the first one needed: it changed
    /// while it was read, or the store lost part of it.
    Incomplete {
        /// The first offset missing.
        missing: u64,
    },
    /// More missed messages than the caller is willing to send.
    TooMany {
        /// How many the client missed.
        missed: u64,
        /// The caller's limit.
        max: u64,
    },
}

impl fmt::Display for Unrecoverable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EpochChanged { was, now } => {
                write!(
                    f,
                    "the room's history started over (epoch {was} is now {now})"
                )
            }
            Self::Ahead { since, top } => {
                write!(f, "offset {since} is past the room's last, {top}")
            }
            Self::Trimmed {
                wanted,
                oldest: Some(oldest),
            } => write!(
                f,
                "offset {wanted} was trimmed: the history starts at {oldest}"
            ),
            Self::Trimmed {
                wanted,
                oldest: None,
            } => {
                write!(f, "offset {wanted} was trimmed: the history is empty")
            }
            Self::Incomplete { missing } => write!(f, "the history lacks offset {missing}"),
            Self::TooMany { missed, max } => {
                write!(
                    f,
                    "{missed} messages missed, more than the {max} a recovery sends"
                )
            }
        }
    }
}

impl std::error::Error for Unrecoverable {}

/// The offsets a client at `since` missed, given the room's last position
/// `top`: `Ok(None)` if it missed nothing, `Ok(Some(range))` for the range
/// to read from the history (then pass what was read to [`recover`]).
///
/// # Errors
///
/// [`Unrecoverable`] when the epochs differ, `since` is past `top`, or more
/// than `max` messages were missed. (Whether the history still holds them
/// only [`recover`] can tell.)
pub fn recovery_range(
    since: Position,
    top: Position,
    max: u64,
) -> Result<Option<RangeInclusive<u64>>, Unrecoverable> {
    if since.epoch != top.epoch {
        return Err(Unrecoverable::EpochChanged {
            was: since.epoch,
            now: top.epoch,
        });
    }
    let Some(missed) = top.offset.checked_sub(since.offset) else {
        return Err(Unrecoverable::Ahead {
            since: since.offset,
            top: top.offset,
        });
    };
    if missed > max {
        return Err(Unrecoverable::TooMany { missed, max });
    }
    Ok((missed > 0).then(|| since.offset + 1..=top.offset))
}

/// Exactly the messages a client at `since` missed up to the room's last
/// position `top`, in order, with no gap and no duplicate, from `window`:
/// the history's entries as `(offset, message)` in ascending offset order
/// (read after `top`, so it may go past it or start before `since`; those
/// entries are left out).
///
/// ```
/// use storm_proto::backplane::{Epoch, Position, Unrecoverable, recover};
///
/// let epoch = Epoch::new(1).unwrap();
/// let at = |offset| Position::new(epoch, offset);
/// let window = [(3, "c"), (4, "d"), (5, "e")];
/// assert_eq!(recover(at(3), at(5), 100, window), Ok(vec!["d", "e"]));
/// assert_eq!(
///     recover(at(1), at(5), 100, window),
///     Err(Unrecoverable::Trimmed { wanted: 2, oldest: Some(3) }),
/// );
/// ```
///
/// # Errors
///
/// [`Unrecoverable`]: as [`recovery_range`], or the window lacks the first
/// missed offset (trimmed) or a later one (incomplete).
pub fn recover<T>(
    since: Position,
    top: Position,
    max: u64,
    window: impl IntoIterator<Item = (u64, T)>,
) -> Result<Vec<T>, Unrecoverable> {
    let Some(range) = recovery_range(since, top, max)? else {
        return Ok(Vec::new());
    };
    let (first, last) = (*range.start(), *range.end());
    let mut out = Vec::new();
    let mut oldest = None;
    let mut next = first;
    for (offset, message) in window {
        oldest.get_or_insert(offset);
        if offset < next {
            continue; // before `since`, or repeated
        }
        if offset != next {
            break; // a hole
        }
        out.push(message);
        if offset == last {
            return Ok(out);
        }
        next += 1;
    }
    if next == first && oldest.is_none_or(|oldest| oldest > first) {
        Err(Unrecoverable::Trimmed {
            wanted: first,
            oldest,
        })
    } else {
        Err(Unrecoverable::Incomplete { missing: next })
    }
}
