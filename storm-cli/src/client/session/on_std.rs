//! The generic clients on blocking threads (storm-std), waiting with
//! blocking calls for what [`Run`] decides.
//!
//! One thread (this one) runs the loop and blocks on one channel that
//! everything it waits for arrives on: the connection's events (its
//! handler, on the connection's reader thread), stdin's next message (a
//! thread that reads one whenever the loop asks), the end of a send (a
//! thread that sends, blocking under the send limit as the async send
//! waits) and Ctrl-C (a thread that waits for it). A TCP, TLS or
//! WebSocket connect blocks, within `--connect-timeout`; a Ctrl-C meanwhile
//! is seen once it returns (a second Ctrl-C exits at once).

use std::io;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::thread;
use std::time::Instant;

use storm_host::link::CloseReason;
use storm_proto::Message;
use storm_std::{Client, ClientError, Handler, Session, TcpClient, WsClient};

use super::{Action, EVENT_QUEUE, End, Event, Next, Pump, Run, Step, Want};
use crate::client::{Exit, Plan, Transport, input};

/// What wakes the loop.
enum Wake {
    /// A connection event, or Ctrl-C.
    Step(Step),
    /// stdin's next message, as asked for.
    Input(Option<io::Result<Message>>),
    /// The send with this number finished.
    Sent(u64, Result<(), ClientError>),
}

/// Forwards a connection's events to the loop.
struct Forward(SyncSender<Wake>);

impl Handler for Forward {
    fn on_message(&self, _session: &Session, message: Message) {
        // Blocking here holds the connection's reading back while stdout
        // is behind: bounded memory, nothing dropped.
        let _ = self
            .0
            .send(Wake::Step(Step::Event(Some(Event::Message(message)))));
    }

    fn on_disconnect(&self, _session: &Session, reason: &CloseReason) {
        let _ = self
            .0
            .send(Wake::Step(Step::Event(Some(Event::Closed(reason.clone())))));
    }
}

/// The loop's end of the threads it waits on.
struct Waiter {
    wakes: Receiver<Wake>,
    /// For each connection's handler.
    events: SyncSender<Wake>,
    /// Asks the stdin thread for one more message.
    want_input: SyncSender<()>,
    /// Asked, and not arrived yet.
    input_asked: bool,
    /// Arrived while the loop did not want it (the connection went away
    /// meanwhile): handed over when it next does.
    held_input: Option<Option<io::Result<Message>>>,
    /// Hands a message to the sending thread.
    send: SyncSender<(u64, Client, Message)>,
    /// The number of the last send handed over; an older one's end is
    /// stale (its connection went away).
    sent_id: u64,
}

/// Runs the client on blocking threads until it is done; its exit code.
pub(in crate::client) fn run(plan: Plan) -> Exit {
    if let Err(e) = storm_cli::interrupt::install() {
        eprintln!("storm client: {e}");
        return Exit::Io;
    }
    let mut run = match Run::new(&plan) {
        Ok(run) => run,
        Err(e) => {
            eprintln!("storm client: {e}");
            return Exit::Usage;
        }
    };
    let input = input::spawn(plan.input, plan.max_message);
    let (events, wakes) = mpsc::sync_channel(EVENT_QUEUE);
    let (want_input, input_wanted) = mpsc::sync_channel::<()>(1);
    let (send, to_send) = mpsc::sync_channel::<(u64, Client, Message)>(1);
    // The helper threads end with the process (the loop's exit ends it).
    let spawned = [
        spawn("storm-client-ctrl-c", {
            let wake = events.clone();
            move || {
                storm_cli::interrupt::wait();
                let _ = wake.send(Wake::Step(Step::Interrupt));
            }
        }),
        spawn("storm-client-stdin", {
            let wake = events.clone();
            move || {
                while input_wanted.recv().is_ok() {
                    if wake.send(Wake::Input(input.recv_blocking().ok())).is_err() {
                        return;
                    }
                }
            }
        }),
        spawn("storm-client-send", {
            let wake = events.clone();
            move || {
                for (id, client, message) in to_send {
                    if wake.send(Wake::Sent(id, client.send(message))).is_err() {
                        return;
                    }
                }
            }
        }),
    ];
    if let Some(Err(e)) = spawned.into_iter().find(Result::is_err) {
        eprintln!("storm client: {e}");
        return Exit::Io;
    }
    let mut waiter = Waiter {
        wakes,
        events,
        want_input,
        input_asked: false,
        held_input: None,
        send,
        sent_id: 0,
    };
    go(&mut run, &plan, &mut waiter)
}

