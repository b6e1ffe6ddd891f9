"""The model's load made visible: OpenTelemetry metrics (node/telemetry.LoadMetrics, read
with the SDK's in-memory reader and from a node's metrics file), the detailed /healthz
(loopback or an admin API key; others see no more than before), and `consortium node
status`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from typer.testing import CliRunner

from consortium.cli.app import app
from consortium.cli.node import status_lines
from consortium.errors import NodeOverloaded
from consortium.llm.base import ChatMessage, GenerationParams
from consortium.llm.echo import EchoBackend
from consortium.llm.worker import GenerationRequest, Lane, ModelWorker
from consortium.node.app import Node
from consortium.node.auth import Credentials
from consortium.node.config import load_config
from consortium.node.telemetry import LoadMetrics, caller_kind
from tests.conftest import NodeStarter
from tests.helpers import wait_until
from tests.node.test_access import new_key

LOAD_KEYS = {
    "slots",
    "slots_busy",
    "queued",
    "max_queue",
    "steps",
    "step_sequences",
    "prefix_lookups",
    "prefix_hits",
    "prompt_tokens",
    "prefix_tokens_reused",
    "refused",
    "mean_batch",
    "prefix_hit_rate",
}


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """Data points by metric name."""
    data = reader.get_metrics_data()
    assert data is not None
    return {
        m.name: list(m.data.data_points)
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }


@contextlib.asynccontextmanager
async def running(worker: ModelWorker) -> AsyncIterator[ModelWorker]:
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop()


def hello(text: str) -> GenerationRequest:
    return GenerationRequest(GenerationParams(), messages=(ChatMessage("user", text),))


async def test_the_models_load_as_opentelemetry_metrics() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics = LoadMetrics()
    worker = ModelWorker(EchoBackend, max_queue=0, observer=metrics)
    metrics.refused("queue_full")  # before bind: nowhere to record, dropped
    metrics.bind(provider, worker.load)
    async with running(worker) as w:
        await w.generate(hello("one"), lane=Lane("key:k1")).collect()
        await w.generate(hello("two"), lane=Lane("org:globex", peer=True)).collect()
        await wait_until(lambda: w.load().slots_busy == 0)
        gate = threading.Event()
        held = asyncio.ensure_future(w.call(lambda _: gate.wait(30)))
        await wait_until(lambda: w.load().slots_busy == 1)
        with pytest.raises(NodeOverloaded):
            await w.generate(hello("refused")).collect()
        # What a batching scheduler reports through the worker.
        w.observer.step(4, 4)
        w.observer.step(2, 9)
        w.observer.prefix(reused=0, prompt=30)
        w.observer.prefix(reused=24, prompt=32)
        seen = points(reader)
        gate.set()
        await held
    waits = {p.attributes["consortium.caller.kind"]: p for p in seen["consortium.model.queue.time"]}
    assert set(waits) == {"key", "member", "node"}  # kinds only, never a key or org id
    assert waits["key"].count == 1 and waits["key"].sum >= 0
    [batch] = seen["consortium.model.batch.size"]
    assert (batch.count, batch.sum, batch.min, batch.max) == (2, 6, 2, 4)
    [refusal] = seen["consortium.model.refusals"]
    assert refusal.attributes == {"consortium.refusal.reason": "queue_full"}
    assert refusal.value == 1
    assert seen["consortium.model.prefix.lookups"][0].value == 2
    assert seen["consortium.model.prefix.hits"][0].value == 1
    assert seen["consortium.model.prefix.reused_tokens"][0].value == 24
    assert seen["consortium.model.slots"][0].value == 1
    assert seen["consortium.model.slots.busy"][0].value == 1
    assert seen["consortium.model.queue.length"][0].value == 0
    provider.shutdown()


@pytest.mark.parametrize(
    ("lane", "kind"),
    [("key:abc", "key"), ("org:globex", "member"), ("anonymous", "anonymous"), ("", "node")],
)
def test_callers_are_named_by_kind(lane: str, kind: str) -> None:
    assert caller_kind(lane) == kind


async def test_a_node_exports_its_models_load_to_its_metrics_file(
    start_node: NodeStarter,
) -> None:
    node: Node = await start_node(openai={"requests_per_minute": 0, "tokens_per_minute": 0})
    assert node.endpoints is not None
    body = {"model": "echo", "messages": [{"role": "user", "content": "counted"}]}
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(node.endpoints.http_url + "/v1/chat/completions", json=body)
    assert r.status_code == 200
    await node.stop()  # exports once more
    path = node.config.data_dir / "metrics.jsonl"
    names = {
        m["name"]
        for line in path.read_text().splitlines()
        for rm in json.loads(line)["resourceMetrics"]
        for sm in rm["scopeMetrics"]
        for m in sm["metrics"]
    }
    assert {
        "consortium.model.queue.time",
        "consortium.model.queue.length",
        "consortium.model.slots.busy",
        "consortium.model.slots",
    } <= names


async def test_healthz_shows_the_load_only_to_those_who_see_details(
    start_node: NodeStarter,
) -> None:
    node: Node = await start_node(model={"max_queue": 7})
    assert node.endpoints is not None
    async with httpx.AsyncClient() as http:
        body = (await http.get(node.endpoints.http_url + "/healthz")).json()  # loopback
    assert set(body["model_load"]) == LOAD_KEYS
    assert (body["model_load"]["slots"], body["model_load"]["max_queue"]) == (1, 7)
    # From elsewhere, without credentials or with a user's key: no more than before.
    assert node.health(Credentials(loopback=False)) == {"status": "ok"}
    user = new_key(node, "user")
    assert node.health(Credentials(authorization=f"Bearer {user}")) == {"status": "ok"}
    admin = new_key(node, "ops", admin=True)
    detailed = node.health(Credentials(authorization=f"Bearer {admin}"))
    assert detailed["model_load"]["queued"] == 0


NODE_TOML = """\
[node]
org_id = "acme"
display_name = "acme org"

