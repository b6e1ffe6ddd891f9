"""Runs one model on its own thread and serves it to asyncio code.

A model context is never shared by two requests: requests queue here and the model's
thread takes them when a slot is free. How many slots a model has depends on its
backend: a backend that batches (`BatchingBackend`: llama.cpp, llm/batching.py) runs
`parallel` sequences in one batch the thread advances a token at a time, taking new
requests between steps; a backend that is safe to call from several threads at once
(`ModelInfo.concurrency` > 1: the remote openai backend, whose requests are HTTP calls
to a server that batches them itself; the transformers backend, which batches the
requests its threads bring) is served by that many threads taking from the same queue;
any other runs one request at a time.

The queue is fair between callers: each job names its `lane` (the caller's owner: a
member organization, an API key, the loopback user; "" for the node's own work), and
the thread takes from each lane in turn, so a caller's flood of long generations delays
another caller's job by at most one job per flooding caller, not by the whole flood.
Within a lane, jobs run in order.

Slots are shared under a `SlotPolicy` ([model] caller_slots, peer_slots): one lane holds
at most `caller_slots` slots at once (0: all slots but one when there are several, so a
single caller never holds them all; 1 with one slot), and peer organizations'
escalations together hold at most `peer_slots` (0: half the slots, rounded up), so local
users keep the rest. A lane at its cap is skipped, keeping its turn, and a slot stays
free rather than go to it, even when no one else waits.

The queue is bounded ([model] max_queue): a request that would find `max_queue` others
waiting is refused at once (`NodeOverloaded`, reason "queue_full"), and one still waiting
after `queue_timeout_s` takes itself out of the queue and is refused ("queue_timeout");
the worker never runs a job whose caller was told no. Both carry `retry_after_s`, the
time the queue takes to drain at the recent pace. `load()` is a snapshot for /healthz;
the `observer` hears each wait, refusal, decode step and prefix lookup (OpenTelemetry
metrics in node/telemetry.py).

The worker knows how long a job takes (`job_s`: a moving average of recent generations
and scorings) and how many jobs a new job of a lane would wait for (`jobs_ahead`): what
the node's admission (node/admission.py) estimates a queue's wait from.

Generation streams back to the event loop chunk by chunk; a consumer that stops
listening (a cancelled task) stops the generation at the next token, or takes its job
out of the queue if it has not started.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from consortium.errors import ModelError, NodeOverloaded
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


# A job runs on the model's thread; what it returns, if anything, runs once its slot is
# given back, so that whoever awaits the result finds the queue as the job left it.
_Job = Callable[[], Callable[[], None] | None]
# The weight of the newest job's duration in the moving average of job durations.
_EWMA_WEIGHT = 0.3
DEFAULT_MAX_QUEUE = 64
DEFAULT_QUEUE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Lane:
    """Whose work a job is: the caller's owner (`name`: an API key "key:ID", a member
    organization "org:ID", the loopback user "anonymous"; "" for the node's own work)
    and whether it is a peer organization's escalation (`peer`), which the slot policy
    bounds apart from local callers. A plain string where a lane is expected names a
    local lane (what callers passed before lanes said more)."""

    name: str = ""
    peer: bool = False


def as_lane(lane: Lane | str) -> Lane:
    return lane if isinstance(lane, Lane) else Lane(lane)


@dataclass(frozen=True)
class SlotPolicy:
    """Which lane may take a free slot (see the module docstring): at most `slots` held
    at once, at most `caller_slots` by one lane, at most `peer_slots` by all peer lanes
    together. Build it with `of`, which resolves the configured 0s."""

    slots: int = 1
    caller_slots: int = 1
    peer_slots: int = 1

    @classmethod
    def of(cls, slots: int, caller_slots: int = 0, peer_slots: int = 0) -> SlotPolicy:
        """`caller_slots` 0: slots - 1 when there are several, else 1; `peer_slots` 0:
        half the slots rounded up. Neither exceeds `slots`."""
        if slots < 1 or caller_slots < 0 or peer_slots < 0:
            raise ValueError(
                f"slot policy needs slots >= 1 and caps >= 0, not {slots}/{caller_slots}/"
                f"{peer_slots}"
            )
        caller = caller_slots or (slots - 1 if slots > 1 else 1)
        peers = peer_slots or -(-slots // 2)
        return cls(slots, min(caller, slots), min(peers, slots))

    def admits(self, lane: Lane, busy: Mapping[Lane, int]) -> bool:
        """Whether a job of `lane` may take a slot while `busy` holds slots by lane."""
        if sum(busy.values()) >= self.slots:
            return False
        if busy.get(lane, 0) >= self.caller_slots:
            return False
        peers = sum(n for held, n in busy.items() if held.peer)
        return not (lane.peer and peers >= self.peer_slots)


SERIAL = SlotPolicy()


@dataclass(eq=False)
class _Entry:
    job: _Job
    # Whether the job's duration counts in the average (generations and scorings do;
    # token counting is too short to say anything about the queue).
    timed: bool
    # A generation's cancel event: one stopped early says nothing of a job's length.
    cancel: threading.Event | None = None
    lane: Lane = Lane()
    queued_at: float = 0.0  # time.monotonic() when put
    # A generation, for a backend that batches: it joins the running batch instead of
    # running `job` (which generates alone: the path of backends that do not batch).
    generation: _Generation | None = None


@dataclass(frozen=True)
class _Generation:
    request: GenerationRequest
    cancel: threading.Event
    sink: SequenceSink


class _FairQueue:
    """Jobs by lane, served round-robin under a slot policy. Thread-safe.

    `take` gives the oldest job of the first lane (in turn) that the policy lets take a
    slot now, and counts the slot as held by that lane until `release`; a lane taken
    from goes to the back, a lane skipped keeps its place. `put` refuses a job (False)
    when `max_waiting` jobs already wait beyond those the free slots are about to take:
    the queue never holds more than max_waiting + slots. `withdraw` takes a job out
    that has not been taken (its caller stopped waiting)."""

    def __init__(
        self,
        policy: SlotPolicy = SERIAL,
        *,
        max_waiting: int | None = None,
        observer: LoadObserver | None = None,
    ) -> None:
        self._lanes: OrderedDict[str, deque[_Entry]] = OrderedDict()
        self._cond = threading.Condition()
        self._stopping = False
        self._size = 0
        self._policy = policy
        self._max_waiting = max_waiting
        self._observer: LoadObserver = observer or NullLoadObserver()
        self._busy: Counter[Lane] = Counter()

    @property
    def policy(self) -> SlotPolicy:
        return self._policy

    def set_policy(self, policy: SlotPolicy) -> None:
        """A new policy (the scheduler's slot count, known once the model is loaded)."""
        with self._cond:
            self._policy = policy
            self._cond.notify_all()

    def put(self, lane: Lane | str, entry: _Entry) -> bool:
        """Queues `entry` in `lane`; False (nothing queued) when the queue is full."""
        entry.lane = as_lane(lane)
        with self._cond:
            if self._max_waiting is not None:
                free = max(self._policy.slots - sum(self._busy.values()), 0)
                if self._size >= self._max_waiting + free:
                    return False
            entry.queued_at = time.monotonic()
            self._lanes.setdefault(entry.lane.name, deque()).append(entry)
            self._size += 1
            self._cond.notify_all()
            return True

    def stop(self) -> None:
        """Ends `get` (and makes `wait` return) once every queued job has been taken."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()  # every serving thread

    @property
    def finished(self) -> bool:
        """Stopped, and nothing left to take."""
        with self._cond:
            return self._stopping and not self._size

    def take(self) -> _Entry | None:
        """The next job the policy lets take a slot now (its slot counted as held until
        `release`), or None; never blocks."""
        with self._cond:
            entry = self._take()
        if entry is not None:
            self._observer.queue_wait(time.monotonic() - entry.queued_at, entry.lane.name)
        return entry

    def _take(self) -> _Entry | None:
        for name, jobs in self._lanes.items():
            lane = jobs[0].lane
            if not self._policy.admits(lane, self._busy):
                continue
            entry = jobs.popleft()
            self._size -= 1
            del self._lanes[name]
            if jobs:
                self._lanes[name] = jobs  # to the back
            self._busy[lane] += 1
            return entry
        return None

    def _takeable(self) -> bool:
        return any(self._policy.admits(jobs[0].lane, self._busy) for jobs in self._lanes.values())

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until a job may be taken (True), or `timeout` passes or the queue is
        stopped with nothing left (False)."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._takeable() or (self._stopping and not self._size), timeout
            )
            return self._takeable()

    def get(self) -> _Entry | None:
        """The next job, blocking until there is one the policy admits; None once
        stopped and empty. Release its slot after running it."""
        while True:
            entry = self.take()
            if entry is not None:
                return entry
            if not self.wait():  # stopped, nothing left
                return None

    def release(self, entry: _Entry) -> None:
        """Gives back the slot a taken job held."""
        with self._cond:
            lane = entry.lane
            if self._busy[lane] <= 1:
                del self._busy[lane]
            else:
                self._busy[lane] -= 1
            self._cond.notify_all()

    def withdraw(self, entry: _Entry) -> bool:
        """Takes `entry` out if it is still waiting (True); False once it was taken (or
        withdrawn before): atomic with `take`, so a job either runs or is withdrawn."""
        with self._cond:
            jobs = self._lanes.get(entry.lane.name)
            if jobs is None:
                return False
            try:
                jobs.remove(entry)
            except ValueError:
                return False
            self._size -= 1
            if not jobs:
                del self._lanes[entry.lane.name]
            return True

    def busy(self) -> dict[Lane, int]:
        """Slots held now, by lane."""
        with self._cond:
            return dict(self._busy)

    @property
    def slots_busy(self) -> int:
        with self._cond:
            return sum(self._busy.values())

    def __len__(self) -> int:
        return self._size

    def ahead(self, lane: Lane | str) -> int:
        """How many queued jobs would run before a job of `lane` queued now: its lane's
        own, and from each other lane one per round until ours (one more from a lane
        served before ours in each round)."""
        name = as_lane(lane).name
        with self._cond:
            mine = len(self._lanes.get(name, ()))
            count = mine
            before = True
            for other, jobs in self._lanes.items():
                if other == name:
                    before = False
                else:
                    count += min(len(jobs), mine + 1 if before else mine)
            return count


class _LoadCounts:
    """The counters of `ModelLoad`, kept from the events the queue and the scheduler
    report, which it passes on to the node's observer."""

    def __init__(self, observer: LoadObserver) -> None:
        self._observer = observer
        self._lock = threading.Lock()
        self.steps = 0
        self.step_sequences = 0
        self.prefix_lookups = 0
        self.prefix_hits = 0
        self.prompt_tokens = 0
        self.prefix_tokens_reused = 0
        self.refusals = 0

    def queue_wait(self, seconds: float, lane: str) -> None:
        self._observer.queue_wait(seconds, lane)

    def refused(self, reason: str) -> None:
        with self._lock:
            self.refusals += 1
        self._observer.refused(reason)

    def step(self, sequences: int, tokens: int) -> None:
        with self._lock:
            self.steps += 1
            self.step_sequences += sequences
        self._observer.step(sequences, tokens)

    def prefix(self, reused: int, prompt: int) -> None:
        with self._lock:
            self.prefix_lookups += 1
            self.prefix_hits += reused > 0
            self.prompt_tokens += prompt
            self.prefix_tokens_reused += reused
        self._observer.prefix(reused, prompt)


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


class _BatchedSink:
    """A batched generation's end: its slot goes back to the queue's policy, and its
    duration counts in the average job time unless it was cancelled."""

    def __init__(
        self, sink: SequenceSink, entry: _Entry, worker: ModelWorker, cancel: threading.Event
    ) -> None:
        self._sink = sink
        self._entry = entry
        self._worker = worker
        self._cancel = cancel
        self._started = time.monotonic()

    def chunk(self, chunk: Chunk) -> None:
        self._sink.chunk(chunk)

    def done(self, completion: Completion) -> None:
        self._worker._ended(self._entry)
        if not self._cancel.is_set():
            self._worker._timed(time.monotonic() - self._started)
        self._sink.done(completion)

    def error(self, error: BaseException) -> None:
        self._worker._ended(self._entry)
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
        lane: Lane | str = "",
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

        sink = _StreamSink(emit, coalesce_s)

        def job() -> Callable[[], None]:
            if cancel.is_set():
                return lambda: sink.error(asyncio.CancelledError())
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
                        completion = stop.value
                        return lambda: sink.done(completion)
                    sink.chunk(chunk)
            except Exception as e:
                error = e
                return lambda: sink.error(error)

        worker = self._worker
        # May refuse: queue full.
        generation = _Generation(request, cancel, sink)
        entry = worker.submit(job, lane=self._lane, cancel=cancel, generation=generation)

        def expire() -> None:
            refusal = worker.expire(entry)
            if refusal is not None:
                out.put_nowait(("error", refusal))

        timer = loop.call_later(worker.queue_timeout_s, expire)
        try:
            while True:
                kind, value = await out.get()
                if kind == "chunk":
                    timer.cancel()
                    yield value
                elif kind == "done":
                    self.completion = value
                    return
                else:
                    raise value
        finally:
            timer.cancel()
            # Consumer gone (cancelled, or an error downstream): stop generating, or
            # give back the job's place if it is still waiting.
            if self.completion is None:
                cancel.set()
                worker.withdraw(entry)

    async def collect(self) -> Completion:
        async with self:
            async for _ in self:
                pass
        assert self.completion is not None
        return self.completion


class ModelWorker:
    """Owns an LLMBackend on a dedicated thread; see the module docstring for the queue.

    `max_queue`: requests that may wait (0: none, a request finding no free slot is
    refused); `queue_timeout_s`: the longest one waits; `caller_slots`, `peer_slots`: the
    slot policy (`SlotPolicy.of`); `observer`: hears the load's events."""

    def __init__(
        self,
        factory: Callable[[], LLMBackend],
        *,
        label: str = "model",
        max_queue: int = DEFAULT_MAX_QUEUE,
        queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S,
        caller_slots: int = 0,
        peer_slots: int = 0,
        observer: LoadObserver | None = None,
    ) -> None:
        if max_queue < 0 or queue_timeout_s <= 0:
            raise ValueError("max_queue must be >= 0 and queue_timeout_s > 0")
        self._factory = factory
        self._label = label
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self._caller_slots = caller_slots
        self._peer_slots = peer_slots
        # What the queue and the scheduler report to: counted for load(), passed on.
        self._counts = _LoadCounts(observer or NullLoadObserver())
        self._jobs = self._queue(1)
        # The moving average of timed jobs' durations (None until one has run), and the
        # jobs running now (at most `slots`), both under `_lock`.
        self._job_s: float | None = None
        self._running = 0
        self._lock = threading.Lock()
        self._slots = 1
        self._thread: threading.Thread | None = None
        self._backend: LLMBackend | None = None
        self._info: ModelInfo | None = None
        # The running batch, for a backend that batches (set on the model thread).
        self._batch: Batch | None = None

    def _queue(self, slots: int) -> _FairQueue:
        """A queue for `slots` slots under the configured policy and bound."""
        return _FairQueue(
            SlotPolicy.of(slots, self._caller_slots, self._peer_slots),
            max_waiting=self.max_queue,
            observer=self._counts,
        )

    def set_slots(self, slots: int) -> None:
        """How many requests the model serves at once (a scheduler's slots, known once
        the backend has loaded): the slot policy's total, its caps resolved again."""
        self._jobs.set_policy(SlotPolicy.of(slots, self._caller_slots, self._peer_slots))

    @property
    def observer(self) -> LoadObserver:
        """Where a scheduler reports decode steps and prefix lookups (counted in
        `load()`, passed on to the node's observer)."""
        return self._counts

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
                batch = getattr(self._backend, "batch", None)
                if isinstance(batch, Batch):
                    batch.observer = self._counts
                    self._batch = batch
                    self._slots = batch.slots
                else:
                    self._slots = max(1, self._info.concurrency)
                self.set_slots(self._slots)
                loop.call_soon_threadsafe(resolve, self._info)
            except BaseException as e:
                loop.call_soon_threadsafe(resolve, e)
                return
            # A batch is driven by this thread alone; threads serve a concurrent backend.
            threads = 1 if self._batch is not None else self._slots
            others = [
                threading.Thread(target=self._serve, name=f"model-{self._label}-{i}", daemon=True)
                for i in range(1, threads)
            ]
            for thread in others:
                thread.start()
            self._serve()
            for thread in others:
                thread.join()
            if self._backend is not None:
                self._backend.close()

        self._jobs = self._queue(1)
        self._thread = threading.Thread(target=run, name=f"model-{self._label}", daemon=True)
        self._thread.start()
        return await loaded

    def _serve(self) -> None:
        """Runs queued jobs until the queue is stopped and empty (on each serving thread;
        a batching backend's one thread drives its batch)."""
        backend = self._backend
        if isinstance(backend, BatchingBackend) and isinstance(backend.batch, Batch):
            self._serve_batched(backend)
            return
        while True:
            entry = self._jobs.get()
            if entry is None:
                break
            self._run(entry)

    def _run(self, entry: _Entry) -> None:
        started = time.monotonic()
        with self._lock:
            self._running += 1
        then = None
        try:
            then = entry.job()
        except Exception:  # jobs report their own errors; this is a last resort
            log.exception("model job failed")
        finally:
            with self._lock:
                self._running -= 1
            self._jobs.release(entry)
        if entry.timed and not (entry.cancel is not None and entry.cancel.is_set()):
            self._timed(time.monotonic() - started)
        if then is not None:
            then()

    def _timed(self, took: float) -> None:
        with self._lock:
            last = self._job_s
            self._job_s = took if last is None else last + _EWMA_WEIGHT * (took - last)

    def _ended(self, entry: _Entry) -> None:
        self._jobs.release(entry)

    def _serve_batched(self, backend: BatchingBackend) -> None:
        """Generations join the batch while the queue's policy gives them a slot and leave
        it as they end; other jobs (scoring, token counts) run between two steps."""
        batch = backend.batch
        while True:
            if not batch.active and not self._jobs.wait():
                break  # stopped, nothing left
            while batch.free:
                entry = self._jobs.take()
                if entry is None:
                    break
                if entry.generation is None:
                    self._run(entry)
                else:
                    self._join(backend, entry, entry.generation)
            if batch.active:
                batch.step()
        batch.stop_all(ModelError("model stopped"))

    def _join(self, backend: BatchingBackend, entry: _Entry, g: _Generation) -> None:
        if g.cancel.is_set():
            self._jobs.release(entry)
            g.sink.error(asyncio.CancelledError())
            return
        r = g.request
        try:
            backend.start(
                r.messages if r.prompt is None else None,
                r.prompt,
                r.params,
                g.cancel,
                _BatchedSink(g.sink, entry, self, g.cancel),
            )
        except Exception as e:
            self._jobs.release(entry)
            g.sink.error(e)

    def submit(
        self,
        job: _Job,
        *,
        lane: Lane | str = "",
        timed: bool = True,
        cancel: threading.Event | None = None,
        generation: _Generation | None = None,
    ) -> _Entry:
        """Queues `job` in `lane` (see the module docstring) and returns its entry (for
        `expire`, `withdraw`); `timed`: its duration counts in the average job time,
        unless `cancel` was set by the time it ended. Raises NodeOverloaded
        ("queue_full") when the queue is full, ModelError when the worker is not
        running."""
        if self._thread is None or not self._thread.is_alive():
            raise ModelError("model worker is not running")
        entry = _Entry(job, timed, cancel, generation=generation)
        if not self._jobs.put(lane, entry):
            raise self._refusal("queue_full")
        return entry

    def expire(self, entry: _Entry) -> NodeOverloaded | None:
        """The waiting side's timeout: takes `entry` out of the queue and returns its
        refusal ("queue_timeout", counted), or None if the model already took it (the
        job runs as usual)."""
        if not self._jobs.withdraw(entry):
            return None
        return self._refusal("queue_timeout")

    def withdraw(self, entry: _Entry) -> bool:
        """Takes `entry` out of the queue if it has not started (its caller is gone)."""
        return self._jobs.withdraw(entry)

    def refuse_if_full(self, admitted: int = 0) -> None:
        """Raises NodeOverloaded ("queue_full", counted) when a request submitted now
        would find the queue full: by the queue's own count, or by `admitted`, the
        requests a caller let through to the model that have not ended (running,
        waiting, or about to be submitted): more than the slots and the queue hold."""
        slots = self._jobs.policy.slots
        free = max(slots - self._jobs.slots_busy, 0)
        waiting = max(len(self._jobs) - free, admitted - slots)
        if waiting >= self.max_queue:
            raise self._refusal("queue_full")

    def _refusal(self, reason: str) -> NodeOverloaded:
        """A counted refusal, with the time the queue takes to drain as retry-after."""
        self._counts.refused(reason)
        slots = self._jobs.policy.slots
        queued = len(self._jobs)
        drain_s = (self._job_s or 1.0) * max(queued, 1) / slots
        if reason == "queue_full":
            message = (
                f"queue_full: {queued} requests wait for this node's model, the most it "
                f"queues (model.max_queue = {self.max_queue})"
            )
        else:
            message = (
                f"queue_timeout: waited {self.queue_timeout_s:g} s for this node's model "
                "without a free slot (model.queue_timeout_s)"
            )
        return NodeOverloaded(message, retry_after_s=drain_s, reason=reason)

    @property
    def queued(self) -> int:
        """Jobs waiting for the model (not counting those it runs)."""
        return len(self._jobs)

    @property
    def slots(self) -> int:
        """Jobs the model runs at once (its batch's slots, or the backend's
        `concurrency`; 1 until loaded)."""
        return self._slots

    @property
    def running(self) -> int:
        """Jobs the model runs now."""
        batch = self._batch
        return batch.active if batch is not None else self._running

    def load(self) -> ModelLoad:
        """The queue and slots now, and the counters since the worker was made."""
        c = self._counts
        return ModelLoad(
            slots=self._jobs.policy.slots,
            slots_busy=self._jobs.slots_busy,
            queued=len(self._jobs),
            max_queue=self.max_queue,
            steps=c.steps,
            step_sequences=c.step_sequences,
            prefix_lookups=c.prefix_lookups,
            prefix_hits=c.prefix_hits,
            prompt_tokens=c.prompt_tokens,
            prefix_tokens_reused=c.prefix_tokens_reused,
            refused=c.refusals,
        )

    def jobs_ahead(self, lane: Lane | str = "") -> int:
        """The jobs that would run before a job of `lane` submitted now, the running ones
        included; with several slots, in rounds of `slots` jobs (what a job waits for is
        one slot freeing, so the wait is about jobs_ahead x job_s either way)."""
        ahead = self._jobs.ahead(lane) + self.running
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
        lane: Lane | str = "",
    ) -> GenerationStream:
        return GenerationStream(self, request, cancel or threading.Event(), coalesce_s, lane)

    async def call(
        self, fn: Callable[[LLMBackend], Any], *, lane: Lane | str = "", timed: bool = True
    ) -> Any:
        """Runs fn(backend) on the worker thread, in turn with generations. Raises
        NodeOverloaded when the queue is full, or when fn had not started after
        queue_timeout_s."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()

        def settle(value: Any, error: BaseException | None) -> None:
            if fut.done():
                return
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(value)

        def job() -> Callable[[], None]:
            try:
                result = fn(self.backend_for_thread())
            except Exception as e:
                error = e

                def fail() -> None:
                    loop.call_soon_threadsafe(settle, None, error)

                return fail

            def succeed() -> None:
                loop.call_soon_threadsafe(settle, result, None)

            return succeed

        entry = self.submit(job, lane=lane, timed=timed)

        def expire() -> None:
            refusal = self.expire(entry)
            if refusal is not None:
                settle(None, refusal)

        timer = loop.call_later(self.queue_timeout_s, expire)
        try:
            return await fut
        finally:
            timer.cancel()
            # A caller gone before its job started (awaiting fut cancels it too): the
            # job need not run. A no-op once the model took it.
            self.withdraw(entry)

    async def score(
        self, prompt: str, continuations: Sequence[str], *, lane: Lane | str = ""
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
