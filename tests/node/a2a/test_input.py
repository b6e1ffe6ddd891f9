"""Hostile input on both bindings: every request below once got an internal error (gRPC
UNKNOWN, JSON-RPC -32603) or broke later reads; each now gets the client error the A2A
specification names, and the node answers the next valid request on both bindings."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import grpc
import httpx
import pytest
from a2a.types import a2a_pb2, a2a_pb2_grpc
from google.protobuf import timestamp_pb2

from consortium.node.a2a import http_guard
from consortium.node.a2a.validation import MAX_STRUCT_DEPTH
from consortium.node.app import Node
from consortium.node.client import text_message
from tests.conftest import NodeStarter

INVALID_PARAMS = -32602
PARSE_ERROR = -32700


# --- helpers -------------------------------------------------------------------------


def user_message(text: str = "hi", **fields: Any) -> dict[str, Any]:
    return {"messageId": str(uuid.uuid4()), "role": "ROLE_USER", "parts": [{"text": text}]} | fields


def nested(depth: int) -> dict[str, Any]:
    """A JSON object `depth` levels deep (a flat object is 1)."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


async def post(
    node: Node, body: bytes | dict[str, Any], headers: dict[str, str] | None = None
) -> httpx.Response:
    assert node.endpoints
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with httpx.AsyncClient() as http:
        return await http.post(
            node.endpoints.http_url + "/",
            content=content,
            headers={"content-type": "application/json", **(headers or {})},
        )


def rpc(method: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}


async def rpc_error(node: Node, body: bytes | dict[str, Any]) -> int:
    """The JSON-RPC error code of the answer (which must be HTTP 200 with an error)."""
    r = await post(node, body, {"A2A-Version": "1.0"})
    assert r.status_code == 200, r.text
    error = r.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    code: int = error["code"]
    return code


async def grpc_code(node: Node, method: str, request: Any) -> grpc.StatusCode:
    """The status of a unary call that must fail."""
    assert node.endpoints
    async with grpc.aio.insecure_channel(node.endpoints.grpc_target) as channel:
        call = getattr(a2a_pb2_grpc.A2AServiceStub(channel), method)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call(request)
    code: grpc.StatusCode = e.value.code()
    return code


async def grpc_raw_code(node: Node, method: str, raw: bytes) -> grpc.StatusCode:
    assert node.endpoints
    async with grpc.aio.insecure_channel(node.endpoints.grpc_target) as channel:
        call = channel.unary_unary(f"/lf.a2a.v1.A2AService/{method}")
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call(raw)
    code: grpc.StatusCode = e.value.code()
    return code


async def serves(node: Node) -> str:
    """Sends a valid message on both bindings; returns the gRPC task's id."""
    assert node.endpoints
    async with grpc.aio.insecure_channel(node.endpoints.grpc_target) as channel:
        resp = await a2a_pb2_grpc.A2AServiceStub(channel).SendMessage(
            a2a_pb2.SendMessageRequest(message=text_message("still here"))
        )
    assert resp.task.status.state == a2a_pb2.TASK_STATE_COMPLETED
    r = await post(node, rpc("SendMessage", {"message": user_message("still here")}))
    assert r.json()["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED", r.text
    return resp.task.id


def grpc_message(**fields: Any) -> a2a_pb2.Message:
    message = text_message("hi")
    for name, value in fields.items():
        setattr(message, name, value)
    return message


# --- JSON-RPC bodies that are not strict JSON: -32700 --------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"\xff", id="not-utf8"),
        pytest.param(b'{"jsonrpc": "2.0", "id": 1, "method": "GetTask\xc3"}', id="bad-utf8-tail"),
        pytest.param(b'{"jsonrpc": "2.0", "id": 1, "method": "\xed\xa0\x80"}', id="utf8-surrogate"),
    ],
)
async def test_jsonrpc_body_not_utf8_is_parse_error(start_node: NodeStarter, body: bytes) -> None:
    node = await start_node()
    assert await rpc_error(node, body) == PARSE_ERROR
    await serves(node)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e999"])
async def test_jsonrpc_non_finite_number_is_parse_error(
    start_node: NodeStarter, literal: str
) -> None:
    node = await start_node()
    # json.dumps writes NaN and Infinity as these literals; 1e400 is a placeholder here.
    text = json.dumps(rpc("SendMessage", {"message": user_message(metadata={"x": 1e300})}))
    body = text.replace("1e+300", literal).encode()
    assert literal.encode() in body
    assert await rpc_error(node, body) == PARSE_ERROR
    await serves(node)


async def test_jsonrpc_integer_over_digit_limit_is_parse_error(start_node: NodeStarter) -> None:
    node = await start_node()
    body = b'{"jsonrpc": "2.0", "id": 1, "method": "ListTasks", "params": {"pageSize": %s}}' % (
        b"9" * 5000
    )
    assert await rpc_error(node, body) == PARSE_ERROR
    await serves(node)


