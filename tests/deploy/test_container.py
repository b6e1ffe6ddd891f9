"""The node's container image and compose file (deploy/container/), run with podman: three
organizations and the OTLP collector started by podman-compose from compose.yaml, each
node in its own container on the compose network, as uid 10001 with its keys on its
volume; the admin (this test, on the host) admits them from the agent cards they serve
and publishes the roster into the directory they mount; a question from acme crosses to
globex, signed and verified, on the bundled SmolLM2-135M; both organizations' spans of
it reach the collector. The image's own HEALTHCHECK says when a node is up.

Runs only under `make test-container` (deploy/container/build.sh builds the image first,
then this runs with CONSORTIUM_TEST_CONTAINER=1); skipped in `make test`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from consortium.federation.admin import (
    FederationPaths,
    add_member,
    create_federation,
    member_from_card,
    read_card,
)
from consortium.federation.roster import load_roster
from consortium.node.client import fetch_health
from consortium.node.setup import init_node

pytestmark = pytest.mark.skipif(
    os.environ.get("CONSORTIUM_TEST_CONTAINER") != "1",
    reason="needs podman and the node's image: run by `make test-container`, which builds it",
)

HERE = Path(__file__).resolve().parents[2] / "deploy" / "container"
IMAGE = os.environ.get("CONSORTIUM_IMAGE", "localhost/consortium-node:latest")
ORGS = ("acme", "globex", "initech")
IMAGE_UID = 10001
# One project name: a second run removes what a killed run left.
PROJECT = "consortium-container-test"
START_TIMEOUT_S = 300.0
ENV = {**os.environ, "CONTAINERS_CONF": str(HERE / "containers.conf"), "CONSORTIUM_IMAGE": IMAGE}

NODE_EXTRA = """
[federation]
roster = "/federation/federation.toml"
admin_key = "/federation/admin.jwk"

[telemetry]
exporter = "otlp-http"
endpoint = "http://collector:4318/v1/traces"
"""


def podman(*args: str, timeout: float = 120, check: bool = True) -> str:
    result = subprocess.run(
        ["podman", *args], env=ENV, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        pytest.fail(f"podman {' '.join(args)}: exit {result.returncode}\n{result.stderr}")
    return result.stdout


def wait_for(what: str, check: Callable[[], bool], timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(1.0)


def chown_tree(path: Path, uid: int) -> None:
    os.chown(path, uid, uid)
    for p in path.rglob("*"):
        os.chown(p, uid, uid, follow_symlinks=False)


def publish(admin: FederationPaths, into: Path) -> None:
    """The admin sends the members the roster and its public key (never the private
    key): copied into the directory every node mounts read-only, each file replaced at
    once (a node reading it never sees half a file)."""
    into.mkdir(parents=True, exist_ok=True)
    for source, name in ((admin.roster, "federation.toml"), (admin.admin_public, "admin.jwk")):
        fd, tmp = tempfile.mkstemp(dir=into)
        os.close(fd)
        shutil.copyfile(source, tmp)
        Path(tmp).chmod(0o644)
        Path(tmp).replace(into / name)


def prepare(org: str, deploy: Path) -> None:
    """The organization's volume: `consortium init` for a container (all interfaces,
    fixed ports, its service name as public host, one model thread: three nodes share
    two cores), the published roster, spans to the collector; owned by the image's user."""
    directory = deploy / org
    init_node(
        org,
        directory,
        model="smollm2-135m",
        grpc_port=50051,
        http_port=8080,
        host="0.0.0.0",
        threads=1,
    )
    config = directory / "node.toml"
    text = config.read_text().replace(
        'host = "0.0.0.0"\n', f'host = "0.0.0.0"\npublic_host = "{org}"\n', 1
    )
    config.write_text(text + NODE_EXTRA)
    chown_tree(directory, IMAGE_UID)


@dataclass
class Deployment:
    deploy: Path
    admin: FederationPaths
    containers: dict[str, str]  # service -> container name
    addresses: dict[str, str]  # organization -> its address on the compose network

    def api_key(self, org: str) -> str:
        return (self.deploy / org / "keys" / "api.key").read_text().strip()

    def url(self, org: str) -> str:
        return f"http://{self.addresses[org]}:8080"


