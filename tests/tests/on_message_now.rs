//! `Handler::on_message_now`, the synchronous fast path, over real
//! loopback on tokio and smol: a message it handles never reaches
//! `on_message`, one it hands back does, and the replies of both paths
//! keep the order their messages came in.

use storm_async::{Handler, Session, WsClient, WsServer};
use storm_host::options::{ClientOptions, ServerOptions, WsOptions};
use storm_proto::Message;
use storm_tests::suite::on_async::{Executor, bounded};

/// Messages the client sends at once.
const COUNT: usize = 40;

fn text(message: &Message) -> &str {
    std::str::from_utf8(message.as_bytes()).unwrap_or_default()
}

/// Answers `now N` at once (`fast N`) and hands `later N` on to
/// `on_message` (`slow N`).
struct Split;

impl Handler for Split {
    fn on_message_now(&self, session: &Session, message: Message) -> Option<Message> {
        let Some(n) = text(&message).strip_prefix("now ") else {
            return Some(message);
        };
        let _ = session.try_send(format!("fast {n}"));
        None
    }

    async fn on_message(&self, session: &Session, message: Message) {
        let text = text(&message);
        let reply = match text.strip_prefix("later ") {
            Some(n) => format!("slow {n}"),
            // `on_message_now` kept what it handled.
            None => format!("unexpected {text}"),
        };
        let _ = session.send(reply).await;
    }
}

fn replies_keep_their_order_across_both_paths<R: Executor>() {
    R::block_on(bounded::<R, _>("on_message_now", async {
        let server = WsServer::<R>::bind(ServerOptions::default(), WsOptions::default())
            .await
            .expect("bind");
        let url = format!("ws://{}/", server.local_addr());
        R::spawn(async move {
            let _ = server.serve(Split).await;
        });
        let client = WsClient::<R>::connect_recv(
            &url,
            ClientOptions::default(),
            WsOptions::default(),
            COUNT,
        )
        .await
        .expect("connect");
        // Runs of each kind, so one read holds both.
        let now = |i: usize| i % 5 < 3;
        for i in 0..COUNT {
            let kind = if now(i) { "now" } else { "later" };
            client.send(format!("{kind} {i}")).await.expect("send");
        }
        for i in 0..COUNT {
            let kind = if now(i) { "fast" } else { "slow" };
            assert_eq!(
                client.recv().await.expect("a reply"),
                Message::from(format!("{kind} {i}"))
            );
        }
        client.close();
        client.closed().await;
    }));
}

storm_tests::on_async_runtimes!(replies_keep_their_order_across_both_paths);
