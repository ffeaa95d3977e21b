//! permessage-deflate decompression (and compression round trips) on
//! arbitrary input.
//!
//! Input layout: one control byte, then records `[header][payload]`.
//! Control: bit 0 server_no_context_takeover, bit 1 client_no_context_takeover,
//! bits 2..=6 pick server_max_window_bits (9 + n % 7), bit 7 round-trip mode.
//! Record header: bits 0..=6 payload length (cut short at the end of input),
//! bit 7 `fin`.
//!
//! Inflate mode: each record is one frame payload of a compressed message the
//! client receives; the message limit is 64 KiB and must never be exceeded,
//! whatever the bytes. Round-trip mode: each record is a whole message the
//! server compresses and the client must get back unchanged.
//!
//! `storm-proto`'s deflate tests replay `fuzz/corpus/ws_inflate/` with the
//! same interpretation.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use storm_proto::ws::Side;
use storm_proto::ws::deflate::{DeflateConfig, DeflateParams, PerMessageDeflate};

const LIMIT: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let Some((&control, mut rest)) = data.split_first() else {
        return;
    };
    let params = DeflateParams {
        server_no_context_takeover: control & 1 != 0,
        client_no_context_takeover: control & 2 != 0,
        server_max_window_bits: 9 + (control >> 2) % 7,
        client_max_window_bits: 15,
    };
    let round_trip = control & 0x80 != 0;
    let config = DeflateConfig::default();
    let mut server = PerMessageDeflate::new(Side::Server, params, &config).unwrap();
    let mut client = PerMessageDeflate::new(Side::Client, params, &config).unwrap();
    let mut dst = BytesMut::new();
    while let Some((&header, tail)) = rest.split_first() {
        let len = usize::from(header & 0x7f).min(tail.len());
        let (payload, next) = tail.split_at(len);
        rest = next;
        if round_trip {
            let mut wire = BytesMut::new();
            server.compress(payload, &mut wire).unwrap();
            let mut out = BytesMut::new();
            client.decompress(&wire, true, &mut out, LIMIT).unwrap();
            assert_eq!(&out[..], payload);
        } else {
            let fin = header & 0x80 != 0;
            let result = client.decompress(payload, fin, &mut dst, LIMIT);
            assert!(dst.len() <= LIMIT);
            if let Err(error) = result {
                assert!(matches!(error.close_code(), 1007 | 1009));
                // Errors are final.
                assert_eq!(client.decompress(&[], true, &mut dst, LIMIT), Err(error));
                return;
            }
            if fin {
                dst.clear();
            }
        }
    }
});
