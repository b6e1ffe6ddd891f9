"""A node whose model is another node's /v1 (`backend = "openai"`) sends concurrent
requests concurrently, up to `model.parallel`: the serving node (echo model, a pause
between tokens, 8 slots) has them all in flight at once; a cancelled request frees its
slot and the server's; `parallel = 1` still sends one at a time. Evidence is the two
workers' running and queued jobs, never timing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from consortium.llm.base import ChatMessage, Chunk, GenerationParams
from consortium.llm.worker import GenerationRequest
from consortium.node.app import Node
from consortium.trust.api_keys import ApiKeys
from tests.conftest import NodeStarter
from tests.helpers import close_streams, long_request, wait_until


async def _nodes(start_node: NodeStarter, tmp_path: Path, parallel: int) -> tuple[Node, Node]:
    """The serving node (echo, 8 slots) and a node using its /v1 with `parallel`. The
    client node is the server's one caller (one API key): the server lets it hold every
    slot (`caller_slots = 8`; by default one caller holds all but one)."""
    server = await start_node(
        model={
            "backend": "echo",
            "name": "echo",
            "echo_token_delay_s": 0.05,
            "parallel": 8,
            "caller_slots": 8,
        },
        auth={"anonymous_loopback": False},
    )
    keys = ApiKeys(server.config.api_keys_path)
    try:
        key = keys.create("remote-node")[1]
    finally:
        keys.close()
    key_file = tmp_path / "server.key"
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    assert server.endpoints is not None
    model: dict[str, Any] = {
        "backend": "openai",
        "name": "echo",
        "base_url": f"{server.endpoints.http_url}/v1",
        "api_key_file": str(key_file),
        "retries": 0,
        "parallel": parallel,
    }
    client = await start_node(model=model)
    assert server.worker.slots == 8 and client.worker.slots == parallel
    return server, client


async def test_requests_are_in_flight_at_the_server_together(
    start_node: NodeStarter, tmp_path: Path
) -> None:
    server, client = await _nodes(start_node, tmp_path, parallel=8)
    streams = [client.worker.generate(long_request(i, 400), lane=f"user{i}") for i in range(8)]
    firsts: list[asyncio.Future[Chunk]] = []
    try:
        firsts = [asyncio.ensure_future(anext(aiter(s))) for s in streams]
        # All eight stream from the server at once: eight jobs on each side.
        await wait_until(lambda: client.worker.running == 8 and server.worker.running == 8)
        chunks = await asyncio.gather(*firsts)
        assert [c.text for c in chunks] == [f"w{i}.0" for i in range(8)]
        assert all(s.completion is None for s in streams)
        # Closing the client's streams closes its requests: the server's slots free.
        await close_streams([], streams)
        await wait_until(lambda: client.worker.running == 0 and server.worker.running == 0)
        # And the node still answers.
        short = GenerationRequest(GenerationParams(), messages=(ChatMessage("user", "a b c"),))
        assert (await client.worker.generate(short).collect()).text == "a b c"
    finally:
        await close_streams(firsts, streams)


async def test_a_cancelled_request_frees_its_slot_for_a_waiting_one(
    start_node: NodeStarter, tmp_path: Path
) -> None:
    server, client = await _nodes(start_node, tmp_path, parallel=2)
    streams = [client.worker.generate(long_request(i, 400), lane=f"user{i}") for i in range(3)]
    firsts: list[asyncio.Future[Chunk]] = []
    try:
        firsts = [asyncio.ensure_future(anext(aiter(s))) for s in streams]
        await wait_until(lambda: client.worker.running == 2 and client.worker.queued == 1)
        await asyncio.gather(*firsts[:2])
        await wait_until(lambda: server.worker.running == 2)
        assert not firsts[2].done()
        await streams[0].aclose()
        # The third request takes the freed slot; the second still streams.
        assert (await firsts[2]).text == "w2.0"
        assert streams[1].completion is None
        await wait_until(lambda: server.worker.running == 2 and client.worker.queued == 0)
    finally:
        await close_streams(firsts, streams)
    await wait_until(lambda: server.worker.running == 0)


async def test_parallel_one_sends_one_request_at_a_time(
    start_node: NodeStarter, tmp_path: Path
) -> None:
    server, client = await _nodes(start_node, tmp_path, parallel=1)
    streams = [client.worker.generate(long_request(i, 400), lane=f"user{i}") for i in range(3)]
    firsts: list[asyncio.Future[Chunk]] = []
    try:
        firsts = [asyncio.ensure_future(anext(aiter(s))) for s in streams]
        await wait_until(lambda: client.worker.running == 1 and client.worker.queued == 2)
        await firsts[0]
        # The server has 8 slots, but only one request was sent.
        assert server.worker.running == 1 and not firsts[1].done()
        await streams[0].aclose()
        await firsts[1]
        assert client.worker.queued == 1 and not firsts[2].done()
        await wait_until(lambda: server.worker.running == 1)
    finally:
        await close_streams(firsts, streams)
