"""The CLI through subprocesses: init, node start, ask (gRPC and JSON-RPC), clean shutdown
on SIGTERM, clear one-line errors for bad input, and the three-organization demo."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from consortium.launch.local import start_node
from consortium.launch.supervisor import Child

CLI = [sys.executable, "-m", "consortium.cli"]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def assert_one_line_error(
    result: subprocess.CompletedProcess[str], code: int, *needles: str
) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def org_dir(tmp_path: Path) -> Path:
    d = tmp_path / "acme"
    r = run("init", "acme", "--dir", str(d), "--grpc-port", "0", "--http-port", "0")
    assert r.returncode == 0, r.stderr
    return d


@pytest.fixture
def running(org_dir: Path) -> Iterator[tuple[Path, Child]]:
    node, _ = start_node(org_dir / "node.toml", org_dir / "node.log")
    yield org_dir / "node.toml", node
    node.stop()


def test_init_writes_config_keys_and_card(org_dir: Path) -> None:
    private = org_dir / "keys" / "private.jwk"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    public = json.loads((org_dir / "keys" / "public.jwk").read_text())
    assert public["kty"] == "OKP" and public["crv"] == "Ed25519" and "d" not in public
    assert len(public["kid"]) == 43  # base64url SHA-256 thumbprint
    card = json.loads((org_dir / "agent-card.json").read_text())
    assert card["provider"]["organization"] == "acme"
    assert {i["protocolBinding"] for i in card["supportedInterfaces"]} == {"GRPC", "JSONRPC"}
    extensions = {e["uri"]: e.get("params", {}) for e in card["capabilities"]["extensions"]}
    identity = extensions["https://consortium.dev/a2a/ext/identity/v1"]
    assert identity["org_id"] == "acme"
    assert identity["keys"][0]["kid"] == public["kid"] and "d" not in identity["keys"][0]
    assert "node.toml" in {p.name for p in org_dir.iterdir()}


def test_init_refuses_to_overwrite(org_dir: Path) -> None:
    assert_one_line_error(run("init", "acme", "--dir", str(org_dir)), 2, "already exists")


def test_init_rejects_bad_org_id(tmp_path: Path) -> None:
    assert_one_line_error(
        run("init", "Not Valid", "--dir", str(tmp_path / "x")), 2, "organization id"
    )


def test_ask_streams_a_real_answer_over_grpc_and_jsonrpc(
    running: tuple[Path, Child],
) -> None:
    config, _ = running
    for transport in ("grpc", "jsonrpc"):
        r = run(
            "ask",
            "--config",
            str(config),
            "--transport",
            transport,
            "--max-tokens",
            "24",
            "What is the capital of France?",
        )
        assert r.returncode == 0, r.stderr
        assert "Paris" in r.stdout
        assert "smollm2-135m" in r.stderr and "acme" in r.stderr


def test_sigterm_shuts_down_cleanly_and_keeps_the_database(
    running: tuple[Path, Child],
) -> None:
    config, node = running
    r = run("ask", "--config", str(config), "--max-tokens", "8", "Say hello.")
    assert r.returncode == 0, r.stderr
    node.process.send_signal(signal.SIGTERM)
    assert node.process.wait(60) == 0
    db = config.parent / "data" / "node.sqlite3"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        states = [row[0] for row in conn.execute("SELECT state FROM tasks")]
    assert states == [3]  # TASK_STATE_COMPLETED
    assert not (config.parent / "data" / "endpoints.json").exists()


def test_bad_config_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "node.toml"
    bad.write_text('[node]\norg_id = "acme"\n[server]\ngrpc_port = "fast"\n')
    assert_one_line_error(
        run("node", "start", "--config", str(bad)), 2, "node.toml", "server.grpc_port"
    )
    assert_one_line_error(
        run("node", "start", "--config", str(tmp_path / "missing.toml")), 2, "not found"
    )


def test_missing_model_file_fails_at_start(org_dir: Path) -> None:
    config = org_dir / "node.toml"
    text = config.read_text().replace(
        'name = "smollm2-135m"', 'name = "x"\npath = "/nonexistent/model.gguf"'
    )
    config.write_text(text)
    assert_one_line_error(run("node", "start", "--config", str(config)), 3, "model file not found")


def test_corrupt_model_file_fails_at_start(org_dir: Path) -> None:
    bad = org_dir / "corrupt.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(4096))
    config = org_dir / "node.toml"
    config.write_text(
        config.read_text().replace('name = "smollm2-135m"', f'name = "x"\npath = "{bad}"')
    )
    assert_one_line_error(
        run("node", "start", "--config", str(config)), 3, "cannot load model file"
    )


def test_ask_without_a_running_node(org_dir: Path) -> None:
    r = run("ask", "--config", str(org_dir / "node.toml"), "hello")
    assert_one_line_error(r, 4, "cannot fetch the agent card")


def test_ask_with_bad_transport(org_dir: Path) -> None:
    r = run("ask", "--config", str(org_dir / "node.toml"), "--transport", "pigeon", "hello")
    assert_one_line_error(r, 2, "--transport")


def test_demo_shows_three_organizations_answering(tmp_path: Path) -> None:
    r = run("demo", "--workdir", str(tmp_path / "demo"), timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    for org, model in (
        ("acme", "smollm2-135m"),
        ("globex", "smollm2-135m"),
        ("initech", "gemma3-270m"),
    ):
        assert org in r.stdout and model in r.stdout
        assert f"stopped {org} (exit 0)" in r.stdout
    assert "federation consortium-demo: 3 members" in r.stdout
    assert "acme->initech" in r.stdout and "True (" in r.stdout  # the verified cross-org answer
    # Redaction: initech's own task store holds pseudonyms, the receipt verifies.
    assert "Redaction: what initech saw" in r.stdout
    assert "<PERSON_1>" in r.stdout and "<EMAIL_ADDRESS_1>" in r.stdout
    assert "disclosure verifies against the signed message" in r.stdout
    # Routing and collaboration: an escalation and a vote, each with its members.
    assert "acme->group:panel" in r.stdout
    assert "globex (" in r.stdout and "initech (" in r.stdout
    # An app's question through acme's OpenAI endpoint, its task read back over A2A.
    app = r.stdout.split("From an app", 1)[1]
    assert "smollm2-135m" in app.split("completed", 1)[0] and "completed" in app
    # A policy trained across the three with Flower, signed, and routed with.
    assert "routing records (features and outcomes only)" in r.stdout
    assert "policy demo-1: 3 rounds of FedAvg" in r.stdout
    assert "signed for federation consortium-demo" in r.stdout
    assert "routes with it:" in r.stdout and "learned (policy demo-1)" in r.stdout
    # globex declares smollm2-135m but runs gemma3-270m: acme's cross-checks catch it.
    assert "acme's trust table" in r.stdout
    trust = r.stdout[r.stdout.index("acme's trust table") :]
    globex = next(line for line in trust.splitlines() if "│ globex" in line)
    assert "quarantined" in globex and "on=answers" in trust
    initech = next(line for line in trust.splitlines() if "│ initech" in line)
    assert "healthy" in initech
    # The question that crossed organizations, audited: every hop and log verified,
    # every log witnessed, and the HTML timeline written.
    audit = r.stdout[r.stdout.index("consortium audit trace --task") :]
    assert "audit trace: every hop and every log verified (exit 0)" in audit, audit
    assert "acme → initech" in audit or "acme -> initech" in audit, audit
    assert (tmp_path / "demo" / "audit-report.html").is_file()


def test_ask_peer_through_the_cli_with_real_models(tmp_path: Path) -> None:
    """Two organizations in separate processes: acme's node forwards a signed question to
    globex, which answers with its own model; acme verifies the signed answer."""
    fed = tmp_path / "fed"
    assert run("federation", "create", "CLI Fed", "--dir", str(fed)).returncode == 0
    roster, admin = fed / "federation.toml", fed / "admin" / "public.jwk"
    nodes = []
    try:
        for org in ("acme", "globex"):
            d = tmp_path / org
            assert (
                run("init", org, "--dir", str(d), "--grpc-port", "0", "--http-port", "0").returncode
                == 0
            )
            with (d / "node.toml").open("a") as f:
                f.write(f'\n[federation]\nroster = "{roster}"\nadmin_key = "{admin}"\n')
            node, url = start_node(d / "node.toml", d / "node.log")
            nodes.append(node)
            r = run("federation", "add-member", str(roster), "--card", url)
            assert r.returncode == 0, r.stderr
        r = run(
            "ask",
            "--config",
            str(tmp_path / "acme" / "node.toml"),
            "--peer",
            "globex",
            "--max-tokens",
            "24",
            "What is the capital of France?",
        )
        assert r.returncode == 0, r.stderr
        assert "Paris" in r.stdout
        assert "route acme->globex" in r.stderr and "verified: True" in r.stderr
        assert "globex" in r.stderr and "smollm2-135m" in r.stderr
    finally:
        for node in nodes:
            node.stop()


def test_node_refuses_to_start_on_a_roster_that_does_not_verify(
    org_dir: Path, tmp_path: Path
) -> None:
    fed = tmp_path / "fed"
    assert run("federation", "create", "Start Fed", "--dir", str(fed)).returncode == 0
    other = tmp_path / "other"
    assert run("federation", "create", "Other Fed", "--dir", str(other)).returncode == 0
    config = org_dir / "node.toml"
    base = config.read_text()
    # Signed by another federation's admin key than the one the node trusts.
    section = '\n[federation]\nroster = "{}"\nadmin_key = "{}"\n'
    config.write_text(
        base + section.format(fed / "federation.toml", other / "admin" / "public.jwk")
    )
    assert_one_line_error(
        run("node", "start", "--config", str(config)),
        2,
        "federation.toml",
        "no valid admin signature",
    )
    config.write_text(
        base + section.format(tmp_path / "missing.toml", fed / "admin" / "public.jwk")
    )
    assert_one_line_error(
        run("node", "start", "--config", str(config)), 2, "missing.toml", "not found"
    )
    config.write_text(base + '\n[federation]\nadmin_key = "x"\n')
    assert_one_line_error(
        run("node", "start", "--config", str(config)), 2, "federation.roster: required"
    )


def test_node_refuses_to_start_on_a_canary_pool_that_does_not_parse(
    org_dir: Path, tmp_path: Path
) -> None:
    fed = tmp_path / "fed"
    assert run("federation", "create", "Start Fed", "--dir", str(fed)).returncode == 0
    config = org_dir / "node.toml"
    pool = org_dir / "canaries.jsonl"
    pool.write_text(
        '{"id": "c1", "prompt": "Capital of Japan?",'
        ' "check": {"type": "contains", "value": "Tokyo"}}\n'
        '{"id": "c2", "prompt": "Capital of France?",'
        ' "check": {"type": "regex", "value": "(a+)+"}}\n'
    )
    config.write_text(
        config.read_text()
        + f'\n[federation]\nroster = "{fed / "federation.toml"}"\n'
        + f'admin_key = "{fed / "admin" / "public.jwk"}"\n'
        + '\n[trust]\ncanaries = "canaries.jsonl"\n'
    )
    assert_one_line_error(
        run("node", "start", "--config", str(config)),
        2,
        "canaries.jsonl: line 2: check: a regex check may not repeat a repeated group",
    )


def test_node_refuses_to_start_with_trust_settings_for_a_non_member(
    org_dir: Path, tmp_path: Path
) -> None:
    fed = tmp_path / "fed"
    assert run("federation", "create", "Start Fed", "--dir", str(fed)).returncode == 0
    config = org_dir / "node.toml"
    base = (
        config.read_text()
        + f'\n[federation]\nroster = "{fed / "federation.toml"}"\n'
        + f'admin_key = "{fed / "admin" / "public.jwk"}"\n'
    )
    config.write_text(base + "\n[trust.peers.globex]\nexempt = true\n")
    assert_one_line_error(
        run("node", "start", "--config", str(config)),
        2,
        "trust.peers.globex: globex is not a member of federation",
    )
    config.write_text(base + "\n[trust.peers.globex]\ncanary_rate = 2\n")
    assert_one_line_error(
        run("node", "start", "--config", str(config)), 2, "trust.peers.globex.canary_rate"
    )
