"""Tasks across the replicas of one organization's node on one PostgreSQL database (two
or three `Storage` objects on it, each a replica's view): a task is its owner's through
every replica and no one else's; a task that ended stays ended whichever replica writes
later; a replica whose heartbeat stops has its unfinished tasks failed by one survivor
within the bound, and no one else's; a replica that restarts fails no other's tasks; a
replica that reconnects after an outage declares no one dead before it has been
beating for the bound itself."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from a2a.types import a2a_pb2

from consortium.errors import ConfigError
from consortium.node.replicas import DEAD_REASON, Replicas, new_replica_id
from consortium.node.store import NodeTaskStore
from consortium.storage import migrations
from consortium.storage.storage import Storage
from tests.conftest import PgDatabase, make_config
from tests.node.test_persistence import task_at
from tests.node.test_store_storage import ctx

FAILOVER_S = 1.0
HEARTBEAT_S = 0.2


@pytest.fixture
def storages(pg_database: PgDatabase) -> Iterator[list[Storage]]:
    """Three replicas' views of one database, migrated."""
    views = [pg_database.storage(pool_timeout_s=2.0, connect_timeout_s=2.0) for _ in range(3)]
    migrations.upgrade(views[0])
    yield views
    for view in views:
        view.close()


def store_of(storage: Storage, replica: str = "") -> NodeTaskStore:
    return NodeTaskStore(storage.database("tasks"), replica=replica or new_replica_id())


def state_of(store: NodeTaskStore, task_id: str, owner: str = "alice") -> int:
    page = store.list_sync(a2a_pb2.ListTasksRequest(page_size=100), owner)
    [task] = [t for t in page.tasks if t.id == task_id]
    return int(task.status.state)


def working(task_id: str) -> a2a_pb2.Task:
    return task_at(task_id, a2a_pb2.TASK_STATE_WORKING, time.time())


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# -- owner scoping ----------------------------------------------------------------------


async def test_a_task_is_its_owners_through_every_replica_and_no_one_elses(
    storages: list[Storage],
) -> None:
    a, b = store_of(storages[0]), store_of(storages[1])
    alice, bob = ctx("alice"), ctx("bob")
    await a.save(working("t1"), alice)

    got = await b.get("t1", alice)
    assert got is not None and got.status.state == a2a_pb2.TASK_STATE_WORKING
    listed = await b.list(a2a_pb2.ListTasksRequest(), alice)
    assert [t.id for t in listed.tasks] == ["t1"] and listed.total_size == 1
    assert await b.get("t1", bob) is None
    assert (await b.list(a2a_pb2.ListTasksRequest(), bob)).total_size == 0
    await b.delete("t1", bob)  # not bob's: nothing happens
    assert await a.get("t1", alice) is not None

    # Canceled through B (what the request handler stores), while A still runs it: A's
    # later saves, a step of its work or its own end, do not revive it.
    canceled = task_at("t1", a2a_pb2.TASK_STATE_CANCELED, time.time())
    await b.save(canceled, alice)
    await a.save(working("t1"), alice)
    await a.save(task_at("t1", a2a_pb2.TASK_STATE_COMPLETED, time.time()), alice)
    got = await a.get("t1", alice)
    assert got is not None and got.status.state == a2a_pb2.TASK_STATE_CANCELED
    # Saving the same final state again (an artifact added with it) is taken.
    again = task_at("t1", a2a_pb2.TASK_STATE_CANCELED, time.time())
    again.artifacts.add(artifact_id="late")
    await b.save(again, alice)
    got = await a.get("t1", alice)
    assert got is not None and [x.artifact_id for x in got.artifacts] == ["late"]
    await b.delete("t1", alice)
    assert await a.get("t1", alice) is None


def test_stopping_fails_only_the_replicas_own_tasks(storages: list[Storage]) -> None:
    a, b = store_of(storages[0]), store_of(storages[1])
    a.save_sync(working("of-a"), "alice")
    b.save_sync(working("of-b"), "alice")
    # A row from before replicas were recorded (replica ''): no live replica runs it.
    store_of(storages[2], replica=" ").save_sync(working("older"), "alice")
    with storages[2].database("tasks").begin() as conn:
        from consortium.node.store import TASKS

        conn.execute(TASKS.update().where(TASKS.c.id == "older").values(replica=""))
    assert a.fail_unfinished("A stopped") == 2  # its own, and the orphan
    assert state_of(b, "of-a") == a2a_pb2.TASK_STATE_FAILED
    assert state_of(b, "older") == a2a_pb2.TASK_STATE_FAILED
    assert state_of(a, "of-b") == a2a_pb2.TASK_STATE_WORKING


