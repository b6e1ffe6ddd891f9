"""Training the routing policy's logistic model from weights and local data: the pieces a
Flower ClientApp runs on one organization's records, the server-side aggregation of
feature statistics, and the same optimiser on pooled data (the centralised baseline the
benchmark compares with).

The model is P(label | x) = sigmoid(w · (x - mean) / scale + b). Each organization runs
`local_steps` of full-batch gradient descent on its mean log-loss plus an L2 penalty and,
for FedProx, the proximal term mu/2 · |w - w_global|². Standardisation statistics are
aggregated once before training from per-organization counts, sums and sums of squares
(aggregates, not records).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class TrainSettings:
    """One round of local training; made from a run's settings
    (consortium/learning/settings.py: `TrainOptions.optimiser`), where the defaults are."""

    local_steps: int
    learning_rate: float
    l2: float
    proximal_mu: float = 0.0


@dataclass(frozen=True)
class FeatureStats:
    """Count, sum and sum of squares of each feature over one organization's records."""

    count: int
    total: Array
    squares: Array

    @staticmethod
    def of(x: Array) -> FeatureStats:
        return FeatureStats(len(x), x.sum(axis=0), (x * x).sum(axis=0))


def merge_stats(parts: list[FeatureStats]) -> tuple[Array, Array]:
    """The pooled mean and standard deviation (1 where a feature is constant)."""
    n = sum(p.count for p in parts)
    if n == 0:
        raise ValueError("no records to compute feature statistics from")
    mean = sum((p.total for p in parts), np.zeros_like(parts[0].total)) / n
    second = sum((p.squares for p in parts), np.zeros_like(parts[0].squares)) / n
    scale = np.sqrt(np.maximum(second - mean * mean, 0.0))
    scale[scale < 1e-9] = 1.0
    return mean, scale


def standardise(x: Array, mean: Array, scale: Array) -> Array:
    return (x - mean) / scale


def _sigmoid(z: Array) -> Array:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))


def loss(params: Array, xs: Array, y: npt.NDArray[np.int64]) -> float:
    """Mean log-loss of params = (w..., b) on standardised xs."""
    p = _sigmoid(xs @ params[:-1] + params[-1])
    eps = 1e-12
    return float(-np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps)))


def train(
    params: Array,
    xs: Array,
    y: npt.NDArray[np.int64],
    settings: TrainSettings,
    global_params: Array | None = None,
) -> Array:
    """Gradient descent from params on standardised xs (the intercept is not penalised)."""
    w = np.array(params, dtype=np.float64)
    anchor = w.copy() if global_params is None else np.asarray(global_params, dtype=np.float64)
    yf = y.astype(np.float64)
    n = max(len(y), 1)
    for _ in range(settings.local_steps):
        p = _sigmoid(xs @ w[:-1] + w[-1])
        err = p - yf
        grad = np.empty_like(w)
        grad[:-1] = xs.T @ err / n + settings.l2 * w[:-1]
        grad[-1] = err.mean()
        if settings.proximal_mu:
            grad += settings.proximal_mu * (w - anchor)
        w -= settings.learning_rate * grad
    return w


def predict(params: Array, xs: Array) -> Array:
    return _sigmoid(xs @ params[:-1] + params[-1])


def auc(y: npt.ArrayLike, score: npt.ArrayLike) -> float:
    """ROC AUC (0.5 when only one class is present)."""
    from sklearn.metrics import roc_auc_score

    ya = np.asarray(y)
    if len(set(ya.tolist())) < 2:
        return 0.5
    return float(roc_auc_score(ya, np.asarray(score)))


def held_out(record_ids: tuple[str, ...], share: float = 0.2) -> npt.NDArray[np.bool_]:
    """A deterministic held-out mask by hash of record id: the same record is always on
    the same side, whichever round or process asks."""
    cut = int(share * 2**32)
    return np.asarray(
        [int.from_bytes(hashlib.sha256(r.encode()).digest()[:4], "big") < cut for r in record_ids],
        dtype=bool,
    )
