//! The HTTP/1.1 upgrade handshake, for both sides.
