//! storm-tokio in the suite: one process-wide runtime owned by the harness;
//! the test thread blocks on it.

use std::io;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use storm_proto::Message;
use storm_proto::hub::{Hub, SessionId};
use storm_proto::link::CloseReason;
use storm_proto::peer::{Peer, SendError};
use storm_tokio::{
    Client, Handler, ServerHandle, Session, TcpClient, TcpServer, WsClient, WsServer,
};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use super::{Adapter, ClientDriver, ClientSpec, Protocol, Reactor, ServerDriver, ServerSpec, WAIT};

/// The tokio adapter.
#[derive(Debug)]
pub struct Tokio;

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("tokio runtime: {e}"))
    })
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

struct TokioServer {
    handle: ServerHandle,
    serving: Option<JoinHandle<io::Result<()>>>,
}

impl ServerDriver for TokioServer {
    fn local_addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }
    fn sessions(&self) -> Vec<Peer> {
        self.handle
            .sessions()
            .iter()
            .map(|s| Peer::clone(s))
            .collect()
    }
    fn hub(&self) -> Hub {
        self.handle.hub().clone()
    }
    fn send(&self, session: SessionId, message: Message) -> Result<(), SendError> {
        let Some(session) = self.handle.session(session) else {
            return Err(SendError::Closed(message));
        };
        runtime().block_on(session.send(message))
    }
    fn shutdown(&mut self, timeout: Duration) -> bool {
        let Some(serving) = self.serving.take() else {
            return true;
        };
        runtime().block_on(async {
            let shutdown = self.handle.shutdown(timeout);
            if tokio::time::timeout(timeout + WAIT, shutdown)
                .await
                .is_err()
            {
                return false;
            }
            matches!(tokio::time::timeout(WAIT, serving).await, Ok(Ok(Ok(()))))
        })
    }
}

struct TokioClient(Client);

impl ClientDriver for TokioClient {
    fn send(&self, message: Message) -> Result<(), String> {
        runtime()
            .block_on(self.0.send(message))
            .map_err(|e| e.to_string())
    }
    fn session(&self) -> Option<Peer> {
        self.0.session().map(|s| Peer::clone(&s))
    }
    fn close(&self) {
        self.0.close();
    }
    fn wait_closed(&self, timeout: Duration) -> bool {
        runtime().block_on(async { tokio::time::timeout(timeout, self.0.closed()).await.is_ok() })
    }
}

impl Adapter for Tokio {
    const NAME: &'static str = "tokio";
    const TLS: bool = true;

    fn start_server(spec: &ServerSpec, reactor: Reactor) -> io::Result<Box<dyn ServerDriver>> {
        let rt = runtime();
        let options = spec.options.clone();
        let (handle, serving) = match &spec.protocol {
            Protocol::Ws(ws) => {
                let server = rt.block_on(WsServer::bind(options, ws.clone()))?;
                let handle = server.handle();
                let handler = Forward(reactor.attach(handle.hub().clone()));
                (handle, rt.spawn(server.serve(handler)))
            }
            Protocol::Tcp(framing) => {
                let server = rt.block_on(TcpServer::bind(options, framing.clone()))?;
                let handle = server.handle();
                let handler = Forward(reactor.attach(handle.hub().clone()));
                (handle, rt.spawn(server.serve(handler)))
            }
        };
        Ok(Box::new(TokioServer {
            handle,
            serving: Some(serving),
        }))
    }

    fn connect(spec: &ClientSpec, reactor: Reactor) -> Result<Box<dyn ClientDriver>, String> {
        let options = spec.options.clone();
        let handler = Forward(reactor);
        let client = runtime().block_on(async {
            let connect = async {
                match &spec.protocol {
                    Protocol::Ws(ws) => {
                        WsClient::connect(&spec.target, options, ws.clone(), handler).await
                    }
                    Protocol::Tcp(framing) => {
                        TcpClient::connect(&spec.target, options, framing.clone(), handler).await
                    }
                }
            };
            tokio::time::timeout(WAIT, connect)
                .await
                .map_err(|_| "connect did not return in time".to_owned())?
                .map_err(|e| e.to_string())
        })?;
        Ok(Box::new(TokioClient(client)))
    }
}
