// Headless Chromium driven over the DevTools protocol on
// --remote-debugging-pipe (fds 3 and 4, NUL-separated JSON): no npm package
// and no debugging port. Shared by drive.mjs, drive_chat.mjs and
// drive_chat_example.mjs; the last two also share its driver helpers below.

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

/// The one way a driver ends: `finish(code, message)` prints `message` and,
/// on failure, `extra()` lines and Chromium's log; asks the browser to
/// close (killing it after 3 s) and exits with `code`. Only the first call
/// counts. Also fails the driver after `timeoutMs`, or when Chromium exits
/// early or cannot start. `cdp` is what `launchChromium` returned.
export function driverLifetime(cdp, chromium, timeoutMs, extra = () => []) {
    const { browser, log, close } = cdp;
    let finished = false;
    function finish(code, message) {
        if (finished) return;
        finished = true;
        clearTimeout(deadline);
        if (message) console.log(message);
        if (code !== 0) {
            for (const line of extra()) console.log(line);
            if (log().trim()) console.log(`--- chromium output (last 2000 chars) ---\n${log().slice(-2000).trimEnd()}`);
        }
        close();
        const killer = setTimeout(() => browser.kill("SIGKILL"), 3000);
        browser.once("exit", () => { clearTimeout(killer); process.exit(code); });
        if (browser.exitCode !== null || browser.signalCode !== null) process.exit(code);
    }
    const deadline = setTimeout(() => finish(1, `FAIL driver: not done within ${timeoutMs / 1000} s`), timeoutMs);
    browser.on("exit", (code, signal) => finish(1, `FAIL driver: chromium exited early (code ${code}, signal ${signal})`));
    browser.on("error", (e) => finish(1, `FAIL driver: cannot start ${chromium}: ${e.message}`));
    return finish;
}

/// Opens a tab on `url` and waits for its load event; returns a function
/// that evaluates a JS expression in the tab (awaiting promises) and
/// resolves to its value.
export async function openTab(cdp, url) {
    const { send, listeners } = cdp;
    const { targetId } = await send("Target.createTarget", { url: "about:blank" });
    const { sessionId } = await send("Target.attachToTarget", { targetId, flatten: true });
    await Promise.all(["Runtime.enable", "Page.enable"].map((m) => send(m, {}, sessionId)));
    const loaded = new Promise((resolve) => listeners.push((m) => {
        if (m.sessionId === sessionId && m.method === "Page.loadEventFired") resolve();
    }));
    const nav = await send("Page.navigate", { url }, sessionId);
    if (nav.errorText) throw new Error(`navigating to ${url}: ${nav.errorText}`);
    await loaded;
    return async (expression) => {
        const { result, exceptionDetails } = await send("Runtime.evaluate",
            { expression, awaitPromise: true, returnByValue: true }, sessionId);
        if (exceptionDetails) throw new Error(`${expression}: ${exceptionDetails.exception?.description || exceptionDetails.text}`);
        return result.value;
    };
}
