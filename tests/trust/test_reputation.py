"""The reputation engine: Beta posteriors with forgetting, the peer states and their
transitions, quarantines that grow and are capped, persistence, external resets, and the
exchange's verdicts as evidence. Time is an injected clock; nothing sleeps."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from a2a.types import a2a_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from scipy.stats import beta as beta_distribution

from consortium.trust.reputation import Evidence, EvidenceKind, Verdict
from consortium.trust.reputation_engine import ReputationAssessor, ReputationSettings

DEFAULTS = ReputationSettings()
KINDS: tuple[EvidenceKind, ...] = ("canary", "cross_check", "protocol", "report")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def engine(tmp_path: Path, clock: Clock) -> Iterator[ReputationAssessor]:
    a = ReputationAssessor.open(tmp_path / "trust.sqlite3", clock=clock, members=["b", "c"])
    yield a
    a.close()


def bad_signature(peer: str = "b") -> Evidence:
    return Evidence(peer, "protocol", False, "bad_signature", weight=DEFAULTS.refusal_factor)


def test_each_kind_moves_the_score_by_its_weight(engine: ReputationAssessor) -> None:
    a0, b0 = DEFAULTS.prior_good, DEFAULTS.prior_bad
    scores = {}
    for i, kind in enumerate(KINDS):
        peer = f"p{i}"
        engine.record(Evidence(peer, kind, False, "x"))
        rep = engine.model_reputation(peer, "")
        # The first piece decays the prior into itself: beta gains exactly the weight,
        # a failed check's weight times rho(e); protocol evidence has its own posterior.
        alpha, beta = (
            (rep.protocol_alpha, rep.protocol_beta) if kind == "protocol" else (rep.alpha, rep.beta)
        )
        assert alpha == pytest.approx(a0)
        assert beta == pytest.approx(b0 + DEFAULTS.weight(kind) * DEFAULTS.bad_factor(kind))
        scores[kind] = rep.score
    assert scores["canary"] < scores["cross_check"] < scores["protocol"] < scores["report"]
    engine.record(Evidence("p9", "canary", True, "x", weight=0.5))
    assert engine.model_reputation("p9", "").alpha == pytest.approx(a0 + 0.5)


def test_a_failed_check_weighs_what_keeps_an_honest_failure_rate_at_the_prior_mean() -> None:
    # rho(e) = e (1 - m) / ((1 - e) m): at the honest rate e the expected good and bad
    # weights stand as the prior's m : 1 - m.
    for e in (0.6, 0.9, 0.95, 0.99):
        s = replace(DEFAULTS, canary_pass_rate=e, agreement_rate=e)
        for kind in ("canary", "cross_check"):
            good, bad = e, (1 - e) * s.bad_factor(kind)
            assert good / (good + bad) == pytest.approx(s.prior_mean)
    assert DEFAULTS.bad_factor("protocol") == DEFAULTS.bad_factor("report") == 1.0


def test_verified_replies_do_not_drown_failed_canaries(engine: ReputationAssessor) -> None:
    """A peer whose every call verifies but that fails half its canaries is quarantined:
    signatures say who answered, not how well."""
    request, reply = a2a_pb2.Message(message_id="m"), a2a_pb2.Message(message_id="r")
    for call in range(400):
        engine.assess(Verdict("b", request, reply))
        if call % 10 == 0:
            engine.record(Evidence("b", "canary", call % 20 == 0, "canary"))
        if engine.standing("b").state == "quarantined":
            break
    assert engine.standing("b").state == "quarantined"
    rep = engine.model_reputation("b", "")
    assert (
        rep.protocol_bound
        > DEFAULTS.probation_bound
        > DEFAULTS.quarantine_bound
        > rep.answers_bound
    )
    assert "on=answers" in rep.reason


def _alternating_bound(s: ReputationSettings, honest: int, k: int) -> float:
    """The lower bound after `honest` good canaries, then k (even) canaries alternating
    bad, good, ...: the update's closed form (geometric sums), independent of the engine."""
    f, w, a0, b0 = s.forgetting, s.weight_canary, s.prior_good, s.prior_bad
    alpha_h = a0 + w * (1 - f**honest) / (1 - f)
    m = k // 2
    pairs = (1 - f ** (2 * m)) / (1 - f**2)
    alpha = a0 + f**k * (alpha_h - a0) + w * pairs
    beta = b0 + w * f * pairs
    return float(beta_distribution.ppf(1 - s.credible_level, alpha, beta))


