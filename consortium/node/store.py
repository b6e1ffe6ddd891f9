"""Durable task storage for the A2A server, behind a2a-sdk's TaskStore, on the node's
storage layer (consortium/storage, store "tasks"): the SQLite file node.sqlite3 in the
data directory by default, or the PostgreSQL database every replica of the
organization's node shares (schema consortium_tasks).

Tasks are stored as serialized protobuf with the columns ListTasks filters and sorts
on, keyed by (owner, id): whichever replica a call reaches, it reads, lists, cancels and
deletes only the caller's own tasks. A restarted node still answers GetTask and
ListTasks for finished tasks; tasks that were in flight when a node died are marked
failed, and finished tasks older than the retention period are deleted
(`delete_expired`).

Several replicas on PostgreSQL: each row records the replica running the task
(`replica`, Node.replica_id). `fail_unfinished`, at a replica's start and stop, fails
only that replica's own unfinished tasks (on SQLite, one process, every unfinished
task, as always); a replica that dies without stopping has its tasks failed by a
survivor (`fail_replicas`, from consortium/node/replicas.py). A task that ended stays
ended: a save can move a terminal task only to the same state, in the one upsert
statement, so a task canceled through replica B, or failed when its replica was declared
dead, is not revived by a late save of the replica that was running it. Writes that
read a row first (failing, repairing) lock it (`FOR UPDATE`) or compare the body they
read, so they never overwrite what another replica saved in between. The async TaskStore
methods do their database work in the storage layer's threads (`Database.run`), never
on the event loop; `save_sync` and the maintenance methods are for threads and tools.

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

Why not a2a-sdk's own `DatabaseTaskStore` (a2a/server/tasks/database_task_store.py): it
needs an `AsyncEngine` (the storage layer's engines are synchronous, shared with the
trust layer's plain functions and the CLI, and run off the loop by `Database.run`); it
keys tasks by id alone (two owners' equal ids collide) and stores them as JSON
(`MessageToDict`), which has no spelling for the non-finite numbers sanitizing exists
for; it has no quarantine of undecodable rows, no repair, no retention; and it knows
nothing of which replica runs an unfinished task, which failover needs.
"""

from __future__ import annotations

import binascii
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
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
from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Connection,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    and_,
    delete,
    func,
    or_,
    select,
    tuple_,
)

from consortium.node.a2a.validation import MAX_STRUCT_DEPTH
from consortium.storage.database import Database
from consortium.storage.migrations import open_sqlite
from consortium.storage.sql import insert

log = logging.getLogger(__name__)

TERMINAL_STATES = (
    a2a_pb2.TASK_STATE_COMPLETED,
    a2a_pb2.TASK_STATE_FAILED,
    a2a_pb2.TASK_STATE_CANCELED,
    a2a_pb2.TASK_STATE_REJECTED,
)
_TERMINAL = [int(s) for s in TERMINAL_STATES]

# google.protobuf.Timestamp's valid range (0001-01-01 to 9999-12-31) and SQLite's
# INTEGER range, which ends in 2262 for nanoseconds since the epoch.
TIMESTAMP_MIN_S = -62_135_596_800
TIMESTAMP_MAX_S = 253_402_300_799
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
NS_PER_S = 1_000_000_000
REPAIR_BATCH = 500

