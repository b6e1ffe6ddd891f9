"""Where reputations survive restarts: `DATA_DIR/trust.sqlite3` (WAL, mode 0600).

One row per peer (model "") and per (peer, model): the two Beta posteriors (answers:
alpha, beta; protocol: p_alpha, p_beta), the state, the offences, when the quarantine
ends, the last change and why; the evidence counts by kind and outcome in a second table.
Members' trust reports (the latest valid one per reporter, as received: trust/reports.py)
and the opinions folded from them (each peer's good and bad pseudo-answers) have a table
each. Every write is one transaction. A second process (`consortium trust show | reset`)
may open the same file while the node runs; the node sees its commits through
`PRAGMA data_version` (`changed()`), as api_keys.py does.

`CanaryLogTable` keeps the canary scheduler's draws (trust/canary_schedule.py's
`CanaryLog`: peer, canary id, when, estimated tokens) in a table of its own in the same
file, over the store's connection, so its writes do not look like another process's
commits to the reputations.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from consortium.errors import ConfigError
from consortium.sqlite import connect
from consortium.trust.canary_schedule import SentCanary
from consortium.trust.files import PRIVATE_FILE
from consortium.trust.reputation import EvidenceKind, PeerState

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reputation (
    peer              TEXT NOT NULL,
    model             TEXT NOT NULL,
    alpha             REAL NOT NULL,
    beta              REAL NOT NULL,
    state             TEXT NOT NULL,
    offences          INTEGER NOT NULL,
    quarantined_until REAL NOT NULL,
    evidence          INTEGER NOT NULL,
    changed_at        REAL NOT NULL,
    reason            TEXT NOT NULL,
    p_alpha           REAL,
    p_beta            REAL,
    last_canary       INTEGER,
    PRIMARY KEY (peer, model)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS evidence_counts (
    peer   TEXT NOT NULL,
    model  TEXT NOT NULL,
    kind   TEXT NOT NULL,
    good   INTEGER NOT NULL,
    n      INTEGER NOT NULL,
    PRIMARY KEY (peer, model, kind, good)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS trust_reports (
    reporter    TEXT PRIMARY KEY,
    issued_at   REAL NOT NULL,
    received_at REAL NOT NULL,
    body        TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS report_opinions (
    peer  TEXT PRIMARY KEY,
    good  REAL NOT NULL,
    bad   REAL NOT NULL
) WITHOUT ROWID;
"""

_COLUMNS = (
    "peer, model, alpha, beta, state, offences, quarantined_until, evidence, changed_at, reason,"
    " p_alpha, p_beta, last_canary"
)
_PLACES = ",".join("?" * len(_COLUMNS.split(",")))
# Columns added after the table first shipped: a file written before them gets them on
# opening, NULL (read as the prior) in the rows it has.
_ADDED = (("p_alpha", "REAL"), ("p_beta", "REAL"), ("last_canary", "INTEGER"))


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
    def key(self) -> tuple[str, str]:
        return (self.peer, self.model)


