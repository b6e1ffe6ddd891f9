"""The provenance a node puts in `metadata["consortium"]`, pinned against recorded answers.

Three echo-model organizations on loopback (the answers are deterministic) answer every
kind of task: local, multiple choice (local, escalated, by a group), escalated to a peer
(asked for, or chosen by the node's router), a peer's refusal passed on, scoring and
feedback replies, refusals. For each, the test
records what a client receives (every event's kind, state, text, artifact flags and
metadata) and compares it with `tests/data/provenance/`, recorded from the node before
provenance became a typed model.

What is pinned, and how:
- `wire`: the metadata as the client decodes it. Its keys are sorted here: a protobuf
  Struct is a map, and upb iterates (and serialises) maps in an order seeded per process,
  so the order on the wire differs from run to run whatever the node does. Values are as
  decoded (every number is a double on the wire: `4.0`).
- `built`: the dict the node handed to protobuf, in the order it built it and with its
  Python types (`4`, not `4.0`): the one order the node decides. It is left unpinned
  (null) where that order came from a peer's wire metadata (an escalated free-text
  answer repeats the peer's provenance first), since that order is random too.
- JSON-RPC: a whole response body, ids and timings replaced, keys as sent.
Genuinely variable values (ids, latencies, decode rates, timestamps) become `<type>`.

`CONSORTIUM_RECORD=1` rewrites the recordings (only ever from a node known to be right).
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from a2a.types import a2a_pb2
from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict

from consortium.node.client import open_client, text_message
from consortium.node.config import parse_config
from consortium.protocols.request_options import METADATA_KEY
from consortium.trust.keys import load_private_key
from consortium.trust.signing import SigningIdentity, sign_request
from tests.conftest import NodeStarter
from tests.integration.test_federation import Federation

DATA = Path(__file__).parent.parent / "data" / "provenance"
RECORD = os.environ.get("CONSORTIUM_RECORD") == "1"
VARIABLE = {"latencyMs", "timeToFirstTokenMs", "decodeTokensPerS", "taskId"}
QUESTION = "Which part of a plant takes in water from the soil?"
CHOICES = ["the roots", "the leaves", "the flowers", "the seeds"]
GROUPS = {
    "panel": {"protocol": "vote", "members": ["self", "globex", "initech"]},
    "tight": {"protocol": "vote", "members": ["self", "globex", "initech"], "max_tokens": 40},
    "ring": {
        "protocol": "debate",
        "members": ["self", "globex", "initech"],
        "rounds": 2,
        "topology": "ring",
    },
    "moa": {
        "protocol": "mixture",
        "members": ["self", "globex", "initech"],
        "aggregator": "initech",
    },
}

# name -> (text, options): a task for acme, signed by acme.
SCENARIOS: dict[str, tuple[str, dict[str, Any]]] = {
    "local": ("the quick brown fox", {}),
    "local_truncated": ("the quick brown fox", {"max_tokens": 2, "temperature": 0.5}),
    "peer": ("hello from acme", {"peer": "globex"}),
    # Each names who answers: both together are refused, neither silently winning.
    "rejected_peer_and_route": ("hello from acme", {"peer": "globex", "route": "magic"}),
    "choice_local": (QUESTION, {"choices": CHOICES, "route": "local"}),
    "choice_self": (QUESTION, {"choices": CHOICES, "route": "self:margin"}),
    "choice_budget": (QUESTION, {"choices": CHOICES, "max_cost": 1, "deadline_s": 30}),
    "choice_escalated": (QUESTION, {"choices": CHOICES, "route": "always:globex"}),
    "choice_no_peers": (QUESTION, {"choices": CHOICES, "route": "always:globex", "max_peers": 0}),
    "vote": (QUESTION, {"choices": CHOICES, "route": "panel"}),
    "vote_max_peers": (QUESTION, {"choices": CHOICES, "route": "panel", "max_peers": 1}),
    "vote_stopped_by_budget": (QUESTION, {"choices": CHOICES, "route": "tight"}),
    "debate": (QUESTION, {"choices": CHOICES, "route": "ring"}),
    "mixture": (QUESTION, {"choices": CHOICES, "route": "moa"}),
    "group_by_router": (QUESTION, {"choices": CHOICES, "route": "always:panel"}),
    "rejected_router": (QUESTION, {"choices": CHOICES, "route": "magic"}),
    "rejected_group_free_text": (QUESTION, {"route": "panel"}),
    "rejected_options": (QUESTION, {"choices": ["only"]}),
    "rejected_no_text": ("   ", {"choices": ["only"]}),
    "failed_member": (QUESTION, {"choices": CHOICES, "route": "always:nobody"}),
    "failed_peer": ("hello", {"peer": "nobody"}),
    "score": (QUESTION, {"mode": "score", "choices": CHOICES}),
    "score_with_context": (QUESTION, {"mode": "score", "choices": CHOICES, "context": "roots"}),
    "score_rejected": (QUESTION, {"mode": "score"}),
    "feedback_unknown_task": ("outcome", {"feedback": {"task_id": "task-1", "correct": 0}}),
}
# Where the built dict starts with a peer's provenance as decoded from the wire.
PEER_ORDERED = {"peer"}


def normalise(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: f"<{type(v).__name__}>" if k in VARIABLE else normalise(v) for k, v in value.items()
        }
    if isinstance(value, list):
        return [normalise(v) for v in value]
    return value


def wire_json(meta: dict[str, Any]) -> str:
    return json.dumps(normalise(meta), sort_keys=True)


def built_json(meta: dict[str, Any]) -> str:
    return json.dumps(normalise(meta))


class Built:
    """Every metadata dict handed to protobuf (`Struct.update`, which message and artifact
    constructors call too) while installed."""

    def __init__(self) -> None:
        self.dicts: list[dict[str, Any]] = []

    @classmethod
    def installed(cls, monkeypatch: pytest.MonkeyPatch) -> Built:
        built = cls()
        original = struct_pb2.Struct.update

        def update(struct: struct_pb2.Struct, dictionary: Any) -> None:
            if isinstance(dictionary, dict) and isinstance(dictionary.get(METADATA_KEY), dict):
                built.dicts.append(json.loads(json.dumps(dictionary[METADATA_KEY])))
            original(struct, dictionary)

        monkeypatch.setattr(struct_pb2.Struct, "update", update)
        return built

    def source_of(self, wire: dict[str, Any]) -> dict[str, Any] | None:
        """The first dict built that encodes to `wire`."""
        for d in self.dicts:
            s = struct_pb2.Struct()
            s.update(d)
            if MessageToDict(s) == wire:
                return d
        return None


def metadata_of(holder: Any) -> dict[str, Any] | None:
    meta = MessageToDict(holder.metadata).get(METADATA_KEY)
    return meta if isinstance(meta, dict) else None


def texts(parts: Any) -> str:
    return "".join(p.text for p in parts)


def state_name(state: int) -> str:
    return a2a_pb2.TaskState.Name(state).removeprefix("TASK_STATE_").lower()


def describe(event: a2a_pb2.StreamResponse) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One event as the recording shows it, and its consortium metadata."""
    kind = event.WhichOneof("payload")
    if kind == "task":
        t = event.task
        message = t.status.message if t.status.HasField("message") else None
        return {
            "kind": "task",
            "state": state_name(t.status.state),
            "text": texts(message.parts) if message else None,
            "artifacts": len(t.artifacts),
        }, metadata_of(message) if message else None
    if kind == "status_update":
        status = event.status_update.status
        message = status.message if status.HasField("message") else None
        return {
            "kind": "status",
            "state": state_name(status.state),
            "text": texts(message.parts) if message else None,
        }, metadata_of(message) if message else None
    if kind == "artifact_update":
        u = event.artifact_update
        return {
            "kind": "artifact",
            "name": u.artifact.name,
            "text": texts(u.artifact.parts),
            "append": u.append,
            "lastChunk": u.last_chunk,
        }, metadata_of(u.artifact)
    assert kind == "message"
    return {"kind": "message", "text": texts(event.message.parts)}, metadata_of(event.message)


