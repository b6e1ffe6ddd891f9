"""Runs one model on its own thread and serves it to asyncio code, one request at a time.

A model context is never shared by two requests: requests queue here and the worker
thread takes them one by one. The queue is fair between callers: each job names its
`lane` (the caller's owner: a member organization, an API key, the loopback user), and
the thread takes one job from each lane in turn, so a caller's flood of long generations
delays another caller's job by at most one job per flooding caller, not by the whole
flood. Within a lane, jobs run in order.

The worker knows how long a job takes (`job_s`: a moving average of recent generations
and scorings) and how many jobs a new job of a lane would wait for (`jobs_ahead`): what
the node's admission (node/admission.py) estimates a queue's wait from.

Generation streams back to the event loop chunk by chunk; a consumer that stops
listening (a cancelled task) stops the generation at the next token.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from consortium.errors import ModelError
from consortium.llm.base import (
    ChatMessage,
    Chunk,
    Completion,
    GenerationParams,
    LLMBackend,
    ModelInfo,
)
from consortium.llm.batching import Batch, BatchingBackend, SequenceSink
from consortium.llm.load import LoadObserver, ModelLoad, NullLoadObserver

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationRequest:
    """Either chat messages (chat template applied by the backend) or a raw prompt."""

    params: GenerationParams
    messages: tuple[ChatMessage, ...] = ()
    prompt: str | None = None


def _merge(chunks: list[Chunk]) -> Chunk:
    if len(chunks) == 1:
        return chunks[0]
    logprobs = tuple(lp for c in chunks for lp in c.logprobs)
    return Chunk("".join(c.text for c in chunks), chunks[-1].logprob, logprobs)


_Job = Callable[[], None]
# The weight of the newest job's duration in the moving average of job durations.
_EWMA_WEIGHT = 0.3


@dataclass(frozen=True)
class _Entry:
    job: _Job
    # Whether the job's duration counts in the average (generations and scorings do;
    # token counting is too short to say anything about the queue).
    timed: bool
    # A generation's cancel event: one stopped early says nothing of a job's length.
    cancel: threading.Event | None = None
    # A generation, for a backend that batches: it joins the running batch instead of
    # running `job` (which generates alone: the path of backends that do not batch).
    generation: _Generation | None = None


@dataclass(frozen=True)
class _Generation:
    request: GenerationRequest
    cancel: threading.Event
    sink: SequenceSink


class _FairQueue:
    """Jobs by lane, served round-robin: the next job is the oldest of the lane at the
    front; a lane with more jobs goes to the back. Thread-safe."""

    def __init__(self) -> None:
        self._lanes: OrderedDict[str, deque[_Entry]] = OrderedDict()
        self._cond = threading.Condition()
        self._stopping = False
        self._size = 0

    def put(self, lane: str, entry: _Entry) -> None:
        with self._cond:
            self._lanes.setdefault(lane, deque()).append(entry)
            self._size += 1
            self._cond.notify()

    def stop(self) -> None:
        """Ends `get` once every queued job has been taken."""
        with self._cond:
            self._stopping = True
            self._cond.notify()

    @property
    def finished(self) -> bool:
        """Stopped, and every job taken."""
        with self._cond:
            return self._stopping and not self._lanes

    def get(self, block: bool = True) -> _Entry | None:
        """The next job; None once stopped and empty, or (not `block`) when empty."""
        with self._cond:
            while not self._lanes:
                if self._stopping or not block:
                    return None
                self._cond.wait()
            lane, jobs = next(iter(self._lanes.items()))
            entry = jobs.popleft()
            self._size -= 1
            del self._lanes[lane]
            if jobs:
                self._lanes[lane] = jobs  # to the back
            return entry

    def __len__(self) -> int:
        return self._size

    def ahead(self, lane: str) -> int:
        """How many queued jobs would run before a job of `lane` queued now: its lane's
        own, and from each other lane one per round until ours (one more from a lane
        served before ours in each round)."""
        with self._cond:
            mine = len(self._lanes.get(lane, ()))
            count = mine
            before = True
            for name, jobs in self._lanes.items():
                if name == lane:
                    before = False
                else:
                    count += min(len(jobs), mine + 1 if before else mine)
            return count


class _StreamSink:
    """A generation's output, from the model thread to the event loop. With `coalesce_s`
    > 0 the pieces produced within that interval go as one chunk; the first never waits.
    """

    def __init__(self, emit: Callable[[str, Any], None], coalesce_s: float) -> None:
        self._emit = emit
        self._coalesce_s = coalesce_s
        self._pending: list[Chunk] = []
        self._last = -math.inf

    def chunk(self, chunk: Chunk) -> None:
        self._pending.append(chunk)
        now = time.perf_counter()
        if now - self._last >= self._coalesce_s:
            self._emit("chunk", _merge(self._pending))
            self._pending = []
            self._last = now

    def done(self, completion: Completion) -> None:
        if self._pending:
            self._emit("chunk", _merge(self._pending))
            self._pending = []
        self._emit("done", completion)

    def error(self, error: BaseException) -> None:
        self._emit("error", error)


class _TimedSink:
    """Reports how long a batched generation took, unless it was cancelled."""

    def __init__(
        self, sink: SequenceSink, cancel: threading.Event, timed: Callable[[float], None]
    ) -> None:
        self._sink = sink
        self._cancel = cancel
        self._timed = timed
        self._started = time.monotonic()

    def chunk(self, chunk: Chunk) -> None:
        self._sink.chunk(chunk)

    def done(self, completion: Completion) -> None:
        if not self._cancel.is_set():
            self._timed(time.monotonic() - self._started)
        self._sink.done(completion)

    def error(self, error: BaseException) -> None:
        self._sink.error(error)


class GenerationStream:
    """Async iterator over the chunks of one generation; `completion` is set at the end.

    With `coalesce_s` > 0 the model thread merges the pieces produced within that
    interval into one chunk, so the event loop wakes at most 1/coalesce_s times a
    second instead of once per token: less work competing with the model for the CPU
    and the GIL. The first chunk is never held back.
    """

    def __init__(
        self,
        worker: ModelWorker,
        request: GenerationRequest,
        cancel: threading.Event,
        coalesce_s: float = 0.0,
        lane: str = "",
    ):
        self._worker = worker
        self._request = request
        self._coalesce_s = coalesce_s
        self._lane = lane
        self.cancel = cancel
        self.completion: Completion | None = None
        self._iterator: AsyncGenerator[Chunk, None] | None = None

    def __aiter__(self) -> AsyncIterator[Chunk]:
        if self._iterator is None:
            self._iterator = self._run()
        return self._iterator

    async def __aenter__(self) -> GenerationStream:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stops the generation if it is still running (use `async with stream:`)."""
        if self.completion is None:
            self.cancel.set()
        if self._iterator is not None:
            await self._iterator.aclose()

    async def _run(self) -> AsyncGenerator[Chunk, None]:
        loop = asyncio.get_running_loop()
        out: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        backend = self._worker.backend_for_thread
        request, cancel = self._request, self.cancel

        def emit(kind: str, value: Any) -> None:
            loop.call_soon_threadsafe(out.put_nowait, (kind, value))

        sink = _StreamSink(emit, self._coalesce_s)

        def job() -> None:
            if cancel.is_set():
                sink.error(asyncio.CancelledError())
                return
            try:
                b = backend()
                if request.prompt is not None:
                    gen = b.stream_complete(request.prompt, request.params, cancel)
                else:
                    gen = b.stream_chat(request.messages, request.params, cancel)
                while True:
                    try:
                        chunk = next(gen)
                    except StopIteration as stop:
                        sink.done(stop.value)
                        return
                    sink.chunk(chunk)
            except Exception as e:
                sink.error(e)

        self._worker.submit(
            job, lane=self._lane, cancel=cancel, generation=_Generation(request, cancel, sink)
        )
        try:
            while True:
                kind, value = await out.get()
                if kind == "chunk":
                    yield value
                elif kind == "done":
                    self.completion = value
                    return
                else:
                    raise value
        finally:
            # Consumer gone (cancelled, or an error downstream): stop generating.
            if self.completion is None:
                cancel.set()

    async def collect(self) -> Completion:
        async with self:
            async for _ in self:
                pass
        assert self.completion is not None
        return self.completion


