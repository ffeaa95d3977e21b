//! WebSocket chat with rooms. Everyone has a name and is in at most one
//! room (a server group); what they write goes to the others in their room.
//!
//! `cargo run -p storm-examples --example chat -- 127.0.0.1:9002 --runtime smol`
//!
//! The protocol: one WebSocket text message per command or line of chat.
//!
//! | client sends | effect |
//! |---|---|
//! | `/name NAME` | rename (1 to 32 characters, no spaces): `* OLD is now NAME` to your room, you included |
//! | `/join ROOM` | leave your room (`* NAME left OLD` to it), join ROOM: `* NAME joined ROOM` to ROOM, you included |
//! | `/leave` | `* NAME left ROOM` to your room, you included; you are then in no room |
//! | anything else | `[ROOM] NAME: TEXT` to everyone else in your room |
//!
//! A new connection is `guest-ID` in `lobby`: it gets `* welcome guest-ID,
//! you are in lobby`, the lobby gets `* guest-ID joined lobby`. A refused
//! command gets `! WHY`. A disconnect is `* NAME left ROOM` to the room.
//!
//! In a browser: open `browser/chat_example.html?ws=ws://127.0.0.1:9002` in
//! two tabs; `browser/chat_example.sh` does that in headless Chromium.

use std::collections::HashMap;
use std::io;
use std::sync::{Mutex, MutexGuard, PoisonError};

use clap::Parser;
use storm_examples::{AsyncRuntime, Runtime};
use storm_host::hub::{Hub, SessionId};
use storm_host::link::CloseReason;
use storm_host::options::{ServerOptions, WsOptions};
use storm_host::session::Session;
use storm_proto::Message;
use storm_smol::Smol;
use storm_tokio::Tokio;

const LOBBY: &str = "lobby";

/// The chat's rules, written once for every adapter: a session is a
/// [`Session`], the same type on every adapter (its id, its groups),
/// and a room is a group of the server's [`Hub`]. Only the replies to a
/// session itself go through the adapter (they wait, under the session's
/// slow-consumer policy), so the handlers below send them.
struct Chat {
    hub: Hub,
    names: Mutex<HashMap<SessionId, String>>,
}

impl Chat {
    fn new(hub: Hub) -> Self {
        Self {
            hub,
            names: Mutex::default(),
        }
    }

    fn names(&self) -> MutexGuard<'_, HashMap<SessionId, String>> {
        self.names.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `text` to the members of `room`, except `exclude`.
    fn tell(&self, room: &str, text: String, exclude: Option<SessionId>) {
        let _ = self
            .hub
            .broadcast_group(room, &Message::from(text), exclude);
    }

    /// A new session: named `guest-ID`, put in the lobby and announced
    /// there. Returns its welcome.
    fn connected(&self, session: &Session) -> String {
        let name = format!("guest-{}", u64::from(session.id()));
        self.names().insert(session.id(), name.clone());
        let _ = session.join(LOBBY);
        self.tell(
            LOBBY,
            format!("* {name} joined {LOBBY}"),
            Some(session.id()),
        );
        format!("* welcome {name}, you are in {LOBBY}")
    }

    /// Runs one message from `session`: a command, or chat for its room.
    /// `Err` is what to tell it instead.
    fn received(&self, session: &Session, message: &Message) -> Result<(), String> {
        let Message::Text(line) = message else {
            return Err("text messages only".to_owned());
        };
        let line = line.as_str();
        let name = self.names().get(&session.id()).cloned().unwrap_or_default();
        let room = session.groups().into_iter().next();
        let (command, arg) = line.split_once(' ').unwrap_or((line, ""));
        let arg = arg.trim();
        match command {
            "/name" if (1..=32).contains(&arg.chars().count()) && !arg.contains(' ') => {
                self.names().insert(session.id(), arg.to_owned());
                if let Some(room) = room {
                    self.tell(&room, format!("* {name} is now {arg}"), None);
                }
            }
            "/name" => return Err("a name is 1 to 32 characters, no spaces".to_owned()),
            "/join" if room.as_deref() == Some(arg) => {}
            "/join" => {
                session.join(arg).map_err(|e| e.to_string())?;
                if let Some(old) = room {
                    self.tell(&old, format!("* {name} left {old}"), None);
                    session.leave(&old);
                }
                self.tell(arg, format!("* {name} joined {arg}"), None);
            }
            "/leave" => {
                let room = room.ok_or("you are in no room")?;
                self.tell(&room, format!("* {name} left {room}"), None);
                session.leave(&room);
            }
            _ if command.starts_with('/') => return Err(format!("unknown command {command}")),
            _ => {
                let room = room.ok_or("you are in no room: /join one")?;
                self.tell(
                    &room,
                    format!("[{room}] {name}: {line}"),
                    Some(session.id()),
                );
            }
        }
        Ok(())
    }

    /// A session ended: forgotten, and its room told.
    fn disconnected(&self, session: &Session) {
        let name = self.names().remove(&session.id()).unwrap_or_default();
        if let Some(room) = session.groups().into_iter().next() {
            self.tell(&room, format!("* {name} left {room}"), Some(session.id()));
        }
    }
}

/// The chat on tokio and smol.
impl storm_async::Handler for Chat {
    async fn on_connect(&self, session: &storm_async::Session) {
        let welcome = self.connected(session);
        let _ = session.send_text(&welcome).await;
    }

    async fn on_message(&self, session: &storm_async::Session, message: Message) {
        if let Err(why) = self.received(session, &message) {
            let _ = session.send_text(&format!("! {why}")).await;
        }
    }

    async fn on_disconnect(&self, session: &storm_async::Session, _reason: &CloseReason) {
        self.disconnected(session);
    }
}

/// The chat on storm-std: the same calls, blocking.
impl storm_std::Handler for Chat {
    fn on_connect(&self, session: &storm_std::Session) {
        let welcome = self.connected(session);
        let _ = session.send_blocking(welcome);
    }

    fn on_message(&self, session: &storm_std::Session, message: Message) {
        if let Err(why) = self.received(session, &message) {
            let _ = session.send_blocking(format!("! {why}"));
        }
    }

    fn on_disconnect(&self, session: &storm_std::Session, _reason: &CloseReason) {
        self.disconnected(session);
    }
}

/// WebSocket chat with rooms.
#[derive(Parser)]
struct Args {
    /// Where to listen.
    #[arg(default_value = "127.0.0.1:9002")]
    addr: String,
    /// The adapter to run on.
    #[arg(long, value_enum, default_value_t = Runtime::Tokio)]
    runtime: Runtime,
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let options = ServerOptions::default().with_addr(args.addr);
    match args.runtime {
        Runtime::Tokio => Tokio::block_on(serve::<Tokio>(options)),
        Runtime::Smol => Smol::block_on(serve::<Smol>(options)),
        Runtime::Std => serve_blocking(options),
    }
}

/// Serves on tokio or smol until the server fails.
async fn serve<R: AsyncRuntime>(options: ServerOptions) -> io::Result<()> {
    let server = storm_async::WsServer::<R>::bind(options, WsOptions::default()).await?;
    println!("chat listening on ws://{}", server.local_addr());
    let chat = Chat::new(server.handle().hub().clone());
    server.serve(chat).await
}

/// Serves on storm-std, on this thread, until the server fails.
fn serve_blocking(options: ServerOptions) -> io::Result<()> {
    let server = storm_std::WsServer::bind(options, WsOptions::default())?;
    println!("chat listening on ws://{}", server.local_addr());
    let chat = Chat::new(server.handle().hub().clone());
    server.serve(chat)
}
