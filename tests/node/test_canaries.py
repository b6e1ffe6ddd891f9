"""Judging a peer's reply to a canary: option scores, a named option, free text."""

from __future__ import annotations

from consortium.node.canaries import choice_from_scores, judge_scores, judge_text, question_of
from consortium.protocols.multiple_choice import OptionScores
from consortium.trust.canaries import Check, FreeTextCanary, MultipleChoiceCanary

CANARY = MultipleChoiceCanary(
    id="secret-id-17",
    question="Which is a mammal?",
    choices=("shark", "whale", "trout"),
    answer=1,
)


def scores(*logprobs: float, tokens: tuple[int, ...] = (1, 1, 1)) -> OptionScores:
    return OptionScores(logprobs=logprobs, tokens=tokens, chars=(5, 5, 5))


def test_the_question_carries_no_id() -> None:
    q = question_of(CANARY)
    assert (q.stem, q.choices) == (CANARY.question, CANARY.choices)
    assert "secret-id-17" not in repr(q)


def test_choice_is_the_argmax_of_token_normalised_scores() -> None:
    # Raw: option 0 leads; per token: option 1 (-2.0 / 4 tokens) leads.
    s = scores(-1.5, -2.0, -3.0, tokens=(1, 4, 1))
    assert choice_from_scores(s, "none") == 0
    assert choice_from_scores(s) == 1
    passed = judge_scores("globex", CANARY, s, model="gemma3-270m")
    assert (passed.good, passed.reason, passed.kind, passed.model) == (
        True,
        "canary_passed",
        "canary",
        "gemma3-270m",
    )
    assert not judge_scores("globex", CANARY, scores(-1.0, -2.0, -3.0)).good


def test_scores_for_the_wrong_number_of_options_fail() -> None:
    short = OptionScores(logprobs=(-3.0, -1.0), tokens=(1, 1), chars=(1, 1))
    verdict = judge_scores("globex", CANARY, short)
    assert (verdict.good, verdict.reason) == (False, "canary_failed")


def test_a_text_reply_naming_the_option() -> None:
    assert judge_text("globex", CANARY, "B").good
    assert judge_text("globex", CANARY, "(B) whale").good
    assert judge_text("globex", CANARY, "It is a whale.").good
    assert not judge_text("globex", CANARY, "A").good
    assert not judge_text("globex", CANARY, "I cannot tell.").good


def test_a_free_text_reply_is_checked() -> None:
    canary = FreeTextCanary(
        id="f", prompt="Capital of Japan?", check=Check(type="contains", value="Tokyo")
    )
    assert judge_text("globex", canary, "Tokyo is the capital.").reason == "canary_passed"
    assert judge_text("globex", canary, "Osaka.").reason == "canary_failed"
