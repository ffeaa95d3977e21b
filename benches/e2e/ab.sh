#!/usr/bin/env bash
# Alternating A/B of echo servers under one load, round after round:
#
#   benches/e2e/ab.sh PROTO ROUNDS "SERVER CMD 1" "SERVER CMD 2" ...
#
# Each server command is started fresh per round on CPU SERVER_CPU (default 0),
# with `--addr 127.0.0.1:PORT` appended (or ADDR in the command replaced, for
# the peers' `BIN ADDR`), then `loadgen` runs on CPU LOAD_CPU (default 1) with
# one worker. LOAD
# overrides the load (default: the deep pipeline, 100 x 100 x 32 B for 3 s;
# ping-pong: LOAD="--mode latency --clients 100 --window 1 --size 32
# --duration 3"); LG names the loadgen binary (default target/release/loadgen).
# Prints one line per run: msgs/s, p50/p99 (latency mode), MiB/s, load average.
# Loopback only; every server is stopped by its PID after its run.
set -u
proto=$1; rounds=$2; shift 2
LOAD=${LOAD:---mode throughput --clients 100 --window 100 --size 32 --duration 3}
LG=${LG:-target/release/loadgen}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
port=19400
for r in $(seq 1 "$rounds"); do
  for cmd in "$@"; do
    port=$((port + 1)); addr=127.0.0.1:$port
    if [[ "$cmd" == *ADDR* ]]; then full=${cmd//ADDR/$addr}; else full="$cmd --addr $addr"; fi
    # shellcheck disable=SC2086 # the command is words on purpose
    taskset -c "$SERVER_CPU" $full > /dev/null 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
    # shellcheck disable=SC2086
    res=$(taskset -c "$LOAD_CPU" "$LG" $LOAD --proto "$proto" --addr "$addr" --workers 1 2>/dev/null | head -1)
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    rate=$(echo "$res" | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print("%.3f M/s p50 %.0f p99 %.0f mib %.0f" % (d["msgs_per_s"]/1e6, d.get("p50_us",0), d.get("p99_us",0), d.get("mib_per_s",0)))' 2>/dev/null)
    echo "round $r | $(echo "$cmd" | cut -c1-60) | $rate | load $(cut -d' ' -f1 /proc/loadavg)"
  done
done
