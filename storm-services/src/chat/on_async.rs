//! `storm chat` on tokio and smol: one generic path over storm-async. The
//! handler only sends what [`Chat`] decides; the tick and the page server
//! are tasks of the runtime, the page's TLS the runtime's `tls_accept`.

use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use storm_async::Session;
use storm_async::runtime::{PollRead, PollWrite};
use storm_host::link::CloseReason;
use storm_proto::Message;

use super::{
    Chat, ChatConfig, HTTP_TIMEOUT, PageRequest, PageServer, PageTls, STOP_TIMEOUT, announce,
    console_or,
};
use crate::host::{AsyncRuntime, Stop, connection_error};

/// Serves until `/stop` or `stop`.
pub(super) fn run<R: AsyncRuntime>(
    config: &ChatConfig,
    stop: &Stop,
    page_tls: PageTls,
) -> io::Result<()> {
    R::block_on(async {
        let server =
            storm_async::WsServer::<R>::bind(config.options.clone(), config.ws.clone()).await?;
        let http = announce(config, server.local_addr(), page_tls)?;
        let chat = Chat::new(server.handle());
        if let Some(every) = config.tick {
            R::spawn(tick::<R>(Arc::clone(&chat), every));
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
        let stopping = console_or(stop, Arc::clone(&chat));
        let handle = server.handle();
        R::spawn(async move {
            stopping.raised().await;
            handle.shutdown(STOP_TIMEOUT).await;
        });
        server.serve(AsyncChat(chat)).await?;
        println!("storm chat stopped");
        Ok(())
    })
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

/// Sends the tick every `every`; a late tick delays the next ones.
async fn tick<R: AsyncRuntime>(chat: Arc<Chat>, every: Duration) {
    let mut deadline = Instant::now() + every;
    loop {
        R::sleep_until(deadline).await;
        chat.tick();
        deadline = (deadline + every).max(Instant::now());
    }
}

/// Serves the chat page to HTTP GETs (over TLS with `tls`) until the
/// process ends.
async fn serve_page<R: AsyncRuntime>(listener: R::Listener, page: Arc<str>, tls: PageTls) {
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
                                answer(R::tls_accept(config, stream).await?, &page).await
                            }
                        }
                    };
                    let _ = within::<R, _>(HTTP_TIMEOUT, request).await;
                });
            }
            Err(e) => {
                eprintln!("page listener: {e}");
                R::sleep_until(Instant::now() + Duration::from_millis(100)).await;
            }
        }
    }
}

/// `future`'s output, or `None` when `limit` passes first.
async fn within<R: AsyncRuntime, F: Future>(limit: Duration, future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    let mut sleep = pin!(R::sleep_until(Instant::now() + limit));
    poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        sleep.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// Reads one request head and answers it; the connection then closes (after
/// a TLS `close_notify` on a TLS stream).
async fn answer<S: PollRead + PollWrite>(mut stream: S, page: &str) -> io::Result<()> {
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
