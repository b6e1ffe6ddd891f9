"""Routing acts on reputations, and the exchange reports every outcome, between real echo
nodes on loopback.

acme and initech are wired with `Standings`, a small Assessor whose standings each test
sets (an implementation of the interface, as the reputation engine will be one), through
`Node(assessor=...)`, the hook the engine is wired through too. The echo models make the
answers deterministic; initech's echo scores options the other way round, so a vote
between acme and initech ties and reputation decides it; globex's echo pauses between
tokens, so a long enough answer outlives a short deadline.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
import pytest_asyncio

from consortium.federation.admin import update_roster
from consortium.federation.roster import Roster
from consortium.llm.backends import backend_factory
from consortium.llm.echo import EchoBackend
from consortium.node.app import Node
from consortium.node.config import parse_config
from consortium.node.peers import PeerClient, PeerError
from consortium.protocols.redaction import IdentityRedactor
from consortium.trust.reputation import PeerState, Standing, Verdict
from tests.integration.test_federation import Federation

pytestmark = pytest.mark.asyncio(loop_scope="module")

QUARANTINED = "quarantined by this node's trust layer"
QUESTION = "Which part of a plant takes in water from the soil?"
CHOICES = ["the roots", "the leaves", "the flowers", "the seeds"]
# acme's echo prefers "water" (it shares a word with the question), initech's "stone".
DUEL_QUESTION = "Does water flow?"
DUEL_CHOICES = ["stone", "water"]
GROUPS = {
    "panel": {"protocol": "vote", "members": ["self", "globex", "initech"]},
    "duel": {"protocol": "vote", "members": ["self", "initech"]},
    "pair": {"protocol": "vote", "members": ["globex", "initech"], "min_members": 2},
    "strict": {
        "protocol": "vote",
        "members": ["self", "globex", "initech"],
        "min_members": 3,
        "on_short": "refuse",
    },
    "moa": {"protocol": "mixture", "members": ["self", "globex", "initech"]},
    # ghost: a member whose endpoint nothing listens on (added to the roster by a test).
    "haunted": {"protocol": "vote", "members": ["self", "globex", "ghost"]},
    "all-or-nothing": {"protocol": "vote", "members": ["self", "globex", "ghost"], "quorum": 3},
    "haunted-moa": {"protocol": "mixture", "members": ["self", "globex", "ghost"]},
}


class Standings:
    """An Assessor whose standings are a table the test sets (healthy, 1.0 otherwise);
    it keeps every verdict it is told."""

    def __init__(self) -> None:
        self.table: dict[str, Standing] = {}
        self.verdicts: list[Verdict] = []

    def set(self, peer: str, state: PeerState, score: float) -> None:
        self.table[peer] = Standing(peer, state, score, score)

    def reset(self) -> None:
        self.table.clear()
        self.verdicts.clear()

    def reputation(self, peer: str) -> float:
        return self.standing(peer).score

    def standing(self, peer: str) -> Standing:
        return self.table.get(peer, Standing(peer, "healthy", 1.0, 1.0))

    def assess(self, verdict: Verdict) -> None:
        self.verdicts.append(verdict)

    def of(self, peer: str) -> list[Verdict]:
        return [v for v in self.verdicts if v.peer == peer]


class Contrarian(EchoBackend):
    """The echo model, scoring the options in reverse order."""

    def score(self, prompt: str, continuations: Sequence[str]) -> list[float]:
        return list(reversed(super().score(prompt, continuations)))


class TrustFederation(Federation):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.standings = {"acme": Standings(), "initech": Standings()}

    def config(self, org: str) -> Any:
        cfg = super().config(org)
        data = cfg.model_dump(mode="json", exclude={"base_dir"})
        if org == "acme":
            data["groups"] = GROUPS
        if org == "globex":
            data["model"]["echo_token_delay_s"] = 0.05
        if org == "initech":
            # Every free-text task goes to its configured target, globex.
            data["routing"] = {
                "router": "heuristic",
                "threshold": -1.0,
                "target": "globex",
                "record": False,
            }
        return parse_config(data, path=cfg.base_dir / "node.toml")

    def node(self, cfg: Any) -> Node:
        org = cfg.node.org_id
        factory = backend_factory(cfg.model, cfg.base_dir)
        if org == "initech":
            factory = lambda: Contrarian(cfg.model.name, context_size=cfg.model.context_size)  # noqa: E731
        return Node(cfg, factory, assessor=self.standings.get(org))

    @asynccontextmanager
    async def roster_change(
        self, change: Callable[[Roster], Roster], seen: Callable[[Roster], bool]
    ) -> AsyncIterator[None]:
        """The roster changed (and seen by every node) for the block, then restored."""
        original = self.roster.read_bytes()
        update_roster(self.roster, self.admin_key, change)
        await self.roster_seen(seen)
        try:
            yield
        finally:
            update_roster(self.roster, self.admin_key, lambda r: restore(r, original))
            await self.roster_seen(lambda r: not seen(r))


def restore(current: Roster, original: bytes) -> Roster:
    import tomllib

    before = Roster.model_validate(tomllib.loads(original.decode()))
    return current.model_copy(update={"members": before.members})


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TrustFederation]:
    f = TrustFederation(tmp_path_factory.mktemp("trust"))
    try:
        await f.start()
        yield f
    finally:
        await f.stop()


@pytest.fixture
def acme(fed: TrustFederation) -> Iterator[Standings]:
    """acme's standings, every peer healthy at 1.0 at the start of each test."""
    for s in fed.standings.values():
        s.reset()
    yield fed.standings["acme"]
    for s in fed.standings.values():
        s.reset()


