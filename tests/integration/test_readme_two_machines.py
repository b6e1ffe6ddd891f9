"""The README's "Two organizations on two machines" walkthrough (issue 27, item 6), run as
written: each `ORG$ command` in the block after `<!-- walkthrough: two-machines -->` runs
with bash in that organization's network namespace (launch/netns.py), whose address is
the one the README names, in a directory of its own (its "machine"); lines without a
prompt continue the command before (a heredoc). Two things are done the way a test must:
`scp HOST:PATH DEST` copies the file between the two machines' directories, and a
command ending in `&` (a node) starts under a supervisor and is waited for until ready.
The real model answers (the walkthrough's default). So the docs cannot drift: change the
README and this test runs the change."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from consortium.launch.local import node_environment
from consortium.launch.netns import Network
from consortium.launch.supervisor import Supervisor
from tests.integration.netns_federation import needs_netns

pytestmark = [needs_netns, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- walkthrough: two-machines -->"
PROMPT = re.compile(r"^([a-z][a-z0-9-]*)\$ (.*)$")


def walkthrough(readme: str) -> list[tuple[str, str]]:
    """The (organization, command) pairs of the walkthrough block, in order."""
    after = readme.split(MARKER, 1)[1]
    block = re.search(r"```console\n(.*?)```", after, re.S)
    assert block is not None, "no console block after the walkthrough marker"
    steps: list[tuple[str, str]] = []
    for line in block.group(1).splitlines():
        m = PROMPT.match(line)
        if m:
            steps.append((m.group(1), m.group(2)))
        else:
            assert steps, f"a line before the first prompt: {line!r}"
            steps[-1] = (steps[-1][0], steps[-1][1] + "\n" + line)
    return steps


def test_the_walkthrough_block_parses() -> None:
    steps = walkthrough((ROOT / "README.md").read_text())
    orgs = {org for org, _ in steps}
    assert orgs == {"acme", "globex"}
    assert any(cmd.startswith("consortium ask") for _, cmd in steps)
    assert sum(cmd.endswith("&") for _, cmd in steps) == 2


@needs_netns
def test_two_organizations_on_two_machines_as_the_readme_says(tmp_path: Path) -> None:
    steps = walkthrough((ROOT / "README.md").read_text())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "consortium"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m consortium.cli "$@"\n')
    wrapper.chmod(0o755)
    env = {
        **node_environment(),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "COLUMNS": "250",
    }
    network = Network("nlw", subnet="10.77.0.0/24")
    supervisor = Supervisor(tmp_path / "logs", env, grace_s=15.0)
    try:
        network.create(["acme", "globex"])
        machines = {org: tmp_path / org for org in ("acme", "globex")}
        by_address = {network.host(org).address: org for org in machines}
        for directory in machines.values():
            directory.mkdir()
        readme = (ROOT / "README.md").read_text()
        for address in by_address:  # the README names the addresses the network has
            assert address in readme
        answered = ""
        for org, command in steps:
            here = machines[org]
            if command.startswith("scp "):
                source, dest = shlex.split(command)[1:]
                address, _, path = source.partition(":")
                shutil.copy(machines[by_address[address]] / path, here / dest)
                continue
            argv = [*network.host(org).prefix, "bash", "-c", f"cd {shlex.quote(str(here))}; "]
            if command.endswith("&"):
                started = supervisor.start(
                    f"{org}-node",
                    [*argv[:-1], argv[-1] + "exec " + command.rstrip("& ")],
                    ready_line="READY ",
                    timeout=300,
                )
                assert started.process.poll() is None
                continue
            r = subprocess.run(
                [*argv[:-1], argv[-1] + command],
                capture_output=True,
                text=True,
                env=env,
                timeout=600,
                check=False,
            )
            assert r.returncode == 0, f"{org}$ {command}\n{r.stdout}\n{r.stderr}"
            if command.startswith("consortium ask"):
                answered = r.stdout + r.stderr
        # acme asked globex across the network, and the answer came back verified.
        assert "acme->globex" in answered and "verified: True" in answered, answered
    finally:
        supervisor.stop()
        network.destroy()
