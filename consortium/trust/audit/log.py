"""A node's tamper-evident audit log: an append-only SQLite file (`DATA_DIR/audit.sqlite3`)
whose entries are the leaves of an RFC 6962 / 9162 Merkle tree, with checkpoints signed
by the organization's key (C2SP tlog-checkpoint in a signed note) and the cosignatures
its peers add (C2SP tlog-cosignature).

An entry is one RFC 8785 JSON object: its position (`seq`), time, kind, direction, the
peer, identifiers (message, task, trace and span ids) and digests (the signed message's
digest and JWS, the request digest it answers), the verdict, and a small `detail` of
identifiers and numbers. Never message text. The leaf is exactly the entry's canonical
bytes, so anyone holding an entry can recompute its leaf hash.

Every append is its own committed transaction before `append` returns: the hooks call
it before a message is sent or acted on, so after a crash (even SIGKILL) the log holds
every message the node acted on. A committed transaction in SQLite's WAL survives a crash
of the process whatever the synchronous setting (the write is in the operating
system's hands), so `durable_against="crash"` runs synchronous=OFF; "power" runs
synchronous=FULL, an fsync per entry, to survive a power cut too. The table has no
secondary index: each would cost a page write per entry (the entries' index columns
serve an auditor's scans of a copy), and a receipt finds its request's entry through an
in-memory map of the requests received lately.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from jwcrypto import jwk
from opentelemetry import trace

from consortium.errors import ConsortiumError
from consortium.sqlite import StorageConnection
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

FORMAT_VERSION = 1
MAX_FIELD_CHARS = 256  # what a refusal records of unauthenticated claims
MAX_RECENT_REQUESTS = 4096  # requests whose entry a receipt can still find
Direction = Literal["in", "out", "local"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY,
    body TEXT NOT NULL,
    leaf BLOB NOT NULL,
    kind TEXT NOT NULL,
    message_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    trace_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    size INTEGER PRIMARY KEY,
    note TEXT NOT NULL,
    time REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS cosignatures (
    size INTEGER NOT NULL,
    witness TEXT NOT NULL,
    line TEXT NOT NULL,
    time REAL NOT NULL,
    PRIMARY KEY (size, witness)
);
CREATE TABLE IF NOT EXISTS witnessed (
    origin TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    root BLOB NOT NULL,
    note TEXT NOT NULL,
    time REAL NOT NULL
);
"""


def pruned_below(db: sqlite3.Connection) -> int:
    """The position below which retention dropped the entries' bodies (0: none)."""
    row = db.execute("SELECT value FROM meta WHERE key = 'pruned_below'").fetchone()
    return int(row[0]) if row is not None else 0


class AuditError(ConsortiumError):
    """The audit log cannot be used: damaged, from another organization, or unreadable."""


@dataclass(frozen=True)
class Signed:
    """A checkpoint and its note text (the log's own signature, no cosignatures)."""

    checkpoint: Checkpoint
    note: str


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


