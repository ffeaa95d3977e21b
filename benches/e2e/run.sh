#!/usr/bin/env bash
# End-to-end echo benchmark: Storm's `storm echo` and peer servers built on
# other crates, driven by `loadgen`, on this machine only (127.0.0.1).
#
# Usage: benches/e2e/run.sh [--quick] [--duration SECS] [--only REGEX]
#                           [--scenario REGEX] [--rounds N] [--no-build]
#                           [--server-cpu N]
#
#   --quick           2 s per load run instead of 5
#   --duration S      seconds per load run
#   --only REGEX      run only the servers whose label matches (grep -E)
#   --scenario REGEX  run only the scenarios whose name matches (grep -E):
#                     deep, pipelined, pingpong, latency, large, idle
#                     (e.g. --scenario deep for the deep pipeline alone)
#   --rounds N        run everything N times, round after round, and print
#                     each cell's median over the rounds and ratios of the
#                     medians (default 1); single runs on a shared VM vary
#                     by ±15 % per cell
#   --no-build        use the release binaries already built
#   --server-cpu N    the CPU the servers run on (default 0); the load
#                     generator runs on another one. A VM's vCPUs can differ
#                     in steadiness: benches/e2e/vcpu.sh says which is
#                     steadier, and the server belongs there
#
# STORM_BIN=PATH runs that `storm` binary instead of this checkout's (to
# compare a change with the commit before it in one sitting).
#
# Each server runs pinned to CPU 0 (--server-cpu) and the load generator to
# another CPU. Every server is started once per protocol and all the
# scenarios run against it.
# Per scenario, one table: storm's rows, the peers' rows, and each row's
# figure divided by the best peer's of the same protocol. Raw results go to
# target/e2e/ (results.jsonl, rows-roundN.tsv, report-roundN.md, report.md).
set -euo pipefail

duration=5
only=.
scenario_re=.
build=1
rounds=1
server_cpu=0
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) duration=2 ;;
        --duration) duration=${2:?}; shift ;;
        --only) only=${2:?}; shift ;;
        --scenario) scenario_re=${2:?}; shift ;;
        --rounds) rounds=${2:?}; shift ;;
        --no-build) build=0 ;;
        --server-cpu) server_cpu=${2:?}; shift ;;
        -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
case "$duration" in
    ''|*[!0-9.]*) echo "run.sh: --duration takes seconds" >&2; exit 2 ;;
esac
case "$server_cpu" in
    ''|*[!0-9]*) echo "run.sh: --server-cpu takes a CPU number" >&2; exit 2 ;;
esac
case "$rounds" in
    ''|0|*[!0-9]*) echo "run.sh: --rounds takes a positive whole number" >&2; exit 2 ;;
esac

# The scenarios, in the order they run against each server (idle first, on
# the fresh process). Each is NAME: the loadgen arguments that make it.
scenarios=(idle deep pipelined pingpong latency large)
declare -A scenario_args=(
    # Deep pipeline (issue #16): per-message cost, not syscalls, dominates.
    [deep]="--mode throughput --clients 100 --window 100 --size 32"
    # The benchmark's first shape: 16 in flight, a read and a write per 16.
    [pipelined]="--mode throughput --clients 100 --window 16 --size 32"
    # 100 connections ping-pong: one in flight each, a syscall per message.
    # Latency mode, so round-trip percentiles come with the msgs/s.
    [pingpong]="--mode latency --clients 100 --window 1 --size 32"
    [latency]="--mode latency --clients 1 --window 1 --size 32"
    [large]="--mode throughput --clients 10 --window 4 --size 65536"
)
selected=()
for name in "${scenarios[@]}"; do
    if echo "$name" | grep -Eq -- "$scenario_re"; then selected+=("$name"); fi
done
if [ "${#selected[@]}" = 0 ]; then
    echo "run.sh: --scenario $scenario_re matches none of: ${scenarios[*]}" >&2
    exit 2
