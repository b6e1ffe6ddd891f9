"""Witnessing across three node processes (echo models, real gRPC on loopback): every
member's checkpoints are cosigned by the two others, so `consortium audit verify` passes
each log with `witnessed_by = 2`; then one member rolls its log back (its node restarted
on an old copy of audit.sqlite3) and the witnesses refuse its checkpoints, record the
refusal and count it against its reputation, and `audit verify --witness` names the
rollback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from consortium.launch.local import LocalFederation, Organization, RunningNode

ORGS = ("acme", "globex", "initech")
AUDIT = """
[audit]
checkpoint_interval_s = 0.3
witness_interval_s = 0.5
witnessed_by = 2
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consortium.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def health(node: RunningNode) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(node.http_url + "/healthz", timeout=10).json()
    return body


def wait_until(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.2)


def echo_org(fed: LocalFederation, org_id: str) -> Organization:
    """An organization whose node runs the echo model (the test is about the network)."""
    org = Organization(org_id, org_id.title(), "smollm2-135m", config_extra=AUDIT)
    config = fed.prepare(org)
    text = config.read_text().replace('backend = "llama_cpp"', 'backend = "echo"')
    config.write_text(text)
    return org


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    with LocalFederation(tmp_path_factory.mktemp("witnessing"), "witnessing") as fed:
        for org_id in ORGS:
            fed.start(echo_org(fed, org_id))
        fed.admit()
        yield fed


def node(fed: LocalFederation, org_id: str) -> RunningNode:
    return next(n for n in fed.nodes if n.org_id == org_id and n.child.process.poll() is None)


def org_dir(fed: LocalFederation, org_id: str) -> Path:
    return fed.base / org_id


def test_every_log_is_witnessed_by_the_two_others(federation: LocalFederation) -> None:
    def witnessed() -> bool:
        return all(health(node(federation, o))["audit"]["collected"] >= 2 for o in ORGS) and all(
            cli("audit", "verify", str(org_dir(federation, o))).returncode == 0 for o in ORGS
        )

    wait_until("every log is witnessed", witnessed)
    for org_id in ORGS:
        others = [str(org_dir(federation, o)) for o in ORGS if o != org_id]
        args = [a for o in others for a in ("--witness", o)]
        result = cli("audit", "verify", str(org_dir(federation, org_id)), "--json", *args)
        assert result.returncode == 0, result.stdout + result.stderr
        report = json.loads(result.stdout)
        assert report["ok"] and report["witnessed_size"] > 0
        assert any(len(names) == 2 for names in report["cosigners"].values())
        assert not [f for f in report["findings"] if f["severity"] == "error"]
        audit = health(node(federation, org_id))["audit"]
        assert 0 < audit["witnessed_size"] <= audit["latest_checkpoint"] <= audit["entries"]


def test_a_rolled_back_log_is_refused_and_counted(federation: LocalFederation) -> None:
    initech = node(federation, "initech")
    audit_path = org_dir(federation, "initech") / "data" / "audit.sqlite3"
    # An old copy of initech's log, taken while it is stopped.
    assert initech.stop() == 0
    saved = audit_path.with_name("audit.old")
    shutil.copyfile(audit_path, saved)
    federation.start(echo_org(federation, "initech"))
    # The witnesses cosign more of initech's log than the old copy holds.
    before = health(node(federation, "initech"))["audit"]["collected"]
    wait_until(
        "initech's newer checkpoints are cosigned",
        lambda: health(node(federation, "initech"))["audit"]["collected"] >= before + 2,
    )
    assert node(federation, "initech").stop() == 0
    shutil.copyfile(saved, audit_path)
    for stale in ("audit.sqlite3-wal", "audit.sqlite3-shm"):
        (audit_path.parent / stale).unlink(missing_ok=True)
    federation.start(echo_org(federation, "initech"))

    def refused() -> bool:
        return all(
            sum(
                n
                for verdict, n in health(node(federation, w))["audit"]["refused"].items()
                if verdict in ("rollback", "fork")
            )
            > 0
            for w in ("acme", "globex")
        )

    wait_until("both witnesses refuse initech's checkpoints", refused)
    # Recorded in the witnesses' own logs, and counted against initech's reputation.
    for witness in ("acme", "globex"):
        exported = cli("audit", "export", str(org_dir(federation, witness)))
        assert exported.returncode == 0, exported.stderr
        lines = [json.loads(line) for line in exported.stdout.splitlines()]
        entries = [d["entry"] for d in lines if "entry" in d]
        refusals = [
            e
            for e in entries
            if e.get("kind") == "witness"
            and e.get("peer") == "initech"
            and e["detail"]["verdict"] in ("rollback", "fork")
        ]
        assert refusals
        config = str(org_dir(federation, witness) / "node.toml")
        shown = cli("trust", "show", "--config", config, "--json")
        assert shown.returncode == 0, shown.stderr
        [peer] = [p for p in json.loads(shown.stdout)["peers"] if p["peer"] == "initech"]
        assert peer["evidence"]["protocol"]["bad"] >= 1
    # What the witnesses cosigned is more than initech's log now gives.
    result = cli(
        "audit",
        "verify",
        str(org_dir(federation, "initech")),
        "--witness",
        str(org_dir(federation, "acme")),
    )
    assert result.returncode == 1
    assert "acme's record of this log" in result.stdout
