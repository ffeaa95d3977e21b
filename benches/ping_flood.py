#!/usr/bin/env python3
"""Ping flood: how much memory `storm echo --proto ws` takes for a peer that
pings as fast as it can and never reads.

usage: benches/ping_flood.py STORM [--runtime tokio|smol|std] [--pings 300000]
                             [--seconds 10]

Starts `STORM echo --proto ws --addr 127.0.0.1:0 --runtime RUNTIME` (its own
child, loopback only) and reads the server's RssAnon from /proc/PID/status.
One client upgrades, then writes masked pings of 125 bytes (131 on the wire)
as fast as its socket takes them and never reads, until every ping is
written, or no write made progress for a second (the server stopped
reading), or SECONDS passed. Once the server's RssAnon has not changed for
half a second (at most 10 s), it is read again; the client then closes, the
server is stopped (SIGTERM, then SIGKILL after 5 s) and one JSON line and one
line for people are printed. stdlib only; Linux (/proc).
"""
import argparse
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time

UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
PAYLOAD = 125


# The frames a flood sends: pings (answered with pongs), or binary messages
# (echoed back as data), for comparing the two under the same send limit.
OPCODES = {"ping": 0x89, "binary": 0x82}


def masked_frame(kind):
    """One final frame of `kind`, masked as a client must, 125 bytes of
    payload."""
    key = bytes([0x12, 0x34, 0x56, 0x78])
    payload = bytes(b ^ key[i % 4] for i, b in enumerate(b"p" * PAYLOAD))
    return bytes([OPCODES[kind], 0x80 | PAYLOAD]) + key + payload


def rss_anon_kib(pid):
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise RuntimeError("no RssAnon in /proc/PID/status")


def settled_rss(pid, quiet=0.5, limit=10.0):
    """RssAnon once it has not changed for `quiet` seconds (at most `limit`)."""
    deadline = time.monotonic() + limit
    last, since = rss_anon_kib(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = rss_anon_kib(pid)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


def start_server(storm, runtime):
    server = subprocess.Popen(
        [storm, "echo", "--proto", "ws", "--addr", "127.0.0.1:0", "--runtime", runtime],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = server.stdout.readline()
    found = re.search(r"ws://(127\.0\.0\.1):(\d+)", line)
    if not found:
        server.kill()
        raise RuntimeError(f"no listening address in {line!r}")
    return server, (found.group(1), int(found.group(2)))


def stop(server):
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=5)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def upgrade(addr):
    sock = socket.create_connection(addr, timeout=10)
    sock.sendall(UPGRADE)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("the server closed during the upgrade")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"not upgraded: {head[:80]!r}")
    sock.setblocking(False)
    return sock


def flood(sock, pings, seconds, kind):
    """Writes up to `pings` frames of `kind`; returns (bytes written, why it
    stopped)."""
    ping = masked_frame(kind)
    batch = ping * 500
    total = pings * len(ping)
    written = 0
    deadline = time.monotonic() + seconds
    while written < total:
        if time.monotonic() >= deadline:
            return written, "time"
        _, writable, _ = select.select([], [sock], [], 1.0)
        if not writable:
            return written, "stalled"
        offset = written % len(batch)
        chunk = batch[offset:offset + min(len(batch) - offset, total - written)]
        try:
            written += sock.send(chunk)
        except BlockingIOError:
            pass
    return written, "all written"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("storm", help="path to the storm binary")
    parser.add_argument("--runtime", default="tokio", choices=["tokio", "smol", "std"])
    parser.add_argument("--pings", type=int, default=300_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--frames", default="ping", choices=sorted(OPCODES),
        help="flood with pings (default) or with binary messages the echo "
        "sends back, to compare the two under the same send limit")
    args = parser.parse_args()
    if not 0 < args.pings <= 1_000_000 or not 0 < args.seconds <= 60:
        parser.error("--pings in 1..=1000000, --seconds in (0, 60]")
    server, addr = start_server(args.storm, args.runtime)
    try:
        sock = upgrade(addr)
        before = settled_rss(server.pid)
        written, why = flood(sock, args.pings, args.seconds, args.frames)
        after = settled_rss(server.pid)
        sock.close()
    finally:
        stop(server)
    result = {
        "runtime": args.runtime,
        "frames": args.frames,
        "pings": args.pings,
        "written_bytes": written,
        "stopped": why,
        "rss_anon_before_kib": before,
        "rss_anon_after_kib": after,
        "growth_kib": after - before,
    }
    print(json.dumps(result))
    print(
        f"{args.runtime}: {written / 131:.0f} {args.frames} frames written ({why}), "
        f"RssAnon {before} -> {after} KiB (+{(after - before) / 1024:.1f} MiB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