fi

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
rm -f "$out"/rows-round*.tsv "$out"/report-round*.md

idle_conns=1000
hz=$(getconf CLK_TCK)
ulimit -n 4096 2>/dev/null || true

# Pinning: the server on --server-cpu, the load generator on the first
# other CPU this process may run on, when there are two.
load_cpu=
if command -v taskset >/dev/null; then
    load_cpu=$(python3 -c 'import os,sys; print(next((c for c in sorted(os.sched_getaffinity(0)) if c != int(sys.argv[1])), ""))' "$server_cpu")
fi
if [ -n "$load_cpu" ]; then
    pin_server=(taskset -c "$server_cpu")
    pin_load=(taskset -c "$load_cpu")
    echo "run.sh: servers on CPU $server_cpu, the load generator on CPU $load_cpu" >&2
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

# cpu_ticks PID: utime + stime (fields 14 and 15, counted after the ")");
# empty if the process is gone.
cpu_ticks() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
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

# row FIELD...: one tab-separated result row of this round:
# SCENARIO LABEL PROTO STATUS VALUES... (STATUS is ok or why it failed).
row() {
    local IFS=$'\t'
    echo "$*" >> "$rows"
}

# failed SCENARIO LABEL PROTO FILE: a row saying why, from FILE's last line.
failed() {
    row "$1" "$2" "$3" "failed: $(tail -n 1 "$4" | tr '\t' ' ')"
}

# start_server LABEL SLUG CMD...: starts the server, sets server_pid and addr.
start_server() {
    local label=$1 slug=$2; shift 2
    # Emptied first: the server's own redirection may come after the first look.
    : > "$out/$slug.out"
    "${pin_server[@]}" "$@" > "$out/$slug.out" 2> "$out/$slug.err" &
    server_pid=$!
    addr=
    for _ in $(seq 100); do
        addr=$(sed -n 's#.*listening on [a-z]*://\([^ ]*\).*#\1#p' "$out/$slug.out" | head -n 1)
        [ -n "$addr" ] && break
        if ! kill -0 "$server_pid" 2>/dev/null; then break; fi
        sleep 0.1
    done
    if [ -z "$addr" ]; then
        echo "run.sh: $label did not start:" >&2
        cat "$out/$slug.err" >&2
        stop_server
        return 1
    fi
}

stop_server() {
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
}

# idle LABEL SLUG PROTO: KiB per idle connection on the running server.
# Row values: RssAnon KiB per connection, VmRSS KiB per connection,
# connections, VmRSS before and after (KiB).
idle() {
    local label=$1 slug=$2 proto=$3 file="$out/$2-$3-idle.out" before after anon0 anon1 n line
    before=$(rss_kib "$server_pid")
    anon0=$(rss_kib "$server_pid" RssAnon)
    "${pin_load[@]}" "$bin/loadgen" --mode idle --proto "$proto" --addr "$addr" \
        --connections "$idle_conns" --duration 60 --workers 1 > "$file" 2>&1 &
    load_pid=$!
    line=
    for _ in $(seq 600); do
        line=$(grep -m 1 '^{' "$file" || true)
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
    echo "  idle: $(tail -n 1 "$file")" >&2
    [ -z "$line" ] || echo "$line" >> "$results"
    if [ -z "$n" ]; then
        failed idle "$label" "$proto" "$file"
        return
    fi
    row idle "$label" "$proto" ok "$(awk -v b="$before" -v a="$after" -v b0="$anon0" \
        -v a1="$anon1" -v n="$n" 'BEGIN {
        printf "%.2f\t%.2f\t%d\t%d\t%d", (a1 - b0) / n, (a - b) / n, n, b, a }')"
}

