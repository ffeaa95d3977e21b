//! storm-async in the suite, on any of its runtimes: one [`Adapter`] impl,
//! [`OnAsync<R>`], for every `R: storm_async::Runtime`. storm-tokio and
//! storm-smol are names over storm-async (`storm_tokio::WsServer` is
//! `storm_async::WsServer<storm_tokio::Tokio>`), so the harness drives both
//! with the same code; the only part per runtime is [`Executor`]: how the
//! test thread blocks on a future (a runtime owned by the harness for tokio,
//! `smol::block_on` for smol). Servers run as `R::spawn`ed tasks.

use std::future::{Future, poll_fn};
use std::io;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::OnceLock;
use std::sync::mpsc;
use std::task::Poll;
use std::time::{Duration, Instant};

use storm_async::{
    Client, Handler, Runtime, ServerHandle, Session, TcpClient, TcpServer, WsClient, WsServer,
};
use storm_host::hub::{Hub, SessionId};
use storm_host::link::CloseReason;
use storm_host::session::SendError;
use storm_proto::Message;

use super::{
    Adapter, ClientDriver, ClientSpec, Protocol, Reactor, ServerDriver, ServerSpec, UpgradeSpec,
    WAIT,
};

/// What a storm-async runtime needs besides [`Runtime`] to be driven from a
/// blocking test thread.
pub trait Executor: Runtime {
    /// The adapter's short name in test names.
    const NAME: &'static str;
    /// Runs `future` to completion on the calling (test) thread, inside the
    /// runtime's context.
    fn block_on<F: Future>(future: F) -> F::Output;
}

/// storm-tokio: one process-wide multi-thread runtime owned by the harness.
impl Executor for storm_tokio::Tokio {
    const NAME: &'static str = "tokio";
    fn block_on<F: Future>(future: F) -> F::Output {
        static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
        RUNTIME
            .get_or_init(|| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap_or_else(|e| panic!("tokio runtime: {e}"))
            })
            .block_on(future)
    }
}

/// storm-smol: tasks on smol's global executor; the test thread blocks with
/// `smol::block_on`.
impl Executor for storm_smol::Smol {
    const NAME: &'static str = "smol";
    fn block_on<F: Future>(future: F) -> F::Output {
        smol::block_on(future)
    }
}

/// The storm-async adapter on runtime `R`.
#[derive(Debug)]
pub struct OnAsync<R>(PhantomData<R>);

/// storm-tokio, as the suite drives it.
pub type Tokio = OnAsync<storm_tokio::Tokio>;
/// storm-smol, as the suite drives it.
pub type Smol = OnAsync<storm_smol::Smol>;