METADATA = MetaData()
# The tables as nodes have always made them in node.sqlite3 (same names, same columns).
TASKS = Table(
    "tasks",
    METADATA,
    Column("owner", Text, nullable=False),
    Column("id", Text, nullable=False),
    Column("context_id", Text, nullable=False),
    Column("state", Integer, nullable=False),
    Column("has_ts", Integer, nullable=False),
    Column("ts_ns", BigInteger, nullable=False),
    Column("body", LargeBinary, nullable=False),
    # The replica running the task (tasks_0002; '' for rows stored before).
    Column("replica", Text, nullable=False, server_default=""),
    PrimaryKeyConstraint("owner", "id"),
)
Index(
    "tasks_by_time",
    TASKS.c.owner,
    TASKS.c.has_ts.desc(),
    TASKS.c.ts_ns.desc(),
    TASKS.c.id.desc(),
)
QUARANTINE = Table(
    "tasks_quarantine",
    METADATA,
    Column("owner", Text, nullable=False),
    Column("id", Text, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("reason", Text, nullable=False),
    Column("at", Float(precision=53), nullable=False),
    PrimaryKeyConstraint("owner", "id"),
)


@dataclass(frozen=True)
class _Row:
    """A task as stored: its body (sanitized if it had to be) and its indexed columns."""

    id: str
    context_id: str
    state: int
    has_ts: bool
    ts_ns: int
    body: bytes


class NodeTaskStore(TaskStore):
    """The node's tasks in `db` (its "tasks" store; a Path: that SQLite file, opened and
    migrated here, for tools and tests). `owner_resolver` names a call's owner;
    `replica` this process among the organization's replicas (Node.replica_id), recorded
    with every task it saves."""

    def __init__(
        self,
        db: Database | Path,
        owner_resolver: OwnerResolver = resolve_user_scope,
        *,
        replica: str = "",
    ) -> None:
        self._owned = not isinstance(db, Database)  # opened here: closed here
        self._db = db if isinstance(db, Database) else open_sqlite(db, "tasks")
        self._owner = owner_resolver
        self.replica = replica

    @property
    def database(self) -> Database:
        return self._db

    def close(self) -> None:
        if self._owned:
            self._db.dispose()

    # -- a2a-sdk's TaskStore (async: the database work in the storage threads) ---------

    async def save(self, task: a2a_pb2.Task, context: ServerCallContext) -> None:
        row = _row_of(task)  # on the caller's thread: the task may change once we return
        owner = self._owner(context)
        await self._db.run(lambda: self._put(owner, row))

    async def get(self, task_id: str, context: ServerCallContext) -> a2a_pb2.Task | None:
        owner = self._owner(context)
        if not self._storable(owner, task_id):
            return None
        return await self._db.run(lambda: self._get(owner, task_id))

    async def delete(self, task_id: str, context: ServerCallContext) -> None:
        owner = self._owner(context)
        if not self._storable(owner, task_id):
            return
        await self._db.run(lambda: self._delete(owner, task_id))

    async def list(
        self, params: a2a_pb2.ListTasksRequest, context: ServerCallContext
    ) -> a2a_pb2.ListTasksResponse:
        owner = self._owner(context)
        return await self._db.run(lambda: self.list_sync(params, owner))

    async def save_as(self, task: a2a_pb2.Task, owner: str) -> None:
        """`save` for a caller that knows the owner (the OpenAI-compatible API's tasks)."""
        row = _row_of(task)
        await self._db.run(lambda: self._put(owner, row))

    # -- the same, synchronous ----------------------------------------------------------

    def save_sync(self, task: a2a_pb2.Task, owner: str) -> None:
        """Stores `task` (a sanitized copy if it could not be served as it is)."""
        self._put(owner, _row_of(task))

    def _put(self, owner: str, row: _Row) -> None:
        if not self._storable(owner, row.id, row.context_id):
            raise InvalidParamsError(message="a task id or context id holds a NUL character")
        stmt = insert(self._db, TASKS).values(
            owner=owner,
            id=row.id,
            context_id=row.context_id,
            state=row.state,
            has_ts=int(row.has_ts),
            ts_ns=row.ts_ns,
            body=row.body,
            replica=self.replica,
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[TASKS.c.owner, TASKS.c.id],
            set_={
                "context_id": stmt.excluded.context_id,
                "state": stmt.excluded.state,
                "has_ts": stmt.excluded.has_ts,
                "ts_ns": stmt.excluded.ts_ns,
                "body": stmt.excluded.body,
                "replica": stmt.excluded.replica,
            },
            # A task that ended stays ended: canceled through another replica, or failed
            # because its replica was declared dead, a late save of the replica still
            # running it (as another final state, or a step of its work) changes nothing.
            # One statement: the row's state decides, whichever replica writes first.
            where=or_(TASKS.c.state.not_in(_TERMINAL), TASKS.c.state == stmt.excluded.state),
        )
        with self._db.begin() as conn:
            conn.execute(stmt)

    def _get(self, owner: str, task_id: str) -> a2a_pb2.Task | None:
        query = select(TASKS.c.body).where(TASKS.c.owner == owner, TASKS.c.id == task_id)
        with self._db.connect() as conn:
            body = conn.execute(query).scalar()
        return None if body is None else _decode(body, task_id)

    def _delete(self, owner: str, task_id: str) -> None:
        with self._db.begin() as conn:
            conn.execute(delete(TASKS).where(TASKS.c.owner == owner, TASKS.c.id == task_id))

    def list_sync(self, params: a2a_pb2.ListTasksRequest, owner: str) -> a2a_pb2.ListTasksResponse:
        """ListTasks for `owner`: newest status first, filtered as `params` asks, a page at
        a time (InvalidParamsError for a bad page size, timestamp or page token)."""
        if not 0 <= params.page_size <= MAX_LIST_TASKS_PAGE_SIZE:
            raise InvalidParamsError(
                message=f"pageSize must be between 1 and {MAX_LIST_TASKS_PAGE_SIZE}"
            )
        page_size = params.page_size or DEFAULT_LIST_TASKS_PAGE_SIZE
        where: list[ColumnElement[bool]] = [TASKS.c.owner == owner]
        if params.context_id:
            where.append(TASKS.c.context_id == params.context_id)
        if params.status:
            where.append(TASKS.c.state == int(params.status))
        if params.HasField("status_timestamp_after"):
            after = params.status_timestamp_after
            if not timestamp_valid(after):
                raise InvalidParamsError(
                    message="statusTimestampAfter is outside the range of a Timestamp"
                    " (years 1 to 9999, nanos 0 to 999999999)"
                )
            # Past 2262 (int64 nanoseconds) it is clamped: no task is stamped that late.
            where += [TASKS.c.has_ts == 1, TASKS.c.ts_ns >= _clamped_ns(after)]
        page_where = list(where)
        if params.page_token:
            has_ts, ts, tid = _page_position(params.page_token, self._db.dialect)
            key = tuple_(TASKS.c.has_ts, TASKS.c.ts_ns, TASKS.c.id)
            page_where.append(key < tuple_(int(has_ts), ts, tid))
        if not self._storable(owner, params.context_id):
            return a2a_pb2.ListTasksResponse(page_size=page_size)  # no such task
        count = select(func.count()).select_from(TASKS).where(and_(*where))
        page = (
            select(TASKS.c.body, TASKS.c.has_ts, TASKS.c.ts_ns, TASKS.c.id)
            .where(and_(*page_where))
            .order_by(TASKS.c.has_ts.desc(), TASKS.c.ts_ns.desc(), TASKS.c.id.desc())
            .limit(page_size + 1)
        )
        with self._db.connect() as conn:
            total = int(conn.execute(count).scalar_one())
            rows = conn.execute(page).all()
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

    def _storable(self, *texts: str) -> bool:
        """Whether PostgreSQL can hold these strings (its text has no NUL character);
        SQLite holds any."""
        return self._db.dialect != "postgresql" or not any("\x00" in t for t in texts)

    # -- maintenance (threads, start-up) ------------------------------------------------

    def fail_unfinished(self, reason: str) -> int:
        """Marks failed, with `reason` as their status message, the unfinished tasks no one
        runs once this process starts or stops: on SQLite (one process) every task not in
        a terminal state; on PostgreSQL, where other replicas run theirs, only this
        replica's and those stored before replicas were recorded (`replica` ''). Returns
        how many it failed."""
        if self._db.dialect == "postgresql":
            return self.fail_replicas(reason, [self.replica, ""])
        return self._fail(reason, None)

    def fail_replicas(self, reason: str, replicas: Iterable[str]) -> int:
        """Marks failed the unfinished tasks of `replicas` (replicas declared dead)."""
        return self._fail(reason, TASKS.c.replica.in_(sorted(set(replicas))))

    def _fail(self, reason: str, which: ColumnElement[bool] | None) -> int:
        query = select(TASKS.c.owner, TASKS.c.id, TASKS.c.body).where(
            TASKS.c.state.not_in(_TERMINAL)
        )
        if which is not None:
            query = query.where(which)
        if self._db.dialect == "postgresql":
            # Locked until the failure is written: an owner's cancel or another replica's
            # save of the same task waits, and is not overwritten by what we read before.
            query = query.order_by(TASKS.c.owner, TASKS.c.id).with_for_update()
        failed = 0
        with self._db.begin() as conn:
            for owner, task_id, body in conn.execute(query).all():
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
                self._write(conn, owner, _row_of(task))
                failed += 1
        if failed:
            log.warning("marked %d unfinished task(s) failed: %s", failed, reason)
        return failed

    def _write(self, conn: Connection, owner: str, row: _Row) -> None:
        """Rewrites a stored task's row (in the caller's transaction)."""
        conn.execute(
            TASKS.update()
            .where(TASKS.c.owner == owner, TASKS.c.id == row.id)
            .values(
                context_id=row.context_id,
                state=row.state,
                has_ts=int(row.has_ts),
                ts_ns=row.ts_ns,
                body=row.body,
            )
        )

    def repair(self) -> int:
        """Rewrites, sanitized, the stored tasks that could not be served (stored by a node
        before sanitizing), and moves the rows that cannot be decoded at all to
        `tasks_quarantine`. Returns how many rows it changed. Run at start-up."""
        fixed: list[tuple[str, a2a_pb2.Task, bytes]] = []
        broken: list[tuple[str, str, bytes, str]] = []
        position: tuple[str, str] | None = None
        while True:  # in batches: the bodies of every task need not fit in memory at once
            query = select(TASKS.c.owner, TASKS.c.id, TASKS.c.body)
            if position is not None:
                query = query.where(tuple_(TASKS.c.owner, TASKS.c.id) > tuple_(*position))
            query = query.order_by(TASKS.c.owner, TASKS.c.id).limit(REPAIR_BATCH)
            with self._db.connect() as conn:
                rows = conn.execute(query).all()
            if not rows:
                break
            position = (rows[-1][0], rows[-1][1])
            for owner, task_id, body in rows:
                try:
                    task = a2a_pb2.Task.FromString(body)
                except DecodeError as e:
                    broken.append((owner, task_id, body, f"undecodable: {e}"))
                    continue
                if needs_sanitizing(task, body) and sanitize_task(task):
                    fixed.append((owner, task, body))
        for owner, task, old in fixed:
            # Only the row as it was read (compare and set): a task another replica saved
            # since is left as it is now.
            row = _row_of(task)
            with self._db.begin() as conn:
                conn.execute(
                    TASKS.update()
                    .where(TASKS.c.owner == owner, TASKS.c.id == row.id, TASKS.c.body == old)
                    .values(
                        context_id=row.context_id,
                        state=row.state,
                        has_ts=int(row.has_ts),
                        ts_ns=row.ts_ns,
                        body=row.body,
                    )
                )
            log.warning("repaired stored task %s: values with no JSON form now null", task.id)
        if broken:
            now = time.time()
            with self._db.begin() as conn:
                for owner, task_id, body, reason in broken:
                    stmt = insert(self._db, QUARANTINE).values(
                        owner=owner, id=task_id, body=body, reason=reason, at=now
                    )
                    conn.execute(
                        stmt.on_conflict_do_update(
                            index_elements=[QUARANTINE.c.owner, QUARANTINE.c.id],
                            set_={
                                "body": stmt.excluded.body,
                                "reason": stmt.excluded.reason,
                                "at": stmt.excluded.at,
                            },
                        )
                    )
                    conn.execute(
                        delete(TASKS).where(
                            TASKS.c.owner == owner, TASKS.c.id == task_id, TASKS.c.body == body
                        )
                    )
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
        stmt = (
            delete(TASKS)
            .where(TASKS.c.state.in_(_TERMINAL), TASKS.c.has_ts == 1, TASKS.c.ts_ns < cutoff)
            .returning(TASKS.c.id)
        )
        with self._db.begin() as conn:
            return len(conn.execute(stmt).all())


# The name callers have always used.
SqliteTaskStore = NodeTaskStore


def _row_of(task: a2a_pb2.Task) -> _Row:
    """What `task` is stored as: a sanitized copy's if it could not be served as it is."""
    body = task.SerializeToString()
    if needs_sanitizing(task, body) or not _decodable(body):
        clean = a2a_pb2.Task()
        clean.CopyFrom(task)
        if sanitize_task(clean):
            log.warning("task %s: values with no JSON form stored as null", task.id)
            task, body = clean, clean.SerializeToString()
    has_ts = task.HasField("status") and task.status.HasField("timestamp")
    return _Row(
        id=task.id,
        context_id=task.context_id,
        state=int(task.status.state),
        has_ts=has_ts,
        ts_ns=_clamped_ns(task.status.timestamp) if has_ts else 0,
        body=body,
    )


def timestamp_valid(ts: timestamp_pb2.Timestamp) -> bool:
    """Whether `ts` is within google.protobuf.Timestamp's range (what its JSON form,
    ToNanoseconds and ToDatetime accept)."""
    return TIMESTAMP_MIN_S <= ts.seconds <= TIMESTAMP_MAX_S and 0 <= ts.nanos < NS_PER_S


def _clamped_ns(ts: timestamp_pb2.Timestamp) -> int:
    """Nanoseconds since the epoch, clamped to a 64-bit integer's range."""
    return max(INT64_MIN, min(INT64_MAX, ts.seconds * NS_PER_S + ts.nanos))


def _page_position(page_token: str, dialect: str) -> tuple[bool, int, str]:
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
        except UnicodeEncodeError:  # a lone surrogate, which no database can bind
            cursor = None
        else:
            if INT64_MIN <= ts <= INT64_MAX and not (dialect == "postgresql" and "\x00" in tid):
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
