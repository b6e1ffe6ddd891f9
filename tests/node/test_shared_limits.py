"""Per-key limits shared by replicas on a real PostgreSQL (node/shared_limits.py): the
limiter's rules as the in-memory one's, on a clock of the test's; two limiters on two
Storage objects (two replicas) grant one caller its requests per minute, its tokens
and its requests in progress once, not twice — also when both admit at the same
moment; reservations settle; a dead replica's slots free themselves."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from consortium.errors import RateLimited
from consortium.node.auth import Caller
from consortium.node.limits import LimitSettings
from consortium.node.shared_limits import SLOT_TTL_S, SharedLimits
from consortium.storage import migrations
from consortium.storage.storage import Storage
from tests.conftest import PgDatabase

KEY = Caller("key", "k1")
T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def replicas(pg_database: PgDatabase) -> Iterator[list[Storage]]:
    storages = [pg_database.storage() for _ in range(2)]
    migrations.upgrade(storages[0], ["limits"])
    yield storages
    for s in storages:
        s.close()


def limiter(storage: Storage, clock: Clock, **settings: int) -> SharedLimits:
    return SharedLimits(LimitSettings(**settings), storage.database("limits"), clock=clock)


def test_the_limiters_rules_on_the_database(replicas: list[Storage]) -> None:
    """tests/node/test_caller_limits.py's scenario, on one replica."""
    clock = Clock()
    limits = limiter(
        replicas[0], clock, requests_per_minute=2, tokens_per_minute=100, concurrent_requests=2
    )
    try:
        limits.count_request(KEY)
        limits.count_request(KEY)
        with pytest.raises(RateLimited) as refused:
            limits.count_request(KEY)
        assert refused.value.kind == "requests" and refused.value.retry_after_s == 60.0
        first = limits.reserve(KEY, 60)
        second = limits.reserve(KEY, 30)
        with pytest.raises(RateLimited) as refused:
            limits.reserve(KEY, 1)  # two in progress
        assert refused.value.kind == "concurrency"
        second.settle(0)
        limits.wait_settled()
        with pytest.raises(RateLimited) as refused:
            limits.reserve(KEY, 50)  # 60 + 50 reserved
        assert refused.value.kind == "tokens" and refused.value.retry_after_s == 60.0
        clock.now = T0 + 30
        first.settle(20)  # 40 given back
        limits.wait_settled()
        third = limits.reserve(KEY, 50)
        third.settle(70)
        third.settle(0)  # once only
        limits.wait_settled()
        clock.now = T0 + 60.5  # the first left the window; the third's 70 did not
        with pytest.raises(RateLimited) as refused:
            limits.reserve(KEY, 40)
        assert refused.value.kind == "tokens" and refused.value.retry_after_s == 29.5
        limits.reserve(KEY, 30).settle(30)
        with pytest.raises(RateLimited, match="Request too large"):
            limits.reserve(KEY, 101)
        # A reservation released before its task started is taken again when it does.
        k2 = Caller("key", "k2")
        late = limits.reserve(k2, 90)
        late.release_unclaimed()
        late.claim()
        limits.wait_settled()
        with pytest.raises(RateLimited):
            limits.reserve(k2, 20)
        # Members are not limited here; 0 means unlimited (and costs no query).
        member = Caller("member", "globex")
        for _ in range(5):
            limits.count_request(member)
            limits.reserve(member, 1000)
        unlimited = SharedLimits(LimitSettings(), replicas[0].database("limits"))
        unlimited.count_request(KEY)
        unlimited.reserve(KEY, 10**9).settle(10**9)
        unlimited.close()
    finally:
        limits.close()


