"""Router metrics against values computed by hand."""

from __future__ import annotations

import pytest

from consortium.evaluation.metrics import (
    apgr,
    auc,
    bootstrap,
    cpt,
    curve,
    oracle_curve,
    random_curve,
    router_metrics,
)

# Four items: the weak model gets 0 and 3 right (0.5), the strong one 1, 2, 3 (0.75).
WEAK = [True, False, False, True]
STRONG = [False, True, True, True]


def test_curve_auc_apgr_cpt_by_hand() -> None:
    # Escalation order 1 (+1), 2 (+1), 3 (0), 0 (-1).
    c = curve([0.1, 0.9, 0.8, 0.5], WEAK, STRONG)
    assert list(c.share) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert list(c.accuracy) == [0.5, 0.75, 1.0, 1.0, 0.75]
    # Trapezoids: .15625 + .21875 + .25 + .21875
    assert auc(c) == pytest.approx(0.84375)
    assert apgr(c, 0.5, 0.75) == pytest.approx((0.84375 - 0.5) / 0.25)
    assert cpt(c, 0.5, 0.75, 0.5) == pytest.approx(0.125)  # 0.625 is half-way to 0.25
    assert cpt(c, 0.5, 0.75, 0.8) == pytest.approx(0.2)  # 0.7 is 4/5 of the way
    m = router_metrics([0.1, 0.9, 0.8, 0.5], WEAK, STRONG)
    assert (m.cpt50, m.cpt80) == (pytest.approx(0.125), pytest.approx(0.2))


def test_ties_escalate_together_and_a_constant_router_is_the_random_line() -> None:
    c = curve([1.0, 1.0, 1.0, 1.0], WEAK, STRONG)
    assert list(c.share) == [0.0, 1.0]
    assert apgr(c, 0.5, 0.75) == pytest.approx(0.5)
    assert apgr(random_curve(0.5, 0.75), 0.5, 0.75) == pytest.approx(0.5)
    assert cpt(random_curve(0.5, 0.75), 0.5, 0.75, 0.5) == pytest.approx(0.5)


def test_the_worst_order_and_the_oracle() -> None:
    worst = router_metrics([0.9, 0.1, 0.2, 0.5], WEAK, STRONG)  # the loss first
    # Curve: 0.5, 0.25, 0.25 (item 3: 0), 0.5, 0.75
    assert worst.auc == pytest.approx((0.375 + 0.25 + 0.375 + 0.625) * 0.25)
    assert worst.cpt50 == pytest.approx(0.875)
    o = oracle_curve(WEAK, STRONG)
    assert list(o.accuracy) == [0.5, 1.0, 1.0, 0.75]  # gains, then the neutral, then loss
    assert list(o.share) == [0.0, 0.5, 0.75, 1.0]


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError):
        curve([1.0], WEAK, STRONG)
    with pytest.raises(ValueError):
        apgr(curve([1.0, 2.0], [True, False], [True, False]), 0.5, 0.5)


def test_bootstrap_interval_contains_the_point_estimate() -> None:
    scores = [0.1, 0.9, 0.8, 0.5] * 25
    point = router_metrics(scores, WEAK * 25, STRONG * 25)
    ci = bootstrap(scores, WEAK * 25, STRONG * 25, samples=200)
    assert ci["apgr"].low <= point.apgr <= ci["apgr"].high
    assert ci["cpt50"].low <= point.cpt50 <= ci["cpt50"].high