class ReputationStore:
    """The trust database of one node. `must_exist`: refuse a missing file (the CLI)
    instead of creating it."""

    def __init__(self, path: Path, *, must_exist: bool = False) -> None:
        self.path = path
        if must_exist and not path.is_file():
            raise TrustStoreError(
                "no trust database (the node has recorded nothing yet)", path=str(path)
            )
        try:
            self._conn = connect(path)
            path.chmod(PRIVATE_FILE)
            self._conn.executescript(_SCHEMA)
            self._migrate()
            self._conn.execute(f"SELECT {_COLUMNS} FROM reputation LIMIT 1").fetchall()
        except sqlite3.DatabaseError as e:
            raise TrustStoreError(f"not a usable trust database ({e})", path=str(path)) from None
        self._lock = threading.Lock()
        self._version = self._data_version()

    def _migrate(self) -> None:
        have = {row[1] for row in self._conn.execute("PRAGMA table_info(reputation)")}
        for name, kind in _ADDED:
            if name not in have:
                self._conn.execute(f"ALTER TABLE reputation ADD COLUMN {name} {kind}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _data_version(self) -> int:
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def changed(self) -> bool:
        """Whether another connection committed since the last call (or since opening)."""
        with self._lock:
            version = self._data_version()
            moved = version != self._version
            self._version = version
            return moved

    def load(self) -> dict[tuple[str, str], Record]:
        with self._lock:
            try:
                rows = self._conn.execute(f"SELECT {_COLUMNS} FROM reputation").fetchall()
                counts = self._conn.execute(
                    "SELECT peer, model, kind, good, n FROM evidence_counts"
                ).fetchall()
            except sqlite3.DatabaseError as e:
                raise TrustStoreError(f"cannot read ({e})", path=str(self.path)) from None
        records = {
            (r[0], r[1]): Record(
                r[0],
                r[1],
                r[2],
                r[3],
                cast(PeerState, r[4]),
                r[5],
                r[6],
                r[7],
                r[8],
                r[9],
                p_alpha=r[10],
                p_beta=r[11],
                last_canary=None if r[12] is None else bool(r[12]),
            )
            for r in rows
        }
        for peer, model, kind, good, n in counts:
            rec = records.get((peer, model))
            if rec is not None:
                rec.counts[(cast(EvidenceKind, kind), bool(good))] = int(n)
        return records

    def save(self, records: Iterable[Record]) -> None:
        """Writes these records (rows and counts) in one transaction."""
        with self._lock:
            self._transaction(lambda: self._write(records))

    def replace_peer(self, record: Record) -> None:
        """Deletes every row of `record.peer` (all models) and writes `record`: a reset."""

        def go() -> None:
            self._conn.execute("DELETE FROM reputation WHERE peer = ?", (record.peer,))
            self._conn.execute("DELETE FROM evidence_counts WHERE peer = ?", (record.peer,))
            self._write([record])

        with self._lock:
            self._transaction(go)

    def save_report(self, reporter: str, issued_at: float, received_at: float, body: str) -> bool:
        """Keeps `body` as `reporter`'s latest report unless a newer one is kept already;
        whether it did."""
        kept = False

        def go() -> None:
            nonlocal kept
            row = self._conn.execute(
                "SELECT issued_at FROM trust_reports WHERE reporter = ?", (reporter,)
            ).fetchone()
            if row is not None and float(row[0]) >= issued_at:
                return
            self._conn.execute(
                "INSERT OR REPLACE INTO trust_reports (reporter, issued_at, received_at, body)"
                " VALUES (?,?,?,?)",
                (reporter, issued_at, received_at, body),
            )
            kept = True

        with self._lock:
            self._transaction(go)
        return kept

    def load_reports(self) -> dict[str, str]:
        """The latest report kept per reporter (its JSON body)."""
        with self._lock:
            try:
                rows = self._conn.execute("SELECT reporter, body FROM trust_reports").fetchall()
            except sqlite3.DatabaseError as e:
                raise TrustStoreError(f"cannot read ({e})", path=str(self.path)) from None
        return {str(r): str(b) for r, b in rows}

    def save_opinions(self, opinions: Mapping[str, tuple[float, float]]) -> None:
        """Replaces every peer's opinion (good, bad pseudo-answers) in one transaction."""

        def go() -> None:
            self._conn.execute("DELETE FROM report_opinions")
            self._conn.executemany(
                "INSERT INTO report_opinions (peer, good, bad) VALUES (?,?,?)",
                [(p, g, b) for p, (g, b) in sorted(opinions.items())],
            )

        with self._lock:
            self._transaction(go)

    def load_opinions(self) -> dict[str, tuple[float, float]]:
        with self._lock:
            try:
                rows = self._conn.execute("SELECT peer, good, bad FROM report_opinions").fetchall()
            except sqlite3.DatabaseError as e:
                raise TrustStoreError(f"cannot read ({e})", path=str(self.path)) from None
        return {str(p): (float(g), float(b)) for p, g, b in rows}

    def _write(self, records: Iterable[Record]) -> None:
        for r in records:
            self._conn.execute(
                f"INSERT OR REPLACE INTO reputation ({_COLUMNS}) VALUES ({_PLACES})",
                (
                    r.peer,
                    r.model,
                    r.alpha,
                    r.beta,
                    r.state,
                    r.offences,
                    r.quarantined_until,
                    r.evidence,
                    r.changed_at,
                    r.reason,
                    r.p_alpha,
                    r.p_beta,
                    None if r.last_canary is None else int(r.last_canary),
                ),
            )
            self._conn.executemany(
                "INSERT OR REPLACE INTO evidence_counts (peer, model, kind, good, n)"
                " VALUES (?,?,?,?,?)",
                [(r.peer, r.model, k, int(g), n) for (k, g), n in r.counts.items()],
            )

    def _transaction(self, fn: Callable[[], None]) -> None:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            fn()
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")
        # Our own commit does not move data_version; reading it keeps changed() exact.
        self._version = self._data_version()


_CANARY_SCHEMA = """
CREATE TABLE IF NOT EXISTS canaries_sent (
    peer       TEXT NOT NULL,
    canary_id  TEXT NOT NULL,
    at         REAL NOT NULL,
    cost       INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS canaries_sent_at ON canaries_sent (at);
"""


class CanaryLogTable:
    """The canaries this node sent, in `store`'s file: a `CanaryLog`."""

    def __init__(self, store: ReputationStore) -> None:
        self._store = store
        with store._lock:
            try:
                store._conn.executescript(_CANARY_SCHEMA)
            except sqlite3.DatabaseError as e:
                raise TrustStoreError(
                    f"not a usable trust database ({e})", path=str(store.path)
                ) from None
            store._version = store._data_version()

    def entries(self) -> list[SentCanary]:
        with self._store._lock:
            try:
                rows = self._store._conn.execute(
                    "SELECT peer, canary_id, at, cost FROM canaries_sent"
                ).fetchall()
            except sqlite3.DatabaseError as e:
                raise TrustStoreError(f"cannot read ({e})", path=str(self._store.path)) from None
        return [SentCanary(str(r[0]), str(r[1]), float(r[2]), int(r[3])) for r in rows]

    def add(self, entry: SentCanary, forget_before: float) -> None:
        conn = self._store._conn

        def go() -> None:
            conn.execute("DELETE FROM canaries_sent WHERE at < ?", (forget_before,))
            conn.execute(
                "INSERT INTO canaries_sent (peer, canary_id, at, cost) VALUES (?,?,?,?)",
                (entry.peer, entry.canary_id, entry.at, entry.cost),
            )

        with self._store._lock:
            self._store._transaction(go)
