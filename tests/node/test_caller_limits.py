"""A caller's limits ([limits]: requests and tokens per minute, requests in progress) hold
for its API key on every API at once: A2A over gRPC, A2A JSON-RPC and /v1, /v1/models
included; tokens are reserved when a task is admitted, so that truly concurrent requests
cannot spend more than a minute's tokens; a refusal says which limit and when to retry,
in each binding's own words. Real node (echo model) on its own thread, called as an
outside client would."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from a2a.types import a2a_pb2, a2a_pb2_grpc
from google.protobuf.json_format import MessageToDict
from google.rpc import error_details_pb2, status_pb2

from consortium.errors import RateLimited
from consortium.node.auth import Caller
from consortium.node.client import text_message
from consortium.node.limits import CallerLimits, LimitSettings
from tests.node.openai.conftest import NodeThread, node_thread

RPM = 6
TPM = 100
WORDS = " ".join(f"w{i}" for i in range(10))  # 10 tokens for the echo model, 8 estimated


def grpc_status(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The google.rpc.Status a gRPC error carries in its trailing metadata."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    raise AssertionError("no status details")


def details(status: status_pb2.Status) -> tuple[Any, Any]:
    """Its ErrorInfo and RetryInfo (None where absent)."""
    info = retry = None
    for any_ in status.details:
        if any_.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            any_.Unpack(info)
        elif any_.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            any_.Unpack(retry)
    return info, retry


class Client:
    """One API key's calls to one node over the three bindings."""

    def __init__(self, node: NodeThread, key: str) -> None:
        self.node = node
        self.key = key
        assert node.node.endpoints is not None
        self.grpc_target = node.node.endpoints.grpc_target

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", "A2A-Version": "1.0"}

    async def v1(self, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        async with httpx.AsyncClient(timeout=60) as http:
            if body is None:
                return await http.get(f"{self.node.url}/v1/{path}", headers=self.headers)
            return await http.post(f"{self.node.url}/v1/{path}", json=body, headers=self.headers)

    async def jsonrpc(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=60) as http:
            r = await http.post(
                self.node.url + "/",
                json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
                headers=self.headers,
            )
        if r.text.startswith("data:"):  # a streaming method's SSE
            first: dict[str, Any] = json.loads(r.text.splitlines()[0][5:])
            return first
        body: dict[str, Any] = r.json()
        return body

    async def grpc(self, method: str, request: Any) -> Any:
        async with grpc.aio.insecure_channel(self.grpc_target) as channel:
            stub = a2a_pb2_grpc.A2AServiceStub(channel)
            return await getattr(stub, method)(
                request, metadata=(("authorization", f"Bearer {self.key}"),), timeout=60
            )


def send_request(text: str, max_tokens: int | None = None) -> a2a_pb2.SendMessageRequest:
    options = {"consortium": {"max_tokens": max_tokens}} if max_tokens else None
    return a2a_pb2.SendMessageRequest(message=text_message(text, options))


def jsonrpc_message(text: str) -> dict[str, Any]:
    return {
        "message": {
            "messageId": f"m-{time.monotonic_ns()}",
            "role": "ROLE_USER",
            "parts": [{"text": text}],
        }
    }


@pytest.fixture(scope="module")
def requests_limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeThread]:
    yield from node_thread(
        tmp_path_factory.mktemp("rpm"),
        limits={"requests_per_minute": RPM, "tokens_per_minute": 0, "concurrent_requests": 0},
    )


