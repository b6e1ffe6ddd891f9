"""`consortium up | down | status FILE` on echo-model organizations, as an operator runs
them (the CLI in its own processes): up, status and down; a second up changes no file;
a node killed is restarted with back-off and admitted again; whatever the launcher is
killed with, in the foreground or detached, no node outlives it; a bad file is one clear
line."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from consortium.federation.roster import load_roster
from consortium.launch.launcher import STATE_FILE, read_state
from tests.launch.test_local import alive, wait_until

ENV = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consortium.cli", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def federation_file(tmp_path: Path, orgs: list[str], *, fixed_ports: bool = False) -> Path:
    text = '[federation]\nname = "Launcher test"\ndirectory = "fed"\n'
    for org in orgs:
        text += f'\n[[org]]\nid = "{org}"\nbackend = "echo"\n'
        if fixed_ports:
            text += f"grpc_port = {free_port()}\nhttp_port = {free_port()}\n"
    path = tmp_path / "federation.toml"
    path.write_text(text)
    return path


def state_of(path: Path) -> dict[str, Any]:
    state = read_state(path.parent / "fed" / STATE_FILE)
    assert state is not None
    return state


def node_pids(state: dict[str, Any]) -> list[int]:
    return [int(n["pid"]) for n in state["nodes"].values()]


def made_files(directory: Path) -> dict[str, str]:
    """What `up` creates (not the nodes' databases and logs): name -> digest."""
    files = [directory / "federation" / "federation.toml", *directory.glob("federation/admin/*")]
    for node in directory.iterdir():
        if (node / "node.toml").exists():
            files += [node / "node.toml", node / "agent-card.json", *node.glob("keys/*")]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(files)}


@pytest.fixture
def down_after() -> Iterator[Callable[[Path], None]]:
    """Registers federation files whose launchers are stopped after the test."""
    files: list[Path] = []
    yield files.append
    for path in files:
        cli("down", str(path))


def test_up_status_down_and_a_second_up_changes_nothing(
    tmp_path: Path, down_after: Callable[[Path], None]
) -> None:
    path = federation_file(tmp_path, ["acme", "globex", "initech"], fixed_ports=True)
    down_after(path)
    up = cli("up", "--detach", str(path))
    assert up.returncode == 0, up.stderr
    for org in ("acme", "globex", "initech"):
        assert org in up.stdout
    state_path = tmp_path / "fed" / STATE_FILE
    assert stat.S_IMODE(state_path.stat().st_mode) == 0o600
    state = state_of(path)
    assert state["ready"] and all(alive(pid) for pid in node_pids(state))
    assert all(Path(n["log"]).is_file() for n in state["nodes"].values())

    shown = cli("status", "--json", str(path))
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["running"]
    for org, node in status["nodes"].items():
        assert node["health"]["status"] == "ok"
        assert node["restarts"] == 0
        peers = node["health"]["federation"]["peers"]
        assert set(peers) == {"acme", "globex", "initech"} - {org}
        assert all(p["status"] == "active" and p["trust"] == "healthy" for p in peers.values())
    table = cli("status", str(path))
    assert table.returncode == 0 and "healthy" in table.stdout

    before = made_files(tmp_path / "fed")
    again = cli("up", "--detach", str(path))
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stdout and "nothing changed" in again.stdout
    assert made_files(tmp_path / "fed") == before
    assert node_pids(state_of(path)) == node_pids(state)

    down = cli("down", str(path))
    assert down.returncode == 0, down.stderr
    assert "stopped 3 node(s)" in down.stdout
    assert not state_path.exists()
    assert not any(alive(pid) for pid in [*node_pids(state), state["supervisor"]["pid"]])

    # Up again after down: the same ports, so the roster, keys and configs are unchanged.
    assert "note:" not in up.stdout
    assert cli("up", "--detach", str(path)).returncode == 0
    assert made_files(tmp_path / "fed") == before
    assert cli("down", str(path)).returncode == 0

    # A setting added to the file later is not written into existing node.toml files:
    # `up` and `status` say which, and change nothing.
    path.write_text(path.read_text() + "\n[peers]\npeer_timeout_s = 7.5\n")
    edited = cli("up", "--detach", str(path))
    assert edited.returncode == 0, edited.stderr
    flat = " ".join(edited.stdout.split())
    for org in ("acme", "globex", "initech"):
        assert f"note: {org}: its node.toml does not hold what federation.toml sets for " in flat
    assert "federation.peer_timeout_s; the node runs with its node.toml's" in flat
    assert made_files(tmp_path / "fed") == before
    status = json.loads(cli("status", "--json", str(path)).stdout)
    assert "federation.peer_timeout_s" in status["nodes"]["acme"]["drift"]
    assert cli("down", str(path)).returncode == 0


