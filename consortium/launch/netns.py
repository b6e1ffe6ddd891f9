"""Organizations on hosts of their own: one Linux network namespace per organization on a
bridge, so that they reach each other only over the bridge's addresses, as across
machines — never over loopback, which every namespace has to itself.

    root namespace:  bridge NAME-br, address .1 of the subnet
    consortium-NAME-ORG:  eth0 (a veth pair, its other end NAMEh<i> on the bridge) with the
                     organization's address (.2, .3, ...), loopback up, and NODE_ADDRESS
                     (a /32 on lo) for its node

A node in a namespace listens on `Host.node_address` (10.254.0.1 in every namespace: on
`lo`, so no other namespace has a route to it) and the namespace's link proxy
(launch/linkproxy.py) listens on the organization's bridge address with the same ports
and forwards to it, applying the faults of the link each connection comes from. The
node's address is not a loopback one on purpose: a connection the proxy forwards would
otherwise come from 127.0.0.1 and the node would take another organization for its own
anonymous loopback user (`auth.anonymous_loopback`, /healthz details).

`Network.create` first removes whatever a network of the same name left behind (a
launcher that crashed or was SIGKILLed: its namespaces, the processes still in them, its
bridge and veth ends), so names carry the network's name: namespaces are
`consortium-NAME-*`, and the bridge and veth ends carry the alias `consortium NAME`, so
that nothing another tool made (podman's `netns-*`, an interface that happens to be
called `NAME-br`) is ever removed. `destroy` removes
everything; the `Network` is a context manager. Creating namespaces needs root and the
`ip` command (iproute2): without either, `NetworkError` says so.

`Host.prefix` is the argv prefix that runs a command inside the namespace
(`ip netns exec consortium-NAME-ORG`): `ip` execs the command, so the process the supervisor
started is the command itself and its no-orphan watcher works unchanged.

The kernel here has no `netem`; `netem_available()` says whether `tc qdisc ... netem`
works, for a kernel that has it (README, deploy/README.md: where it would plug in).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from consortium.errors import ConsortiumError
from consortium.node.config import ORG_ID_PATTERN

# Where a node listens inside its namespace (on lo, a /32 nothing outside routes to).
NODE_ADDRESS = "10.254.0.1"
DEFAULT_SUBNET = "10.231.0.0/24"
NAME_PATTERN = r"^[a-z][a-z0-9]{0,7}$"  # veth ends NAMEh<i> fit IFNAMSIZ (15)


class NetworkError(ConsortiumError):
    """Network namespaces could not be set up: not root, no `ip`, or a command failed."""

    exit_code = 9


@dataclass(frozen=True)
class Host:
    """One organization's namespace: `address` on the bridge (what the others reach),
    `node_address` where its node listens inside, `prefix` the argv that runs a command
    in it."""

    org: str
    namespace: str
    address: str
    node_address: str
    prefix: tuple[str, ...]


@dataclass
class Network:
    """A bridge and one namespace per organization (see the module docstring). `name`
    prefixes every namespace and interface: a network of the same name left behind is
    removed by `create`."""

    name: str = "cns"
    subnet: str = DEFAULT_SUBNET
    hosts: dict[str, Host] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not re.match(NAME_PATTERN, self.name):
            raise NetworkError(
                f"network name {self.name!r}: 1-8 lowercase letters and digits, "
                "starting with a letter"
            )
        try:
            net = ipaddress.ip_network(self.subnet)
        except ValueError as e:
            raise NetworkError(f"subnet {self.subnet!r}: {e}") from None
        if not isinstance(net, ipaddress.IPv4Network) or net.num_addresses < 4:
            raise NetworkError(f"subnet {self.subnet!r}: an IPv4 network of 4 addresses or more")
        if ipaddress.ip_address(NODE_ADDRESS) in net:
            raise NetworkError(f"subnet {self.subnet!r} holds the node address {NODE_ADDRESS}")
        self._net = net
        self._ip = ""

    @property
    def bridge(self) -> str:
        return f"{self.name}-br"

    @property
    def gateway(self) -> str:
        """The bridge's own address: the root namespace (this machine) on the network."""
        return str(self._net.network_address + 1)

    def namespace(self, org: str) -> str:
        return f"consortium-{self.name}-{org}"

    @property
    def alias(self) -> str:
        """The alias of this network's interfaces in the root namespace."""
        return f"consortium {self.name}"

    def create(self, orgs: Sequence[str]) -> Network:
        """The bridge and a namespace per organization, after removing what a network of
        this name left behind. On failure, what was made is removed again."""
        self._ip = require_ip()
        for org in orgs:
            if not re.match(ORG_ID_PATTERN, org):
                raise NetworkError(f"organization id {org!r}: lowercase letters, digits, dashes")
        if len(set(orgs)) != len(orgs):
            raise NetworkError("an organization is named twice")
        if len(orgs) > self._net.num_addresses - 3:
            raise NetworkError(f"subnet {self.subnet} has no address for {len(orgs)} hosts")
        self.remove_stale()
        taken = _overlapping(self._ip, self._net)
        if taken:
            raise NetworkError(
                f"subnet {self.subnet} overlaps {taken}: give this federation another "
                "subnet ([federation] subnet in its file)"
            )
        try:
            self._ip_run("link", "add", self.bridge, "type", "bridge")
            self._ip_run("link", "set", self.bridge, "alias", self.alias)
            self._ip_run("addr", "add", f"{self.gateway}/{self._net.prefixlen}", "dev", self.bridge)
            self._ip_run("link", "set", self.bridge, "up")
            for i, org in enumerate(orgs):
                self._add(i, org)
        except BaseException:
            self.destroy()
            raise
        return self

    def _add(self, i: int, org: str) -> None:
        ns = self.namespace(org)
        outer, inner = f"{self.name}h{i}", f"{self.name}n{i}"
        address = str(self._net.network_address + 2 + i)
        self._ip_run("netns", "add", ns)
        self.hosts[org] = Host(org, ns, address, NODE_ADDRESS, (self._ip, "netns", "exec", ns))
        self._ip_run("link", "add", outer, "type", "veth", "peer", "name", inner)
        self._ip_run("link", "set", outer, "alias", self.alias)
        self._ip_run("link", "set", outer, "master", self.bridge)
        self._ip_run("link", "set", outer, "up")
        self._ip_run("link", "set", inner, "netns", ns)
        self._ip_run("-n", ns, "link", "set", inner, "name", "eth0")
        self._ip_run("-n", ns, "addr", "add", f"{address}/{self._net.prefixlen}", "dev", "eth0")
        self._ip_run("-n", ns, "link", "set", "eth0", "up")
        self._ip_run("-n", ns, "link", "set", "lo", "up")
        self._ip_run("-n", ns, "addr", "add", f"{NODE_ADDRESS}/32", "dev", "lo")

    def host(self, org: str) -> Host:
        try:
            return self.hosts[org]
        except KeyError:
            raise NetworkError(f"no host for organization {org!r} on network {self.name}") from None

    def addresses(self) -> dict[str, str]:
        """Each organization's bridge address (what the links file's `hosts` holds)."""
        return {org: h.address for org, h in self.hosts.items()}

    def remove_stale(self) -> list[str]:
        """Removes every namespace and interface named for this network (the processes
        still running in its namespaces are killed first); returns what was removed."""
        ip = self._ip or require_ip()
        removed: list[str] = []
        for ns in _namespaces(ip):
            if ns.startswith(f"consortium-{self.name}-"):
                _kill_inside(ip, ns)
                _run([ip, "netns", "del", ns], check=False)
                removed.append(ns)
        for link, alias in _links(ip):
            if alias == self.alias and (
                link == self.bridge or re.fullmatch(rf"{self.name}h\d+", link)
            ):
                _run([ip, "link", "del", link], check=False)
                removed.append(link)
        return removed

    def destroy(self) -> None:
        """Removes the namespaces (and what still runs in them), veths and bridge."""
        self.remove_stale()
        self.hosts.clear()

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def _ip_run(self, *args: str) -> None:
        _run([self._ip, *args])


