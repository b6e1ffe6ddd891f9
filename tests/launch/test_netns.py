"""Network namespaces (launch/netns.py), as root: a bridge and a namespace per
organization with its own address, loopback up; nothing reaches another namespace over
loopback or its node address, only over its bridge address; a network left behind by a
crashed launcher (its namespaces, a process still in one, the bridge) is removed by the
next create; clear errors without root or `ip`. Every network made here is destroyed in
a `finally`, pass or fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from consortium.launch.netns import NODE_ADDRESS, Network, NetworkError, netem_available

ROOT = Path(__file__).resolve().parents[2]
needs_netns = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="network namespaces need root and ip"
)


def namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def links() -> str:
    return subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout


@pytest.fixture
def network() -> Iterator[Network]:
    net = Network("nlt", subnet="10.201.1.0/24")
    try:
        yield net.create(["acme", "globex"])
    finally:
        net.destroy()


# Listens on each "host:port" argument, prints READY, serves "ok" to each connection.
SERVER = textwrap.dedent(
    """
    import socket, sys, threading
    socks = []
    for spec in sys.argv[1:]:
        host, port = spec.rsplit(":", 1)
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, int(port))); s.listen(); socks.append(s)
    def serve(s):
        while True:
            c, _ = s.accept(); c.sendall(b"ok"); c.close()
    for s in socks:
        threading.Thread(target=serve, args=(s,), daemon=True).start()
    print("READY", flush=True)
    sys.stdin.read()
    """
)

# Connects to host:port and prints what it got, or the error's name.
CLIENT = textwrap.dedent(
    """
    import socket, sys
    host, port = sys.argv[1].rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=5) as s:
            print(s.recv(2).decode())
    except OSError as e:
        print(type(e).__name__)
    """
)


def reach(net: Network, org: str, target: str) -> str:
    r = subprocess.run(
        [*net.host(org).prefix, sys.executable, "-c", CLIENT, target],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return r.stdout.strip()


@needs_netns
def test_each_organization_has_a_namespace_and_an_address(network: Network) -> None:
    acme, globex = network.host("acme"), network.host("globex")
    assert (acme.address, globex.address) == ("10.201.1.2", "10.201.1.3")
    assert network.addresses() == {"acme": "10.201.1.2", "globex": "10.201.1.3"}
    assert {acme.namespace, globex.namespace} <= set(namespaces())
    shown = subprocess.run(
        [*acme.prefix, "ip", "-o", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    assert "10.201.1.2/24" in shown and f"{NODE_ADDRESS}/32" in shown
    assert "lo" in shown and "127.0.0.1/8" in shown  # loopback is up
    with pytest.raises(NetworkError, match="no host for organization 'initech'"):
        network.host("initech")


@needs_netns
def test_nothing_reaches_another_namespace_but_over_its_bridge_address(
    network: Network,
) -> None:
    """globex serves on its loopback, its node address and its bridge address; acme
    reaches only the last. (Its own 127.0.0.1 and 10.254.0.1 are its own, with nothing
    listening.)"""
    globex = network.host("globex")
    server = subprocess.Popen(
        [
            *globex.prefix,
            sys.executable,
            "-c",
            SERVER,
            "127.0.0.1:7001",
            f"{NODE_ADDRESS}:7002",
            f"{globex.address}:7003",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "READY"
        assert reach(network, "globex", "127.0.0.1:7001") == "ok"  # globex itself
        assert reach(network, "acme", "127.0.0.1:7001") == "ConnectionRefusedError"
        assert reach(network, "acme", f"{NODE_ADDRESS}:7002") == "ConnectionRefusedError"
        assert reach(network, "acme", f"{globex.address}:7003") == "ok"
    finally:
        server.kill()
        server.wait()


@needs_netns
def test_a_network_left_behind_is_removed_by_the_next_create() -> None:
    crashed = Network("nlt", subnet="10.201.1.0/24").create(["acme", "globex"])
    # A process of the crashed launcher still runs in acme's namespace.
    orphan = subprocess.Popen([*crashed.host("acme").prefix, "sleep", "600"])
    again = Network("nlt", subnet="10.201.1.0/24")
    try:
        again.create(["acme", "initech"])
        assert orphan.wait(timeout=30) != 0  # killed with its namespace
        mine = [n for n in namespaces() if n.startswith("consortium-nlt-")]
        assert sorted(mine) == ["consortium-nlt-acme", "consortium-nlt-initech"]
        assert reach(again, "acme", f"{again.host('initech').address}:9") == (
            "ConnectionRefusedError"  # the network works: initech's kernel answers
        )
    finally:
        again.destroy()
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()
    assert not [n for n in namespaces() if n.startswith("consortium-nlt-")]
    assert "nlt-br" not in links() and "nlth0" not in links()


@needs_netns
def test_what_another_tool_made_is_left_alone() -> None:
    """A namespace and an interface named like ours but not made by a Network (no
    `consortium-` namespace prefix, no alias) survive create and destroy."""
    net = Network("nlt", subnet="10.201.1.0/24")
    try:
        subprocess.run(["ip", "netns", "add", "nlt-foreign"], check=True)
        veth = ["ip", "link", "add", "nlth7", "type", "veth", "peer", "name", "nlth8"]
        subprocess.run(veth, check=True)
        net.create(["acme"])
        net.destroy()
        assert "nlt-foreign" in namespaces()
        assert "nlth7" in links()
    finally:
        net.destroy()
        subprocess.run(["ip", "netns", "del", "nlt-foreign"], check=False)
        subprocess.run(["ip", "link", "del", "nlth7"], check=False)


@needs_netns
def test_a_failed_create_removes_what_it_made() -> None:
    net = Network("nlt", subnet="10.201.1.0/24")
    try:
        with pytest.raises(NetworkError, match="named twice"):
            net.create(["acme", "acme"])
        with pytest.raises(NetworkError, match="organization id"):
            net.create(["acme", "Not An Org"])
    finally:
        net.destroy()
    assert not [n for n in namespaces() if n.startswith("consortium-nlt-")]


@needs_netns
def test_a_second_federation_on_an_overlapping_subnet_is_refused(network: Network) -> None:
    """Two federations on one machine need subnets apart: the second one's bridge route
    would shadow the first's. The refusal names what it overlaps; the first keeps
    working and nothing of the second is left."""
    other = Network("nlu", subnet="10.201.1.128/25")
    try:
        with pytest.raises(NetworkError) as refused:
            other.create(["initech"])
        assert "10.201.1.0/24 on nlt-br (consortium nlt)" in str(refused.value)
        assert "[federation] subnet" in str(refused.value)
    finally:
        other.destroy()
    assert not [n for n in namespaces() if n.startswith("consortium-nlu-")]
    assert "nlu-br" not in links()
    assert reach(network, "acme", f"{network.host('globex').address}:9") == (
        "ConnectionRefusedError"
    )


@pytest.mark.parametrize(
    ("name", "subnet", "words"),
    [
        ("Bad-Name", "10.201.1.0/24", "network name"),
        ("toolongname", "10.201.1.0/24", "network name"),
        ("nlt", "not a subnet", "subnet"),
        ("nlt", "10.201.1.0/31", "4 addresses"),
        ("nlt", "10.254.0.0/16", "node address"),
    ],
)
def test_bad_names_and_subnets(name: str, subnet: str, words: str) -> None:
    with pytest.raises(NetworkError, match=words):
        Network(name, subnet=subnet)


def run_create(
    env: dict[str, str] | None = None, drop_root: bool = False
) -> subprocess.CompletedProcess[str]:
    """Network.create in a child process; with `drop_root`, after it has become user
    nobody (the module imported first, as root: nobody may not read this checkout)."""
    code = "import os; from consortium.launch.netns import Network; "
    if drop_root:
        code += "os.setgid(65534); os.setuid(65534); "
    code += "Network('nlt').create(['acme'])"
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        timeout=60,
        check=False,
    )


def test_without_ip_the_error_says_so() -> None:
    r = run_create(env={"PATH": "/nonexistent"})
    assert r.returncode != 0
    assert "the `ip` command (iproute2) is not installed" in r.stderr


@needs_netns
def test_without_root_the_error_says_so() -> None:
    r = run_create(drop_root=True)
    assert r.returncode != 0
    assert "network namespaces need root (this process runs as uid 65534)" in r.stderr


@needs_netns
def test_netem_is_probed_and_cleaned_up() -> None:
    before = namespaces()
    assert isinstance(netem_available(), bool)  # False on this kernel (no sch_netem)
    assert namespaces() == before
