"""Telemetry wiring: exporters chosen from config, per-node providers, clear config errors;
no client-chosen identifier on a span."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from a2a.types import a2a_pb2

from consortium.errors import ConfigError
from consortium.node.client import ask, fetch_agent_card, open_client
from consortium.node.telemetry import make_exporter
from tests.conftest import NodeStarter


def test_otlp_exporter_needs_an_endpoint(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"telemetry\.endpoint"):
        make_exporter("otlp-grpc", path=tmp_path / "x", endpoint="")
    assert make_exporter("none", path=tmp_path / "x", endpoint="") is None
    assert make_exporter(
        "otlp-http", path=tmp_path / "x", endpoint="http://127.0.0.1:4318/v1/traces"
    )


async def test_a_standalone_node_exports_spans_to_its_file(start_node: NodeStarter) -> None:
    node = await start_node()
    client = open_client(await fetch_agent_card(node.endpoints.http_url))
    try:
        assert (await ask(client, "count these words")).state == "completed"
    finally:
        await client.close()
    await node.stop()
    lines = (node.config.data_dir / "traces.jsonl").read_text().splitlines()
    names = {
        span["name"]
        for line in lines
        for rs in json.loads(line)["resourceSpans"]
        for ss in rs["scopeSpans"]
        for span in ss["spans"]
    }
    assert {"a2a.receive SendStreamingMessage", "chat echo"} <= names
    assert "count these words" not in "".join(lines)


async def test_a_clients_message_id_stays_off_the_spans(start_node: NodeStarter) -> None:
    # The client chooses its message ids; the node minted none of them.
    node = await start_node()
    client = open_client(await fetch_agent_card(node.endpoints.http_url))

    def pii_id(message: a2a_pb2.Message) -> a2a_pb2.Message:
        message.message_id = "pii-jane.doe@example.com"
        return message

    try:
        assert (await ask(client, "hello", sign=pii_id)).state == "completed"
    finally:
        await client.close()
    await node.stop()
    text = (node.config.data_dir / "traces.jsonl").read_text()
    assert "a2a.receive SendStreamingMessage" in text and "jane.doe" not in text


async def test_exporter_none_writes_nothing(start_node: NodeStarter) -> None:
    node = await start_node(telemetry={"exporter": "none"})
    await node.stop()
    assert not (node.config.data_dir / "traces.jsonl").exists()


@pytest.mark.parametrize("transport", ["JSONRPC", "GRPC"])
async def test_streaming_calls_trace_without_context_errors(
    start_node: NodeStarter, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The receive span of a streamed call is current only within each step of the
    stream: SSE resumes the generator in other contexts, where a context attached across a
    yield could not be detached ("Failed to detach context")."""
    node = await start_node()
    client = open_client(await fetch_agent_card(node.endpoints.http_url), transport=transport)
    with caplog.at_level(logging.WARNING):
        try:
            for _ in range(3):
                answer = await ask(client, "stream me a few tokens")
                assert answer.state == "completed"
        finally:
            await client.close()
        await node.stop()
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry")], [
        r.getMessage() for r in caplog.records
    ]
    spans = [
        json.loads(line)
        for line in (node.config.data_dir / "traces.jsonl").read_text().splitlines()
    ]
    names = [
        s["name"]
        for batch in spans
        for rs in batch["resourceSpans"]
        for ss in rs["scopeSpans"]
        for s in ss["spans"]
    ]
    assert names.count("a2a.receive SendStreamingMessage") == 3


def test_reputation_metrics_reach_the_metrics_file(tmp_path: Path) -> None:
    from consortium.node.telemetry import make_meter_provider
    from consortium.trust.reputation import Evidence
    from consortium.trust.reputation_engine import ReputationAssessor

    path = tmp_path / "metrics.jsonl"
    provider = make_meter_provider("acme", "fed", path, interval_s=3600)
    assessor = ReputationAssessor.open(tmp_path / "trust.sqlite3", meter_provider=provider)
    assessor.record(Evidence("globex", "canary", False, "canary_failed"))
    assessor.close()
    provider.shutdown()  # exports what was recorded
    metrics = {
        m["name"]: m
        for line in path.read_text().splitlines()
        for rm in json.loads(line)["resourceMetrics"]
        for sm in rm["scopeMetrics"]
        for m in sm["metrics"]
    }
    assert {"consortium.trust.score", "consortium.trust.bound", "consortium.trust.state"} <= set(
        metrics
    )
    counted = metrics["consortium.trust.evidence"]["sum"]["dataPoints"][0]
    attributes = {a["key"]: a["value"]["stringValue"] for a in counted["attributes"]}
    assert attributes == {
        "consortium.peer": "globex",
        "consortium.evidence.kind": "canary",
        "consortium.evidence.outcome": "bad",
    }
    assert counted["asInt"] == "1"
    state = metrics["consortium.trust.state"]["gauge"]["dataPoints"][0]
    assert state["asInt"] == "1"  # probation
