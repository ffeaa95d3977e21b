//! `storm chat --token` in a real browser: headless Chromium, driven over
//! its DevTools protocol through Storm's own blocking WebSocket client.
//!
//! On every runtime, against a chat server with a token:
//!
//! - the chat page served with the token connects by itself, and a
//!   WebSocket it opens with the token connects too;
//! - a WebSocket it opens with a wrong token is refused (401), and the
//!   server says so (`refused …: no valid token`);
//! - the page itself without the token is not served (401);
//! - a page of another real `http://` origin (a second `storm chat`'s page
//!   on another loopback port) opening a WebSocket with the right token is
//!   refused (403), and the server names that origin
//!   (`refused …: origin http://127.0.0.1:PORT not allowed`).
//!
//! Skipped, with a `SKIPPED:` line, only when there is no Chromium
//! (`CHROMIUM`, default `/usr/bin/chromium`). Every wait is bounded: the
//! page resolves each check within [`PAGE_WAIT`], and every read of the
//! DevTools socket within [`WAIT`], of the servers' output within
//! [`child::WAIT`].

use std::collections::VecDeque;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use storm_proto::ws::Event;
use storm_std::ws;
use storm_tests::process::lines;

mod child;
use child::Storm;

/// The most an answer from the browser may take (Chromium's start
/// included).
const WAIT: Duration = Duration::from_secs(30);
/// How long the page waits for a WebSocket to open or be refused, or for
/// a line in its log, before it gives its answer.
const PAGE_WAIT: Duration = Duration::from_secs(10);
/// The token of the chat under test.
const TOKEN: &str = "browser-test-token";

/// A running `storm chat`, killed on drop.
struct Chat {
    storm: Storm,
    /// `127.0.0.1:PORT` of its WebSocket listener.
    ws: String,
    /// `http://127.0.0.1:PORT` of its page.
    page: String,
}

impl Chat {
    /// `storm chat --addr 127.0.0.1:0 --tick-ms 0 ARGS`, once it printed
    /// both addresses.
    fn start(args: &[&str]) -> Self {
        let (storm, ws) =
            Storm::serve("chat", "127.0.0.1:0", &[&["--tick-ms", "0"], args].concat());
        let page = storm.stdout_line("page on http://");
        let page = page
            .rsplit("page on ")
            .next()
            .expect("address")
            .trim_end_matches('/')
            .to_owned();
        Self { storm, ws, page }
    }

    /// The next line it prints containing `needle` (earlier ones are
    /// skipped), within [`child::WAIT`].
    fn line(&self, needle: &str) -> String {
        self.storm.stdout_line(needle)
    }
}

/// Headless Chromium with a fresh profile and a DevTools port on
/// loopback, killed (by its id) and its profile removed on drop.
struct Chromium {
    child: Child,
    profile: PathBuf,
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Chromium {
    /// Starts `path`; the browser and the URL of its DevTools socket.
    fn start(path: &str) -> (Self, String) {
        let profile =
            std::env::temp_dir().join(format!("storm-chat-browser-{}", std::process::id()));
        let mut child = Command::new(path)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-default-apps",
                "--mute-audio",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{path} does not start: {e}"));
        let stderr = lines(child.stderr.take().expect("stderr"));
        let browser = Self { child, profile };
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match stderr.recv_timeout(left) {
                Ok(line) => match line.split_once("DevTools listening on ") {
                    Some((_, url)) => return (browser, url.trim().to_owned()),
                    None => seen.push(line),
                },
                Err(e) => panic!("Chromium gave no DevTools address ({e}); it said:\n{seen:#?}"),
            }
        }
    }
}

/// Chromium's DevTools protocol over one WebSocket: commands to the
/// browser or to a tab (a flat session), answers matched by id, events
/// kept until asked for.
struct DevTools {
    socket: ws::WebSocket<TcpStream>,
    next_id: u64,
    /// Events read while waiting for something else.
    events: VecDeque<Value>,
}

/// Events kept at most; older ones are dropped (nobody waits for them).
const MAX_EVENTS: usize = 1000;

impl DevTools {
    fn connect(url: &str) -> Self {
        let (socket, _) =
            ws::connect(url, &ws::ConnectOptions::default()).expect("connect to DevTools");
        socket
            .get_ref()
            .set_read_timeout(Some(WAIT))
            .expect("timeout");
        Self {
            socket,
            next_id: 0,
            events: VecDeque::new(),
        }
    }

    /// The next message from the browser, before `deadline`.
    fn read(&mut self, deadline: Instant, waiting_for: &str) -> Value {
        loop {
            assert!(
                Instant::now() < deadline,
                "no {waiting_for} from Chromium in time"
            );
            match self.socket.read() {
                Ok(Event::Text(text)) => {
                    return serde_json::from_str(text.as_str()).expect("DevTools sends JSON");
                }
                Ok(Event::Close(close)) => {
                    panic!("DevTools closed ({close:?}) before {waiting_for}")
                }
                Ok(_) => {}
                Err(e) => panic!("DevTools, waiting for {waiting_for}: {e}"),
            }
        }
    }

