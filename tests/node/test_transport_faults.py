"""How a call's failure reads when the network, not the peer, fails it: a real gRPC
server behind the fault proxy (launch/faultproxy.py), each link fault switched on, and
`failure_of` (node/peers.py) naming what the outbound exchange tells the assessor. Every
transport fault — refused, reset before or in the middle of a stream, a partition or a
stall until the deadline — must read as a NETWORK_FAILURE, which the reputation engine
does not count against the peer (tests/trust/test_reputation.py), while what only the
peer can do — answer in a way that fails verification, or end a call without a reply —
is evidence. README: "Peers that die, stall or come back"."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from a2a.types import a2a_pb2

from consortium.launch.faultproxy import FaultProxy, LinkTable
from consortium.launch.links import LinkFaults
from consortium.node.peers import failure_of
from consortium.trust.reputation import NETWORK_FAILURES, Verdict
from consortium.trust.reputation_engine import ReputationAssessor

LINK = "acme:globex"


class Server:
    """A unary method and a server-streaming one (three messages, the last when the
    test releases it)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.first_sent = asyncio.Event()

    async def unary(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    async def stream(
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        yield b"first"
        self.first_sent.set()
        await self.release.wait()
        yield b"second"


@pytest_asyncio.fixture
async def link() -> AsyncIterator[tuple[FaultProxy, Server]]:
    impl = Server()
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "t.T",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(impl.unary),
            "Stream": grpc.unary_stream_rpc_method_handler(impl.stream),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    table = LinkTable()
    table.resolve = lambda host: LINK
    proxy = await FaultProxy(f"127.0.0.1:{port}", table=table).start()
    try:
        yield proxy, impl
    finally:
        impl.release.set()
        await proxy.stop()
        await server.stop(0)


def faults(proxy: FaultProxy, **kw: object) -> None:
    proxy.table.set(LINK, LinkFaults.model_validate(kw))


async def failure(call: Callable[[grpc.aio.Channel], Awaitable[object]], proxy: FaultProxy) -> str:
    async with grpc.aio.insecure_channel(proxy.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call(channel)
    return failure_of(e.value)


async def unary(channel: grpc.aio.Channel, timeout: float = 10.0) -> object:
    return await channel.unary_unary("/t.T/Unary")(b"x", timeout=timeout)


async def test_a_refused_link_is_unreachable(link: tuple[FaultProxy, Server]) -> None:
    proxy, _ = link
    faults(proxy, refuse=True)
    assert await failure(unary, proxy) == "unreachable"


async def test_a_reset_link_is_unreachable(link: tuple[FaultProxy, Server]) -> None:
    proxy, _ = link
    faults(proxy, reset=1.0)
    assert await failure(unary, proxy) == "unreachable"


async def test_a_partition_until_the_deadline_is_a_timeout(link: tuple[FaultProxy, Server]) -> None:
    proxy, _ = link
    faults(proxy, partition=True)
    assert await failure(lambda c: unary(c, timeout=0.5), proxy) == "timeout"


async def test_a_stall_in_the_middle_of_a_stream(link: tuple[FaultProxy, Server]) -> None:
    """Bytes came, then the link froze: the deadline passes; still the network's."""
    proxy, impl = link

    async def call(channel: grpc.aio.Channel) -> object:
        stream = channel.unary_stream("/t.T/Stream")(b"x", timeout=1.0)
        assert await stream.read() == b"first"
        faults(proxy, stall=True)
        impl.release.set()
        return await stream.read()

    assert await failure(call, proxy) == "timeout"


async def test_a_reset_in_the_middle_of_a_stream(link: tuple[FaultProxy, Server]) -> None:
    proxy, impl = link

    async def call(channel: grpc.aio.Channel) -> object:
        stream = channel.unary_stream("/t.T/Stream")(b"x", timeout=10.0)
        assert await stream.read() == b"first"
        faults(proxy, refuse=True)  # every open connection on the link reset now
        impl.release.set()
        return await stream.read()

    assert await failure(call, proxy) == "unreachable"


async def test_a_clean_link_answers(link: tuple[FaultProxy, Server]) -> None:
    proxy, _ = link
    faults(proxy, delay_ms=5, loss=0.2, rto_ms=5)
    async with grpc.aio.insecure_channel(proxy.address) as channel:
        assert await unary(channel) == b"x"


def test_transport_failures_are_not_evidence_and_the_peers_doing_is(tmp_path: Path) -> None:
    """What each code does to a reputation: the network failures nothing, a refused
    (unverifiable) answer and a call the peer ended without a reply count against it."""
    engine = ReputationAssessor.open(tmp_path / "trust.sqlite3", members=["globex"])
    request = a2a_pb2.Message(message_id="m")
    for code in ("unreachable", "timeout"):
        assert code in NETWORK_FAILURES
        engine.assess(Verdict("globex", request, None, failure=code))
    assert engine.model_reputation("globex", "").evidence == 0
    engine.assess(Verdict("globex", request, None, refusal="bad_signature"))
    engine.assess(Verdict("globex", request, None, failure="no_reply"))
    rep = engine.model_reputation("globex", "")
    assert rep.counts.get(("protocol", False)) == 2
    engine.close()