def recording(events: list[dict[str, Any]], name: str) -> Iterator[tuple[str, Any, Any]]:
    """(what, recorded, observed) for the scenario: the whole event list, then each."""
    path = DATA / f"{name}.json"
    if RECORD:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(events, indent=1) + "\n")
    recorded = json.loads(path.read_text())
    yield (
        "events",
        [{k: v for k, v in e.items() if k != "built"} for e in recorded],
        [{k: v for k, v in e.items() if k != "built"} for e in events],
    )
    for i, (want, got) in enumerate(zip(recorded, events, strict=True)):
        yield f"event {i} built", want.get("built"), got.get("built")


class WireFederation(Federation):
    def config(self, org: str) -> Any:
        cfg = super().config(org)
        data = cfg.model_dump(mode="json", exclude={"base_dir"})
        # The pin is about the wire's shape: without the reputation engine every peer's
        # reputation is 1.0, whatever the order the cases ran in.
        data["trust"] = {"enabled": False}
        if org == "acme":
            data["groups"] = GROUPS
        if org == "initech":
            # Its router escalates every free-text task to globex.
            data["routing"] = {"router": "always:globex", "record": False}
        return parse_config(data, path=cfg.base_dir / "node.toml")

    async def events(
        self, origin: str, text: str, options: dict[str, Any]
    ) -> list[a2a_pb2.StreamResponse]:
        node = self.nodes[origin]
        key = load_private_key(node.config.resolve(node.config.identity.private_key))
        message, _ = sign_request(
            text_message(text, {METADATA_KEY: options} if options else None),
            SigningIdentity(key, origin, "test-federation"),
            recipient=origin,
        )
        client = open_client(node.card, credentials=node.config.client_credentials())  # type: ignore[arg-type]
        try:
            return [
                e async for e in client.send_message(a2a_pb2.SendMessageRequest(message=message))
            ]
        finally:
            await client.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    f = WireFederation(tmp_path_factory.mktemp("wire"))
    try:
        await f.start()
        yield f
    finally:
        await f.stop()


