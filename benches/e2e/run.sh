#!/usr/bin/env bash
# End-to-end echo benchmark: Storm's `storm echo` and peer servers built on
# other crates, driven by `loadgen`, on this machine only (127.0.0.1).
#
# Usage: benches/e2e/run.sh [--quick] [--duration SECS] [--only REGEX] [--rounds N] [--no-build]
#
#   --quick         2 s per scenario instead of 5
#   --duration S    seconds per scenario (throughput and latency each)
#   --only REGEX    run only the servers whose label matches (grep -E)
#   --rounds N      run every scenario N times, round after round, and print
#                   each cell's median over the rounds (default 1); single
#                   runs on a shared VM vary by ±15 % per cell
#   --no-build      use the release binaries already built
#
# STORM_BIN=PATH runs that `storm` binary instead of this checkout's (to
# compare a change with the commit before it in one sitting).
#
# Each server runs pinned to CPU 0 and the load generator to CPU 1. For every
# (server, protocol) pair it prints messages/s, MiB/s, the server's CPU time
# per message (from /proc/PID/stat), and round-trip p50/p99 with one message
# in flight; for WebSocket servers also the memory per idle connection (VmRSS
# growth over 1000 connections) and a 64 KiB echo (MiB/s, CPU per message).
# Raw results go to target/e2e/.
set -euo pipefail

duration=5
only=.
build=1
rounds=1
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) duration=2 ;;
        --duration) duration=${2:?}; shift ;;
        --only) only=${2:?}; shift ;;
        --rounds) rounds=${2:?}; shift ;;
        --no-build) build=0 ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
case "$duration" in
    ''|*[!0-9.]*) echo "run.sh: --duration takes seconds" >&2; exit 2 ;;
esac
case "$rounds" in
    ''|0|*[!0-9]*) echo "run.sh: --rounds takes a positive whole number" >&2; exit 2 ;;
esac

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
if [ "$build" = 1 ]; then
    cargo build --release -p storm-e2e -p storm-cli
fi
target=$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bin="$target/release"
out="$target/e2e"
mkdir -p "$out"
results="$out/results.jsonl"
: > "$results"

idle_conns=1000
hz=$(getconf CLK_TCK)
ulimit -n 4096 2>/dev/null || true

# Pinning: server on CPU 0, load generator on CPU 1, when there are two.
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    pin_server=(taskset -c 0)
    pin_load=(taskset -c 1)
else
    echo "run.sh: no taskset or fewer than 2 CPUs; running unpinned" >&2
    pin_server=()
    pin_load=()
fi

