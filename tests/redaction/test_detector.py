"""The detector on crafted strings: each pattern type, the spaCy NER offline, the
organization's own regexes and deny lists, context words. The spaCy pipeline loads once
per module (about 0.5-1 s each, with and without NER)."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from consortium.errors import ConfigError
from consortium.redaction.detector import Detector, Span
from consortium.redaction.settings import DetectionSettings, parse_detection_settings


@pytest.fixture(scope="module")
def offline() -> Iterator[None]:
    """No hub, and any socket connection fails: loading must not touch the network."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"
    real_connect = socket.socket.connect

    def refuse(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError("network disabled in this test")
        real_connect(self, address)

    socket.socket.connect = refuse  # type: ignore[method-assign, assignment]
    try:
        yield
    finally:
        socket.socket.connect = real_connect  # type: ignore[method-assign]
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


CUSTOM = {
    "recognizers": [
        {"name": "project-codes", "entity": "PROJECT_CODE", "patterns": [r"\bPRJ-\d{4}\b"]},
        {"name": "code-names", "entity": "CODE_NAME", "deny_list": ["Bluebird", "Nightjar"]},
        {
            "name": "employee-ids",
            "entity": "EMPLOYEE_ID",
            "patterns": [r"\b\d{6}\b"],
            "context": ["employee", "badge"],
            "score": 0.1,
        },
    ]
}


@pytest.fixture(scope="module")
def detector(offline: None) -> Detector:
    d = Detector(parse_detection_settings(CUSTOM))
    print(f"detector with NER loaded in {d.load_seconds:.2f}s")
    return d


@pytest.fixture(scope="module")
def patterns(offline: None) -> Detector:
    return Detector(DetectionSettings(ner=False))


def _types(spans: list[Span], text: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for s in spans:
        out.setdefault(s.entity_type, set()).add(text[s.start : s.end])
    return out


@pytest.mark.parametrize(
    ("entity", "text", "value"),
    [
        ("EMAIL_ADDRESS", "Write to jane.doe@example.org today.", "jane.doe@example.org"),
        ("EMAIL_ADDRESS", "cc: ops+alerts@mail.acme.co.uk", "ops+alerts@mail.acme.co.uk"),
        ("PHONE_NUMBER", "Call me at (212) 555-0134 tomorrow.", "(212) 555-0134"),
        ("PHONE_NUMBER", "My mobile is +44 7700 900123.", "+44 7700 900123"),
        ("PHONE_NUMBER", "Phone: 60-56-85-91", "60-56-85-91"),
        ("CREDIT_CARD", "Card 4111 1111 1111 1111 was charged.", "4111 1111 1111 1111"),
        ("CREDIT_CARD", "Pay with 5555555555554444 please", "5555555555554444"),
        ("IBAN_CODE", "IBAN DE89370400440532013000 for the refund", "DE89370400440532013000"),
        ("IBAN_CODE", "to GB82 WEST 1234 5698 7654 32 now", "GB82 WEST 1234 5698 7654 32"),
        ("IP_ADDRESS", "The server at 192.168.10.42 is down", "192.168.10.42"),
        ("IP_ADDRESS", "IPv6 2001:db8::8a2e:370:7334 answers", "2001:db8::8a2e:370:7334"),
        ("US_SSN", "My social security number is 536-90-4399.", "536-90-4399"),
        ("STREET_ADDRESS", "Ship it to 742 Evergreen Terrace, please", "742 Evergreen Terrace"),
        (
            "URL",
            "See https://intranet.acme.test/wiki for details",
            "https://intranet.acme.test/wiki",
        ),
    ],
)
def test_pattern_types(patterns: Detector, entity: str, text: str, value: str) -> None:
    found = _types(patterns.detect(text), text)
    assert entity in found, found
    assert any(value in v or v in value for v in found[entity]), found


def test_invalid_numbers_are_not_cards(patterns: Detector) -> None:
    text = "Order 1234 5678 9012 3456 shipped."  # fails the Luhn check
    assert "CREDIT_CARD" not in _types(patterns.detect(text), text)


def test_ner_types(detector: Detector) -> None:
    text = "Maria Garcia flew from Madrid to Chicago to meet the Microsoft board."
    found = _types(detector.detect(text), text)
    assert "Maria Garcia" in found.get("PERSON", set())
    assert {"Madrid", "Chicago"} <= found.get("LOCATION", set())
    assert "Microsoft" in found.get("ORGANIZATION", set())


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("Dear Halldór, thanks for the call.", "Halldór"),
        ("Ask Dr. Ubul Kónya first.", "Ubul Kónya"),
    ],
)
def test_introduced_names(detector: Detector, text: str, name: str) -> None:
    assert name in _types(detector.detect(text), text).get("PERSON", set())


