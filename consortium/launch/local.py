"""Organizations on this machine, each a `consortium node start` process on loopback:
one node started and waited for (its READY line), and a federation of N organizations in
one directory — the federation created, each organization initialised, started and
admitted by the admin from the agent card it serves — that the demo builds on. An
organization may name another command for its node (`Organization.command`, e.g. a
benchmark's misbehaving node in benchmarks/byzantine_node.py) that prints the same READY
line and stops on SIGTERM.

    BASE/federation/   federation.toml and the admin's keys
    BASE/ORG/          node.toml, keys/, data/, node.log

Directories that already exist are reused, so a second run starts the same federation;
its nodes listen on new ports, which the admin writes into the roster as they start.

Nodes on one machine share its cores: each new node.toml gets `[model] threads` = the
cores this process may run on (os.sched_getaffinity) divided among the federation's
local nodes, at least 1 (`threads_per_node`), instead of 0, with which llama.cpp
would run every node's model on all the cores and three nodes on two cores would
oversubscribe them. An organization's own `Organization.threads` wins; a node.toml that
exists already is left as it is.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from a2a.types import a2a_pb2

from consortium.errors import NodeUnavailableError
from consortium.federation.admin import (
    add_member,
    create_federation,
    default_paths,
    member_from_card,
    read_card,
    set_endpoints,
)
from consortium.federation.roster import Roster, load_roster
from consortium.launch.supervisor import Child, NotReady, Supervisor
from consortium.node.a2a.request_handler import local_signer
from consortium.node.config import load_config
from consortium.node.setup import init_node, local_api_key

START_TIMEOUT_S = 180.0
STOP_GRACE_S = 30.0


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container or
    `taskset` narrows), at least 1."""
    return max(1, len(os.sched_getaffinity(0)))


