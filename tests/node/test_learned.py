"""The learned router on a node (consortium/node/learned.py): its signed policy artifact,
refusals, hot reload, and decisions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from consortium.learning.policy import fit_logistic, sign_policy, write_policy
from consortium.trust.keys import generate_key


def test_a_node_keeps_its_policy_when_a_bad_one_replaces_it(tmp_path: Path) -> None:
    import os

    from consortium.node.learned import PolicyHolder
    from consortium.protocols.routing_features import feature_names

    rng = np.random.default_rng(0)
    names = feature_names(4)
    x = rng.normal(size=(100, len(names)))
    y = (x[:, 2] > 0).astype(int)
    admin = generate_key()
    good = sign_policy(fit_logistic(x, y, names=names, version="v1"), [admin])
    path = tmp_path / "policy.json"
    write_policy(path, good)
    holder = PolicyHolder(path, [admin], threshold=0.5, target="")
    assert holder.current().version == "v1" and holder.loaded == 1
    # An unsigned replacement is refused; the node keeps v1.
    write_policy(path, fit_logistic(x, y, names=names, version="v2"))
    os.utime(path, ns=(1, 1))  # a new stamp even within one clock tick
    assert holder.current().version == "v1" and holder.refused == 1
    # A policy over other features is refused too.
    other = sign_policy(fit_logistic(x[:, :3], y, names=["a", "b", "c"], version="v3"), [admin])
    write_policy(path, other)
    assert holder.current().version == "v1" and holder.refused == 2
    # A valid new version is picked up without a restart.
    write_policy(path, sign_policy(fit_logistic(x, y, names=names, version="v4"), [admin]))
    assert holder.current().version == "v4"
