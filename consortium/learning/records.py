"""Routing records: what an organization learns from each routed task, kept in its own
SQLite database — the learned router's feature vector (never the prompt), the decision,
and the outcome once known. The Flower ClientApp trains the shared routing policy on
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

from consortium.errors import ConsortiumError
from consortium.learning.settings import Label
from consortium.sqlite import connect

LabelSource = Literal["agreement", "feedback", "verified", "seed"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS routing_feature_sets (
    digest     TEXT PRIMARY KEY,
    names      TEXT NOT NULL,
    dim        INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS routing_records (
    record_id        TEXT PRIMARY KEY,
    owner            TEXT NOT NULL,
    created          REAL NOT NULL,
    feature_set      TEXT NOT NULL REFERENCES routing_feature_sets (digest),
    features         BLOB NOT NULL,
    topic            TEXT NOT NULL,
    router           TEXT NOT NULL,
    route            TEXT NOT NULL,
    local_choice     INTEGER,
    final_choice     INTEGER,
    local_adequate   INTEGER,
    escalation_helps INTEGER,
    label_source     TEXT
);
CREATE INDEX IF NOT EXISTS routing_records_by_set ON routing_records (feature_set, created);
"""


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
    """The routing_records table of one organization's database."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = connect(path)
        self._conn.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._known_sets: set[str] = set()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _feature_set(self, names: Sequence[str]) -> str:
        digest = feature_set_digest(names)
        if digest not in self._known_sets:
            self._conn.execute(
                "INSERT OR IGNORE INTO routing_feature_sets (digest, names, dim) VALUES (?, ?, ?)",
                (digest, json.dumps(list(names)), len(names)),
            )
            self._known_sets.add(digest)
        return digest

    def add(self, record: RoutingRecord, names: Sequence[str], *, replace: bool = False) -> None:
        """Stores one record; `replace` overwrites a record with the same id (seeding is
        re-runnable), otherwise a duplicate id is an error."""
        if len(record.features) != len(names):
            raise ValueError(f"{len(record.features)} features for {len(names)} names")
        if not all(math.isfinite(v) for v in record.features):
            raise ValueError("features must be finite numbers")
        self.add_many([record], names, replace=replace)

    def add_many(
        self, records: Sequence[RoutingRecord], names: Sequence[str], *, replace: bool = False
    ) -> None:
        verb = "INSERT OR REPLACE" if replace else "INSERT"
        rows = [
            (
                r.record_id,
                r.owner,
                r.created or time.time(),
                np.asarray(r.features, dtype="<f4").tobytes(),
                r.topic,
                r.router,
                r.route,
                r.local_choice,
                r.final_choice,
                _opt(r.local_adequate),
                _opt(r.escalation_helps),
                r.label_source,
            )
            for r in records
        ]
        with self._lock:
            digest = self._feature_set(names)
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    f"{verb} INTO routing_records (record_id, owner, created, feature_set,"
                    " features, topic, router, route, local_choice, final_choice,"
                    " local_adequate, escalation_helps, label_source)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(*row[:3], digest, *row[3:]) for row in rows],
                )
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

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
        with self._lock:
            row = self._conn.execute(
                "SELECT route, local_choice, final_choice FROM routing_records"
                " WHERE record_id = ? AND owner = ?",
                (record_id, owner),
            ).fetchone()
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
            self._conn.execute(
                "UPDATE routing_records SET local_adequate = ?, escalation_helps = ?,"
                " label_source = ? WHERE record_id = ?",
                (_opt(adequate), _opt(helps), source, record_id),
            )
        return self.get(record_id)

    def get(self, record_id: str) -> RoutingRecord:
        with self._lock:
            row = self._conn.execute(
                "SELECT record_id, owner, created, features, topic, router, route,"
                " local_choice, final_choice, local_adequate, escalation_helps, label_source"
                " FROM routing_records WHERE record_id = ?",
                (record_id,),
            ).fetchone()
        if row is None:
            raise RoutingDataError(f"no routing record {record_id}")
        return _record(row)

    def feature_sets(self) -> dict[str, tuple[str, ...]]:
        with self._lock:
            rows = self._conn.execute("SELECT digest, names FROM routing_feature_sets").fetchall()
        return {d: tuple(json.loads(n)) for d, n in rows}

    def counts(self) -> dict[str, Any]:
        """Rows, labelled rows per label and per source: what /healthz and the CLI show."""
        with self._lock:
            total, adequate, helps = self._conn.execute(
                "SELECT COUNT(*), COUNT(local_adequate), COUNT(escalation_helps)"
                " FROM routing_records"
            ).fetchone()
            sources = dict(
                self._conn.execute(
                    "SELECT label_source, COUNT(*) FROM routing_records"
                    " WHERE label_source IS NOT NULL GROUP BY label_source"
                ).fetchall()
            )
        return {
            "records": total,
            "labelled": {"local_correct": adequate, "escalation_helps": helps},
            "sources": sources,
        }

    def dataset(self, names: Sequence[str], label: Label) -> Dataset:
        """Every record of this feature layout that has the label."""
        column = "local_adequate" if label == "local_correct" else "escalation_helps"
        with self._lock:
            rows = self._conn.execute(
                f"SELECT record_id, features, topic, {column} FROM routing_records"
                f" WHERE feature_set = ? AND {column} IS NOT NULL ORDER BY created, record_id",
                (feature_set_digest(names),),
            ).fetchall()
        dim = len(names)
        x = np.zeros((len(rows), dim), dtype=np.float64)
        for i, row in enumerate(rows):
            x[i] = np.frombuffer(row[1], dtype="<f4")
        return Dataset(
            x=x,
            y=np.asarray([r[3] for r in rows], dtype=np.int64),
            record_ids=tuple(r[0] for r in rows),
            topics=tuple(r[2] for r in rows),
        )


def _record(row: tuple[Any, ...]) -> RoutingRecord:
    def b(v: int | None) -> bool | None:
        return None if v is None else bool(v)

    return RoutingRecord(
        record_id=row[0],
        owner=row[1],
        created=row[2],
        features=tuple(float(v) for v in np.frombuffer(row[3], dtype="<f4")),
        topic=row[4],
        router=row[5],
        route=row[6],
        local_choice=row[7],
        final_choice=row[8],
        local_adequate=b(row[9]),
        escalation_helps=b(row[10]),
        label_source=row[11],
    )
