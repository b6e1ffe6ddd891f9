"""What an auditor reads of each organization for `consortium audit trace`
(node/audit_trace.py), never writing any of it: the roster history (every archived
roster version), the audit log verified (trust.audit.verify, on a private copy) with
what the other given organizations cosigned of it, the spans the node exported as OTLP
JSON lines (telemetry exporter "file"), and the signed messages in its task store (read
from a private copy of the SQLite file, or from its PostgreSQL database with one
SELECT). What cannot be read is one line each, for the
report; nothing here raises for a damaged file.
"""

from __future__ import annotations

import base64
import binascii
import json
import sqlite3
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from a2a.types import a2a_pb2
from google.protobuf.message import DecodeError
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from consortium.errors import ConfigError, StorageUnavailable
from consortium.node.audit import RosterHistory, load_history, verify_organization
from consortium.node.config import NodeConfig
from consortium.node.store import TASKS
from consortium.storage.storage import STORES, Storage
from consortium.trust.audit import log_origin
from consortium.trust.audit.verify import LogReport, snapshot
from consortium.trust.claims import SIGNATURE_KEY


@dataclass(frozen=True)
class Span:
    """One exported span: ids as lowercase hex, times in seconds since the epoch."""

    org: str
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    start: float
    end: float
    attrs: Mapping[str, Any]


@dataclass(frozen=True)
class SignedCopy:
    """A signed message found in an organization's task store."""

    org: str
    message: a2a_pb2.Message


@dataclass
class OrgRecords:
    """What was read of one organization: its log's report (entries parsed), its spans
    (None when it exports none to a file), the signed messages in its task store, and
    what could not be read (one line each)."""

    org: str
    origin: str
    log: LogReport
    history: RosterHistory
    spans: list[Span] | None
    copies: list[SignedCopy] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


# -- reading -------------------------------------------------------------------------


def _hex_id(raw: object, size: int) -> str:
    """An OTLP JSON id (hex, or base64 as protobuf's JSON mapping writes bytes) as hex."""
    if not isinstance(raw, str) or not raw:
        return ""
    text = raw.lower()
    if len(text) == 2 * size and all(c in "0123456789abcdef" for c in text):
        return text
    try:
        decoded = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return ""
    return decoded.hex() if len(decoded) == size else ""


def _value(v: object) -> Any:
    if not isinstance(v, Mapping):
        return None
    if "stringValue" in v:
        return str(v["stringValue"])
    if "intValue" in v:
        return int(v["intValue"])
    if "doubleValue" in v:
        return float(v["doubleValue"])
    if "boolValue" in v:
        return bool(v["boolValue"])
    if "arrayValue" in v:
        values = v["arrayValue"].get("values", []) if isinstance(v["arrayValue"], Mapping) else []
        return [_value(x) for x in values]
    return None


def _seconds(raw: object) -> float:
    try:
        return int(str(raw)) / 1e9
    except ValueError:
        return 0.0


def parse_spans(lines: Sequence[str], source: str) -> tuple[list[Span], list[str]]:
    """Spans of OTLP JSON lines (one export request per line) and a line for each line
    that is not one."""
    spans: list[Span] = []
    problems: list[str] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            spans.extend(_spans_of(json.loads(line)))
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            problems.append(f"{source} line {number} is not OTLP JSON ({type(e).__name__})")
    return spans, problems


def _spans_of(doc: Mapping[str, Any]) -> Iterator[Span]:
    for rs in doc.get("resourceSpans", []):
        resource = {a["key"]: _value(a["value"]) for a in rs["resource"].get("attributes", [])}
        org = str(resource.get("service.name", ""))
        for ss in rs.get("scopeSpans", []):
            for s in ss.get("spans", []):
                yield Span(
                    org=org,
                    trace_id=_hex_id(s.get("traceId"), 16),
                    span_id=_hex_id(s.get("spanId"), 8),
                    parent_id=_hex_id(s.get("parentSpanId"), 8),
                    name=str(s.get("name", "")),
                    start=_seconds(s.get("startTimeUnixNano", 0)),
                    end=_seconds(s.get("endTimeUnixNano", 0)),
                    attrs={a["key"]: _value(a["value"]) for a in s.get("attributes", [])},
                )