# load SCENARIO LABEL SLUG PROTO: one loadgen run of SCENARIO on the running
# server. Row values: msgs/s, MiB/s, server CPU µs per message, server CPU %,
# loadgen CPU %, p50 µs, p99 µs (0 in throughput mode).
load() {
    local scenario=$1 label=$2 slug=$3 proto=$4 file="$out/$3-$4-$1.out"
    local t0 t1 w0 w1 line error msgs rate mib ccpu p50 p99 args
    read -ra args <<< "${scenario_args[$scenario]}"
    t0=$(cpu_ticks "$server_pid")
    w0=$(date +%s.%N)
    "${pin_load[@]}" "$bin/loadgen" "${args[@]}" --proto "$proto" --addr "$addr" \
        --duration "$duration" --workers 1 > "$file" 2>&1 || true
    w1=$(date +%s.%N)
    t1=$(cpu_ticks "$server_pid")
    line=$(grep -m 1 '^{' "$file" || true)
    echo "  $scenario: $(tail -n 1 "$file")" >&2
    [ -z "$line" ] || echo "$line" >> "$results"
    error=$(echo "$line" | json error)
    msgs=$(echo "$line" | json msgs)
    if [ -z "$t1" ]; then
        echo "server exited" >> "$file"
        failed "$scenario" "$label" "$proto" "$file"
        return
    fi
    if [ -z "$msgs" ] || [ "$error" != null ]; then
        failed "$scenario" "$label" "$proto" "$file"
        return
    fi
    rate=$(echo "$line" | json msgs_per_s)
    mib=$(echo "$line" | json mib_per_s)
    ccpu=$(echo "$line" | json client_cpu_pct)
    p50=$(echo "$line" | json p50_us)
    p99=$(echo "$line" | json p99_us)
    row "$scenario" "$label" "$proto" ok "$(awk -v m="$msgs" -v r="$rate" -v mib="$mib" \
        -v t="$((t1 - t0))" -v hz="$hz" -v w0="$w0" -v w1="$w1" -v c="$ccpu" \
        -v p50="$p50" -v p99="$p99" 'BEGIN {
        secs = t / hz
        printf "%s\t%s\t%.4f\t%.1f\t%s\t%s\t%s",
            r, mib, (m > 0 ? secs * 1e6 / m : 0), secs / (w1 - w0) * 100, c, p50, p99 }')"
}

# server LABEL PROTO CMD...: starts CMD (a server speaking PROTO) and runs
# every selected scenario against it, unless --only leaves LABEL out.
server() {
    local label=$1 proto=$2 slug scenario ran=0; shift 2
    if ! echo "$label" | grep -Eq -- "$only"; then return; fi
    for scenario in "${selected[@]}"; do
        if [ "$scenario" != idle ] || [ "$proto" = ws ]; then ran=1; fi
    done
    [ "$ran" = 1 ] || return 0
    echo "== $label ($proto)" >&2
    slug=$(echo "$label" | tr -cs 'A-Za-z0-9\n' '_' | tr -d '\n')
    if ! start_server "$label" "$slug" "$@"; then
        for scenario in "${selected[@]}"; do
            if [ "$scenario" != idle ] || [ "$proto" = ws ]; then
                row "$scenario" "$label" "$proto" "failed to start"
            fi
        done
        return
    fi
    for scenario in "${selected[@]}"; do
        case "$scenario" in
            idle) if [ "$proto" = ws ]; then idle "$label" "$slug" "$proto"; fi ;;
            *) load "$scenario" "$label" "$slug" "$proto" ;;
        esac
    done
    stop_server
}

