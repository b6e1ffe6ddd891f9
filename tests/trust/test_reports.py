"""Members' trust reports: the report's strict validation, the EigenTrust-style fold
(reporter weights from this node's own trust and the founders, entries dropped per
reason, stale reports ignored), opinions entering the reputation engine as bounded
pseudo-answers, slander by a colluding minority, a newcomer guided by the majority,
persistence of reports and opinions, and the roster's founder flag. No sleeps: time is
a number handed in."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jwcrypto import jwk

from consortium.federation.roster import (
    Member,
    MemberKey,
    Roster,
    load_roster,
    sign_roster,
    verify_roster,
    write_roster,
)
from consortium.node.config import parse_config
from consortium.trust.keys import key_id, public_jwk
from consortium.trust.reports import (
    MAX_ENTRIES,
    Opinion,
    ReportEntry,
    ReportError,
    ReportSettings,
    TrustReport,
    fold,
    parse_report,
    weighted_median,
)
from consortium.trust.reputation import Evidence
from consortium.trust.reputation_engine import ReputationAssessor
from consortium.trust.reputation_store import ReputationStore

NOW = 1_000_000.0
SETTINGS = ReportSettings()
HONEST = ("h1", "h2", "h3")
MEMBERS = ("x", *HONEST, "c1", "c2")


def report(reporter: str, at: float = NOW, evidence: int = 50, **scores: float) -> TrustReport:
    return TrustReport(
        reporter=reporter,
        issued_at=at,
        entries=[ReportEntry(org=o, score=v, evidence=evidence) for o, v in scores.items()],
    )


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[ReputationAssessor]:
    a = ReputationAssessor.open(tmp_path / "trust.sqlite3", clock=lambda: NOW, members=MEMBERS)
    yield a
    a.close()


def trust_of(engine: ReputationAssessor, members: tuple[str, ...] = MEMBERS) -> dict[str, float]:
    """The node's own trust in each member, as node/reports.py hands it to the fold."""
    return {m: engine.model_reputation(m, "").score for m in members}


def apply(engine: ReputationAssessor, opinions: dict[str, Opinion]) -> None:
    engine.set_opinions({p: o.pseudo_counts(SETTINGS.report_weight) for p, o in opinions.items()})


# -- the report --------------------------------------------------------------------------


def test_a_valid_report_parses() -> None:
    data = {
        "v": 1,
        "reporter": "acme",
        "issued_at": NOW,
        "entries": [{"org": "globex", "score": 0.25, "evidence": 12.0}],
    }
    r = parse_report(data)
    assert r.entries[0] == ReportEntry(org="globex", score=0.25, evidence=12)
    assert parse_report(r.wire()) == r


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"entries": [{"org": "globex", "score": 1.5, "evidence": 1}]}, "entries.0.score"),
        ({"entries": [{"org": "globex", "score": True, "evidence": 1}]}, "entries.0.score"),
        ({"entries": [{"org": "globex", "score": "0.5", "evidence": 1}]}, "entries.0.score"),
        ({"entries": [{"org": "globex", "score": 0.5, "evidence": 1.5}]}, "entries.0.evidence"),
        ({"entries": [{"org": "globex", "score": 0.5, "evidence": -1}]}, "entries.0.evidence"),
        ({"entries": [{"org": "Not An Org", "score": 0.5, "evidence": 1}]}, "entries.0.org"),
        ({"entries": [{"org": "globex", "score": 0.5, "evidence": 1, "x": 1}]}, "entries.0.x"),
        ({"entries": [{"org": "g", "score": 0.5, "evidence": 1}] * 2}, "entries"),
        ({"entries": [{"org": "g", "score": float("nan"), "evidence": 1}]}, "entries.0.score"),
        ({"issued_at": float("inf")}, "issued_at"),
        ({"issued_at": -1}, "issued_at"),
        ({"v": 2}, "v"),
        ({"reporter": ""}, "reporter"),
        ({"secret": "x"}, "secret"),
    ],
)
def test_a_malformed_report_is_refused_naming_the_field(change: dict[str, Any], field: str) -> None:
    data = {"v": 1, "reporter": "acme", "issued_at": NOW, "entries": [], **change}
    with pytest.raises(ReportError) as e:
        parse_report(data)
    assert e.value.reason == "malformed_report"
    assert str(e.value).startswith(f"malformed_report: {field}:")


def test_a_report_is_bounded_and_an_object() -> None:
    entries = [{"org": f"o{i}", "score": 0.5, "evidence": 1} for i in range(MAX_ENTRIES + 1)]
    with pytest.raises(ReportError, match="entries"):
        parse_report({"reporter": "acme", "issued_at": NOW, "entries": entries})
    with pytest.raises(ReportError, match="JSON object"):
        parse_report([1, 2])