class ModelWorker:
    """Owns an LLMBackend on a dedicated thread."""

    def __init__(
        self,
        factory: Callable[[], LLMBackend],
        *,
        label: str = "model",
        observer: LoadObserver | None = None,
        max_queue: int = 0,
    ) -> None:
        self._factory = factory
        self._label = label
        self._observer: LoadObserver = observer or NullLoadObserver()
        self._max_queue = max_queue
        # The running batch, for a backend that batches (set on the model thread).
        self._batch: Batch | None = None
        self._jobs = _FairQueue()
        # The moving average of timed jobs' durations (None until one has run), and when
        # the running job started (None when idle).
        self._job_s: float | None = None
        self._running_since: float | None = None
        self._thread: threading.Thread | None = None
        self._backend: LLMBackend | None = None
        self._info: ModelInfo | None = None

    @property
    def info(self) -> ModelInfo:
        if self._info is None:
            raise ModelError("model not loaded")
        return self._info

    def backend_for_thread(self) -> LLMBackend:
        """The backend; only to be called from jobs running on the worker thread."""
        if self._backend is None:
            raise ModelError("model not loaded")
        return self._backend

    async def start(self) -> ModelInfo:
        """Starts the thread and loads the model on it; raises ModelError if loading fails."""
        loop = asyncio.get_running_loop()
        loaded: asyncio.Future[ModelInfo] = loop.create_future()

        def resolve(value: ModelInfo | BaseException) -> None:
            if loaded.done():
                return
            if isinstance(value, BaseException):
                loaded.set_exception(value)
            else:
                loaded.set_result(value)

        def run() -> None:
            try:
                self._backend = self._factory()
                self._info = self._backend.info
                loop.call_soon_threadsafe(resolve, self._info)
            except BaseException as e:
                loop.call_soon_threadsafe(resolve, e)
                return
            self._serve()

        self._jobs = _FairQueue()
        self._thread = threading.Thread(target=run, name=f"model-{self._label}", daemon=True)
        self._thread.start()
        return await loaded

    def _serve(self) -> None:
        backend = self._backend
        if isinstance(backend, BatchingBackend) and isinstance(backend.batch, Batch):
            backend.batch.observer = self._observer
            self._serve_batched(backend)
        else:
            while True:
                entry = self._jobs.get()
                if entry is None:
                    break
                self._run(entry)
        if self._backend is not None:
            self._backend.close()

    def _run(self, entry: _Entry) -> None:
        started = time.monotonic()
        self._running_since = started
        try:
            entry.job()
        except Exception:  # jobs report their own errors; this is a last resort
            log.exception("model job failed")
        finally:
            self._running_since = None
        if entry.timed and not (entry.cancel is not None and entry.cancel.is_set()):
            self._timed(time.monotonic() - started)

    def _timed(self, took: float) -> None:
        last = self._job_s
        self._job_s = took if last is None else last + _EWMA_WEIGHT * (took - last)

    def _serve_batched(self, backend: BatchingBackend) -> None:
        """Generations join the batch while it has a free slot and leave it as they end;
        other jobs (scoring, token counts) run between two steps."""
        batch = backend.batch
        self._batch = batch
        while True:
            while batch.free:
                entry = self._jobs.get(block=not batch.active)
                if entry is None:
                    break
                if entry.generation is None:
                    self._run(entry)
                else:
                    self._join(backend, entry.generation)
            if batch.active:
                batch.step()
            elif self._jobs.finished:
                break
        batch.stop_all(ModelError("model stopped"))

    def _join(self, backend: BatchingBackend, g: _Generation) -> None:
        if g.cancel.is_set():
            g.sink.error(asyncio.CancelledError())
            return
        r = g.request
        try:
            backend.start(
                r.messages if r.prompt is None else None,
                r.prompt,
                r.params,
                g.cancel,
                _TimedSink(g.sink, g.cancel, self._timed),
            )
        except Exception as e:
            g.sink.error(e)

    def submit(
        self,
        job: _Job,
        *,
        lane: str = "",
        timed: bool = True,
        cancel: threading.Event | None = None,
        generation: _Generation | None = None,
    ) -> None:
        """Queues `job` in `lane` (see the module docstring); `timed`: its duration counts
        in the average job time, unless `cancel` was set by the time it ended."""
        if self._thread is None or not self._thread.is_alive():
            raise ModelError("model worker is not running")
        self._jobs.put(lane, _Entry(job, timed, cancel, generation))

    @property
    def queued(self) -> int:
        """Jobs waiting for the model (not counting the one it runs)."""
        return len(self._jobs)

    def jobs_ahead(self, lane: str = "") -> int:
        """The jobs that would start before a job of `lane` submitted now, and those
        running when no slot is free."""
        batch = self._batch
        if batch is not None:
            return self._jobs.ahead(lane) + (batch.active if not batch.free else 0)
        return self._jobs.ahead(lane) + (self._running_since is not None)

    @property
    def job_s(self) -> float | None:
        """How often a job ends when the model is busy: the recent average duration of a
        generation or scoring, over the slots that run at once (None before the first)."""
        if self._job_s is None:
            return None
        batch = self._batch
        return self._job_s / batch.slots if batch is not None else self._job_s

    def load(self) -> ModelLoad:
        """The model's slots, queue and counters now."""
        batch = self._batch
        if batch is None:
            return ModelLoad(
                slots=1,
                slots_busy=int(self._running_since is not None),
                queued=len(self._jobs),
                max_queue=self._max_queue,
            )
        return ModelLoad(
            slots=batch.slots,
            slots_busy=batch.active,
            queued=len(self._jobs),
            max_queue=self._max_queue,
            steps=batch.steps,
            step_sequences=batch.step_sequences,
            prefix_lookups=batch.prefix_lookups,
            prefix_hits=batch.prefix_hits,
            prompt_tokens=batch.prompt_tokens,
            prefix_tokens_reused=batch.prefix_tokens_reused,
        )

    def generate(
        self,
        request: GenerationRequest,
        cancel: threading.Event | None = None,
        *,
        coalesce_s: float = 0.0,
        lane: str = "",
    ) -> GenerationStream:
        return GenerationStream(self, request, cancel or threading.Event(), coalesce_s, lane)

    async def call(
        self, fn: Callable[[LLMBackend], Any], *, lane: str = "", timed: bool = True
    ) -> Any:
        """Runs fn(backend) on the worker thread, in turn with generations."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()

        def settle(value: Any, error: BaseException | None) -> None:
            if fut.done():
                return
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(value)

        def job() -> None:
            try:
                result = fn(self.backend_for_thread())
            except Exception as e:
                loop.call_soon_threadsafe(settle, None, e)
            else:
                loop.call_soon_threadsafe(settle, result, None)

        self.submit(job, lane=lane, timed=timed)
        return await fut

    async def score(
        self, prompt: str, continuations: Sequence[str], *, lane: str = ""
    ) -> list[float]:
        result: list[float] = await self.call(lambda b: b.score(prompt, continuations), lane=lane)
        return result

    async def count_tokens(self, text: str) -> int:
        result: int = await self.call(lambda b: b.count_tokens(text), timed=False)
        return result

    async def stop(self, timeout: float = 30.0) -> None:
        if self._thread is None:
            return
        self._jobs.stop()
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join, timeout)
        self._thread = None