def record_events(stream: list[a2a_pb2.StreamResponse], built: Built) -> list[dict[str, Any]]:
    out = []
    for event in stream:
        shown, meta = describe(event)
        if meta is not None:
            shown["wire"] = wire_json(meta)
            source = built.source_of(meta)
            assert source is not None, "metadata the node did not build"
            shown["built"] = built_json(source)
        out.append(shown)
    return out


def check(events: list[dict[str, Any]], name: str) -> None:
    for what, want, got in recording(events, name):
        assert got == want, f"{name}: {what} differs from the recording"


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_provenance_on_the_wire_is_unchanged(
    fed: WireFederation, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    text, options = SCENARIOS[name]
    built = Built.installed(monkeypatch)
    stream = await fed.events("acme", text, options)
    monkeypatch.undo()
    events = record_events(stream, built)
    if name in PEER_ORDERED:
        for e in events:
            if e.get("built") and '"verified": ' in e["built"]:
                e["built"] = None
    check(events, name)


@pytest.mark.asyncio(loop_scope="module")
async def test_a_routed_free_text_task(
    fed: WireFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """initech's router escalates free text to globex: the peer's provenance, then the
    route and the verdict (the order of the peer's keys is the wire's: not pinned)."""
    built = Built.installed(monkeypatch)
    stream = await fed.events("initech", "hello from initech", {})
    monkeypatch.undo()
    events = record_events(stream, built)
    for e in events:
        if e.get("built") and '"verified": ' in e["built"]:
            e["built"] = None
    check(events, "routed_text")


@pytest.mark.asyncio(loop_scope="module")
async def test_feedback_to_a_node_without_routing_records(
    fed: WireFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = Built.installed(monkeypatch)
    stream = await fed.events(
        "initech", "outcome", {"feedback": {"task_id": "task-1", "adequate": True}}
    )
    monkeypatch.undo()
    check(record_events(stream, built), "feedback_without_records")


async def test_feedback_recorded(start_node: NodeStarter, monkeypatch: pytest.MonkeyPatch) -> None:
    """A routed task's record labelled by its owner (the node keeps records: it loads the
    sentence encoder for them)."""
    node = await start_node(routing={"router": "self:margin"})
    client = open_client(node.card)
    try:
        built = Built.installed(monkeypatch)
        routed = [
            e
            async for e in client.send_message(
                a2a_pb2.SendMessageRequest(
                    message=text_message(QUESTION, {METADATA_KEY: {"choices": CHOICES}})
                )
            )
        ]
        task_id = next(e.task.id for e in routed if e.WhichOneof("payload") == "task")
        feedback = [
            e
            async for e in client.send_message(
                a2a_pb2.SendMessageRequest(
                    message=text_message(
                        "outcome", {METADATA_KEY: {"feedback": {"task_id": task_id, "correct": 0}}}
                    )
                )
            )
        ]
        monkeypatch.undo()
    finally:
        await client.close()
    check(record_events(routed, built), "recorded_choice")
    check(record_events(feedback, built), "feedback_recorded")


ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TIME = re.compile(r'"timestamp":"[^"]+"')
NUMBER = re.compile(r'"(latencyMs|timeToFirstTokenMs|decodeTokensPerS)":[-0-9.e+]+')


def body_shape(body: str) -> str:
    """A JSON-RPC response with ids, timestamps and timings replaced; the metadata's keys
    sorted (a map: see the module's docstring), everything else as sent."""
    body = NUMBER.sub(r'"\1":"<float>"', TIME.sub('"timestamp":"<time>"', ID.sub("<id>", body)))

    def sort_consortium(value: Any, inside: bool = False) -> Any:
        if isinstance(value, dict):
            items = sorted(value.items()) if inside else value.items()
            return {k: sort_consortium(v, inside or k == METADATA_KEY) for k, v in items}
        if isinstance(value, list):
            return [sort_consortium(v, inside) for v in value]
        return value

    return json.dumps(sort_consortium(json.loads(body)))


@pytest.mark.parametrize(
    ("name", "text", "options"),
    [
        ("jsonrpc_local", "the quick brown fox", None),
        ("jsonrpc_choice", QUESTION, {"choices": CHOICES}),
        ("jsonrpc_score", QUESTION, {"mode": "score", "choices": CHOICES}),
    ],
)
async def test_jsonrpc_bodies_are_unchanged(
    start_node: NodeStarter, name: str, text: str, options: dict[str, Any] | None
) -> None:
    node = await start_node()
    message: dict[str, Any] = {
        "messageId": str(uuid.uuid4()),
        "role": "ROLE_USER",
        "parts": [{"text": text}],
    }
    if options:
        message["metadata"] = {METADATA_KEY: options}
    async with httpx.AsyncClient() as http:
        r = await http.post(
            node.endpoints.http_url + "/",
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "SendMessage",
                "params": {"message": message},
            },
            headers={"A2A-Version": "1.0"},
        )
    path = DATA / f"{name}.json"
    shape = body_shape(r.text)
    if RECORD:
        path.write_text(shape + "\n")
    assert shape == path.read_text().strip()
