//! `redis_hop`: the floor of a room message's hop between two nodes
//! through Redis, with no storm in it (issue #18 item 7).
//!
//! It starts a real `redis-server` on a free loopback port in a temporary
//! directory (the backplane tests' helper), subscribes one connection to a
//! room channel and publishes `--rate` room messages per second for
//! `--duration` seconds on a second connection, each by the backplane's own
//! publish script (`storm_backplane::redis::PUBLISH_SCRIPT`, by `EVALSHA`,
//! with history, as `storm chat --backplane` runs it), each message's
//! payload carrying its send time. It reports the p50 / p99 / max of the
//! hop (the publisher's write → the subscriber's read of the message) and
//! of the publisher's round trip (write → reply read), and Redis's own time
//! per script (`INFO commandstats`).
//!
//! Plain blocking sockets (`TCP_NODELAY`) and one thread per connection
//! side: the publisher writes the messages due as they fall due, a thread
//! reads its replies, and another reads the subscription. Message *j* is
//! due at *j*/rate, rounded up to the next `--tick-us` (1000 by default:
//! tokio's timer, which paces `xnode`'s publishers, fires by the
//! millisecond, so its room messages come in bursts; 1 = each at its own
//! time). The messages due together go in one script call, as a node's
//! publisher sends a run of one room's messages it took together, or one
//! call each with `--call-per-message` (as before session 14).
//!
//! Bounded: `--rate` × `--duration` messages at most [`MAX_MESSAGES`]; the
//! readers stop after the last reply and message, or after [`DRAIN_MAX`].
//! Loopback only.

#[path = "../../../../storm-backplane/tests/common/mod.rs"]
mod servers;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;
use servers::RedisServer;
use storm_backplane::redis::PUBLISH_SCRIPT;
use storm_e2e::stats::percentile_us;

/// Most messages one run publishes.
const MAX_MESSAGES: u64 = 10_000_000;
/// How long the readers wait for what is still due after the last send.
const DRAIN_MAX: Duration = Duration::from_secs(10);
/// The room channel (as `storm chat`'s prefix names the lobby's).
const CHANNEL: &str = "storm.room.lobby";
/// The payload's length: about a chat message's envelope in `xnode`.
const PAYLOAD_LEN: usize = 160;
/// Where the send time sits in the payload (after the envelope's header,
/// which the script rewrites at bytes 21..37).
const SENT_AT: usize = 40;

/// The floor of one room message's hop through Redis: a publish script on
/// one connection, its message read on another; no storm.
#[derive(Debug, Parser)]
#[command(name = "redis_hop", about)]
struct Args {
    /// Room messages per second.
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Seconds of load.
    #[arg(long, default_value_t = 2.0)]
    duration: f64,
    /// Pacing granularity in µs: message j is sent at j/rate rounded up to
    /// a multiple of it (1000: as tokio's timer paces xnode; 1: exact).
    #[arg(long, default_value_t = 1000)]
    tick_us: u64,
    /// One script call per message (as storm did before session 14)
    /// instead of one per tick's messages.
    #[arg(long)]
    call_per_message: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let messages = (args.rate * args.duration).round();
    if !(messages >= 1.0 && messages <= MAX_MESSAGES as f64) {
        eprintln!("--rate × --duration must be 1..={MAX_MESSAGES} messages");
        return ExitCode::from(2);
    }
    let Some(redis) = RedisServer::start() else {
        return ExitCode::from(3);
    };
    match run(&redis, &args, messages as u64) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("redis_hop: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One RESP value, as far as this tool reads them.
#[derive(Debug)]
enum Value {
    Simple,
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Value>),
}

/// Reads one RESP2 value.
fn read_value(reader: &mut impl BufRead) -> Result<Value, String> {
    let mut line = Vec::new();
    reader
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("read: {e}"))?;
    if line.len() < 3 || !line.ends_with(b"\r\n") {
        return Err(format!("bad RESP line {line:?}"));
    }
    let text = std::str::from_utf8(&line[1..line.len() - 2]).map_err(|e| e.to_string())?;
    let number = || text.parse::<i64>().map_err(|e| format!("{text:?}: {e}"));
    match line[0] {
        b'+' => Ok(Value::Simple),
        b'-' => Err(format!("redis: {text}")),
        b':' => Ok(Value::Int(number()?)),
        b'$' => {
            let Ok(len) = usize::try_from(number()?) else {
                return Ok(Value::Bulk(None));
            };
            let mut bytes = vec![0; len + 2];
            reader
                .read_exact(&mut bytes)
                .map_err(|e| format!("read: {e}"))?;
            bytes.truncate(len);
            Ok(Value::Bulk(Some(bytes)))
        }
        b'*' => {
            let len = usize::try_from(number()?).unwrap_or(0);
            (0..len)
                .map(|_| read_value(reader))
                .collect::<Result<_, _>>()
                .map(Value::Array)
        }
        other => Err(format!("unknown RESP type {other:?}")),
    }
}

/// `args` as one RESP command.
fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn connect(redis: &RedisServer) -> Result<TcpStream, String> {
    let addr = redis.url().trim_start_matches("redis://").to_owned();
    let stream = TcpStream::connect(&addr).map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(DRAIN_MAX))
        .map_err(|e| e.to_string())?;
    Ok(stream)
}

/// Nanoseconds since `base`.
fn since(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The `INFO commandstats` field `usec_per_call` of `evalsha`, and its calls.
fn evalsha_stats(stream: &mut TcpStream) -> Result<(u64, f64), String> {
    stream
        .write_all(&command(&[b"INFO", b"commandstats"]))
        .map_err(|e| e.to_string())?;
    let Value::Bulk(Some(info)) = read_value(&mut BufReader::new(stream))? else {
        return Err("INFO: not a bulk string".to_owned());
    };
    let info = String::from_utf8_lossy(&info);
    let line = info
        .lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .ok_or("no evalsha in commandstats")?;
    let field = |name: &str| {
        line.split([':', ','])
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| format!("no {name} in {line:?}"))
    };
    Ok((field("calls")? as u64, field("usec_per_call")?))
}

