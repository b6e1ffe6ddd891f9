"""ModelWorker: one request at a time on the model's thread, off the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Generator, Sequence

import pytest

from consortium.errors import UnsupportedByModel
from consortium.llm.base import (
    ChatMessage,
    Chunk,
    Completion,
    GenerationParams,
    LLMBackend,
    ResponseFormat,
)
from consortium.llm.echo import EchoBackend
from consortium.llm.worker import GenerationRequest, ModelWorker
from tests.helpers import close_streams, long_request, wait_until


class CountingEcho(EchoBackend):
    """Echo model that records how many requests are inside it at once, and on which thread."""

    def __init__(self) -> None:
        super().__init__(token_delay_s=0.005)
        self.active = 0
        self.max_active = 0
        self.threads: set[int] = set()

    def stream_chat(
        self, messages: Sequence[ChatMessage], params: GenerationParams, cancel: threading.Event
    ) -> Generator[Chunk, None, Completion]:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.threads.add(threading.get_ident())
        try:
            return (yield from super().stream_chat(messages, params, cancel))
        finally:
            self.active -= 1


async def test_requests_never_share_the_model_and_run_off_the_loop() -> None:
    backend = CountingEcho()
    worker = ModelWorker(lambda: backend)
    await worker.start()
    try:
        requests = [
            GenerationRequest(GenerationParams(), messages=(ChatMessage("user", f"a b c d e {i}"),))
            for i in range(8)
        ]
        results = await asyncio.gather(*(worker.generate(r).collect() for r in requests))
    finally:
        await worker.stop()
    assert [r.text for r in results] == [f"a b c d e {i}" for i in range(8)]
    assert backend.max_active == 1
    assert backend.threads and threading.get_ident() not in backend.threads


async def test_abandoned_stream_cancels_the_generation() -> None:
    backend = CountingEcho()
    worker = ModelWorker(lambda: backend)
    await worker.start()
    try:
        long = GenerationRequest(
            GenerationParams(max_tokens=1000), messages=(ChatMessage("user", "w " * 500),)
        )
        stream = worker.generate(long)
        async with stream:
            async for _ in stream:
                break  # the consumer goes away after the first chunk
        assert stream.cancel.is_set()
        # The model is free again quickly: the next request is answered.
        short = GenerationRequest(GenerationParams(), messages=(ChatMessage("user", "next"),))
        done = await asyncio.wait_for(worker.generate(short).collect(), timeout=10)
    finally:
        await worker.stop()
    assert done.text == "next"


async def test_coalescing_merges_chunks_without_losing_text() -> None:
    worker = ModelWorker(lambda: EchoBackend(token_delay_s=0.01))
    await worker.start()
    try:
        text = " ".join(f"t{i}" for i in range(20))
        req = GenerationRequest(GenerationParams(), messages=(ChatMessage("user", text),))
        stream = worker.generate(req, coalesce_s=0.05)
        chunks = [c.text async for c in stream]
    finally:
        await worker.stop()
    assert "".join(chunks) == text
    assert len(chunks) < 20
    assert stream.completion is not None and stream.completion.usage.output_tokens == 20


async def test_coalescing_never_holds_back_the_first_chunk() -> None:
    worker = ModelWorker(lambda: EchoBackend())
    await worker.start()
    try:
        req = GenerationRequest(GenerationParams(), messages=(ChatMessage("user", "a b c d"),))
        chunks = [c.text async for c in worker.generate(req, coalesce_s=3600)]
    finally:
        await worker.stop()
    assert chunks == ["a", " b c d"]


async def test_refused_response_format_fails_the_request_not_the_worker() -> None:
    worker = ModelWorker(lambda: EchoBackend())
    await worker.start()
    try:
        json_params = GenerationParams(response_format=ResponseFormat("json_object"))
        with pytest.raises(UnsupportedByModel, match="use the llama_cpp backend"):
            await worker.generate(
                GenerationRequest(json_params, messages=(ChatMessage("user", "a b"),))
            ).collect()
        after = await worker.generate(
            GenerationRequest(GenerationParams(), messages=(ChatMessage("user", "a b"),))
        ).collect()
    finally:
        await worker.stop()
    assert after.text == "a b"


async def test_the_queue_takes_one_job_per_caller_in_turn() -> None:
    """A caller's flood does not starve another caller: while one job runs, six of
    "local"'s wait, then one of "peer"'s; the peer's runs second, not seventh."""
    worker = ModelWorker(lambda: EchoBackend())
    await worker.start()
    ran: list[str] = []
    gate = threading.Event()
    try:
        first = asyncio.ensure_future(worker.call(lambda b: gate.wait(30), lane="local"))
        await wait_until(lambda: worker.jobs_ahead("local") == 1)  # the gate job runs

        def job(name: str) -> Callable[[LLMBackend], None]:
            return lambda b: ran.append(name)

        queued = [
            asyncio.ensure_future(worker.call(job(f"local{i}"), lane="local")) for i in range(6)
        ]
        await wait_until(lambda: worker.queued == 6)
        # A job of the peer's would wait for the running one and one of local's.
        assert worker.jobs_ahead("peer") == 2
        assert worker.jobs_ahead("local") == 7
        queued.append(asyncio.ensure_future(worker.call(job("peer"), lane="peer")))
        await wait_until(lambda: worker.queued == 7)
        gate.set()
        await asyncio.gather(first, *queued)
    finally:
        gate.set()
        await worker.stop()
    assert ran == ["local0", "peer", "local1", "local2", "local3", "local4", "local5"]


