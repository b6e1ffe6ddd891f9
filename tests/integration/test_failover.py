"""Peers that die, stall, flap and come back (issue 25, item 8): three echo nodes on
loopback, the two peers behind fault proxies (consortium/launch/faultproxy.py) that kill,
black-hole and reset their links. acme routes every free-text task to a peer
(`random:1.0`; globex first among equals). Every wait is on a condition with a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from consortium.federation.admin import update_roster
from consortium.federation.roster import Roster
from consortium.launch.faultproxy import FaultProxy
from consortium.node.breaker import CircuitBreaker
from consortium.node.peers import PeerClient
from consortium.protocols.multiple_choice import Question
from tests.integration.test_federation import Federation

pytestmark = pytest.mark.asyncio(loop_scope="module")

PEERS = ("globex", "initech")


async def until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)


class ProxiedFederation(Federation):
    """The federation with each peer's gRPC endpoint in the roster behind a FaultProxy."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.proxies: dict[str, FaultProxy] = {}

    def config(self, org: str) -> Any:
        cfg = super().config(org)
        fed = cfg.federation.model_copy(
            update={"peer_timeout_s": 3.0, "breaker_open_s": 0.1, "breaker_max_open_s": 0.4}
        )
        update: dict[str, Any] = {"federation": fed}
        if org == "acme":
            update["routing"] = cfg.routing.model_copy(update={"router": "random:1.0"})
        return cfg.model_copy(update=update)

    async def start(self) -> None:
        await super().start()
        for org in PEERS:
            endpoints = self.nodes[org].endpoints
            assert endpoints is not None
            self.proxies[org] = await FaultProxy(endpoints.grpc_target).start()

        def proxied(r: Roster) -> Roster:
            members = [
                m.model_copy(
                    update={
                        "endpoints": m.endpoints.model_copy(
                            update={"grpc": self.proxies[m.org_id].address}
                        )
                    }
                )
                if m.org_id in self.proxies
                else m
                for m in r.members
            ]
            return r.model_copy(update={"members": members})

        update_roster(self.roster, self.admin_key, proxied)
        await self.roster_seen(
            lambda r: all(r.member(o).endpoints.grpc == self.proxies[o].address for o in PEERS)  # type: ignore[union-attr]
        )

    async def stop(self) -> None:
        for proxy in self.proxies.values():
            await proxy.stop()
        await super().stop()

    @property
    def peers(self) -> PeerClient:
        federation = self.nodes["acme"].federation
        assert federation is not None
        return federation.peers

    def breaker(self, org: str) -> CircuitBreaker:
        return self.peers.breaker(org)

    async def answered_by(self, text: str, **options: Any) -> str:
        """The organization whose answer acme returned (the task must complete)."""
        answer = await self.ask_via("acme", text, **options)
        assert answer.state == "completed", answer.status_text
        org: str = answer.provenance.org
        return org

    async def healed(self, org: str) -> None:
        """The link to `org` is clean again and acme uses the peer: its circuit closed."""
        proxy = self.proxies[org]
        proxy.blackhole, proxy.reset_rate = False, 0.0
        await proxy.revive()
        await until(lambda: self.breaker(org).available(), f"{org}'s circuit lets calls out")
        assert await self.answered_by("are you back?", peer=org) == org
        assert self.breaker(org).state == "closed"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ProxiedFederation]:
    f = ProxiedFederation(tmp_path_factory.mktemp("failover"))
    try:
        await f.start()
        yield f
    finally:
        await f.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def clean(fed: ProxiedFederation) -> AsyncIterator[ProxiedFederation]:
    assert await fed.answered_by("warm up") == "globex"
    yield fed
    for org in PEERS:
        await fed.healed(org)


def reputation(fed: ProxiedFederation, org: str) -> float:
    return fed.peers.assessor.standing(org).score


async def test_an_escalation_in_flight_when_its_peer_dies_completes_on_the_next_peer(
    clean: ProxiedFederation,
) -> None:
    fed, globex = clean, clean.proxies["globex"]
    score = reputation(fed, "globex")
    globex.blackhole = True  # what acme sends next is in flight when globex dies
    held = globex.held
    task = asyncio.create_task(fed.answered_by("who answers this?"))
    await until(lambda: globex.held > held, "the escalation is on the wire")
    await globex.kill()
    assert await task == "initech"
    assert fed.breaker("globex").state in ("open", "probing")
    # Routing reads the circuit: the next tasks go to initech, not to globex first.
    accepted = globex.accepted
    assert [await fed.answered_by(f"task {i}") for i in range(5)] == ["initech"] * 5
    assert globex.accepted == accepted
    # A dead peer is the network's doing: its reputation did not move.
    assert reputation(fed, "globex") == score