# -- failover ---------------------------------------------------------------------------


def replica(storage: Storage, store: NodeTaskStore, **kwargs: object) -> Replicas:
    return Replicas(
        storage.database("replicas"),
        store,
        replica=store.replica,
        org="acme",
        failover_after_s=FAILOVER_S,
        **kwargs,  # type: ignore[arg-type]
    )


async def test_a_silent_replica_has_its_tasks_failed_by_a_survivor(
    storages: list[Storage],
) -> None:
    store_a, store_b = store_of(storages[0]), store_of(storages[1])
    ra, rb = replica(storages[0], store_a), replica(storages[1], store_b)
    ra.beat()
    rb.beat()
    assert {r.replica for r in rb.live()} == {ra.replica, rb.replica}
    store_a.save_sync(working("a-1"), "alice")
    store_a.save_sync(working("a-2"), "bob")
    store_a.save_sync(task_at("a-done", a2a_pb2.TASK_STATE_COMPLETED, time.time()), "alice")
    store_b.save_sync(working("b-1"), "alice")

    survivor = asyncio.create_task(rb.run(HEARTBEAT_S))  # A beats no more: "killed"
    try:
        failed = await asyncio.to_thread(
            wait_for, lambda: state_of(store_b, "a-1") == a2a_pb2.TASK_STATE_FAILED
        )
        assert failed, "the survivor did not fail the dead replica's task"
        assert state_of(store_b, "a-2", "bob") == a2a_pb2.TASK_STATE_FAILED
        task = await store_b.get("a-1", ctx("alice"))
        assert task is not None and task.status.message.parts[0].text == DEAD_REASON
        assert state_of(store_b, "a-done") == a2a_pb2.TASK_STATE_COMPLETED
        assert state_of(store_b, "b-1") == a2a_pb2.TASK_STATE_WORKING  # its own: untouched
        assert rb.declared_dead == 1
        assert [r.replica for r in rb.live()] == [rb.replica]

        # A was only paused: it learns it was declared dead and registers again; its
        # failed tasks stay failed whatever it saves.
        ra.beat()
        assert ra.reregistered == 1
        store_a.save_sync(working("a-1"), "alice")
        assert state_of(store_b, "a-1") == a2a_pb2.TASK_STATE_FAILED
    finally:
        survivor.cancel()
        with pytest.raises(asyncio.CancelledError):
            await survivor


def test_one_survivor_declares_each_dead_replica(storages: list[Storage]) -> None:
    stores = [store_of(s) for s in storages]
    dead, *survivors = [
        replica(s, store, clock=lambda: 1e9) for s, store in zip(storages, stores, strict=True)
    ]
    for r in (dead, *survivors):
        r.beat()
    stores[0].save_sync(working("of-dead"), "alice")
    survivors[0]._healthy_since = survivors[1]._healthy_since = 0.0  # beating for long
    for r in survivors:
        r.beat()

    def dead_is_stale() -> bool:
        for r in survivors:
            r.beat()
        return dead.replica not in {x.replica for x in survivors[0].live()}

    assert wait_for(dead_is_stale)
    # Both survivors sweep at the same moment, 1 declaration between them.
    barrier = threading.Barrier(2)
    found: list[list[str]] = []

    def sweep(r: Replicas) -> None:
        barrier.wait()
        found.append(r.sweep())

    threads = [threading.Thread(target=sweep, args=(r,)) for r in survivors]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(found) == [[], [dead.replica]]
    assert state_of(stores[1], "of-dead") == a2a_pb2.TASK_STATE_FAILED


def test_a_restarted_replica_fails_no_other_replicas_tasks(storages: list[Storage]) -> None:
    store_a, store_b = store_of(storages[0]), store_of(storages[1])
    ra, rb = replica(storages[0], store_a), replica(storages[1], store_b)
    ra.beat()
    rb.beat()
    store_a.save_sync(working("a-1"), "alice")
    store_b.save_sync(working("b-old"), "alice")

    # B restarts (the same machine, a new process): a new id, what the node does at start.
    restarted = store_of(storages[2])
    restarted.repair()
    assert restarted.fail_unfinished("the node stopped before the task finished") == 0
    rb2 = replica(storages[2], restarted)
    rb2.beat()
    assert rb2.sweep() == []  # not beating for the bound yet: declares no one dead
    assert state_of(restarted, "a-1") == a2a_pb2.TASK_STATE_WORKING
    # Its previous process's task is failed once that one is declared dead (by anyone).
    rb2._healthy_since = 0.0

    def b_old_declared() -> bool:
        ra.beat()
        rb2.beat()
        rb2.sweep()
        return state_of(restarted, "b-old") == a2a_pb2.TASK_STATE_FAILED

    assert wait_for(b_old_declared)
    assert state_of(restarted, "a-1") == a2a_pb2.TASK_STATE_WORKING


