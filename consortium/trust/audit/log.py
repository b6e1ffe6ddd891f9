"""A node's tamper-evident audit log, in the node's storage (consortium/storage: the
SQLite file `DATA_DIR/audit.sqlite3`, or the PostgreSQL database every replica of the
node shares, schema `consortium_audit`): an append-only table of entries that are the
leaves of an RFC 6962 / 9162 Merkle tree, with checkpoints signed by the organization's
key (C2SP tlog-checkpoint in a signed note) and the cosignatures its peers add (C2SP
tlog-cosignature).

An entry is one RFC 8785 JSON object: its position (`seq`), time, kind, direction, the
peer, identifiers (message, task, trace and span ids) and digests (the signed message's
digest and JWS, the request digest it answers), the verdict, and a small `detail` of
identifiers and numbers. Never message text. The leaf is exactly the entry's canonical
bytes, so anyone holding an entry can recompute its leaf hash.

Every append is its own committed transaction before `append` returns: the hooks call
it before a message is sent or acted on, so after a crash (even SIGKILL) the log holds
every message the node acted on. SQLite: a committed transaction in WAL survives a crash
of the process whatever the synchronous setting (the write is in the operating system's
hands), so `durable_against="crash"` runs synchronous=OFF; "power" runs synchronous=FULL,
an fsync per entry, to survive a power cut too. The entry's insert, on every message's
path, runs as one prepared statement on a connection the log keeps out of the engine's
pool (SQLAlchemy's per-statement work would cost several times the insert itself), and
so does a checkpoint's.
PostgreSQL: a commit is durable (the server's WAL is flushed) whichever setting.
The table has no secondary index: each would cost a page write per entry (the entries'
index columns serve an auditor's scans of a copy), and a receipt finds its request's
entry through an in-memory map of the requests received lately.

One log across replicas (PostgreSQL): one append order, one tree, each checkpoint signed
once.
- An entry's position is allocated in the database, in the transaction that inserts it:
  the append takes a transaction-scoped advisory lock, then reads the highest position
  and writes the next. The lock is released only when the transaction ends, so the next
  append (from whichever replica) reads a committed predecessor: positions are gapless
  and in commit order, and the committed entries are always a contiguous prefix. (Not a
  SEQUENCE, which leaves a gap for every rolled-back transaction; not a counter row,
  which could disagree with the entries it counts.) On SQLite the node is one process:
  the log's own lock orders the appends and the in-memory tree's size is the position.
- Each replica keeps the tree in memory and catches up from the stored leaf hashes of
  the entries other replicas wrote whenever it needs a root or a proof.
- A checkpoint is decided and signed under a second advisory lock, against the latest
  checkpoint in the database, so one replica at a time signs the next one; the
  checkpoint's size is its primary key, so no size is ever signed twice.
- Cosignatures, what this node witnessed of other logs, and retention are in the same
  tables for every replica; pruning takes the append lock (no append, no other pruning
  meanwhile); one replica at a time sends the log's checkpoints to its witnesses
  (`witnessing_turn`), so a witness never gets a smaller checkpoint after a larger one
  from two replicas' rounds crossing (it would judge that a rollback).

A checkpoint is signed every `checkpoint_every` entries, and by `maybe_checkpoint` once
`checkpoint_interval_s` has passed with new entries (the node calls it periodically).
On opening, the log checks itself (every leaf against its entry, positions contiguous,
the latest checkpoint's root) and refuses to go on appending to a damaged log.

Retention (`prune`): the bodies of old entries are dropped, never their leaf hashes, so
the tree, every root and every proof stay what they were. Only entries a signed
checkpoint covers are pruned; the entries below `meta.pruned_below` keep their position
and leaf hash with an empty body and empty message, task and trace columns, and the
checkpoints inside that range are dropped but the newest one at or below its end and
each witness's newest cosigned one (with their cosignatures), so the pruned range stays
committed by a signed checkpoint. Each pruning is itself an entry (kind "retention"),
in the same transaction. What a pruned log still proves: see the README.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from jwcrypto import jwk
from opentelemetry import trace
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    bindparam,
    case,
    cast,
    delete,
    event,
    func,
    not_,
    or_,
    select,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite

from consortium.errors import ConsortiumError
from consortium.storage.database import Database
from consortium.storage.migrations import open_sqlite
from consortium.storage.sql import insert
from consortium.trust.audit import Hop, Scalar, log_origin
from consortium.trust.audit.inclusion import receipt
from consortium.trust.audit.merkle import Tree, leaf_hash
from consortium.trust.audit.notes import (
    Checkpoint,
    NoteSignature,
    format_note,
    parse_note,
    parse_signature_line,
    sign_note,
)
from consortium.trust.audit.witness import Seen
from consortium.trust.jws import canonical, signing_key_of

_T = TypeVar("_T")
FORMAT_VERSION = 1
MAX_FIELD_CHARS = 256  # what a refusal records of unauthenticated claims
MAX_RECENT_REQUESTS = 4096  # requests whose entry a receipt can still find
Direction = Literal["in", "out", "local"]
# pg_advisory_xact_lock keys (per database: the log's schema is the database's only one).
APPEND_LOCK = 7361245390002  # allocating a position (and pruning)
CHECKPOINT_LOCK = 7361245390003  # deciding and signing a checkpoint
WITNESSING_LOCK = 7361245390004  # a witnessing round (node.witnessing)

METADATA = MetaData()
# A position or a tree size: 64 bits on PostgreSQL; "INTEGER" on SQLite, so an entry's
# position is its rowid (migrations/versions/audit_0001_baseline.py).
_POSITION = BigInteger().with_variant(Integer(), "sqlite")
META = Table(
    "meta",
    METADATA,
    Column("key", Text, nullable=False),
    Column("value", Text, nullable=False),
    PrimaryKeyConstraint("key"),
)
ENTRIES = Table(
    "entries",
    METADATA,
    Column("seq", _POSITION, nullable=False, autoincrement=False),
    Column("body", Text, nullable=False),
    Column("leaf", LargeBinary, nullable=False),
    Column("kind", Text, nullable=False),
    Column("message_id", Text, nullable=False),
    Column("task_id", Text, nullable=False),
    Column("trace_id", Text, nullable=False),
    PrimaryKeyConstraint("seq"),
)
CHECKPOINTS = Table(
    "checkpoints",
    METADATA,
    Column("size", _POSITION, nullable=False, autoincrement=False),
    Column("note", Text, nullable=False),
    Column("time", Float(precision=53), nullable=False),
    PrimaryKeyConstraint("size"),
)
COSIGNATURES = Table(
    "cosignatures",
    METADATA,
    Column("size", _POSITION, nullable=False, autoincrement=False),
    Column("witness", Text, nullable=False),
    Column("line", Text, nullable=False),
    Column("time", Float(precision=53), nullable=False),
    PrimaryKeyConstraint("size", "witness"),
)
WITNESSED = Table(
    "witnessed",
    METADATA,
    Column("origin", Text, nullable=False),
    Column("size", _POSITION, nullable=False, autoincrement=False),
    Column("root", LargeBinary, nullable=False),
    Column("note", Text, nullable=False),
    Column("time", Float(precision=53), nullable=False),
    PrimaryKeyConstraint("origin"),
)
# SQLite's inserts of an entry and a checkpoint, and a receipt's read, prepared statements
# on the log's own connection (see the module docstring), from the tables.
_SQLITE_INSERT = str(ENTRIES.insert().compile(dialect=sqlite.dialect()))
_SQLITE_CHECKPOINT = str(CHECKPOINTS.insert().compile(dialect=sqlite.dialect()))
_SQLITE_BODY = str(
    select(ENTRIES.c.body)
    .where(ENTRIES.c.seq == bindparam("seq"))
    .compile(dialect=sqlite.dialect())
)


def pruned_below(db: sqlite3.Connection) -> int:
    """The position below which retention dropped the entries' bodies (0: none), in an
    SQLite copy of a log (what the auditor's tools read)."""
    row = db.execute("SELECT value FROM meta WHERE key = 'pruned_below'").fetchone()
    return int(row[0]) if row is not None else 0


def _pruned_below(conn: Connection) -> int:
    value = conn.execute(select(META.c.value).where(META.c.key == "pruned_below")).scalar()
    return int(value) if value is not None else 0


class AuditError(ConsortiumError):
    """The audit log cannot be used: damaged, from another organization, or unreadable."""


@dataclass(frozen=True)
class Signed:
    """A checkpoint and its note text (the log's own signature, no cosignatures)."""

    checkpoint: Checkpoint
    note: str


def _signed(note: str) -> Signed:
    body, _ = parse_note(note)
    return Signed(Checkpoint.parse(body), note)


def _canonical(entry: dict[str, Any]) -> bytes:
    """RFC 8785 bytes of an entry. A flat entry of strings, safe integers and floats
    written in fixed point (a hop's, a refusal's: most entries, on the message path) goes
    straight to the standard library's encoder, which writes exactly those bytes for such
    values (see trust.jws.canonical); anything else takes the general path."""
    for value in entry.values():
        if isinstance(value, str) or (
            isinstance(value, int) and not isinstance(value, bool) and abs(value) <= _SAFE
        ):
            continue
        if isinstance(value, float) and not value.is_integer() and 1e-4 <= abs(value) < 1e16:
            continue
        return canonical(entry)
    try:
        return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a lone surrogate: the general path names the problem
        return canonical(entry)


_SAFE = 2**53 - 1


def _plain(value: Any) -> Any:
    """`value` as JCS can write it: a float that is not finite (a router's infinite
    score) becomes its name."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


# Whether a checkpoint is due: (the size it would cover, the latest checkpoint's size and
# time, 0 and the log's opening time when there is none).
Due = Callable[[int, int, float], bool]


class SqliteAuditLog:
    """One organization's audit log; thread-safe. Implements trust.audit.AuditLog.

    `db`: the node's "audit" store (a Path: that SQLite file, for tools and tests). The
    name is historical: the log is on PostgreSQL when the node's storage is."""

    def __init__(
        self,
        db: Database | Path,
        *,
        federation_id: str,
        org_id: str,
        key: Callable[[], jwk.JWK],
        checkpoint_every: int = 256,
        checkpoint_interval_s: float = 10.0,
        durable_against: Literal["crash", "power"] = "crash",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be at least 1")
        self.origin = log_origin(federation_id, org_id)
        self.org_id = org_id
        self._key = key
        self._every = checkpoint_every
        self._interval = checkpoint_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        # Requests received lately: message id -> the position of their entry.
        self._requests: OrderedDict[str, int] = OrderedDict()
        # Entries below this position have no body any more (retention).
        self.pruned_below = 0
        self._owned = not isinstance(db, Database)  # opened here: closed here
        self.where = str(db) if isinstance(db, Path) else db.where
        self._raw: Any = None  # SQLite: the appends' connection (the module docstring)
        self._sync = "FULL" if durable_against == "power" else "OFF"
        try:
            if isinstance(db, Path):
                db = open_sqlite(db, "audit")
            self._db = db
            self._shared = db.dialect == "postgresql"
            if not self._shared:
                event.listen(db.engine, "checkout", self._on_checkout)
                self._raw = db.engine.raw_connection()
            self._open()
        except sa_exc.DatabaseError as e:
            self._release()
            raise AuditError(f"the audit log {self.where} cannot be read: {e.orig}") from None
        except BaseException:
            self._release()
            raise

    async def run(self, call: Callable[[], _T]) -> _T:
        """`call()` (this log's methods) in the storage's threads, off the event loop:
        for the node's async code (the log is thread-safe)."""
        return await self._db.run(call)

    def _on_checkout(self, dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        dbapi_connection.execute(f"PRAGMA synchronous={self._sync}")

    # -- opening -----------------------------------------------------------------------

    def _open(self) -> None:
        with self._db.begin() as conn:
            self._claim_origin(conn)
        with self._db.connect() as conn:
            self.pruned_below = _pruned_below(conn)
            # The latest checkpoint first: every entry it covers is committed already,
            # whatever another replica appends meanwhile.
            latest = conn.execute(
                select(CHECKPOINTS.c.size, CHECKPOINTS.c.note, CHECKPOINTS.c.time)
                .order_by(CHECKPOINTS.c.size.desc())
                .limit(1)
            ).first()
            self._tree = self._load(conn)
        self._checkpointed, self._checkpoint_time = 0, self._clock()
        if latest is not None:
            self._check_checkpoint(int(latest.size), str(latest.note))
            self._checkpointed, self._checkpoint_time = int(latest.size), float(latest.time)

    def _claim_origin(self, conn: Connection) -> None:
        for key, value in (("origin", self.origin), ("version", str(FORMAT_VERSION))):
            stmt = insert(self._db, META).values(key=key, value=value)
            conn.execute(stmt.on_conflict_do_nothing(index_elements=[META.c.key]))
        origin = conn.execute(select(META.c.value).where(META.c.key == "origin")).scalar()
        if origin != self.origin:
            raise AuditError(
                f"the audit log {self.where} is the log of {origin}, not {self.origin}"
            )

    def _load(self, conn: Connection) -> Tree:
        """The tree of every entry, each leaf checked against its entry (a pruned entry's
        stored leaf is taken as it is: the checkpoint check still covers it)."""
        tree = Tree()
        rows = conn.execute(
            select(ENTRIES.c.seq, ENTRIES.c.body, ENTRIES.c.leaf).order_by(ENTRIES.c.seq)
        )
        for seq, body, leaf in rows:
            if seq != tree.size:
                raise self._damaged(f"entry {tree.size} is missing (next is {seq})")
            if seq < self.pruned_below and body == "":
                tree.append(bytes(leaf))
                continue
            if not isinstance(body, str) or leaf_hash(body.encode()) != leaf:
                raise self._damaged(f"entry {seq} does not match its leaf hash")
            tree.append(bytes(leaf))
        return tree

    def _check_checkpoint(self, size: int, note: str) -> None:
        try:
            body, _ = parse_note(note)
            checkpoint = Checkpoint.parse(body)
        except ValueError as e:
            raise self._damaged(f"checkpoint {size} cannot be read: {e}") from None
        if checkpoint.size != size or size > self._tree.size:
            raise self._damaged(f"checkpoint {size} covers entries the log no longer has")
        if checkpoint.root != self._tree.root(size):
            raise self._damaged(f"checkpoint {size} does not match the entries")

    def _damaged(self, what: str) -> AuditError:
        return AuditError(
            f"the audit log {self.where} fails its own check: {what}. Keep the file for the "
            "auditors (consortium audit verify), and move it aside to start a new log"
        )

    def _catch_up(self, conn: Connection, size: int | None = None) -> None:
        """PostgreSQL: the tree extended with the leaves of the entries written since
        (by every replica), up to `size` (all committed ones: None). The committed
        entries are a contiguous prefix (the module docstring). On SQLite the tree is
        the log already (one process, appends under the lock)."""
        if not self._shared or (size is not None and size <= self._tree.size):
            return
        query = select(ENTRIES.c.seq, ENTRIES.c.leaf).where(ENTRIES.c.seq >= self._tree.size)
        if size is not None:
            query = query.where(ENTRIES.c.seq < size)
        for seq, leaf in conn.execute(query.order_by(ENTRIES.c.seq)):
            if seq != self._tree.size:
                raise self._damaged(f"entry {self._tree.size} is missing (next is {seq})")
            self._tree.append(bytes(leaf))
        if size is not None and self._tree.size < size:
            raise self._damaged(f"entry {self._tree.size} is missing")

    def _caught_up(self, size: int | None = None) -> None:
        """`_catch_up` in a read of its own (the caller holds the lock)."""
        if self._shared:
            with self._db.connect() as conn:
                self._catch_up(conn, size)

    # -- appending ---------------------------------------------------------------------

    @property
    def size(self) -> int:
        """The number of entries (on PostgreSQL: every replica's, committed)."""
        with self._lock:
            self._caught_up()
            return self._tree.size

    def append(
        self,
        kind: str,
        direction: Direction,
        *,
        peer: str = "",
        message_id: str = "",
        task_id: str = "",
        fields: Mapping[str, Any] | None = None,
    ) -> int:
        """Appends one entry, committed before this returns; its position. The trace and
        span ids are the current span's."""
        span = trace.get_current_span().get_span_context()
        entry: dict[str, Any] = {"v": FORMAT_VERSION, "kind": kind, "dir": direction}
        if peer:
            entry["peer"] = peer
        if message_id:
            entry["msg"] = message_id
        if task_id:
            entry["task"] = task_id
        if span.is_valid:
            entry["trace"] = f"{span.trace_id:032x}"
            entry["span"] = f"{span.span_id:016x}"
        for name, value in (fields or {}).items():
            if value not in ("", None) and value != {}:
                entry[name] = _plain(value)
        if self._shared:
            with self._db.begin() as conn:
                seq, _ = self._write(conn, entry, message_id, task_id)
            self._appended(seq + 1)
            return seq
        with self._lock:
            seq = self._tree.size
            body, leaf = self._seal(entry, seq)
            self._raw.driver_connection.execute(
                _SQLITE_INSERT,
                (seq, body, leaf, entry["kind"], message_id, task_id, entry.get("trace", "")),
            )
            self._tree.append(leaf)
            self._appended(seq + 1)
        return seq

    def _seal(self, entry: dict[str, Any], seq: int) -> tuple[str, bytes]:
        """The entry at `seq`, now: its body and leaf hash."""
        entry["seq"] = seq
        entry["time"] = round(self._clock(), 6)
        body = _canonical(entry)
        return body.decode(), leaf_hash(body)

    def _write(
        self, conn: Connection, entry: dict[str, Any], message_id: str, task_id: str
    ) -> tuple[int, bytes]:
        """Writes `entry` at the next position in `conn`'s transaction; the position and
        leaf. On SQLite the caller holds the lock (the tree's size is the position)."""
        if self._shared:
            # Released when the transaction ends: the next append reads this one committed.
            conn.execute(select(func.pg_advisory_xact_lock(APPEND_LOCK)))
            last = conn.execute(select(func.max(ENTRIES.c.seq))).scalar()
            seq = 0 if last is None else int(last) + 1
        else:
            seq = self._tree.size
        body, leaf = self._seal(entry, seq)
        conn.execute(
            ENTRIES.insert().values(
                seq=seq,
                body=body,
                leaf=leaf,
                kind=entry["kind"],
                message_id=message_id,
                task_id=task_id,
                trace_id=entry.get("trace", ""),
            )
        )
        return seq, leaf

    def _appended(self, size: int) -> None:
        """After an append made the log `size` entries long: a checkpoint when
        `checkpoint_every` entries came since the latest (the caller holds the lock on
        SQLite; on PostgreSQL `_checkpointed` is what this replica knows, and the
        checkpoint's own transaction decides)."""
        if size - self._checkpointed < self._every:
            return

        def due(size: int, latest: int, _at: float) -> bool:
            return size - latest >= self._every

        if self._shared:
            with self._lock:
                self._checkpoint(size, due)
        else:
            self._checkpoint(size, due)

    # -- the AuditLog hooks --------------------------------------------------------------

    def sent(self, hop: Hop) -> None:
        self._hop(hop, "out")

    def received(self, hop: Hop) -> None:
        self._hop(hop, "in")

    def _hop(self, hop: Hop, direction: Direction) -> None:
        seq = self.append(
            hop.kind,
            direction,
            peer=hop.peer,
            message_id=hop.message_id,
            task_id=hop.task_id,
            fields={
                "kid": hop.kid,
                "digest": hop.digest,
                "jws": hop.jws,
                "req": hop.request_digest,
                "method": hop.method,
                "verdict": "verified" if direction == "in" else "",
                "inclusion": hop.inclusion,
                "receipt": hop.receipt,
            },
        )
        if direction == "in" and hop.kind == "request":
            with self._lock:
                self._requests[hop.message_id] = seq
                while len(self._requests) > MAX_RECENT_REQUESTS:
                    self._requests.popitem(last=False)

    def refused(self, *, sender: str, message_id: str, reason: str, what: str) -> None:
        self.append(
            "refusal",
            "in",
            peer=sender[:MAX_FIELD_CHARS],
            message_id=message_id[:MAX_FIELD_CHARS],
            fields={"verdict": reason[:MAX_FIELD_CHARS], "what": what[:MAX_FIELD_CHARS]},
        )

    def record(
        self,
        kind: str,
        *,
        peer: str = "",
        task_id: str = "",
        detail: Mapping[str, Scalar] | None = None,
    ) -> None:
        self.append(
            kind, "local", peer=peer, task_id=task_id, fields={"detail": dict(detail or {})}
        )

    # -- checkpoints -------------------------------------------------------------------

    def _checkpoint(self, size: int | None, due: Due) -> Signed | None:
        """The checkpoint of the first `size` entries (None: all of them now): the one
        kept when there is one, else one signed now and kept if `due` says so, else None
        (the caller holds the lock). On PostgreSQL one replica at a time decides and
        signs (an advisory lock), against the latest checkpoint any replica kept; on
        SQLite this process is the only writer and knows the latest one."""
        if not self._shared:
            size = self._tree.size if size is None else size
            if size == self._checkpointed:
                kept = self.latest()
                if kept is not None:
                    return kept
            if not due(size, self._checkpointed, self._checkpoint_time):
                return None
            checkpoint, note = self._sign(size)
            now = self._clock()
            self._raw.driver_connection.execute(_SQLITE_CHECKPOINT, (size, note, now))
            self._checkpointed, self._checkpoint_time = size, now
            return Signed(checkpoint, note)
        with self._db.begin() as conn:
            conn.execute(select(func.pg_advisory_xact_lock(CHECKPOINT_LOCK)))
            latest = conn.execute(
                select(CHECKPOINTS.c.size, CHECKPOINTS.c.time)
                .order_by(CHECKPOINTS.c.size.desc())
                .limit(1)
            ).first()
            if latest is not None and int(latest.size) >= self._checkpointed:
                self._checkpointed, self._checkpoint_time = int(latest.size), float(latest.time)
            self._catch_up(conn, size)
            size = self._tree.size if size is None else size
            kept_note = conn.execute(
                select(CHECKPOINTS.c.note).where(CHECKPOINTS.c.size == size)
            ).scalar()
            if kept_note is not None:
                return _signed(str(kept_note))
            at = self._checkpoint_time if latest is None else float(latest.time)
            if not due(size, 0 if latest is None else int(latest.size), at):
                return None
            checkpoint, note = self._sign(size)
            now = self._clock()
            conn.execute(CHECKPOINTS.insert().values(size=size, note=note, time=now))
        if size >= self._checkpointed:
            self._checkpointed, self._checkpoint_time = size, now
        return Signed(checkpoint, note)

    def _sign(self, size: int) -> tuple[Checkpoint, str]:
        """A checkpoint of the first `size` entries and its note, signed (the caller
        holds the lock and caught the tree up)."""
        checkpoint = Checkpoint(self.origin, size, self._tree.root(size))
        body = checkpoint.body()
        return checkpoint, format_note(
            body, [sign_note(body, self.origin, signing_key_of(self._key()))]
        )

    def checkpoint(self) -> Signed:
        """A signed checkpoint of the log as it is now (a new one when it grew)."""
        with self._lock:
            signed = self._checkpoint(None, lambda _size, _latest, _at: True)
            assert signed is not None
            return signed

    def maybe_checkpoint(self) -> Signed | None:
        """A new checkpoint when entries came after the last one and the interval passed."""
        with self._lock:
            # What this replica knows: never later than the latest checkpoint's time.
            if self._clock() - self._checkpoint_time < self._interval:
                return None
            if not self._shared and self._tree.size <= self._checkpointed:
                return None
            return self._checkpoint(
                None,
                lambda size, latest, at: size > latest and self._clock() - at >= self._interval,
            )

    def latest(self) -> Signed | None:
        """The latest signed checkpoint, None before the first."""
        with self._db.connect() as conn:
            note = conn.execute(
                select(CHECKPOINTS.c.note).order_by(CHECKPOINTS.c.size.desc()).limit(1)
            ).scalar()
        return None if note is None else _signed(str(note))

    def cosigned_note(self, size: int) -> str:
        """The checkpoint of `size` with every cosignature it has collected."""
        with self._db.connect() as conn:
            note = conn.execute(
                select(CHECKPOINTS.c.note).where(CHECKPOINTS.c.size == size)
            ).scalar()
            if note is None:
                raise KeyError(size)
            lines = conn.execute(
                select(COSIGNATURES.c.line)
                .where(COSIGNATURES.c.size == size)
                .order_by(COSIGNATURES.c.witness)
            ).scalars()
            body, signatures = parse_note(str(note))
            signatures.extend(parse_signature_line(str(line)) for line in lines)
        return format_note(body, signatures)

    def add_cosignature(self, size: int, witness: str, signature: NoteSignature) -> None:
        """Keeps a witness's cosignature of checkpoint `size` (the caller verified it)."""
        stmt = insert(self._db, COSIGNATURES).values(
            size=size, witness=witness, line=signature.line(), time=self._clock()
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[COSIGNATURES.c.size, COSIGNATURES.c.witness],
            set_={"line": stmt.excluded.line, "time": stmt.excluded.time},
        )
        with self._db.begin() as conn:
            conn.execute(stmt)

    def cosigned_size(self, witness: str) -> int:
        """The size of the newest checkpoint `witness` cosigned (0 when none)."""
        with self._db.connect() as conn:
            size = conn.execute(
                select(func.max(COSIGNATURES.c.size)).where(COSIGNATURES.c.witness == witness)
            ).scalar()
        return int(size) if size is not None else 0

    def witnessed_size(self, witnesses: int) -> int:
        """The size of the newest checkpoint at least `witnesses` members cosigned (0
        when none)."""
        enough = (
            select(COSIGNATURES.c.size)
            .group_by(COSIGNATURES.c.size)
            .having(func.count(COSIGNATURES.c.witness.distinct()) >= max(witnesses, 1))
            .subquery()
        )
        with self._db.connect() as conn:
            size = conn.execute(select(func.max(enough.c.size))).scalar()
        return int(size) if size is not None else 0

    # -- as a witness of other logs ----------------------------------------------------

    def seen(self, origin: str) -> Seen | None:
        """The last checkpoint this node cosigned of the log `origin`."""
        with self._db.connect() as conn:
            row = conn.execute(
                select(WITNESSED.c.size, WITNESSED.c.root).where(WITNESSED.c.origin == origin)
            ).first()
        return None if row is None else Seen(int(row.size), bytes(row.root))

    def remember_cosigned(self, checkpoint: Checkpoint, note: str) -> None:
        """Keeps `checkpoint` (of another member's log) as the last one cosigned, unless
        one of a larger size is kept already (another replica cosigned it meanwhile:
        the record never goes back)."""
        stmt = insert(self._db, WITNESSED).values(
            origin=checkpoint.origin,
            size=checkpoint.size,
            root=checkpoint.root,
            note=note,
            time=self._clock(),
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[WITNESSED.c.origin],
            set_={
                "size": stmt.excluded.size,
                "root": stmt.excluded.root,
                "note": stmt.excluded.note,
                "time": stmt.excluded.time,
            },
            where=WITNESSED.c.size <= stmt.excluded.size,
        )
        with self._db.begin() as conn:
            conn.execute(stmt)

    # -- proofs ------------------------------------------------------------------------

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        with self._lock:
            self._caught_up(size)
            return self._tree.inclusion_proof(index, size)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        with self._lock:
            self._caught_up(new_size)
            return self._tree.consistency_proof(old_size, new_size)

    def receipt(self, message_id: str, peer: str = "") -> dict[str, Any] | None:
        """The log receipt (trust.audit.inclusion) of the request `message_id` this node
        received lately: its entry, a checkpoint of the log as it is now, signed but not
        kept (consistent with every later one), and the inclusion proof. None when the
        log holds no such entry (or it is too old to be among the recent ones, or
        pruned), or, with `peer`, when the request is not from that member."""
        seq = self._requests.get(message_id)
        if seq is None or seq < self.pruned_below:
            return None
        if self._shared:
            with self._db.connect() as conn:
                body = conn.execute(select(ENTRIES.c.body).where(ENTRIES.c.seq == seq)).scalar()
        else:  # on every reply with receipts on: the log's own connection, as an append
            with self._lock:
                row = self._raw.driver_connection.execute(_SQLITE_BODY, (seq,)).fetchone()
            body = None if row is None else row[0]
        if not body:  # pruned (by another replica)
            return None
        if peer and json.loads(body).get("peer") != peer:
            return None  # another member's request: nothing to say of it
        with self._lock:
            self._caught_up()
            size = self._tree.size
            checkpoint = Checkpoint(self.origin, size, self._tree.root(size))
            proof = self._tree.inclusion_proof(seq, size)
        note_body = checkpoint.body()
        note = format_note(
            note_body, [sign_note(note_body, self.origin, signing_key_of(self._key()))]
        )
        return receipt(seq, str(body), note, proof)

    def entry(self, seq: int) -> dict[str, Any] | None:
        """The entry at `seq`; None when there is none or retention pruned its body."""
        with self._db.connect() as conn:
            body = conn.execute(select(ENTRIES.c.body).where(ENTRIES.c.seq == seq)).scalar()
        return None if not body else dict(json.loads(body))

    # -- retention ---------------------------------------------------------------------

    def prune(
        self,
        *,
        older_than: float | None = None,
        below: int | None = None,
        limit: int | None = None,
    ) -> int:
        """Drops the bodies of the entries written before `older_than` (a time) and of
        those at positions below `below`, up to the latest checkpoint and never beyond
        it, at most `limit` of them at once (appends wait meanwhile); keeps every leaf
        hash. Returns how many were pruned. Drops the checkpoints inside the pruned range
        but the newest one and each witness's newest cosigned one; records the pruning as
        an entry, in the same transaction."""
        if below is None and older_than is None:
            return 0
        with self._lock:
            done = self._prune(older_than, below, limit)
            if done is None:
                return 0
            start, end, seq, leaf = done
            if not self._shared:
                self._tree.append(leaf)
            self.pruned_below = max(self.pruned_below, end)
            self._requests = OrderedDict(
                (m, s) for m, s in self._requests.items() if s >= self.pruned_below
            )
            if not self._shared:
                self._appended(seq + 1)
        if self._shared:
            self._appended(seq + 1)
        return end - start

    def _prune(
        self, older_than: float | None, below: int | None, limit: int | None
    ) -> tuple[int, int, int, bytes] | None:
        """`prune`'s transaction: the range pruned and the position and leaf of its
        entry, None when there is nothing to prune (the caller holds the lock)."""
        with self._db.begin() as conn:
            if self._shared:  # no append, and no other replica's pruning, meanwhile
                conn.execute(select(func.pg_advisory_xact_lock(APPEND_LOCK)))
            start = _pruned_below(conn)
            # Never past the latest checkpoint, nor more than `limit` at once.
            cap = int(conn.execute(select(func.max(CHECKPOINTS.c.size))).scalar() or 0)
            if limit is not None:
                cap = min(cap, start + limit)
            end = min(cap, below) if below is not None else start
            if older_than is not None:
                # The first entry young enough to keep (in order of position: the scan
                # stops there, reading only entries it prunes).
                first = conn.execute(
                    select(ENTRIES.c.seq)
                    .where(
                        ENTRIES.c.seq >= start,
                        ENTRIES.c.seq < cap,
                        self._entry_time() >= older_than,
                    )
                    .order_by(ENTRIES.c.seq)
                    .limit(1)
                ).scalar()
                end = max(end, cap if first is None else int(first))
            if end <= start:
                return None
            anchor = conn.execute(
                select(func.max(CHECKPOINTS.c.size)).where(CHECKPOINTS.c.size <= end)
            ).scalar()
            conn.execute(
                update(ENTRIES)
                .where(ENTRIES.c.seq >= start, ENTRIES.c.seq < end)
                .values(body="", message_id="", task_id="", trace_id="")
            )
            if anchor is not None:
                # Kept: the newest checkpoint over the range, and each witness's newest
                # cosigned one (what witnessing and a witness's record refer to).
                newest = (
                    select(func.max(COSIGNATURES.c.size))
                    .group_by(COSIGNATURES.c.witness)
                    .correlate(None)
                )
                for table in (CHECKPOINTS, COSIGNATURES):
                    kept = or_(table.c.size >= anchor, table.c.size.in_(newest))
                    conn.execute(delete(table).where(not_(kept)))
            stmt = insert(self._db, META).values(key="pruned_below", value=str(end))
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[META.c.key], set_={"value": stmt.excluded.value}
                )
            )
            # The pruning's own entry, in the same transaction: no pruned range
            # without the entry that says so.
            detail = {"pruned_from": start, "pruned_below": end}
            entry = {"v": FORMAT_VERSION, "kind": "retention", "dir": "local", "detail": detail}
            seq, leaf = self._write(conn, entry, "", "")
        return start, end, seq, leaf

    def _entry_time(self) -> Any:
        """The `time` of an entry's body, as SQL (a pruned body has none)."""
        if self._shared:
            value = cast(
                func.jsonb_extract_path_text(cast(ENTRIES.c.body, postgresql.JSONB), "time"),
                Float(precision=53),
            )
            return case((ENTRIES.c.body == "", None), else_=value)
        return func.json_extract(ENTRIES.c.body, "$.time")

    def witnessing_turn(self) -> Turn:
        """The right to send this log's checkpoints to its witnesses, one replica at a
        time (the module docstring): `take()` it before signing the round's checkpoint,
        `release()` it when the round is over."""
        return Turn(self._db if self._shared else None)

    def close(self) -> None:
        with self._lock:
            try:
                if self._shared or self._tree.size > self._checkpointed:
                    self._checkpoint(None, lambda size, latest, _at: size > latest)
            finally:  # a full disk must not leave the database open
                self._release()

    def _release(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None
        db: Database | None = getattr(self, "_db", None)
        if db is None:
            return
        if db.dialect == "sqlite" and event.contains(db.engine, "checkout", self._on_checkout):
            event.remove(db.engine, "checkout", self._on_checkout)
        if self._owned:
            db.dispose()


class Turn:
    """A witnessing round's turn (SqliteAuditLog.witnessing_turn). On PostgreSQL a
    transaction-scoped advisory lock, tried and never waited for (another replica's
    round under way: this one skips, the next round sends what it adds), held by an
    open transaction until `release`; on SQLite always granted (one process)."""

    def __init__(self, db: Database | None) -> None:
        self._db = db
        self._held = ExitStack()

    def take(self) -> bool:
        if self._db is None:
            return True
        try:
            conn = self._held.enter_context(self._db.begin())
            mine = conn.execute(select(func.pg_try_advisory_xact_lock(WITNESSING_LOCK))).scalar()
        except BaseException:
            self._held.close()
            raise
        if not mine:
            self._held.close()
        return bool(mine)

    def release(self) -> None:
        self._held.close()  # the transaction ends: the lock with it
