"""A TCP proxy between the agents and a service, for the nemesis's network faults: latency and jitter,
bandwidth limits, connection resets (this kernel has no ``tc netem``; a proxy in the data path works anywhere).

One process serves any number of *links* (one per proxied service). It is asyncio and standard library only,
started as ``python toolclash/stack/proxy.py`` by :class:`ProxyProcess`, controlled over its stdin and stdout
with one JSON object per line, and it exits when its stdin closes, so it never outlives the process that
started it (it ignores Ctrl-C: that process heals and stops it).

What a fault does on a link (``set``; ``clear`` ends it and answers with the link's counters):

* **latency** ``delay_ms`` ± ``jitter_ms`` (uniform): every chunk of bytes sent *to the service* waits that long;
  order is kept (a chunk never overtakes the one before it), replies are not delayed;
* **bandwidth** ``rate_bytes_s``: each direction of the link (every connection together) passes at most that
  many bytes per second (a token bucket with 50 ms of burst);
* **reset** ``reset_share``: every open connection is reset at once (TCP RST on both sides), and that share of
  new connections is reset as soon as it is accepted, while the fault lasts.

With no fault a chunk is written as soon as it is read. A connection the service refuses is reset.

Commands (each may carry an ``id``, echoed in its answer; every answer has ``ok`` and, when false, ``error``)::

    {"op": "listen", "name": "redis", "host": "127.0.0.1", "port": 6379}   -> {"port": 41234, "bind": "127.0.0.1"}
    {"op": "set", "name": "redis", "delay_ms": 100, "jitter_ms": 20}      -> {"at": <unix s>, "reset_now": 0}
    {"op": "clear", "name": "redis", "what": ["latency"]}                  -> {"at": <unix s>, "stats": {...}}
    {"op": "stats", "name": "redis"}                                       -> {"stats": {...}}
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

CHUNK = 65536
HIGH_WATER = 8 * 1024 * 1024
"""Bytes a delayed direction may hold before the proxy stops reading from its sender (TCP pushes back)."""
BURST_S = 0.05


class ProxyError(RuntimeError):
    """The proxy could not do what it was asked (one line)."""


# ------------------------------------------------------------------------------------------ the server


class Bucket:
    """A token bucket of one direction of a link (``rate`` bytes/s, 0: unlimited); debt is waited off."""

    def __init__(self) -> None:
        self.rate = 0.0
        self.tokens = 0.0
        self.stamp = 0.0

    async def take(self, n: int) -> float:
        if not self.rate:
            return 0.0
        now = time.monotonic()
        cap = max(self.rate * BURST_S, 2048.0)
        self.tokens = min(cap, self.tokens + (now - self.stamp) * self.rate) if self.stamp else cap
        self.stamp = now
        self.tokens -= n
        if self.tokens >= 0:
            return 0.0
        wait = -self.tokens / self.rate
        await asyncio.sleep(wait)
        return wait


class Link:
    """One proxied service: its listener, its connections, its fault settings and counters."""

    def __init__(self, name: str, upstream: tuple[str, int], rng: random.Random) -> None:
        self.name = name
        self.upstream = upstream
        self.rng = rng
        self.delay_s = 0.0
        self.jitter_s = 0.0
        self.reset_share = 0.0
        self.buckets = {"up": Bucket(), "down": Bucket()}
        self.conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter | None]] = set()
        self.server: asyncio.base_events.Server | None = None
        self.stats: dict[str, float] = dict.fromkeys(
            ("connections", "active", "resets", "refused_upstream", "bytes_up", "bytes_down", "delayed_chunks",
             "delay_s_total", "throttled_s_total"), 0)

    def delay(self, direction: str) -> float:
        if direction != "up" or self.delay_s <= 0:
            return 0.0
        return max(0.0, self.delay_s + (self.rng.uniform(-self.jitter_s, self.jitter_s) if self.jitter_s else 0.0))

    @property
    def shaping(self) -> bool:
        return self.delay_s > 0 or self.buckets["up"].rate > 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats["connections"] += 1
        if self.reset_share and self.rng.random() < self.reset_share:
            self.stats["resets"] += 1
            rst(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            self.stats["refused_upstream"] += 1
            rst(writer)
            return
        pair = (writer, up_writer)
        self.conns.add(pair)
        self.stats["active"] += 1
        try:
            await asyncio.gather(Pipe(self, "up", reader, up_writer).run(),
                                 Pipe(self, "down", up_reader, writer).run())
        finally:
            self.conns.discard(pair)
            self.stats["active"] -= 1
            for w in pair:
                with contextlib.suppress(Exception):
                    w.close()

    def reset_all(self) -> int:
        n = 0
        for client, upstream in list(self.conns):
            rst(client)
            if upstream is not None:
                rst(upstream)
            n += 1
        self.conns.clear()
        self.stats["resets"] += n
        return n


def rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), not a FIN: what a crashed peer or a middlebox's reset looks like."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Pipe:
    """One direction of one connection."""

    def __init__(self, link: Link, direction: str, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        self.link, self.direction, self.src, self.dst = link, direction, src, dst
        self.pending: deque[tuple[float, bytes]] = deque()
        self.queued = 0
        self.last_due = 0.0
        self.sender: asyncio.Task[None] | None = None
        self.room = asyncio.Event()
        self.room.set()

    async def run(self) -> None:
        link, key = self.link, "bytes_" + self.direction
        bucket = link.buckets[self.direction]
        try:
            while True:
                data = await self.src.read(CHUNK)
                if not data:
                    break
                link.stats[key] += len(data)
                delay = link.delay(self.direction)
                if delay > 0 or self.pending or bucket.rate:
                    if delay > 0:
                        link.stats["delayed_chunks"] += 1
                        link.stats["delay_s_total"] += delay
                    due = max(time.monotonic() + delay, self.last_due)
                    self.last_due = due
                    self.pending.append((due, data))
                    self.queued += len(data)
                    if self.sender is None or self.sender.done():
                        self.sender = asyncio.ensure_future(self._send())
                    if self.queued > HIGH_WATER:
                        self.room.clear()
                        await self.room.wait()
                else:
                    self.dst.write(data)
                    await self.dst.drain()
            if self.sender is not None:
                await self.sender
            if self.dst.can_write_eof() and not self.dst.is_closing():
                self.dst.write_eof()
        except (OSError, asyncio.IncompleteReadError, RuntimeError):
            with contextlib.suppress(Exception):
                self.dst.close()
        finally:
            if self.sender is not None and not self.sender.done():
                self.sender.cancel()

    async def _send(self) -> None:
        bucket = self.link.buckets[self.direction]
        try:
            while self.pending:
                due, data = self.pending[0]
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                self.pending.popleft()
                self.link.stats["throttled_s_total"] += await bucket.take(len(data))
                self.dst.write(data)
                await self.dst.drain()
                self.queued -= len(data)
                if self.queued <= HIGH_WATER // 2:
                    self.room.set()
        except (OSError, RuntimeError):
            self.pending.clear()
            self.room.set()
            with contextlib.suppress(Exception):
                self.dst.close()


class Proxy:
    """Every link of the process, and the commands that change them."""

    def __init__(self) -> None:
        self.links: dict[str, Link] = {}
        self.rng = random.Random()

    async def command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        op = cmd.get("op")
        if op == "listen":
            return await self._listen(cmd)
        link = self.links.get(str(cmd.get("name")))
        if link is None:
            raise ProxyError(f"no link named {cmd.get('name')!r}")
        if op == "set":
            if cmd.get("delay_ms") is not None:
                link.delay_s = float(cmd["delay_ms"]) / 1000.0
                link.jitter_s = float(cmd.get("jitter_ms") or 0.0) / 1000.0
            if cmd.get("rate_bytes_s") is not None:
                for bucket in link.buckets.values():
                    bucket.rate, bucket.stamp = float(cmd["rate_bytes_s"]), 0.0
            reset_now = 0
            if cmd.get("reset_share") is not None:
                link.reset_share = float(cmd["reset_share"])
                reset_now = link.reset_all()
            return {"at": time.time(), "reset_now": reset_now}
        if op == "clear":
            what = cmd.get("what") or ["latency", "bandwidth", "reset"]
            if "latency" in what:
                link.delay_s = link.jitter_s = 0.0
            if "bandwidth" in what:
                for bucket in link.buckets.values():
                    bucket.rate = 0.0
            if "reset" in what:
                link.reset_share = 0.0
            return {"at": time.time(), "stats": dict(link.stats)}
        if op == "stats":
            return {"stats": dict(link.stats)}
        raise ProxyError(f"unknown op {op!r}")

    async def _listen(self, cmd: dict[str, Any]) -> dict[str, Any]:
        name, host, port = str(cmd["name"]), str(cmd["host"]), int(cmd["port"])
        if name in self.links:
            raise ProxyError(f"a link named {name!r} exists already")
        link = Link(name, (host, port), self.rng)
        bind = str(cmd.get("bind") or host)
        try:
            link.server = await asyncio.start_server(link.handle, bind, 0)
        except OSError:  # the service's address is not one of this host's: listen on the loopback
            bind = "127.0.0.1"
            link.server = await asyncio.start_server(link.handle, bind, 0)
        self.links[name] = link
        return {"port": link.server.sockets[0].getsockname()[1], "bind": bind}


async def serve() -> None:
    proxy = Proxy()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout
    while True:
        line = await reader.readline()
        if not line:
            break
        try:
            cmd = json.loads(line)
            if cmd.get("op") == "close":
                break
            answer = {"ok": True, **(await proxy.command(cmd))}
        except Exception as exc:  # noqa: BLE001 - every failure is an answer, never a dead proxy
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        if isinstance(cmd, dict) and "id" in cmd:
            answer["id"] = cmd["id"]
        out.write(json.dumps(answer) + "\n")
        out.flush()
    for link in proxy.links.values():
        if link.server is not None:
            link.server.close()
        link.reset_all()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the process that started it heals and stops it
    asyncio.run(serve())


# ------------------------------------------------------------------------------------------ the client


class ProxyProcess:
    """The proxy process, from the side that starts and controls it (gevent-friendly under monkey patching)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._log: Any = None

    def start(self) -> ProxyProcess:
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([sys.executable, "-u", "-P", str(Path(__file__).resolve())], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, close_fds=True,
                                     env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one command, wait for its answer; :class:`ProxyError` when it failed or the proxy is gone."""
        proc = self.proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise ProxyError("the proxy is not running")
        with self._lock:
            ident = next(self._ids)
            try:
                proc.stdin.write((json.dumps({"op": op, "id": ident, **fields}) + "\n").encode())
                proc.stdin.flush()
                line = proc.stdout.readline()
            except OSError as exc:
                raise ProxyError(f"the proxy is gone ({exc}){self._tail()}") from None
        if not line:
            raise ProxyError(f"the proxy exited{self._tail()}")
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            raise ProxyError(str(answer.get("error")))
        return answer

    def listen(self, name: str, host: str, port: int, bind: str | None = None) -> tuple[str, int]:
        """Proxy *host*:*port* as link *name*; ``(address, port)`` the clients must use instead."""
        answer = self.request("listen", name=name, host=host, port=port, bind=bind)
        return str(answer["bind"]), int(answer["port"])

    def _tail(self) -> str:
        if self._log is None:
            return ""
        with contextlib.suppress(OSError):
            self._log.seek(0)
            text = self._log.read()[-400:].decode(errors="replace").strip()
            if text:
                return ": " + text.splitlines()[-1]
        return ""

    def close(self, timeout: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if proc.stdin is not None:
                proc.stdin.close()  # the proxy exits at the end of its input
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
        for stream in (proc.stdout,):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if self._log is not None:
            self._log.close()
            self._log = None


if __name__ == "__main__":
    main()
