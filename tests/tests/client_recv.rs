//! `Client::recv` (clients made by `connect_recv`) over real loopback on
//! tokio and smol: messages arrive in order through a queue far smaller
//! than what the server sends (backpressure, nothing lost), `recv` ends
//! with `NotConnected` once the client closed and the queue is drained,
//! and a client with a handler refuses `recv`.

use storm_async::{ClientError, Handler, Session, WsClient, WsServer};
use storm_host::options::{ClientOptions, ServerOptions, WsOptions};
use storm_proto::Message;
use storm_tests::suite::on_async::{Executor, bounded};

/// How many messages the server sends at once.
const BURST: usize = 50;

/// Sends [`BURST`] numbered messages to every client as it connects, then
/// echoes.
struct Burst;

impl Handler for Burst {
    async fn on_connect(&self, session: &Session) {
        for i in 0..BURST {
            let _ = session.send(Message::from(format!("m{i}"))).await;
        }
    }
    async fn on_message(&self, session: &Session, message: Message) {
        let _ = session.send(message).await;
    }
}

/// A server on `R` running [`Burst`]; its URL.
fn burst_server<R: Executor>() -> String {
    R::block_on(async {
        let server = WsServer::<R>::bind(ServerOptions::default(), WsOptions::default())
            .await
            .expect("bind");
        let url = format!("ws://{}/", server.local_addr());
        R::spawn(async move {
            let _ = server.serve(Burst).await;
        });
        url
    })
}

/// A queue of 2 against a burst of 50: every message, in order.
fn recv_takes_every_message_through_a_small_queue<R: Executor>() {
    let url = burst_server::<R>();
    R::block_on(bounded::<R, _>("recv", async {
        let client =
            WsClient::<R>::connect_recv(&url, ClientOptions::default(), WsOptions::default(), 2)
                .await
                .expect("connect");
        for i in 0..BURST {
            assert_eq!(
                client.recv().await.expect("a message"),
                Message::from(format!("m{i}"))
            );
        }
        client.send("echo me").await.expect("send");
        assert_eq!(
            client.recv().await.expect("the echo"),
            Message::from("echo me")
        );
        client.close();
        client.closed().await;
        assert!(matches!(
            client.recv().await,
            Err(ClientError::NotConnected)
        ));
    }));
}

/// A client made with a handler has nothing to `recv`.
fn recv_refused_with_a_handler<R: Executor>() {
    struct Nothing;
    impl Handler for Nothing {}
    let url = burst_server::<R>();
    R::block_on(bounded::<R, _>("handler", async {
        let client = WsClient::<R>::connect(
            &url,
            ClientOptions::default(),
            WsOptions::default(),
            Nothing,
        )
        .await
        .expect("connect");
        assert!(matches!(client.recv().await, Err(ClientError::Config(_))));
        client.close();
        client.closed().await;
    }));
}

storm_tests::on_async_runtimes!(
    recv_takes_every_message_through_a_small_queue,
    recv_refused_with_a_handler,
);
