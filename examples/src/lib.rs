//! Storm's examples. Each is written once and runs on the adapter that
//! `--runtime tokio|smol|std` names (default tokio):
//!
//! ```text
//! cargo run -p storm-examples --example NAME -- [--runtime tokio|smol|std] ARGS
//! ```
//!
//! - `ws_echo [ADDR] [--tls CERT_PEM KEY_PEM]`: a WebSocket echo server
//!   (default `127.0.0.1:9001`), permessage-deflate on, 64 MiB messages;
//!   `wss://` with `--tls`. The Autobahn suite's server.
//! - `tcp_echo ADDR [--framing lp|line|raw]`: a TCP echo server with a
//!   framer (4-byte length prefix, `\n` lines, or raw reads).
//! - `chat [ADDR]`: a WebSocket chat with names and rooms (server groups);
//!   its text protocol is in the example's top comment, and
//!   `browser/chat_example.sh` runs two headless-Chromium tabs through it.
//! - `reconnecting_client URL [--count N]`: a WebSocket client with
//!   `ClientOptions::reconnect` (exponential backoff); prints its events,
//!   sends a message a second, and exits after N (default 10).
//! - `autobahn_client [URL] [AGENT]`: the Autobahn suite's client loop.
//!
//! Two more run storm-std's lower-level blocking [`WebSocket`] (no
//! sessions, hub or heartbeat), which `autobahn/run.sh` tests as the
//! adapter `storm-std-blocking`: `ws_echo_blocking [ADDR]` and
//! `autobahn_client_blocking [URL] [AGENT]`.
//!
//! # How an example is written once
//!
//! The async path is written against storm-async, generic over its
//! [`Runtime`](storm_async::Runtime): `storm_async::WsServer<Tokio>` is what
//! `storm_tokio::WsServer` names, and `Handler` and `Session` are the same
//! types on tokio and smol. storm-std's API is the same shape, but blocking:
//! its `Handler` is a trait of plain functions. So a handler type
//! implements both traits, each method a line or two that calls the one
//! place the example decides things (the chat's rules are written against
//! [`Session`](storm_host::session::Session), the same type on every
//! adapter, which sends with `send(..).await` in async handlers and
//! `send_blocking` in storm-std's); `main` picks the runtime in a
//! three-way `match`.
//!
//! This library holds what several examples share: the runtime choice, the
//! echo handler, and the settings the Autobahn suite needs.

use std::fmt;
use std::future::Future;
use std::io::{Read, Write};
use std::process::ExitCode;
use std::sync::OnceLock;

use storm_host::options::WsOptions;
use storm_proto::Message;
use storm_proto::ws::deflate::DeflateConfig;
use storm_proto::ws::{Config, Event};
use storm_smol::Smol;
use storm_std::ws::WebSocket;
use storm_tokio::Tokio;

/// The adapter an example runs on: `--runtime tokio|smol|std`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Runtime {
    /// storm-tokio, on tokio's multi-threaded runtime.
    Tokio,
    /// storm-smol, on smol's global executor.
    Smol,
    /// storm-std: blocking sockets, two threads per connection.
    Std,
}

/// `tokio`, `smol` or `std`, as `--runtime` spells it.
impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tokio => "tokio",
            Self::Smol => "smol",
            Self::Std => "std",
        })
    }
}

/// How an example ends: success, or its error on stderr after its name
/// and exit status 1. (A usage error is clap's: exit status 2.)
pub fn exit<E: fmt::Display>(example: &str, result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{example}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// An async runtime an example runs on, with its way in from `main`.
pub trait AsyncRuntime: storm_async::Runtime {
    /// Runs `future` to completion on this runtime, from a thread outside
    /// it. May be called again (tasks spawned by an earlier call keep
    /// running).
    fn block_on<F: Future>(future: F) -> F::Output;
}

impl AsyncRuntime for Tokio {
    fn block_on<F: Future>(future: F) -> F::Output {
        static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
        RUNTIME
            .get_or_init(|| tokio::runtime::Runtime::new().expect("a tokio runtime"))
            .block_on(future)
    }
}

impl AsyncRuntime for Smol {
    fn block_on<F: Future>(future: F) -> F::Output {
        smol::block_on(future)
    }
}

/// Sends every message back to its sender, and prints what fails that is
/// not a disconnect (a refused TLS handshake, a port scanner) to stderr:
/// the handler of `ws_echo` and `tcp_echo`.
#[derive(Debug)]
pub struct Echo;

impl storm_async::Handler for Echo {
    async fn on_message(&self, session: &storm_async::Session, message: Message) {
        let _ = session.send(message).await;
    }

    async fn on_error(&self, error: &(dyn std::error::Error + Send + Sync + 'static)) {
        eprintln!("{error}");
    }
}

impl storm_std::Handler for Echo {
    fn on_message(&self, session: &storm_std::Session, message: Message) {
        let _ = session.send_blocking(message);
    }

    fn on_error(&self, error: &(dyn std::error::Error + Send + Sync + 'static)) {
        eprintln!("{error}");
    }
}

/// How many bytes a session of the Autobahn examples may queue before
/// `send` waits: 128 MiB, so that echoing the suite's 16 MiB messages
/// (cases 9.*) never waits on the peer.
pub const AUTOBAHN_PENDING_BYTES: usize = 128 << 20;

/// The WebSocket settings of the Autobahn examples, server and client:
/// permessage-deflate offered and accepted, and messages and frames up to
/// 64 MiB.
#[must_use]
pub fn autobahn_ws() -> WsOptions {
    WsOptions::default()
        .with_config(
            Config::default()
                .with_max_message_size(64 << 20)
                .with_max_frame_size(64 << 20),
        )
        .with_deflate(DeflateConfig::default())
}

/// Sends every text and binary message on a blocking `socket` back until
/// the peer closes: the loop of `ws_echo_blocking` and
/// `autobahn_client_blocking`.
///
/// # Errors
///
/// What [`WebSocket::read`] and the sends return: a protocol error (the
/// close is sent), or the transport failing.
pub fn echo_until_close<S: Read + Write>(
    socket: &mut WebSocket<S>,
) -> Result<(), storm_std::ws::Error> {
    loop {
        match socket.read()? {
            Event::Text(text) => socket.send_text(&text)?,
            Event::Binary(data) => socket.send_binary(&data)?,
            Event::Close(_) => return Ok(()),
            _ => {}
        }
    }
}
