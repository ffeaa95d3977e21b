#!/usr/bin/env python3
"""Where the Redis leg's time goes inside a node: socket reads against stages.

Runs `xnode --stages` (two `storm chat` nodes on one Redis), records with
`perf` every `recvfrom` of one of the two backplane nodes while the load
runs, and sets the kernel's times of that node's reads of its two Redis
connections against the node's stage stamps (`STORM_BACKPLANE_STAGES`):

- for each room message the node published and received back (its own
  echo, `publish_ordered`): when its publisher connection's socket was read
  (the last read before the pipeline's reply was parsed) and when its
  subscription connection's socket was read (the last read before the
  subscriber had the message);
- so stage 3 (taken -> reply parsed) and stage 4 (taken -> received) split
  into Redis and the sockets up to the node's read, and the node's own way
  from the read to the task that stamps.

The two connections are told apart by their fds: of the node's sockets
connected to Redis's port, the two it read most often; the lower fd is the
subscription connection (made first when the backplane starts), the other
the publisher's.

Needs `perf` (tracepoints syscalls:sys_{enter,exit}_recvfrom) and root or
perf_event_paranoid <= 1. perf's clock is CLOCK_MONOTONIC; the stamps are
on the system clock: the offset between the two is read once, as the
recording starts.

    python3 benches/e2e/socket_stages.py --bin target/release [--runs 3]
"""

import argparse
import bisect
import os
import re
import subprocess
import sys
import tempfile
import time


