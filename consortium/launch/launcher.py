"""`consortium up | down | status FILE`: a federation from one file (federation_file.py)
run under one supervisor.

`Launcher` creates what does not exist — the federation and its admin key, each
organization's keys and node.toml (local.py's LocalFederation, on `consortium init`'s
code), the roster entries (`federation add-member`'s code, from each node's agent card) —
starts every node at once, waits until each is ready and every node holds a roster that
lists all the others, and then watches them: a node that dies is started again after a
back-off (1 s, doubling, at most 30 s; back to 1 s once it has run for a minute), its
new endpoints written into the roster. What runs is written to a state file
(DIRECTORY/launcher.json, mode 0600): the supervisor's pid, and each node's pid, ports,
log and restarts, which `status` reads (with each node's authenticated /healthz) and
`down` uses to stop the supervisor (SIGTERM) and wait until every node is gone.

`up` runs the supervisor in the foreground; `up --detach` starts it in its own session
(`detach`) and returns once it is ready. Either way no node outlives it: the Supervisor's
watcher (supervisor.py) stops them whatever the launcher dies of.

Where a node runs is one seam, `placements`: a command prefix and a host address per
organization — no prefix and loopback for `isolate = "none"`. With `isolate = "netns"`
(or `up --isolate netns`) the launcher first creates a `Network` (netns.py; its name
`network_name` derives from the federation's directory, its subnet `[federation] subnet`):
each organization's node runs in its own namespace (`ip netns exec` prefix), listens on
NODE_ADDRESS and is reached at its bridge address (node.toml's public_host, the TLS
certificate's SANs, the roster), behind a link proxy (linkproxy.py) on the fixed ports
of every namespace (50051, 8080 unless the file sets others) that applies the faults of
DIRECTORY/links.json — `consortium net set FILE ...` changes them while it runs. The
namespaces and bridge go with `stop` (any signal the launcher handles); a SIGKILLed
launcher's watcher stops its nodes and proxies, and its namespaces (empty by then) are
removed by the next `up` or `down`, which know the network's name from the file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import tomli_w

from consortium.errors import ConfigError, ConsortiumError, NodeUnavailableError
from consortium.federation.admin import FederationPaths, create_federation, default_paths
from consortium.federation.roster import load_roster
from consortium.launch.federation_file import FederationFile, OrgSection, load_federation_file
from consortium.launch.linkproxy import start_link_proxy
from consortium.launch.links import load_links, new_links
from consortium.launch.local import (
    START_TIMEOUT_S,
    LocalFederation,
    Organization,
    RunningNode,
    health_headers,
    node_environment,
    settings_drift,
    wait_for_roster,
)
from consortium.launch.netns import DEFAULT_SUBNET, NODE_ADDRESS, Network, NetworkError
from consortium.launch.supervisor import Child, Supervisor, process_start_time
from consortium.node.client import fetch_health
from consortium.node.config import load_config
from consortium.node.setup import local_api_key
from consortium.trust.files import write_private_file

log = logging.getLogger(__name__)

STATE_FILE = "launcher.json"
LAUNCHER_LOG = "launcher.log"
LINKS_FILE = "links.json"
# The ports of a node in a namespace when the file leaves them 0: each namespace has its
# own, and its link proxy listens on the same ones.
NETNS_GRPC_PORT, NETNS_HTTP_PORT = 50051, 8080
ADMIT_TIMEOUT_S = 120.0
TICK_S = 0.2  # how often the supervisor looks at its nodes


class NotRunning(ConsortiumError):
    """`down` or `status` of a federation whose launcher does not run."""

    exit_code = 1


class AlreadyRunning(ConsortiumError):
    """`up` of a federation whose launcher runs already (nothing was changed)."""

    exit_code = 0

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        super().__init__(f"already running (launcher pid {state['supervisor']['pid']})")


@dataclass(frozen=True)
class Backoff:
    """Restart delays: `initial_s`, doubling up to `max_s`; back to `initial_s` once a
    node has run for `reset_after_s`."""

    initial_s: float = 1.0
    max_s: float = 30.0
    reset_after_s: float = 60.0

    def next(self, delay: float) -> float:
        return min(self.max_s, delay * 2)


@dataclass(frozen=True)
class Placement:
    """Where an organization's node runs: its command prefix, the address it listens on,
    and the address it is reached at when that is another one ("": the same)."""

    prefix: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    public_host: str = ""

    @property
    def address(self) -> str:
        """Where the other organizations (and this machine) reach it."""
        return self.public_host or self.host


def placements(file: FederationFile, network: Network | None = None) -> dict[str, Placement]:
    """Each organization's placement: this machine's loopback for `isolate = "none"`;
    with the federation's `network` (created), its namespace."""
    if network is None:
        return {org.id: Placement() for org in file.org}
    return {
        org.id: Placement(h.prefix, h.node_address, h.address)
        for org in file.org
        for h in (network.host(org.id),)
    }


