// Drives headless Chromium through the DevTools protocol over a pipe
// (--remote-debugging-pipe: the browser reads commands from fd 3 and writes
// replies to fd 4, NUL-separated JSON), so no npm package and no debugging
// port is needed. Loads test.html?port=PORT, waits for window.stormDone and
// prints the page's PASS/FAIL lines; on failure (or with VERBOSE=1) also the
// WebSocket handshakes Chromium saw.
//
// It also runs a byte-counting TCP relay on 127.0.0.1 in front of the server
// (passed to the page as ?wire=RELAY_PORT); the page sends 1 MiB of zeros and
// 1 MiB of repeated text through it, and the relay checks that fewer than
// WIRE_LIMIT bytes crossed in each direction, i.e. that permessage-deflate was
// really applied by both Chromium and Storm, not only negotiated.
//
// Exit status: 0 if every check passed, 1 otherwise, 2 on bad usage.
//
// usage: node drive.mjs CHROMIUM PAGE_FILE SERVER_PORT PROFILE_DIR [TIMEOUT_SECONDS] [VERBOSE]

import { launchChromium } from "./cdp.mjs";
import net from "node:net";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [chromium, pageFile, serverPort, profileDir, timeoutArg, verboseArg] = process.argv.slice(2);
if (!chromium || !pageFile || !serverPort || !profileDir) {
    console.error("usage: node drive.mjs CHROMIUM PAGE_FILE SERVER_PORT PROFILE_DIR [TIMEOUT_SECONDS] [VERBOSE]");
    process.exit(2);
}
const timeoutMs = Number(timeoutArg || 60) * 1000;
const verbose = verboseArg === "1";
const WIRE_LIMIT = 64 * 1024;

// The counting relay: every accepted connection is piped to the server.
const relayed = [];
const relay = net.createServer((client) => {
    const counts = { up: 0, down: 0 };
    relayed.push(counts);
    const upstream = net.connect(Number(serverPort), "127.0.0.1");
    client.on("data", (d) => { counts.up += d.length; });
    upstream.on("data", (d) => { counts.down += d.length; });
    client.pipe(upstream);
    upstream.pipe(client);
    client.on("error", () => upstream.destroy());
    upstream.on("error", () => client.destroy());
});
await new Promise((resolve) => relay.listen(0, "127.0.0.1", resolve));
const relayPort = relay.address().port;
const pageUrl = `${pathToFileURL(path.resolve(pageFile)).href}?port=${serverPort}&wire=${relayPort}`;

function checkWire(pageLines) {
    if (!pageLines.some((l) => l.startsWith("PASS compressible traffic through the counting relay"))) {
        console.log("FAIL deflate on the wire: the page's relay step did not pass");
        return false;
    }
    if (relayed.length !== 1) {
        console.log(`FAIL deflate on the wire: ${relayed.length} connections through the relay, want 1`);
        return false;
    }
    const { up, down } = relayed[0];
    const detail = `${up} bytes browser→storm, ${down} bytes storm→browser for 2 MiB of payload each way`;
    if (up < WIRE_LIMIT && down < WIRE_LIMIT) {
        console.log(`PASS deflate on the wire (${detail})`);
        return true;
    }
    console.log(`FAIL deflate on the wire: ${detail}, want both under ${WIRE_LIMIT}`);
    return false;
}

const { browser, send, listeners, log: browserLog, close: closeBrowser } = launchChromium(chromium, profileDir);

let finished = false;
function finish(code, message) {
    if (finished) return;
    finished = true;
    if (message) console.log(message);
    if (code !== 0 && browserLog().trim()) {
        console.log("--- chromium output (last 2000 chars) ---");
        console.log(browserLog().slice(-2000).trimEnd());
    }
    closeBrowser();
    const killer = setTimeout(() => browser.kill("SIGKILL"), 3000);
    relay.close();
    browser.once("exit", () => { clearTimeout(killer); process.exit(code); });
    if (browser.exitCode !== null || browser.signalCode !== null) process.exit(code);
}

