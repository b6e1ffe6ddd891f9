"""The systemd unit template (deploy/systemd/consortium-node@.service): systemd's own
`systemd-analyze verify` finds nothing to say about it, it carries the hardening the
deployment section of deploy/README.md promises, and the signal its ExecReload sends
(SIGHUP) makes a running node take a new roster at once (or keep the one in force when
the new file is refused) instead of stopping it. Nodes run the echo model: the tests are
about the process, not the model."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from consortium.federation.admin import add_member, member_key
from consortium.federation.roster import Member, load_roster, write_roster
from consortium.launch.local import LocalFederation, Organization, RunningNode
from consortium.trust.keys import generate_key, public_jwk

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "consortium-node@.service"
INSTALLED_AT = "/opt/consortium/bin/consortium"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def unit_keys(text: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> the values it is given, in order (a key may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"a key outside any section: {line!r}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def verify(unit_text: str, directory: Path) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` of the unit as written, but for its executable: the
    package is not installed at /opt/consortium on a test machine, and verify refuses a
    missing executable, so ExecStart names the `consortium` of the environment running
    the tests (a real executable; nothing else in the unit changes)."""
    assert SYSTEMD_ANALYZE is not None
    here = Path(sys.executable).parent / "consortium"
    assert here.exists(), f"the consortium executable is not beside {sys.executable}"
    assert unit_text.count(INSTALLED_AT) == 1
    path = directory / UNIT.name
    path.write_text(unit_text.replace(INSTALLED_AT, str(here)))
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not installed on this machine (Debian: package systemd); "
    "the unit cannot be verified here",
)


@needs_systemd_analyze
def test_systemd_analyze_verify_reports_nothing(tmp_path: Path) -> None:
    result = verify(UNIT.read_text(), tmp_path)
    assert result.returncode == 0, result.stderr
    # verify exits 0 on unknown keys and unparsable values, and only says so.
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stderr


@needs_systemd_analyze
@pytest.mark.parametrize(
    ("line", "mistake", "said"),
    [
        # A key systemd 252 (Debian 12) does not know: verify still exits 0.
        ("RestartSec=5s", "RestartSteps=5", "Unknown key"),
        ("Restart=on-failure", "Restart=sometimes", "Failed to parse"),
        ("ProtectSystem=strict", "ProtectSystem=very", "Failed to parse"),
    ],
)
def test_verify_catches_a_mistake_in_the_unit(
    tmp_path: Path, line: str, mistake: str, said: str
) -> None:
    """The check above can fail: the same unit with one bad line is reported."""
    text = UNIT.read_text()
    assert line in text
    result = verify(text.replace(line, mistake), tmp_path)
    assert said in result.stderr


def test_the_unit_is_hardened() -> None:
    keys = unit_keys(UNIT.read_text())
    service = {k: v[-1] for k, v in keys["Service"].items()}
    assert service["User"] == "consortium" and "DynamicUser" not in service
    assert service["ProtectSystem"] == "strict"
    assert service["ReadWritePaths"] == "/var/lib/consortium/%i"
    assert service["StateDirectory"] == "consortium/%i"
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "PrivateDevices"):
        assert service[key] == "yes", key
    assert service["CapabilityBoundingSet"] == "" and service["AmbientCapabilities"] == ""
    assert int(service["LimitNOFILE"]) >= 65536
    assert service["UMask"] == "0077"


def test_the_unit_restarts_on_failure_with_limits_and_reloads_with_sighup() -> None:
    keys = unit_keys(UNIT.read_text())
    service = {k: v[-1] for k, v in keys["Service"].items()}
    assert service["Restart"] == "on-failure" and service["RestartSec"] == "5s"
    assert int(keys["Unit"]["StartLimitBurst"][-1]) > 1
    assert keys["Unit"]["StartLimitIntervalSec"][-1] == "600"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["ExecStart"] == (
        f"{INSTALLED_AT} node start --config /var/lib/consortium/%i/node.toml"
    )
    assert keys["Install"]["WantedBy"] == ["multi-user.target"]


def test_a_unit_with_a_key_outside_a_section_is_refused_by_the_parser() -> None:
    with pytest.raises(AssertionError, match="outside any section"):
        unit_keys("User=consortium\n[Service]\n")


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


@pytest.fixture
def one_node(tmp_path: Path) -> Iterator[tuple[LocalFederation, RunningNode]]:
    """A federation of one echo node, admitted (roster version 2)."""
    with LocalFederation(tmp_path, "reload") as fed:
        org = Organization("acme", "Acme", "smollm2-135m")
        config = fed.prepare(org)
        config.write_text(config.read_text().replace('backend = "llama_cpp"', 'backend = "echo"'))
        node = fed.start(org)
        assert fed.admit().version == 2
        yield fed, node


def newcomer() -> Member:
    return Member(org_id="globex", keys=[member_key(public_jwk(generate_key()), "--key")])


@pytest.mark.slow
def test_sighup_makes_a_running_node_take_the_new_roster(
    one_node: tuple[LocalFederation, RunningNode],
) -> None:
    fed, node = one_node
    add_member(fed.paths.roster, fed.paths.admin_private, newcomer())
    assert load_roster(fed.paths.roster).version == 3
    os.kill(node.child.process.pid, signal.SIGHUP)
    wait_for(
        "the node logs the new version in force",
        lambda: "reload: roster version 3 in force" in node.child.log(),
    )
    assert node.child.process.poll() is None  # SIGHUP did not stop it
    assert "roster" in node.child.log() and "reloaded: version 3" in node.child.log()


@pytest.mark.slow
def test_sighup_with_a_tampered_roster_keeps_the_one_in_force(
    one_node: tuple[LocalFederation, RunningNode],
) -> None:
    fed, node = one_node
    roster = load_roster(fed.paths.roster)
    # A member added without the admin's signature: refused.
    write_roster(
        fed.paths.roster,
        roster.model_copy(update={"members": [*roster.members, newcomer()], "version": 3}),
    )
    os.kill(node.child.process.pid, signal.SIGHUP)
    wait_for(
        "the node logs the version it keeps",
        lambda: "reload: roster version 2 in force" in node.child.log(),
    )
    assert "refused, keeping version 2" in node.child.log()
    assert node.child.process.poll() is None
