"""Tasks live in SQLite: a restarted node answers GetTask/ListTasks for finished tasks,
marks the tasks that were in flight when it stopped as failed, deletes finished tasks
past their retention, and keeps serving its tasks when some stored rows are poisoned
(values with no JSON form, rows it cannot decode)."""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from a2a.server.context import ServerCallContext
from a2a.types import a2a_pb2, a2a_pb2_grpc
from google.protobuf.json_format import MessageToDict

from consortium.llm.backends import backend_factory
from consortium.node.app import Node
from consortium.node.auth import ANONYMOUS
from consortium.node.client import text_message
from consortium.node.store import SqliteTaskStore
from tests.conftest import make_config


async def test_finished_tasks_survive_a_restart(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    node = Node(cfg, backend_factory(cfg.model, cfg.base_dir))
    await node.start()
    async with grpc.aio.insecure_channel(node.endpoints.grpc_target) as ch:  # type: ignore[union-attr]
        resp = await a2a_pb2_grpc.A2AServiceStub(ch).SendMessage(
            a2a_pb2.SendMessageRequest(message=text_message("remember me"))
        )
    await node.stop()

    again = Node(cfg, backend_factory(cfg.model, cfg.base_dir))
    await again.start()
    try:
        async with grpc.aio.insecure_channel(again.endpoints.grpc_target) as ch:  # type: ignore[union-attr]
            s = a2a_pb2_grpc.A2AServiceStub(ch)
            got = await s.GetTask(a2a_pb2.GetTaskRequest(id=resp.task.id))
            listed = await s.ListTasks(a2a_pb2.ListTasksRequest())
    finally:
        await again.stop()
    assert got.status.state == a2a_pb2.TASK_STATE_COMPLETED
    assert "".join(p.text for p in got.artifacts[0].parts) == "remember me"
    assert [t.id for t in listed.tasks] == [resp.task.id]


async def test_tasks_in_flight_at_a_crash_are_failed_on_start(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    # What a node that died mid-generation leaves behind.
    store = SqliteTaskStore(cfg.database_path)
    working = a2a_pb2.Task(
        id="t-crashed", context_id="c1", status=a2a_pb2.TaskStatus(state=a2a_pb2.TASK_STATE_WORKING)
    )
    store.save_sync(working, ANONYMOUS.owner)  # the tests' callers are anonymous on loopback
    store.close()

    node = Node(cfg, backend_factory(cfg.model, cfg.base_dir))
    await node.start()
    try:
        async with grpc.aio.insecure_channel(node.endpoints.grpc_target) as ch:  # type: ignore[union-attr]
            got = await a2a_pb2_grpc.A2AServiceStub(ch).GetTask(
                a2a_pb2.GetTaskRequest(id="t-crashed")
            )
    finally:
        await node.stop()
    assert got.status.state == a2a_pb2.TASK_STATE_FAILED
    assert "stopped before the task finished" in got.status.message.parts[0].text


async def test_store_uses_wal_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    store = SqliteTaskStore(path)
    ctx = ServerCallContext()
    for i in range(3):
        await store.save(a2a_pb2.Task(id=f"t{i}", context_id="c"), ctx)
    await store.delete("t1", ctx)
    store.close()
    conn = sqlite3.connect(path)
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    conn.close()
    reopened = SqliteTaskStore(path)
    assert mode == "wal"
    assert await reopened.get("t0", ctx) is not None
    assert await reopened.get("t1", ctx) is None
    page = await reopened.list(a2a_pb2.ListTasksRequest(), ctx)
    assert sorted(t.id for t in page.tasks) == ["t0", "t2"]
    reopened.close()


# --- poisoned rows ---------------------------------------------------------------------


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def poisoned_task(task_id: str) -> a2a_pb2.Task:
    """What an older node stored from `{"metadata": {"x": Infinity}}` over JSON-RPC."""
    message = text_message("poison")
    message.metadata["x"] = math.inf
    message.metadata.update({"ok": "kept", "list": [1.5, 2]})
    message.metadata["list"][0] = math.nan
    task = a2a_pb2.Task(
        id=task_id,
        context_id="c-poison",
        status=a2a_pb2.TaskStatus(state=a2a_pb2.TASK_STATE_COMPLETED),
    )
    task.status.timestamp.GetCurrentTime()
    task.history.append(message)
    return task


def too_deep_task(task_id: str) -> a2a_pb2.Task:
    """A task protobuf serializes but refuses to parse back (nested over 100 levels)."""
    task = a2a_pb2.Task(id=task_id, context_id="c-deep")
    task.status.state = a2a_pb2.TASK_STATE_COMPLETED
    task.status.timestamp.GetCurrentTime()
    task.history.add().CopyFrom(text_message("deep", nested(60)))
    return task


def insert_raw(db: Path, owner: str, task: a2a_pb2.Task, body: bytes | None = None) -> None:
    """Writes a row as an older node did: no sanitizing, whatever the body."""
    ts = task.status.timestamp.seconds * 1_000_000_000 + task.status.timestamp.nanos
    ts = max(-(2**63), min(2**63 - 1, ts))
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(
            "INSERT INTO tasks (owner, id, context_id, state, has_ts, ts_ns, body)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                owner,
                task.id,
                task.context_id,
                int(task.status.state),
                int(task.status.HasField("timestamp")),
                ts,
                task.SerializeToString() if body is None else body,
            ),
        )
    conn.close()


async def jsonrpc(node: Node, method: str, params: dict[str, Any]) -> dict[str, Any]:
    assert node.endpoints
    async with httpx.AsyncClient() as http:
        r = await http.post(
            node.endpoints.http_url + "/",
            json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
            headers={"A2A-Version": "1.0"},
        )
    answer: dict[str, Any] = r.json()
    return answer


async def test_poisoned_rows_do_not_break_reads_after_a_restart(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    node = Node(cfg, backend_factory(cfg.model, cfg.base_dir))
    await node.start()
    try:
        async with grpc.aio.insecure_channel(node.endpoints.grpc_target) as ch:  # type: ignore[union-attr]
            s = a2a_pb2_grpc.A2AServiceStub(ch)
            good = [
                (await s.SendMessage(a2a_pb2.SendMessageRequest(message=text_message(t)))).task.id
                for t in ("first", "second", "third")
            ]
    finally:
        await node.stop()
    owner = ANONYMOUS.owner
    insert_raw(cfg.database_path, owner, poisoned_task("t-poisoned"))
    insert_raw(cfg.database_path, owner, too_deep_task("t-deep"))
    garbage = a2a_pb2.Task(id="t-garbage", context_id="c")
    insert_raw(cfg.database_path, owner, garbage, body=b"\xff\xff\xff garbage")

    again = Node(cfg, backend_factory(cfg.model, cfg.base_dir))
    await again.start()
    try:
        async with grpc.aio.insecure_channel(again.endpoints.grpc_target) as ch:  # type: ignore[union-attr]
            s = a2a_pb2_grpc.A2AServiceStub(ch)
            seen: list[str] = []
            token = ""
            while True:
                page = await s.ListTasks(
                    a2a_pb2.ListTasksRequest(page_size=2, page_token=token, history_length=5)
                )
                seen += [t.id for t in page.tasks]
                token = page.next_page_token
                if not token:
                    break
            for task_id in good:
                got = await s.GetTask(a2a_pb2.GetTaskRequest(id=task_id))
                assert got.status.state == a2a_pb2.TASK_STATE_COMPLETED
            for gone in ("t-deep", "t-garbage"):
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await s.GetTask(a2a_pb2.GetTaskRequest(id=gone))
                assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert sorted(seen) == sorted([*good, "t-poisoned"])

        listed = await jsonrpc(again, "ListTasks", {"pageSize": 100})
        assert sorted(t["id"] for t in listed["result"]["tasks"]) == sorted(seen), listed
        for task_id in good:
            got_json = await jsonrpc(again, "GetTask", {"id": task_id})
            assert got_json["result"]["status"]["state"] == "TASK_STATE_COMPLETED", got_json
        poisoned = (await jsonrpc(again, "GetTask", {"id": "t-poisoned"}))["result"]
        metadata = poisoned["history"][0]["metadata"]
        assert metadata == {"x": None, "ok": "kept", "list": [None, 2]}
        missing = await jsonrpc(again, "GetTask", {"id": "t-garbage"})
        assert missing["error"]["code"] == -32001
    finally:
        await again.stop()
    conn = sqlite3.connect(cfg.database_path)
    quarantined = conn.execute("SELECT id FROM tasks_quarantine ORDER BY id").fetchall()
    conn.close()
    assert quarantined == [("t-deep",), ("t-garbage",)]


async def test_reads_skip_undecodable_rows_and_sanitize_the_rest(tmp_path: Path) -> None:
    # Without repair(): what a node serves from rows written while it runs.
    db = tmp_path / "db.sqlite3"
    store = SqliteTaskStore(db)
    ctx = ServerCallContext()
    owner = ctx.user.user_name
    await store.save(a2a_pb2.Task(id="t-good", context_id="c"), ctx)
    insert_raw(db, owner, poisoned_task("t-poisoned"))
    insert_raw(db, owner, too_deep_task("t-deep"))
    insert_raw(db, owner, a2a_pb2.Task(id="t-garbage"), body=b"\x0a\xff")
    bad_time = a2a_pb2.Task(id="t-time", context_id="c")
    bad_time.status.timestamp.seconds = 10**15
    insert_raw(db, owner, bad_time, body=bad_time.SerializeToString())

    assert await store.get("t-deep", ctx) is None
    assert await store.get("t-garbage", ctx) is None
    poisoned = await store.get("t-poisoned", ctx)
    assert poisoned is not None
    assert MessageToDict(poisoned)["history"][0]["metadata"]["x"] is None
    page = await store.list(a2a_pb2.ListTasksRequest(), ctx)
    assert sorted(t.id for t in page.tasks) == ["t-good", "t-poisoned", "t-time"]
    for task in page.tasks:
        MessageToDict(task)  # every task listed has a JSON form
    assert store.repair() == 4  # two sanitized, two quarantined
    assert store.repair() == 0
    page = await store.list(a2a_pb2.ListTasksRequest(), ctx)
    assert page.total_size == 3
    store.close()


async def test_save_stores_a_sanitized_copy(tmp_path: Path) -> None:
    store = SqliteTaskStore(tmp_path / "db.sqlite3")
    ctx = ServerCallContext()
    task = poisoned_task("t1")
    artifact = task.artifacts.add(artifact_id="a1")
    artifact.parts.add().data.number_value = -math.inf
    artifact.metadata.update(nested(40))
    task.history[0].parts.add().data.struct_value.update(nested(70))
    original = task.SerializeToString()
    await store.save(task, ctx)
    assert task.SerializeToString() == original  # the caller's task is left alone
    stored = await store.get("t1", ctx)
    assert stored is not None
    as_json = MessageToDict(stored)
    assert as_json["history"][0]["metadata"]["x"] is None
    assert as_json["artifacts"][0]["parts"][0]["data"] is None
    conn = sqlite3.connect(tmp_path / "db.sqlite3")
    raw = conn.execute("SELECT body FROM tasks WHERE id = 't1'").fetchone()[0]
    conn.close()
    a2a_pb2.Task.FromString(raw)  # decodable: the over-deep Structs were cut
    store.close()


# --- retention -------------------------------------------------------------------------

DAY = 86400.0


def task_at(task_id: str, state: int, at: float | None) -> a2a_pb2.Task:
    task = a2a_pb2.Task(id=task_id, context_id="c", status=a2a_pb2.TaskStatus(state=state))
    if at is not None:
        task.status.timestamp.FromNanoseconds(int(at * 1e9))
    return task


async def test_delete_expired_removes_only_old_finished_tasks(tmp_path: Path) -> None:
    store = SqliteTaskStore(tmp_path / "db.sqlite3")
    ctx = ServerCallContext()
    now = 1_750_000_000.0
    tasks = {
        "done-old": (a2a_pb2.TASK_STATE_COMPLETED, now - 40 * DAY),
        "failed-old": (a2a_pb2.TASK_STATE_FAILED, now - 30 * DAY - 1),
        "canceled-old": (a2a_pb2.TASK_STATE_CANCELED, now - 365 * DAY),
        "rejected-old": (a2a_pb2.TASK_STATE_REJECTED, now - 31 * DAY),
        "done-recent": (a2a_pb2.TASK_STATE_COMPLETED, now - 29 * DAY),
        "done-just-inside": (a2a_pb2.TASK_STATE_COMPLETED, now - 30 * DAY + 1),
        "working-old": (a2a_pb2.TASK_STATE_WORKING, now - 100 * DAY),
        "input-old": (a2a_pb2.TASK_STATE_INPUT_REQUIRED, now - 100 * DAY),
        "done-no-time": (a2a_pb2.TASK_STATE_COMPLETED, None),
    }
    for task_id, (state, at) in tasks.items():
        await store.save(task_at(task_id, state, at), ctx)

    assert store.delete_expired(0, now=now) == 0  # 0: keep forever
    assert store.delete_expired(30, now=now) == 4
    left = {t.id for t in (await store.list(a2a_pb2.ListTasksRequest(), ctx)).tasks}
    assert left == {"done-recent", "done-just-inside", "working-old", "input-old", "done-no-time"}
    assert store.delete_expired(30, now=now) == 0
    assert store.delete_expired(0.5, now=now) == 2  # fractions of a day
    assert store.delete_expired(36500, now=now + 1e12) == 0  # far future: no overflow
    with pytest.raises(ValueError):
        store.delete_expired(-1, now=now)
    store.close()


async def test_node_deletes_expired_tasks_at_start(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, server={"task_retention_days": 30})
    store = SqliteTaskStore(cfg.database_path)
    owner = ANONYMOUS.owner
    store.save_sync(task_at("ancient", a2a_pb2.TASK_STATE_COMPLETED, 946_684_800.0), owner)
    store.save_sync(task_at("fresh", a2a_pb2.TASK_STATE_COMPLETED, time.time()), owner)
    store.close()
    node = Node(cfg, backend_factory(cfg.model, cfg.base_dir))
    await node.start()
    try:
        async with grpc.aio.insecure_channel(node.endpoints.grpc_target) as ch:  # type: ignore[union-attr]
            s = a2a_pb2_grpc.A2AServiceStub(ch)
            deadline = time.monotonic() + 10.0
            while True:  # the start-up sweep may run in the background
                listed = await s.ListTasks(a2a_pb2.ListTasksRequest())
                if len(listed.tasks) < 2 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
    finally:
        await node.stop()
    assert [t.id for t in listed.tasks] == ["fresh"]