server_pid=
load_pid=
cleanup() {
    # Only the processes this script started, by their id.
    if [ -n "$load_pid" ]; then kill "$load_pid" 2>/dev/null || true; fi
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT

# cpu_ticks PID: utime + stime (fields 14 and 15, counted after the ")").
cpu_ticks() {
    local stat
    stat=$(cat "/proc/$1/stat")
    echo "${stat##*) }" | awk '{ print $12 + $13 }'
}

# rss_kib PID [FIELD]: resident KiB, all of it (VmRSS) or one part
# (RssAnon: heap and stacks, what connections allocate).
rss_kib() {
    awk -v f="${2:-VmRSS}:" '$1 == f { print $2 }' "/proc/$1/status"
}

# json FIELD < line
json() {
    sed -n "s/.*\"$1\":\([^,}]*\).*/\1/p" | tr -d '"'
}

# start_server LABEL CMD...: starts the server, sets server_pid and addr.
start_server() {
    local label=$1; shift
    # Emptied first: the server's own redirection may come after the first look.
    : > "$out/$label.out"
    "${pin_server[@]}" "$@" > "$out/$label.out" 2> "$out/$label.err" &
    server_pid=$!
    addr=
    for _ in $(seq 100); do
        addr=$(sed -n 's#.*listening on [a-z]*://\([^ ]*\).*#\1#p' "$out/$label.out" | head -n 1)
        [ -n "$addr" ] && break
        if ! kill -0 "$server_pid" 2>/dev/null; then break; fi
        sleep 0.1
    done
    if [ -z "$addr" ]; then
        echo "run.sh: $label did not start:" >&2
        cat "$out/$label.err" >&2
        return 1
    fi
}

stop_server() {
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
}

# idle_memory LABEL SLUG PROTO: KiB per idle connection on the running server.
idle_memory() {
    local label=$1 slug=$2 proto=$3 before after anon0 anon1 n line
    before=$(rss_kib "$server_pid")
    anon0=$(rss_kib "$server_pid" RssAnon)
    "${pin_load[@]}" "$bin/loadgen" --mode idle --proto "$proto" --addr "$addr" \
        --connections "$idle_conns" --duration 60 --workers 1 > "$out/$slug.idle" 2>&1 &
    load_pid=$!
    line=
    for _ in $(seq 600); do
        line=$(grep -m 1 '^{' "$out/$slug.idle" || true)
        [ -n "$line" ] && break
        if ! kill -0 "$load_pid" 2>/dev/null; then break; fi
        sleep 0.1
    done
    n=$(echo "$line" | json connections)
    if [ -n "$n" ]; then
        # Let the server finish its bookkeeping: storm returns an idle
        # connection's buffers after 1 s (LinkConfig::release_after).
        sleep 2
        after=$(rss_kib "$server_pid")
        anon1=$(rss_kib "$server_pid" RssAnon)
        # The figure counts only if the connections were still open.
        kill -0 "$load_pid" 2>/dev/null || n=
    fi
    kill "$load_pid" 2>/dev/null || true
    wait "$load_pid" 2>/dev/null || true
    load_pid=
    echo "$line" >> "$results"
    if [ -z "$n" ]; then
        echo "| $label | failed: $(tail -n 1 "$out/$slug.idle") | | | | |" >> "$out/memory.md"
        return
    fi
    awk -v l="$label" -v b="$before" -v a="$after" -v b0="$anon0" -v a1="$anon1" -v n="$n" 'BEGIN {
        printf "| %s | %.1f | %.1f | %d | %d | %d |\n", l, (a1 - b0) / n, (a - b) / n, n, b, a }' >> "$out/memory.md"
}

# large_messages LABEL SLUG: 64 KiB WebSocket echo on the running server
# (10 clients x 4 in flight), MiB/s and server CPU per message.
large_messages() {
    local label=$1 slug=$2 t0 t1 line error msgs mib ccpu
    t0=$(cpu_ticks "$server_pid")
    "${pin_load[@]}" "$bin/loadgen" --mode throughput --proto ws --size 65536 \
        --clients 10 --window 4 --addr "$addr" --duration "$duration" --workers 1 \
        > "$out/$slug-large.throughput" 2>&1 || true
    t1=$(cpu_ticks "$server_pid")
    line=$(grep -m 1 '^{' "$out/$slug-large.throughput" || true)
    tail -n 1 "$out/$slug-large.throughput" >&2
    echo "$line" >> "$results"
    error=$(echo "$line" | json error)
    msgs=$(echo "$line" | json msgs)
    mib=$(echo "$line" | json mib_per_s)
    ccpu=$(echo "$line" | json client_cpu_pct)
    if [ -z "$msgs" ] || [ "$error" != null ]; then
        echo "| $label | failed: $(tail -n 1 "$out/$slug-large.throughput") |" >> "$out/large.md"
        return
    fi
    awk -v l="$label" -v m="$msgs" -v mib="$mib" -v t="$((t1 - t0))" -v hz="$hz" \
        -v d="$duration" -v c="$ccpu" 'BEGIN {
        secs = t / hz
        printf "| %s | %.0f | %.1f | %.0f | %.0f |\n",
            l, mib, (m > 0 ? secs * 1e6 / m : 0), secs / d * 100, c }' >> "$out/large.md"
}

