"""An auditor's check of one organization's audit log (trust.audit.log), however old:
every finding names the entry, checkpoint or cosignature it is about, never a traceback,
and the log is never modified (the check reads a private copy of the database).

What is checked:
- the database itself (SQLite's integrity check), and that it is the log it claims to be
  (its origin: federation and organization);
- every entry: contiguous positions, canonical RFC 8785 JSON, the position it states,
  its index columns, and its leaf hash;
- every checkpoint: a C2SP signed note of this log, signed by a key the organization held
  when the checkpoint's last entry was written (key history: every roster version the
  auditor has), and whose root is the root of the entries it covers (recomputed from
  the entries, never from stored hashes). All checkpoints are checked against one tree,
  so each is consistent with every earlier one;
- every cosignature: a C2SP tlog-cosignature of that checkpoint by another member's key;
- witnessing: with `witnessed_by` N, the newest checkpoint cosigned by N members, and the
  entries after it (not yet witnessed);
- what other members cosigned of this log (`witness_views`: their records of the latest
  checkpoint they cosigned): a view whose root the entries do not give is a fork or a
  rollback.

A log whose retention pruned old entries (`meta.pruned_below`: trust.audit.log) keeps
their leaf hashes only: the report says which range was pruned (a warning), and the tree
over those stored hashes must still give every checkpoint's root and every witness's
record, so the pruned range is still bound to what was signed and witnessed, but its
entries themselves can no longer be read or checked. A checkpoint whose last entry was
pruned is checked against the keys the organization held when the log signed it (the
checkpoint's stored time).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from nacl.signing import VerifyKey

from consortium.trust.audit.log import pruned_below
from consortium.trust.audit.merkle import Tree, leaf_hash
from consortium.trust.audit.notes import (
    Checkpoint,
    NoteError,
    NoteSignature,
    cosignature_key_hash,
    ed25519_key_hash,
    parse_note,
    parse_signature_line,
    verify_cosignature,
    verify_note,
)
from consortium.trust.jws import canonical

Severity = Literal["error", "warning"]
INDEX_COLUMNS = (
    ("kind", "kind"),
    ("message_id", "msg"),
    ("task_id", "task"),
    ("trace_id", "trace"),
)


@dataclass(frozen=True)
class Finding:
    severity: Severity
    where: str  # "entry 12", "checkpoint 256", "database", ...
    what: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.where}: {self.what}"


class KeyHistory(Protocol):
    """The public keys an organization held at a time (every roster version known)."""

    def keys(self, org: str, when: float) -> Sequence[VerifyKey]: ...

    def members(self) -> frozenset[str]: ...


@dataclass(frozen=True)
class WitnessView:
    """What one member recorded as the latest checkpoint it cosigned of a log."""

    witness: str
    size: int
    root: bytes


@dataclass
class LogReport:
    origin: str
    org: str
    entries: int = 0
    checkpoints: int = 0
    latest_checkpoint: int = 0
    pruned_below: int = 0  # entries 0..pruned_below-1 have only their leaf hash (retention)
    witnessed_size: int = 0  # the newest checkpoint with enough cosignatures
    cosigners: dict[int, list[str]] = field(default_factory=dict)  # size -> witnesses
    findings: list[Finding] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)  # the entries, parsed

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def error(self, where: str, what: str) -> None:
        self.findings.append(Finding("error", where, what))

    def warn(self, where: str, what: str) -> None:
        self.findings.append(Finding("warning", where, what))


def snapshot(path: Path, into: Path) -> Path:
    """A private copy of the database (and its WAL) to read: checking never writes the
    auditee's files, not even SQLite's shared-memory index."""
    copy = into / path.name
    shutil.copyfile(path, copy)
    wal = path.with_name(path.name + "-wal")
    if wal.exists():
        shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
    return copy


def verify_log(
    path: Path,
    history: KeyHistory,
    *,
    origin: str,
    org: str,
    witnessed_by: int = 0,
    witness_views: Iterable[WitnessView] = (),
) -> LogReport:
    """Every check of the module docstring; the report lists what failed."""
    report = LogReport(origin=origin, org=org)
    if not path.is_file():
        report.error("database", f"no audit log at {path}")
        return report
    with tempfile.TemporaryDirectory(prefix="consortium-audit-") as tmp:
        try:
            copy = snapshot(path, Path(tmp))
            db = sqlite3.connect(copy)
        except (OSError, sqlite3.Error) as e:
            report.error("database", f"cannot be read: {e}")
            return report
        try:
            _check(db, history, report, witnessed_by, list(witness_views))
        except sqlite3.DatabaseError as e:
            report.error("database", f"damaged: {e}")
        finally:
            db.close()
    return report


def _check(
    db: sqlite3.Connection,
    history: KeyHistory,
    report: LogReport,
    witnessed_by: int,
    views: list[WitnessView],
) -> None:
    problems = [row[0] for row in db.execute("PRAGMA integrity_check")]
    if problems != ["ok"]:
        report.error("database", "fails SQLite's integrity check: " + "; ".join(problems[:3]))
    row = db.execute("SELECT value FROM meta WHERE key = 'origin'").fetchone()
    if row is None:
        report.error("database", "states no origin: not a Consortium audit log")
        return
    if row[0] != report.origin:
        report.error("database", f"is the log of {row[0]}, not {report.origin}")
        return
    report.pruned_below = pruned_below(db)
    tree, times = _entries(db, report)
    _checkpoints(db, history, report, tree, times)
    _cosignatures(db, history, report)
    _witnessing(report, witnessed_by)
    for view in views:
        _view(report, tree, view)


def _entries(db: sqlite3.Connection, report: LogReport) -> tuple[Tree, list[float]]:
    """The tree of the entries' own leaf hashes, and each entry's time."""
    tree = Tree()
    times: list[float] = []
    columns = ", ".join(c for c, _ in INDEX_COLUMNS)
    for seq, body, leaf, *index in db.execute(
        f"SELECT seq, body, leaf, {columns} FROM entries ORDER BY seq"
    ):
        if seq != tree.size:
            gap = f"entry {tree.size}" if seq == tree.size + 1 else f"entries {tree.size}-{seq - 1}"
            report.error(gap, "missing: deleted or never written")
        raw = body.encode() if isinstance(body, str) else bytes(body or b"")
        if seq < report.pruned_below and not raw:
            while tree.size < seq:
                tree.append(leaf_hash(b""))
                times.append(0.0)
            tree.append(bytes(leaf))  # the only trace of it: checked by the roots below
            times.append(0.0)
            continue
        where = f"entry {seq}"
        parsed = _parse(raw)
        if parsed is None:
            report.error(where, "is not a JSON object")
            parsed = {}
        elif canonical(parsed) != raw:
            report.error(where, "is not in canonical (RFC 8785) form")
        if parsed.get("seq") != seq:
            report.error(f"entry {seq}", f"states position {parsed.get('seq')!r}: moved")
        computed = leaf_hash(raw)
        if computed != leaf:
            report.error(f"entry {seq}", "differs from its stored leaf hash: edited")
        for (column, key), value in zip(INDEX_COLUMNS, index, strict=True):
            if value != parsed.get(key, ""):
                report.error(f"entry {seq}", f"its {column} column differs from the entry")
        while tree.size < seq:  # keep positions: a gap must not shift later entries
            tree.append(leaf_hash(b""))
            times.append(0.0)
        tree.append(computed)
        t = parsed.get("time")
        times.append(float(t) if isinstance(t, int | float) else 0.0)
        report.bodies.append(parsed)
    report.entries = tree.size
    if report.pruned_below:
        last = min(report.pruned_below, tree.size) - 1
        report.warn(
            f"entries 0-{last}",
            "pruned by retention: only their leaf hashes are kept (their roots are checked "
            "against the checkpoints and witnesses; the entries cannot be read)",
        )
        details = [b.get("detail") for b in report.bodies if b.get("kind") == "retention"]
        stated = [
            d["pruned_below"]
            for d in details
            if isinstance(d, dict) and isinstance(d.get("pruned_below"), int)
        ]
        if max(stated, default=0) < report.pruned_below:
            report.error(
                f"entries 0-{last}",
                "pruned, but no retention entry of the log records it: bodies removed",
            )
    return tree, times


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _checkpoints(
    db: sqlite3.Connection,
    history: KeyHistory,
    report: LogReport,
    tree: Tree,
    times: list[float],
) -> None:
    for size, note, signed_at in db.execute(
        "SELECT size, note, time FROM checkpoints ORDER BY size"
    ):
        where = f"checkpoint {size}"
        report.checkpoints += 1
        try:
            body, signatures = parse_note(str(note))
            checkpoint = Checkpoint.parse(body)
        except NoteError as e:
            report.error(where, f"cannot be read: {e}")
            continue
        if checkpoint.origin != report.origin or checkpoint.size != size:
            report.error(where, f"is a checkpoint of {checkpoint.origin} at {checkpoint.size}")
            continue
        report.latest_checkpoint = max(report.latest_checkpoint, size)
        if size > tree.size:
            report.error(where, f"covers {size} entries; the log has {tree.size}: entries lost")
            continue
        if checkpoint.root != tree.root(size):
            report.error(where, "its root is not the root of the entries: an entry changed")
        when = times[size - 1] if size else 0.0
        if 0 < size <= report.pruned_below:
            when = float(signed_at)  # its last entry's time went with the entry
        if not _signed_by_org(body, signatures, history, report, when):
            held = datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds")
            report.error(where, f"is not signed by a key {report.org} held at {held}")


def _signed_by_org(
    body: str,
    signatures: Sequence[NoteSignature],
    history: KeyHistory,
    report: LogReport,
    when: float,
) -> bool:
    for key in history.keys(report.org, when):
        expected = ed25519_key_hash(report.origin, bytes(key))
        for sig in signatures:
            if sig.name != report.origin or sig.key_hash != expected:
                continue
            try:
                verify_note(body, sig, report.origin, key)
            except NoteError:
                continue
            return True
    return False


def _cosignatures(db: sqlite3.Connection, history: KeyHistory, report: LogReport) -> None:
    notes = dict(db.execute("SELECT size, note FROM checkpoints"))
    for size, witness, line in db.execute(
        "SELECT size, witness, line FROM cosignatures ORDER BY size, witness"
    ):
        where = f"cosignature of checkpoint {size} by {witness}"
        if size not in notes:
            report.error(where, "cosigns a checkpoint the log does not have")
            continue
        try:
            body, _ = parse_note(str(notes[size]))
            checkpoint = Checkpoint.parse(body)
            sig = parse_signature_line(str(line))
        except NoteError as e:
            report.error(where, f"cannot be read: {e}")
            continue
        if witness == report.org or witness not in history.members():
            report.error(where, f"{witness} is not another member of the federation")
            continue
        if not _cosigned_by(checkpoint, sig, witness, history):
            report.error(where, f"does not verify under a key {witness} held")
            continue
        report.cosigners.setdefault(int(size), []).append(str(witness))


def _cosigned_by(
    checkpoint: Checkpoint, sig: NoteSignature, witness: str, history: KeyHistory
) -> bool:
    name = sig.name
    timestamp = int.from_bytes(sig.signature[:8], "big") if len(sig.signature) >= 8 else 0
    for key in history.keys(witness, float(timestamp)):
        if sig.key_hash != cosignature_key_hash(name, bytes(key)):
            continue
        try:
            verify_cosignature(checkpoint, sig, name, key)
        except NoteError:
            continue
        return True
    return False


def _witnessing(report: LogReport, witnessed_by: int) -> None:
    if witnessed_by <= 0:
        return
    enough = [s for s, names in report.cosigners.items() if len(set(names)) >= witnessed_by]
    report.witnessed_size = max(enough, default=0)
    if report.entries and not enough:
        report.error("log", f"no checkpoint has {witnessed_by} cosignatures: never witnessed")
    elif report.entries > report.witnessed_size:
        tail = report.entries - report.witnessed_size
        report.warn("log", f"the last {tail} entries are not witnessed yet")


def _view(report: LogReport, tree: Tree, view: WitnessView) -> None:
    where = f"{view.witness}'s record of this log"
    if view.size > tree.size:
        report.error(
            where,
            f"{view.witness} cosigned {view.size} entries; the log has {tree.size}: rolled back",
        )
    elif tree.root(view.size) != view.root:
        report.error(where, f"the entries do not give the root {view.witness} cosigned: forked")


def witness_view(path: Path, origin: str, witness: str) -> WitnessView | None:
    """What `witness`'s own audit log (at `path`) records as the latest checkpoint it
    cosigned of the log `origin`; None when it cosigned none (or keeps no log). Raises
    OSError or sqlite3.Error when the file cannot be read."""
    if not path.exists():
        return None
    with tempfile.TemporaryDirectory(prefix="consortium-audit-") as tmp:
        db = sqlite3.connect(snapshot(path, Path(tmp)))
        try:
            row = db.execute(
                "SELECT size, root FROM witnessed WHERE origin = ?", (origin,)
            ).fetchone()
        finally:
            db.close()
    return None if row is None else WitnessView(witness, int(row[0]), bytes(row[1]))


ENTRY_PREFIX = b'{"entry":'


def export_lines(path: Path) -> Iterator[bytes]:
    """The log as UTF-8 JSON lines (without their newline), read from a private copy:
    every entry as `{"entry":BODY}`, BODY its bytes exactly as hashed (its RFC 8785 JSON:
    SHA-256 of 0x00 || BODY is its leaf), an entry pruned by retention as
    `{"pruned":{"seq":N,"leaf":HEX}}` (its position and leaf hash), then every
    checkpoint's note with its cosignatures. Raises OSError or sqlite3.Error when it
    cannot be read."""
    with tempfile.TemporaryDirectory(prefix="consortium-audit-") as tmp:
        db = sqlite3.connect(snapshot(path, Path(tmp)))
        try:
            for seq, body, leaf in db.execute("SELECT seq, body, leaf FROM entries ORDER BY seq"):
                if not body:  # pruned by retention: its leaf hash is all that is left
                    pruned = {"seq": seq, "leaf": bytes(leaf).hex()}
                    yield json.dumps({"pruned": pruned}, separators=(",", ":")).encode()
                    continue
                # Never re-serialized: json.dumps would escape what is not ASCII.
                yield ENTRY_PREFIX + str(body).encode() + b"}"
            cosigned: dict[int, list[str]] = {}
            for size, line in db.execute("SELECT size, line FROM cosignatures ORDER BY size"):
                cosigned.setdefault(int(size), []).append(str(line))
            for size, note in db.execute("SELECT size, note FROM checkpoints ORDER BY size"):
                checkpoint = {"size": size, "note": note, "cosignatures": cosigned.get(size, [])}
                yield json.dumps({"checkpoint": checkpoint}, separators=(",", ":")).encode()
        finally:
            db.close()
