"""Local organizations: the argv a node is started with (`consortium node start` by
default, or an organization's own `command` with `{config}` filled in), `start_node`
running such a command under a supervisor until its READY line; a federation's nodes
stop when whatever launched them dies, and a federation restarted in its directory has
its new endpoints in the roster (echo models, real processes)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from consortium.errors import NodeUnavailableError
from consortium.federation.roster import load_roster
from consortium.launch.local import (
    LocalFederation,
    Organization,
    RunningNode,
    available_cores,
    node_command,
    start_node,
    threads_per_node,
)
from consortium.launch.supervisor import Supervisor


def test_default_command_is_node_start(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    assert node_command(config) == [
        sys.executable,
        "-m",
        "consortium.cli",
        "node",
        "start",
        "--config",
        str(config),
    ]
    assert node_command(config, ()) == node_command(config)


def test_command_template_gets_the_config_path(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    org = Organization("umbrella", "Umbrella", "gemma3-270m", command=("run", "--config={config}"))
    assert node_command(config, org.command) == ["run", f"--config={config}"]
    assert Organization("acme", "Acme", "smollm2-135m").command == ()


def test_start_node_runs_the_command_until_ready(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("")
    code = (
        "import sys, time\n"
        "assert sys.argv[1].endswith('node.toml')\n"
        "print('READY grpc=127.0.0.1:1 http=http://127.0.0.1:2', flush=True)\n"
        "time.sleep(60)\n"
    )
    with Supervisor(tmp_path) as sup:
        child, url = start_node(
            config, tmp_path / "node.log", 30, sup, (sys.executable, "-c", code, "{config}")
        )
        assert url == "http://127.0.0.1:2"
        assert child.stop() == -signal.SIGTERM


def test_a_command_that_exits_is_a_clear_error(tmp_path: Path) -> None:
    code = "import sys; print('no such node', file=sys.stderr); sys.exit(2)"
    with Supervisor(tmp_path) as sup, pytest.raises(NodeUnavailableError, match="no such node"):
        start_node(
            tmp_path / "node.toml", tmp_path / "node.log", 30, sup, (sys.executable, "-c", code)
        )


def wait_until(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.1)


def echo_org(fed: LocalFederation, org_id: str, extra: str = "") -> Organization:
    """An organization whose node runs the echo model (the test is about the processes)."""
    org = Organization(org_id, org_id.title(), "smollm2-135m", config_extra=extra)
    config = fed.prepare(org)
    config.write_text(config.read_text().replace('backend = "llama_cpp"', 'backend = "echo"'))
    return org


def alive(pid: int) -> bool:
    """Running (a zombie awaiting its reaper counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.split(")")[-1].split()[0] != "Z"


def serving(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


# A launcher, as the demo is one: a federation of one echo node; prints the node's pid and
# URL, then waits to be killed.
LAUNCHER = """
import sys, time
from pathlib import Path
from consortium.launch.local import LocalFederation, Organization

fed = LocalFederation(Path(sys.argv[1]), "orphans")
org = Organization("acme", "Acme", "smollm2-135m")
config = fed.prepare(org)
config.write_text(config.read_text().replace('backend = "llama_cpp"', 'backend = "echo"'))
node = fed.start(org)
print(node.child.process.pid, node.http_url, flush=True)
time.sleep(600)
"""


def test_nodes_stop_when_their_launcher_is_killed(tmp_path: Path) -> None:
    """SIGKILL: the launcher runs no code of its own (SIGTERM and the thread that started
    a child are in tests/launch/test_supervisor.py)."""
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert launcher.stdout is not None
        pid, url = launcher.stdout.readline().split()
        assert serving(url)
        launcher.kill()
        assert launcher.wait(timeout=30) == -signal.SIGKILL
        wait_until("the node has stopped", lambda: not alive(int(pid)), timeout=30)
        assert not serving(url)
    finally:
        launcher.kill()
        launcher.wait()


WITNESSING = """
[audit]
checkpoint_interval_s = 0.3
witness_interval_s = 0.3
witnessed_by = 1
"""


def test_a_restarted_federation_has_its_new_endpoints_in_the_roster(tmp_path: Path) -> None:
    """A second run in the same directory: the roster lists the ports the nodes listen on
    now, and each node's checkpoints are cosigned by the other again."""

    def health(node: RunningNode) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(node.http_url + "/healthz", timeout=10).json()
        return body

    for _run in range(2):
        with LocalFederation(tmp_path, "restart") as fed:
            nodes = [fed.start(echo_org(fed, org, WITNESSING)) for org in ("acme", "globex")]
            roster = fed.admit()
            for node in nodes:
                member = roster.member(node.org_id)
                assert member is not None
                assert member.endpoints.jsonrpc.startswith(node.http_url)
                assert member.endpoints.agent_card.startswith(node.http_url)
                ready = dict(part.split("=", 1) for part in node.child.ready_line.split()[1:])
                assert member.endpoints.grpc == ready["grpc"]
            assert load_roster(fed.paths.roster) == roster
            wait_until(
                "each node's checkpoints are cosigned by the other",
                lambda: all(health(n)["audit"]["collected"] >= 1 for n in nodes),  # noqa: B023
            )


@pytest.mark.parametrize(
    ("nodes", "cores", "threads"),
    [(1, 2, 2), (3, 2, 1), (2, 2, 1), (3, 8, 2), (4, 8, 2), (2, 7, 3), (5, 1, 1)],
)
def test_nodes_share_the_cores(nodes: int, cores: int, threads: int) -> None:
    assert threads_per_node(nodes, cores) == threads


def test_a_federation_of_no_nodes_is_refused() -> None:
    with pytest.raises(ValueError, match="nodes must be at least 1"):
        threads_per_node(0, 2)


def test_the_cores_are_those_this_process_may_run_on() -> None:
    import os

    assert available_cores() == len(os.sched_getaffinity(0)) >= 1


def test_the_demos_node_tomls_share_the_cores(tmp_path: Path) -> None:
    """Each of the demo's three node.toml files gets its share of the cores as
    `[model] threads`; an organization's own setting wins; an existing node.toml is
    left as it is."""
    from consortium.launch.demo import demo_launcher
    from consortium.node.config import load_config

    launcher = demo_launcher(tmp_path)
    fed = launcher.provision()
    with fed:
        assert list(launcher.nodes) == ["acme", "globex", "initech"]
        share = threads_per_node(3, available_cores())
        for org in launcher.nodes:
            assert load_config(tmp_path / org / "node.toml").model.threads == share
        own = Organization("hooli", "Hooli", "smollm2-135m", threads=5)
        config = fed.prepare(own)
        assert load_config(config).model.threads == 5
        config.write_text(config.read_text().replace("threads = 5", "threads = 7"))
        assert load_config(fed.prepare(own)).model.threads == 7
