"""`consortium bench federated`: the federated routing policy against the alternatives.

The routing records of the dev split and half of the test split (by hash of item id)
are cut by topic across `orgs` organizations (non-IID); the other half of the test split
is held out. On it, with classifier AUC (of the label) and the routing metrics (APGR,
CPT(50 %)) of each policy's escalation scores:
- federated: Flower (FedAvg and FedProx) across the organizations' record databases;
- centralised: the same optimiser with the same number of steps on the pooled records;
- local-only: each organization's own records, same optimiser and steps;
- random.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from consortium.evaluation.metrics import router_metrics
from consortium.evaluation.routing_eval import SplitData, correct
from consortium.evaluation.seeding import partition, records
from consortium.learning import optimiser as T
from consortium.learning.records import RoutingRecord, RoutingRecords
from consortium.learning.settings import Label, RunSettings, Strategy, TrainOptions
from consortium.protocols.multiple_choice import Normalisation

NORMS: tuple[Normalisation, Normalisation] = ("none", "none")


class Engines(Protocol):
    """Runs one Flower run to completion on either engine."""

    def simulate(self, settings: RunSettings, orgs: int, data_dir: Path) -> object: ...

    def deploy(self, settings: RunSettings, data_paths: Sequence[Path], work_dir: Path) -> None: ...


@dataclass(frozen=True)
class FederatedData:
    """The organizations' record databases and the held-out evaluation set."""

    names: tuple[str, ...]
    org_dbs: tuple[Path, ...]
    org_sizes: tuple[int, ...]
    held_x: T.Array
    held_local_right: Any
    held_strong_right: Any
    held_labels: dict[str, Any]


def _split(data: SplitData, keep: Any) -> SplitData:
    return SplitData(
        data.name,
        [it for it, k in zip(data.items, keep, strict=True) if k],
        data.local,
        data.strong,
        data.embeddings,
    )


def prepare(dev: SplitData, test: SplitData, orgs: int, directory: Path) -> FederatedData:
    """Writes org-0..org-{orgs-1}.sqlite3 under `directory` and returns the held-out set."""
    held = T.held_out(tuple(it.id for it in test.items), 0.5)
    pool_parts = [dev, _split(test, ~held)]
    directory.mkdir(parents=True, exist_ok=True)
    per_org: list[list[RoutingRecord]] = [[] for _ in range(orgs)]
    names: tuple[str, ...] = ()
    for part in pool_parts:
        owners = partition(part, orgs, "topic")
        rows, names = records(part, NORMS, owner="bench", topics=owners)
        for row, org in zip(rows, owners, strict=True):
            per_org[int(org)].append(row)
    dbs = []
    for i, rows in enumerate(per_org):
        path = directory / f"org-{i}.sqlite3"
        path.unlink(missing_ok=True)
        store = RoutingRecords(path)
        store.add_many(rows, names)
        store.close()
        dbs.append(path)
    held_data = _split(test, held)
    held_rows, _ = records(held_data, NORMS, owner="bench")
    local_right = correct(held_data.local, held_data.items, NORMS[0])
    strong_right = correct(held_data.strong, held_data.items, NORMS[1])
    return FederatedData(
        names=names,
        org_dbs=tuple(dbs),
        org_sizes=tuple(len(r) for r in per_org),
        held_x=np.asarray([r.features for r in held_rows], dtype=np.float64),
        held_local_right=local_right,
        held_strong_right=strong_right,
        held_labels={
            "local_correct": local_right.astype(np.int64),
            "escalation_helps": (strong_right & ~local_right).astype(np.int64),
        },
    )


def escalation_scores(p: Any, label: Label) -> Any:
    """A policy predicts its label; routers escalate on P(local inadequate) or P(helps)."""
    return 1.0 - p if label == "local_correct" else p


def evaluate_params(
    params: T.Array, mean: T.Array, scale: T.Array, data: FederatedData, label: Label
) -> dict[str, float]:
    p = T.predict(params, T.standardise(data.held_x, mean, scale))
    return scores_metrics(escalation_scores(p, label), p, data, label)


def scores_metrics(escalate: Any, p: Any, data: FederatedData, label: Label) -> dict[str, float]:
    m = router_metrics(list(escalate), list(data.held_local_right), list(data.held_strong_right))
    return {
        "classifier_auc": round(T.auc(data.held_labels[label], p), 4),
        "apgr": round(float(m.apgr), 4),
        "cpt50": round(float(m.cpt50), 4),
    }


def load_org(path: Path, names: tuple[str, ...], options: TrainOptions) -> tuple[T.Array, Any]:
    """An organization's training part: what its ClientApp trains on (the rest, the
    options' held-out share, is its local evaluation), so every alternative learns from
    the same records."""
    store = RoutingRecords(path)
    try:
        d = store.dataset(names, options.label)
    finally:
        store.close()
    keep = ~T.held_out(d.record_ids, options.held_out)
    return d.x[keep], d.y[keep]


