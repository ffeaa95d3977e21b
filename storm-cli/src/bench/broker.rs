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
use std::time::Duration;

use bytes::Bytes;
use storm_proto::broker::ChannelId;
use tokio::task::JoinSet;

use super::{Config, Outcome, Run, Where, lock, measure, target};
use storm_services::broker::{
    Consumer, ConsumerOptions, Provider, ProviderHandle, ProviderOptions,
};

/// Time each request may take before the run fails with it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request: the consumer's default largest response.
pub(crate) const MAX_SIZE: usize = 64 << 20;
/// Most requests one consumer may have open (the broker's default per
/// consumer, and the consumer's own default).
pub(crate) const MAX_IN_FLIGHT: usize = 1024;

/// Runs the broker target.
pub(super) async fn drive(config: &Config, at: Where<'_>, channel: Option<ChannelId>) -> Outcome {
    let run = Arc::new(Run::new(config.max_messages));
    let addr = at.addr.to_string();
    let opened =
        tokio::time::timeout(target::SETUP_TIMEOUT * 2, open(config, &addr, channel)).await;
    let (provider, consumers) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) => return Outcome::failed(&run, e),
        Err(_) => {
            return Outcome::failed(&run, "setting the consumers up took too long".to_owned());
        }
    };
    let payload = super::target::payload(config.size);
    let mut slots = JoinSet::new();
    let mut outcome = measure(&run, config, at, || {
        for (index, consumer) in consumers.iter().enumerate() {
            for _ in 0..config.in_flight {
                let (run, consumer, payload) =
                    (Arc::clone(&run), consumer.clone(), payload.clone());
                slots.spawn(slot(run, consumer, payload, index));
            }
        }
    })
    .await;
    // Requests still open are cancelled with their tasks.
    slots.abort_all();
    for consumer in &consumers {
        consumer.close();
    }
    if let Some(provider) = provider {
        provider.close();
    }
    outcome.error = lock(&run.error).clone();
    outcome
}

/// The bench's own provider (unless `channel` is given) and the consumers.
async fn open(
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
            let provider = Provider::connect(addr, channel, options)
                .await
                .map_err(|e| format!("provider: connecting to {addr}: {e}"))?;
            let handle = provider.handle();
            tokio::spawn(provider.serve(|request| async move { Ok(request.payload) }));
            (channel, Some(handle))
        }
    };
    let mut consumers = Vec::with_capacity(config.connections);
    for index in 0..config.connections {
        let mut options = ConsumerOptions::default();
        options.client.tls.clone_from(&config.tls);
        let consumer = Consumer::connect(addr, channel, options)
            .await
            .map_err(|e| format!("consumer {index}: connecting to {addr}: {e}"))?;
        consumers.push(consumer);
    }
    Ok((provider, consumers))
}

/// One request slot of consumer `index`: a request at a time until the
/// run stops.
async fn slot(run: Arc<Run>, consumer: Consumer, payload: Bytes, index: usize) {
    while run.tickets(1) == 1 {
        let sent = std::time::Instant::now();
        match consumer.request(payload.clone(), REQUEST_TIMEOUT).await {
            Ok(reply) if reply == payload => {
                if !run.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                    let nanos = u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    run.latency.record(nanos);
                }
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
                if !run.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                    run.fail(format!("consumer {index}: {e}"));
                }
                return;
            }
        }
    }
}
