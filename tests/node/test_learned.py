"""The learned router on a node (consortium/node/learned.py): its signed policy artifact,
refusals with their reason, hot reload, and decisions by threshold."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from jwcrypto import jwk

from consortium.errors import RequestRejected
from consortium.learning.policy import (
    FeatureSpec,
    PolicyArtifact,
    fit_logistic,
    sign_policy,
    write_policy,
)
from consortium.learning.settings import Label
from consortium.node.learned import LazyEncoder, PolicyHolder
from consortium.protocols.multiple_choice import Normalisation
from consortium.protocols.routing import RoutingInput
from consortium.protocols.routing_features import feature_names
from consortium.trust.keys import generate_key

NAMES = feature_names(4)  # the signal features and a 4-dimensional embedding
EMB_0 = NAMES.index("emb_0")
FED = "test-federation"  # the nodes' federation


def policy(
    version: str,
    label: Label = "local_correct",
    *,
    intercept: float = 0.0,
    normalisation: Normalisation = "none",
    federation_id: str = FED,
    names: tuple[str, ...] = NAMES,
) -> PolicyArtifact:
    """A policy whose P(label) rises with the first embedding dimension only."""
    weights = [0.0] * len(names)
    weights[EMB_0] = 5.0
    return PolicyArtifact(
        version=version,
        federation_id=federation_id,
        label=label,
        features=FeatureSpec(
            names=list(names),
            normalisation=normalisation,
            mean=[0.0] * len(names),
            scale=[1.0] * len(names),
        ),
        weights=weights,
        intercept=intercept,
    )


def task(emb_0: float) -> RoutingInput:
    """A task whose features a node computed: no draft, a given embedding."""
    return RoutingInput("Which gas do plants take in?", features={"embedding": [emb_0, 0, 0, 0]})


@pytest.fixture
def admin() -> jwk.JWK:
    return generate_key()


def holder(path: Path, admin: jwk.JWK, threshold: float = 0.5) -> PolicyHolder:
    return PolicyHolder(
        path, [admin], threshold=threshold, target="globex", embedding_dim=4, federation_id=FED
    )


def test_a_signed_policy_is_loaded_once(tmp_path: Path, admin: jwk.JWK) -> None:
    path = tmp_path / "policy.json"
    write_policy(path, sign_policy(policy("v1"), [admin]))
    h = holder(path, admin)
    assert h.version is None  # loaded on first use
    assert h.current().version == "v1" and h.version == "v1"
    assert h.current().version == "v1" and h.loaded == 1 and h.refused == 0


def test_without_a_valid_policy_the_router_refuses(tmp_path: Path, admin: jwk.JWK) -> None:
    path = tmp_path / "policy.json"
    h = holder(path, admin)
    with pytest.raises(RequestRejected, match="no valid routing policy"):
        h.router()
    write_policy(path, policy("v1"))  # unsigned
    with pytest.raises(RequestRejected, match="no valid routing policy"):
        h.current()
    assert h.refused == 1 and h.version is None


def unsigned(admin: jwk.JWK) -> PolicyArtifact:
    return policy("v2")


def foreign(admin: jwk.JWK) -> PolicyArtifact:
    """Signed by another federation's admin."""
    return sign_policy(policy("v2", federation_id="other"), [generate_key()])


def other_features(admin: jwk.JWK) -> PolicyArtifact:
    """The node's features in another order."""
    spec = {"names": list(reversed(NAMES)), "mean": [0.0] * len(NAMES), "scale": [1.0] * len(NAMES)}
    artifact = policy("v2").model_copy(update={"features": FeatureSpec.model_validate(spec)})
    return sign_policy(artifact, [admin])


def other_normalisation(admin: jwk.JWK) -> PolicyArtifact:
    return sign_policy(policy("v2", normalisation="tokens"), [admin])


def other_embedding_size(admin: jwk.JWK) -> PolicyArtifact:
    """The node's features over another encoder's embedding (8 dimensions, not 4)."""
    return sign_policy(policy("v2", names=feature_names(8)), [admin])


def other_federation(admin: jwk.JWK) -> PolicyArtifact:
    """Signed by this federation's admin key, for another federation."""
    return sign_policy(policy("v2", federation_id="other"), [admin])


def no_federation(admin: jwk.JWK) -> PolicyArtifact:
    return sign_policy(policy("v2", federation_id=""), [admin])


REFUSALS: list[tuple[Callable[[jwk.JWK], PolicyArtifact], str]] = [
    (unsigned, "not signed"),
    (foreign, "no valid admin signature"),
    (other_features, "uses features this node does not compute"),
    (other_normalisation, "normalised by tokens; this node drafts with none"),
    (
        other_embedding_size,
        "expects sentence embeddings of 8 dimensions; this node's encoder gives 4",
    ),
    (other_federation, "is for federation 'other'; this node belongs to 'test-federation'"),
    (no_federation, "is for no federation; this node belongs to 'test-federation'"),
]


