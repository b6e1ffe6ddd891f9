"""Small helpers several test modules share: a benchmark script loaded as a module (the
scripts are not a package), and a backend's generation drained to its chunks and result."""

from __future__ import annotations

import importlib.util
from collections.abc import Generator
from pathlib import Path
from types import ModuleType

from consortium.llm.base import Chunk, Completion

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
