//! One message between nodes: the backplane envelope.

use std::fmt;
use std::ops::Range;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{Epoch, NodeId, Position};
use crate::{Message, Utf8Bytes};

/// The envelope version this module reads and writes.
pub const VERSION: u8 = 1;
/// Bytes before the name.
pub const HEADER_LEN: usize = 37;
/// Where the position (epoch, then offset; big-endian u64 each) sits: the
/// one part of an encoded envelope that the history's store fills in when
/// it assigns the offset (see [`Envelope::write_position`]).
pub const POSITION_RANGE: Range<usize> = 21..37;
/// Longest room or user name, in bytes.
pub const MAX_NAME_LEN: usize = 1024;
/// The payload is UTF-8 text (a [`Message::Text`]).
const FLAG_TEXT: u8 = 0x01;
/// The origin node delivers the message too, when it comes back
/// ([`Envelope::echo`]).
const FLAG_ECHO: u8 = 0x02;
const KNOWN_FLAGS: u8 = FLAG_TEXT | FLAG_ECHO;

/// Whom an envelope is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// The members of a room, on every node.
    Room,
    /// One user's sessions, on whichever node holds them (a whisper).
    User,
    /// One node (the name its [`NodeTag`](super::NodeTag)), or every node
    /// (the name `all`): what a service tells a node's sessions by id, or
    /// every node.
    Node,
}

impl Kind {
    /// The byte on the wire.
    #[must_use]
    pub fn to_byte(self) -> u8 {
        match self {
            Self::Room => 1,
            Self::User => 2,
            Self::Node => 3,
        }
    }

    /// The kind for a wire byte.
    #[must_use]
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Room),
            2 => Some(Self::User),
            3 => Some(Self::Node),
            _ => None,
        }
    }
}

/// One message between nodes, encoded once per room message whatever the
/// number of sessions it reaches.
///
/// ```text
/// offset  size  field
///      0     1  version (1)
///      1     1  kind: 1 room, 2 user, 3 node
///      2     1  flags: 0x01 the payload is text, 0x02 echo (the origin
///                 delivers it too when it comes back)
///      3     2  N = name length, big-endian u16, 1..=1024
///      5    16  origin: the publishing node's id, big-endian u128
///     21     8  epoch, big-endian u64; 0 = no position
///     29     8  offset, big-endian u64; 0 exactly when the epoch is 0
///     37     N  name: the room or user, UTF-8
///      …  rest  payload (UTF-8 when the text flag is set)
/// ```
///
/// An envelope is one whole pub/sub message or stream entry, so it has no
/// length of its own. A room message is published without a position
/// (zeros) and the history's store writes one into
/// [`POSITION_RANGE`] as it appends (a Redis script: the append, the offset
/// and the publish are one step, so every subscriber sees a room's offsets
/// in order). Only room messages have positions.
///
/// ```
/// use storm_proto::Message;
/// use storm_proto::backplane::{Envelope, Epoch, NodeId, Position};
///
/// let node = NodeId::from_u128(7);
/// let mut wire = Envelope::room(node, "lobby", Message::from("hi")).to_bytes()?.to_vec();
/// let position = Position::new(Epoch::new(3).unwrap(), 1);
/// Envelope::write_position(&mut wire, position);
///
/// let envelope = Envelope::decode(wire.into(), 1024)?;
/// assert_eq!(envelope.position, Some(position));
/// assert_eq!(envelope.name.as_str(), "lobby");
/// assert_eq!(envelope.message, Message::from("hi"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Whom it is for.
    pub kind: Kind,
    /// The node that published it.
    pub origin: NodeId,
    /// The room or user.
    pub name: Utf8Bytes,
    /// Where it sits in the room's history, once the store assigned it.
    pub position: Option<Position>,
    /// The origin did not deliver it to its own sessions as it published
    /// it: it does when the message comes back from the transport, like
    /// every other node (so all see the room's order and its positions).
    /// Otherwise ([`Envelope::room`]'s default) the origin delivered it
    /// first and skips its own copy.
    pub echo: bool,
    /// The message itself.
    pub message: Message,
}

