//! Standard input as messages: one per line (or, for raw TCP, the bytes as
//! they come), read on a thread of its own and handed over through a
//! bounded channel, so a client that cannot send holds stdin back instead
//! of buffering it.

use std::io::{self, BufRead, Read};

use bytes::Bytes;
use smol::channel::{Receiver, Sender};
use storm_proto::Message;

/// Lines read ahead of the connection.
const READ_AHEAD: usize = 4;

/// Largest chunk a raw client sends at once.
const RAW_CHUNK: usize = 64 * 1024;

/// What each piece of input becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Each line, without its newline, as a text message (WebSocket). A
    /// line that is not UTF-8 is reported and not sent.
    Text,
    /// Each line, without its newline, as a binary message.
    Binary,
    /// The bytes as they come, newlines included, in chunks (raw TCP has
    /// no messages).
    Raw,
}

/// Reads stdin on a new thread: its messages, then the channel closes at
/// the end of input. A read error is the last item. Lines longer than
/// `max` bytes (and, in [`Mode::Text`], lines that are not UTF-8) are
/// reported on stderr with their number, and skipped.
pub(super) fn spawn(mode: Mode, max: usize) -> Receiver<io::Result<Message>> {
    let (tx, rx) = smol::channel::bounded(READ_AHEAD);
    std::thread::spawn(move || read(io::stdin().lock(), mode, max, &tx));
    rx
}

/// Reads `from` until its end (or until the receiver is gone).
fn read(mut from: impl BufRead, mode: Mode, max: usize, tx: &Sender<io::Result<Message>>) {
    let mut number = 0u64;
    let mut line = Vec::new();
    loop {
        let item = match mode {
            Mode::Raw => raw_chunk(&mut from, max.clamp(1, RAW_CHUNK)).transpose(),
            Mode::Text | Mode::Binary => {
                number += 1;
                match next_line(&mut from, max, &mut line) {
                    Ok(None) => None,
                    Ok(Some(Line::TooLong)) => {
                        eprintln!(
                            "storm client: line {number} is longer than --max-message \
                             ({max} bytes): not sent"
                        );
                        continue;
                    }
                    Ok(Some(Line::Fits)) => {
                        let bytes = Bytes::copy_from_slice(&line);
                        match message(bytes, mode) {
                            Some(message) => Some(Ok(message)),
                            None => {
                                eprintln!(
                                    "storm client: line {number} is not UTF-8: not sent \
                                     (--binary sends lines as binary messages)"
                                );
                                continue;
                            }
                        }
                    }
                    Err(e) => Some(Err(e)),
                }
            }
        };
        let Some(item) = item else { return };
        let failed = item.is_err();
        if tx.send_blocking(item).is_err() || failed {
            return;
        }
    }
}

/// A line's bytes as the message `mode` sends; `None` for text that is not
/// UTF-8.
fn message(bytes: Bytes, mode: Mode) -> Option<Message> {
    match mode {
        Mode::Text => storm_proto::Utf8Bytes::try_from_bytes(bytes)
            .ok()
            .map(Message::Text),
        Mode::Binary | Mode::Raw => Some(Message::Binary(bytes)),
    }
}

/// The next chunk of at most `max` bytes, as a binary message; `None` at
/// the end of input.
fn raw_chunk(from: &mut impl Read, max: usize) -> io::Result<Option<Message>> {
    let mut chunk = vec![0; max];
    loop {
        match from.read(&mut chunk) {
            Ok(0) => return Ok(None),
            Ok(n) => {
                chunk.truncate(n);
                return Ok(Some(Message::Binary(chunk.into())));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// How a line read by [`next_line`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// In `line`, without its `\n` (or `\r\n`).
    Fits,
    /// Longer than the limit: skipped to its end, `line` left empty.
    TooLong,
}

/// Reads the next line of `from` into `line` (replacing what it held),
/// holding at most `max` bytes of it at any time. `Ok(None)` at the end of
/// input; a last line without a newline is a line.
fn next_line(from: &mut impl BufRead, max: usize, line: &mut Vec<u8>) -> io::Result<Option<Line>> {
    line.clear();
    let mut started = false;
    let mut too_long = false;
    loop {
        let buf = match from.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            if !started {
                return Ok(None);
            }
            break;
        }
        started = true;
        let (piece, used, ended) = match buf.iter().position(|&b| b == b'\n') {
            Some(at) => (&buf[..at], at + 1, true),
            None => (buf, buf.len(), false),
        };
        // A `\r` before the `\n` is not counted against the limit: it is
        // not part of the line.
        let room = max.saturating_add(1).saturating_sub(line.len());
        if too_long || piece.len() > room {
            too_long = true;
            line.clear();
        } else {
            line.extend_from_slice(piece);
        }
        from.consume(used);
        if ended {
            break;
        }
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    if too_long || line.len() > max {
        line.clear();
        return Ok(Some(Line::TooLong));
    }
    Ok(Some(Line::Fits))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lines(input: &[u8], max: usize) -> Vec<Option<Vec<u8>>> {
        let mut from = io::BufReader::with_capacity(3, input);
        let mut line = Vec::new();
        let mut out = Vec::new();
        while let Some(how) = next_line(&mut from, max, &mut line).unwrap() {
            out.push((how == Line::Fits).then(|| line.clone()));
        }
        out
    }

    #[test]
    fn lines_lose_their_newline_and_long_ones_are_skipped() {
        let got = lines(b"hello\r\nworld\n\ntoo long here\nlast", 5);
        let want: Vec<Option<Vec<u8>>> = vec![
            Some(b"hello".to_vec()),
            Some(b"world".to_vec()),
            Some(Vec::new()),
            None,
            Some(b"last".to_vec()),
        ];
        assert_eq!(got, want);
        assert!(lines(b"", 5).is_empty());
        assert_eq!(lines(b"\n", 5), vec![Some(Vec::new())]);
    }

    #[test]
    fn text_that_is_not_utf8_is_refused_and_binary_is_not() {
        let bad = Bytes::from_static(b"\xff\xfe");
        assert_eq!(message(bad.clone(), Mode::Text), None);
        assert_eq!(
            message(bad.clone(), Mode::Binary),
            Some(Message::Binary(bad))
        );
        assert_eq!(
            message(Bytes::from_static(b"hi"), Mode::Text),
            Some(Message::from("hi"))
        );
    }

    #[test]
    fn raw_input_comes_in_chunks_with_its_newlines() {
        let (tx, rx) = smol::channel::bounded(64);
        read(&b"one\ntwo\n"[..], Mode::Raw, 3, &tx);
        drop(tx);
        let chunks: Vec<Vec<u8>> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|item| item.unwrap().as_bytes().to_vec())
            .collect();
        assert_eq!(chunks.concat(), b"one\ntwo\n");
        assert!(chunks.iter().all(|chunk| chunk.len() <= 3));
    }

    proptest! {
        /// Lines within the limit come back as the input split at its
        /// newlines; no line held is ever over the limit.
        #[test]
        fn lines_are_the_input_split_at_newlines(
            input in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'a'), Just(b'\r')], 0..64),
            max in 0usize..8,
        ) {
            let mut expected: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
            if input.last().is_none_or(|&b| b == b'\n') {
                expected.pop();
            }
            let got = lines(&input, max);
            prop_assert_eq!(got.len(), expected.len());
            for (got, want) in got.iter().zip(expected) {
                let want = want.strip_suffix(b"\r").unwrap_or(want);
                match got {
                    Some(line) => prop_assert_eq!(line.as_slice(), want),
                    None => prop_assert!(want.len() > max),
                }
            }
        }
    }
}
