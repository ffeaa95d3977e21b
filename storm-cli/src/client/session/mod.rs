//! The generic clients' connections: pick an endpoint, connect, pump
//! stdin's messages out and received ones to stdout, and on a drop
//! reconnect or end with the exit code that says why.
//!
//! Every decision is here, in [`Run`]: which endpoint next
//! ([`Run::next_endpoint`]), what a failed attempt means
//! ([`Run::connect_failed`]), what each thing that happens during a
//! connection leads to ([`Run::step`], [`Run::wants`]) and what a
//! connection's end means ([`Run::ended`]). [`on_async`] (tokio, smol)
//! and [`on_std`] (blocking threads) only wait for those things and do
//! what the decisions name.

pub(super) mod on_async;
pub(super) mod on_std;

use std::io::{self, Write};
use std::time::Instant;

use storm_host::link::CloseReason;
use storm_host::session::ClientError;
use storm_proto::Message;
use storm_proto::reconnect::{BackoffStep, EndpointSet};

use super::{Exit, Plan, input};

/// Events a connection holds ahead of the loop that prints them; a full
/// queue holds the connection's reading back.
const EVENT_QUEUE: usize = 8;

/// What a connection's handler hands to the loop, in order.
enum Event {
    Message(Message),
    /// The last event of a connection.
    Closed(CloseReason),
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
    /// Failed attempts since the last connection (without `--reconnect`
    /// each endpoint is tried once).
    failures: usize,
}

/// How one connection ended.
enum End {
    /// Closed after stdin ended (or Ctrl-C).
    Done,
    /// Dropped for this reason while stdin was still open.
    Dropped(CloseReason),
}

/// Where the next connection goes.
enum Next {
    /// Connect to the endpoint at this index.
    Connect(usize),
    /// Every endpoint is backing off: wait until then, and ask again.
    WaitUntil(Instant),
    /// Nothing left to try.
    GiveUp,
}

/// One connection's sending side, as the loop sees it.
#[derive(Default)]
struct Pump {
    /// The message being sent, kept until the connection took it, so a
    /// drop in between leaves it for the next connection.
    sending: Option<Message>,
    /// The connection refused a send: it is going away; read no more.
    broken: bool,
}

/// What the loop waits for besides the connection's events and Ctrl-C.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// The send in progress to finish.
    Sent,
    /// Nothing: a message a previous connection did not take is waiting
    /// (its [`Step::Unsent`] is due at once).
    Unsent,
    /// stdin's next message.
    Input,
    /// Nothing more (stdin is done, or the connection is going away).
    Nothing,
}

/// What happened, for [`Run::step`].
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

