"""The node's service without any transport: `NodeService.answer` with a real model worker
running the echo backend (no gRPC, no task store)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Generator, Sequence
from typing import Any

import pytest

from consortium.errors import RequestRejected
from consortium.llm.base import ChatMessage, Chunk, Completion, GenerationParams
from consortium.llm.echo import EchoBackend
from consortium.llm.worker import ModelWorker
from consortium.node.auth import ANONYMOUS
from consortium.node.config import RoutingSection
from consortium.node.orchestrator import Orchestrator
from consortium.node.service import (
    Answered,
    NodeService,
    NoRoutingRecords,
    Rejected,
    ServiceRequest,
    ServiceSettings,
    TaskEvent,
    TextChunk,
    Working,
)
from consortium.protocols.request_options import Feedback, RequestOptions

SETTINGS = ServiceSettings(
    org_id="acme",
    prompt_format="chat",
    system_prompt="",
    max_tokens=64,
    temperature=0.0,
    stream_interval_s=0.0,
)
CHOICES = ["the roots", "the leaves"]


class WatchedEcho(EchoBackend):
    """The echo model, remembering the cancel flag of each generation."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.cancels: list[threading.Event] = []

    def stream_chat(
        self, messages: Sequence[ChatMessage], params: GenerationParams, cancel: threading.Event
    ) -> Generator[Chunk, None, Completion]:
        self.cancels.append(cancel)
        return super().stream_chat(messages, params, cancel)


@pytest.fixture
async def echo() -> AsyncIterator[WatchedEcho]:
    backend = WatchedEcho(token_delay_s=0.01)
    yield backend


@pytest.fixture
async def service(echo: WatchedEcho) -> AsyncIterator[NodeService]:
    worker = ModelWorker(lambda: echo, label="test")
    await worker.start()
    try:
        yield NodeService(worker, SETTINGS)
    finally:
        await worker.stop()


async def events(service: NodeService, text: str, **options: Any) -> list[TaskEvent]:
    request = ServiceRequest(text, RequestOptions(**options), task_id="task-1")
    return [e async for e in service.answer(request, ANONYMOUS)]


async def test_a_local_answer_streams_chunks_then_the_answer_with_its_provenance(
    service: NodeService,
) -> None:
    got = await events(service, "the quick brown fox")
    assert isinstance(got[0], Working)
    assert [e.text for e in got[1:-1] if isinstance(e, TextChunk)] == [
        "the",
        " quick",
        " brown",
        " fox",
    ]
    final = got[-1]
    assert isinstance(final, Answered) and final.streamed
    assert final.text == "the quick brown fox"
    p = final.provenance
    assert (p.org, p.model, p.backend) == ("acme", "echo", "echo")
    assert (p.output_tokens, p.finish_reason) == (4, "stop")
    assert p.latency_ms is not None and p.route is None  # nothing routed


async def test_request_options_bound_the_generation(service: NodeService) -> None:
    final = (await events(service, "one two three four", max_tokens=2))[-1]
    assert isinstance(final, Answered)
    assert final.text == "one two" and final.provenance.finish_reason == "length"


async def test_a_multiple_choice_task_is_answered_whole(service: NodeService) -> None:
    got = await events(service, "Which part takes in water?", choices=CHOICES, route="local")
    assert isinstance(got[0], Working) and len(got) == 2
    final = got[1]
    assert isinstance(final, Answered) and not final.streamed
    assert final.text in ("A. the roots", "B. the leaves")
    p = final.provenance
    assert p.route == "local" and p.router == "local" and set(p.members or {}) == {"acme"}
    assert p.choice in (0, 1) and p.probabilities is not None and len(p.probabilities) == 2
    assert p.decision is not None and p.decision.score == "-inf"


@pytest.mark.parametrize(
    ("text", "options", "reason"),
    [
        ("", {}, "the message has no text to answer"),
        ("hello", {"route": "magic"}, "unknown router 'magic'"),
        ("hello", {"route": "always:globex", "max_peers": 0}, None),
        ("hello", {"peer": "globex"}, "this node is not in a federation"),
        ("which?", {"choices": CHOICES, "route": "nonsense:1"}, "unknown router"),
        ("which?", {"choices": CHOICES, "route": "always:globex"}, "needs a federation"),
    ],
)
async def test_refused_requests_say_why(
    service: NodeService, text: str, options: dict[str, Any], reason: str | None
) -> None:
    got = await events(service, text, **options)
    refusals = [e for e in got if isinstance(e, Rejected)]
    if reason is None:  # a router that may not escalate: answered locally
        assert isinstance(got[-1], Answered) and not refusals
        return
    assert refusals and got[-1] is refusals[0], got
    assert reason in refusals[0].reason


async def test_closing_the_events_stops_the_generation(
    service: NodeService, echo: WatchedEcho
) -> None:
    request = ServiceRequest(" ".join(f"w{i}" for i in range(500)), task_id="task-1")
    stream = service.answer(request, ANONYMOUS)
    async with contextlib.aclosing(stream):
        async for event in stream:
            if isinstance(event, TextChunk):
                break  # generation has started
    assert echo.cancels and await asyncio.to_thread(echo.cancels[-1].wait, 10.0)
    final = (await events(service, "still here"))[-1]
    assert isinstance(final, Answered) and final.text == "still here"


async def test_scores_of_the_options(service: NodeService) -> None:
    scores = await service.score("roots?", RequestOptions(choices=CHOICES))
    assert scores.label in ("A", "B") and scores.model == "echo" and scores.tokens > 0
    assert len(scores.scores.logprobs) == 2
    with pytest.raises(RequestRejected, match=r"needs metadata\.consortium\.choices"):
        await service.score("roots?", RequestOptions())


async def test_feedback_needs_routing_records(service: NodeService) -> None:
    with pytest.raises(NoRoutingRecords, match="keeps no routing records"):
        service.feedback(Feedback(task_id="task-1", correct=0), ANONYMOUS)


async def test_a_group_answers_only_multiple_choice(echo: WatchedEcho) -> None:
    from consortium.node.config import GroupSection

    worker = ModelWorker(lambda: echo, label="test")
    await worker.start()
    try:
        groups = {"solo": GroupSection(members=["self"])}
        orchestrator = Orchestrator(
            org_id="acme", worker=worker, routing=RoutingSection(), groups=groups
        )
        service = NodeService(worker, SETTINGS, orchestrator=orchestrator)
        free = await events(service, "hello", route="solo")
        assert isinstance(free[-1], Rejected) and "multiple-choice" in free[-1].reason
        voted = (await events(service, "which?", choices=CHOICES, route="solo"))[-1]
        assert isinstance(voted, Answered)
        p = voted.provenance
        assert p.protocol == "vote" and p.route == "acme->group:solo"
        assert p.contributions is not None and [c.member for c in p.contributions] == ["acme"]
    finally:
        await worker.stop()
