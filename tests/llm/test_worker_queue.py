"""The serial ModelWorker's bounded queue with the echo model: a request beyond
max_queue is refused at once, one waiting past queue_timeout_s is refused and never
runs, a waiter that goes away gives its place back, and load() and the observer say
what happened."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from consortium.errors import NodeOverloaded
from consortium.llm.base import ChatMessage, GenerationParams, LLMBackend
from consortium.llm.echo import EchoBackend
from consortium.llm.load import ModelLoad
from consortium.llm.worker import GenerationRequest, Lane, ModelWorker, SlotPolicy
from tests.helpers import wait_until


class Events:
    """A LoadObserver that records every event."""

    def __init__(self) -> None:
        self.waits: list[str] = []
        self.refusals: list[str] = []
        self.steps: list[tuple[int, int]] = []
        self.prefixes: list[tuple[int, int]] = []

    def queue_wait(self, seconds: float, lane: str) -> None:
        assert seconds >= 0
        self.waits.append(lane)

    def refused(self, reason: str) -> None:
        self.refusals.append(reason)

    def step(self, sequences: int, tokens: int) -> None:
        self.steps.append((sequences, tokens))

    def prefix(self, reused: int, prompt: int) -> None:
        self.prefixes.append((reused, prompt))


def hello(text: str = "hello there") -> GenerationRequest:
    return GenerationRequest(GenerationParams(), messages=(ChatMessage("user", text),))


class Held:
    """The model's one slot, held by a job that waits for `release()`."""

    def __init__(self, worker: ModelWorker) -> None:
        self.gate = threading.Event()
        self.task: asyncio.Future[Any] = asyncio.ensure_future(
            worker.call(lambda _: self.gate.wait(30), lane="holder")
        )

    async def release(self) -> None:
        self.gate.set()
        await self.task


@pytest_asyncio.fixture
async def events() -> Events:
    return Events()


@contextlib.asynccontextmanager
async def started(worker: ModelWorker) -> AsyncIterator[ModelWorker]:
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop()


@pytest_asyncio.fixture
async def small(events: Events) -> AsyncIterator[ModelWorker]:
    """max_queue 2, a long queue timeout."""
    worker = ModelWorker(lambda: EchoBackend(), max_queue=2, observer=events)
    async with started(worker) as w:
        yield w


async def test_a_request_beyond_max_queue_is_refused_at_once(
    small: ModelWorker, events: Events
) -> None:
    held = Held(small)
    await wait_until(lambda: small.load().slots_busy == 1)
    waiting = [asyncio.ensure_future(small.generate(hello(f"w{i}")).collect()) for i in range(2)]
    await wait_until(lambda: small.queued == 2)
    assert small.load() == ModelLoad(slots=1, slots_busy=1, queued=2, max_queue=2)
    with pytest.raises(NodeOverloaded) as refused:
        await small.generate(hello("one too many")).collect()
    assert refused.value.reason == "queue_full"
    assert "model.max_queue = 2" in str(refused.value)
    assert refused.value.retry_after_s > 0
    with pytest.raises(NodeOverloaded):  # scoring and other calls queue alike
        await small.call(lambda b: b.count_tokens("x"))
    await held.release()
    answers = await asyncio.gather(*waiting)
    assert [a.text for a in answers] == ["w0", "w1"]
    await wait_until(lambda: small.load().slots_busy == 0)
    load = small.load()
    assert (load.refused, load.queued, load.slots_busy) == (2, 0, 0)
    assert events.refusals == ["queue_full", "queue_full"]
    assert events.waits == ["holder", "", ""]
    # Served again once there is room.
    assert (await small.generate(hello("again")).collect()).text == "again"


async def test_a_request_waiting_past_its_timeout_is_refused_and_never_runs(
    events: Events,
) -> None:
    ran: list[str] = []
    worker = ModelWorker(lambda: EchoBackend(), queue_timeout_s=0.2, observer=events)
    async with started(worker) as w:
        held = Held(w)
        await wait_until(lambda: w.load().slots_busy == 1)
        with pytest.raises(NodeOverloaded) as timed_out:
            await w.call(lambda _: ran.append("late"))
        assert timed_out.value.reason == "queue_timeout"
        assert "model.queue_timeout_s" in str(timed_out.value)
        assert w.queued == 0  # it took itself out of the queue
        stream = w.generate(hello())
        with pytest.raises(NodeOverloaded) as stream_timed_out:
            async for _ in stream:
                pass
        assert stream_timed_out.value.reason == "queue_timeout"
        assert w.queued == 0
        await held.release()  # the holder outlived the timeout: it was running, not waiting
        assert held.task.result() is True
        assert (await w.generate(hello("next")).collect()).text == "next"
        assert ran == []
        assert w.load().refused == 2
        assert events.refusals == ["queue_timeout", "queue_timeout"]


