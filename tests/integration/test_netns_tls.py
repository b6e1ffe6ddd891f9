"""Mutual TLS between organizations in network namespaces (issue 27, item 3): each
node's certificate, from `init --mtls` with a shared CA, names the bridge address it is
reached at (`--public-host`), not only the node address it listens on; a peer dialling
that address through the link proxy verifies it, and presents its own. A task crosses
from acme to globex and back verified, and this machine asks acme over HTTPS and gRPC
with acme's certificate."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.integration.netns_federation import NetnsFederation, needs_netns
from tests.node.test_tls import san_names

pytestmark = [needs_netns, pytest.mark.slow]


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsFederation]:
    f = NetnsFederation(
        tmp_path_factory.mktemp("netns-tls"),
        ["acme", "globex"],
        name="nlt2",
        subnet="10.201.3.0/24",
        mtls=True,
    )
    try:
        yield f.start()
    finally:
        f.stop()


def test_certificates_name_the_bridge_address(fed: NetnsFederation) -> None:
    for org in ("acme", "globex"):
        names = san_names(fed.base / org / "tls" / "node.pem")
        assert fed.network.host(org).address in names
        assert "10.254.0.1" in names  # where it listens


def test_a_task_crosses_over_mutual_tls(fed: NetnsFederation) -> None:
    answer = asyncio.run(fed.ask("acme", "over mutual TLS", peer="globex"))
    assert answer.state == "completed", answer.status_text
    assert (answer.provenance.org, answer.provenance.verified) == ("globex", True)
