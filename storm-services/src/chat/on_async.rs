//! `storm chat` on tokio and smol: one generic path over storm-async. The
//! handler only sends what [`Chat`] decides; the tick and the page server
//! are tasks of the runtime, the page's TLS the runtime's `tls_accept`.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::{Duration, Instant};

use storm_async::Session;
use storm_async::runtime::{PollRead, PollWrite};
use storm_host::link::CloseReason;
use storm_proto::Message;

use super::nodes::Nodes;
use super::{
    Chat, ChatConfig, Gate, HTTP_TIMEOUT, Page, PageRequest, PageServer, PageTls, STOP_TIMEOUT,
    announce, read_console, stopping,
};
use crate::host::{AsyncRuntime, Bound, Stop, connection_error, on_async};

/// Serves until `/stop` or `stop`.
pub(super) fn run<R: AsyncRuntime>(
    config: &ChatConfig,
    stop: &Stop,
    page_tls: PageTls,
    bound: impl FnOnce(&Bound),
) -> io::Result<()> {
    let stopping = stopping(stop);
    on_async::serve_until::<R, io::Error, _, _, _>(&stopping, STOP_TIMEOUT, || async {
        let server =
            storm_async::WsServer::<R>::bind(config.options.clone(), config.ws.clone()).await?;
        let http = announce(config, server.local_addr(), page_tls)?;
        bound(&Bound {
            local_addr: server.local_addr(),
            hub: server.handle().hub().clone(),
        });
        let gate = Gate::new(config, http.as_ref())?;
        let server = server.on_upgrade(move |info| std::future::ready(gate.decide(&info)));
        let nodes = config.backplane.as_ref().map(Nodes::new::<R>).transpose()?;
        let chat = Chat::new(server.handle(), nodes);
        // Subscribed before the first session: no room event is missed.
        let running = match &chat.nodes {
            Some(nodes) => {
                let hub = server.handle().hub().clone();
                Some(nodes.start(hub, Arc::downgrade(&chat)).await?)
            }
            None => None,
        };
        if let Some(period) = config.tick {
            let chat = Arc::clone(&chat);
            R::spawn(on_async::every::<R>(period, move || chat.tick()));
        }
        if let Some(PageServer {
            listener,
            page,
            tls,
        }) = http
        {
            listener.set_nonblocking(true)?;
            R::spawn(serve_page::<R>(R::listen(listener)?, page, tls));
        }
        read_console(&stopping, Arc::clone(&chat));
        let handle = server.handle();
        let serving = server.serve(AsyncChat(chat));
        Ok((handle, async move {
            let _running = running; // the backplane's tasks end with it
            serving.await
        }))
    })?;
    println!("storm chat stopped");
    Ok(())
}

struct AsyncChat(Arc<Chat>);

impl storm_async::Handler for AsyncChat {
    async fn on_connect(&self, session: &Session) {
        let _ = session.send(self.0.connect(session)).await;
        if let Some(error) = self.0.enter_lobby(session) {
            let _ = session.send(error).await;
        }
    }

    async fn on_message(&self, session: &Session, message: Message) {
        if let Some(reply) = self.0.on_message(session, &message) {
            let _ = session.send(reply).await;
        }
    }

    async fn on_disconnect(&self, session: &Session, reason: &CloseReason) {
        self.0.disconnect(session, reason);
    }

    async fn on_error(&self, error: &(dyn std::error::Error + Send + Sync + 'static)) {
        connection_error(error);
    }
}

/// Serves the chat page to HTTP GETs (over TLS with `tls`) until the
/// process ends.
async fn serve_page<R: AsyncRuntime>(listener: R::Listener, page: Arc<Page>, tls: PageTls) {
    loop {
        match poll_fn(|cx| R::poll_accept(&listener, cx)).await {
            Ok((stream, _)) => {
                let (page, tls) = (Arc::clone(&page), tls.clone());
                R::spawn(async move {
                    // The TLS handshake counts in the request's time.
                    let request = async {
                        match tls {
                            None => answer(stream, &page).await,
                            Some(config) => {
                                answer(R::tls_accept(config.into(), stream).await?, &page).await
                            }
                        }
                    };
                    let _ = on_async::until::<R, _>(Instant::now() + HTTP_TIMEOUT, request).await;
                });
            }
            Err(e) => {
                eprintln!("page listener: {e}");
                R::sleep_until(Instant::now() + Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads one request head and answers it; the connection then closes (after
/// a TLS `close_notify` on a TLS stream).
async fn answer<S: PollRead + PollWrite>(mut stream: S, page: &Page) -> io::Result<()> {
    let mut request = PageRequest::default();
    let mut buf = [0u8; 1024];
    let response = loop {
        let n = poll_fn(|cx| stream.poll_read(cx, &mut buf)).await?;
        if n == 0 {
            return Ok(());
        }
        if let Some(response) = request.push(buf.get(..n).unwrap_or_default(), page) {
            break response;
        }
    };
    let mut rest = response.as_bytes();
    while !rest.is_empty() {
        let n = poll_fn(|cx| stream.poll_write_vectored(cx, &[IoSlice::new(rest)])).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        rest = rest.get(n..).unwrap_or_default();
    }
    poll_fn(|cx| stream.poll_close(cx)).await
}
