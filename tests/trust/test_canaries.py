"""Canary pools (loading, refusals, checks) and the canary scheduler (rates, repeats,
budget, background), all pure: seeded generators and given times, no clock."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest

from consortium.errors import ConfigError
from consortium.trust.canaries import (
    MAX_REGEX,
    MAX_TEXT,
    CanaryPool,
    Check,
    FreeTextCanary,
    MultipleChoiceCanary,
    evidence,
    judge,
    load_pool,
    write_pool,
)
from consortium.trust.canary_schedule import CanaryScheduler, CanarySettings

MC = {"id": "m1", "question": "Which is a mammal?", "choices": ["shark", "whale"], "answer": 1}
FT = {"id": "f1", "prompt": "Capital of Japan?", "check": {"type": "contains", "value": "Tokyo"}}


def pool_file(tmp_path: Path, *rows: Any) -> Path:
    path = tmp_path / "canaries.jsonl"
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_loads_both_kinds_in_file_order(tmp_path: Path) -> None:
    pool = load_pool(pool_file(tmp_path, MC, "", {**FT, "models": ["gemma3-270m"]}))
    assert [c.id for c in pool] == ["m1", "f1"]
    assert isinstance(pool.canaries[0], MultipleChoiceCanary)
    assert isinstance(pool.canaries[1], FreeTextCanary)
    assert [c.id for c in pool.for_model("gemma3-270m")] == ["f1"]
    assert pool.for_model("smollm2-135m") == ()


def test_written_pool_reads_back_unchanged(tmp_path: Path) -> None:
    pool = load_pool(pool_file(tmp_path, MC, FT))
    out = tmp_path / "copy.jsonl"
    write_pool(pool, out)
    assert load_pool(out) == pool


BAD_ROWS = [
    ("{not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    ({"id": "x"}, "neither a multiple-choice"),
    ({**MC, "answer": 2}, "answer 2 is not an index of the 2 choices"),
    ({**MC, "answer": -1}, "answer -1 is not an index"),
    ({**MC, "answer": "1"}, "answer"),
    ({**MC, "answer": True}, "answer"),
    ({**MC, "choices": ["only one"]}, "choices"),
    ({**MC, "choices": ["a", " "]}, "a choice is empty"),
    ({**MC, "question": "  "}, "question is empty"),
    ({**MC, "extra": 1}, "extra"),
    ({**MC, "id": ""}, "id"),
    ({**FT, "prompt": " "}, "prompt is empty"),
    ({**FT, "check": {"type": "glob", "value": "x"}}, "check.type"),
    ({**FT, "check": {"type": "one_of", "value": []}}, "non-empty list"),
    ({**FT, "check": {"type": "one_of", "value": "x"}}, "non-empty list"),
    ({**FT, "check": {"type": "exact", "value": ["x"]}}, "non-empty string"),
    ({**FT, "check": {"type": "regex", "value": "(unclosed"}}, "not a valid regex"),
    ({**FT, "check": {"type": "regex", "value": "a" * (MAX_REGEX + 1)}}, "limited to"),
    ({**FT, "check": {"type": "regex", "value": "(a+)+$"}}, "repeated group"),
    ({**FT, "check": {"type": "regex", "value": "(x|y*)*"}}, "repeated group"),
]


@pytest.mark.parametrize(("row", "what"), BAD_ROWS)
def test_bad_line_is_refused_naming_file_and_line(tmp_path: Path, row: Any, what: str) -> None:
    path = pool_file(tmp_path, MC | {"id": "ok"}, row)
    with pytest.raises(ConfigError) as e:
        load_pool(path)
    assert str(e.value).startswith(f"{path}: line 2: ")
    assert what in str(e.value)
    assert "\n" not in str(e.value)


def test_duplicate_id_names_both_lines(tmp_path: Path) -> None:
    path = pool_file(tmp_path, MC, FT, {**FT, "id": "m1"})
    with pytest.raises(ConfigError, match=r"line 3: duplicate id 'm1' \(first on line 1\)"):
        load_pool(path)


def test_empty_and_missing_pools_are_refused(tmp_path: Path) -> None:
    empty = pool_file(tmp_path, "", "  ")
    with pytest.raises(ConfigError, match="canary pool is empty") as e:
        load_pool(empty)
    assert str(empty) in str(e.value)
    with pytest.raises(ConfigError, match="cannot read the canary pool"):
        load_pool(tmp_path / "absent.jsonl")


@pytest.mark.parametrize(
    ("check", "reply", "passed"),
    [
        (("exact", "4"), " 4\n", True),
        (("exact", "4"), "4 legs", False),
        (("exact", "Paris"), "paris", True),
        (("contains", "Tokyo"), "The capital of Japan is tokyo.", True),
        (("contains", "Tokyo"), "Kyoto", False),
        (("regex", r"\b(7|seven)\b"), "A week has Seven days.", True),
        (("regex", r"\b(7|seven)\b"), "A week has 17 days.", False),
        (("one_of", ("cold", "cold.")), " Cold. ", True),
        (("one_of", ("cold", "cold.")), "cold, freezing", False),
    ],
)
def test_checks(check: tuple[str, Any], reply: str, passed: bool) -> None:
    canary = FreeTextCanary(id="f", prompt="p", check=Check(type=check[0], value=check[1]))  # type: ignore[arg-type]
    assert canary.passed(reply) is passed


def test_checks_read_a_bounded_reply() -> None:
    canary = FreeTextCanary(id="f", prompt="p", check=Check(type="contains", value="needle"))
    assert canary.passed("x" * (MAX_TEXT - 10) + "needle")
    assert not canary.passed("x" * MAX_TEXT + "needle")


def test_multiple_choice_verdict_and_evidence() -> None:
    canary = MultipleChoiceCanary.model_validate_json(json.dumps(MC))
    assert canary.passed(1) and not canary.passed(0) and not canary.passed(None)
    good = evidence("globex", canary, True, model="gemma3-270m")
    bad = evidence("globex", canary, False)
    assert (good.peer, good.kind, good.good, good.reason, good.model) == (
        "globex",
        "canary",
        True,
        "canary_passed",
        "gemma3-270m",
    )
    assert (bad.good, bad.reason) == (False, "canary_failed")


def mc_pool(n: int, models: tuple[str, ...] = ("m",), tokens: int = 10) -> CanaryPool:
    return CanaryPool(
        tuple(
            MultipleChoiceCanary(
                id=f"c{i}",
                question=f"q{i}",
                choices=("a", "b"),
                answer=0,
                models=models,
                tokens=tokens,
            )
            for i in range(n)
        )
    )


UNLIMITED: dict[str, Any] = {"budget_tokens": 10**9, "repeat_window_s": 0.0}


@pytest.mark.parametrize(("rate", "seed"), [(0.05, 1), (0.05, 2), (0.2, 3), (0.5, 4)])
def test_rate_over_many_seeded_calls(rate: float, seed: int) -> None:
    calls = 20_000
    sched = CanaryScheduler(
        mc_pool(50), CanarySettings(rate=rate, **UNLIMITED), random.Random(seed)
    )
    sent = sum(sched.instead_of_call("globex", "m", float(t)) is not None for t in range(calls))
    # Binomial: within 4 standard deviations (a false failure about once in 16,000 runs).
    tolerance = 4 * math.sqrt(calls * rate * (1 - rate))
    assert abs(sent - calls * rate) <= tolerance


def test_same_seed_same_draws() -> None:
    def run(seed: int) -> list[str | None]:
        sched = CanaryScheduler(
            mc_pool(20), CanarySettings(rate=0.3, **UNLIMITED), random.Random(seed)
        )
        return [
            c.id if (c := sched.instead_of_call("p", "m", float(t))) else None for t in range(200)
        ]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_rate_zero_sends_none_and_rate_one_every_call() -> None:
    never = CanaryScheduler(mc_pool(5), CanarySettings(rate=0.0, **UNLIMITED), random.Random(0))
    always = CanaryScheduler(mc_pool(5), CanarySettings(rate=1.0, **UNLIMITED), random.Random(0))
    assert all(never.instead_of_call("p", "m", float(t)) is None for t in range(500))
    assert all(always.instead_of_call("p", "m", float(t)) is not None for t in range(500))


def test_a_peer_rate_replaces_the_rate_for_that_peer() -> None:
    settings = CanarySettings(rate=0.0, peer_rates=(("globex", 1.0),), **UNLIMITED)
    sched = CanaryScheduler(mc_pool(5), settings, random.Random(0))
    assert all(sched.instead_of_call("globex", "m", float(t)) for t in range(50))
    assert not any(sched.instead_of_call("initech", "m", float(t)) for t in range(50))
    with pytest.raises(ValueError, match="share of calls"):
        CanarySettings(peer_rates=(("globex", 1.5),))


def test_an_alarm_makes_the_next_call_carry_a_canary() -> None:
    sched = CanaryScheduler(mc_pool(5), CanarySettings(rate=0.0, **UNLIMITED), random.Random(0))
    sched.alarm("globex")
    assert sched.instead_of_call("globex", "m", 1.0) is not None
    assert sched.instead_of_call("globex", "m", 2.0) is None  # the alarm is spent
    assert sched.instead_of_call("initech", "m", 3.0) is None


def test_no_canary_twice_to_a_peer_within_the_window() -> None:
    settings = CanarySettings(rate=1.0, budget_tokens=10**9, repeat_window_s=100.0)
    sched = CanaryScheduler(mc_pool(5), settings, random.Random(0))
    first = [sched.draw("globex", "m", float(t)) for t in range(5)]
    assert sorted(c.id for c in first if c) == [f"c{i}" for i in range(5)]
    assert sched.draw("globex", "m", 99.0) is None  # all five sent within the window
    assert sched.instead_of_call("globex", "m", 99.5) is None  # the call goes out as is
    assert sched.draw("initech", "m", 99.0) is not None  # another peer may get one
    again = sched.draw("globex", "m", 100.0)  # c-first left the window at 100
    assert again is not None and again.id == first[0].id  # type: ignore[union-attr]
    assert set(sched.sent_to("globex")) == {f"c{i}" for i in range(5)}


def test_no_repeats_over_a_long_seeded_run() -> None:
    window = 1000.0
    settings = CanarySettings(rate=0.1, budget_tokens=10**9, repeat_window_s=window)
    sched = CanaryScheduler(mc_pool(30), settings, random.Random(5))
    last: dict[str, float] = {}
    for t in range(20_000):
        canary = sched.instead_of_call("globex", "m", float(t))
        if canary is not None:
            assert t - last.get(canary.id, -window) >= window
            last[canary.id] = float(t)
    assert len(last) == 30


def test_only_canaries_calibrated_for_the_declared_model() -> None:
    smol = MultipleChoiceCanary(
        id="s", question="q", choices=("a", "b"), answer=1, models=("smollm2-135m",)
    )
    pool = CanaryPool((*mc_pool(3, ("gemma3-270m",)).canaries, smol))
    sched = CanaryScheduler(pool, CanarySettings(rate=1.0, **UNLIMITED), random.Random(0))
    drawn = {c.id for t in range(200) if (c := sched.draw("p", "gemma3-270m", float(t)))}
    assert drawn == {"c0", "c1", "c2"}
    assert sched.draw("p", "smollm2-135m", 0.0).id == "s"  # type: ignore[union-attr]
    assert sched.draw("p", "unknown-model", 0.0) is None


def test_budget_per_sliding_period() -> None:
    settings = CanarySettings(
        rate=1.0, budget_tokens=250, budget_period_s=60.0, repeat_window_s=0.0
    )
    sched = CanaryScheduler(mc_pool(10, tokens=100), settings, random.Random(0))
    assert sched.draw("a", "m", 0.0) is not None
    assert sched.draw("b", "m", 1.0) is not None  # the budget is shared by all peers
    assert sched.spent(1.0) == 200
    assert sched.draw("a", "m", 2.0) is None  # 300 > 250
    assert sched.draw("a", "m", 59.9) is None
    assert sched.draw("a", "m", 60.0) is not None  # the first left the period
    assert sched.spent(60.0) == 200


def test_budget_over_a_long_seeded_run() -> None:
    settings = CanarySettings(
        rate=0.5, budget_tokens=1000, budget_period_s=100.0, repeat_window_s=0.0
    )
    sched = CanaryScheduler(mc_pool(10, tokens=100), settings, random.Random(9))
    sent: list[float] = []
    for t in range(5000):
        if sched.instead_of_call("p", "m", float(t)) is not None:
            sent.append(float(t))
            assert sum(1 for s in sent if t - s < 100.0) * 100 <= 1000
    assert len(sent) >= 5000 // 100 * 10 * 0.9  # the budget, not the rate, limits it


def test_peers_not_called_lately_are_due_a_background_canary() -> None:
    settings = CanarySettings(rate=0.0, background_interval_s=3600.0, **UNLIMITED)
    sched = CanaryScheduler(mc_pool(5), settings, random.Random(0))
    peers = ["globex", "initech"]
    assert sched.due_for_background(peers, 0.0) == []  # first seen now
    sched.instead_of_call("globex", "m", 3000.0)  # a real call (no canary at rate 0)
    assert sched.due_for_background(peers, 3599.0) == []
    assert sched.due_for_background(peers, 3600.0) == ["initech"]
    assert sched.draw("initech", "m", 3600.0) is not None
    assert sched.due_for_background(peers, 6599.0) == []
    assert sched.due_for_background(peers, 6600.0) == ["globex"]
    assert sched.due_for_background(peers, 7200.0) == ["globex", "initech"]


def test_settings_are_checked() -> None:
    bad: list[dict[str, Any]] = [
        {"rate": 1.5},
        {"rate": -0.1},
        {"budget_period_s": 0.0},
        {"budget_tokens": -1},
    ]
    for settings in bad:
        with pytest.raises(ValueError):
            CanarySettings(**settings)


def test_judge_reads_an_index_or_a_text() -> None:
    mc = MultipleChoiceCanary.model_validate_json(json.dumps(MC))
    ft = FreeTextCanary.model_validate_json(json.dumps(FT))
    assert judge("p", mc, 1, "gemma3-270m").reason == "canary_passed"
    assert judge("p", mc, 1, "gemma3-270m").model == "gemma3-270m"
    for wrong in (0, None, "1", True):
        assert judge("p", mc, wrong).reason == "canary_failed"
    assert judge("p", ft, "It is Tokyo.").good
    assert not judge("p", ft, 0).good
    assert not judge("p", ft, None).good
