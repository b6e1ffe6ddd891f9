"""Routing and collaboration across three organizations on loopback, with real models:
acme and globex run SmolLM2, initech runs Gemma-3. Escalation to a peer, a vote and a
debate across the three, budgets, provenance, and bad requests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from consortium.federation.roster import load_roster
from consortium.node.config import parse_config
from tests.integration.test_federation import Federation

MODELS = {"acme": "smollm2-135m", "globex": "smollm2-135m", "initech": "gemma3-270m"}
QUESTION = "Which part of a plant takes in water from the soil?"
CHOICES = ["the roots", "the leaves", "the flowers", "the seeds"]
GROUPS = {
    "panel": {"protocol": "vote", "members": ["self", "globex", "initech"]},
    "ring": {
        "protocol": "debate",
        "members": ["self", "globex", "initech"],
        "rounds": 2,
        "topology": "ring",
    },
    "moa": {
        "protocol": "mixture",
        "members": ["self", "globex", "initech"],
        "aggregator": "initech",
    },
    "tight": {"protocol": "vote", "members": ["self", "globex", "initech"], "max_tokens": 40},
}


def signed_policy(path: Path, admin_key: Path, federation_id: str) -> Path:
    """A policy over the node's features (trained on random data: these tests are about
    the mechanics of loading and applying it), for the federation, signed by its admin."""
    from consortium.federation.admin import load_admin_key
    from consortium.learning.policy import fit_logistic, sign_policy, write_policy
    from consortium.llm.embeddings import DIMENSION
    from consortium.protocols.routing_features import feature_names

    names = feature_names(DIMENSION)
    x = np.random.default_rng(0).normal(size=(64, len(names)))
    artifact = fit_logistic(x, (x[:, 2] > 0).astype(int), names=names, version="test-1")
    artifact = artifact.model_copy(update={"federation_id": federation_id})
    write_policy(path, sign_policy(artifact, [load_admin_key(admin_key)]))
    return path


class ModelFederation(Federation):
    def config(self, org: str) -> Any:
        cfg = super().config(org)
        data = cfg.model_dump(mode="json", exclude={"base_dir"})
        data["model"] = {"backend": "llama_cpp", "name": MODELS[org], "context_size": 1024}
        if org == "acme":
            data["groups"] = GROUPS
            fed_id = load_roster(self.roster).federation_id
            policy = signed_policy(self.tmp / "policy.json", self.admin_key, fed_id)
            data["routing"] = {"policy": str(policy), "threshold": 0.5}
        return parse_config(data, path=cfg.base_dir / "node.toml")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    f = ModelFederation(tmp_path_factory.mktemp("collab"))
    try:
        await f.start()
        yield f
    finally:
        await f.stop()


async def choose(fed: Federation, route: str, **extra: Any) -> Any:
    return await fed.ask_via("acme", QUESTION, choices=CHOICES, route=route, **extra)


@pytest.mark.asyncio(loop_scope="module")
async def test_escalation_to_a_stronger_peer_with_provenance(fed: Federation) -> None:
    answer = await choose(fed, "always:initech")
    assert answer.state == "completed", answer.status_text
    p = answer.provenance
    assert p.route == "acme->initech" and p.router == "always"
    assert set(p.members) == {"acme", "initech"}  # acme's draft, initech's scores
    assert p.members["initech"].tokens > 0 and p.tokens > 0
    assert answer.text.split(". ", 1)[1] in CHOICES
    assert len(p.probabilities) == 4 and 0 < p.confidence <= 1
    assert p.latency_ms > 0 and "always" in p.decision.reason


@pytest.mark.asyncio(loop_scope="module")
async def test_local_and_self_routing_decide_with_a_reason(fed: Federation) -> None:
    local = await choose(fed, "local")
    assert local.provenance.route == "local"
    assert set(local.provenance.members) == {"acme"}
    decided = await choose(fed, "self:margin")
    assert decided.state == "completed"
    assert "margin" in decided.provenance.decision.reason


@pytest.mark.asyncio(loop_scope="module")
async def test_every_router_decides_on_the_node(fed: Federation) -> None:
    always = await choose(fed, "random:1")
    # Both peers list the same capabilities here: the first of the equals is chosen.
    assert always.provenance.route in ("acme->globex", "acme->initech")
    never = await choose(fed, "random:0")
    assert never.provenance.route == "local"
    heuristic = await choose(fed, "heuristic")
    assert "heuristic" in heuristic.provenance.decision.reason
    cascade = await choose(fed, "cascade")
    assert cascade.provenance.router == "cascade"
    learned = await choose(fed, "learned")
    assert learned.state == "completed", learned.status_text
    assert "policy test-1" in learned.provenance.decision.reason
    no_peers = await choose(fed, "always:initech", max_peers=0)
    assert no_peers.provenance.route == "local"
    assert "allows no peer" in no_peers.provenance.decision.reason


@pytest.mark.asyncio(loop_scope="module")
async def test_a_vote_across_three_organizations(fed: Federation) -> None:
    answer = await choose(fed, "panel")
    assert answer.state == "completed", answer.status_text
    p = answer.provenance
    assert p.protocol == "vote" and p.route == "acme->group:panel"
    assert set(p.members) == {"acme", "globex", "initech"}
    assert [c.member for c in p.contributions] == ["acme", "globex", "initech"]
    # Two SmolLM2 members score alike: acme locally, globex over a signed request.
    acme, globex = p.contributions[0], p.contributions[1]
    assert acme.choice == globex.choice and acme.tokens == globex.tokens


@pytest.mark.asyncio(loop_scope="module")
async def test_a_ring_debate_and_a_mixture(fed: Federation) -> None:
    debate = await choose(fed, "ring")
    assert debate.state == "completed", debate.status_text
    rounds = [c.round for c in debate.provenance.contributions]
    assert rounds == [0, 0, 0, 1, 1, 1]
    moa = await choose(fed, "moa")
    assert moa.state == "completed"
    assert [c.member for c in moa.provenance.contributions][-1] == "initech"


@pytest.mark.asyncio(loop_scope="module")
async def test_the_token_budget_stops_a_protocol(fed: Federation) -> None:
    answer = await choose(fed, "tight")
    assert answer.state == "completed"
    assert answer.provenance.stopped_by_budget is True
    assert len(answer.provenance.contributions) < 3


@pytest.mark.asyncio(loop_scope="module")
async def test_max_peers_limits_the_group_and_is_reported(fed: Federation) -> None:
    answer = await choose(fed, "panel", max_peers=1)
    assert answer.state == "completed", answer.status_text
    assert set(answer.provenance.members) == {"acme", "globex"}  # self + one peer
    assert answer.provenance.budget.wire() == {"maxPeers": 1}


@pytest.mark.asyncio(loop_scope="module")
async def test_bad_routing_requests_are_rejected_with_the_reason(fed: Federation) -> None:
    unknown = await choose(fed, "magic")
    assert unknown.state == "rejected" and "unknown router" in unknown.status_text
    one_choice = await fed.ask_via("acme", QUESTION, choices=["only"])
    assert one_choice.state == "rejected" and "choices" in one_choice.status_text
    group_free_text = await fed.ask_via("acme", QUESTION, route="panel")
    assert group_free_text.state == "rejected" and "multiple-choice" in group_free_text.status_text
    nobody = await choose(fed, "always:nobody")
    assert nobody.state == "failed" and "nobody" in nobody.status_text
    # The node still serves.
    assert (await choose(fed, "local")).state == "completed"


@pytest.mark.asyncio(loop_scope="module")
async def test_a_scoring_request_over_a_stream_is_one_message(fed: Federation) -> None:
    scored = await fed.ask_via("acme", QUESTION, mode="score", choices=CHOICES)
    assert scored.state == "completed" and scored.task_id == ""  # a Message, no task
    assert scored.text in ("A", "B", "C", "D")
    refused = await fed.ask_via("acme", QUESTION, mode="score")
    assert refused.text.startswith("rejected: a scoring request needs")


@pytest.mark.asyncio(loop_scope="module")
async def test_routed_tasks_leave_records_that_feedback_labels(fed: Federation) -> None:
    from consortium.llm.embeddings import DIMENSION
    from consortium.protocols.routing_features import feature_names

    records = fed.nodes["acme"].records
    assert records is not None
    escalated = await choose(fed, "always:initech")
    kept = await choose(fed, "random:0")
    unrouted = await choose(fed, "local")
    r = records.get(escalated.task_id)
    # Escalated: labelled at once by whether acme's draft agreed with initech's answer.
    assert (r.route, r.router, r.label_source) == ("escalated", "always", "agreement")
    assert r.local_adequate == (r.local_choice == escalated.provenance.choice)
    assert len(r.features) == len(feature_names(DIMENSION)) and r.owner == "org:acme"
    k = records.get(kept.task_id)
    assert (k.route, k.local_adequate, k.label_source) == ("local", None, None)
    with pytest.raises(Exception, match="no routing record"):
        records.get(unrouted.task_id)  # the local router decides nothing

    # Feedback from the task's owner labels it; a Message answers, no task.
    fb = await fed.ask_via("acme", "outcome", feedback={"task_id": kept.task_id, "correct": 0})
    assert fb.task_id == "" and fb.text == "feedback recorded", fb.text
    k = records.get(kept.task_id)
    assert (k.local_adequate, k.label_source) == (k.local_choice == 0, "verified")
    # Nobody else can label acme's tasks, and a malformed feedback names what is wrong.
    other = await fed.ask_via(
        "acme", "outcome", sender="globex", feedback={"task_id": kept.task_id, "adequate": True}
    )
    assert other.text.startswith("rejected: no routed task"), other.text
    assert records.get(kept.task_id).label_source == "verified"
    bad = await fed.ask_via("acme", "outcome", feedback={"task_id": kept.task_id})
    assert bad.state == "rejected" and "exactly one of adequate and correct" in bad.status_text
    health = await fed.healthz("acme")
    assert health["routing_records"]["labelled"]["local_correct"] >= 2


def test_groups_are_checked_at_start(tmp_path: Path) -> None:
    from consortium.errors import ConfigError
    from consortium.node.orchestrator import check_groups

    cfg = parse_config(
        {
            "node": {"org_id": "solo"},
            "groups": {"g": {"members": ["self", "globex"], "aggregator": "x"}},
        },
        path=tmp_path / "node.toml",
    )
    with pytest.raises(ConfigError, match="needs \\[federation\\]"):
        check_groups(cfg.groups, "solo", federated=False)
    with pytest.raises(ConfigError, match="aggregator x is not a member"):
        check_groups(cfg.groups, "solo", federated=True)
