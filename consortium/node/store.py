"""Durable task storage for the A2A server: SQLite in WAL mode, behind a2a-sdk's TaskStore.

Tasks are stored as serialized protobuf with the columns ListTasks filters and sorts
on. A restarted node still answers GetTask and ListTasks for finished tasks; tasks
that were in flight when a node died are marked failed on the next start, and finished
tasks older than the retention period are deleted (`delete_expired`).

Every stored task can be served on both bindings. A task that could not be (a
non-finite number in a Struct, which protobuf's JSON form cannot spell; a Struct nested
so deep that protobuf's binary parser refuses to read it back; a status timestamp
outside the range of a Timestamp) is **sanitized, not refused**: the offending value
becomes null (a timestamp is cleared) and a warning names the task id. Refusing would
fail the task's whole lifecycle over one value of its metadata, and the client's input
is refused earlier anyway (`consortium.node.a2a.validation`), so what reaches the store is
the node's own output. Reads are robust too: a row that cannot be decoded is skipped
with a log line naming only its task id, and a decoded task is sanitized before it is
returned. `repair()`, run at start-up, rewrites the rows an older node stored
unsanitized and moves undecodable ones to the `tasks_quarantine` table, so that they
neither count in ListTasks nor log on every read.
"""

from __future__ import annotations

import binascii
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from a2a.server.context import ServerCallContext
from a2a.server.owner_resolver import OwnerResolver, resolve_user_scope
from a2a.server.tasks.task_store import TaskStore
from a2a.types import a2a_pb2
from a2a.utils.constants import DEFAULT_LIST_TASKS_PAGE_SIZE, MAX_LIST_TASKS_PAGE_SIZE
from a2a.utils.errors import InvalidParamsError
from a2a.utils.task import ListTasksCursor, decode_list_tasks_cursor, encode_list_tasks_cursor
from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.message import DecodeError

from consortium.node.a2a.validation import MAX_STRUCT_DEPTH
from consortium.sqlite import connect

log = logging.getLogger(__name__)

TERMINAL_STATES = (
    a2a_pb2.TASK_STATE_COMPLETED,
    a2a_pb2.TASK_STATE_FAILED,
    a2a_pb2.TASK_STATE_CANCELED,
    a2a_pb2.TASK_STATE_REJECTED,
)

