//! The bench's connections on tokio and smol: one path over storm-async's
//! `Runtime`, carrying out what [`Driver`] decides.
//!
//! Every connection is a storm-async client whose handler hands each
//! message to its [`Driver`] and sends the requests it names from the
//! connection's own task, with no channel or extra task in between.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Instant;

use smol::future::or;
use storm_async::{Client, Handler, Session, TcpClient, WsClient};
use storm_host::link::CloseReason;
use storm_proto::Message;
use storm_proto::broker::ChannelId;
use storm_services::broker::{
    BrokerError, Consumer, ConsumerOptions, Provider, ProviderHandle, ProviderOptions,
};
use storm_services::host::AsyncRuntime;

use super::target::{self, Conn, Target, Wire};
use super::{
    CONNECT_AT_ONCE, Config, Dial, Driver, Engine, How, Outcome, Run, TEARDOWN_TIMEOUT, Where,
    broker, lock, measure, targets,
};

/// Runs the bench on runtime `R`, from a thread outside any runtime.
pub(super) fn run<R: AsyncRuntime>(
    config: &Config,
    at: Where<'_>,
    channel: Option<ChannelId>,
) -> Outcome {
    R::block_on(async { Ok(targets::<Tasks<R>>(config, at, channel).await) }).unwrap_or_else(|e| {
        let run = Arc::new(Run::new(config.max_messages));
        Outcome::failed(&run, format!("runtime: {e}"))
    })
}

/// The engine on runtime `R`: a task per connection (storm-async's own).
pub(super) struct Tasks<R>(PhantomData<fn() -> R>);

impl<R: AsyncRuntime> Engine for Tasks<R> {
    async fn drive<T: Target>(target: T, config: &Config, at: Where<'_>) -> Outcome {
        let run = Arc::new(Run::new(config.max_messages));
        let opened = match open_all::<R, T>(target, &run, config, at).await {
            Ok(opened) => opened,
            Err(e) => return Outcome::failed(&run, e),
        };
        let mut outcome = measure(&run, config, at, R::sleep_until, || {
            for one in &opened {
                let (driver, session) = (Arc::clone(&one.driver), one.client.session());
                let window = config.in_flight;
                R::spawn(async move {
                    if let (Some(session), Some((n, request))) = (session, driver.start(window)) {
                        send(&session, n, request).await;
                    }
                });
            }
        })
        .await;
        close::<R, _>(&opened).await;
        outcome.error = lock(&run.error).clone();
        outcome
    }

    async fn broker(config: &Config, at: Where<'_>, channel: Option<ChannelId>) -> Outcome {
        broker::drive::<Self>(config, at, channel).await
    }
}

/// The async broker clients: a task per request slot.
impl<R: AsyncRuntime> broker::Clients for Tasks<R> {
    type Consumer = Consumer;

    async fn sleep_until(deadline: Instant) {
        R::sleep_until(deadline).await;
    }

    async fn provider(
        addr: &str,
        channel: ChannelId,
        options: ProviderOptions,
    ) -> Result<ProviderHandle, BrokerError> {
        let provider = Provider::connect_on::<R>(addr, channel, options).await?;
        let handle = provider.handle();
        R::spawn(async move {
            let _ = provider
                .serve(|request| async move { Ok(request.payload) })
                .await;
        });
        Ok(handle)
    }

    async fn consumer(
        addr: &str,
        channel: ChannelId,
        options: ConsumerOptions,
    ) -> Result<Consumer, BrokerError> {
        Consumer::connect_on::<R>(addr, channel, options).await
    }

    fn start(consumer: &Consumer, slot: broker::Slot) {
        let consumer = consumer.clone();
        R::spawn(async move {
            slot.run_on(|payload| consumer.request(payload, broker::REQUEST_TIMEOUT))
                .await;
        });
    }

    fn close(consumer: &Consumer) {
        consumer.close();
    }
}

/// One connected, set up connection.
struct Opened<C> {
    client: Client,
    driver: Arc<Driver<C>>,
}

