"""The README's two-replicas walkthrough (issue 28), run as written: each `$ command` in
the block after `<!-- walkthrough: replicas -->` runs with bash in one directory; lines
without a prompt continue the command before (a heredoc); a command ending in `&` (a
replica) starts under a supervisor and is waited for until ready. What a test must do
differently: the database is a throwaway PostgreSQL server (consortium/launch/
pgcluster.py) with the README's role and database, and every port the block names
(PostgreSQL's 5432, the replicas' 50051, 8080, 50061, 8090) is replaced by a free one.
The real model answers. Then: the card the second replica serves lists both replicas'
interfaces, and both replicas took the task's rows into the one database."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from consortium.launch.local import node_environment
from consortium.launch.pgcluster import PgCluster
from consortium.launch.supervisor import Supervisor

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- walkthrough: replicas -->"
PORTS = ("5432", "50051", "8080", "50061", "8090")


def walkthrough(readme: str) -> list[str]:
    after = readme.split(MARKER, 1)[1]
    block = re.search(r"```console\n(.*?)```", after, re.S)
    assert block is not None, "no console block after the walkthrough marker"
    steps: list[str] = []
    for line in block.group(1).splitlines():
        if line.startswith("$ "):
            steps.append(line[2:])
        else:
            assert steps, f"a line before the first prompt: {line!r}"
            steps[-1] += "\n" + line
    return steps


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_the_walkthrough_block_parses() -> None:
    steps = walkthrough((ROOT / "README.md").read_text())
    assert sum(cmd.endswith("&") for cmd in steps) == 2
    assert any(cmd.startswith("consortium ask") for cmd in steps)
    assert all(any(port in cmd for cmd in steps) for port in PORTS)


def test_two_replicas_on_one_postgresql_as_the_readme_says(tmp_path: Path) -> None:
    ports = {p: str(free_port()) for p in PORTS}
    steps = walkthrough((ROOT / "README.md").read_text())
    for old, new in ports.items():
        steps = [re.sub(rf"(?<=[:\s]){old}\b", new, cmd) for cmd in steps]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "consortium"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m consortium.cli "$@"\n')
    wrapper.chmod(0o755)
    work = tmp_path / "org"
    work.mkdir()
    cluster = PgCluster.create(
        Path(tempfile.mkdtemp(prefix="consortium-pg-")), port=int(ports["5432"])
    )
    password = "acme-" + os.urandom(6).hex()
    cluster.sql(f"CREATE ROLE acme LOGIN PASSWORD '{password}'")
    cluster.sql("CREATE DATABASE acme OWNER acme")
    env = {
        **node_environment(),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "ACME_DB_PASSWORD": password,
    }
    env.pop("PGPASSWORD", None)
    supervisor = Supervisor(tmp_path / "logs", env, grace_s=15.0)
    try:
        outputs: dict[str, str] = {}
        for command in steps:
            if command.endswith("&"):
                started = supervisor.start(
                    f"replica-{len(outputs)}",
                    ["bash", "-c", f"cd {work}; exec " + command.rstrip("& ")],
                    ready_line="READY ",
                    timeout=300,
                )
                assert started.process.poll() is None
                outputs[command] = ""
                continue
            for _attempt in range(60):  # the card lists the other replica after a heartbeat
                r = subprocess.run(
                    ["bash", "-c", command],
                    cwd=work,
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=600,
                    check=False,
                )
                if not command.startswith("curl") or r.stdout.count('"url"') >= 4:
                    break
                time.sleep(0.5)
            assert r.returncode == 0, f"$ {command}\n{r.stdout}\n{r.stderr}"
            outputs[command] = r.stdout + r.stderr
        asked = next(v for k, v in outputs.items() if k.startswith("consortium ask"))
        assert "· acme · smollm2-135m" in asked and "bee" in asked.lower(), asked
        card = json.loads(next(v for k, v in outputs.items() if k.startswith("curl")))
        urls = [i["url"] for i in card["supportedInterfaces"]]
        assert urls[0].endswith(ports["50061"])  # the second replica's own first
        assert any(u.endswith(ports["50051"]) for u in urls[1:])
        assert password not in json.dumps(outputs)
        assert (work / "acme" / "keys" / "db-password").stat().st_mode & 0o077 == 0
    finally:
        supervisor.stop()
        cluster.destroy()