async def test_a_job_the_model_took_is_not_expired(small: ModelWorker) -> None:
    gate, inside = threading.Event(), threading.Event()

    def job() -> None:
        inside.set()
        gate.wait(30)

    entry = small.submit(job)
    await asyncio.get_running_loop().run_in_executor(None, inside.wait, 30)
    assert small.expire(entry) is None  # taken: it runs as usual
    assert not small.withdraw(entry)
    gate.set()
    await wait_until(lambda: small.load().slots_busy == 0)
    assert small.load().refused == 0


async def test_a_waiter_that_goes_away_gives_its_place_back(small: ModelWorker) -> None:
    held = Held(small)
    await wait_until(lambda: small.load().slots_busy == 1)
    gone = asyncio.ensure_future(small.generate(hello("gone")).collect())
    call = asyncio.ensure_future(small.call(lambda b: b.count_tokens("x")))
    await wait_until(lambda: small.queued == 2)
    gone.cancel()
    call.cancel()
    await wait_until(lambda: small.queued == 0)  # while the slot is still held
    assert small.load().slots_busy == 1
    await held.release()
    assert small.load().refused == 0


async def test_no_queue_refuses_only_when_the_slot_is_busy(events: Events) -> None:
    worker = ModelWorker(lambda: EchoBackend(), max_queue=0, observer=events)
    async with started(worker) as w:
        assert (await w.generate(hello("idle")).collect()).text == "idle"
        await wait_until(lambda: w.load().slots_busy == 0)  # given back after the answer
        held = Held(w)
        await wait_until(lambda: w.load().slots_busy == 1)
        with pytest.raises(NodeOverloaded):
            await w.generate(hello("busy")).collect()
        await held.release()


async def test_refuse_if_full_counts_requests_not_yet_queued(small: ModelWorker) -> None:
    small.refuse_if_full(admitted=2)  # one running, one waiting: room for one more
    with pytest.raises(NodeOverloaded) as refused:
        small.refuse_if_full(admitted=3)  # one running, two waiting
    assert refused.value.reason == "queue_full"
    assert small.load().refused == 1


async def test_lanes_keep_their_peer_flag_and_strings_still_work(small: ModelWorker) -> None:
    peer = Lane("org:acme", peer=True)
    answer = await small.generate(hello("from a peer"), lane=peer).collect()
    assert answer.text == "from a peer"
    assert small.jobs_ahead("org:acme") == 0 and small.jobs_ahead(peer) == 0
    assert await small.score("a", ["b"], lane="key:x")


def test_a_scheduler_reports_steps_and_prefixes_through_the_worker(events: Events) -> None:
    worker = ModelWorker(lambda: EchoBackend(), observer=events)
    worker.observer.step(3, 3)
    worker.observer.step(1, 17)
    worker.observer.prefix(reused=0, prompt=20)
    worker.observer.prefix(reused=12, prompt=16)
    load = worker.load()
    assert (load.steps, load.step_sequences, load.mean_batch) == (2, 4, 2.0)
    assert (load.prefix_lookups, load.prefix_hits, load.prompt_tokens) == (2, 1, 36)
    assert (load.prefix_tokens_reused, load.prefix_hit_rate) == (12, 0.5)
    assert events.steps == [(3, 3), (1, 17)] and events.prefixes == [(0, 20), (12, 16)]


@pytest.mark.parametrize(
    ("kwargs", "problem"), [({"max_queue": -1}, "max_queue"), ({"queue_timeout_s": 0}, "timeout")]
)
def test_a_worker_with_an_impossible_bound_is_refused(kwargs: dict[str, Any], problem: str) -> None:
    def factory() -> LLMBackend:
        return EchoBackend()

    with pytest.raises(ValueError, match=problem):
        ModelWorker(factory, **kwargs)


def test_a_scheduler_sets_the_slots_and_the_caps_follow() -> None:
    worker = ModelWorker(EchoBackend, caller_slots=0, peer_slots=0)
    assert worker.load().slots == 1
    worker.set_slots(8)
    assert worker.load().slots == 8
    assert worker._jobs.policy == SlotPolicy(8, 7, 4)
    capped = ModelWorker(EchoBackend, caller_slots=2, peer_slots=3)
    capped.set_slots(4)
    assert capped._jobs.policy == SlotPolicy(4, 2, 3)
