"""Replay cache: remembers (sender, message id) pairs until they could no longer pass the
freshness check, in SQLite (WAL), so a captured message is refused even after a restart."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from consortium.sqlite import connect

# One B-tree (no rowid, no expiry index): the insert sits on every message's path, and the
# once-a-minute purge can afford a scan of at most one skew window of entries.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS replay (
    sender     TEXT NOT NULL,
    message_id TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (sender, message_id)
) WITHOUT ROWID;
"""


class ReplayCache:
    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self._conn = connect(path)
        self._conn.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._clock = clock
        self._last_purge = 0.0

    def first_sighting(self, sender: str, message_id: str, expires_at: float) -> bool:
        """Records the pair; True if it was not seen before (and not yet expired)."""
        now = self._clock()
        with self._lock:
            if now - self._last_purge > 60:
                self._conn.execute("DELETE FROM replay WHERE expires_at < ?", (now,))
                self._last_purge = now
            cur = self._conn.execute(
                "INSERT INTO replay (sender, message_id, expires_at) VALUES (?, ?, ?)"
                " ON CONFLICT (sender, message_id) DO UPDATE SET expires_at = excluded.expires_at"
                " WHERE replay.expires_at < ?",
                (sender, message_id, expires_at, now),
            )
            return cur.rowcount == 1

    def close(self) -> None:
        with self._lock:
            self._conn.close()


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
