//! The `broker` target: request/response through `storm broker`, driven
//! through the library's own [`Consumer`] and [`Provider`].
//!
//! Each of `--connections` consumers keeps `--in-flight` requests of
//! `--size` bytes open with [`Consumer::request`] (one task per slot:
//! request, check the echo, record the round trip, next); the round trip
//! runs consumer → broker → provider → broker → consumer. Unless
//! `--channel` names a channel whose provider the user runs (it must echo),
//! the bench registers its own echo provider on a fresh random channel.
//!
//! This target does not use the [`Target`](super::Target) message loop:
//! the broker's client is a request/response API with its own framing,
//! ids and flow control, and benchmarking it is benchmarking that API.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use smol::channel::Sender;
use smol::future::or;
use storm_proto::broker::ChannelId;
use storm_services::broker::{
    Consumer, ConsumerOptions, Provider, ProviderHandle, ProviderOptions,
};
use storm_services::host::AsyncRuntime;

use super::{Config, Outcome, Run, TEARDOWN_TIMEOUT, Where, lock, measure, target};

/// Time each request may take before the run fails with it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request: the consumer's default largest response.
pub(crate) const MAX_SIZE: usize = 64 << 20;
/// Most requests one consumer may have open (the broker's default per
/// consumer, and the consumer's own default).
pub(crate) const MAX_IN_FLIGHT: usize = 1024;
/// Why the broker target does not run on std.
pub(crate) const NOT_ON_STD: &str = "the broker target runs on tokio and smol only: \
    storm-services has no blocking broker Consumer and Provider yet";

/// Runs the broker target on runtime `R`.
pub(super) async fn drive<R: AsyncRuntime>(
    config: &Config,
    at: Where<'_>,
    channel: Option<ChannelId>,
) -> Outcome {
    let run = Arc::new(Run::new(config.max_messages));
    let addr = at.addr.to_string();
    let opened = or(
        async { Some(open::<R>(config, &addr, channel).await) },
        async {
            R::sleep_until(Instant::now() + target::SETUP_TIMEOUT * 2).await;
            None
        },
    )
    .await;
    let (provider, consumers) = match opened {
        Some(Ok(opened)) => opened,
        Some(Err(e)) => return Outcome::failed(&run, e),
        None => {
            return Outcome::failed(&run, "setting the consumers up took too long".to_owned());
        }
    };
    let payload = super::target::payload(config.size);
    // Each slot holds a sender; all gone once every slot has ended.
    let (slots, ended) = smol::channel::bounded::<()>(1);
    let mut outcome = measure(&run, config, at, R::sleep_until, || {
        for (index, consumer) in consumers.iter().enumerate() {
            for _ in 0..config.in_flight {
                let (run, consumer, payload, held) = (
                    Arc::clone(&run),
                    consumer.clone(),
                    payload.clone(),
                    slots.clone(),
                );
                R::spawn(slot(run, consumer, payload, index, held));
            }
        }
    })
    .await;
    drop(slots);
    // Requests still open fail as their connections close, which ends
    // their slots (the run is stopping: not counted as failures).
    for consumer in &consumers {
        consumer.close();
    }
    if let Some(provider) = provider {
        provider.close();
    }
    let _ = or(
        async { while ended.recv().await.is_ok() {} },
        R::sleep_until(Instant::now() + TEARDOWN_TIMEOUT),
    )
    .await;
    outcome.error = lock(&run.error).clone();
    outcome
}

/// The bench's own provider (unless `channel` is given) and the consumers.
async fn open<R: AsyncRuntime>(
    config: &Config,
    addr: &str,
    channel: Option<ChannelId>,
) -> Result<(Option<ProviderHandle>, Vec<Consumer>), String> {
    let (channel, provider) = match channel {
        Some(channel) => (channel, None),
        None => {
            let channel = ChannelId::from_bytes(rand::random());
            let mut options = ProviderOptions::default();
            // Never the bottleneck: as many handlers as requests can be open.
            options.max_concurrent = (config.connections * config.in_flight).clamp(64, 1 << 16);
            options.client.tls.clone_from(&config.tls);
            let provider = Provider::connect_on::<R>(addr, channel, options)
                .await
                .map_err(|e| format!("provider: connecting to {addr}: {e}"))?;
            let handle = provider.handle();
            R::spawn(async move {
                // Ends when the bench closes it, or the broker goes (the
                // consumers' requests then fail the run).
                let _ = provider
                    .serve(|request| async move { Ok(request.payload) })
                    .await;
            });
            (channel, Some(handle))
        }
    };
    let mut consumers = Vec::with_capacity(config.connections);
    for index in 0..config.connections {
        let mut options = ConsumerOptions::default();
        options.client.tls.clone_from(&config.tls);
        let consumer = Consumer::connect_on::<R>(addr, channel, options)
            .await
            .map_err(|e| format!("consumer {index}: connecting to {addr}: {e}"))?;
        consumers.push(consumer);
    }
    Ok((provider, consumers))
}

/// One request slot of consumer `index`: a request at a time until the
/// run stops. `_held` is dropped when the slot ends.
async fn slot(run: Arc<Run>, consumer: Consumer, payload: Bytes, index: usize, _held: Sender<()>) {
    while run.tickets(1) == 1 {
        let sent = Instant::now();
        match consumer.request(payload.clone(), REQUEST_TIMEOUT).await {
            Ok(reply) if reply == payload => {
                run.record([sent], Instant::now());
                run.complete(1);
            }
            Ok(reply) => {
                run.fail(format!(
                    "consumer {index}: the response differs from the request ({} bytes back, {} sent)",
                    reply.len(),
                    payload.len()
                ));
                return;
            }
            Err(e) => {
                // At the end of the run, open requests may fail as the
                // connections close: not the service's fault.
                if !run.stopping.load(Ordering::Relaxed) {
                    run.fail(format!("consumer {index}: {e}"));
                }
                return;
            }
        }
    }
}