@pytest.mark.parametrize("depth", [http_guard.MAX_JSON_DEPTH + 1, 1000, 100_000])
async def test_jsonrpc_deep_nesting_is_parse_error(start_node: NodeStarter, depth: int) -> None:
    node = await start_node()
    body = b'{"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "x", "z": %s}}' % (
        b"[" * depth + b"]" * depth
    )
    assert await rpc_error(node, body) == PARSE_ERROR
    await serves(node)


async def test_jsonrpc_unpaired_surrogate_is_parse_error(start_node: NodeStarter) -> None:
    node = await start_node()
    # In the request id, a2a-sdk could not even render its error answer (HTTP 500).
    body = b'{"jsonrpc": "2.0", "id": "\\ud800", "method": "GetTask", "params": {"id": "x"}}'
    assert await rpc_error(node, body) == PARSE_ERROR
    # A correctly paired surrogate escape is an ordinary character.
    paired = rpc("SendMessage", {"message": user_message("\U0001f600")})
    r = await post(node, json.dumps(paired, ensure_ascii=True).encode())
    assert r.json()["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED"
    await serves(node)


async def test_jsonrpc_without_version_header_is_version_1_0(start_node: NodeStarter) -> None:
    node = await start_node()
    r = await post(node, rpc("SendMessage", {"message": user_message("no header")}))
    assert r.json()["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED", r.text
    r = await post(node, rpc("ListTasks", {}), {"A2A-Version": ""})
    assert "result" in r.json(), r.text
    r = await post(node, rpc("ListTasks", {}), {"A2A-Version": "0.3"})
    assert r.json()["error"]["code"] == -32009
    await serves(node)


# --- messages a2a-sdk would accept and then fail on: INVALID_ARGUMENT / -32602 --------


@pytest.mark.parametrize("role", [a2a_pb2.ROLE_AGENT, a2a_pb2.ROLE_UNSPECIFIED, 7])
async def test_role_other_than_user_is_invalid(start_node: NodeStarter, role: int) -> None:
    node = await start_node()
    request = a2a_pb2.SendMessageRequest(message=grpc_message(role=role))
    assert await grpc_code(node, "SendMessage", request) == grpc.StatusCode.INVALID_ARGUMENT
    name = a2a_pb2.Role.Name(role) if role in a2a_pb2.Role.values() else "ROLE_NOPE"
    for method in ("SendMessage", "SendStreamingMessage"):
        body = rpc(method, {"message": user_message(role=name)})
        assert await rpc_error(node, body) == INVALID_PARAMS
    await serves(node)


@pytest.mark.parametrize(
    ("part", "json_part"),
    [
        (a2a_pb2.Part(text=""), {"text": ""}),
        (a2a_pb2.Part(), {}),
        (a2a_pb2.Part(media_type="text/plain"), {"mediaType": "text/plain"}),
        (a2a_pb2.Part(url=""), {"url": ""}),
        (a2a_pb2.Part(raw=b""), {"raw": ""}),
    ],
    ids=["empty-text", "no-content", "only-media-type", "empty-url", "empty-raw"],
)
async def test_part_without_content_is_invalid(
    start_node: NodeStarter, part: a2a_pb2.Part, json_part: dict[str, Any]
) -> None:
    node = await start_node()
    message = text_message("hi")
    message.parts.append(part)
    request = a2a_pb2.SendMessageRequest(message=message)
    assert await grpc_code(node, "SendMessage", request) == grpc.StatusCode.INVALID_ARGUMENT
    body = rpc("SendMessage", {"message": user_message(parts=[{"text": "hi"}, json_part])})
    assert await rpc_error(node, body) == INVALID_PARAMS
    await serves(node)


@pytest.mark.parametrize("where", ["metadata", "data", "part-metadata", "request-metadata"])
@pytest.mark.parametrize("depth", [MAX_STRUCT_DEPTH + 1, 32, 100])
async def test_deep_struct_is_invalid(start_node: NodeStarter, where: str, depth: int) -> None:
    node = await start_node()
    deep = nested(depth)
    message = text_message("hi")
    json_message = user_message()
    json_request: dict[str, Any] = {"message": json_message}
    if where == "metadata":
        message.metadata.update(deep)
        json_message["metadata"] = deep
    elif where == "data":
        message.parts.add().data.struct_value.update(deep)
        json_message["parts"].append({"data": deep})
    elif where == "part-metadata":
        message.parts[0].metadata.update(deep)
        json_message["parts"][0]["metadata"] = deep
    request = a2a_pb2.SendMessageRequest()
    request.message.CopyFrom(message)  # the constructor's copy refuses what is too deep
    if where == "request-metadata":
        request.metadata.update(deep)
        json_request["metadata"] = deep
    # Beyond ~32 levels protobuf's binary parser already refuses the request.
    assert await grpc_code(node, "SendMessage", request) == grpc.StatusCode.INVALID_ARGUMENT
    assert await rpc_error(node, rpc("SendMessage", json_request)) == INVALID_PARAMS
    await serves(node)


async def test_deep_list_is_invalid(start_node: NodeStarter) -> None:
    node = await start_node()
    deepest_allowed: Any = [1]  # inside the metadata object: MAX_STRUCT_DEPTH levels
    for _ in range(MAX_STRUCT_DEPTH - 2):
        deepest_allowed = [deepest_allowed]
    value = [deepest_allowed]
    message = text_message("hi", {"l": value})
    request = a2a_pb2.SendMessageRequest(message=message)
    assert await grpc_code(node, "SendMessage", request) == grpc.StatusCode.INVALID_ARGUMENT
    body = rpc("SendMessage", {"message": user_message(metadata={"l": value})})
    assert await rpc_error(node, body) == INVALID_PARAMS
    # As deep as allowed is fine.
    ok = text_message("hi", {"l": deepest_allowed})
    assert node.endpoints
    async with grpc.aio.insecure_channel(node.endpoints.grpc_target) as channel:
        resp = await a2a_pb2_grpc.A2AServiceStub(channel).SendMessage(
            a2a_pb2.SendMessageRequest(message=ok)
        )
    assert resp.task.status.state == a2a_pb2.TASK_STATE_COMPLETED
    await serves(node)


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", ["metadata", "nested-list", "data", "request-metadata"])
async def test_grpc_non_finite_number_is_invalid(
    start_node: NodeStarter, where: str, number: float
) -> None:
    # JSON has no spelling for these (see the -32700 tests); protobuf's binary form has.
    node = await start_node()
    message = text_message("hi")
    request = a2a_pb2.SendMessageRequest(message=message)
    if where == "metadata":
        request.message.metadata["x"] = number
    elif where == "nested-list":
        request.message.metadata.update({"a": {"b": [1, 2, {"c": 0}]}})
        request.message.metadata["a"]["b"][2]["c"] = number
    elif where == "data":
        request.message.parts.add().data.number_value = number
    else:
        request.metadata["x"] = number
    assert await grpc_code(node, "SendMessage", request) == grpc.StatusCode.INVALID_ARGUMENT
    assert node.endpoints
    async with grpc.aio.insecure_channel(node.endpoints.grpc_target) as channel:
        stream = a2a_pb2_grpc.A2AServiceStub(channel).SendStreamingMessage(request)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            async for _ in stream:
                pass
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await serves(node)


async def test_negative_history_length_is_invalid(start_node: NodeStarter) -> None:
    node = await start_node()
    request = a2a_pb2.SendMessageRequest(
        message=text_message("hi"),
        configuration=a2a_pb2.SendMessageConfiguration(history_length=-1),
    )
    assert await grpc_code(node, "SendMessage", request) == grpc.StatusCode.INVALID_ARGUMENT
    body = rpc("SendMessage", {"message": user_message(), "configuration": {"historyLength": -1}})
    assert await rpc_error(node, body) == INVALID_PARAMS
    for method, req, params in (
        ("GetTask", a2a_pb2.GetTaskRequest(id="x", history_length=-5), {"id": "x"}),
        ("ListTasks", a2a_pb2.ListTasksRequest(history_length=-5), {}),
    ):
        assert await grpc_code(node, method, req) == grpc.StatusCode.INVALID_ARGUMENT
        body = rpc(method, {**params, "historyLength": -5})
        assert await rpc_error(node, body) == INVALID_PARAMS
    await serves(node)


# --- ListTasks -------------------------------------------------------------------------


async def test_list_tasks_after_a_far_future_time_is_empty(start_node: NodeStarter) -> None:
    node = await start_node()
    await serves(node)
    latest = timestamp_pb2.Timestamp(seconds=253_402_300_799, nanos=999_999_999)  # 9999-12-31
    assert node.endpoints
    async with grpc.aio.insecure_channel(node.endpoints.grpc_target) as channel:
        s = a2a_pb2_grpc.A2AServiceStub(channel)
        for after in (latest, timestamp_pb2.Timestamp(seconds=10_000_000_000)):  # 2286
            page = await s.ListTasks(a2a_pb2.ListTasksRequest(status_timestamp_after=after))
            assert list(page.tasks) == [] and page.total_size == 0
        earliest = timestamp_pb2.Timestamp(seconds=-62_135_596_800)  # 0001-01-01
        page = await s.ListTasks(a2a_pb2.ListTasksRequest(status_timestamp_after=earliest))
        assert page.total_size == 2
    for text in ("9999-12-31T23:59:59.999999999Z", "2300-01-01T00:00:00Z"):
        r = await post(node, rpc("ListTasks", {"statusTimestampAfter": text}))
        assert r.json()["result"]["tasks"] == [], r.text
    r = await post(node, rpc("ListTasks", {"statusTimestampAfter": "0001-01-01T00:00:00Z"}))
    assert len(r.json()["result"]["tasks"]) == 2
    await serves(node)


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [
        (253_402_300_800, 0),
        (-62_135_596_801, 0),
        (2**63 - 1, 0),
        (-(2**63), 0),
        (0, -1),
        (0, 1_000_000_000),
        (0, 2**31 - 1),
    ],
)
async def test_list_tasks_after_an_invalid_timestamp_is_invalid(
    start_node: NodeStarter, seconds: int, nanos: int
) -> None:
    node = await start_node()
    after = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
    request = a2a_pb2.ListTasksRequest(status_timestamp_after=after)
    assert await grpc_code(node, "ListTasks", request) == grpc.StatusCode.INVALID_ARGUMENT
    await serves(node)


@pytest.mark.parametrize(
    "after", ["10000-01-01T00:00:00Z", "0000-01-01T00:00:00Z", "yesterday", 12, None, {}]
)
async def test_jsonrpc_list_tasks_after_an_invalid_timestamp_is_invalid(
    start_node: NodeStarter, after: Any
) -> None:
    node = await start_node()
    body = rpc("ListTasks", {"statusTimestampAfter": after})
    r = await post(node, body)
    if after is None:  # null is "not set", per the proto3 JSON mapping
        assert "result" in r.json(), r.text
    else:
        assert r.json()["error"]["code"] == INVALID_PARAMS, r.text
    await serves(node)


def cursor_token(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "token",
    [
        "garbage!",
        "%%%",
        cursor_token({"ts": 10**30, "id": "x"}),
        cursor_token({"ts": -(10**30), "id": "x"}),
        cursor_token({"ts": 1.5, "id": "x"}),
        cursor_token({"ts": 1, "id": ""}),
        cursor_token({"ts": 1, "id": "\ud800"}),
        cursor_token({"ts": 1, "id": "x", "more": 1}),
        base64.urlsafe_b64encode(b"[" * 100_000).decode(),
        base64.urlsafe_b64encode(b'{"ts": 1, "id": "x"' + b"9" * 5000 + b"}").decode(),
    ],
    ids=[
        "not-base64",
        "percent",
        "huge-ts",
        "tiny-ts",
        "float-ts",
        "empty-id",
        "surrogate-id",
        "extra-key",
        "deep",
        "digits",
    ],
)
async def test_garbage_page_token_is_invalid(start_node: NodeStarter, token: str) -> None:
    node = await start_node()
    request = a2a_pb2.ListTasksRequest(page_token=token)
    assert await grpc_code(node, "ListTasks", request) == grpc.StatusCode.INVALID_ARGUMENT
    assert await rpc_error(node, rpc("ListTasks", {"pageToken": token})) == INVALID_PARAMS
    await serves(node)


@pytest.mark.parametrize("page_size", [0, -1, 101, 2**31 - 1, -(2**31)])
async def test_page_size_out_of_bounds_is_invalid(start_node: NodeStarter, page_size: int) -> None:
    node = await start_node()
    request = a2a_pb2.ListTasksRequest(page_size=page_size)
    assert await grpc_code(node, "ListTasks", request) == grpc.StatusCode.INVALID_ARGUMENT
    assert await rpc_error(node, rpc("ListTasks", {"pageSize": page_size})) == INVALID_PARAMS
    await serves(node)


@pytest.mark.parametrize("page_size", [2**31, 10**30, 1.5, "ten", [1]])
async def test_jsonrpc_page_size_not_an_int32_is_invalid(
    start_node: NodeStarter, page_size: Any
) -> None:
    node = await start_node()
    assert await rpc_error(node, rpc("ListTasks", {"pageSize": page_size})) == INVALID_PARAMS
    await serves(node)


@pytest.mark.parametrize(
    "method", ["SendMessage", "GetTask", "ListTasks", "CancelTask", "SubscribeToTask"]
)
async def test_grpc_undecodable_request_is_invalid(start_node: NodeStarter, method: str) -> None:
    node = await start_node()
    deep = a2a_pb2.SendMessageRequest()
    deep.message.CopyFrom(text_message("hi", nested(60)))
    for raw in (b"\xff", b"\x0a\x05ab", deep.SerializeToString()):
        code = await grpc_raw_code(node, method, raw)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (raw[:10], code)
    await serves(node)
