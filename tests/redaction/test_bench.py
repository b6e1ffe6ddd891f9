"""A small run of the redaction benchmark on crafted rows: the detection scoring rules
(overlap, type mapping, leak rate), the leak rule under the default policy, the echo round
trip (whole, streamed, truncated), the answer-quality scoring on fixed answers, and the
report's shape."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from consortium.evaluation.redaction_eval import (
    Labelled,
    Row,
    detect_rows,
    evaluate_detection,
    load_rows,
    score_rows,
)
from consortium.evaluation.redaction_quality import (
    HINT,
    Pseudonymized,
    answer_key,
    answers_path,
    cached_answers,
    is_right,
    pseudonymize_items,
    question_prompt,
    score_condition,
    score_original,
    select_items,
)
from consortium.evaluation.redaction_roundtrip import (
    default_actions,
    evaluate_policy,
    policy_leaks,
    random_chunks,
    rewrite_rows,
    round_trip,
    stream_restore,
)
from consortium.redaction.detector import Detector, Span
from consortium.redaction.policy import PeerActions
from consortium.redaction.pseudonyms import PlaceholderFragment, Vault
from consortium.redaction.rewrite import rewrite
from consortium.redaction.settings import DetectionSettings


def test_overlap_and_mapping_rules() -> None:
    text = "Jane Roe lives at 12 Elm St, Springfield"
    row = Row(
        text,
        (
            Labelled(0, 8, "PERSON", "Jane Roe"),
            Labelled(18, 27, "LOCATION", "12 Elm St"),
            Labelled(29, 40, "LOCATION", "Springfield"),
        ),
    )
    detections = [
        [
            Span(0, 4, "PERSON", 0.9, "t"),  # partial overlap counts
            Span(18, 27, "STREET_ADDRESS", 0.6, "t"),  # mapped to LOCATION
            Span(29, 40, "PERSON", 0.9, "t"),  # wrong type: a false positive
        ]
    ]
    result = score_rows([row], detections)
    assert result["PERSON"]["recall"] == 1.0
    assert result["PERSON"]["precision"] == 0.5
    assert result["LOCATION"]["recall"] == 0.5
    assert result["LOCATION"]["precision"] == 1.0
    # "Jane Roe" is partly masked: not verbatim, but not fully covered either.
    assert result["_leaks"]["leak_rate_verbatim"] == 0.0
    assert abs(result["_leaks"]["not_fully_covered"] - 1 / 3) < 1e-9


def _row(text: str, *labelled: tuple[str, str]) -> Row:
    spans = []
    for value, kind in labelled:
        start = text.index(value)
        spans.append(Labelled(start, start + len(value), kind, value))
    return Row(text, tuple(spans))


def _at(text: str, value: str, kind: str, score: float = 0.85) -> Span:
    start = text.index(value)
    return Span(start, start + len(value), kind, score, "t")


def test_leak_rule_under_the_default_policy() -> None:
    rows = [
        _row("Ann Lee mailed ann@example.org", ("Ann Lee", "PERSON"), ("ann@example.org", "X")),
        _row("Call Bo Wu at 212-555-0134", ("Bo Wu", "PERSON"), ("212-555-0134", "PHONE")),
    ]
    detections = [
        [_at(rows[0].text, "Ann Lee", "PERSON"), _at(rows[0].text, "ann@example.org", "X")],
        [_at(rows[1].text, "212-555-0134", "PHONE_NUMBER")],  # the name is missed
    ]
    sent = rewrite_rows(rows, detections, default_actions())
    assert sent[0].rewritten.text == "<PERSON_1> mailed <X_1>"
    assert sent[1].rewritten.text == "Call Bo Wu at <PHONE_NUMBER_1>"
    leaks = policy_leaks(rows, sent)
    assert leaks["labelled"] == 4
    assert leaks["leaked"] == 1
    assert leaks["leak_rate"] == 0.25
    assert leaks["by_type"]["PERSON"] == {"labelled": 2, "leaked": 1, "leak_rate": 0.5}
    assert leaks["by_type"]["PHONE"]["leaked"] == 0
    # A blocked message sends nothing, so nothing of it leaks.
    blocking = PeerActions("pseudonymize", {"PHONE_NUMBER": "block"})
    blocked = policy_leaks(rows, rewrite_rows(rows, detections, blocking))
    assert blocked["texts_blocked"] == 1
    assert blocked["leaked"] == 0


def test_overlapping_spans_are_replaced_over_their_union() -> None:
    """A span ranked below another it overlaps is not sent in clear outside the overlap
    (this left labelled values in the text the detector had found)."""
    text = "Visit 12 Main Street Springfield today"
    spans = [
        _at(text, "Main Street Springfield", "STREET_ADDRESS", 0.5),
        _at(text, "12 Main", "PERSON", 0.9),  # ranked first: higher score
    ]
    vault = Vault()
    out = rewrite(text, spans, default_actions(), vault)
    assert out.text == "Visit <PERSON_1> today"
    assert out.withheld == (("PERSON", "pseudonymize", "12 Main Street Springfield"),)
    assert vault.restore(out.text) == text
    # A stricter action over part of the group covers all of it, under its own type.
    strict = PeerActions("pseudonymize", {"STREET_ADDRESS": "mask"})
    assert rewrite(text, spans, strict, Vault()).text == "Visit <STREET_ADDRESS> today"
    # Spans that do not overlap stay apart; `keep` spans take no part in a group.
    keep = PeerActions("pseudonymize", {"STREET_ADDRESS": "keep"})
    assert rewrite(text, spans, keep, Vault()).text == "Visit <PERSON_1> Street Springfield today"


def test_round_trip_through_an_echo_peer() -> None:
    rows = [
        _row("Ann Lee (ann@example.org) and Ann Lee again", ("Ann Lee", "PERSON")),
        _row("IBAN DE89370400440532013000, card 4111 1111 1111 1111", ("DE89", "IBAN")),
        _row("Nothing personal here < > <b>"),
    ]
    detections = [
        [
            _at(rows[0].text, "Ann Lee", "PERSON"),
            _at(rows[0].text, "ann@example.org", "EMAIL_ADDRESS", 1.0),
            Span(30, 37, "PERSON", 0.85, "t"),
        ],
        [
            _at(rows[1].text, "DE89370400440532013000", "IBAN_CODE"),
            _at(rows[1].text, "4111 1111 1111 1111", "CREDIT_CARD"),
        ],
        [],
    ]
    sent = rewrite_rows(rows, detections, default_actions())
    assert sent[0].rewritten.text == "<PERSON_1> (<EMAIL_ADDRESS_1>) and <PERSON_1> again"
    report = round_trip(sent, splits=20, max_chunk=4, seed=1)
    assert report["restore_exact"] == 3
    assert report["stream_runs"] == 60
    assert report["stream_exact"] == 60
    assert report["stream_placeholder_fragments"] == 0
    assert report["placeholders_split_across_chunks"] > 0
    assert report["truncated_inside_placeholder"] == 2  # the texts with placeholders
    assert report["truncated_refused"] == 2
    assert report["failure_count"] == 0


def test_round_trip_reports_a_text_that_does_not_come_back() -> None:
    """Masks are irreversible: under a mask-everything policy nothing comes back exactly,
    and the report says which texts failed."""
    text = "Ask Ann Lee"
    spans = [[_at(text, "Ann Lee", "PERSON")], []]
    rows = [_row(text), _row("No names")]
    sent = rewrite_rows(rows, spans, PeerActions("mask", {}))
    assert sent[0].rewritten.text == "Ask <PERSON>"
    report = round_trip(sent, splits=3)
    assert report["restore_exact"] == 1
    assert report["stream_exact"] == 3
    assert report["failure_count"] == 1
    assert report["failures"] == [{"text": 0, "whole_exact": False, "stream_exact": False}]
    assert report["truncated_inside_placeholder"] == 0  # no vault placeholder to cut


def test_streamed_echo_cut_inside_a_placeholder_fails_closed() -> None:
    vault = Vault()
    echo = "Write to " + vault.placeholder("EMAIL_ADDRESS", "a@b.org") + " now"
    rng = random.Random(0)
    chunks = random_chunks(echo, rng, 3)
    assert "".join(chunks) == echo and all(1 <= len(c) <= 3 for c in chunks)
    assert stream_restore(vault, chunks) == "Write to a@b.org now"
    cut = echo.index("<") + 4  # "<EMA"
    with pytest.raises(PlaceholderFragment):
        stream_restore(vault, random_chunks(echo[:cut], rng, 3))


def test_evaluate_policy_on_detected_rows() -> None:
    rows = [
        _row("Email jane@example.org or call 212-555-0134.", ("jane@example.org", "EMAIL")),
        _row("The IBAN is DE89370400440532013000.", ("DE89370400440532013000", "IBAN")),
    ]
    detected = detect_rows(Detector(DetectionSettings(ner=False)), rows)
    report = evaluate_policy(rows, detected.spans, splits=3)
    assert report["_policy_leaks"]["leaked"] == 0
    assert report["_round_trip"]["restore_exact_rate"] == 1.0
    assert report["_round_trip"]["stream_exact"] == 6


def test_quality_items_and_scoring_on_fixed_answers(tmp_path: Path) -> None:
    rows = [
        _row(
            "Mail ann@x.org or bo@y.org",
            ("ann@x.org", "EMAIL_ADDRESS"),
            ("bo@y.org", "EMAIL_ADDRESS"),
        ),
        _row("Ann Lee wrote from ann@x.org", ("Ann Lee", "PERSON"), ("ann@x.org", "EMAIL_ADDRESS")),
        _row("Bo Wu called", ("Bo Wu", "PERSON")),
        _row("Cy Yu called", ("Cy Yu", "PERSON")),
    ]
    items = select_items(rows, 10)
    # Round-robin over the types; the text with two emails asks nothing about email.
    assert [it.id for it in items] == ["1:PERSON", "1:EMAIL_ADDRESS", "2:PERSON", "3:PERSON"]
    assert items[1].prompt == question_prompt("EMAIL_ADDRESS", rows[1].text)
    assert "what is the email address?" in items[1].prompt
    assert len(select_items(rows, 2)) == 2

    assert is_right("Ann  Lee", "The name is ann lee.")
    assert not is_right("Ann Lee", "Ann")

    original = score_original(items, ["Ann Lee", "none", "Bo Wu", "Cy Yu"])
    assert original == [True, False, True, True]
    pseudo = []
    for it in items:
        vault = Vault()
        placeholder = vault.placeholder(it.entity_type, it.value)
        pseudo.append(Pseudonymized(it.prompt.replace(it.value, placeholder), vault, True))
    # Right when the restored answer holds the value; a placeholder of another type or
    # a made-up one is wrong.
    answers = ["It is <PERSON_1>.", "<EMAIL_ADDRESS_1>", "<PERSON_2>", "PERSON_1"]
    scored = score_condition(items, original, pseudo, answers, samples=200)
    assert scored["accuracy"] == 0.5
    assert scored["difference"] == -0.25
    assert scored["lost"] == 2 and scored["gained"] == 1
    assert scored["answers_with_a_placeholder"] == 0.5
    assert scored["by_type"]["PERSON"]["pseudonymized"] == 1 / 3
    low, high = scored["difference_ci95"]
    assert low <= -0.25 <= high

    # Cached answers are read back without loading a model.
    path = answers_path("m", tmp_path)
    path.write_text(
        json.dumps({"key": answer_key("q1"), "answer": "a1"}) + "\n" + '{"key": "torn',
        encoding="utf-8",
    )
    assert cached_answers("m", ["q1", "q1"], cache=tmp_path) == ["a1", "a1"]


def test_quality_prompts_as_the_node_sends_them() -> None:
    rows = [_row("Write to ann@example.org today", ("ann@example.org", "EMAIL_ADDRESS"))]
    items = select_items(rows, 1)
    detector = Detector(DetectionSettings(ner=False))
    whole = pseudonymize_items(items, detector)[0]
    assert whole.prompt == question_prompt("EMAIL_ADDRESS", "Write to <EMAIL_ADDRESS_1> today")
    assert whole.hidden
    assert whole.vault.restore("It is <EMAIL_ADDRESS_1>.") == "It is ann@example.org."
    text_only = pseudonymize_items(items, detector, whole_prompt=False)[0]
    assert text_only.prompt == whole.prompt  # nothing in this question is detected
    hinted = pseudonymize_items(items, detector, hint=True)[0]
    assert hinted.prompt == f"{HINT}\n\n{whole.prompt}"


def test_smoke_run_on_a_few_texts(tmp_path: Path) -> None:
    rows = [
        {
            "full_text": "Email jane@example.org or call 212-555-0134.",
            "spans": [
                {
                    "entity_type": "EMAIL_ADDRESS",
                    "entity_value": "jane@example.org",
                    "start_position": 6,
                    "end_position": 22,
                },
                {
                    "entity_type": "PHONE_NUMBER",
                    "entity_value": "212-555-0134",
                    "start_position": 31,
                    "end_position": 43,
                },
            ],
        },
        {
            "full_text": "The IBAN is DE89370400440532013000.",
            "spans": [
                {
                    "entity_type": "IBAN_CODE",
                    "entity_value": "DE89370400440532013000",
                    "start_position": 12,
                    "end_position": 34,
                }
            ],
        },
    ]
    path = tmp_path / "set.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    data = load_rows(path)
    pattern_only = Detector(DetectionSettings(ner=False))
    result = evaluate_detection(pattern_only, pattern_only, data, latency_messages=2)
    for t in ("EMAIL_ADDRESS", "PHONE_NUMBER", "IBAN_CODE"):
        assert result[t]["recall"] == 1.0
    assert result["_leaks"]["leak_rate_verbatim"] == 0.0
    assert result["_setup"]["labelled_spans"] == 3
    assert result["_latency"]["pattern_only_200_words"]["p50_ms"] > 0
    json.dumps(result)  # the --json output is serialisable


def test_cli_bench_redaction_json() -> None:
    """`consortium bench redaction --json` on the first texts of the real set."""
    from typer.testing import CliRunner

    from consortium.cli.app import app
    from consortium.evaluation.datasets import data_dir
    from consortium.evaluation.redaction_eval import DATASET_FILE

    if not (data_dir() / DATASET_FILE).exists():
        pytest.skip("the synthetic set is not in the data directory")
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "redaction",
            "--limit",
            "10",
            "--latency-messages",
            "5",
            "--no-quality",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["_setup"]["texts"] == 10
    assert "_baseline_presidio_default" in report
    assert set(report["_targets"]["recall"]) >= {"PERSON", "LOCATION", "US_SSN"}
    assert report["_policy_leaks"]["labelled"] == report["_setup"]["labelled_spans"]
    assert report["_round_trip"]["texts"] == 10
    assert report["_round_trip"]["restore_exact_rate"] == 1.0
    assert "_quality" not in report
