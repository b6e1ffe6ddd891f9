"""Where reputations survive restarts: the node's "trust" store (consortium/storage:
`DATA_DIR/trust.sqlite3`, WAL, mode 0600; or the schema `consortium_trust` of the
PostgreSQL database every replica of the node shares).

One row per peer (model "") and per (peer, model): the two Beta posteriors (answers:
alpha, beta; protocol: p_alpha, p_beta), the state, the offences, when the quarantine
ends, the last change and why; the evidence counts by kind and outcome in a second table.
Members' trust reports (the latest valid one per reporter, as received: trust/reports.py)
and the opinions folded from them (each peer's good and bad pseudo-answers) have a table
each. `CanaryLogTable` keeps the canary scheduler's draws (trust/canary_schedule.py's
`CanaryLog`) in a fifth.

Several writers — the node's replicas, `consortium trust reset` — share the tables, so no
write is a read-then-write of a value another writer may have moved meanwhile:
- evidence is applied by `update`: one transaction that locks the peer's rows (`SELECT ..
  FOR UPDATE` on PostgreSQL; SQLite's `BEGIN IMMEDIATE` locks the file), reads them as
  committed, lets the engine compute the posteriors and the state from them, and writes
  them back while still holding the lock. The posterior update (forgetting, then adding)
  is an affine map of the stored values, not a sum, so it needs the lock; the counters
  are written as increments besides (`evidence_counts.n = n + d`, `evidence = evidence +
  d`, `offences = offences + d`), so the pieces of evidence every replica records add up
  exactly. Deciding a quarantine also counts the peers already quarantined, under an
  advisory lock on PostgreSQL, so two replicas quarantining two peers at once cannot both
  pass the cap;
- a report is kept by one conditional upsert (only if newer than the one kept);
- the opinions are upserted and the peers without one deleted.

Each reader keeps its records in memory (the engine, trust/reputation_engine.py) and asks
`changed()` whether to reread: on SQLite, whether another connection committed (`PRAGMA
data_version` on a connection kept for it); on PostgreSQL, where no such signal is cheap,
whether the records are older than `refresh_s` — so a replica sees the others' evidence
within `refresh_s` (the node rereads them in the background, off its event loop, before
they are that old: node/app.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    delete,
    select,
    tuple_,
    update,
)
from sqlalchemy import exc as sa_exc

from consortium.errors import ConfigError
from consortium.storage.database import Database
from consortium.storage.migrations import open_sqlite
from consortium.storage.sql import insert
from consortium.trust.canary_schedule import SentCanary
from consortium.trust.reputation import EvidenceKind, PeerState

_T = TypeVar("_T")
Key = tuple[str, str]

METADATA = MetaData()
_REAL = Float(precision=53)
REPUTATION = Table(
    "reputation",
    METADATA,
    Column("peer", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("alpha", _REAL, nullable=False),
    Column("beta", _REAL, nullable=False),
    Column("state", Text, nullable=False),
    Column("offences", Integer, nullable=False),
    Column("quarantined_until", _REAL, nullable=False),
    Column("evidence", Integer, nullable=False),
    Column("changed_at", _REAL, nullable=False),
    Column("reason", Text, nullable=False),
    Column("p_alpha", _REAL),
    Column("p_beta", _REAL),
    Column("last_canary", Integer),
    PrimaryKeyConstraint("peer", "model"),
    sqlite_with_rowid=False,
)
EVIDENCE_COUNTS = Table(
    "evidence_counts",
    METADATA,
    Column("peer", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("good", Integer, nullable=False),
    Column("n", BigInteger, nullable=False),
    PrimaryKeyConstraint("peer", "model", "kind", "good"),
    sqlite_with_rowid=False,
)
TRUST_REPORTS = Table(
    "trust_reports",
    METADATA,
    Column("reporter", Text, nullable=False),
    Column("issued_at", _REAL, nullable=False),
    Column("received_at", _REAL, nullable=False),
    Column("body", Text, nullable=False),
    PrimaryKeyConstraint("reporter"),
    sqlite_with_rowid=False,
)
REPORT_OPINIONS = Table(
    "report_opinions",
    METADATA,
    Column("peer", Text, nullable=False),
    Column("good", _REAL, nullable=False),
    Column("bad", _REAL, nullable=False),
    PrimaryKeyConstraint("peer"),
    sqlite_with_rowid=False,
)
CANARIES_SENT = Table(
    "canaries_sent",
    METADATA,
    Column("peer", Text, nullable=False),
    Column("canary_id", Text, nullable=False),
    Column("at", _REAL, nullable=False),
    Column("cost", Integer, nullable=False),
    Index("canaries_sent_at", "at"),
)
# How stale a PostgreSQL reader's records may get before `changed()` says reread.
REFRESH_S = 2.0
# pg_advisory_xact_lock's key while a quarantine is decided (the cap counts the others).
QUARANTINE_LOCK = 7361245390002


class TrustStoreError(ConfigError):
    """The trust database is missing, unreadable or not a trust database."""


@dataclass
class Record:
    """One peer's (model "") or one (peer, model)'s reputation: the answers posterior
    (`alpha`, `beta`) and the protocol posterior (`p_alpha`, `p_beta`; None: the prior,
    for a row written before it existed). `evidence` counts the
    pieces since the last reset or reinstatement (what `min_evidence` is checked
    against); `counts` every piece since the last reset, by (kind, good)."""

    peer: str
    model: str
    alpha: float
    beta: float
    state: PeerState = "healthy"
    offences: int = 0
    quarantined_until: float = 0.0
    evidence: int = 0
    changed_at: float = 0.0
    reason: str = ""
    counts: dict[tuple[EvidenceKind, bool], int] = field(default_factory=dict)
    p_alpha: float | None = None
    p_beta: float | None = None
    last_canary: bool | None = None  # the latest canary's verdict (None: none yet)

    @property
    def key(self) -> Key:
        return (self.peer, self.model)


def _row(r: Record) -> dict[str, Any]:
    return {
        "peer": r.peer,
        "model": r.model,
        "alpha": r.alpha,
        "beta": r.beta,
        "state": r.state,
        "offences": r.offences,
        "quarantined_until": r.quarantined_until,
        "evidence": r.evidence,
        "changed_at": r.changed_at,
        "reason": r.reason,
        "p_alpha": r.p_alpha,
        "p_beta": r.p_beta,
        "last_canary": None if r.last_canary is None else int(r.last_canary),
    }


def _record(row: Any) -> Record:
    return Record(
        str(row.peer),
        str(row.model),
        float(row.alpha),
        float(row.beta),
        cast(PeerState, row.state),
        int(row.offences),
        float(row.quarantined_until),
        int(row.evidence),
        float(row.changed_at),
        str(row.reason),
        p_alpha=None if row.p_alpha is None else float(row.p_alpha),
        p_beta=None if row.p_beta is None else float(row.p_beta),
        last_canary=None if row.last_canary is None else bool(row.last_canary),
    )


class Locked:
    """What `ReputationStore.update`'s function may ask inside the transaction."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def quarantined(self, now: float) -> set[str]:
        """The peers quarantined now, as committed (on PostgreSQL under an advisory lock
        held until the transaction ends, so quarantines are decided one at a time)."""
        if self._conn.dialect.name == "postgresql":
            self._conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({QUARANTINE_LOCK})")
        rows = self._conn.execute(
            select(REPUTATION.c.peer).where(
                REPUTATION.c.model == "",
                REPUTATION.c.state == "quarantined",
                REPUTATION.c.quarantined_until > now,
            )
        )
        return {str(r[0]) for r in rows}