async def choose(fed: Federation, route: str, **extra: Any) -> Any:
    return await fed.ask_via("acme", QUESTION, choices=CHOICES, route=route, **extra)


def candidates(fed: Federation, org: str = "acme") -> set[str]:
    federation = fed.nodes[org].federation
    assert federation is not None
    return {p.org for p in federation.peers.candidates()}


# -- quarantine ------------------------------------------------------------------------


async def test_a_quarantined_peer_is_no_candidate_from_the_next_decision(
    fed: TrustFederation, acme: Standings
) -> None:
    assert candidates(fed) == {"globex", "initech"}
    first = await choose(fed, "random:1")
    assert first.provenance.route == "acme->globex"  # the first of equals
    acme.set("globex", "quarantined", 0.05)
    assert candidates(fed) == {"initech"}
    chosen = await choose(fed, "random:1")
    assert chosen.state == "completed", chosen.status_text
    assert chosen.provenance.route == "acme->initech"
    acme.set("initech", "quarantined", 0.05)
    nobody = await choose(fed, "random:1")
    assert nobody.provenance.route == "local"
    assert "no peer within the budget" in nobody.provenance.decision.reason
    assert acme.of("globex") == [acme.verdicts[0]]  # asked before its quarantine only
    acme.set("globex", "healthy", 0.9)  # released: a candidate again, with its score
    federation = fed.nodes["acme"].federation
    assert federation is not None
    assert [p.trust for p in federation.peers.candidates()] == [0.9]


async def test_v1_models_hides_quarantined_members_and_groups_that_cannot_run(
    fed: TrustFederation, acme: Standings
) -> None:
    node = fed.nodes["acme"]
    assert node.keys is not None and node.endpoints is not None
    token = node.keys.create("models-reader")[1]
    headers = {"authorization": f"Bearer {token}"}

    async def listed() -> set[str]:
        async with fed.http(node) as http:
            r = await http.get(node.endpoints.http_url + "/v1/models", headers=headers)  # type: ignore[union-attr]
        assert r.status_code == 200, r.text
        return {m["id"] for m in r.json()["data"]}

    async def found(model: str) -> int:
        async with fed.http(node) as http:
            url = f"{node.endpoints.http_url}/v1/models/{model}"  # type: ignore[union-attr]
            return (await http.get(url, headers=headers)).status_code

    before = await listed()
    assert {"globex/echo-globex", "initech/echo-initech", "group/strict", "group/pair"} <= before
    acme.set("globex", "quarantined", 0.0)
    after = await listed()
    # globex's entries and the group that refuses when short of it are gone; the group
    # that falls back to the local model, and everything else, stays.
    assert after == before - {"globex/echo-globex", "group/strict"}
    assert await found("globex/echo-globex") == 404 and await found("group/strict") == 404
    assert await found("initech/echo-initech") == 200 and await found("group/panel") == 200
    acme.set("globex", "healthy", 0.8)  # released: listed again
    assert await listed() == before


