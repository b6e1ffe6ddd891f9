"""Property-based fuzzing of both A2A bindings of one node (echo model): whatever a client
sends, the answer is a result or a client error, never an internal one (JSON-RPC -32603,
HTTP 5xx, gRPC UNKNOWN or INTERNAL), and afterwards the node still answers.

Generated requests: JSON-RPC bodies for every A2A method with adversarial params (wrong
types, huge and negative integers, NaN literals and NaN-ish strings, deep nesting,
unicode, unknown enums, bogus ids, page tokens and timestamps), random bytes bodies,
random bytes to every gRPC method, and structurally valid protos with adversarial values
(non-finite numbers and deep nesting in Structs, any role, empty parts, out-of-range
timestamps). Derandomized and bounded (`max_examples`), so CI runs the same cases.

The node runs in a thread with its own event loop for the whole module; hypothesis
drives it with synchronous clients.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from a2a.types import a2a_pb2, a2a_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consortium.llm.backends import backend_factory
from consortium.node.app import Node
from consortium.node.client import text_message
from tests.conftest import make_config

EXAMPLES = 150
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CALL_TIMEOUT_S = 30.0
INTERNAL_CODES = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNAVAILABLE,  # the node went away
    grpc.StatusCode.DEADLINE_EXCEEDED,  # or hangs
}


class RunningNode:
    """A node serving from a background thread, with synchronous clients for the tests."""

    def __init__(self, data_dir: Path, **sections: dict[str, Any]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        cfg = make_config(data_dir, **sections)
        self.node = Node(cfg, backend_factory(cfg.model, cfg.base_dir))
        self._run(self.node.start())
        assert self.node.endpoints
        self.http = httpx.Client(base_url=self.node.endpoints.http_url, timeout=CALL_TIMEOUT_S)
        self.channel = grpc.insecure_channel(self.node.endpoints.grpc_target)
        self.stub = a2a_pb2_grpc.A2AServiceStub(self.channel)
        done = self.stub.SendMessage(
            a2a_pb2.SendMessageRequest(message=text_message("a task to aim at")),
            timeout=CALL_TIMEOUT_S,
        )
        self.task_id = done.task.id
        self.context_id = done.task.context_id

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def close(self) -> None:
        self.channel.close()
        self.http.close()
        try:
            self._run(self.node.stop())
            self._run(_cancel_leftovers())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


async def _cancel_leftovers() -> None:
    """Ends what outlives a stopped node in its loop (sse-starlette's shutdown watchers)."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    running = RunningNode(tmp_path_factory.mktemp("fuzz"))
    yield running
    running.close()


# --- strategies ------------------------------------------------------------------------
#
# Each request starts valid and gets up to three mutations (a field replaced by an
# adversarial value, or removed): most requests reach the handler, the task store and
# the model, not just the envelope checks.

INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
HUGE_INTS = st.integers(-(10**40), 10**40) | st.sampled_from([2**31, -(2**31) - 1, 2**63, 2**64])
TEXT = st.text(max_size=12) | st.sampled_from(
    ["", " ", "\x00", "\u202e", "\U0001f600", "\ud800", "NaN", "Infinity", "-Infinity", "null"]
)
NON_EMPTY = st.text(min_size=1, max_size=12)
TIMESTAMP_TEXT = st.sampled_from(
    [
        "1970-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999999Z",
        "0001-01-01T00:00:00Z",
        "10000-01-01T00:00:00Z",
        "2262-04-12T00:00:00Z",
        "2024-02-30T00:00:00Z",
        "2024-01-01T00:00:00+23:59",
        "2024-01-01T00:00:00.1234567891Z",
        "now",
    ]
)
ENUM_TEXT = st.sampled_from(
    ["ROLE_USER", "ROLE_AGENT", "ROLE_UNSPECIFIED", "ROLE_NOPE", "TASK_STATE_COMPLETED", "X"]
)
# Placeholders replaced in the encoded body: json.dumps cannot write these numbers.
HUGE_INT_TEXT = "__huge_int__"
HUGE_FLOAT_TEXT = "__huge_float__"
RAW_NUMBERS = {f'"{HUGE_INT_TEXT}"': "9" * 5000, f'"{HUGE_FLOAT_TEXT}"': "1e400"}


def deep(depth: int, leaf: Any = 1, as_list: bool = False) -> Any:
    value: Any = leaf
    for _ in range(depth):
        value = [value] if as_list else {"d": value}
    return value


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | INT64
    | HUGE_INTS
    | st.floats(allow_nan=True, allow_infinity=True)
    | TEXT
    | st.sampled_from([HUGE_INT_TEXT, HUGE_FLOAT_TEXT])
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=12,
)
DEEP_JSON = st.builds(deep, st.integers(1, 140), JSON_SCALARS, st.booleans())
ANY_JSON = JSON_VALUES | DEEP_JSON
JSON_OBJECTS = st.dictionaries(TEXT, JSON_VALUES | DEEP_JSON, max_size=3)
FINE_OBJECTS = st.dictionaries(
    NON_EMPTY,
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(-1e9, 1e9) | TEXT,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(NON_EMPTY, inner, max_size=3),
        max_leaves=8,
    ),
    max_size=3,
)


