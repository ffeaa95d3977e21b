// Two headless-Chromium tabs chat through the `chat` example, on one
// adapter (`--runtime tokio|smol|std`; see chat_example.sh). Each tab loads
// chat_example.html from disk, pointed at the server, and is used as a person
// would: type a line, press Send. The checks read the page's log, which holds
// every line the server sent (and `> TEXT` for what the tab sent). Prints
// PASS/FAIL lines; exits 0 if all passed.
//
// usage: node drive_chat_example.mjs CHROMIUM WS_URL PROFILE_DIR [TIMEOUT_SECONDS]

import { fileURLToPath, pathToFileURL } from "node:url";
import { driverLifetime, launchChromium, openTab } from "./cdp.mjs";

const [chromium, wsUrl, profileDir, timeoutArg] = process.argv.slice(2);
if (!chromium || !wsUrl || !profileDir) {
    console.error("usage: node drive_chat_example.mjs CHROMIUM WS_URL PROFILE_DIR [TIMEOUT_SECONDS]");
    process.exit(2);
}
const page = pathToFileURL(fileURLToPath(new URL("chat_example.html", import.meta.url)));
page.searchParams.set("ws", wsUrl);
const timeoutMs = Number(timeoutArg || 60) * 1000;
const STEP_MS = 10000;

const cdp = launchChromium(chromium, profileDir);
const finish = driverLifetime(cdp, chromium, timeoutMs);
let failures = 0;

/// Types `line` into the tab's input and presses Send.
const say = (tab, line) => tab(`(() => {
    document.getElementById("text").value = ${JSON.stringify(line)};
    document.getElementById("say").requestSubmit();
})()`);
const logOf = (tab) => tab("document.getElementById('log').textContent");

/// Waits until a line of the tab's log matches `pattern` (a string: that
/// exact line; or a RegExp); returns the match, or null after STEP_MS.
async function waitFor(tab, pattern, what) {
    const matches = (line) => (typeof pattern === "string" ? (line === pattern ? [line] : null) : pattern.exec(line));
    const until = Date.now() + STEP_MS;
    let log = "";
    while (Date.now() < until) {
        log = await logOf(tab);
        for (const line of log.split("\n")) {
            const m = matches(line);
            if (m) { console.log(`PASS ${what}`); return m; }
        }
        await new Promise((r) => setTimeout(r, 50));
    }
    console.log(`FAIL ${what}: no line matching ${pattern} within ${STEP_MS / 1000} s; log:\n${log}`);
    failures++;
    return null;
}
function check(ok, what, detail) {
    console.log(ok ? `PASS ${what}` : `FAIL ${what}: ${detail}`);
    if (!ok) failures++;
}

try {
    const alice = await openTab(cdp, page.href);
    const bob = await openTab(cdp, page.href);
    for (const [tab, name] of [[alice, "alice"], [bob, "bob"]]) {
        const guest = await waitFor(tab, /^\* welcome (guest-\d+), you are in lobby$/, `${name}'s tab connects and is welcomed to the lobby`);
        if (!guest) throw new Error("no welcome");
        await say(tab, `/name ${name}`);
        await waitFor(tab, `* ${guest[1]} is now ${name}`, `${name} renames themself`);
        await say(tab, "/join browsers");
        await waitFor(tab, `* ${name} joined browsers`, `${name} joins the room`);
    }
    await waitFor(alice, "* bob joined browsers", "alice sees bob join");

    await say(alice, "hello from tab one");
    await waitFor(bob, "[browsers] alice: hello from tab one", "bob gets alice's message");
    await say(bob, "hi alice, tab two here ✓ 🌩");
    await waitFor(alice, "[browsers] bob: hi alice, tab two here ✓ 🌩", "alice gets bob's reply");
    const aliceLog = await logOf(alice);
    // Bob's reply was sent after alice's message reached him, so a copy of
    // her own message (if the server had sent one) would be in her log now.
    check(!aliceLog.includes("[browsers] alice:"), "alice's message is not sent back to her", aliceLog);

    // Bob moves to another room; alice's next message must not reach him.
    await say(bob, "/join other");
    await waitFor(alice, "* bob left browsers", "alice sees bob leave for another room");
    await say(alice, "only for browsers");
    await say(alice, "/join other");
    await waitFor(bob, "* alice joined other", "bob sees alice join his room");
    const bobLog = await logOf(bob);
    check(!bobLog.includes("only for browsers"), "a message to another room does not reach bob", bobLog);
    await say(alice, "/leave");
    await waitFor(bob, "* alice left other", "bob sees alice /leave");
    await say(alice, "into the void");
    await waitFor(alice, "! you are in no room: /join one", "chatting outside a room is refused");

    console.log(failures === 0 ? "ALL PASS" : "SOME FAILED");
    finish(failures === 0 ? 0 : 1);
} catch (e) {
    finish(1, `FAIL driver: ${e.message}`);
}
