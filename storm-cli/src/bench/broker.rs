//! The `broker` target: request/response through `storm broker`, driven
//! through the library's own consumer and provider.
//!
//! Each of `--connections` consumers keeps `--in-flight` requests of
//! `--size` bytes open, one [`Slot`] per request (request, check the echo,
//! record the round trip, next); the round trip runs consumer → broker →
//! provider → broker → consumer. Unless `--channel` names a channel whose
//! provider the user runs (it must echo), the bench registers its own echo
//! provider on a fresh random channel.
//!
//! This target does not use the [`Target`](super::Target) message loop:
//! the broker's client is a request/response API with its own framing,
//! ids and flow control, and benchmarking it is benchmarking that API.
//! What the run does is written once here ([`drive`], [`Slot`]); the
//! runtime's [`Clients`] only connect, wait and start the slots: a task
//! per slot on tokio and smol (`on_async.rs`, the async [`Consumer`]), a
//! thread per slot on std (`on_std.rs`, the blocking consumer, whose
//! `request` blocks its thread until the answer: so at most
//! [`MAX_STD_SLOTS`] there).
//!
//! [`Consumer`]: storm_services::broker::Consumer

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use smol::channel::Sender;
use smol::future::or;
use storm_proto::broker::ChannelId;
use storm_services::broker::{BrokerError, ConsumerOptions, ProviderHandle, ProviderOptions};

use super::{Config, Outcome, Run, TEARDOWN_TIMEOUT, Where, lock, measure, target};

/// Time each request may take before the run fails with it.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request: the consumer's default largest response.
pub(crate) const MAX_SIZE: usize = 64 << 20;
/// Most requests one consumer may have open (the broker's default per
/// consumer, and the consumer's own default).
pub(crate) const MAX_IN_FLIGHT: usize = 1024;
/// Most requests open at once on std (`--connections` × `--in-flight`):
/// each is a thread of the bench's (and, with the bench's own provider, a
/// handler thread of the provider's), so this bounds the threads. The
/// defaults (100 × 16) fit.
pub(crate) const MAX_STD_SLOTS: usize = 2048;

/// The broker's clients on one runtime: what [`drive`] needs from it.
pub(super) trait Clients {
    /// One connected consumer.
    type Consumer;

    /// Completes at `deadline`.
    async fn sleep_until(deadline: Instant);

    /// Connects and registers the bench's echo provider on `channel`, and
    /// serves until the handle closes it (or the broker goes: the
    /// consumers' requests then fail the run).
    async fn provider(
        addr: &str,
        channel: ChannelId,
        options: ProviderOptions,
    ) -> Result<ProviderHandle, BrokerError>;

    /// Connects and registers a consumer on `channel`.
    async fn consumer(
        addr: &str,
        channel: ChannelId,
        options: ConsumerOptions,
    ) -> Result<Self::Consumer, BrokerError>;

    /// Runs `slot` on `consumer` (`Slot::run_on`'s loop) until it ends,
    /// without waiting for it; if it cannot start, fails the run.
    fn start(consumer: &Self::Consumer, slot: Slot);

    /// Closes `consumer`: its open requests fail, which ends its slots.
    fn close(consumer: &Self::Consumer);
}

/// Runs the broker target on the clients `C`.
pub(super) async fn drive<C: Clients>(
    config: &Config,
    at: Where<'_>,
    channel: Option<ChannelId>,
) -> Outcome {
    let run = Arc::new(Run::new(config.max_messages));
    let addr = at.addr.to_string();
    let deadline = Instant::now() + target::SETUP_TIMEOUT * 2;
    let opened = or(
        async { Some(open::<C>(config, &addr, channel, deadline).await) },
        async {
            C::sleep_until(deadline).await;
            None
        },
    )
    .await;
    let (provider, consumers) = match opened {
        Some(Ok(opened)) => opened,
        Some(Err(e)) => return Outcome::failed(&run, e),
        None => return Outcome::failed(&run, too_long()),
    };
    let payload = super::target::payload(config.size);
    // Each slot holds a sender; all gone once every slot has ended.
    let (slots, ended) = smol::channel::bounded::<()>(1);
    let mut outcome = measure(&run, config, at, C::sleep_until, || {
        for (index, consumer) in consumers.iter().enumerate() {
            for _ in 0..config.in_flight {
                let slot = Slot {
                    run: Arc::clone(&run),
                    payload: payload.clone(),
                    index,
                    _held: slots.clone(),
                };
                C::start(consumer, slot);
            }
        }
    })
    .await;
    drop(slots);
    // Requests still open fail as their connections close, which ends
    // their slots (the run is stopping: not counted as failures).
    close::<C>(provider.as_ref(), &consumers);
    let _ = or(
        async { while ended.recv().await.is_ok() {} },
        C::sleep_until(Instant::now() + TEARDOWN_TIMEOUT),
    )
    .await;
    outcome.error = lock(&run.error).clone();
    outcome
}

