#!/usr/bin/env bash
# Real-browser test of the `chat` example on each adapter: build it once
# (`cargo build -p storm-examples --example chat`), and for each adapter
# start it with `--runtime tokio|smol|std` on 127.0.0.1, then two
# headless-Chromium tabs (chat_example.html, driven by
# drive_chat_example.mjs) name themselves, join one room and chat both ways;
# the checks read what each tab received.
#
# usage: browser/chat_example.sh [--no-build] [storm-tokio|storm-smol|storm-std ...]
#   no adapter named: all three, one after the other
#   --no-build  run target/debug/examples/chat as it is
#
# Environment: CHROMIUM (default /usr/bin/chromium), NODE (default node),
# BROWSER_TEST_TIMEOUT (seconds for each adapter's browser part, default 60),
# CARGO_TARGET_DIR. Only loopback addresses are used. Exits non-zero if any
# adapter failed.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
here=$repo/browser
chromium=${CHROMIUM:-/usr/bin/chromium}
node=${NODE:-node}
budget=${BROWSER_TEST_TIMEOUT:-60}
target=${CARGO_TARGET_DIR:-$repo/target}
build=1
adapters=()
for arg in "$@"; do
    case "$arg" in
        --no-build) build=0 ;;
        storm-tokio|storm-smol|storm-std) adapters+=("$arg") ;;
        *) echo "usage: $0 [--no-build] [storm-tokio|storm-smol|storm-std ...]" >&2; exit 2 ;;
    esac
done
[ ${#adapters[@]} -gt 0 ] || adapters=(storm-tokio storm-smol storm-std)
[ -x "$chromium" ] || { echo "chat_example: no chromium at $chromium (see browser/README.md)" >&2; exit 2; }
command -v "$node" >/dev/null || { echo "chat_example: node is needed" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/storm-chat-example.XXXXXX")
server_pid=""
stop_server() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
    fi
}
trap 'stop_server; rm -rf "$work"' EXIT

# Runs the browser test against one adapter's chat example; returns non-zero
# on failure.
run_one() {
    local adapter=$1 dir=$work/$1 line="" ws=""
    mkdir -p "$dir"
    [ -x "$chat" ] || { echo "FAIL $adapter: no $chat"; return 1; }
    mkfifo "$dir/out"
    "$chat" --runtime "${adapter#storm-}" 127.0.0.1:0 >"$dir/out" 2>"$dir/err" &
    server_pid=$!
    exec 3<"$dir/out"
    if IFS= read -r -t 10 line <&3; then ws=${line##*listening on }; fi
    case "$ws" in
        ws://127.0.0.1:*) echo "$adapter: $line" ;;
        *) echo "FAIL $adapter: no banner within 10 s: $line"; cat "$dir/err"; exec 3<&-; stop_server; return 1 ;;
    esac
    cat <&3 >"$dir/log" &
    exec 3<&-
    local status=0
    timeout -k 5 "$((budget + 10))" "$node" "$here/drive_chat_example.mjs" "$chromium" "$ws" \
        "$dir/profile" "$budget" || status=$?
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "FAIL $adapter: the chat example exited during the test"; status=1
    fi
    stop_server
    if [ "$status" != 0 ]; then
        echo "--- $adapter chat output ---"; cat "$dir/log" "$dir/err" 2>/dev/null || true
    fi
    return "$status"
}

chat=$target/debug/examples/chat
if [ "$build" = 1 ]; then
    cargo build -q -p storm-examples --example chat --manifest-path "$repo/Cargo.toml"
fi
failed=()
for adapter in "${adapters[@]}"; do
    echo "== $adapter"
    run_one "$adapter" || failed+=("$adapter")
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "chat example browser test: FAILED for ${failed[*]}"
    exit 1
fi
echo "chat example browser test: passed for ${adapters[*]}"
