"""The node's audit log, wired: `build_audit` opens the log in the node's storage (its
"audit" store: DATA_DIR/audit.sqlite3, or the PostgreSQL database the node's replicas
share; trust.audit.log) for a node in a federation with `[audit] enabled` (the
default), records every roster
version the node takes and keeps a copy of it (DATA_DIR/audit-rosters/), so that keys
rotated out of later rosters still verify old entries; `run_checkpoints` signs a
checkpoint whenever the interval passes with new entries.

The log is told of messages by the signer and the verifier (trust.signing,
trust.admission) and of decisions by the node's parts; nothing here sits on a message's
path.
"""

from __future__ import annotations

import logging
import sqlite3
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from jwcrypto import jwk
from nacl.signing import VerifyKey

from consortium.errors import ConfigError
from consortium.federation.roster import Roster, load_verified_roster, parse_time, write_roster
from consortium.federation.watcher import RosterWatcher
from consortium.node.config import NodeConfig
from consortium.node.periodic import every
from consortium.storage.database import Database
from consortium.storage.storage import STORES, Storage
from consortium.trust.audit import AuditLog, NoOpAuditLog, log_origin
from consortium.trust.audit.log import SqliteAuditLog
from consortium.trust.audit.snapshot import copy_log
from consortium.trust.audit.verify import LogReport, WitnessView, verify_log, witness_view
from consortium.trust.claims import payload_digest
from consortium.trust.jws import canonical, verify_key_of
from consortium.trust.keys import load_public_key

log = logging.getLogger(__name__)

ROSTER_ARCHIVE = "audit-rosters"


def roster_digest(roster: Roster) -> str:
    """SHA-256 (base64url) of what the roster's admin signature covers."""
    return payload_digest(canonical(roster.signed_content()))


def archive_path(data_dir: Path) -> Path:
    """Where a node keeps a copy of every roster version it took."""
    return data_dir / ROSTER_ARCHIVE


def build_audit(
    cfg: NodeConfig,
    watcher: RosterWatcher,
    key: Callable[[], jwk.JWK],
    db: Database | None = None,
) -> tuple[AuditLog, SqliteAuditLog | None]:
    """The node's audit log in `db`, its storage's "audit" store (default: the file
    DATA_DIR/audit.sqlite3), and the log itself, None when auditing is off: the roster
    in force recorded and archived, and every later one the watcher takes."""
    if not cfg.audit.enabled:
        return NoOpAuditLog(), None
    a = cfg.audit
    roster = watcher.current()
    audit = SqliteAuditLog(
        db if db is not None else cfg.audit_path,
        federation_id=roster.federation_id,
        org_id=cfg.node.org_id,
        key=key,
        checkpoint_every=a.checkpoint_every,
        checkpoint_interval_s=a.checkpoint_interval_s,
        durable_against=a.durable_against,
    )
    archive = archive_path(cfg.data_dir)

    def took(r: Roster) -> None:
        digest = roster_digest(r)
        path = archive / f"roster-v{r.version}-{digest[:16]}.toml"
        if not path.exists():
            write_roster(path, r)
        audit.record("roster", detail={"version": r.version, "digest": digest})

    took(roster)
    watcher.subscribe(took)
    return audit, audit


async def run_checkpoints(audit: SqliteAuditLog, interval_s: float) -> None:
    """Signs a checkpoint whenever `interval_s` passes with new entries; until cancelled
    (checked every second at most, so a checkpoint is at most a second late), in the
    storage's threads (on PostgreSQL it is a round trip to the database)."""
    await every(min(interval_s, 1.0), lambda: audit.run(audit.maybe_checkpoint), "audit checkpoint")


def keys_of(roster: Roster, org: str, when: float) -> list[VerifyKey]:
    """The Ed25519 keys `org` holds at `when` by the roster."""
    member = roster.member(org)
    if member is None:
        return []
    at = datetime.fromtimestamp(when, UTC)
    return [verify_key_of(k.jwk()) for k in member.keys if k.valid_at(at)]


