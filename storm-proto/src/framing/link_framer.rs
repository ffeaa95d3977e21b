//! A framer as a link holds it: the built-in framers by value.

use std::any::TypeId;

use bytes::{Bytes, BytesMut};

use super::{DelimiterFramer, Framer, FramingError, LengthPrefixFramer, RawFramer};
use crate::Message;
use crate::tls_sniff::{self, PlainFramer, Sniff};

/// A framer as a link holds it, built from the box a
/// [`Protocol::Framed`](crate::link::Protocol::Framed) carries
/// ([`LinkFramer::new`]): a built-in framer by value, so that its `decode`
/// (and an [`Encoder`](crate::link::Encoder)'s `encode`) is a direct call
/// its caller can take in line (the length-prefix and raw framers'
/// `decode` always is); any other framer behind its box. A [`PlainFramer`]'s
/// check of the peer's opening bytes is held here too, in front of the
/// framer it checks for (a `PlainFramer` is a `LinkFramer` with the
/// check). It decodes, encodes and answers exactly as the framer in the
/// box.
pub(crate) struct LinkFramer {
    framer: Held,
    /// The error a TLS record from the peer is, while its opening bytes
    /// are to be checked ([`PlainFramer`]); `None` once they were not one,
    /// or when they are not checked.
    tls: Option<FramingError>,
}

enum Held {
    LengthPrefix(LengthPrefixFramer),
    Raw(RawFramer),
    Delimiter(Box<DelimiterFramer>),
    Custom(Box<dyn Framer + Send>),
}

/// The `T` in `framer`, or `framer` back when it holds another type.
fn downcast<T: Framer>(framer: Box<dyn Framer + Send>) -> Result<Box<T>, Box<dyn Framer + Send>> {
    // `Any::type_id` through the vtable: the type of the framer in the box.
    if (*framer).type_id() != TypeId::of::<T>() {
        return Err(framer);
    }
    // SAFETY: the box holds a `T` (its type id says so), allocated as one:
    // the cast drops the vtable and keeps the pointer, as
    // `Box<dyn Any>::downcast` does.
    Ok(unsafe { Box::from_raw(Box::into_raw(framer).cast::<T>()) })
}

impl LinkFramer {
    /// The built-in framer in `framer`, by value (a [`PlainFramer`]'s
    /// check and framer), or `framer` itself.
    pub(crate) fn new(framer: Box<dyn Framer + Send>) -> Self {
        match downcast::<PlainFramer>(framer) {
            Ok(plain) => (*plain).into_link_framer(),
            Err(framer) => Self::checked(framer, None),
        }
    }

    /// `framer` (the built-in framer in it by value), behind the check of
    /// the peer's opening bytes when `tls` is the error a TLS record is.
    pub(crate) fn checked(framer: Box<dyn Framer + Send>, tls: Option<FramingError>) -> Self {
        let framer = match downcast::<LengthPrefixFramer>(framer) {
            Ok(framer) => Held::LengthPrefix(*framer),
            Err(framer) => match downcast::<RawFramer>(framer) {
                Ok(framer) => Held::Raw(*framer),
                Err(framer) => match downcast::<DelimiterFramer>(framer) {
                    Ok(framer) => Held::Delimiter(framer),
                    Err(framer) => Held::Custom(framer),
                },
            },
        };
        Self { framer, tls }
    }

    /// Whether the framer is held by value (a built-in one).
    #[cfg(test)]
    pub(crate) fn is_builtin(&self) -> bool {
        !matches!(self.framer, Held::Custom(_))
    }

    /// Checks the opening bytes in `src` while [`tls`](Self::tls) says
    /// to: `Err` for a TLS record, `Ok(true)` while undecided, `Ok(false)`
    /// for plain bytes (and from then on). Out of line: it runs for a
    /// connection's first bytes only.
    #[inline(never)]
    fn undecided(&mut self, src: &[u8]) -> Result<bool, FramingError> {
        let Some(tls) = &self.tls else {
            return Ok(false);
        };
        match tls_sniff::sniff(src) {
            Sniff::Tls => Err(tls.clone()),
            Sniff::NeedMore => Ok(true),
            Sniff::Plain => {
                self.tls = None;
                Ok(false)
            }
        }
    }

