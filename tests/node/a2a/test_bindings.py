"""The A2A endpoint over real gRPC and HTTP on loopback, with the echo model (these tests
are about the network layer; test_node_llm.py runs the same paths with real models)."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from a2a.types import a2a_pb2, a2a_pb2_grpc
from a2a.utils.constants import TransportProtocol

from consortium.node.app import Node
from consortium.node.client import ask, fetch_agent_card, open_client, text_message
from tests.conftest import NodeStarter


def stub(node: Node) -> tuple[grpc.aio.Channel, a2a_pb2_grpc.A2AServiceStub]:
    assert node.endpoints
    channel = grpc.aio.insecure_channel(node.endpoints.grpc_target)
    return channel, a2a_pb2_grpc.A2AServiceStub(channel)


async def jsonrpc(
    node: Node, method: str, params: dict[str, Any] | None = None, **kw: Any
) -> httpx.Response:
    assert node.endpoints
    body = kw.pop("content", None)
    async with httpx.AsyncClient() as http:
        if body is not None:
            return await http.post(
                node.endpoints.http_url + "/",
                content=body,
                headers={"content-type": "application/json"},
            )
        return await http.post(
            node.endpoints.http_url + "/",
            json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}},
            headers={"A2A-Version": "1.0"},
        )


def user_message_json(text: str) -> dict[str, Any]:
    return {"messageId": str(uuid.uuid4()), "role": "ROLE_USER", "parts": [{"text": text}]}


async def still_serves(node: Node) -> None:
    card = await fetch_agent_card(node.endpoints.http_url)  # type: ignore[union-attr]
    client = open_client(card)
    try:
        answer = await ask(client, "still here")
    finally:
        await client.close()
    assert answer.state == "completed" and answer.text == "still here"


async def test_agent_card_lists_both_interfaces_skill_model_and_org(
    start_node: NodeStarter,
) -> None:
    node = await start_node()
    card = await fetch_agent_card(node.endpoints.http_url)
    bindings = {i.protocol_binding: i.url for i in card.supported_interfaces}
    assert bindings[TransportProtocol.GRPC] == node.endpoints.grpc_target
    assert bindings[TransportProtocol.JSONRPC].startswith(node.endpoints.http_url)
    assert all(i.protocol_version == "1.0" for i in card.supported_interfaces)
    assert card.capabilities.streaming
    assert card.skills and card.skills[0].id == "answer"
    assert card.provider.organization == "acme org"
    ext = card.capabilities.extensions[0]
    assert ext.params["org_id"] == "acme" and ext.params["model"] == "echo"


@pytest.mark.parametrize("transport", [TransportProtocol.GRPC, TransportProtocol.JSONRPC])
async def test_streamed_task_lifecycle(start_node: NodeStarter, transport: str) -> None:
    node = await start_node()
    card = await fetch_agent_card(node.endpoints.http_url)
    client = open_client(card, transport=transport)
    pieces: list[str] = []
    try:
        answer = await ask(client, "the quick brown fox", on_text=pieces.append)
    finally:
        await client.close()
    assert answer.state == "completed"
    assert answer.text == "the quick brown fox"
    assert len(pieces) == 4  # one artifact update per token
    assert answer.states_seen[-2:] == ["working", "completed"]
    assert answer.provenance.org == "acme" and answer.provenance.model == "echo"
    assert answer.provenance.output_tokens == 4


async def test_unary_send_get_and_list(start_node: NodeStarter) -> None:
    node = await start_node()
    channel, s = stub(node)
    async with channel:
        resp = await s.SendMessage(a2a_pb2.SendMessageRequest(message=text_message("hello there")))
        task = resp.task
        assert task.status.state == a2a_pb2.TASK_STATE_COMPLETED
        got = await s.GetTask(a2a_pb2.GetTaskRequest(id=task.id))
        assert "".join(p.text for p in got.artifacts[0].parts) == "hello there"
        listed = await s.ListTasks(a2a_pb2.ListTasksRequest(include_artifacts=True))
        assert task.id in [t.id for t in listed.tasks]


async def test_list_tasks_pages_through_everything(start_node: NodeStarter) -> None:
    node = await start_node()
    channel, s = stub(node)
    async with channel:
        ids = set()
        for i in range(5):
            resp = await s.SendMessage(
                a2a_pb2.SendMessageRequest(message=text_message(f"task {i}"))
            )
            ids.add(resp.task.id)
        seen: list[str] = []
        token = ""
        while True:
            page = await s.ListTasks(a2a_pb2.ListTasksRequest(page_size=2, page_token=token))
            assert page.total_size == 5
            seen += [t.id for t in page.tasks]
            token = page.next_page_token
            if not token:
                break
        assert sorted(seen) == sorted(ids)


async def test_cancel_mid_generation(start_node: NodeStarter) -> None:
    node = await start_node(model={"echo_token_delay_s": 0.2})
    channel, s = stub(node)
    async with channel:
        call = s.SendStreamingMessage(
            a2a_pb2.SendMessageRequest(message=text_message(" ".join(f"w{i}" for i in range(200))))
        )
        task_id = ""
        async for event in call:
            if event.HasField("task"):
                task_id = event.task.id
            if event.HasField("artifact_update"):
                break  # generation has started
        assert task_id
        canceled = await s.CancelTask(a2a_pb2.CancelTaskRequest(id=task_id))
        assert canceled.status.state == a2a_pb2.TASK_STATE_CANCELED
        call.cancel()
        got = await s.GetTask(a2a_pb2.GetTaskRequest(id=task_id))
        assert got.status.state == a2a_pb2.TASK_STATE_CANCELED
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await s.CancelTask(a2a_pb2.CancelTaskRequest(id=task_id))
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await still_serves(node)


async def test_subscribe_to_running_task(start_node: NodeStarter) -> None:
    node = await start_node(model={"echo_token_delay_s": 0.05})
    channel, s = stub(node)
    async with channel:
        req = a2a_pb2.SendMessageRequest(
            message=text_message("one two three four five six"),
            configuration=a2a_pb2.SendMessageConfiguration(return_immediately=True),
        )
        resp = await s.SendMessage(req)
        states = []
        text = []
        async for event in s.SubscribeToTask(a2a_pb2.SubscribeToTaskRequest(id=resp.task.id)):
            if event.HasField("status_update"):
                states.append(event.status_update.status.state)
            if event.HasField("artifact_update"):
                text += [p.text for p in event.artifact_update.artifact.parts]
        assert states[-1] == a2a_pb2.TASK_STATE_COMPLETED
        assert "six" in "".join(text)


# --- bad input: each gets a clear error and the node keeps serving -----------------------


async def test_grpc_malformed_bytes_is_invalid_argument(start_node: NodeStarter) -> None:
    node = await start_node()
    async with grpc.aio.insecure_channel(node.endpoints.grpc_target) as channel:
        raw = channel.unary_unary("/lf.a2a.v1.A2AService/SendMessage")
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await raw(b"\x0a\xff\xff\xff\x0f garbage")
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed" in (e.value.details() or "")
    await still_serves(node)


async def test_grpc_message_without_parts_is_invalid_argument(start_node: NodeStarter) -> None:
    node = await start_node()
    channel, s = stub(node)
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await s.SendMessage(
                a2a_pb2.SendMessageRequest(
                    message=a2a_pb2.Message(message_id="m1", role=a2a_pb2.ROLE_USER)
                )
            )
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await still_serves(node)


async def test_grpc_oversized_message_is_resource_exhausted(start_node: NodeStarter) -> None:
    node = await start_node(server={"max_message_bytes": 64 * 1024})
    channel, s = stub(node)
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await s.SendMessage(a2a_pb2.SendMessageRequest(message=text_message("x" * 100_000)))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await still_serves(node)


async def test_grpc_unknown_task_is_not_found(start_node: NodeStarter) -> None:
    node = await start_node()
    channel, s = stub(node)
    async with channel:
        for call in (
            s.GetTask(a2a_pb2.GetTaskRequest(id="no-such-task")),
            s.CancelTask(a2a_pb2.CancelTaskRequest(id="no-such-task")),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
    await still_serves(node)


async def test_bad_request_options_reject_the_task(start_node: NodeStarter) -> None:
    node = await start_node()
    card = await fetch_agent_card(node.endpoints.http_url)
    client = open_client(card)
    try:
        answer = await ask(client, "hello", options={"max_tokens": -3})
        assert answer.state == "rejected"
        assert "max_tokens" in answer.status_text
        blank = await ask(client, "   ")
        assert blank.state == "rejected"
    finally:
        await client.close()


@pytest.mark.parametrize("transport", [TransportProtocol.GRPC, TransportProtocol.JSONRPC])
async def test_peer_and_route_together_are_refused(start_node: NodeStarter, transport: str) -> None:
    """Each option names who answers: given both, the task is refused, naming both,
    rather than one silently winning."""
    node = await start_node()
    card = await fetch_agent_card(node.endpoints.http_url)
    client = open_client(card, transport=transport)
    try:
        answer = await ask(client, "hello", options={"peer": "globex", "route": "local"})
        assert answer.state == "rejected"
        assert "metadata.consortium: " in answer.status_text
        assert "peer and route contradict" in answer.status_text
        alone = await ask(client, "hello", options={"route": "local"})
        assert alone.state == "completed" and alone.text == "hello"
    finally:
        await client.close()


async def test_jsonrpc_parse_error_and_invalid_request(start_node: NodeStarter) -> None:
    node = await start_node()
    r = await jsonrpc(node, "", content=b"{not json")
    assert r.json()["error"]["code"] == -32700
    r = await jsonrpc(node, "", content=b'{"jsonrpc": "2.0", "id": 3}')
    assert r.json()["error"]["code"] == -32600
    r = await jsonrpc(node, "NoSuchMethod")
    assert r.json()["error"]["code"] == -32601
    r = await jsonrpc(node, "SendMessage", {"message": {"role": "ROLE_USER", "parts": "nope"}})
    assert r.json()["error"]["code"] == -32602
    await still_serves(node)


async def test_jsonrpc_unknown_task(start_node: NodeStarter) -> None:
    node = await start_node()
    r = await jsonrpc(node, "GetTask", {"id": "no-such-task"})
    assert r.json()["error"]["code"] == -32001
    await still_serves(node)


async def test_jsonrpc_oversized_body_is_413(start_node: NodeStarter) -> None:
    node = await start_node(server={"max_message_bytes": 64 * 1024})
    r = await jsonrpc(node, "SendMessage", {"message": user_message_json("x" * 100_000)})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == -32600
    await still_serves(node)


async def test_jsonrpc_send_message(start_node: NodeStarter) -> None:
    node = await start_node()
    r = await jsonrpc(node, "SendMessage", {"message": user_message_json("over http")})
    task = r.json()["result"]["task"]
    assert task["status"]["state"] == "TASK_STATE_COMPLETED"
    assert "".join(p["text"] for p in task["artifacts"][0]["parts"]) == "over http"


async def test_concurrent_requests_share_one_model_in_turn(start_node: NodeStarter) -> None:
    node = await start_node(model={"echo_token_delay_s": 0.01})
    card = await fetch_agent_card(node.endpoints.http_url)
    client = open_client(card)
    try:
        answers = await asyncio.gather(*(ask(client, f"request number {i}") for i in range(6)))
    finally:
        await client.close()
    assert sorted(a.text for a in answers) == sorted(f"request number {i}" for i in range(6))


async def test_grpc_unsupported_a2a_version_is_unimplemented(start_node: NodeStarter) -> None:
    node = await start_node()
    channel, s = stub(node)
    async with channel:
        request = a2a_pb2.SendMessageRequest(message=text_message("hi"))
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await s.SendMessage(request, metadata=(("a2a-version", "99.0"),))
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
        ok = await s.SendMessage(request, metadata=(("a2a-version", "1.0"),))
        assert ok.task.status.state == a2a_pb2.TASK_STATE_COMPLETED


async def test_grpc_push_notifications_unsupported_is_unimplemented(
    start_node: NodeStarter,
) -> None:
    node = await start_node()
    channel, s = stub(node)
    async with channel:
        config = a2a_pb2.TaskPushNotificationConfig(task_id="t", url="https://example.com")
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await s.CreateTaskPushNotificationConfig(config)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_jsonrpc_wrong_content_type(start_node: NodeStarter) -> None:
    node = await start_node()
    async with httpx.AsyncClient() as http:
        r = await http.post(
            node.endpoints.http_url + "/", content=b"hello", headers={"content-type": "text/plain"}
        )
    assert r.status_code == 415
    assert r.json()["error"]["code"] == -32005
    await still_serves(node)


async def test_agent_card_is_cacheable(start_node: NodeStarter) -> None:
    node = await start_node(server={"agent_card_max_age_s": 120})
    async with httpx.AsyncClient() as http:
        r = await http.get(node.endpoints.http_url + "/.well-known/agent-card.json")
    assert r.headers["cache-control"] == "public, max-age=120"
    assert r.headers["etag"]
    assert r.headers["last-modified"].endswith("GMT")


async def test_conformance_executor_scenarios_and_fallback(start_node: NodeStarter) -> None:
    node = await start_node(node={"org_id": "acme", "executor": "a2a-tck"})
    channel, s = stub(node)
    async with channel:

        def msg(message_id: str, text: str = "x") -> a2a_pb2.SendMessageRequest:
            m = a2a_pb2.Message(
                message_id=message_id, role=a2a_pb2.ROLE_USER, parts=[a2a_pb2.Part(text=text)]
            )
            return a2a_pb2.SendMessageRequest(message=m)

        done = await s.SendMessage(msg("tck-artifact-data-123"))
        assert done.task.status.state == a2a_pb2.TASK_STATE_COMPLETED
        assert done.task.artifacts[0].parts[0].data.struct_value["count"] == 42
        direct = await s.SendMessage(msg("tck-message-response-9"))
        assert direct.message.parts[0].text == "Direct message response"
        waiting = await s.SendMessage(msg("tck-input-required-1"))
        assert waiting.task.status.state == a2a_pb2.TASK_STATE_INPUT_REQUIRED
        # Anything else goes to the model, as on any node.
        normal = await s.SendMessage(msg(str(uuid.uuid4()), "plain question"))
        assert "".join(p.text for p in normal.task.artifacts[0].parts) == "plain question"


async def test_streaming_coalesces_tokens_per_interval(start_node: NodeStarter) -> None:
    node = await start_node(server={"stream_interval_s": 0.1}, model={"echo_token_delay_s": 0.02})
    card = await fetch_agent_card(node.endpoints.http_url)
    client = open_client(card)
    pieces: list[str] = []
    words = " ".join(f"w{i}" for i in range(30))
    try:
        answer = await ask(client, words, on_text=pieces.append)
    finally:
        await client.close()
    assert answer.text == words
    assert "".join(pieces) == words
    assert 2 <= len(pieces) < 15  # ~0.6 s of tokens in 0.1 s batches, not 30 updates


def server_end(client_end: tuple[str, int]) -> socket.socket:
    """The node's socket of a connection from `client_end` (this process serves it): a
    duplicate of the descriptor whose peer is that address."""
    for fd in Path("/proc/self/fd").iterdir():
        try:
            sock = socket.socket(fileno=os.dup(int(fd.name)))
        except OSError:
            continue
        try:
            if sock.type == socket.SOCK_STREAM and sock.getpeername()[:2] == client_end:
                return sock
        except OSError:
            pass
        sock.close()
    raise AssertionError(f"no socket serves {client_end}")


async def test_http_sends_without_waiting_for_acks(start_node: NodeStarter) -> None:
    """The node's end of a keep-alive HTTP connection has TCP_NODELAY: a response's
    headers and body go out in two sends, and with Nagle's algorithm the second waited
    for the client's delayed ACK (~40 ms on every request after a connection's first)."""
    node = await start_node()
    assert node.endpoints
    url = httpx.URL(node.endpoints.http_url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        for _ in range(2):
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n")
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            length = next(
                int(line.split(b":")[1]) for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )  # fmt: skip
            await reader.readexactly(length)
        with server_end(writer.get_extra_info("sockname")[:2]) as sock:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        writer.close()
        await writer.wait_closed()