def test_forgetting_catches_a_turncoat(tmp_path: Path, clock: Clock) -> None:
    # rho = 1 (an honest pass rate at the prior mean): every canary weighs one answer, as
    # the closed form below assumes.
    s = replace(DEFAULTS, canary_pass_rate=DEFAULTS.prior_mean)
    engine = ReputationAssessor.open(tmp_path / "t.sqlite3", s, clock=clock, members=["b", "c"])
    honest = 200
    for _ in range(honest):
        assert engine.record(Evidence("b", "canary", True, "canary_passed")).state == "healthy"
    # The first even k at which the bound is below quarantine_bound; at the odd call
    # after an even one the bound is lower still, so the engine quarantines by k.
    limit = next(
        k for k in range(2, 1000, 2) if _alternating_bound(s, honest, k) < s.quarantine_bound
    )
    assert limit <= 100  # what forgetting 0.98 buys: caught within 100 calls
    for call in range(1, limit + 1):
        standing = engine.record(Evidence("b", "canary", call % 2 == 0, "canary"))
        if standing.state == "quarantined":
            break
    assert standing.state == "quarantined" and not standing.allowed
    assert call <= limit
    engine.close()


def test_without_forgetting_the_same_turncoat_is_not_caught_as_fast(
    tmp_path: Path, clock: Clock
) -> None:
    s = replace(DEFAULTS, forgetting=0.999999, canary_pass_rate=DEFAULTS.prior_mean)
    a = ReputationAssessor.open(tmp_path / "t.sqlite3", s, clock=clock, members=["b", "c"])
    for _ in range(200):
        a.record(Evidence("b", "canary", True, "ok"))
    for call in range(1, 101):
        a.record(Evidence("b", "canary", call % 2 == 0, "canary"))
    assert a.standing("b").state == "healthy"
    a.close()


def test_states_healthy_probation_quarantined_reinstated_healthy(
    engine: ReputationAssessor, clock: Clock
) -> None:
    assert engine.standing("b").state == "healthy"
    s = engine.record(bad_signature())
    assert s.state == "probation" and s.bound < DEFAULTS.probation_bound and s.allowed
    # Allowed, but it weighs less in votes and peer choice while on probation.
    assert s.routing_weight == pytest.approx(s.score * DEFAULTS.probation_weight)
    assert engine.standing("c").routing_weight == engine.standing("c").score
    for _ in range(DEFAULTS.min_evidence - 2):
        assert engine.record(bad_signature()).state == "probation"  # not enough evidence
    s = engine.record(bad_signature())
    assert s.state == "quarantined" and not s.allowed
    rep = engine.model_reputation("b", "")
    assert rep.offences == 1 and rep.quarantined_until == clock.now + DEFAULTS.quarantine_s
    assert rep.reason.startswith("quarantine ") and "bad_signature" in rep.reason
    assert rep.changed_at == clock.now

    clock.now += DEFAULTS.quarantine_s - 1
    assert engine.standing("b").state == "quarantined"
    clock.now += 1
    s = engine.standing("b")
    assert s.state == "probation" and s.score == pytest.approx(0.9)  # back to the prior
    assert engine.model_reputation("b", "").reason == "quarantine_ended offences=1"

    calls = 0
    while engine.record(Evidence("b", "canary", True, "canary_passed")).state != "healthy":
        calls += 1
        assert calls < 5
    assert engine.model_reputation("b", "").reason.startswith("recovered ")


def test_repeat_offences_multiply_the_quarantine_up_to_the_cap(
    tmp_path: Path, clock: Clock
) -> None:
    s = replace(DEFAULTS, max_quarantine_s=2000.0)
    a = ReputationAssessor.open(tmp_path / "t.sqlite3", s, clock=clock, members=["b", "c"])
    durations = []
    for _ in range(4):
        while a.record(bad_signature()).state != "quarantined":
            pass
        rep = a.model_reputation("b", "")
        durations.append(rep.quarantined_until - clock.now)
        clock.now = rep.quarantined_until
    assert durations == [600.0, 1200.0, 2000.0, 2000.0]
    assert a.model_reputation("b", "").offences == 4
    a.close()


