// Two headless-Chromium tabs chat with each other through `storm chat`.
// Like drive.mjs, it speaks the DevTools protocol over --remote-debugging-pipe
// (fds 3 and 4, NUL-separated JSON): no npm package, no debugging port.
//
// Each tab loads the page the server itself serves (http://127.0.0.1:PORT/)
// and is used the way a person would: type a name and press "Set name", type
// a room and press "Join", type a message and press "Send". The checks read
// the page's message log. Prints PASS/FAIL lines; exit 0 if all passed.
//
// What `storm chat` refuses (a wrong token, a page of another origin) is
// checked in Chromium by storm-cli/tests/chat_browser.rs, under `cargo test`.
//
// usage: node drive_chat.mjs CHROMIUM PAGE_URL PROFILE_DIR [TIMEOUT_SECONDS]

import { driverLifetime, launchChromium, openTab } from "./cdp.mjs";

const [chromium, pageUrl, profileDir, timeoutArg] = process.argv.slice(2);
if (!chromium || !pageUrl || !profileDir) {
    console.error("usage: node drive_chat.mjs CHROMIUM PAGE_URL PROFILE_DIR [TIMEOUT_SECONDS]");
    process.exit(2);
}
const timeoutMs = Number(timeoutArg || 60) * 1000;
const STEP_MS = 10000;

const cdp = launchChromium(chromium, profileDir);

const diagnostics = [];
cdp.listeners.push((msg) => {
    const p = msg.params || {};
    if (msg.method === "Runtime.exceptionThrown") {
        diagnostics.push(`exception: ${p.exceptionDetails?.exception?.description || p.exceptionDetails?.text}`);
    } else if (msg.method === "Runtime.consoleAPICalled") {
        diagnostics.push(`console.${p.type}: ${(p.args || []).map((a) => a.value ?? a.description).join(" ")}`);
    }
});

const finish = driverLifetime(cdp, chromium, timeoutMs, () => diagnostics);
let failures = 0;

// Page helpers, evaluated in a tab.
const type = (id, text) => `(() => { document.getElementById(${JSON.stringify(id)}).value = ${JSON.stringify(text)}; })()`;
const submit = (form) => `document.getElementById(${JSON.stringify(form)}).requestSubmit()`;
const click = (id) => `document.getElementById(${JSON.stringify(id)}).click()`;
const logText = "document.getElementById('log').innerText";

/// Waits until the tab's log has a line containing `needle`.
async function waitFor(tab, needle, what) {
    const until = Date.now() + STEP_MS;
    while (Date.now() < until) {
        const log = await tab(logText);
        if (log.includes(needle)) { console.log(`PASS ${what}`); return true; }
        await new Promise((r) => setTimeout(r, 50));
    }
    console.log(`FAIL ${what}: no ${JSON.stringify(needle)} in the log within ${STEP_MS / 1000} s; log:\n${await tab(logText)}`);
    failures++;
    return false;
}
function check(ok, what, detail) {
    console.log(ok ? `PASS ${what}` : `FAIL ${what}: ${detail}`);
    if (!ok) failures++;
}

try {
    const alice = await openTab(cdp, pageUrl);
    const bob = await openTab(cdp, pageUrl);
    await waitFor(alice, "connected as guest-", "tab 1 connects");
    await waitFor(bob, "connected as guest-", "tab 2 connects");

    for (const [tab, name] of [[alice, "alice"], [bob, "bob"]]) {
        await tab(type("name", name));
        await tab(submit("name-form"));
        await waitFor(tab, `is now ${name}`, `${name} sets a name`);
        await tab(type("room", "browsers"));
        await tab(submit("room-form"));
        await waitFor(tab, `${name} joined browsers`, `${name} joins the room`);
    }
    await waitFor(alice, "bob joined browsers", "alice sees bob join");

    await alice(type("text", "hello from tab one"));
    await alice(submit("say-form"));
    await waitFor(bob, "[browsers] alice: hello from tab one", "bob sees alice's message");
    await waitFor(alice, "[browsers] alice: hello from tab one", "alice sees her own message");

    await bob(type("text", "hi alice, tab two here ✓"));
    await bob(submit("say-form"));
    await waitFor(alice, "[browsers] bob: hi alice, tab two here ✓", "alice sees bob's reply");

    await bob(type("text", "/w alice just for you"));
    await bob(submit("say-form"));
    await waitFor(alice, "(from bob) just for you", "alice gets bob's whisper");
    await waitFor(bob, "(to alice) just for you", "bob sees his whisper's copy");

    const users = await alice("document.getElementById('users').innerText");
    check(users.includes("alice (browsers)") && users.includes("bob (browsers)"),
        "the user list shows both in the room", JSON.stringify(users));
    const status = await alice("document.getElementById('status').innerText");
    const untilTick = Date.now() + STEP_MS;
    let ticked = /2 online/.test(status);
    while (!ticked && Date.now() < untilTick) {
        await new Promise((r) => setTimeout(r, 100));
        ticked = /2 online/.test(await alice("document.getElementById('status').innerText"));
    }
    check(ticked, "the tick shows 2 online", status);

    await bob(click("leave"));
    await waitFor(alice, "bob left browsers", "alice sees bob leave");

    console.log(failures === 0 ? "ALL PASS" : "SOME FAILED");
    finish(failures === 0 ? 0 : 1);
} catch (e) {
    finish(1, `FAIL driver: ${e.message}`);
}
