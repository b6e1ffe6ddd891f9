"""Runs one model on its own thread and serves it to asyncio code, one request at a time.

A model context is never shared by two requests: requests queue here and the worker
thread takes them in order. Generation streams back to the event loop chunk by chunk;
a consumer that stops listening (a cancelled task) stops the generation at the next
token.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
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
_STOP = object()


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
    ):
        self._worker = worker
        self._request = request
        self._coalesce_s = coalesce_s
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

        self._worker.submit(job)
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
        self._jobs: queue.Queue[_Job | object] = queue.Queue()
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

        self._thread = threading.Thread(target=run, name=f"model-{self._label}", daemon=True)
        self._thread.start()
        return await loaded

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                break
            assert callable(job)
            try:
                job()
            except Exception:  # jobs report their own errors; this is a last resort
                log.exception("model job failed")
        if self._backend is not None:
            self._backend.close()

    def submit(self, job: _Job) -> None:
        if self._thread is None or not self._thread.is_alive():
            raise ModelError("model worker is not running")
        self._jobs.put(job)

    def generate(
        self,
        request: GenerationRequest,
        cancel: threading.Event | None = None,
        *,
        coalesce_s: float = 0.0,
    ) -> GenerationStream:
        return GenerationStream(self, request, cancel or threading.Event(), coalesce_s)

    async def call(self, fn: Callable[[LLMBackend], Any]) -> Any:
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

        self.submit(job)
        return await fut

    async def score(self, prompt: str, continuations: Sequence[str]) -> list[float]:
        result: list[float] = await self.call(lambda b: b.score(prompt, continuations))
        return result

    async def count_tokens(self, text: str) -> int:
        result: int = await self.call(lambda b: b.count_tokens(text))
        return result

    async def stop(self, timeout: float = 30.0) -> None:
        if self._thread is None:
            return
        self._jobs.put(_STOP)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join, timeout)
        self._thread = None