def network_name(file: FederationFile) -> str:
    """The federation's network name (netns.py: 8 characters at most): up to 4 letters of
    its name and a digest of its directory, so two federations never share one and the
    next `up` or `down` finds a crashed launcher's."""
    letters = re.sub(r"[^a-z0-9]", "", file.federation.name.lower()).lstrip("0123456789")
    digest = hashlib.sha256(str(file.directory.resolve()).encode()).hexdigest()
    prefix = letters[:4] or "f"
    return prefix + digest[: 8 - len(prefix)]


def federation_network(file: FederationFile) -> Network:
    """The federation's Network (not created), for `isolate = "netns"`."""
    return Network(network_name(file), subnet=file.federation.subnet or DEFAULT_SUBNET)


def organization(org: OrgSection, file: FederationFile) -> Organization:
    """The LocalFederation organization an `[[org]]` entry declares."""
    sections = org.node_sections()
    if file.telemetry is not None:
        sections["telemetry"] = {
            "exporter": f"otlp-{file.telemetry.protocol}",
            "endpoint": file.telemetry.endpoint,
        }
    model_lines = ""
    if org.base_url:
        model_lines += f"base_url = {json.dumps(org.base_url)}\n"
    if org.api_key_file:
        model_lines += f"api_key_file = {json.dumps(str(_path(file, org.api_key_file)))}\n"
    netns = file.federation.isolate == "netns"
    return Organization(
        org.id,
        org.display_name or org.id,
        org.model,
        config_extra="\n" + tomli_w.dumps(sections) if sections else "",
        threads=org.threads,
        backend=org.backend,
        model_lines=model_lines,
        grpc_port=org.grpc_port or (NETNS_GRPC_PORT if netns else 0),
        http_port=org.http_port or (NETNS_HTTP_PORT if netns else 0),
        federation_lines=file.peers.lines() if file.peers is not None else "",
    )


