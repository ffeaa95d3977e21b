#!/usr/bin/env python3
"""`storm echo --proto ws` out of descriptors: does it serve, and recover?

    python3 benches/e2e/descriptor_flood.py STORM RUNTIME [LIMIT] [CONNECTIONS] [SECONDS]

Starts `STORM echo --proto ws --runtime RUNTIME` on 127.0.0.1:0 with its
descriptor limit lowered to LIMIT (default 1024, `ulimit -n` in a shell that
then becomes the server), opens CONNECTIONS (default 1500) loopback
connections at once, each sending a WebSocket upgrade request and waiting
at most SECONDS (default 15) for the 101, and holds them all until then.
Prints how many upgraded, the server's open descriptors (/proc/PID/fd: at
the start, the most seen, at the end of the flood, and 1 s after every
connection closed), and whether a fresh client then upgrades and echoes
within 10 s. Loopback only, bounded in count and time; the server is killed
at the end. Linux (for /proc).
"""
import asyncio
import os
import subprocess
import sys
import time

UPGRADE = (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
# A masked text frame "ping" (all-zero mask), and the server's echo of it.
PING = bytes([0x81, 0x84, 0, 0, 0, 0]) + b"ping"
PONG = bytes([0x81, 0x04]) + b"ping"


def open_fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def left(deadline):
    return max(0.01, deadline - time.monotonic())


async def connect_and_upgrade(addr, deadline, held):
    """The connection's reader and writer once it upgraded before `deadline`,
    else None; its writer goes into `held`, to be closed by the caller."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*addr), left(deadline))
    except (OSError, asyncio.TimeoutError):
        return None
    held.append(writer)
    try:
        writer.write(UPGRADE)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), left(deadline))
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
        return None
    return (reader, writer) if head.startswith(b"HTTP/1.1 101") else None


async def upgrade(addr, deadline, held):
    return await connect_and_upgrade(addr, deadline, held) is not None


async def upgrades_and_echoes(addr, seconds):
    deadline = time.monotonic() + seconds
    held = []
    try:
        upgraded = await connect_and_upgrade(addr, deadline, held)
        if upgraded is None:
            return False
        reader, writer = upgraded
        writer.write(PING)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(PONG)), left(deadline)) == PONG
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        for writer in held:
            writer.close()


async def main():
    storm, runtime = sys.argv[1], sys.argv[2]
    limit = int(sys.argv[3]) if len(sys.argv) > 3 else 1024
    connections = int(sys.argv[4]) if len(sys.argv) > 4 else 1500
    seconds = float(sys.argv[5]) if len(sys.argv) > 5 else 15.0
    server = subprocess.Popen(
        ["sh", "-c", f'ulimit -n {limit} && exec "$0" "$@"', storm, "echo", "--proto", "ws",
         "--addr", "127.0.0.1:0", "--runtime", runtime],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        banner = server.stdout.readline().decode()
        host, port = banner.strip().rsplit("://", 1)[1].rsplit(":", 1)
        addr = (host, int(port))
        at_start = open_fds(server.pid)
        held = []
        deadline = time.monotonic() + seconds
        flood = [asyncio.create_task(upgrade(addr, deadline, held)) for _ in range(connections)]
        most = at_start
        while not all(task.done() for task in flood):
            most = max(most, open_fds(server.pid))
            await asyncio.sleep(0.1)
        upgraded = sum(await asyncio.gather(*flood))
        at_end = open_fds(server.pid)
        for writer in held:
            writer.close()
        started = time.monotonic()
        live = await upgrades_and_echoes(addr, 10.0)
        took = time.monotonic() - started
        await asyncio.sleep(1)
        after = open_fds(server.pid)
        print(f"{runtime}: limit {limit}, {connections} connections: {upgraded} upgraded in "
              f"{seconds:g} s; descriptors {at_start} at the start, {most} at most, {at_end} at "
              f"the end of the flood, {after} 1 s after; a fresh client upgrades and echoes: "
              f"{'yes' if live else 'no'} ({took:.2f} s)")
    finally:
        server.kill()
        server.wait()


asyncio.run(main())
