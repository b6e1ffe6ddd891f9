"""`consortium trust show | reset` as a user runs them (a subprocess), on a data
directory filled through the reputation engine; bad input is one line and an exit code,
and never damages the database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from consortium.trust.reputation import Evidence
from consortium.trust.reputation_engine import ReputationAssessor, ReputationSettings

ROOT = Path(__file__).resolve().parents[2]
ROSTER = """federation_id = "fed"
name = "Test federation"
{members}
"""
MEMBER = """[[members]]
org_id = "{org}"
[[members.keys]]
kid = "k-{org}"
x = "AAAA"
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "consortium.cli", "trust", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    members = "".join(MEMBER.format(org=o) for o in ("acme", "globex", "initech", "umbrella"))
    (tmp_path / "federation.toml").write_text(ROSTER.format(members=members))
    path = tmp_path / "node.toml"
    path.write_text(
        "[node]\norg_id = 'acme'\n"
        "[federation]\nroster = 'federation.toml'\nadmin_key = 'admin.jwk'\n"
    )
    return path


def fill(config: Path) -> None:
    settings = ReputationSettings()
    members = ["globex", "initech", "umbrella"]
    a = ReputationAssessor.open(config.parent / "data" / "trust.sqlite3", settings, members=members)
    for _ in range(settings.min_evidence):
        a.record(Evidence("globex", "protocol", False, "bad_signature", model="m1", weight=3))
    a.record(Evidence("initech", "canary", True, "canary_passed"))
    a.close()


def one_error_line(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0]


def test_show_json_and_table(config: Path) -> None:
    fill(config)
    result = cli("show", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    peers = {p["peer"]: p for p in json.loads(result.stdout)["peers"]}
    assert set(peers) == {"globex", "initech"}
    globex = peers["globex"]
    assert globex["state"] == "quarantined" and globex["offences"] == 1
    assert globex["quarantined_until"] and globex["reason"].startswith("quarantine ")
    assert globex["evidence"] == {"protocol": {"good": 0, "bad": 10}}
    assert globex["models"][0]["model"] == "m1"
    assert 0 <= globex["bound"] <= globex["score"] <= 1
    assert peers["initech"]["state"] == "healthy"

    table = cli("show", "--config", str(config))
    assert table.returncode == 0, table.stderr
    assert "globex" in table.stdout and "quarantined" in table.stdout
    assert "protocol 0/10" in table.stdout


def test_reset_puts_a_peer_back_to_the_prior(config: Path) -> None:
    fill(config)
    result = cli("reset", "globex", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("reset globex: healthy")
    peers = {
        p["peer"]: p for p in json.loads(cli("show", "-c", str(config), "--json").stdout)["peers"]
    }
    assert peers["globex"]["state"] == "healthy" and peers["globex"]["evidence"] == {}
    assert peers["globex"]["models"] == [] and peers["globex"]["offences"] == 0
    # A roster member with no record yet may be reset too.
    assert cli("reset", "umbrella", "--config", str(config)).returncode == 0


@pytest.mark.parametrize("org", ["nobody", "acme"])
def test_reset_refuses_an_unknown_org(config: Path, org: str) -> None:
    fill(config)
    one_error_line(cli("reset", org, "--config", str(config)), 2, "unknown organization", org)


def test_missing_config(tmp_path: Path) -> None:
    one_error_line(cli("show", "--config", str(tmp_path / "nope.toml")), 2, "not found")


def test_missing_database(config: Path) -> None:
    one_error_line(cli("show", "--config", str(config)), 2, "trust.sqlite3", "no trust database")
    one_error_line(cli("reset", "globex", "--config", str(config)), 2, "no trust database")
    assert not (config.parent / "data" / "trust.sqlite3").exists()


def test_corrupt_database_is_refused_and_left_alone(config: Path) -> None:
    db = config.parent / "data" / "trust.sqlite3"
    db.parent.mkdir()
    db.write_bytes(b"this is not a database" * 100)
    before = db.read_bytes()
    one_error_line(cli("show", "--config", str(config)), 2, "not a usable trust database")
    one_error_line(cli("reset", "globex", "--config", str(config)), 2, "not a usable")
    assert db.read_bytes() == before
