"""Routing records: what an organization learns from each routed task, kept in its own
storage (node.sqlite3, or PostgreSQL shared by a node's replicas: `RoutingRecords`) — the
learned router's feature vector (never the prompt), the decision, and the outcome once
known. The Flower ClientApp trains the shared routing policy on
these rows; only weights and metrics leave the organization.

An outcome ("was the local answer adequate?") comes from one of:
- `agreement`: the task was escalated and the local draft's choice matched the answer;
- `feedback`: the task's owner said so later through A2A message metadata, either
  directly (adequate: true/false) or by naming the correct option (`verified`);
- `seed`: `consortium federation seed-routing-data` filled the table from the benchmark
  caches, where both models' correctness is known.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from sqlalchemy import (
    Column,
    Connection,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    func,
    select,
    update,
)

from consortium.errors import ConsortiumError
from consortium.learning.settings import Label
from consortium.storage.database import Database
from consortium.storage.migrations import open_sqlite
from consortium.storage.sql import insert

LabelSource = Literal["agreement", "feedback", "verified", "seed"]

METADATA = MetaData()
FEATURE_SETS = Table(
    "routing_feature_sets",
    METADATA,
    Column("digest", Text, primary_key=True),
    Column("names", Text, nullable=False),
    Column("dim", Integer, nullable=False),
)
RECORDS = Table(
    "routing_records",
    METADATA,
    Column("record_id", Text, primary_key=True),
    Column("owner", Text, nullable=False),
    Column("created", Float(precision=53), nullable=False),
    Column("feature_set", Text, ForeignKey("routing_feature_sets.digest"), nullable=False),
    Column("features", LargeBinary, nullable=False),
    Column("topic", Text, nullable=False),
    Column("router", Text, nullable=False),
    Column("route", Text, nullable=False),
    Column("local_choice", Integer),
    Column("final_choice", Integer),
    Column("local_adequate", Integer),
    Column("escalation_helps", Integer),
    Column("label_source", Text),
    Index("routing_records_by_set", "feature_set", "created"),
)
_COLUMNS = (
    "record_id",
    "owner",
    "created",
    "features",
    "topic",
    "router",
    "route",
    "local_choice",
    "final_choice",
    "local_adequate",
    "escalation_helps",
    "label_source",
)


class RoutingDataError(ConsortiumError):
    """A routing record or feedback refers to something that does not exist or is not
    the caller's."""


def feature_set_digest(names: Sequence[str]) -> str:
    """Names a feature vector layout: the first 16 hex digits of SHA-256 over the names."""
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RoutingRecord:
    record_id: str
    owner: str
    features: tuple[float, ...]
    router: str
    route: Literal["local", "escalated"]
    local_choice: int | None = None
    final_choice: int | None = None
    local_adequate: bool | None = None
    escalation_helps: bool | None = None
    label_source: LabelSource | None = None
    # What a record is about, coarsely (a question source, a topic cluster): lets a
    # benchmark split records by topic; empty on a node.
    topic: str = ""
    created: float = 0.0


@dataclass(frozen=True)
class Dataset:
    """The labelled records of one feature layout, in insertion order."""

    x: npt.NDArray[np.float64]
    y: npt.NDArray[np.int64]
    record_ids: tuple[str, ...]
    topics: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.y)


def _opt(v: bool | None) -> int | None:
    return None if v is None else int(v)