def page_tokens() -> st.SearchStrategy[str]:
    def token(payload: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")

    return TEXT | st.builds(
        token,
        st.fixed_dictionaries(
            {"ts": st.none() | HUGE_INTS | INT64 | TEXT, "id": TEXT | JSON_VALUES}
        )
        | JSON_VALUES,
    )


def json_part() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {},
        optional={
            "text": TEXT | ANY_JSON,
            "raw": st.sampled_from(["", "aGVsbG8=", "!!"]) | ANY_JSON,
            "url": TEXT,
            "data": ANY_JSON,
            "metadata": JSON_OBJECTS | ANY_JSON,
            "mediaType": TEXT,
            "filename": TEXT,
        },
    )


def json_mutations(node: RunningNode) -> dict[str, list[tuple[tuple[Any, ...], Any]]]:
    """Per method: the paths a mutation may replace, each with its adversarial values."""
    ids = st.sampled_from([node.task_id, "no-such-task", ""]) | TEXT | ANY_JSON
    message: list[tuple[tuple[Any, ...], Any]] = [
        (("message", "role"), ENUM_TEXT | INT32 | ANY_JSON),
        (("message", "messageId"), TEXT | ANY_JSON),
        (("message", "parts"), st.lists(json_part(), max_size=3) | ANY_JSON),
        (("message", "parts", 0), json_part() | ANY_JSON),
        (("message", "parts", 0, "text"), TEXT | ANY_JSON),
        (("message", "parts", 0, "data"), ANY_JSON),
        (("message", "parts", 0, "metadata"), JSON_OBJECTS),
        (("message", "metadata"), JSON_OBJECTS | ANY_JSON),
        (("message", "metadata", "consortium"), JSON_OBJECTS | ANY_JSON),
        (("message", "taskId"), ids),
        (("message", "contextId"), st.just(node.context_id) | TEXT | ANY_JSON),
        (("message", "referenceTaskIds"), st.lists(ids, max_size=2) | ANY_JSON),
        (("message", "extensions"), st.lists(TEXT, max_size=2) | ANY_JSON),
        (("configuration", "historyLength"), INT32 | HUGE_INTS | ANY_JSON),
        (("configuration", "returnImmediately"), st.booleans() | ANY_JSON),
        (("configuration", "acceptedOutputModes"), st.lists(TEXT, max_size=2) | ANY_JSON),
        (("metadata",), JSON_OBJECTS | ANY_JSON),
        (("tenant",), TEXT | ANY_JSON),
        (("message",), ANY_JSON),
    ]
    task_ref: list[tuple[tuple[Any, ...], Any]] = [
        (("id",), ids),
        (("historyLength",), INT32 | HUGE_INTS | ANY_JSON),
        (("metadata",), JSON_OBJECTS | ANY_JSON),
        (("tenant",), TEXT | ANY_JSON),
    ]
    push: list[tuple[tuple[Any, ...], Any]] = [
        (("taskId",), ids),
        (("id",), TEXT | ANY_JSON),
        (("url",), TEXT | ANY_JSON),
        (("authentication",), JSON_OBJECTS | ANY_JSON),
    ]
    return {
        "SendMessage": message,
        "SendStreamingMessage": message,
        "GetTask": task_ref,
        "CancelTask": task_ref,
        "SubscribeToTask": task_ref,
        "ListTasks": [
            (("contextId",), st.just(node.context_id) | TEXT | ANY_JSON),
            (("status",), ENUM_TEXT | INT32 | ANY_JSON),
            (("pageSize",), INT32 | HUGE_INTS | ANY_JSON),
            (("pageToken",), page_tokens() | ANY_JSON),
            (("historyLength",), INT32 | HUGE_INTS | ANY_JSON),
            (("statusTimestampAfter",), TIMESTAMP_TEXT | ANY_JSON),
            (("includeArtifacts",), st.booleans() | ANY_JSON),
        ],
        "CreateTaskPushNotificationConfig": push,
        "GetTaskPushNotificationConfig": push,
        "ListTaskPushNotificationConfigs": push,
        "DeleteTaskPushNotificationConfig": push,
        "GetExtendedAgentCard": [(("tenant",), TEXT | ANY_JSON)],
    }


