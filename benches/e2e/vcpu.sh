#!/usr/bin/env bash
# How steady each CPU is: the same CPU-bound job (sha256sum of 64 MiB held
# in the page cache), pinned to each CPU in turn, RUNS times (default 10),
# alternating CPUs run after run so a slow phase of the host hits both.
# Prints each CPU's median, spread (max/min) and coefficient of variation.
#
# Usage: benches/e2e/vcpu.sh [RUNS]
#
# Why: on a VM one vCPU can be much noisier than another (session 15 saw
# σ 12 % on CPU 0 against 5 % on CPU 1), and a server pinned to the noisy
# one moves every e2e ratio by more than the targets' margins. Pin the
# servers to the steadier one: `run.sh --server-cpu N`, `SERVER_CPU=N
# LOAD_CPU=M ab.sh …`. Touches nothing but a temporary file.
set -euo pipefail
runs=${1:-10}
case "$runs" in ''|0|*[!0-9]*) echo "vcpu.sh: RUNS is a positive whole number" >&2; exit 2 ;; esac
command -v taskset >/dev/null || { echo "vcpu.sh: needs taskset" >&2; exit 2; }
blob=$(mktemp)
trap 'rm -f "$blob"' EXIT
head -c $((64 << 20)) /dev/urandom > "$blob"
sha256sum "$blob" > /dev/null # into the page cache
cpus=$(python3 -c 'import os; print(" ".join(map(str, sorted(os.sched_getaffinity(0)))))')
declare -A times=()
for _ in $(seq 1 "$runs"); do
    for cpu in $cpus; do
        start=$(date +%s%N)
        taskset -c "$cpu" sha256sum "$blob" > /dev/null
        end=$(date +%s%N)
        times[$cpu]="${times[$cpu]:-} $(( (end - start) / 1000 ))"
    done
done
echo "load average after the runs: $(cut -d' ' -f1-3 /proc/loadavg)"
for cpu in $cpus; do
    python3 - "$cpu" ${times[$cpu]} <<'PY'
import statistics, sys
cpu, us = sys.argv[1], [int(x) for x in sys.argv[2:]]
ms = [u / 1000 for u in us]
mean = statistics.mean(ms)
cv = statistics.pstdev(ms) / mean * 100
print(f"CPU {cpu}: median {statistics.median(ms):.0f} ms, min {min(ms):.0f}, max {max(ms):.0f}"
      f" (max/min {max(ms) / min(ms):.2f}), CV {cv:.1f} %")
PY
done