async def test_reputation_weighs_the_choice_of_peer(fed: TrustFederation, acme: Standings) -> None:
    acme.set("globex", "probation", 0.4)
    answer = await choose(fed, "random:1")
    assert answer.provenance.route == "acme->initech"
    assert answer.provenance.reputation == {"initech": 1.0}


async def test_a_task_naming_a_quarantined_peer_is_refused_and_never_sent(
    fed: TrustFederation, acme: Standings
) -> None:
    acme.set("globex", "quarantined", 0.1)
    answer = await fed.ask_via("acme", "hello globex", peer="globex")
    assert answer.state == "rejected"
    assert f"globex is {QUARANTINED}" in answer.status_text
    assert acme.verdicts == []  # nothing was sent, so nothing to assess
    acme.set("globex", "healthy", 0.7)
    again = await fed.ask_via("acme", "hello globex", peer="globex")
    assert again.state == "completed" and again.provenance.reputation == {"globex": 0.7}


async def test_a_router_whose_target_is_quarantined_answers_locally(
    fed: TrustFederation, acme: Standings
) -> None:
    acme.set("globex", "quarantined", 0.1)
    answer = await choose(fed, "always:globex")
    assert answer.state == "completed", answer.status_text
    p = answer.provenance
    assert p.route == "local" and set(p.members) == {"acme"}
    assert p.decision.reason == f"always: escalate to globex; globex is {QUARANTINED}"
    assert p.reputation is None and p.verdicts is None
    # initech's configured target (a free-text task): answered by initech's own model.
    initech = fed.standings["initech"]
    routed = await fed.ask_via("initech", "hello there")
    assert routed.provenance.route == "initech->globex"
    initech.set("globex", "quarantined", 0.1)
    local = await fed.ask_via("initech", "hello there")
    assert local.state == "completed" and local.text == "hello there"
    assert local.provenance.org == "initech" and local.provenance.route is None
    assert local.provenance.decision.reason.endswith(f"; globex is {QUARANTINED}")


async def test_quarantined_members_are_dropped_from_the_round(
    fed: TrustFederation, acme: Standings
) -> None:
    acme.set("initech", "quarantined", 0.0)
    answer = await choose(fed, "panel")
    assert answer.state == "completed", answer.status_text
    p = answer.provenance
    assert [c.member for c in p.contributions] == ["acme", "globex"]
    assert set(p.members) == {"acme", "globex"}
    assert p.reputation == {"globex": 1.0}
    assert acme.of("initech") == []


# -- groups short of members -----------------------------------------------------------


async def test_a_short_group_answers_locally_and_says_why(
    fed: TrustFederation, acme: Standings
) -> None:
    acme.set("initech", "quarantined", 0.0)
    answer = await choose(fed, "pair")
    assert answer.state == "completed", answer.status_text
    p = answer.provenance
    assert p.route == "local" and set(p.members) == {"acme"} and p.contributions is None
    assert p.decision.reason == (
        "group pair: 1 of 2 members allowed, fewer than min_members 2 "
        f"(initech {QUARANTINED}); answered by the local model"
    )
    assert acme.verdicts == []
    # Chosen by a router: its reason first; the local draft answers.
    routed = await choose(fed, "always:pair")
    assert routed.provenance.route == "local"
    assert routed.provenance.decision.reason.startswith("always: escalate to pair; group pair: ")
    assert routed.provenance.choice == answer.provenance.choice
    # The local model's scores are counted once, whichever way the group was reached.
    assert routed.provenance.members["acme"] == p.members["acme"]
    assert p.members["acme"].tokens > 0 and p.members["acme"].calls == 1