def run_once(bin_dir, work, duration):
    """One xnode run; returns (perf script text, stage lines, offset, xnode output)."""
    xnode = subprocess.Popen(
        [os.path.join(bin_dir, "xnode"), "--storm", os.path.join(bin_dir, "storm"),
         "--sessions", "10", "--rate", "10000", "--duration", str(duration), "--stages"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    node = None
    deadline = time.time() + 30
    while node is None and time.time() < deadline:
        out = subprocess.run(["pgrep", "-P", str(xnode.pid), "-f", "backplane"],
                             capture_output=True, text=True).stdout.split()
        node = out[0] if out else None
        time.sleep(0.05)
    if node is None:
        xnode.kill()
        sys.exit("no backplane node appeared")
    # Until the child has exec'd `storm` (before, its environment is xnode's).
    stages_file = None
    while stages_file is None and time.time() < deadline:
        with open(f"/proc/{node}/environ", "rb") as f:
            env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        stages_file = env.get(b"STORM_BACKPLANE_STAGES", b"").decode() or None
        time.sleep(0.01)
    with open(f"/proc/{node}/cmdline", "rb") as f:
        url = [a for a in f.read().split(b"\0") if a.startswith(b"redis://")][0].decode()
    redis_port = int(url.rsplit(":", 1)[1].strip("/"))
    # The load starts once both nodes are up; record its middle second.
    time.sleep(1.2)
    data = os.path.join(work, "perf.data")
    offset = time.time_ns() - time.monotonic_ns()
    perf = subprocess.Popen(
        ["perf", "record", "-q", "-k", "mono", "-e",
         "syscalls:sys_enter_recvfrom,syscalls:sys_exit_recvfrom",
         "-p", node, "-o", data], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    perf.send_signal(2)
    perf.wait()
    redis_fds = fds_to(node, redis_port)
    # The stamps are flushed every 100 ms; read them before xnode ends and
    # removes the file.
    time.sleep(0.3)
    with open(stages_file) as f:
        stage_lines = f.read().splitlines()
    output, _ = xnode.communicate()
    script = subprocess.run(["perf", "script", "-i", data, "-F", "tid,time,event,trace", "--ns"],
                            capture_output=True, text=True).stdout
    return script, stage_lines, offset, output, redis_fds


def fds_to(pid, port):
    """The fds of `pid`'s TCP connections to 127.0.0.1:`port`."""
    inodes = set()
    with open(f"/proc/{pid}/net/tcp") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            if int(fields[2].split(":")[1], 16) == port:
                inodes.add(fields[9])
    fds = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            fds.add(int(fd))
    return fds


def reads_by_fd(script, offset):
    """Successful recvfrom exits per fd, as sorted system-clock ns."""
    entered, reads = {}, {}
    for line in script.splitlines():
        m = re.match(r"\s*(\d+)\s+(\d+)\.(\d+):\s+syscalls:sys_(enter|exit)_recvfrom:\s*(.*)", line)
        if not m:
            continue
        tid, sec, frac, kind, rest = m.groups()
        at = int(sec) * 10**9 + int(frac.ljust(9, "0")[:9]) + offset
        if kind == "enter":
            entered[tid] = int(rest.split("fd: ")[1].split(",")[0], 16)
        else:
            fd, ret = entered.pop(tid, None), int(rest.strip(), 16)
            if fd is not None and 0 < ret < 2**63:
                reads.setdefault(fd, []).append(at)
    return {fd: sorted(times) for fd, times in reads.items()}


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] / 1000 if xs else float("nan")


def analyse(script, stage_lines, offset, redis_fds):
    reads = {fd: times for fd, times in reads_by_fd(script, offset).items() if fd in redis_fds}
    busiest = sorted(sorted(reads, key=lambda fd: len(reads[fd]))[-2:])
    sub_fd, pub_fd = busiest
    published, received = {}, {}
    for line in stage_lines:
        f = line.split()
        if len(f) == 6 and f[0] == "p":
            published[(f[1], int(f[2]))] = (int(f[4]), int(f[5]))
        elif len(f) == 5 and f[0] == "r":
            received[(f[1], int(f[2]))] = int(f[3])
    lo = max(reads[sub_fd][0], reads[pub_fd][0])
    hi = min(reads[sub_fd][-1], reads[pub_fd][-1])

    def last_read(fd, at):
        i = bisect.bisect_right(reads[fd], at) - 1
        return reads[fd][i] if i >= 0 else None

    rows = {k: [] for k in ("s3", "s4", "pub_read", "sub_read", "read_to_reply", "read_to_sub")}
    for key, (taken, replied) in published.items():
        got = received.get(key)
        if got is None or not lo < replied < hi or not lo < got < hi:
            continue
        pub_read, sub_read = last_read(pub_fd, replied), last_read(sub_fd, got)
        if pub_read is None or sub_read is None or pub_read < taken or sub_read < taken:
            continue
        rows["s3"].append(replied - taken)
        rows["s4"].append(got - taken)
        rows["pub_read"].append(pub_read - taken)
        rows["sub_read"].append(sub_read - taken)
        rows["read_to_reply"].append(replied - pub_read)
        rows["read_to_sub"].append(got - sub_read)
    return rows, (sub_fd, len(reads[sub_fd])), (pub_fd, len(reads[pub_fd]))


LABELS = [
    ("s3", "3 taken -> reply parsed (publisher task)"),
    ("pub_read", "  taken -> publisher connection's socket read"),
    ("read_to_reply", "  that read -> reply parsed"),
    ("s4", "4 taken -> received (subscriber side, own echo)"),
    ("sub_read", "  taken -> subscription connection's socket read"),
    ("read_to_sub", "  that read -> received"),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bin", required=True, help="directory with storm and xnode")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--duration", type=int, default=3, help="xnode --duration (s), at least 3")
    args = parser.parse_args()
    for run in range(args.runs):
        with tempfile.TemporaryDirectory() as work:
            load = os.getloadavg()[0]
            script, stage_lines, offset, output, redis_fds = run_once(args.bin, work, args.duration)
        rows, sub, pub = analyse(script, stage_lines, offset, redis_fds)
        cross = [line for line in output.splitlines() if line.startswith("| two nodes | cross")]
        print(f"run {run + 1}: load {load:.1f}; {len(rows['s3'])} own messages; "
              f"reads: subscription fd {sub[0]} {sub[1]}, publisher fd {pub[0]} {pub[1]}; "
              f"{cross[0] if cross else ''}")
        for key, label in LABELS:
            xs = rows[key]
            print(f"  {label:<50} p50 {pct(xs, .5):6.0f}  p90 {pct(xs, .9):6.0f}  p99 {pct(xs, .99):6.0f} us")


if __name__ == "__main__":
    main()
