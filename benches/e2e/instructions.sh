#!/usr/bin/env bash
# Instructions per message of `storm echo`, counted by callgrind: a figure
# that does not depend on what else the machine is doing (a shared 2-core VM
# moves wall-clock figures by ±25 % from one run to the next; this one
# repeats to within a few instructions).
#
# Usage: benches/e2e/instructions.sh [--proto ws|lp|raw] [--runtime tokio|smol|std]
#                                    [--storm PATH] [--loadgen PATH]
#                                    [--peer PATH] [--size BYTES]
#                                    [--clients N] [--window N]
#                                    [--short N] [--long N]
#
# Runs the server under `valgrind --tool=callgrind` twice, driven by
# `loadgen` with 100 connections x 100 messages in flight x 32 B (the deep
# pipeline of issue #16) to 100,000 and to 300,000 messages, and prints the
# marginal count: (instructions of the long run - those of the short run) /
# (messages of the long run - those of the short run). Start-up, the
# handshakes and the shutdown cancel out. What it does not see: the cost of
# an atomic operation or a cache miss beyond one instruction, and the
# kernel. Loopback only; the servers it starts are stopped by their pid.
# --peer counts one of benches/e2e's peer servers instead; --size,
# --clients, --window, --short and --long change the load.
set -euo pipefail

proto=ws
runtime=tokio
root=$(cd "$(dirname "$0")/../.." && pwd)
target=$(cd "$root" && cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
storm=$target/release/storm
# A peer server of benches/e2e (e.g. target/release/peer_fastwebsockets),
# run as `PEER ADDR`, counted instead of storm; --proto says what it speaks.
peer=
# The load: 100 connections x 100 in flight x 32 B by default (the deep
# pipeline); e.g. --size 65536 --clients 10 --window 4 --short 2000
# --long 6000 for large messages.
size=32 clients=100 window=100 short=100000 long=300000
loadgen=$target/release/loadgen
while [ $# -gt 0 ]; do
    case "$1" in
        --proto) proto=${2:?}; shift ;;
        --runtime) runtime=${2:?}; shift ;;
        --storm) storm=${2:?}; shift ;;
        --loadgen) loadgen=${2:?}; shift ;;
        --peer) peer=${2:?}; shift ;;
        --size) size=${2:?}; shift ;;
        --clients) clients=${2:?}; shift ;;
        --window) window=${2:?}; shift ;;
        --short) short=${2:?}; shift ;;
        --long) long=${2:?}; shift ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "instructions.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
command -v valgrind >/dev/null || { echo "instructions.sh: needs valgrind" >&2; exit 2; }
if [ ! -x "$storm" ] || [ ! -x "$loadgen" ]; then
    echo "instructions.sh: build first: cargo build --release -p storm-e2e -p storm-cli" >&2
    exit 2
fi

work=$(mktemp -d)
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# One run to `max` messages; prints "MESSAGES INSTRUCTIONS".
run() {
    local max=$1 port out
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    out=$work/callgrind.$max
    if [ -n "$peer" ]; then
        set -- "$peer" "127.0.0.1:$port"
    else
        set -- "$storm" echo --proto "$proto" --addr "127.0.0.1:$port" --runtime "$runtime"
    fi
    valgrind --tool=callgrind --callgrind-out-file="$out" "$@" \
        >/dev/null 2>"$work/valgrind.$max" &
    server_pid=$!
    for _ in $(seq 300); do
        (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.2
    done
    local msgs
    msgs=$("$loadgen" --mode throughput --proto "$proto" --addr "127.0.0.1:$port" \
        --clients "$clients" --window "$window" --size "$size" --max-msgs "$max" --duration 110 |
        sed -n '1s/.*"msgs":\([0-9]*\).*/\1/p') || msgs=0
    # This runs in a subshell (the caller's `< <(run …)`), which the EXIT
    # trap does not cover: the server is stopped here whatever loadgen did.
    # storm ends on SIGINT; a peer may take it for a graceful shutdown
    # that waits for its connections, so it gets SIGTERM after 5 s
    # (callgrind writes its counts either way).
    kill -INT "$server_pid"
    for _ in $(seq 50); do
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
    echo "$msgs $(sed -n 's/^summary: //p' "$out")"
}

read -r short_msgs short_ir < <(run "$short")
read -r long_msgs long_ir < <(run "$long")
label="storm echo --proto $proto --runtime $runtime"
if [ -n "$peer" ]; then label="$(basename "$peer") ($proto)"; fi
echo "$label: $(( (long_ir - short_ir) / (long_msgs - short_msgs) )) instructions per message" \
    "($short_msgs and $long_msgs messages)"