def test_pattern_only_has_no_ner_types(patterns: Detector) -> None:
    text = "Maria Garcia flew from Madrid to Chicago."
    found = _types(patterns.detect(text), text)
    assert not {"PERSON", "LOCATION", "ORGANIZATION", "NRP"} & set(found)


def test_custom_regex_and_deny_list(detector: Detector) -> None:
    text = "Status of PRJ-0042: the bluebird launch slips; Nightjar is on track."
    found = _types(detector.detect(text), text)
    assert found["PROJECT_CODE"] == {"PRJ-0042"}
    assert found["CODE_NAME"] == {"bluebird", "Nightjar"}


def test_context_words_decide_a_weak_recognizer(detector: Detector) -> None:
    near = "Her employee number is 482913."
    far = "The shipment weighed 482913 grams."
    assert "EMPLOYEE_ID" in _types(detector.detect(near), near)
    assert "EMPLOYEE_ID" not in _types(detector.detect(far), far)
    # Pattern-only runs no tagger: lower-cased words stand in for lemmas.
    plain = Detector(parse_detection_settings({**CUSTOM, "ner": False}))
    assert "EMPLOYEE_ID" in _types(plain.detect(near), near)
    assert "EMPLOYEE_ID" not in _types(plain.detect(far), far)


def test_entities_filter_and_thresholds(offline: None) -> None:
    d = Detector(DetectionSettings(ner=False, entities=("EMAIL_ADDRESS",)))
    text = "Mail a@b.example.org or call 212-555-0134"
    assert {s.entity_type for s in d.detect(text)} == {"EMAIL_ADDRESS"}
    # Without a context word the phone recognizers score below 0.9.
    bare = "Mail a@b.example.org or 212-555-0134"
    strict = Detector(DetectionSettings(ner=False, thresholds={"PHONE_NUMBER": 0.9}))
    assert "PHONE_NUMBER" not in {s.entity_type for s in strict.detect(bare)}
    loose = Detector(DetectionSettings(ner=False))
    assert "PHONE_NUMBER" in {s.entity_type for s in loose.detect(bare)}


def test_spans_are_sorted_and_merged(detector: Detector) -> None:
    text = "a@b.example.org, 212-555-0134 and again a@b.example.org"
    spans = detector.detect(text)
    assert spans == sorted(spans, key=lambda s: (s.start, -s.end, s.entity_type))
    emails = [s for s in spans if s.entity_type == "EMAIL_ADDRESS"]
    assert len(emails) == 2
    assert detector.detect("   ") == []


def test_missing_model_package_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        Detector(DetectionSettings(spacy_model="en_core_web_nonexistent"))
    assert "redaction.spacy_model" in str(info.value)
    assert "never downloaded" in str(info.value)


def test_no_detected_value_in_logs(detector: Detector, caplog: pytest.LogCaptureFixture) -> None:
    text = "Mail jane.doe@example.org, call 212-555-0134, ask Maria Garcia about PRJ-0042."
    with caplog.at_level(logging.DEBUG):
        assert detector.detect(text)
        Detector(parse_detection_settings(CUSTOM))
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for value in ("jane.doe@example.org", "212-555-0134", "Maria Garcia", "PRJ-0042", text):
        assert value not in logged