    /// The message at the front of `src` as the [`Message`] a link hands
    /// on, when the held framer is the length-prefix or raw one, the
    /// opening bytes are checked, and the message is whole and within the
    /// limit (`LengthPrefixFramer::whole_message`,
    /// `RawFramer::whole_message`); `None`, consuming nothing, for
    /// anything else, which [`decode`](Framer::decode) (or
    /// [`decode_eof`](Framer::decode_eof)) then tells apart. What this
    /// takes, `decode` and `decode_eof` take the same way: a link calls
    /// it first, then `decode`, and sees what `decode` alone gives.
    #[inline(always)]
    pub(crate) fn whole_message(&self, src: &mut BytesMut) -> Option<Message> {
        if self.tls.is_some() {
            return None;
        }
        match &self.framer {
            Held::LengthPrefix(framer) => framer.whole_message(src),
            Held::Raw(framer) => framer.whole_message(src),
            Held::Delimiter(_) | Held::Custom(_) => None,
        }
    }

    /// The held framer, for the methods off the per-message path.
    fn held(&self) -> &dyn Framer {
        match &self.framer {
            Held::LengthPrefix(framer) => framer,
            Held::Raw(framer) => framer,
            Held::Delimiter(framer) => &**framer,
            Held::Custom(framer) => &**framer,
        }
    }

    fn held_mut(&mut self) -> &mut dyn Framer {
        match &mut self.framer {
            Held::LengthPrefix(framer) => framer,
            Held::Raw(framer) => framer,
            Held::Delimiter(framer) => &mut **framer,
            Held::Custom(framer) => &mut **framer,
        }
    }
}

/// Every method is the held framer's, after the check of the opening
/// bytes. `decode`, `decode_eof` and `encode` are taken in line by their
/// callers (the link's `next_event`, `Encoder::encode`), and the built-in
/// framers' into them.
impl Framer for LinkFramer {
    #[inline(always)]
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FramingError> {
        if self.tls.is_some() && self.undecided(src)? {
            return Ok(None);
        }
        match &mut self.framer {
            Held::LengthPrefix(framer) => framer.decode(src),
            Held::Raw(framer) => framer.decode(src),
            Held::Delimiter(framer) => framer.decode(src),
            Held::Custom(framer) => framer.decode(src),
        }
    }

    #[inline(always)]
    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FramingError> {
        // Undecided at the end: too short for a record header, so whatever
        // the framer makes of it.
        if self.tls.is_some() {
            self.undecided(src)?;
        }
        match &mut self.framer {
            Held::LengthPrefix(framer) => framer.decode_eof(src),
            Held::Raw(framer) => framer.decode_eof(src),
            Held::Delimiter(framer) => framer.decode_eof(src),
            Held::Custom(framer) => framer.decode_eof(src),
        }
    }

    #[inline(always)]
    fn encode(&mut self, msg: &[u8], dst: &mut BytesMut) -> Result<(), FramingError> {
        match &mut self.framer {
            Held::LengthPrefix(framer) => framer.encode(msg, dst),
            Held::Raw(framer) => framer.encode(msg, dst),
            Held::Delimiter(framer) => framer.encode(msg, dst),
            Held::Custom(framer) => framer.encode(msg, dst),
        }
    }

    fn remaining(&self, src: &BytesMut) -> Option<usize> {
        // Only once the bytes are known to be plain.
        self.tls
            .is_none()
            .then(|| self.held().remaining(src))
            .flatten()
    }

    fn encode_header(&mut self, msg: &[u8], dst: &mut BytesMut) -> Result<bool, FramingError> {
        self.held_mut().encode_header(msg, dst)
    }

    fn is_stream(&self) -> bool {
        self.held().is_stream()
    }

    fn encoded_len(&self, msg_len: usize) -> usize {
        self.held().encoded_len(msg_len)
    }

    fn max_message_len(&self) -> usize {
        self.held().max_message_len()
    }

    fn encoder(&self) -> Option<Box<dyn Framer + Send>> {
        self.held().encoder()
    }
}