/// `future`'s output, or `None` once `limit` has passed (on `R`'s timer).
pub async fn within<R: Runtime, F: Future>(limit: Duration, future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    let mut timer = pin!(R::sleep_until(Instant::now() + limit));
    poll_fn(|cx| {
        if let Poll::Ready(out) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await
}

struct Forward(Reactor);

impl Handler for Forward {
    async fn on_connect(&self, session: &Session) {
        self.0.connected(session);
    }
    async fn on_message(&self, session: &Session, message: Message) {
        if let Some(reply) = self.0.received(session, message) {
            let _ = session.send(reply).await;
            self.0.replied(session);
        }
    }
    async fn on_disconnect(&self, session: &Session, reason: &CloseReason) {
        self.0.disconnected(session, reason);
    }
    async fn on_error(&self, error: &(dyn std::error::Error + Send + Sync + 'static)) {
        self.0.error(error);
    }
    async fn on_reconnecting(&self, attempt: u32, _: Duration) {
        self.0.reconnecting(attempt);
    }
}

struct AsyncServer<R: Executor> {
    handle: ServerHandle<R>,
    /// What `serve` returned, sent by its task.
    serving: Option<mpsc::Receiver<io::Result<()>>>,
}

impl<R: Executor> ServerDriver for AsyncServer<R> {
    fn local_addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }
    fn sessions(&self) -> Vec<Session> {
        self.handle.sessions()
    }
    fn hub(&self) -> Hub {
        self.handle.hub().clone()
    }
    fn send(&self, session: SessionId, message: Message) -> Result<(), SendError> {
        let Some(session) = self.handle.session(session) else {
            return Err(SendError::Closed(message));
        };
        R::block_on(session.send(message))
    }
    fn shutdown(&mut self, timeout: Duration) -> bool {
        let Some(serving) = self.serving.take() else {
            return true;
        };
        let shut = R::block_on(within::<R, _>(
            timeout + WAIT,
            self.handle.shutdown(timeout),
        ));
        shut.is_some() && matches!(serving.recv_timeout(WAIT), Ok(Ok(())))
    }
}

struct AsyncClient<R>(Client, PhantomData<fn() -> R>);

impl<R: Executor> ClientDriver for AsyncClient<R> {
    fn send(&self, message: Message) -> Result<(), String> {
        R::block_on(self.0.send(message)).map_err(|e| e.to_string())
    }
    fn session(&self) -> Option<Session> {
        self.0.session()
    }
    fn close(&self) {
        self.0.close();
    }
    fn wait_closed(&self, timeout: Duration) -> bool {
        R::block_on(within::<R, _>(timeout, self.0.closed())).is_some()
    }
}

/// Spawns `serve` on `R` (from within its context, which tokio needs);
/// its result comes back on the returned channel.
fn spawn_serving<R: Executor>(
    serve: impl Future<Output = io::Result<()>> + Send + 'static,
) -> mpsc::Receiver<io::Result<()>> {
    let (tx, rx) = mpsc::channel();
    R::block_on(async move {
        R::spawn(async move {
            let _ = tx.send(serve.await);
        });
    });
    rx
}

impl<R: Executor> Adapter for OnAsync<R> {
    const NAME: &'static str = R::NAME;
    const TLS: bool = true;

    fn start_server(spec: &ServerSpec, reactor: Reactor) -> io::Result<Box<dyn ServerDriver>> {
        let options = spec.options.clone();
        let (handle, serving) = match &spec.protocol {
            Protocol::Ws(ws) => {
                let mut server = R::block_on(WsServer::<R>::bind(options, ws.clone()))?;
                server = match spec.upgrade.clone() {
                    None => server,
                    Some(UpgradeSpec::Decide(decide)) => {
                        server.on_upgrade(move |info| std::future::ready(decide(&info)))
                    }
                    Some(UpgradeSpec::Stall(_)) => server.on_upgrade(|_| std::future::pending()),
                };
                let handle = server.handle();
                let handler = Forward(reactor.attach(handle.hub().clone()));
                (handle, spawn_serving::<R>(server.serve(handler)))
            }
            Protocol::Tcp(framing) => {
                let server = R::block_on(TcpServer::<R>::bind(options, framing.clone()))?;
                let handle = server.handle();
                let handler = Forward(reactor.attach(handle.hub().clone()));
                (handle, spawn_serving::<R>(server.serve(handler)))
            }
        };
        Ok(Box::new(AsyncServer {
            handle,
            serving: Some(serving),
        }))
    }

    fn connect(spec: &ClientSpec, reactor: Reactor) -> Result<Box<dyn ClientDriver>, String> {
        let options = spec.options.clone();
        let handler = Forward(reactor);
        let client = R::block_on(async {
            let connect = async {
                match &spec.protocol {
                    Protocol::Ws(ws) => {
                        WsClient::<R>::connect(&spec.target, options, ws.clone(), handler).await
                    }
                    Protocol::Tcp(framing) => {
                        TcpClient::<R>::connect(&spec.target, options, framing.clone(), handler)
                            .await
                    }
                }
            };
            within::<R, _>(WAIT, connect)
                .await
                .ok_or_else(|| "connect did not return in time".to_owned())?
                .map_err(|e| e.to_string())
        })?;
        Ok(Box::new(AsyncClient::<R>(client, PhantomData)))
    }
}

/// `future`'s output; panics, naming `what`, once [`WAIT`] has passed:
/// the bound on every wait of a test that drives an async API directly.
///
/// # Panics
///
/// When `future` does not finish within [`WAIT`].
pub async fn bounded<R: Runtime, F: Future>(what: &str, future: F) -> F::Output {
    within::<R, _>(WAIT, future)
        .await
        .unwrap_or_else(|| panic!("{what}: nothing within {WAIT:?}"))
}

/// Runs each generic scenario `fn NAME<R: Executor>()` on tokio and on
/// smol, as tests `tokio::NAME` and `smol::NAME`: for async APIs the
/// suite's [`Adapter`] does not cover (`WebSocketStream`, `Client::recv`).
#[macro_export]
macro_rules! on_async_runtimes {
    ($($scenario:ident),* $(,)?) => {
        mod tokio {
            $(
                #[test]
                fn $scenario() {
                    super::$scenario::<::storm_tokio::Tokio>();
                }
            )*
        }
        mod smol {
            $(
                #[test]
                fn $scenario() {
                    super::$scenario::<::storm_smol::Smol>();
                }
            )*
        }
    };
}
