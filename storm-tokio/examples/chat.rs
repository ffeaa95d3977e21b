//! WebSocket chat with rooms, on tokio. Everyone has a name and is in at
//! most one room (a server group); what they write goes to the others in
//! their room.
//!
//! `cargo run -p storm-tokio --example chat -- 127.0.0.1:9002`
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
use std::sync::{Mutex, MutexGuard, PoisonError};

use storm_host::hub::SessionId;
use storm_host::link::CloseReason;
use storm_host::options::{ServerOptions, WsOptions};
use storm_proto::Message;
use storm_tokio::{Handler, ServerHandle, Session, WsServer};

const LOBBY: &str = "lobby";

struct Chat {
    server: ServerHandle,
    names: Mutex<HashMap<SessionId, String>>,
}

impl Chat {
    fn names(&self) -> MutexGuard<'_, HashMap<SessionId, String>> {
        self.names.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `text` to the members of `room`, except `exclude`.
    fn tell(&self, room: &str, text: String, exclude: Option<SessionId>) {
        let _ = self.server.broadcast_group(room, text, exclude);
    }

    /// Runs one line from `session`: a command, or chat for its room.
    fn run(&self, session: &Session, line: &str) -> Result<(), String> {
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
}

impl Handler for Chat {
    async fn on_connect(&self, session: &Session) {
        let name = format!("guest-{}", u64::from(session.id()));
        self.names().insert(session.id(), name.clone());
        let _ = session.join(LOBBY);
        let _ = session
            .send_text(&format!("* welcome {name}, you are in {LOBBY}"))
            .await;
        self.tell(
            LOBBY,
            format!("* {name} joined {LOBBY}"),
            Some(session.id()),
        );
    }

    async fn on_message(&self, session: &Session, message: Message) {
        let result = match &message {
            Message::Text(line) => self.run(session, line.as_str()),
            Message::Binary(_) => Err("text messages only".to_owned()),
        };
        if let Err(why) = result {
            let _ = session.send_text(&format!("! {why}")).await;
        }
    }

    async fn on_disconnect(&self, session: &Session, _reason: &CloseReason) {
        let name = self.names().remove(&session.id()).unwrap_or_default();
        if let Some(room) = session.groups().into_iter().next() {
            self.tell(&room, format!("* {name} left {room}"), Some(session.id()));
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9002".to_owned());
    let options = ServerOptions {
        addr,
        ..ServerOptions::default()
    };
    let server = WsServer::bind(options, WsOptions::default()).await?;
    println!("chat listening on ws://{}", server.local_addr());
    let chat = Chat {
        server: server.handle(),
        names: Mutex::default(),
    };
    server.serve(chat).await
}
