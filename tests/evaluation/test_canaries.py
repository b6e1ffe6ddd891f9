"""Calibrating canary pools against a declared model from the evaluation caches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from consortium.evaluation.canaries import (
    cached_choices,
    calibrate,
    calibrate_file,
    canaries_from_arc,
    first_of,
    leading_choice,
    pass_rate,
)
from consortium.evaluation.datasets import load_arc
from consortium.evaluation.outputs import Generated, ItemOutput
from consortium.protocols.multiple_choice import OptionScores, argmax
from consortium.trust.canaries import (
    Canary,
    Check,
    FreeTextCanary,
    MultipleChoiceCanary,
    load_pool,
    write_pool,
)
from tests.evaluation.conftest import Splits

ROOT = Path(__file__).resolve().parents[2]


def output(item_id: str, answer: int, logprobs: tuple[float, ...]) -> ItemOutput:
    n = len(logprobs)
    return ItemOutput(
        id=item_id,
        model="m",
        answer=answer,
        scores=OptionScores(logprobs=logprobs, tokens=(1,) * n, chars=(1,) * n),
        generated=Generated("", None, 0.0, 0.0, 0.0, 0),
        prompt_tokens=5,
    )


def canary(cid: str, answer: int = 0, models: tuple[str, ...] = ()) -> MultipleChoiceCanary:
    return MultipleChoiceCanary(
        id=cid, question="q", choices=("a", "b", "c"), answer=answer, models=models
    )


def test_leading_choice_and_margin() -> None:
    s = OptionScores(logprobs=(-1.0, -1.05, -3.0), tokens=(1, 1, 1), chars=(1, 1, 1))
    assert leading_choice(s, "tokens", 0.0) == 0
    assert leading_choice(s, "tokens", 0.05) == 0
    assert leading_choice(s, "tokens", 0.1) is None  # too close to call


def test_calibration_keeps_what_the_model_answers_right() -> None:
    outputs = {
        "right": output("right", 0, (-1.0, -2.0, -3.0)),
        "wrong": output("wrong", 0, (-3.0, -1.0, -2.0)),
        "close": output("close", 0, (-1.0, -1.01, -3.0)),
        "other": output("other", 2, (-1.0, -2.0, -3.0)),  # the cache's answer differs
    }
    pool: list[Canary] = [
        canary("right", models=("x",)),
        canary("wrong", models=("m",)),  # a stale calibration is removed
        canary("close"),
        canary("other"),
        canary("absent"),
        FreeTextCanary(id="free", prompt="p", check=Check(type="exact", value="4")),
    ]
    out, report = calibrate(pool, "m", choose=cached_choices(outputs, min_margin=0.05))
    assert report.kept == ("right",)
    assert report.wrong == ("wrong",)
    assert report.unjudged == ("close", "other", "absent", "free")
    assert [c.models for c in out] == [("m", "x"), (), (), (), (), ()]
    free_out, free_report = calibrate(pool[-1:], "m", generate=lambda c: " 4 ")
    assert free_report.kept == ("free",) and free_out[0].models == ("m",)


def test_first_of_falls_back() -> None:
    judge = first_of(None, lambda c: None, lambda c: 2)
    assert judge(canary("a")) == 2


def test_calibrate_file_writes_the_annotated_pool(tmp_path: Path, splits: Splits) -> None:
    items = load_arc(splits.data / "arc_easy_dev.jsonl")[:8]
    source, target = tmp_path / "pool.jsonl", tmp_path / "calibrated.jsonl"
    write_pool(canaries_from_arc(items), source)
    report = calibrate_file(source, "gemma3-270m", target, cache=splits.cache)
    pool = load_pool(target)
    assert len(pool) == 8 and report.unjudged == ()
    right = {
        it.id
        for it in items
        if argmax(splits.dev.strong[it.id].scores.normalised("tokens")) == it.answer
    }
    assert set(report.kept) == right
    assert {c.id for c in pool.for_model("gemma3-270m")} == right


def test_calibrated_pool_separates_honest_from_substituted(splits: Splits) -> None:
    """On the cached sample: the honest declared model passes every calibrated canary;
    a substitute passes exactly those it also answers right."""
    pool = canaries_from_arc(splits.dev.items)
    gemma, smol = cached_choices(splits.dev.strong), cached_choices(splits.dev.local)
    calibrated, report = calibrate(pool, "gemma3-270m", choose=gemma)
    kept = [
        c for c in calibrated if isinstance(c, MultipleChoiceCanary) and "gemma3-270m" in c.models
    ]
    assert len(kept) == len(report.kept) > 0
    assert pass_rate(kept, gemma) == 1.0
    both = sum(c.passed(smol(c)) for c in kept)
    assert pass_rate(kept, smol) == both / len(kept)
    assert pass_rate(kept, lambda c: (c.answer + 1) % len(c.choices)) == 0.0


def test_benchmark_prints_its_figures(splits: Splits) -> None:
    env = {**os.environ, "CONSORTIUM_DATA_DIR": str(splits.data)}
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "canaries.py"), "--cache", str(splits.cache)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads(r.stdout)
    assert d["items_cached_for_both_models"] == 24
    gemma = d["gemma_declared"]
    assert gemma["uncalibrated"]["size"] == 24
    assert gemma["calibrated"]["honest"] == 1.0
    assert gemma["calibrated"]["always_wrong"] == 0.0
    assert 0.0 <= gemma["calibrated"]["substituted"] <= 1.0
