//! The `storm` command line: services built on Storm's public API.
//!
//! `storm echo` serves an echo over WebSocket or plain TCP with any of the
//! core's framers. More services (chat, json, broker, gateway, bench) and the
//! async runtimes come with their own issues.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;

use bytes::BytesMut;
use clap::{Parser, Subcommand, ValueEnum};
use storm_proto::framing::{DelimiterFramer, Framer, LengthPrefixFramer, RawFramer};
use storm_proto::ws::deflate::DeflateConfig;
use storm_proto::ws::handshake::ServerConfig;
use storm_proto::ws::{Config, Event};
use storm_std::ws::WebSocket;

mod chat;
mod json;

/// Storm: message-oriented TCP and WebSocket services.
#[derive(Debug, Parser)]
#[command(name = "storm", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Echo every message back to its sender.
    Echo(EchoArgs),
    /// Length-prefixed JSON service: ping, echo, broadcast, stats.
    Json(json::JsonArgs),
    /// A WebSocket chat server with rooms, an admin console on stdin, and
    /// a chat page for browsers.
    Chat(chat::ChatArgs),
    /// One WebSocket endpoint in front of named backends (WebSocket or
    /// length-prefixed TCP) from a route file: clients do the route
    /// handshake, then start each message with a ROUTENAME=name line. Exit
    /// code 2 for a bad route file.
    Gateway(storm_cli::gateway::cli::GatewayArgs),
    /// Clients of the services.
    #[command(subcommand)]
    Client(ClientCommand),
    /// Load generator for every service: msgs/s and round-trip latency
    /// percentiles. Exit code 2 for bad flags (a non-loopback address).
    Bench(storm_cli::bench::BenchArgs),
}

/// `storm client <service>`.
#[derive(Debug, Subcommand)]
enum ClientCommand {
    /// Client of `storm json`: demo, interactive or perf mode.
    Json(json::ClientArgs),
}

/// Options of `storm echo`.
#[derive(Debug, clap::Args)]
struct EchoArgs {
    /// Wire protocol: raw bytes, 4-byte length-prefixed, newline-delimited
    /// lines, or WebSocket.
    #[arg(long, value_enum, default_value_t = Proto::Ws)]
    proto: Proto,
    /// Address to listen on (IPv4 or IPv6, e.g. [::1]:9001).
    #[arg(long, default_value = "127.0.0.1:9001")]
    addr: String,
    /// Largest message accepted, in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    max_message: usize,
    /// Turn off permessage-deflate for WebSocket (on by default).
    #[arg(long)]
    no_deflate: bool,
    /// Runtime to serve on: tokio (async tasks) or std (a thread per
    /// connection).
    #[arg(long, value_enum, default_value_t = Runtime::Tokio)]
    runtime: Runtime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Proto {
    /// Raw TCP: whatever arrives is sent back.
    Raw,
    /// 4-byte big-endian length prefix.
    Lp,
    /// Newline-delimited lines.
    Line,
    /// WebSocket (RFC 6455), text and binary.
    Ws,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Runtime {
    /// tokio, multi-threaded.
    Tokio,
    /// Blocking std::net with a thread per connection.
    Std,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Gateway(args) => return storm_cli::gateway::cli::run(&args),
        Command::Bench(args) => return storm_cli::bench::run(&args),
        Command::Echo(args) => echo(&args),
        Command::Json(args) => json::serve(&args),
        Command::Chat(args) => chat::run(&args),
        Command::Client(ClientCommand::Json(args)) => json::client(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("storm: {e}");
            ExitCode::FAILURE
        }
    }
}

fn echo(args: &EchoArgs) -> io::Result<()> {
    match args.runtime {
        Runtime::Tokio => echo_tokio(args),
        Runtime::Std => echo_std(args),
    }
}

/// Echoes every message back to its session.
struct TokioEcho;

impl storm_tokio::Handler for TokioEcho {
    async fn on_message(&self, session: &storm_tokio::Session, message: storm_proto::Message) {
        let _ = session.send(message).await;
    }
}

fn echo_tokio(args: &EchoArgs) -> io::Result<()> {
    use storm_proto::options::{Framing, ServerOptions, WsOptions};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let options = ServerOptions {
            addr: args.addr.clone(),
            ..ServerOptions::default()
        };
        let config = Config {
            max_message_size: args.max_message,
            max_frame_size: args.max_message,
            ..Config::default()
        };
        let (addr, serve) = match args.proto {
            Proto::Ws => {
                let ws = WsOptions {
                    config,
                    deflate: (!args.no_deflate).then(DeflateConfig::default),
                    ..WsOptions::default()
                };
                let server = storm_tokio::WsServer::bind(options, ws).await?;
                (server.local_addr(), tokio::spawn(server.serve(TokioEcho)))
            }
            proto => {
                let framing = match proto {
                    Proto::Raw => Framing::Raw(Default::default()),
                    Proto::Lp => Framing::LengthPrefixWith(length_prefix(args.max_message)),
                    _ => Framing::Delimiter(Default::default()),
                };
                let server = storm_tokio::TcpServer::bind(options, framing).await?;
                (server.local_addr(), tokio::spawn(server.serve(TokioEcho)))
            }
        };
        banner(args, addr);
        serve.await.map_err(io::Error::other)?
    })
}

