"""`consortium up FILE --isolate netns` (issue 27, item 3) as an operator runs it, as root:
three echo-model organizations, each in its own network namespace behind its link proxy,
reached only over their bridge addresses.

- `status` shows each organization's address; a cross-organization `ask --peer` from
  this machine crosses the bridge; the roster holds bridge addresses, never loopback;
- `consortium net set FILE.toml --partition` cuts a link while the federation runs: the
  escalation fails at `[peers] peer_timeout_s`, the next at once (the circuit), and
  `--heal` brings the peer back;
- a node SIGKILLed is restarted in its namespace with back-off and answers again;
- SIGKILL of the launcher leaves no node or link proxy process within 5 s; the next
  `up` succeeds (removing the namespaces the dead launcher left); `down` leaves no
  namespace, bridge or process.

Every wait is on a condition; nothing asserts wall time. Every namespace is removed in a
`finally` whatever happens."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consortium.launch.federation_file import load_federation_file
from consortium.launch.launcher import federation_network
from consortium.launch.links import load_links
from tests.launch.test_launcher import cli, state_of
from tests.launch.test_local import alive, wait_until

pytestmark = [
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None,
        reason="network namespaces need root and ip",
    ),
    pytest.mark.slow,
]

ORGS = ("acme", "globex", "initech")
PEER_TIMEOUT_S = 5.0


def federation_file(tmp_path: Path, subnet: str, *, isolate_in_file: bool) -> Path:
    text = (
        f'[federation]\nname = "Namespaced"\ndirectory = "fed"\nsubnet = "{subnet}"\n'
        + ('isolate = "netns"\n' if isolate_in_file else "")
        + f"\n[peers]\npeer_timeout_s = {PEER_TIMEOUT_S}\nbreaker_open_s = 0.2\n"
        "breaker_max_open_s = 1.0\nbreaker_probe_timeout_s = 1.0\n"
    )
    for org in ORGS:
        text += f'\n[[org]]\nid = "{org}"\nbackend = "echo"\n'
    path = tmp_path / "federation.toml"
    path.write_text(text)
    return path


def namespaces(name: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if f"consortium-{name}-" in line]


def has_link(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


def processes(state: dict[str, Any]) -> list[int]:
    """Each node's and each link proxy's pid."""
    return [int(n[k]) for n in state["nodes"].values() for k in ("pid", "proxy_pid")]


def ask(fed_dir: Path, peer: str, text: str) -> subprocess.CompletedProcess[str]:
    """`consortium ask --peer` from this machine with acme's node.toml: over acme's
    bridge address."""
    return cli("ask", "--config", str(fed_dir / "acme" / "node.toml"), "--peer", peer, text)


def applied(fed_dir: Path) -> None:
    """Until every link proxy has applied the links file's current version."""
    line = f"links version {load_links(fed_dir / 'links.json').version} applied"
    wait_until(
        line,
        lambda: all(line in p.read_text() for p in fed_dir.glob("linkproxy-*.log")),
        timeout=30,
    )