fn run(redis: &RedisServer, args: &Args, messages: u64) -> Result<String, String> {
    let base = Instant::now();
    // The subscriber.
    let mut subscriber = connect(redis)?;
    subscriber
        .write_all(&command(&[b"SUBSCRIBE", CHANNEL.as_bytes()]))
        .map_err(|e| e.to_string())?;
    let mut sub_reader = BufReader::new(subscriber.try_clone().map_err(|e| e.to_string())?);
    read_value(&mut sub_reader)?; // the subscribe confirmation
    let hops = std::thread::spawn(move || -> Result<Vec<u64>, String> {
        let mut hops = Vec::with_capacity(messages as usize);
        while (hops.len() as u64) < messages {
            let Value::Array(parts) = read_value(&mut sub_reader)? else {
                return Err("subscription: not an array".to_owned());
            };
            let read = since(base);
            let Some(Value::Bulk(Some(payload))) = parts.get(2) else {
                return Err("subscription: no payload".to_owned());
            };
            let sent = payload
                .get(SENT_AT..SENT_AT + 8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .ok_or("payload too short")?;
            hops.push(read.saturating_sub(sent));
        }
        Ok(hops)
    });

    // The publisher: the script loaded, then the load.
    let mut publisher = connect(redis)?;
    let mut pub_reader = BufReader::new(publisher.try_clone().map_err(|e| e.to_string())?);
    publisher
        .write_all(&command(&[b"SCRIPT", b"LOAD", PUBLISH_SCRIPT.as_bytes()]))
        .map_err(|e| e.to_string())?;
    let Value::Bulk(Some(sha)) = read_value(&mut pub_reader)? else {
        return Err("SCRIPT LOAD: not a bulk string".to_owned());
    };
    let (before_calls, _) = evalsha_stats(&mut connect(redis)?).unwrap_or((0, 0.0));
    let (sent_tx, sent_rx) = mpsc::channel::<u64>();
    let replies = std::thread::spawn(move || -> Result<Vec<u64>, String> {
        let mut trips = Vec::with_capacity(messages as usize);
        // One send time per call; a call's reply is its last offset.
        for sent in sent_rx {
            match read_value(&mut pub_reader)? {
                Value::Int(offset) if offset > 0 => trips.push(since(base).saturating_sub(sent)),
                other => return Err(format!("script reply {other:?}")),
            }
        }
        Ok(trips)
    });
    let epoch = 0x0123_4567_89ab_cdef_u64.to_be_bytes();
    let (meta, history) = ("storm.meta.lobby", "storm.history.lobby");
    let start = Instant::now() + Duration::from_millis(10);
    let tick = args.tick_us.max(1);
    let due = |j: u64| {
        let exact = (j as f64 / args.rate * 1e6) as u64;
        start + Duration::from_micros(exact.div_ceil(tick) * tick)
    };
    let mut payloads = Vec::new();
    let mut j = 0;
    while j < messages {
        if let Some(wait) = due(j).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        // Every message due by now, in one call (or one call each).
        let now = Instant::now();
        let sent = since(base);
        payloads.clear();
        while j < messages && due(j) <= now {
            let mut payload = vec![b'x'; PAYLOAD_LEN];
            payload[SENT_AT..SENT_AT + 8].copy_from_slice(&sent.to_be_bytes());
            payloads.push(payload);
            j += 1;
        }
        let calls: Vec<&[Vec<u8>]> = if args.call_per_message {
            payloads.chunks(1).collect()
        } else {
            vec![&payloads[..]]
        };
        let mut request = Vec::new();
        for call in calls {
            let mut words: Vec<&[u8]> = vec![
                b"EVALSHA",
                &sha,
                b"2",
                meta.as_bytes(),
                history.as_bytes(),
                &epoch,
                b"1000",
                CHANNEL.as_bytes(),
                b"0",
            ];
            words.extend(call.iter().map(Vec::as_slice));
            request.extend(command(&words));
            sent_tx.send(sent).map_err(|_| "the reply reader stopped")?;
        }
        publisher.write_all(&request).map_err(|e| e.to_string())?;
    }
    let sending = start.elapsed().as_secs_f64();
    drop(sent_tx);
    let mut trips = replies.join().map_err(|_| "reply reader panicked")??;
    let mut hops = hops.join().map_err(|_| "subscriber panicked")??;
    let (after_calls, usec_per_call) = evalsha_stats(&mut connect(redis)?)?;
    trips.sort_unstable();
    hops.sort_unstable();
    let row = |v: &[u64]| {
        format!(
            "{:.0} / {:.0} / {:.0}",
            percentile_us(v, 0.50),
            percentile_us(v, 0.99),
            percentile_us(v, 1.0)
        )
    };
    Ok(format!(
        "redis_hop: {messages} messages in {sending:.2} s (tick {} µs, {})\n\
         | what | p50 / p99 / max µs |\n|---|---:|\n\
         | publisher write → subscriber read (the hop) | {} |\n\
         | publisher write → reply read (round trip, per call) | {} |\n\
         evalsha calls {} at {usec_per_call:.2} µs per call (Redis's own time, all calls so far)",
        args.tick_us,
        if args.call_per_message {
            "one call per message"
        } else {
            "one call per tick"
        },
        row(&hops),
        row(&trips),
        after_calls - before_calls,
    ))
}