/// Opens every connection, at most [`CONNECT_AT_ONCE`] at a time; the
/// first error ends it (connections opened later are closed at once).
async fn open_all<R: AsyncRuntime, T: Target>(
    target: T,
    run: &Arc<Run>,
    config: &Config,
    at: Where<'_>,
) -> Result<Vec<Opened<T::Conn>>, String> {
    let target = Arc::new(target);
    let dial = Arc::new(Dial::new(config, at.addr, target.transport()));
    let gate = Arc::new(smol::lock::Semaphore::new(CONNECT_AT_ONCE));
    let (tx, results) = smol::channel::bounded(config.connections);
    for index in 0..config.connections {
        let (target, run, dial, gate, tx) = (
            Arc::clone(&target),
            Arc::clone(run),
            Arc::clone(&dial),
            Arc::clone(&gate),
            tx.clone(),
        );
        let in_flight = config.in_flight;
        R::spawn(async move {
            let _permit = gate.acquire().await;
            let opened = open::<R, T>(&target, run, &dial, in_flight, index).await;
            // Nobody waits any more (the run failed): close it.
            if let Err(e) = tx.send(opened).await
                && let Ok(one) = e.into_inner()
            {
                one.client.close();
            }
        });
    }
    drop(tx);
    let mut opened = Vec::with_capacity(config.connections);
    // Each connection's setup has its own deadline; this bounds the rest.
    let deadline = Instant::now() + target::SETUP_TIMEOUT * 2;
    let all = async {
        for _ in 0..config.connections {
            match results.recv().await {
                Ok(Ok(one)) => opened.push(one),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err("a connection's setup ended without a word".to_owned()),
            }
        }
        Ok(())
    };
    let too_long = async {
        R::sleep_until(deadline).await;
        Err("setting the connections up took too long".to_owned())
    };
    let result = or(all, too_long).await;
    drop(results);
    match result {
        Ok(()) => Ok(opened),
        Err(e) => {
            close::<R, _>(&opened).await;
            Err(e)
        }
    }
}

/// Connects connection `index` and runs the target's setup on it.
async fn open<R: AsyncRuntime, T: Target>(
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
            let addr = dial.addr.to_string();
            TcpClient::<R>::connect(&addr, options, framing.clone(), handler).await
        }
        How::Ws { url, ws } => WsClient::<R>::connect(url, options, ws.clone(), handler).await,
    };
    let client = connected.map_err(|e| format!("connecting to {}: {e}", dial.addr))?;
    let wire = AsyncWire::<R>(client, PhantomData);
    if let Err(e) = driver
        .set_up(target, &wire, &inbox, deadline, in_flight)
        .await
    {
        wire.0.close();
        return Err(e);
    }
    Ok(Opened {
        client: wire.0,
        driver,
    })
}

/// A connection during its setup exchange, on runtime `R`.
struct AsyncWire<R>(Client, PhantomData<fn() -> R>);

impl<R: AsyncRuntime> Wire for AsyncWire<R> {
    async fn send(&self, message: Message) -> Result<(), String> {
        self.0.send(message).await.map_err(|e| e.to_string())
    }

    async fn sleep_until(deadline: Instant) {
        R::sleep_until(deadline).await;
    }
}

/// Sends `request` `n` times.
async fn send(session: &Session, n: u64, request: Message) {
    for _ in 0..n {
        if session.send(request.clone()).await.is_err() {
            // Closing: the run is ending, or on_disconnect says why.
            return;
        }
    }
}

/// The connection's handler: setup messages to the setup exchange, then
/// each answer to the [`Driver`], sending what it names.
struct ConnHandler<C>(Arc<Driver<C>>);

impl<C: Conn> Handler for ConnHandler<C> {
    async fn on_message(&self, session: &Session, message: Message) {
        if let Some(tx) = self.0.setup_queue() {
            // The setup code reads these; after it, nobody does.
            let _ = tx.send(message).await;
            return;
        }
        if let Some((n, request)) = self.0.answered(&message) {
            send(session, n, request).await;
        }
    }

    async fn on_disconnect(&self, _session: &Session, reason: &CloseReason) {
        self.0.disconnected(reason);
    }
}

/// Closes every client, waiting a bounded time for them to finish.
async fn close<R: AsyncRuntime, C>(opened: &[Opened<C>]) {
    for one in opened {
        one.client.close();
    }
    let closed = async {
        for one in opened {
            one.client.closed().await;
        }
    };
    or(closed, R::sleep_until(Instant::now() + TEARDOWN_TIMEOUT)).await;
}