def test_one_request_window_per_key_on_every_binding(requests_limited: NodeThread) -> None:
    node = requests_limited
    busy, calm = Client(node, node.new_key("busy")), Client(node, node.new_key("calm"))

    async def scenario() -> None:
        # RPM calls spread over the three bindings, /v1/models among them.
        assert (await busy.v1("models")).status_code == 200
        assert (await busy.v1("models/echo")).status_code == 200
        await busy.grpc("ListTasks", a2a_pb2.ListTasksRequest())
        await busy.grpc("SendMessage", send_request("one"))
        assert "result" in await busy.jsonrpc("ListTasks", {})
        assert "result" in await busy.jsonrpc("SendMessage", jsonrpc_message("two"))
        # The window is spent, for every binding.
        r = await busy.v1("models")
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        assert r.json()["error"]["type"] == "requests"
        assert 1 <= int(r.headers["retry-after"]) <= 60
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await busy.grpc("SendMessage", send_request("three"))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        info, retry = details(grpc_status(e.value))
        assert info.reason == "RATE_LIMIT_EXCEEDED" and info.metadata["limit"] == "requests"
        assert 1 <= retry.retry_delay.seconds <= 60
        body = await busy.jsonrpc("SendMessage", jsonrpc_message("four"))
        assert body["error"]["code"] == -32042
        assert body["error"]["data"][0]["reason"] == "RATE_LIMIT_EXCEEDED"
        assert body["error"]["data"][0]["metadata"]["limit"] == "requests"
        # Another key has a window of its own.
        assert (await calm.v1("models")).status_code == 200
        await calm.grpc("ListTasks", a2a_pb2.ListTasksRequest())
        assert "result" in await calm.jsonrpc("ListTasks", {})

    node.run(scenario())


@pytest.fixture(scope="module")
def tokens_limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeThread]:
    yield from node_thread(
        tmp_path_factory.mktemp("tpm"),
        limits={"requests_per_minute": 0, "tokens_per_minute": TPM, "concurrent_requests": 0},
        # Every request is still running when the last one is admitted.
        model={"echo_token_delay_s": 0.05},
    )


def test_concurrent_requests_cannot_spend_more_than_the_tokens_per_minute(
    tokens_limited: NodeThread,
) -> None:
    """Eight requests at once, over /v1 and A2A: each reserves its prompt and max_tokens
    when admitted (8 + 30 here), so at most two run, and what they spend (20 to 30 each
    on the echo model) stays within the minute's tokens."""
    node = tokens_limited
    key = Client(node, node.new_key("eager"))

    async def v1() -> int | None:
        r = await key.v1("completions", {"model": "echo", "prompt": WORDS, "max_tokens": 30})
        if r.status_code == 429:
            assert r.json()["error"]["type"] == "tokens"
            return None
        assert r.status_code == 200, r.text
        total: int = r.json()["usage"]["total_tokens"]
        return total

    async def a2a() -> int | None:
        try:
            reply = await key.grpc("SendMessage", send_request(WORDS, max_tokens=30))
        except grpc.aio.AioRpcError as e:
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            return None
        assert reply.task.status.state == a2a_pb2.TASK_STATE_COMPLETED
        # The provenance's usage (a chat: the node's system prompt counts too).
        provenance = MessageToDict(reply.task.status.message.metadata)["consortium"]
        return int(provenance["inputTokens"] + provenance["outputTokens"])

    async def scenario() -> list[int | None]:
        return list(await asyncio.gather(*(f() for f in (v1, a2a) * 4)))

    spent = node.run(scenario())
    answered = [n for n in spent if n is not None]
    assert answered and None in spent
    assert sum(answered) <= TPM
    # What was not used is given back: the window holds what the answers spent, so a
    # request that fits in the rest is admitted at once.
    rest = TPM - sum(answered)

    async def after() -> httpx.Response:
        # The A2A tasks settle as their producers end, maybe just after their replies.
        deadline = time.monotonic() + 30
        while True:
            body = {"model": "echo", "prompt": "x", "max_tokens": rest - 1}
            r = await key.v1("completions", body)
            if r.status_code != 429 or time.monotonic() > deadline:
                return r
            await asyncio.sleep(0.05)

    r = node.run(after())
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def unlimited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeThread]:
    yield from node_thread(
        tmp_path_factory.mktemp("unlimited"),
        limits={"requests_per_minute": 0, "tokens_per_minute": 0, "concurrent_requests": 2},
        model={"echo_token_delay_s": 0.05},
    )


def test_a_prompt_over_the_models_context_gets_context_length_exceeded(
    unlimited: NodeThread,
) -> None:
    node = unlimited
    key = Client(node, node.new_key("long"))
    prompt = "word " * 5000  # 25 KB, 5,000 echo tokens: over the model's 4,096

    async def scenario() -> tuple[httpx.Response, Any]:
        r = await key.v1("completions", {"model": "echo", "prompt": prompt, "max_tokens": 1})
        reply = await key.grpc("SendMessage", send_request(prompt, max_tokens=1))
        return r, reply

    r, reply = node.run(scenario())
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert reply.task.status.state == a2a_pb2.TASK_STATE_REJECTED


