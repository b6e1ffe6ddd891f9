"""Horizontal protocols on a handful of ARC items: cached vote, and live debate, mixture
and self-consistency with both real models."""

from __future__ import annotations

from pathlib import Path

import pytest

from consortium.evaluation.collab_eval import evaluate_collaboration, paired_interval
from consortium.evaluation.harness import load_backend
from consortium.evaluation.plots import plot_collaboration
from tests.evaluation.conftest import Splits


def test_paired_interval_by_hand() -> None:
    assert paired_interval([1, 1, 1, 1], [0, 0, 0, 0]) == [1.0, 1.0]
    low, high = paired_interval([1, 0] * 50, [0, 1] * 50)
    assert low < 0 < high


def test_protocols_against_the_best_single_model(splits: Splits, tmp_path: Path) -> None:
    result = evaluate_collaboration(splits.dev, splits.test, live_limit=2, load=load_backend)
    png = plot_collaboration(result, tmp_path / "collab.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    setup = result["_setup"]
    assert setup["best_single"] in ("smollm2-135m", "gemma3-270m")
    assert setup["live_items"] == 2
    best = result[setup["best_single"]]["accuracy"]
    for name in ("vote_equal", "vote_tuned"):
        row = result[name]
        assert 0 <= row["accuracy"] <= 1
        assert row["gain_over_best_single"] == pytest.approx(row["accuracy"] - best, abs=1e-3)
        assert row["gain_ci95"][0] <= row["gain_over_best_single"] <= row["gain_ci95"][1]
    for name in (
        "live_vote_3",
        "live_debate_full",
        "live_debate_ring",
        "live_debate_star",
        "live_mixture",
        "live_self_consistency",
    ):
        assert 0 <= result[name]["accuracy"] <= 1 and result[name]["tokens"] > 0, name
    # A two-round debate of three members makes six calls, a vote three.
    assert result["live_debate_full"]["tokens"] > result["live_vote_3"]["tokens"]
