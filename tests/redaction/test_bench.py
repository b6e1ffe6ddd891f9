"""A small run of the detection benchmark on crafted rows: the scoring rules (overlap,
type mapping, leak rate) and the report's shape."""

from __future__ import annotations

import json
from pathlib import Path

from consortium.evaluation.redaction_eval import (
    Labelled,
    Row,
    evaluate_detection,
    load_rows,
    score_rows,
)
from consortium.redaction.detector import Detector, Span
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
    import pytest
    from typer.testing import CliRunner

    from consortium.cli.app import app
    from consortium.evaluation.datasets import data_dir
    from consortium.evaluation.redaction_eval import DATASET_FILE

    if not (data_dir() / DATASET_FILE).exists():
        pytest.skip("the synthetic set is not in the data directory")
    result = CliRunner().invoke(
        app, ["bench", "redaction", "--limit", "10", "--latency-messages", "5", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["_setup"]["texts"] == 10
    assert "_baseline_presidio_default" in report
    assert set(report["_targets"]["recall"]) >= {"PERSON", "LOCATION", "US_SSN"}
