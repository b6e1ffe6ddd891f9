"""The routing policy's optimiser: statistics merge, gradient descent, FedProx, AUC."""

from __future__ import annotations

import numpy as np

from consortium.learning import optimiser as T
from consortium.learning.settings import TrainOptions

HUNDRED_STEPS = TrainOptions(local_steps=100)


def data(seed: int, n: int = 400, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(loc=shift, size=(n, 3)) * [1.0, 10.0, 0.1]
    z = x[:, 0] - 0.2 * x[:, 1] + rng.normal(scale=0.5, size=n)
    return x, (z > 0).astype(np.int64)


def test_merged_statistics_equal_the_pooled_ones() -> None:
    a, _ = data(1, 100)
    b, _ = data(2, 300, shift=2.0)
    mean, scale = T.merge_stats([T.FeatureStats.of(a), T.FeatureStats.of(b)])
    pooled = np.vstack([a, b])
    np.testing.assert_allclose(mean, pooled.mean(axis=0))
    np.testing.assert_allclose(scale, pooled.std(axis=0))
    # A constant feature gets scale 1, not a division by zero.
    _, s = T.merge_stats([T.FeatureStats.of(np.ones((5, 2)))])
    assert s.tolist() == [1.0, 1.0]


def test_gradient_descent_lowers_the_loss_and_separates_the_classes() -> None:
    x, y = data(3)
    mean, scale = T.merge_stats([T.FeatureStats.of(x)])
    xs = T.standardise(x, mean, scale)
    start = np.zeros(4)
    trained = T.train(start, xs, y, HUNDRED_STEPS.optimiser())
    assert T.loss(trained, xs, y) < T.loss(start, xs, y) - 0.2
    assert T.auc(y, T.predict(trained, xs)) > 0.9


def test_the_proximal_term_keeps_local_weights_near_the_global_ones() -> None:
    x, y = data(4)
    xs = T.standardise(x, *T.merge_stats([T.FeatureStats.of(x)]))
    anchor = np.array([-1.0, 1.0, 0.0, 0.0])
    free = T.train(anchor, xs, y, HUNDRED_STEPS.optimiser())
    prox = T.train(anchor, xs, y, HUNDRED_STEPS.optimiser(proximal_mu=1.0), anchor)
    assert np.linalg.norm(prox - anchor) < 0.5 * np.linalg.norm(free - anchor)


def test_auc_and_held_out_split() -> None:
    assert T.auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert T.auc([1, 1], [0.2, 0.3]) == 0.5
    ids = tuple(f"r{i}" for i in range(2000))
    mask = T.held_out(ids, 0.2)
    assert 0.17 < mask.mean() < 0.23
    assert (T.held_out(ids, 0.2) == mask).all()  # deterministic
