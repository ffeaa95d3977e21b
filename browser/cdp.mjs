// Headless Chromium driven over the DevTools protocol on
// --remote-debugging-pipe (fds 3 and 4, NUL-separated JSON): no npm package
// and no debugging port. Shared by drive.mjs and drive_chat.mjs.

import { spawn } from "node:child_process";

/// Starts Chromium with a fresh profile in `profileDir` and returns:
/// `browser` (the child process), `send(method, params, sessionId)` (a
/// promise of the result), `listeners` (functions called with every event),
/// `log()` (Chromium's own stdout/stderr so far) and `close()` (asks the
/// browser to exit).
export function launchChromium(chromium, profileDir) {
    const browser = spawn(chromium, [
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
        "--remote-debugging-pipe",
        `--user-data-dir=${profileDir}`,
        "about:blank",
    ], { stdio: ["ignore", "pipe", "pipe", "pipe", "pipe"] });

    let browserLog = "";
    browser.stdout.on("data", (d) => { browserLog += d; });
    browser.stderr.on("data", (d) => { browserLog += d; });
    const toBrowser = browser.stdio[3];
    const fromBrowser = browser.stdio[4];

    let nextId = 1;
    const pending = new Map();
    const listeners = [];
    let inbuf = Buffer.alloc(0);

    fromBrowser.on("data", (chunk) => {
        inbuf = Buffer.concat([inbuf, chunk]);
        let nul;
        while ((nul = inbuf.indexOf(0)) >= 0) {
            const msg = JSON.parse(inbuf.subarray(0, nul).toString("utf8"));
            inbuf = inbuf.subarray(nul + 1);
            if (msg.id !== undefined && pending.has(msg.id)) {
                const { resolve, reject, method } = pending.get(msg.id);
                pending.delete(msg.id);
                if (msg.error) reject(new Error(`${method}: ${JSON.stringify(msg.error)}`));
                else resolve(msg.result);
            } else if (msg.method) {
                for (const l of listeners) l(msg);
            }
        }
    });

    function send(method, params = {}, sessionId) {
        const id = nextId++;
        const msg = { id, method, params };
        if (sessionId) msg.sessionId = sessionId;
        return new Promise((resolve, reject) => {
            pending.set(id, { resolve, reject, method });
            toBrowser.write(JSON.stringify(msg) + "\0");
        });
    }

    function close() {
        try { toBrowser.write(JSON.stringify({ id: nextId++, method: "Browser.close", params: {} }) + "\0"); } catch {}
    }

    return { browser, send, listeners, log: () => browserLog, close };
}