def compose(project: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman-compose", "-f", str(HERE / "compose.yaml"), "-p", project, *args],
        env={**ENV, "CONSORTIUM_DEPLOY_DIR": str(ENV["CONSORTIUM_DEPLOY_DIR"])},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def healthy(container: str) -> bool:
    """The image's HEALTHCHECK, run now."""
    result = subprocess.run(
        ["podman", "healthcheck", "run", container], env=ENV, capture_output=True, timeout=60
    )
    return result.returncode == 0


def roster_version(d: Deployment, org: str) -> int:
    version: int = fetch_health(d.url(org), d.api_key(org))["federation"]["roster_version"]
    return version


def project_containers(project: str) -> list[str]:
    label = f"label=io.podman.compose.project={project}"
    return podman("ps", "-a", "--filter", label, "--format", "{{.Names}}", check=False).split()


def remove_project(project: str) -> None:
    """Whatever compose left of the project (it stopped half-way, or a run was killed):
    its containers, pod and network, removed."""
    for name in project_containers(project):
        podman("rm", "-f", "-t", "5", name, check=False)
    podman("pod", "rm", "-f", f"pod_{project}", check=False)
    podman("network", "rm", "-f", f"{project}_federation", check=False)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    base = tmp_path_factory.mktemp("containers")
    deploy = base / "deploy"
    admin = create_federation("Container Federation", base / "admin")
    publish(admin, deploy / "federation")
    for org in ORGS:
        prepare(org, deploy)
    (deploy / "spans").mkdir()
    chown_tree(deploy / "spans", IMAGE_UID)
    ENV["CONSORTIUM_DEPLOY_DIR"] = str(deploy)
    project = PROJECT
    remove_project(project)  # what a run killed before its own cleanup left
    try:
        up = compose(project, "up", "-d")
        assert up.returncode == 0, up.stdout + up.stderr
        names = project_containers(project)
        containers = {s: next(n for n in names if f"_{s}_" in n) for s in ("collector", *ORGS)}
        for org in ORGS:
            name = containers[org]
            wait_for(f"{org}'s container is healthy", lambda n=name: healthy(n))
        address = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
        addresses = {o: podman("inspect", "-f", address, containers[o]).strip() for o in ORGS}
        d = Deployment(deploy, admin, containers, addresses)
        for org in ORGS:
            card, _ = read_card(d.url(org))
            member = member_from_card(card, f"http://{org}:8080/.well-known/agent-card.json")
            add_member(admin.roster, admin.admin_private, member)
        publish(admin, deploy / "federation")
        version = load_roster(admin.roster).version
        for org in ORGS:
            wait_for(
                f"{org} takes roster version {version}",
                lambda o=org: roster_version(d, o) == version,
                timeout=60,
            )
        yield d
    finally:
        # What each container said, for a failure's report (pytest shows it then).
        for name in project_containers(project):
            log = podman("logs", name, check=False, timeout=30)
            print(f"--- {name} (last lines)\n{log[-3000:]}")
        compose(project, "down", "-t", "40")
        remove_project(project)


def test_each_node_is_healthy_by_the_images_healthcheck(deployment: Deployment) -> None:
    """The fixture waited for the nodes; checked once more with the collector's own check
    (compose.yaml), and the node's check can fail: a container of the image that runs no
    node does not pass it."""
    for service in ("collector", *ORGS):
        assert healthy(deployment.containers[service]), service
    with_node_check = podman(
        "run", "--rm", "--entrypoint", "/bin/sh", IMAGE, "-c",
        "python3 -c \"import json, sys, urllib.request as u; "
        "u.urlopen('http://127.0.0.1:8080/healthz', timeout=3)\"; echo exit=$?",
        check=False,
    )  # fmt: skip
    assert "exit=1" in with_node_check


def test_a_node_runs_as_the_images_user_with_its_keys_0600_on_its_volume(
    deployment: Deployment,
) -> None:
    acme = deployment.containers["acme"]
    assert podman("exec", acme, "id", "-u").strip() == str(IMAGE_UID)
    modes = podman("exec", acme, "stat", "-c", "%a %u %n", "/data/keys/private.jwk",
                   "/data/keys/api.key").splitlines()  # fmt: skip
    assert modes == [
        f"600 {IMAGE_UID} /data/keys/private.jwk",
        f"600 {IMAGE_UID} /data/keys/api.key",
    ]
    # The admin's private key is nowhere a node can read it.
    listing = podman("exec", acme, "ls", "-A", "/federation").split()
    assert sorted(listing) == ["admin.jwk", "federation.toml"]
    assert '"d"' not in (deployment.deploy / "federation" / "admin.jwk").read_text()


def test_the_image_holds_no_key_or_state() -> None:
    found = podman(
        "run", "--rm", "--user", "root", "--entrypoint", "/bin/sh", IMAGE, "-c",
        "ls -A /data; find / -xdev \\( -name '*.jwk' -o -name api.key -o -name '*.sqlite3' "
        "-o -name node.toml \\) -print",
    )  # fmt: skip
    assert found.strip() == ""


def test_a_question_crosses_organizations_signed_and_verified(deployment: Deployment) -> None:
    result = subprocess.run(
        [
            "podman", "exec", deployment.containers["acme"],
            "consortium", "ask", "What is the capital of Italy?",
            "--config", "/data/node.toml", "--peer", "globex", "--max-tokens", "16",
            "--timeout", "240",
        ],
        env=ENV, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip(), "no answer text"
    assert "answer signature verified: True" in result.stderr
    assert "globex" in result.stderr and "smollm2" in result.stderr.lower()


def spans(deployment: Deployment) -> list[dict[str, str]]:
    path = deployment.deploy / "spans" / "spans.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_both_organizations_spans_of_the_question_reach_the_collector(
    deployment: Deployment,
) -> None:
    """One trace holds spans of acme (the origin) and globex (the peer): the question of
    the test above, its trace context carried across in the signed message."""

    def shared_trace() -> bool:
        by_trace: dict[str, set[str]] = {}
        for span in spans(deployment):
            by_trace.setdefault(span["trace_id"], set()).add(span["service"])
        return any({"acme", "globex"} <= orgs for orgs in by_trace.values())

    test_a_question_crosses_organizations_signed_and_verified(deployment)
    wait_for("a trace with spans of acme and globex reaches the collector", shared_trace, 60)
    assert {s["service"] for s in spans(deployment)} <= set(ORGS)


def test_sigterm_stops_a_node_cleanly(deployment: Deployment) -> None:
    """`podman stop` (SIGTERM): the node finishes its shutdown and exits 0 within the
    grace period compose gives it. Last: it stops initech."""
    initech = deployment.containers["initech"]
    podman("stop", "-t", "40", initech, timeout=60)
    state = json.loads(podman("inspect", "--format", "{{json .State}}", initech))
    assert state["ExitCode"] == 0, state