# Where the bugs live: messages, then task reads; each other method once.
WEIGHTED_METHODS = [
    *["SendMessage"] * 5,
    *["SendStreamingMessage"] * 3,
    *["ListTasks"] * 4,
    *["GetTask"] * 2,
    "CancelTask",
    "SubscribeToTask",
    "CreateTaskPushNotificationConfig",
    "GetTaskPushNotificationConfig",
    "ListTaskPushNotificationConfigs",
    "DeleteTaskPushNotificationConfig",
    "GetExtendedAgentCard",
]


def valid_json_params(draw: st.DrawFn, node: RunningNode, method: str) -> dict[str, Any]:
    if method in ("SendMessage", "SendStreamingMessage"):
        message: dict[str, Any] = {
            "messageId": draw(NON_EMPTY),
            "role": "ROLE_USER",
            "parts": [{"text": draw(NON_EMPTY)}],
        }
        if draw(st.booleans()):
            message["metadata"] = draw(FINE_OBJECTS)
        return {"message": message}
    if method in ("GetTask", "CancelTask", "SubscribeToTask"):
        return {"id": draw(st.sampled_from([node.task_id, "no-such-task"]))}
    if method == "ListTasks":
        return {"pageSize": draw(st.integers(1, 100))} if draw(st.booleans()) else {}
    if method.endswith("PushNotificationConfig") or method.endswith("Configs"):
        return {"taskId": node.task_id, "id": "p1", "url": "https://example.com/hook"}
    return {}


def mutate(target: Any, path: tuple[Any, ...], value: Any, remove: bool) -> None:
    for key in path[:-1]:
        if isinstance(target, dict):
            target = target.setdefault(key, {})
        elif isinstance(target, list) and isinstance(key, int) and key < len(target):
            target = target[key]
        else:
            return
    last = path[-1]
    if isinstance(target, dict):
        if remove:
            target.pop(last, None)
        else:
            target[last] = value
    elif isinstance(target, list) and isinstance(last, int) and last < len(target):
        target[last] = value


@st.composite
def jsonrpc_bodies(draw: st.DrawFn, node: RunningNode) -> bytes:
    mutations = json_mutations(node)
    # Hypothesis favours the smallest choices: 0 is the ordinary case throughout.
    if draw(st.integers(0, 19)) == 19:
        method = draw(st.sampled_from(["", "tasks/get", "sendMessage"]) | TEXT)
    else:
        method = draw(st.sampled_from(WEIGHTED_METHODS))
    params = valid_json_params(draw, node, method)
    for _ in range(draw(st.sampled_from([1, 2, 3, 0]))):
        if method not in mutations:
            break
        path, values = draw(st.sampled_from(mutations[method]))
        mutate(params, path, draw(values), remove=draw(st.integers(0, 5)) == 5)
    body: Any = {"jsonrpc": "2.0", "id": draw(st.integers(0, 10**6)), "method": method}
    body["params"] = params
    envelope = draw(st.integers(0, 19))
    if envelope == 15:
        body["jsonrpc"] = draw(JSON_SCALARS)
    elif envelope == 16:
        body["id"] = draw(ANY_JSON)
    elif envelope == 17:
        body["params"] = draw(ANY_JSON)
    elif envelope == 18:
        body.pop(draw(st.sampled_from(sorted(body))))
    elif envelope == 19:
        body = draw(ANY_JSON)
    text = json.dumps(body, ensure_ascii=draw(st.booleans()))
    for placeholder, number in RAW_NUMBERS.items():
        text = text.replace(placeholder, number)
    return text.encode("utf-8", "surrogatepass")


