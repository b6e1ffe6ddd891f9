"""Load shedding on real echo nodes (node/admission.py, the fair queue of llm/worker.py).

Many clients at once on every binding each get an answer or a refusal for load (HTTP 429
with Retry-After, JSON-RPC -32042, gRPC RESOURCE_EXHAUSTED), never a connection error,
and the node never holds more than its bound. A member's flood of local generations
delays a peer's escalation by one job, not by the flood; an escalation the peer could
not answer before the origin's deadline is refused at once (PeerBusy), and the refusal
says nothing against the peer's reputation.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
from a2a.types import a2a_pb2, a2a_pb2_grpc
from a2a.utils.grpc_status import status_from_call

from consortium.node.app import Node
from consortium.node.auth import Caller, Credentials
from consortium.node.client import text_message
from consortium.node.peers import PeerBusy, PeerClient
from consortium.node.service import Answered, ServiceRequest
from consortium.protocols.request_options import RequestOptions
from tests.conftest import NodeStarter
from tests.helpers import wait_until
from tests.integration.test_federation import Federation
from tests.node.test_peers import Hooks, peer_client
from tests.node.test_peers import acme as acme  # over this module's `fed`

WORDS = 20


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


async def hold(node: Node, n: int, caller: Caller) -> list[asyncio.Task[Any]]:
    """`n` long local generations of `caller`'s on `node`'s model (each 1,000 words),
    running or queued; cancel the tasks to end them."""
    assert node.service is not None
    service = node.service

    async def generate() -> None:
        request = ServiceRequest(words(1000), RequestOptions(max_tokens=1000))
        async for _ in service.answer(request, caller):
            pass

    return [asyncio.ensure_future(generate()) for _ in range(n)]


async def end(tasks: list[asyncio.Task[Any]]) -> None:
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await t


# -- many clients, every binding --------------------------------------------------------


async def v1(http: httpx.AsyncClient, url: str) -> str:
    r = await http.post(
        url + "/v1/chat/completions",
        json={"model": "echo", "messages": [{"role": "user", "content": words(WORDS)}]},
    )
    if r.status_code == 429:
        assert r.json()["error"]["code"] == "overloaded"
        assert int(r.headers["retry-after"]) >= 1
        return "refused"
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == words(WORDS)
    return "answered"


async def jsonrpc(http: httpx.AsyncClient, url: str) -> str:
    message = {"messageId": str(uuid.uuid4()), "role": "ROLE_USER", "parts": [{"text": words(3)}]}
    r = await http.post(
        url + "/",
        json={"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": message}},
    )
    body = r.json()
    if "error" in body:
        assert body["error"]["code"] == -32042, body
        [info] = body["error"]["data"]
        assert info["reason"] == "RESOURCE_EXHAUSTED"
        assert info["metadata"]["reason"] == "overloaded"
        assert int(info["metadata"]["retryAfterSeconds"]) >= 1
        return "refused"
    assert body["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED", body
    return "answered"


async def grpc_stream(channel: grpc.aio.Channel) -> str:
    stub = a2a_pb2_grpc.A2AServiceStub(channel)
    request = a2a_pb2.SendMessageRequest(message=text_message(words(WORDS)))
    try:
        events = [e async for e in stub.SendStreamingMessage(request, timeout=60)]
    except grpc.aio.AioRpcError as e:
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
        status = status_from_call(e)
        assert status is not None
        kinds = {d.type_url.rsplit(".", 1)[-1] for d in status.details}
        assert kinds == {"ErrorInfo", "RetryInfo"}
        return "refused"
    last = events[-1].status_update.status
    assert last.state == a2a_pb2.TASK_STATE_COMPLETED
    return "answered"


async def test_many_clients_get_an_answer_or_a_refusal_on_every_binding(
    start_node: NodeStarter,
) -> None:
    """Two requests hold two of the node's four places; 72 clients arrive at once on
    /v1, JSON-RPC and gRPC. Each gets its answer or a refusal for load, none a
    connection error; the node never holds more than four; the refusals are counted."""
    node: Node = await start_node(
        server={"max_pending_requests": 4},
        model={"echo_token_delay_s": 0.01},
        openai={"requests_per_minute": 0, "tokens_per_minute": 0},
    )
    assert node.endpoints is not None and node.admission is not None
    admission = node.admission
    url, target = node.endpoints.http_url, node.endpoints.grpc_target
    # Two places taken by requests that stay (another caller's, served elsewhere).
    held = [admission.admit("key:other", local_model=False) for _ in range(2)]
    limits = httpx.Limits(max_connections=200)
    try:
        async with (
            httpx.AsyncClient(timeout=60, limits=limits, headers={"A2A-Version": "1.0"}) as http,
            grpc.aio.insecure_channel(target) as channel,
        ):
            calls = [v1(http, url) for _ in range(24)]
            calls += [jsonrpc(http, url) for _ in range(24)]
            calls += [grpc_stream(channel) for _ in range(24)]
            outcomes = Counter(await asyncio.gather(*calls))
    finally:
        for ticket in held:
            ticket.release()
    assert set(outcomes) == {"answered", "refused"}, outcomes
    assert sum(outcomes.values()) == 72
    assert admission.peak_in_flight == 4
    assert admission.counts()["refused"] == {"overloaded": outcomes["refused"]}
    health = node.health(Credentials(loopback=True))
    assert health["load"]["refused"]["overloaded"] == outcomes["refused"]
    assert health["load"]["in_flight"] == 0


async def test_the_model_queue_is_bounded_by_its_estimated_wait(start_node: NodeStarter) -> None:
    """With no bound on requests, a request whose wait for the model would exceed
    max_queue_wait_s is refused 429 busy."""
    node: Node = await start_node(
        server={"max_pending_requests": 0, "max_queue_wait_s": 0.5},
        model={"echo_token_delay_s": 0.05},
        openai={"requests_per_minute": 0, "tokens_per_minute": 0},
    )
    assert node.endpoints is not None and node.admission is not None
    url = node.endpoints.http_url
    async with httpx.AsyncClient(timeout=60) as http:
        body = {"model": "echo", "messages": [{"role": "user", "content": words(WORDS)}]}
        first = await http.post(url + "/v1/chat/completions", json=body)  # the model's pace
        assert first.status_code == 200
        held = await hold(node, 2, Caller("anonymous", "loopback"))
        try:
            await wait_until(lambda: node.worker.jobs_ahead("anonymous") == 2)
            r = await http.post(url + "/v1/chat/completions", json=body)
        finally:
            await end(held)
    assert r.status_code == 429, r.text
    error = r.json()["error"]
    assert (error["code"], error["type"]) == ("overloaded", "busy")
    assert "max_queue_wait_s" in error["message"]
    assert int(r.headers["retry-after"]) >= 1


async def test_an_idle_keep_alive_connection_outlives_the_clients_own_expiry(
    start_node: NodeStarter,
) -> None:
    """A server that closes an idle connection when the client's pool (httpx: 5 s) may
    reuse it resets the request sent on it (the ReadErrors of issue 25): the node keeps
    it open longer than common clients do."""
    node: Node = await start_node()
    server = node._http
    assert server is not None
    assert server.config.timeout_keep_alive > httpx.Limits().keepalive_expiry + 10


# -- a member's flood and a peer's escalation --------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Federation]:
    f = Federation(tmp_path_factory.mktemp("overload"), echo_token_delay_s=0.002)
    try:
        await f.start()
        yield f
    finally:
        await f.stop()


FLOODER = Caller("key", "flood")


@pytest.mark.asyncio(loop_scope="module")
async def test_an_escalation_waits_for_one_local_job_not_for_the_flood(
    fed: Federation, acme: tuple[PeerClient, Hooks]
) -> None:
    """Six local generations on globex's model (one running, five queued): acme's
    escalation runs after the one running and one queued, while four still wait."""
    client, _ = acme
    globex = fed.nodes["globex"]
    flood = await hold(globex, 6, FLOODER)
    try:
        await wait_until(lambda: globex.worker.queued == 5)
        answer = await client.ask("globex", "hello from acme")
        still_waiting = globex.worker.queued
    finally:
        await end(flood)
    assert answer.state == "completed" and answer.text == "hello from acme"
    assert still_waiting >= 3


@pytest.mark.asyncio(loop_scope="module")
async def test_an_escalation_that_would_miss_its_deadline_is_refused_at_once(
    fed: Federation, acme: tuple[PeerClient, Hooks]
) -> None:
    """globex's model takes about 2 s a job; with one job running and a flood queued,
    an escalation with a 3 s deadline could not be answered in time (about 6 s): globex says so
    (RESOURCE_EXHAUSTED, busy) instead of letting it time out, and acme's assessor hears
    nothing against globex."""
    _, hooks = acme
    client, _ = peer_client(fed.nodes["acme"], hooks, timeout_s=3.0)
    globex = fed.nodes["globex"]
    assert globex.service is not None
    pace = ServiceRequest(words(1000), RequestOptions(max_tokens=1000))
    async for event in globex.service.answer(pace, FLOODER):
        last = event
    assert isinstance(last, Answered)
    flood = await hold(globex, 3, FLOODER)
    try:
        await wait_until(lambda: globex.worker.queued == 2)
        with pytest.raises(PeerBusy) as refused:
            await client.ask("globex", "are you there?")
    finally:
        await end(flood)
        await client.close()
    assert "busy: estimated wait" in str(refused.value)
    assert "exceeds your deadline" in str(refused.value)
    assert refused.value.retry_after_s >= 1
    assert "assess" not in hooks.names()
    assert globex.admission is not None and globex.admission.refused["busy"] >= 1