# report ROWS...: the tables of the given rows files, one per scenario that
# has rows. Rows of one (scenario, server, protocol) from several files (the
# rounds) are reduced to the median of each value over the runs that
# succeeded; each row's ratio is its figure over the best peer's (a server
# whose label does not start with "storm") of the same protocol.
report() {
    awk -F'\t' -v duration="$duration" -v conns="$idle_conns" -v runs="$#" '
        function median(key, i,    m, a, b, x, s) {
            m = nok[key]
            for (a = 1; a <= m; a++) s[a] = v[key, i, a]
            for (a = 2; a <= m; a++) {
                x = s[a]
                for (b = a - 1; b >= 1 && s[b] > x; b--) s[b + 1] = s[b]
                s[b + 1] = x
            }
            return (m % 2) ? s[(m + 1) / 2] : (s[m / 2] + s[m / 2 + 1]) / 2
        }
        function better(x, y) { return lower[sc] ? x < y : x > y }
        BEGIN {
            n_order = split("deep pipelined pingpong latency large idle", order, " ")
            load = "5=msgs/s=%.0f;6=MiB/s=%.1f;7=server CPU µs/msg=%.3f;8=server CPU %=%.0f;9=loadgen CPU %=%.0f"
            lat = "10=p50 µs=%.1f;11=p99 µs=%.1f"
            title["deep"] = "Deep pipeline: 100 connections x 100 messages in flight x 32 B"
            spec["deep"] = load; metric["deep"] = 5
            title["pipelined"] = "Pipelined: 100 connections x 16 messages in flight x 32 B"
            spec["pipelined"] = load; metric["pipelined"] = 5
            title["pingpong"] = "Ping-pong: 100 connections x 1 message in flight x 32 B"
            spec["pingpong"] = load ";" lat; metric["pingpong"] = 5
            title["latency"] = "Latency: 1 connection x 1 message in flight x 32 B"
            spec["latency"] = lat ";5=msgs/s=%.0f;7=server CPU µs/msg=%.3f"
            metric["latency"] = 11; lower["latency"] = 1
            title["large"] = "Large messages: 10 connections x 4 in flight x 64 KiB"
            spec["large"] = load; metric["large"] = 6
            title["idle"] = "Memory: " conns " idle WebSocket connections (handshake and one 32-byte echo each)"
            spec["idle"] = "5=KiB per connection (RssAnon)=%.1f;6=(VmRSS)=%.1f;7=connections=%d;8=VmRSS before KiB=%d;9=VmRSS after KiB=%d"
            metric["idle"] = 5; lower["idle"] = 1
        }
        {
            key = $1 SUBSEP $2 SUBSEP $3
            if (!(key in label)) {
                label[key] = $2; proto[key] = $3
                keys[$1, ++count[$1]] = key
            }
            if ($4 == "ok") {
                m = ++nok[key]
                for (i = 5; i <= NF; i++) v[key, i, m] = $i + 0
                nf[key] = NF
            } else {
                why[key] = $4
            }
        }
        END {
            for (o = 1; o <= n_order; o++) {
                sc = order[o]
                if (!count[sc]) continue
                ncols = split(spec[sc], cols, ";")
                # Medians first, then the best peer of each protocol.
                split("", best); split("", bestname)
                for (k = 1; k <= count[sc]; k++) {
                    key = keys[sc, k]
                    if (!nok[key]) continue
                    for (i = 5; i <= nf[key]; i++) med[key, i] = median(key, i)
                    if (label[key] ~ /^storm/) continue
                    x = med[key, metric[sc]]
                    p = proto[key]
                    if (!(p in best) || better(x, best[p])) { best[p] = x; bestname[p] = label[key] }
                }
                header = "| server | protocol |"; rule = "|---|---|"
                for (c = 1; c <= ncols; c++) {
                    split(cols[c], f, "=")
                    header = header " " f[2] " |"; rule = rule "---:|"
                    if (f[1] == metric[sc]) mname = f[2]
                }
                print "### " title[sc]
                print ""
                print header " ÷ best peer |"
                print rule "---:|"
                for (pi = 1; pi <= 3; pi++) {
                    p = pi == 1 ? "raw" : (pi == 2 ? "lp" : "ws")
                    for (k = 1; k <= count[sc]; k++) {
                        key = keys[sc, k]
                        if (proto[key] != p) continue
                        line = "| " label[key] " | " p " |"
                        if (!nok[key]) {
                            print line " " why[key] " |"
                            continue
                        }
                        for (c = 1; c <= ncols; c++) {
                            split(cols[c], f, "=")
                            line = line " " sprintf(f[3], med[key, f[1]]) " |"
                        }
                        x = med[key, metric[sc]]
                        ratio = ((p in best) && best[p] > 0) ? sprintf("%.2f", x / best[p]) : "n/a"
                        if (nok[key] < runs) ratio = ratio " (" nok[key] " of " runs " runs)"
                        print line " " ratio " |"
                    }
                }
                print ""
                note = ""
                for (pi = 1; pi <= 3; pi++) {
                    p = pi == 1 ? "raw" : (pi == 2 ? "lp" : "ws")
                    if (p in best) note = note (note == "" ? "" : "; ") p ": " bestname[p]
                }
                if (note == "") note = "no peer ran"
                print "÷ best peer: " mname " over the best peer'"'"'s of the same protocol (" note "); " \
                    (lower[sc] ? "lower" : "higher") " is better."
                print ""
            }
        }' "$@"
}