    /// Sends `method` with `params`, to the tab `session` or else to the
    /// browser, and returns its result.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            command["sessionId"] = json!(session);
        }
        self.socket
            .send_text(&command.to_string())
            .expect("send to DevTools");
        let deadline = Instant::now() + WAIT;
        loop {
            let message = self.read(deadline, method);
            if message["id"] == json!(id) {
                assert!(message.get("error").is_none(), "{method}: {message}");
                return message["result"].clone();
            }
            if self.events.len() == MAX_EVENTS {
                self.events.pop_front();
            }
            self.events.push_back(message);
        }
    }

    /// Waits for an event of the tab `session` that `wanted` picks.
    fn event(&mut self, session: &str, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let wanted = |m: &Value| m["sessionId"] == json!(session) && wanted(m);
        if let Some(at) = self.events.iter().position(wanted) {
            return self.events.remove(at).expect("found");
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let message = self.read(deadline, what);
            if wanted(&message) {
                return message;
            }
        }
    }

    /// Opens a tab on `url` and waits until that document has loaded (its
    /// own load, not the blank page's the tab starts with); the tab's
    /// session.
    fn open(&mut self, url: &str) -> String {
        let target = self.call(None, "Target.createTarget", json!({ "url": "about:blank" }));
        let attached = self.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        );
        let session = attached["sessionId"]
            .as_str()
            .expect("a session")
            .to_owned();
        self.call(Some(&session), "Page.enable", json!({}));
        self.call(
            Some(&session),
            "Page.setLifecycleEventsEnabled",
            json!({ "enabled": true }),
        );
        let navigated = self.call(Some(&session), "Page.navigate", json!({ "url": url }));
        assert!(
            navigated.get("errorText").is_none(),
            "navigating to {url}: {navigated}"
        );
        let loader = navigated["loaderId"].clone();
        self.event(&session, "the page's load", |m| {
            m["method"] == json!("Page.lifecycleEvent")
                && m["params"]["name"] == json!("load")
                && m["params"]["loaderId"] == loader
        });
        session
    }

    /// Evaluates `expression` in the tab (awaiting a promise): its value.
    fn eval(&mut self, session: &str, expression: &str) -> Value {
        let result = self.call(
            Some(session),
            "Runtime.evaluate",
            json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
        );
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }
}

/// In the page: opens a WebSocket to `url` and resolves to `"open"` once it
/// opens (then closes it), to `"refused CODE"` if it closes first, or to
/// `"no answer"` after [`PAGE_WAIT`].
fn try_websocket(url: &str) -> String {
    format!(
        "new Promise((resolve) => {{
            const ws = new WebSocket({url});
            ws.onopen = () => {{ ws.close(); resolve('open'); }};
            ws.onclose = (e) => resolve(`refused ${{e.code}}`);
            setTimeout(() => resolve('no answer'), {ms});
        }})",
        url = json!(url),
        ms = PAGE_WAIT.as_millis()
    )
}

/// In the chat page: resolves to `true` once its log shows `needle`, or to
/// `false` after [`PAGE_WAIT`]; it watches the log for changes.
fn log_shows(needle: &str) -> String {
    format!(
        "new Promise((resolve) => {{
            const log = document.getElementById('log');
            const seen = () => log.textContent.includes({needle});
            if (seen()) return resolve(true);
            const watch = new MutationObserver(() => {{
                if (seen()) {{ watch.disconnect(); resolve(true); }}
            }});
            watch.observe(log, {{ childList: true, subtree: true, characterData: true }});
            setTimeout(() => {{ watch.disconnect(); resolve(seen()); }}, {ms});
        }})",
        needle = json!(needle),
        ms = PAGE_WAIT.as_millis()
    )
}

#[test]
fn a_browser_page_needs_the_token_and_the_chat_s_own_origin() {
    let path = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    if !std::path::Path::new(&path).exists() {
        println!("SKIPPED: no Chromium at {path} (install chromium, or set CHROMIUM to it)");
        return;
    }
    let (_browser, devtools) = Chromium::start(&path);
    let mut browser = DevTools::connect(&devtools);
    // Another site: a second chat's page, on its own loopback port.
    let elsewhere = Chat::start(&[]);
    let stranger = browser.open(&format!("{}/", elsewhere.page));
    for runtime in ["tokio", "smol", "std"] {
        let chat = Chat::start(&["--runtime", runtime, "--token", TOKEN]);
        let ws = format!("ws://{}/", chat.ws);
        // The page, opened with the token, connects by itself…
        let page = browser.open(&format!("{}/?token={TOKEN}", chat.page));
        assert_eq!(
            browser.eval(&page, &log_shows("connected as guest-")),
            json!(true),
            "{runtime}: the page with the token connects"
        );
        // …and so does a WebSocket it opens with the token; one with a
        // wrong token is refused, and the server says why.
        let with = |token: &str| try_websocket(&format!("{ws}?token={token}"));
        assert_eq!(
            browser.eval(&page, &with(TOKEN)),
            json!("open"),
            "{runtime}"
        );
        let wrong = browser.eval(&page, &with("not-the-token"));
        assert!(
            wrong.as_str().is_some_and(|s| s.starts_with("refused")),
            "{runtime}: a wrong token: {wrong}"
        );
        chat.line("no valid token");
        let bare = browser.eval(
            &page,
            &format!("fetch({}).then((r) => r.status)", json!(chat.page)),
        );
        assert_eq!(bare, json!(401), "{runtime}: the page without the token");
        // The other site's page, holding the right token: Chromium sends
        // its Origin, and the server refuses it by name.
        let cross = browser.eval(&stranger, &with(TOKEN));
        assert!(
            cross.as_str().is_some_and(|s| s.starts_with("refused")),
            "{runtime}: another origin: {cross}"
        );
        chat.line(&format!("origin {} not allowed", elsewhere.page));
    }
}