async def test_a_multiple_choice_escalation_fails_over_too(clean: ProxiedFederation) -> None:
    fed, globex = clean, clean.proxies["globex"]
    await globex.kill()
    answer = await fed.ask_via(
        "acme", "Which is heavier?", choices=["a feather", "a stone"], route="always:globex"
    )
    assert answer.state == "completed", answer.status_text
    assert answer.provenance.route == "acme->initech"
    assert answer.provenance.decision is not None
    reason = answer.provenance.decision.reason
    assert reason.startswith("always: escalate to globex; ") and reason.endswith(": failover")
    assert set(answer.provenance.members or {}) == {"acme", "initech"}


async def test_a_restarted_peer_is_back_in_rotation(clean: ProxiedFederation) -> None:
    fed, globex = clean, clean.proxies["globex"]
    await globex.kill()
    assert await fed.answered_by("while globex is down") == "initech"
    await globex.revive()
    # The probe finds it (no task needed), and automatic routing chooses it again.
    await until(lambda: fed.breaker("globex").available(), "globex's circuit half-opens")
    assert await fed.answered_by("globex again?") == "globex"
    assert fed.breaker("globex").state == "closed"


async def test_a_peer_restarted_twelve_times_is_called_again_each_time(
    clean: ProxiedFederation,
) -> None:
    fed, globex = clean, clean.proxies["globex"]
    for cycle in range(12):
        await globex.kill()
        answer = await fed.ask_via("acme", f"cycle {cycle}", peer="globex")
        assert answer.state == "failed" and "globex" in answer.status_text
        await globex.revive()
        await until(lambda: fed.breaker("globex").available(), f"cycle {cycle}: circuit")
        assert await fed.answered_by(f"cycle {cycle} again", peer="globex") == "globex"


async def test_one_timeout_opens_the_circuit_though_a_newer_connection_just_answered(
    clean: ProxiedFederation,
) -> None:
    """A peer has a connection per kind of call. The streamed one is the older here and
    the non-streamed one (a scoring call; witnessing and trust reports use it too) has
    just answered: the streamed call's timeout in a black hole still opens the circuit,
    so the next task fails over at once instead of waiting out a second deadline."""
    fed, globex = clean, clean.proxies["globex"]
    assert await fed.answered_by("streamed first", peer="globex") == "globex"
    await fed.peers.scores_of("globex", Question("Which is heavier?", ("a feather", "a stone")))
    opened = fed.breaker("globex").opened
    globex.blackhole = True
    answer = await fed.ask_via("acme", "into the void", peer="globex")
    assert answer.state == "failed" and "globex" in answer.status_text
    assert fed.breaker("globex").opened == opened + 1
    assert await fed.answered_by("after the timeout") == "initech"


async def test_a_black_holed_peer_costs_one_timeout_then_none(clean: ProxiedFederation) -> None:
    fed, globex = clean, clean.proxies["globex"]
    opened = fed.breaker("globex").opened
    globex.blackhole = True
    # The first task waits out acme's peer_timeout_s on globex, then initech answers.
    assert await fed.answered_by("into the void") == "initech"
    assert fed.breaker("globex").opened == opened + 1
    # Later tasks do not wait for globex: routing passes it by, and a call naming it
    # fails at once (probes connect to the proxy but never get an HTTP/2 handshake back).
    assert [await fed.answered_by(f"after {i}") for i in range(3)] == ["initech"] * 3
    assert not fed.breaker("globex").available()
    explicit = await fed.ask_via("acme", "only globex", peer="globex")
    assert explicit.state == "failed" and "circuit is open" in explicit.status_text


async def test_a_reset_connection_is_replaced_and_the_call_asked_again(
    clean: ProxiedFederation,
) -> None:
    fed, globex = clean, clean.proxies["globex"]
    for i in range(5):
        # A reset while the request is on the wire: asked again on a new connection.
        globex.blackhole = True
        held = globex.held
        task = asyncio.create_task(fed.answered_by(f"reset {i}", peer="globex"))
        await until(lambda d=held: globex.held > d, "the request is on the wire")
        globex.blackhole = False
        globex.reset_all()
        assert await task == "globex"
        # A reset of an idle connection: the next call is not failed fast.
        globex.reset_all()
        assert await fed.answered_by(f"idle reset {i}", peer="globex") == "globex"
    assert fed.breaker("globex").state == "closed"


async def test_with_a_tenth_of_chunks_resetting_the_link_every_task_gets_one_answer(
    clean: ProxiedFederation,
) -> None:
    """Every task ends (completed, or failed when the reset came after part of its
    answer was on its way: a task is not asked again then), and none gets two answers."""
    fed, globex = clean, clean.proxies["globex"]
    globex.reset_rate = 0.1
    resets = globex.resets
    answers = await asyncio.gather(*(fed.ask_via("acme", f"lossy {i}") for i in range(20)))
    assert globex.resets > resets
    assert {a.state for a in answers} <= {"completed", "failed"}
    completed = [(i, a) for i, a in enumerate(answers) if a.state == "completed"]
    assert completed
    for i, a in completed:  # the echo of the task's text, once
        assert a.text.count("lossy") == 1 and f"lossy {i}" in a.text