impl Envelope {
    /// A room message from `origin`, not yet positioned.
    #[must_use]
    pub fn room(origin: NodeId, room: &str, message: Message) -> Self {
        Self {
            kind: Kind::Room,
            origin,
            name: Utf8Bytes::from(room),
            position: None,
            echo: false,
            message,
        }
    }

    /// A message from `origin` to one user's sessions.
    #[must_use]
    pub fn user(origin: NodeId, user: &str, message: Message) -> Self {
        Self {
            kind: Kind::User,
            origin,
            name: Utf8Bytes::from(user),
            position: None,
            echo: false,
            message,
        }
    }

    /// A message from `origin` to one node or every node (`to`: the
    /// name of the node's channel, see [`Channels`](super::Channels)).
    #[must_use]
    pub fn node(origin: NodeId, to: &str, message: Message) -> Self {
        Self {
            kind: Kind::Node,
            origin,
            name: Utf8Bytes::from(to),
            position: None,
            echo: false,
            message,
        }
    }

    /// Bytes [`encode`](Self::encode) writes.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.name.as_str().len() + self.message.len()
    }

    /// Appends the wire form to `dst` (reserving its exact length once).
    ///
    /// # Errors
    ///
    /// [`EncodeError`] (local misuse) for an empty name or one longer than
    /// [`MAX_NAME_LEN`], or a position on a user message. Nothing is
    /// written then.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let name = self.name.as_str().as_bytes();
        if name.is_empty() {
            return Err(EncodeError::EmptyName);
        }
        let name_len = match u16::try_from(name.len()) {
            Ok(len) if name.len() <= MAX_NAME_LEN => len,
            _ => return Err(EncodeError::NameTooLong { len: name.len() }),
        };
        if self.kind != Kind::Room && self.position.is_some() {
            return Err(EncodeError::PositionOnUser);
        }
        dst.reserve(self.encoded_len());
        dst.put_u8(VERSION);
        dst.put_u8(self.kind.to_byte());
        let text = if self.message.is_text() { FLAG_TEXT } else { 0 };
        let echo = if self.echo { FLAG_ECHO } else { 0 };
        dst.put_u8(text | echo);
        dst.put_u16(name_len);
        dst.put_u128(self.origin.to_u128());
        let (epoch, offset) = self
            .position
            .map_or((0, 0), |at| (at.epoch.get(), at.offset));
        dst.put_u64(epoch);
        dst.put_u64(offset);
        dst.put_slice(name);
        dst.put_slice(self.message.as_bytes());
        Ok(())
    }

    /// [`encode`](Self::encode) into a fresh buffer.
    ///
    /// # Errors
    ///
    /// As for `encode`.
    pub fn to_bytes(&self) -> Result<Bytes, EncodeError> {
        let mut dst = BytesMut::new();
        self.encode(&mut dst)?;
        Ok(dst.freeze())
    }

    /// Writes `position` into an encoded room envelope: what the history's
    /// store does as it appends (the Redis adapter's script does the same
    /// bytes). Returns `false`, writing nothing, if `encoded` is shorter
    /// than a header or `position` has offset 0 (which no message has).
    pub fn write_position(encoded: &mut [u8], position: Position) -> bool {
        let Some(slot) = encoded.get_mut(POSITION_RANGE) else {
            return false;
        };
        if position.offset == 0 {
            return false;
        }
        let (epoch, offset) = slot.split_at_mut(8);
        epoch.copy_from_slice(&position.epoch.get().to_be_bytes());
        offset.copy_from_slice(&position.offset.to_be_bytes());
        true
    }

    /// Decodes one whole pub/sub message or stream entry, without copying:
    /// the name and payload are slices of `frame`. Total: any input gives an
    /// envelope or an error, never a panic.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] (the sender's fault): too short, another version, an
    /// unknown kind or flag, an empty or too long name, a name or text
    /// payload that is not UTF-8, a position that is half there or on a
    /// user message, a payload over `max_payload`.
    pub fn decode(mut frame: Bytes, max_payload: usize) -> Result<Self, DecodeError> {
        let total = frame.len();
        if total < HEADER_LEN {
            return Err(DecodeError::TooShort { len: total });
        }
        let version = frame.get_u8();
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        let kind_byte = frame.get_u8();
        let kind = Kind::from_byte(kind_byte).ok_or(DecodeError::UnknownKind(kind_byte))?;
        let flags = frame.get_u8();
        if flags & !KNOWN_FLAGS != 0 {
            return Err(DecodeError::UnknownFlags(flags));
        }
        let name_len = usize::from(frame.get_u16());
        if name_len == 0 || name_len > MAX_NAME_LEN {
            return Err(DecodeError::BadNameLen(name_len));
        }
        let origin = NodeId::from_u128(frame.get_u128());
        let epoch = frame.get_u64();
        let offset = frame.get_u64();
        let position = match (Epoch::new(epoch), offset) {
            (None, 0) => None,
            (Some(epoch), 1..) if kind == Kind::Room => Some(Position::new(epoch, offset)),
            (Some(_), 1..) => return Err(DecodeError::PositionOnUser),
            _ => return Err(DecodeError::HalfPosition),
        };
        if frame.len() < name_len {
            return Err(DecodeError::TooShort { len: total });
        }
        let name = Utf8Bytes::try_from_bytes(frame.split_to(name_len))
            .map_err(|_| DecodeError::NameNotUtf8)?;
        if frame.len() > max_payload {
            return Err(DecodeError::PayloadTooLarge {
                len: frame.len(),
                max: max_payload,
            });
        }
        let message = if flags & FLAG_TEXT != 0 {
            Message::Text(Utf8Bytes::try_from_bytes(frame).map_err(|_| DecodeError::TextNotUtf8)?)
        } else {
            Message::Binary(frame)
        };
        Ok(Self {
            kind,
            origin,
            name,
            position,
            echo: flags & FLAG_ECHO != 0,
            message,
        })
    }
}

