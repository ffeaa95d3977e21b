#!/usr/bin/env bash
# Runs the Autobahn|Testsuite against Storm's WebSocket server and client and
# compares the results with autobahn/expected-results.json.
#
# usage: autobahn/run.sh [--quick] [--debug] [--update] [ADAPTER ...]
#   ADAPTER   storm-std, storm-tokio, storm-smol: the storm-examples
#             `ws_echo` and `autobahn_client` with `--runtime std|tokio|smol`
#             (WsServer and WsClient on that adapter);
#             storm-std-blocking: `ws_echo_blocking` and
#             `autobahn_client_blocking`, on storm-std's low-level blocking
#             `ws::WebSocket`; storm-tokio-stream, storm-smol-stream:
#             `ws_echo_stream` and `autobahn_client_stream` with
#             `--runtime tokio|smol`, on the `Stream + Sink`
#             `WebSocketStream`. Default: all but storm-smol-stream (it
#             runs the same code as storm-tokio-stream).
#   --quick   a subset that finishes in under a minute (what CI runs): all
#             of 1.*-7.* and 10.*, and the small-message cases of every
#             deflate group (12.*.1-2, 13.*.1-4), instead of the full 517
#             cases (about 10 minutes per side, mostly 12.*/13.* in wstest)
#   --debug   use debug builds of the examples (what `cargo test` already built)
#   --update  record the results as the new expectation instead of comparing
#
# The suite is the Autobahn|Testsuite (crossbar.io's `wstest`, PyPI
# `autobahntestsuite` 25.10.1, Python 2 code) made runnable on Python 3. It
# is not part of this repository: a tools directory, by default
# ../shared/tools/autobahn beside the checkout (or $AUTOBAHN_TOOLS), holds
#   setup.sh               installs wstest into a venv (default
#                          ~/.cache/storm-autobahn/venv) and converts it to
#                          Python 3; idempotent, run first by this script
#   run-server-suite.sh    wstest -m fuzzingclient against a server URL
#   run-client-suite.sh    wstest -m fuzzingserver on a loopback port, running
#                          the client command given after `--`
# Needs python3 with venv. Only loopback addresses are used.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
tools=${AUTOBAHN_TOOLS:-$repo/../shared/tools/autobahn}
quick=0
update=""
profile=release
adapters=()
for arg in "$@"; do
    case "$arg" in
        --quick) quick=1 ;;
        --update) update=--update ;;
        --debug) profile=debug ;;
        -*) echo "unknown option $arg" >&2; exit 2 ;;
        *) adapters+=("$arg") ;;
    esac
done
[ ${#adapters[@]} -gt 0 ] || adapters=(storm-std storm-tokio storm-smol storm-std-blocking storm-tokio-stream)
for adapter in "${adapters[@]}"; do
    case "$adapter" in
        storm-std|storm-tokio|storm-smol|storm-std-blocking|storm-tokio-stream|storm-smol-stream) ;;
        *) echo "unknown adapter $adapter" >&2; exit 2 ;;
    esac
done
if [ ! -x "$tools/setup.sh" ] && [ ! -f "$tools/setup.sh" ]; then
    echo "autobahn: no Autobahn|Testsuite tools directory (setup.sh) at $tools; set AUTOBAHN_TOOLS" >&2
    exit 2
fi
if [ "$quick" = 1 ]; then
    # Exact ids: wstest matches a pattern with '*' as a prefix, so 12.*.1 would
    # also pull in the large 12.*.1x cases.
    deflate=$(printf '"%s",' 12.{1..5}.{1,2} 13.{1..7}.{1..4})
    export AUTOBAHN_CASES="[\"1.*\",\"2.*\",\"3.*\",\"4.*\",\"5.*\",\"6.*\",\"7.*\",\"10.*\",${deflate%,}]"
fi
bash "$tools/setup.sh" >/dev/null
out=$repo/target/autobahn
mkdir -p "$out"
status=0
examples=(--example ws_echo --example autobahn_client --example ws_echo_blocking --example autobahn_client_blocking
    --example ws_echo_stream --example autobahn_client_stream)
if [ "$profile" = release ]; then
    cargo build --release -q -p storm-examples "${examples[@]}"
else
    cargo build -q -p storm-examples "${examples[@]}"
fi
bin=$repo/target/$profile/examples
for adapter in "${adapters[@]}"; do
    # The suite's server (an echo) and client (the Autobahn loop) for this adapter.
    case "$adapter" in
        storm-std-blocking)
            server=("$bin/ws_echo_blocking")
            client=("$bin/autobahn_client_blocking") ;;
        *-stream)
            runtime=${adapter#storm-}
            server=("$bin/ws_echo_stream" --runtime "${runtime%-stream}")
            client=("$bin/autobahn_client_stream" --runtime "${runtime%-stream}") ;;
        *)
            server=("$bin/ws_echo" --runtime "${adapter#storm-}")
            client=("$bin/autobahn_client" --runtime "${adapter#storm-}") ;;
    esac
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "${server[@]}" "127.0.0.1:$port" >"$out/$adapter-echo.log" 2>&1 &
    echo_pid=$!
    trap 'kill $echo_pid 2>/dev/null || true' EXIT
    for _ in $(seq 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    (cd "$out" && AUTOBAHN_OUTDIR="$out/$adapter-server" bash "$tools/run-server-suite.sh" "ws://127.0.0.1:$port" "$adapter") >"$out/$adapter-server.log" 2>&1 || true
    kill $echo_pid 2>/dev/null || true
    wait $echo_pid 2>/dev/null || true
    python3 "$repo/autobahn/compare.py" "$repo/autobahn/expected-results.json" server "$adapter" "$out/$adapter-server" $update || status=1

    cport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    (cd "$out" && AUTOBAHN_OUTDIR="$out/$adapter-client" bash "$tools/run-client-suite.sh" --port "$cport" -- "${client[@]}" "ws://127.0.0.1:$cport" "$adapter") >"$out/$adapter-client.log" 2>&1 || true
    python3 "$repo/autobahn/compare.py" "$repo/autobahn/expected-results.json" client "$adapter" "$out/$adapter-client" $update || status=1
done
exit $status
