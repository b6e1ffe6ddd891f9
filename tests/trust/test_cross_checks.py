"""Cross-checks: which answers are compared, and how a disagreement's blame is shared."""

from __future__ import annotations

import pytest

from consortium.trust.cross_checks import Answer, cross_check


def test_only_answers_of_the_same_model_are_compared() -> None:
    answers = [Answer("b", "gemma", 0), Answer("c", "smollm", 1), Answer("d", "", 1)]
    assert cross_check(answers, {}) == []


def test_this_nodes_own_model_is_the_trusted_reference() -> None:
    answers = [
        Answer("me", "gemma", 2, own=True),
        Answer("b", "gemma", 2),
        Answer("c", "gemma", 1),
    ]
    judged = {j.peer: j for j in cross_check(answers, {"b": 0.9, "c": 0.9})}
    assert set(judged) == {"b", "c"}  # the own answer is never judged
    assert judged["b"].verdict == "agreed" and judged["b"].reference == "own"
    assert judged["c"].verdict == "disagreed"
    (bad,) = judged["c"].evidence
    assert (bad.kind, bad.good, bad.weight, bad.model) == ("cross_check", False, 1.0, "gemma")
    # b agreed with the own model even though c (a peer) disagrees with b: c is not b's judge.
    assert [e.good for e in judged["b"].evidence] == [True]


def test_between_peers_a_disagreement_is_blamed_by_distrust() -> None:
    answers = [Answer("b", "gemma", 0), Answer("c", "gemma", 1)]
    even = {j.peer: j for j in cross_check(answers, {"b": 0.9, "c": 0.9})}
    assert {p: j.verdict for p, j in even.items()} == {"b": "disagreed", "c": "disagreed"}
    assert all(j.reference == "peers" for j in even.values())
    assert [e.weight for e in even["b"].evidence] == pytest.approx([0.5])
    assert [e.weight for e in even["c"].evidence] == pytest.approx([0.5])
    # c distrusted 4x more than b: it takes 4/5 of the blame.
    skewed = {j.peer: j for j in cross_check(answers, {"b": 0.9, "c": 0.6})}
    assert skewed["b"].evidence[0].weight == pytest.approx(0.2)
    assert skewed["c"].evidence[0].weight == pytest.approx(0.8)


def test_a_peer_agreeing_with_some_references_gets_both_kinds_of_evidence() -> None:
    answers = [Answer("b", "m", 0), Answer("c", "m", 0), Answer("d", "m", 1)]
    judged = {j.peer: j for j in cross_check(answers, {})}
    b = {e.good: e.weight for e in judged["b"].evidence}
    assert b[True] == pytest.approx(0.5)  # agrees with c, one of two references
    assert b[False] == pytest.approx(0.25)  # half of the disagreement with d, over two
    assert judged["b"].verdict == "disagreed"
    d = {e.good: e.weight for e in judged["d"].evidence}
    assert set(d) == {False} and d[False] == pytest.approx(0.5)