def require_ip() -> str:
    """The `ip` command's path, when this process may create namespaces with it."""
    ip = shutil.which("ip")
    if ip is None:
        raise NetworkError("the `ip` command (iproute2) is not installed: no network namespaces")
    if os.geteuid() != 0:
        raise NetworkError(
            f"network namespaces need root (this process runs as uid {os.geteuid()})"
        )
    return ip


def netem_available() -> bool:
    """Whether this kernel applies `tc qdisc ... netem` (tried on the loopback of a
    throwaway namespace). Where it does, a link's delay, jitter, loss and rate could be
    set on the veth ends instead of in the link proxy (see deploy/README.md)."""
    tc = shutil.which("tc")
    try:
        ip = require_ip()
    except NetworkError:
        return False
    if tc is None:
        return False
    ns = f"cnetem{os.getpid()}"
    if _run([ip, "netns", "add", ns], check=False).returncode != 0:
        return False
    try:
        cmd = [ip, "netns", "exec", ns, tc, "qdisc", "add", "dev", "lo", "root", "netem"]
        return _run([*cmd, "delay", "1ms"], check=False).returncode == 0
    finally:
        _run([ip, "netns", "del", ns], check=False)


def _run(cmd: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=30)
    if check and result.returncode != 0:
        raise NetworkError(f"{' '.join(cmd)}: {result.stderr.strip() or result.returncode}")
    return result


def _namespaces(ip: str) -> list[str]:
    out = _run([ip, "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _links(ip: str) -> list[tuple[str, str]]:
    """Each interface of the root namespace: its name and alias."""
    out = _run([ip, "-j", "link", "show"], check=False).stdout
    try:
        links: list[dict[str, Any]] = json.loads(out or "[]")
    except ValueError:
        return []
    return [(str(link.get("ifname", "")), str(link.get("ifalias", ""))) for link in links]


def _overlapping(ip: str, net: ipaddress.IPv4Network) -> str:
    """An address of the root namespace whose network overlaps `net` ('' when none):
    another federation's bridge, or one of this machine's own networks, which the
    bridge's route would shadow."""
    out = _run([ip, "-j", "-4", "addr", "show"], check=False).stdout
    try:
        links: list[dict[str, Any]] = json.loads(out or "[]")
    except ValueError:
        return ""
    aliases = dict(_links(ip))
    for link in links:
        for info in link.get("addr_info", []):
            try:
                other = ipaddress.ip_network(f"{info['local']}/{info['prefixlen']}", strict=False)
            except (KeyError, ValueError):
                continue
            if other.overlaps(net) and not other.is_loopback:
                name = str(link.get("ifname", "?"))
                alias = f" ({aliases[name]})" if aliases.get(name) else ""
                return f"{other} on {name}{alias}"
    return ""


def _kill_inside(ip: str, ns: str) -> None:
    """SIGKILLs what still runs in a namespace of this network (a crashed launcher's
    nodes and proxies): the namespace lives on while a process is in it."""
    for pid in _run([ip, "netns", "pids", ns], check=False).stdout.split():
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            os.kill(int(pid), signal.SIGKILL)