def test_weighted_median() -> None:
    assert weighted_median([(0.0, 1.0), (1.0, 3.0)]) == 1.0
    assert weighted_median([(0.0, 3.0), (1.0, 1.0)]) == 0.0
    assert weighted_median([(0.0, 1.0), (1.0, 1.0)]) == 0.5
    assert weighted_median([(0.0, 1.0), (1.0, 1.0)], "high") == 1.0
    assert weighted_median([(0.0, 1.0), (1.0, 1.0)], "low") == 0.0


# -- the fold ----------------------------------------------------------------------------


def test_a_valid_report_is_folded_into_an_opinion() -> None:
    trust = {"globex": 0.9, "initech": 0.9}
    f = fold(
        me="acme",
        trust=trust,
        founders=(),
        reports={"globex": report("globex", initech=0.2)},
        now=NOW,
    )
    op = f.opinions["initech"]
    # The only reporter, with full evidence: the whole weight spoke.
    assert op == Opinion(score=0.2, confidence=1.0, reporters=1)
    assert op.pseudo_counts(5.0) == pytest.approx((1.0, 4.0))
    assert "globex" not in f.opinions
    thin = fold(
        me="acme",
        trust=trust,
        founders=(),
        reports={"globex": report("globex", evidence=2, initech=0.2)},
        now=NOW,
    )
    assert thin.opinions["initech"].confidence == pytest.approx(2 / SETTINGS.report_saturation)


def test_entries_about_this_node_the_reporter_or_non_members_are_dropped() -> None:
    f = fold(
        me="acme",
        trust={"globex": 0.9, "initech": 0.9},
        founders=(),
        reports={
            "globex": report("globex", acme=0.0, globex=1.0, nobody=0.0, initech=0.7),
            "stranger": report("stranger", initech=0.0),
        },
        now=NOW,
    )
    assert f.dropped == {
        "about_self": 1,
        "self_report": 1,
        "unknown_peer": 1,
        "reporter_not_member": 1,
    }
    assert set(f.opinions) == {"initech"}
    assert f.opinions["initech"].score == 0.7


def test_stale_reports_are_ignored() -> None:
    trust = {"globex": 0.9, "initech": 0.9}
    old = report("globex", at=NOW - SETTINGS.report_max_age_s - 1, initech=0.0)
    f = fold(me="acme", trust=trust, founders=(), reports={"globex": old}, now=NOW)
    assert f.opinions == {} and f.dropped == {"stale_report": 1}
    fresh = report("globex", at=NOW - SETTINGS.report_max_age_s + 1, initech=0.0)
    assert fold(me="acme", trust=trust, founders=(), reports={"globex": fresh}, now=NOW).opinions


def test_a_reporter_this_node_quarantined_has_no_weight() -> None:
    f = fold(
        me="acme",
        trust={"globex": 0.0, "initech": 0.9, "umbrella": 0.9},
        founders=(),
        reports={"globex": report("globex", initech=0.0)},
        now=NOW,
    )
    assert f.opinions == {}


def test_founders_get_a_pre_trusted_share() -> None:
    trust = {m: 0.9 for m in ("f", "o", "s")}
    reports = {"f": report("f", s=1.0), "o": report("o", s=0.0)}
    even = fold(me="me", trust=trust, founders=(), reports=reports, now=NOW)
    assert even.weights["f"] == pytest.approx(even.weights["o"])
    assert even.opinions["s"].score == 0.5  # an even split: the midpoint
    founded = fold(me="me", trust=trust, founders={"f"}, reports=reports, now=NOW)
    assert founded.weights["f"] > founded.weights["o"]
    assert founded.opinions["s"].score == 1.0  # the founder's side has more weight


def test_a_reporter_the_majority_finds_unreliable_counts_for_less() -> None:
    trust = {m: 0.9 for m in ("a", "b", "c", "liar", "s")}
    reports = {
        "a": report("a", liar=0.1, b=0.9, c=0.9),
        "b": report("b", liar=0.1, a=0.9, c=0.9),
        "c": report("c", liar=0.1, a=0.9, b=0.9, s=0.9),
        "liar": report("liar", s=0.0, a=0.0, b=0.0, c=0.0),
    }
    f = fold(me="me", trust=trust, founders=(), reports=reports, now=NOW)
    assert f.weights["liar"] < 0.2 * f.weights["a"]
    assert f.opinions["s"].score == 0.9


