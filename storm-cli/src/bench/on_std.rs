//! The bench's connections on blocking threads (storm-std), carrying out
//! what [`Driver`] decides.
//!
//! Every connection is a storm-std client: its reader thread runs the
//! handler, which hands each message to the connection's [`Driver`] and
//! sends the requests it names with `send_blocking` (waiting under the
//! send limit as the async send does), and its writer thread writes them.
//! Besides those two threads per connection: at most [`CONNECT_AT_ONCE`]
//! threads that connect and run the setup exchanges (each on smol's
//! `block_on` and timer, no executor), one thread that sends every
//! connection's first requests, and this one, which waits for the end of
//! the run the same way.
//!
//! The broker target's blocking clients (`impl broker::Clients`): each
//! consumer's and the provider's own threads, the provider's handler
//! threads, and a thread per open request ([`broker::MAX_STD_SLOTS`] at
//! most).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use storm_host::link::CloseReason;
use storm_proto::Message;
use storm_proto::broker::ChannelId;
use storm_services::broker::{
    BrokerError, ConsumerOptions, ProviderHandle, ProviderOptions, blocking,
};
use storm_std::{Client, Handler, Session, TcpClient, WsClient};

use super::target::{self, Conn, Target, Wire};
use super::{
    CONNECT_AT_ONCE, Config, Dial, Driver, Engine, How, Outcome, Run, TEARDOWN_TIMEOUT, Where,
    broker, lock, measure,
};

/// The engine on storm-std's threads.
pub(super) struct Threads;

impl Engine for Threads {
    /// Blocks while connecting and closing; waits for the run's end with
    /// smol's timer (run it under `smol::block_on`).
    async fn drive<T: Target>(target: T, config: &Config, at: Where<'_>) -> Outcome {
        let run = Arc::new(Run::new(config.max_messages));
        let opened = match open_all(target, &run, config, at) {
            Ok(opened) => opened,
            Err(e) => return Outcome::failed(&run, e),
        };
        let mut outcome = measure(&run, config, at, sleep_until, || {
            start(&opened, config.in_flight);
        })
        .await;
        close(&opened);
        outcome.error = lock(&run.error).clone();
        outcome
    }

    async fn broker(config: &Config, at: Where<'_>, channel: Option<ChannelId>) -> Outcome {
        broker::drive::<Self>(config, at, channel).await
    }
}

/// Stack of a request slot's thread: it only waits on the consumer.
const SLOT_STACK: usize = 256 << 10;

/// The blocking broker clients: a thread per request slot, since the
/// blocking consumer's `request` holds its thread until the answer (the
/// slots of one connection share its consumer, which keeps their requests
/// open together, as the async consumer does). [`broker::MAX_STD_SLOTS`]
/// bounds them.
impl broker::Clients for Threads {
    type Consumer = blocking::Consumer;

    async fn sleep_until(deadline: Instant) {
        sleep_until(deadline).await;
    }

    /// Blocks while connecting; serves on a thread of its own (the
    /// provider runs each handler on a thread of its own too).
    async fn provider(
        addr: &str,
        channel: ChannelId,
        options: ProviderOptions,
    ) -> Result<ProviderHandle, BrokerError> {
        let provider = blocking::Provider::connect(addr, channel, options)?;
        let handle = provider.handle();
        let serving = thread::Builder::new()
            .name("storm-bench-provider".to_owned())
            .spawn(move || provider.serve(|request| Ok(request.payload)));
        if let Err(e) = serving {
            handle.close();
            return Err(BrokerError::Io(e));
        }
        Ok(handle)
    }

    /// Blocks while connecting.
    async fn consumer(
        addr: &str,
        channel: ChannelId,
        options: ConsumerOptions,
    ) -> Result<blocking::Consumer, BrokerError> {
        blocking::Consumer::connect(addr, channel, options)
    }

    fn start(consumer: &blocking::Consumer, slot: broker::Slot) {
        let consumer = consumer.clone();
        let run = Arc::clone(&slot.run);
        let spawned = thread::Builder::new()
            .name("storm-bench-slot".to_owned())
            .stack_size(SLOT_STACK)
            .spawn(move || {
                // The slot's loop is the async path's; here each request
                // blocks inside it, so the future never waits.
                smol::block_on(slot.run_on(|payload| {
                    std::future::ready(consumer.request(payload, broker::REQUEST_TIMEOUT))
                }));
            });
        if let Err(e) = spawned {
            run.fail(format!("starting a thread: {e}"));
        }
    }

    fn close(consumer: &blocking::Consumer) {
        consumer.close();
    }
}

/// Completes at `deadline` (smol's timer: no executor needed).
async fn sleep_until(deadline: Instant) {
    smol::Timer::at(deadline).await;
}

/// One connected, set up connection.
struct Opened<C> {
    client: Client,
    driver: Arc<Driver<C>>,
}

