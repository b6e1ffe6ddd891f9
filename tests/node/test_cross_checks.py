"""Cross-checks between real echo nodes on loopback, and a Byzantine member caught by them.

Every node serves the model "echo-twin", so every answer has same-model references.
initech's echo scores the options the other way round: it answers wrong (against acme's
own model and globex) on every question. acme runs the real reputation engine (the one
`build_assessor` makes from [trust]) and asks a second member on every escalation
(`cross_check_rate = 1`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from consortium.llm.backends import backend_factory
from consortium.node.app import Node
from consortium.node.config import parse_config
from consortium.trust.reputation_engine import ReputationAssessor
from tests.integration.test_federation import Federation
from tests.node.test_routing_trust import DUEL_CHOICES, DUEL_QUESTION, Contrarian

pytestmark = pytest.mark.asyncio(loop_scope="module")

GROUPS = {
    "panel": {"protocol": "vote", "members": ["self", "globex", "initech"]},
    "peers": {"protocol": "vote", "members": ["globex", "initech"]},
}


class TwinFederation(Federation):
    def config(self, org: str) -> Any:
        cfg = super().config(org)
        data = cfg.model_dump(mode="json", exclude={"base_dir"})
        if org == "acme":
            data["groups"] = GROUPS
            data["trust"] = {"cross_check_rate": 1.0}
        return parse_config(data, path=cfg.base_dir / "node.toml")

    def node(self, cfg: Any) -> Node:
        if cfg.node.org_id == "initech":
            return Node(cfg, lambda: Contrarian(cfg.model.name, context_size=2048))
        return Node(cfg, backend_factory(cfg.model, cfg.base_dir))

    def assessor(self) -> ReputationAssessor:
        federation = self.nodes["acme"].federation
        assert federation is not None and isinstance(federation.assessor, ReputationAssessor)
        return federation.assessor


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TwinFederation]:
    f = TwinFederation(tmp_path_factory.mktemp("twins"), name="echo-twin")
    try:
        await f.start()
        yield f
    finally:
        await f.stop()


@pytest.fixture
def fresh(fed: TwinFederation) -> TwinFederation:
    for peer in ("globex", "initech"):
        fed.assessor().reset(peer)
    return fed


async def ask(fed: Federation, route: str) -> Any:
    answer = await fed.ask_via("acme", DUEL_QUESTION, choices=DUEL_CHOICES, route=route)
    assert answer.state == "completed", answer.status_text
    return answer.provenance


def counts(fed: TwinFederation, peer: str) -> dict[tuple[str, bool], int]:
    return dict(fed.assessor().model_reputation(peer, "").counts)


async def test_a_vote_cross_checks_peers_against_the_own_model(fresh: TwinFederation) -> None:
    prov = await ask(fresh, "panel")
    verdicts = {org: v.wire() for org, v in prov.verdicts.items()}
    assert verdicts == {
        "globex": {"signature": "verified", "crossCheck": "agreed"},
        "initech": {"signature": "verified", "crossCheck": "disagreed"},
    }
    assert counts(fresh, "globex")[("cross_check", True)] == 1
    assert counts(fresh, "initech")[("cross_check", False)] == 1
    # Per model too: the evidence names the model the reply says answered.
    assert (
        fresh.assessor().model_reputation("initech", "echo-twin").counts[("cross_check", False)]
        == 1
    )


async def test_two_peers_disagreeing_share_the_blame(fresh: TwinFederation) -> None:
    prov = await ask(fresh, "peers")
    assert {o: v.cross_check for o, v in prov.verdicts.items()} == {
        "globex": "disagreed",
        "initech": "disagreed",
    }
    globex = fresh.assessor().model_reputation("globex", "")
    initech = fresh.assessor().model_reputation("initech", "")
    assert globex.beta == pytest.approx(initech.beta)  # trusted alike: blamed alike


async def test_a_sampled_escalation_asks_a_second_member(fresh: TwinFederation) -> None:
    prov = await ask(fresh, "always:globex")
    assert prov.route == "acme->globex"
    assert set(prov.members) == {"acme", "globex", "initech"}  # the second's tokens count
    assert {o: v.cross_check for o, v in prov.verdicts.items()} == {
        "globex": "agreed",
        "initech": "disagreed",
    }


async def test_the_byzantine_member_is_quarantined_and_dropped(fresh: TwinFederation) -> None:
    rounds = 0
    while fresh.assessor().standing("initech").state != "quarantined":
        prov = await ask(fresh, "panel")
        assert "initech" in prov.verdicts
        rounds += 1
        assert rounds <= 20
    assert fresh.assessor().standing("globex").state == "healthy"
    prov = await ask(fresh, "panel")
    assert set(prov.verdicts) == {"globex"}  # dropped from the very next round
    assert "initech" not in (prov.members or {})
    rep = fresh.assessor().model_reputation("initech", "")
    assert rep.reason.startswith("quarantine ") and "on=answers" in rep.reason