async def test_the_worker_learns_how_long_a_job_takes() -> None:
    worker = ModelWorker(lambda: EchoBackend())
    await worker.start()
    try:
        assert worker.job_s is None
        await worker.generate(
            GenerationRequest(GenerationParams(), messages=(ChatMessage("user", "a b"),))
        ).collect()
        # The job's time is recorded just after its result reached the caller.
        await wait_until(lambda: worker.job_s is not None)
        assert worker.job_s is not None and worker.job_s > 0
        await worker.count_tokens("untimed")  # too short to say anything about the queue
        await wait_until(lambda: worker.running == 0)
        assert worker.queued == 0 and worker.jobs_ahead() == 0
    finally:
        await worker.stop()


async def test_a_generation_stopped_early_says_nothing_of_a_jobs_length() -> None:
    """A canceled generation ends early: its time would pull the average (and with it the
    node's estimate of a new job's wait) down, so it does not count."""
    worker = ModelWorker(lambda: EchoBackend())
    await worker.start()
    try:
        await worker.generate(
            GenerationRequest(GenerationParams(), messages=(ChatMessage("user", "a b"),))
        ).collect()
        await wait_until(lambda: worker.job_s is not None)
        learned = worker.job_s
        cancel = threading.Event()
        cancel.set()
        stream = worker.generate(
            GenerationRequest(GenerationParams(), messages=(ChatMessage("user", "c d"),)), cancel
        )
        with pytest.raises(asyncio.CancelledError):
            await stream.collect()
        await worker.call(lambda backend: None, timed=False)  # the canceled job has ended
        assert worker.job_s == learned
    finally:
        await worker.stop()


class ParallelEcho(EchoBackend):
    """Echo model declaring `parallel` slots; records the most requests inside it at
    once, the threads that called it and how often it was closed."""

    def __init__(self, parallel: int) -> None:
        super().__init__(token_delay_s=0.01, parallel=parallel)
        self._lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.threads: set[int] = set()
        self.closed = 0

    def stream_chat(
        self, messages: Sequence[ChatMessage], params: GenerationParams, cancel: threading.Event
    ) -> Generator[Chunk, None, Completion]:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.threads.add(threading.get_ident())
        try:
            return (yield from super().stream_chat(messages, params, cancel))
        finally:
            with self._lock:
                self.active -= 1

    def close(self) -> None:
        self.closed += 1


async def test_a_concurrent_backend_serves_its_slots_at_once_and_queues_the_rest() -> None:
    backend = ParallelEcho(parallel=4)
    worker = ModelWorker(lambda: backend)
    await worker.start()
    streams = [worker.generate(long_request(i), lane=f"user{i}") for i in range(5)]
    firsts: list[asyncio.Future[Chunk]] = []
    try:
        assert worker.slots == 4
        firsts = [asyncio.ensure_future(anext(aiter(s))) for s in streams]
        # Four run at once, each on its own thread; the fifth waits for a slot.
        await wait_until(lambda: worker.running == 4 and worker.queued == 1)
        assert backend.active == 4 and len(backend.threads) == 4
        # A new job waits for two slots to free: one round of jobs.
        assert worker.jobs_ahead() == 1
        await asyncio.gather(*firsts[:4])
        assert not firsts[4].done()
        await streams[0].aclose()  # a cancelled request frees its slot for the fifth
        assert (await firsts[4]).text == "w4.0"
    finally:
        await close_streams(firsts, streams)
        await worker.stop()
    assert backend.max_active == 4
    # Every serving thread has ended, and the backend was closed once, after them all.
    assert backend.closed == 1 and worker.running == 0


async def test_a_backend_of_one_slot_is_still_served_one_request_at_a_time() -> None:
    backend = ParallelEcho(parallel=1)
    worker = ModelWorker(lambda: backend)
    await worker.start()
    streams = [worker.generate(long_request(i)) for i in range(3)]
    firsts: list[asyncio.Future[Chunk]] = []
    try:
        firsts = [asyncio.ensure_future(anext(aiter(s))) for s in streams]
        await wait_until(lambda: worker.running == 1 and worker.queued == 2)
        assert worker.slots == 1 and worker.jobs_ahead() == 3
        await streams[0].aclose()
        await firsts[1]
        assert worker.running == 1 and worker.queued == 1 and not firsts[2].done()
    finally:
        await close_streams(firsts, streams)
        await worker.stop()
    assert backend.max_active == 1 and len(backend.threads) == 1


def test_a_backend_needs_at_least_one_slot() -> None:
    with pytest.raises(ValueError, match="parallel must be at least 1"):
        EchoBackend(parallel=0)
