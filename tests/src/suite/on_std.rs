//! storm-std in the suite: servers accept on their own thread; every call
//! blocks the test thread, as the API intends.

use std::io;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use storm_host::hub::{Hub, SessionId};
use storm_host::link::CloseReason;
use storm_host::session::SendError;
use storm_proto::Message;
use storm_std::{
    Client, Decision, Handler, ServerHandle, Session, TcpClient, TcpServer, WsClient, WsServer,
};

use super::{
    Adapter, ClientDriver, ClientSpec, Protocol, Reactor, ServerDriver, ServerSpec, UpgradeSpec,
    WAIT,
};

/// The std (blocking, threads) adapter.
#[derive(Debug)]
pub struct Std;

struct Forward(Reactor);

impl Handler for Forward {
    fn on_connect(&self, session: &Session) {
        self.0.connected(session);
    }
    fn on_message(&self, session: &Session, message: Message) {
        if let Some(reply) = self.0.received(session, message) {
            let _ = session.send_blocking(reply);
            self.0.replied(session);
        }
    }
    fn on_disconnect(&self, session: &Session, reason: &CloseReason) {
        self.0.disconnected(session, reason);
    }
    fn on_error(&self, error: &(dyn std::error::Error + Send + Sync + 'static)) {
        self.0.error(error);
    }
    fn on_reconnecting(&self, attempt: u32, _: Duration) {
        self.0.reconnecting(attempt);
    }
}

struct StdServer {
    handle: ServerHandle,
    serving: Option<JoinHandle<io::Result<()>>>,
}

impl ServerDriver for StdServer {
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
        match self.handle.session(session) {
            Some(session) => session.send_blocking(message),
            None => Err(SendError::Closed(message)),
        }
    }
    fn shutdown(&mut self, timeout: Duration) -> bool {
        let Some(serving) = self.serving.take() else {
            return true;
        };
        // `shutdown` blocks; bound it from outside so a hang fails the test
        // instead of stalling the run.
        let handle = self.handle.clone();
        let (done, finished) = mpsc::channel();
        thread::spawn(move || {
            handle.shutdown(timeout);
            let _ = done.send(matches!(serving.join(), Ok(Ok(()))));
        });
        finished.recv_timeout(timeout + WAIT).unwrap_or(false)
    }
}

struct StdClient(Client);

impl ClientDriver for StdClient {
    fn send(&self, message: Message) -> Result<(), String> {
        self.0.send(message).map_err(|e| e.to_string())
    }
    fn session(&self) -> Option<Session> {
        self.0.session()
    }
    fn close(&self) {
        self.0.close();
    }
    fn wait_closed(&self, timeout: Duration) -> bool {
        self.0.closed_timeout(timeout)
    }
}

impl Adapter for Std {
    const NAME: &'static str = "std";
    const TLS: bool = true;

    fn start_server(spec: &ServerSpec, reactor: Reactor) -> io::Result<Box<dyn ServerDriver>> {
        let options = spec.options.clone();
        let (handle, serving) = match &spec.protocol {
            Protocol::Ws(ws) => {
                let mut server = WsServer::bind(options, ws.clone())?;
                server = match spec.upgrade.clone() {
                    None => server,
                    Some(UpgradeSpec::Decide(decide)) => {
                        server.on_upgrade(move |info| decide(info))
                    }
                    // The scenario's slow hook, not a wait for something.
                    Some(UpgradeSpec::Stall(hold)) => server.on_upgrade(move |_| {
                        thread::sleep(hold);
                        Decision::accept()
                    }),
                };
                let handle = server.handle();
                let handler = Forward(reactor.attach(handle.hub().clone()));
                (handle, server.spawn(handler)?)
            }
            Protocol::Tcp(framing) => {
                let server = TcpServer::bind(options, framing.clone())?;
                let handle = server.handle();
                let handler = Forward(reactor.attach(handle.hub().clone()));
                (handle, server.spawn(handler)?)
            }
        };
        Ok(Box::new(StdServer {
            handle,
            serving: Some(serving),
        }))
    }

    fn connect(spec: &ClientSpec, reactor: Reactor) -> Result<Box<dyn ClientDriver>, String> {
        let options = spec.options.clone();
        let handler = Forward(reactor);
        let client = match &spec.protocol {
            Protocol::Ws(ws) => WsClient::connect(&spec.target, options, ws.clone(), handler),
            Protocol::Tcp(framing) => {
                TcpClient::connect(&spec.target, options, framing.clone(), handler)
            }
        }
        .map_err(|e| e.to_string())?;
        Ok(Box::new(StdClient(client)))
    }
}