fn spawn(name: &str, work: impl FnOnce() + Send + 'static) -> io::Result<()> {
    thread::Builder::new()
        .name(name.to_owned())
        .spawn(work)
        .map(drop)
}

/// Connects, pumps and reconnects until the run is over.
fn go(run: &mut Run, plan: &Plan, waiter: &mut Waiter) -> Exit {
    loop {
        let Some((index, client)) = connect(run, plan, waiter) else {
            return run.no_connection();
        };
        let end = pump(run, &client, waiter);
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
fn connect(run: &mut Run, plan: &Plan, waiter: &mut Waiter) -> Option<(usize, Client)> {
    loop {
        let index = match run.next_endpoint(plan, Instant::now()) {
            Next::Connect(index) => index,
            Next::GiveUp => return None,
            Next::WaitUntil(at) => {
                if waiter.interrupted_before(at) {
                    run.done = true;
                    return None;
                }
                continue;
            }
        };
        match connect_to(plan, index, Forward(waiter.events.clone())) {
            Ok(client) => {
                run.connected(plan, index);
                return Some((index, client));
            }
            Err(e) => {
                if !run.connect_failed(plan, index, &e) {
                    return None;
                }
            }
        }
    }
}

/// Runs one connection: stdin's messages out, received ones to stdout,
/// until it closes.
fn pump(run: &mut Run, client: &Client, waiter: &mut Waiter) -> io::Result<End> {
    let mut state = Pump::default();
    loop {
        let step = match run.wants(&state) {
            Want::Unsent => Step::Unsent,
            want => waiter.next(want, state.sending.is_some()),
        };
        match run.step(&mut state, step)? {
            Action::Wait => {}
            Action::Send(message) => waiter.start_send(client, message),
            Action::Close => client.close(),
            Action::End(end) => return Ok(end),
        }
    }
}

impl Waiter {
    /// Blocks for the next step; `want` says whether stdin's next message
    /// is wanted (asked for now if it is not on its way), `sending` whether
    /// a send is in progress.
    fn next(&mut self, want: Want, sending: bool) -> Step {
        if want == Want::Input {
            if let Some(item) = self.held_input.take() {
                return Step::Input(item);
            }
            if !self.input_asked {
                // The stdin thread is always there to take it.
                let _ = self.want_input.send(());
                self.input_asked = true;
            }
        }
        loop {
            // Every sender lives as long as this value: never disconnected.
            let Ok(wake) = self.wakes.recv() else {
                return Step::Event(None);
            };
            match wake {
                Wake::Step(step) => return step,
                Wake::Input(item) => {
                    self.input_asked = false;
                    if want == Want::Input {
                        return Step::Input(item);
                    }
                    self.held_input = Some(item);
                }
                Wake::Sent(id, result) if id == self.sent_id && sending => {
                    return Step::Sent(result);
                }
                // A send on a connection that went away.
                Wake::Sent(..) => {}
            }
        }
    }

    /// Hands `message` to the sending thread for `client`.
    fn start_send(&mut self, client: &Client, message: Message) {
        self.sent_id += 1;
        // The sending thread is always there to take it.
        let _ = self.send.send((self.sent_id, client.clone(), message));
    }

    /// Waits until `at` (outside a connection); whether Ctrl-C came first.
    /// stdin's message asked for before the connection went away is held
    /// for the next one.
    fn interrupted_before(&mut self, at: Instant) -> bool {
        loop {
            let left = at.saturating_duration_since(Instant::now());
            match self.wakes.recv_timeout(left) {
                Ok(Wake::Step(Step::Interrupt)) => return true,
                Ok(Wake::Input(item)) => {
                    self.input_asked = false;
                    self.held_input = Some(item);
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => return false,
                Err(RecvTimeoutError::Disconnected) => return true,
            }
        }
    }
}

/// Connects to the endpoint at `index` without the library's own
/// reconnect (the loop does it, over every endpoint).
fn connect_to(plan: &Plan, index: usize, handler: Forward) -> Result<Client, ClientError> {
    let (address, options) = plan.connection(index);
    match &plan.transport {
        Transport::Ws(ws) => WsClient::connect(address, options, ws.clone(), handler),
        Transport::Tcp(framing) => TcpClient::connect(address, options, framing.clone(), handler),
    }
}