async def test_a_mixture_without_its_aggregator_is_short(
    fed: TrustFederation, acme: Standings
) -> None:
    acme.set("initech", "quarantined", 0.0)
    answer = await choose(fed, "moa")
    assert answer.provenance.route == "local"
    assert f"its aggregator initech is {QUARANTINED}" in answer.provenance.decision.reason


async def test_a_short_group_can_refuse_the_task(fed: TrustFederation, acme: Standings) -> None:
    full = await choose(fed, "strict")
    assert full.state == "completed" and len(full.provenance.contributions) == 3
    acme.set("globex", "quarantined", 0.0)
    refused = await choose(fed, "strict")
    assert refused.state == "rejected"
    assert (
        f"group strict: 2 of 3 members allowed, fewer than min_members 3 (globex {QUARANTINED})"
    ) in refused.status_text


# -- the vote --------------------------------------------------------------------------


async def test_a_distrusted_member_loses_the_tie_it_would_win(
    fed: TrustFederation, acme: Standings
) -> None:
    async def duel() -> Any:
        answer = await fed.ask_via("acme", DUEL_QUESTION, choices=DUEL_CHOICES, route="duel")
        assert answer.state == "completed", answer.status_text
        return answer.provenance

    tie = await duel()
    assert [c.choice for c in tie.contributions] == [1, 0]  # acme: water; initech: stone
    assert tie.probabilities[0] == tie.probabilities[1]
    assert tie.choice == 0  # a tie goes to the first option: initech's
    acme.set("initech", "probation", 0.1)
    weighed = await duel()
    assert weighed.choice == 1
    assert weighed.reputation == {"initech": 0.1}


# -- what the exchange reports ---------------------------------------------------------


async def test_a_timeout_is_assessed_as_timeout(fed: TrustFederation) -> None:
    node = fed.nodes["acme"]
    federation = node.federation
    assert federation is not None
    standings = Standings()
    client = PeerClient(
        signer=federation.signer,
        verifier=federation.verifier,
        roster=federation.roster,
        timeout_s=0.3,
        redactor=IdentityRedactor(),
        assessor=standings,
        credentials=node.config.client_credentials(),
    )
    try:
        with pytest.raises(PeerError, match="globex did not answer") as e:
            await client.ask("globex", " ".join(["word"] * 40))  # 2 s of echo
    finally:
        await client.close()
    assert e.value.failure == "timeout"
    [verdict] = standings.verdicts
    assert (verdict.peer, verdict.failure, verdict.refusal) == ("globex", "timeout", "")
    assert verdict.reply is None and not verdict.trusted