# google.protobuf.Timestamp's valid range (0001-01-01 to 9999-12-31) and SQLite's
# INTEGER range, which ends in 2262 for nanoseconds since the epoch.
TIMESTAMP_MIN_S = -62_135_596_800
TIMESTAMP_MAX_S = 253_402_300_799
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
NS_PER_S = 1_000_000_000

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
CREATE TABLE IF NOT EXISTS tasks_quarantine (
    owner        TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    body         BLOB    NOT NULL,
    reason       TEXT    NOT NULL,
    at           REAL    NOT NULL,
    PRIMARY KEY (owner, id)
);
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
        """Stores `task` (a sanitized copy if it could not be served as it is)."""
        body = task.SerializeToString()
        if needs_sanitizing(task, body) or not _decodable(body):
            clean = a2a_pb2.Task()
            clean.CopyFrom(task)
            if sanitize_task(clean):
                log.warning("task %s: values with no JSON form stored as null", task.id)
                task, body = clean, clean.SerializeToString()
        has_ts = task.HasField("status") and task.status.HasField("timestamp")
        ts = _clamped_ns(task.status.timestamp) if has_ts else 0
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
                    body,
                ),
            )

    async def get(self, task_id: str, context: ServerCallContext) -> a2a_pb2.Task | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT body FROM tasks WHERE owner = ? AND id = ?", (self._owner(context), task_id)
            ).fetchone()
        if row is None:
            return None
        return _decode(row[0], task_id)

    async def delete(self, task_id: str, context: ServerCallContext) -> None:
        with self._tx() as c:
            c.execute(
                "DELETE FROM tasks WHERE owner = ? AND id = ?", (self._owner(context), task_id)
            )

    async def list(
        self, params: a2a_pb2.ListTasksRequest, context: ServerCallContext
    ) -> a2a_pb2.ListTasksResponse:
        if not 0 <= params.page_size <= MAX_LIST_TASKS_PAGE_SIZE:
            raise InvalidParamsError(
                message=f"pageSize must be between 1 and {MAX_LIST_TASKS_PAGE_SIZE}"
            )
        where = ["owner = ?"]
        args: list[object] = [self._owner(context)]
        if params.context_id:
            where.append("context_id = ?")
            args.append(params.context_id)
        if params.status:
            where.append("state = ?")
            args.append(int(params.status))
        if params.HasField("status_timestamp_after"):
            after = params.status_timestamp_after
            if not timestamp_valid(after):
                raise InvalidParamsError(
                    message="statusTimestampAfter is outside the range of a Timestamp"
                    " (years 1 to 9999, nanos 0 to 999999999)"
                )
            # Past 2262 (int64 nanoseconds) it is clamped: no task is stamped that late.
            where.append("has_ts = 1 AND ts_ns >= ?")
            args.append(_clamped_ns(after))
        filtered = " AND ".join(where)
        page_where = filtered
        page_args = list(args)
        if params.page_token:
            has_ts, ts, tid = _page_position(params.page_token)
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
        tasks = [t for t in (_decode(r[0], r[3]) for r in rows) if t is not None]
        return a2a_pb2.ListTasksResponse(
            tasks=tasks, next_page_token=next_token, total_size=total, page_size=page_size
        )

    def fail_unfinished(self, reason: str) -> int:
        """Marks every task not in a terminal state as failed (after a crash or shutdown)."""
        placeholders = ",".join("?" * len(TERMINAL_STATES))
        with self._lock:
            rows = self._conn.execute(
                f"SELECT owner, id, body FROM tasks WHERE state NOT IN ({placeholders})",
                [int(s) for s in TERMINAL_STATES],
            ).fetchall()
        failed = 0
        for owner, task_id, body in rows:
            task = _decode(body, task_id)
            if task is None:
                continue
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
            failed += 1
        if failed:
            log.warning("marked %d unfinished task(s) failed: %s", failed, reason)
        return failed

    def repair(self) -> int:
        """Rewrites, sanitized, the stored tasks that could not be served (stored by a node
        before sanitizing), and moves the rows that cannot be decoded at all to
        `tasks_quarantine`. Returns how many rows it changed. Run at start-up."""
        fixed: list[tuple[str, a2a_pb2.Task]] = []
        broken: list[tuple[str, str, bytes, str]] = []
        last = -1
        while True:  # in batches: the bodies of every task need not fit in memory at once
            with self._lock:
                rows = self._conn.execute(
                    "SELECT rowid, owner, id, body FROM tasks WHERE rowid > ?"
                    " ORDER BY rowid LIMIT 500",
                    (last,),
                ).fetchall()
            if not rows:
                break
            last = rows[-1][0]
            for _, owner, task_id, body in rows:
                try:
                    task = a2a_pb2.Task.FromString(body)
                except DecodeError as e:
                    broken.append((owner, task_id, body, f"undecodable: {e}"))
                    continue
                if needs_sanitizing(task, body) and sanitize_task(task):
                    fixed.append((owner, task))
        for owner, task in fixed:
            self.save_sync(task, owner)
            log.warning("repaired stored task %s: values with no JSON form now null", task.id)
        if broken:
            now = time.time()
            with self._tx() as c:
                for owner, task_id, body, reason in broken:
                    c.execute(
                        "INSERT OR REPLACE INTO tasks_quarantine (owner, id, body, reason, at)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (owner, task_id, body, reason, now),
                    )
                    c.execute("DELETE FROM tasks WHERE owner = ? AND id = ?", (owner, task_id))
            for _, task_id, _, _ in broken:
                log.warning("stored task %r cannot be decoded: moved to tasks_quarantine", task_id)
        return len(fixed) + len(broken)

    def delete_expired(self, retention_days: float, now: float | None = None) -> int:
        """Deletes the finished tasks (completed, failed, canceled, rejected) whose status
        timestamp is more than `retention_days` before `now` (default: the current time);
        0 keeps every task. Tasks still running or waiting for input are never deleted.
        Returns how many tasks it deleted."""
        if math.isnan(retention_days) or retention_days < 0:
            raise ValueError(f"retention_days must be >= 0, not {retention_days}")
        if retention_days == 0 or math.isinf(retention_days):
            return 0
        current = time.time() if now is None else now
        cutoff = int((current - retention_days * 86400.0) * NS_PER_S)
        cutoff = max(INT64_MIN, min(INT64_MAX, cutoff))
        placeholders = ",".join("?" * len(TERMINAL_STATES))
        with self._tx() as c:
            deleted = c.execute(
                f"DELETE FROM tasks WHERE state IN ({placeholders}) AND has_ts = 1 AND ts_ns < ?",
                [*(int(s) for s in TERMINAL_STATES), cutoff],
            ).rowcount
        return int(deleted)


def timestamp_valid(ts: timestamp_pb2.Timestamp) -> bool:
    """Whether `ts` is within google.protobuf.Timestamp's range (what its JSON form,
    ToNanoseconds and ToDatetime accept)."""
    return TIMESTAMP_MIN_S <= ts.seconds <= TIMESTAMP_MAX_S and 0 <= ts.nanos < NS_PER_S