# --- JSON-RPC --------------------------------------------------------------------------


def check_http(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        payloads = [
            line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")
        ]
    else:
        payloads = [response.text]
    for payload in payloads:
        answer = json.loads(payload)
        if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
            assert answer["error"].get("code") != -32603, answer


def post(node: RunningNode, body: bytes, version: str | None = "1.0") -> httpx.Response:
    headers = {"content-type": "application/json"}
    if version is not None:
        headers["A2A-Version"] = version
    return node.http.post("/", content=body, headers=headers)


def test_jsonrpc_requests_never_get_internal_errors(fuzzed: RunningNode) -> None:
    @FUZZ
    @given(body=jsonrpc_bodies(fuzzed), version=st.sampled_from(["1.0", "1.0", None, "1", ""]))
    def run(body: bytes, version: str | None) -> None:
        check_http(post(fuzzed, body, version))

    run()


def test_jsonrpc_random_bytes_never_get_internal_errors(fuzzed: RunningNode) -> None:
    @settings(FUZZ, max_examples=EXAMPLES // 3)
    @given(
        body=st.binary(max_size=64)
        | st.builds(lambda b: b'{"jsonrpc": "2.0", "id": 1, "method": "GetTask"' + b, st.binary())
    )
    def run(body: bytes) -> None:
        check_http(post(fuzzed, body))

    run()


SECRET = "jane.doe@example.com"
CLIENT_MISTAKES = [
    # (request id, body): params that do not parse, an unknown method, a method that is
    # not a string, the wrong JSON-RPC version, a batch, a task nobody has.
    ("req-params", {"method": "SendMessage", "params": {"message": 5, "note": SECRET}}),
    ("req-method", {"method": "NoSuchMethod", "params": {SECRET: 1}}),
    ("req-method-type", {"method": 5, "params": {"note": SECRET}}),
    ("req-version", {"jsonrpc": "1.0", "method": "GetTask", "params": {"id": SECRET}}),
    (None, [{"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": SECRET}}]),
    ("req-task", {"method": "GetTask", "params": {"id": SECRET}}),
]


def test_client_mistakes_are_no_errors_in_the_log(
    fuzzed: RunningNode, caplog: pytest.LogCaptureFixture
) -> None:
    # a2a-sdk's dispatcher logged each at ERROR, with a parse error quoting the body.
    with caplog.at_level(logging.DEBUG, logger="a2a"):
        for request_id, body in CLIENT_MISTAKES:
            if isinstance(body, dict):
                body = {"jsonrpc": "2.0", "id": request_id, **body}
            check_http(post(fuzzed, json.dumps(body).encode()))
    records = [r for r in caplog.records if r.name.startswith("a2a")]
    assert [r.getMessage() for r in records if r.levelno >= logging.ERROR] == []
    assert not [r for r in records if SECRET in r.getMessage() or r.exc_info]
    warned = " ".join(r.getMessage() for r in records if r.levelno == logging.WARNING)
    for request_id in ("req-params", "req-method", "req-method-type", "req-version"):
        assert request_id in warned


# --- gRPC ------------------------------------------------------------------------------


def check_grpc(call: Any) -> None:
    try:
        result = call()
        if hasattr(result, "__iter__") and not hasattr(result, "SerializeToString"):
            for _ in result:
                pass
    except grpc.RpcError as e:
        assert e.code() not in INTERNAL_CODES, (e.code(), e.details())


def test_grpc_random_bytes_never_get_internal_errors(fuzzed: RunningNode) -> None:
    methods = list(a2a_pb2.DESCRIPTOR.services_by_name["A2AService"].methods)

    @settings(FUZZ, max_examples=EXAMPLES // 3)
    @given(method=st.sampled_from(methods), raw=st.binary(max_size=128))
    def run(method: Any, raw: bytes) -> None:
        path = f"/lf.a2a.v1.A2AService/{method.name}"
        if method.server_streaming:
            call = fuzzed.channel.unary_stream(path)
        else:
            call = fuzzed.channel.unary_unary(path)
        check_grpc(lambda: call(raw, timeout=CALL_TIMEOUT_S))

    run()


def clean(text: str) -> str:
    """protobuf refuses strings that are not valid UTF-8 (lone surrogates) when set."""
    return text.encode("utf-8", "replace").decode()


PTEXT = TEXT.map(clean)  # what a protobuf string can hold
FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [math.nan, math.inf, -math.inf]
)
STRUCT_LEAVES = st.none() | st.booleans() | FLOATS | st.integers(-(2**53), 2**53) | PTEXT
STRUCT_VALUES = st.recursive(
    STRUCT_LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(PTEXT, inner, max_size=3),
    max_leaves=10,
) | st.builds(deep, st.integers(1, 45), STRUCT_LEAVES, st.booleans())
STRUCTS = st.dictionaries(PTEXT, STRUCT_VALUES, max_size=3)


def fill_struct(target: Any, values: dict[str, Any]) -> None:
    # In place: protobuf's constructors refuse to copy what is nested too deep.
    target.Clear()
    target.update(values)


@st.composite
def proto_parts(draw: st.DrawFn) -> a2a_pb2.Part:
    part = a2a_pb2.Part()
    kind = draw(st.sampled_from(["text", "raw", "url", "data", "none"]))
    if kind == "text":
        part.text = draw(PTEXT)
    elif kind == "raw":
        part.raw = draw(st.binary(max_size=8))
    elif kind == "url":
        part.url = draw(PTEXT)
    elif kind == "data":
        value = draw(STRUCT_VALUES)
        if isinstance(value, dict):
            fill_struct(part.data.struct_value, value)
        elif draw(st.booleans()):
            part.data.number_value = draw(FLOATS)
    if draw(st.booleans()):
        fill_struct(part.metadata, draw(STRUCTS))
    part.media_type = draw(PTEXT)
    return part


def send_mutations(node: RunningNode) -> list[Any]:
    """Changes to a valid SendMessageRequest: functions of (draw, request)."""
    ids = st.sampled_from([node.task_id, "no-such-task", ""]) | PTEXT

    def role(draw: st.DrawFn, r: a2a_pb2.SendMessageRequest) -> None:
        r.message.role = draw(INT32)  # type: ignore[assignment]

    def message_id(draw: st.DrawFn, r: a2a_pb2.SendMessageRequest) -> None:
        r.message.message_id = draw(PTEXT)

    def parts(draw: st.DrawFn, r: a2a_pb2.SendMessageRequest) -> None:
        if draw(st.booleans()):
            r.message.ClearField("parts")
        for part in draw(st.lists(proto_parts(), max_size=3)):
            r.message.parts.add().CopyFrom(part)

    def metadata(draw: st.DrawFn, r: a2a_pb2.SendMessageRequest) -> None:
        fill_struct(r.message.metadata, draw(STRUCTS))

    def request_metadata(draw: st.DrawFn, r: a2a_pb2.SendMessageRequest) -> None:
        fill_struct(r.metadata, draw(STRUCTS))

    def task(draw: st.DrawFn, r: a2a_pb2.SendMessageRequest) -> None:
        r.message.task_id = draw(ids)
        r.message.context_id = draw(st.sampled_from(["", node.context_id]) | PTEXT)

    def references(draw: st.DrawFn, r: a2a_pb2.SendMessageRequest) -> None:
        r.message.reference_task_ids.extend(draw(st.lists(ids, max_size=2)))
        r.message.extensions.extend(draw(st.lists(PTEXT, max_size=2)))

    def configuration(draw: st.DrawFn, r: a2a_pb2.SendMessageRequest) -> None:
        c = r.configuration
        c.history_length = draw(INT32)
        c.return_immediately = draw(st.booleans())
        c.accepted_output_modes.extend(draw(st.lists(PTEXT, max_size=2)))
        if draw(st.booleans()):
            c.task_push_notification_config.url = draw(PTEXT)

    return [role, message_id, parts, metadata, request_metadata, task, references, configuration]


def list_mutations() -> list[Any]:
    def page_size(draw: st.DrawFn, r: a2a_pb2.ListTasksRequest) -> None:
        r.page_size = draw(INT32)

    def page_token(draw: st.DrawFn, r: a2a_pb2.ListTasksRequest) -> None:
        r.page_token = clean(draw(page_tokens()))

    def history(draw: st.DrawFn, r: a2a_pb2.ListTasksRequest) -> None:
        r.history_length = draw(INT32)

    def after(draw: st.DrawFn, r: a2a_pb2.ListTasksRequest) -> None:
        r.status_timestamp_after.seconds = draw(
            INT64 | st.integers(-62_135_596_800, 253_402_300_799)
        )
        r.status_timestamp_after.nanos = draw(INT32 | st.integers(0, 999_999_999))

    def filters(draw: st.DrawFn, r: a2a_pb2.ListTasksRequest) -> None:
        r.status = draw(st.integers(-3, 12))  # type: ignore[assignment]
        r.context_id = draw(PTEXT)
        r.include_artifacts = draw(st.booleans())

    return [page_size, page_token, history, after, filters]


@st.composite
def grpc_requests(draw: st.DrawFn, node: RunningNode) -> tuple[str, Any]:
    ids = st.sampled_from([node.task_id, "no-such-task", ""]) | PTEXT
    method = draw(st.sampled_from(WEIGHTED_METHODS))
    request: Any
    mutations: list[Any] = []
    if method in ("SendMessage", "SendStreamingMessage"):
        request = a2a_pb2.SendMessageRequest()
        request.message.CopyFrom(text_message(draw(NON_EMPTY)))
        mutations = send_mutations(node)
    elif method == "ListTasks":
        request = a2a_pb2.ListTasksRequest()
        mutations = list_mutations()
    elif method in ("GetTask", "CancelTask", "SubscribeToTask"):
        cls = getattr(a2a_pb2, f"{method}Request")
        request = cls(id=draw(ids))
        if method == "GetTask" and draw(st.booleans()):
            request.history_length = draw(INT32)
    else:
        descriptor = a2a_pb2.DESCRIPTOR.services_by_name["A2AService"].methods_by_name[method]
        request = getattr(a2a_pb2, descriptor.input_type.name)()
        for name in ("task_id", "id", "url", "tenant"):
            if name in request.DESCRIPTOR.fields_by_name:
                setattr(request, name, draw(ids))
    if mutations:
        for _ in range(draw(st.sampled_from([1, 2, 3, 0]))):
            draw(st.sampled_from(mutations))(draw, request)
    return method, request


def test_grpc_requests_never_get_internal_errors(fuzzed: RunningNode) -> None:
    @FUZZ
    @given(call=grpc_requests(fuzzed))
    def run(call: tuple[str, Any]) -> None:
        method, request = call
        check_grpc(lambda: getattr(fuzzed.stub, method)(request, timeout=CALL_TIMEOUT_S))

    run()


def test_node_still_answers_after_the_fuzzing(fuzzed: RunningNode) -> None:
    done = fuzzed.stub.SendMessage(
        a2a_pb2.SendMessageRequest(message=text_message("still here")), timeout=CALL_TIMEOUT_S
    )
    assert done.task.status.state == a2a_pb2.TASK_STATE_COMPLETED
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "SendMessage",
        "params": {
            "message": {"messageId": "last", "role": "ROLE_USER", "parts": [{"text": "ok"}]}
        },
    }
    answer = post(fuzzed, json.dumps(body).encode()).json()
    assert answer["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED", answer
    listed = fuzzed.stub.ListTasks(a2a_pb2.ListTasksRequest(page_size=100), timeout=CALL_TIMEOUT_S)
    assert listed.total_size >= 2
    listed_json = post(fuzzed, b'{"jsonrpc": "2.0", "id": 2, "method": "ListTasks", "params": {}}')
    assert "result" in listed_json.json(), listed_json.text