def test_a_killed_node_is_restarted_with_back_off_and_admitted_again(
    tmp_path: Path, down_after: Callable[[Path], None]
) -> None:
    path = federation_file(tmp_path, ["acme", "globex"])
    down_after(path)
    assert cli("up", "--detach", str(path)).returncode == 0
    roster_path = tmp_path / "fed" / "federation" / "federation.toml"
    for restarts, backoff in ((1, 2.0), (2, 4.0)):
        before = state_of(path)["nodes"]["globex"]
        os.kill(int(before["pid"]), signal.SIGKILL)

        def restarted(n: int = restarts) -> bool:
            node = state_of(path)["nodes"]["globex"]
            return node["restarts"] == n and node["state"] == "running"

        wait_until("globex has been restarted", restarted, timeout=120)
        node = state_of(path)["nodes"]["globex"]
        assert node["pid"] != before["pid"] and node["last_exit"] == -signal.SIGKILL
        assert node["backoff_s"] == backoff  # the delay before the next restart doubles
        # Admitted again: the roster lists where it now listens, and acme holds that roster.
        roster = load_roster(roster_path)
        member = roster.member("globex")
        assert member is not None and member.endpoints.grpc == node["grpc"]
        status = json.loads(cli("status", "--json", str(path)).stdout)
        acme = status["nodes"]["acme"]["health"]["federation"]
        assert acme["roster_version"] == roster.version
        assert acme["peers"]["globex"]["status"] == "active"
        assert status["nodes"]["globex"]["health"]["status"] == "ok"
        assert status["nodes"]["globex"]["restarts"] == restarts
    assert (tmp_path / "fed" / "globex" / "node.1.log").is_file()  # the dead node's log


@pytest.mark.parametrize("detach", [False, True], ids=["foreground", "detached"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_no_node_outlives_its_launcher(tmp_path: Path, detach: bool, sig: signal.Signals) -> None:
    path = federation_file(tmp_path, ["acme", "globex"])
    foreground: subprocess.Popen[str] | None = None
    try:
        if detach:
            assert cli("up", "--detach", str(path)).returncode == 0
        else:
            foreground = subprocess.Popen(
                [sys.executable, "-m", "consortium.cli", "up", str(path)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=ENV,
            )
            state_path = tmp_path / "fed" / STATE_FILE

            def ready() -> bool:
                state = read_state(state_path)
                assert foreground is not None and foreground.poll() is None
                return bool(state and state["ready"])

            wait_until("the federation is up", ready, timeout=180)
        state = state_of(path)
        launcher = int(state["supervisor"]["pid"])
        assert foreground is None or launcher == foreground.pid
        nodes = node_pids(state)
        assert len(nodes) == 2 and all(alive(pid) for pid in nodes)
        os.kill(launcher, sig)
        wait_until("no node process is left", lambda: not any(alive(p) for p in nodes), timeout=5)
        wait_until("the launcher has exited", lambda: not alive(launcher), timeout=30)
    finally:
        if foreground is not None:
            foreground.kill()
            foreground.wait()
        cli("down", str(path))


def test_a_bad_file_is_one_line_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[federation]\nname = "x"\n\n[[org]]\nid = "acme"\ngrpc_port = 99999\n')
    for command in ("up", "status", "down"):
        result = cli(command, str(path))
        assert result.returncode == 2
        line = result.stderr.strip()
        assert "\n" not in line
        assert f"{path}: line 6: org[0].grpc_port:" in line and "65535" in line, line
    assert not (tmp_path / "bad").exists()  # nothing was created


def test_status_and_down_of_a_federation_that_does_not_run(tmp_path: Path) -> None:
    path = federation_file(tmp_path, ["acme"])
    for command in ("status", "down"):
        result = cli(command, str(path))
        assert result.returncode == 1
        assert "not running" in result.stderr
