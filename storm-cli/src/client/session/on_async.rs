//! The generic clients on tokio and smol: one path over storm-async's
//! runtime-neutral API, waiting with `.await` for what [`Run`] decides.

use std::future::{Future, pending};
use std::io;
use std::pin::Pin;

use smol::channel::{Receiver, Sender};
use smol::future::or;
use storm_async::{Client, ClientError, Handler, Session, TcpClient, WsClient};
use storm_host::link::CloseReason;
use storm_proto::Message;
use storm_services::host::AsyncRuntime;

use super::{Action, EVENT_QUEUE, End, Event, Next, Pump, Run, Step, Want};
use crate::client::{Exit, Plan, Transport, input};

/// Forwards a connection's events to the loop.
struct Forward(Sender<Event>);

impl Handler for Forward {
    async fn on_message(&self, _session: &Session, message: Message) {
        // Waiting here holds the connection's reading back while stdout is
        // behind: bounded memory, nothing dropped.
        let _ = self.0.send(Event::Message(message)).await;
    }

    async fn on_disconnect(&self, _session: &Session, reason: &CloseReason) {
        let _ = self.0.send(Event::Closed(reason.clone())).await;
    }
}

/// Runs the client on runtime `R` until it is done; its exit code.
pub(in crate::client) fn run<R: AsyncRuntime>(plan: Plan) -> Exit {
    if let Err(e) = storm_cli::interrupt::install() {
        eprintln!("storm client: {e}");
        return Exit::Io;
    }
    let input = input::spawn(plan.input, plan.max_message);
    let outcome = R::block_on(async { Ok(go::<R>(&mut Run::new(&plan)?, &plan, &input).await) });
    outcome.unwrap_or_else(|e: io::Error| {
        eprintln!("storm client: {e}");
        Exit::Usage
    })
}

/// Connects, pumps and reconnects until the run is over.
async fn go<R: AsyncRuntime>(
    run: &mut Run,
    plan: &Plan,
    input: &Receiver<io::Result<Message>>,
) -> Exit {
    loop {
        let Some((index, client, events)) = connect::<R>(run, plan).await else {
            return run.no_connection();
        };
        let end = pump(run, &client, &events, input).await;
        let failed = end.is_err();
        if let Some(exit) = run.ended(plan, index, end) {
            if failed {
                client.close();
            }
            return exit;
        }
    }
}

/// Connects to the endpoint the strategy picks, waiting out backoff
/// delays; `None` when there is nothing left to try, or on Ctrl-C
/// (`done` set).
async fn connect<R: AsyncRuntime>(
    run: &mut Run,
    plan: &Plan,
) -> Option<(usize, Client, Receiver<Event>)> {
    loop {
        let index = match run.next_endpoint(plan, std::time::Instant::now()) {
            Next::Connect(index) => index,
            Next::GiveUp => return None,
            Next::WaitUntil(at) => {
                if interrupted(R::sleep_until(at)).await {
                    run.done = true;
                    return None;
                }
                continue;
            }
        };
        let (tx, events) = smol::channel::bounded(EVENT_QUEUE);
        match interruptible(connect_to::<R>(plan, index, Forward(tx))).await {
            None => {
                run.done = true;
                return None;
            }
            Some(Ok(client)) => {
                run.connected(plan, index);
                return Some((index, client, events));
            }
            Some(Err(e)) => {
                if !run.connect_failed(plan, index, &e) {
                    return None;
                }
            }
        }
    }
}

/// A send in progress.
type Sending<'a> = Pin<Box<dyn Future<Output = Result<(), ClientError>> + 'a>>;

/// Runs one connection: stdin's messages out, received ones to stdout,
/// until it closes.
async fn pump(
    run: &mut Run,
    client: &Client,
    events: &Receiver<Event>,
    input: &Receiver<io::Result<Message>>,
) -> io::Result<End> {
    let mut state = Pump::default();
    let mut sending: Option<Sending<'_>> = None;
    loop {
        let step = {
            let want = run.wants(&state);
            let interrupt = run.wants_interrupt();
            let event = async { Step::Event(events.recv().await.ok()) };
            let send_or_read = async {
                match (want, &mut sending) {
                    (Want::Sent, Some(send)) => Step::Sent(send.await),
                    (Want::Unsent, _) => Step::Unsent,
                    (Want::Input, _) => Step::Input(input.recv().await.ok()),
                    _ => pending().await,
                }
            };
            let interrupt = async {
                if !interrupt {
                    pending::<()>().await;
                }
                storm_cli::interrupt::ctrl_c().await;
                Step::Interrupt
            };
            or(event, or(send_or_read, interrupt)).await
        };
        match run.step(&mut state, step)? {
            Action::Wait => {}
            Action::Send(message) => sending = Some(Box::pin(client.send(message))),
            Action::Close => client.close(),
            Action::End(end) => return Ok(end),
        }
        if state.sending.is_none() {
            sending = None;
        }
    }
}

/// Connects to the endpoint at `index` without the library's own
/// reconnect (the loop does it, over every endpoint).
async fn connect_to<R: AsyncRuntime>(
    plan: &Plan,
    index: usize,
    handler: Forward,
) -> Result<Client, ClientError> {
    let (address, options) = plan.connection(index);
    match &plan.transport {
        Transport::Ws(ws) => WsClient::<R>::connect(address, options, ws.clone(), handler).await,
        Transport::Tcp(framing) => {
            TcpClient::<R>::connect(address, options, framing.clone(), handler).await
        }
    }
}

/// `work`'s output, or `None` on Ctrl-C.
async fn interruptible<T>(work: impl Future<Output = T>) -> Option<T> {
    or(async { Some(work.await) }, async {
        storm_cli::interrupt::ctrl_c().await;
        None
    })
    .await
}

/// Waits for `wait`; whether Ctrl-C cut it short.
async fn interrupted(wait: impl Future<Output = ()>) -> bool {
    interruptible(wait).await.is_none()
}
