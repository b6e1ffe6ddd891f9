"""The endpoint's traces: one SERVER span per completion request, the parent of the
service's spans, naming the task and never the text; streamed requests trace without
context errors."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.node.openai.conftest import NodeThread, node_thread


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeThread]:
    yield from node_thread(tmp_path_factory.mktemp("openai-traced"))


def spans(api: NodeThread) -> list[dict[str, Any]]:
    assert api.node.tracer_provider is not None
    api.node.tracer_provider.force_flush()
    lines = (api.config.data_dir / "traces.jsonl").read_text().splitlines()
    return [
        span
        for line in lines
        for rs in json.loads(line)["resourceSpans"]
        for ss in rs["scopeSpans"]
        for span in ss["spans"]
    ]


def attributes(span: dict[str, Any]) -> dict[str, Any]:
    return {a["key"]: next(iter(a["value"].values())) for a in span.get("attributes", [])}


def test_requests_are_traced_without_their_text(
    traced: NodeThread, caplog: pytest.LogCaptureFixture
) -> None:
    client = traced.client(traced.new_key("traced"))
    with caplog.at_level(logging.WARNING):
        whole = client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "secret words here"}]
        )
        for _ in range(3):
            chunks = list(
                client.completions.create(model="echo", prompt="secret streamed words", stream=True)
            )
            assert chunks
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry")], [
        r.getMessage() for r in caplog.records
    ]
    task_id = (whole.model_extra or {})["consortium"]["task_id"]
    # A streamed request's span ends once the server has stored the task's last state,
    # which may be just after the client read the last chunk.
    deadline = time.monotonic() + 10.0
    found = spans(traced)
    while (
        len([s for s in found if s["name"] == "openai text_completion"]) < 3
        and time.monotonic() < deadline
    ):
        time.sleep(0.02)
        found = spans(traced)
    server = [s for s in found if s["name"] == "openai chat.completion"]
    assert len(server) == 1 and attributes(server[0])["a2a.task.id"] == task_id
    chat = [s for s in found if s["name"] == "chat echo" and s["traceId"] == server[0]["traceId"]]
    assert chat and chat[0]["parentSpanId"] == server[0]["spanId"]
    assert len([s for s in found if s["name"] == "openai text_completion"]) == 3
    assert "secret" not in json.dumps(found)
