#!/usr/bin/env python3
"""Stage 4 (taken -> received by the other node) split at every socket.

Runs `xnode --stages` (two `storm chat` nodes on one Redis) and records with
`perf`, during one second of the load, the system calls on the Redis
sockets of both nodes and of Redis itself: each node's writes (`writev`,
`sendto`, `write`) and reads (`recvfrom`) of its room connection (since the
publisher sends on the subscription connection, one socket per node
carries a node's room traffic: the one it reads most), and Redis's reads
(`read`) and writes (`write`, `writev`) of the two nodes' connections. Then,
for every room message of the run whose stamps are in (the publishing
node's `taken`, each receiving node's `received`), it sets them against
the calls:

    taken (publishing node, the publisher task takes the message)
      -> the node's first write on its Redis socket from then on
      -> Redis's first read of that socket from then on
      -> Redis's first write to the receiving node's socket from then on
      -> the receiving node's first read of its socket from then on
      -> received (the receiving node's push callback has the message)

"First from then on" makes each piece a lower bound of its own (a message
written in a later write than the first is counted from the first). Same
node (its own echo) and cross node apart.

Needs `perf` (syscall tracepoints) and root or perf_event_paranoid <= 1.
perf's clock is CLOCK_MONOTONIC; the stamps are on the system clock: the
offset between the two is read as the recording starts.

    python3 benches/e2e/hop_stages.py --bin target/release [--runs 3]
"""

import argparse
import bisect
import os
import re
import subprocess
import sys
import tempfile
import time

NODE_WRITES = ("writev", "sendto", "write")
NODE_READS = ("recvfrom",)
REDIS_WRITES = ("write", "writev")
REDIS_READS = ("read",)


def children(pid):
    return subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()


def cmdline(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode(errors="replace") for a in f.read().split(b"\0")]


def environ(pid):
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)


def sockets(pid):
    """fd -> (local port, remote port) of `pid`'s IPv4 TCP sockets."""
    ports = {}
    with open(f"/proc/{pid}/net/tcp") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            local = int(fields[1].split(":")[1], 16)
            remote = int(fields[2].split(":")[1], 16)
            ports[fields[9]] = (local, remote)
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in ports:
            out[int(fd)] = ports[target[8:-1]]
    return out


def run_once(bin_dir, work, duration, extra_env):
    env = dict(os.environ, **extra_env)
    xnode = subprocess.Popen(
        [os.path.join(bin_dir, "xnode"), "--storm", os.path.join(bin_dir, "storm"),
         "--sessions", "10", "--rate", "10000", "--duration", str(duration), "--stages"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 60
    nodes, redis = [], None
    while time.time() < deadline:
        nodes, redis = [], None
        for pid in children(xnode.pid):
            try:
                args = cmdline(pid)
            except OSError:
                continue
            if args and args[0].split(" ")[0].endswith("redis-server"):
                redis = pid
            elif any(a.startswith("redis://") for a in args):
                try:
                    if environ(pid).get(b"STORM_BACKPLANE_STAGES"):
                        nodes.append(pid)
                except OSError:
                    pass
        if redis and len(nodes) == 2:
            break
        time.sleep(0.02)
    if not (redis and len(nodes) == 2):
        xnode.kill()
        sys.exit("no two backplane nodes appeared")
    stages = [environ(pid)[b"STORM_BACKPLANE_STAGES"].decode() for pid in nodes]
    url = [a for a in cmdline(nodes[0]) if a.startswith("redis://")][0]
    redis_port = int(url.rsplit(":", 1)[1].strip("/"))
    time.sleep(1.2)
    # The sockets now, before the nodes end with the load.
    node_socks = [{fd: p for fd, p in sockets(pid).items() if p[1] == redis_port} for pid in nodes]
    redis_socks = sockets(redis)
    data = os.path.join(work, "perf.data")
    calls = sorted({*NODE_WRITES, *NODE_READS, *REDIS_WRITES, *REDIS_READS})
    events = ",".join(f"syscalls:sys_enter_{c},syscalls:sys_exit_{c}" for c in calls)
    offset = time.time_ns() - time.monotonic_ns()
    perf = subprocess.Popen(
        ["perf", "record", "-q", "-k", "mono", "-e", events,
         "-p", ",".join([*nodes, redis]), "-o", data],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "perf.err"), "w"))
    time.sleep(1.0)
    perf.send_signal(2)
    perf.wait()
    time.sleep(0.3)
    stage_lines = []
    for path in stages:
        with open(path) as f:
            stage_lines.append(f.read().splitlines())
    output, _ = xnode.communicate()
    script = subprocess.run(
        ["perf", "script", "-i", data, "-F", "pid,tid,time,event,trace", "--ns"],
        capture_output=True, text=True).stdout
    if not script:
        with open(os.path.join(work, "perf.err")) as f:
            sys.exit(f"perf recorded nothing: {f.read()}")
    return script, stage_lines, offset, output, nodes, redis, node_socks, redis_socks


LINE = re.compile(r"\s*(\d+)/(\d+)\s+(\d+)\.(\d+):\s+syscalls:sys_(enter|exit)_(\w+):\s*(.*)")