class SqliteAuditLog:
    """One organization's audit log; thread-safe. Implements trust.audit.AuditLog."""

    def __init__(
        self,
        path: Path,
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
        self.path = path
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
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None, factory=StorageConnection
        )
        try:
            path.chmod(0o600)
            self._db.execute("PRAGMA journal_mode=WAL")
            sync = "FULL" if durable_against == "power" else "OFF"
            self._db.execute(f"PRAGMA synchronous={sync}")
            self._db.executescript(SCHEMA)
            self._claim_origin()
            self.pruned_below = pruned_below(self._db)
            self._tree = self._load()
            self._checkpointed, self._checkpoint_time = self._last_checkpoint()
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise AuditError(f"the audit log {path} cannot be read: {e}") from None
        except BaseException:
            self._db.close()
            raise

    # -- opening -----------------------------------------------------------------------

    def _claim_origin(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'origin'").fetchone()
        if row is None:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT INTO meta VALUES ('origin', ?)", (self.origin,))
            self._db.execute("INSERT INTO meta VALUES ('version', ?)", (str(FORMAT_VERSION),))
            self._db.execute("COMMIT")
        elif row[0] != self.origin:
            raise AuditError(f"the audit log {self.path} is the log of {row[0]}, not {self.origin}")

    def _load(self) -> Tree:
        """The tree of every entry, each leaf checked against its entry (a pruned entry's
        stored leaf is taken as it is: the checkpoint check below still covers it)."""
        tree = Tree()
        for seq, body, leaf in self._db.execute("SELECT seq, body, leaf FROM entries ORDER BY seq"):
            if seq != tree.size:
                raise self._damaged(f"entry {tree.size} is missing (next is {seq})")
            if seq < self.pruned_below and body == "":
                tree.append(bytes(leaf))
                continue
            if not isinstance(body, str) or leaf_hash(body.encode()) != leaf:
                raise self._damaged(f"entry {seq} does not match its leaf hash")
            tree.append(bytes(leaf))
        return tree

    def _last_checkpoint(self) -> tuple[int, float]:
        row = self._db.execute(
            "SELECT size, note, time FROM checkpoints ORDER BY size DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return 0, self._clock()
        size, note, at = row
        try:
            body, _ = parse_note(note)
            checkpoint = Checkpoint.parse(body)
        except ValueError as e:
            raise self._damaged(f"checkpoint {size} cannot be read: {e}") from None
        if checkpoint.size != size or size > self._tree.size:
            raise self._damaged(f"checkpoint {size} covers entries the log no longer has")
        if checkpoint.root != self._tree.root(size):
            raise self._damaged(f"checkpoint {size} does not match the entries")
        return int(size), float(at)

    def _damaged(self, what: str) -> AuditError:
        return AuditError(
            f"the audit log {self.path} fails its own check: {what}. Keep the file for the "
            "auditors (consortium audit verify), and move it aside to start a new log"
        )

    # -- appending ---------------------------------------------------------------------

    @property
    def size(self) -> int:
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
        with self._lock:
            return self._insert(entry, message_id, task_id)

    def _insert(self, entry: dict[str, Any], message_id: str, task_id: str) -> int:
        """Writes `entry` at the next position (the caller holds the lock)."""
        seq = self._tree.size
        entry["seq"] = seq
        entry["time"] = round(self._clock(), 6)
        body = _canonical(entry)
        leaf = leaf_hash(body)
        self._db.execute(
            "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                seq,
                body.decode(),
                leaf,
                entry["kind"],
                message_id,
                task_id,
                entry.get("trace", ""),
            ),
        )
        self._tree.append(leaf)
        if self._tree.size - self._checkpointed >= self._every:
            self._checkpoint()
        return seq

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

    def _checkpoint(self) -> Signed:
        """Signs a checkpoint of the whole tree (the caller holds the lock)."""
        size = self._tree.size
        checkpoint = Checkpoint(self.origin, size, self._tree.root(size))
        body = checkpoint.body()
        note = format_note(body, [sign_note(body, self.origin, signing_key_of(self._key()))])
        now = self._clock()
        self._db.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?)", (size, note, now))
        self._checkpointed, self._checkpoint_time = size, now
        return Signed(checkpoint, note)

    def checkpoint(self) -> Signed:
        """A signed checkpoint of the log as it is now (a new one when it grew)."""
        with self._lock:
            if self._checkpointed == self._tree.size and self._tree.size > 0:
                latest = self.latest()
                if latest is not None:
                    return latest
            return self._checkpoint()

    def maybe_checkpoint(self) -> Signed | None:
        """A new checkpoint when entries came after the last one and the interval passed."""
        with self._lock:
            fresh = self._tree.size > self._checkpointed
            if not fresh or self._clock() - self._checkpoint_time < self._interval:
                return None
            return self._checkpoint()

    def latest(self) -> Signed | None:
        """The latest signed checkpoint, None before the first."""
        row = self._db.execute("SELECT note FROM checkpoints ORDER BY size DESC LIMIT 1").fetchone()
        if row is None:
            return None
        body, _ = parse_note(row[0])
        return Signed(Checkpoint.parse(body), row[0])

    def cosigned_note(self, size: int) -> str:
        """The checkpoint of `size` with every cosignature it has collected."""
        row = self._db.execute("SELECT note FROM checkpoints WHERE size = ?", (size,)).fetchone()
        if row is None:
            raise KeyError(size)
        body, signatures = parse_note(row[0])
        lines = self._db.execute(
            "SELECT line FROM cosignatures WHERE size = ? ORDER BY witness", (size,)
        ).fetchall()
        signatures.extend(parse_signature_line(line) for (line,) in lines)
        return format_note(body, signatures)

    def add_cosignature(self, size: int, witness: str, signature: NoteSignature) -> None:
        """Keeps a witness's cosignature of checkpoint `size` (the caller verified it)."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO cosignatures VALUES (?, ?, ?, ?)",
                (size, witness, signature.line(), self._clock()),
            )

    def cosigned_size(self, witness: str) -> int:
        """The size of the newest checkpoint `witness` cosigned (0 when none)."""
        row = self._db.execute(
            "SELECT MAX(size) FROM cosignatures WHERE witness = ?", (witness,)
        ).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def witnessed_size(self, witnesses: int) -> int:
        """The size of the newest checkpoint at least `witnesses` members cosigned (0
        when none)."""
        row = self._db.execute(
            "SELECT MAX(size) FROM (SELECT size FROM cosignatures GROUP BY size "
            "HAVING COUNT(DISTINCT witness) >= ?)",
            (max(witnesses, 1),),
        ).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    # -- as a witness of other logs ----------------------------------------------------

    def seen(self, origin: str) -> Seen | None:
        """The last checkpoint this node cosigned of the log `origin`."""
        row = self._db.execute(
            "SELECT size, root FROM witnessed WHERE origin = ?", (origin,)
        ).fetchone()
        return None if row is None else Seen(int(row[0]), bytes(row[1]))

    def remember_cosigned(self, checkpoint: Checkpoint, note: str) -> None:
        """Keeps `checkpoint` (of another member's log) as the last one cosigned."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO witnessed VALUES (?, ?, ?, ?, ?)",
                (checkpoint.origin, checkpoint.size, checkpoint.root, note, self._clock()),
            )

    # -- proofs ------------------------------------------------------------------------

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        with self._lock:
            return self._tree.inclusion_proof(index, size)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        with self._lock:
            return self._tree.consistency_proof(old_size, new_size)

    def receipt(self, message_id: str, peer: str = "") -> dict[str, Any] | None:
        """The log receipt (trust.audit.inclusion) of the request `message_id` this node
        received lately: its entry, a checkpoint of the log as it is now, signed but not
        kept (consistent with every later one), and the inclusion proof. None when the
        log holds no such entry (or it is too old to be among the recent ones), or, with
        `peer`, when the request is not from that member."""
        seq = self._requests.get(message_id)
        if seq is None or seq < self.pruned_below:
            return None
        row = self._db.execute("SELECT body FROM entries WHERE seq = ?", (seq,)).fetchone()
        if peer and json.loads(row[0]).get("peer") != peer:
            return None  # another member's request: nothing to say of it
        with self._lock:
            size = self._tree.size
            checkpoint = Checkpoint(self.origin, size, self._tree.root(size))
            proof = self._tree.inclusion_proof(seq, size)
        body = checkpoint.body()
        note = format_note(body, [sign_note(body, self.origin, signing_key_of(self._key()))])
        return receipt(seq, str(row[0]), note, proof)

    def entry(self, seq: int) -> dict[str, Any] | None:
        """The entry at `seq`; None when there is none or retention pruned its body."""
        row = self._db.execute("SELECT body FROM entries WHERE seq = ?", (seq,)).fetchone()
        return None if row is None or not row[0] else dict(json.loads(row[0]))

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
        it, at most `limit` of them at once (the lock is held meanwhile); keeps every
        leaf hash. Returns how many were pruned. Drops the checkpoints inside the pruned
        range but the newest one and each witness's newest cosigned one; records the
        pruning as an entry."""
        with self._lock:
            if below is None and older_than is None:
                return 0
            # Never past the latest checkpoint, nor more than `limit` at once.
            cap = self._checkpointed
            if limit is not None:
                cap = min(cap, self.pruned_below + limit)
            end = min(cap, below) if below is not None else self.pruned_below
            if older_than is not None:
                # The first entry young enough to keep (in order of position: the scan
                # stops there, reading only entries it prunes).
                row = self._db.execute(
                    "SELECT seq FROM entries WHERE seq >= ? AND seq < ? "
                    "AND json_extract(body, '$.time') >= ? ORDER BY seq LIMIT 1",
                    (self.pruned_below, cap, older_than),
                ).fetchone()
                end = max(end, cap if row is None else int(row[0]))
            if end <= self.pruned_below:
                return 0
            start = self.pruned_below
            anchor = self._db.execute(
                "SELECT MAX(size) FROM checkpoints WHERE size <= ?", (end,)
            ).fetchone()[0]
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "UPDATE entries SET body = '', message_id = '', task_id = '', trace_id = '' "
                    "WHERE seq >= ? AND seq < ?",
                    (start, end),
                )
                if anchor is not None:
                    # Kept: the newest checkpoint over the range, and each witness's newest
                    # cosigned one (what witnessing and a witness's record refer to).
                    kept = (
                        "size >= ? OR size IN (SELECT MAX(size) FROM cosignatures GROUP BY witness)"
                    )
                    self._db.execute(f"DELETE FROM checkpoints WHERE NOT ({kept})", (anchor,))
                    self._db.execute(f"DELETE FROM cosignatures WHERE NOT ({kept})", (anchor,))
                self._db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('pruned_below', ?)", (str(end),)
                )
                # The pruning's own entry, in the same transaction: no pruned range
                # without the entry that says so.
                detail = {"pruned_from": start, "pruned_below": end}
                entry = {"v": FORMAT_VERSION, "kind": "retention", "dir": "local"}
                self._insert({**entry, "detail": detail}, "", "")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                # An entry or checkpoint taken in memory is undone too.
                self._tree = self._load()
                self._checkpointed, self._checkpoint_time = self._last_checkpoint()
                raise
            self.pruned_below = end
            self._requests = OrderedDict(
                (m, seq) for m, seq in self._requests.items() if seq >= end
            )
        return end - start

    def close(self) -> None:
        with self._lock:
            try:
                if self._tree.size > self._checkpointed:
                    self._checkpoint()
            finally:  # a full disk must not leave the database open
                self._db.close()
