"""The end of a federated training run: the policy artifact (weights, feature spec,
version, training metrics) and the per-round metric history next to it. The coordinator
stamps the federation id and signs the artifact afterwards, outside Flower."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from consortium.learning import optimiser as T
from consortium.learning.policy import FeatureSpec, PolicyArtifact, write_policy
from consortium.learning.settings import RunSettings


def artifact_from(
    settings: RunSettings,
    params: T.Array,
    mean: T.Array,
    scale: T.Array,
    metrics: dict[str, float],
) -> PolicyArtifact:
    now = datetime.now(UTC)
    return PolicyArtifact(
        version=settings.version or now.strftime("fed-%Y%m%dT%H%M%SZ"),
        federation_id=settings.federation_id,
        created_at=now.isoformat(timespec="seconds").replace("+00:00", "Z"),
        label=settings.label,
        features=FeatureSpec(
            names=list(settings.feature_names),
            embedding_model=settings.embedding_model,
            normalisation=settings.normalisation,
            mean=[float(v) for v in mean],
            scale=[float(v) for v in scale],
        ),
        weights=[float(v) for v in params[:-1]],
        intercept=float(params[-1]),
        metrics=metrics,
    )


def finish_run(
    settings: RunSettings,
    params: T.Array,
    mean: T.Array,
    scale: T.Array,
    *,
    train_metrics: dict[int, dict[str, Any]],
    evaluate_metrics: dict[int, dict[str, Any]],
    examples: int,
    seconds: float,
    rounds: dict[int, dict[str, Any]] | None = None,
    privacy: dict[str, float] | None = None,
) -> PolicyArtifact:
    """Writes the (unsigned) artifact and, if asked, the history; returns the artifact."""
    last = evaluate_metrics[max(evaluate_metrics)] if evaluate_metrics else {}
    metrics: dict[str, float] = {
        "rounds": float(settings.rounds),
        "train_examples": float(examples),
        "seconds": round(seconds, 3),
        **{
            f"final_{k.replace('-', '_')}": float(v)
            for k, v in last.items()
            if k not in ("num-examples", "unit-weight")
        },
    }
    if settings.strategy == "fedprox":
        metrics["proximal_mu"] = settings.proximal_mu
    metrics.update(privacy or {})
    artifact = artifact_from(settings, params, mean, scale, metrics)
    if settings.out:
        write_policy(Path(settings.out), artifact)
    if settings.history:
        _write_json(
            Path(settings.history),
            {
                "strategy": settings.strategy,
                "rounds": settings.rounds,
                "seconds": round(seconds, 3),
                "train": {str(r): _plain(m) for r, m in sorted(train_metrics.items())},
                "evaluate": {str(r): _plain(m) for r, m in sorted(evaluate_metrics.items())},
                "rounds_detail": {str(r): v for r, v in sorted((rounds or {}).items())},
                "mean": [float(v) for v in mean],
                "scale": [float(v) for v in scale],
            },
        )
    return artifact


def _plain(m: dict[str, Any]) -> dict[str, float]:
    return {k: float(np.asarray(v).item()) if np.ndim(v) == 0 else v for k, v in m.items()}


def _write_json(path: Path, body: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(body, f, indent=2)
    Path(tmp).replace(path)