def calls_by(script, offset):
    """(pid, fd, call) -> sorted system-clock ns of the calls' exits that moved bytes."""
    entered, out = {}, {}
    for line in script.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        pid, tid, sec, frac, kind, call, rest = m.groups()
        at = int(sec) * 10**9 + int(frac.ljust(9, "0")[:9]) + offset
        if kind == "enter":
            fd = re.search(r"fd: (0x[0-9a-f]+)", rest)
            if fd:
                entered[tid] = (int(fd.group(1), 16), at)
        else:
            fd_at = entered.pop(tid, None)
            ret = int(rest.strip(), 16) if rest.strip().startswith("0x") else -1
            if fd_at is not None and 0 < ret < 2**63:
                fd, start = fd_at
                # Writes count from their start, reads from their end.
                when = start if call in NODE_WRITES + REDIS_WRITES else at
                out.setdefault((int(pid), fd, call), []).append(when)
    return {k: sorted(v) for k, v in out.items()}


def merged(calls, pid, fd, names):
    return sorted(t for name in names for t in calls.get((pid, fd, name), []))


def first_from(times, at):
    i = bisect.bisect_left(times, at)
    return times[i] if i < len(times) else None


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] / 1000 if xs else float("nan")


PIECES = [
    ("taken -> node's write", 0, 1),
    ("write -> Redis reads it", 1, 2),
    ("Redis read -> Redis writes to the receiver", 2, 3),
    ("Redis write -> receiver's read", 3, 4),
    ("receiver's read -> received (stamp)", 4, 5),
    ("stage 4: taken -> received", 0, 5),
]


def analyse(script, stage_lines, offset, nodes, redis, node_socks, redis_socks):
    calls = calls_by(script, offset)
    node_fd, node_port = [], []
    for i, pid in enumerate(nodes):
        # The room connection: the node's Redis socket read most.
        fd = max(node_socks[i], key=lambda fd: len(calls.get((int(pid), fd, "recvfrom"), [])))
        node_fd.append(fd)
        node_port.append(node_socks[i][fd][0])
    redis_fd = []
    for port in node_port:
        fds = [fd for fd, (_, remote) in redis_socks.items() if remote == port]
        if not fds:
            sys.exit("Redis's end of a node's connection not found")
        redis_fd.append(fds[0])
    writes = [merged(calls, int(p), node_fd[i], NODE_WRITES) for i, p in enumerate(nodes)]
    reads = [merged(calls, int(p), node_fd[i], NODE_READS) for i, p in enumerate(nodes)]
    r_reads = [merged(calls, int(redis), fd, REDIS_READS) for fd in redis_fd]
    r_writes = [merged(calls, int(redis), fd, REDIS_WRITES) for fd in redis_fd]
    lo = max(t[0] for t in writes + reads + r_reads + r_writes if t)
    hi = min(t[-1] for t in writes + reads + r_reads + r_writes if t)
    published, received = [{}, {}], [{}, {}]
    for i, lines in enumerate(stage_lines):
        for line in lines:
            f = line.split()
            if len(f) == 6 and f[0] == "p":
                published[i][(f[1], int(f[2]))] = int(f[4])
            elif len(f) == 5 and f[0] == "r":
                received[i][(f[1], int(f[2]))] = int(f[3])
    rows = {kind: [[] for _ in PIECES] for kind in ("same", "cross")}
    for origin in (0, 1):
        for key, taken in published[origin].items():
            if not lo < taken < hi:
                continue
            w = first_from(writes[origin], taken)
            rr = w and first_from(r_reads[origin], w)
            for target in (0, 1):
                got = received[target].get(key)
                rw = rr and first_from(r_writes[target], rr)
                nr = rw and first_from(reads[target], rw)
                if None in (w, rr, rw, nr, got) or got >= hi:
                    continue
                points = [taken, w, rr, rw, nr, got]
                kind = "same" if origin == target else "cross"
                for j, (_, a, b) in enumerate(PIECES):
                    rows[kind][j].append(points[b] - points[a])
    return rows, [len(w) for w in writes], [len(r) for r in reads], [len(r) for r in r_reads]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bin", required=True, help="directory with storm and xnode")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--duration", type=int, default=4, help="xnode --duration (s), at least 4")
    args = parser.parse_args()
    for run in range(args.runs):
        with tempfile.TemporaryDirectory() as work:
            load = os.getloadavg()[0]
            out = run_once(args.bin, work, args.duration, {})
        script, stage_lines, offset, output, nodes, redis, node_socks, redis_socks = out
        rows, writes, reads, r_reads = analyse(
            script, stage_lines, offset, nodes, redis, node_socks, redis_socks)
        cross = [line for line in output.splitlines() if line.startswith("| two nodes | cross")]
        print(f"run {run + 1}: load {load:.1f}; node writes {writes}, node reads {reads}, "
              f"Redis reads {r_reads} in the recorded second; {cross[0] if cross else ''}")
        for kind in ("same", "cross"):
            n = len(rows[kind][0])
            print(f"  {kind} node ({n} message deliveries)")
            for j, (label, _, _) in enumerate(PIECES):
                xs = rows[kind][j]
                print(f"    {label:<45} p50 {pct(xs, .5):6.0f}  p90 {pct(xs, .9):6.0f}  "
                      f"p99 {pct(xs, .99):6.0f} us")


if __name__ == "__main__":
    main()
