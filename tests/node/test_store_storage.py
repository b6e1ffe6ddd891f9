"""The task store on the storage layer, alike on SQLite and PostgreSQL: owner-scoped
reads, ListTasks' filters and pages, retention, repair and quarantine, tasks left
unfinished failed; an existing node.sqlite3 made before the migrations taken as it is;
strings PostgreSQL cannot hold (a NUL character) answered as "no such task"."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from a2a.auth.user import User
from a2a.server.context import ServerCallContext
from a2a.types import a2a_pb2
from a2a.utils.errors import InvalidParamsError
from a2a.utils.task import ListTasksCursor, encode_list_tasks_cursor
from sqlalchemy import select

from consortium.node.store import QUARANTINE, TASKS, NodeTaskStore
from consortium.storage import migrations
from consortium.storage.database import Database
from consortium.storage.storage import Storage
from consortium.storage.url import parse_location
from tests.conftest import PgDatabase
from tests.node.test_persistence import poisoned_task, task_at

DAY = 86400.0


class Named(User):
    def __init__(self, name: str) -> None:
        self._name = name

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def user_name(self) -> str:
        return self._name


def ctx(name: str) -> ServerCallContext:
    return ServerCallContext(user=Named(name))


@pytest.fixture(params=["sqlite", "postgresql"])
def tasks_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """The "tasks" store's Database: SQLite files in tmp_path, or a PostgreSQL database."""
    if request.param == "sqlite":
        storage = Storage(parse_location("", base_dir=tmp_path, data_dir=tmp_path))
    else:
        pg: PgDatabase = request.getfixturevalue("pg_database")
        storage = pg.storage()
    try:
        migrations.upgrade(storage, ["tasks"])
        yield storage.database("tasks")
    finally:
        storage.close()


async def test_tasks_are_kept_per_owner(tasks_db: Database) -> None:
    store = NodeTaskStore(tasks_db)
    alice, bob = ctx("alice"), ctx("bob")
    await store.save(task_at("t1", a2a_pb2.TASK_STATE_WORKING, 1000.0), alice)
    await store.save(task_at("t1", a2a_pb2.TASK_STATE_COMPLETED, 2000.0), bob)  # same id
    got = await store.get("t1", alice)
    assert got is not None and got.status.state == a2a_pb2.TASK_STATE_WORKING
    got = await store.get("t1", bob)
    assert got is not None and got.status.state == a2a_pb2.TASK_STATE_COMPLETED
    assert await store.get("t1", ctx("carol")) is None
    await store.delete("t1", ctx("carol"))  # not hers: nothing happens
    await store.delete("t1", bob)
    assert await store.get("t1", bob) is None
    assert await store.get("t1", alice) is not None
    # An update replaces the stored task.
    await store.save(task_at("t1", a2a_pb2.TASK_STATE_COMPLETED, 3000.0), alice)
    got = await store.get("t1", alice)
    assert got is not None and got.status.state == a2a_pb2.TASK_STATE_COMPLETED


async def test_list_tasks_filters_and_pages(tasks_db: Database) -> None:
    store = NodeTaskStore(tasks_db)
    alice = ctx("alice")
    for i in range(7):
        task = task_at(f"t{i}", a2a_pb2.TASK_STATE_COMPLETED, 1000.0 + i)
        task.context_id = "even" if i % 2 == 0 else "odd"
        await store.save(task, alice)
    await store.save(task_at("t-none", a2a_pb2.TASK_STATE_WORKING, None), alice)
    await store.save(task_at("other", a2a_pb2.TASK_STATE_COMPLETED, 5000.0), ctx("bob"))

    seen: list[str] = []
    token = ""
    while True:
        page = await store.list(a2a_pb2.ListTasksRequest(page_size=3, page_token=token), alice)
        assert page.total_size == 8 and page.page_size == 3
        seen += [t.id for t in page.tasks]
        token = page.next_page_token
        if not token:
            break
    # Newest status first; tasks with no timestamp last.
    assert seen == ["t6", "t5", "t4", "t3", "t2", "t1", "t0", "t-none"]

    odd = await store.list(a2a_pb2.ListTasksRequest(context_id="odd"), alice)
    assert [t.id for t in odd.tasks] == ["t5", "t3", "t1"] and odd.total_size == 3
    working = await store.list(a2a_pb2.ListTasksRequest(status=a2a_pb2.TASK_STATE_WORKING), alice)
    assert [t.id for t in working.tasks] == ["t-none"]
    after = a2a_pb2.ListTasksRequest()
    after.status_timestamp_after.FromNanoseconds(1004 * 10**9)
    assert [t.id for t in (await store.list(after, alice)).tasks] == ["t6", "t5", "t4"]

    with pytest.raises(InvalidParamsError, match="pageSize"):
        await store.list(a2a_pb2.ListTasksRequest(page_size=1000), alice)
    with pytest.raises(InvalidParamsError, match="invalid page token"):
        await store.list(a2a_pb2.ListTasksRequest(page_token="not a token"), alice)
    out_of_range = a2a_pb2.ListTasksRequest()
    out_of_range.status_timestamp_after.seconds = 10**15
    with pytest.raises(InvalidParamsError, match="outside the range"):
        await store.list(out_of_range, alice)


