"""Local organizations: the argv a node is started with (`consortium node start` by
default, or an organization's own `command` with `{config}` filled in), and `start_node`
running such a command under a supervisor until its READY line."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from consortium.errors import NodeUnavailableError
from consortium.launch.local import Organization, node_command, start_node
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
