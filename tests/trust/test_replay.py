"""Replay caches (trust/replay.py): a (sender, id) pair is seen for the first time once
until it expires; requests are remembered in SQLite across a restart, answers in memory,
within a bound that never forgets a pair still live."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from consortium.trust.replay import AnswerReplayCache, ReplayCache

T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        count: int = conn.execute("SELECT count(*) FROM replay").fetchone()[0]
    return count


def test_a_pair_is_a_first_sighting_once(tmp_path: Path) -> None:
    cache = ReplayCache(tmp_path / "replay.sqlite3", clock=Clock())
    try:
        assert cache.first_sighting("acme", "m1", T0 + 60)
        assert not cache.first_sighting("acme", "m1", T0 + 60)
        assert not cache.first_sighting("acme", "m1", T0 + 120)  # a later expiry too
        # The pair is what counts: another sender, or another id, is new.
        assert cache.first_sighting("globex", "m1", T0 + 60)
        assert cache.first_sighting("acme", "m2", T0 + 60)
    finally:
        cache.close()


def test_the_cache_persists_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "replay.sqlite3"
    cache = ReplayCache(path, clock=Clock())
    assert cache.first_sighting("acme", "m1", T0 + 60)
    cache.close()
    reopened = ReplayCache(path, clock=Clock())
    try:
        assert not reopened.first_sighting("acme", "m1", T0 + 60)
        assert reopened.first_sighting("acme", "m2", T0 + 60)
    finally:
        reopened.close()


def test_an_expired_pair_is_new_again_and_purged(tmp_path: Path) -> None:
    path = tmp_path / "replay.sqlite3"
    clock = Clock()
    cache = ReplayCache(path, clock=clock)
    try:
        for i in range(5):
            assert cache.first_sighting("acme", f"m{i}", T0 + 10)
        clock.now = T0 + 10  # expiring at this instant: still remembered
        assert not cache.first_sighting("acme", "m0", T0 + 20)
        clock.now = T0 + 11
        assert cache.first_sighting("acme", "m1", T0 + 21)
        assert not cache.first_sighting("acme", "m1", T0 + 21)
        # Expired pairs are deleted (at most once a minute), so the file does not grow.
        clock.now = T0 + 120
        assert cache.first_sighting("acme", "fresh", T0 + 180)
        assert rows(path) == 1
    finally:
        cache.close()


def test_answers_are_a_first_sighting_once_until_they_expire() -> None:
    clock = Clock()
    cache = AnswerReplayCache(clock)
    assert cache.first_sighting("globex", "event-1", T0 + 60)
    assert not cache.first_sighting("globex", "event-1", T0 + 60)
    assert cache.first_sighting("initech", "event-1", T0 + 60)
    clock.now = T0 + 61
    assert cache.first_sighting("globex", "event-1", T0 + 121)


def test_the_answer_cache_limit_never_forgets_a_live_pair() -> None:
    clock = Clock()
    cache = AnswerReplayCache(clock, limit=3)
    for i in range(3):
        assert cache.first_sighting("globex", f"e{i}", T0 + 60)
    # Full, and nothing has expired: new pairs are still taken and old ones still caught.
    assert cache.first_sighting("globex", "e3", T0 + 60)
    assert all(not cache.first_sighting("globex", f"e{i}", T0 + 60) for i in range(4))
    # Once they expire, reaching the limit drops them.
    clock.now = T0 + 61
    assert cache.first_sighting("globex", "e4", T0 + 121)
    assert len(cache._seen) == 1  # the memory the limit bounds
    assert not cache.first_sighting("globex", "e4", T0 + 121)
