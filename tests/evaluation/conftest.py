"""Both bundled models' outputs on the sample splits in tests/data, computed once per test
session with real llama.cpp inference into a temporary cache."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from consortium.evaluation.harness import split_data
from consortium.evaluation.routing_eval import SplitData

DATA = Path(__file__).resolve().parents[1] / "data"


@dataclass(frozen=True)
class Splits:
    dev: SplitData
    test: SplitData
    cache: Path
    data: Path


@pytest.fixture(scope="session")
def splits(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Splits]:
    data = tmp_path_factory.mktemp("data")
    shutil.copy(DATA / "arc_easy_dev_sample.jsonl", data / "arc_easy_dev.jsonl")
    shutil.copy(DATA / "arc_easy_test_sample.jsonl", data / "arc_easy_test.jsonl")
    cache = tmp_path_factory.mktemp("eval-cache")
    common = {"limit": None, "data_dir": data, "cache": cache}
    dev = split_data("arc_easy_dev", "smollm2-135m", "gemma3-270m", **common)  # type: ignore[arg-type]
    test = split_data("arc_easy_test", "smollm2-135m", "gemma3-270m", **common)  # type: ignore[arg-type]
    yield Splits(dev, test, cache, data)
