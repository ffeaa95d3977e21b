#!/usr/bin/env bash
# Real-browser WebSocket test: headless Chromium against `storm echo --proto ws`.
# See browser/README.md for what is checked.
#
# usage: browser/run.sh [--no-build] [--verbose]
#   --no-build  use target/release/storm as it is (default: cargo build it)
#   --verbose   also print the WebSocket handshakes when everything passes
#
# Environment: CHROMIUM (default /usr/bin/chromium), NODE (default node),
# BROWSER_TEST_TIMEOUT (seconds for the browser part, default 120).
# Installs Debian's chromium with apt-get when it is missing (needs root).
# Only loopback addresses are used. Exits non-zero on any failure.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
here=$repo/browser
chromium=${CHROMIUM:-/usr/bin/chromium}
node=${NODE:-node}
budget=${BROWSER_TEST_TIMEOUT:-120}
build=1
verbose=0
for arg in "$@"; do
    case "$arg" in
        --no-build) build=0 ;;
        --verbose) verbose=1 ;;
        *) echo "usage: $0 [--no-build] [--verbose]" >&2; exit 2 ;;
    esac
done

if [ ! -x "$chromium" ]; then
    if [ "$chromium" != /usr/bin/chromium ]; then
        echo "browser: no chromium at $chromium" >&2
        exit 2
    fi
    echo "browser: installing chromium (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    timeout 900 apt-get update -qq
    timeout 900 apt-get install -y -qq chromium >/dev/null
fi
command -v "$node" >/dev/null || { echo "browser: node is needed" >&2; exit 2; }

if [ "$build" = 1 ]; then
    cargo build --release -q -p storm-cli --manifest-path "$repo/Cargo.toml"
fi
storm=$repo/target/release/storm
[ -x "$storm" ] || { echo "browser: no $storm (build storm-cli)" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/storm-browser.XXXXXX")
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# The server prints "... listening on ws://127.0.0.1:PORT" as its first line.
mkfifo "$work/server.out"
"$storm" echo --proto ws --addr 127.0.0.1:0 >"$work/server.out" 2>"$work/server.err" &
server_pid=$!
exec 3<"$work/server.out"
line=""
if ! IFS= read -r -t 10 line <&3; then
    echo "FAIL server: no listening line within 10 s" >&2
    cat "$work/server.err" >&2
    exit 1
fi
# Keep draining the server's stdout so it never blocks on a full pipe.
cat <&3 >/dev/null &
exec 3<&-
port=${line##*ws://127.0.0.1:}
port=${port%%[!0-9]*}
if [ -z "$port" ]; then
    echo "FAIL server: cannot read the port from: $line" >&2
    exit 1
fi
echo "$line"

status=0
timeout -k 5 "$((budget + 10))" "$node" "$here/drive.mjs" "$chromium" "$here/test.html" "$port" \
    "$work/profile" "$budget" "$verbose" >"$work/driver.out" 2>&1 || status=$?
# The driver prints Chromium's own output (dbus noise and the like) only on
# failure, after its PASS/FAIL lines.
cat "$work/driver.out"
if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "FAIL server: storm exited during the test" >&2
    status=1
fi
if [ -s "$work/server.err" ]; then
    echo "--- storm stderr ---"
    cat "$work/server.err"
fi
if [ "$status" != 0 ]; then
    if [ "$status" = 124 ] || [ "$status" = 137 ]; then
        echo "FAIL driver: killed after $((budget + 10)) s"
    fi
    echo "browser test: FAILED"
    exit 1
fi
echo "browser test: passed"