# scenario LABEL PROTO CMD...
scenario() {
    local label=$1 proto=$2 slug; shift 2
    if ! echo "$label" | grep -Eq -- "$only"; then return; fi
    echo "== $label ($proto)" >&2
    slug=$(echo "$label" | tr -cs 'A-Za-z0-9\n' '_' | tr -d '\n')
    start_server "$slug" "$@" || { echo "| $label | $proto | failed to start |" >> "$out/table.md"; return; }
    if [ "$proto" = ws ]; then idle_memory "$label" "$slug" "$proto"; fi

    local t0 t1 w0 w1 line lat
    t0=$(cpu_ticks "$server_pid")
    w0=$(date +%s.%N)
    "${pin_load[@]}" "$bin/loadgen" --mode throughput --proto "$proto" --addr "$addr" \
        --duration "$duration" --workers 1 > "$out/$slug-$proto.throughput" 2>&1 || true
    w1=$(date +%s.%N)
    t1=$(cpu_ticks "$server_pid")
    line=$(grep -m 1 '^{' "$out/$slug-$proto.throughput" || true)
    tail -n 1 "$out/$slug-$proto.throughput" >&2
    echo "$line" >> "$results"

    "${pin_load[@]}" "$bin/loadgen" --mode latency --proto "$proto" --addr "$addr" \
        --duration "$duration" --workers 1 > "$out/$slug-$proto.latency" 2>&1 || true
    lat=$(grep -m 1 '^{' "$out/$slug-$proto.latency" || true)
    tail -n 1 "$out/$slug-$proto.latency" >&2
    echo "$lat" >> "$results"
    if [ "$proto" = ws ]; then large_messages "$label" "$slug"; fi
    stop_server

    local error msgs rate mib ccpu p50 p99
    error=$(echo "$line" | json error)
    msgs=$(echo "$line" | json msgs)
    rate=$(echo "$line" | json msgs_per_s)
    mib=$(echo "$line" | json mib_per_s)
    ccpu=$(echo "$line" | json client_cpu_pct)
    p50=$(echo "$lat" | json p50_us)
    p99=$(echo "$lat" | json p99_us)
    if [ -z "$msgs" ] || [ "$error" != null ]; then
        echo "| $label | $proto | failed: $(tail -n 1 "$out/$slug-$proto.throughput") |" >> "$out/table.md"
        return
    fi
    awk -v l="$label" -v p="$proto" -v m="$msgs" -v r="$rate" -v mib="$mib" \
        -v t="$((t1 - t0))" -v hz="$hz" -v w0="$w0" -v w1="$w1" -v c="$ccpu" \
        -v p50="$p50" -v p99="$p99" 'BEGIN {
        secs = t / hz
        us = m > 0 ? secs * 1e6 / m : 0
        printf "| %s | %s | %d | %.1f | %.3f | %.0f | %.0f | %s | %s |\n",
            l, p, r, mib, us, secs / (w1 - w0) * 100, c, p50, p99 }' >> "$out/table.md"
}

# medians KEYS FILE: FILE's table (header, separator, rows) with the rows
# grouped by their first KEYS cells, in first-seen order, and every other
# cell replaced by its median over the group. Rows that do not have the
# header's cells (a failed scenario) are left out.
medians() {
    awk -F'|' -v keys="$1" '
        NR == 1 { cells = NF }
        NR <= 2 { print; next }
        NF != cells { next }
        {
            key = ""
            for (i = 2; i <= keys + 1; i++) key = key "|" $i
            if (!(key in n)) { order[++groups] = key; n[key] = 0 }
            m = ++n[key]
            for (i = keys + 2; i < NF; i++) v[key, i, m] = $i + 0
        }
        END {
            for (g = 1; g <= groups; g++) {
                key = order[g]; m = n[key]; line = key
                for (i = keys + 2; i < cells; i++) {
                    for (a = 1; a <= m; a++) s[a] = v[key, i, a]
                    for (a = 2; a <= m; a++) {
                        x = s[a]
                        for (b = a - 1; b >= 1 && s[b] > x; b--) s[b + 1] = s[b]
                        s[b + 1] = x
                    }
                    med = (m % 2) ? s[(m + 1) / 2] : (s[m / 2] + s[m / 2 + 1]) / 2
                    line = line "| " med " "
                }
                print line "|"
            }
        }' "$2"
}