fn too_long() -> String {
    "setting the consumers up took too long".to_owned()
}

/// The bench's own provider (unless `channel` is given) and the consumers,
/// each connecting by `deadline` (blocking clients cannot be cut off while
/// they connect: each has its connect timeout, and none starts after it).
async fn open<C: Clients>(
    config: &Config,
    addr: &str,
    channel: Option<ChannelId>,
    deadline: Instant,
) -> Result<(Option<ProviderHandle>, Vec<C::Consumer>), String> {
    let mut client =
        storm_host::options::ClientOptions::default().with_connect_timeout(target::SETUP_TIMEOUT);
    client.tls.clone_from(&config.tls);
    let (channel, provider) = match channel {
        Some(channel) => (channel, None),
        None => {
            let channel = ChannelId::from_bytes(rand::random());
            let mut options = ProviderOptions::default();
            // Never the bottleneck: as many handlers as requests can be open.
            options.max_concurrent = (config.connections * config.in_flight).clamp(64, 1 << 16);
            options.client = client.clone();
            let provider = C::provider(addr, channel, options)
                .await
                .map_err(|e| format!("provider: connecting to {addr}: {e}"))?;
            (channel, Some(provider))
        }
    };
    let mut consumers = Vec::with_capacity(config.connections);
    for index in 0..config.connections {
        let mut options = ConsumerOptions::default();
        options.client = client.clone();
        let connected = if Instant::now() < deadline {
            C::consumer(addr, channel, options)
                .await
                .map_err(|e| format!("consumer {index}: connecting to {addr}: {e}"))
        } else {
            Err(too_long())
        };
        match connected {
            Ok(consumer) => consumers.push(consumer),
            Err(e) => {
                close::<C>(provider.as_ref(), &consumers);
                return Err(e);
            }
        }
    }
    Ok((provider, consumers))
}

/// Closes the bench's provider and every consumer.
fn close<C: Clients>(provider: Option<&ProviderHandle>, consumers: &[C::Consumer]) {
    for consumer in consumers {
        C::close(consumer);
    }
    if let Some(provider) = provider {
        provider.close();
    }
}

/// One request slot of consumer `index`: a request at a time until the
/// run stops. `_held` is dropped when the slot ends.
pub(super) struct Slot {
    pub(super) run: Arc<Run>,
    payload: Bytes,
    index: usize,
    _held: Sender<()>,
}

impl Slot {
    /// Sends requests with `request` (the runtime's call: the payload and
    /// [`REQUEST_TIMEOUT`] in, the answer out) one at a time, checking and
    /// recording each, until the run stops or a request fails.
    pub(super) async fn run_on<F, A>(self, request: F)
    where
        F: Fn(Bytes) -> A,
        A: Future<Output = Result<Bytes, BrokerError>>,
    {
        while self.run.tickets(1) == 1 {
            let sent = Instant::now();
            if !self.answered(sent, request(self.payload.clone()).await) {
                return;
            }
        }
    }

    /// Checks the answer to the request sent at `sent` and counts it;
    /// `false` once the slot must end.
    fn answered(&self, sent: Instant, reply: Result<Bytes, BrokerError>) -> bool {
        let index = self.index;
        match reply {
            Ok(reply) if reply == self.payload => {
                self.run.record([sent], Instant::now());
                self.run.complete(1);
                true
            }
            Ok(reply) => {
                self.run.fail(format!(
                    "consumer {index}: the response differs from the request ({} bytes back, {} sent)",
                    reply.len(),
                    self.payload.len()
                ));
                false
            }
            Err(e) => {
                // At the end of the run, open requests may fail as the
                // connections close: not the service's fault.
                if !self.run.stopping.load(Ordering::Relaxed) {
                    self.run.fail(format!("consumer {index}: {e}"));
                }
                false
            }
        }
    }
}