/// What the loop does after a step.
enum Action {
    /// Wait for the next step.
    Wait,
    /// Start sending this message on the connection.
    Send(Message),
    /// Close the connection (gracefully), and wait on.
    Close,
    /// The connection is over.
    End(End),
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
            failures: 0,
        })
    }

    /// The exit code when no connection is made any more (nothing left to
    /// try, or Ctrl-C).
    fn no_connection(&self) -> Exit {
        if self.done {
            Exit::Done
        } else {
            Exit::ConnectFailed
        }
    }

    /// Where the next attempt goes, at `now`.
    fn next_endpoint(&mut self, plan: &Plan, now: Instant) -> Next {
        if let Some(index) = pick(&mut self.set, plan.failover, now) {
            return Next::Connect(index);
        }
        // Without --reconnect, nothing is tried twice.
        if plan.reconnect.is_none() {
            return Next::GiveUp;
        }
        match self.set.poll_timeout() {
            Some(at) => Next::WaitUntil(at),
            None => Next::GiveUp,
        }
    }

    /// The connection to the endpoint at `index` is up.
    fn connected(&mut self, plan: &Plan, index: usize) {
        let _ = self.set.mark_up(index, Instant::now());
        self.failures = 0;
        eprintln!("storm client: connected to {}", plan.targets[index].label);
    }

    /// An attempt on the endpoint at `index` failed with `e`, said on
    /// stderr; `false` when there is nothing more to try.
    fn connect_failed(&mut self, plan: &Plan, index: usize, e: &ClientError) -> bool {
        let label = &plan.targets[index].label;
        self.failures += 1;
        let step = self.set.mark_down(index, Instant::now());
        let next = match (&plan.reconnect, step) {
            (None, _) => {
                eprintln!("storm client: {label}: {e}");
                return self.failures < plan.targets.len();
            }
            (Some(_), Ok(BackoffStep::Retry { attempt, delay })) => {
                format!("; attempt {attempt} in {delay:.1?}")
            }
            (Some(_), _) if self.set.is_exhausted() => {
                eprintln!("storm client: {label}: {e}; giving up");
                return false;
            }
            (Some(_), _) => "; no more attempts".to_owned(),
        };
        eprintln!("storm client: {label}: {e}{next}");
        true
    }

    /// The connection to the endpoint at `index` ended: the exit code,
    /// or `None` to reconnect. `Err`: writing stdout failed (the caller
    /// closes the connection).
    fn ended(&mut self, plan: &Plan, index: usize, end: io::Result<End>) -> Option<Exit> {
        let label = &plan.targets[index].label;
        match end {
            Ok(End::Done) if self.input_failed => Some(Exit::Io),
            Ok(End::Done) => Some(Exit::Done),
            Err(e) => {
                eprintln!("storm client: stdout: {e}");
                Some(Exit::Io)
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
                    return Some(exit);
                }
                eprintln!("storm client: disconnected from {label}: {reason}; reconnecting");
                let _ = self.set.mark_down(index, Instant::now());
                None
            }
        }
    }

    /// What the loop waits for now, besides events and Ctrl-C.
    fn wants(&self, pump: &Pump) -> Want {
        if pump.sending.is_some() {
            Want::Sent
        } else if pump.broken {
            Want::Nothing
        } else if self.unsent.is_some() {
            Want::Unsent
        } else if !self.done {
            Want::Input
        } else {
            Want::Nothing
        }
    }

    /// Whether Ctrl-C is still to be waited for.
    fn wants_interrupt(&self) -> bool {
        !self.done
    }

    /// What `step` leads to on the connection `pump` describes. `Err`:
    /// writing stdout failed.
    fn step(&mut self, pump: &mut Pump, step: Step) -> io::Result<Action> {
        Ok(match step {
            Step::Event(Some(Event::Message(message))) => {
                self.out.write(&message)?;
                Action::Wait
            }
            Step::Event(Some(Event::Closed(reason))) => {
                if let Some(message) = pump.sending.take() {
                    self.unsent = Some(message);
                }
                Action::End(if self.done {
                    End::Done
                } else {
                    End::Dropped(reason)
                })
            }
            // The handler is gone without a last event: the connection
            // ended.
            Step::Event(None) => Action::End(if self.done {
                End::Done
            } else {
                End::Dropped(CloseReason::Eof)
            }),
            Step::Sent(Ok(())) => {
                pump.sending = None;
                Action::Wait
            }
            Step::Sent(Err(_)) => {
                self.unsent = pump.sending.take();
                pump.broken = true;
                Action::Wait
            }
            Step::Unsent => match self.unsent.take() {
                Some(message) => {
                    pump.sending = Some(message.clone());
                    Action::Send(message)
                }
                None => Action::Wait,
            },
            Step::Input(Some(Ok(message))) => {
                pump.sending = Some(message.clone());
                Action::Send(message)
            }
            Step::Input(Some(Err(e))) => {
                eprintln!("storm client: stdin: {e}");
                self.input_failed = true;
                self.done = true;
                Action::Close
            }
            Step::Input(None) | Step::Interrupt => {
                self.done = true;
                Action::Close
            }
        })
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
