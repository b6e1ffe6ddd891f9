"""Small helpers several test modules share: a benchmark script loaded as a module (the
scripts are not a package), a backend's generation drained to its chunks and result, and
a wait for a condition with a deadline."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Generator
from pathlib import Path
from types import ModuleType

from consortium.llm.base import ChatMessage, Chunk, Completion, GenerationParams
from consortium.llm.worker import GenerationRequest, GenerationStream

ROOT = Path(__file__).resolve().parents[1]


def benchmark_module(name: str) -> ModuleType:
    """`benchmarks/NAME.py`, imported."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def drain(gen: Generator[Chunk, None, Completion]) -> tuple[list[Chunk], Completion]:
    """Every chunk of a generation, and the Completion it returns."""
    chunks = []
    while True:
        try:
            chunks.append(next(gen))
        except StopIteration as stop:
            return chunks, stop.value


async def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Waits until `condition()` holds; raises TimeoutError after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("the condition did not hold in time")
        await asyncio.sleep(0.01)


def long_request(i: int, words: int = 500) -> GenerationRequest:
    """A chat request that streams `words` distinct words (w{i}.0, w{i}.1, ...) from the
    echo backend: long enough to hold a slot while a test looks."""
    text = " ".join(f"w{i}.{n}" for n in range(words))
    return GenerationRequest(
        GenerationParams(max_tokens=1000), messages=(ChatMessage("user", text),)
    )


async def close_streams(
    firsts: list[asyncio.Future[Chunk]], streams: list[GenerationStream]
) -> None:
    """Cancels pending first reads, then closes the streams (their slots free)."""
    for f in firsts:
        f.cancel()
    await asyncio.gather(*firsts, return_exceptions=True)
    for s in streams:
        await s.aclose()