class RoutingRecords:
    """The routing records of one organization: the node's "records" store (its
    Database: node.sqlite3's routing tables, or the schema `consortium_records` of the
    PostgreSQL database the node's replicas share), or a Path: that SQLite file (the
    Flower apps, `consortium train`, seeding and the benchmarks open org-N.sqlite3 files
    so). Safe to call from any thread.

    Replicas: a record's id is its task's id, added once by the replica that answered
    the task (a second add of one id is refused, not merged); feedback may come through
    any replica and labels the record under its row lock (`SELECT .. FOR UPDATE` on
    PostgreSQL), so it reads the route and choices it labels from the committed row;
    the training reads every replica's records."""

    def __init__(self, db: Database | Path) -> None:
        self._owned = not isinstance(db, Database)  # opened here: closed here
        self.db = db if isinstance(db, Database) else open_sqlite(db, "records")
        self._lock = threading.Lock()
        self._known_sets: set[str] = set()

    @property
    def remote(self) -> bool:
        """Whether the store is a server's (PostgreSQL): its calls are worth making off
        the event loop."""
        return self.db.dialect != "sqlite"

    def close(self) -> None:
        if self._owned:
            self.db.dispose()

    def _feature_set(self, conn: Connection, names: Sequence[str]) -> str:
        digest = feature_set_digest(names)
        with self._lock:
            known = digest in self._known_sets
        if not known:
            conn.execute(
                insert(self.db, FEATURE_SETS)
                .values(digest=digest, names=json.dumps(list(names)), dim=len(names))
                .on_conflict_do_nothing()
            )
        return digest

    def add(self, record: RoutingRecord, names: Sequence[str], *, replace: bool = False) -> None:
        """Stores one record; `replace` overwrites a record with the same id (seeding is
        re-runnable), otherwise a duplicate id is an error (RoutingDataError)."""
        if len(record.features) != len(names):
            raise ValueError(f"{len(record.features)} features for {len(names)} names")
        if not all(math.isfinite(v) for v in record.features):
            raise ValueError("features must be finite numbers")
        self.add_many([record], names, replace=replace)

    def add_many(
        self, records: Sequence[RoutingRecord], names: Sequence[str], *, replace: bool = False
    ) -> None:
        """Stores the records in one transaction: all of them, or (a duplicate id without
        `replace`: RoutingDataError) none."""
        if not records:
            return
        rows = [
            {
                "record_id": r.record_id,
                "owner": r.owner,
                "created": r.created or time.time(),
                "features": np.asarray(r.features, dtype="<f4").tobytes(),
                "topic": r.topic,
                "router": r.router,
                "route": r.route,
                "local_choice": r.local_choice,
                "final_choice": r.final_choice,
                "local_adequate": _opt(r.local_adequate),
                "escalation_helps": _opt(r.escalation_helps),
                "label_source": r.label_source,
            }
            for r in records
        ]
        if replace:  # the last of an id wins, as one statement may change a row once
            rows = list({row["record_id"]: row for row in rows}.values())
        elif len({r.record_id for r in records}) != len(records):
            raise RoutingDataError("a routing record id is repeated in the batch")
        with self.db.begin() as conn:
            digest = self._feature_set(conn, names)
            for row in rows:
                row["feature_set"] = digest
            stmt = insert(self.db, RECORDS)
            if replace:
                stmt = stmt.on_conflict_do_update(
                    index_elements=[RECORDS.c.record_id],
                    set_={c: stmt.excluded[c] for c in rows[0] if c != "record_id"},
                )
                conn.execute(stmt, rows)
            else:
                # One statement per batch: a row only for each id this call stored.
                stored = conn.execute(
                    stmt.on_conflict_do_nothing().returning(RECORDS.c.record_id), rows
                ).all()
                if len(stored) != len(rows):
                    kept = {str(r[0]) for r in stored}
                    first = next(r.record_id for r in records if r.record_id not in kept)
                    raise RoutingDataError(f"routing record {first} exists already")
        with self._lock:
            self._known_sets.add(digest)

    def feedback(
        self,
        record_id: str,
        owner: str,
        *,
        adequate: bool | None = None,
        correct_choice: int | None = None,
    ) -> RoutingRecord:
        """Labels a record from its owner's feedback: either the local answer was adequate
        or not, or the correct option (which labels both outcomes when the task was
        escalated). A record of another owner is reported as unknown."""
        if (adequate is None) == (correct_choice is None):
            raise ValueError("feedback needs exactly one of adequate and correct")
        with self.db.begin() as conn:
            row = conn.execute(
                select(RECORDS.c.route, RECORDS.c.local_choice, RECORDS.c.final_choice)
                .where(RECORDS.c.record_id == record_id, RECORDS.c.owner == owner)
                .with_for_update()
            ).first()
            if row is None:
                raise RoutingDataError(f"no routed task {record_id} of yours to give feedback on")
            route, local_choice, final_choice = row
            helps: bool | None = None
            source: LabelSource = "feedback"
            if correct_choice is not None:
                if local_choice is None:
                    raise RoutingDataError(f"task {record_id} has no local choice to check")
                adequate = local_choice == correct_choice
                source = "verified"
                if route == "escalated" and final_choice is not None:
                    helps = (not adequate) and final_choice == correct_choice
            conn.execute(
                update(RECORDS)
                .where(RECORDS.c.record_id == record_id)
                .values(
                    local_adequate=_opt(adequate),
                    escalation_helps=_opt(helps),
                    label_source=source,
                )
            )
        return self.get(record_id)

    def get(self, record_id: str) -> RoutingRecord:
        with self.db.connect() as conn:
            row = conn.execute(
                select(*(RECORDS.c[c] for c in _COLUMNS)).where(RECORDS.c.record_id == record_id)
            ).first()
        if row is None:
            raise RoutingDataError(f"no routing record {record_id}")
        return _record(tuple(row))

    def feature_sets(self) -> dict[str, tuple[str, ...]]:
        with self.db.connect() as conn:
            rows = conn.execute(select(FEATURE_SETS.c.digest, FEATURE_SETS.c.names)).all()
        return {str(d): tuple(json.loads(n)) for d, n in rows}

    def counts(self) -> dict[str, Any]:
        """Rows, labelled rows per label and per source: what /healthz and the CLI show."""
        with self.db.connect() as conn:
            total, adequate, helps = conn.execute(
                select(
                    func.count(),
                    func.count(RECORDS.c.local_adequate),
                    func.count(RECORDS.c.escalation_helps),
                ).select_from(RECORDS)
            ).one()
            sources = {
                str(source): int(n)
                for source, n in conn.execute(
                    select(RECORDS.c.label_source, func.count())
                    .where(RECORDS.c.label_source.is_not(None))
                    .group_by(RECORDS.c.label_source)
                ).all()
            }
        return {
            "records": int(total),
            "labelled": {"local_correct": int(adequate), "escalation_helps": int(helps)},
            "sources": sources,
        }

    def dataset(self, names: Sequence[str], label: Label) -> Dataset:
        """Every record of this feature layout that has the label."""
        column = (
            RECORDS.c.local_adequate if label == "local_correct" else RECORDS.c.escalation_helps
        )
        with self.db.connect() as conn:
            rows = conn.execute(
                select(RECORDS.c.record_id, RECORDS.c.features, RECORDS.c.topic, column)
                .where(RECORDS.c.feature_set == feature_set_digest(names), column.is_not(None))
                .order_by(RECORDS.c.created, RECORDS.c.record_id)
            ).all()
        dim = len(names)
        x = np.zeros((len(rows), dim), dtype=np.float64)
        for i, row in enumerate(rows):
            x[i] = np.frombuffer(bytes(row[1]), dtype="<f4")
        return Dataset(
            x=x,
            y=np.asarray([r[3] for r in rows], dtype=np.int64),
            record_ids=tuple(str(r[0]) for r in rows),
            topics=tuple(str(r[2]) for r in rows),
        )


def _record(row: tuple[Any, ...]) -> RoutingRecord:
    def b(v: int | None) -> bool | None:
        return None if v is None else bool(v)

    return RoutingRecord(
        record_id=row[0],
        owner=row[1],
        created=row[2],
        features=tuple(float(v) for v in np.frombuffer(bytes(row[3]), dtype="<f4")),
        topic=row[4],
        router=row[5],
        route=row[6],
        local_choice=row[7],
        final_choice=row[8],
        local_adequate=b(row[9]),
        escalation_helps=b(row[10]),
        label_source=row[11],
    )
