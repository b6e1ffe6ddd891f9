"""API keys for a node's local users and apps, in the node's storage (consortium/storage:
`DATA_DIR/api-keys.sqlite3`, or the PostgreSQL database every replica of the node
shares), so that `consortium keys create|list|revoke` take effect on a running node
without a restart, and a key made through one replica works on every other.

A key is `csk_<id>_<secret>`: `id` (12 hex digits) names the key and is what task
ownership, logs and `keys list` show; `secret` is 256 random bits (base64url). Only the
SHA-256 of the secret is stored: a 256-bit secret cannot be guessed, so a slow password
hash would add latency to every call and no protection. Comparison is constant-time.
A key is printed once, when it is created.

Keys are looked up by id and remembered (unknown ids too, so a flood of made-up keys
costs no query each):

- on SQLite, until the file changes: `PRAGMA data_version` (a local read, on the
  caller's thread) moves whenever another connection — `consortium keys ...` — commits,
  so a revocation takes effect on the very next call;
- on PostgreSQL, for at most `CACHE_S` seconds: no query per call, and a lookup that
  must reach the database runs off the event loop (`authenticate_async`). A key revoked
  through this replica stops working here at once; through another replica or the CLI,
  on every replica within CACHE_S (5 s) — the bound the README states. A key created
  anywhere works everywhere at once unless its id was tried (and remembered as unknown)
  in the last CACHE_S, which a random 48-bit id makes a non-event.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Float, Integer, LargeBinary, MetaData, Table, Text, or_, select

from consortium.errors import ConfigError
from consortium.storage.database import Database
from consortium.storage.migrations import open_sqlite

PREFIX = "csk_"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_TOKEN = re.compile(r"^csk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
# How long a PostgreSQL replica trusts what it read of a key (see the module docstring).
CACHE_S = 5.0
# Keys remembered at most (unknown ids are remembered too: the memory is bounded).
CACHE_ENTRIES = 10_000

METADATA = MetaData()
API_KEYS = Table(
    "api_keys",
    METADATA,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("hash", LargeBinary, nullable=False),
    Column("admin", Integer, nullable=False),
    Column("created_at", Float(precision=53), nullable=False),
    Column("expires_at", Float(precision=53)),
    Column("revoked_at", Float(precision=53)),
    sqlite_with_rowid=False,
)
_SHOWN = (
    API_KEYS.c.id,
    API_KEYS.c.name,
    API_KEYS.c.admin,
    API_KEYS.c.created_at,
    API_KEYS.c.expires_at,
    API_KEYS.c.revoked_at,
)


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    admin: bool
    created_at: float
    expires_at: float | None
    revoked_at: float | None

    def state(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    @property
    def owner(self) -> str:
        """The scope this key's tasks are stored under."""
        return f"key:{self.id}"


class ApiKeyError(ConfigError):
    """A key cannot be created or revoked as asked."""


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


def _row(row: Any) -> ApiKey:
    return ApiKey(row[0], row[1], bool(row[2]), row[3], row[4], row[5])


_Entry = tuple[ApiKey, bytes] | None


