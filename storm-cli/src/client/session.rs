//! The generic clients' connections: pick an endpoint, connect, pump
//! stdin's messages out and received ones to stdout, and on a drop
//! reconnect or end with the exit code that says why.

use std::future::{Future, pending};
use std::io::{self, Write};
use std::pin::Pin;
use std::time::Instant;

use smol::channel::{Receiver, Sender};
use smol::future::or;
use storm_async::{Client, ClientError, Handler, Session, TcpClient, WsClient};
use storm_host::link::CloseReason;
use storm_proto::Message;
use storm_proto::reconnect::{BackoffStep, EndpointSet};
use storm_services::host::AsyncRuntime;

use super::{Exit, Plan, Transport, input};

/// Events a connection holds ahead of the loop that prints them; a full
/// queue holds the connection's reading back.
const EVENT_QUEUE: usize = 8;

/// What a connection's handler hands to the loop, in order.
enum Event {
    Message(Message),
    /// The last event of a connection.
    Closed(CloseReason),
}

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
pub(super) fn run<R: AsyncRuntime>(plan: Plan) -> Exit {
    if let Err(e) = storm_cli::interrupt::install() {
        eprintln!("storm client: {e}");
        return Exit::Io;
    }
    let input = input::spawn(plan.input, plan.max_message);
    let outcome = R::block_on(async { Ok(Run::new(&plan)?.go::<R>(&plan, &input).await) });
    outcome.unwrap_or_else(|e| {
        eprintln!("storm client: {e}");
        Exit::Usage
    })
}

/// The state that outlives one connection.
struct Run {
    /// The endpoints and their backoff.
    set: EndpointSet<usize>,
    /// A message taken from stdin that no connection took yet.
    unsent: Option<Message>,
    /// stdin ended, or Ctrl-C: close, and be done once closed.
    done: bool,
    /// Reading stdin failed: exit [`Exit::Io`] once closed.
    input_failed: bool,
    /// Output of received messages.
    out: Output,
}

/// How one connection ended.
enum End {
    /// Closed after stdin ended (or Ctrl-C).
    Done,
    /// Dropped for this reason while stdin was still open.
    Dropped(CloseReason),
}

impl Run {
    fn new(plan: &Plan) -> io::Result<Self> {
        // Without --reconnect the set still orders the endpoints; each is
        // tried once.
        let backoff = plan.reconnect.clone().unwrap_or_default();
        let set = EndpointSet::new(0..plan.targets.len(), backoff, rand::random())
            .map_err(io::Error::other)?;
        Ok(Self {
            set,
            unsent: None,
            done: false,
            input_failed: false,
            out: Output {
                raw: plan.input == input::Mode::Raw,
            },
        })
    }

    async fn go<R: AsyncRuntime>(
        &mut self,
        plan: &Plan,
        input: &Receiver<io::Result<Message>>,
    ) -> Exit {
        loop {
            let Some((index, client, events)) = self.connect::<R>(plan).await else {
                return if self.done {
                    Exit::Done
                } else {
                    Exit::ConnectFailed
                };
            };
            let label = &plan.targets[index].label;
            eprintln!("storm client: connected to {label}");
            let end = self.pump(&client, &events, input).await;
            match end {
                Ok(End::Done) if self.input_failed => return Exit::Io,
                Ok(End::Done) => return Exit::Done,
                Err(e) => {
                    eprintln!("storm client: stdout: {e}");
                    client.close();
                    return Exit::Io;
                }
                Ok(End::Dropped(reason)) => {
                    let exit = if reason.is_normal()
                        || matches!(reason, CloseReason::PeerDead | CloseReason::IdleTimeout)
                    {
                        Exit::PeerClosed
                    } else {
                        Exit::ProtocolError
                    };
                    if plan.reconnect.is_none() {
                        eprintln!("storm client: disconnected from {label}: {reason}");
                        return exit;
                    }
                    eprintln!("storm client: disconnected from {label}: {reason}; reconnecting");
                    let _ = self.set.mark_down(index, Instant::now());
                }
            }
        }
    }

