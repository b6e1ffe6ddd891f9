"""The Flower app's functions called directly (no Flower runtime), and a small simulation
run through the CLI ending in a signed artifact a node loads. Its run settings:
test_settings.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from consortium.errors import ConfigError
from consortium.learning import optimiser as T
from consortium.learning.coordinator import node_feature_names
from consortium.learning.flower_app import client_evaluate, client_stats, client_train
from consortium.learning.records import RoutingRecord, RoutingRecords
from consortium.learning.settings import RunSettings

NAMES = ("a", "b", "c")


def write_records(path: Path, n: int, seed: int, names: tuple[str, ...] = NAMES) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(loc=0.3 * seed, size=(n, len(names)))
    y = x[:, 0] - x[:, 1] + rng.normal(scale=0.5, size=n) > 0
    store = RoutingRecords(path)
    store.add_many(
        [
            RoutingRecord(
                f"s{seed}-{i}",
                "seed",
                tuple(float(v) for v in x[i]),
                "seed",
                "local",
                local_adequate=bool(y[i]),
                label_source="seed",
            )
            for i in range(n)
        ],
        names,
    )
    store.close()


def run_config(**extra: object) -> dict[str, object]:
    return {"feature-names": json.dumps(list(NAMES)), "local-steps": 30, **extra}


def context(db: Path, **extra: object) -> Context:
    return Context(
        run_id=1,
        node_id=7,
        node_config={"data-path": str(db)},
        state=RecordDict(),
        run_config=run_config(**extra),  # type: ignore[arg-type]
    )


def instruction(kind: str, content: RecordDict) -> Message:
    """A message as the ServerApp would send it (Flower stamps it with the identity of
    the running task, which the in-process simulation sets the same way)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    return Message(content=content, dst_node_id=7, message_type=kind)


def test_client_functions_train_on_local_records_only(tmp_path: Path) -> None:
    db = tmp_path / "org.sqlite3"
    write_records(db, 300, seed=1)
    ctx = context(db)
    settings = RunSettings.from_config(dict(ctx.run_config))

    stats = client_stats(instruction("query", RecordDict()), ctx, settings)
    total, squares = stats.content.array_records["stats"].to_numpy_ndarrays()
    n = int(stats.content.metric_records["metrics"]["num-examples"])
    held = int(stats.content.metric_records["metrics"]["num-held-out"])
    assert n + held == 300 and 0 < held < 100  # the held-out part stays out of training
    mean, scale = T.merge_stats([T.FeatureStats(n, total, squares)])

    config = ConfigRecord({"mean": mean.tolist(), "scale": scale.tolist()})
    start = np.zeros(len(NAMES) + 1)
    content = RecordDict({"arrays": ArrayRecord([start]), "config": config})
    trained = client_train(instruction("train", content), ctx, settings)
    params = trained.content.array_records["arrays"].to_numpy_ndarrays()[0]
    assert params.shape == start.shape and not np.allclose(params, start)
    assert trained.content.metric_records["metrics"]["num-examples"] == n
    # Only weights and metrics go back: no record, no feature row.
    assert set(trained.content.keys()) == {"arrays", "metrics"}

    content = RecordDict({"arrays": ArrayRecord([params]), "config": config})
    evaluated = client_evaluate(instruction("evaluate", content), ctx, settings)
    metrics = evaluated.content.metric_records["metrics"]
    assert metrics["num-examples"] == held and float(metrics["eval-auc"]) > 0.8  # type: ignore[arg-type]


def test_the_held_out_share_is_the_run_configs(tmp_path: Path) -> None:
    db = tmp_path / "org.sqlite3"
    write_records(db, 300, seed=1)
    ctx = context(db, **{"held-out": 0.5})
    settings = RunSettings.from_config(dict(ctx.run_config))
    stats = client_stats(instruction("query", RecordDict()), ctx, settings)
    held = int(stats.content.metric_records["metrics"]["num-held-out"])
    assert 100 < held < 200  # a half by hash of record id, not the default fifth


def test_a_client_without_records_names_the_path(tmp_path: Path) -> None:
    ctx = context(tmp_path / "missing.sqlite3")
    settings = RunSettings.from_config(dict(ctx.run_config))
    with pytest.raises(ConfigError, match="no routing records"):
        client_stats(instruction("query", RecordDict()), ctx, settings)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consortium.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0", **(env or {})},
        check=False,
    )


