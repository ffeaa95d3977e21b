#!/usr/bin/env bash
# Real-browser chat test: two headless-Chromium tabs chat through `storm chat`.
# Each tab loads the page storm serves itself (http://127.0.0.1:PORT/), sets a
# name, joins the same room, and each checks it sees the other's messages
# (and a whisper, the user list, the tick, a leave). The server runs with
# `--token`, so the tabs open the page with `?token=…`. Then `/stop` on the
# server's console must end it with exit code 0. What the chat refuses (a
# wrong token, a page of another origin) is checked in Chromium by
# storm-cli/tests/chat_browser.rs, under `cargo test`.
#
# usage: browser/chat.sh [--no-build]
#   --no-build  use target/release/storm as it is (default: cargo build it)
#
# Environment: CHROMIUM (default /usr/bin/chromium), NODE (default node),
# BROWSER_TEST_TIMEOUT (seconds for the browser part, default 60).
# Only loopback addresses are used. Exits non-zero on any failure.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
here=$repo/browser
chromium=${CHROMIUM:-/usr/bin/chromium}
node=${NODE:-node}
budget=${BROWSER_TEST_TIMEOUT:-60}
build=1
for arg in "$@"; do
    case "$arg" in
        --no-build) build=0 ;;
        *) echo "usage: $0 [--no-build]" >&2; exit 2 ;;
    esac
done
[ -x "$chromium" ] || { echo "chat: no chromium at $chromium (see browser/README.md)" >&2; exit 2; }
command -v "$node" >/dev/null || { echo "chat: node is needed" >&2; exit 2; }

if [ "$build" = 1 ]; then
    cargo build --release -q -p storm-cli --manifest-path "$repo/Cargo.toml"
fi
storm=$repo/target/release/storm
[ -x "$storm" ] || { echo "chat: no $storm (build storm-cli)" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/storm-chat.XXXXXX")
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# The console is a FIFO we hold open on fd 5; the banner is read from another.
mkfifo "$work/console" "$work/server.out"
token=browser-test-token
"$storm" chat --addr 127.0.0.1:0 --tick-ms 200 --token "$token" <"$work/console" >"$work/server.out" 2>"$work/server.err" &
server_pid=$!
exec 5>"$work/console"
exec 3<"$work/server.out"
http=""
while [ -z "$http" ]; do
    line=""
    if ! IFS= read -r -t 10 line <&3; then
        echo "FAIL server: no banner within 10 s" >&2
        cat "$work/server.err" >&2
        exit 1
    fi
    echo "$line"
    case "$line" in
        *"page on http://"*) http=${line##*page on } ;;
    esac
done
# Keep the server's log for the report, draining the pipe.
cat <&3 >"$work/server.log" &
exec 3<&-

status=0
timeout -k 5 "$((budget + 10))" "$node" "$here/drive_chat.mjs" "$chromium" "${http}?token=$token" \
    "$work/profile" "$budget" || status=$?

# Graceful stop from the admin console: exit code 0 within 10 s.
echo "/stop" >&5
exec 5>&-
stopped=""
for _ in $(seq 100); do
    if ! kill -0 "$server_pid" 2>/dev/null; then stopped=1; break; fi
    sleep 0.1
done
if [ -z "$stopped" ]; then
    echo "FAIL /stop: storm chat still running after 10 s"
    status=1
else
    code=0
    wait "$server_pid" || code=$?
    server_pid=""
    if [ "$code" = 0 ]; then echo "PASS /stop ends storm chat with exit code 0"; else
        echo "FAIL /stop: exit code $code"; status=1; fi
fi
if [ "$status" != 0 ]; then
    echo "--- storm output ---"; cat "$work/server.log" "$work/server.err" 2>/dev/null || true
    echo "chat browser test: FAILED"
    exit 1
fi
echo "chat browser test: passed"