table_header='| server | protocol | msgs/s | MiB/s | server CPU µs/msg | server CPU % | loadgen CPU % | p50 µs | p99 µs |
|---|---|---:|---:|---:|---:|---:|---:|---:|'
memory_header='| server | KiB per idle connection (RssAnon) | (VmRSS) | connections | VmRSS before (KiB) | VmRSS after (KiB) |
|---|---:|---:|---:|---:|---:|'
large_header='| server | MiB/s | server CPU µs/msg | server CPU % | loadgen CPU % |
|---|---:|---:|---:|---:|'
echo "$table_header" > "$out/table-all.md"
echo "$memory_header" > "$out/memory-all.md"
echo "$large_header" > "$out/large-all.md"

load_before=$(cut -d ' ' -f 1-3 /proc/loadavg)
# STORM_BIN: another build of `storm` to measure (e.g. the commit before a
# change, built in its own checkout), in place of this checkout's.
storm="${STORM_BIN:-$bin/storm}"
for round in $(seq "$rounds"); do
    [ "$rounds" = 1 ] || echo "== round $round of $rounds" >&2
    echo "$table_header" > "$out/table.md"
    echo "$memory_header" > "$out/memory.md"
    echo "$large_header" > "$out/large.md"
    for runtime in tokio smol std; do
        scenario "storm echo ($runtime)" raw "$storm" echo --proto raw --addr 127.0.0.1:0 --runtime "$runtime"
        scenario "storm echo ($runtime)" lp "$storm" echo --proto lp --addr 127.0.0.1:0 --runtime "$runtime"
        scenario "storm echo ($runtime)" ws "$storm" echo --proto ws --addr 127.0.0.1:0 --runtime "$runtime"
    done
    scenario "tokio raw TCP" raw "$bin/peer_raw_tcp" 127.0.0.1:0
    scenario "tokio-util LengthDelimitedCodec" lp "$bin/peer_lengthdelimited" 127.0.0.1:0
    scenario "tokio-tungstenite" ws "$bin/peer_tungstenite" 127.0.0.1:0
    scenario "tokio-websockets" ws "$bin/peer_tokio_websockets" 127.0.0.1:0
    scenario "fastwebsockets" ws "$bin/peer_fastwebsockets" 127.0.0.1:0
    cp "$out/table.md" "$out/table-round$round.md"
    cp "$out/memory.md" "$out/memory-round$round.md"
    cp "$out/large.md" "$out/large-round$round.md"
    tail -n +3 "$out/table.md" >> "$out/table-all.md"
    tail -n +3 "$out/memory.md" >> "$out/memory-all.md"
    tail -n +3 "$out/large.md" >> "$out/large-all.md"
done
if [ "$rounds" != 1 ]; then
    medians 2 "$out/table-all.md" > "$out/table.md"
    medians 1 "$out/memory-all.md" > "$out/memory.md"
    medians 1 "$out/large-all.md" > "$out/large.md"
fi

echo
echo "Load average (1, 5, 15 min) before: $load_before; after: $(cut -d ' ' -f 1-3 /proc/loadavg)" \
    "on $(nproc) CPUs (anything above ~2 means other processes shared the CPUs)."
echo
echo "Throughput: 100 clients x 16 messages in flight x 32 B, ${duration} s; latency: 1 client, 1 in flight, ${duration} s."
if [ "$rounds" != 1 ]; then
    echo "Every cell is the median of $rounds rounds (each round's tables: $out/table-roundN.md, memory-roundN.md, large-roundN.md)."
fi
echo
cat "$out/table.md"
echo
echo "Memory: $idle_conns idle WebSocket connections (handshake and one 32-byte echo each)."
echo "RssAnon is heap and stacks: what the connections allocate. VmRSS also counts"
echo "the server's code pages first touched while serving them, a fixed cost per"
echo "binary (about 0.3 MB for storm's) spread over the connections."
echo
cat "$out/memory.md"
echo
echo "Large messages: 64 KiB WebSocket echo, 10 clients x 4 in flight, ${duration} s."
echo "A server below 100 % CPU was not the bottleneck: the load generator was."
echo
cat "$out/large.md"
