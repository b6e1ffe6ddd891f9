"""The trust layer's simulator (`consortium bench trust`): Byzantine behaviours replayed
over the cached outputs of the session's sample splits, through the real reputation
engine, canary scheduler and vote."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from consortium.evaluation import trust_eval
from consortium.evaluation.trust_eval import (
    GEMMA,
    SMOLLM,
    TURN_AT,
    Ask,
    Replay,
    always_wrong,
    evaluate_trust,
    honest,
    on_topic,
    replay_data,
    selective,
    simulate,
    substituted,
    turncoat,
)
from consortium.protocols.multiple_choice import argmax
from consortium.trust.canary_schedule import CanarySettings
from consortium.trust.reputation_engine import ReputationSettings
from tests.evaluation.conftest import Splits

# Settings under which verified replies outweigh everything else: what the engine had
# before answer and protocol evidence were kept apart. The shipped defaults are used
# everywhere else.
ONE_POSTERIOR_LIKE = ReputationSettings(weight_protocol=10.0)


@pytest.fixture(scope="module")
def data(splits: Splits) -> Replay:
    items = splits.dev.items + splits.test.items
    outputs = {
        GEMMA: {**splits.dev.strong, **splits.test.strong},
        SMOLLM: {**splits.dev.local, **splits.test.local},
    }
    return replay_data(items, outputs)


def test_the_canary_pool_is_calibrated_and_disjoint_from_the_tasks(data: Replay) -> None:
    assert {it.id for it in data.tasks}.isdisjoint(it.id for it in data.canaries)
    for model in (GEMMA, SMOLLM):
        calibrated = data.pool.for_model(model)
        assert calibrated
        for canary in calibrated:
            out = data.outputs[model][data.base[canary.id]]
            assert argmax(out.scores.normalised("tokens")) == canary.answer


def test_behaviours_answer_as_described(data: Replay) -> None:
    rng = random.Random(0)
    for item in data.tasks:
        ask = Ask(item, GEMMA, data.outputs, 0, rng)
        assert argmax(always_wrong(ask).normalised("tokens")) != item.answer
        assert substituted(ask) == data.outputs[SMOLLM][item.id].scores
        assert turncoat(replace(ask, n=TURN_AT - 1)) == honest(ask)
        if not on_topic(item):
            assert selective(ask) == honest(ask)
        else:
            assert argmax(selective(ask).normalised("tokens")) != item.answer


def test_an_always_wrong_peer_is_quarantined(data: Replay) -> None:
    for seed in range(2):
        run = simulate(data, "always_wrong", seed, 300)
        assert run.quarantined_after is not None
        assert run.quarantined_after < 40
        assert run.honest_quarantines == 0


def test_an_honest_peer_is_not_quarantined_in_a_short_run(data: Replay) -> None:
    for settings, canary in ((None, None), (None, CanarySettings(rate=0.2))):
        for seed in range(2):
            run = simulate(data, "honest", seed, 300, settings=settings, canary=canary)
            assert run.quarantined_after is None
            assert run.honest_quarantines == 0
            assert run.correct["none"] == run.correct["honest"]
            # A burst of timeouts may put an honest peer on probation for a while, where it
            # weighs less in the vote: a task or two of 300 may go the other way.
            assert abs(run.correct["trust"] - run.correct["honest"]) <= 0.01 * run.tasks


def test_the_vote_with_trust_beats_the_vote_without_against_an_always_wrong_member(
    data: Replay,
) -> None:
    for seed in range(2):
        run = simulate(data, "always_wrong", seed, 300)
        assert run.correct["trust"] > run.correct["none"]


def test_a_colluding_minoritys_reports_neither_shield_its_member_nor_sink_an_honest_one(
    data: Replay,
) -> None:
    run = simulate(data, "colluding", 0, 300)
    assert run.quarantined_after is not None and run.honest_quarantines == 0


def test_verified_replies_do_not_shield_a_half_wrong_peer(data: Replay) -> None:
    """However much protocol evidence weighs, it has its own posterior: the peer's wrong
    answers still quarantine it."""
    run = simulate(data, "half_wrong", 0, 300, settings=ONE_POSTERIOR_LIKE)
    assert run.quarantined_after is not None and run.honest_quarantines == 0


def test_runs_are_deterministic_per_seed(data: Replay) -> None:
    first = simulate(data, "turncoat", 3, 250)
    assert simulate(data, "turncoat", 3, 250) == first
    assert first.canaries > 0
    assert first.canary_tokens > 0 and first.task_tokens > 0


def test_the_figures_name_every_target(data: Replay, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trust_eval, "cached_replay", lambda: data)
    from consortium.cli.app import app

    result = CliRunner().invoke(app, ["bench", "trust", "--tasks", "60", "--seeds", "1", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert set(trust_eval.BEHAVIOURS) <= set(figures)
    assert set(figures["_targets"]) >= {
        "half_wrong_p95_within_40",
        "turncoat_p95_within_60",
        "substitution_detected",
        "false_quarantine_at_most_1pct",
        "vote_within_1_point_of_all_honest",
        "canary_overhead_at_most_10pct",
        "colluding_minority_quarantines_no_honest_peer",
    }
    assert figures["_summary"]["cross_check_token_overhead"] == 0.0
    assert (
        evaluate_trust(data, tasks=60, seeds=1, behaviours=["honest"])["honest"][
            "quarantined_share"
        ]
        == 0.0
    )