def read_signed_copies(path: Path, org: str) -> tuple[list[SignedCopy], list[str]]:
    """The signed messages in a task store (each task's history and status message),
    read from a private copy; and a line for what could not be read."""
    if not path.is_file():
        return [], []
    with tempfile.TemporaryDirectory(prefix="consortium-trace-") as tmp:
        try:
            db = sqlite3.connect(snapshot(path, Path(tmp)))
        except (OSError, sqlite3.Error) as e:
            return [], [f"the task store {path} cannot be read: {e}"]
        try:
            rows = db.execute("SELECT body FROM tasks").fetchall()
        except sqlite3.Error as e:
            return [], [f"the task store {path} cannot be read: {e}"]
        finally:
            db.close()
    return _signed_in([body for (body,) in rows], org), []


def read_signed_copies_from(cfg: NodeConfig) -> tuple[list[SignedCopy], list[str]]:
    """The signed messages in the organization's task store wherever its `[storage]`
    keeps it (its SQLite file, read from a private copy; or its PostgreSQL database,
    read in one statement, never written)."""
    location = cfg.storage_location()
    if location.kind == "sqlite":
        assert location.directory is not None
        return read_signed_copies(location.directory / STORES["tasks"].file, cfg.node.org_id)
    storage = Storage(location, cfg.storage_settings())
    try:
        with storage.database("tasks").connect() as conn:
            bodies = list(conn.execute(select(TASKS.c.body)).scalars())
    except (StorageUnavailable, DBAPIError) as e:
        return [], [f"the task store at {location.shown} cannot be read: {e}"]
    finally:
        storage.close()
    return _signed_in(bodies, cfg.node.org_id), []


def _signed_in(bodies: Sequence[bytes], org: str) -> list[SignedCopy]:
    copies: list[SignedCopy] = []
    for body in bodies:
        task = a2a_pb2.Task()
        try:
            task.ParseFromString(bytes(body))
        except (DecodeError, TypeError):
            continue
        messages = list(task.history)
        if task.status.HasField("message"):
            messages.append(task.status.message)
        for m in messages:
            if SIGNATURE_KEY in m.metadata:
                copies.append(SignedCopy(org, m))
    return copies


def read_orgs(configs: Sequence[NodeConfig]) -> list[OrgRecords]:
    """What an auditor reads of each organization (never writing any of it): its roster
    history, its log verified with what the other given organizations cosigned of it,
    its spans (when it exports them to a file) and the signed copies in its task store.
    Raises ConfigError for organizations that cannot be audited together."""
    ids = [c.node.org_id for c in configs]
    twice = sorted({o for o in ids if ids.count(o) > 1})
    if twice:
        raise ConfigError(f"{', '.join(twice)} given more than once", key="--org")
    histories = [load_history(c) for c in configs]
    federation = histories[0][0].latest.federation_id
    for cfg, (history, _) in zip(configs, histories, strict=True):
        if history.latest.federation_id != federation:
            raise ConfigError(
                f"{cfg.node.org_id} is in federation {history.latest.federation_id}, "
                f"not {federation}",
                key="--org",
            )
    records = []
    for cfg, (history, skipped) in zip(configs, histories, strict=True):
        org = cfg.node.org_id
        origin = log_origin(federation, org)
        problems = [f"archived roster left out: {line}" for line in skipped]
        others = [other for other in configs if other is not cfg]
        report, unread = verify_organization(cfg, history, others)
        problems += unread
        spans: list[Span] | None = None
        if cfg.telemetry.exporter == "file":
            path = cfg.data_dir / cfg.telemetry.path
            try:
                lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
            except (OSError, UnicodeDecodeError) as e:
                lines = []
                problems.append(f"the spans file {path} cannot be read: {e}")
            spans, bad = parse_spans(lines, str(path))
            problems += bad
        copies, bad = read_signed_copies_from(cfg)
        problems += bad
        records.append(OrgRecords(org, origin, report, history, spans, copies, problems))
    return records
