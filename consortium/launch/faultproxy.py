"""A user-space TCP proxy that puts faults on links: what `tc netem` and a firewall
would do, on a kernel that has neither.

A `FaultProxy` listens on one address and forwards every connection to one upstream
address (a node's gRPC or HTTP port). Each connection belongs to a link, found from the
address it comes from (`LinkTable.link_for`: in a namespace network, the organization
whose bridge address it is; launch/linkproxy.py keeps the table in step with the links
file), and that link's faults (`LinkFaults`, launch/links.py) apply to both directions:

- delay and jitter: each chunk is delivered `delay ± jitter` after it was read, in order
  (a chunk never overtakes the one before it), without serialising the stream;
- loss: TCP hides a lost segment from the application and pays a retransmission timeout
  for it, so a chunk is "lost" with probability `loss` and then delivered an RTO later
  (max(`rto_ms`, 2 x the link's RTT), doubled per repeated loss), holding up what
  follows it (head-of-line blocking). Seeded per link: a run draws the same losses;
- bandwidth: a token bucket per link and direction, the reader waiting for tokens (the
  sender's window fills as on a slow link);
- `reset`: each chunk resets its connection (RST both ways) with this probability;
- `stall`: the connections open when it is set freeze: nothing passes either way (what
  they send is held); new connections flow;
- `partition`: nothing passes on the link, on open or new connections: accepted, then
  silent (as a dropped packet and no ICMP look); what was held flows on when it heals;
- `refuse`: new connections are reset at once and the open ones reset (a host down).

Without a table every connection is on one default link, which the attributes of the
first version still switch: `blackhole` (= partition), `reset_rate`, `delay_s`; and
the proxy as a whole:

- `kill()`: the upstream as a SIGKILLed process looks from outside: every connection
  reset (RST), new connections refused (nothing listens) until `revive()`;
- `reset_all()` resets every connection now.

The counters (`accepted` connections, `chunks` forwarded, `held` by a blocked link,
`resets`, `lost` chunks) let a test wait on what happened rather than on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from collections.abc import Callable

from consortium.launch.links import LinkFaults

CHUNK = 64 * 1024
# Chunks in flight per direction before the reader waits (a socket buffer's worth).
QUEUE_CHUNKS = 64
BURST_BYTES = 16 * 1024
MAX_RETRANSMITS = 8


class _Bucket:
    """A token bucket in bytes; tokens may go negative (a chunk larger than the burst
    waits for its deficit)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._tokens = float(BURST_BYTES)
        self._at = clock()

    def wait_s(self, size: int, rate_kbit: float) -> float:
        rate = rate_kbit * 125.0  # bytes per second
        now = self._clock()
        self._tokens = min(BURST_BYTES, self._tokens + (now - self._at) * rate)
        self._at = now
        self._tokens -= size
        return max(0.0, -self._tokens / rate)


class Link:
    """One link's faults now, its seeded random draws, its buckets and its connections."""

    def __init__(self, name: str, faults: LinkFaults, seed: int | str = 0) -> None:
        self.name = name
        self.faults = faults
        self.rng = random.Random(f"{seed}:{name}")
        self.conns: set[_Conn] = set()
        self._buckets: dict[str, _Bucket] = {}
        self._changed = asyncio.Event()

    def update(self, faults: LinkFaults) -> None:
        """New faults, now: a stall freezes the open connections, `refuse` resets them."""
        old, self.faults = self.faults, faults
        for conn in list(self.conns):
            if faults.stall and not old.stall:
                conn.frozen = True
            elif not faults.stall:
                conn.frozen = False
            if faults.refuse:
                conn.reset()
        self.notify()

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self) -> None:
        await self._changed.wait()

    def blocked(self, conn: _Conn) -> bool:
        return self.faults.partition or conn.frozen

    def delay_s(self) -> float:
        """A chunk's time on the link: delay, jitter, and its retransmissions if lost."""
        f = self.faults
        delay = f.delay_ms / 1000.0
        if f.jitter_ms:
            delay = max(0.0, delay + self.rng.uniform(-f.jitter_ms, f.jitter_ms) / 1000.0)
        if f.loss:
            rto = max(f.rto_ms / 1000.0, 4.0 * f.delay_ms / 1000.0)
            for _ in range(MAX_RETRANSMITS):
                if self.rng.random() >= f.loss:
                    break
                delay += rto
                rto *= 2
        return delay

    def bucket(self, direction: str) -> _Bucket:
        if direction not in self._buckets:
            self._buckets[direction] = _Bucket(asyncio.get_running_loop().time)
        return self._buckets[direction]