[server]
grpc_port = 0
http_port = 0

[model]
backend = "echo"
name = "echo"
max_queue = 5

[auth]
anonymous_loopback = true
"""


def status(*args: str) -> Any:
    return CliRunner().invoke(app, ["node", "status", *args], env={"COLUMNS": "200"})


async def test_node_status_shows_the_models_load(start_node: NodeStarter, tmp_path: Path) -> None:
    path = tmp_path / "cli" / "node.toml"
    path.parent.mkdir()
    path.write_text(NODE_TOML)
    node: Node = await start_node(config=load_config(path))
    assert node.endpoints is not None
    async with httpx.AsyncClient(timeout=30) as http:
        body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
        assert (
            await http.post(node.endpoints.http_url + "/v1/chat/completions", json=body)
        ).status_code == 200
    result = await asyncio.to_thread(status, "--config", str(path))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "node acme: ok"
    assert lines[1] == "model echo: 0/1 slot busy, 0 queued (max 5), 0 refused"
    assert lines[2].startswith("  decode steps 0, mean batch 0.00; prefix cache 0/0 prompts")
    assert lines[3].startswith("requests: 0 in flight (peak 1), 1 admitted, refused: none")
    as_json = await asyncio.to_thread(status, "--config", str(path), "--json")
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output)["model_load"]["max_queue"] == 5


def test_node_status_of_a_node_that_is_not_running_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    # A port nothing listens on (the node never ran: no endpoints file).
    path.write_text(NODE_TOML.replace("http_port = 0", "http_port = 9"))
    result = status("--config", str(path))
    assert result.exit_code == 4, result.output
    assert "cannot read http://" in result.output
    assert "Traceback" not in result.output
    missing = status("--config", str(tmp_path / "nowhere.toml"))
    assert missing.exit_code != 0 and "file not found" in missing.output


def test_status_without_details_says_what_it_needs() -> None:
    assert status_lines({"status": "ok"}) == [
        "node: ok",
        "(details need loopback or an admin API key)",
    ]
