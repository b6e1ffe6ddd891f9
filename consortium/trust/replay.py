"""Replay cache: remembers (sender, message id) pairs until they could no longer pass the
freshness check, in the node's storage (consortium/storage: an SQLite file, or the
PostgreSQL database every replica of the node shares), so a captured message is refused
even after a restart, and by every replica once one accepted it.

The check is one statement — an insert that succeeds only for a pair not seen (or long
expired) — never a read followed by a write, so two replicas given the same message at
the same moment cannot both accept it: the database's unique key decides."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Column, Float, MetaData, PrimaryKeyConstraint, Table, Text, delete

from consortium.storage.database import Database
from consortium.storage.migrations import open_sqlite
from consortium.storage.sql import insert

METADATA = MetaData()
# One B-tree (no rowid, no expiry index): the insert sits on every message's path, and the
# once-a-minute purge can afford a scan of at most one skew window of entries.
REPLAY = Table(
    "replay",
    METADATA,
    Column("sender", Text, nullable=False),
    Column("message_id", Text, nullable=False),
    Column("expires_at", Float(precision=53), nullable=False),
    PrimaryKeyConstraint("sender", "message_id"),
    sqlite_with_rowid=False,
)
PURGE_EVERY_S = 60.0


class ReplayCache:
    """`db`: the node's replay store (a Path: that SQLite file, for tools and tests)."""

    def __init__(self, db: Database | Path, clock: Callable[[], float] = time.time) -> None:
        self._owned = not isinstance(db, Database)  # opened here: closed here
        self._db = db if isinstance(db, Database) else open_sqlite(db, "replay")
        self._lock = threading.Lock()
        self._clock = clock
        self._last_purge = 0.0

    def first_sighting(self, sender: str, message_id: str, expires_at: float) -> bool:
        """Records the pair; True if it was not seen before (and not yet expired)."""
        now = self._clock()
        with self._lock:
            purge = now - self._last_purge > PURGE_EVERY_S
            if purge:
                self._last_purge = now
        stmt = insert(self._db, REPLAY).values(
            sender=sender, message_id=message_id, expires_at=expires_at
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[REPLAY.c.sender, REPLAY.c.message_id],
            set_={"expires_at": stmt.excluded.expires_at},
            where=REPLAY.c.expires_at < now,
        ).returning(REPLAY.c.expires_at)  # a row only when this call stored the pair
        with self._db.begin() as conn:
            if purge:
                conn.execute(delete(REPLAY).where(REPLAY.c.expires_at < now))
            return conn.execute(stmt).first() is not None

    def close(self) -> None:
        if self._owned:
            self._db.dispose()


class AnswerReplayCache:
    """The replay check for answers, in memory. An answer is bound to the digest of one
    request, which carries a fresh nonce and is never signed twice, so it can be accepted
    only while that request's call is open; after a restart no call is. What remains to
    catch is the same event delivered twice within a call (a duplicated artifact chunk)."""

    def __init__(self, clock: Callable[[], float] = time.time, limit: int = 100_000) -> None:
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._clock = clock
        self._limit = limit

    def first_sighting(self, sender: str, message_id: str, expires_at: float) -> bool:
        now = self._clock()
        with self._lock:
            if len(self._seen) >= self._limit:
                self._seen = {k: t for k, t in self._seen.items() if t >= now}
            key = (sender, message_id)
            if self._seen.get(key, -1.0) >= now:
                return False
            self._seen[key] = expires_at
            return True