/// Opens every connection on at most [`CONNECT_AT_ONCE`] threads; the
/// first error, or the setup's overall deadline, ends it.
fn open_all<T: Target>(
    target: T,
    run: &Arc<Run>,
    config: &Config,
    at: Where<'_>,
) -> Result<Vec<Opened<T::Conn>>, String> {
    let dial = Dial::new(config, at.addr, target.transport());
    // Each connection's setup has its own deadline; this bounds the rest.
    let deadline = Instant::now() + target::SETUP_TIMEOUT * 2;
    let next = AtomicUsize::new(0);
    let opened = Mutex::new(Vec::with_capacity(config.connections));
    let failed = Mutex::new(None::<String>);
    let work = || {
        while lock(&failed).is_none() && Instant::now() < deadline {
            let index = next.fetch_add(1, Ordering::Relaxed);
            if index >= config.connections {
                return;
            }
            match open(&target, Arc::clone(run), &dial, config.in_flight, index) {
                Ok(one) => lock(&opened).push(one),
                Err(e) => {
                    lock(&failed).get_or_insert(e);
                    return;
                }
            }
        }
    };
    thread::scope(|scope| {
        for _ in 0..config.connections.min(CONNECT_AT_ONCE) {
            if let Err(e) = thread::Builder::new()
                .name("storm-bench-connect".to_owned())
                .spawn_scoped(scope, work)
            {
                lock(&failed).get_or_insert(format!("starting a thread: {e}"));
                break;
            }
        }
    });
    let opened = opened.into_inner().unwrap_or_else(|e| e.into_inner());
    let failed = failed.into_inner().unwrap_or_else(|e| e.into_inner());
    let error = match failed {
        Some(e) => e,
        None if opened.len() < config.connections => {
            "setting the connections up took too long".to_owned()
        }
        None => return Ok(opened),
    };
    close(&opened);
    Err(error)
}

/// Connects connection `index` and runs the target's setup on it.
fn open<T: Target>(
    target: &T,
    run: Arc<Run>,
    dial: &Dial,
    in_flight: usize,
    index: usize,
) -> Result<Opened<T::Conn>, String> {
    let deadline = Instant::now() + target::SETUP_TIMEOUT;
    let (driver, inbox) = Driver::new(run, index);
    let driver = Arc::new(driver);
    let handler = ConnHandler(Arc::clone(&driver));
    let options = dial.options.clone();
    let connected = match &dial.how {
        How::Tcp(framing) => {
            TcpClient::connect(&dial.addr.to_string(), options, framing.clone(), handler)
        }
        How::Ws { url, ws } => WsClient::connect(url, options, ws.clone(), handler),
    };
    let client = connected.map_err(|e| format!("connecting to {}: {e}", dial.addr))?;
    let wire = StdWire(client);
    if let Err(e) = smol::block_on(driver.set_up(target, &wire, &inbox, deadline, in_flight)) {
        wire.0.close();
        return Err(e);
    }
    Ok(Opened {
        client: wire.0,
        driver,
    })
}

/// A connection during its setup exchange.
struct StdWire(Client);

impl Wire for StdWire {
    /// Blocks while the connection is backpressured: nothing else runs on
    /// the setup's thread meanwhile.
    async fn send(&self, message: Message) -> Result<(), String> {
        self.0.send(message).map_err(|e| e.to_string())
    }

    async fn sleep_until(deadline: Instant) {
        sleep_until(deadline).await;
    }
}

/// Sends every connection's first `window` requests, on a thread of its
/// own (so that the run's timer goes on meanwhile). It ends once every
/// send is done or refused (the connections close at the end of the run).
fn start<C: Conn>(opened: &[Opened<C>], window: usize) {
    let connections: Vec<_> = opened
        .iter()
        .map(|one| (Arc::clone(&one.driver), one.client.session()))
        .collect();
    let spawned = thread::Builder::new()
        .name("storm-bench-start".to_owned())
        .spawn(move || {
            for (driver, session) in connections {
                if let (Some(session), Some((n, request))) = (session, driver.start(window)) {
                    send(&session, n, request);
                }
            }
        });
    if let Err(e) = spawned {
        if let Some(one) = opened.first() {
            one.driver.run.fail(format!("starting a thread: {e}"));
        }
    }
}

/// Sends `request` `n` times.
fn send(session: &Session, n: u64, request: Message) {
    for _ in 0..n {
        if session.send_blocking(request.clone()).is_err() {
            // Closing: the run is ending, or on_disconnect says why.
            return;
        }
    }
}

/// The connection's handler (on its reader thread): setup messages to the
/// setup exchange, then each answer to the [`Driver`], sending what it
/// names.
struct ConnHandler<C>(Arc<Driver<C>>);

impl<C: Conn> Handler for ConnHandler<C> {
    fn on_message(&self, session: &Session, message: Message) {
        if let Some(tx) = self.0.setup_queue() {
            // Blocking here holds the reading back while the setup code is
            // behind; after it, nobody reads these.
            let _ = tx.send_blocking(message);
            return;
        }
        if let Some((n, request)) = self.0.answered(&message) {
            send(session, n, request);
        }
    }

    fn on_disconnect(&self, _session: &Session, reason: &CloseReason) {
        self.0.disconnected(reason);
    }
}

/// Closes every client, waiting a bounded time for them to finish.
fn close<C>(opened: &[Opened<C>]) {
    for one in opened {
        one.client.close();
    }
    let deadline = Instant::now() + TEARDOWN_TIMEOUT;
    for one in opened {
        let left = deadline.saturating_duration_since(Instant::now());
        if !one.client.closed_timeout(left) {
            return;
        }
    }
}