def _clamped_ns(ts: timestamp_pb2.Timestamp) -> int:
    """Nanoseconds since the epoch, clamped to SQLite's INTEGER range."""
    return max(INT64_MIN, min(INT64_MAX, ts.seconds * NS_PER_S + ts.nanos))


def _page_position(page_token: str) -> tuple[bool, int, str]:
    """The (has timestamp, timestamp, id) a page token continues after; InvalidParamsError
    for a token this store did not issue."""
    try:
        cursor = decode_list_tasks_cursor(page_token)
    except (RecursionError, ValueError, binascii.Error):
        cursor = None
    if cursor is not None:
        has_ts, ts, tid = cursor.sort_key()
        try:
            tid.encode()
        except UnicodeEncodeError:  # a lone surrogate, which SQLite cannot bind
            cursor = None
        else:
            if INT64_MIN <= ts <= INT64_MAX:
                return has_ts, ts, tid
    raise InvalidParamsError(message="invalid page token")


def _decode(body: bytes, task_id: str) -> a2a_pb2.Task | None:
    """The stored task, sanitized; None (and a log line) if the row cannot be decoded."""
    try:
        task = a2a_pb2.Task.FromString(body)
    except DecodeError:
        log.error("stored task %r cannot be decoded; skipped", task_id)
        return None
    if needs_sanitizing(task, body) and sanitize_task(task):
        log.warning("stored task %s has values with no JSON form; served as null", task_id)
    return task


def needs_sanitizing(task: a2a_pb2.Task, body: bytes) -> bool:
    """A cheap test, on a decodable task and its serialized form, that is true for every
    task that has no JSON form (and rarely for others): sanitize_task decides."""
    if task.status.HasField("timestamp") and not timestamp_valid(task.status.timestamp):
        return True
    return _may_hold_non_finite(body)


def _decodable(body: bytes) -> bool:
    """Whether protobuf reads `body` back: it refuses messages nested over 100 deep."""
    try:
        a2a_pb2.Task.FromString(body)
    except DecodeError:
        return False
    return True


def _may_hold_non_finite(body: bytes) -> bool:
    """Whether the encoding may hold a NaN or an infinite double. Such a double (8 bytes,
    little-endian) ends in a byte 0x7F or 0xFF preceded by one of 0xF0..0xFF, which
    valid UTF-8 never contains and varints rarely do, so this scan at memchr speed spares
    a walk through every Struct of the task."""
    for marker in (0x7F, 0xFF):
        i = body.find(marker, 1)
        while i != -1:
            if body[i - 1] >= 0xF0:
                return True
            i = body.find(marker, i + 1)
    return False


def sanitize_task(task: a2a_pb2.Task) -> int:
    """Makes `task` servable in place: a non-finite number in a Struct becomes null, so
    does a Struct or list nested deeper than MAX_STRUCT_DEPTH, and a status timestamp out
    of range is cleared. Returns how many values it replaced."""
    changed = 0
    if task.status.HasField("timestamp") and not timestamp_valid(task.status.timestamp):
        task.status.ClearField("timestamp")
        changed += 1
    if task.HasField("metadata"):
        changed += _sanitize_struct(task.metadata, 1)
    messages = [*task.history]
    if task.status.HasField("message"):
        messages.append(task.status.message)
    for message in messages:
        if message.HasField("metadata"):
            changed += _sanitize_struct(message.metadata, 1)
        changed += _sanitize_parts(message.parts)
    for artifact in task.artifacts:
        if artifact.HasField("metadata"):
            changed += _sanitize_struct(artifact.metadata, 1)
        changed += _sanitize_parts(artifact.parts)
    return changed


def _sanitize_parts(parts: Iterable[a2a_pb2.Part]) -> int:
    changed = 0
    for part in parts:
        if part.HasField("metadata"):
            changed += _sanitize_struct(part.metadata, 1)
        if part.HasField("data"):
            changed += _sanitize_value(part.data, 0)
    return changed


def _sanitize_struct(struct: struct_pb2.Struct, depth: int) -> int:
    return sum(_sanitize_value(v, depth) for v in struct.fields.values())


# Recursion is bounded by MAX_STRUCT_DEPTH: deeper containers are replaced, not entered.
def _sanitize_value(value: struct_pb2.Value, depth: int) -> int:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        if math.isfinite(value.number_value):
            return 0
    elif kind in ("struct_value", "list_value"):
        if depth < MAX_STRUCT_DEPTH:
            if kind == "struct_value":
                return _sanitize_struct(value.struct_value, depth + 1)
            return sum(_sanitize_value(v, depth + 1) for v in value.list_value.values)
    else:
        return 0
    value.null_value = struct_pb2.NULL_VALUE
    return 1