def test_two_replicas_share_one_callers_requests_per_minute(replicas: list[Storage]) -> None:
    clock = Clock()
    a, b = (limiter(s, clock, requests_per_minute=10) for s in replicas)
    try:
        granted = {"a": 0, "b": 0}
        for i in range(12):
            name, limits = ("a", a) if i % 2 == 0 else ("b", b)
            try:
                limits.count_request(KEY)
                granted[name] += 1
            except RateLimited as e:
                assert e.kind == "requests"
        assert granted == {"a": 5, "b": 5}  # 10 in all, not 10 each
        other = Caller("key", "k2")  # another caller has a window of its own
        b.count_request(other)
        clock.now += 60.0  # the window moved on
        a.count_request(KEY)
        # Both replicas at the same moment, many times over: never more than the limit.
        clock.now += 60.0
        counted: list[bool] = []
        barrier = threading.Barrier(8)

        def call(limits: SharedLimits) -> None:
            barrier.wait()
            for _ in range(3):
                try:
                    limits.count_request(KEY)
                    counted.append(True)
                except RateLimited:
                    counted.append(False)

        threads = [threading.Thread(target=call, args=((a, b)[i % 2],)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert counted.count(True) == 10 and len(counted) == 24
    finally:
        a.close()
        b.close()


def test_two_replicas_share_requests_in_progress_and_tokens(replicas: list[Storage]) -> None:
    clock = Clock()
    a, b = (limiter(s, clock, concurrent_requests=3, tokens_per_minute=1000) for s in replicas)
    try:
        held = [a.reserve(KEY, 100), b.reserve(KEY, 100), a.reserve(KEY, 100)]
        for limits in (a, b):
            with pytest.raises(RateLimited) as refused:
                limits.reserve(KEY, 100)
            assert refused.value.kind == "concurrency"
        held[0].settle(100)  # settled on A: a place frees on B too
        a.wait_settled()
        held.append(b.reserve(KEY, 600))  # 100 + 100 + 100 + 600
        with pytest.raises(RateLimited) as refused:
            a.reserve(KEY, 200)
        assert refused.value.kind in ("concurrency", "tokens")
        for r in held[1:]:
            r.settle(0)
        a.wait_settled()
        b.wait_settled()
        # Settled to what they used: 100 (the first) + 0 + 0 + 0 of 1000 spent.
        big = a.reserve(KEY, 900)
        with pytest.raises(RateLimited) as refused:
            b.reserve(KEY, 1)
        assert refused.value.kind == "tokens"
        big.settle(900)
        a.wait_settled()
        # Admissions at the same moment on both replicas: never more than 3 in progress.
        clock.now += 61
        wins: list[object] = []
        barrier = threading.Barrier(6)

        def admit(limits: SharedLimits) -> None:
            barrier.wait()
            try:
                wins.append(limits.reserve(KEY, 10))
            except RateLimited:
                wins.append(None)

        threads = [threading.Thread(target=admit, args=((a, b)[i % 2],)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(w is not None for w in wins) == 3
    finally:
        a.close()
        b.close()


def test_a_dead_replicas_places_free_themselves(replicas: list[Storage]) -> None:
    clock = Clock()
    dead, alive = (limiter(s, clock, concurrent_requests=2) for s in replicas)
    try:
        dead.reserve(KEY, 1)
        dead.reserve(KEY, 1)  # then the replica dies: no settle, no refresh
        with pytest.raises(RateLimited):
            alive.reserve(KEY, 1)
        clock.now += SLOT_TTL_S / 2
        clock.now += SLOT_TTL_S / 2 + 0.1
        mine = alive.reserve(KEY, 1)  # the dead replica's places expired
        # A live replica keeps its own places by refreshing them.
        clock.now += SLOT_TTL_S / 2
        assert alive.refresh() == 1
        clock.now += SLOT_TTL_S / 2 + 0.1
        alive.reserve(KEY, 1)
        with pytest.raises(RateLimited):
            alive.reserve(KEY, 1)  # `mine` still held: refreshed
        mine.settle(0)
    finally:
        alive.close()
        dead._executor.shutdown()


def test_the_async_calls_run_off_the_event_loop(replicas: list[Storage]) -> None:
    clock = Clock()
    limits = limiter(replicas[0], clock, requests_per_minute=1, concurrent_requests=1)
    threads: list[str] = []
    db = replicas[0].database("limits")
    original = db.run

    async def spy(call: object) -> object:
        def where() -> object:
            threads.append(threading.current_thread().name)
            return call()  # type: ignore[operator]

        return await original(where)

    db.run = spy  # type: ignore[method-assign]

    async def scenario() -> None:
        loop_thread = threading.current_thread().name
        await limits.count_request_async(KEY)
        with pytest.raises(RateLimited):
            await limits.count_request_async(KEY)
        r = await limits.reserve_task_async(KEY, "hello", 5)
        with pytest.raises(RateLimited):
            await limits.reserve_task_async(KEY, "hello", 5)
        r.settle(3)
        assert threads and loop_thread not in threads

    try:
        asyncio.run(scenario())
    finally:
        limits.close()


def test_a_replica_that_stops_frees_its_places(replicas: list[Storage]) -> None:
    clock = Clock()
    stopping, other = (limiter(s, clock, concurrent_requests=1) for s in replicas)
    try:
        running = stopping.reserve(KEY, 1)
        with pytest.raises(RateLimited):
            other.reserve(KEY, 1)
        stopping.close()  # frees this replica's places at once
        running.settle(1)  # a task ending after its node stopped: nothing to do, no error
        other.reserve(KEY, 1)
    finally:
        other.close()