def _path(file: FederationFile, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (file.path.parent / p).resolve()


def federation_paths(file: FederationFile) -> FederationPaths:
    """The federation's roster and admin keys, created if the roster does not exist (the
    admin's private key moved where the file places it)."""
    roster = file.directory / "federation" / "federation.toml"
    default = default_paths(roster)
    placed = file.admin_key
    if not roster.exists():
        if placed is not None and placed.exists():
            raise ConfigError(
                f"{placed} exists but the federation does not: refusing to make a new admin key",
                path=str(file.path),
                key="federation.admin_key",
            )
        create_federation(file.federation.name, roster.parent)
        if placed is not None:
            write_private_file(placed, default.admin_private.read_bytes())
            default.admin_private.unlink()
    elif placed is not None and not placed.is_file():
        raise ConfigError(
            f"the admin key {placed} is missing", path=str(file.path), key="federation.admin_key"
        )
    if placed is None:
        return default
    return FederationPaths(roster, placed, default.admin_public)


def check_placement(config: Path, placement: Placement, file: FederationFile) -> None:
    """An existing node.toml in a namespace must listen and be reached where the
    placement says (not so: it was made on loopback, or the organizations' order or the
    subnet changed); on loopback it must not be one made for a namespace (any other
    address an operator gave it stays theirs)."""
    server = load_config(config).server
    if file.federation.isolate == "netns":
        moved = (server.host, server.public_host) != (placement.host, placement.public_host)
    else:
        moved = server.host == NODE_ADDRESS
    if moved:
        where = placement.address
        raise ConfigError(
            f"{config} listens on {server.host} (reached at {server.public_host or server.host}),"
            f" not where isolate = {file.federation.isolate!r} puts it ({where}): edit its "
            "[server] host and public_host (an organization's directory made again would "
            "have new keys its roster entry and the others' records do not know)",
            path=str(file.path),
            key="federation.isolate",
        )


def _links_hosts(path: Path) -> dict[str, str] | None:
    try:
        return load_links(path).hosts
    except ConfigError:
        return None


@dataclass
class NodeState:
    """One organization's node as the supervisor tracks it."""

    org: Organization
    placement: Placement
    node: RunningNode | None = None
    restarts: int = 0
    delay_s: float = 0.0
    started_at: float = 0.0
    restart_at: float | None = None  # when a dead node is due to start again
    last_exit: int | None = None
    # The file's settings for it that its existing node.toml does not hold (dotted keys).
    drift: list[str] = field(default_factory=list)


def drift_notice(org: str, keys: Sequence[str], file: FederationFile) -> str:
    """What `up` and `status` say of an organization whose node.toml lacks settings the
    federation file gives it."""
    return (
        f"{org}: its node.toml does not hold what {file.path.name} sets for "
        f"{', '.join(keys)}; the node runs with its node.toml's: edit "
        f"{file.directory / org / 'node.toml'} to apply them"
    )


@dataclass
class Launcher:
    """One federation file's nodes under one supervisor. `start` brings them up;
    `watch` restarts the ones that die until `stop_event` is set; `stop` ends them."""

    file: FederationFile
    backoff: Backoff = field(default_factory=Backoff)
    start_timeout_s: float = START_TIMEOUT_S

    def __post_init__(self) -> None:
        self.directory = self.file.directory
        self.state_path = self.directory / STATE_FILE
        self.links_path = self.directory / LINKS_FILE
        self.stop_event = threading.Event()
        self.netns = self.file.federation.isolate == "netns"
        # netns: the federation's network, created by `start` (and its link proxies).
        self.network: Network | None = federation_network(self.file) if self.netns else None
        self._places = placements(self.file)
        self._proxies: Supervisor | None = None
        self.proxies: dict[str, Child] = {}  # netns: each organization's link proxy
        # netns: a dead proxy's next restart (monotonic time) and its current back-off.
        self._proxy_retry: dict[str, tuple[float, float]] = {}
        self._fed: LocalFederation | None = None
        self.nodes: dict[str, NodeState] = {}

    @property
    def federation(self) -> LocalFederation:
        """The federation's nodes and roster paths (once provisioned)."""
        if self._fed is None:
            raise RuntimeError("the federation is not provisioned yet")
        return self._fed

    # -- bringing the federation up --------------------------------------------------

    def provision(self) -> LocalFederation:
        """Creates what does not exist (federation, admin key, each node's directory);
        leaves what exists as it is."""
        self.directory.mkdir(parents=True, exist_ok=True)
        paths = federation_paths(self.file)
        fed = LocalFederation(
            self.directory, self.file.federation.name, local_nodes=len(self.file.org)
        )
        fed.paths = paths
        for org in self.file.org:
            state = NodeState(organization(org, self.file), self._places[org.id])
            config = fed.prepare(state.org, state.placement.host, state.placement.public_host)
            check_placement(config, state.placement, self.file)
            state.drift = settings_drift(state.org, config)
            if state.drift:
                log.warning("%s", drift_notice(org.id, state.drift, self.file))
            self.nodes[org.id] = state
        self._fed = fed
        return fed

    def create_network(self) -> None:
        """netns: the namespaces and bridge (what a crashed launcher left removed first),
        the links file (kept, faults and all, when it names the same hosts), and each
        organization's link proxy, started and listening."""
        assert self.network is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        self.network.create(self.file.org_ids())
        self._places = placements(self.file, self.network)
        hosts = self.network.addresses()
        if _links_hosts(self.links_path) != hosts:
            new_links(self.links_path, hosts)
        self._proxies = Supervisor(self.directory, node_environment(), grace_s=5.0)
        for org in self.file.org:
            o = organization(org, self.file)
            self.proxies[org.id] = start_link_proxy(
                self._proxies,
                self.links_path,
                self.network.host(org.id),
                [o.grpc_port, o.http_port],
            )

    def start(self) -> None:
        """Provisions, starts every node at once, and returns when each is ready and
        admitted: every node holds a roster listing all the others. Raises (every node
        stopped) if one does not come up."""
        running = running_state(self.state_path)
        if running is not None:
            raise AlreadyRunning(running)
        try:
            if self.network is not None:
                self.create_network()
            fed = self.provision()
            pool = ThreadPoolExecutor(max_workers=len(self.nodes))
            try:
                for _ in pool.map(self._start_node, self.nodes.values()):
                    pass
            finally:  # on a signal, stop what started without waiting for the rest
                pool.shutdown(wait=False, cancel_futures=True)
            fed.admit(ADMIT_TIMEOUT_S)
            wait_admitted([s.node for s in self.nodes.values() if s.node], ADMIT_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        self.write_state(ready=True)

    def _start_node(self, state: NodeState) -> None:
        assert self._fed is not None
        log_path = self.directory / state.org.org_id / "node.log"
        if log_path.exists():  # the previous run's log, kept once
            log_path.replace(log_path.with_suffix(".1.log"))
        state.node = self._fed.start(
            state.org,
            self.start_timeout_s,
            prefix=state.placement.prefix,
            host=state.placement.host,
            public_host=state.placement.public_host,
        )
        state.started_at = time.monotonic()
        state.restart_at = None

    # -- supervision -------------------------------------------------------------------

    def watch(self) -> None:
        """Until `stop_event` is set: a node that exits is started again after its
        back-off, and the roster updated; the state file follows."""
        while not self.stop_event.wait(TICK_S):
            self.tick(time.monotonic())

    def tick(self, now: float) -> None:
        changed = False
        for state in self.nodes.values():
            node = state.node
            if state.restart_at is None and node is not None:
                code = node.child.process.poll()
                if code is None:
                    continue
                state.last_exit = code
                delay = state.delay_s = self.next_delay(state, now)
                state.restart_at = now + delay
                log.warning("%s exited (%s); restarting in %.1f s", state.org.org_id, code, delay)
                changed = True
            if state.restart_at is not None and now >= state.restart_at:
                state.restarts += 1
                try:
                    self._start_node(state)
                    assert self._fed is not None
                    version = load_roster(self._fed.paths.roster).version
                    asyncio.run(wait_for_roster(self._fed.running(), version, ADMIT_TIMEOUT_S))
                    log.info("%s restarted (restart %d)", state.org.org_id, state.restarts)
                except (ConsortiumError, httpx.HTTPError, OSError) as e:  # try again later
                    state.delay_s = self.backoff.next(state.delay_s)
                    state.restart_at = time.monotonic() + state.delay_s
                    log.warning("%s did not restart: %s", state.org.org_id, str(e)[:200])
                else:
                    state.delay_s = self.backoff.next(state.delay_s)
                changed = True
        changed |= self.tick_proxies(now)
        if changed:
            self.write_state(ready=all(s.restart_at is None for s in self.nodes.values()))

    def tick_proxies(self, now: float) -> bool:
        """netns: a link proxy that exited is started again (its organization is
        unreachable without it), after the back-off's initial delay, doubling while its
        restarts fail; whether one was restarted."""
        if self.network is None or self._proxies is None:
            return False
        changed = False
        for org in self.file.org:
            child = self.proxies.get(org.id)
            if child is None or child.process.poll() is None:
                continue
            due = self._proxy_retry.setdefault(org.id, (now + self.backoff.initial_s, 0.0))
            if now < due[0]:
                continue
            o = organization(org, self.file)
            try:
                self.proxies[org.id] = start_link_proxy(
                    self._proxies,
                    self.links_path,
                    self.network.host(org.id),
                    [o.grpc_port, o.http_port],
                )
            except ConsortiumError as e:
                delay = self.backoff.next(due[1] or self.backoff.initial_s)
                self._proxy_retry[org.id] = (time.monotonic() + delay, delay)
                log.warning("%s's link proxy did not restart: %s", org.id, str(e)[:200])
                continue
            del self._proxy_retry[org.id]
            log.warning("%s's link proxy exited (%s); restarted", org.id, child.process.returncode)
            changed = True
        return changed

    def next_delay(self, state: NodeState, now: float) -> float:
        """The back-off before the node's next restart if it died at `now`: the initial
        one after a minute of running (or before any restart), else its current one."""
        if state.delay_s == 0 or now - state.started_at >= self.backoff.reset_after_s:
            return self.backoff.initial_s
        return state.delay_s

    def stop(self) -> None:
        """Stops every node (SIGTERM, then SIGKILL after the grace period) and removes
        the state file."""
        self.stop_event.set()
        try:
            if self._fed is not None:
                self._fed.stop()
            if self._proxies is not None:
                self._proxies.stop()
        finally:
            if self.network is not None:
                self.network.destroy()
        with suppress(FileNotFoundError):
            if (read_state(self.state_path) or {}).get("supervisor", {}).get("pid") == os.getpid():
                self.state_path.unlink()

    # -- the state file ----------------------------------------------------------------

    def write_state(self, *, ready: bool) -> None:
        pid = os.getpid()
        nodes: dict[str, Any] = {}
        for org_id, s in self.nodes.items():
            entry: dict[str, Any] = {
                "config": str(self.directory / org_id / "node.toml"),
                "log": str(self.directory / org_id / "node.log"),
                "restarts": s.restarts,
                "last_exit": s.last_exit,
                # The back-off before its next restart, should it die now.
                "backoff_s": self.next_delay(s, time.monotonic()),
                "state": "restarting" if s.restart_at is not None else "running",
            }
            if s.drift:
                entry["drift"] = drift_notice(org_id, s.drift, self.file)
            if s.node is not None and s.restart_at is None:
                fields = dict(p.split("=", 1) for p in s.node.child.ready_line.split()[1:])
                proc = s.node.child.process
                entry.update(
                    pid=proc.pid,
                    start=process_start_time(proc.pid),
                    grpc=fields.get("grpc", ""),
                    http=s.node.http_url,
                )
            if self.network is not None:
                entry.update(address=s.placement.address, namespace=self.network.namespace(org_id))
                if org_id in self.proxies:
                    proxy = self.proxies[org_id].process.pid
                    entry.update(proxy_pid=proxy, proxy_start=process_start_time(proxy))
            nodes[org_id] = entry
        state = {
            "file": str(self.file.path),
            "federation": self.file.federation.name,
            "supervisor": {"pid": pid, "start": process_start_time(pid)},
            "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "ready": ready,
            "nodes": nodes,
        }
        if self.network is not None:
            state["network"] = {
                "name": self.network.name,
                "subnet": self.network.subnet,
                "bridge": self.network.bridge,
                "gateway": self.network.gateway,
                "links": str(self.links_path),
            }
        write_private_file(self.state_path, (json.dumps(state, indent=2) + "\n").encode())


def wait_admitted(nodes: list[RunningNode], timeout: float) -> None:
    """Until every node's /healthz (read with its organization's API key: the details
    need it off loopback) lists each of the others as an active peer."""
    orgs = {n.org_id for n in nodes}
    headers = {n.org_id: health_headers(n) for n in nodes}
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=10) as http:
        pending = list(nodes)
        while pending:
            node = pending[0]
            try:
                health = http.get(node.http_url + "/healthz", headers=headers[node.org_id]).json()
            except httpx.TimeoutException:  # too busy to answer: not yet
                health = {"federation": {}}
            peers = health["federation"].get("peers", {})
            if {o for o, p in peers.items() if p["status"] == "active"} >= orgs - {node.org_id}:
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise NodeUnavailableError(f"{node.org_id} does not see all its peers")
            time.sleep(TICK_S)


# -- the state file, read by down, status and a second up ----------------------------


def read_state(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        raise ConfigError("not a launcher state file", path=str(path)) from None
    return data if isinstance(data, dict) else None


def same_process(pid: int, start: str) -> bool:
    """Whether `pid` still runs and is the process started at `start` (not a reuse)."""
    now = process_start_time(pid)
    if now is None:
        return False
    return start in ("-", now)


def running_state(path: Path) -> dict[str, Any] | None:
    """The state of a launcher that still runs, else None."""
    state = read_state(path)
    if state is None:
        return None
    sup = state.get("supervisor", {})
    return state if same_process(int(sup.get("pid", 0)), str(sup.get("start", "-"))) else None


def node_pids(state: dict[str, Any]) -> Iterator[tuple[str, int]]:
    """The organizations whose node processes named in the state still run."""
    for org, node in state.get("nodes", {}).items():
        if "pid" in node and same_process(int(node["pid"]), str(node.get("start", "-"))):
            yield org, int(node["pid"])


def state_path(path: Path) -> tuple[FederationFile, Path]:
    file = load_federation_file(path)
    return file, file.directory / STATE_FILE


def down(path: Path, timeout: float = 60.0) -> list[str]:
    """Stops the federation's launcher (SIGTERM) and returns, once it and every node it
    ran are gone, the organizations it stopped. NotRunning without a launcher (a stale
    state file's nodes are stopped and the file removed). In namespaces, what a launcher
    that could not clean up (SIGKILL) left of its network is removed too."""
    file, spath = state_path(path)
    state = read_state(spath)
    if state is None:
        _remove_stale_network(file, None)
        raise NotRunning(f"{path}: the federation is not running (no {spath})")
    orgs = list(state.get("nodes", {}))
    sup = state.get("supervisor", {})
    pid, start = int(sup.get("pid", 0)), str(sup.get("start", "-"))
    if same_process(pid, start):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    else:  # its launcher died and its watcher should have stopped them: make sure
        for _, pid in node_pids(state):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    # The launcher itself, not its state file (which it removes before it exits).
    while same_process(pid, start) or any(node_pids(state)):
        if time.monotonic() > deadline:
            left = ", ".join(org for org, _ in node_pids(state))
            raise NodeUnavailableError(f"still running after {timeout:.0f} s: {left or 'launcher'}")
        time.sleep(TICK_S)
    _remove_stale_network(file, state)
    spath.unlink(missing_ok=True)
    return orgs


def _remove_stale_network(file: FederationFile, state: dict[str, Any] | None) -> None:
    """Removes the namespaces and bridge of the federation's network (the state file's,
    else the file's when it isolates in namespaces), if any are left and this process
    may (root)."""
    net = (state or {}).get("network")
    if net is not None:
        network = Network(str(net["name"]), subnet=str(net["subnet"]))
    elif file.federation.isolate == "netns":
        network = federation_network(file)
    else:
        return
    try:
        removed = network.remove_stale()
    except NetworkError as e:
        log.warning("could not look for the network %s left behind: %s", network.name, e)
        return
    if removed:
        log.info("removed what network %s left behind: %s", network.name, ", ".join(removed))


def status(path: Path) -> dict[str, Any]:
    """The state file, each running node's /healthz (with its owner's API key) under
    "health" (or "error"), and whether the launcher runs."""
    _, spath = state_path(path)
    state = read_state(spath)
    if state is None:
        raise NotRunning(f"{path}: the federation is not running (no {spath})")
    state["running"] = running_state(spath) is not None
    for node in state["nodes"].values():
        if "http" not in node:
            continue
        try:
            key = local_api_key(load_config(node["config"]))
            node["health"] = fetch_health(node["http"], key, timeout=5)
        except ConsortiumError as e:
            node["error"] = str(e)
    return state


def load(path: Path, isolate: str | None = None) -> FederationFile:
    """The federation file, its `isolate` replaced by `isolate` when given (`up --isolate`)."""
    file = load_federation_file(path)
    if isolate is not None:
        if isolate not in ("none", "netns"):
            raise ConfigError(f"{isolate!r}: none or netns", key="--isolate")
        file.federation = file.federation.model_copy(update={"isolate": isolate})
    return file


def links_file(path: Path) -> Path:
    """The links file `consortium net` changes: `path` itself, or for a federation file
    (.toml) the one its launcher runs on (DIRECTORY/links.json), which must exist."""
    if path.suffix != ".toml":
        return path
    links = load_federation_file(path).directory / LINKS_FILE
    if not links.exists():
        raise ConfigError(
            f"no {links}: the federation has not run in namespaces (`up --isolate netns`)",
            path=str(path),
        )
    return links


def detach(
    path: Path, timeout: float = START_TIMEOUT_S + ADMIT_TIMEOUT_S, isolate: str | None = None
) -> dict[str, Any]:
    """Starts `consortium up FILE` in its own session, its output in
    DIRECTORY/launcher.log; returns its state once every node is ready and admitted.
    Raises AlreadyRunning, or NodeUnavailableError (with the log's tail) if it exits."""
    file = load(path, isolate)
    spath = file.directory / STATE_FILE
    running = running_state(spath)
    if running is not None:
        raise AlreadyRunning(running)
    file.directory.mkdir(parents=True, exist_ok=True)
    log_path = file.directory / LAUNCHER_LOG
    with log_path.open("ab") as out:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "consortium.cli", "up", str(path)),
                *(("--isolate", isolate) if isolate else ()),
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    deadline = time.monotonic() + timeout
    while True:
        state = read_state(spath)
        if state and state["supervisor"]["pid"] == process.pid and state.get("ready"):
            return state
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise NodeUnavailableError(f"the launcher exited; {log_path} ends with:\n{tail}")
        if time.monotonic() > deadline:
            process.terminate()
            raise NodeUnavailableError(f"the federation was not up within {timeout:.0f} s")
        time.sleep(TICK_S)


def serve(
    path: Path, on_ready: Callable[[dict[str, Any]], None], isolate: str | None = None
) -> None:
    """`up` in the foreground: starts the federation, calls `on_ready` with its state,
    and supervises until SIGTERM or SIGINT; then stops every node (and in namespaces
    removes them)."""
    launcher = Launcher(load(path, isolate))

    def stop(_signum: int, _frame: object) -> None:
        launcher.stop_event.set()
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        launcher.start()
        # From here a signal only sets the event: the loop ends and stop() runs.
        for s in previous:
            signal.signal(s, lambda _n, _f: launcher.stop_event.set())
        on_ready(read_state(launcher.state_path) or {})
        launcher.watch()
    except KeyboardInterrupt:
        pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        launcher.stop()
