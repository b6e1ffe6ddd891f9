"""Flower's deployment engine on loopback, through the consortium CLI: a SuperLink with
TLS and SuperNode authentication, three organizations' SuperNodes on their nodes'
routing records, a registered-keys-only admission, and a training run that ends in a
signed policy artifact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w

from consortium.federation.admin import create_federation
from consortium.launch.flower import free_port
from consortium.launch.supervisor import Child, Supervisor, listening
from consortium.learning.coordinator import node_feature_names
from consortium.node.config import load_config
from consortium.trust.tls import create_ca, issue_certificate
from tests.learning.test_flower_app import write_records

ORGS = ("acme", "globex", "initech")


def env(tmp: Path) -> dict[str, str]:
    return {
        **os.environ,
        "FLWR_HOME": str(tmp / "flwr-home"),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }


def cli(tmp: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consortium.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(tmp),
        check=False,
    )


def start(procs: Supervisor, name: str, *args: str, port: int | None = None) -> Child:
    """The CLI command as a long-running process; with `port`, once something listens on it."""
    cmd = [sys.executable, "-m", "consortium.cli", *args]
    return procs.start(name, cmd, ready=listening(port) if port else None)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Supervisor]:
    with Supervisor(tmp_path, env(tmp_path), new_session=True) as p:
        yield p


def org_config(tmp: Path, org: str, superlink: str, ca: Path, port: int) -> Path:
    base = tmp / org
    base.mkdir()
    path = base / "node.toml"
    path.write_text(
        tomli_w.dumps(
            {
                "node": {"org_id": org, "data_dir": "data"},
                "training": {
                    "superlink": superlink,
                    "port": port,
                    "ca": str(ca),
                    "auth_key": "keys/supernode.key",
                },
            }
        )
    )
    return path


def test_training_run_over_a_superlink_with_tls_and_supernode_auth(
    tmp_path: Path, procs: Supervisor
) -> None:
    ca, ca_key = create_ca(tmp_path / "ca")
    tls = issue_certificate(ca, ca_key, tmp_path / "superlink-tls", "superlink", ["127.0.0.1"])
    fed = create_federation("Flower Test", tmp_path / "fed")
    port = free_port()
    address = f"127.0.0.1:{port}"
    start(
        procs,
        "superlink", "federation", "superlink", "--dir", str(tmp_path / "superlink"),
        "--port", str(port), "--cert", str(tls.cert), "--key", str(tls.key), "--ca", str(ca),
        "--enable-supernode-auth", port=port,
    )  # fmt: skip

    configs = []
    for i, org in enumerate((*ORGS, "mallory")):
        cfg_path = org_config(tmp_path, org, address, ca, free_port())
        configs.append(cfg_path)
        cfg = load_config(cfg_path)
        write_records(cfg.database_path, 150, seed=i, names=node_feature_names())
        made = cli(tmp_path, "federation", "supernode-key", "--config", str(cfg_path))
        assert made.returncode == 0, made.stderr
        key = cfg.resolve("keys/supernode.key")
        assert key.stat().st_mode & 0o777 == 0o600
        if org != "mallory":  # the coordinator registers the three members only
            reg = cli(tmp_path, "federation", "register-supernode", str(key) + ".pub",
                      "--superlink", address, "--ca", str(ca))  # fmt: skip
            assert reg.returncode == 0, reg.stderr
            assert "registered SuperNode" in reg.stdout

    nodes = {
        org: start(procs, org, "federation", "supernode", "--config", str(cfg))
        for org, cfg in zip((*ORGS, "mallory"), configs, strict=True)
    }
    # An unregistered SuperNode is refused by the SuperLink and gives up.
    try:
        nodes["mallory"].process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("an unregistered SuperNode kept running:\n" + procs.log("mallory")[-2000:])
    assert nodes["mallory"].process.returncode != 0
    assert "Failed to activate SuperNode" in procs.log("mallory")

    policy = tmp_path / "policy.json"
    done = cli(
        tmp_path, "federation", "train", "--superlink", address, "--ca", str(ca),
        "--orgs", "3", "--rounds", "2", "--roster", str(fed.roster), "--out", str(policy),
        "--version", "deployed-1", timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:] + procs.log("superlink")[-3000:]
    artifact = json.loads(policy.read_text())
    assert artifact["version"] == "deployed-1" and artifact["federation_id"] == "flower-test"
    assert artifact["metrics"]["rounds"] == 2 and artifact["metrics"]["train_examples"] > 300
    verify = cli(tmp_path, "federation", "policy", "verify", str(policy),
                 "--admin-pubkey", str(fed.admin_public))  # fmt: skip
    assert verify.returncode == 0, verify.stderr
    for org in ORGS:
        assert nodes[org].process.poll() is None, procs.log(org)[-2000:]


def test_bad_deployment_arguments_are_refused_with_the_reason(tmp_path: Path) -> None:
    no_tls = cli(tmp_path, "federation", "superlink", "--dir", str(tmp_path / "s"))
    assert no_tls.returncode == 2 and "--cert, --key and --ca" in no_tls.stderr
    cfg = org_config(tmp_path, "acme", "", tmp_path / "ca.pem", 9999)
    no_link = cli(tmp_path, "federation", "supernode", "--config", str(cfg))
    assert no_link.returncode == 2 and "training.superlink" in no_link.stderr
    both = cli(tmp_path, "federation", "train", "--superlink", "127.0.0.1:1", "--insecure",
               "--ca", str(tmp_path / "ca.pem"))  # fmt: skip
    assert both.returncode == 2 and "exactly one of --ca and --insecure" in both.stderr
    missing = cli(tmp_path, "federation", "register-supernode", str(tmp_path / "x.pub"),
                  "--superlink", "127.0.0.1:1", "--ca", str(tmp_path / "ca.pem"))  # fmt: skip
    assert missing.returncode == 2 and "no such public key" in missing.stderr