let pageSession = null;
const deadline = setTimeout(async () => {
    // Show what the page got through before it stalled.
    if (pageSession) {
        const partial = await Promise.race([
            send("Runtime.evaluate", {
                expression: "document.getElementById('log').textContent",
                returnByValue: true,
            }, pageSession).then((r) => r.result?.value).catch(() => null),
            new Promise((resolve) => setTimeout(() => resolve(null), 2000)),
        ]);
        if (partial) process.stdout.write(partial);
    }
    reportHandshakes();
    finish(1, `FAIL driver: no result from the page within ${timeoutMs / 1000} s`);
}, timeoutMs);

browser.on("exit", (code, signal) => {
    if (!finished) {
        clearTimeout(deadline);
        finish(1, `FAIL driver: chromium exited early (code ${code}, signal ${signal})`);
    }
});
browser.on("error", (e) => finish(1, `FAIL driver: cannot start ${chromium}: ${e.message}`));

// Diagnostics collected from the page: handshakes, frame errors, console.
const handshakes = new Map();
const diagnostics = [];
function reportHandshakes() {
    for (const [id, h] of handshakes) {
        console.log(`--- WebSocket ${id} ${h.url || ""} ---`);
        if (h.request) {
            console.log("request:");
            for (const [k, v] of Object.entries(h.request.headers || {})) console.log(`  ${k}: ${v}`);
        }
        if (h.response) {
            console.log(`response: ${h.response.status} ${h.response.statusText}`);
            for (const [k, v] of Object.entries(h.response.headers || {})) console.log(`  ${k}: ${v}`);
        }
        for (const e of h.errors || []) console.log(`frame error: ${e}`);
        if (h.closed) console.log("closed");
    }
    for (const d of diagnostics) console.log(d);
}

function onEvent(msg) {
    const p = msg.params || {};
    const h = () => {
        if (!handshakes.has(p.requestId)) handshakes.set(p.requestId, { errors: [] });
        return handshakes.get(p.requestId);
    };
    switch (msg.method) {
    case "Network.webSocketCreated": h().url = p.url; break;
    case "Network.webSocketWillSendHandshakeRequest": h().request = p.request; break;
    case "Network.webSocketHandshakeResponseReceived": h().response = p.response; break;
    case "Network.webSocketFrameError": h().errors.push(p.errorMessage); break;
    case "Network.webSocketClosed": h().closed = true; break;
    case "Runtime.consoleAPICalled":
        diagnostics.push(`console.${p.type}: ${(p.args || []).map((a) => a.value ?? a.description).join(" ")}`);
        break;
    case "Runtime.exceptionThrown":
        diagnostics.push(`exception: ${p.exceptionDetails?.exception?.description || p.exceptionDetails?.text}`);
        break;
    case "Log.entryAdded":
        diagnostics.push(`log ${p.entry.level} ${p.entry.source}: ${p.entry.text}`);
        break;
    case "Inspector.targetCrashed":
        finish(1, "FAIL driver: the page crashed");
        break;
    }
}
listeners.push(onEvent);

try {
    const { targetId } = await send("Target.createTarget", { url: "about:blank" });
    const { sessionId } = await send("Target.attachToTarget", { targetId, flatten: true });
    pageSession = sessionId;
    await Promise.all(["Network.enable", "Runtime.enable", "Page.enable", "Log.enable"]
        .map((m) => send(m, {}, sessionId)));
    const loaded = new Promise((resolve) => listeners.push((m) => {
        if (m.sessionId === sessionId && m.method === "Page.loadEventFired") resolve();
    }));
    const nav = await send("Page.navigate", { url: pageUrl }, sessionId);
    if (nav.errorText) throw new Error(`navigating to ${pageUrl}: ${nav.errorText}`);
    await loaded;
    const { result, exceptionDetails } = await send("Runtime.evaluate", {
        expression: "window.stormDone",
        awaitPromise: true,
        returnByValue: true,
    }, sessionId);
    if (exceptionDetails) throw new Error(`evaluating window.stormDone: ${JSON.stringify(exceptionDetails)}`);
    const { ok, lines } = result.value || {};
    clearTimeout(deadline);
    for (const line of lines || []) console.log(line);
    const wireOk = checkWire(lines || []);
    if (!ok || !wireOk || verbose) reportHandshakes();
    console.log(ok && wireOk ? "ALL PASS" : "SOME FAILED");
    finish(ok && wireOk ? 0 : 1);
} catch (e) {
    clearTimeout(deadline);
    reportHandshakes();
    finish(1, `FAIL driver: ${e.message}`);
}