class RosterHistory:
    """Every roster version an auditor has (trust.audit.verify.KeyHistory): the keys an
    organization held at a time, from all of them, so a key rotated out (and an old
    roster version) still verifies what was signed with it while it was valid. A key
    is valid until its `not_after`, and until the first later version that no longer
    lists it was issued."""

    def __init__(self, rosters: Sequence[Roster]) -> None:
        self.rosters = sorted(rosters, key=lambda r: r.version)

    def keys(self, org: str, when: float) -> list[VerifyKey]:
        at = datetime.fromtimestamp(when, UTC)
        seen: dict[str, VerifyKey] = {}
        for i, roster in enumerate(self.rosters):
            member = roster.member(org)
            for k in member.keys if member is not None else []:
                if k.x in seen or not k.valid_at(at) or self._dropped_before(i, org, k.x, at):
                    continue
                seen[k.x] = verify_key_of(k.jwk())
        return list(seen.values())

    def _dropped_before(self, index: int, org: str, x: str, at: datetime) -> bool:
        """Whether a later roster version issued before `at` no longer lists key `x`."""
        for later in self.rosters[index + 1 :]:
            member = later.member(org)
            listed = member is not None and any(k.x == x for k in member.keys)
            if not listed:
                return bool(later.issued_at) and parse_time(later.issued_at) <= at
        return False

    @property
    def latest(self) -> Roster:
        """The newest version (rosters are kept oldest first)."""
        return self.rosters[-1]

    def members(self) -> frozenset[str]:
        return frozenset(m.org_id for r in self.rosters for m in r.members)


def load_history(cfg: NodeConfig) -> tuple[RosterHistory, list[str]]:
    """The organization's roster (its signature checked under the admin key node.toml
    names) and every archived version that verifies under the same key; and a line for
    each archived file that does not (left out)."""
    fed = cfg.federation
    if fed is None:
        raise ConfigError("this node has no [federation]: it keeps no audit log")
    admin = load_public_key(cfg.resolve(fed.admin_key))
    rosters = [load_verified_roster(cfg.resolve(fed.roster), [admin])]
    skipped: list[str] = []
    archive = archive_path(cfg.data_dir)
    for path in sorted(archive.glob("roster-v*.toml")) if archive.is_dir() else []:
        try:
            rosters.append(load_verified_roster(path, [admin]))
        except ConfigError as e:
            skipped.append(f"{path.name}: {e}")
    return RosterHistory(rosters), skipped


@contextmanager
def log_file(cfg: NodeConfig) -> Iterator[Path | None]:
    """The organization's audit log as an SQLite file to read (never to write): the
    file its node keeps when its `[storage]` is SQLite; when it is PostgreSQL, a
    snapshot of the log the replicas share, in a temporary directory removed afterwards
    (None when that database holds no log)."""
    location = cfg.storage_location()
    if location.directory is not None:
        yield location.directory / STORES["audit"].file
        return
    storage = Storage(location, cfg.storage_settings())
    try:
        with tempfile.TemporaryDirectory(prefix="consortium-audit-") as tmp:
            path = Path(tmp) / STORES["audit"].file
            yield path if copy_log(storage.database("audit"), path) else None
    finally:
        storage.close()


def verify_organization(
    cfg: NodeConfig, history: RosterHistory, witnesses: Sequence[NodeConfig]
) -> tuple[LogReport, list[str]]:
    """An auditor's check of one organization's log (trust.audit.verify.verify_log) with
    what each of `witnesses` (other organizations' configs) recorded cosigning of it, as
    its `[audit] witnessed_by` asks; and a line for each witness whose log cannot be
    read (left out)."""
    origin = log_origin(history.latest.federation_id, cfg.node.org_id)
    views: list[WitnessView] = []
    unread: list[str] = []
    for other in witnesses:
        try:
            with log_file(other) as path:
                view = None if path is None else witness_view(path, origin, other.node.org_id)
        except (OSError, sqlite3.Error) as e:
            unread.append(f"{other.node.org_id}'s audit log {other.audit_path} cannot be read: {e}")
            continue
        if view is not None:
            views.append(view)
    with log_file(cfg) as path:
        if path is None:
            report = LogReport(origin=origin, org=cfg.node.org_id)
            report.error("database", f"no audit log in {cfg.storage_location().shown}")
            return report, unread
        report = verify_log(
            path,
            history,
            origin=origin,
            org=cfg.node.org_id,
            witnessed_by=cfg.audit.witnessed_by,
            witness_views=views,
        )
    return report, unread