class LinkTable:
    """The links a proxy's connections belong to: `resolve` names the link of a source
    address (None: the default link)."""

    def __init__(self, seed: int | str = 0) -> None:
        self.seed = seed
        self.default = Link("*", LinkFaults(), seed)
        self.links: dict[str, Link] = {}
        self.resolve: Callable[[str], str | None] = lambda host: None

    def link_for(self, host: str) -> Link:
        name = self.resolve(host)
        if name is None:
            return self.default
        if name not in self.links:
            self.links[name] = Link(name, LinkFaults(), self.seed)
        return self.links[name]

    def set(self, name: str | None, faults: LinkFaults) -> None:
        """A link's faults (None: the default link's)."""
        if name is None:
            self.default.update(faults)
        elif name in self.links:
            self.links[name].update(faults)
        else:
            self.links[name] = Link(name, faults, self.seed)


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
        table: LinkTable | None = None,
    ) -> None:
        up_host, _, up_port = upstream.rpartition(":")
        self.upstream = (up_host or "127.0.0.1", int(up_port))
        self.host = host
        self.port = port
        self.table = table or LinkTable(seed)
        self._reset_rng = random.Random(seed)
        self.accepted = 0
        self.resets = 0
        self.chunks = 0
        self.held = 0
        self.lost = 0
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()

    # The default link's faults, as the first version set them.

    @property
    def blackhole(self) -> bool:
        return self.table.default.faults.partition

    @blackhole.setter
    def blackhole(self, on: bool) -> None:
        self._default(partition=on)

    @property
    def reset_rate(self) -> float:
        return self.table.default.faults.reset

    @reset_rate.setter
    def reset_rate(self, rate: float) -> None:
        self._default(reset=rate)

    @property
    def delay_s(self) -> float:
        return self.table.default.faults.delay_ms / 1000.0

    @delay_s.setter
    def delay_s(self, seconds: float) -> None:
        self._default(delay_ms=seconds * 1000.0)

    def _default(self, **change: object) -> None:
        self.table.default.update(self.table.default.faults.model_copy(update=change))

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
        for conn in list(self._conns):
            conn.reset()

    async def stop(self) -> None:
        await self.kill()
        self.blackhole = False  # what was held on the reset links ends

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        peer = writer.get_extra_info("peername")
        link = self.table.link_for(str(peer[0]) if peer else "")
        if link.faults.refuse:
            self.resets += 1
            _abort(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _abort(writer)
            return
        conn = _Conn(self, link, writer, up_writer)
        self._conns.add(conn)
        link.conns.add(conn)
        try:
            await asyncio.gather(
                self._pump(reader, up_writer, conn, "in"),
                self._pump(up_reader, writer, conn, "out"),
            )
        finally:
            self._conns.discard(conn)
            link.conns.discard(conn)
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: _Conn,
        direction: str,
    ) -> None:
        """Reads one direction, draws each chunk's fate and time on the link, and hands
        it to `_deliver` (which writes it when due)."""
        link = conn.link
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(QUEUE_CHUNKS)
        deliver = asyncio.create_task(self._deliver(queue, writer, conn))
        clock = asyncio.get_running_loop().time
        last = 0.0  # when the chunk before was due: none overtakes it
        try:
            while not conn.closed:
                data = await reader.read(CHUNK)
                if not data:
                    break
                if link.blocked(conn):
                    self.held += 1
                    while link.blocked(conn) and not conn.closed:
                        await link.changed()
                f = link.faults
                if f.reset and self._draw(link) < f.reset:
                    conn.reset()
                    break
                if f.rate_kbit:
                    await asyncio.sleep(link.bucket(direction).wait_s(len(data), f.rate_kbit))
                on_link = link.delay_s()
                if f.loss and on_link > f.delay_ms / 1000.0 + f.jitter_ms / 1000.0:
                    self.lost += 1
                last = max(last, clock() + on_link)
                if conn.closed:
                    break
                await queue.put((last, data))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
            await deliver

    async def _deliver(
        self,
        queue: asyncio.Queue[tuple[float, bytes] | None],
        writer: asyncio.StreamWriter,
        conn: _Conn,
    ) -> None:
        clock = asyncio.get_running_loop().time
        ended = False
        try:
            while not conn.closed:
                item = await queue.get()
                if item is None:
                    ended = True
                    break
                due, data = item
                if due > clock():
                    await asyncio.sleep(due - clock())
                while conn.link.blocked(conn) and not conn.closed:
                    await conn.link.changed()  # held on the wire
                if conn.closed:
                    break
                self.chunks += 1
                writer.write(data)
                await writer.drain()
        except OSError:
            conn.reset()
        finally:
            while not queue.empty():  # a reader waiting for room goes on, and sees closed
                queue.get_nowait()
            if ended and not conn.closed:
                with contextlib.suppress(Exception):
                    writer.write_eof()

    def _draw(self, link: Link) -> float:
        # The default link keeps the first version's draws (seeded by the proxy's seed).
        return self._reset_rng.random() if link is self.table.default else link.rng.random()


class _Conn:
    """One proxied connection: its link, both ends, and whether it was reset or frozen."""

    def __init__(
        self,
        proxy: FaultProxy,
        link: Link,
        client: asyncio.StreamWriter,
        upstream: asyncio.StreamWriter,
    ) -> None:
        self.proxy = proxy
        self.link = link
        self.client = client
        self.upstream = upstream
        self.closed = False
        self.frozen = False

    def reset(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.proxy.resets += 1
        _abort(self.client)
        _abort(self.upstream)
        self.link.notify()


def _abort(writer: asyncio.StreamWriter) -> None:
    """Closes with a TCP reset (SO_LINGER 0), as a crashed process's kernel does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