def threads_per_node(nodes: int, cores: int) -> int:
    """Model threads for each of `nodes` nodes sharing `cores` cores: an equal share,
    rounded down, at least 1."""
    if nodes < 1:
        raise ValueError(f"nodes must be at least 1, not {nodes}")
    return max(1, cores // nodes)


def node_command(
    config: Path, command: Sequence[str] | None = None, prefix: Sequence[str] = ()
) -> list[str]:
    """The argv that runs a node on `config`: `command` with every `{config}` replaced by
    the path, or by default `consortium node start --config CONFIG` (this interpreter);
    after `prefix` (e.g. `ip netns exec NAME`: where the node runs)."""
    if command:
        return [*prefix, *(part.replace("{config}", str(config)) for part in command)]
    return [
        *prefix,
        *(sys.executable, "-m", "consortium.cli", "node", "start", "--config", str(config)),
    ]


def node_environment() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def start_node(
    config: Path,
    log_path: Path,
    timeout: float = START_TIMEOUT_S,
    supervisor: Supervisor | None = None,
    command: Sequence[str] | None = None,
    prefix: Sequence[str] = (),
) -> tuple[Child, str]:
    """Starts `consortium node start` (or `command`, see `node_command`; it must print
    the same READY line) under `supervisor`, or one of its own, after the command
    `prefix`, and waits for its READY line; returns the child and the node's HTTP URL.
    child.stop() sends SIGTERM and returns the exit code."""
    supervisor = supervisor or Supervisor(log_path.parent, node_environment(), grace_s=STOP_GRACE_S)
    try:
        child = supervisor.start(
            f"node {config}",
            node_command(config, command, prefix),
            log_path=log_path,
            ready_line="READY ",
            timeout=timeout,
        )
    except NotReady as e:
        tail = e.child.log()[-2000:]
        raise NodeUnavailableError(
            f"node {config} did not start; its log ends with:\n{tail}"
        ) from None
    fields = dict(part.split("=", 1) for part in child.ready_line.split()[1:])
    return child, fields["http"]


@dataclass(frozen=True)
class Organization:
    org_id: str
    display_name: str
    model: str
    # TOML appended to its node.toml when the node is first initialised.
    config_extra: str = ""
    # The argv that runs its node, `{config}` standing for the node.toml's path (e.g. a
    # benchmark's own node process); empty: `consortium node start --config CONFIG`.
    # Whatever runs must print `READY grpc=... http=...` and stop on SIGTERM.
    command: tuple[str, ...] = ()
    # Its model's `[model] threads`; 0: a share of this machine's cores (see above).
    threads: int = 0
    # Its model's backend, and TOML lines added to its node.toml's [model] (e.g. base_url).
    backend: str = "llama_cpp"
    model_lines: str = ""
    # The ports its node listens on; 0: free ones at each start.
    grpc_port: int = 0
    http_port: int = 0
    # TOML lines added to its node.toml's [federation] (peer_timeout_s, breaker_*).
    federation_lines: str = ""


def settings_drift(org: Organization, config: Path) -> list[str]:
    """The settings `org` declares that its existing node.toml does not hold (dotted
    keys, e.g. "routing.threshold"): edited in the federation file after the node.toml
    was made, which `prepare` never rewrites. [] when the node.toml cannot be read (the
    node's own start says why)."""
    declared: dict[str, Any] = tomllib.loads(
        "[federation]\n" + org.federation_lines + org.config_extra
    )
    declared["model"] = {"backend": org.backend}
    ports = {"grpc_port": org.grpc_port, "http_port": org.http_port}
    declared["server"] = {k: v for k, v in ports.items() if v}
    try:
        actual = tomllib.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []
    return _differences(declared, actual, "")


def _differences(declared: dict[str, Any], actual: object, prefix: str) -> list[str]:
    found: list[str] = []
    have = actual if isinstance(actual, dict) else {}
    for key, value in declared.items():
        if isinstance(value, dict):
            found += _differences(value, have.get(key), f"{prefix}{key}.")
        elif have.get(key) != value:
            found.append(f"{prefix}{key}")
    return found


@dataclass
class RunningNode:
    org_id: str
    model: str
    config: Path
    child: Child
    http_url: str
    # Signs requests to this node with its organization's key (set once it has joined).
    signer: Callable[[a2a_pb2.Message], a2a_pb2.Message] | None = None

    def stop(self) -> int:
        return self.child.stop()


class LocalFederation:
    """A federation of organizations whose nodes run on loopback, in `base`. A context
    manager; every node still running is stopped on exit. `local_nodes`: how many nodes
    it will run on this machine, among which the cores are shared (`threads`)."""

    def __init__(self, base: Path, name: str, *, local_nodes: int = 1) -> None:
        self.base = base
        self.threads = threads_per_node(local_nodes, available_cores())
        fed_dir = base / "federation"
        if not (fed_dir / "federation.toml").exists():
            create_federation(name, fed_dir)
        self.paths = default_paths(fed_dir / "federation.toml")
        self.nodes: list[RunningNode] = []
        self._supervisor = Supervisor(base, node_environment(), grace_s=STOP_GRACE_S)
        # Nodes may start from several threads (the launcher's): one roster change at once.
        self._roster_lock = threading.Lock()

    def prepare(self, org: Organization, host: str = "127.0.0.1", public_host: str = "") -> Path:
        """The organization's node.toml: initialised (its ports, listening on `host`,
        reached at `public_host` if that is another address) and pointed at the
        federation's roster, unless it exists."""
        node_dir = self.base / org.org_id
        config = node_dir / "node.toml"
        if not config.exists():
            init_node(
                org.org_id,
                node_dir,
                model=org.model,
                display_name=org.display_name,
                grpc_port=org.grpc_port,
                http_port=org.http_port,
                host=host,
                public_host=public_host,
                # A remote server runs its own model: no threads of ours to share.
                threads=0 if org.backend == "openai" else org.threads or self.threads,
                backend=org.backend,
                model_lines=org.model_lines,
            )
            with config.open("a") as f:
                f.write(
                    f'\n[federation]\nroster = "{self.paths.roster.resolve()}"\n'
                    f'admin_key = "{self.paths.admin_public.resolve()}"\n' + org.federation_lines
                )
                f.write(org.config_extra)
        return config

    def start(
        self,
        org: Organization,
        timeout: float = START_TIMEOUT_S,
        *,
        prefix: Sequence[str] = (),
        host: str = "127.0.0.1",
        public_host: str = "",
    ) -> RunningNode:
        """Starts the organization's node (after the command `prefix`, listening on
        `host`, reached at `public_host`: where it runs) and waits until it is ready; if
        it is a member already, the roster gets the endpoints it now listens on."""
        config = self.prepare(org, host, public_host)
        child, url = start_node(
            config,
            config.parent / "node.log",
            timeout,
            self._supervisor,
            org.command or None,
            prefix,
        )
        node = RunningNode(org.org_id, org.model, config, child, url)
        self.nodes.append(node)
        if load_roster(self.paths.roster).member(org.org_id) is not None:
            self._enrol(node)
        return node

    def _enrol(self, node: RunningNode) -> None:
        """The node's member entry, from the agent card it serves: added, or its
        endpoints updated when they changed."""
        card, card_url = read_card(node.http_url)
        member = member_from_card(card, card_url)
        with self._roster_lock:
            known = load_roster(self.paths.roster).member(node.org_id)
            if known is None:
                add_member(self.paths.roster, self.paths.admin_private, member)
            elif known.endpoints != member.endpoints:
                set_endpoints(
                    self.paths.roster, self.paths.admin_private, node.org_id, member.endpoints
                )

    def admit(self, timeout: float = 30.0) -> Roster:
        """The admin admits every running node that is not yet a member, from the agent
        card it serves (a member's moved endpoints are updated); returns the roster once
        every node has hot-reloaded it, with each node's signer set."""
        for node in self.running():
            self._enrol(node)
        roster = load_roster(self.paths.roster)
        asyncio.run(wait_for_roster(self.running(), roster.version, timeout))
        for node in self.running():
            node.signer = local_signer(load_config(node.config))
        return roster

    def running(self) -> list[RunningNode]:
        """The nodes started here that still run."""
        return [n for n in self.nodes if n.child.process.poll() is None]

    def stop(self) -> None:
        self._supervisor.stop()

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def health_headers(node: RunningNode) -> dict[str, str]:
    """The headers that read a node's /healthz details: its organization's own API key
    (from loopback none is needed; from anywhere else, a node in a network namespace
    reached over its bridge address, the details are hidden without it)."""
    key = local_api_key(load_config(node.config))
    return {"Authorization": f"Bearer {key}"} if key else {}


async def wait_for_roster(nodes: list[RunningNode], version: int, timeout: float = 30.0) -> None:
    """Until every node has hot-reloaded the roster to at least this version (a node
    too busy to answer within a few seconds has not yet)."""
    deadline = time.monotonic() + timeout
    headers = {n.org_id: health_headers(n) for n in nodes}
    async with httpx.AsyncClient(timeout=10) as http:
        while True:
            try:
                seen = [
                    (await http.get(n.http_url + "/healthz", headers=headers[n.org_id])).json()[
                        "federation"
                    ]
                    for n in nodes
                ]
            except httpx.TimeoutException:
                seen = [{"roster_version": -1}]
            if all(f["roster_version"] >= version for f in seen):
                return
            if time.monotonic() > deadline:
                raise NodeUnavailableError("the nodes did not pick up the federation roster")
            await asyncio.sleep(0.2)