def test_never_quarantines_more_than_the_fraction(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    # Five peers and this node: 0.34 * 6 -> at most 2 quarantined.
    a = ReputationAssessor.open(tmp_path / "t.sqlite3", clock=clock, members="bcdef")
    for peer in "bc":
        for _ in range(DEFAULTS.min_evidence):
            a.record(bad_signature(peer))
        assert a.standing(peer).state == "quarantined"
    with caplog.at_level(logging.WARNING, "consortium.trust"):
        for _ in range(DEFAULTS.min_evidence + 5):
            s = a.record(bad_signature("d"))
    assert s.state == "probation" and s.bound < DEFAULTS.quarantine_bound
    assert a.model_reputation("d", "").reason.startswith("quarantine_capped")
    capped = [r for r in caplog.records if "not quarantined" in r.getMessage()]
    assert len(capped) == 1  # logged once, not on every call
    clock.now += DEFAULTS.quarantine_s  # b's and c's quarantines end
    assert a.record(bad_signature("d")).state == "quarantined"
    a.close()


def test_reputations_survive_a_restart(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "trust.sqlite3"
    a = ReputationAssessor.open(path, clock=clock, members=["b", "c"])
    for _ in range(DEFAULTS.min_evidence):
        a.record(replace(bad_signature(), model="m1"))
    a.record(Evidence("c", "cross_check", True, "agreed"))
    before = a.reputations()
    a.close()
    assert path.stat().st_mode & 0o777 == 0o600
    b = ReputationAssessor.open(path, clock=clock, members=["b", "c"])
    assert b.reputations() == before
    assert b.standing("b").state == "quarantined"
    assert b.model_reputation("b", "m1").counts == {("protocol", False): DEFAULTS.min_evidence}
    b.close()


def test_an_external_reset_is_noticed_without_a_restart(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "trust.sqlite3"
    node = ReputationAssessor.open(path, clock=clock, members=["b", "c"])
    for _ in range(DEFAULTS.min_evidence):
        node.record(replace(bad_signature(), model="m1"))
    assert node.standing("b").state == "quarantined"
    cli = ReputationAssessor.open(path, clock=clock)
    cli.reset("b")
    cli.close()
    s = node.standing("b")
    assert s.state == "healthy" and s.score == pytest.approx(0.9)
    rep = node.model_reputation("b", "")
    assert rep.offences == 0 and rep.counts == {} and rep.reason == "reset by the operator"
    assert [r.model for r in node.reputations()] == [""]  # per-model records gone too
    node.close()


def test_per_model_reputations_are_kept_apart(engine: ReputationAssessor) -> None:
    for _ in range(5):
        engine.record(Evidence("b", "canary", True, "ok", model="good-model"))
        engine.record(Evidence("b", "canary", False, "wrong", model="bad-model"))
    good = engine.model_reputation("b", "good-model")
    bad = engine.model_reputation("b", "bad-model")
    peer = engine.model_reputation("b", "")
    assert good.counts == {("canary", True): 5} and bad.counts == {("canary", False): 5}
    assert good.score > peer.score > bad.score
    assert peer.counts == {("canary", True): 5, ("canary", False): 5}


def test_a_few_timeouts_do_not_quarantine_an_honest_peer(engine: ReputationAssessor) -> None:
    request = a2a_pb2.Message(message_id="m")
    reply = a2a_pb2.Message(message_id="r")
    for _ in range(8):  # a new peer that is slow to start
        engine.assess(Verdict("b", request, None, failure="timeout"))
    assert engine.standing("b").state != "quarantined"
    for _ in range(30):
        engine.assess(Verdict("c", request, reply))
    for _ in range(8):
        engine.assess(Verdict("c", request, None, failure="timeout"))
    assert engine.standing("c").state == "healthy"
    # A slow machine that times out on every third call, for a long time.
    for i in range(300):
        verdict = Verdict("c", request, None if i % 3 == 0 else reply, failure="timeout")
        engine.assess(verdict)
        assert engine.standing("c").state == "healthy"


def test_connection_failures_timeouts_and_busy_peers_are_not_evidence(
    engine: ReputationAssessor,
) -> None:
    """They say something about the network (node/breaker.py hears them), not about the
    peer: a dead peer's score stays where it was (it fell 0.90 -> 0.80 once)."""
    request = a2a_pb2.Message(message_id="m")
    before = engine.standing("c")
    for _ in range(50):
        for failure in ("unreachable", "timeout", "busy"):
            engine.assess(Verdict("c", request, None, failure=failure))
    after = engine.model_reputation("c", "")
    assert engine.standing("c") == before and after.state == "healthy"
    assert (after.protocol_alpha, after.protocol_beta, after.evidence) == (
        DEFAULTS.prior_good,
        DEFAULTS.prior_bad,
        0,
    )


def test_verdicts_weigh_refusals_more_than_empty_replies(engine: ReputationAssessor) -> None:
    request = a2a_pb2.Message(message_id="m")
    engine.assess(Verdict("b", request, None, refusal="bad_signature"))
    engine.assess(Verdict("c", request, None, failure="no_reply"))
    refused, failed = engine.model_reputation("b", ""), engine.model_reputation("c", "")
    w = DEFAULTS.weight_protocol
    assert refused.protocol_beta == pytest.approx(DEFAULTS.prior_bad + w * DEFAULTS.refusal_factor)
    assert failed.protocol_beta == pytest.approx(DEFAULTS.prior_bad + w * DEFAULTS.failure_factor)
    assert refused.beta == failed.beta == DEFAULTS.prior_bad  # answers: nothing learned
    reply = a2a_pb2.Message(message_id="r")
    reply.metadata.update({"consortium": {"model": "smollm2-135m"}})
    engine.assess(Verdict("b", request, reply))
    assert engine.model_reputation("b", "smollm2-135m").counts == {("protocol", True): 1}


def test_reasons_and_logs_hold_identifiers_not_content(
    engine: ReputationAssessor, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, "consortium.trust"):
        for _ in range(DEFAULTS.min_evidence):
            engine.record(Evidence("b", "protocol", False, "forged\nline", weight=3))
    reason = engine.model_reputation("b", "").reason
    assert "\n" not in reason and "forged\\nline" in reason
    messages = [r.getMessage() for r in caplog.records]
    assert any("quarantined" in m for m in messages)
    assert all("\n" not in m for m in messages)


def test_metrics_per_peer_and_per_kind(tmp_path: Path) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    a = ReputationAssessor.open(tmp_path / "t.sqlite3", meter_provider=provider)
    a.record(Evidence("b", "canary", False, "canary_failed"))
    a.record(Evidence("b", "canary", True, "canary_passed"))
    data = reader.get_metrics_data()
    assert data is not None
    points = {
        m.name: list(m.data.data_points)
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    assert {
        p.attributes["consortium.evidence.outcome"]: p.value
        for p in points["consortium.trust.evidence"]
    } == {"good": 1, "bad": 1}
    standing = a.standing("b")
    assert points["consortium.trust.score"][0].value == pytest.approx(standing.score)
    assert points["consortium.trust.state"][0].value == 1  # probation
    a.close()


@settings(max_examples=60, deadline=None)
@given(
    prior=st.tuples(st.floats(0.01, 100), st.floats(0.01, 100)),
    forgetting=st.floats(0.5, 0.9999),
    level=st.floats(0.5, 0.999),
    pieces=st.lists(
        st.tuples(st.sampled_from(KINDS), st.booleans(), st.floats(0, 50)), max_size=40
    ),
)
def test_score_and_bound_stay_in_range(
    prior: tuple[float, float],
    forgetting: float,
    level: float,
    pieces: list[tuple[EvidenceKind, bool, float]],
) -> None:
    s = replace(
        DEFAULTS,
        prior_good=prior[0],
        prior_bad=prior[1],
        forgetting=forgetting,
        credible_level=level,
        min_evidence=1,
    )
    with tempfile.TemporaryDirectory() as d:
        a = ReputationAssessor.open(Path(d) / "t.sqlite3", s, members=["b", "c", "d"])
        try:
            for kind, good, weight in pieces:
                st_ = a.record(Evidence("b", kind, good, "x", weight=weight))
                assert 0.0 <= st_.bound <= st_.score <= 1.0
        finally:
            a.close()


def test_a_trust_database_from_before_the_protocol_posterior_opens(
    tmp_path: Path, clock: Clock
) -> None:
    """A file written when there was one posterior (no p_alpha, p_beta, last_canary) gets
    the columns on opening; its rows read the protocol posterior as the prior."""
    import sqlite3

    path = tmp_path / "trust.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE reputation (
            peer TEXT NOT NULL, model TEXT NOT NULL, alpha REAL NOT NULL, beta REAL NOT NULL,
            state TEXT NOT NULL, offences INTEGER NOT NULL, quarantined_until REAL NOT NULL,
            evidence INTEGER NOT NULL, changed_at REAL NOT NULL, reason TEXT NOT NULL,
            PRIMARY KEY (peer, model)
        ) WITHOUT ROWID;
        INSERT INTO reputation VALUES ('b', '', 12.0, 2.0, 'healthy', 0, 0, 14, 0, '');
        """
    )
    conn.commit()
    conn.close()
    a = ReputationAssessor.open(path, clock=clock, members=["b", "c"])
    rep = a.model_reputation("b", "")
    assert (rep.alpha, rep.beta) == (12.0, 2.0)
    assert (rep.protocol_alpha, rep.protocol_beta) == (DEFAULTS.prior_good, DEFAULTS.prior_bad)
    assert a.standing("b").canary is None
    a.record(Evidence("b", "canary", False, "canary_failed"))
    a.close()
    b = ReputationAssessor.open(path, clock=clock, members=["b", "c"])
    assert b.standing("b").canary == "failed"
    b.close()


def test_an_exempt_peer_is_held_on_probation_never_quarantined(
    tmp_path: Path, clock: Clock
) -> None:
    s = replace(DEFAULTS, exempt=frozenset({"b"}))
    a = ReputationAssessor.open(tmp_path / "t.sqlite3", s, clock=clock, members="bcdef")
    for _ in range(3 * DEFAULTS.min_evidence):
        standing = a.record(bad_signature("b"))
        assert standing.state == "probation" and standing.allowed
        a.record(bad_signature("c"))
    assert a.model_reputation("b", "").reason.startswith("quarantine_exempt ")
    assert a.standing("c").state == "quarantined"  # the others are not exempt
    a.close()