fn banner(args: &EchoArgs, addr: std::net::SocketAddr) {
    let scheme = if args.proto == Proto::Ws { "ws" } else { "tcp" };
    println!(
        "storm echo ({:?}, {:?} runtime) listening on {scheme}://{addr}",
        args.proto, args.runtime
    );
}

fn echo_std(args: &EchoArgs) -> io::Result<()> {
    let listener = TcpListener::bind(&args.addr)?;
    let addr = listener.local_addr()?;
    let scheme = if args.proto == Proto::Ws { "ws" } else { "tcp" };
    println!(
        "storm echo ({:?}, {:?} runtime) listening on {scheme}://{addr}",
        args.proto, args.runtime
    );
    let handshake = Arc::new(ServerConfig {
        deflate: (!args.no_deflate).then(DeflateConfig::default),
        ..ServerConfig::default()
    });
    let config = Config {
        max_message_size: args.max_message,
        max_frame_size: args.max_message,
        ..Config::default()
    };
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let proto = args.proto;
        let max = args.max_message;
        let (handshake, config) = (Arc::clone(&handshake), config.clone());
        std::thread::spawn(move || {
            let peer = stream
                .peer_addr()
                .map_or_else(|_| "?".to_owned(), |a| a.to_string());
            let result = match proto {
                Proto::Ws => echo_ws(stream, &handshake, config),
                Proto::Raw => framer_echo(stream, RawFramer::default()),
                Proto::Lp => match LengthPrefixFramer::new(length_prefix(max)) {
                    Ok(framer) => framer_echo(stream, framer),
                    Err(e) => Err(io::Error::other(e.to_string())),
                },
                Proto::Line => framer_echo(stream, DelimiterFramer::default()),
            };
            if let Err(e) = result {
                eprintln!("{peer}: {e}");
            }
        });
    }
    Ok(())
}

fn length_prefix(max: usize) -> storm_proto::framing::LengthPrefixConfig {
    let mut config = storm_proto::framing::LengthPrefixConfig::default();
    config.max_frame_len = max;
    config
}

fn echo_ws(stream: TcpStream, handshake: &Arc<ServerConfig>, config: Config) -> io::Result<()> {
    let to_io = |e: storm_std::ws::Error| io::Error::other(e.to_string());
    let (mut socket, _) = WebSocket::accept(stream, handshake, config).map_err(to_io)?;
    loop {
        match socket.read().map_err(to_io)? {
            Event::Text(text) => socket.send_text(&text).map_err(to_io)?,
            Event::Binary(data) => socket.send_binary(&data).map_err(to_io)?,
            Event::Close(_) => return Ok(()),
            _ => {}
        }
    }
}

fn framer_echo(mut stream: TcpStream, mut framer: impl Framer) -> io::Result<()> {
    let mut input = BytesMut::new();
    let mut output = BytesMut::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        input.extend_from_slice(&buf[..n]);
        while let Some(message) = framer
            .decode(&mut input)
            .map_err(|e| io::Error::other(e.to_string()))?
        {
            framer
                .encode(&message, &mut output)
                .map_err(|e| io::Error::other(e.to_string()))?;
        }
        stream.write_all(&output)?;
        output.clear();
    }
}
