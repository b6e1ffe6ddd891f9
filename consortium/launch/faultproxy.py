"""A user-space TCP proxy that puts faults on one link: what `tc netem` and a firewall
would do, on a kernel that has neither.

A `FaultProxy` listens on loopback and forwards every connection to one upstream
address (a node's gRPC port, say); the roster lists the proxy's address, and the link's
faults are switched at will while it runs:

- `kill()`: the upstream as a SIGKILLed process looks from outside: every connection
  reset (RST), new connections refused (nothing listens) until `revive()`;
- `blackhole = True`: connections accepted, nothing forwarded either way until it is
  off again (a silent partition, a stalled host: what was sent is held, as TCP holds and
  retransmits it, and delivered in order when the link heals);
- `reset_rate`: each forwarded chunk resets its connection with this probability
  (seeded: the same run resets the same chunks); `reset_all()` resets every connection
  now;
- `delay_s`: each chunk waits this long before it is forwarded.

The counters (`accepted` connections, `chunks` forwarded, `held` by a black hole,
`resets`) let a test wait on what happened rather than on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct

CHUNK = 64 * 1024


class FaultProxy:
    def __init__(
        self, upstream: str, *, host: str = "127.0.0.1", port: int = 0, seed: int = 0
    ) -> None:
        up_host, _, up_port = upstream.rpartition(":")
        self.upstream = (up_host or "127.0.0.1", int(up_port))
        self.host = host
        self.port = port
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.reset_rate = 0.0
        self.delay_s = 0.0
        self.accepted = 0
        self.resets = 0
        self.chunks = 0
        self.held = 0
        self._rng = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()

    @property
    def blackhole(self) -> bool:
        return not self._flowing.is_set()

    @blackhole.setter
    def blackhole(self, on: bool) -> None:
        if on:
            self._flowing.clear()
        else:
            self._flowing.set()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def kill(self) -> None:
        """Refuses new connections and resets every open one."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        self.reset_all()

    async def revive(self) -> None:
        """Listens again, on the same port."""
        if self._server is None:
            await self.start()

    def reset_all(self) -> None:
        for link in list(self._links):
            self._reset(link)

    async def stop(self) -> None:
        await self.kill()
        self.blackhole = False  # what was held on the reset links ends

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _abort(writer)
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        try:
            await asyncio.gather(
                self._pump(reader, up_writer, link), self._pump(up_reader, writer, link)
            )
        finally:
            self._links.discard(link)
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        try:
            while not link.closed:
                data = await reader.read(CHUNK)
                if not data:
                    break
                if self.blackhole:
                    self.held += 1
                    await self._flowing.wait()
                if self.reset_rate and self._rng.random() < self.reset_rate:
                    self._reset(link)
                    break
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                if link.closed:
                    break
                self.chunks += 1
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if not link.closed:
                with contextlib.suppress(Exception):
                    writer.write_eof()

    def _reset(self, link: _Link) -> None:
        if link.closed:
            return
        link.closed = True
        self.resets += 1
        _abort(link.client)
        _abort(link.upstream)


class _Link:
    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.closed = False


def _abort(writer: asyncio.StreamWriter) -> None:
    """Closes with a TCP reset (SO_LINGER 0), as a crashed process's kernel does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