    /// Connects to the endpoint the strategy picks, waiting out backoff
    /// delays; `None` when there is nothing left to try, or on Ctrl-C
    /// (`done` set).
    async fn connect<R: AsyncRuntime>(
        &mut self,
        plan: &Plan,
    ) -> Option<(usize, Client, Receiver<Event>)> {
        let mut failures = 0;
        loop {
            let now = Instant::now();
            let Some(index) = pick(&mut self.set, plan.failover, now) else {
                // Without --reconnect, nothing is tried twice.
                plan.reconnect.as_ref()?;
                // Every endpoint is backing off: wait for the first.
                let at = self.set.poll_timeout()?;
                if interrupted(R::sleep_until(at)).await {
                    self.done = true;
                    return None;
                }
                continue;
            };
            let target = &plan.targets[index];
            let (tx, events) = smol::channel::bounded(EVENT_QUEUE);
            match interruptible(connect_to::<R>(plan, index, Forward(tx))).await {
                None => {
                    self.done = true;
                    return None;
                }
                Some(Ok(client)) => {
                    let _ = self.set.mark_up(index, Instant::now());
                    return Some((index, client, events));
                }
                Some(Err(e)) => {
                    failures += 1;
                    let step = self.set.mark_down(index, Instant::now());
                    let next = match (&plan.reconnect, step) {
                        (None, _) => {
                            eprintln!("storm client: {}: {e}", target.label);
                            if failures >= plan.targets.len() {
                                return None;
                            }
                            continue;
                        }
                        (Some(_), Ok(BackoffStep::Retry { attempt, delay })) => {
                            format!("; attempt {attempt} in {delay:.1?}")
                        }
                        (Some(_), _) if self.set.is_exhausted() => {
                            eprintln!("storm client: {}: {e}; giving up", target.label);
                            return None;
                        }
                        (Some(_), _) => "; no more attempts".to_owned(),
                    };
                    eprintln!("storm client: {}: {e}{next}", target.label);
                }
            }
        }
    }

