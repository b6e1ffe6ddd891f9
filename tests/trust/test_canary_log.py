"""The canary scheduler's draws survive a restart: `CanaryLogTable` in trust.sqlite3
(no canary repeated to a peer within the window, the budget spent remembered, old
entries forgotten), next to the reputations, which do not see its writes as another
process's commits; and draws limited to one kind of canary."""

from __future__ import annotations

import random
from pathlib import Path

from consortium.trust.canaries import (
    CanaryPool,
    Check,
    FreeTextCanary,
    MultipleChoiceCanary,
)
from consortium.trust.canary_schedule import CanaryScheduler, CanarySettings, SentCanary
from consortium.trust.reputation import Evidence
from consortium.trust.reputation_engine import ReputationAssessor
from consortium.trust.reputation_store import CanaryLogTable, ReputationStore


def pool(n: int, tokens: int = 10) -> CanaryPool:
    return CanaryPool(
        tuple(
            MultipleChoiceCanary(
                id=f"c{i}",
                question=f"q{i}",
                choices=("a", "b"),
                answer=0,
                models=("m",),
                tokens=tokens,
            )
            for i in range(n)
        )
    )


def scheduler(
    path: Path, settings: CanarySettings, seed: int, n: int = 3, tokens: int = 10
) -> tuple[CanaryScheduler, ReputationStore]:
    store = ReputationStore(path)
    return CanaryScheduler(
        pool(n, tokens), settings, random.Random(seed), CanaryLogTable(store)
    ), store


def test_a_restart_does_not_repeat_a_canary_within_the_window(tmp_path: Path) -> None:
    settings = CanarySettings(rate=1.0, budget_tokens=10**9, repeat_window_s=1000.0)
    path = tmp_path / "trust.sqlite3"
    first, store = scheduler(path, settings, seed=1)
    drawn = {first.draw("p", "m", float(t)).id for t in range(3)}  # type: ignore[union-attr]
    assert drawn == {"c0", "c1", "c2"}
    store.close()
    for seed in range(5):  # whatever the new generator draws
        again, store = scheduler(path, settings, seed=seed)
        assert again.sent_to("p") == {"c0": 0.0, "c1": 1.0, "c2": 2.0}
        assert again.draw("p", "m", 500.0) is None  # all sent to p within the window
        assert again.draw(f"q{seed}", "m", 500.0) is not None  # another peer may
        store.close()
    later, store = scheduler(path, settings, seed=0)
    assert later.draw("p", "m", 1000.0) is not None  # c0 left the window
    store.close()


def test_a_restart_remembers_the_budget_spent(tmp_path: Path) -> None:
    settings = CanarySettings(
        rate=1.0, budget_tokens=250, budget_period_s=60.0, repeat_window_s=0.0
    )
    path = tmp_path / "trust.sqlite3"
    first, store = scheduler(path, settings, seed=0, n=10, tokens=100)
    assert first.draw("a", "m", 0.0) is not None
    assert first.draw("b", "m", 1.0) is not None
    store.close()
    again, store = scheduler(path, settings, seed=0, n=10, tokens=100)
    assert again.spent(2.0) == 200
    assert again.draw("a", "m", 2.0) is None  # 300 > 250, across the restart
    assert again.draw("a", "m", 60.0) is not None
    store.close()


def test_entries_older_than_window_and_period_are_forgotten(tmp_path: Path) -> None:
    store = ReputationStore(tmp_path / "trust.sqlite3")
    table = CanaryLogTable(store)
    table.add(SentCanary("p", "c0", 0.0, 5), forget_before=-1.0)
    table.add(SentCanary("p", "c1", 100.0, 5), forget_before=50.0)
    assert table.entries() == [SentCanary("p", "c1", 100.0, 5)]
    store.close()


def test_the_log_shares_the_file_without_disturbing_reputations(tmp_path: Path) -> None:
    path = tmp_path / "trust.sqlite3"
    assessor = ReputationAssessor.open(path)
    table = CanaryLogTable(assessor.store)
    assessor.record(Evidence("p", "canary", False, "canary_failed"))
    table.add(SentCanary("p", "c0", 1.0, 5), forget_before=0.0)
    assert not assessor.store.changed()  # our own writes, not another process's
    before = assessor.reputation("p")
    assessor.close()
    reopened = ReputationAssessor.open(path)
    assert reopened.reputation("p") == before
    assert CanaryLogTable(reopened.store).entries() == [SentCanary("p", "c0", 1.0, 5)]
    reopened.close()


def test_a_draw_may_be_limited_to_one_kind() -> None:
    mixed = CanaryPool(
        (
            MultipleChoiceCanary(
                id="mc", question="q", choices=("a", "b"), answer=0, models=("m",)
            ),
            FreeTextCanary(
                id="ft", prompt="p", check=Check(type="contains", value="x"), models=("m",)
            ),
        )
    )
    settings = CanarySettings(rate=1.0, budget_tokens=10**9, repeat_window_s=0.0)
    sched = CanaryScheduler(mixed, settings, random.Random(0))
    for t in range(20):
        assert sched.instead_of_call("p", "m", float(t), "free_text").id == "ft"  # type: ignore[union-attr]
        assert sched.draw("p", "m", float(t), "multiple_choice").id == "mc"  # type: ignore[union-attr]
    only_mc = CanaryScheduler(pool(2), settings, random.Random(0))
    assert only_mc.instead_of_call("p", "m", 0.0, "free_text") is None