class ApiKeys:
    """The key table of one node. `db`: the node's api_keys store (a Path: that SQLite
    file, for the CLI and tests). `cache_s` (default CACHE_S) and `clock` time the
    PostgreSQL cache."""

    def __init__(
        self,
        db: Database | Path,
        *,
        cache_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._owned = not isinstance(db, Database)  # opened here: closed here
        self._db = db if isinstance(db, Database) else open_sqlite(db, "api_keys")
        self._remote = self._db.dialect != "sqlite"
        self._cache_s = CACHE_S if cache_s is None else cache_s
        self._clock = clock
        self._lock = threading.Lock()
        # id -> (entry, when read); on SQLite valid while `_version` holds.
        self._cache: dict[str, tuple[_Entry, float]] = {}
        self._version = -1
        # Moves whenever the cache is cleared: a read that began before a revocation
        # here is not remembered after it.
        self._generation = 0
        # SQLite: one connection kept out of the pool for `PRAGMA data_version`, which
        # compares commits against *this* connection (and runs outside any transaction).
        self._watch: Any = None if self._remote else self._db.engine.raw_connection()

    def close(self) -> None:
        with self._lock:
            if self._watch is not None:
                self._watch.close()
                self._watch = None
        if self._owned:
            self._db.dispose()

    def create(
        self, name: str, *, expires_at: float | None = None, admin: bool = False
    ) -> tuple[ApiKey, str]:
        """A new key and its token (shown once; only its hash is kept)."""
        if not re.match(NAME_PATTERN, name):
            raise ApiKeyError(
                "a key name is 1-64 letters, digits, dots, dashes or underscores", key="NAME"
            )
        now = time.time()
        if expires_at is not None and expires_at <= now:
            raise ApiKeyError("the expiry is in the past", key="--expires")
        key_id = secrets.token_hex(6)
        secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
        with self._db.begin() as conn:
            conn.execute(
                API_KEYS.insert().values(
                    id=key_id,
                    name=name,
                    hash=_hash(secret),
                    admin=int(admin),
                    created_at=now,
                    expires_at=expires_at,
                    revoked_at=None,
                )
            )
        with self._lock:
            self._cache.pop(key_id, None)
        return ApiKey(key_id, name, admin, now, expires_at, None), f"{PREFIX}{key_id}_{secret}"

    def all(self) -> list[ApiKey]:
        with self._db.connect() as conn:
            rows = conn.execute(select(*_SHOWN).order_by(API_KEYS.c.created_at)).all()
        return [_row(r) for r in rows]

    def revoke(self, key: str) -> list[ApiKey]:
        """Revokes the key with this id, or every active key with this name."""
        now = time.time()
        # One UPDATE .. RETURNING: two replicas revoking at once each report only the
        # keys they revoked, and none is revoked twice.
        stmt = (
            API_KEYS.update()
            .where(or_(API_KEYS.c.id == key, API_KEYS.c.name == key))
            .where(API_KEYS.c.revoked_at.is_(None))
            .values(revoked_at=now)
            .returning(*_SHOWN)
        )
        with self._db.begin() as conn:
            rows = conn.execute(stmt).all()
        if not rows:
            raise ApiKeyError(f"no active key with id or name {key!r}", key="KEY")
        with self._lock:
            self._cache.clear()
            self._generation += 1
        return sorted((_row(r) for r in rows), key=lambda k: k.created_at)

    def authenticate(self, token: str, now: float | None = None) -> ApiKey | None:
        """The active key this token is, or None (unknown, wrong secret, expired, revoked).
        May query the database: async code calls `authenticate_async`."""
        parsed = _parse(token)
        if parsed is None:
            return None
        key_id, secret = parsed
        found, entry = self._cached(key_id)
        if not found:
            entry = self._fetch(key_id)
        return _check(secret, entry, now)

    async def authenticate_async(self, token: str, now: float | None = None) -> ApiKey | None:
        """`authenticate` for the event loop: on PostgreSQL a lookup the cache cannot
        answer runs in the storage's threads; on SQLite it runs inline (a local B-tree
        read costs less than the hop to a thread)."""
        parsed = _parse(token)
        if parsed is None:
            return None
        key_id, secret = parsed
        found, entry = self._cached(key_id)
        if not found:
            if self._remote:
                entry = await self._db.run(lambda: self._fetch(key_id))
            else:
                entry = self._fetch(key_id)
        return _check(secret, entry, now)

    def _cached(self, key_id: str) -> tuple[bool, _Entry]:
        """(True, what is known of key_id) if the cache may answer; (False, None) if the
        database must."""
        with self._lock:
            if self._remote:
                hit = self._cache.get(key_id)
                if hit is not None and self._clock() - hit[1] < self._cache_s:
                    return True, hit[0]
                return False, None
            if self._watch is None:
                return False, None
            cursor = self._watch.cursor()
            try:
                version = cursor.execute("PRAGMA data_version").fetchone()[0]
            finally:
                cursor.close()
            if version != self._version:
                self._cache.clear()
                self._generation += 1
                self._version = version
            hit = self._cache.get(key_id)
            return (True, hit[0]) if hit is not None else (False, None)

    def _fetch(self, key_id: str) -> _Entry:
        started = self._clock()
        with self._lock:
            generation = self._generation
        with self._db.connect() as conn:
            row = conn.execute(
                select(*_SHOWN, API_KEYS.c.hash).where(API_KEYS.c.id == key_id)
            ).first()
        entry = (_row(row), bytes(row[6])) if row is not None else None
        with self._lock:
            if generation != self._generation:
                return entry
            if len(self._cache) >= CACHE_ENTRIES:
                self._cache.clear()
            # Timed from before the read: the entry is never trusted past CACHE_S of it.
            self._cache[key_id] = (entry, started)
        return entry


def _parse(token: str) -> tuple[str, str] | None:
    m = _TOKEN.match(token)
    return None if m is None else (m.group(1), m.group(2))


def _check(secret: str, entry: _Entry, now: float | None) -> ApiKey | None:
    # Hash and compare even for an unknown id, so timing does not tell ids apart.
    expected = entry[1] if entry is not None else b"\0" * 32
    if not hmac.compare_digest(_hash(secret), expected) or entry is None:
        return None
    key = entry[0]
    if key.state(time.time() if now is None else now) != "active":
        return None
    return key


def parse_token(value: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` value, or None."""
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