# storm's settings, one row each: LABEL|FLAGS after `storm echo --proto P
# --addr 127.0.0.1:0`. The first is `storm echo` as a user runs it (no
# runtime named: whatever the default is); then every runtime.
storm_settings=(
    "storm echo (default)|"
    "storm echo (tokio)|--runtime tokio"
    "storm echo (smol)|--runtime smol"
    "storm echo (std)|--runtime std"
    # The server is pinned to one CPU: a current-thread runtime there.
    "storm echo (tokio, 1 thread)|--runtime tokio --threads 1"
)

load_before=$(cut -d ' ' -f 1-3 /proc/loadavg)
# STORM_BIN: another build of `storm` to measure (e.g. the commit before a
# change, built in its own checkout), in place of this checkout's.
storm="${STORM_BIN:-$bin/storm}"
for round in $(seq "$rounds"); do
    [ "$rounds" = 1 ] || echo "== round $round of $rounds" >&2
    rows="$out/rows-round$round.tsv"
    : > "$rows"
    for setting in "${storm_settings[@]}"; do
        read -ra flags <<< "${setting#*|}"
        for proto in raw lp ws; do
            server "${setting%%|*}" "$proto" \
                "$storm" echo --proto "$proto" --addr 127.0.0.1:0 "${flags[@]}"
        done
    done
    server "tokio raw TCP" raw "$bin/peer_raw_tcp" 127.0.0.1:0
    server "tokio-util LengthDelimitedCodec" lp "$bin/peer_lengthdelimited" 127.0.0.1:0
    server "tokio-tungstenite" ws "$bin/peer_tungstenite" 127.0.0.1:0
    server "tokio-websockets" ws "$bin/peer_tokio_websockets" 127.0.0.1:0
    server "fastwebsockets" ws "$bin/peer_fastwebsockets" 127.0.0.1:0
    report "$rows" > "$out/report-round$round.md"
done
report "$out"/rows-round*.tsv > "$out/report.md"

echo
echo "Load average (1, 5, 15 min) before: $load_before; after: $(cut -d ' ' -f 1-3 /proc/loadavg)" \
    "on $(nproc) CPUs (anything above ~2 means other processes shared the CPUs)."
default_banner=$(head -n 1 "$out/storm_echo_default_.out" 2>/dev/null || true)
if [ -n "$default_banner" ]; then echo "storm echo (default) ran as: $default_banner"; fi
if [ -n "$load_cpu" ]; then
    echo "Every load run: ${duration} s. Server pinned to CPU $server_cpu, loadgen to CPU $load_cpu (one tokio worker)."
else
    echo "Every load run: ${duration} s. Server and loadgen unpinned (one tokio worker)."
fi
if [ "$rounds" != 1 ]; then
    echo "Every cell is the median of $rounds rounds and every ratio a ratio of medians" \
        "(each round's tables: $out/report-roundN.md)."
fi
echo
cat "$out/report.md"
