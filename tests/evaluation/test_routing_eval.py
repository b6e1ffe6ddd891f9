"""Every router replayed over real model outputs on a handful of ARC items."""

from __future__ import annotations

from pathlib import Path

import pytest

from consortium.evaluation.outputs import load_outputs, outputs_path
from consortium.evaluation.plots import plot_routing
from consortium.evaluation.routing_eval import evaluate_routers
from tests.evaluation.conftest import Splits

ROUTERS = [
    "heuristic",
    "self:mean_logprob",
    "self:min_logprob",
    "self:entropy",
    "self:margin",
    "learned",
    "random",
    "oracle",
]


def test_outputs_are_cached_and_complete(splits: Splits) -> None:
    for model in ("smollm2-135m", "gemma3-270m"):
        cached = load_outputs(outputs_path("arc_easy_test", model, splits.cache))
        assert set(cached) == {it.id for it in splits.test.items}
        for item in splits.test.items:
            out = cached[item.id]
            assert out.model == model and out.answer == item.answer
            assert len(out.scores.logprobs) == len(item.question.choices)
            assert all(lp < 0 for lp in out.scores.logprobs)
            assert out.prompt_tokens > 0 and all(t > 0 for t in out.scores.tokens)


def test_every_router_gets_metrics_against_random_and_the_oracle(
    splits: Splits, tmp_path: Path
) -> None:
    result = evaluate_routers(
        splits.dev, splits.test, rate=0.5, c_grid=(1.0,), bootstrap_samples=100
    )
    assert set(ROUTERS) <= set(result)
    setup = result["_setup"]
    assert setup["items"] == len(splits.test.items)
    assert 0 <= setup["local_accuracy"] <= 1 and 0 <= setup["strong_accuracy"] <= 1
    assert result["random"]["apgr"] == pytest.approx(0.5)
    for name in ROUTERS:
        row = result[name]
        assert 0 <= row["escalation_rate"] <= 1 and row["tokens"] > 0
        assert 0 <= row["cpt50"] <= row["cpt80"] <= 1
        # No router beats the oracle's curve.
        assert row["auc"] <= result["oracle"]["auc"] + 1e-9
    assert "apgr_ci95" in result["self:margin"]
    png = plot_routing(result, tmp_path / "routing.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