    /// Runs one connection: stdin's messages out, received ones to stdout,
    /// until it closes.
    async fn pump(
        &mut self,
        client: &Client,
        events: &Receiver<Event>,
        input: &Receiver<io::Result<Message>>,
    ) -> io::Result<End> {
        // The message being sent, kept until the connection took it, so a
        // drop in between leaves it for the next connection.
        let mut sending: Option<(Message, Sending<'_>)> = None;
        // The connection refused a send: it is going away; read no more.
        let mut broken = false;
        loop {
            let step = {
                let event = async { Step::Event(events.recv().await.ok()) };
                let send_or_read = async {
                    match &mut sending {
                        Some((_, send)) => Step::Sent(send.await),
                        None if self.unsent.is_some() && !broken => Step::Unsent,
                        None if !self.done && !broken => Step::Input(input.recv().await.ok()),
                        None => pending().await,
                    }
                };
                let interrupt = async {
                    if self.done {
                        pending::<()>().await;
                    }
                    storm_cli::interrupt::ctrl_c().await;
                    Step::Interrupt
                };
                or(event, or(send_or_read, interrupt)).await
            };
            match step {
                Step::Event(Some(Event::Message(message))) => self.out.write(&message)?,
                Step::Event(Some(Event::Closed(reason))) => {
                    if let Some((message, _)) = sending.take() {
                        self.unsent = Some(message);
                    }
                    return Ok(if self.done {
                        End::Done
                    } else {
                        End::Dropped(reason)
                    });
                }
                // The handler is gone without a last event: the connection
                // ended.
                Step::Event(None) => {
                    return Ok(if self.done {
                        End::Done
                    } else {
                        End::Dropped(CloseReason::Eof)
                    });
                }
                Step::Sent(Ok(())) => sending = None,
                Step::Sent(Err(_)) => {
                    self.unsent = sending.take().map(|(message, _)| message);
                    broken = true;
                }
                Step::Unsent => {
                    if let Some(message) = self.unsent.take() {
                        sending = Some((message.clone(), Box::pin(client.send(message))));
                    }
                }
                Step::Input(Some(Ok(message))) => {
                    sending = Some((message.clone(), Box::pin(client.send(message))));
                }
                Step::Input(Some(Err(e))) => {
                    eprintln!("storm client: stdin: {e}");
                    self.input_failed = true;
                    self.done = true;
                    client.close();
                }
                Step::Input(None) | Step::Interrupt => {
                    self.done = true;
                    client.close();
                }
            }
        }
    }
}

/// The endpoint for the next connection: with failover the first one that
/// is up, else the next one in turn after the last pick; `None` while all
/// are backing off.
fn pick(set: &mut EndpointSet<usize>, failover: bool, now: Instant) -> Option<usize> {
    if failover {
        set.handle_timeout(now);
        (0..set.len()).find(|&index| set.is_available(index, now))
    } else {
        set.next(now).map(|(index, _)| index)
    }
}

/// A send in progress.
type Sending<'a> = Pin<Box<dyn Future<Output = Result<(), ClientError>> + 'a>>;

/// What woke [`Run::pump`].
enum Step {
    /// A connection event; `None` when its handler is gone.
    Event(Option<Event>),
    /// The send in progress finished.
    Sent(Result<(), ClientError>),
    /// A message a previous connection did not take is waiting.
    Unsent,
    /// stdin's next message; `None` at its end.
    Input(Option<io::Result<Message>>),
    /// Ctrl-C.
    Interrupt,
}

/// Connects to the endpoint at `index` without the library's own
/// reconnect (the loop does it, over every endpoint).
async fn connect_to<R: AsyncRuntime>(
    plan: &Plan,
    index: usize,
    handler: Forward,
) -> Result<Client, ClientError> {
    let target = &plan.targets[index];
    let mut options = plan.options.clone();
    options.tls = target.tls.then(|| plan.tls.clone());
    match &plan.transport {
        Transport::Ws(ws) => {
            WsClient::<R>::connect(&target.address, options, ws.clone(), handler).await
        }
        Transport::Tcp(framing) => {
            TcpClient::<R>::connect(&target.address, options, framing.clone(), handler).await
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

/// Where received messages go.
struct Output {
    /// Raw TCP: write the bytes alone, no newline after them.
    raw: bool,
}

impl Output {
    /// Writes one message: its bytes as they are (text and binary alike),
    /// then a newline unless raw.
    fn write(&mut self, message: &Message) -> io::Result<()> {
        let mut out = io::stdout().lock();
        out.write_all(message.as_bytes())?;
        if !self.raw {
            out.write_all(b"\n")?;
        }
        out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use storm_proto::reconnect::BackoffConfig;

    fn set() -> EndpointSet<usize> {
        let backoff = BackoffConfig::fixed(Duration::from_secs(1));
        EndpointSet::new(0..3, backoff, 7).unwrap()
    }

    #[test]
    fn failover_takes_the_first_endpoint_up_and_round_robin_the_next() {
        let now = Instant::now();
        let (mut failover, mut round_robin) = (set(), set());
        let picks = |set: &mut EndpointSet<usize>, failover| {
            (0..4).map(|_| pick(set, failover, now)).collect::<Vec<_>>()
        };
        assert_eq!(picks(&mut failover, true), [Some(0); 4]);
        assert_eq!(
            picks(&mut round_robin, false),
            [Some(0), Some(1), Some(2), Some(0)]
        );
        // The first one drops: failover moves to the second until the
        // first's retry time, then back.
        let _ = failover.mark_down(0, now);
        assert_eq!(pick(&mut failover, true, now), Some(1));
        let later = now + Duration::from_secs(1);
        assert_eq!(pick(&mut failover, true, later), Some(0));
        // All down: nothing until the first retry time.
        for index in 0..3 {
            let _ = round_robin.mark_down(index, now);
        }
        assert_eq!(pick(&mut round_robin, false, now), None);
        assert_eq!(round_robin.poll_timeout(), Some(later));
    }
}