/// An envelope that cannot be encoded (local misuse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The room or user name is empty.
    EmptyName,
    /// The name is longer than [`MAX_NAME_LEN`] bytes.
    NameTooLong {
        /// Its length.
        len: usize,
    },
    /// A position on a user message (only room messages have one).
    PositionOnUser,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmptyName => f.write_str("empty room or user name"),
            Self::NameTooLong { len } => {
                write!(f, "name of {len} bytes, most is {MAX_NAME_LEN}")
            }
            Self::PositionOnUser => f.write_str("only room messages have a position"),
        }
    }
}

impl std::error::Error for EncodeError {}

/// Bytes that are not a valid envelope (the sending node's fault, or
/// another program publishing on the service's channels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// Shorter than its header says.
    TooShort {
        /// The message length.
        len: usize,
    },
    /// Another envelope version.
    Version(u8),
    /// An unknown kind byte.
    UnknownKind(u8),
    /// Flags this version does not know.
    UnknownFlags(u8),
    /// A name length of 0 or over [`MAX_NAME_LEN`].
    BadNameLen(usize),
    /// The name is not UTF-8.
    NameNotUtf8,
    /// The text flag is set but the payload is not UTF-8.
    TextNotUtf8,
    /// An epoch without an offset, or an offset without an epoch.
    HalfPosition,
    /// A position on a user message.
    PositionOnUser,
    /// The payload is over the limit.
    PayloadTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort { len } => write!(f, "backplane envelope of {len} bytes is truncated"),
            Self::Version(v) => write!(f, "backplane envelope version {v}, expected {VERSION}"),
            Self::UnknownKind(k) => write!(f, "unknown backplane envelope kind {k}"),
            Self::UnknownFlags(flags) => {
                write!(f, "unknown backplane envelope flags {flags:#04x}")
            }
            Self::BadNameLen(len) => {
                write!(f, "name length {len} is not within 1..={MAX_NAME_LEN}")
            }
            Self::NameNotUtf8 => f.write_str("room or user name is not UTF-8"),
            Self::TextNotUtf8 => f.write_str("text payload is not UTF-8"),
            Self::HalfPosition => f.write_str("epoch and offset must both be set or both be 0"),
            Self::PositionOnUser => f.write_str("a user message has no position"),
            Self::PayloadTooLarge { len, max } => {
                write!(f, "payload of {len} bytes over the limit of {max}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}
