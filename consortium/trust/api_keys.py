"""API keys for a node's local users and apps, kept in SQLite so that `consortium keys
create|list|revoke` take effect on a running node without a restart.

A key is `csk_<id>_<secret>`: `id` (12 hex digits) names the key and is what task
ownership, logs and `keys list` show; `secret` is 256 random bits (base64url). Only the
SHA-256 of the secret is stored: a 256-bit secret cannot be guessed, so a slow password
hash would add latency to every call and no protection. Comparison is constant-time.
A key is printed once, when it is created.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from consortium.errors import ConfigError
from consortium.sqlite import connect

PREFIX = "csk_"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_TOKEN = re.compile(r"^csk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    hash        BLOB NOT NULL,
    admin       INTEGER NOT NULL,
    created_at  REAL NOT NULL,
    expires_at  REAL,
    revoked_at  REAL
) WITHOUT ROWID;
"""


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


def _row(row: tuple[str, str, int, float, float | None, float | None]) -> ApiKey:
    return ApiKey(row[0], row[1], bool(row[2]), row[3], row[4], row[5])


class ApiKeys:
    """The key table of one node (`DATA_DIR/api-keys.sqlite3`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = connect(path)
        path.chmod(0o600)
        self._lock = threading.Lock()
        with self._lock:
            self._conn.executescript(_SCHEMA)
        # Keys by id, valid while the database is unchanged: `PRAGMA data_version` moves
        # whenever another connection (`consortium keys ...`) commits, so a revocation
        # takes effect on the next call without a query per call.
        self._cache: dict[str, tuple[ApiKey, bytes] | None] = {}
        self._version = -1

    def close(self) -> None:
        with self._lock:
            self._conn.close()

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
        with self._lock:
            self._cache.clear()
            self._conn.execute(
                "INSERT INTO api_keys (id, name, hash, admin, created_at, expires_at, revoked_at)"
                " VALUES (?, ?, ?, ?, ?, ?, NULL)",
                (key_id, name, _hash(secret), int(admin), now, expires_at),
            )
        return ApiKey(key_id, name, admin, now, expires_at, None), f"{PREFIX}{key_id}_{secret}"

    def all(self) -> list[ApiKey]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, name, admin, created_at, expires_at, revoked_at FROM api_keys"
                " ORDER BY created_at"
            ).fetchall()
        return [_row(r) for r in rows]

    def revoke(self, key: str) -> list[ApiKey]:
        """Revokes the key with this id, or every active key with this name."""
        now = time.time()
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, name, admin, created_at, expires_at, revoked_at FROM api_keys"
                " WHERE (id = ? OR name = ?) AND revoked_at IS NULL",
                (key, key),
            ).fetchall()
            if not rows:
                raise ApiKeyError(f"no active key with id or name {key!r}", key="KEY")
            self._conn.executemany(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ?", [(now, r[0]) for r in rows]
            )
            self._cache.clear()
        return [_row((*r[:5], now)) for r in rows]

    def authenticate(self, token: str, now: float | None = None) -> ApiKey | None:
        """The active key this token is, or None (unknown, wrong secret, expired, revoked)."""
        m = _TOKEN.match(token)
        if m is None:
            return None
        key_id, secret = m.groups()
        entry = self._lookup(key_id)
        # Hash and compare even for an unknown id, so timing does not tell ids apart.
        expected = entry[1] if entry is not None else b"\0" * 32
        if not hmac.compare_digest(_hash(secret), expected) or entry is None:
            return None
        key = entry[0]
        if key.state(time.time() if now is None else now) != "active":
            return None
        return key

    def _lookup(self, key_id: str) -> tuple[ApiKey, bytes] | None:
        with self._lock:
            version = self._conn.execute("PRAGMA data_version").fetchone()[0]
            if version != self._version:
                self._cache.clear()
                self._version = version
            if key_id in self._cache:
                return self._cache[key_id]
            row = self._conn.execute(
                "SELECT id, name, admin, created_at, expires_at, revoked_at, hash FROM api_keys"
                " WHERE id = ?",
                (key_id,),
            ).fetchone()
            entry = (_row(row[:6]), bytes(row[6])) if row is not None else None
            if len(self._cache) > 10_000:  # unknown ids are cached too: bound the memory
                self._cache.clear()
            self._cache[key_id] = entry
            return entry


def parse_token(value: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` value, or None."""
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
