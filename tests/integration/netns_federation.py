"""A federation of organizations in network namespaces for tests (not a launcher: that is
`consortium up --isolate netns`, tested in tests/launch/test_launcher_netns.py; this
harness stays for the fault tests, which give each organization node.toml text and
mutual TLS that the federation file has no keys for): each organization's node a real
`consortium node start` process in its own namespace, listening on the namespace's node
address, behind its link proxy on its bridge address (launch/netns.py,
launch/linkproxy.py), the echo model; the links file switched by the test. Everything
is stopped and removed in `stop`, which the fixtures call in a `finally`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from consortium.federation.admin import add_member, create_federation, member_from_card
from consortium.launch.linkproxy import start_link_proxy
from consortium.launch.links import LinksFile, new_links, set_faults
from consortium.launch.local import node_environment, start_node
from consortium.launch.netns import NODE_ADDRESS, Network
from consortium.launch.supervisor import Child, Supervisor
from consortium.node.client import Answer, ask, fetch_agent_card, open_client
from consortium.node.config import load_config
from consortium.node.setup import init_node, local_api_key

GRPC_PORT, HTTP_PORT = 50051, 8080
ROOT = Path(__file__).resolve().parents[2]

needs_netns = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="network namespaces need root and ip"
)


def until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


class NetnsFederation:
    def __init__(
        self,
        base: Path,
        orgs: Sequence[str],
        *,
        name: str,
        subnet: str,
        federation: str = "",
        extra: dict[str, str] | None = None,
        mtls: bool = False,
    ) -> None:
        self.base = base
        self.orgs = list(orgs)
        self.network = Network(name, subnet=subnet)
        self.links = base / "links.json"
        self.federation_toml = federation  # extra keys of every [federation] section
        self.extra = extra or {}  # TOML appended to an organization's node.toml
        self.mtls = mtls  # mutual TLS, every node's certificate from one shared CA
        self.supervisor = Supervisor(base, node_environment(), grace_s=10.0)
        self.proxies: dict[str, Child] = {}
        self.nodes: dict[str, Child] = {}

    def config(self, org: str) -> Path:
        return self.base / org / "node.toml"

    def start(self) -> NetnsFederation:
        self.network.create(self.orgs)
        new_links(self.links, self.network.addresses(), seed=27)
        paths = create_federation("Namespaces", self.base / "federation")
        for org in self.orgs:
            host = self.network.host(org)
            init_node(
                org,
                self.base / org,
                host=NODE_ADDRESS,
                public_host=host.address,
                grpc_port=GRPC_PORT,
                http_port=HTTP_PORT,
                threads=1,
                mtls=self.mtls,
                tls_ca_dir=self.base / "ca" if self.mtls else None,
            )
            config = self.config(org)
            text = config.read_text().replace('backend = "llama_cpp"', 'backend = "echo"')
            text += (
                f'\n[federation]\nroster = "{paths.roster.resolve()}"\n'
                f'admin_key = "{paths.admin_public.resolve()}"\n{self.federation_toml}\n'
                + self.extra.get(org, "")
            )
            config.write_text(text)
            card = json.loads((self.base / org / "agent-card.json").read_text())
            add_member(paths.roster, paths.admin_private, member_from_card(card))
        for org in self.orgs:
            host = self.network.host(org)
            self.proxies[org] = start_link_proxy(
                self.supervisor, self.links, host, [GRPC_PORT, HTTP_PORT]
            )
            command = [*host.prefix, sys.executable, "-m", "consortium.cli", "node", "start"]
            self.nodes[org], _ = start_node(
                self.config(org),
                self.base / org / "node.log",
                supervisor=self.supervisor,
                command=[*command, "--config", "{config}"],
            )
        return self

    def stop(self) -> None:
        try:
            self.supervisor.stop()
        finally:
            self.network.destroy()

    # The network.

    def set_link(self, link: str | None, *, heal: bool = False, **changes: Any) -> LinksFile:
        """Changes a link's faults, and waits until every proxy applied the change."""
        links = set_faults(self.links, link, changes, heal=heal)
        line = f"links version {links.version} applied"
        until(
            lambda: all(line in p.log() for p in self.proxies.values()),
            f"the proxies applied version {links.version}",
            timeout=30,
        )
        return links

    # Asking, from this machine (the root namespace) over the bridge: the origin's own
    # API key, its public address.

    async def ask(self, org: str, text: str, timeout: float = 120.0, **options: Any) -> Answer:
        cfg = load_config(self.config(org))
        verify = cfg.client_ssl_context()
        card = await fetch_agent_card(cfg.http_url, verify=verify)
        client = open_client(
            card,
            api_key=local_api_key(cfg),
            credentials=cfg.client_credentials(),
            verify=verify,
        )
        try:
            return await ask(client, text, options=options or None, timeout=timeout)
        finally:
            await client.close()

    def cli(self, org: str, *args: str) -> subprocess.CompletedProcess[str]:
        """`consortium ARGS` run inside the organization's namespace."""
        return subprocess.run(
            [*self.network.host(org).prefix, sys.executable, "-m", "consortium.cli", *args],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "250"},
            timeout=300,
            check=False,
        )

    def trust(self, org: str, peer: str) -> dict[str, Any]:
        """`consortium trust show --json` of `org`, its record of `peer` ({} if none)."""
        r = self.cli(org, "trust", "show", "--config", str(self.config(org)), "--json")
        assert r.returncode == 0, r.stderr
        for record in json.loads(r.stdout)["peers"]:
            if record.get("peer") == peer and not record.get("model"):
                return dict(record)
        return {}
