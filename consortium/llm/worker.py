"""Runs one model on its own thread and serves it to asyncio code, one request at a time
unless the backend says it takes several.

A model context is never shared by two requests: requests queue here and the worker
thread takes them one by one. A backend that is safe to call from several threads at
once (`ModelInfo.concurrency` > 1: the remote openai backend, whose requests are HTTP
calls to a server that batches them itself; the transformers backend, which batches the
requests its threads bring) is served by that many threads taking from the same queue,
so up to `concurrency` of its requests run at once.

The queue is fair between callers: each job names its `lane` (the caller's owner: a
member organization, an API key, the loopback user), and the thread takes one job from
each lane in turn, so a caller's flood of long generations delays another caller's job
by at most one job per flooding caller, not by the whole flood. Within a lane, jobs run
in order.

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
            self._cond.notify_all()  # every serving thread

    def get(self) -> _Entry | None:
        """The next job; None once stopped and empty."""
        with self._cond:
            while not self._lanes:
                if self._stopping:
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
        request, cancel, coalesce_s = self._request, self.cancel, self._coalesce_s

        def emit(kind: str, value: Any) -> None:
            loop.call_soon_threadsafe(out.put_nowait, (kind, value))

        def job() -> None:
            if cancel.is_set():
                emit("error", asyncio.CancelledError())
                return
            try:
                b = backend()
                if request.prompt is not None:
                    gen = b.stream_complete(request.prompt, request.params, cancel)
                else:
                    gen = b.stream_chat(request.messages, request.params, cancel)
                pending: list[Chunk] = []
                # The first chunk goes out at once (time to first token); later ones
                # are merged per interval.
                last_emit = -math.inf
                while True:
                    try:
                        chunk = next(gen)
                    except StopIteration as stop:
                        if pending:
                            emit("chunk", _merge(pending))
                        emit("done", stop.value)
                        return
                    pending.append(chunk)
                    now = time.perf_counter()
                    if now - last_emit >= coalesce_s:
                        emit("chunk", _merge(pending))
                        pending = []
                        last_emit = now
            except Exception as e:
                emit("error", e)

        self._worker.submit(job, lane=self._lane, cancel=cancel)
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

    def __init__(self, factory: Callable[[], LLMBackend], *, label: str = "model") -> None:
        self._factory = factory
        self._label = label
        self._jobs = _FairQueue()
        # The moving average of timed jobs' durations (None until one has run), and the
        # jobs running now (at most `slots`), both under `_lock`.
        self._job_s: float | None = None
        self._running = 0
        self._lock = threading.Lock()
        self._slots = 1
        self._thread: threading.Thread | None = None
        self._backend: LLMBackend | None = None
        self._info: ModelInfo | None = None

    @property
    def info(self) -> ModelInfo:
        if self._info is None:
            raise ModelError("model not loaded")
        return self._info

    def backend_for_thread(self) -> LLMBackend:
        """The backend; only to be called from jobs running on a worker thread."""
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
                self._slots = max(1, self._info.concurrency)
                loop.call_soon_threadsafe(resolve, self._info)
            except BaseException as e:
                loop.call_soon_threadsafe(resolve, e)
                return
            others = [
                threading.Thread(target=self._serve, name=f"model-{self._label}-{i}", daemon=True)
                for i in range(1, self._slots)
            ]
            for thread in others:
                thread.start()
            self._serve()
            for thread in others:
                thread.join()
            if self._backend is not None:
                self._backend.close()

        self._jobs = _FairQueue()
        self._thread = threading.Thread(target=run, name=f"model-{self._label}", daemon=True)
        self._thread.start()
        return await loaded

    def _serve(self) -> None:
        """Runs queued jobs until the queue is stopped and empty (on each serving thread)."""
        while True:
            entry = self._jobs.get()
            if entry is None:
                break
            started = time.monotonic()
            with self._lock:
                self._running += 1
            try:
                entry.job()
            except Exception:  # jobs report their own errors; this is a last resort
                log.exception("model job failed")
            finally:
                with self._lock:
                    self._running -= 1
            if entry.timed and not (entry.cancel is not None and entry.cancel.is_set()):
                took = time.monotonic() - started
                with self._lock:
                    last = self._job_s
                    self._job_s = took if last is None else last + _EWMA_WEIGHT * (took - last)

    def submit(
        self,
        job: _Job,
        *,
        lane: str = "",
        timed: bool = True,
        cancel: threading.Event | None = None,
    ) -> None:
        """Queues `job` in `lane` (see the module docstring); `timed`: its duration counts
        in the average job time, unless `cancel` was set by the time it ended."""
        if self._thread is None or not self._thread.is_alive():
            raise ModelError("model worker is not running")
        self._jobs.put(lane, _Entry(job, timed, cancel))

    @property
    def queued(self) -> int:
        """Jobs waiting for the model (not counting those it runs)."""
        return len(self._jobs)

    @property
    def slots(self) -> int:
        """Jobs the model runs at once (the backend's `concurrency`; 1 until loaded)."""
        return self._slots

    @property
    def running(self) -> int:
        """Jobs the model runs now."""
        return self._running

    def jobs_ahead(self, lane: str = "") -> int:
        """The jobs that would run before a job of `lane` submitted now, the running ones
        included; with several slots, in rounds of `slots` jobs (what a job waits for is
        one slot freeing, so the wait is about jobs_ahead x job_s either way)."""
        ahead = self._jobs.ahead(lane) + self._running
        return -(-max(0, ahead - self._slots + 1) // self._slots)

    @property
    def job_s(self) -> float | None:
        """The recent average duration of a generation or scoring (None before the
        first)."""
        return self._job_s

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
