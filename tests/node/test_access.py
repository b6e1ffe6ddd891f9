"""Who may call a node, and what each caller sees: API keys, the anonymous loopback
user, strangers, and task ownership on every task method of both bindings (echo model;
these tests are about access, not the model)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import grpc
import httpx
import pytest
from a2a.types import a2a_pb2, a2a_pb2_grpc
from google.rpc import error_details_pb2, status_pb2

from consortium.node.app import Node
from consortium.node.auth import Caller, Credentials, grpc_peer_host, is_loopback
from consortium.node.client import ask, fetch_agent_card, open_client, text_message
from consortium.trust.api_keys import ApiKeys, parse_token
from tests.conftest import NodeStarter

BINDINGS = ("grpc", "jsonrpc")


class Access:
    """Calls one node as one caller (an API key, or nobody) over either binding."""

    def __init__(self, node: Node, key: str | None = None) -> None:
        assert node.endpoints is not None
        self.node = node
        self.key = key
        self.ep = node.endpoints

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.key}"),) if self.key else ()

    async def grpc(self, method: str, request: Any) -> Any:
        async with grpc.aio.insecure_channel(self.ep.grpc_target) as channel:
            stub = a2a_pb2_grpc.A2AServiceStub(channel)
            call = getattr(stub, method)(request, metadata=self._metadata())
            if method in ("SendStreamingMessage", "SubscribeToTask"):
                return [event async for event in call]
            return await call

    async def jsonrpc(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        headers = {"A2A-Version": "1.0"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        async with httpx.AsyncClient() as http:
            r = await http.post(
                self.ep.http_url + "/",
                json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
                headers=headers,
            )
        if method in ("SendStreamingMessage", "SubscribeToTask") and r.text.startswith("data:"):
            import json

            events = [
                json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:")
            ]
            return events[0] if "error" in events[0] else {"result": events}
        body: dict[str, Any] = r.json()
        return body

    async def send(self, text: str, binding: str = "grpc", **config: Any) -> str:
        """Sends a task that completes; its id."""
        if binding == "grpc":
            resp = await self.grpc(
                "SendMessage",
                a2a_pb2.SendMessageRequest(
                    message=text_message(text),
                    configuration=a2a_pb2.SendMessageConfiguration(**config),
                ),
            )
            return str(resp.task.id)
        body = await self.jsonrpc(
            "SendMessage",
            {
                "message": {
                    "messageId": str(uuid.uuid4()),
                    "role": "ROLE_USER",
                    "parts": [{"text": text}],
                }
            },
        )
        return str(body["result"]["task"]["id"])

    async def code(self, binding: str, method: str, params: dict[str, Any]) -> str:
        """The outcome of one call: 'ok', or the gRPC status name / JSON-RPC error code."""
        if binding == "grpc":
            cls = {
                "GetTask": a2a_pb2.GetTaskRequest,
                "ListTasks": a2a_pb2.ListTasksRequest,
                "CancelTask": a2a_pb2.CancelTaskRequest,
                "SubscribeToTask": a2a_pb2.SubscribeToTaskRequest,
                "SendMessage": a2a_pb2.SendMessageRequest,
                "SendStreamingMessage": a2a_pb2.SendMessageRequest,
            }[method]
            from google.protobuf.json_format import ParseDict

            try:
                await self.grpc(method, ParseDict(params, cls()))
            except grpc.aio.AioRpcError as e:
                return e.code().name
            return "ok"
        body = await self.jsonrpc(method, params)
        return "ok" if "result" in body else str(body["error"]["code"])

    async def list_ids(self, binding: str) -> set[str]:
        if binding == "grpc":
            resp = await self.grpc("ListTasks", a2a_pb2.ListTasksRequest(page_size=100))
            return {t.id for t in resp.tasks}
        body = await self.jsonrpc("ListTasks", {"pageSize": 100})
        return {t["id"] for t in body["result"]["tasks"]}


def new_key(node: Node, name: str = "app", **kw: Any) -> str:
    assert node.keys is not None
    return node.keys.create(name, **kw)[1]


NOT_FOUND = {"grpc": "NOT_FOUND", "jsonrpc": "-32001"}
UNAUTHENTICATED = {"grpc": "UNAUTHENTICATED", "jsonrpc": "-32040"}


@pytest.mark.parametrize("binding", BINDINGS)
async def test_stranger_is_refused_on_every_method(start_node: NodeStarter, binding: str) -> None:
    node = await start_node(auth={"anonymous_loopback": False})
    owner = Access(node, new_key(node))
    task_id = await owner.send("mine")
    stranger = Access(node)
    message = {"messageId": str(uuid.uuid4()), "role": "ROLE_USER", "parts": [{"text": "hi"}]}
    calls = {
        "SendMessage": {"message": message},
        "SendStreamingMessage": {"message": {**message, "messageId": str(uuid.uuid4())}},
        "GetTask": {"id": task_id},
        "ListTasks": {},
        "CancelTask": {"id": task_id},
        "SubscribeToTask": {"id": task_id},
    }
    for method, params in calls.items():
        assert await stranger.code(binding, method, params) == UNAUTHENTICATED[binding], method
    # A forged or malformed key is no better than none.
    for bad in ("csk_000000000000_" + "A" * 43, "not-a-key", owner.key[:-1] + "-"):  # type: ignore[index]
        forger = Access(node, bad)
        assert await forger.code(binding, "ListTasks", {}) == UNAUTHENTICATED[binding]
    assert node.handler is not None and node.handler.refusals["no_credentials"] >= 6
    assert await owner.code(binding, "GetTask", {"id": task_id}) == "ok"


@pytest.mark.parametrize("binding", BINDINGS)
async def test_each_caller_sees_and_touches_only_its_own_tasks(
    start_node: NodeStarter, binding: str
) -> None:
    node = await start_node(model={"echo_token_delay_s": 0.05})
    alice, bob, anon = (
        Access(node, new_key(node, "alice")),
        Access(node, new_key(node, "bob")),
        Access(node),
    )
    a_done = await alice.send("alice's finished task", binding)
    b_done = await bob.send("bob's task", binding)
    n_done = await anon.send("anonymous task", binding)
    # One of alice's tasks still running, for cancel and subscribe.
    running = await alice.grpc(
        "SendMessage",
        a2a_pb2.SendMessageRequest(
            message=text_message(" ".join(f"w{i}" for i in range(200))),
            configuration=a2a_pb2.SendMessageConfiguration(return_immediately=True),
        ),
    )
    a_run = running.task.id

    assert await alice.list_ids(binding) == {a_done, a_run}
    assert await bob.list_ids(binding) == {b_done}
    assert await anon.list_ids(binding) == {n_done}
    for other in (bob, anon):
        for method in ("GetTask", "CancelTask", "SubscribeToTask"):
            for tid in (a_done, a_run):
                assert await other.code(binding, method, {"id": tid}) == NOT_FOUND[binding], method
    # Continuing someone else's task (the hijack): not found, and the task is untouched.
    hijack = {
        "message": {
            "messageId": str(uuid.uuid4()),
            "role": "ROLE_USER",
            "taskId": a_run,
            "parts": [{"text": "my text becomes the answer"}],
        }
    }
    assert await bob.code(binding, "SendMessage", hijack) == NOT_FOUND[binding]
    # The owner can still cancel its own running task.
    assert await alice.code(binding, "CancelTask", {"id": a_run}) == "ok"
    got = await alice.grpc("GetTask", a2a_pb2.GetTaskRequest(id=a_run))
    assert got.status.state == a2a_pb2.TASK_STATE_CANCELED
    assert "my text" not in str(got)


async def test_an_authentication_failure_names_its_reason(start_node: NodeStarter) -> None:
    """A client (the A2A JavaScript SDK reads only this) learns from the error's
    google.rpc.ErrorInfo why it was refused, on both bindings: not UNKNOWN_ERROR."""
    node = await start_node(auth={"anonymous_loopback": False})
    for key, reason in ((None, "no_credentials"), ("csk_000000000000_" + "A" * 43, "invalid_key")):
        caller = Access(node, key)
        body = await caller.jsonrpc("ListTasks", {})
        assert body["error"]["code"] == -32040
        info = body["error"]["data"][0]
        assert info["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
        assert info["reason"] == "UNAUTHENTICATED" and info["domain"] == "a2a-protocol.org"
        assert info["metadata"] == {"reason": reason}
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await caller.grpc("ListTasks", a2a_pb2.ListTasksRequest())
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        details = dict(e.value.trailing_metadata() or ())["grpc-status-details-bin"]
        error_info = error_details_pb2.ErrorInfo()
        assert status_pb2.Status.FromString(details).details[0].Unpack(error_info)
        assert error_info.reason == "UNAUTHENTICATED" and error_info.metadata["reason"] == reason


async def test_revoked_and_expired_keys_stop_working_without_a_restart(
    start_node: NodeStarter,
) -> None:
    node = await start_node()
    assert node.keys is not None
    key = new_key(node, "short")
    caller = Access(node, key)
    assert await caller.code("grpc", "ListTasks", {}) == "ok"
    # Revoked through a second handle on the database, as `consortium keys revoke` does.
    other = ApiKeys(node.config.api_keys_path)
    try:
        other.revoke("short")
    finally:
        other.close()
    for binding in BINDINGS:
        assert await caller.code(binding, "ListTasks", {}) == UNAUTHENTICATED[binding]
    soon = new_key(node, "soon", expires_at=time.time() + 0.5)
    assert await Access(node, soon).code("jsonrpc", "ListTasks", {}) == "ok"
    await asyncio.sleep(0.6)  # the key's expiry, not synchronisation
    assert await Access(node, soon).code("jsonrpc", "ListTasks", {}) == UNAUTHENTICATED["jsonrpc"]


async def test_api_key_store_keeps_only_hashes(tmp_path: Any) -> None:
    keys = ApiKeys(tmp_path / "keys.sqlite3")
    try:
        key, token = keys.create("ci", admin=True)
        assert token.startswith(f"csk_{key.id}_") and len(token) == 4 + 12 + 1 + 43
        raw = (tmp_path / "keys.sqlite3").read_bytes()
        # The secret is everything after the prefix (base64url: it may contain "_" itself).
        secret = token.removeprefix(f"csk_{key.id}_")
        assert len(secret) == 43 and secret.encode() not in raw
        assert keys.authenticate(token) == key
        assert keys.authenticate(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
        assert keys.authenticate(f"csk_{'f' * 12}_{token[-43:]}") is None
        with pytest.raises(Exception, match="name"):
            keys.create("bad name\n")
        with pytest.raises(Exception, match="past"):
            keys.create("late", expires_at=time.time() - 1)
        assert [k.state(time.time()) for k in keys.all()] == ["active"]
        keys.revoke(key.id)
        assert keys.authenticate(token) is None
        with pytest.raises(Exception, match="no active key"):
            keys.revoke(key.id)
    finally:
        keys.close()
    assert oct((tmp_path / "keys.sqlite3").stat().st_mode & 0o777) == oct(0o600)


def test_bearer_parsing_and_loopback_detection() -> None:
    assert parse_token("Bearer abc") == "abc"
    assert parse_token("bearer  abc ") == "abc"
    assert parse_token("Basic abc") is None and parse_token("Bearer ") is None
    assert grpc_peer_host("ipv4:127.0.0.1:5000") == "127.0.0.1"
    assert grpc_peer_host("ipv6:[::1]:5000") == "::1"
    assert grpc_peer_host("unix:/tmp/x") is None
    assert is_loopback("127.0.0.1") and is_loopback("127.8.9.10") and is_loopback("::1")
    assert is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("10.0.0.1") and not is_loopback("::ffff:10.0.0.1")
    assert not is_loopback("localhost") and not is_loopback(None) and not is_loopback("")
    assert Caller("key", "abc").owner == "key:abc"
    assert Caller("member", "acme").owner == "org:acme"


async def test_agent_card_declares_security_schemes(start_node: NodeStarter) -> None:
    node = await start_node()
    card = await fetch_agent_card(node.endpoints.http_url)  # type: ignore[union-attr]
    scheme = card.security_schemes["apiKey"].http_auth_security_scheme
    assert scheme.scheme == "bearer"
    assert [list(r.schemes) for r in card.security_requirements] == [["apiKey"]]


async def test_client_with_an_api_key_over_both_bindings(start_node: NodeStarter) -> None:
    node = await start_node(auth={"anonymous_loopback": False})
    key = new_key(node)
    card = await fetch_agent_card(node.endpoints.http_url)  # type: ignore[union-attr]
    for transport in ("GRPC", "JSONRPC"):
        client = open_client(card, transport=transport, api_key=key)
        try:
            answer = await ask(client, "keyed call")
        finally:
            await client.close()
        assert answer.state == "completed" and answer.text == "keyed call"


async def test_healthz_details_only_for_loopback_or_an_admin_key(start_node: NodeStarter) -> None:
    node = await start_node()
    async with httpx.AsyncClient() as http:
        body = (await http.get(node.endpoints.http_url + "/healthz")).json()  # type: ignore[union-attr]
    assert body["status"] == "ok" and "refusals" in body  # loopback: details
    # From elsewhere (the decision the route makes from the caller's address and key):
    assert node.health(Credentials(loopback=False)) == {"status": "ok"}
    user = new_key(node, "user")
    assert node.health(Credentials(authorization=f"Bearer {user}")) == {"status": "ok"}
    admin = new_key(node, "ops", admin=True)
    assert "refusals" in node.health(Credentials(authorization=f"Bearer {admin}"))


async def test_data_directory_is_private(start_node: NodeStarter) -> None:
    node = await start_node()
    await Access(node).send("something to store")
    data = node.config.data_dir
    assert data.stat().st_mode & 0o777 == 0o700
    await node.stop()
    files = [p for p in data.rglob("*") if p.is_file()]
    assert files
    for p in files:
        assert p.stat().st_mode & 0o777 == 0o600, p


async def test_no_caller_can_make_the_node_load_the_sentence_encoder(
    start_node: NodeStarter,
) -> None:
    """A node whose router needs no embeddings has no encoder: a per-request route still
    answers (without a routing record), and a per-request learned route is refused,
    rather than loading MiniLM (+500 MB) on a caller's demand."""
    node = await start_node(routing={"router": "local"})
    assert node.handler is not None
    orchestrator = node.handler.agent_executor.service.orchestrator  # type: ignore[attr-defined]
    assert orchestrator._embed is None
    card = await fetch_agent_card(node.endpoints.http_url)  # type: ignore[union-attr]
    client = open_client(card)
    try:
        routed = await ask(
            client,
            "Which is a fruit?",
            options={"choices": ["apple", "rock"], "route": "random:0.0"},
        )
        learned = await ask(
            client, "Which is a fruit?", options={"choices": ["apple", "rock"], "route": "learned"}
        )
    finally:
        await client.close()
    assert routed.state == "completed", routed.status_text
    assert learned.state == "rejected" and "learned" in learned.status_text
    assert orchestrator._embed is None