async def test_retention_repair_and_unfinished_tasks(tasks_db: Database) -> None:
    store = NodeTaskStore(tasks_db)
    alice = ctx("alice")
    now = 1_750_000_000.0
    await store.save(task_at("old", a2a_pb2.TASK_STATE_COMPLETED, now - 40 * DAY), alice)
    await store.save(task_at("recent", a2a_pb2.TASK_STATE_COMPLETED, now - DAY), alice)
    await store.save(task_at("running", a2a_pb2.TASK_STATE_WORKING, now - 40 * DAY), alice)
    assert store.delete_expired(30, now=now) == 1
    assert await store.get("old", alice) is None

    # A row an older node stored unsanitized, and one that cannot be decoded.
    poisoned = poisoned_task("poisoned")
    with tasks_db.begin() as conn:
        for task_id, body in (("poisoned", poisoned.SerializeToString()), ("garbage", b"\xff")):
            conn.execute(
                TASKS.insert().values(
                    owner="alice",
                    id=task_id,
                    context_id="c",
                    state=int(a2a_pb2.TASK_STATE_COMPLETED),
                    has_ts=0,
                    ts_ns=0,
                    body=body,
                )
            )
    assert (await store.list(a2a_pb2.ListTasksRequest(), alice)).total_size == 4
    assert store.repair() == 2
    assert store.repair() == 0
    with tasks_db.connect() as conn:
        assert conn.execute(select(QUARANTINE.c.id)).scalars().all() == ["garbage"]
    repaired = await store.get("poisoned", alice)
    assert repaired is not None and repaired.history[0].metadata["x"] is None

    assert store.fail_unfinished("the node stopped") == 1
    running = await store.get("running", alice)
    assert running is not None and running.status.state == a2a_pb2.TASK_STATE_FAILED
    assert running.status.message.parts[0].text == "the node stopped"
    assert store.fail_unfinished("again") == 0


def test_an_existing_node_sqlite3_is_taken_as_it_is(tmp_path: Path) -> None:
    """node.sqlite3 as a node made it before the migrations (the old DDL, no version
    table): migrated without loss, its tasks served."""
    old = sqlite3.connect(tmp_path / "node.sqlite3")
    old.executescript(
        """
        CREATE TABLE tasks (
            owner TEXT NOT NULL, id TEXT NOT NULL, context_id TEXT NOT NULL,
            state INTEGER NOT NULL, has_ts INTEGER NOT NULL, ts_ns INTEGER NOT NULL,
            body BLOB NOT NULL, PRIMARY KEY (owner, id));
        CREATE INDEX tasks_by_time ON tasks (owner, has_ts DESC, ts_ns DESC, id DESC);
        CREATE TABLE tasks_quarantine (
            owner TEXT NOT NULL, id TEXT NOT NULL, body BLOB NOT NULL, reason TEXT NOT NULL,
            at REAL NOT NULL, PRIMARY KEY (owner, id));
        """
    )
    task = task_at("kept", a2a_pb2.TASK_STATE_COMPLETED, 1_750_000_000.0)
    old.execute(
        "INSERT INTO tasks VALUES ('alice', 'kept', 'c', ?, 1, ?, ?)",
        (int(task.status.state), task.status.timestamp.ToNanoseconds(), task.SerializeToString()),
    )
    old.commit()
    old.close()
    storage = Storage(parse_location("", base_dir=tmp_path, data_dir=tmp_path))
    try:
        assert "tasks" in migrations.upgrade(storage)
        store = NodeTaskStore(storage.database("tasks"))
        page = store.list_sync(a2a_pb2.ListTasksRequest(), "alice")
        assert [t.id for t in page.tasks] == ["kept"]
        with storage.database("tasks").connect() as conn:
            assert conn.execute(select(TASKS.c.replica)).scalars().all() == [""]
    finally:
        storage.close()


async def test_strings_postgresql_cannot_hold_are_no_such_task(
    pg_database: PgDatabase,
) -> None:
    storage = pg_database.storage()
    try:
        migrations.upgrade(storage, ["tasks"])
        store = NodeTaskStore(storage.database("tasks"))
        alice = ctx("alice")
        await store.save(task_at("t1", a2a_pb2.TASK_STATE_COMPLETED, 1000.0), alice)
        assert await store.get("t\x001", alice) is None
        await store.delete("t\x001", alice)
        page = await store.list(a2a_pb2.ListTasksRequest(context_id="c\x00"), alice)
        assert list(page.tasks) == [] and page.total_size == 0
        token = encode_list_tasks_cursor(ListTasksCursor(timestamp_ns=1, task_id="a\x00"))
        with pytest.raises(InvalidParamsError, match="invalid page token"):
            await store.list(a2a_pb2.ListTasksRequest(page_token=token), alice)
        bad = task_at("t2", a2a_pb2.TASK_STATE_COMPLETED, 1000.0)
        bad.context_id = "c\x00"
        with pytest.raises(InvalidParamsError, match="NUL"):
            await store.save(bad, alice)
        assert await store.get("t1", ctx("al\x00ice")) is None
    finally:
        storage.close()
