"""Three organizations, each in its own network namespace (issue 27, items 3 and 4): real
`consortium node start` processes (echo model) that reach each other only over their
bridge addresses, through link proxies whose faults the test switches in the links
file. acme routes every free-text task to a peer (`random:1.0`).

- a cross-organization task is answered, from this machine and from inside acme's host;
- with a 200 ms round trip and 5 % loss on acme's links, every escalation completes, on
  the peer asked (so within `peer_timeout_s`: a call past it times out and fails);
- a partition makes escalations to the peer fail: the first at its deadline, the next at
  once ("circuit is open"); tasks routed freely go to the other peer; the partitioned
  peer's reputation holds no evidence against it and it is not quarantined;
- healing brings it back within breaker_max_open_s plus a probe (waited on, with a bound
  derived from those settings);
- a stalled link fails its task at the call's deadline instead of hanging it.

Every wait is on a condition; nothing asserts wall time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.netns_federation import NetnsFederation, needs_netns

pytestmark = [needs_netns, pytest.mark.slow]

PEER_TIMEOUT_S = 6.0
MAX_OPEN_S = 1.0
PROBE_TIMEOUT_S = 1.0
FEDERATION = (
    f"peer_timeout_s = {PEER_TIMEOUT_S}\nbreaker_open_s = 0.2\n"
    f"breaker_max_open_s = {MAX_OPEN_S}\nbreaker_probe_timeout_s = {PROBE_TIMEOUT_S}\n"
)
ACME_ROUTING = '\n[routing]\nrouter = "random:1.0"\n'


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsFederation]:
    f = NetnsFederation(
        tmp_path_factory.mktemp("netns"),
        ["acme", "globex", "initech"],
        name="nlf",
        subnet="10.201.2.0/24",
        federation=FEDERATION,
        extra={"acme": ACME_ROUTING},
    )
    try:
        yield f.start()
    finally:
        f.stop()


@pytest.fixture
def clean(fed: NetnsFederation) -> Iterator[NetnsFederation]:
    yield fed
    fed.set_link(None, heal=True, delay_ms=0.0, loss=0.0, jitter_ms=0.0)
    for org in ("globex", "initech"):
        fed.set_link(f"acme:{org}", heal=True, delay_ms=0.0, loss=0.0, jitter_ms=0.0)
        back_in_rotation(fed, org)


def back_in_rotation(fed: NetnsFederation, org: str) -> None:
    """Until acme answers a task named for `org` through it: its circuit half-opens
    within breaker_max_open_s plus a probe; the bound is generous (x4, plus a call)."""
    bound = 4 * (MAX_OPEN_S + PROBE_TIMEOUT_S) + PEER_TIMEOUT_S
    deadline = time.monotonic() + bound

    async def attempt() -> bool:
        answer = await fed.ask("acme", "are you back?", peer=org)
        return answer.state == "completed" and answer.provenance.org == org

    while not asyncio.run(attempt()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{org} not back in rotation within {bound} s")


def test_a_cross_organization_task_is_answered(clean: NetnsFederation) -> None:
    answer = asyncio.run(clean.ask("acme", "Which organization answers?"))
    assert answer.state == "completed", answer.status_text
    assert answer.provenance.org in ("globex", "initech")
    assert answer.provenance.verified
    named = asyncio.run(clean.ask("acme", "And you?", peer="initech"))
    assert (named.state, named.provenance.org) == ("completed", "initech")
    # From inside acme's host, as its operator asks.
    r = clean.cli(
        "acme", "ask", "--config", str(clean.config("acme")), "--peer", "globex", "hello there"
    )
    assert r.returncode == 0, r.stderr
    assert "hello there" in r.stdout and "globex" in r.stderr


def test_with_200ms_rtt_and_5_percent_loss_every_escalation_completes(
    clean: NetnsFederation,
) -> None:
    for org in ("globex", "initech"):
        clean.set_link(f"acme:{org}", delay_ms=100.0, jitter_ms=10.0, loss=0.05)
    answers = [
        asyncio.run(clean.ask("acme", f"over a bad network {i}", peer=org))
        for i in range(6)
        for org in ("globex", "initech")
    ]
    # Each completed on the peer asked: none passed its peer_timeout_s (it would have
    # failed, the peer being named and so never replaced).
    assert [(a.state, a.provenance.org) for a in answers] == [
        ("completed", org) for _ in range(6) for org in ("globex", "initech")
    ]
    assert all(a.provenance.verified for a in answers)


def test_a_partition_fails_fast_and_does_not_quarantine_the_peer(
    clean: NetnsFederation,
) -> None:
    before = clean.trust("acme", "globex")
    clean.set_link("acme:globex", partition=True)
    # The first call waits out its deadline (a silent partition answers nothing) ...
    first = asyncio.run(clean.ask("acme", "anyone there?", peer="globex"))
    assert first.state == "failed" and "globex" in first.status_text
    # ... then the circuit is open: the next fails at once, and says why.
    second = asyncio.run(clean.ask("acme", "still there?", peer="globex"))
    assert second.state == "failed"
    assert "circuit is open" in second.status_text
    # Routed freely, tasks go to initech.
    routed = [asyncio.run(clean.ask("acme", f"route me {i}")) for i in range(3)]
    assert [(a.state, a.provenance.org) for a in routed] == [("completed", "initech")] * 3
    # The partition was the network's doing: globex is not quarantined, and no evidence
    # against it was recorded.
    after = clean.trust("acme", "globex")
    assert after.get("state", "healthy") != "quarantined"
    assert bad_evidence(after) == bad_evidence(before)
    assert after.get("score", 1.0) >= before.get("score", 1.0)


def bad_evidence(record: dict[str, Any]) -> int:
    return sum(int(c.get("bad", 0)) for c in (record.get("evidence") or {}).values())


def test_healing_restores_routing_within_the_breakers_bound(clean: NetnsFederation) -> None:
    clean.set_link("acme:globex", refuse=True)  # a partition whose routers answer
    failed = [asyncio.run(clean.ask("acme", f"down {i}", peer="globex")) for i in range(3)]
    assert all(a.state == "failed" for a in failed)
    assert "circuit is open" in failed[-1].status_text
    clean.set_link("acme:globex", heal=True)
    back_in_rotation(clean, "globex")
    # Automatic routing chooses it again too (globex or initech; both answer).
    answers = [asyncio.run(clean.ask("acme", f"after {i}")) for i in range(4)]
    assert all(a.state == "completed" for a in answers)


def test_a_stalled_link_fails_the_task_at_its_deadline(clean: NetnsFederation) -> None:
    warm = asyncio.run(clean.ask("acme", "warm the connection", peer="globex"))
    assert warm.state == "completed"
    clean.set_link("acme:globex", stall=True)  # the open connection freezes
    # The client would wait 10 x the call's deadline: the task ends on its own first.
    stalled = asyncio.run(clean.ask("acme", "stuck?", timeout=10 * PEER_TIMEOUT_S, peer="globex"))
    assert stalled.state == "failed" and "globex" in stalled.status_text
    # A task routed freely does not wait on globex: its circuit opened on the timeout.
    routed = asyncio.run(clean.ask("acme", "route around it", timeout=10 * PEER_TIMEOUT_S))
    assert (routed.state, routed.provenance.org) == ("completed", "initech")


def test_nodes_are_reached_over_bridge_addresses_only(clean: NetnsFederation) -> None:
    """acme's node's roster lists its peers at their bridge addresses; globex's node does
    not listen on any address acme's namespace can reach but its proxy's."""
    roster = (clean.base / "federation" / "federation.toml").read_text()
    for org in ("globex", "initech"):
        assert f"{clean.network.host(org).address}:50051" in roster
    assert "127.0.0.1" not in roster
    r = clean.cli("acme", "node", "status", "--config", str(clean.config("acme")))
    assert r.returncode == 0, r.stderr