# -- opinions in the engine --------------------------------------------------------------


def test_opinions_are_bounded_pseudo_answers_on_top_of_local_evidence(
    engine: ReputationAssessor,
) -> None:
    before = engine.model_reputation("x", "")
    engine.set_opinions({"x": (1.0, 4.0)})
    after = engine.model_reputation("x", "")
    assert (after.alpha, after.beta) == (before.alpha, before.beta)  # its own evidence
    assert after.opinion == (1.0, 4.0)
    assert after.score == pytest.approx((before.alpha + 1) / (before.alpha + before.beta + 5))
    assert engine.standing("x").score == pytest.approx(after.score)
    engine.set_opinions({})  # replaced: nothing left
    assert engine.model_reputation("x", "").score == pytest.approx(before.score)


def test_reports_alone_put_a_peer_on_probation_but_never_quarantine_it(
    engine: ReputationAssessor,
) -> None:
    engine.set_opinions({"x": (0.0, 100.0)})  # far beyond report_weight: still no quarantine
    s = engine.standing("x")
    assert s.state == "probation" and s.allowed
    assert engine.model_reputation("x", "").reason.startswith("low_bound")
    engine.set_opinions({})
    assert engine.standing("x").state == "healthy"  # recovered once the opinion is gone


def colluders_reports(
    colluders: tuple[str, ...], honest_speak: bool, honest_rate_colluders: bool
) -> dict[str, TrustReport]:
    """The colluders report x (honest) and the honest reporters at 0 and each other at 1;
    the honest report each other at 0.95, the colluders at 0.95 or not at all, and x at
    0.95 or not at all."""
    reports = {
        c: report(c, x=0.0, **{o: 1.0 if o in colluders else 0.0 for o in MEMBERS[1:] if o != c})
        for c in colluders
    }
    for h in (m for m in MEMBERS[1:] if m not in colluders):
        scores = {
            o: 0.95 for o in MEMBERS[1:] if o != h and (o not in colluders or honest_rate_colluders)
        }
        if honest_speak:
            scores["x"] = 0.95
        reports[h] = report(h, **scores)
    return reports


@pytest.mark.parametrize(
    ("colluders", "honest_speak", "honest_rate_colluders", "founders"),
    list(itertools.product([("c1",), ("c1", "c2")], [False, True], [False, True], [(), ("h1",)])),
)
def test_slander_by_a_colluding_minority_cannot_hurt_a_peer_with_good_local_evidence(
    engine: ReputationAssessor,
    colluders: tuple[str, ...],
    honest_speak: bool,
    honest_rate_colluders: bool,
    founders: tuple[str, ...],
) -> None:
    # A minority of the reporters' weight: 1 or 2 of 5, no founder among them (a
    # founder's pre-trusted share would count for its side). Good local evidence about
    # x (evidence about its answers: a verified signature says nothing of them): 30
    # verified calls, 20 agreeing cross-checks and 5 passed canaries.
    for _ in range(30):
        engine.record(Evidence("x", "protocol", True, "verified"))
    for _ in range(20):
        engine.record(Evidence("x", "cross_check", True, "cross_check_agreed"))
    for _ in range(5):
        engine.record(Evidence("x", "canary", True, "canary_passed"))
    reports = colluders_reports(colluders, honest_speak, honest_rate_colluders)
    f = fold(me="me", trust=trust_of(engine), founders=founders, reports=reports, now=NOW)
    apply(engine, f.opinions)
    standing = engine.standing("x")
    assert standing.state == "healthy", (standing, f.opinions["x"])
    assert standing.bound >= engine.settings.probation_bound
    if honest_speak:  # where the majority speaks, the minority does not move the score
        assert f.opinions["x"].score == 0.95
    # Nor can they quarantine the honest reporters (of whom this node knows nothing).
    for h in HONEST:
        assert engine.standing(h).allowed


def test_a_colluding_minority_cannot_quarantine_even_with_local_evidence_under_the_minimum(
    engine: ReputationAssessor,
) -> None:
    for _ in range(engine.settings.min_evidence - 1):
        engine.record(Evidence("x", "protocol", False, "timeout", weight=0.5))
    f = fold(
        me="me",
        trust=trust_of(engine),
        founders=(),
        reports=colluders_reports(("c1", "c2"), False, True),
        now=NOW,
    )
    apply(engine, f.opinions)
    assert engine.standing("x").state != "quarantined"