class ReputationStore:
    """The trust store of one node (see the module docstring). `db`: the node's "trust"
    database, or a Path: that SQLite file (tools, tests, `consortium trust`), which
    `must_exist` refuses to create."""

    def __init__(
        self,
        db: Database | Path,
        *,
        must_exist: bool = False,
        refresh_s: float = REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._owned = not isinstance(db, Database)
        self._lock = threading.Lock()
        self._watch: Any = None  # SQLite: the connection data_version is read on
        self._refresh_s = refresh_s
        self._clock = clock
        self._loaded_at = clock()
        if isinstance(db, Database):
            self.db = db
            self.path: Path | None = None
        else:
            self.path = db
            if must_exist and not db.is_file():
                raise TrustStoreError(
                    "no trust database (the node has recorded nothing yet)", path=str(db)
                )
            try:
                self.db = open_sqlite(db, "trust")
            except sa_exc.DatabaseError as e:
                raise TrustStoreError(
                    f"not a usable trust database ({e.orig})", path=str(db)
                ) from None
        try:
            with self.db.connect() as conn:  # a table of another shape is no trust database
                conn.execute(select(REPUTATION).limit(1)).all()
            if self.db.dialect == "sqlite":
                self._watch = self.db.engine.raw_connection()
        except sa_exc.DatabaseError as e:
            self.close()
            raise TrustStoreError(
                f"not a usable trust database ({e.orig})", path=self.db.where
            ) from None
        self._version = self._data_version()

    @property
    def remote(self) -> bool:
        """Whether the store is a server's (PostgreSQL): its calls are worth making off
        the event loop."""
        return self.db.dialect != "sqlite"

    def close(self) -> None:
        with self._lock:
            if self._watch is not None:
                self._watch.close()
                self._watch = None
        if self._owned:
            self.db.dispose()

    def _data_version(self) -> int:
        if self._watch is None:
            return 0
        with self._lock:
            cur = self._watch.cursor()
            try:
                cur.execute("PRAGMA data_version")
                return int(cur.fetchone()[0])
            finally:
                cur.close()

    def changed(self) -> bool:
        """Whether to reread: another connection committed since the last call (SQLite),
        or the records read last are older than `refresh_s` (PostgreSQL)."""
        if self._watch is None:
            return self._clock() - self._loaded_at >= self._refresh_s
        version = self._data_version()
        moved = version != self._version
        self._version = version
        return moved

    @contextmanager
    def _writing(self) -> Any:
        with self.db.begin() as conn:
            yield conn
        # Our own commit: not another writer's (changed() stays exact on SQLite).
        self._version = self._data_version()

    def load(self) -> dict[Key, Record]:
        self._loaded_at = self._clock()
        with self.db.connect() as conn:
            rows = conn.execute(select(REPUTATION)).all()
            counts = conn.execute(select(EVIDENCE_COUNTS)).all()
        records = {(str(r.peer), str(r.model)): _record(r) for r in rows}
        for c in counts:
            rec = records.get((str(c.peer), str(c.model)))
            if rec is not None:
                rec.counts[(cast(EvidenceKind, c.kind), bool(c.good))] = int(c.n)
        return records

    def update(
        self,
        keys: Sequence[Key],
        fresh: Callable[[str, str], Record],
        change: Callable[[dict[Key, Record], Locked], _T],
    ) -> tuple[_T, dict[Key, Record]]:
        """One transaction: the rows of `keys` (made from `fresh` where missing) locked
        and read as committed, `change(records, locked)` run on them (it changes them in
        place), and what it changed written back; returns its result and the records as
        written."""
        with self._writing() as conn:
            made = [_row(fresh(peer, model)) for peer, model in keys]
            conn.execute(
                insert(self.db, REPUTATION).values(made).on_conflict_do_nothing(),
            )
            where = tuple_(REPUTATION.c.peer, REPUTATION.c.model).in_(list(keys))
            rows = conn.execute(
                select(REPUTATION).where(where).order_by(REPUTATION.c.model).with_for_update()
            ).all()
            records = {(str(r.peer), str(r.model)): _record(r) for r in rows}
            counted = tuple_(EVIDENCE_COUNTS.c.peer, EVIDENCE_COUNTS.c.model).in_(list(keys))
            for c in conn.execute(select(EVIDENCE_COUNTS).where(counted)):
                rec = records[(str(c.peer), str(c.model))]
                rec.counts[(cast(EvidenceKind, c.kind), bool(c.good))] = int(c.n)
            before = deepcopy(records)
            result = change(records, Locked(conn))
            for key, rec in records.items():
                self._write_changes(conn, before[key], rec)
        return result, records

    def _write_changes(self, conn: Connection, old: Record, new: Record) -> None:
        if new == old:
            return
        values: dict[str, Any] = _row(new)
        del values["peer"], values["model"]
        # Counters as increments (the row is locked: the same value, and no count lost
        # even to a writer that does not lock it).
        values["evidence"] = REPUTATION.c.evidence + (new.evidence - old.evidence)
        values["offences"] = REPUTATION.c.offences + (new.offences - old.offences)
        conn.execute(
            update(REPUTATION)
            .where(REPUTATION.c.peer == new.peer, REPUTATION.c.model == new.model)
            .values(**values)
        )
        for (kind, good), n in new.counts.items():
            d = n - old.counts.get((kind, good), 0)
            if d == 0:
                continue
            stmt = insert(self.db, EVIDENCE_COUNTS).values(
                peer=new.peer, model=new.model, kind=kind, good=int(good), n=d
            )
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=list(EVIDENCE_COUNTS.primary_key.columns),
                    set_={"n": EVIDENCE_COUNTS.c.n + stmt.excluded.n},
                )
            )

    def save(self, records: Iterable[Record]) -> None:
        """Writes these records (rows and counts) as they are, in one transaction: for
        tools that set reputations outright (not the engine, which uses `update`)."""
        with self._writing() as conn:
            self._write(conn, list(records))

    def _write(self, conn: Connection, records: list[Record]) -> None:
        for r in records:
            stmt = insert(self.db, REPUTATION).values(_row(r))
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[REPUTATION.c.peer, REPUTATION.c.model],
                    set_={k: stmt.excluded[k] for k in _row(r) if k not in ("peer", "model")},
                )
            )
            for (kind, good), n in r.counts.items():
                counts = insert(self.db, EVIDENCE_COUNTS).values(
                    peer=r.peer, model=r.model, kind=kind, good=int(good), n=n
                )
                conn.execute(
                    counts.on_conflict_do_update(
                        index_elements=list(EVIDENCE_COUNTS.primary_key.columns),
                        set_={"n": counts.excluded.n},
                    )
                )

    def replace_peer(self, record: Record) -> None:
        """Deletes every row of `record.peer` (all models) and writes `record`: a reset."""
        with self._writing() as conn:
            conn.execute(delete(REPUTATION).where(REPUTATION.c.peer == record.peer))
            conn.execute(delete(EVIDENCE_COUNTS).where(EVIDENCE_COUNTS.c.peer == record.peer))
            self._write(conn, [record])

    def save_report(self, reporter: str, issued_at: float, received_at: float, body: str) -> bool:
        """Keeps `body` as `reporter`'s latest report unless a newer one is kept already
        (one conditional upsert); whether it did."""
        stmt = insert(self.db, TRUST_REPORTS).values(
            reporter=reporter, issued_at=issued_at, received_at=received_at, body=body
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[TRUST_REPORTS.c.reporter],
            set_={
                "issued_at": stmt.excluded.issued_at,
                "received_at": stmt.excluded.received_at,
                "body": stmt.excluded.body,
            },
            where=TRUST_REPORTS.c.issued_at < stmt.excluded.issued_at,
        ).returning(TRUST_REPORTS.c.reporter)  # a row only when this call kept it
        with self._writing() as conn:
            return conn.execute(stmt).first() is not None

    def load_reports(self) -> dict[str, str]:
        """The latest report kept per reporter (its JSON body)."""
        with self.db.connect() as conn:
            rows = conn.execute(select(TRUST_REPORTS.c.reporter, TRUST_REPORTS.c.body)).all()
        return {str(r): str(b) for r, b in rows}

    def save_opinions(self, opinions: Mapping[str, tuple[float, float]]) -> None:
        """Replaces every peer's opinion (good, bad pseudo-answers) in one transaction."""
        with self._writing() as conn:
            conn.execute(
                delete(REPORT_OPINIONS).where(REPORT_OPINIONS.c.peer.not_in(list(opinions)))
            )
            for peer, (good, bad) in sorted(opinions.items()):
                stmt = insert(self.db, REPORT_OPINIONS).values(peer=peer, good=good, bad=bad)
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=[REPORT_OPINIONS.c.peer],
                        set_={"good": stmt.excluded.good, "bad": stmt.excluded.bad},
                    )
                )

    def load_opinions(self) -> dict[str, tuple[float, float]]:
        with self.db.connect() as conn:
            rows = conn.execute(select(REPORT_OPINIONS)).all()
        return {str(r.peer): (float(r.good), float(r.bad)) for r in rows}


class CanaryLogTable:
    """The canaries this node (every replica) sent, in `store`'s database: a `CanaryLog`."""

    def __init__(self, store: ReputationStore) -> None:
        self._store = store

    def entries(self) -> list[SentCanary]:
        with self._store.db.connect() as conn:
            rows = conn.execute(select(CANARIES_SENT)).all()
        return [SentCanary(str(r.peer), str(r.canary_id), float(r.at), int(r.cost)) for r in rows]

    def add(self, entry: SentCanary, forget_before: float) -> None:
        with self._store._writing() as conn:
            conn.execute(delete(CANARIES_SENT).where(CANARIES_SENT.c.at < forget_before))
            conn.execute(
                CANARIES_SENT.insert().values(
                    peer=entry.peer, canary_id=entry.canary_id, at=entry.at, cost=entry.cost
                )
            )
