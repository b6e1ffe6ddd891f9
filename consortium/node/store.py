"""Durable task storage for the A2A server: SQLite in WAL mode, behind a2a-sdk's TaskStore.

Tasks are stored as serialized protobuf with the columns ListTasks filters and sorts
on. A restarted node still answers GetTask and ListTasks for finished tasks; tasks
that were in flight when a node died are marked failed on the next start.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from a2a.server.context import ServerCallContext
from a2a.server.owner_resolver import OwnerResolver, resolve_user_scope
from a2a.server.tasks.task_store import TaskStore
from a2a.types import a2a_pb2
from a2a.utils.constants import DEFAULT_LIST_TASKS_PAGE_SIZE
from a2a.utils.errors import InvalidParamsError
from a2a.utils.task import ListTasksCursor, decode_list_tasks_cursor, encode_list_tasks_cursor

from consortium.sqlite import connect

log = logging.getLogger(__name__)

TERMINAL_STATES = (
    a2a_pb2.TASK_STATE_COMPLETED,
    a2a_pb2.TASK_STATE_FAILED,
    a2a_pb2.TASK_STATE_CANCELED,
    a2a_pb2.TASK_STATE_REJECTED,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    owner        TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    context_id   TEXT    NOT NULL,
    state        INTEGER NOT NULL,
    has_ts       INTEGER NOT NULL,
    ts_ns        INTEGER NOT NULL,
    body         BLOB    NOT NULL,
    PRIMARY KEY (owner, id)
);
CREATE INDEX IF NOT EXISTS tasks_by_time ON tasks (owner, has_ts DESC, ts_ns DESC, id DESC);
"""


class SqliteTaskStore(TaskStore):
    def __init__(self, path: Path, owner_resolver: OwnerResolver = resolve_user_scope) -> None:
        self._path = path
        self._conn = connect(path)
        self._lock = threading.Lock()
        self._owner = owner_resolver
        with self._lock:
            self._conn.executescript(_SCHEMA)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    async def save(self, task: a2a_pb2.Task, context: ServerCallContext) -> None:
        self.save_sync(task, self._owner(context))

    def save_sync(self, task: a2a_pb2.Task, owner: str) -> None:
        has_ts = task.HasField("status") and task.status.HasField("timestamp")
        ts = task.status.timestamp.ToNanoseconds() if has_ts else 0
        with self._tx() as c:
            c.execute(
                "INSERT INTO tasks (owner, id, context_id, state, has_ts, ts_ns, body)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (owner, id) DO UPDATE SET context_id=excluded.context_id,"
                " state=excluded.state, has_ts=excluded.has_ts, ts_ns=excluded.ts_ns,"
                " body=excluded.body",
                (
                    owner,
                    task.id,
                    task.context_id,
                    int(task.status.state),
                    int(has_ts),
                    ts,
                    task.SerializeToString(),
                ),
            )

    async def get(self, task_id: str, context: ServerCallContext) -> a2a_pb2.Task | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT body FROM tasks WHERE owner = ? AND id = ?", (self._owner(context), task_id)
            ).fetchone()
        if row is None:
            return None
        task: a2a_pb2.Task = a2a_pb2.Task.FromString(row[0])
        return task

    async def delete(self, task_id: str, context: ServerCallContext) -> None:
        with self._tx() as c:
            c.execute(
                "DELETE FROM tasks WHERE owner = ? AND id = ?", (self._owner(context), task_id)
            )

    async def list(
        self, params: a2a_pb2.ListTasksRequest, context: ServerCallContext
    ) -> a2a_pb2.ListTasksResponse:
        where = ["owner = ?"]
        args: list[object] = [self._owner(context)]
        if params.context_id:
            where.append("context_id = ?")
            args.append(params.context_id)
        if params.status:
            where.append("state = ?")
            args.append(int(params.status))
        if params.HasField("status_timestamp_after"):
            where.append("has_ts = 1 AND ts_ns >= ?")
            args.append(params.status_timestamp_after.ToNanoseconds())
        filtered = " AND ".join(where)
        page_where = filtered
        page_args = list(args)
        if params.page_token:
            cursor = decode_list_tasks_cursor(params.page_token)
            if cursor is None:
                raise InvalidParamsError(message="invalid page token")
            has_ts, ts, tid = cursor.sort_key()
            page_where += " AND (has_ts, ts_ns, id) < (?, ?, ?)"
            page_args += [int(has_ts), ts, tid]
        page_size = params.page_size or DEFAULT_LIST_TASKS_PAGE_SIZE
        with self._lock:
            total = self._conn.execute(
                f"SELECT COUNT(*) FROM tasks WHERE {filtered}", args
            ).fetchone()[0]
            rows = self._conn.execute(
                f"SELECT body, has_ts, ts_ns, id FROM tasks WHERE {page_where}"
                " ORDER BY has_ts DESC, ts_ns DESC, id DESC LIMIT ?",
                [*page_args, page_size + 1],
            ).fetchall()
        more = len(rows) > page_size
        rows = rows[:page_size]
        next_token = ""
        if more and rows:
            _, has_ts, ts, tid = rows[-1]
            next_token = encode_list_tasks_cursor(
                ListTasksCursor(timestamp_ns=ts if has_ts else None, task_id=tid)
            )
        return a2a_pb2.ListTasksResponse(
            tasks=[a2a_pb2.Task.FromString(r[0]) for r in rows],
            next_page_token=next_token,
            total_size=total,
            page_size=page_size,
        )

    def fail_unfinished(self, reason: str) -> int:
        """Marks every task not in a terminal state as failed (after a crash or shutdown)."""
        placeholders = ",".join("?" * len(TERMINAL_STATES))
        with self._lock:
            rows = self._conn.execute(
                f"SELECT owner, body FROM tasks WHERE state NOT IN ({placeholders})",
                [int(s) for s in TERMINAL_STATES],
            ).fetchall()
        for owner, body in rows:
            task = a2a_pb2.Task.FromString(body)
            task.status.state = a2a_pb2.TASK_STATE_FAILED
            task.status.timestamp.GetCurrentTime()
            task.status.message.CopyFrom(
                a2a_pb2.Message(
                    message_id=f"{task.id}-failed",
                    role=a2a_pb2.ROLE_AGENT,
                    parts=[a2a_pb2.Part(text=reason)],
                    task_id=task.id,
                    context_id=task.context_id,
                )
            )
            self.save_sync(task, owner)
        if rows:
            log.warning("marked %d unfinished task(s) failed: %s", len(rows), reason)
        return len(rows)
