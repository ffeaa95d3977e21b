//! Transcript, rejection, chunking and round-trip tests for both sides.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;
use crate::ws::deflate::{DeflateConfig, DeflateParams};
use crate::ws::extensions::ExtensionError;

/// The RFC 6455 section 1.3 / 4.2.2 example nonce.
const SAMPLE_NONCE: [u8; 16] = *b"the sample nonce";

const RFC_REQUEST: &str = "GET /chat HTTP/1.1\r\n\
    Host: server.example.com\r\n\
    Upgrade: websocket\r\n\
    Connection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Origin: http://example.com\r\n\
    Sec-WebSocket-Protocol: chat, superchat\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

fn server_config() -> Arc<ServerConfig> {
    Arc::new(ServerConfig {
        subprotocols: vec!["superchat".into(), "chat".into()],
        ..ServerConfig::default()
    })
}

/// Feeds `chunks` to a fresh server handshake; on a complete request, accepts
/// it and returns the result and the response bytes.
fn server_run<'a>(
    config: Arc<ServerConfig>,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Option<(Accepted, Bytes)>, HandshakeError> {
    let limit = config.max_request_header_bytes;
    let mut hs = ServerHandshake::new(config).map_err(|_| HandshakeError::MethodNotGet)?;
    let mut chunks = chunks.into_iter();
    while let Some(chunk) = chunks.next() {
        match hs.handle_input(chunk)? {
            ServerStep::NeedMore(next) => {
                assert!(next.buffered() <= limit);
                hs = next;
            }
            ServerStep::Request(pending) => {
                let mut out = BytesMut::new();
                let mut accepted = pending.accept(&mut out);
                accepted.leftover = with_rest(accepted.leftover, chunks);
                return Ok(Some((accepted, out.freeze())));
            }
        }
    }
    Ok(None)
}

/// The bytes after the header block: the leftover of the chunk that
/// completed it, then every chunk not fed.
fn with_rest<'a>(leftover: Bytes, rest: impl Iterator<Item = &'a [u8]>) -> Bytes {
    let mut all = BytesMut::from(&leftover[..]);
    rest.for_each(|c| all.extend_from_slice(c));
    all.freeze()
}

fn server_whole(request: &[u8]) -> Result<Option<(Accepted, Bytes)>, HandshakeError> {
    server_run(server_config(), [request])
}

fn server_err(request: &str) -> HandshakeError {
    match server_whole(request.as_bytes()) {
        Err(e) => e,
        Ok(r) => panic!("accepted {request:?}: {r:?}"),
    }
}

fn client_start(config: &ClientConfig) -> (ClientHandshake, Bytes) {
    let mut out = BytesMut::new();
    let hs = ClientHandshake::start_with_key(config, SAMPLE_NONCE, &mut out)
        .unwrap_or_else(|e| panic!("{e}"));
    (hs, out.freeze())
}

fn client_run<'a>(
    mut hs: ClientHandshake,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Option<Upgraded>, ResponseError> {
    let limit = MAX_HEADER_BYTES_LIMIT;
    let mut chunks = chunks.into_iter();
    while let Some(chunk) = chunks.next() {
        match hs.handle_input(chunk)? {
            ClientStep::NeedMore(next) => {
                assert!(next.buffered() <= limit);
                hs = next;
            }
            ClientStep::Done(mut up) => {
                up.leftover = with_rest(up.leftover, chunks);
                return Ok(Some(up));
            }
        }
    }
    Ok(None)
}

fn chat_client() -> ClientConfig {
    let mut c = ClientConfig::new("server.example.com", "/chat");
    c.origin = Some("http://example.com".into());
    c.subprotocols = vec!["chat".into(), "superchat".into()];
    c
}

const RFC_RESPONSE: &str = "HTTP/1.1 101 Switching Protocols\r\n\
    Upgrade: websocket\r\n\
    Connection: Upgrade\r\n\
    Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
    Sec-WebSocket-Protocol: chat\r\n\r\n";