def test_a_replica_back_from_an_outage_waits_before_declaring_others_dead(
    storages: list[Storage],
) -> None:
    now = [1000.0]
    store_a, store_b = store_of(storages[0]), store_of(storages[1])
    ra = replica(storages[0], store_a)
    rb = replica(storages[1], store_b, clock=lambda: now[0])
    ra.beat()
    rb.beat()
    store_a.save_sync(working("a-1"), "alice")

    def stale() -> bool:
        rb.beat()
        return ra.replica not in {x.replica for x in rb.live()}

    assert wait_for(stale)  # A silent for the bound, as every replica is after an outage
    assert rb.sweep() == []  # B's clock: it has been beating for no time yet
    now[0] += FAILOVER_S
    assert rb.sweep() == [ra.replica]
    assert state_of(store_b, "a-1") == a2a_pb2.TASK_STATE_FAILED


# -- bad input --------------------------------------------------------------------------


def test_replicas_are_for_postgresql_only(tmp_path: Path) -> None:
    from consortium.storage.url import parse_location

    storage = Storage(parse_location("", base_dir=tmp_path, data_dir=tmp_path))
    try:
        migrations.upgrade(storage)
        with pytest.raises(ValueError, match="store 'replicas' is kept on PostgreSQL only"):
            storage.database("replicas")
        store = NodeTaskStore(storage.database("tasks"))
        with pytest.raises(ValueError, match="PostgreSQL only"):
            Replicas(storage.database("tasks"), store, replica="r", org="acme", failover_after_s=10)
    finally:
        storage.close()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"heartbeat_s": 5, "failover_after_s": 10}, "must exceed two heartbeats"),
        ({"heartbeat_s": 0}, "heartbeat_s"),
        ({"failover_after_s": -1}, "failover_after_s"),
    ],
)
def test_heartbeat_settings_that_would_declare_live_replicas_dead_are_refused(
    tmp_path: Path, settings: dict[str, float], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        make_config(tmp_path, storage=settings)


async def test_after_a_database_outage_no_replica_declares_the_others_dead(
    pg_cluster: Any, storages: list[Storage]
) -> None:
    """Every heartbeat stops while PostgreSQL is down, longer than the bound: when it is
    back, the replicas beat again and none is declared dead."""
    store_a, store_b = store_of(storages[0]), store_of(storages[1])
    ra, rb = replica(storages[0], store_a), replica(storages[1], store_b)
    store_a.save_sync(working("a-1"), "alice")
    store_b.save_sync(working("b-1"), "alice")
    loops = [asyncio.create_task(r.run(HEARTBEAT_S)) for r in (ra, rb)]
    try:
        assert await asyncio.to_thread(wait_for, lambda: ra.beats > 0 and rb.beats > 0)
        await asyncio.to_thread(pg_cluster.stop)
        try:
            down = time.monotonic()
            # Both saw the outage, and it lasted longer than the bound.
            assert await asyncio.to_thread(
                wait_for,
                lambda: (
                    ra._healthy_since is None
                    and rb._healthy_since is None
                    and time.monotonic() - down > 2 * FAILOVER_S
                ),
            )
        finally:
            await asyncio.to_thread(pg_cluster.start)
        beats = ra.beats, rb.beats
        # Back: both beat for longer than the bound again (so each has swept since).
        assert await asyncio.to_thread(
            wait_for,
            lambda: all(
                r._healthy_since is not None
                and time.monotonic() - r._healthy_since > 2 * FAILOVER_S
                and r.beats > b + 2
                for r, b in zip((ra, rb), beats, strict=True)
            ),
        )
        assert ra.declared_dead == rb.declared_dead == 0
        assert ra.reregistered == rb.reregistered == 0
        assert state_of(store_a, "a-1") == a2a_pb2.TASK_STATE_WORKING
        assert state_of(store_a, "b-1") == a2a_pb2.TASK_STATE_WORKING
    finally:
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