def test_a_newcomer_is_guided_by_the_trusted_majority(engine: ReputationAssessor) -> None:
    # No local evidence about anyone. The majority (a founder among them) reports x bad;
    # a minority vouches for it.
    reports = {
        h: report(h, x=0.05, **{o: 0.95 for o in HONEST if o != h}, c1=0.9, c2=0.9) for h in HONEST
    }
    reports["c1"] = report("c1", x=1.0, c2=1.0)
    reports["c2"] = report("c2", x=1.0, c1=1.0)
    f = fold(me="me", trust=trust_of(engine), founders={"h1"}, reports=reports, now=NOW)
    assert f.opinions["x"].score == 0.05
    apply(engine, f.opinions)
    x, others = engine.standing("x"), [engine.standing(h) for h in HONEST]
    assert x.state == "probation" and x.allowed  # guided, not quarantined
    assert all(x.score < o.score for o in others)  # routing weighs the others higher
    # The first calls then decide: good local evidence brings x back.
    for _ in range(40):
        engine.record(Evidence("x", "canary", True, "canary_passed"))
    assert engine.standing("x").state == "healthy"


# -- persistence ------------------------------------------------------------------------


def test_reports_and_opinions_survive_reopening_the_store(tmp_path: Path) -> None:
    path = tmp_path / "trust.sqlite3"
    store = ReputationStore(path)
    body = report("globex", initech=0.2).model_dump_json()
    assert store.save_report("globex", NOW, NOW, body)
    assert not store.save_report("globex", NOW - 1, NOW, "{}")  # older: not kept
    store.close()
    a = ReputationAssessor.open(path, clock=lambda: NOW)
    a.set_opinions({"initech": (1.0, 4.0)})
    a.close()
    store = ReputationStore(path)
    assert parse_report_json(store.load_reports()["globex"]).entries[0].org == "initech"
    assert store.load_opinions() == {"initech": (1.0, 4.0)}
    store.close()
    again = ReputationAssessor.open(path, clock=lambda: NOW)
    try:
        assert again.model_reputation("initech", "").opinion == (1.0, 4.0)
        assert again.standing("initech").score == pytest.approx(10 / 15)
    finally:
        again.close()


def test_another_process_setting_opinions_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "trust.sqlite3"
    node = ReputationAssessor.open(path, clock=lambda: NOW)
    other = ReputationAssessor.open(path, clock=lambda: NOW)
    try:
        other.set_opinions({"initech": (0.0, 5.0)})
        assert node.model_reputation("initech", "").opinion == (0.0, 5.0)
    finally:
        node.close()
        other.close()


def parse_report_json(body: str) -> TrustReport:
    import json

    return parse_report(json.loads(body))


# -- configuration and the roster ---------------------------------------------------------


def test_report_keys_in_node_toml(tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "node": {"org_id": "acme"},
            "trust": {"report_weight": 3.0, "report_interval_s": 0, "report_pretrust": 0.5},
        },
        path=tmp_path / "node.toml",
    )
    assert cfg.trust.report_settings() == ReportSettings(
        report_weight=3.0, report_interval_s=0.0, report_pretrust=0.5
    )
    assert cfg.trust.settings().prior_good == 9.0  # the engine's settings are unchanged
    from consortium.errors import ConfigError

    with pytest.raises(ConfigError, match="report_saturation"):
        parse_config(
            {"node": {"org_id": "acme"}, "trust": {"report_saturation": 0}},
            path=tmp_path / "node.toml",
        )


def _member(org: str, founder: bool = False) -> Member:
    from consortium.trust.keys import generate_key

    pub = public_jwk(generate_key())
    return Member(
        org_id=org,
        keys=[MemberKey(kid=key_id(jwk.JWK(**pub)), x=pub["x"])],
        founder=founder,
    )


def test_founders_are_signed_and_a_roster_without_them_signs_as_before(tmp_path: Path) -> None:
    from consortium.trust.keys import generate_key

    admin = generate_key()
    plain = sign_roster(Roster(federation_id="f", name="F", members=[_member("a")]), [admin])
    assert "founder" not in plain.signed_content()["members"][0]
    founded = sign_roster(
        Roster(federation_id="f", name="F", members=[_member("a", True), _member("b")]), [admin]
    )
    verify_roster(founded, [admin])
    assert founded.founders() == {"a"}
    path = tmp_path / "federation.toml"
    write_roster(path, founded)
    text = path.read_text()
    assert text.count("founder") == 1  # written for founders only
    assert load_roster(path).founders() == {"a"}
    # The flag is covered by the signature.
    forged = founded.model_copy(
        update={"members": [m.model_copy(update={"founder": True}) for m in founded.members]}
    )
    with pytest.raises(Exception, match="signature"):
        verify_roster(forged, [admin])
