"""`consortium db upgrade | status | migrate` as an operator runs them (a subprocess):
a node's SQLite state brought up to date and shown, copied into an empty PostgreSQL
database row for row; a non-empty destination, a running node, the wrong direction, a
wrong password and a malformed URL are one line and an exit code — never a password."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from consortium.storage import migrations
from consortium.trust.replay import REPLAY, ReplayCache
from tests.conftest import PgDatabase

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    env.pop("PGPASSWORD", None)
    return subprocess.run(
        [sys.executable, "-m", "consortium.cli", "db", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=cwd,
    )


def node_toml(tmp: Path, storage: str = "") -> Path:
    path = tmp / "node.toml"
    path.write_text(f"[node]\norg_id = 'acme'\n{storage}")
    return path


def test_upgrade_and_status_of_a_sqlite_node(tmp_path: Path) -> None:
    config = node_toml(tmp_path)
    status = cli("status", "--config", str(config))
    assert status.returncode == 0, status.stderr
    assert "needs `consortium db upgrade`" in status.stdout
    up = cli("upgrade", "--config", str(config))
    assert up.returncode == 0, up.stderr
    assert "upgraded " in up.stdout and "replay" in up.stdout
    assert (tmp_path / "data" / "replay.sqlite3").exists()
    again = cli("upgrade", "--config", str(config))
    assert "every store is up to date" in again.stdout
    assert "up to date" in cli("status", "--config", str(config)).stdout


def test_migrate_a_data_directory_into_postgresql(tmp_path: Path, pg_database: PgDatabase) -> None:
    data = tmp_path / "data"
    cache = ReplayCache(data / "replay.sqlite3")
    future = time.time() + 3600
    for i in range(2500):  # more than one batch
        assert cache.first_sighting("acme", f"m{i}", future + i)
    cache.close()
    moved = cli(
        "migrate",
        "--from",
        f"sqlite:///{data}",
        "--to",
        pg_database.url,
        "--password-file",
        str(pg_database.password_file),
    )
    assert moved.returncode == 0, moved.stderr
    assert "replay: replay 2500" in moved.stdout
    assert "set [storage] url to it" in moved.stdout
    storage = pg_database.storage()
    try:
        assert migrations.pending(storage) == {}
        with storage.database("replay").connect() as conn:
            rows = conn.execute(select(REPLAY).order_by(REPLAY.c.message_id)).all()
        assert len(rows) == 2500
        assert ("acme", "m10", future + 10) in rows
        # What was accepted before the move is still refused after it.
        assert not ReplayCache(storage.database("replay")).first_sighting("acme", "m7", future)
    finally:
        storage.close()

    # Never into a database that holds state already.
    twice = cli(
        "migrate",
        "--from",
        f"sqlite:///{data}",
        "--to",
        pg_database.url,
        "--password-file",
        str(pg_database.password_file),
    )
    assert twice.returncode == 2
    assert "--to: " in twice.stderr and "already holds replay state" in twice.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (
            ["--from", "postgresql://a@b/c", "--to", "postgresql://a@b/d"],
            "--from: migrate copies from",
        ),
        (["--from", "sqlite:///missing-dir", "--to", "postgresql://a@b/d"], "is not a directory"),
        (["--from", "sqlite:///data", "--to", "sqlite:///elsewhere"], "--to: migrate copies into"),
        (["--from", "sqlite:///data", "--to", "postgresql://a:hunter2@b/d"], "holds a password"),
        (["--from", "sqlite:///data", "--to", "::"], "is not a URL"),
    ],
)
def test_bad_migrations_are_one_line(tmp_path: Path, args: list[str], words: str) -> None:
    (tmp_path / "data").mkdir()
    result = cli("migrate", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stdout
    assert words in result.stderr and "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_a_running_node_is_not_migrated(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "endpoints.json").write_text("{}")
    result = cli("migrate", "--from", "sqlite:///data", "--to", "postgresql://a@b/c", cwd=tmp_path)
    assert (
        result.returncode == 2
        and "is running" in result.stderr
        and "stop it first" in result.stderr
    )


def test_a_wrong_password_is_one_line_without_it(tmp_path: Path, pg_database: PgDatabase) -> None:
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    config = node_toml(
        tmp_path, f"[storage]\nurl = '{pg_database.url}'\npassword_file = '{wrong}'\n"
    )
    result = cli("upgrade", "--config", str(config))
    assert result.returncode == 8, result.stdout + result.stderr
    assert "its database refused its credentials" in result.stderr
    assert "Traceback" not in result.stderr
    assert "not-the-password" not in result.stderr + result.stdout


def test_a_database_that_does_not_exist_is_named(tmp_path: Path, pg_database: PgDatabase) -> None:
    missing = pg_database.url.rsplit("/", 1)[0] + "/no_such_database"
    config = node_toml(
        tmp_path,
        f"[storage]\nurl = '{missing}'\npassword_file = '{pg_database.password_file}'\n",
    )
    result = cli("status", "--config", str(config))
    assert result.returncode == 8 and "its database does not exist" in result.stderr


def test_migrate_keeps_the_audit_log_and_its_roots(tmp_path: Path, pg_database: PgDatabase) -> None:
    """The copied log is the same log: same entries, same signed checkpoints and roots;
    it takes new appends where the old one stopped, and the auditor's verification
    passes on it."""
    from consortium.trust.audit.log import SqliteAuditLog
    from consortium.trust.audit.snapshot import copy_log
    from consortium.trust.audit.verify import verify_log
    from tests.trust.audit.test_verify import FED, ORG, ORIGIN, Keys

    keys = Keys()
    data = tmp_path / "data"
    log = SqliteAuditLog(
        data / "audit.sqlite3",
        federation_id=FED,
        org_id=ORG,
        key=lambda: keys.new,
        checkpoint_every=10,
    )
    for i in range(37):
        log.append("route", "local", fields={"detail": {"i": i, "text": "naïve ✓"}})
    before = log.checkpoint()
    notes = [log.cosigned_note(n) for n in (10, 20, 30)]
    log.close()
    moved = cli(
        "migrate",
        "--from",
        f"sqlite:///{data}",
        "--to",
        pg_database.url,
        "--password-file",
        str(pg_database.password_file),
    )
    assert moved.returncode == 0, moved.stderr
    storage = pg_database.storage()
    try:
        db = storage.database("audit")
        copied = SqliteAuditLog(db, federation_id=FED, org_id=ORG, key=lambda: keys.new)
        latest = copied.latest()
        assert latest is not None and latest.note == before.note
        assert latest.checkpoint.root == before.checkpoint.root and copied.size == 37
        assert [copied.cosigned_note(n) for n in (10, 20, 30)] == notes
        assert copied.append("route", "local", fields={"detail": {"after": True}}) == 37
        snapshot = tmp_path / "snapshot.sqlite3"
        assert copy_log(db, snapshot)
        report = verify_log(snapshot, keys.history(), origin=ORIGIN, org=ORG)
        assert report.ok, report
        copied.close()
    finally:
        storage.close()