def test_a_simulated_run_writes_a_signed_policy_a_node_loads(tmp_path: Path) -> None:
    from consortium.federation.admin import create_federation
    from consortium.node.learned import PolicyHolder
    from consortium.trust.keys import load_public_key

    names = node_feature_names()
    data = tmp_path / "data"
    data.mkdir()
    for org in range(3):
        write_records(data / f"org-{org}.sqlite3", 120, seed=org, names=names)
    paths = create_federation("Test Federation", tmp_path / "fed")
    policy, history = tmp_path / "policy.json", tmp_path / "history.json"
    done = cli(
        "federation", "train", "--simulate", "--data", str(data), "--orgs", "3",
        "--rounds", "2", "--strategy", "fedprox", "--roster", str(paths.roster),
        "--learning-rate", "0.2", "--held-out", "0.25",
        "--out", str(policy), "--history", str(history), "--version", "sim-1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "signed for federation test-federation" in done.stdout
    artifact = json.loads(policy.read_text())
    assert artifact["version"] == "sim-1" and artifact["signatures"]
    assert artifact["features"]["names"] == list(names)
    assert artifact["metrics"]["rounds"] == 2 and artifact["metrics"]["proximal_mu"] == 0.1
    h = json.loads(history.read_text())
    assert sorted(h["evaluate"]) == ["1", "2"] and sorted(h["rounds_detail"]) == ["1", "2"]
    assert not (tmp_path / "policy.json.unsigned").exists()

    verify = cli("federation", "policy", "verify", str(policy),
                 "--admin-pubkey", str(paths.admin_public))  # fmt: skip
    assert verify.returncode == 0, verify.stderr
    holder = PolicyHolder(policy, [load_public_key(paths.admin_public)], 0.5, "")
    assert holder.current().version == "sim-1"

    # Bad requests name what is wrong, before any Flower process starts.
    missing = cli("federation", "train", "--simulate", "--data", str(data), "--orgs", "4",
                  "--out", str(policy))  # fmt: skip
    assert missing.returncode == 2 and "org-3.sqlite3" in missing.stderr
    neither = cli("federation", "train", "--out", str(policy))
    assert neither.returncode == 2 and "--superlink" in neither.stderr
    bad = cli("federation", "train", "--simulate", "--strategy", "sgd", "--out", str(policy))
    assert bad.returncode == 2 and "--strategy: fedavg or fedprox, got 'sgd'" in bad.stderr


def test_differential_privacy_reports_the_epsilon_of_its_rounds(tmp_path: Path) -> None:
    from flwr.supercore.privacy_accounting import (
        GaussianPrivacyEvent,
        NeighboringRelation,
        PrivacyConfig,
        SamplingMethod,
    )
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    names = node_feature_names()
    data = tmp_path / "data"
    data.mkdir()
    for org in range(3):
        write_records(data / f"org-{org}.sqlite3", 60, seed=org, names=names)
    policy = tmp_path / "policy.json"
    done = cli(
        "federation", "train", "--simulate", "--data", str(data), "--orgs", "3",
        "--rounds", "2", "--out", str(policy), "--dp-noise", "1.5", "--dp-clip", "0.5",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads(policy.read_text())["metrics"]
    expected = RdpAccountant(
        PrivacyConfig(
            1e-5, 3, NeighboringRelation.ADD_OR_REMOVE_ONE, SamplingMethod.NO_AMPLIFICATION
        )
    )
    expected.compose(GaussianPrivacyEvent(1.5, 3, 3), count=2)
    assert metrics["dp_epsilon"] == pytest.approx(expected.get_epsilon(1e-5), rel=1e-3)
    assert metrics["dp_noise_multiplier"] == 1.5 and metrics["dp_clipping_norm"] == 0.5
    assert "epsilon" in done.stdout and "UNSIGNED" in done.stdout  # no roster: not signed


def test_the_servers_artifact_and_history(tmp_path: Path) -> None:
    from consortium.learning.policy import LogisticPolicy, load_policy
    from consortium.learning.run import finish_run

    settings = RunSettings.from_config(
        run_config(out=str(tmp_path / "p.json"), history=str(tmp_path / "h.json"), version="v1")
    )
    params = np.array([1.0, -1.0, 0.5, 0.1])
    mean, scale = np.array([0.0, 1.0, 2.0]), np.array([1.0, 2.0, 4.0])
    artifact = finish_run(
        settings,
        params,
        mean,
        scale,
        train_metrics={1: {"train-loss": 0.6}},
        evaluate_metrics={1: {"eval-auc": 0.7, "unit-weight": 1.0, "num-examples": 9}},
        examples=120,
        seconds=1.5,
        rounds={1: {"seconds": 1.0, "params": params.tolist()}},
    )
    assert (
        artifact.metrics
        == {
            "rounds": 5.0,
            "train_examples": 120.0,
            "seconds": 1.5,
            "final_eval_auc": 0.7,
        }
        or artifact.metrics["final_eval_auc"] == 0.7
    )
    loaded = load_policy(tmp_path / "p.json", None)  # unsigned until the coordinator signs
    assert loaded.version == "v1" and loaded.weights == [1.0, -1.0, 0.5]
    policy = LogisticPolicy(loaded)
    x = np.array([[1.0, 3.0, 6.0]])
    z = ((x - mean) / scale) @ params[:-1] + params[-1]
    assert policy.probability(x)[0] == pytest.approx(1 / (1 + np.exp(-z[0])))
    h = json.loads((tmp_path / "h.json").read_text())
    assert h["rounds_detail"]["1"]["params"] == params.tolist() and h["mean"] == mean.tolist()