@pytest.fixture
def cleanup() -> Iterator[list[Path]]:
    """Federation files brought down, and their networks removed, after the test."""
    files: list[Path] = []
    yield files
    for path in files:
        try:
            cli("down", str(path))
        finally:
            federation_network(load_federation_file(path)).destroy()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A federation up with `--isolate netns` on the command line (the file says none)."""
    path = federation_file(
        tmp_path_factory.mktemp("up-netns"), "10.201.41.0/24", isolate_in_file=False
    )
    try:
        up = cli("up", "--detach", "--isolate", "netns", str(path))
        assert up.returncode == 0, up.stderr + up.stdout
        assert "links.json" in up.stdout
        yield path
    finally:
        try:
            cli("down", str(path))
        finally:
            network = federation_network(load_federation_file(path))
            network.destroy()


def test_status_shows_addresses_and_an_ask_crosses_the_bridge(running: Path) -> None:
    fed_dir = running.parent / "fed"
    shown = cli("status", "--json", str(running))
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    addresses = {org: node["address"] for org, node in status["nodes"].items()}
    assert addresses == {"acme": "10.201.41.2", "globex": "10.201.41.3", "initech": "10.201.41.4"}
    for org, node in status["nodes"].items():
        # Read off loopback with the organization's API key: the details are there.
        assert node["health"]["status"] == "ok"
        assert node["http"] == f"http://{addresses[org]}:8080"
        peers = node["health"]["federation"]["peers"]
        assert set(peers) == set(ORGS) - {org}
        assert all(p["status"] == "active" for p in peers.values())
    assert status["network"]["links"] == str(fed_dir / "links.json")
    table = cli("status", str(running))
    assert table.returncode == 0 and "10.201.41.3" in table.stdout and "links.json" in table.stdout

    roster = (fed_dir / "federation" / "federation.toml").read_text()
    assert "10.201.41.3:50051" in roster and "127.0.0.1" not in roster
    for peer in ("globex", "initech"):
        answer = ask(fed_dir, peer, f"hello {peer}")
        assert answer.returncode == 0, answer.stderr
        assert f"hello {peer}" in answer.stdout and f"acme->{peer}" in answer.stderr


def test_net_set_partitions_a_link_and_the_escalation_fails_fast(running: Path) -> None:
    fed_dir = running.parent / "fed"
    try:
        cut = cli("net", "set", str(running), "--link", "acme:globex", "--partition")
        assert cut.returncode == 0, cut.stderr
        applied(fed_dir)
        shown = cli("net", "show", str(running))
        assert "acme:globex: partition" in shown.stdout
        # The first waits out peer_timeout_s (a silent partition answers nothing) ...
        first = ask(fed_dir, "globex", "anyone there?")
        assert first.returncode != 0 and "globex did not answer" in first.stderr
        # ... the next fails at once: the circuit is open.
        second = ask(fed_dir, "globex", "still there?")
        assert second.returncode != 0 and "circuit is open" in second.stderr
        assert ask(fed_dir, "initech", "the other link is clean").returncode == 0
    finally:
        assert cli("net", "set", str(running), "--link", "acme:globex", "--heal").returncode == 0
    applied(fed_dir)
    wait_until(
        "globex answers acme again",
        lambda: ask(fed_dir, "globex", "back?").returncode == 0,
        timeout=60,
    )


def test_a_killed_namespaced_node_is_restarted(running: Path) -> None:
    fed_dir = running.parent / "fed"
    before = state_of(running)["nodes"]["globex"]
    os.kill(int(before["pid"]), signal.SIGKILL)

    def restarted() -> bool:
        node = state_of(running)["nodes"]["globex"]
        return bool(node["restarts"] == before["restarts"] + 1 and node["state"] == "running")

    wait_until("globex is restarted", restarted, timeout=120)
    node = state_of(running)["nodes"]["globex"]
    assert node["pid"] != before["pid"] and node["address"] == before["address"]
    wait_until(
        "globex answers acme again",
        lambda: ask(fed_dir, "globex", "after the restart").returncode == 0,
        timeout=60,
    )


def test_a_killed_link_proxy_is_restarted(running: Path) -> None:
    fed_dir = running.parent / "fed"
    before = state_of(running)["nodes"]["initech"]
    os.kill(int(before["proxy_pid"]), signal.SIGKILL)
    wait_until(
        "initech's link proxy is restarted",
        lambda: state_of(running)["nodes"]["initech"]["proxy_pid"] != before["proxy_pid"],
        timeout=60,
    )
    wait_until(
        "initech answers acme again",
        lambda: ask(fed_dir, "initech", "through the new proxy").returncode == 0,
        timeout=60,
    )


def test_sigkill_leaves_no_process_the_next_up_works_and_down_leaves_nothing(
    tmp_path: Path, cleanup: list[Path]
) -> None:
    path = federation_file(tmp_path, "10.201.42.0/24", isolate_in_file=True)
    cleanup.append(path)
    name = federation_network(load_federation_file(path)).name
    assert cli("up", "--detach", str(path)).returncode == 0
    state = state_of(path)
    launcher, pids = int(state["supervisor"]["pid"]), processes(state)
    assert len(pids) == 6 and all(alive(p) for p in pids)
    assert len(namespaces(name)) == 3 and has_link(f"{name}-br")

    os.kill(launcher, signal.SIGKILL)
    wait_until("no node or link proxy is left", lambda: not any(alive(p) for p in pids), 5)

    again = cli("up", "--detach", str(path))  # removes what the dead launcher left
    assert again.returncode == 0, again.stderr + again.stdout
    assert ask(tmp_path / "fed", "initech", "after a SIGKILL").returncode == 0
    state = state_of(path)
    pids = processes(state)
    assert len(namespaces(name)) == 3

    down = cli("down", str(path))
    assert down.returncode == 0, down.stderr
    assert not any(alive(p) for p in [*pids, int(state["supervisor"]["pid"])])
    assert namespaces(name) == [] and not has_link(f"{name}-br")


def test_down_after_a_sigkilled_launcher_removes_its_namespaces(
    tmp_path: Path, cleanup: list[Path]
) -> None:
    path = federation_file(tmp_path, "10.201.43.0/24", isolate_in_file=True)
    cleanup.append(path)
    name = federation_network(load_federation_file(path)).name
    assert cli("up", "--detach", str(path)).returncode == 0
    state = state_of(path)
    pids = processes(state)
    os.kill(int(state["supervisor"]["pid"]), signal.SIGKILL)
    wait_until("no node or link proxy is left", lambda: not any(alive(p) for p in pids), 5)
    assert cli("down", str(path)).returncode == 0
    assert namespaces(name) == [] and not has_link(f"{name}-br")
