"""The routing policy artifact: training, signing, verification and refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from consortium.learning.policy import (
    LogisticPolicy,
    PolicyError,
    fit_logistic,
    load_policy,
    sign_policy,
    write_policy,
)
from consortium.trust.keys import generate_key


def trained() -> tuple[object, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 3))
    y = (x[:, 0] - 0.5 * x[:, 1] + rng.normal(scale=0.3, size=300) > 0).astype(int)
    artifact = fit_logistic(x, y, names=["a", "b", "c"], version="t1", c=1.0)
    return artifact, x, y


def test_a_trained_policy_predicts_its_label() -> None:
    artifact, x, y = trained()
    policy = LogisticPolicy(artifact)  # type: ignore[arg-type]
    accuracy = ((policy.probability(x) > 0.5).astype(int) == y).mean()
    assert accuracy > 0.85
    assert policy.adequacy([3.0, -3.0, 0.0]) > 0.9  # label local_correct: adequacy = P
    with pytest.raises(ValueError, match="expects 3 features"):
        policy.adequacy([1.0])


def test_signed_artifact_round_trip_and_refusals(tmp_path: Path) -> None:
    artifact, _, _ = trained()
    admin, other = generate_key(), generate_key()
    path = tmp_path / "policy.json"
    write_policy(path, sign_policy(artifact, [admin]))  # type: ignore[arg-type]
    loaded = load_policy(path, [admin])
    assert loaded.version == "t1" and len(loaded.weights) == 3

    with pytest.raises(PolicyError, match="no valid admin signature"):
        load_policy(path, [other])
    data = json.loads(path.read_text())
    data["weights"][0] += 1.0  # tampered after signing
    path.write_text(json.dumps(data))
    with pytest.raises(PolicyError, match="no valid admin signature"):
        load_policy(path, [admin])
    write_policy(path, artifact)  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="not signed"):
        load_policy(path, [admin])
    assert load_policy(path, None).version == "t1"  # offline use of one's own run


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not JSON"),
        ('{"version": "x"}', "features"),
        (
            '{"version": "x", "features": {"names": ["a"], "mean": [0], "scale": [1]},'
            ' "weights": [1, 2], "intercept": 0}',
            "2 weights for 1 features",
        ),
        (
            '{"version": "x", "features": {"names": ["a"], "mean": [0], "scale": [0]},'
            ' "weights": [1], "intercept": 0}',
            "scale must be positive",
        ),
    ],
)
def test_malformed_artifacts_name_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(PolicyError, match=message):
        load_policy(path, None)
    with pytest.raises(PolicyError, match="not found"):
        load_policy(tmp_path / "missing.json", None)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consortium.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_sign_and_verify(tmp_path: Path) -> None:
    from consortium.federation.admin import create_federation

    paths = create_federation("Policy Fed", tmp_path / "fed")
    artifact, _, _ = trained()
    policy = tmp_path / "policy.json"
    write_policy(policy, artifact)  # type: ignore[arg-type]
    pub = str(paths.admin_public)
    r = cli("federation", "policy", "verify", str(policy), "--admin-pubkey", pub)
    assert r.returncode == 2 and "not signed" in r.stderr and "Traceback" not in r.stderr
    r = cli("federation", "policy", "sign", str(policy), "--roster", str(paths.roster))
    assert r.returncode == 0, r.stderr
    r = cli("federation", "policy", "verify", str(policy), "--admin-pubkey", pub)
    assert r.returncode == 0 and "policy-fed" in r.stdout
    r = cli("federation", "policy", "verify", str(policy), "--roster", str(paths.roster))
    assert r.returncode == 0 and "policy-fed" in r.stdout
    r = cli("federation", "policy", "verify", str(policy))
    assert r.returncode == 2 and "--admin-pubkey" in r.stderr
    data = json.loads(policy.read_text())
    data["intercept"] += 0.5
    policy.write_text(json.dumps(data))
    r = cli("federation", "policy", "verify", str(policy), "--admin-pubkey", pub)
    assert r.returncode == 2 and "no valid admin signature" in r.stderr
