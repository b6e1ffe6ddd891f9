"""API keys through the CLI, against a node in its own process (echo model, DEBUG logs):
`init` leaves an owner key that `ask` uses; `keys create|list|revoke` act on the running
node without a restart; strangers are refused; and nothing a caller sends — text, PII,
malformed JSON — reaches the node's log, even at DEBUG."""

from __future__ import annotations

import re
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from consortium.launch.local import start_node
from tests.integration.test_cli import run

SECRET_TEXT = "Jane Q. Doe, SSN 078-05-1120, jane.doe@example.com, +1 212 555 0100"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, Path]]:
    d = tmp_path_factory.mktemp("cli-keys") / "acme"
    r = run("init", "acme", "--dir", str(d), "--grpc-port", "0", "--http-port", "0")
    assert r.returncode == 0, r.stderr
    config = d / "node.toml"
    text = config.read_text()
    text = text.replace('backend = "llama_cpp"', 'backend = "echo"')
    text = text.replace('name = "smollm2-135m"', 'name = "echo"')
    text = text.replace('level = "INFO"', 'level = "DEBUG"')
    config.write_text(text)
    log = d / "node.log"
    child, url = start_node(config, log)
    yield config, url, log
    child.stop()


def test_init_leaves_an_owner_key_that_ask_uses(node: tuple[Path, str, Path]) -> None:
    config, _, _ = node
    key_file = config.parent / "keys" / "api.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert re.fullmatch(r"csk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", key_file.read_text().strip())
    assert "anonymous_loopback = true" in config.read_text()
    listed = run("keys", "list", "--config", str(config))
    assert listed.returncode == 0 and " owner " in listed.stdout and "admin" in listed.stdout
    for transport in ("grpc", "jsonrpc"):
        r = run("ask", "--config", str(config), "--transport", transport, "owner question")
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "owner question"


def test_created_key_works_until_revoked(node: tuple[Path, str, Path]) -> None:
    config, _, _ = node
    created = run("keys", "create", "reporting-app", "--config", str(config), "--expires", "30d")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    key_id = token.split("_")[1]
    assert "shown only now" in created.stderr
    key_file = config.parent / "app.key"
    key_file.write_text(token + "\n")
    r = run("ask", "--config", str(config), "--api-key-file", str(key_file), "app question")
    assert r.returncode == 0 and r.stdout.strip() == "app question", r.stderr
    listed = run("keys", "list", "--config", str(config)).stdout
    assert f"{key_id}  reporting-app  active" in listed and token not in listed
    revoked = run("keys", "revoke", key_id, "--config", str(config))
    assert revoked.returncode == 0 and key_id in revoked.stdout
    for transport in ("grpc", "jsonrpc"):
        r = run(
            "ask",
            "--config",
            str(config),
            "--transport",
            transport,
            "--api-key-file",
            str(key_file),
            "after revocation",
        )
        assert r.returncode != 0
        assert "Traceback" not in r.stderr and "API key" in r.stderr, r.stderr
    assert (
        f"{key_id}  reporting-app  revoked" in run("keys", "list", "--config", str(config)).stdout
    )


def test_keys_bad_input_is_one_clear_line(node: tuple[Path, str, Path]) -> None:
    config, _, _ = node
    for args, needle in (
        (("create", "bad name!", "--config", str(config)), "key name"),
        (("create", "x", "--config", str(config), "--expires", "soon"), "--expires"),
        (("create", "x", "--config", str(config), "--expires", "2001-01-01"), "past"),
        (("revoke", "nope", "--config", str(config)), "no active key"),
        (("list", "--config", str(config.parent / "missing.toml")), "not found"),
    ):
        r = run("keys", *args)
        assert r.returncode == 2, (args, r.stderr)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and needle in lines[0], (args, r.stderr)


def test_nothing_a_caller_sends_reaches_the_log_even_at_debug(
    node: tuple[Path, str, Path],
) -> None:
    config, url, log = node
    r = run("ask", "--config", str(config), "--transport", "jsonrpc", SECRET_TEXT)
    assert r.returncode == 0, r.stderr
    key = (config.parent / "keys" / "api.key").read_text().strip()
    auth = {"Authorization": f"Bearer {key}", "A2A-Version": "1.0"}
    with httpx.Client() as http:
        # Malformed parameters quoting the secret, and a bad method: the SDK's error logs.
        http.post(
            url + "/",
            headers=auth,
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "SendMessage",
                "params": {"message": {"role": SECRET_TEXT, "parts": SECRET_TEXT}},
            },
        )
        http.post(
            url + "/",
            headers=auth,
            content=b'{"jsonrpc": "2.0", "method": "' + SECRET_TEXT.encode(),
        )
    text = log.read_text()
    assert "DEBUG" in text  # the node really logs at DEBUG
    for needle in ("078-05-1120", "jane.doe@example.com", "Jane Q. Doe", "555 0100", key):
        assert needle not in text, needle
    data = config.parent / "data"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for p in data.iterdir():
        if p.is_file():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


def test_a_stranger_is_refused_when_anonymous_callers_are_not_allowed(tmp_path: Path) -> None:
    d = tmp_path / "globex"
    r = run("init", "globex", "--dir", str(d), "--grpc-port", "0", "--http-port", "0")
    assert r.returncode == 0, r.stderr
    config = d / "node.toml"
    text = config.read_text().replace('backend = "llama_cpp"', 'backend = "echo"')
    text = text.replace('name = "smollm2-135m"', 'name = "echo"')
    config.write_text(text.replace("anonymous_loopback = true", "anonymous_loopback = false"))
    child, url = start_node(config, d / "node.log")
    try:
        (d / "keys" / "api.key").unlink()
        r = run("ask", "--config", str(config), "no key")
        assert r.returncode != 0 and "credentials required" in r.stderr, r.stderr
        with httpx.Client() as http:
            health = http.get(url + "/healthz").json()  # loopback: details
            assert health["refusals"]["no_credentials"] >= 1
    finally:
        child.stop()
