"""Writes deploy/examples/canaries.jsonl: the demo's canary pool, calibrated for both
bundled models.

Multiple-choice canaries are the first 40 rows of ARC-Easy's dev split (never the test
split the benchmarks report on) that are cached for both models and that at least one
of them answers right; a few free-text canaries with each kind of check follow. Every
canary's `models` lists the bundled models that answer it right greedily: multiple
choice from the evaluation caches (no model runs), free text by running each model with
the node's prompt for it. A public benchmark item is a poor canary (a peer could
recognise it); an organization's real pool is its own.

    PYTHONPATH=. python scripts/canary_pool.py
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from consortium.evaluation.canaries import (
    backend_text,
    cached_choices,
    cached_outputs,
    calibrate,
    canaries_from_arc,
)
from consortium.evaluation.datasets import load_arc, split_path
from consortium.evaluation.harness import load_backend
from consortium.llm.registry import BUNDLED
from consortium.trust.canaries import Canary, Check, FreeTextCanary, write_pool

MODELS = ("gemma3-270m", "smollm2-135m")
TARGET = Path(__file__).resolve().parents[1] / "deploy" / "examples" / "canaries.jsonl"
FREE_TEXT: list[
    tuple[str, str, Literal["exact", "contains", "regex", "one_of"], str | tuple[str, ...]]
] = [
    ("ft-japan", "What is the capital of Japan?", "contains", "Tokyo"),
    ("ft-week", "How many days are there in a week?", "regex", r"\b(7|seven)\b"),
    ("ft-sky", "What color is the sky on a clear day?", "contains", "blue"),
    ("ft-bees", "What sweet food do bees make?", "contains", "honey"),
    ("ft-ice", "What is frozen water called?", "regex", r"\bice\b"),
    ("ft-sum", "What is two plus three?", "regex", r"\b(5|five)\b"),
    ("ft-hot", "Answer with one word: what is the opposite of hot?", "one_of", ("cold", "cold.")),
    ("ft-legs", "Answer with a number only: how many legs does a cat have?", "exact", "4"),
]


def main() -> None:
    items = load_arc(split_path("arc_easy_dev"))
    cached = {m: cached_outputs(m) for m in MODELS}
    pool: list[Canary] = [
        c for c in canaries_from_arc(items) if all(c.id in cached[m] for m in MODELS)
    ]
    for model in MODELS:
        pool, _ = calibrate(pool, model, choose=cached_choices(cached[model]))
    mc = [c for c in pool if c.models][:40]
    free: list[Canary] = [
        FreeTextCanary(id=i, prompt=p, check=Check(type=t, value=v)) for i, p, t, v in FREE_TEXT
    ]
    for model in MODELS:
        backend = load_backend(model)
        try:
            generate = backend_text(backend, BUNDLED[model].prompt_format)
            free, report = calibrate(free, model, generate=generate)
        finally:
            backend.close()
        print(model, "free text kept:", report.kept)
    write_pool([*mc, *free], TARGET)
    print("multiple choice:", [c.id for c in mc])


if __name__ == "__main__":
    main()