def centralised(
    data: FederatedData, options: TrainOptions, steps: int
) -> tuple[T.Array, T.Array, T.Array]:
    parts = [load_org(db, data.names, options) for db in data.org_dbs]
    x = np.vstack([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    mean, scale = T.merge_stats([T.FeatureStats.of(x)])
    s = replace(options.optimiser(), local_steps=steps)
    params = T.train(np.zeros(x.shape[1] + 1), T.standardise(x, mean, scale), y, s)
    return params, mean, scale


def local_only(
    data: FederatedData, options: TrainOptions, steps: int
) -> list[tuple[T.Array, T.Array, T.Array]]:
    out = []
    for db in data.org_dbs:
        x, y = load_org(db, data.names, options)
        mean, scale = T.merge_stats([T.FeatureStats.of(x)])
        s = replace(options.optimiser(), local_steps=steps)
        out.append(
            (T.train(np.zeros(x.shape[1] + 1), T.standardise(x, mean, scale), y, s), mean, scale)
        )
    return out


def random_metrics(data: FederatedData, label: Label, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    s = rng.random(len(data.held_x))
    return scores_metrics(s, s, data, label)


def _history_curve(
    history: dict[str, Any], data: FederatedData, label: Label
) -> list[dict[str, float]]:
    mean = np.asarray(history["mean"])
    scale = np.asarray(history["scale"])
    out = []
    for r, detail in sorted(history["rounds_detail"].items(), key=lambda kv: int(kv[0])):
        m = evaluate_params(np.asarray(detail["params"]), mean, scale, data, label)
        out.append({"round": int(r), "seconds": float(detail["seconds"]), **m})
    return out


def evaluate_federated(
    dev: SplitData,
    test: SplitData,
    *,
    orgs: int,
    options: TrainOptions,
    work_dir: Path,
    engines: Engines,
    deployment: bool = False,
) -> dict[str, Any]:
    """Every alternative on the held-out records; per-round curves of the federated runs
    (FedAvg and FedProx: `options.strategy` is not used). `engines` runs a run on Flower's
    simulation or deployment engine (processes: consortium/launch/flower.py, handed in by
    the CLI)."""
    data = prepare(dev, test, orgs, work_dir / "orgs")
    label = options.label
    result: dict[str, Any] = {}
    curves: dict[str, list[dict[str, float]]] = {}
    runs: list[tuple[Strategy, str]] = [("fedavg", "simulation"), ("fedprox", "simulation")]
    if deployment:
        runs.append(("fedavg", "deployment"))
    for strategy, engine in runs:
        name = f"federated_{strategy}" + ("_deployment" if engine == "deployment" else "")
        curve = _federated_run(data, options, strategy, engine, name, work_dir, engines)
        curves[name] = curve
        result[name] = {
            **{k: v for k, v in curve[-1].items() if k not in ("round", "seconds")},
            "seconds_per_round": round(float(np.mean([c["seconds"] for c in curve])), 2),
            "engine": engine,
        }
    steps = options.rounds * options.local_steps
    params, mean, scale = centralised(data, options, steps)
    result["centralised"] = evaluate_params(params, mean, scale, data, label)
    for i, (p, m, s) in enumerate(local_only(data, options, steps)):
        result[f"local_org{i}"] = evaluate_params(p, m, s, data, label)
    result["random"] = random_metrics(data, label)
    central_auc = result["centralised"]["classifier_auc"]
    best_local = max(result[f"local_org{i}"]["classifier_auc"] for i in range(orgs))
    fed_auc = result["federated_fedavg"]["classifier_auc"]
    result["_setup"] = {
        "orgs": orgs,
        "org_records": list(data.org_sizes),
        "partition": "topic (k-means on MiniLM question embeddings)",
        "held_out_items": len(data.held_x),
        "training": f"{dev.name} + half of {test.name}",
        "label": label,
        "rounds": options.rounds,
        "local_steps": options.local_steps,
        "l2": options.l2,
        "proximal_mu": options.proximal_mu,
        "fedavg_over_centralised_auc": round(fed_auc / central_auc, 4),
        "fedavg_minus_best_local_auc": round(fed_auc - best_local, 4),
    }
    result["_curves"] = curves
    return result


def _federated_run(
    data: FederatedData,
    options: TrainOptions,
    strategy: Strategy,
    engine: str,
    name: str,
    work_dir: Path,
    engines: Engines,
) -> list[dict[str, float]]:
    """One Flower run of `strategy` on `engine`; its per-round curve on the held-out set."""
    history = work_dir / f"{name}.history.json"
    settings = RunSettings.of(
        options,
        strategy=strategy,
        feature_names=data.names,
        min_nodes=len(data.org_dbs),
        normalisation=NORMS[0],
        out=str(work_dir / f"{name}.json"),
        history=str(history),
        version=name,
    )
    if engine == "simulation":
        engines.simulate(settings, len(data.org_dbs), work_dir / "orgs")
    else:
        engines.deploy(settings, data.org_dbs, work_dir / "deployment")
    return _history_curve(json.loads(history.read_text()), data, options.label)
