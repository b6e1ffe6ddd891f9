"""The model's bounded queue on real echo nodes, on every binding ([model] max_queue,
queue_timeout_s; llm/worker.py).

With the model busy and its queue full, a request is refused at once — HTTP 429 with
Retry-After on /v1, gRPC RESOURCE_EXHAUSTED with ErrorInfo and RetryInfo, JSON-RPC
-32042 — naming "queue_full", and the node serves again once the queue drains. A request
that waited past queue_timeout_s gets its refusal (429 on /v1, a failed task naming
"queue_timeout" on A2A), and is never run. The refusals are counted in the model's load
(/healthz).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import httpx
from a2a.types import a2a_pb2, a2a_pb2_grpc
from a2a.utils.grpc_status import status_from_call
from google.rpc import error_details_pb2

from consortium.llm.worker import Lane
from consortium.node.app import Node
from consortium.node.auth import Caller, Credentials
from consortium.node.client import text_message
from consortium.node.service import Failed, ServiceRequest
from tests.conftest import NodeStarter
from tests.helpers import wait_until
from tests.node.test_overload import end, hold

LOOPBACK = Caller("anonymous", "loopback")
UNLIMITED = {"requests_per_minute": 0, "tokens_per_minute": 0}
# Admission's own bounds off: only the model's queue refuses.
NO_SHEDDING = {"max_pending_requests": 0, "max_queue_wait_s": 0}


def chat(text: str) -> dict[str, Any]:
    return {"model": "echo", "messages": [{"role": "user", "content": text}]}


def jsonrpc_send(text: str) -> dict[str, Any]:
    message = {"messageId": str(uuid.uuid4()), "role": "ROLE_USER", "parts": [{"text": text}]}
    return {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": message}}


async def test_a_full_queue_is_refused_at_once_on_every_binding(start_node: NodeStarter) -> None:
    node: Node = await start_node(
        server=NO_SHEDDING, model={"echo_token_delay_s": 0.05, "max_queue": 1}, openai=UNLIMITED
    )
    assert node.endpoints is not None and node.service is not None
    url, target = node.endpoints.http_url, node.endpoints.grpc_target
    held = await hold(node, 2, LOOPBACK)  # one generating, one waiting: the queue is full
    try:
        await wait_until(lambda: node.worker.load().queued == 1)
        async with httpx.AsyncClient(timeout=30, headers={"A2A-Version": "1.0"}) as http:
            r = await http.post(url + "/v1/chat/completions", json=chat("hello"))
            body = (await http.post(url + "/", json=jsonrpc_send("hello"))).json()
        async with grpc.aio.insecure_channel(target) as channel:
            stub = a2a_pb2_grpc.A2AServiceStub(channel)
            request = a2a_pb2.SendMessageRequest(message=text_message("hello"))
            try:
                await stub.SendMessage(request, timeout=30)
                raise AssertionError("the full queue took the gRPC request")
            except grpc.aio.AioRpcError as e:
                rpc_error = e
        # The service itself, asked past admission, refuses the same way.
        events = [ev async for ev in node.service.answer(ServiceRequest("hi"), LOOPBACK)]
    finally:
        await end(held)

    assert r.status_code == 429, r.text
    error = r.json()["error"]
    assert (error["code"], error["type"]) == ("overloaded", "queue_full")
    assert "model.max_queue" in error["message"]
    assert int(r.headers["retry-after"]) >= 1

    assert body["error"]["code"] == -32042, body
    [info] = body["error"]["data"]
    assert info["reason"] == "RESOURCE_EXHAUSTED"
    assert info["metadata"]["reason"] == "queue_full"
    assert int(info["metadata"]["retryAfterSeconds"]) >= 1

    assert rpc_error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = status_from_call(rpc_error)
    assert status is not None
    details = {d.type_url.rsplit(".", 1)[-1]: d for d in status.details}
    assert set(details) == {"ErrorInfo", "RetryInfo"}
    error_info = error_details_pb2.ErrorInfo()
    details["ErrorInfo"].Unpack(error_info)
    assert error_info.reason == "RESOURCE_EXHAUSTED"
    assert error_info.metadata["reason"] == "queue_full"

    failed = events[-1]
    assert isinstance(failed, Failed) and failed.overloaded == "queue_full"

    # Refused, not queued: the node serves again once the queue drains.
    await wait_until(lambda: node.worker.load().slots_busy == 0)
    async with httpx.AsyncClient(timeout=30) as http:
        again = await http.post(url + "/v1/chat/completions", json=chat("again"))
    assert again.status_code == 200, again.text
    assert again.json()["choices"][0]["message"]["content"] == "again"
    health = node.health(Credentials(loopback=True))
    assert health["model_load"]["refused"] == 4
    assert health["model_load"]["max_queue"] == 1
    assert health["load"]["refused"] == {"queue_full": 3}  # the three bindings' admissions


async def test_a_request_waiting_past_queue_timeout_gets_its_refusal(
    start_node: NodeStarter,
) -> None:
    node: Node = await start_node(
        server=NO_SHEDDING,
        model={"echo_token_delay_s": 0.05, "queue_timeout_s": 0.3},
        openai=UNLIMITED,
    )
    assert node.endpoints is not None
    url, target = node.endpoints.http_url, node.endpoints.grpc_target
    held = await hold(node, 1, LOOPBACK)  # a long generation holds the one slot
    try:
        await wait_until(lambda: node.worker.load().slots_busy == 1)
        async with httpx.AsyncClient(timeout=30, headers={"A2A-Version": "1.0"}) as http:
            r = await http.post(url + "/v1/chat/completions", json=chat("too late"))
            streamed = await http.post(
                url + "/v1/chat/completions", json={**chat("too late"), "stream": True}
            )
            body = (await http.post(url + "/", json=jsonrpc_send("too late"))).json()
        async with grpc.aio.insecure_channel(target) as channel:
            stub = a2a_pb2_grpc.A2AServiceStub(channel)
            request = a2a_pb2.SendMessageRequest(message=text_message("too late"))
            events = [e async for e in stub.SendStreamingMessage(request, timeout=30)]
        assert node.worker.load().queued == 0  # each took itself out of the queue
    finally:
        await end(held)

    for response in (r, streamed):  # refused before the stream started: a plain 429
        assert response.status_code == 429, response.text
        error = response.json()["error"]
        assert (error["code"], error["type"]) == ("overloaded", "queue_timeout")
        assert "model.queue_timeout_s" in error["message"]
        assert int(response.headers["retry-after"]) >= 1

    task = body["result"]["task"]
    assert task["status"]["state"] == "TASK_STATE_FAILED", body
    assert "queue_timeout" in task["status"]["message"]["parts"][0]["text"]

    last = events[-1].status_update.status
    assert last.state == a2a_pb2.TASK_STATE_FAILED
    assert "queue_timeout" in last.message.parts[0].text

    assert node.worker.load().refused == 4
    await wait_until(lambda: node.worker.load().slots_busy == 0)
    async with httpx.AsyncClient(timeout=30) as http:
        again = await http.post(url + "/v1/chat/completions", json=chat("again"))
    assert again.status_code == 200, again.text


async def test_another_members_task_takes_a_peer_lane_and_local_callers_do_not(
    start_node: NodeStarter,
) -> None:
    """What the slot policy counts as a peer: a member organization other than this node
    (acme); an API key, the loopback user and this organization itself are local."""
    node: Node = await start_node(model={"echo_token_delay_s": 0.05})
    callers = {
        Caller("member", "globex"): Lane("org:globex", peer=True),
        Caller("member", "acme"): Lane("org:acme", peer=False),
        Caller("key", "k1"): Lane("key:k1", peer=False),
        LOOPBACK: Lane("anonymous", peer=False),
    }
    for caller, lane in callers.items():
        held = await hold(node, 1, caller)
        try:
            await wait_until(lambda: node.worker.load().slots_busy == 1)
            assert node.worker._jobs.busy() == {lane: 1}
        finally:
            await end(held)
        await wait_until(lambda: node.worker.load().slots_busy == 0)


async def test_many_clients_against_a_small_queue_are_answered_or_refused_none_hang(
    start_node: NodeStarter,
) -> None:
    """48 /v1 clients at once against one slot and max_queue 4: each is answered or
    refused 429 queue_full, nothing else; at least the five that fit are answered."""
    node: Node = await start_node(
        server=NO_SHEDDING, model={"echo_token_delay_s": 0.01, "max_queue": 4}, openai=UNLIMITED
    )
    assert node.endpoints is not None
    url = node.endpoints.http_url

    async def one(http: httpx.AsyncClient, i: int) -> str:
        r = await http.post(url + "/v1/chat/completions", json=chat(f"client {i} " * 5))
        if r.status_code == 429:
            assert r.json()["error"]["type"] == "queue_full"
            assert int(r.headers["retry-after"]) >= 1
            return "refused"
        assert r.status_code == 200, r.text
        return "answered"

    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        outcomes = await asyncio.gather(*(one(http, i) for i in range(48)))
    answered = outcomes.count("answered")
    assert answered >= 5 and answered + outcomes.count("refused") == 48
    load = node.worker.load()
    assert load.refused == 48 - answered and load.queued == 0
