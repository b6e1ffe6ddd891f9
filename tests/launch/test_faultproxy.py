"""The fault proxy on loopback, one fault at a time, against a TCP echo server: per-link
faults (connections from 127.0.0.2 are on link acme:globex, from 127.0.0.3 on
acme:initech), changed while connections are open. Waits are on conditions (the proxy's
counters); a delay is checked as a lower bound, which the proxy guarantees, never as an
upper one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from consortium.launch.faultproxy import BURST_BYTES, FaultProxy, LinkTable
from consortium.launch.links import LinkFaults

SOURCES = {"127.0.0.2": "acme:globex", "127.0.0.3": "acme:initech"}


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.005)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


@pytest_asyncio.fixture
async def proxy() -> AsyncIterator[FaultProxy]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    table = LinkTable(seed=3)
    table.resolve = SOURCES.get
    p = await FaultProxy(f"127.0.0.1:{port}", table=table).start()
    try:
        yield p
    finally:
        await p.stop()
        server.close()
        await server.wait_closed()


async def connect(
    proxy: FaultProxy, source: str = "127.0.0.2"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(proxy.host, proxy.port, local_addr=(source, 0))


async def round_trip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> bytes:
    writer.write(data)
    await writer.drain()
    return await reader.readexactly(len(data))


def set_link(proxy: FaultProxy, link: str, **faults: object) -> None:
    proxy.table.set(link, LinkFaults.model_validate(faults))


async def test_a_clean_link_forwards_both_ways(proxy: FaultProxy) -> None:
    reader, writer = await connect(proxy)
    assert await round_trip(reader, writer, b"hello") == b"hello"
    writer.close()


async def test_delay_holds_each_direction_and_keeps_the_stream_whole(proxy: FaultProxy) -> None:
    set_link(proxy, "acme:globex", delay_ms=40, jitter_ms=20)
    reader, writer = await connect(proxy)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await round_trip(reader, writer, b"x") == b"x"
    # One way at least delay - jitter, twice (a lower bound: never shorter).
    assert loop.time() - started >= 2 * 0.020
    # Many small writes with jitter arrive whole and in order (nothing overtakes).
    payload = b"".join(f"{i:05d}".encode() for i in range(400))
    for i in range(0, len(payload), 5):
        writer.write(payload[i : i + 5])
    await writer.drain()
    assert await reader.readexactly(len(payload)) == payload
    writer.close()


async def test_the_delay_is_per_link(proxy: FaultProxy) -> None:
    set_link(proxy, "acme:globex", partition=True)
    reader, writer = await connect(proxy, "127.0.0.3")  # acme:initech: clean
    assert await round_trip(reader, writer, b"other link") == b"other link"
    writer.close()


async def test_loss_costs_retransmission_timeouts_and_loses_no_byte(proxy: FaultProxy) -> None:
    set_link(proxy, "acme:globex", loss=0.3, rto_ms=5)
    reader, writer = await connect(proxy)
    payloads = [bytes([i]) * 100 for i in range(40)]
    for p in payloads:
        assert await round_trip(reader, writer, p) == p
    assert proxy.lost > 0  # seeded: this run loses the same chunks each time
    writer.close()


async def test_rate_limits_each_direction(proxy: FaultProxy) -> None:
    set_link(proxy, "acme:globex", rate_kbit=8000)  # 1 MB/s
    reader, writer = await connect(proxy)
    size = 400_000
    loop = asyncio.get_running_loop()
    started = loop.time()
    writer.write(b"r" * size)
    await writer.drain()
    assert await reader.readexactly(size) == b"r" * size
    # The bucket lets a burst through, then 1 MB/s: a lower bound.
    assert loop.time() - started >= (size - BURST_BYTES) / 1_000_000


async def test_reset_rate_resets_connections(proxy: FaultProxy) -> None:
    set_link(proxy, "acme:globex", reset=1.0)
    reader, writer = await connect(proxy)
    writer.write(b"boom")
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await reader.readexactly(4)
    assert proxy.resets >= 1


async def test_a_stall_freezes_open_connections_and_lets_new_ones_pass(proxy: FaultProxy) -> None:
    reader, writer = await connect(proxy)
    assert await round_trip(reader, writer, b"before") == b"before"
    set_link(proxy, "acme:globex", stall=True)
    held = proxy.held
    writer.write(b"frozen")
    await writer.drain()
    await until(lambda: proxy.held > held, "the chunk is held")
    fresh_reader, fresh_writer = await connect(proxy)
    assert await round_trip(fresh_reader, fresh_writer, b"fresh") == b"fresh"
    set_link(proxy, "acme:globex")  # healed: the held chunk goes on
    assert await reader.readexactly(6) == b"frozen"
    for w in (writer, fresh_writer):
        w.close()


async def test_a_partition_holds_everything_until_it_heals(proxy: FaultProxy) -> None:
    set_link(proxy, "acme:globex", partition=True)
    reader, writer = await connect(proxy)  # accepted: the kernel answers the SYN
    held = proxy.held
    writer.write(b"into the void")
    await writer.drain()
    await until(lambda: proxy.held > held, "the chunk is held")
    read = asyncio.create_task(reader.readexactly(13))
    await until(lambda: proxy.held > held, "still held")
    assert not read.done()
    set_link(proxy, "acme:globex", partition=False)
    assert await read == b"into the void"
    writer.close()


async def test_refuse_resets_open_connections_and_new_ones(proxy: FaultProxy) -> None:
    reader, writer = await connect(proxy)
    assert await round_trip(reader, writer, b"up") == b"up"
    set_link(proxy, "acme:globex", refuse=True)
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await round_trip(reader, writer, b"down")
    reader, writer = await connect(proxy)
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await round_trip(reader, writer, b"again")
    set_link(proxy, "acme:globex")
    reader, writer = await connect(proxy)
    assert await round_trip(reader, writer, b"back") == b"back"
    writer.close()


async def test_the_first_versions_switches_still_work(proxy: FaultProxy) -> None:
    """blackhole / reset_rate / delay_s act on the default link (an unlisted source)."""
    proxy.blackhole = True
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    held = proxy.held
    writer.write(b"x")
    await until(lambda: proxy.held > held, "held by the black hole")
    proxy.blackhole = False
    assert await reader.readexactly(1) == b"x"
    proxy.delay_s = 0.01
    assert proxy.delay_s == pytest.approx(0.01)
    assert await round_trip(reader, writer, b"y") == b"y"
    await proxy.kill()
    with pytest.raises(OSError):
        await asyncio.open_connection(proxy.host, proxy.port)
    await proxy.revive()
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    assert await round_trip(reader, writer, b"z") == b"z"
    writer.close()