fn client_err(response: &str) -> ResponseError {
    let (hs, _) = client_start(&chat_client());
    match client_run(hs, [response.as_bytes()]) {
        Err(e) => e,
        Ok(r) => panic!("accepted {response:?}: {r:?}"),
    }
}

#[test]
fn accept_key_matches_rfc_example() {
    assert_eq!(
        accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

#[test]
fn client_request_transcript() {
    let (_, request) = client_start(&chat_client());
    assert_eq!(
        request,
        "GET /chat HTTP/1.1\r\n\
         Host: server.example.com\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\
         Origin: http://example.com\r\n\
         Sec-WebSocket-Protocol: chat, superchat\r\n\r\n"
    );
}

#[test]
fn client_request_with_headers_and_deflate() {
    let mut c = ClientConfig::new(ClientConfig::host_value("::1", 8080, false), "/a?b=c");
    c.headers = vec![("Authorization".into(), "Bearer x".into())];
    c.deflate = Some(DeflateConfig::default());
    let (_, request) = client_start(&c);
    let text = String::from_utf8_lossy(&request);
    assert!(text.starts_with("GET /a?b=c HTTP/1.1\r\nHost: [::1]:8080\r\n"));
    assert!(
        text.contains(
            "\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        )
    );
    assert!(text.ends_with("\r\nAuthorization: Bearer x\r\n\r\n"));
    assert_eq!(ClientConfig::host_value("h", 443, true), "h");
    assert_eq!(ClientConfig::host_value("h", 80, true), "h:80");
}

#[test]
fn client_key_comes_from_the_rng() {
    use rand::{SeedableRng, rngs::StdRng};
    let request = |seed| {
        let mut out = BytesMut::new();
        let _hs =
            ClientHandshake::start(&chat_client(), &mut StdRng::seed_from_u64(seed), &mut out);
        out
    };
    assert_eq!(request(1), request(1));
    assert_ne!(request(1), request(2));
}

#[test]
fn client_config_is_validated() {
    let base = || ClientConfig::new("example.com", "/");
    let cases: Vec<(ClientConfig, ConfigError)> = vec![
        (ClientConfig::new("", "/"), ConfigError::InvalidHost),
        (ClientConfig::new("a b", "/"), ConfigError::InvalidHost),
        (ClientConfig::new("h", "chat"), ConfigError::InvalidResource),
        (ClientConfig::new("h", "/a b"), ConfigError::InvalidResource),
        (
            ClientConfig {
                subprotocols: vec!["a,b".into()],
                ..base()
            },
            ConfigError::InvalidSubprotocol("a,b".into()),
        ),
        (
            ClientConfig {
                subprotocols: vec!["a".into(), "a".into()],
                ..base()
            },
            ConfigError::DuplicateSubprotocol("a".into()),
        ),
        (
            ClientConfig {
                headers: vec![("X-A".into(), "1\r\nEvil: 1".into())],
                ..base()
            },
            ConfigError::InvalidHeader("X-A".into()),
        ),
        (
            ClientConfig {
                headers: vec![("sec-websocket-key".into(), "x".into())],
                ..base()
            },
            ConfigError::ReservedHeader("sec-websocket-key".into()),
        ),
        (
            ClientConfig {
                deflate: Some(DeflateConfig {
                    server_max_window_bits: 8,
                    ..DeflateConfig::default()
                }),
                ..base()
            },
            ConfigError::InvalidDeflate("server_max_window_bits"),
        ),
        (
            ClientConfig {
                max_response_header_bytes: 0,
                ..base()
            },
            ConfigError::InvalidLimit("max_response_header_bytes"),
        ),
    ];
    for (config, expected) in cases {
        let mut out = BytesMut::new();
        let r = ClientHandshake::start_with_key(&config, SAMPLE_NONCE, &mut out);
        assert_eq!(r.err(), Some(expected));
        assert!(out.is_empty());
    }
}

#[test]
fn server_rfc_transcript() {
    let result = server_whole(RFC_REQUEST.as_bytes());
    let Ok(Some((accepted, response))) = result else {
        panic!("{result:?}")
    };
    // Server preference order: superchat first.
    assert_eq!(accepted.subprotocol.as_deref(), Some("superchat"));
    assert_eq!(accepted.request.path(), "/chat");
    assert_eq!(accepted.request.host(), "server.example.com");
    assert_eq!(accepted.request.origin(), Some("http://example.com"));
    assert_eq!(accepted.request.subprotocols(), ["chat", "superchat"]);
    assert!(accepted.leftover.is_empty());
    assert_eq!(accepted.deflate, None);
    assert_eq!(
        response,
        RFC_RESPONSE.replace("chat\r\n\r\n", "superchat\r\n\r\n")
    );
}

#[test]
fn server_choice_and_extra_headers() {
    let hs = ServerHandshake::new(server_config()).unwrap_or_else(|e| panic!("{e}"));
    let Ok(ServerStep::Request(mut pending)) = hs.handle_input(RFC_REQUEST.as_bytes()) else {
        panic!("no request")
    };
    assert_eq!(pending.subprotocol(), Some("superchat"));
    assert_eq!(
        pending.select_subprotocol(Some("other")),
        Err(ConfigError::SubprotocolNotOffered("other".into()))
    );
    assert_eq!(pending.select_subprotocol(Some("chat")), Ok(()));
    assert_eq!(
        pending.add_header("Content-Length", "3"),
        Err(ConfigError::ReservedHeader("Content-Length".into()))
    );
    assert_eq!(
        pending.add_header("X-A", "a\nb"),
        Err(ConfigError::InvalidHeader("X-A".into()))
    );
    assert_eq!(pending.add_header("Set-Cookie", "a=b"), Ok(()));
    let mut out = BytesMut::new();
    let accepted = pending.accept(&mut out);
    assert_eq!(accepted.subprotocol.as_deref(), Some("chat"));
    assert_eq!(
        out,
        RFC_RESPONSE.replace("\r\n\r\n", "\r\nSet-Cookie: a=b\r\n\r\n")
    );
    // And the client reads the RFC answer.
    let (hs, _) = client_start(&chat_client());
    let up = client_run(hs, [&out[..]]);
    assert_eq!(
        up.map(|u| u.map(|u| u.subprotocol)),
        Ok(Some(Some("chat".into())))
    );
}

#[test]
fn server_reject_writes_a_closing_response() {
    let hs = ServerHandshake::new(server_config()).unwrap_or_else(|e| panic!("{e}"));
    let Ok(ServerStep::Request(mut pending)) = hs.handle_input(RFC_REQUEST.as_bytes()) else {
        panic!("no request")
    };
    assert_eq!(pending.add_header("WWW-Authenticate", "Bearer"), Ok(()));
    let mut out = BytesMut::new();
    pending.reject(401, b"no", &mut out);
    assert_eq!(
        out,
        "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Length: 2\r\n\
         Connection: close\r\n\r\nno"
    );
    let hs = ServerHandshake::new(server_config()).unwrap_or_else(|e| panic!("{e}"));
    let Ok(ServerStep::Request(pending)) = hs.handle_input(RFC_REQUEST.as_bytes()) else {
        panic!("no request")
    };
    let mut out = BytesMut::new();
    pending.reject(101, b"", &mut out);
    assert!(out.starts_with(b"HTTP/1.1 500 "));
}

fn request_with(replace: &str, with: &str) -> String {
    assert!(RFC_REQUEST.contains(replace), "{replace}");
    RFC_REQUEST.replacen(replace, with, 1)
}

#[test]
fn server_rejections_carry_their_status() {
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let cases: Vec<(String, HandshakeError, u16)> = vec![
        (
            request_with("GET", "POST"),
            HandshakeError::MethodNotGet,
            400,
        ),
        (
            request_with("HTTP/1.1", "HTTP/1.0"),
            HandshakeError::UnsupportedHttpVersion,
            400,
        ),
        (
            request_with("Host: server.example.com\r\n", ""),
            HandshakeError::MissingHost,
            400,
        ),
        (
            request_with("Host: server.example.com\r\n", "Host: a\r\nHost: b\r\n"),
            HandshakeError::MissingHost,
            400,
        ),
        (
            request_with("Upgrade: websocket", "Upgrade: h2c"),
            HandshakeError::NotWebSocketUpgrade,
            400,
        ),
        (
            request_with("Connection: Upgrade", "Connection: keep-alive"),
            HandshakeError::MissingConnectionUpgrade,
            400,
        ),
        (
            request_with("Version: 13", "Version: 8"),
            HandshakeError::UnsupportedVersion,
            426,
        ),
        (
            request_with("Sec-WebSocket-Version: 13\r\n", ""),
            HandshakeError::UnsupportedVersion,
            426,
        ),
        (request_with(key, ""), HandshakeError::InvalidKey, 400),
        (
            request_with(key, &format!("{key}{key}")),
            HandshakeError::InvalidKey,
            400,
        ),
        (
            // 24 characters, but decodes to 17 bytes' worth of garbage.
            request_with("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ=A"),
            HandshakeError::InvalidKey,
            400,
        ),
        (
            request_with("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ"),
            HandshakeError::InvalidKey,
            400,
        ),
        (
            request_with("chat, superchat", "chat, a/b"),
            HandshakeError::InvalidSubprotocols,
            400,
        ),
        (
            request_with("Origin", "Sec-WebSocket-Extensions: a;;b\r\nOrigin"),
            HandshakeError::InvalidExtensions(ExtensionError::Syntax { at: 2 }),
            400,
        ),
        (
            request_with("Origin", "Content-Length: 5\r\nOrigin"),
            HandshakeError::UnexpectedBody,
            400,
        ),
        (
            request_with("Origin", "Transfer-Encoding: chunked\r\nOrigin"),
            HandshakeError::UnexpectedBody,
            400,
        ),
        (
            request_with("Origin", "Bad Header: x\r\nOrigin"),
            HandshakeError::Malformed("invalid header name"),
            400,
        ),
        (
            request_with("Origin", &"X: y\r\n".repeat(64)),
            HandshakeError::TooManyHeaders { limit: 64 },
            431,
        ),
        (
            request_with("Origin", &format!("X: {}\r\nOrigin", "y".repeat(8 * 1024))),
            HandshakeError::HeaderTooLarge { limit: 8 * 1024 },
            431,
        ),
    ];
    for (request, expected, status) in cases {
        let err = server_err(&request);
        assert_eq!(err, expected, "{request}");
        assert_eq!(err.status(), status);
    }
}

#[test]
fn server_accepts_token_lists_case_insensitively() {
    let r = request_with("Upgrade: websocket", "upgrade: foo, WebSocket");
    let r = r.replacen("Connection: Upgrade", "Connection: keep-alive, UPGRADE", 1);
    assert!(matches!(server_whole(r.as_bytes()), Ok(Some(_))));
}

#[test]
fn error_responses_are_well_formed() {
    let mut out = BytesMut::new();
    HandshakeError::UnsupportedVersion.write_response(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let body = "unsupported Sec-WebSocket-Version\n";
    assert_eq!(
        text,
        format!(
            "HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
    );
    let mut out = BytesMut::new();
    HandshakeError::HeaderTooLarge { limit: 8 }.write_response(&mut out);
    assert!(out.starts_with(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"));
}

#[test]
fn header_block_limit_is_exact() {
    let config = |limit| {
        Arc::new(ServerConfig {
            max_request_header_bytes: limit,
            ..ServerConfig::default()
        })
    };
    let len = RFC_REQUEST.len();
    assert!(matches!(
        server_run(config(len), [RFC_REQUEST.as_bytes()]),
        Ok(Some(_))
    ));
    assert_eq!(
        server_run(config(len - 1), [RFC_REQUEST.as_bytes()]).err(),
        Some(HandshakeError::HeaderTooLarge { limit: len - 1 })
    );
    // Byte by byte, the error comes as soon as the limit is full.
    let mut hs = ServerHandshake::new(config(len - 1)).unwrap_or_else(|e| panic!("{e}"));
    for (i, b) in RFC_REQUEST.as_bytes().iter().enumerate() {
        match hs.handle_input(std::slice::from_ref(b)) {
            Ok(ServerStep::NeedMore(next)) => hs = next,
            Err(e) => {
                assert_eq!(i, len - 2);
                assert_eq!(e.status(), 431);
                return;
            }
            Ok(ServerStep::Request(_)) => panic!("over the limit"),
        }
    }
    panic!("no error");
}

#[test]
fn byte_by_byte_and_trailing_data() {
    let mut input = RFC_REQUEST.as_bytes().to_vec();
    input.extend_from_slice(b"\x81\x85frame");
    let whole = server_run(server_config(), [&input[..]]);
    let bytewise = server_run(server_config(), input.chunks(1));
    assert_eq!(whole, bytewise);
    let Ok(Some((accepted, response))) = whole else {
        panic!()
    };
    assert_eq!(accepted.leftover, &b"\x81\x85frame"[..]);

    let mut input = response.to_vec();
    input.extend_from_slice(b"\x81\x02hi");
    let (hs, _) = client_start(&chat_client());
    let whole = client_run(hs, [&input[..]]);
    let (hs, _) = client_start(&chat_client());
    let bytewise = client_run(hs, input.chunks(1));
    assert_eq!(whole, bytewise);
    assert_eq!(
        whole.map(|u| u.map(|u| u.leftover)),
        Ok(Some(Bytes::from_static(b"\x81\x02hi")))
    );
}

#[test]
fn bare_lf_line_endings_are_accepted() {
    let r = RFC_REQUEST.replace("\r\n", "\n");
    assert!(matches!(server_whole(r.as_bytes()), Ok(Some(_))));
}

#[test]
fn trickled_huge_header_is_linear() {
    // 256 KiB fed one byte at a time: a re-parse per read would be
    // ~3 * 10^10 byte visits; the resumable scan is 2.6 * 10^5.
    let limit = 256 * 1024;
    let config = Arc::new(ServerConfig {
        max_request_header_bytes: limit,
        ..ServerConfig::default()
    });
    let filler = format!(
        "X-Filler: {}\r\n",
        "a".repeat(limit - RFC_REQUEST.len() - 16)
    );
    let request = request_with("Origin", &format!("{filler}Origin"));
    assert!(request.len() <= limit);
    let result = server_run(config, request.as_bytes().chunks(1));
    assert!(matches!(result, Ok(Some(_))), "{result:?}");
}

#[test]
fn client_rejections() {
    let rejected = client_err("HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope");
    let ResponseError::Rejected {
        status,
        headers,
        body_start,
    } = rejected
    else {
        panic!("{rejected:?}")
    };
    assert_eq!(status, 403);
    assert_eq!(headers.get("content-length"), Some(&b"4"[..]));
    assert_eq!(body_start, &b"nope"[..]);

    let ok = RFC_RESPONSE;
    let cases: Vec<(String, ResponseError)> = vec![
        (
            ok.replace("HTTP/1.1", "HTTP/1.0"),
            ResponseError::UnsupportedHttpVersion,
        ),
        (
            ok.replace("Upgrade: websocket\r\n", ""),
            ResponseError::NotWebSocketUpgrade,
        ),
        (
            ok.replace("Connection: Upgrade", "Connection: close"),
            ResponseError::MissingConnectionUpgrade,
        ),
        (
            ok.replace(
                "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
                "s3pPLMBiTxaQ9kYGzzhZRbK+xOp=",
            ),
            ResponseError::AcceptMismatch,
        ),
        (
            ok.replace("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n", ""),
            ResponseError::AcceptMismatch,
        ),
        (
            ok.replace("Protocol: chat", "Protocol: other"),
            ResponseError::UnexpectedSubprotocol("other".into()),
        ),
        (
            ok.replace("Protocol: chat", "Protocol: chat, superchat"),
            ResponseError::UnexpectedSubprotocol("chat, superchat".into()),
        ),
        (
            ok.replace(
                "\r\n\r\n",
                "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
            ),
            ResponseError::Extension(ExtensionError::NotOffered("permessage-deflate".into())),
        ),
        (
            ok.replace("HTTP/1.1 101", "HTTP/1.1 1O1"),
            ResponseError::Malformed("invalid status"),
        ),
        (
            ok.replace("\r\n\r\n", &"\r\nX: y".repeat(64)) + "\r\n\r\n",
            ResponseError::TooManyHeaders { limit: 64 },
        ),
        (
            ok.replace(
                "\r\n\r\n",
                &format!("\r\nX: {}\r\n\r\n", "y".repeat(16 * 1024)),
            ),
            ResponseError::HeaderTooLarge { limit: 16 * 1024 },
        ),
    ];
    for (response, expected) in cases {
        assert_eq!(client_err(&response), expected, "{response}");
    }
}

/// The alert a rustls server sends a client whose first bytes are not TLS
/// (a fatal `decode_error` in a TLS 1.2 record), seen on every adapter.
const TLS_ALERT: &[u8] = b"\x15\x03\x03\x00\x02\x02\x32";
/// The start of a ClientHello record.
const CLIENT_HELLO: &[u8] = b"\x16\x03\x01\x00\xf4\x01\x00\x00\xf0\x03\x03";

#[test]
fn a_tls_server_is_told_from_a_bad_response_whole_or_byte_by_byte() {
    let (hs, _) = client_start(&chat_client());
    assert_eq!(
        client_run(hs, [TLS_ALERT]).err(),
        Some(ResponseError::ServerSpeaksTls)
    );
    let (hs, _) = client_start(&chat_client());
    let bytes: Vec<&[u8]> = TLS_ALERT.chunks(1).collect();
    assert_eq!(
        client_run(hs, bytes).err(),
        Some(ResponseError::ServerSpeaksTls)
    );
    let text = ResponseError::ServerSpeaksTls.to_string();
    assert!(
        text.contains("speaks TLS") && text.contains("wss://"),
        "{text}"
    );
    // Four bytes that fit a record header, then the end: nothing decided.
    let (hs, _) = client_start(&chat_client());
    assert!(matches!(client_run(hs, [&TLS_ALERT[..4]]), Ok(None)));
}

#[test]
fn a_client_hello_is_refused_with_a_400_whole_or_byte_by_byte() {
    assert_eq!(
        server_whole(CLIENT_HELLO).err(),
        Some(HandshakeError::ClientSpeaksTls)
    );
    let bytes: Vec<&[u8]> = CLIENT_HELLO.chunks(1).collect();
    assert_eq!(
        server_run(server_config(), bytes).err(),
        Some(HandshakeError::ClientSpeaksTls)
    );
    let e = HandshakeError::ClientSpeaksTls;
    assert_eq!(e.status(), 400);
    assert!(
        e.to_string().starts_with("TLS ClientHello on a plain port"),
        "{e}"
    );
    let mut out = BytesMut::new();
    e.write_response(&mut out);
    assert!(out.starts_with(b"HTTP/1.1 400 Bad Request\r\n"), "{out:?}");
    // A request that merely contains such bytes later is no ClientHello.
    let late = [RFC_REQUEST.as_bytes(), CLIENT_HELLO].concat();
    assert!(matches!(server_whole(&late), Ok(Some(_))));
}

#[test]
fn client_rejects_unoffered_subprotocol() {
    let (hs, _) = client_start(&ClientConfig::new("h", "/"));
    assert_eq!(
        client_run(hs, [RFC_RESPONSE.as_bytes()]),
        Err(ResponseError::UnexpectedSubprotocol("chat".into()))
    );
}

#[test]
fn client_deflate_response_checks() {
    let mut config = chat_client();
    config.deflate = Some(DeflateConfig::default());
    let with_ext = |ext: &str| {
        RFC_RESPONSE.replace(
            "\r\n\r\n",
            &format!("\r\nSec-WebSocket-Extensions: {ext}\r\n\r\n"),
        )
    };
    let run = |response: String| {
        let (hs, _) = client_start(&config);
        client_run(hs, [response.as_bytes()]).map(|u| u.and_then(|u| u.deflate))
    };
    assert_eq!(
        run(with_ext("permessage-deflate; client_max_window_bits=10")),
        Ok(Some(DeflateParams {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 15,
            client_max_window_bits: 10,
        }))
    );
    assert_eq!(run(RFC_RESPONSE.to_owned()), Ok(None));
    assert_eq!(
        run(with_ext("permessage-deflate, permessage-deflate")),
        Err(ResponseError::Extension(
            ExtensionError::DuplicateExtension("permessage-deflate".into())
        ))
    );
    assert_eq!(
        run(with_ext("x-other")),
        Err(ResponseError::Extension(ExtensionError::NotOffered(
            "x-other".into()
        )))
    );
    assert_eq!(
        run(with_ext("permessage-deflate; mystery")),
        Err(ResponseError::Extension(ExtensionError::UnknownParam(
            "mystery".into()
        )))
    );
}

/// Client request → server → response → client.
fn round_trip(client: &ClientConfig, server: ServerConfig) -> (Accepted, Upgraded) {
    let (hs, request) = client_start(client);
    let result = server_run(Arc::new(server), [&request[..]]);
    let Ok(Some((accepted, response))) = result else {
        panic!("{result:?}")
    };
    let up = client_run(hs, [&response[..]]);
    let Ok(Some(up)) = up else { panic!("{up:?}") };
    (accepted, up)
}

#[test]
fn round_trip_with_subprotocols_and_deflate() {
    let mut client = chat_client();
    client.deflate = Some(DeflateConfig {
        server_max_window_bits: 12,
        client_no_context_takeover: true,
        ..DeflateConfig::default()
    });
    client.headers = vec![("Authorization".into(), "Basic eDp5".into())];
    let server = ServerConfig {
        subprotocols: vec!["superchat".into()],
        deflate: Some(DeflateConfig {
            client_max_window_bits: 11,
            client_no_context_takeover: true,
            ..DeflateConfig::default()
        }),
        ..ServerConfig::default()
    };
    let (accepted, up) = round_trip(&client, server);
    assert_eq!(
        accepted.request.headers().get("authorization"),
        Some(&b"Basic eDp5"[..])
    );
    assert_eq!(accepted.subprotocol.as_deref(), Some("superchat"));
    assert_eq!(up.subprotocol.as_deref(), Some("superchat"));
    let expected = DeflateParams {
        server_no_context_takeover: false,
        client_no_context_takeover: true,
        server_max_window_bits: 12,
        client_max_window_bits: 11,
    };
    assert_eq!(accepted.deflate, Some(expected));
    assert_eq!(up.deflate, Some(expected));
    assert_eq!(up.status, 101);

    // A server without deflate declines; no subprotocol in common.
    let (accepted, up) = round_trip(&client, ServerConfig::default());
    assert_eq!((accepted.deflate, up.deflate), (None, None));
    assert_eq!((accepted.subprotocol, up.subprotocol), (None, None));
}

/// Splits `input` at the given (sorted, deduplicated) cut points.
fn split_at_points(input: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    let mut start = 0;
    for &c in cuts {
        let c = c.min(input.len());
        if c > start {
            chunks.push(input[start..c].to_vec());
            start = c;
        }
    }
    chunks.push(input[start..].to_vec());
    chunks
}

fn arb_request() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(RFC_REQUEST.as_bytes().to_vec()),
        Just(request_with("GET", "PUT").into_bytes()),
        Just(request_with("Version: 13", "Version: 7").into_bytes()),
        Just(RFC_REQUEST.replace("\r\n", "\n").into_bytes()),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(|tail| [
            RFC_REQUEST.as_bytes(),
            &tail
        ]
        .concat()),
    ]
}

proptest! {
    #[test]
    fn server_any_chunking_same_result(
        input in arb_request(),
        mut cuts in proptest::collection::vec(0usize..400, 0..12),
    ) {
        cuts.sort_unstable();
        cuts.dedup();
        let chunks = split_at_points(&input, &cuts);
        let whole = server_run(server_config(), [&input[..]]);
        let chunked = server_run(server_config(), chunks.iter().map(Vec::as_slice));
        prop_assert_eq!(whole, chunked);
    }

    #[test]
    fn client_any_chunking_same_result(
        tail in proptest::collection::vec(any::<u8>(), 0..32),
        mut cuts in proptest::collection::vec(0usize..200, 0..12),
    ) {
        let input = [RFC_RESPONSE.as_bytes(), &tail].concat();
        cuts.sort_unstable();
        cuts.dedup();
        let chunks = split_at_points(&input, &cuts);
        let (hs, _) = client_start(&chat_client());
        let whole = client_run(hs, [&input[..]]);
        let (hs, _) = client_start(&chat_client());
        let chunked = client_run(hs, chunks.iter().map(Vec::as_slice));
        prop_assert_eq!(&whole, &chunked);
        let up = whole.ok().flatten();
        prop_assert_eq!(up.map(|u| u.leftover.to_vec()), Some(tail));
    }

    /// Arbitrary bytes never panic and never buffer past the limit (the
    /// helpers assert `buffered() <= limit` after every chunk).
    #[test]
    fn arbitrary_bytes_are_total(
        input in proptest::collection::vec(any::<u8>(), 0..600),
        chunk in 1usize..64,
        limit in 4usize..300,
    ) {
        let config = Arc::new(ServerConfig {
            max_request_header_bytes: limit,
            ..ServerConfig::default()
        });
        let _ = server_run(config, input.chunks(chunk));
        let mut client = chat_client();
        client.max_response_header_bytes = limit;
        client.deflate = Some(DeflateConfig::default());
        let (hs, _) = client_start(&client);
        let _ = client_run(hs, input.chunks(chunk));
        // Prefixed with a valid start line, the parsers get further.
        let prefixed = [b"GET / HTTP/1.1\r\n".as_slice(), &input].concat();
        let _ = server_run(server_config(), prefixed.chunks(chunk));
        let prefixed = [b"HTTP/1.1 101 OK\r\n".as_slice(), &input].concat();
        let (hs, _) = client_start(&client);
        let _ = client_run(hs, prefixed.chunks(chunk));
    }

    #[test]
    fn round_trip_agrees(
        client_nct in any::<bool>(), server_nct in any::<bool>(),
        client_bits in 9u8..=15, server_bits in 9u8..=15,
        s_client_bits in 9u8..=15, s_server_bits in 9u8..=15,
        s_client_nct in any::<bool>(), s_server_nct in any::<bool>(),
    ) {
        let mut client = chat_client();
        client.deflate = Some(DeflateConfig {
            client_no_context_takeover: client_nct,
            server_no_context_takeover: server_nct,
            client_max_window_bits: client_bits,
            server_max_window_bits: server_bits,
            ..DeflateConfig::default()
        });
        let server = ServerConfig {
            deflate: Some(DeflateConfig {
                client_no_context_takeover: s_client_nct,
                server_no_context_takeover: s_server_nct,
                client_max_window_bits: s_client_bits,
                server_max_window_bits: s_server_bits,
                ..DeflateConfig::default()
            }),
            ..ServerConfig::default()
        };
        let (accepted, up) = round_trip(&client, server);
        let (Some(s), Some(c)) = (accepted.deflate, up.deflate) else {
            return Err(TestCaseError::fail("deflate not negotiated"));
        };
        prop_assert_eq!(s.server_max_window_bits, c.server_max_window_bits);
        prop_assert_eq!(s.client_max_window_bits, c.client_max_window_bits);
        prop_assert_eq!(s.server_no_context_takeover, c.server_no_context_takeover);
        prop_assert!(c.server_max_window_bits <= server_bits.min(s_server_bits));
        prop_assert!(c.client_max_window_bits <= client_bits.min(s_client_bits));
        prop_assert_eq!(c.server_no_context_takeover, server_nct || s_server_nct);
        prop_assert_eq!(c.client_no_context_takeover, client_nct || s_client_nct);
        // The server only resets its decompressor when it asked for it.
        prop_assert_eq!(s.client_no_context_takeover, s_client_nct);
    }
}