def test_requests_in_progress_per_key(unlimited: NodeThread) -> None:
    """Two of a key's tasks in progress (one generating, one queued): a third is refused
    on every binding until one of them ends."""
    node = unlimited
    key = Client(node, node.new_key("parallel"))
    long_text = " ".join(f"w{i}" for i in range(400))  # 20 s at 50 ms a token

    async def scenario() -> None:
        async with grpc.aio.insecure_channel(key.grpc_target) as channel:
            stub = a2a_pb2_grpc.A2AServiceStub(channel)
            metadata = (("authorization", f"Bearer {key.key}"),)
            streams = [
                stub.SendStreamingMessage(send_request(long_text), metadata=metadata)
                for _ in range(2)
            ]
            tasks = []
            for stream in streams:
                first = await stream.read()  # the task exists: it holds its place
                tasks.append(first.task.id)
            r = await key.v1("completions", {"model": "echo", "prompt": "third"})
            assert r.status_code == 429 and r.json()["error"]["type"] == "concurrency"
            assert int(r.headers["retry-after"]) >= 1
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await key.grpc("SendMessage", send_request("third"))
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            for method in ("SendMessage", "SendStreamingMessage"):
                body = await key.jsonrpc(method, jsonrpc_message("third"))
                assert body["error"]["code"] == -32042, method
                assert body["error"]["data"][0]["metadata"]["limit"] == "concurrency"
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.SendStreamingMessage(send_request("third"), metadata=metadata).read()
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # Another key is not held back by this one's tasks.
            other = Client(node, node.new_key("other"))
            assert "result" in await other.jsonrpc("ListTasks", {})
            for task_id in tasks:
                await key.grpc("CancelTask", a2a_pb2.CancelTaskRequest(id=task_id))
            for stream in streams:
                stream.cancel()
        # Their places are freed as the canceled tasks end (the node's own time).
        deadline = time.monotonic() + 30
        while True:
            r = await key.v1("completions", {"model": "echo", "prompt": "after"})
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert r.status_code == 200, r.text

    node.run(scenario())


def test_limits_windows_reservations_and_members() -> None:
    """The limiter alone, on a clock of its own."""
    now = [0.0]
    limits = CallerLimits(
        LimitSettings(requests_per_minute=2, tokens_per_minute=100, concurrent_requests=2),
        clock=lambda: now[0],
    )
    key = Caller("key", "k1")
    limits.count_request(key)
    limits.count_request(key)
    with pytest.raises(RateLimited) as refused:
        limits.count_request(key)
    assert refused.value.kind == "requests" and refused.value.retry_after_s == 60.0
    # Tokens and places in progress: reserved at admission, settled when a task ends.
    first = limits.reserve(key, 60)
    second = limits.reserve(key, 30)
    with pytest.raises(RateLimited) as refused:
        limits.reserve(key, 1)  # two in progress
    assert refused.value.kind == "concurrency"
    second.settle(0)
    with pytest.raises(RateLimited) as refused:
        limits.reserve(key, 50)  # 60 + 50 reserved
    assert refused.value.kind == "tokens" and refused.value.retry_after_s == 60.0
    now[0] = 30.0
    first.settle(20)  # 40 given back
    third = limits.reserve(key, 50)
    third.settle(70)
    third.settle(0)  # once only
    now[0] = 60.5  # the first left the window; the third's 70 did not
    with pytest.raises(RateLimited) as refused:
        limits.reserve(key, 40)
    assert refused.value.kind == "tokens" and refused.value.retry_after_s == 29.5
    limits.reserve(key, 30).settle(30)
    with pytest.raises(RateLimited, match="Request too large"):
        limits.reserve(key, 101)
    # A reservation released before its task started is taken again when it does.
    late = limits.reserve(Caller("key", "k2"), 90)
    late.release_unclaimed()
    late.claim()
    with pytest.raises(RateLimited):
        limits.reserve(Caller("key", "k2"), 20)
    # Members are not limited here; 0 means unlimited.
    member = Caller("member", "globex")
    for _ in range(5):
        limits.count_request(member)
        limits.reserve(member, 1000)
    CallerLimits(LimitSettings()).reserve(key, 10**9)