def add_ghost(r: Roster) -> Roster:
    """The roster with a member "ghost": globex's entry at a port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    globex = r.member("globex")
    assert globex is not None
    ghost = globex.model_copy(
        update={
            "org_id": "ghost",
            "endpoints": globex.endpoints.model_copy(update={"grpc": f"127.0.0.1:{port}"}),
        }
    )
    return r.model_copy(update={"members": [*r.members, ghost]})


def has_ghost(r: Roster) -> bool:
    return r.member("ghost") is not None


async def test_an_unreachable_peer_is_assessed_as_unreachable(
    fed: TrustFederation, acme: Standings
) -> None:
    async with fed.roster_change(add_ghost, has_ghost):
        answer = await fed.ask_via("acme", "anyone there?", peer="ghost")
    assert answer.state == "failed" and "ghost did not answer" in answer.status_text
    # Asked once more on a new connection (a reset connection is not a dead peer).
    verdicts = [(v.peer, v.failure, v.reply) for v in acme.verdicts]
    assert verdicts == [("ghost", "unreachable", None)] * 2


async def test_an_answer_claiming_an_unlisted_model_is_used_and_assessed(
    fed: TrustFederation, acme: Standings
) -> None:
    def relist(r: Roster) -> Roster:
        members = [
            m.model_copy(
                update={"capabilities": m.capabilities.model_copy(update={"models": ["big-model"]})}
            )
            if m.org_id == "globex"
            else m
            for m in r.members
        ]
        return r.model_copy(update={"members": members})

    def relisted(r: Roster) -> bool:
        globex = r.member("globex")
        return globex is not None and globex.capabilities.models == ["big-model"]

    async with fed.roster_change(relist, relisted):
        scored = await choose(fed, "always:globex")
        asked = await fed.ask_via("acme", "which model are you", peer="globex")
    # The answers are used (signed by globex); the claim is evidence about globex.
    assert scored.state == asked.state == "completed"
    assert scored.provenance.route == "acme->globex"
    for p in (scored.provenance, asked.provenance):
        assert p.verdicts["globex"].wire() == {"signature": "verified", "claim": "unlisted_model"}
    assert [(v.claim, v.trusted) for v in acme.of("globex")] == [("unlisted_model", True)] * 2
    # Listed again: no claim.
    honest = await choose(fed, "always:globex")
    assert honest.provenance.verdicts["globex"].wire() == {"signature": "verified"}
    assert acme.of("globex")[-1].claim == ""


# -- provenance ------------------------------------------------------------------------


async def test_provenance_carries_each_contributing_peers_reputation(
    fed: TrustFederation, acme: Standings
) -> None:
    acme.set("globex", "healthy", 0.8)
    acme.set("initech", "probation", 0.5)
    escalated = await choose(fed, "always:globex")
    assert escalated.provenance.reputation == {"globex": 0.8}
    assert escalated.provenance.verdicts["globex"].wire() == {"signature": "verified"}
    voted = await choose(fed, "panel")
    assert voted.provenance.reputation == {"globex": 0.8, "initech": 0.5}
    assert set(voted.provenance.verdicts) == {"globex", "initech"}
    local = await choose(fed, "local")
    assert local.provenance.reputation is None and local.provenance.verdicts is None
    assert len(acme.verdicts) == 3 and all(v.trusted and not v.claim for v in acme.verdicts)


# -- members failing mid-round ---------------------------------------------------------


async def test_a_group_answers_without_a_member_that_fails_if_the_quorum_allows(
    fed: TrustFederation, acme: Standings
) -> None:
    async with fed.roster_change(add_ghost, has_ghost):
        answer = await choose(fed, "haunted")  # quorum: a majority, 2 of 3
        strict = await choose(fed, "all-or-nothing")  # quorum 3
        mixed = await choose(fed, "haunted-moa")  # the aggregator, ghost, fails
    assert answer.state == "completed", answer.status_text
    p = answer.provenance
    assert [c.member for c in p.contributions] == ["acme", "globex"]
    assert set(p.members) == {"acme", "globex"} and p.route == "acme->group:haunted"
    assert list(p.failed) == ["ghost"]
    # Unreachable: a failed call, or (once calls failed) its open circuit breaker.
    assert p.failed["ghost"].startswith(
        ("unavailable: ghost did not answer", "unavailable: ghost is unreachable")
    )
    # What the exchange told the trust layer of ghost (when background traffic had not
    # already opened its circuit, so that no call was made): unreachable, never a wrong answer.
    assert all((v.peer, v.failure) == ("ghost", "unreachable") for v in acme.of("ghost"))
    assert strict.state == "failed"
    assert strict.status_text.startswith(
        "failed: 2 member(s) answered, fewer than the group's quorum of 3 (ghost unavailable: "
    )
    assert mixed.state == "completed", mixed.status_text
    assert [c.member for c in mixed.provenance.contributions] == ["acme", "globex"]
    assert list(mixed.provenance.failed) == ["ghost"]
