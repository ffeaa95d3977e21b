//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the
//! same functions the libFuzzer targets call (`storm_tests::fuzz`), so every
//! `cargo test` checks the targets' invariants on the seeds — on stable
//! Rust, without libFuzzer.
//!
//! Every file is run whole; the committed seeds (`seed-*`) are also cut at
//! every length (each prefix is a valid input too, and a cheap way to reach
//! the "need more data" paths). Entries a local fuzzing run added are only
//! run whole, so a big local corpus stays quick. A target whose corpus
//! directory is missing or empty fails: losing the seeds must not make the
//! test pass silently.

use storm_proto::ws::deflate::DeflateError;
use storm_tests::fuzz;
use storm_tests::fuzz::corpus::replay;

#[test]
fn framing_raw() {
    replay("framing_raw", fuzz::framing_raw);
}

#[test]
fn framing_length_prefix() {
    replay("framing_length_prefix", fuzz::framing_length_prefix);
}

#[test]
fn framing_delimiter() {
    replay("framing_delimiter", fuzz::framing_delimiter);
}

#[test]
fn ws_handshake_server() {
    replay("ws_handshake_server", fuzz::ws_handshake_server);
}

#[test]
fn ws_handshake_client() {
    replay("ws_handshake_client", fuzz::ws_handshake_client);
}

#[test]
fn ws_handshake_extensions() {
    replay("ws_handshake_extensions", fuzz::ws_handshake_extensions);
}

#[test]
fn ws_frame_header() {
    replay("ws_frame_header", fuzz::ws_frame_header);
}

#[test]
fn ws_conn() {
    replay("ws_conn", fuzz::ws_conn);
}

#[test]
fn ws_conn_in_place() {
    replay("ws_conn_in_place", fuzz::ws_conn_in_place);
}

/// Besides the invariants, the named `ws_inflate` seeds must decode to what
/// they were written for, so a seed that silently stopped reaching its code
/// path (say, a corrupt stream now rejected at its first byte) is noticed.
#[test]
fn ws_inflate() {
    const HELLO: &[u8] = b"Hello";
    let files = replay("ws_inflate", fuzz::ws_inflate);
    let hello = |n: usize| vec![HELLO; n];
    let mut checked = 0;
    for (name, data) in &files {
        let (messages, error) = fuzz::ws_inflate_messages(data);
        let (want, want_error): (Vec<&[u8]>, _) = match name.as_str() {
            "seed-hello" | "seed-fragments" => (hello(1), None),
            "seed-takeover" => (hello(2), None),
            "seed-no-takeover-backref" => (hello(1), Some(DeflateError::Corrupt)),
            "seed-rfc-blocks" => (hello(3), None),
            "seed-empty" => (vec![b""; 2], None),
            "seed-corrupt" => (vec![], Some(DeflateError::Corrupt)),
            "seed-roundtrip" => (vec![], None),
            "seed-bomb" => (
                vec![],
                Some(DeflateError::MessageTooLarge {
                    limit: fuzz::WS_INFLATE_LIMIT,
                }),
            ),
            _ => continue,
        };
        let got: Vec<&[u8]> = messages.iter().map(|m| &m[..]).collect();
        assert_eq!((got, error), (want, want_error), "{name}");
        checked += 1;
    }
    assert_eq!(checked, 9, "named ws_inflate seeds checked");
}
