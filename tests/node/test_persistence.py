"""Tasks live in SQLite: a restarted node answers GetTask/ListTasks for finished tasks and
marks the tasks that were in flight when it stopped as failed."""

from __future__ import annotations

from pathlib import Path

import grpc
from a2a.server.context import ServerCallContext
from a2a.types import a2a_pb2, a2a_pb2_grpc

from consortium.node.backends import backend_factory
from consortium.node.client import text_message
from consortium.node.server import Node
from consortium.node.store import SqliteTaskStore
from tests.conftest import make_config


async def test_finished_tasks_survive_a_restart(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    node = Node(cfg, backend_factory(cfg))
    await node.start()
    async with grpc.aio.insecure_channel(node.endpoints.grpc_target) as ch:  # type: ignore[union-attr]
        resp = await a2a_pb2_grpc.A2AServiceStub(ch).SendMessage(
            a2a_pb2.SendMessageRequest(message=text_message("remember me"))
        )
    await node.stop()

    again = Node(cfg, backend_factory(cfg))
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
    await store.save(working, ServerCallContext())
    store.close()

    node = Node(cfg, backend_factory(cfg))
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
    mode = store._conn.execute("PRAGMA journal_mode").fetchone()[0]
    store.close()
    reopened = SqliteTaskStore(path)
    assert mode == "wal"
    assert await reopened.get("t0", ctx) is not None
    assert await reopened.get("t1", ctx) is None
    page = await reopened.list(a2a_pb2.ListTasksRequest(), ctx)
    assert sorted(t.id for t in page.tasks) == ["t0", "t2"]
    reopened.close()
