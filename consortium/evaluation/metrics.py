"""Cost-quality metrics for routers, as RouteLLM defines them (routellm/evals/evaluate.py).

A router ranks items by how much it wants to escalate them; escalating the top share x
of items gives one point (x, accuracy) of the cost-quality curve, x from 0 (all local,
the weak model's accuracy) to 1 (all escalated, the strong model's accuracy).

- AUC = trapz(accuracy, x) over x in [0, 1];
- APGR = (AUC - weak) / (strong - weak): the average share of the performance gap
  recovered; a random router scores 0.5 in expectation (its curve is the straight line);
- CPT(q) = the smallest share x at which accuracy reaches weak + q (strong - weak),
  interpolated linearly on the curve (RouteLLM interpolates accuracy -> share with
  np.interp, which presumes a rising curve; the first crossing is the same for one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Curve:
    share: Floats  # escalated share, rising from 0 to 1
    accuracy: Floats


def curve(
    scores: Sequence[float], weak_correct: Sequence[bool], strong_correct: Sequence[bool]
) -> Curve:
    """The exact curve of a score router: escalate items in order of falling score.
    Items with equal scores are escalated together (one segment between groups)."""
    s = np.asarray(scores, dtype=np.float64)
    weak = np.asarray(weak_correct, dtype=np.float64)
    strong = np.asarray(strong_correct, dtype=np.float64)
    n = len(s)
    if n == 0 or not (len(weak) == len(strong) == n):
        raise ValueError("scores and correctness need the same, non-zero length")
    order = np.argsort(-s, kind="stable")
    gain = (strong - weak)[order]
    cumulative = np.concatenate([[0.0], np.cumsum(gain)])
    ranked = s[order]
    # Points only where the score changes (and at both ends).
    cut = np.concatenate([[0], np.nonzero(np.diff(ranked))[0] + 1, [n]])
    cut = np.unique(cut)
    return Curve(share=cut / n, accuracy=(weak.sum() + cumulative[cut]) / n)


def auc(c: Curve) -> float:
    return float(np.trapezoid(c.accuracy, c.share))


def apgr(c: Curve, weak: float, strong: float) -> float:
    if strong == weak:
        raise ValueError("APGR is undefined when both models are equally accurate")
    return (auc(c) - weak) / (strong - weak)


def cpt(c: Curve, weak: float, strong: float, quality: float) -> float:
    """Share escalated to recover `quality` of the gap; 1.0 if the curve never does."""
    target = weak + quality * (strong - weak)
    acc, share = c.accuracy, c.share
    if acc[0] >= target:
        return float(share[0])
    for i in range(1, len(acc)):
        if acc[i] >= target:
            a0, a1 = acc[i - 1], acc[i]
            frac = (target - a0) / (a1 - a0) if a1 != a0 else 0.0
            return float(share[i - 1] + frac * (share[i] - share[i - 1]))
    return 1.0


def oracle_curve(weak_correct: Sequence[bool], strong_correct: Sequence[bool]) -> Curve:
    """The best possible router: escalates the items only the strong model gets right
    first, the ones both or neither get right next, and never wins by escalating the
    items only the weak model gets right until it must."""
    weak = np.asarray(weak_correct, dtype=bool)
    strong = np.asarray(strong_correct, dtype=bool)
    scores = np.where(strong & ~weak, 2.0, np.where(weak & ~strong, 0.0, 1.0))
    return curve(list(scores), list(weak), list(strong))


def random_curve(weak: float, strong: float) -> Curve:
    """The random router's expected curve: the straight line between the two models."""
    return Curve(share=np.array([0.0, 1.0]), accuracy=np.array([weak, strong]))


@dataclass(frozen=True)
class RouterMetrics:
    auc: float
    apgr: float
    cpt50: float
    cpt80: float


def router_metrics(
    scores: Sequence[float], weak_correct: Sequence[bool], strong_correct: Sequence[bool]
) -> RouterMetrics:
    c = curve(scores, weak_correct, strong_correct)
    return curve_metrics(c, float(np.mean(weak_correct)), float(np.mean(strong_correct)))


def curve_metrics(c: Curve, weak: float, strong: float) -> RouterMetrics:
    return RouterMetrics(
        auc=auc(c),
        apgr=apgr(c, weak, strong),
        cpt50=cpt(c, weak, strong, 0.5),
        cpt80=cpt(c, weak, strong, 0.8),
    )


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


def bootstrap(
    scores: Sequence[float],
    weak_correct: Sequence[bool],
    strong_correct: Sequence[bool],
    *,
    samples: int = 1000,
    seed: int = 0,
) -> dict[str, Interval]:
    """95 % percentile intervals of each metric over items resampled with replacement
    (resamples where both models are equally accurate are skipped)."""
    rng = np.random.default_rng(seed)
    s = np.asarray(scores, dtype=np.float64)
    w = np.asarray(weak_correct, dtype=bool)
    st = np.asarray(strong_correct, dtype=bool)
    values: dict[str, list[float]] = {"auc": [], "apgr": [], "cpt50": [], "cpt80": []}
    for _ in range(samples):
        idx = rng.integers(0, len(s), len(s))
        if w[idx].mean() == st[idx].mean():
            continue
        m = router_metrics(list(s[idx]), list(w[idx]), list(st[idx]))
        for name in values:
            values[name].append(getattr(m, name))
    return {
        name: Interval(float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5)))
        for name, v in values.items()
        if v
    }


def accuracy_interval(correct: Sequence[bool], *, samples: int = 1000, seed: int = 0) -> Interval:
    rng = np.random.default_rng(seed)
    c = np.asarray(correct, dtype=np.float64)
    means = [c[rng.integers(0, len(c), len(c))].mean() for _ in range(samples)]
    return Interval(float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)))