@pytest.mark.parametrize(("make", "reason"), REFUSALS, ids=[m.__name__ for m, _ in REFUSALS])
def test_a_bad_replacement_is_refused_with_its_reason(
    tmp_path: Path,
    admin: jwk.JWK,
    make: Callable[[jwk.JWK], PolicyArtifact],
    reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "policy.json"
    write_policy(path, sign_policy(policy("v1"), [admin]))
    h = holder(path, admin)
    assert h.current().version == "v1"
    with caplog.at_level(logging.WARNING, logger="consortium.node.learned"):
        write_policy(path, make(admin))
        assert h.current().version == "v1"
    assert h.refused == 1 and h.loaded == 1
    assert "refused routing policy" in caplog.text and reason in caplog.text


@pytest.mark.parametrize("damage", ["tampered", "not json"])
def test_a_damaged_file_is_refused(tmp_path: Path, admin: jwk.JWK, damage: str) -> None:
    path = tmp_path / "policy.json"
    write_policy(path, sign_policy(policy("v1"), [admin]))
    h = holder(path, admin)
    assert h.current().version == "v1"
    if damage == "tampered":
        data = json.loads(path.read_text())
        data["weights"][EMB_0] = -5.0  # the same artifact, deciding the other way
        path.write_text(json.dumps(data))
    else:
        path.write_text("{")
    os.utime(path, ns=(1, 1))  # a new stamp even within one clock tick
    assert h.current().version == "v1" and h.refused == 1


def test_a_replaced_file_is_reloaded(tmp_path: Path, admin: jwk.JWK) -> None:
    path = tmp_path / "policy.json"
    write_policy(path, sign_policy(policy("v1"), [admin]))
    h = holder(path, admin)
    assert h.router().decide(task(-1.0)).route == "escalate"
    before = path.stat()
    # A new version of the same size replaces the file within one clock tick (the same
    # modification time): a new file all the same.
    write_policy(path, sign_policy(policy("v2", intercept=9.0), [admin]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    assert h.current().version == "v2" and h.loaded == 2
    # The new policy thinks the local answer adequate: the same task now stays local.
    assert h.router().decide(task(-1.0)).route == "local"


def test_a_policy_trained_on_the_nodes_features_is_loaded(tmp_path: Path, admin: jwk.JWK) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, len(NAMES)))
    y = (x[:, EMB_0] > 0).astype(int)
    path = tmp_path / "policy.json"
    fitted = fit_logistic(x, y, names=NAMES, version="fit").model_copy(
        update={"federation_id": FED}
    )
    write_policy(path, sign_policy(fitted, [admin]))
    h = holder(path, admin)
    assert h.router().decide(task(3.0)).route == "local"
    assert h.router().decide(task(-3.0)).route == "escalate"


def test_decisions_follow_the_threshold(tmp_path: Path, admin: jwk.JWK) -> None:
    path = tmp_path / "policy.json"
    write_policy(path, sign_policy(policy("v1"), [admin]))
    confident, unsure, hopeless = task(2.0), task(0.0), task(-2.0)
    h = holder(path, admin, threshold=0.5)
    router = h.router()
    local = router.decide(confident)
    assert local.route == "local" and local.target == "" and local.score < 0.01
    assert "policy v1" in local.reason
    escalated = router.decide(hopeless)
    assert (escalated.route, escalated.target) == ("escalate", "globex")
    assert escalated.score > 0.99
    # P(local inadequate) is 0.5 here: the threshold decides.
    assert router.decide(unsure).score == pytest.approx(0.5)
    assert holder(path, admin, threshold=0.4).router().decide(unsure).route == "escalate"
    assert holder(path, admin, threshold=0.6).router().decide(unsure).route == "local"


def test_a_policy_of_escalation_helps_escalates_when_it_predicts_so(
    tmp_path: Path, admin: jwk.JWK
) -> None:
    path = tmp_path / "policy.json"
    write_policy(path, sign_policy(policy("v1", label="escalation_helps"), [admin]))
    router = holder(path, admin).router()
    assert router.decide(task(2.0)).route == "escalate"
    assert router.decide(task(-2.0)).route == "local"


@pytest.mark.slow
async def test_the_encoder_embeds_questions() -> None:
    from consortium.llm.embeddings import DIMENSION

    encoder = LazyEncoder()
    a = await encoder.embed("Which gas do plants take in?")
    b = await encoder.embed("Which gas do plants take in?")
    c = await encoder.embed("How many legs does a spider have?")
    assert len(a) == DIMENSION and all(isinstance(v, float) for v in a)
    assert a == b and a != c
