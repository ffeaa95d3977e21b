//! `storm chat` on blocking threads (storm-std). The handler only sends
//! what [`Chat`] decides; the tick is a thread, the page server a fixed
//! set of threads (over a blocking rustls stream with `--tls`). Across
//! nodes the backplane runs on smol's global executor (see `nodes`): the
//! same async code as on tokio and smol, no tokio here.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{ServerConnection, StreamOwned};

use storm_host::link::CloseReason;
use storm_proto::Message;
use storm_std::{Deadlined, Session};

use super::nodes::Nodes;
use super::{
    Chat, ChatConfig, Gate, HTTP_TIMEOUT, Page, PageRequest, PageServer, PageTls, STOP_TIMEOUT,
    announce, read_console, stopping,
};
use crate::host::{Bound, Stop, connection_error, on_std};

/// Serves until `/stop` or `stop`.
pub(super) fn run(
    config: &ChatConfig,
    stop: &Stop,
    page_tls: PageTls,
    bound: impl FnOnce(&Bound),
) -> io::Result<()> {
    let stopping = stopping(stop);
    let server = storm_std::WsServer::bind(config.options.clone(), config.ws.clone())?;
    let http = announce(config, server.local_addr(), page_tls)?;
    bound(&Bound {
        local_addr: server.local_addr(),
        hub: server.handle().hub().clone(),
    });
    let gate = Gate::new(config, http.as_ref())?;
    let server = server.on_upgrade(move |info| gate.decide(info));
    let handle = server.handle();
    let nodes = config
        .backplane
        .as_ref()
        .map(Nodes::new::<storm_smol::Smol>)
        .transpose()?;
    let chat = Chat::new(server.handle(), nodes);
    // Subscribed before the first session: no room event is missed.
    let running = match &chat.nodes {
        Some(nodes) => {
            let hub = server.handle().hub().clone();
            Some(smol::block_on(nodes.start(hub, Arc::downgrade(&chat)))?)
        }
        None => None,
    };
    if let Some(period) = config.tick {
        let chat = Arc::clone(&chat);
        on_std::every(period, move || chat.tick());
    }
    if let Some(page) = http {
        serve_page(page)?;
    }
    read_console(&stopping, Arc::clone(&chat));
    let serving = server.spawn(StdChat(chat))?;
    on_std::serve_until(&stopping, STOP_TIMEOUT, &handle, serving)?;
    drop(running); // the backplane's tasks end with it
    println!("storm chat stopped");
    Ok(())
}

struct StdChat(Arc<Chat>);

impl storm_std::Handler for StdChat {
    fn on_connect(&self, session: &Session) {
        let _ = session.send_blocking(self.0.connect(session));
        if let Some(error) = self.0.enter_lobby(session) {
            let _ = session.send_blocking(error);
        }
    }

    fn on_message(&self, session: &Session, message: Message) {
        if let Some(reply) = self.0.on_message(session, &message) {
            let _ = session.send_blocking(reply);
        }
    }

    fn on_disconnect(&self, session: &Session, reason: &CloseReason) {
        self.0.disconnect(session, reason);
    }

    fn on_error(&self, error: &(dyn std::error::Error + Send + Sync + 'static)) {
        connection_error(error);
    }
}

/// Page requests answered at once, one per page thread. More connections
/// wait in the listener's backlog until a thread is free. A client that
/// never finishes its request holds a thread for at most `HTTP_TIMEOUT`,
/// so stalled clients can delay the page but cannot add threads.
const PAGE_THREADS: usize = 8;

/// Serves the chat page to HTTP GETs (over TLS with `--tls`) on
/// `PAGE_THREADS` threads that share the listener, until the process ends.
fn serve_page(server: PageServer) -> io::Result<()> {
    let server = Arc::new(server);
    for _ in 0..PAGE_THREADS {
        let server = Arc::clone(&server);
        std::thread::Builder::new()
            .name("storm-chat-page".to_owned())
            .spawn(move || answer_each(&server))?;
    }
    Ok(())
}

/// Accepts and answers page requests one at a time.
fn answer_each(server: &PageServer) {
    for stream in server.listener.incoming() {
        match stream {
            Ok(stream) => {
                let _ = answer(stream, &server.page, server.tls.as_ref());
            }
            Err(e) => {
                eprintln!("page listener: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Answers one connection, over TLS with `tls`; the whole request, the
/// TLS handshake included, gets `HTTP_TIMEOUT`, as on the async runtimes
/// (a client that trickles bytes cannot hold a page thread longer).
fn answer(
    stream: TcpStream,
    page: &Page,
    tls: Option<&Arc<rustls::ServerConfig>>,
) -> io::Result<()> {
    let mut socket = Deadlined::new(&stream, Instant::now() + HTTP_TIMEOUT, "page request");
    match tls {
        None => respond(&mut socket, page)?,
        Some(config) => {
            let connection = ServerConnection::new(Arc::clone(config)).map_err(io::Error::other)?;
            let mut tls = StreamOwned::new(connection, socket);
            respond(&mut tls, page)?;
            tls.conn.send_close_notify();
            tls.flush()?;
        }
    }
    stream.shutdown(Shutdown::Write)
}

/// Reads one request head from `stream` and writes the answer.
fn respond(stream: &mut (impl Read + Write), page: &Page) -> io::Result<()> {
    let mut request = PageRequest::default();
    let mut buf = [0u8; 1024];
    let response = loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        if let Some(response) = request.push(buf.get(..n).unwrap_or_default(), page) {
            break response;
        }
    };
    stream.write_all(response.as_bytes())?;
    stream.flush()
}
